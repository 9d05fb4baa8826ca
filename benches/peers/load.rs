//! The client side of every workload: tokio-rustls on one thread, so the client's cost is
//! bounded to one core and the server's own CPU is what the report compares.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Any single step of a workload that takes longer than this is a hang.
const STEP: Duration = Duration::from_secs(30);

/// A client configuration trusting `ca`, TLS 1.3 and 1.2, X25519 first and no post-quantum
/// group (every peer negotiates the same classical key exchange, whichever provider this build
/// uses) unless `TLSVISOR_BENCH_PQ` is set. Resumption (TLS 1.3 tickets) only if `resume`.
pub(crate) fn client_config(ca: &[u8], resume: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut provider = tlsvisor_actors::crypto_provider();
    // TLSVISOR_BENCH_PQ=1 keeps the provider's post-quantum hybrid first, to measure what
    // X25519MLKEM768 costs a server (against peers that lack it, the comparison is not like
    // for like: run it with TLSVISOR_BENCH_ONLY=tlsvisor,bare-rustls).
    if std::env::var_os("TLSVISOR_BENCH_PQ").is_none() {
        provider
            .kx_groups
            .retain(|g| !format!("{:?}", g.name()).contains("MLKEM"));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Arc::new(config)
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Connects, handshakes, sends a redis PING and reads the `+PONG\r\n` back (every server in the
/// comparison fronts a redis-server, or is one): the handshake is complete on both sides.
async fn connect_and_ping(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<(TlsStream<TcpStream>, bool)> {
    connect_and_ping_from(addr, None, connector).await
}

/// [`connect_and_ping`] from the local address `source` (port chosen at connect): each source
/// address of 127.0.0.0/8 has its own ephemeral ports, so a crowd bound to one never runs out
/// because another holds thousands.
async fn connect_and_ping_from(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    connector: &TlsConnector,
) -> std::io::Result<(TlsStream<TcpStream>, bool)> {
    let tcp = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            // IP_BIND_ADDRESS_NO_PORT: the port is picked at connect, per 4-tuple, instead of
            // reserved at bind for the address alone.
            bind_address_no_port(&socket)?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(server_name(), tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(b"PING\r\n").await?;
    // write_all only hands the bytes to rustls: the record may still be queued.
    tls.flush().await?;
    let mut pong = [0u8; 7];
    tls.read_exact(&mut pong).await?;
    if &pong != b"+PONG\r\n" {
        return Err(std::io::Error::other("unexpected reply to PING"));
    }
    Ok((tls, resumed))
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` on `socket`.
fn bind_address_no_port(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `on`, an int that outlives the call, on a socket we own.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What a run of handshakes did.
pub(crate) struct HandshakeRun {
    pub completed: usize,
    pub resumed: usize,
    pub failed: usize,
    pub elapsed: Duration,
}

/// `n` connections, `concurrency` at a time, each: handshake, PING, close_notify.
pub(crate) async fn handshakes(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    n: usize,
    concurrency: usize,
) -> HandshakeRun {
    let connector = TlsConnector::from(config);
    let started = Instant::now();
    let outcomes: Vec<Option<bool>> = futures::stream::iter(0..n)
        .map(|_| {
            let connector = connector.clone();
            async move {
                let attempt = tokio::time::timeout(STEP, async {
                    let (mut tls, resumed) = connect_and_ping(addr, &connector).await?;
                    let _ = tls.shutdown().await;
                    Ok::<_, std::io::Error>(resumed)
                });
                attempt.await.ok().and_then(Result::ok)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    HandshakeRun {
        completed: outcomes.iter().filter(|o| o.is_some()).count(),
        resumed: outcomes.iter().filter(|o| **o == Some(true)).count(),
        failed: outcomes.iter().filter(|o| o.is_none()).count(),
        elapsed: started.elapsed(),
    }
}

/// Opens `n` connections (64 handshakes at a time) and keeps them.
pub(crate) async fn open_idle(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    n: usize,
) -> Vec<TlsStream<TcpStream>> {
    open_idle_from(addr, None, config, n).await
}

/// [`open_idle`] from the local address `source`, if given.
pub(crate) async fn open_idle_from(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    config: Arc<rustls::ClientConfig>,
    n: usize,
) -> Vec<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(config);
    futures::stream::iter(0..n)
        .map(|_| {
            let connector = connector.clone();
            async move {
                let attempt = connect_and_ping_from(addr, source, &connector);
                match tokio::time::timeout(STEP, attempt).await {
                    Ok(Ok((tls, _))) => Some(tls),
                    Ok(Err(e)) => {
                        eprintln!("idle connection failed: {e}");
                        None
                    }
                    Err(_) => {
                        eprintln!("idle connection timed out");
                        None
                    }
                }
            }
        })
        .buffer_unordered(64)
        .filter_map(|c| async move { c })
        .collect()
        .await
}

/// Sends `bytes` through one connection to an echo upstream and reads them all back, both
/// directions at once. Returns the time taken, or None if the stream broke or hung.
pub(crate) async fn bulk(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    bytes: usize,
) -> Option<Duration> {
    let connector = TlsConnector::from(config);
    let tcp = TcpStream::connect(addr).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let tls = connector.connect(server_name(), tcp).await.ok()?;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let started = Instant::now();
    let send = async move {
        let chunk = vec![0x5a_u8; 64 * 1024];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            writer.write_all(&chunk[..n]).await?;
            sent += n;
        }
        writer.flush().await?;
        Ok::<_, std::io::Error>(writer)
    };
    let receive = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < bytes {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed early"));
            }
            got += n;
        }
        Ok::<_, std::io::Error>(got)
    };
    let limit = Duration::from_secs(600);
    let (sent, received) = tokio::time::timeout(limit, async { tokio::join!(send, receive) })
        .await
        .ok()?;
    let mut writer = sent.ok()?;
    received.ok()?;
    let elapsed = started.elapsed();
    let _ = writer.shutdown().await;
    Some(elapsed)
}
