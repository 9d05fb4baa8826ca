//! Against programs this project did not write, from Debian's packages: `openssl s_client`,
//! `openssl verify`, `promtool`, a real Prometheus server, redis and haproxy. Run with
//! `--features interop`; `.ci/run` installs the programs.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common;
use crate::common::redis::Redis;
use crate::common::{http_get, Tlsvisor, HANG};
use tlsvisor_actors::testing::{eventually, ScratchDir, TlsClient};

/// `openssl s_client` connected to `addr`, verifying the server against `ca`.
fn s_client(addr: SocketAddr, ca: &str, extra: &[&str]) -> Child {
    Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile", ca])
        .args(["-servername", "localhost", "-verify_return_error", "-quiet"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed (apt-get install openssl)")
}

fn dev_ca_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt").to_string()
}

fn wait_child(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "child did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn openssl_s_client_echoes_and_sees_the_sigterm_close() {
    let mut server = Tlsvisor::serve(&[]);
    let mut client = s_client(server.listen, &dev_ca_path(), &[]);
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    stdin.write_all(b"hello from openssl\n").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "hello from openssl\n");

    server.signal(libc::SIGTERM);
    // s_client ends when the server's close_notify and FIN arrive, though its stdin is open.
    let client_status = wait_child(&mut client, HANG);
    assert!(client_status.success(), "{client_status:?}");
    let status = server.wait_exit(HANG).expect("exits after SIGTERM");
    assert!(status.success());
    let disposals = server.logs_with("disposed");
    assert_eq!(disposals.len(), 1);
    assert_eq!(disposals[0]["reason"], "shutdown");
    drop(stdin);
}

#[test]
fn openssl_s_client_clean_close_is_peer_eof() {
    let server = Tlsvisor::serve(&[]);
    let mut client = s_client(server.listen, &dev_ca_path(), &["-no_ign_eof"]);
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    stdin.write_all(b"one line\n").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "one line\n");
    drop(stdin); // s_client sends close_notify on stdin EOF
    wait_child(&mut client, HANG);
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 0.0));
    let metrics = server.scrape();
    assert_eq!(metrics.disposed("peer_eof"), 1.0);
    let disposals = server.logged("disposed", 1);
    assert_eq!(disposals[0]["close_notify"], true);
}

#[test]
fn generated_certificates_verify_with_openssl_and_serve() {
    let dir = std::env::temp_dir().join(format!("tlsvisor-interop-certs-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args(["gen-certs", "--out", dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let ca = dir.join("ca.crt");
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", ca.to_str().unwrap()])
        .arg(dir.join("server.crt"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");

    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let server = Tlsvisor::serve(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let mut client = s_client(server.listen, ca.to_str().unwrap(), &["-no_ign_eof"]);
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    stdin.write_all(b"own certs\n").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "own certs\n");
    drop(stdin);
    wait_child(&mut client, HANG);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn promtool_accepts_the_exposition() {
    let server = Tlsvisor::serve(&[]);
    let body = http_get(server.metrics.unwrap(), "/metrics");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_real_prometheus_scrapes_tlsvisor() {
    let server = Tlsvisor::serve(&[]);
    let mut client = server.connect().unwrap();
    assert_eq!(
        client.echo(b"seen by prometheus").unwrap(),
        b"seen by prometheus"
    );

    let dir = std::env::temp_dir().join(format!("tlsvisor-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tlsvisor\n    \
             static_configs:\n      - targets: ['{}']\n",
            server.metrics.unwrap()
        ),
    )
    .unwrap();
    let web = free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (apt-get install prometheus)");
    let query = "/api/v1/query?query=tlsvisor_connections_active";
    let scraped = eventually(Duration::from_secs(60), || {
        std::net::TcpStream::connect(web).is_ok() && {
            let body = http_get_lenient(web, query);
            body.contains("\"status\":\"success\"") && body.contains("\"1\"]")
        }
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        scraped,
        "prometheus never reported tlsvisor_connections_active = 1"
    );
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// GET that returns "" on any failure (Prometheus answers 503 while it starts).
fn http_get_lenient(addr: SocketAddr, path: &str) -> String {
    std::panic::catch_unwind(|| http_get(addr, path)).unwrap_or_default()
}

/// `redis-cli --tls` against tlsvisor at `addr`, with `args`, feeding `stdin`.
fn redis_cli_tls(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut cli = Command::new("redis-cli")
        .args(["--tls", "--cacert", &dev_ca_path(), "--sni", "localhost"])
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed (apt-get install redis-tools)");
    cli.stdin.take().unwrap().write_all(stdin).unwrap();
    cli.wait_with_output().unwrap()
}

#[test]
fn redis_cli_through_the_proxy_ping_and_a_1_mib_value() {
    let redis = Redis::start();
    let server = Tlsvisor::serve(&["--protocol", "proxy", "--upstream", &redis.upstream()]);

    let ping = redis_cli_tls(server.listen, &["PING"], b"");
    assert_eq!(
        String::from_utf8_lossy(&ping.stdout).trim(),
        "PONG",
        "{ping:?}"
    );

    let value: String = (0..1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let set = redis_cli_tls(server.listen, &["-x", "SET", "big"], value.as_bytes());
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK", "{set:?}");
    let get = redis_cli_tls(server.listen, &["--raw", "GET", "big"], b"");
    assert_eq!(get.stdout.len(), value.len() + 1);
    assert!(get.stdout.starts_with(value.as_bytes()));

    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 0.0));
    let metrics = server.scrape();
    assert!(metrics.get("tlsvisor_proxy_bytes_client_to_upstream_total") > 1_048_576.0);
    assert!(metrics.get("tlsvisor_proxy_bytes_upstream_to_client_total") > 1_048_576.0);
    assert_eq!(metrics.get("tlsvisor_upstream_connections_open"), 0.0);
    assert_eq!(metrics.get("tlsvisor_upstream_connect_seconds_count"), 3.0);
    // Every upstream connection is gone from redis's side too.
    assert!(eventually(HANG, || redis.connected_clients() == 1));
}

#[test]
fn redis_benchmark_through_the_proxy_completes_without_errors() {
    let redis = Redis::start();
    let server = Tlsvisor::serve(&["--protocol", "proxy", "--upstream", &redis.upstream()]);
    // redis-benchmark --tls hangs rather than failing in some setups: bound it.
    let out = Command::new("timeout")
        .args([
            "120",
            "redis-benchmark",
            "--tls",
            "--cacert",
            &dev_ca_path(),
        ])
        .args(["--sni", "localhost", "-h", "127.0.0.1"])
        .args(["-p", &server.listen.port().to_string()])
        .args(["-n", "20000", "-c", "50", "-t", "ping,set,get", "-q"])
        .output()
        .expect("redis-benchmark is installed (apt-get install redis-tools)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.matches("requests per second").count(), 4, "{report}");
    assert!(!report.to_lowercase().contains("error"), "{report}");
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 0.0));
    let metrics = server.scrape();
    assert_eq!(
        metrics.get("tlsvisor_connections_disposed_total{reason=\"upstream_error\"}"),
        0.0
    );
    assert_eq!(metrics.get("tlsvisor_dispose_duplicates_total"), 0.0);
    assert!(eventually(HANG, || redis.connected_clients() == 1));
}

#[test]
fn openssl_s_client_through_the_proxy_speaks_to_redis() {
    let redis = Redis::start();
    let server = Tlsvisor::serve(&["--protocol", "proxy", "--upstream", &redis.upstream()]);
    let mut client = s_client(server.listen, &dev_ca_path(), &["-no_ign_eof"]);
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    stdin.write_all(b"PING\r\n").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "+PONG\r\n");
    drop(stdin);
    wait_child(&mut client, HANG);
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 0.0));
    assert_eq!(server.scrape().disposed("peer_eof"), 1.0);
}

/// A `haproxy` in `mode tcp` on a free loopback port, forwarding to `server` with a PROXY v2
/// header (`send-proxy-v2`), run from `haproxy.cfg` in `scratch`.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    fn send_proxy_v2_to(server: SocketAddr, scratch: &ScratchDir) -> Haproxy {
        let addr = free_port();
        let config = scratch.path("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 100\n  nbthread 1\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend tls\n  bind {addr}\n  default_backend tlsvisor\n\
                 backend tlsvisor\n  server tlsvisor {server} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (apt-get install haproxy)");
        assert!(
            eventually(HANG, || std::net::TcpStream::connect(addr).is_ok()),
            "haproxy did not listen"
        );
        Haproxy { child, addr }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The source address of a PROXY v2 header (TCP over IPv4) read from `conn`.
fn read_proxy_v2_source(conn: &mut std::net::TcpStream) -> SocketAddr {
    use std::io::Read;
    let mut fixed = [0; 16];
    conn.read_exact(&mut fixed).unwrap();
    assert_eq!(
        &fixed[..12],
        b"\r\n\r\n\0\r\nQUIT\n",
        "a PROXY v2 signature"
    );
    assert_eq!((fixed[12], fixed[13]), (0x21, 0x11), "PROXY, TCP over IPv4");
    let mut rest = vec![0; u16::from_be_bytes([fixed[14], fixed[15]]) as usize];
    conn.read_exact(&mut rest).unwrap();
    let ip = std::net::Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
    SocketAddr::from((ip, u16::from_be_bytes([rest[8], rest[9]])))
}

#[test]
fn haproxy_send_proxy_v2_in_front_gives_the_original_client_address_everywhere() {
    // The upstream records the header tlsvisor sends it, then echoes.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap().to_string();
    let recorder = std::thread::spawn(move || {
        let (mut conn, _) = upstream.accept().unwrap();
        conn.set_read_timeout(Some(HANG)).unwrap();
        let source = read_proxy_v2_source(&mut conn);
        let _ = std::io::copy(&mut conn.try_clone().unwrap(), &mut conn);
        source
    });
    let server = Tlsvisor::serve(&[
        "--accept-proxy",
        "v2",
        "--accept-proxy-from",
        "127.0.0.1/32",
        "--protocol",
        "proxy",
        "--upstream",
        &upstream_addr,
        "--proxy-protocol",
        "v2",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let scratch = ScratchDir::new("haproxy-send-proxy").unwrap();
    let haproxy = Haproxy::send_proxy_v2_to(server.listen, &scratch);

    // The client connects from 127.0.0.2; haproxy connects to tlsvisor from 127.0.0.1.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    socket.connect_timeout(&haproxy.addr.into(), HANG).unwrap();
    let tcp: std::net::TcpStream = socket.into();
    let original = tcp.local_addr().unwrap();
    let config = tlsvisor_actors::testing::client_config(&common::dev_ca()).unwrap();
    let mut client = TlsClient::over(tcp, config, "localhost").unwrap();
    assert_eq!(client.echo(b"through haproxy").unwrap(), b"through haproxy");

    let listed = Command::new("curl")
        .args(["-s", "--max-time", "30"])
        .arg(format!("http://{}/connections", server.admin_listen()))
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let connections = listed["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 1, "{listed}");
    assert_eq!(connections[0]["peer"], original.to_string());
    let id = connections[0]["id"].as_u64().unwrap();

    drop(client.close());
    assert_eq!(
        recorder.join().unwrap(),
        original,
        "the header sent upstream"
    );
    assert!(
        eventually(HANG, || server
            .logs_with("disposed")
            .iter()
            .any(|l| l["conn_id"] == id && l["peer"] == original.to_string())),
        "the disposal line names the original client"
    );
    drop(haproxy);
}
