//! `tlsvisor check`: validates what `serve` would run with, without serving. It builds what
//! `serve` builds, through the same `prepare::prepare` (the settings' bounds, every certificate
//! and key and that they match, the admin token file, the user and group), and adds what only a
//! check asks: whether each upstream resolves. One line per problem on stderr, and one per
//! warning (a certificate outside its dates); exit 0 only if there is no problem.

use std::net::ToSocketAddrs;
use std::os::unix::fs::FileTypeExt;

use tlsvisor_actors::UpstreamAddr;

use crate::cli::{ProtocolKind, ServeArgs};
use crate::error::BoxError;
use crate::prepare::{self, Problems, Warning};
use crate::settings::{CertSource, Settings};

/// Checks `flags` (and the config file they name) as `serve` would read them.
pub(crate) fn run(flags: ServeArgs) -> Result<(), BoxError> {
    // A settings error (an unreadable or malformed config file, a bad flag combination) stops
    // here: nothing else can be read without them.
    let settings = Settings::resolve(flags)?;
    let (problems, warnings) = problems(&settings);
    for problem in &problems {
        eprintln!("tlsvisor check: {problem}");
    }
    for warning in &warnings {
        eprintln!("tlsvisor check: warning: {warning}");
    }
    if !problems.is_empty() {
        return Err(format!("{} problem(s) found", problems.len()).into());
    }
    let certificates = match &settings.cert {
        CertSource::BuiltIn if settings.values.protocol == ProtocolKind::Passthrough => {
            "none (TLS passed through)".to_string()
        }
        CertSource::BuiltIn => "the built-in development certificate".to_string(),
        CertSource::Files(pairs) => format!("{} certificate(s)", pairs.len()),
    };
    let protocol = match settings.values.protocol {
        ProtocolKind::Echo => "echo",
        ProtocolKind::Proxy => "proxy",
        ProtocolKind::Passthrough => "passthrough",
    };
    let listen: Vec<String> = settings
        .values
        .listen
        .iter()
        .map(|a| a.to_string())
        .collect();
    println!(
        "configuration OK: listen {}, {certificates}, protocol {protocol}, {} named service(s)",
        listen.join(" "),
        settings.services.len()
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

/// Every problem found in what the settings point at, and the warnings `serve` would log.
fn problems(settings: &Settings) -> (Vec<String>, Vec<Warning>) {
    let (mut problems, warnings) = match prepare::prepare(settings) {
        Ok(prepared) => (Vec::new(), prepared.warnings),
        Err(Problems(problems)) => (problems, Vec::new()),
    };
    problems.extend(settings.values.upstream.iter().filter_map(|upstream| {
        let bare = upstream.strip_prefix("tls://").unwrap_or(upstream);
        upstream_problem(bare).map(|p| format!("--upstream {p}"))
    }));
    (problems, warnings)
}
