//! The few facts a TLS front needs from an X.509 certificate: serial, expiry, subject CN and
//! subject alternative names, read from its DER.
//!
//! rustls and webpki verify certificates but do not expose these fields, and a full X.509
//! parser (x509-parser and its ASN.1 stack) is a large dependency for five fields. This reader
//! walks the DER structure only as far as RFC 5280 section 4.1 fixes it, never panics, and is
//! only handed certificates from the operator's files or chains rustls has already verified.

use std::fmt;

/// What was read from one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The serial number in lowercase hex, leading zero bytes dropped (as `openssl x509
    /// -serial` prints it, in lowercase).
    pub serial_hex: String,
    /// `notAfter` as seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// The subject's common name, if it has one.
    pub subject_cn: Option<String>,
    /// The subject alternative names of type dNSName, as written.
    pub dns_names: Vec<String>,
    /// The subject alternative names of type URI, as written.
    pub uris: Vec<String>,
}

/// The DER of a certificate did not have the shape RFC 5280 gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Error(&'static str);

impl fmt::Display for X509Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed certificate: {}", self.0)
    }
}

impl std::error::Error for X509Error {}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version` of the TBSCertificate.
const VERSION_TAG: u8 = 0xa0;
/// `[3] EXPLICIT Extensions` of the TBSCertificate.
const EXTENSIONS_TAG: u8 = 0xa3;
/// GeneralName `[2] dNSName` and `[6] uniformResourceIdentifier` (implicit IA5String).
const SAN_DNS: u8 = 0x82;
const SAN_URI: u8 = 0x86;
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// id-at-commonName, 2.5.4.3.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// A cursor over DER: reads one tag-length-value at a time.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next element: its tag and its value.
    fn any(&mut self) -> Result<(u8, &'a [u8]), X509Error> {
        let short = X509Error("truncated element");
        let (&tag, rest) = self.0.split_first().ok_or(short.clone())?;
        let (&first, rest) = rest.split_first().ok_or(short.clone())?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let count = (first & 0x7f) as usize;
            if count == 0 || count > 4 || rest.len() < count {
                return Err(X509Error("bad length"));
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[count..])
        };
        if rest.len() < len {
            return Err(short);
        }
        let (value, rest) = rest.split_at(len);
        self.0 = rest;
        Ok((tag, value))
    }

    /// The next element, which must have `tag`.
    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], X509Error> {
        match self.any()? {
            (t, value) if t == tag => Ok(value),
            _ => Err(X509Error(what)),
        }
    }
}

impl CertificateInfo {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertificateInfo, X509Error> {
        let cert = Der(der).expect(SEQUENCE, "not a SEQUENCE")?;
        let mut tbs = Der(Der(cert).expect(SEQUENCE, "no TBSCertificate")?);
        if tbs.peek_tag() == Some(VERSION_TAG) {
            tbs.any()?;
        }
        let serial = tbs.expect(INTEGER, "no serial number")?;
        tbs.expect(SEQUENCE, "no signature algorithm")?;
        tbs.expect(SEQUENCE, "no issuer")?;
        let mut validity = Der(tbs.expect(SEQUENCE, "no validity")?);
        validity.any()?;
        let not_after = match validity.any()? {
            (UTC_TIME, text) => parse_time(text, false)?,
            (GENERALIZED_TIME, text) => parse_time(text, true)?,
            _ => return Err(X509Error("bad notAfter")),
        };
        let subject_cn = common_name(tbs.expect(SEQUENCE, "no subject")?)?;
        tbs.expect(SEQUENCE, "no public key")?;
        let mut info = CertificateInfo {
            serial_hex: serial_hex(serial),
            not_after_unix: not_after,
            subject_cn,
            dns_names: Vec::new(),
            uris: Vec::new(),
        };
        while !tbs.is_empty() {
            let (tag, value) = tbs.any()?;
            if tag == EXTENSIONS_TAG {
                info.read_extensions(Der(value).expect(SEQUENCE, "bad extensions")?)?;
            }
        }
        Ok(info)
    }

    fn read_extensions(&mut self, extensions: &[u8]) -> Result<(), X509Error> {
        let mut extensions = Der(extensions);
        while !extensions.is_empty() {
            let mut extension = Der(extensions.expect(SEQUENCE, "bad extension")?);
            let oid = extension.expect(OID, "extension without OID")?;
            if extension.peek_tag() == Some(BOOLEAN) {
                extension.any()?;
            }
            let value = extension.expect(OCTET_STRING, "extension without value")?;
            if oid != OID_SAN {
                continue;
            }
            let mut names = Der(Der(value).expect(SEQUENCE, "bad subjectAltName")?);
            while !names.is_empty() {
                let (tag, name) = names.any()?;
                let name = || String::from_utf8_lossy(name).into_owned();
                match tag {
                    SAN_DNS => self.dns_names.push(name()),
                    SAN_URI => self.uris.push(name()),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// The first CN attribute of a Name, whatever string type encodes it.
fn common_name(name: &[u8]) -> Result<Option<String>, X509Error> {
    let mut rdns = Der(name);
    while !rdns.is_empty() {
        let mut attributes = Der(rdns.expect(SET, "bad RDN")?);
        while !attributes.is_empty() {
            let mut attribute = Der(attributes.expect(SEQUENCE, "bad attribute")?);
            let oid = attribute.expect(OID, "attribute without OID")?;
            let (_, value) = attribute.any()?;
            if oid == OID_CN {
                return Ok(Some(String::from_utf8_lossy(value).into_owned()));
            }
        }
    }
    Ok(None)
}

fn serial_hex(serial: &[u8]) -> String {
    let start = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    serial[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYMMDDHHMMSSZ` (UTCTime; years 50–99 are 19xx) or `YYYYMMDDHHMMSSZ` (GeneralizedTime), the
/// only forms RFC 5280 allows, as Unix seconds.
fn parse_time(text: &[u8], four_digit_year: bool) -> Result<i64, X509Error> {
    let bad = X509Error("bad time");
    let digits = text
        .strip_suffix(b"Z")
        .filter(|d| d.len() == if four_digit_year { 14 } else { 12 })
        .filter(|d| d.iter().all(u8::is_ascii_digit))
        .ok_or(bad)?;
    let number = |range: std::ops::Range<usize>| {
        digits[range]
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
    };
    let (year, rest) = if four_digit_year {
        (number(0..4), 4)
    } else {
        let yy = number(0..2);
        (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
    };
    let field = |i: usize| number(rest + 2 * i..rest + 2 * i + 2);
    let days = days_from_civil(year, field(0), field(1));
    Ok(days * 86_400 + field(2) * 3_600 + field(3) * 60 + field(4))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A certificate the server loaded, for the expiry gauge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedCertificate {
    /// The file it came from: the `name` label of the expiry gauge, so an alert says which
    /// file to renew.
    pub name: String,
    /// Serial, expiry and names read from it.
    pub info: CertificateInfo,
}

#[cfg(all(test, feature = "dev-certs"))]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType, SerialNumber};

    #[test]
    fn reads_serial_expiry_cn_and_sans() {
        let mut params = CertificateParams::new(vec!["a.test".into(), "*.b.test".into()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "client one");
        params
            .subject_alt_names
            .push(SanType::URI("spiffe://test/one".try_into().unwrap()));
        params.serial_number = Some(SerialNumber::from(vec![0x00, 0x8a, 0x01]));
        params.not_after = rcgen::date_time_ymd(2031, 7, 4);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = CertificateInfo::from_der(cert.der()).unwrap();
        assert_eq!(info.serial_hex, "8a01");
        assert_eq!(info.subject_cn.as_deref(), Some("client one"));
        assert_eq!(info.dns_names, ["a.test", "*.b.test"]);
        assert_eq!(info.uris, ["spiffe://test/one"]);
        // 2031-07-04T00:00:00Z
        assert_eq!(info.not_after_unix, 1_940_889_600);
    }

    #[test]
    fn times_in_both_encodings() {
        assert_eq!(parse_time(b"700101000000Z", false), Ok(0));
        assert_eq!(parse_time(b"20000301000000Z", true), Ok(951_868_800));
        assert_eq!(parse_time(b"491231235959Z", false), Ok(2_524_607_999));
        assert!(parse_time(b"2000030100000Z", true).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for der in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x02, 0x30, 0x05],
        ] {
            assert!(CertificateInfo::from_der(der).is_err());
        }
    }
}
