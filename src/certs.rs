//! The built-in development certificate and `tlsvisor gen-certs`.

use std::path::Path;

use tlsvisor_actors::{DevCerts, PemCertificate};

use crate::error::BoxError;

/// The first lines of every file `gen-certs` writes. PEM readers skip text outside the
/// `-----BEGIN` markers, so the warning travels with the key material.
const DEV_ONLY_BANNER: &str =
    "# tlsvisor DEVELOPMENT certificate material, made by `tlsvisor gen-certs`.\n\
# Anyone with these files can impersonate the server: never use them in production.\n";

/// The development server certificate and key compiled into the binary (from `certs/`, made by
/// `tlsvisor gen-certs --out certs`). Clients trust `certs/ca.crt`.
pub(crate) const BUILT_IN_CERT: &str = include_str!("../certs/server.crt");
const BUILT_IN_KEY: &str = include_str!("../certs/server.key");

/// The built-in development certificate and key as PEM, for the TLS configuration to build
/// with the operator's policy.
pub(crate) fn built_in_pem() -> PemCertificate {
    PemCertificate {
        name: "built-in development certificate".to_string(),
        cert_pem: BUILT_IN_CERT.as_bytes().to_vec(),
        key_pem: BUILT_IN_KEY.as_bytes().to_vec(),
    }
}

/// Writes a fresh CA and server certificate into `out`. Keys are written readable by the owner
/// only.
pub(crate) fn generate_into(out: &Path) -> Result<(), BoxError> {
    let certs = DevCerts::generate()?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let files = [
        ("ca.crt", &certs.ca_cert_pem, false),
        ("ca.key", &certs.ca_key_pem, true),
        ("server.crt", &certs.server_cert_pem, false),
        ("server.key", &certs.server_key_pem, true),
    ];
    for (name, pem, secret) in files {
        let path = out.join(name);
        write_file(&path, &format!("{DEV_ONLY_BANNER}{pem}"), secret)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_certificate_loads() {
        let source = tlsvisor_actors::TlsSource {
            built_in: Some(built_in_pem()),
            ..Default::default()
        };
        source.load().unwrap();
    }

    #[test]
    fn generated_files_load_and_are_marked_for_development() {
        let dir = std::env::temp_dir().join(format!("tlsvisor-certs-{}", std::process::id()));
        generate_into(&dir).unwrap();
        let cert = std::fs::read(dir.join("server.crt")).unwrap();
        let key = std::fs::read(dir.join("server.key")).unwrap();
        assert!(String::from_utf8_lossy(&key).starts_with("# tlsvisor DEVELOPMENT"));
        tlsvisor_actors::LoadedTls::from_pem(&cert, &key).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
