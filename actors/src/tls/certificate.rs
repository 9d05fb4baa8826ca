//! The few facts a TLS front needs from an X.509 certificate: serial, validity, subject CNs,
//! subject alternative names, and what it may be used for (basicConstraints' cA, the extended
//! key usage), read from its DER.
//!
//! rustls and webpki verify certificates but do not expose these fields. The DER is read by
//! x509-parser (maintained and fuzzed by the rusticata project); this file decides what its
//! names mean as text. Each string type a name can be written in is decoded by that type's own
//! rules, and a name that is not valid in its declared type is left out (see
//! `directory_string` for why it is skipped rather than an error), never approximated: these
//! names feed the mTLS allow-list, where an approximation could match an entry it should not.

use std::fmt;

use x509_parser::asn1_rs::{Any, Class, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// What was read from one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CertificateInfo {
    /// The serial number in lowercase hex, leading zero bytes dropped (as `openssl x509
    /// -serial` prints it, in lowercase).
    pub(crate) serial_hex: String,
    /// `notBefore` as seconds since the Unix epoch.
    pub(crate) not_before_unix: i64,
    /// `notAfter` as seconds since the Unix epoch.
    pub(crate) not_after_unix: i64,
    /// The subject's common names, in the order the certificate lists them: a subject may
    /// have none, one or several (in one RDN or in several). A CN not validly encoded in its
    /// declared string type is left out.
    pub(crate) subject_cns: Vec<String>,
    /// The subject alternative names of type dNSName, as written.
    pub(crate) dns_names: Vec<String>,
    /// The subject alternative names of type URI, as written.
    pub(crate) uris: Vec<String>,
    /// What the certificate may be used for, or why that cannot be read.
    pub(crate) usage: Result<Usage, String>,
}

/// What a certificate may be used for: the two extensions a server certificate is judged by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Usage {
    /// basicConstraints says cA: the certificate signs other certificates.
    pub(crate) is_ca: bool,
    /// The purposes its extended key usage names (`serverAuth`, `clientAuth`, ..., other
    /// purposes by OID), in order; `None` without the extension, which allows any purpose.
    pub(crate) purposes: Option<Vec<String>>,
}

impl Usage {
    /// Why a certificate with this usage cannot serve as a TLS server's certificate, if it
    /// cannot: a CA certificate (clients refuse a CA as an end entity: webpki answers
    /// `CaUsedAsEndEntity`), or an extended key usage without serverAuth (or
    /// anyExtendedKeyUsage).
    pub(crate) fn server_problem(&self) -> Option<String> {
        if self.is_ca {
            return Some(
                "it is a CA certificate (basicConstraints cA): it signs certificates, clients \
                 refuse it as a server's; serve the certificate issued for this server"
                    .into(),
            );
        }
        match &self.purposes {
            Some(purposes)
                if !purposes
                    .iter()
                    .any(|p| p == "serverAuth" || p == "anyExtendedKeyUsage") =>
            {
                Some(format!(
                    "its extended key usage ({}) does not include serverAuth: clients refuse it",
                    purposes.join(", ")
                ))
            }
            _ => None,
        }
    }
}

/// The DER of a certificate did not have the shape RFC 5280 gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Error(String);

impl fmt::Display for X509Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed certificate: {}", self.0)
    }
}

impl std::error::Error for X509Error {}

impl X509Error {
    fn parser(what: &str, error: x509_parser::nom::Err<x509_parser::error::X509Error>) -> Self {
        let detail = match error {
            x509_parser::nom::Err::Incomplete(_) => "truncated".to_string(),
            x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e.to_string(),
        };
        X509Error(format!("{what}: {detail}"))
    }
}

impl CertificateInfo {
    /// Reads a DER certificate: exactly one, with nothing after it.
    pub(crate) fn from_der(der: &[u8]) -> Result<CertificateInfo, X509Error> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| X509Error::parser("not a certificate", e))?;
        if !rest.is_empty() {
            return Err(X509Error("bytes after the certificate".into()));
        }
        let subject_cns = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| directory_string(cn.attr_value()))
            .collect();
        let mut info = CertificateInfo {
            serial_hex: serial_hex(cert.raw_serial()),
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
            subject_cns,
            dns_names: Vec::new(),
            uris: Vec::new(),
            usage: usage(&cert),
        };
        // A subjectAltName that does not parse, or two of them, is an error: unlike one
        // undecodable name, it leaves no way to tell which names the certificate has.
        let san = cert
            .subject_alternative_name()
            .map_err(|e| X509Error(format!("subjectAltName: {e}")))?;
        for name in san.iter().flat_map(|san| &san.value.general_names) {
            // Both are IA5String: 7-bit ASCII. x509-parser accepts any UTF-8 here (and gives
            // bytes that are not as `GeneralName::Invalid`, skipped with the other types); a
            // name outside ASCII is not valid in its type and is skipped as in `directory_string`.
            match name {
                GeneralName::DNSName(dns) if dns.is_ascii() => info.dns_names.push(dns.to_string()),
                GeneralName::URI(uri) if uri.is_ascii() => info.uris.push(uri.to_string()),
                _ => {}
            }
        }
        Ok(info)
    }
}

/// basicConstraints and the extended key usage. Either one unreadable (malformed, or present
/// twice) is kept as the reason rather than failing the whole read: the same reader reads
/// client certificates (where only the names matter) and CA bundles, and only a certificate
/// about to be served is judged by its usage (`Usage::server_problem`, whose caller refuses
/// an unreadable one).
fn usage(cert: &X509Certificate<'_>) -> Result<Usage, String> {
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| format!("basicConstraints: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    let purposes = cert
        .extended_key_usage()
        .map_err(|e| format!("extendedKeyUsage: {e}"))?
        .map(|eku| {
            let eku = eku.value;
            let named = [
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
                (eku.any, "anyExtendedKeyUsage"),
            ];
            named
                .into_iter()
                .filter(|(set, _)| *set)
                .map(|(_, name)| name.to_string())
                .chain(eku.other.iter().map(|oid| oid.to_id_string()))
                .collect()
        });
    Ok(Usage { is_ca, purposes })
}

/// The text of a name attribute (a CN), decoded by the rules of the string type it declares:
/// the five DirectoryString choices of RFC 5280 (UTF8String, PrintableString, TeletexString,
/// BMPString, UniversalString) and IA5String, which some CAs write CNs in.
///
/// `None` for a value that is not valid in its declared type, or is of another type. Such a
/// name is skipped rather than making the whole certificate an error: skipping can only take a
/// name away, never add or change one, so the allow-list fails closed for it; and the same
/// reader loads the operator's server certificates and CA bundles (for SNI and the expiry
/// gauge), which must not stop loading because an old CA wrote, say, `&` in a
/// PrintableString.
fn directory_string(value: &Any<'_>) -> Option<String> {
    // DER strings are primitive and universal: a constructed or context-tagged value only
    // shares the tag number.
    if value.class() != Class::Universal || value.header.is_constructed() {
        return None;
    }
    let bytes = value.data;
    match value.tag() {
        Tag::Utf8String => std::str::from_utf8(bytes).ok().map(str::to_string),
        Tag::PrintableString => bytes
            .iter()
            .all(|b| is_printable_string_char(*b))
            .then(|| bytes.iter().map(|b| char::from(*b)).collect()),
        Tag::Ia5String => std::str::from_utf8(bytes)
            .ok()
            .filter(|s| s.is_ascii())
            .map(str::to_string),
        // T.61 is a defunct 8-bit encoding whose graphic characters almost all sit where
        // Latin-1 has them; reading it as Latin-1 is what OpenSSL, BoringSSL and Go do. Its
        // control functions (C0 and C1, escape sequences among them) switch character sets,
        // after which Latin-1 would misread the bytes: a string with any is not decoded.
        Tag::T61String => bytes
            .iter()
            .all(|b| matches!(b, 0x20..=0x7e | 0xa0..=0xff))
            .then(|| bytes.iter().map(|b| char::from(*b)).collect()),
        // UCS-2, read as its superset UTF-16 (big-endian): an odd length or an unpaired
        // surrogate is invalid.
        Tag::BmpString => {
            let (units, odd) = (bytes.chunks_exact(2), bytes.len() % 2 != 0);
            let units = units.map(|u| u16::from_be_bytes([u[0], u[1]]));
            (!odd)
                .then(|| {
                    char::decode_utf16(units)
                        .collect::<Result<String, _>>()
                        .ok()
                })
                .flatten()
        }
        // UCS-4 (UTF-32, big-endian): a length not a multiple of 4, or a value that is not a
        // Unicode scalar value (a surrogate, beyond U+10FFFF), is invalid.
        Tag::UniversalString => (bytes.len() % 4 == 0)
            .then(|| {
                bytes
                    .chunks_exact(4)
                    .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .collect::<Option<String>>()
            })
            .flatten(),
        _ => None,
    }
}

/// X.680's PrintableString alphabet: letters, digits, space and `'()+,-./:=?`.
fn is_printable_string_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b)
}

fn serial_hex(serial: &[u8]) -> String {
    let start = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    serial[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate the server loaded, for the expiry gauge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedCertificate {
    /// The file it came from.
    pub(crate) name: String,
    /// Serial, expiry and names read from it.
    pub(crate) info: CertificateInfo,
}

impl LoadedCertificate {
    /// The file it came from: the `name` label of the expiry gauge, so an alert says which
    /// file to renew.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its `notAfter`, in seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        self.info.not_after_unix
    }

    /// Its `notBefore`, in seconds since the Unix epoch.
    pub fn not_before_unix(&self) -> i64 {
        self.info.not_before_unix
    }

    /// Its serial number in lowercase hex, leading zero bytes dropped (as `openssl x509
    /// -serial` prints it, in lowercase).
    pub fn serial_hex(&self) -> &str {
        &self.info.serial_hex
    }
}

#[cfg(all(test, feature = "dev-certs"))]
mod tests {
    use super::*;
    use rcgen::{
        BmpString, CertificateParams, DnType, DnValue, KeyPair, SanType, SerialNumber,
        UniversalString,
    };

    const UTF8: u8 = 0x0c;
    const PRINTABLE: u8 = 0x13;
    const T61: u8 = 0x14;
    const IA5: u8 = 0x16;
    const BMP: u8 = 0x1e;
    const UNIVERSAL: u8 = 0x1c;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    /// GeneralName `[2] dNSName` and `[6] uniformResourceIdentifier`.
    const SAN_DNS: u8 = 0x82;
    const SAN_URI: u8 = 0x86;

    /// One DER element.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len().to_be_bytes();
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            _ => {
                let skip = len.iter().take_while(|b| **b == 0).count();
                out.push(0x80 | (len.len() - skip) as u8);
                out.extend_from_slice(&len[skip..]);
            }
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    /// A Name of CN attributes only: each inner slice is one RDN (a SET, so several CNs in one
    /// slice make a multi-valued RDN), each CN its string tag and raw bytes.
    fn cn_name(rdns: &[&[(u8, &[u8])]]) -> Vec<u8> {
        let cn_oid = [0x55, 0x04, 0x03];
        let rdns: Vec<Vec<u8>> = rdns
            .iter()
            .map(|rdn| {
                let attributes: Vec<Vec<u8>> = rdn
                    .iter()
                    .map(|(tag, value)| seq(&[tlv(0x06, &cn_oid), tlv(*tag, value)]))
                    .collect();
                tlv(0x31, &attributes.concat())
            })
            .collect();
        seq(&rdns)
    }

    /// A certificate rcgen cannot write (several CNs in one RDN, strings that are invalid in
    /// their declared type): serial `0102`, `subject`, `not_after` (time tag and text) and SAN
    /// entries (GeneralName tag and raw bytes). Its key and signature are placeholders:
    /// `from_der` reads, it does not verify.
    fn certificate(subject: &[u8], not_after: (u8, &[u8]), sans: &[(u8, &[u8])]) -> Vec<u8> {
        let ecdsa_sha256 = seq(&[tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02])]);
        let ec_p256 = seq(&[
            tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
            tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        ]);
        let mut point = vec![0, 0x04];
        point.extend([7u8; 64]);
        let mut tbs = vec![
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[0x01, 0x02]),
            ecdsa_sha256.clone(),
            cn_name(&[&[(UTF8, b"test ca")]]),
            seq(&[
                tlv(UTC_TIME, b"240101000000Z"),
                tlv(not_after.0, not_after.1),
            ]),
            subject.to_vec(),
            seq(&[ec_p256, tlv(0x03, &point)]),
        ];
        if !sans.is_empty() {
            let names: Vec<Vec<u8>> = sans.iter().map(|(tag, name)| tlv(*tag, name)).collect();
            let extension = seq(&[tlv(0x06, &[0x55, 0x1d, 0x11]), tlv(0x04, &seq(&names))]);
            tbs.push(tlv(0xa3, &seq(&[extension])));
        }
        seq(&[seq(&tbs), ecdsa_sha256, tlv(0x03, &[0, 0x30, 0x00])])
    }

    const NOT_AFTER: (u8, &[u8]) = (UTC_TIME, b"310704000000Z");

    /// A self-signed certificate from rcgen whose subject is CN `cn`.
    fn rcgen_with_cn(cn: DnValue) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

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
        assert_eq!(info.subject_cns, ["client one"]);
        assert_eq!(info.dns_names, ["a.test", "*.b.test"]);
        assert_eq!(info.uris, ["spiffe://test/one"]);
        // 2031-07-04T00:00:00Z
        assert_eq!(info.not_after_unix, 1_940_889_600);
    }

    #[test]
    fn usage_reads_ca_and_extended_key_usage_and_judges_a_server_certificate() {
        use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa};
        let usage_of = |edit: &dyn Fn(&mut CertificateParams)| {
            let mut params = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
            edit(&mut params);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            CertificateInfo::from_der(cert.der())
                .unwrap()
                .usage
                .unwrap()
        };
        let plain = usage_of(&|_| {});
        assert_eq!((plain.is_ca, plain.purposes.clone()), (false, None));
        assert_eq!(plain.server_problem(), None, "no EKU: any purpose");
        let server =
            usage_of(&|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
        assert_eq!(server.server_problem(), None);
        let both = usage_of(&|p| {
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ]
        });
        assert_eq!(
            both.purposes.as_deref(),
            Some(&["serverAuth".to_string(), "clientAuth".to_string()][..])
        );
        assert_eq!(both.server_problem(), None);
        let any = usage_of(&|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any]);
        assert_eq!(any.server_problem(), None);
        let client =
            usage_of(&|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let why = client.server_problem().expect("a client-only certificate");
        assert!(
            why.contains("clientAuth") && why.contains("serverAuth"),
            "{why}"
        );
        let ca = usage_of(&|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
        assert!(ca.is_ca);
        assert!(ca
            .server_problem()
            .expect("a CA")
            .contains("CA certificate"));
        let not_ca = usage_of(&|p| p.is_ca = IsCa::ExplicitNoCa);
        assert_eq!(not_ca.server_problem(), None, "cA false");
    }

    #[test]
    fn not_before_is_read() {
        let mut params = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2031, 7, 4);
        let key = KeyPair::generate().unwrap();
        let info = CertificateInfo::from_der(params.self_signed(&key).unwrap().der()).unwrap();
        // 2030-01-02T00:00:00Z
        assert_eq!(info.not_before_unix, 1_893_542_400);
    }

    #[test]
    fn every_cn_is_read_in_order() {
        // rcgen keeps one value per attribute type; a custom type with CN's OID is a second.
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "first");
        params.distinguished_name.push(
            DnType::CustomDnType(vec![2, 5, 4, 3]),
            DnValue::BmpString(BmpString::try_from("second").unwrap()),
        );
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = CertificateInfo::from_der(cert.der()).unwrap();
        assert_eq!(info.subject_cns, ["first", "second"]);

        // Two CNs in one multi-valued RDN, a third in another RDN.
        let subject = cn_name(&[&[(UTF8, b"a"), (PRINTABLE, b"b")], &[(UTF8, b"c")]]);
        let info = CertificateInfo::from_der(&certificate(&subject, NOT_AFTER, &[])).unwrap();
        assert_eq!(info.subject_cns, ["a", "b", "c"]);

        let info = CertificateInfo::from_der(&certificate(&cn_name(&[]), NOT_AFTER, &[])).unwrap();
        assert!(info.subject_cns.is_empty(), "an empty subject has no CN");
    }

    #[test]
    fn each_string_type_a_cn_is_written_in_is_decoded_by_its_own_rules() {
        let cases = [
            (DnValue::Utf8String("Zoë 🦀".into()), "Zoë 🦀"),
            (
                DnValue::PrintableString("Alice Smith (ops)".try_into().unwrap()),
                "Alice Smith (ops)",
            ),
            (
                DnValue::Ia5String("alice@example.test".try_into().unwrap()),
                "alice@example.test",
            ),
            (DnValue::TeletexString("alice".try_into().unwrap()), "alice"),
            (
                DnValue::BmpString(BmpString::try_from("Zoë").unwrap()),
                "Zoë",
            ),
            (
                DnValue::UniversalString(UniversalString::try_from("Zoë 🦀").unwrap()),
                "Zoë 🦀",
            ),
        ];
        for (value, text) in cases {
            let info = CertificateInfo::from_der(&rcgen_with_cn(value.clone())).unwrap();
            assert_eq!(info.subject_cns, [text], "{value:?}");
        }
        // What rcgen does not write: TeletexString beyond ASCII (read as Latin-1) and a
        // BMPString with a surrogate pair (UTF-16).
        let latin1 = cn_name(&[&[(T61, b"Jos\xe9")]]);
        let info = CertificateInfo::from_der(&certificate(&latin1, NOT_AFTER, &[])).unwrap();
        assert_eq!(info.subject_cns, ["José"]);
        let pair = cn_name(&[&[(BMP, b"\x00a\xd8\x3e\xdd\x80")]]);
        let info = CertificateInfo::from_der(&certificate(&pair, NOT_AFTER, &[])).unwrap();
        assert_eq!(info.subject_cns, ["a🦀"]);
        // Bytes mean what their declared type says: ASCII bytes in a BMPString are not ASCII.
        let mislabelled = cn_name(&[&[(BMP, b"alice\x00")]]);
        let info = CertificateInfo::from_der(&certificate(&mislabelled, NOT_AFTER, &[])).unwrap();
        assert_eq!(info.subject_cns, ["\u{616c}\u{6963}\u{6500}"]);
    }

    #[test]
    fn a_name_invalid_in_its_declared_type_is_skipped_not_approximated() {
        let invalid: [(u8, &[u8], &str); 16] = [
            (UTF8, b"alic\xff", "UTF8String, not UTF-8"),
            (PRINTABLE, b"alice@example.test", "PrintableString with @"),
            (PRINTABLE, b"Jos\xe9", "PrintableString beyond ASCII"),
            (IA5, b"caf\xc3\xa9", "IA5String beyond ASCII"),
            (T61, b"\x1b(Balice", "TeletexString with an escape sequence"),
            (T61, b"alice\x85", "TeletexString with a C1 control"),
            (
                BMP,
                b"\x00a\x00l\x00i\x00c\x00e\x00",
                "BMPString of odd length",
            ),
            (
                BMP,
                b"\x00a\xd8\x3e",
                "BMPString with an unpaired surrogate",
            ),
            (BMP, b"alice", "UTF-8 bytes declared BMPString"),
            (
                UNIVERSAL,
                b"\x00\x00\x00a\x00\x00",
                "UniversalString not 4-byte",
            ),
            (UNIVERSAL, b"\x00\x00\xd8\x00", "UniversalString surrogate"),
            (
                UNIVERSAL,
                b"\x00\x11\x00\x00",
                "UniversalString beyond U+10FFFF",
            ),
            (0x12, b"12345", "NumericString, not a DirectoryString"),
            (0x04, b"alice", "OCTET STRING"),
            (0x8c, b"alice", "context-specific [12], not a UTF8String"),
            (0x2c, &tlv(UTF8, b"alice"), "constructed UTF8String"),
        ];
        for (tag, bytes, what) in invalid {
            let subject = cn_name(&[&[(tag, bytes)], &[(UTF8, b"bob")]]);
            let info = CertificateInfo::from_der(&certificate(&subject, NOT_AFTER, &[]))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(info.subject_cns, ["bob"], "{what}");
            let alone = cn_name(&[&[(tag, bytes)]]);
            let info = CertificateInfo::from_der(&certificate(&alone, NOT_AFTER, &[])).unwrap();
            assert!(info.subject_cns.is_empty(), "{what}");
        }
    }

    #[test]
    fn a_san_outside_ascii_is_skipped() {
        let sans: [(u8, &[u8]); 6] = [
            (SAN_DNS, b"caf\xc3\xa9.test"),
            (SAN_DNS, b"\xff.test"),
            (SAN_DNS, b"good.test"),
            (SAN_URI, b"spiffe://test/caf\xc3\xa9"),
            (SAN_URI, b"spiffe://test/\xff"),
            (SAN_URI, b"spiffe://test/good"),
        ];
        let subject = cn_name(&[&[(UTF8, b"alice")]]);
        let info = CertificateInfo::from_der(&certificate(&subject, NOT_AFTER, &sans)).unwrap();
        assert_eq!(info.dns_names, ["good.test"]);
        assert_eq!(info.uris, ["spiffe://test/good"]);
    }

    #[test]
    fn not_after_in_both_time_encodings() {
        let subject = cn_name(&[&[(UTF8, b"alice")]]);
        let not_after = |time: (u8, &[u8])| {
            CertificateInfo::from_der(&certificate(&subject, time, &[]))
                .map(|info| info.not_after_unix)
        };
        assert_eq!(not_after((UTC_TIME, b"700101000000Z")), Ok(0));
        // UTCTime's years 50–99 are 19xx, 00–49 are 20xx (RFC 5280, 4.1.2.5.1).
        assert_eq!(not_after((UTC_TIME, b"491231235959Z")), Ok(2_524_607_999));
        assert_eq!(not_after((UTC_TIME, b"500101000000Z")), Ok(-631_152_000));
        assert_eq!(
            not_after((GENERALIZED_TIME, b"20500101000000Z")),
            Ok(2_524_608_000)
        );
        assert!(not_after((GENERALIZED_TIME, b"2000030100000Z")).is_err());
        assert!(not_after((0x04, b"20500101000000Z")).is_err());
    }

    #[test]
    fn serial_is_hex_without_leading_zero_bytes() {
        let subject = cn_name(&[&[(UTF8, b"alice")]]);
        let info = CertificateInfo::from_der(&certificate(&subject, NOT_AFTER, &[])).unwrap();
        assert_eq!(info.serial_hex, "0102");
        assert_eq!(serial_hex(&[0, 0, 0x8a]), "8a");
        assert_eq!(serial_hex(&[0]), "00");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let key = KeyPair::generate().unwrap();
        let real = rcgen_with_cn("alice".into());
        let mut trailing = real.clone();
        trailing.push(0);
        let pem = rcgen_pem(&key);
        let cases: [(&str, &[u8]); 9] = [
            ("empty", &[]),
            ("a lone tag", &[0x30]),
            ("a five-byte length", &[0x30, 0x85, 1, 1, 1, 1, 1]),
            (
                "a 4 GiB length",
                &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30],
            ),
            ("a SEQUENCE holding a short one", &[0x30, 0x02, 0x30, 0x05]),
            ("a SEQUENCE of one INTEGER", &[0x30, 0x03, 0x02, 0x01, 0x01]),
            ("a PKCS#8 private key", &key.serialize_der()),
            ("PEM text, not DER", pem.as_bytes()),
            ("a certificate with a byte after it", &trailing),
        ];
        for (what, der) in cases {
            assert!(CertificateInfo::from_der(der).is_err(), "{what}");
        }
        for len in 0..real.len() {
            assert!(
                CertificateInfo::from_der(&real[..len]).is_err(),
                "cut at {len}"
            );
        }
    }

    fn rcgen_pem(key: &KeyPair) -> String {
        let params = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.self_signed(key).unwrap().pem()
    }

    /// Random bytes, and a real certificate with each byte changed in turn: whatever comes
    /// back, nothing panics (x509-parser is fuzzed; this checks our side of it too).
    #[test]
    fn random_and_mutated_input_never_panics() {
        // xorshift64: deterministic, so a failure reproduces.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let len = (next() % 700) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let (Some(first), true) = (bytes.first_mut(), next() % 2 == 0) {
                *first = 0x30;
            }
            let _ = CertificateInfo::from_der(&bytes);
        }
        let real = rcgen_with_cn("alice".into());
        for at in 0..real.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut mutated = real.clone();
                mutated[at] ^= flip;
                let _ = CertificateInfo::from_der(&mutated);
            }
        }
    }
}
