//! The binary's HTTP listeners, `--metrics-listen` and `--admin-listen`: actix-web on the same
//! actix system as the supervisor, one worker each, served the same way; and the `/metrics`
//! answer both give.
//!
//! Accepting is actix-server's (2.10, `accept.rs`): on an `accept` error other than a client
//! gone (out of descriptors, say) it logs, deregisters the listener for 500 ms and registers it
//! again, so an endpoint never goes dark for good and never spins (the metrics listener was
//! tiny_http until its accept thread was found to quit on the first failed `accept`, and then a
//! hand-written server that paused and retried). Unlike the supervisor's acceptors it does not
//! shed waiting clients: they wait in the backlog until descriptors are free.
//!
//! A connection costs a descriptor and waits for its request concurrently with the others, so
//! silent clients do not hold up a scrape; the timeouts below close them, and the connection
//! limit keeps a flood of them from taking the descriptors the TLS clients need.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus::{Encoder, Registry, TextEncoder};
use slog::{info, Logger};

use crate::error::BoxError;

/// Time a client gets to send its request head once connected: a scraper sends it at once; a
/// silent client is closed after it. Well within Prometheus's default scrape timeout (10 s).
pub(crate) const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Time an idle kept-alive connection stays open between requests.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Time a closing connection gets to finish its shutdown.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections open at once per listener; past it, new ones wait in the backlog (no
/// descriptor) until one closes. Far above what operators and scrapers open.
const MAX_CONNECTIONS: usize = 256;

/// A running HTTP listener; stopped (without waiting) when dropped.
pub(crate) struct HttpListener {
    server: actix_web::dev::ServerHandle,
    /// The address it is bound to (port 0 resolved).
    pub addr: SocketAddr,
    /// A descriptor of its listening socket, for a binary upgrade to hand over.
    socket: std::net::TcpListener,
}

impl HttpListener {
    /// Another descriptor of the listening socket (the same socket, with its accept queue):
    /// what a binary upgrade gives the new process.
    pub(crate) fn socket(&self) -> std::io::Result<std::net::TcpListener> {
        self.socket.try_clone()
    }
}

impl Drop for HttpListener {
    fn drop(&mut self) {
        // Not awaited: the future only reports completion.
        drop(self.server.stop(false));
    }
}

/// Serves the `routes`, which share `data`, on one actix-web worker of the current actix
/// system: on `inherited` if it is a socket for `addr` (handed over by the process this one
/// upgrades), else on `addr`, bound now. `what` names the listener in errors (`metrics`,
/// `the admin API`).
pub(crate) fn start<D: Send + Sync + 'static>(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
    what: &str,
    data: web::Data<D>,
    routes: fn(&mut web::ServiceConfig),
) -> Result<HttpListener, BoxError> {
    let cannot = |e: std::io::Error| format!("cannot serve {what} on {addr}: {e}");
    let inherited = inherited.filter(|socket| {
        socket
            .local_addr()
            .is_ok_and(|bound| crate::listen::serves(addr, bound))
    });
    let listener = match inherited {
        Some(socket) => {
            socket.set_nonblocking(true).map_err(cannot)?;
            socket
        }
        None => crate::listen::bind(addr).map_err(cannot)?,
    };
    let socket = listener.try_clone().map_err(cannot)?;
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
        // One thread is plenty for an operator and a scraper; the work is in the registries.
        .workers(1)
        // The binary owns the signals: actix-server's own handlers would stop the system.
        .disable_signals()
        .shutdown_timeout(1)
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        .keep_alive(KEEP_ALIVE)
        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
        .max_connections(MAX_CONNECTIONS)
        .listen(listener)
        .map_err(cannot)?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(HttpListener {
        server: handle,
        addr: bound,
        socket,
    })
}

/// `--metrics-listen`: `/metrics` alone (the admin API's route without the admin routes or
/// its token), answering from `registry`.
pub(crate) fn serve_metrics(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
    registry: Registry,
    log: &Logger,
) -> Result<HttpListener, BoxError> {
    let listener = start(
        addr,
        inherited,
        "metrics",
        web::Data::new(registry),
        |routes| {
            routes
                .route("/metrics", web::get().to(scrape))
                .default_service(web::to(|| async {
                    HttpResponse::NotFound().body("not found; try /metrics\n")
                }));
        },
    )?;
    info!(log, "metrics listening"; "metrics_listen" => %listener.addr);
    Ok(listener)
}

async fn scrape(registry: web::Data<Registry>) -> HttpResponse {
    exposition(&registry)
}

/// The Prometheus text exposition of `registry`, gathered now.
pub(crate) fn exposition(registry: &Registry) -> HttpResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => HttpResponse::Ok()
            .content_type(encoder.format_type())
            .body(body),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}
