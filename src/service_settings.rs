//! The `[[service]]` tables of the config file, resolved: each service's settings as the
//! default service's are (a `Values` of its own, so that the same checks and builders serve
//! both), checked, and built into a library `Service`. Every error names the service (its first
//! name) and the file.
//!
//! A service's own keys are exactly those of `ServiceEntry`. Of what it serves (certificates,
//! client policy, ALPN, minimum version, protocol, upstreams) a key it does not give is not
//! inherited from the top level (another service's client CA or upstream would be a surprise),
//! except the settings no service has a key for: cipher suites, key-exchange groups, the
//! server's cipher order and the ticket keys.
//!
//! Its limits are the other way round: the top-level limits are the server's, and every
//! connection was always under them, so a limit a service does not set is the server's
//! (`idle-timeout`, `max-lifetime`, `half-close-timeout`, `upstream-connect-timeout`: the
//! top-level value; `0` in the service turns the first three off for that service alone, and
//! is refused for the connect timeout, as at the top level). `max-connections` is the exception in kind,
//! not in rule: the top-level one caps the whole server, and still does, so a service without
//! its own has no cap of its own, not a copy of the server's. Only the limits that act once the
//! ClientHello has named the service can be a service's (docs/services.md says which and why).

use std::path::Path;

use serde::Deserialize;
use tlsvisor_actors::{
    CertificateFiles, ClientAuth, Echo, LoadedTls, Service, ServiceLimits, ServiceTimeout,
    TlsPolicy, TlsSource, TlsVersion,
};

use crate::cli::{ProtocolKind, ServiceEntry, TlsMinVersion, Values};
use crate::error::BoxError;
use crate::plain_addr::PlainAddr;

/// One `[[service]]` table, resolved and checked (its files not read yet).
#[derive(Clone, Debug)]
pub(crate) struct ServiceSettings {
    /// Its first name, as logs and metrics call it.
    pub label: String,
    pub names: Vec<String>,
    /// Its settings, laid out as the top level's.
    pub values: Values,
    pub certificates: Vec<CertificateFiles>,
    pub tls_policy: TlsPolicy,
    pub client_auth: Option<ClientAuth>,
    /// Its own limits (checked); each not given is the server's.
    pub limits: ServiceLimits,
    /// Where it was written, for errors.
    pub file: String,
}

/// The `[[service]]` tables `tables` of the config file `file`, each over `top` (the resolved
/// top level) as the module docs say.
pub(crate) fn resolve(
    tables: &[toml::Table],
    top: &Values,
    file: Option<&Path>,
) -> Result<Vec<ServiceSettings>, BoxError> {
    let file = file.map_or_else(|| "the flags".to_string(), |f| f.display().to_string());
    tables
        .iter()
        .enumerate()
        .map(|(n, table)| {
            let label = table
                .get("names")
                .and_then(|names| match names {
                    toml::Value::String(name) => Some(name.clone()),
                    toml::Value::Array(names) => names.first()?.as_str().map(str::to_string),
                    _ => None,
                })
                .map_or_else(|| format!("#{}", n + 1), |name| name.to_ascii_lowercase());
            let named = |e: &dyn std::fmt::Display| format!("{file}: service {label}: {e}");
            let entry = ServiceEntry::deserialize(toml::Value::Table(table.clone()))
                .map_err(|e| named(&e))?;
            one(entry, top, label.clone(), file.clone()).map_err(|e| named(&e).into())
        })
        .collect()
}

/// One service's settings over `top`, checked as the top level's are.
fn one(
    entry: ServiceEntry,
    top: &Values,
    label: String,
    file: String,
) -> Result<ServiceSettings, BoxError> {
    if entry.names.is_empty() {
        return Err("names = [...] is missing: a service is chosen by its names".into());
    }
    let limits = limits(&entry)?;
    let mut values = top.clone();
    values.cert = entry.cert;
    values.key = entry.key;
    values.ocsp_response = entry.ocsp_response;
    values.certificate = Vec::new();
    values.service = Vec::new();
    values.sni_strict = false;
    values.client_ca = entry.client_ca;
    values.client_auth = entry.client_auth;
    values.client_crl = entry.client_crl;
    values.allow_cn = entry.allow_cn;
    values.allow_dns_san = entry.allow_dns_san;
    values.allow_uri_san = entry.allow_uri_san;
    values.alpn = entry.alpn;
    values.tls_min_version = entry.tls_min_version.unwrap_or(TlsMinVersion::V1_2);
    values.protocol = entry.protocol.unwrap_or(match entry.upstream.is_empty() {
        true => ProtocolKind::Echo,
        false => ProtocolKind::Proxy,
    });
    values.upstream = entry.upstream;
    values.upstream_ca = entry.upstream_ca;
    values.upstream_cert = entry.upstream_cert;
    values.upstream_key = entry.upstream_key;
    values.upstream_sni = entry.upstream_sni;
    values.upstream_kx_groups = entry.upstream_kx_groups;
    values.proxy_protocol = entry.proxy_protocol;
    if let Some(timeout) = entry.upstream_connect_timeout {
        if timeout.is_zero() || timeout > tlsvisor_actors::ServerConfig::MAX_TIMEOUT {
            return Err("upstream-connect-timeout must be above zero and at most 24h".into());
        }
        values.upstream_connect_timeout = timeout;
    }
    values.listen = Vec::new();
    values.listen_plain = own_plain_listeners(entry.listen_plain, entry.listen, entry.plain)?;
    let certificates = match values.protocol {
        // Nothing is terminated: the upstream serves its own certificate and checks its own
        // clients. A key given anyway would read as a check in force that is not.
        ProtocolKind::Passthrough => {
            passthrough_refuses(&values)?;
            Vec::new()
        }
        _ => crate::tls_settings::certificate_pairs(
            &values.cert,
            &values.key,
            &values.ocsp_response,
            &[],
        )?
        .ok_or("needs cert and key (a service has certificates of its own)")?,
    };
    let client_auth = crate::tls_settings::client_auth(&values)?;
    let (_, tls_upstreams) = crate::upstream_tls::upstreams(&values.upstream)?;
    crate::upstream_tls::check(&values, tls_upstreams)?;
    if !values.listen_plain.is_empty() && (values.protocol != ProtocolKind::Proxy || !tls_upstreams)
    {
        return Err(
            "listen-plain (client mode) needs protocol = \"proxy\" and TLS upstreams \
             (upstream = \"tls://HOST:PORT\"): its clients are plaintext, so the hop to the \
             upstream is the one to encrypt"
                .into(),
        );
    }
    match (values.protocol, values.upstream.is_empty()) {
        (ProtocolKind::Passthrough, true) => {
            return Err("protocol passthrough needs upstream = HOST:PORT or unix:/path".into())
        }
        (ProtocolKind::Proxy, true) => {
            return Err(
                "protocol proxy needs upstream = HOST:PORT, unix:/path or tls://HOST:PORT \
                 (a string or a list)"
                    .into(),
            )
        }
        (ProtocolKind::Echo, false) => {
            return Err("upstream is only used with protocol = \"proxy\"".into())
        }
        _ => {}
    }
    let tls_policy = TlsPolicy {
        min_version: match values.tls_min_version {
            TlsMinVersion::V1_3 => TlsVersion::Tls13,
            TlsMinVersion::V1_2 => TlsVersion::Tls12,
        },
        alpn: values.alpn.clone(),
        ..top_policy(top)
    };
    Ok(ServiceSettings {
        label,
        names: entry.names,
        values,
        certificates,
        tls_policy,
        client_auth,
        limits,
        file,
    })
}

/// The top-level keys a passthrough default service cannot apply, one problem each (the list
/// and why: [`passthrough_conflicts`], shared with each `[[service]]`): what `check`, `serve`
/// and every reload refuse.
pub(crate) fn passthrough_refused(values: &Values) -> Vec<String> {
    if values.protocol != ProtocolKind::Passthrough {
        return Vec::new();
    }
    passthrough_conflicts(values)
        .into_iter()
        .map(|(key, why)| {
            format!(
                "--{key} cannot apply with --protocol passthrough (TLS is not terminated here: \
                 the upstream does the handshake); {why}"
            )
        })
        .collect()
}

/// The service's own limits as its keys give them, checked by the library's bounds (the one
/// check, which [`Service::with_limits`] applies again), the error in the keys' names.
fn limits(entry: &ServiceEntry) -> Result<ServiceLimits, BoxError> {
    let own = |given: Option<std::time::Duration>| match given {
        None => ServiceTimeout::Server,
        Some(zero) if zero.is_zero() => ServiceTimeout::Off,
        Some(after) => ServiceTimeout::After(after),
    };
    let mut limits = ServiceLimits::default();
    limits.max_connections = entry.max_connections;
    limits.idle_timeout = own(entry.idle_timeout);
    limits.max_lifetime = own(entry.max_lifetime);
    limits.half_close_timeout = own(entry.half_close_timeout);
    limits.check().map_err(|e| in_key_names(&e))?;
    Ok(limits)
}

/// `message` of `ServiceLimits::check`, each field named by its key in a `[[service]]` table.
fn in_key_names(message: &str) -> String {
    [
        ("max_connections", "max-connections"),
        ("idle_timeout", "idle-timeout"),
        ("max_lifetime", "max-lifetime"),
        ("half_close_timeout", "half-close-timeout"),
    ]
    .iter()
    .fold(message.to_string(), |message, (field, key)| {
        message.replace(field, key)
    })
}

/// A service's own plaintext listeners: `listen-plain`, and `listen` with `plain = true` (the
/// same thing, spelt as a listener of the service). `listen` without `plain = true` is
/// refused: a service has no TLS listener of its own (every service shares the `--listen`
/// ports, chosen by the SNI of each ClientHello).
fn own_plain_listeners(
    listen_plain: Vec<PlainAddr>,
    listen: Vec<PlainAddr>,
    plain: bool,
) -> Result<Vec<PlainAddr>, BoxError> {
    match (listen.is_empty(), plain) {
        (false, false) => Err(
            "listen needs plain = true: a service's own listeners are plaintext ones (client \
             mode); its TLS clients come through the shared --listen ports, chosen by SNI \
             (write listen-plain = [...], or listen = [...] with plain = true)"
                .into(),
        ),
        (true, true) => Err("plain = true needs listen = [...] (its plaintext listeners)".into()),
        _ => Ok(listen_plain.into_iter().chain(listen).collect()),
    }
}

/// A passthrough service's keys that cannot apply, refused with the first one named.
fn passthrough_refuses(values: &Values) -> Result<(), BoxError> {
    match passthrough_conflicts(values).first() {
        Some((key, why)) => Err(format!(
            "{key} cannot apply with protocol = \"passthrough\" (TLS is not terminated here: \
             the upstream does the handshake); {why}"
        )
        .into()),
        None => Ok(()),
    }
}

/// The keys set in `values` that cannot apply where TLS passes through, each with why: no TLS
/// session ends here, so nothing about a session of our own (a certificate, a client policy,
/// ALPN, a strict SNI refusal) can take effect, and the client's TLS goes to the upstream as it
/// is (our TLS to the upstream would wrap it in a second one). Given anyway, an operator would
/// believe a check in force that is not. The one list, for the top level (`prepare`) and each
/// `[[service]]`. (`tls-min-version`, `cipher-suites`, `kx-groups`,
/// `prefer-server-cipher-order` and `ticket-key-file` are ignored, not refused: the upstream
/// negotiates all of that with the client.)
pub(crate) fn passthrough_conflicts(values: &Values) -> Vec<(&'static str, &'static str)> {
    const CERTIFICATE: &str = "the upstream serves its own certificate";
    const CLIENTS: &str = "the upstream checks client certificates";
    const UPSTREAM: &str =
        "the client's own TLS is forwarded as it is; give the upstream as HOST:PORT";
    let cert = !values.cert.is_empty() || !values.certificate.is_empty();
    let tls_upstream = values.upstream.iter().any(|u| u.starts_with("tls://"));
    [
        ("cert", cert, CERTIFICATE),
        ("key", !values.key.is_empty(), CERTIFICATE),
        (
            "ocsp-response",
            !values.ocsp_response.is_empty(),
            CERTIFICATE,
        ),
        ("client-ca", values.client_ca.is_some(), CLIENTS),
        ("allow-cn", !values.allow_cn.is_empty(), CLIENTS),
        ("allow-dns-san", !values.allow_dns_san.is_empty(), CLIENTS),
        ("allow-uri-san", !values.allow_uri_san.is_empty(), CLIENTS),
        ("alpn", !values.alpn.is_empty(), "the upstream chooses ALPN"),
        (
            "sni-strict",
            values.sni_strict,
            "the upstream answers for its names",
        ),
        ("upstream-ca", values.upstream_ca.is_some(), UPSTREAM),
        ("upstream-cert", values.upstream_cert.is_some(), UPSTREAM),
        ("upstream-key", values.upstream_key.is_some(), UPSTREAM),
        ("upstream-sni", values.upstream_sni.is_some(), UPSTREAM),
        (
            "upstream-kx-groups",
            !values.upstream_kx_groups.is_empty(),
            UPSTREAM,
        ),
        ("upstream tls://…", tls_upstream, UPSTREAM),
    ]
    .into_iter()
    .filter(|(_, given, _)| *given)
    .map(|(key, _, why)| (key, why))
    .collect()
}

/// What a service takes of the top level's TLS policy: what it has no key for.
fn top_policy(top: &Values) -> TlsPolicy {
    TlsPolicy {
        cipher_suites: top.cipher_suites.clone(),
        kx_groups: top.kx_groups.clone(),
        prefer_server_cipher_order: top.prefer_server_cipher_order,
        ..TlsPolicy::default()
    }
}

impl ServiceSettings {
    /// Every file its TLS is read from (what `--watch-certs` polls).
    pub(crate) fn tls_source(&self) -> TlsSource {
        TlsSource {
            certificates: self.certificates.clone(),
            sni_strict: false,
            policy: self.tls_policy.clone(),
            // A passthrough service has no certificate of its own and never completes a
            // handshake; the built-in one only fills the place of the configuration it needs.
            built_in: self
                .certificates
                .is_empty()
                .then(crate::certs::built_in_pem),
            client_auth: self.client_auth.clone(),
            ticket_key_file: self.values.ticket_key_file.clone(),
        }
    }

    /// Reads every file and builds the service (its TLS, and its upstream group for a proxy);
    /// an error names the service, the file it is written in and the file that failed.
    pub(crate) fn build(&self) -> Result<Service, String> {
        let named =
            |e: &dyn std::fmt::Display| format!("{}: service {}: {e}", self.file, self.label);
        let tls: LoadedTls = self.tls_source().load().map_err(|e| named(&e))?;
        let service =
            match crate::upstream_tls::proxy_config(&self.values).map_err(|e| named(&e))? {
                Some(proxy) if self.values.protocol == ProtocolKind::Passthrough => {
                    Service::passthrough(&self.names, tls, proxy)
                }
                Some(proxy) => Service::proxy(&self.names, tls, proxy),
                None => Service::sessions(&self.names, tls, Echo),
            };
        // The library's error already names the service.
        service
            .and_then(|service| service.with_limits(self.limits))
            .map_err(|e| format!("{}: {}", self.file, in_key_names(&e.to_string())))
    }
}

/// Builds every service of `services` (see [`ServiceSettings::build`]) and checks them as a
/// table (a name two services claim, say): what `check`, `serve` and every reload do.
pub(crate) fn build_all(services: &[ServiceSettings]) -> Result<Vec<Service>, String> {
    let built = services
        .iter()
        .map(ServiceSettings::build)
        .collect::<Result<Vec<_>, _>>()?;
    if let Err(e) = tlsvisor_actors::ServiceTable::check(&built) {
        let file = services.first().map_or("", |s| s.file.as_str());
        return Err(format!("{file}: {e}"));
    }
    Ok(built)
}
