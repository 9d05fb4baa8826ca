//! The admin API (`--admin-listen`): actix-web on the same actix system as the supervisor
//! (served as `http.rs` says), steering it through a `ServerHandle` (every question goes to
//! the registries by message, with a deadline).

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use prometheus::{IntCounter, Registry};
use serde::Deserialize;
use serde_json::json;
use slog::{info, warn, Logger};
use tlsvisor_actors::{CloseMode, ConnDescription, ConnId, ServerHandle, TlsReloader};

use crate::cli::parse_duration;
use crate::error::BoxError;
use crate::http::HttpListener;
use crate::reload;
use crate::settings::Settings;

/// The default page of `GET /connections`, and the largest one asked for.
const DEFAULT_PAGE: usize = 100;
const LARGEST_PAGE: usize = 10_000;

/// The counter of admin requests refused for a wrong or missing token.
pub(crate) fn unauthorized_counter() -> Result<IntCounter, prometheus::Error> {
    IntCounter::new(
        "tlsvisor_admin_unauthorized_total",
        "Admin API requests refused for a missing or wrong bearer token.",
    )
}

/// What every admin request handler shares.
pub(crate) struct Admin {
    pub handle: ServerHandle,
    pub settings: Settings,
    pub reloader: TlsReloader,
    pub metrics: Registry,
    /// `None`: no token asked for (keep the listener on loopback then).
    pub token: Option<String>,
    pub unauthorized: IntCounter,
    pub log: Logger,
}

/// Binds `addr` and serves the admin API on one actix-web worker of the current system.
pub(crate) fn start(addr: SocketAddr, admin: Admin) -> Result<HttpListener, BoxError> {
    let log = admin.log.clone();
    let listener = crate::http::start(addr, "the admin API", web::Data::new(admin), |routes| {
        routes
            .route("/health/live", web::get().to(live))
            .route("/health/ready", web::get().to(ready))
            .route("/metrics", web::get().to(metrics))
            .route("/connections", web::get().to(list))
            .route("/connections/{id}", web::get().to(one))
            .route("/connections/{id}", web::delete().to(kill))
            .route("/pause", web::post().to(pause))
            .route("/resume", web::post().to(resume))
            .route("/drain", web::post().to(drain))
            .route("/reload", web::post().to(reload_tls));
    })?;
    info!(log, "admin listening"; "admin_listen" => %listener.addr);
    Ok(listener)
}

/// Reads the token file (surrounding whitespace is not part of the token).
pub(crate) fn read_token(path: &std::path::Path) -> Result<String, BoxError> {
    let text = crate::bounded_file::read_text("--admin-token-file", path)?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(format!("--admin-token-file {}: the file is empty", path.display()).into());
    }
    Ok(token)
}

/// `None` when the request may go on, else the 401 to answer (counted).
fn refused(req: &HttpRequest, admin: &Admin) -> Option<HttpResponse> {
    let expected = admin.token.as_deref()?;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|p| same(p.as_bytes(), expected.as_bytes())) {
        return None;
    }
    admin.unauthorized.inc();
    warn!(admin.log, "admin request refused: missing or wrong token";
        "path" => req.path(), "peer" => req.peer_addr().map(|a| a.to_string()).unwrap_or_default());
    Some(
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({"error": "missing or wrong bearer token"})),
    )
}

/// Compares without stopping at the first difference (the time does not tell how much of a
/// guess was right).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

macro_rules! authorized {
    ($req:expr, $admin:expr) => {
        if let Some(refusal) = refused(&$req, &$admin) {
            return refusal;
        }
    };
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"live": true}))
}

async fn ready(admin: web::Data<Admin>) -> HttpResponse {
    let readiness = admin.handle.readiness();
    let body = json!({
        "ready": readiness.is_ready(),
        "paused": readiness.paused,
        "draining": readiness.draining,
        "stopping": readiness.stopping,
    });
    if readiness.is_ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(req: HttpRequest, admin: web::Data<Admin>) -> HttpResponse {
    authorized!(req, admin);
    crate::http::exposition(&admin.metrics)
}

#[derive(Deserialize)]
struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list(req: HttpRequest, admin: web::Data<Admin>, page: web::Query<Page>) -> HttpResponse {
    authorized!(req, admin);
    let limit = page.limit.unwrap_or(DEFAULT_PAGE).clamp(1, LARGEST_PAGE);
    let found = admin
        .handle
        .connections(page.after.map(ConnId), limit)
        .await;
    // A full page may have more after it: the next page starts after its last id.
    let next = match found.len() == limit {
        true => found.last().map(|d| d.id.0),
        false => None,
    };
    let connections: Vec<_> = found.iter().map(describe).collect();
    HttpResponse::Ok().json(json!({"connections": connections, "next_after": next}))
}

async fn one(req: HttpRequest, admin: web::Data<Admin>, id: web::Path<u64>) -> HttpResponse {
    authorized!(req, admin);
    match admin.handle.connection(ConnId(*id)).await {
        Some(found) => HttpResponse::Ok().json(describe(&found)),
        None => not_live(*id),
    }
}

#[derive(Deserialize)]
struct KillQuery {
    #[serde(default)]
    force: bool,
}

async fn kill(
    req: HttpRequest,
    admin: web::Data<Admin>,
    id: web::Path<u64>,
    query: web::Query<KillQuery>,
) -> HttpResponse {
    authorized!(req, admin);
    let mode = match query.force {
        true => CloseMode::Force,
        false => CloseMode::Graceful,
    };
    if admin.handle.kill(ConnId(*id), mode).await {
        info!(admin.log, "admin: closing connection"; "conn_id" => *id, "force" => query.force);
        HttpResponse::Accepted().json(json!({"id": *id, "closing": true, "force": query.force}))
    } else {
        not_live(*id)
    }
}

fn not_live(id: u64) -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "no live connection with this id", "id": id}))
}

async fn pause(req: HttpRequest, admin: web::Data<Admin>) -> HttpResponse {
    authorized!(req, admin);
    let changed = admin.handle.pause();
    info!(admin.log, "admin: accepting paused"; "changed" => changed);
    HttpResponse::Ok().json(json!({"paused": true, "changed": changed}))
}

async fn resume(req: HttpRequest, admin: web::Data<Admin>) -> HttpResponse {
    authorized!(req, admin);
    let changed = admin.handle.resume();
    info!(admin.log, "admin: accepting resumed"; "changed" => changed);
    HttpResponse::Ok().json(json!({"paused": false, "changed": changed}))
}

#[derive(Deserialize)]
struct DrainQuery {
    period: Option<String>,
    /// How long to go on accepting after readiness turns off (a polling balancer's lag).
    accept_for: Option<String>,
}

async fn drain(
    req: HttpRequest,
    admin: web::Data<Admin>,
    query: web::Query<DrainQuery>,
) -> HttpResponse {
    authorized!(req, admin);
    let period = match query.period.as_deref().map(parse_duration) {
        None => admin.settings.values.shutdown_grace,
        Some(Ok(period)) => period,
        Some(Err(e)) => {
            return HttpResponse::BadRequest().json(json!({"error": format!("period: {e}")}))
        }
    };
    let accept_for = match query.accept_for.as_deref().map(parse_duration) {
        None => Duration::ZERO,
        Some(Ok(accept_for)) => accept_for,
        Some(Err(e)) => {
            return HttpResponse::BadRequest().json(json!({"error": format!("accept_for: {e}")}))
        }
    };
    let log = admin.log.clone();
    let period_ms = period.as_millis() as u64;
    info!(log, "admin: draining"; "period_ms" => period_ms,
        "accept_for_ms" => accept_for.as_millis() as u64);
    // Not ready from this call on, before this answer; paused then too, or after
    // `accept_for`, and before the first connection is asked to close.
    let draining = admin.handle.drain_accepting_for(accept_for, period);
    actix_rt::spawn(async move {
        let asked = draining.await;
        info!(log, "admin: drain done"; "asked_to_close" => asked);
    });
    HttpResponse::Accepted().json(json!({"draining": true, "period_ms": period_ms}))
}

async fn reload_tls(req: HttpRequest, admin: web::Data<Admin>) -> HttpResponse {
    authorized!(req, admin);
    info!(admin.log, "reload requested"; "via" => "admin");
    // Reading and checking the files blocks: off the admin worker's thread.
    let admin = admin.into_inner();
    let done = web::block(move || reload::reload(&admin.settings, &admin.reloader, &admin.log));
    match done.await {
        Ok(true) => HttpResponse::Ok().json(json!({"reloaded": true})),
        Ok(false) => HttpResponse::InternalServerError()
            .json(json!({"reloaded": false, "error": "reload failed; see the log"})),
        Err(e) => HttpResponse::InternalServerError()
            .json(json!({"reloaded": false, "error": e.to_string()})),
    }
}

/// One connection as JSON: each TLS field only when known.
fn describe(d: &ConnDescription) -> serde_json::Value {
    let mut out = json!({
        "id": d.id.0,
        "peer": d.peer.to_string(),
        "worker": d.worker,
        "state": d.state,
        "age_ms": d.age.as_millis() as u64,
        "bytes_in": d.bytes_in,
        "bytes_out": d.bytes_out,
    });
    if let (Some(tls), Some(map)) = (&d.tls, out.as_object_mut()) {
        let mut put = |key: &str, value: Option<serde_json::Value>| {
            if let Some(value) = value {
                map.insert(key.to_string(), value);
            }
        };
        put("tls_version", tls.version.map(Into::into));
        put("cipher", tls.cipher_suite.map(Into::into));
        put("sni", tls.server_name.clone().map(Into::into));
        put("alpn", tls.alpn.clone().map(Into::into));
        put("resumed", tls.version.map(|_| tls.resumed.into()));
        if let Some(client) = &tls.client {
            put("client_cn", client.cn.clone().map(Into::into));
            put("client_serial", Some(client.serial.clone().into()));
        }
    }
    out
}

/// Starts the admin API of `server` on `addr` as the settings say, asking for `token` (read
/// from `--admin-token-file` by `prepare`) if there is one.
pub(crate) fn start_for(
    addr: SocketAddr,
    settings: &Settings,
    server: &tlsvisor_actors::Server,
    token: Option<String>,
    unauthorized: IntCounter,
    log: &Logger,
) -> Result<HttpListener, BoxError> {
    if token.is_none() && !addr.ip().is_loopback() {
        warn!(log, "the admin API listens beyond loopback without --admin-token-file: \
                    anyone who reaches it can close connections";
            "admin_listen" => %addr);
    }
    let tls_metrics = Box::new(crate::tls_metrics::TlsCollector::new(
        server.tls_reloader(),
    )?);
    let metrics = crate::metrics::registry(
        server.stats(),
        vec![tls_metrics, Box::new(unauthorized.clone())],
    )?;
    start(
        addr,
        Admin {
            handle: server.handle(),
            settings: settings.clone(),
            reloader: server.tls_reloader(),
            metrics,
            token,
            unauthorized,
            log: log.clone(),
        },
    )
}
