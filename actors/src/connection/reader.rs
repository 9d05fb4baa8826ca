//! `Reader`: a child actor that reads one side of a connection for its `Connection`.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Poll};

use actix::prelude::*;
use bytes::Bytes;
use futures::future::{self, Either};
use futures::FutureExt;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

use crate::connection::messages::{Inbound, ReadOutcome, ReaderFinished, Side};
use crate::fault::point::FaultPoint;
use crate::fault::set::Faults;

/// Reads one side of a connection and hands each chunk to its parent `Connection`, waiting for
/// the parent to handle it before reading again (backpressure).
///
/// It ends in one of two ways, and owns its read half until then:
/// - the read side finishes (EOF, `close_notify`, an error): it sends `ReaderFinished` and stops;
/// - its parent drops the [`ReaderHandle`]: it stops at once, whatever read was pending.
///
/// The second is ownership, not a message: the handle lives in the parent, so however the
/// parent goes away (its stop hook, a panic, its arbiter torn down, a hook that never ran) the
/// reader goes too, and a parked read cannot keep the socket open (Garnet's CLOSE-WAIT).
/// Stopping drops the read half; a socket closes once the parent's write half is dropped too.
///
/// What it reads with (the half, the parent's address, the parent's handle) lives in its read
/// loop, spawned as it is created, not in the actor: an idle connection's readers each pay one
/// copy of it, inside the loop's box, and the actor itself is one byte.
pub(crate) struct Reader {
    side: Side,
}

/// The parent's hold on a reader: dropping it stops the reader.
pub(crate) struct ReaderHandle {
    _alive: oneshot::Sender<()>,
}

/// What a reader's parent is: an actor that takes its chunks and its end.
pub(crate) trait ReaderParent:
    Actor<Context = Context<Self>> + Handler<Inbound> + Handler<ReaderFinished>
{
}

impl<P> ReaderParent for P where
    P: Actor<Context = Context<P>> + Handler<Inbound> + Handler<ReaderFinished>
{
}

impl Reader {
    /// Starts a reader of `half` on the current arbiter, reporting to `parent`; it lives until
    /// its side finishes or the returned handle is dropped.
    pub(crate) fn start_child<R: AsyncRead + Unpin + 'static, P: ReaderParent>(
        half: R,
        side: Side,
        parent: Addr<P>,
        buffer_size: usize,
        faults: Faults,
    ) -> ReaderHandle {
        let (alive, parent_gone) = oneshot::channel();
        Reader::create(move |ctx| {
            // Boxed and raced with a combinator rather than inside an `async` block with
            // `select!`: the block would keep the read loop twice (as a captured value and as
            // select!'s own copy), and every parked reader pays its future's size.
            let reading = Box::pin(read_loop(half, side, parent, buffer_size, faults));
            let work = future::select(reading, parent_gone).map(|first| match first {
                Either::Left((outcome, _)) => outcome,
                // The parent dropped its handle: it owns the disposal; drop the half now.
                Either::Right(_) => None,
            });
            ctx.spawn(
                fut::wrap_future::<_, Reader>(work).map(|outcome, act, ctx| {
                    if let Some((outcome, parent)) = outcome {
                        parent.do_send(ReaderFinished {
                            side: act.side,
                            outcome,
                        });
                    }
                    ctx.stop();
                }),
            );
            Reader { side }
        });
        ReaderHandle { _alive: alive }
    }
}

/// The smallest read, and the size an idle reader waits with.
const MIN_READ: usize = 1024;

/// Doubles the read size after a read that filled it (a stream is flowing), halves it after a
/// read that used less than a quarter (back to small for an idle connection).
fn next_read_size(want: usize, got: usize, max: usize) -> usize {
    if got >= want {
        (want * 2).min(max)
    } else if got < want / 4 {
        (want / 2).max(MIN_READ.min(max))
    } else {
        want
    }
}

thread_local! {
    /// One scratch buffer per worker thread, grown to the largest read asked for.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads one chunk of at most `want` bytes (empty at the end of the stream).
///
/// The read goes into the worker's scratch buffer within a single poll, and only what arrived
/// is copied out into a chunk of its own size: a reader waiting on a quiet connection holds no
/// buffer at all, however large its reads grew while the connection streamed (before, a
/// reader parked after streaming held a 64 KiB buffer, and an idle connection that once
/// streamed cost ~140 KiB instead of ~10 KiB).
async fn read_chunk<R: AsyncRead + Unpin>(half: &mut R, want: usize) -> io::Result<Bytes> {
    std::future::poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            // The borrow lasts one poll_read, which never reads through another reader on
            // this thread; a fresh buffer covers the case anyway rather than panic.
            let mut own = Vec::new();
            let mut borrowed = scratch.try_borrow_mut();
            let buffer = match borrowed.as_deref_mut() {
                Ok(scratch) => scratch,
                Err(_) => &mut own,
            };
            if buffer.len() < want {
                buffer.resize(want, 0);
            }
            let mut read = ReadBuf::new(&mut buffer[..want]);
            ready!(Pin::new(&mut *half).poll_read(cx, &mut read))?;
            Poll::Ready(Ok(Bytes::copy_from_slice(read.filled())))
        })
    })
    .await
}

/// Reads until the stream ends (the outcome, with the parent's address back to report it) or
/// the parent is gone.
async fn read_loop<R: AsyncRead + Unpin, P: ReaderParent>(
    mut half: R,
    side: Side,
    parent: Addr<P>,
    buffer_size: usize,
    faults: Faults,
) -> Option<(ReadOutcome, Addr<P>)> {
    let mut want = MIN_READ.min(buffer_size);
    loop {
        if side == Side::Client && faults.is_on(FaultPoint::ReaderError) {
            return Some((
                ReadOutcome::Failed(io::Error::other("injected reader error")),
                parent,
            ));
        }
        match read_chunk(&mut half, want).await {
            // A zero-length read is a clean end: TLS close_notify, or a plain TCP FIN…
            Ok(bytes) if bytes.is_empty() => {
                return Some((ReadOutcome::PeerEof { clean: true }, parent))
            }
            Ok(bytes) => {
                want = next_read_size(want, bytes.len(), buffer_size);
                // Boxed: the send future (actix's request, with its timer slot) is several
                // hundred bytes, and inline it would size every parked read loop, idle or not.
                if Box::pin(parent.send(Inbound { side, bytes }))
                    .await
                    .is_err()
                {
                    // The parent is gone; its stop hook already owns the disposal.
                    return None;
                }
            }
            // …while rustls reports a TCP FIN without close_notify as UnexpectedEof.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Some((ReadOutcome::PeerEof { clean: false }, parent))
            }
            Err(e) => return Some((ReadOutcome::Failed(e), parent)),
        }
    }
}

impl Actor for Reader {
    type Context = Context<Self>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_grows_while_full_and_shrinks_when_idle() {
        let max = 64 * 1024;
        let mut want = MIN_READ;
        for _ in 0..10 {
            want = next_read_size(want, want, max);
        }
        assert_eq!(want, max);
        for _ in 0..10 {
            want = next_read_size(want, 6, max);
        }
        assert_eq!(want, MIN_READ);
        assert_eq!(next_read_size(4096, 2048, max), 4096);
        assert_eq!(next_read_size(512, 512, 512), 512);
    }
}
