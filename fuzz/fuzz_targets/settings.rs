//! The settings: `tlsvisor`'s command line (clap) and its `--config` file (TOML), merged and
//! resolved (certificate pairs, mTLS, PROXY networks, durations) into a server configuration,
//! then validated as `serve` validates it before it starts. Nothing is bound or started.
//!
//! The input: one command-line argument a line (`serve`, `--workers`, `4`, ...), then an
//! empty line, then the config file's text; with a config text, `--config` names it.
//!
//! Checked: no panic, no abort (an allocation sized by a setting), whatever the input.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tlsvisor::fuzz_hooks::settings_from_args;

/// The config file this process writes each input's text into.
fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!(
            "tlsvisor-fuzz-settings-{}.toml",
            std::process::id()
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    let (flags, file) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut argv: Vec<OsString> = vec!["tlsvisor".into()];
    argv.extend(
        flags
            .split(|&b| b == b'\n')
            .filter(|arg| !arg.is_empty())
            .map(|arg| std::ffi::OsStr::from_bytes(arg).to_os_string())
            // The config file is the target's own: never a path from the input (which could
            // name a FIFO or /dev/zero).
            .filter(|arg| !arg.as_bytes().starts_with(b"--config")),
    );
    if !file.is_empty() {
        std::fs::write(config_path(), file).expect("the config file is written");
        argv.push("--config".into());
        argv.push(config_path().into());
    }
    let _ = settings_from_args(argv);
});
