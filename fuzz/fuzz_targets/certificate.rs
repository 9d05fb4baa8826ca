//! The facts the project reads itself from a certificate's DER (actors/src/tls/certificate.rs:
//! serial, expiry, subject CNs, SAN DNS names and URIs) for the mTLS allow-list, the client
//! identity a connection records, and the served certificates' listing. Checked: no panic; the
//! identity and the allow-list see exactly the facts that were read; the names are what the
//! allow-list's comparisons assume (ASCII SANs, no NUL smuggled into a name through a string
//! type that cannot hold it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsvisor_actors::fuzz_hooks::{allow_list_admits, client_identity};
use tlsvisor_actors::testing::CertificateFacts;
use tlsvisor_actors::AllowList;

fuzz_target!(|data: &[u8]| {
    let facts = CertificateFacts::from_der(data);
    let identity = client_identity(data);
    let allow = AllowList {
        cns: vec!["client.test".into()],
        dns_sans: vec!["client.test".into()],
        uri_sans: vec!["spiffe://test/client".into()],
    };
    let admitted = allow_list_admits(&allow, data);
    match facts {
        Err(_) => {
            assert!(identity.is_none());
            assert!(admitted.is_none());
        }
        Ok(facts) => {
            let identity = identity.expect("facts read, but no identity");
            assert_eq!(identity.cns, facts.subject_cns);
            assert_eq!(identity.cn.as_ref(), facts.subject_cns.first());
            assert_eq!(identity.dns_sans, facts.dns_names);
            assert_eq!(identity.uri_sans, facts.uris);
            assert_eq!(identity.serial, facts.serial_hex);
            let expected = facts.subject_cns.iter().any(|cn| cn == "client.test")
                || facts
                    .dns_names
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case("client.test"))
                || facts.uris.iter().any(|u| u == "spiffe://test/client");
            assert_eq!(admitted, Some(expected));
            assert!(facts
                .dns_names
                .iter()
                .chain(&facts.uris)
                .all(|n| n.is_ascii()));
            assert!(facts
                .serial_hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            // No leading zero byte, but for the serial 0 itself ("00").
            assert!(facts.serial_hex == "00" || !facts.serial_hex.starts_with("00"));
        }
    }
});
