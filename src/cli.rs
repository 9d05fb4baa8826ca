//! The command line: `tlsvisor [serve FLAGS | gen-certs --out DIR]`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tlsvisor_actors::ServerConfig;

use crate::plain_addr::PlainAddr;

/// A TLS connection supervisor: terminates TLS, serves `echo` or proxies to a plaintext
/// upstream, and disposes every connection exactly once.
///
/// With no command it serves `echo` on 127.0.0.1:8443 with the built-in development
/// certificate.
#[derive(Debug, Parser)]
#[command(name = "tlsvisor", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve TLS connections.
    Serve(Box<ServeArgs>),
    /// Check what `serve` would run with (settings, certificates and keys, upstream, token
    /// file) and exit 0, or 1 with one line per problem.
    Check(Box<ServeArgs>),
    /// Write a development CA and a server certificate and key (for localhost) into a folder.
    GenCerts {
        /// Folder to write ca.crt, ca.key, server.crt and server.key into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// The address `serve` listens on when neither the flags nor the file name any listener (a
/// plaintext one of client mode included: see `Settings::resolve`).
pub(crate) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);

/// Defines every setting of `serve` once: its flag (clap), its config-file key (serde, the
/// flag's name), its doc (the `--help` line) and, after `=`, its default. From the one list it
/// makes [`ServeArgs`] (a setting as given: the flags, or the file), [`ServeArgs::over`] (the
/// flags over the file, setting by setting, through [`Layer`]) and [`Values`] (every setting
/// with its default applied, by [`ServeArgs::values`]). A new setting is one more entry.
///
/// Each entry is its attributes (the doc lines, clap's and serde's), then `name: Type` or
/// `name: Type = default`.
macro_rules! serve_settings {
    // Every entry read: write the two structs and the two steps between them.
    (@read [] -> [$($args:tt)*] [$($values:tt)*] [$(($name:ident $(= $default:expr)?))*]) => {
        /// Flags of `serve`. Each may also be set in the `--config` file under the same name; a
        /// flag wins over the file.
        #[derive(Debug, Default, Clone, Args, Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        pub(crate) struct ServeArgs { $($args)* }

        /// Every setting of `serve`: from the flags, else from the config file, else its
        /// default (each documented on [`ServeArgs`]).
        // `config` is read from the flags alone, before there are values.
        #[allow(dead_code)]
        #[derive(Debug, Clone)]
        pub(crate) struct Values { $($values)* }

        impl ServeArgs {
            /// These settings (the flags) over `file`'s: each as given here, else as there.
            pub(crate) fn over(self, file: ServeArgs) -> ServeArgs {
                ServeArgs { $($name: Layer::over(self.$name, file.$name),)* }
            }

            /// Every setting, with the defaults of those not given.
            pub(crate) fn values(self) -> Values {
                Values { $($name: serve_settings!(@value self.$name $(, $default)?),)* }
            }
        }
    };
    (@value $given:expr) => { $given };
    (@value $given:expr, $default:expr) => { Layer::or_default($given, || $default) };
    // An entry with a default.
    (@read [
        $(#[$attr:meta])* $name:ident: $given:ty = $default:expr,
        $($rest:tt)*
    ] -> [$($args:tt)*] [$($values:tt)*] [$($names:tt)*]) => {
        serve_settings!(@read [$($rest)*] ->
            [$($args)* $(#[$attr])* pub(crate) $name: $given,]
            [$($values)* pub(crate) $name: <$given as Layer>::Value,]
            [$($names)* ($name = $default)]);
    };
    // An entry without: its value is as given (`None`, empty or `false` when not).
    (@read [
        $(#[$attr:meta])* $name:ident: $given:ty,
        $($rest:tt)*
    ] -> [$($args:tt)*] [$($values:tt)*] [$($names:tt)*]) => {
        serve_settings!(@read [$($rest)*] ->
            [$($args)* $(#[$attr])* pub(crate) $name: $given,]
            [$($values)* pub(crate) $name: $given,]
            [$($names)* ($name)]);
    };
    ($($entries:tt)*) => {
        serve_settings!(@read [$($entries)*] -> [] [] []);
    };
}

/// How a setting given twice (by a flag and by the file) is settled, and how its default
/// fills it in: one rule per kind of setting, so that no setting is merged by hand.
pub(crate) trait Layer: Sized {
    /// The setting once its default is applied.
    type Value;
    /// `self` (from the flags) over `under` (from the file).
    fn over(self, under: Self) -> Self;
    /// The value as given, or `default` when it was not.
    fn or_default(self, default: impl FnOnce() -> Self::Value) -> Self::Value;
}

/// A single value: the flag's if given.
impl<T> Layer for Option<T> {
    type Value = T;
    fn over(self, under: Self) -> Self {
        self.or(under)
    }
    fn or_default(self, default: impl FnOnce() -> T) -> T {
        self.unwrap_or_else(default)
    }
}

/// A repeatable flag or a list: the flags' list replaces the file's whole, if any is given.
impl<T> Layer for Vec<T> {
    type Value = Vec<T>;
    fn over(self, under: Self) -> Self {
        if self.is_empty() {
            under
        } else {
            self
        }
    }
    fn or_default(self, default: impl FnOnce() -> Vec<T>) -> Vec<T> {
        if self.is_empty() {
            default()
        } else {
            self
        }
    }
}

/// A switch: on if either turns it on.
impl Layer for bool {
    type Value = bool;
    fn over(self, under: Self) -> Self {
        self || under
    }
    fn or_default(self, default: impl FnOnce() -> bool) -> bool {
        self || default()
    }
}

serve_settings! {
    /// A TOML file with any of these settings (keys named like the flags, e.g. `max-connections`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on; repeat for several (an IPv4 and an IPv6 one, say), all serving
    /// the same protocol with the same workers and limits [default: 127.0.0.1:8443 when no
    /// listener at all is given, --listen-plain and a service's listen-plain included].
    #[arg(long)]
    #[serde(default, deserialize_with = "de_one_or_many")]
    listen: Vec<SocketAddr>,
    /// PEM certificate chain; repeat for several names, chosen by SNI, the first the default
    /// [default: the built-in development certificate].
    #[arg(long)]
    #[serde(default, deserialize_with = "de_one_or_many")]
    cert: Vec<PathBuf>,
    /// PEM private key of the certificate; repeated, paired in order with `--cert`.
    #[arg(long)]
    #[serde(default, deserialize_with = "de_one_or_many")]
    key: Vec<PathBuf>,
    /// DER OCSP response to staple; repeated, paired in order with `--cert` (the first with
    /// the first; certificates after the last response staple none).
    #[arg(long)]
    #[serde(default, deserialize_with = "de_one_or_many")]
    ocsp_response: Vec<PathBuf>,
    /// The config file's `[[certificate]]` tables (`cert`, `key`, `ocsp-response`), in order.
    #[arg(skip)]
    #[serde(default)]
    certificate: Vec<CertificateEntry>,
    /// The config file's `[[service]]` tables (see [`ServiceEntry`]): names served with their
    /// own certificates, client policy, ALPN, protocol and upstreams. Kept as tables until
    /// resolved, so that an error can name the service.
    #[arg(skip)]
    #[serde(default)]
    service: Vec<toml::Table>,
    /// Refuse a client whose SNI names no certificate (alert `unrecognized_name`) instead of
    /// serving it the first certificate.
    #[arg(long)]
    #[serde(default)]
    sni_strict: bool,
    /// Lowest TLS version accepted [default: 1.2].
    #[arg(long, value_enum)]
    tls_min_version: Option<TlsMinVersion> = TlsMinVersion::V1_2,
    /// Cipher suites offered, comma-separated, by rustls or IANA name, in preference order
    /// [default: rustls's].
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "de_list")]
    cipher_suites: Vec<String>,
    /// Key-exchange groups offered, comma-separated (X25519MLKEM768, X25519, secp256r1,
    /// secp384r1) [default: the provider's: X25519MLKEM768 first with aws-lc-rs].
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "de_list")]
    kx_groups: Vec<String>,
    /// Pick the cipher suite by the server's order rather than the client's.
    #[arg(long)]
    #[serde(default)]
    prefer_server_cipher_order: bool,
    /// ALPN protocols, comma-separated, in the server's order of preference (e.g.
    /// `h2,http/1.1`); a client offering none of them is refused.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "de_list")]
    alpn: Vec<String>,
    /// PEM bundle of the CAs client certificates must chain to; turns client verification on.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Whether clients must present a certificate [default: require, with --client-ca].
    #[arg(long, value_enum)]
    client_auth: Option<ClientAuthKind>,
    /// CRL (PEM or DER) of revoked client certificates; repeatable.
    #[arg(long)]
    #[serde(default, deserialize_with = "de_one_or_many")]
    client_crl: Vec<PathBuf>,
    /// Admit a verified client whose subject CN is this; repeatable (any match admits).
    #[arg(long)]
    #[serde(default, deserialize_with = "de_one_or_many")]
    allow_cn: Vec<String>,
    /// Admit a verified client with this SAN DNS name; repeatable.
    #[arg(long)]
    #[serde(default, deserialize_with = "de_one_or_many")]
    allow_dns_san: Vec<String>,
    /// Admit a verified client with this SAN URI (e.g. a SPIFFE ID); repeatable.
    #[arg(long)]
    #[serde(default, deserialize_with = "de_one_or_many")]
    allow_uri_san: Vec<String>,
    /// Session ticket keys shared by several tlsvisor processes: one key per line, 96 hex
    /// digits (`openssl rand -hex 48`), newest first; the first encrypts, all decrypt
    /// [default: random keys per process, rotated every 6 h].
    #[arg(long)]
    ticket_key_file: Option<PathBuf>,
    /// After a reload that changes the client-certificate policy (CA bundle, CRLs,
    /// allow-lists), check every open connection's client certificate again and close those
    /// the new policy refuses (`credentials_revoked`); close a connection when its client
    /// certificate expires (`client_certificate_expired`). `off`: a new policy applies to new
    /// handshakes only [default: on].
    #[arg(long, value_enum)]
    revalidate_live: Option<OnOff> = OnOff::On,
    /// Poll the certificate and key files every second and reload them once they changed.
    #[arg(long)]
    #[serde(default)]
    watch_certs: bool,
    /// Bind the listening socket with SO_REUSEPORT, so that several processes can share the
    /// port (each socket has its own accept queue, dropped when it closes).
    #[arg(long)]
    #[serde(default)]
    reuse_port: bool,
    /// What to speak over each connection [default: echo].
    #[arg(long, value_enum)]
    protocol: Option<ProtocolKind> = ProtocolKind::Echo,
    /// Upstream for `--protocol proxy`: HOST:PORT or unix:/path (plaintext), tls://HOST:PORT
    /// (TLS); for `--protocol passthrough`: HOST:PORT or unix:/path (a TLS server); repeatable (each client goes to the healthy one with the fewest connections).
    #[arg(long)]
    #[serde(default, deserialize_with = "de_one_or_many")]
    upstream: Vec<String>,
    /// PEM bundle of the CAs a tls:// upstream's certificate must chain to [default: the
    /// system's bundle].
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// PEM client certificate chain presented to tls:// upstreams (with --upstream-key).
    #[arg(long)]
    upstream_cert: Option<PathBuf>,
    /// PEM private key of --upstream-cert.
    #[arg(long)]
    upstream_key: Option<PathBuf>,
    /// Name sent as SNI to tls:// upstreams and verified in their certificates [default: each
    /// upstream's host].
    #[arg(long)]
    upstream_sni: Option<String>,
    /// Key-exchange groups offered to tls:// upstreams, in preference order (the names of
    /// --kx-groups) [default: the build's, X25519MLKEM768 first].
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "de_list")]
    upstream_kx_groups: Vec<String>,
    /// Accept plaintext here (HOST:PORT, or unix:/path for a unix socket) and connect out
    /// over TLS to the tls:// upstreams (client mode, stunnel's `client = yes`); repeatable.
    #[arg(long)]
    #[serde(default, deserialize_with = "de_plain_addrs")]
    listen_plain: Vec<PlainAddr>,
    /// Time to connect to the upstream (proxy) [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    upstream_connect_timeout: Option<Duration> = Duration::from_secs(5),
    /// Send a PROXY protocol header (v1 text or v2 binary) to the upstream (proxy).
    #[arg(long, value_enum)]
    proxy_protocol: Option<ProxyProtocolVersion>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Serve the admin API (connections, pause, drain, reload, health, metrics) at
    /// http://ADDR/; keep it on loopback or behind --admin-token-file.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// A file holding the token every admin request but the health checks must present as
    /// `Authorization: Bearer TOKEN`.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Let the admin API install TLS faults for testing clients (`POST /faults`: delay,
    /// stall or reset handshakes, add latency, cap bandwidth, truncate, reset, close early).
    /// Needs --admin-listen on loopback or --admin-token-file. Not for production traffic.
    #[arg(long)]
    #[serde(default)]
    runtime_faults: bool,
    /// Read a PROXY protocol header (from a load balancer in front) before each TLS
    /// handshake; the client's original address then stands for the peer.
    #[arg(long, value_enum)]
    accept_proxy: Option<AcceptProxyVersion>,
    /// Only sources in these networks must send the header (repeatable); others are served as
    /// direct clients [default: every source must].
    #[arg(long, value_name = "CIDR")]
    #[serde(default, deserialize_with = "de_list")]
    accept_proxy_from: Vec<String>,
    /// Time the PROXY header gets to arrive [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    accept_proxy_timeout: Option<Duration> = Duration::from_secs(5),
    /// Run as this user once the sockets are bound and the key files read (start as root to
    /// bind port 443).
    #[arg(long)]
    user: Option<String>,
    /// Run as this group [default: the --user's primary group].
    #[arg(long)]
    group: Option<String>,
    /// Worker threads connections are spread over [default: one per core].
    #[arg(long)]
    workers: Option<usize> = ServerConfig::default_workers(),
    /// Live connections at which accepting pauses until one closes [default: what the open
    /// files limit allows (one descriptor per echo connection, two per proxied one, 100
    /// reserved), at most 10000]; a value the limit cannot hold is refused.
    #[arg(long)]
    max_connections: Option<usize>,
    /// TLS handshakes in progress at which accepting pauses until one ends [default: 256 per
    /// worker].
    #[arg(long)]
    max_handshakes: Option<usize>,
    /// Live connections per client address (IPv6: per /64); more are closed at accept; 0 = off
    /// [default: 0].
    #[arg(long)]
    max_connections_per_ip: Option<usize> = 0,
    /// Handshakes in progress per client address (IPv6: per /64); more are closed at accept;
    /// 0 = off [default: a quarter of --max-handshakes].
    #[arg(long)]
    max_handshakes_per_ip: Option<usize>,
    /// New TLS handshakes a second, server-wide; over it accepting slows (clients wait in the
    /// backlog; none is refused for it), bursts of a tenth of a second's worth pass; 0 = off
    /// [default: 0].
    #[arg(long)]
    max_handshake_rate: Option<usize> = 0,
    /// New TLS handshakes a second per client address (IPv6: per /64), a second's worth at
    /// once; more are closed at accept; 0 = off [default: 0].
    #[arg(long)]
    max_handshake_rate_per_ip: Option<usize> = 0,
    /// Time a client gets to finish the TLS handshake [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    handshake_timeout: Option<Duration> = ServerConfig::DEFAULT_HANDSHAKE_TIMEOUT,
    /// Time without a byte in either direction (from the client, or from the upstream) before
    /// the connection is closed; 0 disables [default: 5m].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    idle_timeout: Option<Duration> = ServerConfig::DEFAULT_IDLE_TIMEOUT,
    /// Close each connection gracefully this long after it was accepted, spread by a random
    /// ±10 %; 0 = no limit [default: 0].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    max_lifetime: Option<Duration> = Duration::ZERO,
    /// Proxy: once one side has finished, the time the other direction gets to finish before
    /// the connection is closed; 0 = no limit (the idle timeout still applies) [default: 0].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    half_close_timeout: Option<Duration> = Duration::ZERO,
    /// Time a graceful close gets (flush, close_notify, wait for the client) [default: 2s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    close_timeout: Option<Duration> = ServerConfig::DEFAULT_CLOSE_TIMEOUT,
    /// Time connections get to close on SIGTERM/SIGINT before they are forced [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    shutdown_grace: Option<Duration> = Duration::from_secs(10),
    /// Log format [default: term].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat> = LogFormat::Term,
    /// Least severe level logged [default: info].
    #[arg(long, value_enum)]
    log_level: Option<LogLevel> = LogLevel::Info,
}

/// `--client-auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ClientAuthKind {
    /// No certificate, no connection.
    Require,
    /// Clients without a certificate are admitted; a certificate given must verify.
    Optional,
}

/// A setting that is `on` or `off` (and defaults to `on`, which a bare switch could not turn
/// off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `--tls-min-version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
pub(crate) enum TlsMinVersion {
    /// TLS 1.2 and 1.3.
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    V1_3,
}

/// One `[[certificate]]` table of the config file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct CertificateEntry {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub ocsp_response: Option<PathBuf>,
}

/// One `[[service]]` table of the config file: a service by name. Exactly these keys (each
/// named and read like the top-level key of the same name); an unknown one is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct ServiceEntry {
    /// Exact names and `*.` wildcards (RFC 6125); the first is the service's label.
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub names: Vec<String>,
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub cert: Vec<PathBuf>,
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub key: Vec<PathBuf>,
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub ocsp_response: Vec<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub client_auth: Option<ClientAuthKind>,
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub client_crl: Vec<PathBuf>,
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub allow_cn: Vec<String>,
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub allow_dns_san: Vec<String>,
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub allow_uri_san: Vec<String>,
    #[serde(default, deserialize_with = "de_list")]
    pub alpn: Vec<String>,
    pub tls_min_version: Option<TlsMinVersion>,
    /// [default: `proxy` with an upstream, else `echo`].
    pub protocol: Option<ProtocolKind>,
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub upstream: Vec<String>,
    pub upstream_ca: Option<PathBuf>,
    pub upstream_cert: Option<PathBuf>,
    pub upstream_key: Option<PathBuf>,
    pub upstream_sni: Option<String>,
    #[serde(default, deserialize_with = "de_list")]
    pub upstream_kx_groups: Vec<String>,
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// Live connections of this service at which a new client of it is refused [default: no
    /// cap of its own; the server-wide `max-connections` still applies].
    pub max_connections: Option<usize>,
    /// Its own `idle-timeout`, `max-lifetime`, `half-close-timeout` (`0` = none for this
    /// service) [default: the top-level value].
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub max_lifetime: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub half_close_timeout: Option<Duration>,
    /// Its own `upstream-connect-timeout` [default: the top-level value].
    #[serde(default, deserialize_with = "de_duration")]
    pub upstream_connect_timeout: Option<Duration>,
    /// The service's own plaintext listeners (client mode): its clients from their accept.
    #[serde(default, deserialize_with = "de_plain_addrs")]
    pub listen_plain: Vec<PlainAddr>,
    /// The same, spelt as a listener with `plain = true` (refused without it: services share
    /// the TLS `--listen` ports, chosen by SNI).
    #[serde(default, deserialize_with = "de_plain_addrs")]
    pub listen: Vec<PlainAddr>,
    /// `listen` is plaintext (client mode).
    #[serde(default)]
    pub plain: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ProtocolKind {
    /// Write back every decrypted byte.
    Echo,
    /// Forward decrypted bytes to a plaintext TCP upstream.
    Proxy,
    /// Do not terminate TLS: read the ClientHello for its SNI, then forward the client's bytes
    /// untouched (that hello first) to the upstream, a TLS server (nginx `ssl_preread`).
    Passthrough,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum AcceptProxyVersion {
    /// The text header only.
    V1,
    /// The binary header only.
    V2,
    /// Either.
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ProxyProtocolVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Term,
    /// One JSON object per line.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Reads `500ms`, `5s`, `2m`, `1h`; a bare `0` is zero.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (durations read like 500ms, 5s, 2m)"))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A plaintext listener key (`listen-plain`): one address or a list, each read as
/// `--listen-plain` reads it, so that a bad one is named with why (an untagged list would only
/// say that nothing matched).
fn de_plain_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PlainAddr>, D::Error> {
    de_one_or_many::<D, String>(d)?
        .iter()
        .map(|text| text.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// A config-file key that takes one value or a list (`cert = "a.pem"` or `cert = ["a", "b"]`).
/// Names are never split at commas: a subject CN may contain one (`Acme, Inc.`).
pub(crate) fn de_one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(value) => vec![value],
        OneOrMany::Many(values) => values,
    })
}

/// A config-file list given as a list or as one comma-separated string, like the flag.
pub(crate) fn de_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrList {
        Text(String),
        List(Vec<String>),
    }
    Ok(match TextOrList::deserialize(d)? {
        TextOrList::Text(text) => text.split(',').map(|s| s.trim().to_string()).collect(),
        TextOrList::List(list) => list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_contract() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn config_file_keys_are_the_flag_names() {
        let args: ServeArgs = toml::from_str(
            r#"
            listen = "127.0.0.1:9000"
            max-connections = 7
            handshake-timeout = "250ms"
            log-format = "json"
            protocol = "echo"
            max-handshakes = 64
            max-connections-per-ip = 3
            max-handshakes-per-ip = 0
            max-handshake-rate = 100
            max-handshake-rate-per-ip = 10
            max-lifetime = "1h"
            half-close-timeout = "30s"
            "#,
        )
        .unwrap();
        assert_eq!(args.max_handshakes, Some(64));
        assert_eq!(args.max_connections_per_ip, Some(3));
        assert_eq!(args.max_handshakes_per_ip, Some(0));
        assert_eq!(args.max_handshake_rate, Some(100));
        assert_eq!(args.max_handshake_rate_per_ip, Some(10));
        assert_eq!(args.max_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(args.half_close_timeout, Some(Duration::from_secs(30)));
        assert_eq!(args.listen, ["127.0.0.1:9000".parse().unwrap()]);
        assert_eq!(args.max_connections, Some(7));
        assert_eq!(args.handshake_timeout, Some(Duration::from_millis(250)));
        assert_eq!(args.log_format, Some(LogFormat::Json));
        assert!(toml::from_str::<ServeArgs>("no-such-key = 1").is_err());
    }

    #[test]
    fn listen_is_repeatable_on_the_command_line_and_a_list_in_the_file() {
        let cli = Cli::try_parse_from([
            "tlsvisor",
            "serve",
            "--listen",
            "127.0.0.1:8443",
            "--listen",
            "[::1]:8443",
        ])
        .unwrap();
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve");
        };
        let both: Vec<SocketAddr> = vec![
            "127.0.0.1:8443".parse().unwrap(),
            "[::1]:8443".parse().unwrap(),
        ];
        assert_eq!(args.listen, both);
        let args: ServeArgs =
            toml::from_str("listen = [\"127.0.0.1:8443\", \"[::1]:8443\"]").unwrap();
        assert_eq!(args.listen, both);
        assert!(toml::from_str::<ServeArgs>("listen = \"nowhere\"").is_err());
    }

    #[test]
    fn admin_keys_in_the_config_file() {
        let args: ServeArgs = toml::from_str(
            r#"
            admin-listen = "127.0.0.1:9091"
            admin-token-file = "/etc/tlsvisor/admin.token"
            "#,
        )
        .unwrap();
        assert_eq!(args.admin_listen, Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(
            args.admin_token_file,
            Some(PathBuf::from("/etc/tlsvisor/admin.token"))
        );
    }

    #[test]
    fn certificates_in_the_config_file() {
        let args: ServeArgs = toml::from_str(
            r#"
            sni-strict = true
            [[certificate]]
            cert = "a.crt"
            key = "a.key"
            [[certificate]]
            cert = "b.crt"
            key = "b.key"
            "#,
        )
        .unwrap();
        assert!(args.sni_strict);
        assert_eq!(args.certificate.len(), 2);
        assert_eq!(args.certificate[1].key, PathBuf::from("b.key"));
        let args: ServeArgs = toml::from_str("cert = \"a.crt\"\nkey = [\"a.key\"]").unwrap();
        assert_eq!((args.cert.len(), args.key.len()), (1, 1));
    }

    #[test]
    fn mtls_and_ticket_keys_in_the_config_file() {
        let args: ServeArgs = toml::from_str(
            r#"
            client-ca = "ca.pem"
            client-auth = "optional"
            client-crl = ["a.crl", "b.crl"]
            allow-cn = "Acme, Inc."
            allow-uri-san = ["spiffe://a", "spiffe://b"]
            ticket-key-file = "tickets.key"
            watch-certs = true
            "#,
        )
        .unwrap();
        assert_eq!(args.client_auth, Some(ClientAuthKind::Optional));
        assert_eq!(args.client_crl.len(), 2);
        assert_eq!(args.allow_cn, ["Acme, Inc."]);
        assert_eq!(args.allow_uri_san.len(), 2);
        assert!(args.watch_certs && args.ticket_key_file.is_some());
    }

    #[test]
    fn tls_policy_flags_and_keys() {
        let cli = Cli::try_parse_from([
            "tlsvisor",
            "serve",
            "--tls-min-version",
            "1.3",
            "--alpn",
            "h2,http/1.1",
            "--kx-groups",
            "X25519",
        ])
        .unwrap();
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve");
        };
        assert_eq!(args.tls_min_version, Some(TlsMinVersion::V1_3));
        assert_eq!(args.alpn, ["h2", "http/1.1"]);
        let args: ServeArgs =
            toml::from_str("tls-min-version = \"1.2\"\nalpn = [\"h2\"]\ncipher-suites = \"A, B\"")
                .unwrap();
        assert_eq!(args.tls_min_version, Some(TlsMinVersion::V1_2));
        assert_eq!(args.cipher_suites, ["A", "B"]);
    }

    #[test]
    fn revalidate_live_is_on_by_default_and_off_by_flag_or_key() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(["tlsvisor", "serve"].iter().chain(args))?;
            let Some(Command::Serve(args)) = cli.command else {
                panic!("serve");
            };
            Ok::<_, clap::Error>(args.values().revalidate_live)
        };
        assert_eq!(parse(&[]).unwrap(), OnOff::On);
        assert_eq!(parse(&["--revalidate-live", "off"]).unwrap(), OnOff::Off);
        assert!(parse(&["--revalidate-live", "maybe"]).is_err());
        let args: ServeArgs = toml::from_str("revalidate-live = \"off\"").unwrap();
        assert_eq!(args.values().revalidate_live, OnOff::Off);
        assert!(toml::from_str::<ServeArgs>("revalidate-live = true").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
