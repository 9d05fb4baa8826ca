//! The process's slog logger: human-readable on a terminal, or JSON lines.

use slog::{o, Drain, Level, Logger};

use crate::cli::{LogFormat, LogLevel};

/// Log records queued for the writer thread before new ones are dropped (and the drop counted
/// in a log line): a burst of disposals must never block a connection on logging.
const QUEUE: usize = 8192;

/// Room for one JSON record, so that each goes out whole.
const LINE_BUFFER: usize = 64 * 1024;

/// Builds the root logger, writing to stderr. Keep the guard alive until exit: dropping it
/// flushes the queue.
pub fn build(format: LogFormat, level: LogLevel) -> (Logger, slog_async::AsyncGuard) {
    let level = match level {
        LogLevel::Error => Level::Error,
        LogLevel::Warn => Level::Warning,
        LogLevel::Info => Level::Info,
        LogLevel::Debug => Level::Debug,
        LogLevel::Trace => Level::Trace,
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
    (Logger::root(drain.filter_level(level).fuse(), o!()), guard)
}
