//! A libp2p stream over one WebRTC data channel.
//!
//! Each stream has a small pump task that drains its data channel into a bounded buffer and
//! answers flags at once (`FIN` with `FIN_ACK`), so a remote's `close` does not wait for
//! this side's application to read. Writes go straight to the data channel from the
//! writer's task, so webrtc-rs's send buffer limit applies back-pressure to the writer.

mod pump;
mod reopen;
mod reuse;
pub(crate) mod state;

pub(crate) use reuse::ReuseGuard;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite};

use super::framing::{self, Flag};
use crate::rtc::{Channel, Peer};
use crate::slots::Slot;
use crate::Error;
use state::{State, WriteHalf};

/// What all streams of a connection share: limits and the [`ReuseGuard`].
#[derive(Debug)]
pub(crate) struct StreamContext {
    pub(crate) max_frame_size: usize,
    pub(crate) max_payload: usize,
    pub(crate) receive_buffer: usize,
    pub(crate) fin_ack_timeout: Duration,
    pub(crate) open_timeout: Duration,
    pub(crate) reuse: ReuseGuard,
}

/// What the stream and its pump share.
struct Shared {
    dc: Channel,
    state: State,
    /// The channel is open (or gone): writes may start.
    opened: bool,
    /// Nothing was sent or received yet.
    pristine: bool,
    read_queue: VecDeque<Bytes>,
    read_queued: usize,
    /// A malformed frame reset the stream; the reader gets `InvalidData` once.
    malformed: Option<String>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Woken when the reader drains the buffer below the limit.
    pump_waker: Option<Waker>,
    /// The connection, waiting to hand out an inbound stream (see [`Stream::poll_surface`]).
    surface_waker: Option<Waker>,
    /// When our `FIN` went out, for a round-trip sample when its `FIN_ACK` arrives.
    fin_sent_at: Option<Instant>,
}

impl Shared {
    fn wake(&mut self) {
        if let Some(w) = self.surface_waker.take() {
            w.wake();
        }
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// Work the pump does for the stream, in order.
enum ControlOp {
    /// Reset the stream: send `RESET_STREAM` (if the stream is not finished already).
    Reset,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding this lock leaves plain data behind; keep going.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A libp2p stream: one in-band data channel carrying framed messages.
///
/// Reads and writes are plain bytes; framing, half-close (`FIN`/`FIN_ACK`), `STOP_SENDING` and
/// resets follow the libp2p WebRTC spec. `close` completes when the remote acknowledged the
/// `FIN` (or after [`crate::Config::fin_ack_timeout`]). Dropping a stream that is not closed
/// both ways resets it.
pub struct Stream {
    shared: Arc<Mutex<Shared>>,
    ctrl: mpsc::UnboundedSender<ControlOp>,
    send_fut: Option<BoxFuture<'static, Result<(), Error>>>,
    fin_ack_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set when `close` starts: the queued data and the `FIN` must reach the data channel
    /// by then, or the stream is reset.
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    ctx: Arc<StreamContext>,
    outbound: bool,
    _slot: Slot,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = lock(&self.shared);
        f.debug_struct("Stream")
            .field("channel", &shared.dc.id())
            .field("outbound", &self.outbound)
            .field("state", &shared.state)
            .field("read_queued", &shared.read_queued)
            .finish()
    }
}

impl Stream {
    /// Wraps `dc` and starts its pump. `peer` is given for an outbound stream (`None`:
    /// inbound): the pump replaces a channel that died unused through it.
    pub(crate) fn new(
        dc: Channel,
        peer: Option<Peer>,
        ctx: Arc<StreamContext>,
        slot: Slot,
        handle: &tokio::runtime::Handle,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            dc: dc.clone(),
            state: State::new(),
            opened: false,
            pristine: true,
            read_queue: VecDeque::new(),
            read_queued: 0,
            malformed: None,
            read_waker: None,
            write_waker: None,
            pump_waker: None,
            surface_waker: None,
            fin_sent_at: None,
        }));
        let (ctrl, ctrl_rx) = mpsc::unbounded();
        let outbound = peer.is_some();
        handle.spawn(pump::Pump::new(dc, shared.clone(), ctrl_rx, ctx.clone(), peer).run());
        Self {
            shared,
            ctrl,
            send_fut: None,
            fin_ack_timer: None,
            close_deadline: None,
            ctx,
            outbound,
            _slot: slot,
        }
    }

    /// For an inbound stream not yet handed out: `Ready(true)` once something arrived,
    /// `Ready(false)` if the channel died before carrying anything (then it is dropped
    /// silently: see [`pump::Pump`] for why such channels exist).
    pub(crate) fn poll_surface(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut shared = lock(&self.shared);
        if !shared.pristine {
            Poll::Ready(true)
        } else if shared.state.read_end().is_some() {
            Poll::Ready(false)
        } else {
            shared.surface_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Completes the in-flight send, if any.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(fut) = self.send_fut.as_mut() {
            let result = ready!(fut.as_mut().poll(cx));
            self.send_fut = None;
            if let Err(e) = result {
                // The channel is gone: report it the way the state machine sees it.
                let mut shared = lock(&self.shared);
                tracing::trace!(channel = %shared.dc.id(), "send failed: {e}");
                shared.state.on_channel_closed();
                let err = shared.state.check_write().err();
                return Poll::Ready(Err(err.unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Waits until the channel is open and the previous send completed.
    fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut shared = lock(&self.shared);
            shared.state.check_write()?;
            if !shared.opened {
                shared.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.poll_send(cx)
    }

    fn start_send(&mut self, shared: &mut Shared, frame: BytesMut) {
        shared.pristine = false;
        self.send_fut = Some(shared.dc.send(frame));
    }
}

impl Stream {
    /// Polls `step` of a `close`; if it is still pending once the close deadline passed (the
    /// remote stopped acknowledging, so the send buffer never drains), resets the stream and
    /// fails with `TimedOut`: the data still queued may not arrive.
    fn poll_or_give_up(
        &mut self,
        step: fn(&mut Self, &mut Context<'_>) -> Poll<io::Result<()>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(r) = step(self, cx) {
            return Poll::Ready(r);
        }
        let expired = self
            .close_deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        tracing::debug!("close timed out with data still queued; resetting the stream");
        self.send_fut = None;
        lock(&self.shared).state.reset();
        let _ = self.ctrl.unbounded_send(ControlOp::Reset);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the remote did not take the queued data before the close timeout",
        )))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Drive a pending write, so a writer awaiting the response without flushing still
        // makes progress.
        if this.send_fut.is_some() {
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                tracing::trace!("write failed: {e}");
            }
        }
        let mut shared = lock(&this.shared);
        if let Some(front) = shared.read_queue.front_mut() {
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                shared.read_queue.pop_front();
            }
            let was_full = shared.read_queued >= this.ctx.receive_buffer;
            shared.read_queued -= n;
            if was_full && shared.read_queued < this.ctx.receive_buffer {
                if let Some(w) = shared.pump_waker.take() {
                    w.wake();
                }
            }
            return Poll::Ready(Ok(n));
        }
        if let Some(reason) = shared.malformed.take() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, reason)));
        }
        match shared.state.read_end() {
            Some(end) => Poll::Ready(end.map(|()| 0)),
            None => {
                shared.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_writable(cx))?;
        let shared_arc = this.shared.clone();
        let mut shared = lock(&shared_arc);
        // The remote may have stopped or reset the stream meanwhile.
        shared.state.check_write()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(this.ctx.max_payload);
        this.start_send(&mut shared, framing::encode(None, &buf[..n]));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let timeout = this.ctx.fin_ack_timeout;
        this.close_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        loop {
            let write = lock(&this.shared).state.write;
            match write {
                WriteHalf::Open => {
                    ready!(this.poll_or_give_up(Self::poll_writable, cx))?;
                    let shared_arc = this.shared.clone();
                    let mut shared = lock(&shared_arc);
                    if shared.state.start_close() {
                        shared.fin_sent_at = Some(Instant::now());
                        this.start_send(&mut shared, framing::encode(Some(Flag::Fin), &[]));
                        this.fin_ack_timer =
                            Some(Box::pin(tokio::time::sleep(this.ctx.fin_ack_timeout)));
                    }
                }
                WriteHalf::FinSent => {
                    ready!(this.poll_or_give_up(Self::poll_send, cx))?;
                    let mut shared = lock(&this.shared);
                    if shared.state.write != WriteHalf::FinSent {
                        continue;
                    }
                    let timed_out = this
                        .fin_ack_timer
                        .as_mut()
                        .is_none_or(|t| t.as_mut().poll(cx).is_ready());
                    if timed_out {
                        tracing::debug!(channel = %shared.dc.id(), "no FIN_ACK before the timeout");
                        shared.state.on_fin_ack_timeout();
                        continue;
                    }
                    shared.write_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                WriteHalf::Closed | WriteHalf::Stopped => {
                    this.fin_ack_timer = None;
                    return Poll::Ready(Ok(()));
                }
                WriteHalf::Reset => return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let shared = lock(&self.shared);
        // Dropped before both halves finished cleanly: reset, so the remote does not wait.
        if !shared.state.is_clean_done() && !matches!(shared.state.read_end(), Some(Err(_))) {
            let _ = self.ctrl.unbounded_send(ControlOp::Reset);
        }
        // Dropping `ctrl` tells the pump to finish this, then to close the channel when
        // `State::closes_channel` says so.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_common as common;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_frame_resets_only_that_stream() {
        use futures::{AsyncReadExt, AsyncWriteExt};
        common::init_tracing();
        let (client, mut server) = common::driven_pair(common::loopback_config()).await;
        let run = async {
            let mut c = client.open().await;
            c.write_all(b"hello").await.unwrap();
            c.flush().await.unwrap();
            let mut s = server.accept().await;
            let mut hello = [0u8; 5];
            s.read_exact(&mut hello).await.unwrap();
            // A frame whose body is not a webrtc.pb.Message (wire type 7), sent raw.
            let dc = lock(&c.shared).dc.clone();
            dc.send(BytesMut::from(&[3u8, 0x0f, 0xff, 0xff][..]))
                .await
                .unwrap();
            let mut rest = Vec::new();
            let err = s.read_to_end(&mut rest).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            // The sender sees the reset...
            let err = c.read_to_end(&mut rest).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
            // ...and the connection carries new streams.
            let mut c2 = client.open().await;
            c2.write_all(b"fine").await.unwrap();
            c2.close().await.unwrap();
            let mut s2 = server.accept().await;
            let mut got = Vec::new();
            s2.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"fine");
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("hang");
    }
}
