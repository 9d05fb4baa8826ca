//! The admin API (`--admin-listen`): actix-web on the same actix system as the supervisor
//! (served as `http.rs` says), steering it through a `ServerHandle` (every question goes to
//! the registries by message, with a deadline).
//!
//! The token is checked first, before routing and before a path or query is parsed: an
//! unauthenticated request learns nothing (not whether a path exists, not how its parameters
//! are parsed) and gets a 401, counted, whatever it asked for. Only the two health probes are
//! open, for load balancers and orchestrators that hold no token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use prometheus::{IntCounter, Registry};
use serde::Deserialize;
use serde_json::json;
use slog::{info, warn, Logger};
use tlsvisor_actors::{
    CloseMode, ConnDescription, ConnId, FaultRuleError, FaultRuleId, Faults, HandshakeFailureClass,
    LogThrottle, ServerHandle, Stats, RECENT_FAILURES,
};

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
    /// The server's books (the failed handshakes of `/handshake-failures`).
    pub stats: Arc<Stats>,
    pub settings: Settings,
    /// `POST /reload`'s (shared with SIGHUP's: one reload at a time).
    pub reloads: reload::Reloads,
    pub metrics: Registry,
    /// `None`: no token asked for (keep the listener on loopback then).
    pub token: Option<String>,
    pub unauthorized: IntCounter,
    /// The server's fault set, with `--runtime-faults` (`/faults` answers 404 without).
    pub faults: Option<Faults>,
    /// One warning line per second at most for refused requests.
    pub refusals_logged: LogThrottle,
    pub log: Logger,
}

/// The paths open without the token: the probes of load balancers and orchestrators.
const OPEN_PATHS: [&str; 2] = ["/health/live", "/health/ready"];

/// The longest `POST /drain` period or `accept_for`, as for every other duration the binary
/// takes: a longer one is a mistake (a unit read wrongly).
const LONGEST_DRAIN: Duration = tlsvisor_actors::ServerConfig::MAX_TIMEOUT;

/// Serves the admin API on `addr` (on `inherited` if that is a socket for it) on one actix-web
/// worker of the current system.
pub(crate) fn start(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
    admin: Admin,
) -> Result<HttpListener, BoxError> {
    let log = admin.log.clone();
    let data = web::Data::new(admin);
    let listener = crate::http::start(addr, inherited, "the admin API", data, |routes| {
        // One scope over every path, so that the token is checked before routing: a path
        // that matches no route, or whose id or query does not parse, is still refused first.
        routes.service(
            web::scope("")
                .wrap_fn(|request, service| {
                    use actix_web::dev::Service;
                    let refusal = request
                        .app_data::<web::Data<Admin>>()
                        .and_then(|admin| refused(request.request(), admin));
                    let outcome = match refusal {
                        Some(refusal) => Err(request.into_response(refusal)),
                        None => Ok(service.call(request)),
                    };
                    async move {
                        match outcome {
                            Err(refused) => Ok(refused),
                            Ok(call) => call.await,
                        }
                    }
                })
                .configure(routes_behind_the_token),
        );
    })?;
    info!(log, "admin listening"; "admin_listen" => %listener.addr);
    Ok(listener)
}

/// The admin API's routes (the token was checked before any of them is reached).
fn routes_behind_the_token(routes: &mut web::ServiceConfig) {
    routes
        .route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .route("/connections", web::get().to(list))
        .route("/handshake-failures", web::get().to(handshake_failures))
        .route("/connections/{id}", web::get().to(one))
        .route("/connections/{id}", web::delete().to(kill))
        .route("/pause", web::post().to(pause))
        .route("/resume", web::post().to(resume))
        .route("/drain", web::post().to(drain))
        .route("/reload", web::post().to(reload_tls))
        .route("/revalidate", web::post().to(revalidate))
        .route("/faults", web::get().to(list_faults))
        .route("/faults", web::post().to(add_fault))
        .route("/faults/{id}", web::delete().to(remove_fault))
        // The only bodies read are `POST /faults`'s: a few hundred bytes (413 past this).
        .app_data(web::PayloadConfig::new(crate::fault_rules::MAX_RULE_BODY));
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

/// `None` when the request may go on, else the 401 to answer (counted, and logged at most
/// once a second with how many were left out: a client can send them as fast as it likes).
fn refused(req: &HttpRequest, admin: &Admin) -> Option<HttpResponse> {
    let expected = admin.token.as_deref()?;
    if OPEN_PATHS.contains(&req.path()) {
        return None;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if presented.is_some_and(|p| same(p.as_bytes(), expected.as_bytes())) {
        return None;
    }
    admin.unauthorized.inc();
    if let Some(suppressed) = admin.refusals_logged.admit() {
        // The path as sent, cut short: it is the client's, of any length.
        let path: String = req.path().chars().take(128).collect();
        warn!(admin.log, "admin request refused: missing or wrong token";
            "path" => path,
            "peer" => req.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            "suppressed_since_last" => suppressed);
    }
    Some(
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({"error": "missing or wrong bearer token"})),
    )
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is matched without
/// regard to case (RFC 7235 section 2.1: `bearer`, `BEARER`), and the token is trimmed.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Compares without stopping at the first difference (the time does not tell how much of a
/// guess was right).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
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

async fn metrics(admin: web::Data<Admin>) -> HttpResponse {
    crate::http::exposition(&admin.metrics)
}

#[derive(Deserialize)]
struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list(admin: web::Data<Admin>, page: web::Query<Page>) -> HttpResponse {
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

#[derive(Deserialize)]
struct FailureFilter {
    class: Option<String>,
    peer: Option<String>,
    sni: Option<String>,
    limit: Option<usize>,
}

/// `GET /handshake-failures`: the most recent failed handshakes, newest first, filtered by
/// class, peer (an IP address, or an address with its port) and SNI (any case).
async fn handshake_failures(
    admin: web::Data<Admin>,
    filter: web::Query<FailureFilter>,
) -> HttpResponse {
    let class = match filter
        .class
        .as_deref()
        .map(HandshakeFailureClass::from_name)
    {
        Some(None) => {
            let known: Vec<_> = HandshakeFailureClass::ALL
                .iter()
                .map(|c| c.as_str())
                .collect();
            return HttpResponse::BadRequest().json(json!({
                "error": format!("unknown class; the classes are {}", known.join(", ")),
            }));
        }
        Some(Some(class)) => Some(class),
        None => None,
    };
    let limit = filter
        .limit
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, RECENT_FAILURES);
    let peer_matches = |peer: SocketAddr| match filter.peer.as_deref() {
        None => true,
        Some(wanted) => peer.ip().to_string() == wanted || peer.to_string() == wanted,
    };
    let sni_matches = |sni: Option<&str>| match filter.sni.as_deref() {
        None => true,
        Some(wanted) => sni.is_some_and(|sni| sni.eq_ignore_ascii_case(wanted)),
    };
    let failures: Vec<_> = admin
        .stats
        .recent_handshake_failures()
        .into_iter()
        .filter(|f| class.map_or(true, |c| f.class == c))
        .filter(|f| peer_matches(f.peer) && sni_matches(f.sni.as_deref()))
        .take(limit)
        .map(|f| {
            json!({
                "at_unix_ms": f.at_unix_ms,
                "conn_id": f.conn_id.0,
                "peer": f.peer.to_string(),
                "class": f.class.as_str(),
                "sni": f.sni,
                "cipher_suites": f.cipher_suites,
                "groups": f.groups,
                "alpn": f.alpn,
                "alert": f.alert,
                "client_subject": f.client_subject,
                "client_issuer": f.client_issuer,
                "error": f.error,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "handshake_failures": failures }))
}

async fn one(admin: web::Data<Admin>, id: web::Path<u64>) -> HttpResponse {
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
    admin: web::Data<Admin>,
    id: web::Path<u64>,
    query: web::Query<KillQuery>,
) -> HttpResponse {
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

async fn pause(admin: web::Data<Admin>) -> HttpResponse {
    let changed = admin.handle.pause();
    info!(admin.log, "admin: accepting paused"; "changed" => changed);
    HttpResponse::Ok().json(json!({"paused": true, "changed": changed}))
}

async fn resume(admin: web::Data<Admin>) -> HttpResponse {
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

async fn drain(admin: web::Data<Admin>, query: web::Query<DrainQuery>) -> HttpResponse {
    let period = match drain_duration("period", query.period.as_deref()) {
        Ok(period) => period.unwrap_or(admin.settings.values.shutdown_grace),
        Err(refusal) => return *refusal,
    };
    let accept_for = match drain_duration("accept_for", query.accept_for.as_deref()) {
        Ok(accept_for) => accept_for.unwrap_or(Duration::ZERO),
        Err(refusal) => return *refusal,
    };
    let log = admin.log.clone();
    // At most a day each (checked above, and `--shutdown-grace` likewise): no wrap.
    let period_ms = millis(period);
    info!(log, "admin: draining"; "period_ms" => period_ms,
        "accept_for_ms" => millis(accept_for));
    // Not ready from this call on, before this answer; paused then too, or after
    // `accept_for`, and before the first connection is asked to close.
    let draining = admin.handle.drain_accepting_for(accept_for, period);
    actix_rt::spawn(async move {
        let asked = draining.await;
        info!(log, "admin: drain done"; "asked_to_close" => asked);
    });
    HttpResponse::Accepted().json(json!({"draining": true, "period_ms": period_ms}))
}

/// A `POST /drain` duration parameter: absent, or one that parses and is at most
/// [`LONGEST_DRAIN`]; else the 400 to answer.
fn drain_duration(name: &str, text: Option<&str>) -> Result<Option<Duration>, Box<HttpResponse>> {
    let Some(text) = text else {
        return Ok(None);
    };
    let refuse = |why: String| Box::new(HttpResponse::BadRequest().json(json!({"error": why})));
    match parse_duration(text) {
        Ok(duration) if duration <= LONGEST_DRAIN => Ok(Some(duration)),
        Ok(_) => Err(refuse(format!("{name}: at most 24h"))),
        Err(e) => Err(refuse(format!("{name}: {e}"))),
    }
}

/// Milliseconds, saturating (a `Duration` holds more than `u64` milliseconds).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn reload_tls(admin: web::Data<Admin>) -> HttpResponse {
    info!(admin.log, "reload requested"; "via" => "admin");
    // The files are read on a thread of their own, with a deadline (`reload::Reloads`).
    match admin.reloads.reload().await {
        Ok(()) => HttpResponse::Ok().json(json!({"reloaded": true})),
        Err(e) => {
            let body = json!({"reloaded": false, "error": e.to_string()});
            match e {
                reload::ReloadError::Busy => HttpResponse::Conflict().json(body),
                reload::ReloadError::TimedOut => HttpResponse::GatewayTimeout().json(body),
                reload::ReloadError::Refused(_) => HttpResponse::InternalServerError().json(body),
            }
        }
    }
}

/// The answer to `/faults` on a server without `--runtime-faults`.
fn faults_off() -> HttpResponse {
    HttpResponse::NotFound()
        .json(json!({"error": "runtime faults are off (start with --runtime-faults)"}))
}

/// `GET /faults`: the installed rules, with how often each fired.
async fn list_faults(admin: web::Data<Admin>) -> HttpResponse {
    let Some(faults) = &admin.faults else {
        return faults_off();
    };
    let rules: Vec<_> = faults
        .rules()
        .iter()
        .map(crate::fault_rules::show)
        .collect();
    HttpResponse::Ok().json(json!({ "faults": rules }))
}

/// `POST /faults`: installs the rule the JSON body describes; answers its id.
async fn add_fault(admin: web::Data<Admin>, body: web::Bytes) -> HttpResponse {
    let Some(faults) = &admin.faults else {
        return faults_off();
    };
    let rule = match crate::fault_rules::parse(&body) {
        Ok(rule) => rule,
        Err(why) => return HttpResponse::BadRequest().json(json!({ "error": why })),
    };
    let action = rule.action.name();
    match faults.install(rule) {
        Ok(id) => {
            warn!(admin.log, "admin: fault rule installed"; "fault_id" => id.0, "action" => action);
            HttpResponse::Created().json(json!({ "id": id.0 }))
        }
        Err(e @ FaultRuleError::TooMany) => {
            HttpResponse::Conflict().json(json!({ "error": e.to_string() }))
        }
        Err(e) => HttpResponse::BadRequest().json(json!({ "error": e.to_string() })),
    }
}

/// `DELETE /faults/{id}`: removes a rule (connections it hit keep what it did to them).
async fn remove_fault(admin: web::Data<Admin>, id: web::Path<u64>) -> HttpResponse {
    let Some(faults) = &admin.faults else {
        return faults_off();
    };
    if faults.remove(FaultRuleId(*id)) {
        info!(admin.log, "admin: fault rule removed"; "fault_id" => *id);
        HttpResponse::Ok().json(json!({ "id": *id, "removed": true }))
    } else {
        HttpResponse::NotFound().json(json!({ "error": "no fault rule with this id", "id": *id }))
    }
}

/// `POST /revalidate`: a revalidation pass now, against the client-certificate policy in use
/// (what a reload that changes it runs by itself); answers its counts. 409 with
/// `--revalidate-live off` (connections keep no chain to check).
async fn revalidate(admin: web::Data<Admin>) -> HttpResponse {
    info!(admin.log, "revalidation requested"; "via" => "admin");
    match admin.handle.revalidate().await {
        Some(report) => HttpResponse::Ok().json(json!({
            "kept": report.kept,
            "closed": report.closed,
            "duration_ms": report.elapsed.as_secs_f64() * 1000.0,
            "complete": report.complete,
        })),
        None => HttpResponse::Conflict().json(json!({
            "error": "live revalidation is off (--revalidate-live off)",
        })),
    }
}

/// One connection as JSON: each TLS field only when known.
fn describe(d: &ConnDescription) -> serde_json::Value {
    let mut out = json!({
        "id": d.id.0,
        // A client of a unix listener has no address: it shows as `unix`.
        "peer": if d.unix { "unix".to_string() } else { d.peer.to_string() },
        "worker": d.worker,
        "state": d.state,
        "protocol": d.protocol,
        "age_ms": d.age.as_millis() as u64,
        "bytes_in": d.bytes_in,
        "bytes_out": d.bytes_out,
    });
    if let (Some(service), Some(map)) = (&d.service, out.as_object_mut()) {
        map.insert("service".to_string(), service.clone().into());
    }
    if let (Some(tls), Some(map)) = (&d.tls, out.as_object_mut()) {
        let mut put = |key: &str, value: Option<serde_json::Value>| {
            if let Some(value) = value {
                map.insert(key.to_string(), value);
            }
        };
        put("tls_version", tls.version.map(Into::into));
        put("cipher", tls.cipher_suite.map(Into::into));
        put("kx_group", tls.kx_group.map(Into::into));
        put("sni", tls.server_name.clone().map(Into::into));
        put("alpn", tls.alpn.clone().map(Into::into));
        put("resumed", tls.version.map(|_| tls.resumed.into()));
        if let Some(client) = &tls.client {
            put("client_cn", client.cn.clone().map(Into::into));
            put("client_serial", Some(client.serial.clone().into()));
        }
    }
    if let (Some(tls), Some(map)) = (&d.upstream_tls, out.as_object_mut()) {
        map.insert(
            "upstream_tls".to_string(),
            json!({
                "tls_version": tls.version,
                "cipher": tls.cipher_suite,
                "kx_group": tls.kx_group,
                "alpn": tls.alpn,
                "resumed": tls.resumed,
            }),
        );
    }
    out
}

/// Starts the admin API of `server` on `addr` as the settings say, asking for `token` (read
/// from `--admin-token-file` by `prepare`) if there is one.
pub(crate) fn start_for(
    (addr, inherited): (SocketAddr, Option<std::net::TcpListener>),
    settings: &Settings,
    server: &tlsvisor_actors::Server,
    token: Option<String>,
    reloads: reload::Reloads,
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
        inherited,
        Admin {
            handle: server.handle(),
            stats: server.stats(),
            settings: settings.clone(),
            reloads,
            metrics,
            token,
            unauthorized,
            faults: settings
                .values
                .runtime_faults
                .then(|| server.faults().clone()),
            refusals_logged: LogThrottle::new(),
            log: log.clone(),
        },
    )
}
