//! `PlainAddr`: where a plaintext listener (client mode) listens, as `--listen-plain` and the
//! `listen-plain` keys write it: `HOST:PORT` (TCP) or `unix:/absolute/path`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// A plaintext listener's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PlainAddr {
    Tcp(SocketAddr),
    /// A unix socket's path (absolute: a relative one would follow the working directory,
    /// which a service manager or an upgrade may change).
    Unix(PathBuf),
}

impl FromStr for PlainAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{text}: a unix socket's path must be absolute (unix:/run/app.sock)"
                ));
            }
            return Ok(PlainAddr::Unix(path));
        }
        text.parse().map(PlainAddr::Tcp).map_err(|_| {
            format!("{text}: not an address (IP:PORT, [IPv6]:PORT, or unix:/absolute/path)")
        })
    }
}

impl fmt::Display for PlainAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlainAddr::Tcp(addr) => write!(f, "{addr}"),
            PlainAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_absolute_unix_paths_read_and_a_relative_path_is_refused() {
        assert_eq!(
            "127.0.0.1:6380".parse::<PlainAddr>(),
            Ok(PlainAddr::Tcp("127.0.0.1:6380".parse().unwrap()))
        );
        let unix: PlainAddr = "unix:/run/redis-tls.sock".parse().unwrap();
        assert_eq!(unix, PlainAddr::Unix("/run/redis-tls.sock".into()));
        assert_eq!(unix.to_string(), "unix:/run/redis-tls.sock");
        assert!("unix:redis.sock"
            .parse::<PlainAddr>()
            .unwrap_err()
            .contains("absolute"));
        assert!("localhost".parse::<PlainAddr>().is_err());
    }
}
