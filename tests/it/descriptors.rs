//! The open-files limit and `--max-connections` (issue 19, item 1): the start-up line says how
//! many connections the limit holds (one descriptor per echo connection, two per proxied one,
//! 100 reserved); the default `--max-connections` is what it holds, at most 10,000; an explicit
//! value it cannot hold is refused by `serve` and by `check` alike. Each process runs under a
//! real lowered `RLIMIT_NOFILE` (set between fork and exec).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Limits, Tlsvisor, HANG};

/// The hard limit the processes here run under: 1,000 descriptors hold 900 echo or 450
/// proxied connections.
const NOFILE: u64 = 1_000;

fn under_nofile() -> Limits {
    Limits {
        nofile: Some(NOFILE),
        ..Limits::default()
    }
}

/// The start-up line's `field`, as a number.
fn started_with(server: &Tlsvisor, field: &str) -> u64 {
    let lines = server.logs_with("open files limit");
    assert_eq!(lines.len(), 1, "one start-up line: {:?}", server.logs());
    lines[0][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {}", lines[0]))
}

/// `tlsvisor ARGS` under `NOFILE`, which must exit (not serve) within `HANG`: its status and
/// stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tlsvisor"));
    common::under_limits(&mut command, &under_nofile());
    let mut child = command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tlsvisor");
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tlsvisor {args:?} ran on instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[test]
fn the_start_up_line_says_what_the_limit_holds_and_the_default_follows_it() {
    // A proxy: two descriptors a connection. The upstream is never connected to here.
    let proxy = Tlsvisor::serve_with(
        &["--protocol", "proxy", "--upstream", "127.0.0.1:9"],
        &under_nofile(),
    );
    assert_eq!(started_with(&proxy, "nofile"), NOFILE);
    assert_eq!(started_with(&proxy, "descriptors_per_connection"), 2);
    assert_eq!(started_with(&proxy, "descriptors_reserved"), 100);
    assert_eq!(started_with(&proxy, "connections_allowed"), 450);
    assert_eq!(started_with(&proxy, "max_connections"), 450);
    // And that is the limit the server runs with.
    let listening = proxy.logs_with("listening");
    assert_eq!(listening[0]["max_connections"], 450, "{listening:?}");
    drop(proxy);

    // Echo: one descriptor a connection; an explicit value within the limit is kept.
    let echo = Tlsvisor::serve_with(&["--max-connections", "900"], &under_nofile());
    assert_eq!(started_with(&echo, "descriptors_per_connection"), 1);
    assert_eq!(started_with(&echo, "connections_allowed"), 900);
    assert_eq!(started_with(&echo, "max_connections"), 900);
    drop(echo);

    // Under the machine's own limit, the default is capped at 10,000.
    common::raise_open_files_limit();
    let roomy = Tlsvisor::serve(&[]);
    let allowed = started_with(&roomy, "connections_allowed");
    assert_eq!(started_with(&roomy, "max_connections"), allowed.min(10_000));
}

#[test]
fn serve_and_check_refuse_a_max_connections_the_limit_cannot_hold() {
    let proxy = [
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--protocol",
        "proxy",
        "--upstream",
        "127.0.0.1:9",
        "--max-connections",
        "451",
    ];
    let why = "--max-connections 451 needs 1002 open files (2 per connection + 100 reserved) but \
               the open files limit is 1000: it allows at most 450 connections";
    for command in ["serve", "check"] {
        let args: Vec<&str> = std::iter::once(command).chain(proxy).collect();
        let (code, stderr) = refused(&args);
        assert_ne!(code, Some(0), "{command} refuses: {stderr}");
        assert!(stderr.contains(why), "{command}: {stderr}");
        assert!(
            stderr.contains("raise the hard limit"),
            "{command}: {stderr}"
        );
    }
    // Echo holds twice as many: 901 is one too many.
    let (code, stderr) = refused(&["check", "--max-connections", "901"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--max-connections 901 needs 1001 open files (1 per connection"),
        "{stderr}"
    );
}
