//! The binary's error type (the library's errors are typed; the binary only reports them).

/// The binary's error type: every failure ends as one line on stderr and exit code 1.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
