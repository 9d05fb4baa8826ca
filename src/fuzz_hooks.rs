//! What the fuzz targets in `fuzz/` reach of the binary's parsers: the command line and the
//! config file into a validated configuration, and the admin API over HTTP. Thin wrappers over
//! the binary's own code paths; compiled only with the `fuzzing` feature; not a supported API.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use slog::{o, Logger};
use tlsvisor_actors::{Echo, Server, ServerConfig, ServerHandle};

use crate::cli::{Cli, Command, ServeArgs};
use crate::error::BoxError;
use crate::settings::Settings;

/// Parses `argv` (the program name first) as `tlsvisor` does, then resolves the settings of
/// `serve` or `check` (reading the `--config` file if one is named) and validates the server
/// configuration they make. `Ok(None)`: a command with no settings (`gen-certs`, which is not
/// run). Nothing is bound, started or written.
pub fn settings_from_args<I>(argv: I) -> Result<Option<ServerConfig>, String>
where
    I: IntoIterator<Item = OsString>,
{
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let flags = match cli.command {
        None => ServeArgs::default(),
        Some(Command::Serve(flags)) | Some(Command::Check(flags)) => *flags,
        Some(Command::GenCerts { .. }) => return Ok(None),
    };
    let settings = Settings::resolve(flags).map_err(|e| e.to_string())?;
    let config = crate::prepare::server_config(&settings);
    config.validate().map_err(|e| e.to_string())?;
    Ok(Some(config))
}

/// The bearer token of the [`AdminFixture`]'s admin API.
pub const ADMIN_TOKEN: &str = "fuzz-token";

/// A server with its admin API on loopback, started as `serve` starts them (built-in
/// certificate, `echo`, `--admin-token-file`), on a thread and actix system of its own that
/// live as long as the process; and a client of its admin API that keeps one connection alive.
/// One silent TLS client is kept connected, so that a drain has a connection to close.
pub struct AdminFixture {
    admin: SocketAddr,
    tls: SocketAddr,
    handle: ServerHandle,
    http: Option<TcpStream>,
    silent: Option<TcpStream>,
}

/// The longest an answer may take before the admin API counts as hung.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// How long a drain's task gets after its answer before the next request.
const DRAIN_SETTLES: Duration = Duration::from_millis(3);

impl AdminFixture {
    /// Starts the server and its admin API (the token file goes in `scratch`).
    pub fn start(scratch: &Path) -> Result<AdminFixture, BoxError> {
        let token_file = scratch.join("admin.token");
        std::fs::write(&token_file, ADMIN_TOKEN)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("admin-fixture".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    match serve(token_file) {
                        Ok((server, listener)) => {
                            let addrs = (listener.addr, server.local_addr(), server.handle());
                            if tx.send(Ok(addrs)).is_ok() {
                                std::future::pending::<()>().await;
                            }
                            drop((server, listener));
                        }
                        Err(e) => drop(tx.send(Err(e.to_string()))),
                    }
                })
            })?;
        let (admin, tls, handle) = rx.recv()??;
        Ok(AdminFixture {
            admin,
            tls,
            handle,
            http: None,
            silent: None,
        })
    }

    /// Sends `request` (one whole HTTP/1.1 request) to the admin API and returns the status
    /// of its answer, or `None` if the connection closed without one. Before it, accepting is
    /// resumed and the silent client is connected again if it was closed, so that every
    /// request finds the server in the same state. Panics if no answer comes within 10 s: a
    /// request must never hang the admin API.
    pub fn request(&mut self, request: &[u8]) -> Option<u16> {
        self.handle.resume();
        self.keep_silent_client();
        let status = self.exchange(request);
        if status.is_none() {
            self.http = None;
        }
        if request.starts_with(b"POST /drain") && status == Some(202) {
            // The drain goes on in a task after its answer: give it the moment it takes to
            // start closing, so that a panic in it is charged to this request.
            std::thread::sleep(DRAIN_SETTLES);
        }
        status
    }

    fn keep_silent_client(&mut self) {
        let alive = self.silent.as_ref().is_some_and(|s| {
            let mut byte = [0u8; 1];
            matches!(s.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        if !alive {
            self.silent = TcpStream::connect(self.tls).ok().and_then(|s| {
                s.set_nonblocking(true).ok()?;
                Some(s)
            });
        }
    }

    fn exchange(&mut self, request: &[u8]) -> Option<u16> {
        if self.http.is_none() {
            let stream = TcpStream::connect(self.admin).ok()?;
            stream.set_read_timeout(Some(ANSWER_WITHIN)).ok()?;
            stream.set_nodelay(true).ok()?;
            self.http = Some(stream);
        }
        let stream = self.http.as_mut()?;
        stream.write_all(request).ok()?;
        let (status, keep) = read_answer(stream);
        if !keep {
            self.http = None;
        }
        status
    }
}

/// Reads one HTTP/1.1 answer: its status, and whether the connection can carry another.
fn read_answer(stream: &mut TcpStream) -> (Option<u16>, bool) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return (None, false),
            Ok(_) => head.push(byte[0]),
            Err(e) if is_timeout(&e) => panic!("the admin API did not answer within 10 s"),
            Err(_) => return (None, false),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok());
    let header = |name: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix(name).map(str::trim).map(str::to_string))
    };
    let closes = header("connection:").is_some_and(|v| v == "close");
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        // Chunks until the empty one; the sizes are hex, each chunk ends with CRLF.
        loop {
            let Some(line) = read_line(stream) else {
                return (status, false);
            };
            let Ok(size) = usize::from_str_radix(line.trim(), 16) else {
                return (status, false);
            };
            let mut chunk = vec![0; size + 2];
            if read_exact(stream, &mut chunk).is_none() {
                return (status, false);
            }
            if size == 0 {
                return (status, !closes);
            }
        }
    }
    let length = header("content-length:").and_then(|v| v.parse::<usize>().ok());
    match length {
        Some(length) => {
            let mut body = vec![0; length];
            let complete = read_exact(stream, &mut body).is_some();
            (status, complete && !closes)
        }
        // No length: the body runs to the end of the connection.
        None => {
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            (status, false)
        }
    }
}

fn read_line(stream: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        read_exact(stream, &mut byte)?;
        line.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

fn read_exact(stream: &mut TcpStream, buf: &mut [u8]) -> Option<()> {
    match stream.read_exact(buf) {
        Ok(()) => Some(()),
        Err(e) if is_timeout(&e) => panic!("the admin API did not answer within 10 s"),
        Err(_) => None,
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The server and its admin API, as `serve` starts them; must run inside an actix system.
fn serve(token_file: std::path::PathBuf) -> Result<(Server, crate::http::HttpListener), BoxError> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let token = crate::admin::read_token(&token_file)?;
    let settings = Settings::resolve(ServeArgs {
        listen: vec![loopback],
        admin_token_file: Some(token_file),
        // A token file needs an admin API to protect (the settings refuse it otherwise).
        admin_listen: Some(loopback),
        workers: Some(1),
        // The silent client stays registered (handshaking) until a drain or a kill closes it.
        handshake_timeout: Some(Duration::from_secs(3600)),
        ..ServeArgs::default()
    })?;
    let log = Logger::root(slog::Discard, o!());
    let tls = crate::reload::build_tls(&settings)?;
    let server = Server::builder(crate::prepare::server_config(&settings), tls, Echo)
        .listen(loopback)
        .logger(log.clone())
        .start()?;
    let unauthorized = crate::admin::unauthorized_counter()?;
    let reloads = crate::reload::Reloads::new(settings.clone(), server.tls_reloader(), log.clone());
    let listener = crate::admin::start_for(
        (loopback, None),
        &settings,
        &server,
        Some(token),
        reloads,
        unauthorized,
        &log,
    )?;
    Ok((server, listener))
}
