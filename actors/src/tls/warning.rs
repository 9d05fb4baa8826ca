//! `TlsWarning`: what a configuration that loaded serves and an operator should hear about.
//!
//! A certificate outside its validity period is served, not refused: clients that check dates
//! refuse it, but some do not (devices with a wrong clock, clients pinned to the key), and in
//! an outage where the renewal failed, serving the expired certificate may be what keeps those
//! working while a new one is issued. Refusing it would turn a warning into a server that does
//! not start, or a reload that silently keeps an even older certificate. So the load succeeds
//! and says so, loudly, through [`LoadedTls::warnings`](crate::LoadedTls::warnings).

use std::fmt;
use std::path::PathBuf;

/// A served certificate whose dates deserve an operator's attention.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsWarning {
    /// Its `notAfter` has passed: clients that check dates refuse it.
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// `notAfter`, in seconds since the Unix epoch.
        not_after_unix: i64,
    },
    /// Its `notBefore` has not come yet: clients that check dates refuse it until then.
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// `notBefore`, in seconds since the Unix epoch.
        not_before_unix: i64,
    },
}

impl TlsWarning {
    /// The certificate file it is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            TlsWarning::Expired { path, .. } | TlsWarning::NotYetValid { path, .. } => path,
        }
    }

    /// The warnings for a served certificate valid from `not_before` to `not_after` (Unix
    /// seconds), at `now`.
    pub(crate) fn for_validity(
        path: PathBuf,
        not_before: i64,
        not_after: i64,
        now: i64,
    ) -> Option<TlsWarning> {
        if now > not_after {
            Some(TlsWarning::Expired {
                path,
                not_after_unix: not_after,
            })
        } else if now < not_before {
            Some(TlsWarning::NotYetValid {
                path,
                not_before_unix: not_before,
            })
        } else {
            None
        }
    }
}

impl fmt::Display for TlsWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsWarning::Expired {
                path,
                not_after_unix,
            } => write!(
                f,
                "{}: the certificate expired at {} (notAfter); clients that check dates refuse it",
                path.display(),
                utc(*not_after_unix)
            ),
            TlsWarning::NotYetValid {
                path,
                not_before_unix,
            } => write!(
                f,
                "{}: the certificate is not valid before {} (notBefore); clients that check dates \
                 refuse it until then",
                path.display(),
                utc(*not_before_unix)
            ),
        }
    }
}

/// Unix seconds as an RFC 3339 UTC time (`2020-01-01T00:00:00Z`), for any time a certificate
/// can hold (years 0 to 9999).
pub(crate) fn utc(unix: i64) -> String {
    let (days, seconds) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_read_as_rfc_3339() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_940_889_600), "2031-07-04T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(-631_152_000), "1950-01-01T00:00:00Z");
        assert_eq!(utc(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_warning_for_a_certificate_outside_its_dates_only() {
        let path = PathBuf::from("server.crt");
        assert_eq!(TlsWarning::for_validity(path.clone(), 0, 100, 50), None);
        let expired = TlsWarning::for_validity(path.clone(), 0, 100, 101).unwrap();
        assert_eq!(
            expired.to_string(),
            "server.crt: the certificate expired at 1970-01-01T00:01:40Z (notAfter); clients \
             that check dates refuse it"
        );
        let early = TlsWarning::for_validity(path, 100, 200, 99).unwrap();
        assert!(matches!(
            early,
            TlsWarning::NotYetValid {
                not_before_unix: 100,
                ..
            }
        ));
        assert!(early.to_string().contains("1970-01-01T00:01:40Z"));
    }
}
