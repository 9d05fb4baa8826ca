//! The spare descriptor: how an acceptor sheds clients when the process is out of descriptors.
//!
//! When `accept` fails with `EMFILE`, the connection that woke the acceptor stays in the
//! kernel's backlog, and so does every one behind it: the clients hang until they time out.
//! Keeping one descriptor in reserve lets the acceptor close it, accept the waiting clients and
//! close each at once (they see a prompt close and can retry elsewhere), then take the reserve
//! back: the technique of libuv and haproxy. The reserve is per process, since the limit is.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The reserve; `None` while in use, or while reopening it fails.
static SPARE: Mutex<Option<File>> = Mutex::new(None);

/// Whether `SPARE` holds a descriptor, read without the lock on every accept.
static HELD: AtomicBool = AtomicBool::new(false);

/// Most clients shed per episode, so one acceptor never spends long away from its worker.
const SHED_BATCH: usize = 64;

fn lock() -> std::sync::MutexGuard<'static, Option<File>> {
    // Holds an Option<File>: always valid, even after a panic elsewhere.
    SPARE.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_spare() -> io::Result<File> {
    File::open("/dev/null")
}

/// Takes the reserve if the process does not hold it yet.
pub(crate) fn reserve() -> io::Result<()> {
    let mut spare = lock();
    if spare.is_none() {
        *spare = Some(open_spare()?);
        HELD.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Takes the reserve back if it was lost, before a new client can take the descriptor: while
/// descriptors are short, another thread can take the one a shedding freed, and without the
/// reserve the next `EMFILE` could shed no one. Costs one atomic load when it is held.
pub(crate) fn retake_if_lost() {
    if !HELD.load(Ordering::Relaxed) {
        let _ = reserve();
    }
}

/// Gives the reserve up, accepts and closes the clients waiting on a listener (up to a batch:
/// `accept_now` accepts one without waiting and drops it, `None` once none waits),
/// and takes the reserve back; how many were shed. Without a reserve (reopening it failed
/// last time) it still tries: a descriptor may have been freed since.
pub(crate) fn shed_waiting_clients(mut accept_now: impl FnMut() -> Option<io::Result<()>>) -> u64 {
    let mut spare = lock();
    // Marked lost for the whole shedding: another thread about to take a descriptor first
    // waits on the lock for the reserve to be back, instead of taking the one freed here.
    HELD.store(false, Ordering::Relaxed);
    drop(spare.take());
    let mut shed = 0;
    while shed < SHED_BATCH as u64 {
        // One accept without waiting: `None` once the backlog is empty (tokio then clears the
        // listener's readiness, so the acceptor waits for the next client, not this one). The
        // socket accepted is dropped at once: the client sees the connection closed.
        match accept_now() {
            Some(Ok(())) => shed += 1,
            Some(Err(_)) | None => break,
        }
    }
    *spare = open_spare().ok();
    HELD.store(spare.is_some(), Ordering::Relaxed);
    shed
}
