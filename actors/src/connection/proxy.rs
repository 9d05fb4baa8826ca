//! Forwarding a proxied connection's bytes: each chunk read from one side is written to the
//! other before that side's reader reads again, so each direction has one chunk in flight and
//! a side that does not read stops the other from being read. While such a write is stalled,
//! the socket the chunk came from is watched for a reset (nothing reads it meanwhile). What a
//! finished side means for the connection (the half-close rules) is in `machine.rs`.

use actix::prelude::*;
use tokio::io::AsyncWriteExt;

use crate::connection::actor::Connection;
use crate::connection::messages::{Inbound, Side};
use crate::connection::phase::{Open, OpenService, Phase};
use crate::connection::writer::watching;

impl Connection {
    /// Forwards a chunk to the other side; resolves once it is written.
    pub(super) fn forward(&mut self, msg: Inbound) -> ResponseActFuture<Self, ()> {
        match msg.side {
            Side::Upstream => {
                let Some(link) = self.phase.proxying_upstream() else {
                    return Box::pin(fut::ready(()));
                };
                let upstream = link.watch.clone().failed();
                self.write_to_client(msg.bytes, upstream, |act, bytes, written| {
                    if let (true, Some(link)) = (written, act.phase.upstream()) {
                        link.count_proxied(Side::Upstream, bytes.len());
                    }
                })
            }
            Side::Client => self.write_to_upstream(msg.bytes),
        }
    }

    /// Writes a chunk of the client's to the upstream, unless the client's socket fails
    /// first; the state machine gets the write half back once it is over.
    fn write_to_upstream(&mut self, bytes: bytes::Bytes) -> ResponseActFuture<Self, ()> {
        let pause = self.fault_pause(bytes.len(), false);
        let Phase::Open(Open {
            service: OpenService::Proxy(proxying),
            ..
        }) = &mut self.phase
        else {
            return Box::pin(fut::ready(()));
        };
        let Some(mut half) = proxying.upstream.writer.take() else {
            return Box::pin(fut::ready(()));
        };
        let client = proxying.client.clone();
        let stall_limit = self.idle_timeout();
        let write = async move {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            // Flushed: a TLS upstream's rustls may hold the last record of a write otherwise.
            let write = async {
                half.write_all(&bytes).await?;
                half.flush().await
            };
            let outcome = watching(stall_limit, write, client.failed()).await;
            (half, outcome.map(|written| written.map(|()| bytes.len())))
        };
        Box::pin(
            write
                .into_actor(self)
                .map(|(half, outcome), act, ctx| act.upstream_written(half, outcome, ctx)),
        )
    }
}
