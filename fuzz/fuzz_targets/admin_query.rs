//! The admin API's paths and query strings (`GET /connections?limit=&after=`,
//! `GET /connections/{id}`, `DELETE /connections/{id}?force=`, `POST /drain?period=&accept_for=`
//! and the rest), sent over HTTP to a real server with its admin API on loopback, started once
//! per process as `serve` starts it, with one live connection for a drain to close.
//!
//! The first byte picks the endpoint and whether the bearer token is sent; the rest is the
//! path's tail and query, percent-encoded where HTTP would not carry it raw.
//!
//! Checked: no panic anywhere in the server (libFuzzer's panic hook aborts the process, on
//! any thread: a handler, the drain's task, a worker), an answer within 10 s to every request,
//! and a 401 to every request without the token.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use tlsvisor::fuzz_hooks::AdminFixture;

/// The endpoints, by the first byte's low bits (`/reload` is left out: it reads files).
const ENDPOINTS: [(&str, &str); 8] = [
    ("GET", "/connections?"),
    ("GET", "/connections/"),
    ("DELETE", "/connections/"),
    ("POST", "/drain?"),
    ("POST", "/pause?"),
    ("POST", "/resume?"),
    ("GET", "/metrics?"),
    ("GET", "/health/ready?"),
];

fn fixture() -> &'static Mutex<AdminFixture> {
    static FIXTURE: OnceLock<Mutex<AdminFixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let scratch =
            std::env::temp_dir().join(format!("tlsvisor-fuzz-admin-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).expect("a scratch directory");
        Mutex::new(AdminFixture::start(&scratch).expect("the admin fixture starts"))
    })
}

fuzz_target!(|data: &[u8]| {
    let [first, tail @ ..] = data else {
        return;
    };
    let (method, path) = ENDPOINTS[usize::from(first & 7)];
    let authorized = first & 8 == 0;
    let mut target = String::from(path);
    for &b in tail {
        // What may stand in a request target as it is; the rest percent-encoded, so that the
        // bytes reach the query parser and not the HTTP framing.
        if b.is_ascii_graphic() && b != b'#' {
            target.push(char::from(b));
        } else {
            target.push_str(&format!("%{b:02X}"));
        }
    }
    let token = if authorized {
        format!(
            "Authorization: Bearer {}\r\n",
            tlsvisor::fuzz_hooks::ADMIN_TOKEN
        )
    } else {
        String::new()
    };
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: fuzz\r\n{token}Content-Length: 0\r\n\r\n");
    let status = fixture().lock().unwrap().request(request.as_bytes());
    if !authorized && !path.starts_with("/health") {
        // 401 before any route or query is parsed (issue 17, finding 8); 400 only from
        // actix-http itself, for a request line it cannot parse at all.
        assert!(
            status.is_none_or(|s| s == 401 || s == 400),
            "{method} {target} without the token: {status:?}"
        );
    }
});
