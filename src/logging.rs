//! The process's slog logger: human-readable on a terminal, or JSON lines. Records of the
//! `log` crate (rustls, actix) go to it too (`log_bridge.rs`).

use slog::{o, Drain, Level, Logger};

use crate::cli::{LogFormat, LogLevel};
use crate::log_bridge::LogBridge;

/// Log records queued for the writer thread before new ones are dropped (and the drop counted
/// in a log line): a burst of disposals must never block a connection on logging.
const QUEUE: usize = 8192;

/// Room for one JSON record, so that each goes out whole.
const LINE_BUFFER: usize = 64 * 1024;

/// Builds the root logger, writing to stderr, and makes it the `log` crate's too. Keep the
/// guard alive until exit: dropping it flushes the queue.
///
/// Every level can be asked for in every build: slog's `max_level_trace` and
/// `release_max_level_trace` features (Cargo.toml) keep `debug!` and `trace!` compiled in,
/// which slog otherwise leaves out of release builds whatever `--log-level` says. The level is
/// filtered here, at run time.
pub(crate) fn build(format: LogFormat, level: LogLevel) -> (Logger, slog_async::AsyncGuard) {
    let (level, log_level) = match level {
        LogLevel::Error => (Level::Error, log::LevelFilter::Error),
        LogLevel::Warn => (Level::Warning, log::LevelFilter::Warn),
        LogLevel::Info => (Level::Info, log::LevelFilter::Info),
        LogLevel::Debug => (Level::Debug, log::LevelFilter::Debug),
        LogLevel::Trace => (Level::Trace, log::LevelFilter::Trace),
    };
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match format {
        LogFormat::Term => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            Box::new(slog_term::FullFormat::new(decorator).build().fuse())
        }
        LogFormat::Json => Box::new(
            // One write(2) per record: after a binary upgrade two processes share stderr, and
            // records written in pieces would interleave. A pipe write up to 4 KiB is atomic.
            slog_json::Json::new(std::io::LineWriter::with_capacity(
                LINE_BUFFER,
                std::io::stderr(),
            ))
            .add_default_keys()
            .build()
            .fuse(),
        ),
    };
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(QUEUE)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("tlsvisor-log".into())
        .build_with_guard();
    // Filter before the queue, on the calling thread: a record below the level is dropped
    // there instead of being serialized and shipped to the writer thread to be dropped.
    let logger = Logger::root(drain.filter_level(level).fuse(), o!());
    LogBridge::new(logger.clone(), log_level).install();
    (logger, guard)
}
