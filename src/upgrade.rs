//! Binary upgrade on SIGUSR2 (nginx's model): start the binary at this process's path with
//! the same arguments, hand it the listening sockets, and wait until it says it is ready.
//!
//! The sockets go over with the `LISTEN_FDS` convention (fds 3, 4, ..., one per `--listen`
//! address, in order, each named `listen`), so the new process takes them the way it takes
//! sockets from systemd (`activation.rs`: mapped back to its `--listen` entries by the address
//! each is bound to). After them go the plaintext listeners' sockets (client mode, TCP or
//! unix), each named `tlsvisor-plain` and mapped back by its address or path, then the
//! metrics and admin listeners' sockets, named
//! `tlsvisor-metrics` and `tlsvisor-admin` (they cannot be bound twice: `listen.rs`), and,
//! named [`READY_NAME`], one end of a datagram socket pair: the new process sends `READY=1`
//! there once it accepts. Nothing is ever closed in between:
//! both processes accept from the same sockets until the old one stops, so no client in an
//! accept queue is lost.

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tlsvisor_actors::Server;

use crate::activation::{PLAIN_NAME, READY_NAME};

/// How long the new process gets to report ready before it is killed and the upgrade given up.
/// Start-up reads a few files and binds nothing (the sockets are inherited): well under a second
/// normally, so this only bounds a new binary that hangs.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `SD_LISTEN_FDS_START`: the first descriptor of the `LISTEN_FDS` convention.
const FIRST_FD: i32 = 3;

/// How often the wait looks whether the new process died.
const POLL: Duration = Duration::from_millis(20);

/// Why an upgrade was given up; the old process keeps serving in every case.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum UpgradeError {
    /// The listening sockets or the readiness pair could not be set up.
    Setup(std::io::Error),
    /// The new binary could not be started (missing, not executable, ...).
    Spawn(PathBuf, std::io::Error),
    /// The new process exited before it was ready (a broken config, a broken binary), with
    /// the reason it sent on the readiness socket (`ERROR=...`), if it sent one.
    Exited(ExitStatus, Option<String>),
    /// The new process was not ready within [`READY_TIMEOUT`]; it was killed.
    Timeout,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Setup(e) => write!(f, "cannot prepare the handover: {e}"),
            UpgradeError::Spawn(path, e) => write!(f, "cannot start {}: {e}", path.display()),
            UpgradeError::Exited(status, None) => {
                write!(f, "the new process exited before it was ready ({status})")
            }
            UpgradeError::Exited(status, Some(reason)) => write!(
                f,
                "the new process exited before it was ready ({status}): {reason}"
            ),
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
pub(crate) struct Upgrade {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Upgrade {
    /// This process's binary and arguments.
    pub(crate) fn capture() -> std::io::Result<Upgrade> {
        Ok(Upgrade {
            exe: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }

    /// Starts the new process with a descriptor of each of `server`'s listening sockets and
    /// waits until it is ready. Returns its pid; from then on both accept from the sockets,
    /// and the caller stops this one's acceptors (leaving the sockets listening) and drains.
    ///
    /// `http` are the metrics and admin sockets, by name (`activation.rs`): they go over too.
    pub(crate) async fn run(
        &self,
        server: &Server,
        http: std::io::Result<Vec<(&'static str, TcpListener)>>,
    ) -> Result<u32, UpgradeError> {
        let listeners = server.listening_sockets().map_err(UpgradeError::Setup)?;
        let plain = server
            .plain_listening_sockets()
            .map_err(UpgradeError::Setup)?;
        let http = http.map_err(UpgradeError::Setup)?;
        let (ours, theirs) = UnixDatagram::pair().map_err(UpgradeError::Setup)?;
        let mut names = vec!["listen"; listeners.len()];
        names.extend(std::iter::repeat(PLAIN_NAME).take(plain.len()));
        names.extend(http.iter().map(|(name, _)| *name));
        names.push(READY_NAME);
        let descriptors = listeners
            .into_iter()
            .map(OwnedFd::from)
            .chain(plain)
            .chain(http.into_iter().map(|(_, socket)| OwnedFd::from(socket)))
            .chain(std::iter::once(OwnedFd::from(theirs)));
        let mappings: Vec<FdMapping> = descriptors
            .zip(FIRST_FD..)
            .map(|(parent_fd, child_fd)| FdMapping {
                parent_fd,
                child_fd,
            })
            .collect();
        let count = mappings.len();
        let mut command = Command::new(&self.exe);
        command
            .args(&self.args)
            .env("LISTEN_FDS", count.to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            // The new pid is unknown until it runs: see `Inherited::from_env`.
            .env_remove("LISTEN_PID")
            // The watchdog is the new process's own once it is the main process.
            .env_remove("WATCHDOG_PID");
        command
            .fd_mappings(mappings)
            .map_err(|e| UpgradeError::Setup(std::io::Error::other(e)))?;
        let child = command
            .spawn()
            .map_err(|e| UpgradeError::Spawn(self.exe.clone(), e))?;
        // Closes this process's copies of the handed-over descriptors.
        drop(command);
        wait_ready(child, ours).await
    }
}

/// The longest reason a new process sends (`ERROR=...`), in bytes; the rest is cut.
pub(crate) const MAX_REASON: usize = 2048;

/// What the new process of an upgrade sends on the readiness socket when it cannot start: its
/// reason, on one line, at most [`MAX_REASON`] bytes. The old process logs it as one line of
/// its own: the new process does not print it (both write to the same stderr, and two
/// processes writing at once interleaved their lines byte by byte). Returns whether it was
/// sent.
pub(crate) fn send_failure(ready: &std::os::unix::net::UnixDatagram, reason: &str) -> bool {
    let mut line = format!("ERROR={}", reason.replace(['\n', '\r'], " "));
    if line.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    ready.send(line.as_bytes()).is_ok()
}

/// The reason in an `ERROR=` line of `message`, if there is one.
fn failure_in(message: &[u8]) -> Option<String> {
    message
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"ERROR="))
        .map(|reason| String::from_utf8_lossy(reason).into_owned())
}

/// Waits for `READY=1` on `ready`, for the child to exit, or for the timeout.
async fn wait_ready(mut child: Child, ready: UnixDatagram) -> Result<u32, UpgradeError> {
    ready.set_nonblocking(true).map_err(UpgradeError::Setup)?;
    let ready = tokio::net::UnixDatagram::from_std(ready).map_err(UpgradeError::Setup)?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut message = vec![0_u8; MAX_REASON + 64];
    let mut reason = None;
    loop {
        tokio::select! {
            received = ready.recv(&mut message) => {
                let n = received.map_err(UpgradeError::Setup)?;
                if message[..n].split(|b| *b == b'\n').any(|line| line == b"READY=1") {
                    return Ok(child.id());
                }
                reason = reason.or_else(|| failure_in(&message[..n]));
            }
            _ = tokio::time::sleep(POLL) => {
                if let Ok(Some(status)) = child.try_wait() {
                    // Its reason may still wait in the socket: the exit was seen first.
                    while let Ok(n) = ready.try_recv(&mut message) {
                        reason = reason.or_else(|| failure_in(&message[..n]));
                    }
                    return Err(UpgradeError::Exited(status, reason));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_goes_over_as_one_line_cut_at_the_limit() {
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert!(send_failure(
            &theirs,
            "TLS: cannot read a.crt:\nno such file"
        ));
        let mut message = vec![0_u8; MAX_REASON + 64];
        let n = ours.recv(&mut message).unwrap();
        assert_eq!(
            failure_in(&message[..n]).as_deref(),
            Some("TLS: cannot read a.crt: no such file")
        );
        assert!(send_failure(&theirs, &"é".repeat(MAX_REASON)));
        let n = ours.recv(&mut message).unwrap();
        assert!(n <= MAX_REASON);
        assert!(failure_in(&message[..n]).unwrap().ends_with('é'));
        assert_eq!(failure_in(b"READY=1"), None);
    }
}
