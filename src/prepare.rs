//! Everything `serve` builds from its settings before it binds a socket, built by the one
//! function `tlsvisor check` calls too: so `check` applies every validation `serve` applies
//! (the server configuration's bounds, every TLS file and certificate, the token file, the
//! user and group), and a configuration `check` passes is one `serve` starts with. A reload
//! rebuilds the TLS part through the same `reload::build_tls`.
//!
//! Every problem is collected, not only the first: `check` prints one line each, `serve`
//! refuses to start with all of them in its error.

use std::fmt;

use tlsvisor_actors::{LoadedTls, ProxyConfig, ServerConfig, Service, TlsWarning};

use crate::cli::OnOff;
use crate::descriptors::Budget;
use crate::reload;
use crate::settings::Settings;

/// What `serve` runs: checked, complete.
pub(crate) struct Prepared {
    /// The server's limits and timeouts, validated.
    pub config: ServerConfig,
    /// The TLS configuration, every file read and checked.
    pub tls: LoadedTls,
    /// With `--protocol proxy`: the upstreams and how to reach them.
    pub proxy: Option<ProxyConfig>,
    /// The `[[service]]` tables, built (every file read) and checked as a table.
    pub services: Vec<Service>,
    /// The admin API's token, read from `--admin-token-file`.
    pub admin_token: Option<String>,
    /// What works but deserves an operator's attention (a certificate outside its dates):
    /// logged by `serve`, printed by `check`.
    pub warnings: Vec<Warning>,
    /// What the open-files limit allows, which `--max-connections` was checked against (and,
    /// when not given, taken from): `serve` says it in its start-up line.
    pub descriptors: Budget,
}

/// Something `serve` goes on with but says loudly.
pub(crate) enum Warning {
    /// A served certificate outside its validity period (see `TlsWarning` for why it is
    /// served all the same).
    Certificate(TlsWarning),
    /// Names of a service that no certificate of that service covers: a client asking for
    /// one would refuse the certificate.
    Uncovered { service: String, names: Vec<String> },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Certificate(warning) => warning.fmt(f),
            Warning::Uncovered { service, names } => write!(
                f,
                "service {service}: no certificate of the service covers {}; clients asking \
                 for it will refuse the certificate",
                names.join(", ")
            ),
        }
    }
}

/// Every problem that keeps the settings from being served, one line each.
#[derive(Debug)]
pub(crate) struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for Problems {}

/// Builds and checks everything `serve` needs from `settings` (see the module docs).
pub(crate) fn prepare(settings: &Settings) -> Result<Prepared, Problems> {
    let mut problems = Vec::new();
    let descriptors = Budget::current(settings.busiest_protocol());
    // An explicit `--max-connections` the limit cannot hold: refused here, so `check` refuses
    // it too (`server_config` falls back to the value as given).
    if let Err(problem) = descriptors.max_connections(settings.values.max_connections) {
        problems.push(problem);
    }
    let config = server_config(settings);
    if let Err(e) = config.validate() {
        problems.push(in_flag_names(&e.to_string()));
    }
    // Reads every TLS file and checks each certificate and key; the error names the file.
    let tls = reload::build_tls(settings)
        .map_err(|e| problems.push(format!("TLS: {e}")))
        .ok();
    let admin_token = match settings.values.admin_token_file.as_deref() {
        Some(path) => crate::admin::read_token(path)
            .map_err(|e| problems.push(e.to_string()))
            .ok(),
        None => None,
    };
    if let Some(problem) = runtime_faults_refused(settings) {
        problems.push(problem);
    }
    problems.extend(crate::service_settings::passthrough_refused(
        &settings.values,
    ));
    if let Err(e) = crate::privileges::check(
        settings.values.user.as_deref(),
        settings.values.group.as_deref(),
    ) {
        problems.push(e.to_string());
    }
    let proxy = proxy_config(settings)
        .map_err(|e| problems.push(e.to_string()))
        .ok()
        .flatten();
    let services = crate::service_settings::build_all(&settings.services)
        .map_err(|e| problems.push(e))
        .unwrap_or_default();
    match (tls, problems.is_empty()) {
        (Some(tls), true) => {
            let mut warnings: Vec<Warning> = tls
                .warnings()
                .iter()
                .cloned()
                .map(Warning::Certificate)
                .collect();
            warnings.extend(service_warnings(&services));
            Ok(Prepared {
                config,
                tls,
                proxy,
                services,
                admin_token,
                warnings,
                descriptors,
            })
        }
        _ => Err(Problems(problems)),
    }
}

/// What the services' loads found worth a warning: certificates outside their dates, and
/// names no certificate of their service covers.
pub(crate) fn service_warnings(services: &[Service]) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for service in services {
        warnings.extend(
            service
                .tls()
                .warnings()
                .iter()
                .cloned()
                .map(Warning::Certificate),
        );
        let names = service.uncovered_names();
        if !names.is_empty() {
            warnings.push(Warning::Uncovered {
                service: service.label().to_string(),
                names,
            });
        }
    }
    warnings
}

/// Why `--runtime-faults` cannot be on with these settings, if it cannot: its rules are
/// installed through the admin API, and whoever can install one can break every connection,
/// so that API must be there and reachable from loopback only, or ask for a token.
fn runtime_faults_refused(settings: &Settings) -> Option<String> {
    let values = &settings.values;
    if !values.runtime_faults {
        return None;
    }
    match values.admin_listen {
        None => Some(
            "--runtime-faults needs --admin-listen: its rules are installed through the admin API"
                .to_string(),
        ),
        Some(addr) if !addr.ip().is_loopback() && values.admin_token_file.is_none() => {
            Some(format!(
                "--runtime-faults needs --admin-token-file when --admin-listen ({addr}) is not \
                 on loopback: anyone who reaches it could break every connection"
            ))
        }
        Some(_) => None,
    }
}

/// The library's words for its settings (`ServerConfig`'s field names), and the flags that set
/// them: its error is shown in the flags' names, which is what an operator typed.
const FLAG_NAMES: [(&str, &str); 11] = [
    ("workers must", "--workers must"),
    ("max_connections must", "--max-connections must"),
    ("max_handshakes must", "--max-handshakes must"),
    ("max_handshake_rate must", "--max-handshake-rate must"),
    (
        "max_handshake_rate_per_ip must",
        "--max-handshake-rate-per-ip must",
    ),
    ("max_lifetime must", "--max-lifetime must"),
    ("half_close_timeout must", "--half-close-timeout must"),
    ("handshake_timeout must", "--handshake-timeout must"),
    ("idle_timeout must", "--idle-timeout must"),
    ("close_timeout must", "--close-timeout must"),
    ("accept_proxy timeout must", "--accept-proxy-timeout must"),
];

/// `message` from `ServerConfig::validate`, with each setting named by its flag.
fn in_flag_names(message: &str) -> String {
    FLAG_NAMES
        .iter()
        .fold(message.to_string(), |message, (field, flag)| {
            message.replace(field, flag)
        })
}

/// The server configuration the settings describe (checked by the caller).
pub(crate) fn server_config(settings: &Settings) -> ServerConfig {
    let values = &settings.values;
    let mut config = ServerConfig::default();
    config.workers = values.workers;
    config.accept_proxy = settings.accept_proxy.clone();
    config.max_connections = settings.max_connections();
    config.max_handshakes = values.max_handshakes;
    config.max_connections_per_ip = values.max_connections_per_ip;
    config.max_handshakes_per_ip = values.max_handshakes_per_ip;
    config.handshake_timeout = values.handshake_timeout;
    config.max_handshake_rate = values.max_handshake_rate;
    config.max_handshake_rate_per_ip = values.max_handshake_rate_per_ip;
    config.idle_timeout = settings.idle_timeout();
    config.max_lifetime = off_if_zero(values.max_lifetime);
    config.half_close_timeout = off_if_zero(values.half_close_timeout);
    config.close_timeout = values.close_timeout;
    config.reuse_port = values.reuse_port;
    config.revalidate_live = values.revalidate_live == OnOff::On;
    config
}

/// A duration whose 0 means "no limit" (as `--idle-timeout 0`).
fn off_if_zero(duration: std::time::Duration) -> Option<std::time::Duration> {
    Some(duration).filter(|d| !d.is_zero())
}

/// With `--protocol proxy`, the upstreams and how to reach them, and TLS to them (its files
/// read and checked). (Whether each resolves is `check`'s question alone: a name that does
/// not resolve now may by the first connect.)
fn proxy_config(settings: &Settings) -> Result<Option<ProxyConfig>, crate::error::BoxError> {
    crate::upstream_tls::proxy_config(&settings.values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_errors_name_the_flags() {
        assert_eq!(
            in_flag_names("invalid server configuration: max_connections must be at least 1"),
            "invalid server configuration: --max-connections must be at least 1"
        );
        assert_eq!(
            in_flag_names("workers must be between 1 and 1024 (it is 0)"),
            "--workers must be between 1 and 1024 (it is 0)"
        );
    }
}
