//! `Reader`: the child actor that reads decrypted bytes for its `Connection`.

use std::io;

use actix::prelude::*;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, ReadHalf};

use crate::connection::TlsStream;
use crate::fault::{FaultPoint, Faults};
use crate::messages::{Inbound, ReadOutcome, ReaderFinished, StopReader};

/// Reads the client's side of one TLS stream and hands each chunk to its parent `Connection`,
/// waiting for the parent to handle it before reading again (backpressure).
///
/// It ends in one of two ways, and owns its read half until then:
/// - the read side finishes (EOF, `close_notify`, an error): it sends `ReaderFinished` and stops;
/// - its parent stops and sends `StopReader`: it stops at once, whatever read was pending.
///
/// Stopping drops the read half; the socket closes once the parent's write half is dropped too.
pub struct Reader {
    half: Option<ReadHalf<TlsStream>>,
    inbound: Recipient<Inbound>,
    finished: Recipient<ReaderFinished>,
    buffer_size: usize,
    faults: Faults,
}

impl Reader {
    pub(crate) fn new(
        half: ReadHalf<TlsStream>,
        inbound: Recipient<Inbound>,
        finished: Recipient<ReaderFinished>,
        buffer_size: usize,
        faults: Faults,
    ) -> Self {
        Reader {
            half: Some(half),
            inbound,
            finished,
            buffer_size,
            faults,
        }
    }
}

/// Reads until the stream ends or the parent is gone.
async fn read_loop(
    mut half: ReadHalf<TlsStream>,
    inbound: Recipient<Inbound>,
    buffer_size: usize,
    faults: Faults,
) -> Option<ReadOutcome> {
    let mut buf = BytesMut::new();
    loop {
        if faults.is_on(FaultPoint::ReaderError) {
            return Some(ReadOutcome::Failed(io::Error::other(
                "injected reader error",
            )));
        }
        buf.reserve(buffer_size);
        match half.read_buf(&mut buf).await {
            // rustls reports a clean end (close_notify received) as a zero-length read…
            Ok(0) => return Some(ReadOutcome::PeerEof { close_notify: true }),
            Ok(_) => {
                if inbound.send(Inbound(buf.split().freeze())).await.is_err() {
                    // The parent is gone; its stop hook already owns the disposal.
                    return None;
                }
            }
            // …and a TCP FIN without close_notify as UnexpectedEof.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Some(ReadOutcome::PeerEof {
                    close_notify: false,
                })
            }
            Err(e) => return Some(ReadOutcome::Failed(e)),
        }
    }
}

impl Actor for Reader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(half) = self.half.take() else {
            ctx.stop();
            return;
        };
        let work = read_loop(
            half,
            self.inbound.clone(),
            self.buffer_size,
            self.faults.clone(),
        );
        ctx.spawn(work.into_actor(self).map(|outcome, act, ctx| {
            if let Some(outcome) = outcome {
                act.finished.do_send(ReaderFinished(outcome));
            }
            ctx.stop();
        }));
    }
}

impl Handler<StopReader> for Reader {
    type Result = ();

    fn handle(&mut self, _msg: StopReader, ctx: &mut Self::Context) {
        // Stopping skips the spawned read (actix does not poll items once stopping) and drops
        // it with the context, read half included.
        ctx.stop();
    }
}
