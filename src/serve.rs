//! `tlsvisor serve`: run a server until SIGTERM or SIGINT, then shut it down gracefully.
//!
//! SIGHUP never terminates the process. A second SIGTERM or SIGINT during the shutdown forces
//! it: every connection is stopped at once and the process exits within a second, non-zero.
//! SIGUSR2 upgrades the binary in place (`upgrade.rs`); systemd hears of each step
//! (`notify.rs`), and the sockets it passed are served (`activation.rs`).

use std::time::{Duration, Instant};

use actix_rt::signal::unix::{signal, Signal, SignalKind};
use slog::{error, info, o, warn, Logger};
use std::net::{SocketAddr, TcpListener};

use tlsvisor_actors::{
    CloseMode, Echo, LoadedTls, PlainListener, ProxyConfig, Server, ServerBuilder, ServerConfig,
    ServerHandle, Service, Stats,
};

use crate::activation::{Inherited, InheritedPlain, InheritedSocket, Matched, PLAIN_NAME};
use crate::cli::{ProtocolKind, ServeArgs};
use crate::error::BoxError;
use crate::http::HttpListener;
use crate::logging;
use crate::notify::{self, Notifier};
use crate::plain_addr::PlainAddr;
use crate::prepare::{self, Prepared, Warning};
use crate::reload::{self, CertWatcher};
use crate::settings::{CertSource, Settings};
use crate::tls_metrics::TlsCollector;
use crate::upgrade::Upgrade;

/// Runs the server described by `flags` (and the config file they name) until a signal, then
/// runs the shutdown protocol and returns (exit code 0) once it is done.
///
/// Started by a binary upgrade, a process that cannot start sends its reason to the old
/// process, which logs it (`upgrade.rs`), and prints nothing itself: the error is then
/// [`Reported`].
pub(crate) fn run(flags: ServeArgs) -> Result<(), BoxError> {
    // Before any thread starts: this edits the environment.
    let inherited = Inherited::from_env()?;
    let upgrading = inherited
        .upgrade_ready
        .as_ref()
        .and_then(|ready| ready.try_clone().ok());
    // The settings too: a config file an upgrade's new process cannot read is reported.
    let result = Settings::resolve(flags).and_then(|settings| run_inherited(settings, inherited));
    // Once it said it was ready the old process no longer listens: a later error is printed.
    let upgrading = upgrading.filter(|_| !TOLD_READY.load(std::sync::atomic::Ordering::SeqCst));
    match (result, upgrading) {
        (Err(e), Some(ready)) if crate::upgrade::send_failure(&ready, &e.to_string()) => {
            Err(Box::new(Reported))
        }
        (result, _) => result,
    }
}

/// Set once this process told the process it upgrades that it is ready.
static TOLD_READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An error already reported where it belongs (to the process an upgrade replaces): `main`
/// exits non-zero without printing it again.
#[derive(Debug)]
pub(crate) struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reported to the upgrading process")
    }
}

impl std::error::Error for Reported {}

fn run_inherited(settings: Settings, inherited: Inherited) -> Result<(), BoxError> {
    let upgrade = Upgrade::capture()?;
    let (log, _flush_on_exit) =
        logging::build(settings.values.log_format, settings.values.log_level);
    // Before the files are read: `--watch-certs` compares with this (see `FilesSeen::of`).
    let tls_files = reload::FilesSeen::of(&settings);
    // Everything built from the settings, checked as `tlsvisor check` checks it.
    let prepared = prepare::prepare(&settings)?;
    raise_fd_limit(&log, &prepared);
    for warning in &prepared.warnings {
        match warning {
            Warning::Certificate(warning) => reload::warn_about(warning, &log),
            Warning::Uncovered { .. } => warn!(log, "{}", warning),
        }
    }
    // A passthrough server holds the built-in certificate only because the TLS configuration
    // needs one: it never serves it.
    if settings.cert == CertSource::BuiltIn && settings.values.protocol != ProtocolKind::Passthrough
    {
        warn!(log, "USING THE BUILT-IN DEVELOPMENT CERTIFICATE: anyone can impersonate this \
                    server; pass --cert and --key for real use";
            "trust_for_testing" => "certs/ca.crt");
    }
    let process = Process {
        inherited,
        upgrade,
        tls_files,
    };
    actix_rt::System::new().block_on(serve(settings, prepared, process, log))
}

/// How long a forced shutdown waits for the registries to take the forced close, and then for
/// the connections to go: together well under the second a second signal promises.
const FORCE_ASK_WAIT: Duration = Duration::from_millis(300);
const FORCE_DRAIN_WAIT: Duration = Duration::from_millis(300);

/// The signals `serve` handles. Installed before the server starts, so a signal sent as soon
/// as it listens is handled, and SIGHUP (whose default action terminates) never is fatal.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    user2: Signal,
}

/// What the process brings from outside the server: sockets it inherited, how to start its
/// successor, and how the TLS files looked when it read them.
pub(crate) struct Process {
    inherited: Inherited,
    upgrade: Upgrade,
    /// The TLS files as they were when the configuration was first read (`--watch-certs`).
    tls_files: reload::FilesSeen,
}

/// What ends `Signals::next_event`.
enum Event {
    /// SIGTERM or SIGINT, by name.
    Stop(&'static str),
    /// SIGUSR2: upgrade the binary.
    Upgrade,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            user2: signal(SignalKind::user_defined2())?,
        })
    }

    /// The next SIGTERM, SIGINT or SIGUSR2; each SIGHUP on the way is logged and handed to
    /// `on_hangup`.
    async fn next_event(&mut self, log: &Logger, mut on_hangup: impl FnMut()) -> Event {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return Event::Stop("SIGTERM"),
                _ = self.interrupt.recv() => return Event::Stop("SIGINT"),
                _ = self.user2.recv() => return Event::Upgrade,
                _ = self.hangup.recv() => {
                    info!(log, "reload requested"; "signal" => "SIGHUP");
                    on_hangup();
                }
            }
        }
    }

    /// The next SIGTERM or SIGINT, by name (a SIGUSR2 is ignored); each SIGHUP on the way is logged and handed to
    /// `on_hangup`.
    async fn next_stop(&mut self, log: &Logger, mut on_hangup: impl FnMut()) -> &'static str {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return "SIGTERM",
                _ = self.interrupt.recv() => return "SIGINT",
                _ = self.hangup.recv() => {
                    info!(log, "reload requested"; "signal" => "SIGHUP");
                    on_hangup();
                }
            }
        }
    }
}

async fn serve(
    settings: Settings,
    prepared: Prepared,
    mut process: Process,
    log: Logger,
) -> Result<(), BoxError> {
    let mut signals = Signals::install()?;
    let notifier = Notifier::from_env(&log);
    let Prepared {
        config,
        tls,
        proxy,
        services,
        admin_token,
        ..
    } = prepared;
    let built = (config, tls, proxy, services);
    let server = start_server(&settings, built, &mut process, &log).await?;
    // SIGHUP and `POST /reload` share it: one reload at a time, off this thread.
    let reloads = reload::Reloads::new(settings.clone(), server.tls_reloader(), log.clone());
    let inherited_http = (
        process.inherited.metrics.take(),
        process.inherited.admin.take(),
    );
    let http = HttpListeners::start(
        &settings,
        &server,
        inherited_http,
        admin_token,
        &reloads,
        &log,
    )?;
    // Every socket is bound and every key file read: root is no longer needed.
    if settings.values.user.is_some() || settings.values.group.is_some() {
        crate::privileges::drop_to(
            settings.values.user.as_deref(),
            settings.values.group.as_deref(),
            &log,
        )?;
    }
    let _watcher = match settings.values.watch_certs {
        true => Some(CertWatcher::start(
            settings.clone(),
            server.tls_reloader(),
            log.clone(),
            reload::WATCH_INTERVAL,
            process.tls_files.clone(),
        )?),
        false => None,
    };

    // The acceptors run: tell whoever waits (systemd, the process this one upgrades).
    notifier.ready(&server.stats());
    if let Some(ready) = process.inherited.upgrade_ready.take() {
        TOLD_READY.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = ready.send(b"READY=1") {
            warn!(log, "upgrade: cannot tell the old process we are ready"; "error" => %e);
        }
    }
    let watch = notifier_task(&notifier, &server);
    let (name, upgraded) = until_stop(
        &mut signals,
        &notifier,
        &reloads,
        (&server, &http),
        &mut process,
        &log,
    )
    .await;
    // After an upgrade the new process serves the metrics and the admin API on the same
    // sockets: this one stops answering there at once, so that an operator's `POST /drain` or
    // a scrape reaches the process that now runs things.
    let http = (!upgraded).then_some(http);
    if let Some(watch) = watch {
        watch.abort();
    }
    info!(log, "signal received: shutting down";
        "signal" => name, "grace_ms" => settings.values.shutdown_grace.as_millis() as u64);
    let (handle, stats) = (server.handle(), server.stats());
    // After an upgrade, half the grace lets what this process accepted last finish on its own
    // (a request in flight, a handshake just accepted), the other half closes the rest.
    let linger = match upgraded {
        true => settings.values.shutdown_grace / 2,
        false => Duration::ZERO,
    };
    let shutdown = server.drain(linger, settings.values.shutdown_grace - linger);
    tokio::pin!(shutdown);
    let report = tokio::select! {
        report = &mut shutdown => report,
        // A reload during the shutdown would only touch handshakes that no longer start.
        second = signals.next_stop(&log, || {}) => {
            return force(second, &handle, &stats, &log).await
        }
    };
    drop(http);
    if report.left_registered > 0 || report.abandoned_workers > 0 {
        return Err(format!(
            "shutdown incomplete: {} connections left registered, {} worker threads abandoned",
            report.left_registered, report.abandoned_workers
        )
        .into());
    }
    Ok(())
}

/// Builds the server for the protocol asked for, on its listeners (inherited or bound), and
/// starts it: accepting from here on.
async fn start_server(
    settings: &Settings,
    (config, tls, proxy, services): (ServerConfig, LoadedTls, Option<ProxyConfig>, Vec<Service>),
    process: &mut Process,
    log: &Logger,
) -> Result<Server, BoxError> {
    let inherited = process.inherited.assign(&settings.values.listen)?;
    // What is served is the address an inherited socket is bound to, which a socket mapped by
    // order does not share with its --listen entry.
    for socket in inherited.iter().flatten() {
        let what = format!("the inherited socket {} (LISTEN_FDS)", socket.addr);
        settings.may_serve_on(&what, socket.addr)?;
    }
    let builder = match (proxy, settings.values.protocol) {
        (Some(proxy), ProtocolKind::Passthrough) => Server::passthrough(config, tls, proxy),
        (Some(proxy), _) => Server::proxy(config, tls, proxy),
        (None, _) => Server::builder(config, tls, Echo),
    };
    let builder = builder.services(services);
    let builder = listen_on(builder, &settings.values.listen, inherited, log);
    // Client mode: plaintext clients, proxied over TLS (checked: a proxy to tls:// upstreams).
    let builder = listen_plain_on(builder, settings, &mut process.inherited.plain, log);
    #[cfg(feature = "fault-injection")]
    let builder = builder.faults(faults_from_env(log)?);
    #[cfg(feature = "fault-injection")]
    if process.inherited.upgrade_ready.is_some() && never_ready(log) {
        // Stuck before it serves (a start-up blocked on a slow mount, say): it accepts nothing
        // and never says it is ready, until the old process's timeout kills it.
        std::future::pending::<()>().await;
    }
    Ok(builder.logger(log.clone()).start()?)
}

/// The HTTP listeners beside the server: `--metrics-listen` and `--admin-listen`. Dropping
/// them stops them.
struct HttpListeners {
    metrics: Option<HttpListener>,
    admin: Option<HttpListener>,
}

impl HttpListeners {
    fn start(
        settings: &Settings,
        server: &Server,
        (mut inherited_metrics, mut inherited_admin): (Option<TcpListener>, Option<TcpListener>),
        admin_token: Option<String>,
        reloads: &reload::Reloads,
        log: &Logger,
    ) -> Result<Self, BoxError> {
        // Shared by both listeners' expositions: refusals are counted wherever they happen.
        let unauthorized = crate::admin::unauthorized_counter()?;
        let metrics = settings
            .values
            .metrics_listen
            .map(|addr| -> Result<_, BoxError> {
                let tls_metrics = Box::new(TlsCollector::new(server.tls_reloader())?);
                let extra: Vec<Box<dyn prometheus::core::Collector>> =
                    vec![tls_metrics, Box::new(unauthorized.clone())];
                let registry = crate::metrics::registry(server.stats(), extra)?;
                crate::http::serve_metrics(addr, inherited_metrics.take(), registry, log)
            })
            .transpose()?;
        let admin = settings
            .values
            .admin_listen
            .map(|addr| {
                let reloads = reloads.clone();
                crate::admin::start_for(
                    (addr, inherited_admin.take()),
                    settings,
                    server,
                    admin_token,
                    reloads,
                    unauthorized,
                    log,
                )
            })
            .transpose()?;
        Ok(HttpListeners { metrics, admin })
    }

    /// Another descriptor of each listening socket, named for the new process of a binary
    /// upgrade (`activation.rs`).
    fn handover(&self) -> std::io::Result<Vec<(&'static str, TcpListener)>> {
        let named = [
            (crate::activation::METRICS_NAME, &self.metrics),
            (crate::activation::ADMIN_NAME, &self.admin),
        ];
        named
            .into_iter()
            .filter_map(|(name, listener)| Some((name, listener.as_ref()?.socket())))
            .map(|(name, socket)| socket.map(|socket| (name, socket)))
            .collect()
    }
}

/// Serves until a stop signal, or until a SIGUSR2 upgrade has handed the sockets to a new
/// process that is ready; reloads on SIGHUP meanwhile. Returns the signal's name and whether
/// an upgrade happened.
///
/// A SIGHUP's reload runs in a task of its own (its files are read on a thread of their own,
/// with a deadline): this loop never waits for it, so a stop signal is handled at once even
/// while a reload is stuck on a hung mount.
async fn until_stop(
    signals: &mut Signals,
    notifier: &Notifier,
    reloads: &reload::Reloads,
    (server, http): (&Server, &HttpListeners),
    process: &mut Process,
    log: &Logger,
) -> (&'static str, bool) {
    loop {
        let event = signals
            .next_event(log, || {
                let (notifier, reloads, stats) =
                    (notifier.clone(), reloads.clone(), server.stats());
                actix_rt::spawn(async move {
                    notifier.reloading();
                    // The outcome is logged and counted by `reload` itself.
                    let _ = reloads.reload().await;
                    notifier.ready(&stats);
                });
            })
            .await;
        match event {
            Event::Stop(name) => {
                notifier.stopping();
                return (name, false);
            }
            Event::Upgrade => {
                info!(log, "upgrade requested: starting the new binary"; "signal" => "SIGUSR2");
                match process.upgrade.run(server, http.handover()).await {
                    Ok(pid) => {
                        // The new process is systemd's main process now; this one only drains.
                        server.set_listener_shared(true);
                        notifier.main_pid(pid);
                        info!(log, "upgrade: the new process is ready; draining this one"; "pid" => pid);
                        return ("SIGUSR2", true);
                    }
                    Err(e) => {
                        error!(log, "upgrade failed: this process keeps serving"; "error" => %e)
                    }
                }
            }
        }
    }
}

/// Gives the builder a listener for each `--listen` entry, in order: the inherited socket
/// mapped to it (see `activation.rs`), or its address to bind.
fn listen_on(
    mut builder: ServerBuilder,
    entries: &[SocketAddr],
    inherited: Vec<Option<InheritedSocket>>,
    log: &Logger,
) -> ServerBuilder {
    for (entry, socket) in entries.iter().zip(inherited) {
        builder = match socket {
            Some(socket) => {
                let line = log.new(o!("name" => socket.name.clone(),
                    "listen" => socket.addr.to_string(), "matched" => socket.matched.as_str()));
                if socket.matched == Matched::Order {
                    warn!(line, "the inherited socket is not bound to its --listen address; \
                                 serving it in that address's place (matched by order)";
                        "listen_entry" => %entry);
                }
                info!(line, "serving an inherited socket (LISTEN_FDS)");
                builder.listener(socket.listener)
            }
            None => builder.listen(*entry),
        };
    }
    builder
}

/// Gives the builder every plaintext listener (`--listen-plain`, then each service's own), in
/// order, each for its service: the socket a binary upgrade handed over for its address or
/// path, or its address to bind. A handed-over socket no entry is left for (the file no longer
/// names it) is closed, and said.
fn listen_plain_on(
    mut builder: ServerBuilder,
    settings: &Settings,
    inherited: &mut Vec<InheritedPlain>,
    log: &Logger,
) -> ServerBuilder {
    for (service, addr) in settings.plain_listeners() {
        let listener = match (InheritedPlain::take_for(inherited, addr), addr) {
            (Some(socket), _) => {
                info!(log, "serving an inherited plaintext socket (LISTEN_FDS)";
                    "listen_plain" => socket.addr(), "name" => PLAIN_NAME);
                match socket {
                    InheritedPlain::Tcp(socket, _) => PlainListener::tcp_socket(socket),
                    InheritedPlain::Unix(socket, _) => PlainListener::unix_socket(socket),
                }
            }
            (None, PlainAddr::Tcp(addr)) => PlainListener::tcp(*addr),
            (None, PlainAddr::Unix(path)) => PlainListener::unix(path),
        };
        builder = builder.plain_listener(match service {
            Some(label) => listener.service(label),
            None => listener,
        });
    }
    for left in inherited.drain(..) {
        warn!(log, "an inherited plaintext socket serves no listener of the settings now; \
                    closing it (a unix socket's file is left in place)";
            "listen_plain" => left.addr());
    }
    builder
}

/// Starts the task keeping systemd informed (the watchdog when `WATCHDOG_USEC` is set, the
/// status line every few seconds otherwise), if systemd listens.
fn notifier_task(notifier: &Notifier, server: &Server) -> Option<actix_rt::task::JoinHandle<()>> {
    if !notifier.enabled() {
        return None;
    }
    let watchdog = notify::watchdog_interval();
    let interval = watchdog.unwrap_or(STATUS_EVERY);
    Some(actix_rt::spawn(notifier.clone().watch(
        interval,
        watchdog.is_some(),
        server.handle(),
        server.stats(),
    )))
}

/// How often the `STATUS=` line is refreshed without a watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// A second stop signal during the shutdown: stop every connection now (their sockets close
/// without `close_notify`) and end the process with a failure status, whatever the grace
/// period had left.
async fn force(
    signal: &str,
    handle: &ServerHandle,
    stats: &Stats,
    log: &Logger,
) -> Result<(), BoxError> {
    let forced = handle.close_all(CloseMode::Force, FORCE_ASK_WAIT).await;
    let deadline = Instant::now() + FORCE_DRAIN_WAIT;
    while stats.ledger().active > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = stats.ledger().active;
    error!(log, "second signal: shutdown forced";
        "signal" => signal, "forced" => forced, "left_registered" => left);
    Err(format!("shutdown forced by a second {signal} ({left} connections left registered)").into())
}

/// Fault points named in `TLSVISOR_FAULTS` (comma-separated, e.g. `session_hang`), switched on
/// for this server: black-box tests of a build with `fault-injection` use them.
#[cfg(feature = "fault-injection")]
fn faults_from_env(log: &Logger) -> Result<tlsvisor_actors::Faults, BoxError> {
    let faults = tlsvisor_actors::Faults::default();
    let names = std::env::var("TLSVISOR_FAULTS").unwrap_or_default();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let point = tlsvisor_actors::FaultPoint::from_name(name)
            .ok_or_else(|| format!("TLSVISOR_FAULTS: no fault point named {name}"))?;
        warn!(log, "fault point switched on"; "fault" => name);
        faults.enable(point);
    }
    Ok(faults)
}

/// `TLSVISOR_UPGRADE_FAULT=never_ready`: a process started by an upgrade hangs before it
/// serves and never says it is ready, so the old process's timeout (kill it, keep serving) can
/// be tested. (A new process that hangs *after* it started accepting is killed the same way,
/// and the connections it accepted meanwhile are cut: see ARCHITECTURE.md.)
#[cfg(feature = "fault-injection")]
fn never_ready(log: &Logger) -> bool {
    let hang = std::env::var("TLSVISOR_UPGRADE_FAULT").is_ok_and(|v| v == "never_ready");
    if hang {
        warn!(log, "fault: not telling the old process we are ready"; "fault" => "never_ready");
    }
    hang
}

/// Raises the soft open-files limit to the hard limit: every connection is a descriptor, and the
/// default soft limit (often 1024) is far below `--max-connections`. Says, in its start-up line,
/// how many connections that limit holds and the `--max-connections` served with (checked
/// against it by `prepare`; see `descriptors`). Returns the limit in force.
fn raise_fd_limit(log: &Logger, prepared: &Prepared) -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let raised = getrlimit(Resource::RLIMIT_NOFILE)
        .and_then(|(_, hard)| setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map(|()| hard));
    let budget = &prepared.descriptors;
    match raised {
        Ok(limit) => {
            info!(log, "open files limit"; "nofile" => limit,
                "descriptors_per_connection" => budget.per_connection,
                "descriptors_reserved" => crate::descriptors::RESERVED,
                "connections_allowed" => budget.allowed(),
                "max_connections" => prepared.config.max_connections);
            Some(limit)
        }
        Err(e) => {
            warn!(log, "could not raise the open files limit"; "error" => %e);
            None
        }
    }
}
