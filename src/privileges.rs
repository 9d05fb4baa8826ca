//! `--user` / `--group`: dropping root after the listening sockets are bound and the key files
//! are read, so port 443 can be bound while the process serves as an unprivileged user.

use std::ffi::CString;
use std::mem::MaybeUninit;

use slog::{info, Logger};

use crate::error::BoxError;

/// A user's ids, as the password database gives them.
struct Ids {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// Switches the whole process (every thread: glibc applies set*id to all of them) to `user`,
/// with `group` or else the user's primary group, and no supplementary groups. Checks that
/// root cannot be regained.
pub fn drop_to(user: Option<&str>, group: Option<&str>, log: &Logger) -> Result<(), BoxError> {
    let Some(user) = user else {
        return Err("--group needs --user".into());
    };
    let ids = user_ids(user)?;
    let gid = match group {
        Some(group) => group_id(group)?,
        None => ids.gid,
    };
    // SAFETY: plain system calls on integers and a one-element array that lives across the
    // call; glibc broadcasts them to every thread of the process.
    let dropped = unsafe {
        libc::setgroups(1, &gid) == 0 && libc::setgid(gid) == 0 && libc::setuid(ids.uid) == 0
    };
    if !dropped {
        return Err(format!(
            "--user {user}: cannot switch to uid {} gid {gid}: {}",
            ids.uid,
            std::io::Error::last_os_error()
        )
        .into());
    }
    // SAFETY: as above. Succeeding here would mean the switch did not take.
    if ids.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(format!("--user {user}: root could be regained after the switch").into());
    }
    info!(log, "privileges dropped"; "user" => user, "uid" => ids.uid, "gid" => gid);
    Ok(())
}

/// Checks that `user` and `group` exist (what `tlsvisor check` asks), without switching.
pub fn check(user: Option<&str>, group: Option<&str>) -> Result<(), BoxError> {
    match user {
        Some(user) => user_ids(user)?,
        None if group.is_some() => return Err("--group needs --user".into()),
        None => return Ok(()),
    };
    if let Some(group) = group {
        group_id(group)?;
    }
    Ok(())
}

fn user_ids(user: &str) -> Result<Ids, BoxError> {
    // SAFETY: getpwnam_r's contract is `lookup`'s `get`.
    let entry = lookup(user, "--user", |name, entry, buf, len, found| unsafe {
        libc::getpwnam_r(name, entry, buf, len, found)
    })?;
    Ok(Ids {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

fn group_id(group: &str) -> Result<libc::gid_t, BoxError> {
    // SAFETY: getgrnam_r's contract is `lookup`'s `get`.
    let entry = lookup(group, "--group", |name, entry, buf, len, found| unsafe {
        libc::getgrnam_r(name, entry, buf, len, found)
    })?;
    Ok(entry.gr_gid)
}

/// Looks `name` up with a reentrant getter of the password or group database, which fills
/// the entry, keeps its strings in the buffer, and sets `found` to the entry or to null. Only
/// the entry's ids may be read from the result: its pointers point into a buffer that is gone.
fn lookup<T>(
    name: &str,
    flag: &str,
    get: impl FnOnce(*const libc::c_char, *mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int,
) -> Result<T, BoxError> {
    let c_name = CString::new(name).map_err(|_| format!("{flag} {name:?}: not a name"))?;
    let mut entry = MaybeUninit::<T>::uninit();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut T = std::ptr::null_mut();
    let rc = get(
        c_name.as_ptr(),
        entry.as_mut_ptr(),
        buffer.as_mut_ptr(),
        buffer.len(),
        &mut found,
    );
    if rc != 0 || found.is_null() {
        return Err(format!("{flag} {name}: no such {}", &flag[2..]).into());
    }
    // SAFETY: the getter succeeded and pointed `found` at `entry`, which it filled.
    Ok(unsafe { entry.assume_init() })
}
