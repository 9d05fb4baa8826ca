//! systemd's notification protocol (`sd_notify(3)`): readiness, reloads, shutdown, the
//! watchdog and a status line, sent to the datagram socket named by `NOTIFY_SOCKET`.
//!
//! Without `NOTIFY_SOCKET` every call does nothing, so the binary behaves the same with or
//! without systemd. The protocol itself is the `sd-notify` crate's.

use std::time::Duration;

use sd_notify::NotifyState;
use slog::{debug, warn, Logger};
use tlsvisor_actors::{ServerHandle, Stats};

/// How long every worker gets to answer a watchdog ping: far below any sensible `WatchdogSec`,
/// far above a busy worker's scheduling delay.
const PING_WAIT: Duration = Duration::from_secs(1);

/// Where notifications go; a no-op without `NOTIFY_SOCKET`.
#[derive(Clone)]
pub(crate) struct Notifier {
    enabled: bool,
    log: Logger,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` once. The variable is left in the environment: a process started
    /// by a binary upgrade inherits it and becomes systemd's main process (`MAINPID=`).
    pub(crate) fn from_env(log: &Logger) -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            log: log.clone(),
        }
    }

    /// Whether systemd (or a test) listens.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        // A lost notification must not stop serving: systemd's own timeouts (start, watchdog)
        // act on what it did not hear.
        if let Err(e) = sd_notify::notify(false, states) {
            warn!(self.log, "sd_notify failed"; "error" => %e);
        }
    }

    /// `READY=1`: the server accepts (sent after the acceptors run), with the live count.
    pub(crate) fn ready(&self, stats: &Stats) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&status(stats))]);
    }

    /// `RELOADING=1`, with the monotonic time `Type=notify-reload` asks for; `ready` follows.
    pub(crate) fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.send(&states);
    }

    /// `STOPPING=1`: the shutdown protocol starts.
    pub(crate) fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }

    /// `MAINPID=`: a binary upgrade handed the service to process `pid`, which is ready.
    pub(crate) fn main_pid(&self, pid: u32) {
        self.send(&[NotifyState::MainPid(pid)]);
    }

    /// Runs until dropped (spawned on the system arbiter): every `interval`, asks every
    /// worker to answer within a second and sends `WATCHDOG=1` (with the status line) only if
    /// all did; a wedged worker therefore lets systemd's `WatchdogSec` expire and restart the
    /// process. Without the watchdog (`WATCHDOG_USEC` unset) it only refreshes the status.
    pub(crate) async fn watch(
        self,
        interval: Duration,
        watchdog: bool,
        server: ServerHandle,
        stats: std::sync::Arc<Stats>,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let status = status(&stats);
            if !watchdog {
                self.send(&[NotifyState::Status(&status)]);
                continue;
            }
            let stuck = server.unresponsive_workers(PING_WAIT.min(interval)).await;
            if stuck == 0 {
                self.send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
            } else {
                // Once is enough to say it; systemd acts when WatchdogSec passes.
                debug!(self.log, "watchdog: workers did not answer; not pinging"; "stuck" => stuck);
                self.send(&[NotifyState::Status(&format!(
                    "{status}; {stuck} workers stuck"
                ))]);
            }
        }
    }
}

/// The watchdog: half of `WATCHDOG_USEC` (as `sd_watchdog_enabled(3)` advises), when it is set
/// and `WATCHDOG_PID` is this process or unset. Read here rather than with `sd-notify`'s
/// `watchdog_enabled`, which insists on `WATCHDOG_PID`: a process started by a binary upgrade
/// has none (its pid was unknown when its environment was built), as libsystemd allows.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ if usec == 0 => None,
        _ => Some(Duration::from_micros(usec / 2)),
    }
}

/// The `STATUS=` line: what `systemctl status` shows.
fn status(stats: &Stats) -> String {
    let ledger = stats.ledger();
    format!(
        "{} connections active, {} accepted",
        ledger.active, ledger.accepted
    )
}
