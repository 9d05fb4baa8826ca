//! The soak: the release binary as a TLS-terminating proxy (`tlsvisor serve --protocol proxy`)
//! under a long mix of clean and hostile clients, with a SIGHUP every 10 s and an admin scrape
//! every second; at the end the server's books and its process are checked against what they
//! were after the warm-up. Not run in CI (it takes from ten minutes to hours):
//!
//! ```sh
//! cargo bench --bench soak                               # 1,000,000 connections
//! TLSVISOR_SOAK_DURATION=10m cargo bench --bench soak    # ten minutes
//! ```
//!
//! Needs nothing but cargo: the upstreams are the harness's own, and the certificates are made
//! for the run. It prints a report, writes it to `target/soak/`, and exits 1 if a check
//! failed. README.md ("Benchmarks") lists the settings; docs/benchmarks.md ("Soak") has the
//! figures and says what each check means.

// Clients bind their source with IP_BIND_ADDRESS_NO_PORT, and the harness signals tlsvisor
// and raises its own descriptor limit through libc, each call with its SAFETY comment.
#![allow(unsafe_code)]

mod mix;
#[path = "../peers/procfs.rs"]
mod procfs;
mod report;
mod run;
mod scrape;
mod upstream;

fn main() {
    let settings = run::Settings::from_env();
    let soak = run::soak(&settings);
    let text = report::render(&settings, &soak);
    println!("{text}");
    match report::save(&settings, &text) {
        Ok(path) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write the report: {e}"),
    }
    if !soak.checks.iter().all(|c| c.passed) {
        std::process::exit(1);
    }
}
