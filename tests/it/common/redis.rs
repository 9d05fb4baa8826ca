//! A real `redis-server` as the proxy's upstream: on a loopback port or a unix socket, without
//! persistence, killed (SIGKILL) and started again on the same address by the tests that need
//! an upstream to die.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tlsvisor_actors::testing::eventually;

use super::{free_addr, HANG};

/// Where a redis listens.
#[derive(Clone, Debug)]
pub(crate) enum RedisAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A running `redis-server`; killed when dropped.
pub(crate) struct Redis {
    child: Option<Child>,
    pub at: RedisAddr,
}

impl Redis {
    /// On a free loopback port.
    pub(crate) fn start() -> Redis {
        Redis::start_at(RedisAddr::Tcp(free_addr()))
    }

    /// On the unix socket `path` only (`--port 0`: no TCP at all).
    pub(crate) fn start_unix(path: &Path) -> Redis {
        Redis::start_at(RedisAddr::Unix(path.to_path_buf()))
    }

    /// At `at`, waiting until it answers.
    pub(crate) fn start_at(at: RedisAddr) -> Redis {
        let mut command = Command::new("redis-server");
        match &at {
            RedisAddr::Tcp(addr) => {
                command.args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            }
            RedisAddr::Unix(path) => command
                .args(["--port", "0", "--unixsocket", path.to_str().unwrap()])
                .args(["--unixsocketperm", "700"]),
        };
        let child = command
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let redis = Redis {
            child: Some(child),
            at,
        };
        assert!(
            eventually(HANG, || redis.try_connected_clients().is_some()),
            "redis-server did not answer at {:?}",
            redis.at
        );
        redis
    }

    /// As `--upstream` names it: `HOST:PORT` or `unix:/path`.
    pub(crate) fn upstream(&self) -> String {
        match &self.at {
            RedisAddr::Tcp(addr) => addr.to_string(),
            RedisAddr::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    /// The TCP address (panics for a unix-socket redis).
    pub(crate) fn addr(&self) -> SocketAddr {
        match &self.at {
            RedisAddr::Tcp(addr) => *addr,
            RedisAddr::Unix(path) => panic!("redis on {} has no TCP address", path.display()),
        }
    }

    /// SIGKILL, and waits for it to be gone: its clients see resets, its port refuses.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `connected_clients` as redis reports it (this query's own connection included).
    pub(crate) fn connected_clients(&self) -> u64 {
        self.try_connected_clients()
            .expect("redis answers INFO clients")
    }

    fn try_connected_clients(&self) -> Option<u64> {
        let mut cli = Command::new("redis-cli");
        match &self.at {
            RedisAddr::Tcp(addr) => cli.args(["-h", "127.0.0.1", "-p", &addr.port().to_string()]),
            RedisAddr::Unix(path) => cli.args(["-s", path.to_str().unwrap()]),
        };
        let out = cli
            .args(["INFO", "clients"])
            .stderr(Stdio::null())
            .output()
            .expect("redis-cli is installed (apt-get install redis-tools)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
