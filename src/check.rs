//! `tlsvisor check`: validates what `serve` would run with, without serving: the settings,
//! every certificate and key (and that they match), each upstream address, the admin token
//! file. One line per problem on stderr; exit 0 only if there is none.

use std::net::ToSocketAddrs;
use std::os::unix::fs::FileTypeExt;

use tlsvisor_actors::UpstreamAddr;

use crate::cli::{ProtocolKind, ServeArgs};
use crate::error::BoxError;
use crate::reload;
use crate::settings::{CertSource, Settings};

/// Checks `flags` (and the config file they name) as `serve` would read them.
pub(crate) fn run(flags: ServeArgs) -> Result<(), BoxError> {
    // A settings error (an unreadable or malformed config file, a bad flag combination) stops
    // here: nothing else can be read without them.
    let settings = Settings::resolve(flags)?;
    let problems = problems(&settings);
    for problem in &problems {
        eprintln!("tlsvisor check: {problem}");
    }
    if !problems.is_empty() {
        return Err(format!("{} problem(s) found", problems.len()).into());
    }
    let certificates = match &settings.cert {
        CertSource::BuiltIn => "the built-in development certificate".to_string(),
        CertSource::Files(pairs) => format!("{} certificate(s)", pairs.len()),
    };
    let protocol = match settings.values.protocol {
        ProtocolKind::Echo => "echo",
        ProtocolKind::Proxy => "proxy",
    };
    let listen: Vec<String> = settings
        .values
        .listen
        .iter()
        .map(|a| a.to_string())
        .collect();
    println!(
        "configuration OK: listen {}, {certificates}, protocol {protocol}",
        listen.join(" ")
    );
    Ok(())
}

/// Why `upstream` cannot be connected to as written, if it cannot: a `HOST:PORT` must resolve,
/// a `unix:/path` must name a socket (a server that is down is not a configuration problem,
/// so nothing is connected to).
fn upstream_problem(upstream: &str) -> Option<String> {
    match UpstreamAddr::parse(upstream) {
        UpstreamAddr::Unix(path) => match std::fs::metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => None,
            Ok(_) => Some(format!("{upstream}: {} is not a socket", path.display())),
            Err(e) => Some(format!("{upstream}: {}: {e}", path.display())),
        },
        UpstreamAddr::Tcp(addr) => match addr.to_socket_addrs().map(|a| a.count()) {
            Ok(0) => Some(format!("{upstream}: resolves to no address")),
            Ok(_) => None,
            Err(e) => Some(format!("{upstream}: {e}")),
        },
        _ => None,
    }
}

/// Every problem found in what the settings point at.
fn problems(settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    // Reads every TLS file and checks each key against its certificate; the error names the
    // file.
    if let Err(e) = reload::build_tls(settings) {
        problems.push(format!("TLS: {e}"));
    }
    problems.extend(
        settings
            .values
            .upstream
            .iter()
            .filter_map(|upstream| upstream_problem(upstream).map(|p| format!("--upstream {p}"))),
    );
    if let Err(e) = crate::privileges::check(
        settings.values.user.as_deref(),
        settings.values.group.as_deref(),
    ) {
        problems.push(e.to_string());
    }
    if let Some(path) = &settings.values.admin_token_file {
        if let Err(e) = crate::admin::read_token(path) {
            problems.push(e.to_string());
        }
    }
    problems
}
