//! `--user` / `--group`: dropping root after the listening sockets are bound and the key files
//! are read, so port 443 can be bound while the process serves as an unprivileged user.
//!
//! The password and group databases are read through `nix` (`getpwnam_r`/`getgrnam_r` with a
//! buffer that grows while the entry does not fit: a group with many members can exceed any
//! fixed size, and `ERANGE` must not read as "no such group").

use nix::errno::Errno;
use nix::unistd::{setgid, setgroups, setuid, Gid, Group, Uid, User};
use slog::{info, Logger};

use crate::error::BoxError;

/// Switches the whole process (every thread: glibc applies set*id to all of them) to `user`,
/// with `group` or else the user's primary group, and no supplementary groups. Checks that
/// root cannot be regained.
pub(crate) fn drop_to(
    user: Option<&str>,
    group: Option<&str>,
    log: &Logger,
) -> Result<(), BoxError> {
    let Some(user) = user else {
        return Err("--group needs --user".into());
    };
    let (uid, primary) = user_ids(user)?;
    let gid = match group {
        Some(group) => group_id(group)?,
        None => primary,
    };
    let switched = setgroups(&[gid])
        .and_then(|()| setgid(gid))
        .and_then(|()| setuid(uid));
    if let Err(e) = switched {
        return Err(format!("--user {user}: cannot switch to uid {uid} gid {gid}: {e}").into());
    }
    // Succeeding here would mean the switch did not take.
    if !uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
        return Err(format!("--user {user}: root could be regained after the switch").into());
    }
    info!(log, "privileges dropped"; "user" => user, "uid" => uid.as_raw(), "gid" => gid.as_raw());
    Ok(())
}

/// Checks that `user` and `group` exist (what `tlsvisor check` asks), without switching.
pub(crate) fn check(user: Option<&str>, group: Option<&str>) -> Result<(), BoxError> {
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

/// The uid and primary gid of `user`.
fn user_ids(user: &str) -> Result<(Uid, Gid), BoxError> {
    let found = looked_up(user, "--user", User::from_name(named(user, "--user")?))?;
    Ok((found.uid, found.gid))
}

fn group_id(group: &str) -> Result<Gid, BoxError> {
    let found = looked_up(group, "--group", Group::from_name(named(group, "--group")?))?;
    Ok(found.gid)
}

/// `name`, if it can be one (nix reads a name with a NUL byte as not found).
fn named<'a>(name: &'a str, flag: &str) -> Result<&'a str, BoxError> {
    match name.contains('\0') {
        true => Err(format!("{flag} {name:?}: not a name").into()),
        false => Ok(name),
    }
}

/// The entry a lookup found, or the error that names the flag: "no such user" when the
/// database has no such entry, the lookup's own error otherwise.
fn looked_up<T>(name: &str, flag: &str, found: nix::Result<Option<T>>) -> Result<T, BoxError> {
    let what = &flag[2..];
    match found {
        Ok(Some(entry)) => Ok(entry),
        // getpwnam_r(3): "not found" is a null result, or one of these errors on some systems.
        Ok(None) | Err(Errno::ENOENT | Errno::ESRCH | Errno::EBADF | Errno::EPERM) => {
            Err(format!("{flag} {name}: no such {what}").into())
        }
        Err(e) => Err(format!("{flag} {name}: cannot look the {what} up: {e}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_and_a_missing_user_or_group_is_named_as_missing() {
        let (uid, gid) = user_ids("root").unwrap();
        assert!(uid.is_root());
        assert_eq!(gid.as_raw(), 0);
        assert_eq!(group_id("root").unwrap().as_raw(), 0);
        let missing = user_ids("no-such-user-here").unwrap_err().to_string();
        assert_eq!(missing, "--user no-such-user-here: no such user");
        let missing = group_id("no-such-group-here").unwrap_err().to_string();
        assert_eq!(missing, "--group no-such-group-here: no such group");
        assert!(check(Some("root"), Some("root")).is_ok());
        assert!(check(None, Some("root")).is_err(), "--group needs --user");
        let nul = user_ids("ro\0ot").unwrap_err().to_string();
        assert!(nul.contains("not a name"), "{nul}");
    }

    #[test]
    fn a_lookup_error_other_than_not_found_is_not_reported_as_missing() {
        let error = looked_up::<User>("big", "--group", Err(Errno::ERANGE))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot look the group up"), "{error}");
        assert!(!error.contains("no such"), "{error}");
    }
}
