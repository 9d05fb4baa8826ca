//! The effective settings of `serve`: flags over the config file over defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{
    AcceptProxyVersion, ClientAuthKind, LogFormat, LogLevel, ProtocolKind, ProxyProtocolVersion,
    ServeArgs, TlsMinVersion,
};
use tlsvisor_actors::{
    AllowList, CertificateFiles, ClientAuth, ClientAuthMode, ServerConfig, TlsPolicy, TlsVersion,
};

use crate::error::BoxError;

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// The development certificate compiled into the binary.
    BuiltIn,
    /// PEM files: certificate and key pairs, the first the default (SNI picks the others).
    Files(Vec<CertificateFiles>),
}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Never empty; the first is the one `Server::local_addr` reports.
    pub listen: Vec<SocketAddr>,
    pub cert: CertSource,
    /// Reload the TLS files when they change (polled).
    pub watch_certs: bool,
    /// Bind with `SO_REUSEPORT` (`--reuse-port`).
    pub reuse_port: bool,
    /// Refuse an SNI name no certificate serves.
    pub sni_strict: bool,
    /// Versions, suites, groups, ALPN.
    pub tls_policy: TlsPolicy,
    /// Client certificate verification (mTLS).
    pub client_auth: Option<ClientAuth>,
    /// Session ticket keys shared with other processes.
    pub ticket_key_file: Option<PathBuf>,
    pub protocol: ProtocolKind,
    /// `--upstream`, in order: `HOST:PORT` or `unix:/path`.
    pub upstream: Vec<String>,
    pub upstream_connect_timeout: Duration,
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    pub metrics_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token_file: Option<PathBuf>,
    /// `--accept-proxy`: read a PROXY header before each handshake.
    pub accept_proxy: Option<tlsvisor_actors::AcceptProxy>,
    /// `--user`, `--group`: who to run as once bound.
    pub user: Option<String>,
    pub group: Option<String>,
    pub workers: usize,
    pub max_connections: usize,
    /// `None`: the library's default (256 per worker).
    pub max_handshakes: Option<usize>,
    pub max_connections_per_ip: usize,
    /// `None`: the library's default (a quarter of the handshake limit); `Some(0)`: off.
    pub max_handshakes_per_ip: Option<usize>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub close_timeout: Duration,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub log_level: LogLevel,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8443))],
            cert: CertSource::BuiltIn,
            watch_certs: false,
            reuse_port: false,
            sni_strict: false,
            tls_policy: TlsPolicy::default(),
            client_auth: None,
            ticket_key_file: None,
            protocol: ProtocolKind::Echo,
            upstream: Vec::new(),
            upstream_connect_timeout: Duration::from_secs(5),
            proxy_protocol: None,
            metrics_listen: None,
            admin_listen: None,
            admin_token_file: None,
            accept_proxy: None,
            user: None,
            group: None,
            workers: ServerConfig::default_workers(),
            max_connections: ServerConfig::DEFAULT_MAX_CONNECTIONS,
            max_handshakes: None,
            max_connections_per_ip: 0,
            max_handshakes_per_ip: None,
            handshake_timeout: ServerConfig::DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: Some(ServerConfig::DEFAULT_IDLE_TIMEOUT),
            close_timeout: ServerConfig::DEFAULT_CLOSE_TIMEOUT,
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Term,
            log_level: LogLevel::Info,
        }
    }
}

impl Settings {
    /// Resolves the flags, reading `--config` if given.
    pub fn resolve(flags: ServeArgs) -> Result<Settings, BoxError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
                toml::from_str::<ServeArgs>(&text)
                    .map_err(|e| format!("bad config {}: {e}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        let d = Settings::default();
        let cert = match certificate_pairs(&flags)? {
            Some(pairs) => CertSource::Files(pairs),
            None => match certificate_pairs(&file)? {
                Some(pairs) => CertSource::Files(pairs),
                None => CertSource::BuiltIn,
            },
        };
        let client_auth = client_auth(&flags, &file)?;
        let accept_proxy = accept_proxy(&flags, &file)?;
        let settings = Settings {
            listen: match (flags.listen.is_empty(), file.listen.is_empty()) {
                (false, _) => flags.listen,
                (true, false) => file.listen,
                (true, true) => d.listen,
            },
            cert,
            watch_certs: flags.watch_certs || file.watch_certs,
            reuse_port: flags.reuse_port || file.reuse_port,
            sni_strict: flags.sni_strict || file.sni_strict,
            tls_policy: TlsPolicy {
                min_version: match flags.tls_min_version.or(file.tls_min_version) {
                    Some(TlsMinVersion::V1_3) => TlsVersion::Tls13,
                    Some(TlsMinVersion::V1_2) | None => TlsVersion::Tls12,
                },
                cipher_suites: or_file(flags.cipher_suites, file.cipher_suites),
                kx_groups: or_file(flags.kx_groups, file.kx_groups),
                prefer_server_cipher_order: flags.prefer_server_cipher_order
                    || file.prefer_server_cipher_order,
                alpn: or_file(flags.alpn, file.alpn),
            },
            client_auth,
            ticket_key_file: flags.ticket_key_file.or(file.ticket_key_file),
            protocol: flags.protocol.or(file.protocol).unwrap_or(d.protocol),
            upstream: or_file(flags.upstream, file.upstream),
            upstream_connect_timeout: flags
                .upstream_connect_timeout
                .or(file.upstream_connect_timeout)
                .unwrap_or(d.upstream_connect_timeout),
            proxy_protocol: flags.proxy_protocol.or(file.proxy_protocol),
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            admin_listen: flags.admin_listen.or(file.admin_listen),
            admin_token_file: flags.admin_token_file.or(file.admin_token_file),
            accept_proxy,
            user: flags.user.or(file.user),
            group: flags.group.or(file.group),
            workers: flags.workers.or(file.workers).unwrap_or(d.workers),
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            max_handshakes: flags.max_handshakes.or(file.max_handshakes),
            max_connections_per_ip: flags
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(d.max_connections_per_ip),
            max_handshakes_per_ip: flags.max_handshakes_per_ip.or(file.max_handshakes_per_ip),
            handshake_timeout: flags
                .handshake_timeout
                .or(file.handshake_timeout)
                .unwrap_or(d.handshake_timeout),
            // Zero means "never": an operator switching the idle timeout off.
            idle_timeout: match flags.idle_timeout.or(file.idle_timeout) {
                Some(t) if t.is_zero() => None,
                Some(t) => Some(t),
                None => d.idle_timeout,
            },
            close_timeout: flags
                .close_timeout
                .or(file.close_timeout)
                .unwrap_or(d.close_timeout),
            shutdown_grace: flags
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(d.shutdown_grace),
            log_format: flags.log_format.or(file.log_format).unwrap_or(d.log_format),
            log_level: flags.log_level.or(file.log_level).unwrap_or(d.log_level),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), BoxError> {
        // Port 0 twice is two ports; any other address twice could only fail to bind.
        for (n, addr) in self.listen.iter().enumerate() {
            if addr.port() != 0 && self.listen[..n].contains(addr) {
                return Err(format!("--listen {addr} is given twice").into());
            }
        }
        if self.sni_strict && self.cert == CertSource::BuiltIn {
            return Err("--sni-strict needs --cert and --key".into());
        }
        match (self.protocol, self.upstream.is_empty()) {
            (ProtocolKind::Proxy, true) => {
                Err("--protocol proxy needs --upstream HOST:PORT or unix:/path".into())
            }
            (ProtocolKind::Echo, false) => {
                Err("--upstream is only used with --protocol proxy".into())
            }
            _ => Ok(()),
        }
    }
}

/// `--client-ca` and the flags that refine it (each from the flags, else from the file).
fn client_auth(flags: &ServeArgs, file: &ServeArgs) -> Result<Option<ClientAuth>, BoxError> {
    let pick = |flag: &Vec<String>, file: &Vec<String>| or_file(flag.clone(), file.clone());
    let crls = match flags.client_crl.is_empty() {
        true => file.client_crl.clone(),
        false => flags.client_crl.clone(),
    };
    let allow = AllowList {
        cns: pick(&flags.allow_cn, &file.allow_cn),
        dns_sans: pick(&flags.allow_dns_san, &file.allow_dns_san),
        uri_sans: pick(&flags.allow_uri_san, &file.allow_uri_san),
    };
    let mode = flags.client_auth.or(file.client_auth);
    let Some(ca) = flags.client_ca.clone().or(file.client_ca.clone()) else {
        if mode.is_some() || !crls.is_empty() || allow != AllowList::default() {
            return Err("--client-auth, --client-crl and --allow-* need --client-ca".into());
        }
        return Ok(None);
    };
    Ok(Some(ClientAuth {
        ca,
        mode: match mode {
            Some(ClientAuthKind::Optional) => ClientAuthMode::Optional,
            Some(ClientAuthKind::Require) | None => ClientAuthMode::Require,
        },
        crls,
        allow,
    }))
}

/// A list flag, or the file's list if the flag was not given.
fn or_file(flag: Vec<String>, file: Vec<String>) -> Vec<String> {
    if flag.is_empty() {
        file
    } else {
        flag
    }
}

/// The certificate pairs one source of settings gives (`--cert`/`--key` in order, then the
/// file's `[[certificate]]` tables), or `None` if it gives none.
fn certificate_pairs(args: &ServeArgs) -> Result<Option<Vec<CertificateFiles>>, BoxError> {
    if args.cert.len() != args.key.len() {
        return Err(format!(
            "--cert and --key go together, paired in order ({} --cert, {} --key)",
            args.cert.len(),
            args.key.len()
        )
        .into());
    }
    if args.ocsp_response.len() > args.cert.len() {
        return Err(
            "--ocsp-response pairs in order with --cert: more responses than certificates".into(),
        );
    }
    let mut ocsp = args.ocsp_response.iter().cloned();
    let pairs: Vec<CertificateFiles> = args
        .cert
        .iter()
        .zip(&args.key)
        .map(|(cert, key)| CertificateFiles {
            ocsp: ocsp.next(),
            ..CertificateFiles::new(cert, key)
        })
        .chain(args.certificate.iter().map(|entry| CertificateFiles {
            ocsp: entry.ocsp_response.clone(),
            ..CertificateFiles::new(&entry.cert, &entry.key)
        }))
        .collect();
    Ok((!pairs.is_empty()).then_some(pairs))
}

/// How long a PROXY header gets by default.
const DEFAULT_ACCEPT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// `--accept-proxy` and its companions; `--accept-proxy-from` without it is an error.
fn accept_proxy(
    flags: &ServeArgs,
    file: &ServeArgs,
) -> Result<Option<tlsvisor_actors::AcceptProxy>, BoxError> {
    use tlsvisor_actors::{AcceptProxy, Cidr, ProxyVersions};
    let from = match flags.accept_proxy_from.is_empty() {
        true => &file.accept_proxy_from,
        false => &flags.accept_proxy_from,
    };
    let Some(version) = flags.accept_proxy.or(file.accept_proxy) else {
        if !from.is_empty() {
            return Err("--accept-proxy-from needs --accept-proxy v1|v2|any".into());
        }
        return Ok(None);
    };
    let from = from
        .iter()
        .map(|net| {
            net.parse::<Cidr>()
                .map_err(|e| format!("--accept-proxy-from {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(AcceptProxy {
        versions: match version {
            AcceptProxyVersion::V1 => ProxyVersions::V1,
            AcceptProxyVersion::V2 => ProxyVersions::V2,
            AcceptProxyVersion::Any => ProxyVersions::Any,
        },
        from,
        timeout: flags
            .accept_proxy_timeout
            .or(file.accept_proxy_timeout)
            .unwrap_or(DEFAULT_ACCEPT_PROXY_TIMEOUT),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("tlsvisor-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tlsvisor.toml");
        std::fs::write(
            &path,
            "workers = 3\nmax-connections = 50\nidle-timeout = \"0\"\n",
        )
        .unwrap();
        let flags = ServeArgs {
            config: Some(path),
            max_connections: Some(9),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(flags).unwrap();
        assert_eq!(s.workers, 3);
        assert_eq!(s.max_connections, 9);
        assert_eq!(s.idle_timeout, None);
        assert_eq!(s.listen, Settings::default().listen);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn listen_flags_replace_the_files_list_and_an_address_twice_is_refused() {
        let dir = std::env::temp_dir().join(format!("tlsvisor-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tlsvisor.toml");
        std::fs::write(&path, "listen = [\"127.0.0.1:9000\", \"[::1]:9000\"]\n").unwrap();
        let from_file = Settings::resolve(ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(from_file.listen.len(), 2);
        let flag: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let flags = Settings::resolve(ServeArgs {
            config: Some(path),
            listen: vec![flag],
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(flags.listen, [flag]);
        let twice = Settings::resolve(ServeArgs {
            listen: vec![flag, flag],
            ..ServeArgs::default()
        });
        assert!(twice.unwrap_err().to_string().contains("given twice"));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let two_ports = Settings::resolve(ServeArgs {
            listen: vec![any, any],
            ..ServeArgs::default()
        });
        assert!(two_ports.is_ok(), "port 0 twice is two ports");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cert_and_key_go_together() {
        let flags = ServeArgs {
            cert: vec!["a.pem".into(), "b.pem".into()],
            key: vec!["a.key".into()],
            ..ServeArgs::default()
        };
        assert!(Settings::resolve(flags).is_err());
    }

    #[test]
    fn upstream_in_the_file_is_one_string_or_a_list_and_the_flags_replace_it() {
        let dir = std::env::temp_dir().join(format!("tlsvisor-upstreams-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let resolve = |file: &str, flags: Vec<String>| {
            let path = dir.join("tlsvisor.toml");
            std::fs::write(&path, format!("protocol = \"proxy\"\n{file}")).unwrap();
            Settings::resolve(ServeArgs {
                config: Some(path),
                upstream: flags,
                ..ServeArgs::default()
            })
            .unwrap()
            .upstream
        };
        assert_eq!(
            resolve("upstream = \"127.0.0.1:6379\"", vec![]),
            ["127.0.0.1:6379"]
        );
        assert_eq!(
            resolve(
                "upstream = [\"127.0.0.1:6379\", \"unix:/run/r.sock\"]",
                vec![]
            ),
            ["127.0.0.1:6379", "unix:/run/r.sock"]
        );
        assert_eq!(
            resolve("upstream = \"127.0.0.1:6379\"", vec!["[::1]:6380".into()]),
            ["[::1]:6380"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn proxy_needs_an_upstream() {
        let flags = ServeArgs {
            protocol: Some(ProtocolKind::Proxy),
            ..ServeArgs::default()
        };
        assert!(Settings::resolve(flags).is_err());
    }
}
