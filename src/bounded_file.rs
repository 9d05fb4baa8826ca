//! Reading the binary's own small files (the config file, the admin token file) the way the
//! library reads TLS files (`actors/src/tls/files.rs`): regular files only, checked on the
//! open descriptor before a byte is read, and at most [`MAX_FILE_BYTES`].
//!
//! A FIFO named as the token file would otherwise block the open until a writer came, and
//! `/dev/zero` would grow memory until the process died.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::BoxError;

/// The largest file read, 1 MiB: a config file or a token is a few hundred bytes; more is a
/// wrong path.
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads `path` as UTF-8 text under the rules above; `what` (the flag, `--config`) and the
/// path name it in every error.
pub(crate) fn read_text(what: &str, path: &Path) -> Result<String, BoxError> {
    let fail = |why: String| -> BoxError { format!("{what} {}: {why}", path.display()).into() };
    // O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let metadata = file.metadata().map_err(|e| fail(e.to_string()))?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        let kind = match () {
            _ if kind.is_dir() => "a directory",
            _ if kind.is_fifo() => "a FIFO",
            _ if kind.is_char_device() || kind.is_block_device() => "a device",
            _ if kind.is_socket() => "a socket",
            _ => "not a regular file",
        };
        return Err(fail(format!("it is {kind}, not a regular file")));
    }
    let too_large = || fail(format!("larger than {} KiB", MAX_FILE_BYTES / 1024));
    if metadata.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_only_and_at_most_the_limit() {
        let dir = std::env::temp_dir().join(format!("tlsvisor-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("token");
        std::fs::write(&small, "s3cret\n").unwrap();
        assert_eq!(read_text("--admin-token-file", &small).unwrap(), "s3cret\n");
        let large = dir.join("large");
        std::fs::write(&large, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let error = read_text("--config", &large).unwrap_err().to_string();
        assert!(
            error.starts_with("--config ") && error.contains("larger than"),
            "{error}"
        );
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let error = read_text("--admin-token-file", &fifo)
            .unwrap_err()
            .to_string();
        assert!(error.contains("a FIFO"), "{error}");
        let error = read_text("--config", Path::new("/dev/zero")).unwrap_err();
        assert!(error.to_string().contains("a device"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
