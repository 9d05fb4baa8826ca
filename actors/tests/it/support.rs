//! Helpers shared by the modules of this test crate.

/// Connections waiting in the accept queue of the sockets listening on `port`: their TCP
/// handshake is done and nothing has accepted them yet, so none of them can have got through a
/// TLS handshake (a listening socket's `rx_queue` in `/proc/net/tcp` is its accept queue).
///
/// The positive sign that a client is held back at a limit or a pause, where waiting a while
/// and seeing it not served would pass on a slow machine without checking anything.
pub(crate) fn accept_queue(port: u16) -> usize {
    let mut queued = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(queues)) =
                (fields.get(1), fields.get(3), fields.get(4))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if *state != "0A" || local_port != Some(port) {
                continue;
            }
            let rx_queue = queues
                .split(':')
                .nth(1)
                .and_then(|hex| usize::from_str_radix(hex, 16).ok());
            queued += rx_queue.expect("a tx_queue:rx_queue field");
        }
    }
    queued
}

/// Waits (up to `within`, without blocking an actix or tokio thread) until `n` connections
/// wait in the accept queue on `port`.
pub(crate) async fn accept_queue_reaches(port: u16, n: usize, within: std::time::Duration) {
    let reached = tokio::time::timeout(within, async {
        while accept_queue(port) != n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{n} connections should wait in the accept queue of port {port}; {} do",
        accept_queue(port)
    );
}
