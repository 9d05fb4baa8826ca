//! Building the TLS configuration from the settings' files, and rebuilding it while the server
//! runs: on SIGHUP (`reload`) and, with `--watch-certs`, when the files change (`CertWatcher`).

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use slog::{error, info, Logger};
use tlsvisor_actors::{LoadedTls, TlsReloader, TlsSource};

use crate::certs;
use crate::error::BoxError;
use crate::settings::{CertSource, Settings};

/// How often `--watch-certs` looks at the files' modification times.
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What the settings' TLS configuration is built from: the certificate files (or the built-in
/// development certificate) and the policy.
pub(crate) fn tls_source(settings: &Settings) -> TlsSource {
    let (certificates, built_in) = match &settings.cert {
        CertSource::BuiltIn => (Vec::new(), Some(certs::built_in_pem())),
        CertSource::Files(pairs) => (pairs.clone(), None),
    };
    TlsSource {
        certificates,
        sni_strict: settings.values.sni_strict,
        policy: settings.tls_policy.clone(),
        built_in,
        client_auth: settings.client_auth.clone(),
        ticket_key_file: settings.values.ticket_key_file.clone(),
    }
}

/// Reads every file of the TLS configuration and builds it, completely validated. An error
/// names the file.
pub(crate) fn build_tls(settings: &Settings) -> Result<LoadedTls, BoxError> {
    Ok(tls_source(settings).load()?)
}

/// Rebuilds the TLS configuration from the files and swaps it in; on any error keeps the one in
/// use. Either way one log line says what happened (the error names the file) and
/// `tlsvisor_tls_reloads_total{result}` counts it. Returns whether it reloaded.
///
/// Reads files on the calling thread: call it where blocking for a few milliseconds is fine.
pub(crate) fn reload(settings: &Settings, reloader: &TlsReloader, log: &Logger) -> bool {
    match reloader.reload_from(&tls_source(settings)) {
        Ok(()) => {
            let certificates = reloader.current().certificates().len();
            info!(log, "TLS configuration reloaded"; "certificates" => certificates);
            true
        }
        Err(e) => {
            error!(log, "TLS reload failed; keeping the previous configuration";
                "error" => %e);
            false
        }
    }
}

/// What the TLS files looked like at one look: each one's modification time and size, or
/// absent.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct FilesSeen(Vec<(PathBuf, Option<(SystemTime, u64)>)>);

impl FilesSeen {
    /// The TLS files of `settings` as they are now. Taken before the files are read for the
    /// first time, it is what `--watch-certs` compares with: a change made after the read,
    /// however soon, is then seen (taken later, by the watcher itself, a renewal landing
    /// between the read and the watcher's start went unseen for good).
    pub(crate) fn of(settings: &Settings) -> FilesSeen {
        FilesSeen::of_files(&tls_source(settings).files())
    }

    fn of_files(files: &[PathBuf]) -> FilesSeen {
        FilesSeen(
            files
                .iter()
                .map(|path| {
                    let seen = std::fs::metadata(path)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())));
                    (path.clone(), seen)
                })
                .collect(),
        )
    }
}

/// `--watch-certs`: a thread that polls the TLS files and reloads once they changed and then
/// stayed unchanged for one interval (a renewal writes the certificate and the key one after
/// the other; reloading between the two would fail on a mismatched pair). Stopped and joined
/// on drop.
pub(crate) struct CertWatcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl CertWatcher {
    /// Starts watching the files of `settings` every `interval`; `loaded` is how they looked
    /// when the configuration in use was read from them.
    pub(crate) fn start(
        settings: Settings,
        reloader: TlsReloader,
        log: Logger,
        interval: Duration,
        loaded: FilesSeen,
    ) -> std::io::Result<CertWatcher> {
        let files = tls_source(&settings).files();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tlsvisor-watch-certs".into())
            .spawn(move || {
                info!(log, "watching certificate files"; "files" => files.len(),
                    "interval_ms" => interval.as_millis() as u64);
                let mut loaded = loaded;
                let mut last = loaded.clone();
                // Only the sender's drop ends the wait early: that is the stop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let now = FilesSeen::of_files(&files);
                    if now != loaded && now == last {
                        reload(&settings, &reloader, &log);
                        loaded = now.clone();
                    }
                    last = now;
                }
            })?;
        Ok(CertWatcher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
