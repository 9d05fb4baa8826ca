//! `--user` / `--group`: started as root, the process binds, reads its keys, then serves as
//! the given user.

use crate::common::{Tlsvisor, HANG};
use tlsvisor_actors::testing::eventually;

/// The ids of a `/proc/PID/status` line (`Uid:` or `Gid:`): real, effective, saved, fs.
fn ids(pid: u32, line: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(line))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|id| id.parse().unwrap())
        .collect()
}

#[test]
fn as_root_with_user_nobody_it_serves_as_nobody() {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let mut server = Tlsvisor::serve(&["--user", "nobody", "--group", "nogroup"]);
    assert!(eventually(HANG, || !server
        .logs_with("privileges dropped")
        .is_empty()));
    let nobody = server.logs_with("privileges dropped")[0]["uid"]
        .as_u64()
        .unwrap() as u32;
    assert_ne!(nobody, 0);
    // Every thread, not just the one that switched: the process's main thread is one.
    assert_eq!(ids(server.pid(), "Uid:"), vec![nobody; 4]);
    for task in std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap() {
        let task = task.unwrap().file_name().into_string().unwrap();
        let status =
            std::fs::read_to_string(format!("/proc/{}/task/{task}/status", server.pid())).unwrap();
        assert!(
            status.contains(&format!("Uid:\t{nobody}\t{nobody}\t{nobody}\t{nobody}")),
            "thread {task} still privileged"
        );
    }
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"as nobody").unwrap(), b"as nobody");
    server.scrape();
    drop(client);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(HANG).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_unknown_user_is_a_start_up_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--user",
            "no-such-user-here",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no such user"));
}
