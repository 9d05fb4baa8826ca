//! The `passthrough` phase (issue 18): the client's TLS forwarded untouched, chosen by the SNI
//! of its ClientHello, to one TLS backend (a redis-server on its TLS port, not measured), by
//! `tlsvisor --protocol passthrough`, nginx's stream module (`ssl_preread on`, a `map` of
//! `$ssl_preread_server_name`) and haproxy (`mode tcp`, `tcp-request inspect-delay`,
//! `req.ssl_sni`). The figure is the front's own CPU per connection: a full handshake with the
//! backend through it, a PING, close_notify. Only when named: `TLSVISOR_BENCH_PHASES=passthrough`.

use crate::fronts;
use crate::handshake_rows;
use crate::report::Measure;
use crate::{start, start_peer, start_tlsvisor, stop};
use crate::{Env, Settings};

/// The fronts compared, in table order.
const SERVERS: [&str; 3] = ["tlsvisor", "nginx", "haproxy"];

const LINES: [(Measure, &str); 5] = [
    (
        Measure::FullHandshakeCpuUs,
        "full handshake + PING through the front: front CPU µs/connection",
    ),
    (
        Measure::FullHandshakeRate,
        "full handshakes/s (client-bound)",
    ),
    (
        Measure::ResumedHandshakeCpuUs,
        "resumed handshake + PING through the front: front CPU µs/connection",
    ),
    (Measure::ResumedShare, "share of handshakes resumed"),
    (
        Measure::ResumedHandshakeRate,
        "resumed handshakes/s (client-bound)",
    ),
];

pub(crate) fn run(env: &Env, s: &Settings, only: Option<&[String]>) -> Vec<String> {
    let servers = fronts::chosen(&SERVERS, only);
    let load_before = fronts::load_average();
    let backend = start(env, "redis-tls", 0);
    let upstream = format!("127.0.0.1:{}", backend.addr.port());
    let rows = fronts::measure(
        s,
        &servers,
        |name| match name {
            "tlsvisor" => start_tlsvisor(
                env,
                &["--protocol", "passthrough", "--upstream", &upstream],
                false,
            ),
            peer => start_peer(env, &format!("{peer}-preread"), backend.addr.port()),
        },
        |server| stop(env, server),
        |server, row| handshake_rows(env, s, server, row),
    );
    stop(env, backend);
    let mut out = vec![
        "Passthrough to a TLS redis-server (its CPU, the handshake's other end, not counted):"
            .to_string(),
        format!(
            "{} handshakes per figure, {} round(s); load average {load_before} before, {} after.",
            s.handshakes,
            s.rounds,
            fronts::load_average()
        ),
        String::new(),
    ];
    out.extend(fronts::table(&rows, &LINES));
    out
}
