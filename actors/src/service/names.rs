//! The names a service answers to: exact host names and `*.` wildcards, as RFC 6125 section
//! 6.4 has them (the `*` is the whole left-most label and stands for exactly one label; ASCII
//! case-insensitive; `*.example.com` matches `a.example.com`, neither `example.com` nor
//! `a.b.example.com`).

use crate::service::error::ServiceError;

/// One name of a service, normalised (lowercase, no trailing dot).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ServiceName {
    /// `a.example.com`.
    Exact(String),
    /// `*.example.com`, kept as the part after `*.` (`example.com`).
    Wildcard(String),
}

impl ServiceName {
    /// Parses `given` as written in a `names` list; `service` names the service in errors.
    pub(crate) fn parse(given: &str, service: &str) -> Result<ServiceName, ServiceError> {
        let name = given.trim_end_matches('.').to_ascii_lowercase();
        let refuse = |why: &str| {
            Err(ServiceError(format!(
                "service {service}: name {given:?} {why}"
            )))
        };
        if name.is_empty() || name.len() > 253 {
            return refuse("is not a host name (1 to 253 characters)");
        }
        let (wildcard, host) = match name.strip_prefix("*.") {
            Some(suffix) => (true, suffix),
            None => (false, name.as_str()),
        };
        if host.contains('*') {
            return refuse("has a `*` that is not the whole left-most label (`*.example.com`)");
        }
        if wildcard && !host.contains('.') {
            return refuse("is a wildcard directly under a top-level domain");
        }
        let labels_ok = host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !labels_ok {
            return refuse("is not a host name (letters, digits, `-`, `_`, dot-separated)");
        }
        Ok(match wildcard {
            true => ServiceName::Wildcard(host.to_string()),
            false => ServiceName::Exact(host.to_string()),
        })
    }

    /// The name as written in a configuration (`*.example.com` for a wildcard).
    pub(crate) fn shown(&self) -> String {
        match self {
            ServiceName::Exact(name) => name.clone(),
            ServiceName::Wildcard(suffix) => format!("*.{suffix}"),
        }
    }
}

/// The SNI `sni` normalised as names are (lowercase, no trailing dot), and the part a
/// wildcard would match (after the first label), if it has one.
pub(crate) fn normalise(sni: &str) -> (String, Option<usize>) {
    let name = sni.trim_end_matches('.').to_ascii_lowercase();
    let parent = match name.split_once('.') {
        Some((label, _)) if !label.is_empty() => Some(label.len() + 1),
        _ => None,
    };
    (name, parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_rfc_6125_has_them() {
        let parse = |n: &str| ServiceName::parse(n, "s");
        assert_eq!(parse("A.Test."), Ok(ServiceName::Exact("a.test".into())));
        assert_eq!(
            parse("*.B.test"),
            Ok(ServiceName::Wildcard("b.test".into()))
        );
        for bad in [
            "",
            "*.test",
            "x*.b.test",
            "*.*.test",
            "a..test",
            "a b.test",
            "*",
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("service s"), "{bad}: {error}");
        }
        assert_eq!(parse("*.b.test").unwrap().shown(), "*.b.test");
    }

    #[test]
    fn an_sni_and_its_parent() {
        assert_eq!(normalise("X.B.Test."), ("x.b.test".into(), Some(2)));
        assert_eq!(normalise("test"), ("test".into(), None));
        assert_eq!(normalise(".test"), (".test".into(), None));
    }
}
