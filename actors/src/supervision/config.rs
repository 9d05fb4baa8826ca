//! How a server instance is set up.

use std::time::Duration;

use crate::edge::accept_proxy::AcceptProxy;
use crate::error::ServerError;

/// Settings of one server instance: its limits, timeouts and buffers. [`ServerConfig::default`]
/// gives what an operator would pick; every field is public so an embedding program can change
/// any of them, and [`ServerConfig::validate`] says whether the result can work (the server
/// checks it again as it starts). Where to listen and what TLS to serve are given to the
/// [`ServerBuilder`](crate::ServerBuilder), each in one place.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Worker arbiters (threads) connections are spread over.
    pub workers: usize,
    /// Live connections at which the acceptors stop accepting until one is disposed (new
    /// clients wait in the kernel's backlog meanwhile).
    pub max_connections: usize,
    /// TLS handshakes in progress at which the acceptors stop accepting until one ends, for the
    /// whole server. `None`: 256 per worker (actix-tls's per-worker default).
    pub max_handshakes: Option<usize>,
    /// Live connections one client address may hold (IPv6: one /64); a socket over it is closed
    /// at accept. 0 switches it off (the default: clients behind one NAT or proxy share an
    /// address, and `max_connections` already bounds the total).
    pub max_connections_per_ip: usize,
    /// Handshakes in progress one client address may hold (IPv6: one /64); a socket over it is
    /// closed at accept. `None`: a quarter of the server-wide handshake limit, so one host
    /// flooding silent sockets can never hold more than a quarter of the slots. `Some(0)`
    /// switches it off.
    pub max_handshakes_per_ip: Option<usize>,
    /// New TLS handshakes a second, for the whole server (every worker and listener share it);
    /// 0 switches it off (the default). Over it accepting slows instead of refusing (as
    /// haproxy's `maxsslrate`): an acceptor waits for its turn before it accepts, so clients
    /// wait in the kernel's backlog and none is refused for the rate. Bursts of up to a tenth
    /// of a second's worth (at least 1) pass at once.
    pub max_handshake_rate: usize,
    /// New TLS handshakes a second one client address may start (IPv6: one /64); a socket over
    /// it is closed at accept (`rejected_total{reason="per_ip_limit"}`). Up to a second's
    /// worth may come at once (a client opening its pool). 0 switches it off (the default).
    pub max_handshake_rate_per_ip: usize,
    /// Time a client gets to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time without a byte in either direction before the connection is closed
    /// (`idle_timeout`): a byte read from the client, or (proxy) from the upstream, starts it
    /// again, so a client that only sends and one that only receives (a pub/sub subscriber)
    /// both stay. While a write is stalled (the other side does not read) the timer waits: the
    /// write's own limit, this same duration, ends it instead (`writer_error`, or
    /// `upstream_error` for the upstream). `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// Longest life of a connection, counted from its accept: it is then closed gracefully
    /// (`close_notify`, as any close) with the reason `max_lifetime`. Each connection's is
    /// spread by a random ±10 %, so connections opened together do not all close together.
    /// `None`: no limit (the default).
    pub max_lifetime: Option<Duration>,
    /// Proxy: once one side has finished (the client's `close_notify`, passed on as a FIN to
    /// the upstream, or the upstream's FIN, passed on as `close_notify`), the time the other
    /// direction gets to finish too; then the connection is closed with the reason
    /// `half_close_timeout`. `None`: no limit (the default; the idle timeout still ends a
    /// half-closed connection that goes quiet).
    pub half_close_timeout: Option<Duration>,
    /// Time a graceful close gets to flush, send `close_notify` and see the client finish,
    /// before the connection stops anyway.
    pub close_timeout: Duration,
    /// Read a PROXY protocol header before the handshake (behind a load balancer); the
    /// client's original address then stands for the peer. `None`: off.
    pub accept_proxy: Option<AcceptProxy>,
    /// Most bytes read at once from one side. Readers start small and grow toward this while
    /// data flows, so it costs nothing on idle connections; larger means fewer writes per GiB.
    pub read_buffer: usize,
    /// `listen(2)` backlog.
    pub backlog: u32,
    /// Binds with `SO_REUSEPORT`, so that several processes can each bind a socket of their
    /// own to the same address and the kernel spreads new connections over them. Off by
    /// default: each socket has its own accept queue, and clients queued on a socket that is
    /// closed are reset, so a process that stops loses whatever its queue held (the handover
    /// of a binary upgrade shares one socket instead and loses nothing). Also lets any process
    /// of the same user bind into the port.
    pub reuse_port: bool,
    /// Live revalidation (on by default): after a reload that changes the client-certificate
    /// policy (CA bundle, CRLs, allow-list), every open connection's client certificate chain
    /// is verified again against the new policy and those a new handshake would refuse are
    /// closed gracefully (`credentials_revoked`); a connection is closed when its client
    /// certificate expires (`client_certificate_expired`). Each connection with a client
    /// certificate keeps its chain for this (see ARCHITECTURE.md for the cost). Off: a new
    /// policy applies to new handshakes only, and nothing is kept.
    pub revalidate_live: bool,
}

impl Default for ServerConfig {
    /// One worker per core, 10,000 connections, 10 s handshake, 5 min idle, 2 s close; no
    /// handshake rate, lifetime or half-close limit.
    fn default() -> Self {
        ServerConfig {
            workers: ServerConfig::default_workers(),
            max_connections: ServerConfig::DEFAULT_MAX_CONNECTIONS,
            max_handshakes: None,
            max_connections_per_ip: 0,
            max_handshakes_per_ip: None,
            max_handshake_rate: 0,
            max_handshake_rate_per_ip: 0,
            handshake_timeout: ServerConfig::DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: Some(ServerConfig::DEFAULT_IDLE_TIMEOUT),
            max_lifetime: None,
            half_close_timeout: None,
            close_timeout: ServerConfig::DEFAULT_CLOSE_TIMEOUT,
            accept_proxy: None,
            read_buffer: 64 * 1024,
            backlog: 1024,
            reuse_port: false,
            revalidate_live: true,
        }
    }
}

impl ServerConfig {
    /// Default handshakes in progress per worker, when `max_handshakes` is `None`.
    pub const DEFAULT_HANDSHAKES_PER_WORKER: usize = 256;

    /// The server-wide handshake limit in force.
    pub fn effective_max_handshakes(&self) -> usize {
        self.max_handshakes
            .unwrap_or(ServerConfig::DEFAULT_HANDSHAKES_PER_WORKER.saturating_mul(self.workers))
    }

    /// The per-client handshake limit in force (0: off).
    pub fn effective_max_handshakes_per_ip(&self) -> usize {
        self.max_handshakes_per_ip
            .unwrap_or_else(|| (self.effective_max_handshakes() / 4).max(1))
    }

    /// Default live-connection limit.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    /// Default time to finish the TLS handshake.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default time without a byte in either direction.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Default time a graceful close gets.
    pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

    /// One worker per core (1 if the core count cannot be read).
    pub fn default_workers() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }

    /// Most worker arbiters: a thread each, and far more than any machine this serves needs
    /// (the per-worker books would be large before the threads were useful).
    pub const MAX_WORKERS: usize = 1024;

    /// The longest any timeout may be: a day. Longer is a mistake (a unit read wrongly), and
    /// a deadline past it could overflow the clock.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

    /// The highest handshake rate (server-wide or per client) that may be set: a million a
    /// second, far above what any machine completes, so a higher one is a mistake (and the
    /// rate's interval stays a whole microsecond).
    pub const MAX_HANDSHAKE_RATE: usize = 1_000_000;

    /// Whether these settings can work: every count at least 1 and within its bound, every
    /// timeout above zero and at most [`ServerConfig::MAX_TIMEOUT`]. The error says which
    /// setting and why, in the words of the setting's name.
    pub fn validate(&self) -> Result<(), ServerError> {
        let fail = |why: String| Err(ServerError::Config(why));
        if self.workers == 0 || self.workers > ServerConfig::MAX_WORKERS {
            return fail(format!(
                "workers must be between 1 and {} (it is {})",
                ServerConfig::MAX_WORKERS,
                self.workers
            ));
        }
        // The limits are tokio semaphores, which hold at most this many permits.
        let most = tokio::sync::Semaphore::MAX_PERMITS;
        let counts = [
            ("max_connections", Some(self.max_connections)),
            ("max_handshakes", self.max_handshakes),
        ];
        for (name, count) in counts {
            match count {
                Some(0) => return fail(format!("{name} must be at least 1")),
                Some(n) if n > most => return fail(format!("{name} must be below 2^61")),
                _ => {}
            }
        }
        if self.max_connections_per_ip > most || self.max_handshakes_per_ip.unwrap_or(0) > most {
            return fail("the per-IP limits must be below 2^61".into());
        }
        let rates = [
            ("max_handshake_rate", self.max_handshake_rate),
            ("max_handshake_rate_per_ip", self.max_handshake_rate_per_ip),
        ];
        for (name, rate) in rates {
            if rate > ServerConfig::MAX_HANDSHAKE_RATE {
                return fail(format!(
                    "{name} must be at most {} a second, or 0 for no limit (it is {rate})",
                    ServerConfig::MAX_HANDSHAKE_RATE
                ));
            }
        }
        if self.read_buffer == 0 || self.read_buffer > 16 * 1024 * 1024 {
            return fail("read_buffer must be between 1 byte and 16 MiB".into());
        }
        let timeouts = [
            ("handshake_timeout", Some(self.handshake_timeout)),
            ("idle_timeout", self.idle_timeout),
            ("close_timeout", Some(self.close_timeout)),
            ("max_lifetime", self.max_lifetime),
            ("half_close_timeout", self.half_close_timeout),
            (
                "accept_proxy timeout",
                self.accept_proxy.as_ref().map(|a| a.timeout),
            ),
        ];
        for (name, timeout) in timeouts {
            match timeout {
                Some(t) if t.is_zero() => {
                    return fail(format!("{name} must be above zero (it is 0)"));
                }
                Some(t) if t > ServerConfig::MAX_TIMEOUT => {
                    return fail(format!("{name} must be at most 24h"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_limits_are_off_by_default_and_bounded() {
        let config = ServerConfig::default();
        assert_eq!(config.max_handshake_rate, 0);
        assert_eq!(config.max_handshake_rate_per_ip, 0);
        assert!(config.max_lifetime.is_none() && config.half_close_timeout.is_none());
        config.validate().unwrap();
        let refused = |change: &dyn Fn(&mut ServerConfig), why: &str| {
            let mut config = ServerConfig::default();
            change(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
        };
        refused(
            &|c| c.max_handshake_rate = 1_000_001,
            "max_handshake_rate must be at most 1000000",
        );
        refused(
            &|c| c.max_handshake_rate_per_ip = usize::MAX,
            "max_handshake_rate_per_ip must be at most",
        );
        refused(
            &|c| c.max_lifetime = Some(Duration::ZERO),
            "max_lifetime must be above zero",
        );
        refused(
            &|c| c.half_close_timeout = Some(Duration::from_secs(90_000)),
            "half_close_timeout must be at most 24h",
        );
    }
}
