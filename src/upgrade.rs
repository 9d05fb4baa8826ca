//! Binary upgrade on SIGUSR2 (nginx's model): start the binary at this process's path with
//! the same arguments, hand it the listening socket, and wait until it says it is ready.
//!
//! The socket goes over with the `LISTEN_FDS` convention (fd 3, named `listen`), so the new
//! process takes it the way it takes a socket from systemd (`activation.rs`). Beside it, at
//! fd 4 named [`READY_NAME`], goes one end of a datagram socket pair: the new process sends
//! `READY=1` there once it accepts. Nothing is ever closed in between: both processes accept
//! from the one socket until the old one stops, so no client in the accept queue is lost.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tlsvisor_actors::Server;

use crate::activation::READY_NAME;

/// How long the new process gets to report ready before it is killed and the upgrade given up.
/// Start-up reads a few files and binds nothing (the socket is inherited): well under a second
/// normally, so this only bounds a new binary that hangs.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the wait looks whether the new process died.
const POLL: Duration = Duration::from_millis(20);

/// Why an upgrade was given up; the old process keeps serving in every case.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The listening socket or the readiness pair could not be set up.
    Setup(std::io::Error),
    /// The new binary could not be started (missing, not executable, ...).
    Spawn(PathBuf, std::io::Error),
    /// The new process exited before it was ready (a broken config, a broken binary).
    Exited(ExitStatus),
    /// The new process was not ready within [`READY_TIMEOUT`]; it was killed.
    Timeout,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Setup(e) => write!(f, "cannot prepare the handover: {e}"),
            UpgradeError::Spawn(path, e) => write!(f, "cannot start {}: {e}", path.display()),
            UpgradeError::Exited(status) => {
                write!(f, "the new process exited before it was ready ({status})")
            }
            UpgradeError::Timeout => write!(
                f,
                "the new process was not ready within {}s; killed it",
                READY_TIMEOUT.as_secs()
            ),
        }
    }
}

impl std::error::Error for UpgradeError {}

/// The binary and arguments to start again, captured at start-up: by the time of SIGUSR2 the
/// file at the path is typically the new binary (installed over the old one).
pub struct Upgrade {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Upgrade {
    /// This process's binary and arguments.
    pub fn capture() -> std::io::Result<Upgrade> {
        Ok(Upgrade {
            exe: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }

    /// Starts the new process with a descriptor of `server`'s listening socket and waits until
    /// it is ready. Returns its pid; from then on both accept from the socket, and the caller
    /// stops this one's acceptors (leaving the socket listening) and drains.
    pub async fn run(&self, server: &Server) -> Result<u32, UpgradeError> {
        let listener = server.listening_socket().map_err(UpgradeError::Setup)?;
        let (ours, theirs) = UnixDatagram::pair().map_err(UpgradeError::Setup)?;
        let mut command = Command::new(&self.exe);
        command
            .args(&self.args)
            .env("LISTEN_FDS", "2")
            .env("LISTEN_FDNAMES", format!("listen:{READY_NAME}"))
            // The new pid is unknown until it runs: see `Inherited::from_env`.
            .env_remove("LISTEN_PID")
            // The watchdog is the new process's own once it is the main process.
            .env_remove("WATCHDOG_PID");
        command
            .fd_mappings(vec![
                FdMapping {
                    parent_fd: OwnedFd::from(listener),
                    child_fd: 3,
                },
                FdMapping {
                    parent_fd: OwnedFd::from(theirs),
                    child_fd: 4,
                },
            ])
            .map_err(|e| UpgradeError::Setup(std::io::Error::other(e)))?;
        let child = command
            .spawn()
            .map_err(|e| UpgradeError::Spawn(self.exe.clone(), e))?;
        // Closes this process's copies of the handed-over descriptors.
        drop(command);
        wait_ready(child, ours).await
    }
}

/// Waits for `READY=1` on `ready`, for the child to exit, or for the timeout.
async fn wait_ready(mut child: Child, ready: UnixDatagram) -> Result<u32, UpgradeError> {
    ready.set_nonblocking(true).map_err(UpgradeError::Setup)?;
    let ready = tokio::net::UnixDatagram::from_std(ready).map_err(UpgradeError::Setup)?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut message = [0_u8; 256];
    loop {
        tokio::select! {
            received = ready.recv(&mut message) => {
                let n = received.map_err(UpgradeError::Setup)?;
                if message[..n].split(|b| *b == b'\n').any(|line| line == b"READY=1") {
                    return Ok(child.id());
                }
            }
            _ = tokio::time::sleep(POLL) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(UpgradeError::Exited(status));
                }
                if tokio::time::Instant::now() >= deadline {
                    // Killing and reaping a child that is ours cannot fail in a way that
                    // matters here: it is gone either way.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(UpgradeError::Timeout);
                }
            }
        }
    }
}
