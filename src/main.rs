//! `tlsvisor`: the server binary. See README.md for how to run it and ARCHITECTURE.md for how
//! it works.

mod activation;
mod admin;
mod certs;
mod check;
mod cli;
mod listen;
mod logging;
mod metrics;
mod metrics_http;
mod notify;
mod privileges;
mod reload;
mod serve;
mod settings;
mod tls_metrics;
mod upgrade;
mod upstream_metrics;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::settings::Settings;

/// The binary's error type: every failure ends as one line on stderr and exit code 1.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve::run(Settings::default()),
        Some(Command::Serve(flags)) => Settings::resolve(*flags).and_then(serve::run),
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
        Err(e) => {
            eprintln!("tlsvisor: {e}");
            ExitCode::FAILURE
        }
    }
}
