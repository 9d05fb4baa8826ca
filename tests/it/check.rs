//! `tlsvisor check`: exit 0 for a configuration `serve` can run, 1 with a line per problem.

use std::path::Path;
use std::process::{Command, Output};

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .arg("check")
        .args(args)
        .output()
        .expect("run tlsvisor check")
}

fn gen_certs(into: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args(["gen-certs", "--out", into.to_str().unwrap()])
        .output()
        .unwrap()
        .status;
    assert!(status.success());
}

#[test]
fn check_accepts_a_good_configuration_and_names_each_problem() {
    let dir = std::env::temp_dir().join(format!("tlsvisor-check-{}", std::process::id()));
    let (a, b) = (dir.join("a"), dir.join("b"));
    gen_certs(&a);
    gen_certs(&b);
    let path = |p: &Path, name: &str| p.join(name).to_str().unwrap().to_string();

    let good = check(&[
        "--cert",
        &path(&a, "server.crt"),
        "--key",
        &path(&a, "server.key"),
    ]);
    assert!(good.status.success(), "{good:?}");
    assert!(String::from_utf8_lossy(&good.stdout).contains("configuration OK"));

    // A key that does not belong to its certificate.
    let mismatched = check(&[
        "--cert",
        &path(&a, "server.crt"),
        "--key",
        &path(&b, "server.key"),
    ]);
    assert_eq!(mismatched.status.code(), Some(1), "{mismatched:?}");
    let stderr = String::from_utf8_lossy(&mismatched.stderr);
    assert!(stderr.contains("b/server.key"), "{stderr}");

    // A file that cannot be read (a directory: as root, permissions would not stop a read),
    // and an admin token file that does not exist: one line each.
    let unreadable = check(&[
        "--cert",
        &path(&a, "server.crt"),
        "--key",
        a.to_str().unwrap(),
        "--admin-token-file",
        &path(&a, "no-such-token"),
    ]);
    assert_eq!(unreadable.status.code(), Some(1), "{unreadable:?}");
    let stderr = String::from_utf8_lossy(&unreadable.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tlsvisor check:"))
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].contains(a.to_str().unwrap()), "{stderr}");
    assert!(lines[1].contains("no-such-token"), "{stderr}");

    // A user who does not exist.
    let user = check(&["--user", "no-such-user-here"]);
    assert_eq!(user.status.code(), Some(1), "{user:?}");
    assert!(String::from_utf8_lossy(&user.stderr).contains("no such user"));

    // An upstream that does not resolve.
    let upstream = check(&[
        "--protocol",
        "proxy",
        "--upstream",
        "no-such-host.invalid:6379",
    ]);
    assert_eq!(upstream.status.code(), Some(1), "{upstream:?}");
    assert!(String::from_utf8_lossy(&upstream.stderr).contains("no-such-host.invalid"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_refuses_the_development_certificate_beyond_loopback_as_serve_does() {
    let beyond = check(&["--listen", "0.0.0.0:8443"]);
    assert_eq!(beyond.status.code(), Some(1), "{beyond:?}");
    let stderr = String::from_utf8_lossy(&beyond.stderr);
    assert!(
        stderr.contains("--cert") && stderr.contains("0.0.0.0:8443"),
        "{stderr}"
    );
    assert!(
        check(&["--listen", "127.0.0.1:8443", "--listen", "[::1]:8443"])
            .status
            .success()
    );

    let dir = std::env::temp_dir().join(format!("tlsvisor-check-dev-{}", std::process::id()));
    gen_certs(&dir);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let own = check(&[
        "--listen",
        "0.0.0.0:8443",
        "--cert",
        &path("server.crt"),
        "--key",
        &path("server.key"),
    ]);
    assert!(own.status.success(), "{own:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_names_each_upstream_that_cannot_be_used() {
    let dir = std::env::temp_dir().join(format!("tlsvisor-check-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("listening.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let regular = dir.join("regular-file");
    std::fs::write(&regular, b"not a socket").unwrap();
    let missing = dir.join("missing.sock");
    let upstream = |path: &Path| format!("unix:{}", path.display());

    let good = check(&[
        "--protocol",
        "proxy",
        "--upstream",
        "127.0.0.1:6379",
        "--upstream",
        &upstream(&socket),
    ]);
    assert!(good.status.success(), "{good:?}");

    let bad = check(&[
        "--protocol",
        "proxy",
        "--upstream",
        &upstream(&socket),
        "--upstream",
        &upstream(&regular),
        "--upstream",
        &upstream(&missing),
    ]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tlsvisor check:"))
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains("regular-file is not a socket"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("missing.sock") && lines[1].contains("No such file"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
