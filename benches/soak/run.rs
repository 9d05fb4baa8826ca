//! The soak's course: certificates, upstreams and tlsvisor started; the warm-up; the start
//! measurement; the mix with its SIGHUPs and scrapes; the end measurement; the checks.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use tlsvisor_actors::testing::leak::{self, TcpState};
use tlsvisor_actors::DevCerts;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::mix::{self, Books, Kind, KindCounts, Rng, Target};
use crate::procfs;
use crate::scrape::{Endpoints, Metrics, ScrapeBooks};
use crate::upstream::{Outages, Schedule, Upstream};

/// Time between two SIGHUPs.
const HUP_EVERY: Duration = Duration::from_secs(10);
/// Time between two admin scrapes.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// How long the server gets to be idle once the last client is gone.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// How long after the last SIGHUP a measurement waits: a thread a reload may have started (or
/// the blocking pool of a runtime, which keeps an idle thread 10 s) is gone by then.
const AFTER_HUP: Duration = Duration::from_secs(12);
/// How long the thread count may take to come back to its start at the end.
const THREADS_LIMIT: Duration = Duration::from_secs(30);
/// RSS is back to its start if within this share of it, or within [`RSS_SLACK`].
const RSS_SHARE: f64 = 0.10;
/// See [`RSS_SHARE`].
const RSS_SLACK: u64 = 4 << 20;
/// tlsvisor's handshake timeout: silent sockets are held 0.2–6 s, so about a third of them
/// are ended by it (`handshake_timeout`), the rest by their own FIN (`handshake_failed`).
const HANDSHAKE_TIMEOUT: &str = "4s";
/// tlsvisor's handshake limit. With the silent sockets (at most `silent`, 64 by default) and
/// the mix (`concurrency`, 48) the acceptors reach it now and then (`tlsvisor_acceptors_paused`)
/// and every client still gets through: exercised, not exhausted. The per-IP handshake limit
/// is a quarter of it, 24: the silent sockets come from four addresses (16 each), the mix from
/// eight.
const MAX_HANDSHAKES: &str = "96";
/// tlsvisor's connection limit: far above what the mix holds (about 150), and low enough for
/// the open-files limit (two descriptors a proxied connection), so the server does not warn.
const MAX_CONNECTIONS: &str = "5000";

/// What a run does, from the environment.
pub(crate) struct Settings {
    /// Clients to run after the warm-up (`TLSVISOR_SOAK_CONNECTIONS`; 1,000,000 unless a
    /// duration is given).
    pub(crate) connections: Option<u64>,
    /// Or how long to run them (`TLSVISOR_SOAK_DURATION`, such as `10m`).
    pub(crate) duration: Option<Duration>,
    /// A run by count stops here anyway (`TLSVISOR_SOAK_CAP`, default 4 h), and fails.
    pub(crate) cap: Duration,
    /// Clients of the mix at a time (`TLSVISOR_SOAK_CONCURRENCY`, 48).
    pub(crate) concurrency: usize,
    /// Silent sockets at a time (`TLSVISOR_SOAK_SILENT`, 64).
    pub(crate) silent: usize,
    /// Clients of the warm-up (`TLSVISOR_SOAK_WARMUP`, 5,000).
    pub(crate) warmup: u64,
    /// The mix's seed (`TLSVISOR_SOAK_SEED`).
    pub(crate) seed: u64,
    /// Extra flags for tlsvisor (`TLSVISOR_SOAK_TLSVISOR_ARGS`), for an A/B of one setting.
    pub(crate) extra_args: Vec<String>,
    /// The repository.
    pub(crate) root: PathBuf,
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.replace(['_', ','], "").parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v}: not a number"),
    }
}

fn env_duration(name: &str) -> Option<Duration> {
    let v = std::env::var(name).ok()?;
    match humantime::parse_duration(&v) {
        Ok(d) => Some(d),
        Err(e) => panic!("{name}={v}: {e}"),
    }
}

impl Settings {
    /// The settings from `TLSVISOR_SOAK_*`.
    pub(crate) fn from_env() -> Settings {
        let duration = env_duration("TLSVISOR_SOAK_DURATION");
        let connections = env_number("TLSVISOR_SOAK_CONNECTIONS").or(if duration.is_some() {
            None
        } else {
            Some(1_000_000)
        });
        Settings {
            connections,
            duration,
            cap: env_duration("TLSVISOR_SOAK_CAP").unwrap_or(Duration::from_secs(4 * 3600)),
            concurrency: env_number("TLSVISOR_SOAK_CONCURRENCY").unwrap_or(48).max(1) as usize,
            silent: env_number("TLSVISOR_SOAK_SILENT").unwrap_or(64) as usize,
            warmup: env_number("TLSVISOR_SOAK_WARMUP").unwrap_or(5_000),
            seed: env_number("TLSVISOR_SOAK_SEED").unwrap_or(17),
            extra_args: std::env::var("TLSVISOR_SOAK_TLSVISOR_ARGS")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        }
    }

    /// What the run is, in a few words (`1000000 connections`, `10m`).
    pub(crate) fn label(&self) -> String {
        match (self.connections, self.duration) {
            (Some(n), Some(d)) => format!("{n} connections or {}", humantime::format_duration(d)),
            (Some(n), None) => format!("{n} connections"),
            (None, Some(d)) => humantime::format_duration(d).to_string(),
            (None, None) => "unbounded".into(),
        }
    }

    /// How long the mix may run.
    fn limit(&self) -> Duration {
        self.duration.unwrap_or(self.cap).min(self.cap)
    }
}

/// What tlsvisor's process holds, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    /// Resident memory, bytes.
    pub(crate) rss: u64,
    /// Open descriptors.
    pub(crate) fds: usize,
    /// Threads.
    pub(crate) threads: u64,
}

fn usage(pid: u32) -> Usage {
    Usage {
        rss: procfs::rss(pid),
        fds: leak::open_fds(pid).unwrap_or(0),
        threads: procfs::threads(pid),
    }
}

impl Usage {
    fn max(self, other: Usage) -> Usage {
        Usage {
            rss: self.rss.max(other.rss),
            fds: self.fds.max(other.fds),
            threads: self.threads.max(other.threads),
        }
    }
}

/// One check of the end, and whether it held.
#[derive(Clone, Debug)]
pub(crate) struct Check {
    /// What is checked.
    pub(crate) name: String,
    /// Whether it held.
    pub(crate) passed: bool,
    /// The figures behind it.
    pub(crate) detail: String,
}

/// What tlsvisor logged at `warn` and above.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogSummary {
    /// Lines logged.
    pub(crate) lines: u64,
    /// Lines by message (the text after the level, up to the first comma), most frequent first.
    pub(crate) messages: Vec<(String, u64)>,
    /// Where the log is.
    pub(crate) path: PathBuf,
}

/// Everything a run found.
pub(crate) struct Soak {
    /// Clients run after the warm-up (every kind).
    pub(crate) connections: u64,
    /// Why the mix stopped.
    pub(crate) stopped: String,
    /// How long the mix ran.
    pub(crate) elapsed: Duration,
    /// tlsvisor's CPU (user + system) while the mix ran.
    pub(crate) cpu: Duration,
    /// The harness's own CPU (clients and upstreams) while the mix ran.
    pub(crate) harness_cpu: Duration,
    /// /proc/loadavg as the mix ended (the rest of the machine's work shows there).
    pub(crate) loadavg: String,
    /// After the warm-up, idle.
    pub(crate) start: Usage,
    /// After the run, idle.
    pub(crate) end: Usage,
    /// The most seen in the once-a-second samples.
    pub(crate) peak: Usage,
    /// How long the threads took to come back to the start count, if they had to.
    pub(crate) threads_waited: Duration,
    /// The client side's books, in [`mix::KINDS`] order.
    pub(crate) kinds: Vec<KindCounts>,
    /// The first unexpected client outcomes.
    pub(crate) samples: Vec<String>,
    /// Disposals by reason during the run (after the warm-up).
    pub(crate) disposed: BTreeMap<String, u64>,
    /// Rejections by reason during the run.
    pub(crate) rejected: BTreeMap<String, u64>,
    /// The last scrape (the process's whole life).
    pub(crate) last: Metrics,
    /// What the scrapes saw.
    pub(crate) scrapes: ScrapeBooks,
    /// SIGHUPs sent (warm-up included).
    pub(crate) hups: u64,
    /// Outages of every upstream.
    pub(crate) outages: u64,
    /// Listening sockets of upstreams closed (each outage of either upstream).
    pub(crate) closings: u64,
    /// Unexpected outcomes of the warm-up's clients.
    pub(crate) warmup_unexpected: u64,
    /// What tlsvisor logged.
    pub(crate) log: LogSummary,
    /// How tlsvisor ended on SIGTERM.
    pub(crate) exit: String,
    /// The checks.
    pub(crate) checks: Vec<Check>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The run's certificate files: a CA (trusted by clients, and for client certificates), the
/// server's certificate (re-issued before each SIGHUP), and the admin token.
struct Files {
    dir: PathBuf,
    certs: DevCerts,
}

impl Files {
    fn create(dir: &Path) -> std::io::Result<Files> {
        std::fs::create_dir_all(dir)?;
        let certs = DevCerts::generate().map_err(std::io::Error::other)?;
        std::fs::write(dir.join("ca.crt"), &certs.ca_cert_pem)?;
        std::fs::write(dir.join("server.crt"), &certs.server_cert_pem)?;
        std::fs::write(dir.join("server.key"), &certs.server_key_pem)?;
        std::fs::write(dir.join("admin.token"), "soak-token-0123456789\n")?;
        Ok(Files {
            dir: dir.to_path_buf(),
            certs,
        })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A new server certificate and key from the same CA, each written whole then renamed
    /// over the old one (a reload reads the new pair, never half of one).
    fn rotate(&self) -> std::io::Result<()> {
        let (cert, key) = self
            .certs
            .issue_server(&tlsvisor_actors::DEV_CERT_NAMES)
            .map_err(std::io::Error::other)?;
        for (name, pem) in [("server.crt", cert), ("server.key", key)] {
            let tmp = self.dir.join(format!("{name}.new"));
            std::fs::write(&tmp, pem)?;
            std::fs::rename(&tmp, self.dir.join(name))?;
        }
        Ok(())
    }
}

fn client_configs(files: &Files) -> Target {
    let ca = files.certs.ca_cert_pem.as_bytes();
    let no_resumption = |c: Arc<rustls::ClientConfig>| {
        let mut c = (*c).clone();
        c.resumption = Resumption::disabled();
        Arc::new(c)
    };
    let testing = tlsvisor_actors::testing::client_config;
    let with_cert = tlsvisor_actors::testing::client_config_with_cert;
    let (cert, key) = files
        .certs
        .issue_client("soak-client", &[], &[])
        .expect("a client certificate");
    let stranger = DevCerts::generate().expect("another CA");
    let (bad_cert, bad_key) = stranger
        .issue_client("soak-intruder", &[], &[])
        .expect("a client certificate of another CA");
    let plain = no_resumption(testing(ca).expect("a client configuration"));
    let client_hellos = (0..8)
        .map(|_| {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
            let mut c = rustls::ClientConnection::new(Arc::clone(&plain), name)
                .expect("a client connection");
            let mut hello = Vec::new();
            c.write_tls(&mut hello).expect("a ClientHello");
            hello
        })
        .collect();
    Target {
        server: SocketAddr::from(([127, 0, 0, 1], 0)),
        resuming: testing(ca).expect("a client configuration"),
        with_cert: no_resumption(
            with_cert(ca, cert.as_bytes(), key.as_bytes()).expect("a client configuration"),
        ),
        unknown_ca: no_resumption(
            with_cert(ca, bad_cert.as_bytes(), bad_key.as_bytes()).expect("a client configuration"),
        ),
        plain,
        client_hellos,
        outages: Arc::new(Outages::default()),
    }
}

/// tlsvisor, started.
struct Server {
    child: Child,
    pid: u32,
    tls: SocketAddr,
    endpoints: Endpoints,
    log: PathBuf,
}

fn start_server(s: &Settings, files: &Files, upstreams: &[SocketAddr], out: &Path) -> Server {
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = out.join(format!("tlsvisor-{}.log", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_tlsvisor"));
    command
        .args(["serve", "--protocol", "proxy"])
        .args(["--listen", &tls.to_string()])
        .args(["--cert", &files.path("server.crt")])
        .args(["--key", &files.path("server.key")])
        .args(["--client-ca", &files.path("ca.crt")])
        .args(["--client-auth", "optional"])
        .args(["--accept-proxy", "v2"])
        .args(["--accept-proxy-from", &format!("{}/32", mix::PROXY_SOURCE)])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--admin-token-file", &files.path("admin.token")])
        .args(["--metrics-listen", &metrics.to_string()])
        .args(["--max-connections", MAX_CONNECTIONS])
        .args(["--max-handshakes", MAX_HANDSHAKES])
        .args(["--handshake-timeout", HANDSHAKE_TIMEOUT])
        .args(["--log-level", "warn"]);
    for upstream in upstreams {
        command.args(["--upstream", &upstream.to_string()]);
    }
    let child = command
        .args(&s.extra_args)
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("the log file"))
        .spawn()
        .expect("tlsvisor starts");
    let endpoints = Endpoints {
        admin,
        metrics,
        token: "soak-token-0123456789".into(),
    };
    // Ready once the acceptors run (no probe of the TLS port: every connection there is on
    // the books the checks compare with the clients' own).
    let ready = wait_for(Duration::from_secs(30), || {
        matches!(
            crate::scrape::get(admin, "/health/ready", None),
            Ok((200, _, _))
        )
    });
    assert!(
        ready,
        "tlsvisor not ready after 30 s; see {}",
        log.display()
    );
    Server {
        pid: child.id(),
        child,
        tls,
        endpoints,
        log,
    }
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if done() {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The threads that act as an operator for the whole run: a scrape every second (with a
/// sample of tlsvisor's RSS, fds and threads) and a SIGHUP every 10 s.
struct Operator {
    stop: AtomicBool,
    /// While set, no SIGHUP is sent (around a measurement).
    hold_hups: AtomicBool,
    /// The scrape books; held during a scrape, so a measurement taken under it never counts a
    /// scrape's own connection.
    scrapes: Mutex<ScrapeBooks>,
    hups: AtomicU64,
    hup_failures: AtomicU64,
    last_hup: Mutex<Instant>,
    peak: Mutex<Usage>,
}

impl Operator {
    fn start(
        server: &Server,
        files: Files,
        deadline: Instant,
    ) -> (Arc<Operator>, Vec<std::thread::JoinHandle<()>>) {
        let op = Arc::new(Operator {
            stop: AtomicBool::new(false),
            hold_hups: AtomicBool::new(false),
            scrapes: Mutex::new(ScrapeBooks::default()),
            hups: AtomicU64::new(0),
            hup_failures: AtomicU64::new(0),
            // The first SIGHUP goes at once, so the warm-up has one.
            last_hup: Mutex::new(
                Instant::now()
                    .checked_sub(HUP_EVERY)
                    .unwrap_or_else(Instant::now),
            ),
            peak: Mutex::new(Usage::default()),
        });
        let pid = server.pid;
        let endpoints = server.endpoints.clone();
        let scraper = {
            let op = Arc::clone(&op);
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut last_report = (Instant::now(), 0.0, procfs::cpu(pid));
                while !op.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let round = Instant::now();
                    {
                        let mut books = lock(&op.scrapes);
                        books.round(&endpoints);
                        let now = usage(pid);
                        let mut peak = lock(&op.peak);
                        *peak = peak.max(now);
                    }
                    if last_report.0.elapsed() >= Duration::from_secs(10) {
                        last_report = progress(pid, &endpoints, started, last_report);
                    }
                    std::thread::sleep(SCRAPE_EVERY.saturating_sub(round.elapsed()));
                }
            })
        };
        let hupper = {
            let op = Arc::clone(&op);
            std::thread::spawn(move || {
                while !op.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                    if op.hold_hups.load(Ordering::SeqCst)
                        || lock(&op.last_hup).elapsed() < HUP_EVERY
                    {
                        continue;
                    }
                    if files.rotate().is_err() {
                        op.hup_failures.fetch_add(1, Ordering::SeqCst);
                    }
                    // SAFETY: kill(2) on our own child, which is alive until the end of the run.
                    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
                    if rc == 0 {
                        op.hups.fetch_add(1, Ordering::SeqCst);
                    } else {
                        op.hup_failures.fetch_add(1, Ordering::SeqCst);
                    }
                    *lock(&op.last_hup) = Instant::now();
                }
            })
        };
        (op, vec![scraper, hupper])
    }

    /// Waits for quiet (no SIGHUP for [`AFTER_HUP`], the server idle) and measures tlsvisor
    /// between two scrapes. The SIGHUPs stay held until [`Operator::resume_hups`].
    fn quiet_usage(&self, server: &Server) -> (Usage, Metrics) {
        self.hold_hups.store(true, Ordering::SeqCst);
        let since = lock(&self.last_hup).elapsed();
        std::thread::sleep(AFTER_HUP.saturating_sub(since));
        let idle = wait_for(IDLE_LIMIT, || {
            server.endpoints.admin_metrics().is_ok_and(|(m, _)| {
                m.get("tlsvisor_connections_active") == 0.0
                    && m.get("tlsvisor_handshakes_in_progress") == 0.0
            })
        });
        if !idle {
            eprintln!("soak: the server is not idle after {IDLE_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_secs(1));
        let _quiet = lock(&self.scrapes);
        let now = usage(server.pid);
        let metrics = server
            .endpoints
            .admin_metrics()
            .map(|(m, _)| m)
            .unwrap_or_default();
        (now, metrics)
    }

    fn resume_hups(&self) {
        self.hold_hups.store(false, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One progress line on stderr; returns the new reference point.
fn progress(
    pid: u32,
    e: &Endpoints,
    started: Instant,
    (at, accepted_then, cpu_then): (Instant, f64, Duration),
) -> (Instant, f64, Duration) {
    let m = e.admin_metrics().map(|(m, _)| m).unwrap_or_default();
    let accepted = m.get("tlsvisor_connections_accepted_total");
    let cpu = procfs::cpu(pid);
    let secs = at.elapsed().as_secs_f64();
    let u = usage(pid);
    eprintln!(
        "soak {:>6.0}s: accepted {:>9} ({:>5.0}/s), active {:>4}, cpu {:>3.0}%, rss {:.1} MiB, fds {}, threads {}",
        started.elapsed().as_secs_f64(),
        accepted,
        (accepted - accepted_then) / secs,
        m.get("tlsvisor_connections_active"),
        (cpu.saturating_sub(cpu_then)).as_secs_f64() / secs * 100.0,
        u.rss as f64 / (1 << 20) as f64,
        u.fds,
        u.threads,
    );
    (Instant::now(), accepted, cpu)
}

/// How many clients to run, for how long.
struct Plan {
    count: u64,
    until: Instant,
    concurrency: usize,
    silent: usize,
    seed: u64,
}

/// Runs the mix: `concurrency` clients at a time drawn from [`mix::KINDS`], and `silent`
/// silent sockets at a time, until `count` clients in all have started or `until`; then waits
/// for every client to end (each is bounded by [`mix::CLIENT_LIMIT`]). Returns why it stopped.
async fn drive(target: Arc<Target>, books: Arc<Books>, plan: Plan) -> &'static str {
    let claimed = Arc::new(AtomicU64::new(0));
    let count = plan.count;
    let claim = {
        let claimed = Arc::clone(&claimed);
        move || {
            claimed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < count).then_some(n + 1)
                })
                .is_ok()
        }
    };
    let mut silent = JoinSet::new();
    for slot in 0..plan.silent {
        let (target, books, claim) = (Arc::clone(&target), Arc::clone(&books), claim.clone());
        let mut rng = Rng::new(plan.seed ^ (0x5113_0000 + slot as u64));
        let until = plan.until;
        silent.spawn(async move {
            while Instant::now() < until && claim() {
                mix::run(Kind::Silent, &target, &books, rng.next(), slot).await;
            }
        });
    }
    let permits = Arc::new(Semaphore::new(plan.concurrency));
    let mut clients = JoinSet::new();
    let mut rng = Rng::new(plan.seed);
    let stopped = loop {
        if Instant::now() >= plan.until {
            break "time";
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break "semaphore closed";
        };
        if !claim() {
            break "count";
        }
        let kind = Kind::pick(&mut rng);
        let seed = rng.next();
        let (target, books) = (Arc::clone(&target), Arc::clone(&books));
        clients.spawn(async move {
            mix::run(kind, &target, &books, seed, 0).await;
            drop(permit);
        });
        while clients.try_join_next().is_some() {}
    };
    let drained = tokio::time::timeout(mix::CLIENT_LIMIT + Duration::from_secs(10), async {
        while clients.join_next().await.is_some() {}
        while silent.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!("soak: clients still running after their limit; abandoned");
    }
    stopped
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct passed by pointer; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn output_dir(s: &Settings) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| s.root.join("target"))
        .join("soak")
}

/// The whole soak.
pub(crate) fn soak(s: &Settings) -> Soak {
    raise_nofile();
    let out = output_dir(s);
    let work = out.join(format!("run-{}", std::process::id()));
    let files = Files::create(&work).expect("the run's certificate files");
    let mut target = client_configs(&files);
    let rt = runtime();
    let epoch = Instant::now();
    let stop_upstreams = Arc::new(AtomicBool::new(false));
    let upstreams: Vec<Upstream> = rt.block_on(async {
        let mut all = Vec::new();
        for schedule in [Schedule::Steady, Schedule::Flaky] {
            let up = Upstream::start(
                schedule,
                epoch,
                Arc::clone(&target.outages),
                Arc::clone(&stop_upstreams),
            )
            .await
            .expect("an upstream");
            all.push(up);
        }
        all
    });
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let mut server = start_server(s, &files, &addrs, &out);
    target.server = server.tls;
    let target = Arc::new(target);
    eprintln!(
        "soak: {} after a warm-up of {}; tlsvisor pid {} on {}, admin {}, log {}",
        s.label(),
        s.warmup,
        server.pid,
        server.tls,
        server.endpoints.admin,
        server.log.display()
    );

    // Warm-up: the same mix, scrapes and SIGHUPs, so what the server allocates once (arenas,
    // the admin's threads, the first reload) is there before the start is measured.
    let deadline = Instant::now() + s.limit() + Duration::from_secs(3600);
    let (op, threads) = Operator::start(&server, files, deadline);
    let warm_books = Arc::new(Books::default());
    rt.block_on(drive(
        Arc::clone(&target),
        Arc::clone(&warm_books),
        Plan {
            count: s.warmup,
            until: Instant::now() + Duration::from_secs(600),
            concurrency: s.concurrency,
            silent: s.silent,
            seed: s.seed ^ 0xffff,
        },
    ));
    let (start, before) = op.quiet_usage(&server);
    eprintln!(
        "soak: start: rss {:.1} MiB, fds {}, threads {}",
        start.rss as f64 / (1 << 20) as f64,
        start.fds,
        start.threads
    );
    op.resume_hups();

    // The run.
    let books = Arc::new(Books::default());
    let cpu_before = procfs::cpu(server.pid);
    let harness_before = procfs::cpu(std::process::id());
    let began = Instant::now();
    let stopped = rt.block_on(drive(
        Arc::clone(&target),
        Arc::clone(&books),
        Plan {
            count: s.connections.unwrap_or(u64::MAX),
            until: began + s.limit(),
            concurrency: s.concurrency,
            silent: s.silent,
            seed: s.seed,
        },
    ));
    let elapsed = began.elapsed();
    let cpu = procfs::cpu(server.pid).saturating_sub(cpu_before);
    // procfs::cpu counts a process's children too: tlsvisor is the harness's child.
    let harness_cpu = procfs::cpu(std::process::id())
        .saturating_sub(harness_before)
        .saturating_sub(cpu);
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let stopped = match stopped {
        "time" if s.duration.is_none() => format!("stopped by the cap of {:?}", s.cap),
        why => format!("stopped by its {why}"),
    };
    eprintln!("soak: the mix is over ({stopped}); waiting for the server to be idle");

    // The end: quiet, idle, measured.
    let (mut end, last) = op.quiet_usage(&server);
    let waited = Instant::now();
    if end.threads != start.threads {
        wait_for(THREADS_LIMIT, || {
            procfs::threads(server.pid) == start.threads
        });
        let _quiet = lock(&op.scrapes);
        end = usage(server.pid);
    }
    let threads_waited = if end.threads == start.threads {
        waited.elapsed()
    } else {
        THREADS_LIMIT
    };
    op.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let scrapes = lock(&op.scrapes).clone();
    let peak = *lock(&op.peak);
    let hups = op.hups.load(Ordering::SeqCst);

    // Sockets: the server's, on its own ports and towards its upstreams.
    let mut close_wait = Vec::new();
    for (what, port) in [
        ("TLS port", server.tls.port()),
        ("admin port", server.endpoints.admin.port()),
        ("metrics port", server.endpoints.metrics.port()),
    ] {
        close_wait.push((what, procfs::close_wait(port)));
    }
    for (i, a) in addrs.iter().enumerate() {
        let n = leak::sockets_to_remote_port(a.port(), TcpState::CloseWait).unwrap_or(usize::MAX);
        close_wait.push((
            if i == 0 {
                "to upstream 1"
            } else {
                "to upstream 2"
            },
            n,
        ));
    }
    let established =
        leak::sockets_on_local_port(server.tls.port(), TcpState::Established).unwrap_or(usize::MAX);

    let exit = terminate(&mut server.child);
    stop_upstreams.store(true, Ordering::SeqCst);
    let outages = target.outages.count.load(Ordering::SeqCst);
    let closings = target.outages.closings.load(Ordering::SeqCst);
    let rebind_failures = target.outages.rebind_failures.load(Ordering::SeqCst);
    drop(rt);
    let _ = std::fs::remove_dir_all(&work);

    let delta = |name: &str| -> BTreeMap<String, u64> {
        let then = before.by_label(name);
        last.by_label(name)
            .into_iter()
            .map(|(k, v)| {
                let d = v - then.get(&k).copied().unwrap_or(0.0);
                (k, d as u64)
            })
            .collect()
    };
    let mut soak = Soak {
        connections: books.counts().iter().map(|k| k.started).sum(),
        stopped,
        elapsed,
        cpu,
        harness_cpu,
        loadavg,
        start,
        end,
        peak,
        threads_waited,
        kinds: books.counts(),
        samples: [books.samples(), warm_books.samples()].concat(),
        warmup_unexpected: warm_books.counts().iter().map(|k| k.unexpected).sum(),
        disposed: delta("tlsvisor_connections_disposed_total"),
        rejected: delta("tlsvisor_connections_rejected_total"),
        last,
        scrapes,
        hups,
        outages,
        closings,
        log: summarise_log(&server.log),
        exit,
        checks: Vec::new(),
    };
    let connects = warm_books.connects() + books.connects();
    soak.checks = checks(
        s,
        &soak,
        connects,
        &close_wait,
        established,
        rebind_failures,
        op.hup_failures.load(Ordering::SeqCst),
    );
    soak
}

/// SIGTERM, and how the process ended (SIGKILL after 20 s).
fn terminate(child: &mut Child) -> String {
    let started = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(status)) = child.try_wait() {
            return format!("{status} after {} ms", started.elapsed().as_millis());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    "still running 20 s after SIGTERM: killed".into()
}

fn summarise_log(path: &Path) -> LogSummary {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_message: BTreeMap<String, u64> = BTreeMap::new();
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        // slog-term: "Mon DD HH:MM:SS.mmm LEVL message, key: value, ..."
        let message = line
            .split_whitespace()
            .skip(3)
            .collect::<Vec<_>>()
            .join(" ");
        let message = message.split(',').next().unwrap_or_default().to_string();
        *by_message.entry(message).or_default() += 1;
    }
    let mut messages: Vec<(String, u64)> = by_message.into_iter().collect();
    messages.sort_by_key(|m| std::cmp::Reverse(m.1));
    LogSummary {
        lines,
        messages,
        path: path.to_path_buf(),
    }
}

fn check(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        passed,
        detail: detail.into(),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn checks(
    s: &Settings,
    soak: &Soak,
    connects: u64,
    close_wait: &[(&str, usize)],
    established: usize,
    rebind_failures: u64,
    hup_failures: u64,
) -> Vec<Check> {
    let m = &soak.last;
    let (accepted, active, disposed) = m.books();
    let rejected = m.sum("tlsvisor_connections_rejected_total") as u64;
    let accept_errors = m.get("tlsvisor_accept_errors_total") as u64;
    let mut out = Vec::new();
    let reached = match s.connections {
        Some(n) if s.duration.is_none() => soak.connections >= n,
        _ => true,
    };
    out.push(check(
        "the run ran to its end",
        reached && m.has("tlsvisor_connections_accepted_total"),
        format!("{} clients, {}", soak.connections, soak.stopped),
    ));
    out.push(check(
        "active 0 at the end",
        active == 0,
        format!("active {active}"),
    ));
    let handshakes = m.get("tlsvisor_handshakes_in_progress") as u64;
    out.push(check(
        "no handshake in progress at the end",
        handshakes == 0,
        format!("{handshakes}"),
    ));
    out.push(check(
        "accepted == disposed (sum over reasons)",
        accepted == disposed,
        format!("accepted {accepted}, disposed {disposed}"),
    ));
    out.push(check(
        "every scrape: accepted == active + disposed",
        soak.scrapes.inconsistent == 0,
        match &soak.scrapes.inconsistent_sample {
            None => format!("{} scrapes", soak.scrapes.rounds),
            Some(first) => format!(
                "{} of {}; first: {first}",
                soak.scrapes.inconsistent, soak.scrapes.rounds
            ),
        },
    ));
    for name in [
        "tlsvisor_dispose_duplicates_total",
        "tlsvisor_dispose_fallback_total",
        "tlsvisor_dispose_lost_total",
    ] {
        let v = m.get(name);
        out.push(check(
            format!("{name} == 0"),
            m.has(name) && v == 0.0,
            if m.has(name) {
                format!("{v}")
            } else {
                "not in the scrape".into()
            },
        ));
    }
    out.push(check(
        "every client connection is on the server's books (connects == accepted + rejected)",
        connects == accepted + rejected,
        format!(
            "connects {connects}, accepted {accepted}, rejected {rejected}, accept errors {accept_errors}"
        ),
    ));
    let cw: usize = close_wait.iter().map(|(_, n)| n).sum();
    out.push(check(
        "no CLOSE-WAIT socket on the server's ports or towards its upstreams",
        cw == 0,
        close_wait
            .iter()
            .map(|(what, n)| format!("{what} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    out.push(check(
        "no connection left ESTABLISHED on the TLS port",
        established == 0,
        format!("{established}"),
    ));
    let rss_limit = soak.start.rss + ((soak.start.rss as f64 * RSS_SHARE) as u64).max(RSS_SLACK);
    out.push(check(
        format!(
            "RSS back to its start (within {:.0}% or {} MiB, whichever is more)",
            RSS_SHARE * 100.0,
            RSS_SLACK >> 20
        ),
        soak.end.rss <= rss_limit,
        format!(
            "start {:.1} MiB, end {:.1} MiB, peak {:.1} MiB",
            mib(soak.start.rss),
            mib(soak.end.rss),
            mib(soak.peak.rss)
        ),
    ));
    out.push(check(
        "fds back to their start (equal)",
        soak.end.fds == soak.start.fds,
        format!(
            "start {}, end {}, peak {}",
            soak.start.fds, soak.end.fds, soak.peak.fds
        ),
    ));
    out.push(check(
        format!(
            "threads back to their start (equal, {} s after the last SIGHUP, waiting up to {} s more)",
            AFTER_HUP.as_secs(),
            THREADS_LIMIT.as_secs()
        ),
        soak.end.threads == soak.start.threads,
        format!(
            "start {}, end {}, peak {}, waited {:.1} s",
            soak.start.threads,
            soak.end.threads,
            soak.peak.threads,
            soak.threads_waited.as_secs_f64()
        ),
    ));
    out.push(check(
        "every scrape answered 200",
        soak.scrapes.failures == 0,
        format!(
            "{} rounds of 3 requests, {} failed{}; slowest {} ms",
            soak.scrapes.rounds,
            soak.scrapes.failures,
            soak.scrapes
                .failure_samples
                .first()
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default(),
            soak.scrapes.slowest.as_millis()
        ),
    ));
    let reloads = m.by_label("tlsvisor_tls_reloads_total");
    let ok = reloads.get("ok").copied().unwrap_or(0.0) as u64;
    let failed = reloads.get("failed").copied().unwrap_or(0.0) as u64;
    out.push(check(
        "every SIGHUP reloaded (reloads ok == SIGHUPs, none failed)",
        ok == soak.hups && failed == 0 && hup_failures == 0,
        format!("SIGHUPs {}, ok {ok}, failed {failed}", soak.hups),
    ));
    let unexpected: u64 = soak.kinds.iter().map(|k| k.unexpected).sum();
    out.push(check(
        "every client saw what its kind expects (failures as an upstream went down aside)",
        unexpected == 0 && soak.warmup_unexpected == 0,
        format!(
            "{unexpected} unexpected, {} in the warm-up{}",
            soak.warmup_unexpected,
            soak.samples
                .first()
                .map(|f| format!("; first: {f}"))
                .unwrap_or_default()
        ),
    ));
    out.extend(reasons_match_kinds(soak));
    out.push(check(
        "the upstreams came back on schedule",
        rebind_failures == 0,
        format!("{rebind_failures} failed rebinds"),
    ));
    out.push(check(
        "SIGTERM at the end: exit status 0",
        soak.exit.starts_with("exit status: 0"),
        soak.exit.clone(),
    ));
    out
}

/// What the clients did, in groups, against the reasons the server recorded for them during
/// the run: each group's clients must be exactly its reasons' disposals. (A reset mid-stream is
/// seen by the reader or by a write, whichever comes first; a silent socket ends by its FIN or
/// by the handshake timeout; a client that failed as an upstream went down was refused a
/// connect or cut by the reset of an upstream's backlog.) Exact only when every client did what
/// its kind expects.
fn reasons_match_kinds(soak: &Soak) -> Vec<Check> {
    use Kind::*;
    let k = |kind: Kind| &soak.kinds[kind.index()];
    let expected = |kinds: &[Kind]| kinds.iter().map(|&kind| k(kind).expected).sum::<u64>();
    let started = |kinds: &[Kind]| kinds.iter().map(|&kind| k(kind).started).sum::<u64>();
    let failed_as_down: u64 = soak.kinds.iter().map(|c| c.outage).sum();
    let groups: Vec<(&str, u64, &[&str])> = vec![
        (
            "clean sessions and FINs without close_notify, as expected",
            expected(&[
                Clean,
                CleanClientCert,
                CleanResumed,
                CleanBehindProxy,
                AbruptClose,
            ]),
            &["peer_eof"],
        ),
        (
            "resets mid-stream, as expected",
            expected(&[ResetMidStream]),
            &["reader_error", "writer_error"],
        ),
        (
            "half ClientHellos and silent sockets",
            started(&[HalfClientHello, Silent]),
            &["handshake_failed", "handshake_timeout"],
        ),
        (
            "client certificates of an unknown CA",
            started(&[UnknownCaCert]),
            &["client_auth_failed"],
        ),
        (
            "PROXY garbage",
            started(&[ProxyGarbage]),
            &["proxy_header_invalid"],
        ),
        (
            "upstream closes first, as expected",
            expected(&[UpstreamClose]),
            &["upstream_eof"],
        ),
        (
            "upstream resets, and every client that failed as an upstream went down",
            started(&[UpstreamReset]) + failed_as_down,
            &["upstream_error", "upstream_connect_failed"],
        ),
    ];
    let mut matched: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for (what, clients, reasons) in groups {
        let disposed: u64 = reasons
            .iter()
            .map(|r| soak.disposed.get(*r).copied().unwrap_or(0))
            .sum();
        matched.extend(reasons);
        out.push(check(
            format!("reasons match the mix: {what} == {}", reasons.join(" + ")),
            clients == disposed,
            format!("{clients} clients, {disposed} disposals"),
        ));
    }
    let others: Vec<String> = soak
        .disposed
        .iter()
        .filter(|(r, n)| **n > 0 && !matched.contains(&r.as_str()))
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    out.push(check(
        "no other disposal reason during the run",
        others.is_empty(),
        if others.is_empty() {
            "none".to_string()
        } else {
            others.join(", ")
        },
    ));
    out
}
