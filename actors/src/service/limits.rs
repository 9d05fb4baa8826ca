//! `ServiceLimits`: the limits a service may set for itself, over the server's. Only those that
//! apply once the ClientHello has named the service can be a service's: a cap on its live
//! connections, and the timeouts of an open connection (idle, lifetime, half-close). What acts
//! before the service is known (the accept-level caps, the handshake limits, the per-IP and
//! rate limits) stays the server's alone: there is no service yet to ask.

use std::time::Duration;

use crate::supervision::config::ServerConfig;

/// One of a service's timeouts: the server's, none at all, or its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceTimeout {
    /// The server's ([`ServerConfig`]'s), whatever it is (the default).
    #[default]
    Server,
    /// None for this service, even where the server has one (a service of long sessions).
    Off,
    /// This long (above zero, at most 24 h).
    After(Duration),
}

impl ServiceTimeout {
    /// The timeout in force, `server` being the server's.
    pub(crate) fn over(self, server: Option<Duration>) -> Option<Duration> {
        match self {
            ServiceTimeout::Server => server,
            ServiceTimeout::Off => None,
            ServiceTimeout::After(own) => Some(own),
        }
    }
}

/// The limits of one service. Each left at its default is the server's; the server-wide
/// limits apply to the service's connections as well (a connection a service admits still
/// counts toward `ServerConfig::max_connections`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceLimits {
    /// Live connections of this service at which a new client of it is refused (a fatal
    /// `internal_error` alert, disposed as `service_limit`); `None`: no cap of its own.
    pub max_connections: Option<usize>,
    /// No byte in either direction for this long closes the connection (`idle_timeout`);
    /// it also bounds a stalled write, as the server's does.
    pub idle_timeout: ServiceTimeout,
    /// Closed gracefully this long after it was accepted, spread by ±10 % (`max_lifetime`).
    pub max_lifetime: ServiceTimeout,
    /// Proxy and passthrough: once one side has finished, the time the other gets
    /// (`half_close_timeout`).
    pub half_close_timeout: ServiceTimeout,
}

impl ServiceLimits {
    /// Checks the bounds: a cap of at least 1 and below 2^61 (the server's own bound), each
    /// timeout of its own above zero (`Off` says "none") and at most 24 h. The error names the
    /// field.
    pub fn check(&self) -> Result<(), String> {
        match self.max_connections {
            Some(0) => return Err("max_connections must be at least 1 (it is 0)".into()),
            Some(n) if n > tokio::sync::Semaphore::MAX_PERMITS => {
                return Err(format!("max_connections must be below 2^61 (it is {n})"))
            }
            _ => {}
        }
        let timeouts = [
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("half_close_timeout", self.half_close_timeout),
        ];
        for (name, timeout) in timeouts {
            match timeout {
                ServiceTimeout::After(t) if t.is_zero() => {
                    return Err(format!("{name} must be above zero (or off)"))
                }
                ServiceTimeout::After(t) if t > ServerConfig::MAX_TIMEOUT => {
                    return Err(format!("{name} must be at most 24h"))
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
    fn a_timeout_left_to_the_server_is_the_servers() {
        let server = Some(Duration::from_secs(300));
        let own = Duration::from_secs(2);
        assert_eq!(ServiceTimeout::Server.over(server), server);
        assert_eq!(ServiceTimeout::Server.over(None), None);
        assert_eq!(ServiceTimeout::Off.over(server), None);
        assert_eq!(ServiceTimeout::After(own).over(None), Some(own));
    }

    #[test]
    fn bounds_are_checked_and_named() {
        ServiceLimits::default().check().unwrap();
        let refused = |limits: ServiceLimits, field: &str| {
            let error = limits.check().unwrap_err();
            assert!(error.contains(field), "{error}");
        };
        let with = |change: fn(&mut ServiceLimits)| {
            let mut limits = ServiceLimits::default();
            change(&mut limits);
            limits
        };
        refused(with(|l| l.max_connections = Some(0)), "max_connections");
        refused(
            with(|l| l.max_connections = Some(usize::MAX)),
            "max_connections",
        );
        let zero = ServiceTimeout::After(Duration::ZERO);
        refused(
            ServiceLimits {
                idle_timeout: zero,
                ..ServiceLimits::default()
            },
            "idle_timeout",
        );
        let day_and_more = ServiceTimeout::After(Duration::from_secs(25 * 3600));
        refused(
            ServiceLimits {
                max_lifetime: day_and_more,
                ..ServiceLimits::default()
            },
            "max_lifetime",
        );
        let limits = ServiceLimits {
            half_close_timeout: ServiceTimeout::Off,
            max_connections: Some(2),
            ..ServiceLimits::default()
        };
        limits.check().unwrap();
    }
}
