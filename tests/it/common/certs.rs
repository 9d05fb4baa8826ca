//! Certificate files for the binary's tests: issued by a development CA into a scratch folder.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tlsvisor_actors::testing::CertificateFacts;
use tlsvisor_actors::testing::ScratchDir;
use tlsvisor_actors::DevCerts;

/// Serial, expiry and names of the first certificate in `pem`.
pub(crate) fn info_of_pem(pem: &str) -> CertificateFacts {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    CertificateFacts::from_der(&der).unwrap()
}

/// The path of `file` in `scratch`, as a flag value.
pub(crate) fn path_in(scratch: &ScratchDir, file: &str) -> String {
    scratch.path(file).display().to_string()
}

/// Issues a certificate for `names` into `{stem}.crt` and `{stem}.key` (replacing them by
/// rename); returns the two paths and what the certificate holds.
pub(crate) fn issue_into(
    scratch: &ScratchDir,
    certs: &DevCerts,
    stem: &str,
    names: &[&str],
) -> (String, String, CertificateFacts) {
    let (cert, key) = (
        path_in(scratch, &format!("{stem}.crt")),
        path_in(scratch, &format!("{stem}.key")),
    );
    let (cert_pem, key_pem) = certs.issue_server(names).unwrap();
    ScratchDir::replace(cert.as_ref(), &cert_pem).unwrap();
    ScratchDir::replace(key.as_ref(), &key_pem).unwrap();
    (cert, key, info_of_pem(&cert_pem))
}

/// The flags of a server with `cert`/`key` that admits the client `alice` of the CA in `ca`.
pub(crate) fn alice_only<'a>(cert: &'a str, key: &'a str, ca: &'a str) -> Vec<&'a str> {
    let flags = [
        "--cert",
        cert,
        "--key",
        key,
        "--client-ca",
        ca,
        "--allow-cn",
        "alice",
    ];
    flags.to_vec()
}

/// A self-signed server certificate for `localhost` valid from `from` to `to` (years), with
/// serverAuth: (certificate PEM, key PEM).
pub(crate) fn dated_certificate(from: i32, to: i32) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(to, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}
