//! How many connections the open-files limit lets this process hold, and the
//! `--max-connections` that follows from it.
//!
//! Every connection is a descriptor, and a proxied one two (its client and its upstream). A
//! server that accepts more connections than it has descriptors for runs out in the middle of
//! accepting, and then sheds new clients as `fd_exhausted` instead of pausing its accept queue
//! at `--max-connections` (where the kernel's backlog holds them until a connection closes).
//! So the limit decides the ceiling: the default `--max-connections` is what the limit allows,
//! capped at [`ServerConfig::DEFAULT_MAX_CONNECTIONS`], and an explicit value the limit cannot
//! honour is refused (by `check` and by `serve`), with the figures to fix it.
//!
//! The limit is the *hard* `RLIMIT_NOFILE`: `serve` raises its soft limit to it before it
//! binds anything (`serve::raise_fd_limit`), so that is the limit it serves under.

use tlsvisor_actors::ServerConfig;

use crate::cli::ProtocolKind;

/// Descriptors the process holds besides its connections: stdio, each worker's epoll and
/// eventfd, the listeners (one per worker with `--reuse-port`), the metrics and admin
/// listeners and their few clients, the upstream pool's health checks, log files, the notify
/// socket, with room to spare. About what the issue that introduced this measured: a
/// one-process ceiling of 19,900 echo or 9,950 proxied connections under a 20,000 limit.
pub(crate) const RESERVED: u64 = 100;

/// What the open-files limit allows for one protocol.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// The hard open-files limit (`u64::MAX` when unlimited or unreadable).
    pub nofile: u64,
    /// Descriptors per live connection: 1 for `echo`, 2 for `proxy`.
    pub per_connection: u64,
}

impl Budget {
    /// The budget under this process's hard open-files limit.
    pub(crate) fn current(protocol: ProtocolKind) -> Budget {
        use nix::sys::resource::{getrlimit, Resource};
        let nofile = getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(_, hard)| hard);
        Budget::under(nofile, protocol)
    }

    /// The budget under `nofile` descriptors.
    pub(crate) fn under(nofile: u64, protocol: ProtocolKind) -> Budget {
        let per_connection = match protocol {
            ProtocolKind::Proxy | ProtocolKind::Passthrough => 2,
            ProtocolKind::Echo => 1,
        };
        Budget {
            nofile,
            per_connection,
        }
    }

    /// Connections the limit holds once [`RESERVED`] descriptors are set aside.
    pub(crate) fn allowed(&self) -> usize {
        let connections = self.nofile.saturating_sub(RESERVED) / self.per_connection;
        usize::try_from(connections).unwrap_or(usize::MAX)
    }

    /// The `--max-connections` to serve with: `given` if the limit holds it, else the reason
    /// it is refused; when not given, what the limit allows, capped at the library's default
    /// (refused only when the limit leaves no descriptor for a connection at all).
    pub(crate) fn max_connections(&self, given: Option<usize>) -> Result<usize, String> {
        let allowed = self.allowed();
        match given {
            Some(n) if n <= allowed => Ok(n),
            Some(n) => Err(format!(
                "--max-connections {n} needs {needed} open files ({per} per connection + \
                 {RESERVED} reserved) but the open files limit is {nofile}: it allows at most \
                 {allowed} connections; raise the hard limit (LimitNOFILE= in a systemd unit, \
                 ulimit -Hn) or lower --max-connections",
                needed = u64::try_from(n)
                    .unwrap_or(u64::MAX)
                    .saturating_mul(self.per_connection)
                    .saturating_add(RESERVED),
                per = self.per_connection,
                nofile = self.nofile,
            )),
            None if allowed == 0 => Err(format!(
                "the open files limit ({nofile}) leaves no descriptor for a connection \
                 ({RESERVED} are reserved for listeners, workers and logs); raise the hard \
                 limit (LimitNOFILE= in a systemd unit, ulimit -Hn)",
                nofile = self.nofile,
            )),
            None => Ok(allowed.min(ServerConfig::DEFAULT_MAX_CONNECTIONS)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_what_the_limit_allows_capped_and_an_explicit_excess_is_refused() {
        let proxy = Budget::under(20_000, ProtocolKind::Proxy);
        assert_eq!(proxy.allowed(), 9_950);
        assert_eq!(proxy.max_connections(None), Ok(9_950));
        assert_eq!(proxy.max_connections(Some(9_950)), Ok(9_950));
        let refused = proxy.max_connections(Some(10_000)).unwrap_err();
        assert!(refused.contains("needs 20100 open files"), "{refused}");
        assert!(refused.contains("at most 9950 connections"), "{refused}");

        let echo = Budget::under(20_000, ProtocolKind::Echo);
        assert_eq!(echo.allowed(), 19_900);
        assert_eq!(echo.max_connections(None), Ok(10_000));
        assert_eq!(echo.max_connections(Some(19_900)), Ok(19_900));

        let starved = Budget::under(50, ProtocolKind::Echo);
        assert!(starved.max_connections(None).is_err());
        let unlimited = Budget::under(u64::MAX, ProtocolKind::Proxy);
        assert_eq!(unlimited.max_connections(Some(1_000_000)), Ok(1_000_000));
        assert_eq!(unlimited.max_connections(None), Ok(10_000));
    }
}
