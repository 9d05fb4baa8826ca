//! The session-ticket key file (`--ticket-key-file`): 48-byte keys in hex, one a line, with
//! comments and blank lines. Checked: no panic, and an error never quotes key material (the
//! keys are secrets): no run of 16 or more hex digits of the input is in the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsvisor_actors::fuzz_hooks::ticket_keys;

/// The shortest run of hex digits counted as key material.
const SECRET_RUN: usize = 16;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = ticket_keys(data) {
        let message = e.to_string();
        let text = String::from_utf8_lossy(data);
        for run in text.split(|c: char| !c.is_ascii_hexdigit()) {
            if run.len() >= SECRET_RUN {
                assert!(
                    !message.contains(&run[..SECRET_RUN]),
                    "the error quotes key material: {message}"
                );
            }
        }
    }
});
