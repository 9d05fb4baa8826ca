//! Reading the files of a TLS configuration: each error names its file, and no file can make a
//! load block on an open or grow memory without bound.
//!
//! This is the one place the crate reads a TLS file (certificates, keys, CA bundles, CRLs,
//! OCSP responses, ticket keys), so its two rules hold for every one of them:
//!
//! - **Regular files only.** A FIFO put where a certificate was blocks `open(2)` until a
//!   writer comes (a reload on a signal thread hung for as long as nobody wrote), and a device
//!   such as `/dev/zero` never ends. The file is opened with `O_NONBLOCK`, which makes opening
//!   a FIFO return at once, and its type is checked on the open descriptor (no race with a
//!   rename between a check and the open) before anything is read.
//! - **At most [`MAX_TLS_FILE_BYTES`].** Read through a limit, so a file that grows while it is
//!   read is still cut there.
//!
//! A regular file on a hung network mount can still block a read in the kernel: only the caller
//! can bound that in time (the binary reloads off its signal thread, with a deadline).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::TlsConfigError;

/// The largest TLS file read, 1 MiB. A certificate chain or a key is a few KiB, a bundle of
/// every public root CA about 200 KiB, a private CA's CRL or a ticket key file far less;
/// anything larger is a mistake (a wrong path, a log file), and reading it whole on every
/// reload would cost its size in memory each time.
pub(crate) const MAX_TLS_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a TLS file under the rules in the module docs, naming it in every error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    let read_error = |source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer (it changes
    // nothing for a regular file's reads). O_NOCTTY: a terminal named by mistake does not
    // become this process's controlling terminal.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        let kind = match () {
            _ if kind.is_dir() => "a directory",
            _ if kind.is_fifo() => "a FIFO",
            _ if kind.is_char_device() => "a character device",
            _ if kind.is_block_device() => "a block device",
            _ if kind.is_socket() => "a socket",
            _ => "not a regular file",
        };
        return Err(TlsConfigError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let too_large = || TlsConfigError::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_TLS_FILE_BYTES,
    };
    if metadata.len() > MAX_TLS_FILE_BYTES {
        return Err(too_large());
    }
    // One byte more than the limit tells a file at the limit from one that grew past it.
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    File::take(file, MAX_TLS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_TLS_FILE_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Wraps an error about the content of `path` so that it names the file.
pub(crate) fn in_file(path: &Path) -> impl FnOnce(TlsConfigError) -> TlsConfigError + '_ {
    move |e| TlsConfigError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

/// Every PEM certificate in `pem` (the content of `path`), at least one.
pub(crate) fn parse_certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsConfigError::NoCertificate)
        .map_err(in_file(path))?;
    if chain.is_empty() {
        return Err(in_file(path)(TlsConfigError::NoCertificate));
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tlsvisor-files-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_regular_file_up_to_the_limit_is_read_whole() {
        let dir = scratch("regular");
        let at_limit = dir.join("at-limit");
        std::fs::write(&at_limit, vec![b'x'; MAX_TLS_FILE_BYTES as usize]).unwrap();
        assert_eq!(
            read_file(&at_limit).unwrap().len() as u64,
            MAX_TLS_FILE_BYTES
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(read_file(&empty).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_over_the_limit_is_refused_naming_it() {
        let dir = scratch("large");
        let large = dir.join("large.crt");
        std::fs::write(&large, vec![b'x'; MAX_TLS_FILE_BYTES as usize + 1]).unwrap();
        let error = read_file(&large).unwrap_err();
        assert!(
            matches!(error, TlsConfigError::TooLarge { limit, .. } if limit == MAX_TLS_FILE_BYTES)
        );
        let text = error.to_string();
        assert!(
            text.contains("large.crt") && text.contains("1 MiB"),
            "{text}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn devices_and_directories_are_refused_before_a_read() {
        for (path, kind) in [
            ("/dev/zero", "a character device"),
            ("/dev/null", "a character device"),
            ("/", "a directory"),
        ] {
            let error = read_file(Path::new(path)).unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(error, TlsConfigError::NotRegularFile { kind: k, .. } if k == kind),
                "{path}: {text}"
            );
            assert!(text.contains(path), "{text}");
        }
        // A FIFO: without O_NONBLOCK the open would wait for a writer, forever here.
        let dir = scratch("fifo");
        let fifo = dir.join("server.crt");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let error = read_file(&fifo).unwrap_err();
        assert!(
            matches!(error, TlsConfigError::NotRegularFile { kind: "a FIFO", .. }),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
        let missing = read_file(Path::new("/no/such/file.crt")).unwrap_err();
        assert!(matches!(missing, TlsConfigError::Read { .. }), "{missing}");
    }
}
