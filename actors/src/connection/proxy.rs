//! Forwarding a proxied connection's bytes: each chunk read from one side is written to the
//! other before that side's reader reads again, so each direction has one chunk in flight and
//! a side that does not read stops the other from being read. What a finished side means for
//! the connection (the half-close rules) is in `machine.rs`.

use actix::prelude::*;
use tokio::io::AsyncWriteExt;

use crate::connection::actor::Connection;
use crate::connection::messages::{Inbound, Side};
use crate::connection::phase::{Open, OpenService, Phase};
use crate::connection::writer::with_limit;

impl Connection {
    /// Forwards a chunk to the other side; resolves once it is written.
    pub(super) fn forward(&mut self, msg: Inbound) -> ResponseActFuture<Self, ()> {
        match msg.side {
            Side::Upstream => self.write_to_client(msg.bytes, |act, bytes, written| {
                if let (true, Some(link)) = (written, act.phase.upstream()) {
                    link.count_proxied(Side::Upstream, bytes.len());
                }
            }),
            Side::Client => self.write_to_upstream(msg.bytes),
        }
    }

    /// Writes a chunk of the client's to the upstream; the state machine gets the write half
    /// back once it is written.
    fn write_to_upstream(&mut self, bytes: bytes::Bytes) -> ResponseActFuture<Self, ()> {
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
        let stall_limit = self.env.config.idle_timeout;
        let write = async move {
            let result = with_limit(stall_limit, half.write_all(&bytes)).await;
            (half, result.map(|()| bytes.len()))
        };
        Box::pin(
            write
                .into_actor(self)
                .map(|(half, result), act, ctx| act.upstream_written(half, result, ctx)),
        )
    }
}
