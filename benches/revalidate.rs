//! What live revalidation costs at scale (issue 20, item 1): the release binary with 10,000
//! live mTLS connections held by two client processes (half with a certificate that gets
//! revoked, half with one that stays good), then
//!
//! 1. `POST /revalidate` with nothing to close: the cost of a pass alone (server CPU from
//!    `/proc/PID/stat`, the pass's own `duration_ms`);
//! 2. a CRL revoking the first half, and SIGHUP: the time from the signal to the last revoked
//!    client seeing `close_notify`, and the server's CPU for the reload, the pass and the
//!    5,000 graceful closes.
//!
//! On demand, not in CI (it holds 10,000 sockets and takes about a minute):
//!
//! ```sh
//! cargo build --release --bin tlsvisor
//! cargo bench --bench revalidate                        # one certificate per client process
//! TLSVISOR_REVALIDATE_DISTINCT=1 cargo bench --bench revalidate   # one per connection
//! TLSVISOR_REVALIDATE_CONNECTIONS=2000 cargo bench --bench revalidate
//! ```
//!
//! With one certificate per process, a pass verifies two distinct chains (verdicts are shared by
//! connections presenting the same chain); with `DISTINCT`, 10,000 (the worst case: every client
//! its own certificate) and the CRL lists 5,000 serials. docs/benchmarks.md has the figures.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use tlsvisor_actors::testing::client_config_with_cert;
use tlsvisor_actors::testing::CertificateFacts;
use tlsvisor_actors::DevCerts;

const ROLE_VAR: &str = "TLSVISOR_REVALIDATE_ROLE";
const WINDOW: usize = 64;

fn main() {
    raise_open_files_limit();
    match std::env::var(ROLE_VAR) {
        Ok(role) => client_process(&role),
        Err(_) => driver(),
    }
}

fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// utime + stime of `pid`, in clock ticks (10 ms).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

// --- the driver ---------------------------------------------------------------------------

struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: BufReader<ChildStdout>,
}

impl Client {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

fn driver() {
    let n: usize = std::env::var("TLSVISOR_REVALIDATE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let distinct = std::env::var("TLSVISOR_REVALIDATE_DISTINCT").is_ok_and(|v| v == "1");
    let bin = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("release/tlsvisor");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release --bin tlsvisor",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("tlsvisor-revalidate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certs = DevCerts::generate().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    };
    let server_cert = write("server.crt", &certs.server_cert_pem);
    let server_key = write("server.key", &certs.server_key_pem);
    let ca = write("ca.crt", &certs.ca_cert_pem);
    let ca_key = write("ca.key", &certs.ca_key_pem);
    let crl = write("clients.crl", &certs.crl(&[]).unwrap());
    let (listen, admin) = (free_addr(), free_addr());
    let mut server = Command::new(&bin)
        .args(["serve", "--listen", &listen.to_string()])
        .args(["--cert", path(&server_cert), "--key", path(&server_key)])
        .args(["--client-ca", path(&ca), "--client-crl", path(&crl)])
        .args(["--admin-listen", &admin.to_string()])
        .args([
            "--workers",
            "2",
            "--max-connections",
            &(n + 1000).to_string(),
        ])
        .args(["--idle-timeout", "0", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tlsvisor");
    let pid = server.id();
    let (lines_tx, lines) = mpsc::channel::<serde_json::Value>();
    let stderr = server.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = lines_tx.send(value);
            }
        }
    });
    let wait_msg = |msg: &str, within: Duration| -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `{msg}` line within {within:?}"));
            if line["msg"] == msg {
                return line;
            }
        }
    };
    wait_msg("listening", Duration::from_secs(30));

    let half = n / 2;
    let started = Instant::now();
    let spawn = |role: &str, count: usize| -> Client {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE_VAR, role)
            .env("ADDR", listen.to_string())
            .env("COUNT", count.to_string())
            .env("CA", &ca)
            .env("CA_KEY", &ca_key)
            .env("DISTINCT", if distinct { "1" } else { "0" })
            .env("SERIALS", dir.join(format!("{role}.serials")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a client process");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap());
        Client {
            child,
            stdin,
            lines,
        }
    };
    let mut revoked = spawn("revoked", half);
    let mut kept = spawn("kept", n - half);
    for (name, client) in [("revoked", &mut revoked), ("kept", &mut kept)] {
        let ready = client.line();
        assert!(ready.starts_with("READY"), "{name}: {ready}");
    }
    println!(
        "{n} mTLS connections up in {:.1} s ({} certificates: {})",
        started.elapsed().as_secs_f64(),
        if distinct {
            "one per connection"
        } else {
            "one per client process"
        },
        if distinct { n } else { 2 },
    );
    std::thread::sleep(Duration::from_secs(2));

    // 1. A pass with nothing to close.
    let before = cpu_ticks(pid);
    let out = Command::new("curl")
        .args(["-s", "-X", "POST", &format!("http://{admin}/revalidate")])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    std::thread::sleep(Duration::from_millis(500));
    let pass_ticks = cpu_ticks(pid) - before;
    let line = wait_msg("live connections revalidated", Duration::from_secs(60));
    println!(
        "POST /revalidate, nothing to close: {body}; log duration_ms {}; server CPU {} ms \
         (incl. 0.5 s idle after)",
        line["duration_ms"],
        pass_ticks * 10
    );

    // 2. Revoke half and reload.
    let serials = std::fs::read_to_string(dir.join("revoked.serials")).unwrap();
    let serials: Vec<&str> = serials.lines().collect();
    write("clients.crl", &certs.crl(&serials).unwrap());
    let before = cpu_ticks(pid);
    let sighup_at = unix_micros();
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let closed = revoked.line();
    let mut fields = closed.split(' ');
    assert_eq!(fields.next(), Some("CLOSED"), "{closed}");
    let count: usize = fields.next().unwrap().parse().unwrap();
    let last: u128 = fields.next().unwrap().parse().unwrap();
    let graceful: usize = fields.next().unwrap().parse().unwrap();
    let line = wait_msg("live connections revalidated", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let reload_ticks = cpu_ticks(pid) - before;
    println!(
        "SIGHUP with a CRL revoking {} serial(s): {count} connections closed ({graceful} with \
         close_notify), the last {:.1} ms after the signal; pass: kept {} closed {} in {} ms; \
         server CPU {} ms (reload + pass + {count} graceful closes, incl. 0.5 s idle after)",
        serials.len(),
        (last.saturating_sub(sighup_at)) as f64 / 1000.0,
        line["kept"],
        line["closed"],
        line["duration_ms"],
        reload_ticks * 10
    );
    writeln!(kept.stdin, "ECHO").unwrap();
    println!("kept clients after the reload: {}", kept.line());
    for client in [&mut revoked, &mut kept] {
        let _ = client.child.kill();
        let _ = client.child.wait();
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

// --- a client process ---------------------------------------------------------------------

fn client_process(role: &str) {
    let env = |k: &str| std::env::var(k).unwrap();
    let addr: SocketAddr = env("ADDR").parse().unwrap();
    let count: usize = env("COUNT").parse().unwrap();
    let distinct = env("DISTINCT") == "1";
    let certs = DevCerts {
        ca_cert_pem: std::fs::read_to_string(env("CA")).unwrap(),
        ca_key_pem: std::fs::read_to_string(env("CA_KEY")).unwrap(),
        server_cert_pem: String::new(),
        server_key_pem: String::new(),
    };
    let issued = if distinct { count } else { 1 };
    let mut configs = Vec::with_capacity(issued);
    let mut serials = String::new();
    for i in 0..issued {
        let (cert, key) = certs
            .issue_client(&format!("{role}-{i}"), &[], &[])
            .unwrap();
        serials.push_str(&CertificateFacts::from_pem(&cert).unwrap().serial_hex);
        serials.push('\n');
        configs.push(
            client_config_with_cert(
                certs.ca_cert_pem.as_bytes(),
                cert.as_bytes(),
                key.as_bytes(),
            )
            .unwrap(),
        );
    }
    std::fs::write(env("SERIALS"), serials).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
        let (echo_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<(bool, u128)>();
        let ready = Arc::new(AtomicUsize::new(0));
        let (ready_tx, mut all_ready) = tokio::sync::mpsc::unbounded_channel::<()>();
        for i in 0..count {
            let config = Arc::clone(&configs[i % configs.len()]);
            let (window, ready, ready_tx, done_tx) = (
                Arc::clone(&window),
                Arc::clone(&ready),
                ready_tx.clone(),
                done_tx.clone(),
            );
            let mut echo = echo_tx.subscribe();
            let kept = role == "kept";
            tokio::spawn(async move {
                let permit = window.acquire_owned().await.unwrap();
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
                tls.write_all(b"hi").await.unwrap();
                let mut buf = [0u8; 64];
                tls.read_exact(&mut buf[..2]).await.unwrap();
                drop(permit);
                if ready.fetch_add(1, Ordering::SeqCst) + 1 == count {
                    let _ = ready_tx.send(());
                }
                if kept {
                    let _ = echo.recv().await;
                    let ok = tls.write_all(b"hi").await.is_ok()
                        && tls.read_exact(&mut buf[..2]).await.is_ok();
                    let _ = done_tx.send((ok, unix_micros()));
                } else {
                    // Until the server closes: Ok(0) is close_notify, an error is anything else.
                    let graceful = loop {
                        match tls.read(&mut buf).await {
                            Ok(0) => break true,
                            Ok(_) => continue,
                            Err(_) => break false,
                        }
                    };
                    let _ = done_tx.send((graceful, unix_micros()));
                }
            });
        }
        drop(done_tx);
        all_ready.recv().await;
        println!("READY {count}");
        std::io::stdout().flush().unwrap();
        if role == "kept" {
            let mut line = String::new();
            let _ = tokio::task::spawn_blocking(move || {
                std::io::stdin().read_line(&mut line).map(|_| line)
            })
            .await;
            let _ = echo_tx.send(());
        }
        let (mut finished, mut good, mut last) = (0, 0, 0);
        while let Some((ok, at)) = done.recv().await {
            finished += 1;
            good += usize::from(ok);
            last = last.max(at);
            if finished == count {
                break;
            }
        }
        match role {
            "kept" => println!("ECHOED {good} of {count}"),
            _ => println!("CLOSED {finished} {last} {good}"),
        }
        std::io::stdout().flush().unwrap();
        // Hold the sockets until killed.
        std::future::pending::<()>().await;
    });
}
