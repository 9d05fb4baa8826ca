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
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(unreadable.status.code(), Some(1), "{unreadable:?}");
    let stderr = String::from_utf8_lossy(&unreadable.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tlsvisor check:") && !l.contains(" warning: "))
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
        .filter(|l| l.starts_with("tlsvisor check:") && !l.contains(" warning: "))
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

/// `tlsvisor serve` with `args` (on a free loopback port): it must refuse to start, exiting 1
/// (not a signal: no abort) within a few seconds; returns its stderr.
fn serve_refuses(args: &[&str]) -> String {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tlsvisor serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve {args:?} started instead of refusing");
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
    assert_eq!(
        status.code(),
        Some(1),
        "serve {args:?}: {status:?}\n{stderr}"
    );
    stderr
}

/// Issue 17, findings 1 and 9: every bound `serve` applies, `check` applies too, and neither
/// aborts (a huge `--workers` allocated per-worker books before anything checked it).
#[test]
fn check_and_serve_refuse_the_same_settings_out_of_bounds() {
    let long_alpn = "x".repeat(300);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let token = std::env::temp_dir().join(format!("tlsvisor-check-token-{}", std::process::id()));
    std::fs::write(&token, "s3cret\n").unwrap();
    let token = token.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--workers", "0"], "--workers must be between 1 and"),
        (
            vec!["--workers", "1099511627776"],
            "--workers must be between 1 and",
        ),
        (
            vec!["--workers", "4611686018427387904"],
            "--workers must be between 1 and",
        ),
        (
            vec!["--max-connections", "0"],
            "--max-connections must be at least 1",
        ),
        (
            vec!["--max-handshakes", "0"],
            "--max-handshakes must be at least 1",
        ),
        (
            vec!["--handshake-timeout", "0"],
            "--handshake-timeout must be above zero",
        ),
        (
            vec!["--handshake-timeout", "400d"],
            "--handshake-timeout must be at most 24h",
        ),
        (
            vec!["--accept-proxy-timeout", "0"],
            "--accept-proxy-timeout must be above zero",
        ),
        // The limits of issue 20: rates bounded (0 is off), durations at most a day (0 is
        // off).
        (
            vec!["--max-handshake-rate", "1000001"],
            "--max-handshake-rate must be at most 1000000 a second",
        ),
        (
            vec!["--max-handshake-rate-per-ip", "18446744073709551615"],
            "--max-handshake-rate-per-ip must be at most 1000000 a second",
        ),
        (
            vec!["--max-lifetime", "400d"],
            "--max-lifetime must be at most 24h",
        ),
        (
            vec!["--half-close-timeout", "25h"],
            "--half-close-timeout must be at most 24h",
        ),
        (vec!["--alpn", ""], "ALPN protocol names are 1 to 255 bytes"),
        (vec!["--alpn", &long_alpn], "is 300 bytes"),
        (
            vec!["--admin-token-file", &token],
            "--admin-token-file needs --admin-listen",
        ),
        (
            vec!["--metrics-listen", &port, "--admin-listen", &port],
            "--metrics-listen and --admin-listen are the same address",
        ),
        (
            vec!["--cert", "/dev/zero", "--key", "/dev/zero"],
            "/dev/zero: it is a character device",
        ),
    ];
    for (args, why) in &cases {
        let checked = check(args);
        let stderr = String::from_utf8_lossy(&checked.stderr);
        assert_eq!(checked.status.code(), Some(1), "check {args:?}: {stderr}");
        assert!(stderr.contains(why), "check {args:?}: {stderr}");
        let served = serve_refuses(args);
        assert!(served.contains(why), "serve {args:?}: {served}");
    }
    let _ = std::fs::remove_file(&token);
}

/// Issue 17, finding 4: a FIFO in place of a certificate is refused at once (opening it would
/// wait for a writer), by `check` and by `serve`.
#[test]
fn a_fifo_as_certificate_is_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("tlsvisor-check-fifo-{}", std::process::id()));
    gen_certs(&dir);
    let fifo = dir.join("fifo.crt");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (fifo, key) = (
        fifo.to_str().unwrap().to_string(),
        dir.join("server.key").to_str().unwrap().to_string(),
    );
    let started = std::time::Instant::now();
    let checked = check(&["--cert", &fifo, "--key", &key]);
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("it is a FIFO, not a regular file"),
        "{stderr}"
    );
    let served = serve_refuses(&["--cert", &fifo, "--key", &key]);
    assert!(served.contains("it is a FIFO"), "{served}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 17, finding 9: a CA certificate or a client-only one is refused as a server's (every
/// client would refuse it); one outside its dates is served, with a warning `check` prints too.
#[test]
fn check_refuses_certificates_no_client_accepts_and_warns_about_dates() {
    let dir = std::env::temp_dir().join(format!("tlsvisor-check-usage-{}", std::process::id()));
    gen_certs(&dir);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();

    let ca = check(&["--cert", &path("ca.crt"), "--key", &path("ca.key")]);
    let stderr = String::from_utf8_lossy(&ca.stderr);
    assert_eq!(ca.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not a server certificate") && stderr.contains("CA certificate"),
        "{stderr}"
    );

    let certs = tlsvisor_actors::DevCerts::generate().unwrap();
    let (client_pem, client_key) = certs.issue_client("alice", &[], &[]).unwrap();
    std::fs::write(path("client.crt"), client_pem).unwrap();
    std::fs::write(path("client.key"), client_key).unwrap();
    let client = check(&["--cert", &path("client.crt"), "--key", &path("client.key")]);
    let stderr = String::from_utf8_lossy(&client.stderr);
    assert_eq!(client.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("clientAuth") && stderr.contains("does not include serverAuth"),
        "{stderr}"
    );

    for (name, from, to, what) in [
        ("expired", 2000, 2001, "expired at 2001-01-01T00:00:00Z"),
        ("early", 2090, 2091, "not valid before 2090-01-01T00:00:00Z"),
    ] {
        let (pem, key) = crate::common::certs::dated_certificate(from, to);
        std::fs::write(path(&format!("{name}.crt")), pem).unwrap();
        std::fs::write(path(&format!("{name}.key")), key).unwrap();
        let (cert, key) = (path(&format!("{name}.crt")), path(&format!("{name}.key")));
        let dated = check(&["--cert", &cert, "--key", &key]);
        let stderr = String::from_utf8_lossy(&dated.stderr);
        assert!(dated.status.success(), "{stderr}");
        assert!(
            stderr.contains("tlsvisor check: warning:") && stderr.contains(what),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
