//! Building the TLS configuration from the settings' files, and rebuilding it while the server
//! runs: on SIGHUP and `POST /reload` (`Reloads`, off the thread that asked, with a deadline)
//! and, with `--watch-certs`, when the files change (`CertWatcher`, on a thread of its own).
//!
//! Reading the files can block: every file is refused unless it is a regular file of at most
//! 1 MiB (a FIFO or a device is refused before it is read), but a regular file on a hung
//! network mount can still hold a `read(2)` for as long as the mount hangs. So a reload never
//! reads on the signal-handling loop or on an HTTP worker: it reads on a thread of its own,
//! the caller waits at most [`RELOAD_DEADLINE`], and a reload still stuck past it is given up
//! (counted as failed, the configuration in use kept; what the stuck thread reads later is
//! dropped, never installed). One reload at a time: while one is stuck, another is refused at
//! once rather than piling up threads behind the same mount.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use slog::{error, info, warn, Logger};
use tlsvisor_actors::{Echo, LoadedTls, Service, TlsReloader, TlsSource, TlsWarning};

use crate::certs;
use crate::cli::{ProtocolKind, Values};
use crate::descriptors::Budget;
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

/// Every file the TLS configurations of `settings` are read from: the default service's and
/// every `[[service]]`'s, each with the files of its TLS to the upstreams (`upstream-ca`,
/// `upstream-cert`, `upstream-key`): what `--watch-certs` polls.
pub(crate) fn tls_files(settings: &Settings) -> Vec<PathBuf> {
    let mut files = tls_source(settings).files();
    files.extend(upstream_files(&settings.values));
    for service in &settings.services {
        files.extend(service.tls_source().files());
        files.extend(upstream_files(&service.values));
    }
    files
}

/// The files of a service's TLS to its upstreams.
fn upstream_files(values: &Values) -> impl Iterator<Item = PathBuf> + '_ {
    [
        &values.upstream_ca,
        &values.upstream_cert,
        &values.upstream_key,
    ]
    .into_iter()
    .flatten()
    .cloned()
}

/// What a reload installs: the default service and every `[[service]]`, built.
pub(crate) struct Rebuilt {
    default: Service,
    services: Vec<Service>,
    /// The listeners the file names now are not those bound at start (only SIGUSR2 or a
    /// restart binds others).
    listeners_differ: bool,
    /// The keys whose new value this reload does not apply (see [`NOT_RELOADED`]).
    not_applied: Vec<&'static str>,
}

/// The default service as the top-level keys of `settings` describe it, over `tls`: its
/// protocol and its upstream group (TLS to the upstreams, health, retry, PROXY header, connect
/// timeout). What every reload rebuilds; an error says it is the default service's.
pub(crate) fn default_service(settings: &Settings, tls: LoadedTls) -> Result<Service, String> {
    let named = |e: &dyn std::fmt::Display| format!("default service: {e}");
    let refused = crate::service_settings::passthrough_refused(&settings.values);
    if let Some(first) = refused.first() {
        return Err(named(first));
    }
    let proxy = crate::upstream_tls::proxy_config(&settings.values).map_err(|e| named(&e))?;
    let service = match (proxy, settings.values.protocol) {
        (Some(proxy), ProtocolKind::Passthrough) => Service::passthrough(&[], tls, proxy),
        (Some(proxy), _) => Service::proxy(&[], tls, proxy),
        (None, _) => Service::sessions(&[], tls, Echo),
    };
    service.map_err(|e| named(&e))
}

/// A key of the settings, and its value in a form to compare.
type Key = (&'static str, fn(&Values) -> String);

/// The keys a reload does not apply: the listeners and what is fixed when the server starts
/// (workers, limits and timeouts, the descriptor budget, the PROXY header read from clients,
/// the HTTP listeners, privileges, logging). They take effect on SIGUSR2 (a binary upgrade,
/// which reads the file again) or a restart.
const NOT_RELOADED: [Key; 29] = {
    macro_rules! keys {
        ($($key:literal $field:ident),* $(,)?) => {
            [$(($key, |v: &Values| format!("{:?}", v.$field))),*]
        };
    }
    keys![
        "listen" listen, "listen-plain" listen_plain, "workers" workers,
        "max-connections" max_connections, "max-handshakes" max_handshakes,
        "max-connections-per-ip" max_connections_per_ip,
        "max-handshakes-per-ip" max_handshakes_per_ip,
        "max-handshake-rate" max_handshake_rate,
        "max-handshake-rate-per-ip" max_handshake_rate_per_ip,
        "handshake-timeout" handshake_timeout, "idle-timeout" idle_timeout,
        "max-lifetime" max_lifetime, "half-close-timeout" half_close_timeout,
        "close-timeout" close_timeout, "shutdown-grace" shutdown_grace,
        "accept-proxy" accept_proxy, "accept-proxy-from" accept_proxy_from,
        "accept-proxy-timeout" accept_proxy_timeout, "reuse-port" reuse_port,
        "revalidate-live" revalidate_live, "watch-certs" watch_certs,
        "metrics-listen" metrics_listen, "admin-listen" admin_listen,
        "admin-token-file" admin_token_file, "runtime-faults" runtime_faults,
        "user" user, "group" group, "log-format" log_format, "log-level" log_level,
    ]
};

/// The keys of [`NOT_RELOADED`] whose value differs between `running` and `fresh`.
fn not_applied(running: &Values, fresh: &Values) -> Vec<&'static str> {
    NOT_RELOADED
        .iter()
        .filter(|(_, value)| value(running) != value(fresh))
        .map(|(key, _)| *key)
        .collect()
}

/// Refuses a table whose connections need more descriptors than the open-files limit holds
/// for the `--max-connections` in force (fixed at start): an echo server turned into a proxy
/// by a reload holds two descriptors per connection instead of one, and would run out in the
/// middle of accepting instead of pausing at `--max-connections`.
fn fits_the_descriptors(running: &Settings, fresh: &Settings) -> Result<(), String> {
    let in_force = running.max_connections();
    let budget = Budget::current(fresh.busiest_protocol());
    match budget.max_connections(Some(in_force)) {
        Ok(_) => Ok(()),
        Err(why) => Err(format!(
            "refused: a connection of the new configuration's services takes {new} open \
             files (those served now take {was}), and the --max-connections in force, fixed \
             at start, does not fit: {why}. Apply it with a restart or SIGUSR2 (which settle \
             --max-connections again)",
            new = budget.per_connection,
            was = Budget::current(running.busiest_protocol()).per_connection,
        )),
    }
}

/// What a reload installs: the settings read again (the flags over the config file as it is
/// now, checked as at start-up) and the whole service table built from them, every file read
/// and validated. So a SIGHUP after an edit of the config file applies its TLS keys
/// (certificates, the client-certificate policy (CA, CRLs, allow-lists: live connections are
/// then checked against it), versions, ALPN, tickets), the default service's protocol and
/// upstream group (`protocol`, `upstream`, `upstream-ca`/`-cert`/`-key`/`-sni`,
/// `proxy-protocol`, `upstream-connect-timeout`) and its whole `[[service]]` list: names, their
/// certificates and policies, protocols and upstream groups. The keys of [`NOT_RELOADED`]
/// take effect on SIGUSR2 or a restart. Any problem refuses the whole reload, naming it (the
/// service and the file); the table in use is kept.
fn reread_and_build(settings: &Settings) -> Result<Rebuilt, String> {
    let fresh = settings.reread().map_err(|e| e.to_string())?;
    fits_the_descriptors(settings, &fresh)?;
    let tls = build_tls(&fresh).map_err(|e| e.to_string())?;
    let default = default_service(&fresh, tls)?;
    let services = crate::service_settings::build_all(&fresh.services)?;
    // Every listener counts: the TLS ones, `--listen-plain`, and each service's own plaintext
    // ones (a service's listener moved, added or given to another service).
    let listeners_differ = fresh.values.listen != settings.values.listen
        || fresh.plain_listeners() != settings.plain_listeners();
    Ok(Rebuilt {
        default,
        services,
        listeners_differ,
        not_applied: not_applied(&settings.values, &fresh.values),
    })
}

/// Swaps `rebuilt` in (the library checks the table whole once more) and logs the one line
/// that says so, with what the operator must know: the listeners that need SIGUSR2.
fn install(rebuilt: Rebuilt, reloader: &TlsReloader, log: &Logger) -> Result<(), String> {
    let services = rebuilt.services.len();
    let uncovered: Vec<(String, Vec<String>)> = (rebuilt.services.iter())
        .map(|s| (s.label().to_string(), s.uncovered_names()))
        .filter(|(_, names)| !names.is_empty())
        .collect();
    let service_warnings: Vec<TlsWarning> = (rebuilt.services.iter())
        .flat_map(|s| s.tls().warnings().to_vec())
        .collect();
    let protocol = rebuilt.default.protocol();
    reloader
        .reload_table(rebuilt.default, rebuilt.services)
        .map_err(|e| e.to_string())?;
    let current = reloader.current();
    let listeners = match rebuilt.listeners_differ {
        true => "listeners differ; needs SIGUSR2",
        false => "unchanged",
    };
    let not_applied = match rebuilt.not_applied.is_empty() {
        true => "none".to_string(),
        false => rebuilt.not_applied.join(", "),
    };
    info!(log, "TLS configuration reloaded";
        "certificates" => current.certificates().len(),
        "protocol" => protocol,
        "services" => services,
        "listeners" => listeners,
        "needs_sigusr2" => not_applied);
    for warning in current.warnings() {
        warn_about(warning, log);
    }
    for warning in &service_warnings {
        warn_about(warning, log);
    }
    for (service, names) in uncovered {
        warn!(log, "no certificate of the service covers these names; clients asking for \
                    them will refuse the certificate";
            "service" => service, "names" => names.join(", "));
    }
    Ok(())
}

/// Rebuilds the TLS configuration (see [`reread_and_build`]) and swaps it in; on any error
/// keeps the one in use. Either way one log line says what happened (the error names the
/// file) and `tlsvisor_tls_reloads_total{result}` counts it. Returns whether it reloaded.
///
/// Reads files on the calling thread: call it where blocking for a few milliseconds is fine.
pub(crate) fn reload(settings: &Settings, reloader: &TlsReloader, log: &Logger) -> bool {
    let built = reread_and_build(settings);
    if built.is_err() {
        reloader.reload_failed();
    }
    // A table the library refuses counts its own failure.
    match built.and_then(|rebuilt| install(rebuilt, reloader, log)) {
        Ok(()) => true,
        Err(e) => {
            error!(log, "TLS reload failed; keeping the previous configuration";
                "error" => %e);
            false
        }
    }
}

/// One warning line for a served certificate outside its validity period, with the file and
/// the date (in `detail`), at start-up and at every reload that serves it.
pub(crate) fn warn_about(warning: &TlsWarning, log: &Logger) {
    warn!(log, "CERTIFICATE OUTSIDE ITS VALIDITY PERIOD: serving it all the same";
        "file" => %warning.path().display(), "detail" => %warning);
}

/// How long a SIGHUP or `POST /reload` waits for the files to be read and checked before it
/// gives the reload up. A reload reads a few KiB from a handful of files in milliseconds; ten
/// seconds is only ever reached by a storage that hangs.
pub(crate) const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

/// Why a reload asked for by SIGHUP or `POST /reload` did not happen (the configuration in use
/// is kept in every case).
#[derive(Debug)]
pub(crate) enum ReloadError {
    /// Another reload is still running (stuck, if it is past its deadline).
    Busy,
    /// The files were refused; the reason names the file.
    Refused(String),
    /// The files were not read within [`RELOAD_DEADLINE`].
    TimedOut,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Busy => f.write_str("another reload is still running"),
            ReloadError::Refused(why) => f.write_str(why),
            ReloadError::TimedOut => write!(
                f,
                "reading the TLS files took longer than {}s (a hung mount?)",
                RELOAD_DEADLINE.as_secs()
            ),
        }
    }
}

/// Runs reloads off the calling thread, one at a time, with a deadline (see the module docs).
/// Clones share the one-at-a-time flag.
#[derive(Clone)]
pub(crate) struct Reloads {
    settings: Settings,
    reloader: TlsReloader,
    running: Arc<AtomicBool>,
    log: Logger,
}

/// Clears the running flag when dropped: by the reading thread, however it ends, or by the
/// reload it sent its result to, once that result is installed or refused.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Reloads {
    pub(crate) fn new(settings: Settings, reloader: TlsReloader, log: Logger) -> Reloads {
        Reloads {
            settings,
            reloader,
            running: Arc::new(AtomicBool::new(false)),
            log,
        }
    }

    /// Reads and checks the files on a thread of its own and, if that is done within
    /// [`RELOAD_DEADLINE`] and everything is valid, swaps the new configuration in. One log
    /// line says what happened either way; a refused or timed-out reload is counted in
    /// `tlsvisor_tls_reloads_total{result="failed"}` (a busy one is not: nothing was tried).
    pub(crate) async fn reload(&self) -> Result<(), ReloadError> {
        if self.running.swap(true, Ordering::SeqCst) {
            warn!(
                self.log,
                "TLS reload not started: another reload is still running"
            );
            return Err(ReloadError::Busy);
        }
        let running = Running(Arc::clone(&self.running));
        let (done, result) = tokio::sync::oneshot::channel();
        let settings = self.settings.clone();
        let spawned = std::thread::Builder::new()
            .name("tlsvisor-reload".into())
            .spawn(move || {
                #[cfg(feature = "fault-injection")]
                hang_if_asked();
                // The flag goes with the result, so that the next reload starts only once this
                // one is installed (or refused). The receiver may have given up (deadline):
                // then both are dropped here, and the flag cleared.
                let _ = done.send((reread_and_build(&settings), running));
            });
        // Held until this reload is installed or refused (see above).
        let mut _running = None;
        let outcome = match spawned {
            Err(e) => Err(ReloadError::Refused(format!("cannot start a thread: {e}"))),
            Ok(_) => match tokio::time::timeout(RELOAD_DEADLINE, result).await {
                Err(_) => Err(ReloadError::TimedOut),
                // The thread always sends unless it panicked; say so rather than hang.
                Ok(Err(_)) => Err(ReloadError::Refused("the reload thread failed".into())),
                Ok(Ok((built, running))) => {
                    _running = Some(running);
                    built.map_err(ReloadError::Refused)
                }
            },
        };
        let installed = match outcome {
            Ok(rebuilt) => install(rebuilt, &self.reloader, &self.log)
                // The library counted the refusal.
                .map_err(|why| (ReloadError::Refused(why), false)),
            Err(e) => Err((e, true)),
        };
        match installed {
            Ok(()) => Ok(()),
            Err((e, uncounted)) => {
                if uncounted {
                    self.reloader.reload_failed();
                }
                error!(self.log, "TLS reload failed; keeping the previous configuration";
                    "error" => %e);
                Err(e)
            }
        }
    }
}

/// `TLSVISOR_RELOAD_FAULT=hang`: the reading thread never returns, as a read on a hung network
/// mount would not, so that tests can see the deadline and a stop signal handled meanwhile.
#[cfg(feature = "fault-injection")]
fn hang_if_asked() {
    if std::env::var("TLSVISOR_RELOAD_FAULT").is_ok_and(|v| v == "hang") {
        loop {
            std::thread::park();
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
        FilesSeen::of_files(&tls_files(settings))
    }

    /// What was seen of `files`: this one's entry for a file it has, the file as it is now
    /// for one it has not (newly watched: taken as loaded).
    fn carried_to(&self, files: &[PathBuf]) -> FilesSeen {
        let now = FilesSeen::of_files(files);
        FilesSeen(
            (now.0.into_iter())
                .map(
                    |(path, seen)| match self.0.iter().find(|(had, _)| *had == path) {
                        Some(kept) => kept.clone(),
                        None => (path, seen),
                    },
                )
                .collect(),
        )
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
        let mut files = tls_files(&settings);
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
                    // The configuration file names the files: a service a reload added (or a
                    // file it moved to) is watched from the next poll on, taken as loaded
                    // then; the files watched already keep what was seen of them, so a
                    // renewal of one in the same poll is still reloaded. The file is only read
                    // here; an edit without a reload is applied by the next reload, whatever
                    // starts it.
                    if let Some(listed) = (settings.reread().ok()).map(|fresh| tls_files(&fresh)) {
                        if listed != files {
                            files = listed;
                            loaded = loaded.carried_to(&files);
                            last = last.carried_to(&files);
                            info!(log, "watching certificate files"; "files" => files.len(),
                                "interval_ms" => interval.as_millis() as u64);
                        }
                    }
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
