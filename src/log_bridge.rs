//! Records of the `log` crate (rustls, actix-server, actix-web) forwarded into the binary's
//! slog logger, so that they reach the same output, in the same format, under the same
//! `--log-level`.
//!
//! rustls's records describe what one peer did (a message out of order, an alert it sent, the
//! suite it was given): a peer can cause them at will, and the connection's disposal line
//! already says how it ended. They are logged at debug at most, so that a scanner cannot fill
//! the log at `info`.

use log::{Level, LevelFilter, Log, Metadata, Record};
use slog::Logger;

/// A `log::Log` writing every record it is given to a slog logger.
pub(crate) struct LogBridge {
    log: Logger,
    max: LevelFilter,
}

impl LogBridge {
    /// A bridge to `log` that keeps records as severe as `max` or more.
    pub(crate) fn new(log: Logger, max: LevelFilter) -> LogBridge {
        LogBridge { log, max }
    }

    /// Makes this the process's `log` logger. Only the first call in a process installs one
    /// (the `log` crate's rule); later calls change nothing.
    pub(crate) fn install(self) {
        let max = self.max;
        if log::set_boxed_logger(Box::new(self)).is_ok() {
            log::set_max_level(max);
        }
    }
}

/// The level a record is logged at: its own, but debug at most for rustls's (see the module
/// docs).
fn level_of(metadata: &Metadata) -> Level {
    let target = metadata.target();
    if target == "rustls" || target.starts_with("rustls::") {
        metadata.level().max(Level::Debug)
    } else {
        metadata.level()
    }
}

impl Log for LogBridge {
    fn enabled(&self, metadata: &Metadata) -> bool {
        level_of(metadata) <= self.max
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let (log, target, line) = (&self.log, record.target(), record.args());
        match level_of(record.metadata()) {
            Level::Error => slog::error!(log, "{}", line; "target" => target),
            Level::Warn => slog::warn!(log, "{}", line; "target" => target),
            Level::Info => slog::info!(log, "{}", line; "target" => target),
            Level::Debug => slog::debug!(log, "{}", line; "target" => target),
            Level::Trace => slog::trace!(log, "{}", line; "target" => target),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A slog drain keeping (level, target, message) of each record.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<(slog::Level, String, String)>>>);

    struct Target(String);

    impl slog::Serializer for Target {
        fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
            if key == "target" {
                self.0 = val.to_string();
            }
            Ok(())
        }
    }

    impl slog::Drain for Kept {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            let mut target = Target(String::new());
            slog::KV::serialize(&record.kv(), record, &mut target).unwrap();
            let entry = (record.level(), target.0, record.msg().to_string());
            self.0.lock().unwrap().push(entry);
            Ok(())
        }
    }

    fn send(bridge: &LogBridge, level: Level, target: &str, message: &str) {
        let metadata = Metadata::builder().level(level).target(target).build();
        if bridge.enabled(&metadata) {
            bridge.log(
                &Record::builder()
                    .metadata(metadata)
                    .args(format_args!("{message}"))
                    .build(),
            );
        }
    }

    #[test]
    fn records_keep_their_level_and_target_and_rustls_is_debug_at_most() {
        let kept = Kept::default();
        let at = |max: LevelFilter| {
            let logger = Logger::root(kept.clone(), slog::o!());
            let bridge = LogBridge::new(logger, max);
            send(
                &bridge,
                Level::Info,
                "actix_server::builder",
                "starting 1 workers",
            );
            send(
                &bridge,
                Level::Error,
                "actix_server::accept",
                "Error accepting",
            );
            send(&bridge, Level::Warn, "rustls::check", "Received a message");
            send(
                &bridge,
                Level::Debug,
                "rustls::server::hs",
                "decided upon suite",
            );
            send(
                &bridge,
                Level::Trace,
                "rustls::server::hs",
                "we got a clienthello",
            );
            std::mem::take(&mut *kept.0.lock().unwrap())
        };
        let info = at(LevelFilter::Info);
        assert_eq!(
            info,
            [
                (
                    slog::Level::Info,
                    "actix_server::builder".into(),
                    "starting 1 workers".into()
                ),
                (
                    slog::Level::Error,
                    "actix_server::accept".into(),
                    "Error accepting".into()
                ),
            ],
            "rustls's warning is a debug record, below info"
        );
        let debug = at(LevelFilter::Debug);
        let levels: Vec<_> = debug.iter().map(|(l, t, _)| (*l, t.as_str())).collect();
        assert_eq!(
            levels,
            [
                (slog::Level::Info, "actix_server::builder"),
                (slog::Level::Error, "actix_server::accept"),
                (slog::Level::Debug, "rustls::check"),
                (slog::Level::Debug, "rustls::server::hs"),
            ]
        );
        assert_eq!(at(LevelFilter::Trace).len(), 5);
    }
}
