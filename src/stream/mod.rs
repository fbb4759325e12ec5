//! A libp2p stream over one WebRTC data channel.
//!
//! Each stream has a small pump task that drains its data channel into a bounded buffer and
//! answers flags at once (`FIN` with `FIN_ACK`), so a remote's `close` does not wait for
//! this side's application to read. Writes go straight to the data channel from the
//! writer's task, so webrtc-rs's send buffer limit applies back-pressure to the writer.

mod reuse;
mod state;

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
use futures::{AsyncRead, AsyncWrite, FutureExt, StreamExt};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::PeerConnection;

use crate::framing::{self, Flag, FrameDecoder};
use crate::slots::Slot;
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

/// How often an outbound stream replaces a channel that died unused (see [`pump`]).
const REOPEN_ATTEMPTS: u32 = 8;
/// Delay before the first replacement; doubled for each further one (10 ms .. 1.28 s).
const REOPEN_BACKOFF: Duration = Duration::from_millis(10);

/// What the stream and its pump share.
struct Shared {
    dc: Arc<dyn DataChannel>,
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
    send_fut: Option<BoxFuture<'static, webrtc::error::Result<()>>>,
    fin_ack_timer: Option<Pin<Box<tokio::time::Sleep>>>,
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
    /// Wraps `dc` and starts its pump. `pc` is given for an outbound stream (`None`: inbound).
    pub(crate) fn new(
        dc: Arc<dyn DataChannel>,
        pc: Option<Arc<dyn PeerConnection>>,
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
        let outbound = pc.is_some();
        handle.spawn(pump(dc, shared.clone(), ctrl_rx, ctx.clone(), pc));
        Self {
            shared,
            ctrl,
            send_fut: None,
            fin_ack_timer: None,
            ctx,
            outbound,
            _slot: slot,
        }
    }

    /// For an inbound stream not yet handed out: `Ready(true)` once something arrived,
    /// `Ready(false)` if the channel died before carrying anything (then it is dropped
    /// silently: see [`pump`] for why such channels exist).
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
        let dc = shared.dc.clone();
        self.send_fut = Some(Box::pin(async move { dc.send(frame).await }));
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
        loop {
            let write = lock(&this.shared).state.write;
            match write {
                WriteHalf::Open => {
                    ready!(this.poll_writable(cx))?;
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
                    ready!(this.poll_send(cx))?;
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

/// What the pump does after applying an event.
enum Next {
    Continue,
    /// The channel closed.
    Closed,
}

/// Applies one data channel event to the shared state; collects flags to send back.
fn apply_event(
    shared: &mut Shared,
    decoder: &mut FrameDecoder,
    event: DataChannelEvent,
    replies: &mut Vec<Flag>,
) -> Next {
    tracing::trace!(channel = %shared.dc.id(), state = ?shared.state, event = event_name(&event), "data channel event");
    match event {
        DataChannelEvent::OnOpen => shared.opened = true,
        DataChannelEvent::OnMessage(msg) => {
            shared.opened = true;
            shared.pristine = false;
            decoder.push(&msg.data);
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(channel = %shared.dc.id(), "resetting stream: {e}");
                        shared.state.reset();
                        shared.read_queue.clear();
                        shared.read_queued = 0;
                        shared.malformed = Some(e.to_string());
                        replies.push(Flag::ResetStream);
                        break;
                    }
                };
                if !frame.data.is_empty() && shared.state.accepts_data() {
                    shared.read_queued += frame.data.len();
                    shared.read_queue.push_back(frame.data);
                }
                if let Some(flag) = frame.flag {
                    tracing::debug!(channel = %shared.dc.id(), ?flag, "flag received");
                    replies.extend(shared.state.on_flag(flag));
                }
            }
        }
        DataChannelEvent::OnClose | DataChannelEvent::OnError => return Next::Closed,
        _ => {}
    }
    Next::Continue
}

fn event_name(event: &DataChannelEvent) -> &'static str {
    match event {
        DataChannelEvent::OnOpen => "open",
        DataChannelEvent::OnMessage(_) => "message",
        DataChannelEvent::OnClose => "close",
        DataChannelEvent::OnClosing => "closing",
        DataChannelEvent::OnError => "error",
        _ => "other",
    }
}

fn poll_channel(dc: &Arc<dyn DataChannel>) -> BoxFuture<'static, Option<DataChannelEvent>> {
    let dc = dc.clone();
    async move { dc.poll().await }.boxed()
}

/// One step of the pump.
enum Step {
    /// A request from the stream; `None`: the stream was dropped.
    Ctrl(Option<ControlOp>),
    /// A data channel event; `None`: the channel is gone (or did not open in time).
    Event(Option<DataChannelEvent>),
    /// A dropped stream waited long enough for the peer to close its channel.
    GiveUp,
}

fn sleep(d: Duration) -> Pin<Box<tokio::time::Sleep>> {
    Box::pin(tokio::time::sleep(d))
}

/// Drains the data channel into the stream's buffer and answers flags. After the stream is
/// dropped it keeps draining, discarding data, until the channel closes (bounded by twice
/// [`crate::Config::fin_ack_timeout`]). For the opener it also works around stream id reuse
/// in webrtc-rs (see [`reuse`]):
/// - the channel is closed by the side [`State::closes_channel`] names; the opener tells the
///   [`ReuseGuard`] when its channels close;
/// - an outbound channel that closes, or does not open within
///   [`crate::Config::stream_open_timeout`], before it carried a byte in either direction is
///   replaced by a fresh one after a doubling delay, a bounded number of times. Nothing was
///   sent or received on it, so nothing is lost or duplicated. (The accepting side hands out
///   an inbound channel only once its first message arrived, so such channels never reach
///   the application there.)
async fn pump(
    mut dc: Arc<dyn DataChannel>,
    shared: Arc<Mutex<Shared>>,
    mut ctrl: mpsc::UnboundedReceiver<ControlOp>,
    ctx: Arc<StreamContext>,
    pc: Option<Arc<dyn PeerConnection>>,
) {
    let outbound = pc.is_some();
    let mut reopen_left = if outbound { REOPEN_ATTEMPTS } else { 0 };
    let mut reopen_delay = REOPEN_BACKOFF;
    let mut decoder = FrameDecoder::new(ctx.max_frame_size);
    let mut events = poll_channel(&dc);
    let mut replies = Vec::new();
    let mut closing = false;
    let mut dropped = false;
    let mut created_at = Instant::now();
    let mut open_deadline = outbound.then(|| sleep(ctx.open_timeout));
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut finished_reported = false;
    loop {
        let step = futures::future::poll_fn(|cx| {
            if !dropped {
                if let Poll::Ready(op) = ctrl.poll_next_unpin(cx) {
                    return Poll::Ready(Step::Ctrl(op));
                }
            }
            if open_deadline
                .as_mut()
                .is_some_and(|d| d.as_mut().poll(cx).is_ready())
            {
                return Poll::Ready(Step::Event(None));
            }
            if linger
                .as_mut()
                .is_some_and(|d| d.as_mut().poll(cx).is_ready())
            {
                return Poll::Ready(Step::GiveUp);
            }
            {
                // Wait while the reader has not caught up.
                let mut s = lock(&shared);
                if s.read_queued >= ctx.receive_buffer {
                    s.pump_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            events.poll_unpin(cx).map(Step::Event)
        })
        .await;
        let event = match step {
            Step::Ctrl(Some(ControlOp::Reset)) => {
                let send = {
                    let mut s = lock(&shared);
                    let send = !s.state.is_done();
                    s.state.reset();
                    s.wake();
                    send
                };
                if send {
                    let _ = dc.send(framing::encode(Some(Flag::ResetStream), &[])).await;
                }
                continue;
            }
            Step::Ctrl(None) => {
                if outbound && !finished_reported {
                    finished_reported = true;
                    ctx.reuse.on_outbound_finished(Instant::now());
                }
                // The stream was dropped and its last requests are done. Keep draining (and
                // discarding) until the channel closes, closing it ourselves when
                // `State::closes_channel` says so, or after a bounded wait for the peer.
                dropped = true;
                open_deadline = None;
                linger = Some(sleep(ctx.fin_ack_timeout * 2));
                let close = {
                    let mut s = lock(&shared);
                    s.read_queue.clear();
                    s.read_queued = 0;
                    s.state.closes_channel(outbound)
                };
                if !closing && close {
                    closing = true;
                    let _ = dc.close().await;
                }
                continue;
            }
            Step::GiveUp => {
                // The peer did not close in time: close anyway, so the channel is not leaked.
                tracing::debug!(channel = %dc.id(), "peer did not close the channel; closing it");
                if !closing {
                    let _ = dc.close().await;
                }
                if outbound {
                    ctx.reuse.on_outbound_closed(Instant::now());
                }
                return;
            }
            Step::Event(event) => event,
        };
        events = poll_channel(&dc);
        let (next, reopen) = {
            let mut s = lock(&shared);
            let was_open = s.opened;
            let next = match event {
                Some(event) => apply_event(&mut s, &mut decoder, event, &mut replies),
                None => Next::Closed,
            };
            if outbound && !was_open && s.opened {
                open_deadline = None;
                ctx.reuse.on_rtt_sample(created_at.elapsed());
            }
            if let (Some(sent), true) = (s.fin_sent_at, s.state.write == WriteHalf::Closed) {
                s.fin_sent_at = None;
                ctx.reuse.on_rtt_sample(sent.elapsed());
            }
            if dropped {
                s.read_queue.clear();
                s.read_queued = 0;
            }
            if outbound && !finished_reported && s.state.is_done() {
                finished_reported = true;
                ctx.reuse.on_outbound_finished(Instant::now());
            }
            let reopen = matches!(next, Next::Closed) && s.pristine && reopen_left > 0 && !dropped;
            if reopen {
                // Writers wait for the replacement.
                s.opened = false;
            } else if matches!(next, Next::Closed) {
                s.state.on_channel_closed();
                s.opened = true;
            }
            s.wake();
            (next, reopen)
        };
        match next {
            Next::Closed if reopen => {
                reopen_left -= 1;
                let Some(pc) = pc.as_ref() else { return };
                tokio::time::sleep(reopen_delay).await;
                reopen_delay *= 2;
                match pc.create_data_channel("", None).await {
                    Ok(new) => {
                        tracing::debug!(old = %dc.id(), new = %new.id(), "replacing a data channel that died unused");
                        dc = new;
                        decoder = FrameDecoder::new(ctx.max_frame_size);
                        events = poll_channel(&dc);
                        created_at = Instant::now();
                        open_deadline = Some(sleep(ctx.open_timeout));
                        lock(&shared).dc = dc.clone();
                    }
                    Err(e) => {
                        tracing::debug!("could not replace a dead data channel: {e}");
                        let mut s = lock(&shared);
                        s.state.on_channel_closed();
                        s.opened = true;
                        s.wake();
                        return;
                    }
                }
            }
            Next::Closed => {
                if outbound {
                    ctx.reuse.on_outbound_closed(Instant::now());
                }
                return;
            }
            Next::Continue => {
                for flag in replies.drain(..) {
                    let _ = dc.send(framing::encode(Some(flag), &[])).await;
                }
                if !closing && lock(&shared).state.closes_channel(outbound) {
                    closing = true;
                    let _ = dc.close().await;
                }
            }
        }
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
