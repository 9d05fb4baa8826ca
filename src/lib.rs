//! `tlsvisor`: the server binary's code, as a library so that its parsers can be reached from
//! outside the binary (the fuzz targets in `fuzz/`). `main.rs` only calls [`run`]. See
//! README.md for how to run it and ARCHITECTURE.md for how it works; nothing here is a
//! supported API.

mod activation;
mod admin;
mod bounded_file;
mod certs;
mod check;
mod cli;
mod descriptors;
mod error;
mod exposition;
mod fault_rules;
mod http;
mod listen;
mod log_bridge;
mod logging;
mod metrics;
mod notify;
mod plain_addr;
mod prepare;
mod privileges;
mod reload;
mod serve;
mod service_settings;
mod settings;
mod tls_metrics;
mod tls_settings;
mod upgrade;
mod upstream_metrics;
mod upstream_tls;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_hooks;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ServeArgs};

/// The `tlsvisor` command: parses the command line, runs what it asks for, and says how it
/// ended (an error is one line on stderr and exit code 1).
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve::run(ServeArgs::default()),
        Some(Command::Serve(flags)) => serve::run(*flags),
        Some(Command::Check(flags)) => check::run(*flags),
        Some(Command::GenCerts { out }) => certs::generate_into(&out).map(|()| {
            eprintln!(
                "wrote ca.crt, ca.key, server.crt, server.key to {} (development use only)",
                out.display()
            )
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Already logged by the process this one was to replace (a failed binary upgrade).
        Err(e) if e.is::<serve::Reported>() => ExitCode::FAILURE,
        Err(e) => {
            // One write: another process may share this stderr (a binary upgrade), and
            // `eprintln!` writes its pieces one `write(2)` each.
            use std::io::Write;
            let line = format!("tlsvisor: {e}\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            ExitCode::FAILURE
        }
    }
}
