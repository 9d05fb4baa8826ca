//! A crowd of TLS clients in a second process, so that a test can SIGKILL all of them at once
//! (the kernel then closes every socket together, as when a node of clients dies).
//!
//! The test binary re-runs itself as the crowd: [`Crowd::gather`] starts it with only the
//! ignored test [`crowd_child`] below, chosen by its full name. That test is the crowd process
//! and nothing else: a normal run skips it, and started without the crowd's variables it fails.
//! What the crowd did is asserted by the test that gathered it (every client through the
//! handshake and an echo; with [`Crowd::summary`], how each connection ended, and a clean exit).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const ADDR_VAR: &str = "TLSVISOR_CROWD_ADDR";
const SIZE_VAR: &str = "TLSVISOR_CROWD_SIZE";
/// The crowd never outlives this, whatever the parent does.
const CROWD_LIFETIME: Duration = Duration::from_secs(120);
/// Handshakes in flight at once, below the listen backlog.
const CONNECT_WINDOW: usize = 64;

/// How the crowd's clients saw the server end their connections.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CrowdSummary {
    pub close_notify: usize,
    pub eof_without_close_notify: usize,
    pub errors: usize,
}

/// A child process holding `size` TLS connections to a server.
pub(crate) struct Crowd {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Crowd {
    /// Starts the crowd and waits until every client has finished its handshake and one echo.
    pub(crate) fn gather(addr: SocketAddr, size: usize) -> Crowd {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &child_test_name(), "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(ADDR_VAR, addr.to_string())
            .env(SIZE_VAR, size.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the crowd");
        let lines = BufReader::new(child.stdout.take().unwrap());
        let mut crowd = Crowd { child, lines };
        let ready = crowd.next_line("READY");
        assert_eq!(ready, format!("READY {size}"), "the crowd did not gather");
        crowd
    }

    /// Kills every client at once.
    pub(crate) fn kill(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Waits for the crowd to see every connection closed by the server, and to exit cleanly.
    pub(crate) fn summary(mut self) -> CrowdSummary {
        let line = self.next_line("SUMMARY");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the crowd process failed: {status:?}");
        let mut numbers = line
            .split_whitespace()
            .skip(1)
            .map(|n| n.parse::<usize>().unwrap());
        CrowdSummary {
            close_notify: numbers.next().unwrap(),
            eof_without_close_notify: numbers.next().unwrap(),
            errors: numbers.next().unwrap(),
        }
    }

    fn next_line(&mut self, prefix: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).unwrap();
            assert!(n > 0, "the crowd exited before printing {prefix}");
            // libtest prints "test crowd_child ... " without a newline before our output.
            if let Some(at) = line.find(prefix) {
                return line[at..].trim().to_string();
            }
        }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The name libtest knows [`crowd_child`] by: its module path inside the test crate.
fn child_test_name() -> String {
    let module = module_path!();
    let (_crate, inside) = module.split_once("::").expect("a module of the test crate");
    format!("{inside}::crowd_child")
}

/// The crowd process: connect, report `READY`, wait for the server to close, report `SUMMARY`.
#[test]
#[ignore = "the crowd process that Crowd::gather starts; not a test on its own"]
fn crowd_child() {
    let (Ok(addr), Ok(size)) = (std::env::var(ADDR_VAR), std::env::var(SIZE_VAR)) else {
        panic!("the crowd process is started by Crowd::gather, with {ADDR_VAR} and {SIZE_VAR}");
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let size: usize = size.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime
        .block_on(async { tokio::time::timeout(CROWD_LIFETIME, run_crowd(addr, size)).await });
    let summary = outcome.expect("the crowd outlived its lifetime");
    println!(
        "SUMMARY {} {} {}",
        summary.close_notify, summary.eof_without_close_notify, summary.errors
    );
    std::process::exit(0);
}

async fn run_crowd(addr: SocketAddr, size: usize) -> CrowdSummary {
    let config = tlsvisor_actors::testing::client_config(&super::dev_ca()).unwrap();
    let connector = TlsConnector::from(config);
    let window = Arc::new(tokio::sync::Semaphore::new(CONNECT_WINDOW));
    let ready = Arc::new(AtomicUsize::new(0));
    let all_ready = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(size);
    for _ in 0..size {
        let (connector, window, ready, all_ready) = (
            connector.clone(),
            Arc::clone(&window),
            Arc::clone(&ready),
            Arc::clone(&all_ready),
        );
        tasks.push(tokio::spawn(async move {
            let permit = window.acquire_owned().await.unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(b"x").await.unwrap();
            // write_all only hands the byte to rustls: flush the record out.
            tls.flush().await.unwrap();
            let mut one = [0u8; 1];
            tls.read_exact(&mut one).await.unwrap();
            drop(permit);
            if ready.fetch_add(1, Ordering::SeqCst) + 1 == size {
                all_ready.notify_one();
            }
            let mut sink = [0u8; 256];
            let seen = loop {
                match tls.read(&mut sink).await {
                    Ok(0) => break 0,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break 1,
                    Err(_) => break 2,
                }
            };
            // Answer close_notify with ours, as a well-behaved client does.
            let _ = tls.shutdown().await;
            seen
        }));
    }
    let gathered = tokio::time::timeout(CROWD_LIFETIME / 2, all_ready.notified()).await;
    if gathered.is_err() {
        panic!(
            "only {} of {size} clients got through the handshake and an echo",
            ready.load(Ordering::SeqCst)
        );
    }
    println!("READY {size}");
    let mut summary = CrowdSummary::default();
    for task in tasks {
        match task.await.unwrap_or(2) {
            0 => summary.close_notify += 1,
            1 => summary.eof_without_close_notify += 1,
            _ => summary.errors += 1,
        }
    }
    summary
}
