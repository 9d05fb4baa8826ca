//! The `reencrypt` phase (issue 18): the client's TLS terminated and re-encrypted to a TLS
//! upstream, a redis-server on its TLS port (`--tls-port`, `--port 0`), by tlsvisor
//! (`--upstream tls://… --upstream-ca …`), stunnel (a server service handing to a `client = yes`
//! service over loopback, in one process: stunnel's way of re-encrypting) and haproxy (`server
//! … ssl verify required ca-file …`). Figures: server CPU per full handshake + PING (the
//! upstream handshake included: each server may resume its session to redis, as it ships) and
//! per redis-benchmark request. Only when named: `TLSVISOR_BENCH_PHASES=reencrypt`.

use crate::fronts;
use crate::report::Measure;
use crate::{handshake_rows, redis_benchmark_rows, start, start_peer, start_tlsvisor, stop};
use crate::{Env, Settings};

/// The fronts compared, in table order.
const SERVERS: [&str; 3] = ["tlsvisor", "stunnel", "haproxy"];

const LINES: [(Measure, &str); 9] = [
    (
        Measure::FullHandshakeCpuUs,
        "full TLS 1.3 handshake + PING, re-encrypted: server CPU µs",
    ),
    (
        Measure::FullHandshakeRate,
        "full handshakes/s (client-bound)",
    ),
    (
        Measure::ResumedHandshakeCpuUs,
        "resumed handshake (ticket) + PING: server CPU µs",
    ),
    (
        Measure::ResumedHandshakeRate,
        "resumed handshakes/s (client-bound)",
    ),
    (Measure::ResumedShare, "share of client handshakes resumed"),
    (
        Measure::RequestCpuUs,
        "redis-benchmark -c 50: server CPU µs/request",
    ),
    (Measure::RequestRate, "redis-benchmark -c 50: requests/s"),
    (
        Measure::PipelinedRequestCpuUs,
        "redis-benchmark -c 50 -P 16: server CPU µs/request",
    ),
    (
        Measure::PipelinedRequestRate,
        "redis-benchmark -c 50 -P 16: requests/s",
    ),
];

pub(crate) fn run(env: &Env, s: &Settings, only: Option<&[String]>) -> Vec<String> {
    let servers = fronts::chosen(&SERVERS, only);
    let load_before = fronts::load_average();
    let redis = start(env, "redis-tls", 0);
    let upstream = format!("tls://127.0.0.1:{}", redis.addr.port());
    let ca = env.ca.to_str().unwrap();
    let rows = fronts::measure(
        s,
        &servers,
        |name| match name {
            "tlsvisor" => start_tlsvisor(
                env,
                &[
                    "--protocol",
                    "proxy",
                    "--upstream",
                    &upstream,
                    "--upstream-ca",
                    ca,
                ],
                true,
            ),
            peer => start_peer(env, &format!("{peer}-reencrypt"), redis.addr.port()),
        },
        |server| stop(env, server),
        |server, row| {
            handshake_rows(env, s, server, row);
            redis_benchmark_rows(env, s, server, row);
        },
    );
    stop(env, redis);
    let mut out = vec![
        "Re-encryption to a TLS redis-server (redis-server --tls-port, --tls-auth-clients no, \
         not measured):"
            .to_string(),
        format!(
            "{} handshakes, {} requests per redis-benchmark test (set, get), {} round(s); \
             load average {load_before} before, {} after.",
            s.handshakes,
            s.requests,
            s.rounds,
            fronts::load_average()
        ),
        String::new(),
    ];
    out.extend(fronts::table(&rows, &LINES));
    out
}
