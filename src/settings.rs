//! The effective settings of `serve`: flags over the config file over defaults.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::cli::{AcceptProxyVersion, ProtocolKind, ServeArgs, TlsMinVersion, Values};
use tlsvisor_actors::{CertificateFiles, ClientAuth, ServerConfig, TlsPolicy, TlsVersion};

use crate::error::BoxError;
use crate::plain_addr::PlainAddr;
use crate::tls_settings::{certificate_pairs, client_auth};

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CertSource {
    /// The development certificate compiled into the binary.
    BuiltIn,
    /// PEM files: certificate and key pairs, the first the default (SNI picks the others).
    Files(Vec<CertificateFiles>),
}

/// Everything `serve` needs, resolved: each setting once (its flag, key and default are
/// defined together in `cli.rs`), and what is built from several of them.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Every setting: the flags over the config file over the defaults. `listen` is empty only
    /// when plaintext listeners are given (client mode); its first address is the one
    /// `Server::local_addr` reports.
    pub values: Values,
    /// `cert`, `key`, `ocsp-response` and the `[[certificate]]` tables, paired.
    pub cert: CertSource,
    /// Versions, suites, groups, ALPN.
    pub tls_policy: TlsPolicy,
    /// Client certificate verification (mTLS).
    pub client_auth: Option<ClientAuth>,
    /// `--accept-proxy`: read a PROXY header before each handshake.
    pub accept_proxy: Option<tlsvisor_actors::AcceptProxy>,
    /// The config file's `[[service]]` tables, resolved and checked (files not read yet).
    pub services: Vec<crate::service_settings::ServiceSettings>,
    /// The flags as given: a reload resolves them again over the config file as it is then.
    flags: ServeArgs,
}

impl Settings {
    /// The protocol that costs a connection the most descriptors among the default service's
    /// and every `[[service]]`'s: one that forwards (proxy or passthrough) holds two, an echo
    /// one. What the open-files limit is divided by, since any connection may go to any service.
    pub(crate) fn busiest_protocol(&self) -> ProtocolKind {
        std::iter::once(self.values.protocol)
            .chain(self.services.iter().map(|s| s.values.protocol))
            .find(|protocol| *protocol != ProtocolKind::Echo)
            .unwrap_or(ProtocolKind::Echo)
    }

    /// The `--max-connections` served with: as given if the open-files limit holds it (else
    /// `prepare` refuses it, and it is kept as given here), or what the limit allows (see
    /// `descriptors`). Fixed when the server starts: a reload does not change it.
    pub(crate) fn max_connections(&self) -> usize {
        let given = self.values.max_connections;
        crate::descriptors::Budget::current(self.busiest_protocol())
            .max_connections(given)
            .unwrap_or_else(|_| given.unwrap_or(ServerConfig::DEFAULT_MAX_CONNECTIONS))
    }

    /// Resolves the flags, reading `--config` if given.
    pub(crate) fn resolve(flags: ServeArgs) -> Result<Settings, BoxError> {
        let given = flags.clone();
        let mut file = match &flags.config {
            Some(path) => {
                let text = crate::bounded_file::read_text("cannot read config", path)?;
                toml::from_str::<ServeArgs>(&text)
                    .map_err(|e| format!("bad config {}: {e}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        // The certificates are one setting made of several keys, each source checked on its
        // own: pairs given as flags replace every pair of the file.
        let of =
            |a: &ServeArgs| certificate_pairs(&a.cert, &a.key, &a.ocsp_response, &a.certificate);
        if of(&flags)?.is_some() {
            (file.cert, file.key, file.ocsp_response) = Default::default();
            file.certificate.clear();
        }
        of(&file)?;
        let values = flags.over(file).values();
        let cert = match certificate_pairs(
            &values.cert,
            &values.key,
            &values.ocsp_response,
            &values.certificate,
        )? {
            Some(pairs) => CertSource::Files(pairs),
            None => CertSource::BuiltIn,
        };
        let client_auth = client_auth(&values)?;
        let accept_proxy = accept_proxy(&values)?;
        let services =
            crate::service_settings::resolve(&values.service, &values, given.config.as_deref())?;
        // The default TLS listener only when no listener at all is named: a client-mode
        // configuration (plaintext listeners only) opens no TLS port it did not ask for.
        let mut values = values;
        let plain_listeners = !values.listen_plain.is_empty()
            || services.iter().any(|s| !s.values.listen_plain.is_empty());
        if values.listen.is_empty() && !plain_listeners {
            values.listen = vec![crate::cli::DEFAULT_LISTEN];
        }
        let settings = Settings {
            services,
            tls_policy: TlsPolicy {
                min_version: match values.tls_min_version {
                    TlsMinVersion::V1_3 => TlsVersion::Tls13,
                    TlsMinVersion::V1_2 => TlsVersion::Tls12,
                },
                cipher_suites: values.cipher_suites.clone(),
                kx_groups: values.kx_groups.clone(),
                prefer_server_cipher_order: values.prefer_server_cipher_order,
                alpn: values.alpn.clone(),
            },
            values,
            cert,
            client_auth,
            accept_proxy,
            flags: given,
        };
        settings.check()?;
        Ok(settings)
    }

    /// The settings again, from the same flags over the config file as it reads now: what a
    /// reload takes its TLS settings from (certificates, the client-certificate policy with its
    /// allow-lists, versions, ALPN, tickets).
    pub(crate) fn reread(&self) -> Result<Settings, BoxError> {
        Settings::resolve(self.flags.clone())
    }

    /// Every plaintext listener (client mode), with the label of the service its clients are
    /// (`None`: the default service's): `--listen-plain` first, then each `[[service]]`'s own,
    /// in order.
    pub(crate) fn plain_listeners(&self) -> Vec<(Option<&str>, &PlainAddr)> {
        let flat = self.values.listen_plain.iter().map(|addr| (None, addr));
        let named = self.services.iter().flat_map(|service| {
            (service.values.listen_plain.iter()).map(|addr| (Some(service.label.as_str()), addr))
        });
        flat.chain(named).collect()
    }

    /// The idle timeout; zero means "never" (an operator switching it off).
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        Some(self.values.idle_timeout).filter(|t| !t.is_zero())
    }

    fn check(&self) -> Result<(), BoxError> {
        let listen = &self.values.listen;
        // Port 0 twice is two ports; any other address twice could only fail to bind.
        for (n, addr) in listen.iter().enumerate() {
            if addr.port() != 0 && listen[..n].contains(addr) {
                return Err(format!("--listen {addr} is given twice").into());
            }
        }
        if let Some(addr) = listen.iter().find(|a| !is_loopback(a.ip())) {
            self.may_serve_on(&format!("--listen {addr}"), *addr)?;
        }
        if self.values.sni_strict && self.cert == CertSource::BuiltIn {
            return Err("--sni-strict needs --cert and --key".into());
        }
        self.check_http_listeners()?;
        self.check_durations()?;
        let (_, tls_upstreams) = crate::upstream_tls::upstreams(&self.values.upstream)?;
        crate::upstream_tls::check(&self.values, tls_upstreams)?;
        let client_mode = !self.values.listen_plain.is_empty();
        if client_mode && (self.values.protocol != ProtocolKind::Proxy || !tls_upstreams) {
            return Err(
                "--listen-plain (client mode) needs --protocol proxy and TLS upstreams \
                        (--upstream tls://HOST:PORT): its clients are plaintext, so the hop to \
                        the upstream is the one to encrypt"
                    .into(),
            );
        }
        match (self.values.protocol, self.values.upstream.is_empty()) {
            (ProtocolKind::Proxy, true) => Err(
                "--protocol proxy needs --upstream HOST:PORT, unix:/path or tls://HOST:PORT".into(),
            ),
            (ProtocolKind::Passthrough, true) => Err(
                "--protocol passthrough needs --upstream HOST:PORT or unix:/path (the TLS server \
                 the client's bytes go to)"
                    .into(),
            ),
            (ProtocolKind::Echo, false) => {
                Err("--upstream is only used with --protocol proxy or passthrough".into())
            }
            _ => Ok(()),
        }
    }
}

impl Settings {
    /// The admin and metrics listeners: each on an address of its own (two sockets on one
    /// address would split requests between them, tokens included, and neither is bound
    /// shareable), and the token file only with the admin API it protects (given without it,
    /// an operator would believe an API protected that is not even there, or one they meant
    /// to open is missing).
    fn check_http_listeners(&self) -> Result<(), BoxError> {
        let values = &self.values;
        let named = [
            ("--metrics-listen", values.metrics_listen),
            ("--admin-listen", values.admin_listen),
        ];
        let plain = self.plain_listeners();
        let plain_tcp = plain.iter().filter_map(|(service, addr)| match addr {
            PlainAddr::Tcp(addr) => Some((plain_key(*service), *addr)),
            PlainAddr::Unix(_) => None,
        });
        for (n, (service, addr)) in plain.iter().enumerate() {
            let twice = plain[..n].iter().find(|(_, seen)| match (seen, addr) {
                (PlainAddr::Unix(a), PlainAddr::Unix(b)) => a == b,
                (PlainAddr::Tcp(a), PlainAddr::Tcp(b)) => a.port() != 0 && a == b,
                _ => false,
            });
            if let Some((other, _)) = twice {
                return Err(format!(
                    "{} and {} are the same plaintext listener ({addr}): give each its own",
                    plain_key(*other),
                    plain_key(*service)
                )
                .into());
            }
        }
        let taken: Vec<(String, SocketAddr)> = values
            .listen
            .iter()
            .map(|addr| ("--listen".to_string(), *addr))
            .chain(plain_tcp)
            .chain(
                named
                    .iter()
                    .filter_map(|(flag, addr)| Some((flag.to_string(), (*addr)?))),
            )
            .collect();
        // Port 0 is a fresh port for each; the same IP and port for two sockets is not.
        for (n, (flag, addr)) in taken.iter().enumerate() {
            let earlier = taken[..n]
                .iter()
                .find(|(other, seen)| addr.port() != 0 && seen == addr && other != flag);
            if let Some((other, _)) = earlier {
                return Err(format!(
                    "{other} and {flag} are the same address ({addr}): give each its own"
                )
                .into());
            }
        }
        if values.admin_token_file.is_some() && values.admin_listen.is_none() {
            return Err(
                "--admin-token-file needs --admin-listen (there is no admin API to \
                        protect without it)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The durations the library does not see (it bounds its own in `ServerConfig::validate`):
    /// each above zero where zero makes no sense, and none over a day (a wrong unit, and a
    /// deadline past the clock's range).
    fn check_durations(&self) -> Result<(), BoxError> {
        let values = &self.values;
        let most = tlsvisor_actors::ServerConfig::MAX_TIMEOUT;
        let durations = [
            (
                "--upstream-connect-timeout",
                values.upstream_connect_timeout,
                false,
            ),
            ("--accept-proxy-timeout", values.accept_proxy_timeout, false),
            // Zero: close at once, without a grace period.
            ("--shutdown-grace", values.shutdown_grace, true),
        ];
        for (flag, duration, zero_allowed) in durations {
            if duration.is_zero() && !zero_allowed {
                return Err(format!("{flag} must be above zero").into());
            }
            if duration > most {
                return Err(format!("{flag} must be at most 24h").into());
            }
        }
        Ok(())
    }

    /// Whether these settings may serve TLS on `addr` (named `what` in the error): the
    /// built-in development certificate is served on loopback addresses only, since its private
    /// key is published with the source and anyone who reaches the port could impersonate the
    /// server. `check` applies it to the `--listen` addresses; `serve` to the addresses of the
    /// sockets it inherits, which are what it serves when one is mapped by order.
    /// A passthrough server serves no certificate at all (no handshake completes there).
    pub(crate) fn may_serve_on(&self, what: &str, addr: SocketAddr) -> Result<(), BoxError> {
        let serves_built_in =
            self.cert == CertSource::BuiltIn && self.values.protocol != ProtocolKind::Passthrough;
        if !serves_built_in || is_loopback(addr.ip()) {
            return Ok(());
        }
        Err(format!(
            "{what}: the built-in development certificate is served on loopback addresses \
             only (its private key is public); pass --cert and --key to serve {}",
            addr.ip()
        )
        .into())
    }
}

/// Whether `ip` reaches this host only: 127.0.0.0/8, `::1`, or `::ffff:127.x.y.z`.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `--accept-proxy` and its companions; `--accept-proxy-from` without it is an error.
fn accept_proxy(given: &Values) -> Result<Option<tlsvisor_actors::AcceptProxy>, BoxError> {
    use tlsvisor_actors::{AcceptProxy, Cidr, ProxyVersions};
    let from = &given.accept_proxy_from;
    let Some(version) = given.accept_proxy else {
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
        timeout: given.accept_proxy_timeout,
    }))
}

/// How an error names a plaintext listener's setting: the flag, or a service's key.
fn plain_key(service: Option<&str>) -> String {
    match service {
        None => "--listen-plain".to_string(),
        Some(label) => format!("service {label}'s listen-plain"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
        assert_eq!(s.values.workers, 3);
        assert_eq!(s.values.max_connections, Some(9));
        assert_eq!(s.idle_timeout(), None);
        assert_eq!(s.values.listen, [crate::cli::DEFAULT_LISTEN]);
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
        assert_eq!(from_file.values.listen.len(), 2);
        let flag: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let flags = Settings::resolve(ServeArgs {
            config: Some(path),
            listen: vec![flag],
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(flags.values.listen, [flag]);
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
            .values
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
    fn flags_and_the_file_layer_setting_by_setting_through_one_rule_per_kind() {
        let file = ServeArgs {
            workers: Some(3),
            upstream: vec!["a:1".into(), "b:2".into()],
            watch_certs: true,
            max_handshakes: Some(64),
            ..ServeArgs::default()
        };
        let flags = ServeArgs {
            workers: Some(5),
            upstream: vec!["c:3".into()],
            user: Some("nobody".into()),
            ..ServeArgs::default()
        };
        let values = flags.over(file).values();
        assert_eq!(values.workers, 5, "a flag wins over the file");
        assert_eq!(
            values.upstream,
            ["c:3"],
            "a list given as flags replaces the file's"
        );
        assert!(values.watch_certs, "a switch the file turns on stays on");
        assert_eq!(
            values.max_handshakes,
            Some(64),
            "the file fills what the flags leave"
        );
        assert_eq!(values.user.as_deref(), Some("nobody"));
        assert_eq!(
            values.shutdown_grace,
            Duration::from_secs(10),
            "the default"
        );
        assert!(
            values.listen.is_empty(),
            "no default here: Settings::resolve opens the default listener when none at all is given"
        );
    }

    #[test]
    fn the_default_listen_opens_only_when_no_listener_at_all_is_given() {
        let client_mode = |listen: Vec<SocketAddr>| ServeArgs {
            protocol: Some(ProtocolKind::Proxy),
            upstream: vec!["tls://127.0.0.1:6380".into()],
            upstream_sni: Some("localhost".into()),
            listen_plain: vec!["unix:/run/redis-plain.sock".parse().unwrap()],
            listen,
            ..ServeArgs::default()
        };
        let plain_only = Settings::resolve(client_mode(Vec::new())).unwrap();
        assert!(
            plain_only.values.listen.is_empty(),
            "no TLS port it did not ask for"
        );
        let explicit: SocketAddr = "127.0.0.1:9443".parse().unwrap();
        let both = Settings::resolve(client_mode(vec![explicit])).unwrap();
        assert_eq!(
            both.values.listen,
            [explicit],
            "an explicit --listen still opens"
        );
        let nothing = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(nothing.values.listen, [crate::cli::DEFAULT_LISTEN]);
    }

    #[test]
    fn certificate_pairs_from_the_flags_replace_every_pair_of_the_file() {
        let dir = std::env::temp_dir().join(format!("tlsvisor-pairs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tlsvisor.toml");
        std::fs::write(
            &path,
            "cert = \"f.crt\"\nkey = \"f.key\"\n[[certificate]]\ncert = \"t.crt\"\nkey = \"t.key\"\n",
        )
        .unwrap();
        let pairs = |flags: ServeArgs| match Settings::resolve(flags).unwrap().cert {
            CertSource::Files(pairs) => pairs.iter().map(|p| p.cert.clone()).collect(),
            CertSource::BuiltIn => vec![],
        };
        let from_file = pairs(ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        });
        assert_eq!(from_file, [PathBuf::from("f.crt"), PathBuf::from("t.crt")]);
        let from_flags = pairs(ServeArgs {
            config: Some(path.clone()),
            cert: vec!["a.crt".into()],
            key: vec!["a.key".into()],
            ..ServeArgs::default()
        });
        assert_eq!(from_flags, [PathBuf::from("a.crt")]);
        // A --cert without its --key is an error even when the file has keys.
        let half = Settings::resolve(ServeArgs {
            config: Some(path),
            cert: vec!["a.crt".into()],
            ..ServeArgs::default()
        });
        assert!(half
            .unwrap_err()
            .to_string()
            .contains("--cert and --key go together"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_development_certificate_is_served_on_loopback_addresses_only() {
        let on = |listen: &[&str]| {
            Settings::resolve(ServeArgs {
                listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
                ..ServeArgs::default()
            })
        };
        for loopback in [
            &["127.0.0.1:8443"][..],
            &["127.0.0.2:0", "[::1]:8443"],
            &["[::ffff:127.0.0.1]:8443"],
        ] {
            assert!(on(loopback).is_ok(), "{loopback:?}");
        }
        for beyond in [
            &["0.0.0.0:8443"][..],
            &["[::]:8443"],
            &["127.0.0.1:8443", "192.0.2.1:8443"],
            &["[::ffff:10.0.0.1]:8443"],
        ] {
            let error = on(beyond).unwrap_err().to_string();
            assert!(error.contains("--cert"), "{error}");
            assert!(error.contains(beyond[beyond.len() - 1]), "{error}");
        }
        assert!(on(&[]).is_ok(), "the default, 127.0.0.1:8443");
        let with_files = Settings::resolve(ServeArgs {
            listen: vec!["0.0.0.0:8443".parse().unwrap()],
            cert: vec!["server.crt".into()],
            key: vec!["server.key".into()],
            ..ServeArgs::default()
        })
        .unwrap();
        let any: SocketAddr = "[::]:8443".parse().unwrap();
        assert!(with_files.may_serve_on("the inherited socket", any).is_ok());
        let built_in = on(&[]).unwrap();
        let error = built_in.may_serve_on("the inherited socket [::]:8443", any);
        assert!(error.unwrap_err().to_string().contains("--cert"));
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
