//! The task behind each stream: drains its data channel and answers flags.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::StreamExt;

use super::reopen::Reopen;
use super::state::WriteHalf;
use super::{lock, ControlOp, Shared, StreamContext};
use crate::direct::framing::{self, Flag, FrameDecoder};
use crate::rtc::{Channel, ChannelEvent, Peer};

/// What woke the pump, one source each.
enum Step {
    /// A request from the stream; `None`: the stream was dropped.
    Control(Option<ControlOp>),
    /// A data channel event; `None`: the channel is gone, or did not open in time.
    Channel(Option<ChannelEvent>),
    /// A dropped stream waited long enough for the peer to close its channel.
    LingerExpired,
}

/// Whether the pump goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

fn sleep(d: std::time::Duration) -> Pin<Box<tokio::time::Sleep>> {
    Box::pin(tokio::time::sleep(d))
}

/// Drains the data channel into the stream's buffer and answers flags at once, so a remote's
/// `close` does not wait for this side's application to read. After the stream is dropped it
/// keeps draining, discarding data, until the channel closes (bounded by twice
/// [`crate::Config::fin_ack_timeout`]). For the opener it also works around webrtc-rs's stream
/// id reuse ([`super::reuse`]) and replaces channels that died unused ([`super::reopen`]):
/// - the channel is closed by the side `State::closes_channel` names; the opener tells the
///   [`super::ReuseGuard`] when its channels close;
/// - an outbound channel that closes, or does not open within
///   [`crate::Config::stream_open_timeout`], before it carried a byte in either direction is
///   replaced.
pub(super) struct Pump {
    dc: Channel,
    shared: Arc<Mutex<Shared>>,
    control: mpsc::UnboundedReceiver<ControlOp>,
    ctx: Arc<StreamContext>,
    /// The opener's peer connection, to replace a channel that died unused; `None`: inbound.
    peer: Option<Peer>,
    reopen: Reopen,
    decoder: FrameDecoder,
    next_event: BoxFuture<'static, Option<ChannelEvent>>,
    /// Flags to send back, collected while applying an event.
    replies: Vec<Flag>,
    /// This side started closing the channel.
    closing: bool,
    /// The stream was dropped.
    dropped: bool,
    /// When the current channel was created (an open's round-trip sample).
    created_at: Instant,
    /// Outbound: the current channel must open by then.
    open_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// After the stream was dropped: the longest wait for the peer to close the channel.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The reuse guard was told that this outbound stream finished.
    finished_reported: bool,
}

impl Pump {
    pub(super) fn new(
        dc: Channel,
        shared: Arc<Mutex<Shared>>,
        control: mpsc::UnboundedReceiver<ControlOp>,
        ctx: Arc<StreamContext>,
        peer: Option<Peer>,
    ) -> Self {
        let outbound = peer.is_some();
        Self {
            next_event: dc.next_event(),
            dc,
            shared,
            control,
            reopen: Reopen::new(outbound),
            decoder: FrameDecoder::new(ctx.max_frame_size),
            open_deadline: outbound.then(|| sleep(ctx.open_timeout)),
            ctx,
            peer,
            replies: Vec::new(),
            closing: false,
            dropped: false,
            created_at: Instant::now(),
            linger: None,
            finished_reported: false,
        }
    }

    fn outbound(&self) -> bool {
        self.peer.is_some()
    }

    /// Runs until the channel is closed and the stream dropped (or the linger expired).
    pub(super) async fn run(mut self) {
        loop {
            let step = futures::future::poll_fn(|cx| self.poll_step(cx)).await;
            let flow = match step {
                Step::Control(Some(op)) => self.on_control(op).await,
                Step::Control(None) => self.on_stream_dropped().await,
                Step::Channel(event) => self.on_channel_event(event).await,
                Step::LingerExpired => self.on_linger_expired().await,
            };
            if flow == Flow::Stop {
                return;
            }
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if !self.dropped {
            if let Poll::Ready(op) = self.control.poll_next_unpin(cx) {
                return Poll::Ready(Step::Control(op));
            }
        }
        if let Some(deadline) = self.open_deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Channel(None));
            }
        }
        if let Some(linger) = self.linger.as_mut() {
            if linger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::LingerExpired);
            }
        }
        {
            // Wait while the reader has not caught up.
            let mut s = lock(&self.shared);
            if s.read_queued >= self.ctx.receive_buffer {
                s.pump_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.next_event.as_mut().poll(cx).map(Step::Channel)
    }

    async fn on_control(&mut self, op: ControlOp) -> Flow {
        match op {
            ControlOp::Reset => {
                let send = {
                    let mut s = lock(&self.shared);
                    let send = !s.state.is_done();
                    s.state.reset();
                    s.wake();
                    send
                };
                if send {
                    self.send_flag(Flag::ResetStream).await;
                }
            }
        }
        Flow::Continue
    }

    /// The stream was dropped and its last requests are done. Keep draining (and discarding)
    /// until the channel closes, closing it ourselves when `State::closes_channel` says so,
    /// or after a bounded wait for the peer.
    async fn on_stream_dropped(&mut self) -> Flow {
        self.report_finished();
        self.dropped = true;
        self.open_deadline = None;
        self.linger = Some(sleep(self.ctx.fin_ack_timeout * 2));
        let close = {
            let mut s = lock(&self.shared);
            s.read_queue.clear();
            s.read_queued = 0;
            s.state.closes_channel(self.outbound())
        };
        if close {
            self.close_channel().await;
        }
        Flow::Continue
    }

    /// The peer did not close in time: close anyway, so the channel is not leaked.
    async fn on_linger_expired(&mut self) -> Flow {
        tracing::debug!(channel = %self.dc.id(), "peer did not close the channel; closing it");
        self.close_channel().await;
        if self.outbound() {
            self.ctx.reuse.on_outbound_closed(Instant::now());
        }
        Flow::Stop
    }

    async fn on_channel_event(&mut self, event: Option<ChannelEvent>) -> Flow {
        self.next_event = self.dc.next_event();
        let outbound = self.outbound();
        let (closed, reopen) = {
            let shared = self.shared.clone();
            let mut s = lock(&shared);
            let was_open = s.opened;
            let closed = match event {
                Some(event) => self.apply(&mut s, event),
                None => true,
            };
            if outbound && !was_open && s.opened {
                self.open_deadline = None;
                self.ctx.reuse.on_rtt_sample(self.created_at.elapsed());
            }
            if let (Some(sent), WriteHalf::Closed) = (s.fin_sent_at, s.state.write) {
                s.fin_sent_at = None;
                self.ctx.reuse.on_rtt_sample(sent.elapsed());
            }
            if self.dropped {
                s.read_queue.clear();
                s.read_queued = 0;
            }
            if s.state.is_done() {
                self.report_finished();
            }
            let reopen = closed && s.pristine && self.reopen.available() && !self.dropped;
            if reopen {
                // Writers wait for the replacement.
                s.opened = false;
            } else if closed {
                s.state.on_channel_closed();
                s.opened = true;
            }
            s.wake();
            (closed, reopen)
        };
        if reopen {
            return self.replace_channel().await;
        }
        if closed {
            if outbound {
                self.ctx.reuse.on_outbound_closed(Instant::now());
            }
            return Flow::Stop;
        }
        for flag in std::mem::take(&mut self.replies) {
            self.send_flag(flag).await;
        }
        if lock(&self.shared).state.closes_channel(outbound) {
            self.close_channel().await;
        }
        Flow::Continue
    }

    /// Applies one data channel event to the shared state, collecting flags to send back;
    /// `true` when the channel closed.
    fn apply(&mut self, s: &mut Shared, event: ChannelEvent) -> bool {
        tracing::trace!(channel = %s.dc.id(), state = ?s.state, event = event.name(), "data channel event");
        match event {
            ChannelEvent::Open => s.opened = true,
            ChannelEvent::Message(data) => {
                s.opened = true;
                s.pristine = false;
                // After a malformed frame the decoder discards what arrives.
                self.decoder.push(&data);
                loop {
                    let frame = match self.decoder.next_frame() {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(channel = %s.dc.id(), "resetting stream: {e}");
                            s.state.reset();
                            s.read_queue.clear();
                            s.read_queued = 0;
                            s.malformed = Some(e.to_string());
                            self.replies.push(Flag::ResetStream);
                            break;
                        }
                    };
                    if !frame.data.is_empty() && s.state.accepts_data() {
                        s.read_queued += frame.data.len();
                        s.read_queue.push_back(frame.data);
                    }
                    if let Some(flag) = frame.flag {
                        tracing::debug!(channel = %s.dc.id(), ?flag, "flag received");
                        self.replies.extend(s.state.on_flag(flag));
                    }
                }
            }
            ChannelEvent::Closed => return true,
            ChannelEvent::Other(_) => {}
        }
        false
    }

    /// Replaces a channel that died unused, after the reopen delay.
    async fn replace_channel(&mut self) -> Flow {
        let (Some(delay), Some(peer)) = (self.reopen.take(), self.peer.clone()) else {
            return Flow::Stop;
        };
        tokio::time::sleep(delay).await;
        match peer.create_channel("").await {
            Ok(new) => {
                tracing::debug!(old = %self.dc.id(), new = %new.id(), "replacing a data channel that died unused");
                self.dc = new;
                self.decoder = FrameDecoder::new(self.ctx.max_frame_size);
                self.next_event = self.dc.next_event();
                self.created_at = Instant::now();
                self.open_deadline = Some(sleep(self.ctx.open_timeout));
                lock(&self.shared).dc = self.dc.clone();
                Flow::Continue
            }
            Err(e) => {
                tracing::debug!("could not replace a dead data channel: {e}");
                let mut s = lock(&self.shared);
                s.state.on_channel_closed();
                s.opened = true;
                s.wake();
                Flow::Stop
            }
        }
    }

    /// Tells the reuse guard, once, that this outbound stream finished.
    fn report_finished(&mut self) {
        if self.outbound() && !self.finished_reported {
            self.finished_reported = true;
            self.ctx.reuse.on_outbound_finished(Instant::now());
        }
    }

    /// Sends a flag, waiting at most [`crate::Config::fin_ack_timeout`] for room in the send
    /// buffer: a remote that stopped acknowledging gets its channel closed instead, so the
    /// pump never hangs on it.
    async fn send_flag(&mut self, flag: Flag) {
        let send = self.dc.send(framing::encode(Some(flag), &[]));
        match tokio::time::timeout(self.ctx.fin_ack_timeout, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::trace!(channel = %self.dc.id(), ?flag, "could not send a flag: {e}")
            }
            Err(_) => {
                tracing::debug!(channel = %self.dc.id(), ?flag, "no room for a flag; closing the channel");
                self.close_channel().await;
            }
        }
    }

    async fn close_channel(&mut self) {
        if !self.closing {
            self.closing = true;
            self.dc.close().await;
        }
    }
}
