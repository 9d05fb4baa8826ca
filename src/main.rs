//! `tlsvisor`: the server binary. Its code is the `tlsvisor` library (`lib.rs`), so that its
//! parsers can be fuzzed; see README.md for how to run it and ARCHITECTURE.md for how it works.

use std::process::ExitCode;

fn main() -> ExitCode {
    tlsvisor::run()
}
