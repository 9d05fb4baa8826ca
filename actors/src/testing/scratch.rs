//! `ScratchDir`: a folder of files for one test (certificates, keys), removed on drop.

use std::path::{Path, PathBuf};

/// A fresh folder under the system's temporary folder, named after the test and the process,
/// removed with everything in it on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `$TMPDIR/tlsvisor-{name}-{pid}`.
    pub fn new(name: &str) -> std::io::Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!("tlsvisor-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }

    /// The path of `file` in the folder.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// Replaces `path` with `text` by writing a sibling and renaming it over, as certificate
    /// renewal tools do: a reader never sees half a file.
    pub fn replace(path: &Path, text: &str) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
