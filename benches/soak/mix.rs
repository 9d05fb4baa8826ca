//! The mix: what each kind of client does, and the books the client side keeps of it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::upstream::{Outages, BYE, CLOSE, RESET};

/// The longest any one client may take: one that takes longer is counted as hung.
pub(crate) const CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// Each kind of client in the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Handshake, a request and its whole echo, `close_notify`, and the server's `close_notify`.
    Clean,
    /// The same with a client certificate of the trusted CA (mTLS is optional on the server).
    CleanClientCert,
    /// The same with a client that keeps session tickets (most handshakes resume).
    CleanResumed,
    /// The same from the PROXY source address, after a valid PROXY v2 header.
    CleanBehindProxy,
    /// A request and its echo, then a FIN without `close_notify` (a client that died).
    AbruptClose,
    /// 1 MiB sent while reading the echo; after a random part of it, the socket is closed
    /// with `SO_LINGER` 0 (a reset in the middle of a transfer).
    ResetMidStream,
    /// A random prefix of a real ClientHello, then a FIN.
    HalfClientHello,
    /// A client certificate of a CA the server does not know.
    UnknownCaCert,
    /// An invalid PROXY header (of several sorts) from the PROXY source address.
    ProxyGarbage,
    /// A request the upstream answers with a reset.
    UpstreamReset,
    /// A request the upstream answers with a few bytes and a close.
    UpstreamClose,
    /// A TCP connect and nothing else, held for a while (its own pool, bounded).
    Silent,
}

/// Every kind, its weight in the mix (out of 100, [`Kind::Silent`] apart: it has a pool of its
/// own) and its name in the report.
pub(crate) const KINDS: [(Kind, u64, &str); 12] = [
    (Kind::Clean, 34, "clean session"),
    (
        Kind::CleanClientCert,
        10,
        "clean session, client certificate",
    ),
    (Kind::CleanResumed, 6, "clean session, resumption"),
    (
        Kind::CleanBehindProxy,
        4,
        "clean session behind a PROXY v2 header",
    ),
    (Kind::AbruptClose, 4, "FIN without close_notify"),
    (Kind::ResetMidStream, 10, "reset mid-stream"),
    (Kind::HalfClientHello, 8, "half ClientHello"),
    (
        Kind::UnknownCaCert,
        8,
        "client certificate of an unknown CA",
    ),
    (Kind::ProxyGarbage, 6, "PROXY garbage"),
    (Kind::UpstreamReset, 5, "upstream resets"),
    (Kind::UpstreamClose, 5, "upstream closes first"),
    (Kind::Silent, 0, "silent socket"),
];

impl Kind {
    /// Its place in [`KINDS`] (and in [`Books::counts`]).
    pub(crate) fn index(self) -> usize {
        KINDS
            .iter()
            .position(|(k, _, _)| *k == self)
            .unwrap_or_default()
    }

    /// A kind drawn by weight.
    pub(crate) fn pick(rng: &mut Rng) -> Kind {
        let total: u64 = KINDS.iter().map(|(_, w, _)| w).sum();
        let mut at = rng.below(total);
        for (kind, weight, _) in KINDS {
            if at < weight {
                return kind;
            }
            at -= weight;
        }
        Kind::Clean
    }

    /// Whether the connection goes through to an upstream (and so can fail, rightly, as an
    /// upstream goes down).
    fn is_proxied(self) -> bool {
        matches!(
            self,
            Kind::Clean
                | Kind::CleanClientCert
                | Kind::CleanResumed
                | Kind::CleanBehindProxy
                | Kind::AbruptClose
                | Kind::ResetMidStream
                | Kind::UpstreamReset
                | Kind::UpstreamClose
        )
    }
}

/// splitmix64: a small deterministic generator, so a run's mix is the same for one seed.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A number in `lo..hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }
}

/// What the clients need: the server, the client configurations, ClientHellos to cut short.
pub(crate) struct Target {
    /// tlsvisor's TLS address.
    pub(crate) server: SocketAddr,
    /// No resumption, no client certificate.
    pub(crate) plain: Arc<rustls::ClientConfig>,
    /// With session tickets.
    pub(crate) resuming: Arc<rustls::ClientConfig>,
    /// With a client certificate of the CA the server trusts.
    pub(crate) with_cert: Arc<rustls::ClientConfig>,
    /// With a client certificate of another CA.
    pub(crate) unknown_ca: Arc<rustls::ClientConfig>,
    /// Complete ClientHellos (as the first TLS record a client sends).
    pub(crate) client_hellos: Vec<Vec<u8>>,
    /// Whether an upstream went down during a client's life.
    pub(crate) outages: Arc<Outages>,
}

/// The address the server reads PROXY headers from (`--accept-proxy-from 127.0.0.2/32`).
pub(crate) const PROXY_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Clients connect from 127.0.1.1 … 127.0.1.CLIENT_SOURCES, so the per-IP handshake limit
/// (a quarter of `--max-handshakes`) is not what stops them.
const CLIENT_SOURCES: u8 = 8;
/// Silent sockets connect from 127.0.0.3 … 127.0.0.(3 + SILENT_SOURCES - 1).
pub(crate) const SILENT_SOURCES: u8 = 4;

fn client_source(rng: &mut Rng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1,
        1 + rng.below(CLIENT_SOURCES as u64) as u8,
    ))
}

/// The source address of silent socket number `slot`.
pub(crate) fn silent_source(slot: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        3 + (slot % SILENT_SOURCES as usize) as u8,
    ))
}

/// A TCP connection from `source` with the port chosen at connect time
/// (`IP_BIND_ADDRESS_NO_PORT`): the kernel then picks a port for the whole 4-tuple and may reuse
/// one in TIME-WAIT, rather than looking for a port free on the address.
async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int; the descriptor is
    // the socket's own, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(to).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("a valid DNS name")
}

/// A request of `len` bytes that no upstream command begins with.
fn request(rng: &mut Rng, len: usize) -> Vec<u8> {
    let seed = rng.next();
    (0..len)
        .map(|i| b'a' + ((seed as usize + i * 7) % 26) as u8)
        .collect()
}

/// A PROXY v2 header (PROXY, TCP over IPv4) naming `client` as the source.
fn proxy_v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    let ip = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => [0; 4],
    };
    h.extend_from_slice(&ip(client));
    h.extend_from_slice(&ip(server));
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&server.port().to_be_bytes());
    h
}

/// How a client's connection went, by the client's own lights.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// As the kind expects.
    Expected,
    /// Not as expected, but an upstream went down during the client's life (see
    /// [`Outages`]): the failure was right.
    Outage,
    /// Anything else (a failure the server should not have caused, or an admission it should
    /// have refused), with what happened.
    Unexpected(String),
}

/// The client side's books: per kind, how many started, connected (a TCP connect that
/// succeeded: the server must account for each) and how each ended.
#[derive(Default)]
pub(crate) struct Books {
    started: [AtomicU64; KINDS.len()],
    connected: [AtomicU64; KINDS.len()],
    expected: [AtomicU64; KINDS.len()],
    outage: [AtomicU64; KINDS.len()],
    unexpected: [AtomicU64; KINDS.len()],
    samples: Mutex<Vec<String>>,
}

/// Unexpected outcomes kept word for word for the report.
const SAMPLES: usize = 20;

/// One kind's line of the client-side books.
#[derive(Clone, Debug, Default)]
pub(crate) struct KindCounts {
    /// Clients started.
    pub(crate) started: u64,
    /// TCP connects that succeeded.
    pub(crate) connected: u64,
    /// As expected.
    pub(crate) expected: u64,
    /// Failed as an upstream went down.
    pub(crate) outage: u64,
    /// Anything else.
    pub(crate) unexpected: u64,
}

impl Books {
    fn started(&self, kind: Kind) {
        self.started[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn connected(&self, kind: Kind) {
        self.connected[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn ended(&self, kind: Kind, outcome: Outcome) {
        let i = kind.index();
        match outcome {
            Outcome::Expected => &self.expected[i],
            Outcome::Outage => &self.outage[i],
            Outcome::Unexpected(what) => {
                let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
                if samples.len() < SAMPLES {
                    samples.push(format!("{}: {what}", KINDS[i].2));
                }
                &self.unexpected[i]
            }
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Each kind's counts, in [`KINDS`] order.
    pub(crate) fn counts(&self) -> Vec<KindCounts> {
        (0..KINDS.len())
            .map(|i| KindCounts {
                started: self.started[i].load(Ordering::Relaxed),
                connected: self.connected[i].load(Ordering::Relaxed),
                expected: self.expected[i].load(Ordering::Relaxed),
                outage: self.outage[i].load(Ordering::Relaxed),
                unexpected: self.unexpected[i].load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The first unexpected outcomes, word for word.
    pub(crate) fn samples(&self) -> Vec<String> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Successful TCP connects, every kind.
    pub(crate) fn connects(&self) -> u64 {
        self.connected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// What went wrong, for an unexpected outcome.
type Failure = String;

fn fail(step: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| format!("{step}: {e}")
}

/// Runs one client of `kind` (seeded by `seed`) and records it in `books`. `slot` is a silent
/// socket's place in its pool (its source address).
pub(crate) async fn run(kind: Kind, target: &Target, books: &Books, seed: u64, slot: usize) {
    books.started(kind);
    let mark = target.outages.mark();
    let mut rng = Rng::new(seed);
    let attempt = async {
        match kind {
            Kind::Clean | Kind::CleanClientCert | Kind::CleanResumed | Kind::CleanBehindProxy => {
                clean(kind, target, books, &mut rng).await
            }
            Kind::AbruptClose => clean(kind, target, books, &mut rng).await,
            Kind::ResetMidStream => reset_mid_stream(target, books, &mut rng).await,
            Kind::HalfClientHello => half_client_hello(target, books, &mut rng).await,
            Kind::UnknownCaCert => unknown_ca(target, books, &mut rng).await,
            Kind::ProxyGarbage => proxy_garbage(target, books, &mut rng).await,
            Kind::UpstreamReset | Kind::UpstreamClose => {
                upstream_command(kind, target, books, &mut rng).await
            }
            Kind::Silent => silent(target, books, &mut rng, slot).await,
        }
    };
    let outcome = match tokio::time::timeout(CLIENT_LIMIT, attempt).await {
        Ok(Ok(())) => Outcome::Expected,
        Ok(Err(_)) if kind.is_proxied() && target.outages.overlapped(mark) => Outcome::Outage,
        Ok(Err(what)) => Outcome::Unexpected(what),
        Err(_) => Outcome::Unexpected(format!("not finished after {CLIENT_LIMIT:?}")),
    };
    books.ended(kind, outcome);
}

async fn tcp(
    kind: Kind,
    source: IpAddr,
    target: &Target,
    books: &Books,
) -> Result<TcpStream, Failure> {
    let tcp = connect_from(source, target.server)
        .await
        .map_err(fail("connect"))?;
    books.connected(kind);
    Ok(tcp)
}

/// Handshake, a request, its echo, then `close_notify` and the server's (or, for
/// [`Kind::AbruptClose`], a FIN without it).
async fn clean(kind: Kind, target: &Target, books: &Books, rng: &mut Rng) -> Result<(), Failure> {
    let (source, config) = match kind {
        Kind::CleanClientCert => (client_source(rng), &target.with_cert),
        Kind::CleanResumed => (client_source(rng), &target.resuming),
        Kind::CleanBehindProxy => (IpAddr::V4(PROXY_SOURCE), &target.plain),
        _ => (client_source(rng), &target.plain),
    };
    let mut tcp = tcp(kind, source, target, books).await?;
    if kind == Kind::CleanBehindProxy {
        let client = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(
                10,
                rng.below(256) as u8,
                rng.below(256) as u8,
                1,
            )),
            rng.range(1024, 65535) as u16,
        );
        tcp.write_all(&proxy_v2(client, target.server))
            .await
            .map_err(fail("PROXY header"))?;
    }
    let mut tls = TlsConnector::from(Arc::clone(config))
        .connect(server_name(), tcp)
        .await
        .map_err(fail("handshake"))?;
    // At least the four bytes the upstream reads before it echoes anything.
    let len = rng.range(16, 16 * 1024) as usize;
    let sent = request(rng, len);
    tls.write_all(&sent).await.map_err(fail("request"))?;
    tls.flush().await.map_err(fail("request"))?;
    let mut echo = vec![0; sent.len()];
    tls.read_exact(&mut echo).await.map_err(fail("echo"))?;
    if echo != sent {
        return Err("the echo differs from the request".into());
    }
    if kind == Kind::AbruptClose {
        return Ok(());
    }
    tls.shutdown().await.map_err(fail("close_notify"))?;
    let mut rest = [0u8; 64];
    match tls.read(&mut rest).await {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} bytes after the echo")),
        Err(e) => Err(format!("the server's end: {e}")),
    }
}

/// Streams 1 MiB while reading the echo, and resets the socket after a random part of it.
async fn reset_mid_stream(target: &Target, books: &Books, rng: &mut Rng) -> Result<(), Failure> {
    let tcp = tcp(Kind::ResetMidStream, client_source(rng), target, books).await?;
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .map_err(fail("SO_LINGER"))?;
    let tls = TlsConnector::from(Arc::clone(&target.plain))
        .connect(server_name(), tcp)
        .await
        .map_err(fail("handshake"))?;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let chunk = request(rng, 16 * 1024);
    let stop_after = rng.range(1, 256 * 1024) as usize;
    let send = async {
        for _ in 0..64 {
            writer.write_all(&chunk).await?;
        }
        writer.flush().await?;
        // Everything sent: wait for the reader to reach its mark.
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(())
    };
    let receive = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < stop_after {
            match reader.read(&mut buf).await? {
                0 => return Err(std::io::Error::other(format!("closed after {got} bytes"))),
                n => got += n,
            }
        }
        Ok(())
    };
    let result = tokio::select! {
        r = receive => r.map_err(fail("echo")),
        r = send => r.map_err(fail("stream")),
    };
    // Dropping both halves closes the socket: with SO_LINGER 0, a reset.
    drop(reader);
    drop(writer);
    result
}

/// A random prefix of a ClientHello, a short pause, then a FIN.
async fn half_client_hello(target: &Target, books: &Books, rng: &mut Rng) -> Result<(), Failure> {
    let hello = &target.client_hellos[rng.below(target.client_hellos.len() as u64) as usize];
    let cut = rng.range(1, hello.len() as u64) as usize;
    let mut tcp = tcp(Kind::HalfClientHello, client_source(rng), target, books).await?;
    tcp.write_all(&hello[..cut])
        .await
        .map_err(fail("ClientHello"))?;
    tokio::time::sleep(Duration::from_millis(rng.below(50))).await;
    Ok(())
}

/// A client certificate of an unknown CA: the server must refuse it (an alert, or a close
/// before any echo); an echo means it was admitted.
async fn unknown_ca(target: &Target, books: &Books, rng: &mut Rng) -> Result<(), Failure> {
    let tcp = tcp(Kind::UnknownCaCert, client_source(rng), target, books).await?;
    let mut tls = match TlsConnector::from(Arc::clone(&target.unknown_ca))
        .connect(server_name(), tcp)
        .await
    {
        // TLS 1.2 (or a TLS 1.3 server quick enough): refused within the handshake.
        Err(_) => return Ok(()),
        Ok(tls) => tls,
    };
    // TLS 1.3: the client's handshake is over before the server has checked its certificate.
    let _ = tls.write_all(b"ping").await;
    let _ = tls.flush().await;
    let mut buf = [0u8; 16];
    match tls.read(&mut buf).await {
        Ok(0) | Err(_) => Ok(()),
        Ok(_) => Err("admitted with a certificate of an unknown CA".into()),
    }
}

/// An invalid PROXY header, then a FIN; the server must end the connection, and send nothing.
async fn proxy_garbage(target: &Target, books: &Books, rng: &mut Rng) -> Result<(), Failure> {
    const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let sort = rng.below(6);
    let header: Vec<u8> = match sort {
        // Random bytes, the 16 fixed bytes of a v2 header's length or more.
        0 => (0..rng.range(16, 200)).map(|_| rng.next() as u8).collect(),
        // The v2 signature, then a version that is not 2.
        1 => [&SIGNATURE[..], &[0x31, 0x11, 0, 12], &[0; 12]].concat(),
        // A v2 header announcing more than the 4 KiB the server reads.
        2 => [&SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff], &[0; 64]].concat(),
        // A v1 header (the server accepts v2 only), garbled.
        3 => b"PROXY TCP4 999.1.1.1 nowhere 1 2\r\n".to_vec(),
        // A valid v2 header cut short.
        4 => {
            let full = proxy_v2(SocketAddr::from(([10, 0, 0, 1], 1234)), target.server);
            full[..rng.range(1, full.len() as u64) as usize].to_vec()
        }
        // No header at all: a ClientHello.
        _ => target.client_hellos[0].clone(),
    };
    let mut tcp = tcp(Kind::ProxyGarbage, IpAddr::V4(PROXY_SOURCE), target, books).await?;
    tcp.write_all(&header).await.map_err(fail("header"))?;
    tcp.shutdown().await.map_err(fail("FIN"))?;
    let mut buf = [0u8; 512];
    match tcp.read(&mut buf).await {
        Ok(0) | Err(_) => Ok(()),
        Ok(n) => Err(format!(
            "{n} bytes of answer to PROXY garbage (sort {sort})"
        )),
    }
}

/// A request the upstream answers with a reset ([`RESET`]: no answer, the server's
/// `close_notify`) or with [`BYE`] and a close ([`CLOSE`]).
async fn upstream_command(
    kind: Kind,
    target: &Target,
    books: &Books,
    rng: &mut Rng,
) -> Result<(), Failure> {
    let tcp = tcp(kind, client_source(rng), target, books).await?;
    let mut tls = TlsConnector::from(Arc::clone(&target.plain))
        .connect(server_name(), tcp)
        .await
        .map_err(fail("handshake"))?;
    let command = if kind == Kind::UpstreamReset {
        RESET
    } else {
        CLOSE
    };
    tls.write_all(command).await.map_err(fail("request"))?;
    tls.flush().await.map_err(fail("request"))?;
    let mut answer = Vec::new();
    let end = tls.read_to_end(&mut answer).await;
    if kind == Kind::UpstreamReset {
        // The server ends it with close_notify; anything read would be an echo from nowhere.
        return match (end, answer.is_empty()) {
            (Ok(_), true) => Ok(()),
            (Err(e), true) => Err(format!("the server's end: {e}")),
            (_, false) => Err(format!("{} bytes from a reset upstream", answer.len())),
        };
    }
    end.map_err(fail("the server's end"))?;
    if answer != BYE {
        return Err(format!("{answer:?} instead of BYE"));
    }
    tls.shutdown().await.map_err(fail("close_notify"))?;
    Ok(())
}

/// Connects and sends nothing for a while (the server's handshake timeout may end it first).
async fn silent(target: &Target, books: &Books, rng: &mut Rng, slot: usize) -> Result<(), Failure> {
    let mut tcp = tcp(Kind::Silent, silent_source(slot), target, books).await?;
    let hold = Duration::from_millis(rng.range(200, 6_000));
    let mut buf = [0u8; 64];
    tokio::select! {
        _ = tokio::time::sleep(hold) => Ok(()),
        read = tcp.read(&mut buf) => match read {
            Ok(0) | Err(_) => Ok(()),
            Ok(n) => Err(format!("{n} bytes sent to a silent client")),
        },
    }
}
