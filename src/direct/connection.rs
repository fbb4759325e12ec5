//! A WebRTC peer connection as a libp2p connection: [`StreamMuxer`] over data channels.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use libp2p_core::muxing::{StreamMuxer, StreamMuxerEvent};

use super::framing;
use super::path::DirectPath;
use super::stream::{Stream, StreamContext};
use crate::rtc::{Channel, ChannelEvent, Peer, PeerEvent, PeerState, INIT_CHANNEL_LABEL};
use crate::slots::{Slot, Slots};
use crate::{Config, Error};

/// Creating an outbound data channel.
type OpenChannel = BoxFuture<'static, Result<Channel, Error>>;

/// An established, authenticated WebRTC connection to one peer.
///
/// Implements [`StreamMuxer`]: every libp2p stream is an in-band data channel labelled `""`.
/// Obtained from [`crate::Session::into_connection`].
///
/// Inbound streams are handed out once their first message arrived (in libp2p the opener of
/// a stream always writes first), so channels that die unused never reach the application.
pub struct Connection {
    peer: Peer,
    /// The `init` channel: the offerer's own, kept open (see [`Connection::new`]), or the
    /// answerer's first from the remote. Both sides read and discard what arrives on it; a
    /// byte sent on it after ICE restarted nudges SCTP (see `nudge`).
    init: Option<Channel>,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    /// Inbound channels whose label is being read.
    labelling: Vec<BoxFuture<'static, (Channel, String)>>,
    /// Inbound streams waiting for their first message, with their deadline
    /// ([`Config::inbound_stream_timeout`]).
    arriving: Vec<(Stream, Instant)>,
    /// Fires at the earliest deadline in `arriving`.
    arriving_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    inbound_timeout: std::time::Duration,
    /// The remote's `init` channel arrived (one is drained; more are closed).
    remote_init_seen: bool,
    /// Inbound streams ready to be handed out.
    inbound: VecDeque<Stream>,
    outbound: Option<(OpenChannel, Slot)>,
    /// Waits out the stream id reuse guard before the next outbound channel.
    reuse_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the current open started waiting for the guard.
    reuse_wait_started: Option<Instant>,
    closing: Option<BoxFuture<'static, ()>>,
    closed: bool,
    slots: Arc<Slots>,
    ctx: Arc<StreamContext>,
    handle: tokio::runtime::Handle,
    /// The candidate pair ICE had selected when the connection came up.
    path: Option<DirectPath>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("streams", &self.slots.used())
            .field("closed", &self.closed)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// `init` is the offerer's own `init` channel. It stays open for the connection's
    /// lifetime: closing it would free its stream id for the first streams while its resets
    /// are in flight (see `stream::reuse`). One idle channel costs nothing worth that.
    pub(crate) fn new(
        peer: Peer,
        events: mpsc::UnboundedReceiver<PeerEvent>,
        early_channels: VecDeque<Channel>,
        init: Option<Channel>,
        path: Option<DirectPath>,
        config: &Config,
    ) -> Self {
        let ctx = Arc::new(StreamContext {
            max_frame_size: config.max_frame_size,
            max_payload: framing::max_payload(config.max_frame_size),
            receive_buffer: config.stream_receive_buffer,
            fin_ack_timeout: config.fin_ack_timeout,
            open_timeout: config.stream_open_timeout,
            reuse: Default::default(),
        });
        let handle = tokio::runtime::Handle::current();
        if let Some(init) = &init {
            handle.spawn(discard(init.clone()));
        }
        let mut this = Self {
            init,
            peer,
            events,
            labelling: Vec::new(),
            arriving: Vec::new(),
            arriving_timer: None,
            inbound_timeout: config.inbound_stream_timeout,
            remote_init_seen: false,
            inbound: VecDeque::new(),
            outbound: None,
            reuse_wait: None,
            reuse_wait_started: None,
            closing: None,
            closed: false,
            slots: Slots::new(config.max_streams),
            ctx,
            handle,
            path,
        };
        for dc in early_channels {
            this.on_remote_channel(dc);
        }
        this
    }

    /// The peer connection (for ICE restarts).
    pub(crate) fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The candidate pair ICE selected when the connection came up: the address family
    /// and whether a NAT mapping or a TURN server is on the way. `None` only if webrtc-rs
    /// did not report the pair. An ICE restart may move the connection to another pair.
    pub fn path(&self) -> Option<DirectPath> {
        self.path
    }

    /// Number of open streams.
    pub fn num_streams(&self) -> usize {
        self.slots.used()
    }

    fn on_remote_channel(&mut self, dc: Channel) {
        let fut = async move {
            let label = dc.label().await;
            (dc, label)
        };
        self.labelling.push(fut.boxed());
    }

    /// After a quiet path came back, data sent meanwhile waits for SCTP's retransmission
    /// timer, which backed off during the silence (seconds). One new message is acknowledged
    /// at once, and the patched SCTP's loss detection then retransmits everything sent before
    /// it (`patches/rtc-sctp`, RACK).
    fn nudge(&self) {
        let Some(init) = self.init.clone() else {
            return;
        };
        tracing::debug!("direct path back: nudging SCTP");
        self.handle.spawn(async move {
            if let Err(e) = init.send(bytes::BytesMut::from(&[0u8][..])).await {
                tracing::debug!("nudge failed: {e}");
            }
        });
    }

    /// Closes a channel the remote opened (this side accepts, so this side closes).
    fn close_channel(&self, dc: Channel) {
        self.handle.spawn(async move { dc.close().await });
    }

    /// Applies driver events; `Err` once the peer connection is gone.
    fn poll_events(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.closed {
            return Err(Error::Closed);
        }
        loop {
            match self.events.poll_next_unpin(cx) {
                Poll::Ready(Some(PeerEvent::Channel(dc))) => self.on_remote_channel(dc),
                Poll::Ready(Some(PeerEvent::State(state))) => match state {
                    PeerState::Failed => {
                        self.closed = true;
                        return Err(Error::ConnectionFailed);
                    }
                    PeerState::Closed => {
                        self.closed = true;
                        return Err(Error::Closed);
                    }
                    PeerState::Disconnected => {
                        tracing::debug!("direct path quiet: ICE disconnected");
                    }
                    PeerState::Connected | PeerState::Other => {}
                },
                // ICE connected again (a restart): the connection's first was before it
                // existed.
                Poll::Ready(Some(PeerEvent::IceConnected(_))) => self.nudge(),
                Poll::Ready(Some(_)) => {}
                Poll::Ready(None) => {
                    self.closed = true;
                    return Err(Error::Closed);
                }
                Poll::Pending => break,
            }
        }
        let mut i = 0;
        while i < self.labelling.len() {
            let Poll::Ready((dc, label)) = self.labelling[i].poll_unpin(cx) else {
                i += 1;
                continue;
            };
            drop(self.labelling.swap_remove(i));
            if label == INIT_CHANNEL_LABEL {
                if self.remote_init_seen {
                    // One `init` channel per connection: more are a flood.
                    tracing::debug!("closing a second init channel");
                    self.close_channel(dc);
                } else {
                    // Not a stream. Its opener may close it (js-libp2p does); until then,
                    // whatever arrives on it is read and discarded, so nothing piles up.
                    self.remote_init_seen = true;
                    self.init.get_or_insert_with(|| dc.clone());
                    self.handle.spawn(discard(dc));
                }
            } else if let Some(slot) = self.slots.try_acquire() {
                let stream = Stream::new(dc, None, self.ctx.clone(), slot, &self.handle);
                self.arriving
                    .push((stream, Instant::now() + self.inbound_timeout));
            } else {
                tracing::debug!(
                    limit = self.slots.used(),
                    "too many streams; refusing an inbound data channel"
                );
                self.close_channel(dc);
            }
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.arriving.len() {
            let (stream, deadline) = &self.arriving[i];
            match stream.poll_surface(cx) {
                Poll::Pending if *deadline > now => i += 1,
                Poll::Pending => {
                    tracing::debug!("closing an inbound channel that stayed without a message");
                    drop(self.arriving.swap_remove(i));
                }
                Poll::Ready(true) => {
                    let (stream, _) = self.arriving.swap_remove(i);
                    self.inbound.push_back(stream);
                }
                Poll::Ready(false) => {
                    tracing::trace!("dropping an inbound channel that closed unused");
                    drop(self.arriving.swap_remove(i));
                }
            }
        }
        self.poll_arriving_timer(cx);
        Ok(())
    }

    /// Wakes the task at the earliest deadline of the inbound streams still arriving.
    fn poll_arriving_timer(&mut self, cx: &mut Context<'_>) {
        let Some(next) = self.arriving.iter().map(|(_, at)| *at).min() else {
            self.arriving_timer = None;
            return;
        };
        let timer = self
            .arriving_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next.into())));
        if timer.deadline() != next.into() {
            timer.as_mut().reset(next.into());
        }
        if timer.as_mut().poll(cx).is_ready() {
            // Due now: look again at once.
            self.arriving_timer = None;
            cx.waker().wake_by_ref();
        }
    }
}

/// Reads and discards an `init` channel until it closes.
async fn discard(dc: Channel) {
    while let Some(event) = dc.next_event().await {
        if matches!(event, ChannelEvent::Closed) {
            return;
        }
    }
}

impl StreamMuxer for Connection {
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        self.poll_events(cx)?;
        match self.inbound.pop_front() {
            Some(stream) => Poll::Ready(Ok(stream)),
            None => Poll::Pending,
        }
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Stream, Error>> {
        let this = &mut *self;
        this.poll_events(cx)?;
        if this.outbound.is_none() {
            let now = Instant::now();
            if let Some(at) = this.ctx.reuse.open_allowed_at(now) {
                // Renewals of the guard extend the wait, up to its maximum in total.
                let started = *this.reuse_wait_started.get_or_insert(now);
                let at = at.min(started + this.ctx.reuse.max_wait());
                if at > now {
                    let wait = this
                        .reuse_wait
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
                    wait.as_mut().reset(at.into());
                    ready!(wait.as_mut().poll(cx));
                }
            }
            this.reuse_wait = None;
            this.reuse_wait_started = None;
            this.slots.register(cx.waker());
            let Some(slot) = this.slots.try_acquire() else {
                return Poll::Pending;
            };
            let peer = this.peer.clone();
            let fut = async move { peer.create_channel("").await }.boxed();
            this.outbound = Some((fut, slot));
        }
        let Some((fut, _)) = this.outbound.as_mut() else {
            return Poll::Pending;
        };
        let result = ready!(fut.poll_unpin(cx));
        let Some((_, slot)) = this.outbound.take() else {
            return Poll::Pending;
        };
        let dc = result?;
        Poll::Ready(Ok(Stream::new(
            dc,
            Some(this.peer.clone()),
            this.ctx.clone(),
            slot,
            &this.handle,
        )))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let peer = self.peer.clone();
        let fut = self
            .closing
            .get_or_insert_with(|| async move { peer.close().await }.boxed());
        ready!(fut.poll_unpin(cx));
        self.closed = true;
        Poll::Ready(Ok(()))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Error>> {
        self.poll_events(cx)?;
        Poll::Pending
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.closing.is_none() {
            let peer = self.peer.clone();
            self.handle.spawn(async move { peer.close().await });
        }
    }
}

#[cfg(test)]
mod tests {
    //! A hostile remote on the WebRTC connection, with raw data channels.

    use std::time::Duration;

    use bytes::BytesMut;
    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::test_common as common;

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("hang")
    }

    /// A raw data channel with `label`, once open.
    async fn open_raw(peer: &Peer, label: &str) -> Channel {
        let dc = peer.create_channel(label).await.expect("channel");
        loop {
            match dc.next_event().await {
                Some(ChannelEvent::Open) => return dc,
                Some(ChannelEvent::Closed) | None => panic!("closed before opening"),
                Some(_) => {}
            }
        }
    }

    /// Waits until the remote closes `dc`.
    async fn closed(dc: &Channel) {
        while let Some(event) = dc.next_event().await {
            if matches!(event, ChannelEvent::Closed) {
                return;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_channels_are_drained_and_only_one_is_kept() {
        common::init_tracing();
        let (offerer, answerer) = common::pair(common::loopback_config()).await;
        let (offerer_peer, answerer_peer) = (offerer.peer.clone(), answerer.peer.clone());
        let (_o, _a) = (common::Driver::new(offerer), common::Driver::new(answerer));
        within(async {
            // The offerer's own `init` channel is the answerer's first: the offerer gets every
            // further one closed at once.
            for _ in 0..16 {
                let extra = offerer_peer.create_channel(INIT_CHANNEL_LABEL).await;
                closed(&extra.expect("channel")).await;
                // Raw channels bypass `Connection`'s stream id reuse delay (docs/webrtc-rs.md, known
                // webrtc-rs issues): a channel created within a round trip of the last close
                // can get the freed id and be killed or lose its close. Wait as the
                // connection would (~2 RTT; far more than that on loopback).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // An answerer's first `init` channel is read and discarded by the offerer:
            // 16 MiB go through it. Nobody reading it, they would stop at the buffers
            // (webrtc-rs's 256 messages, the SCTP window, the send buffer: ~6 MiB).
            let first = open_raw(&answerer_peer, INIT_CHANNEL_LABEL).await;
            let chunk = BytesMut::from(&[7u8; 16 * 1024][..]);
            for _ in 0..1024 {
                first.send(chunk.clone()).await.expect("send");
            }
            let extra = answerer_peer.create_channel(INIT_CHANNEL_LABEL).await;
            closed(&extra.expect("channel")).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_inbound_channels_give_their_slots_back() {
        common::init_tracing();
        // The four channels must all be open before the first one idles out: with 500 ms,
        // one closed before A saw it open once (a full `cargo test` on 2 loaded cores).
        let config = common::loopback_config()
            .with_max_streams(4)
            .with_inbound_stream_timeout(Duration::from_secs(2));
        let (a, b) = common::pair(config).await;
        let peer = a.peer.clone();
        let (_a, b) = (common::Driver::new(a), common::Driver::new(b));
        within(async {
            // A takes every stream slot of B's with channels that never carry a byte.
            let mut idle = Vec::new();
            for _ in 0..4 {
                idle.push(open_raw(&peer, "").await);
            }
            // B can still open a stream: the idle channels are closed after the timeout.
            let mut s = b.open().await;
            s.write_all(b"hi").await.expect("write");
            for dc in &idle {
                closed(dc).await;
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_is_bounded_when_the_remote_stops_reading() {
        common::init_tracing();
        let fin_ack_timeout = Duration::from_secs(1);
        let config = common::loopback_config()
            .with_stream_send_buffer(64 * 1024)
            .with_stream_receive_buffer(64 * 1024)
            .with_sctp_receive_window(64 * 1024)
            .with_fin_ack_timeout(fin_ack_timeout);
        let (mut a, mut b) = common::driven_pair(config).await;
        within(async {
            let mut s = a.open().await;
            s.write_all(b"x").await.expect("write");
            s.flush().await.expect("flush");
            // B accepts and never reads: its buffers fill, then the SCTP window closes.
            let held = b.accept().await;
            let chunk = vec![1u8; 16 * 1024];
            let mut blocked = false;
            for _ in 0..4096 {
                let write = tokio::time::timeout(Duration::from_millis(500), s.write_all(&chunk));
                if write.await.is_err() {
                    blocked = true;
                    break;
                }
            }
            assert!(blocked, "the writer never blocked");
            let started = std::time::Instant::now();
            let result = s.close().await;
            let took = started.elapsed();
            assert!(
                took < fin_ack_timeout * 3,
                "close took {took:?} with the remote not reading"
            );
            let err = result.expect_err("data was still queued");
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
            drop(held);
            // The connection still carries new streams once B reads again.
            let mut s2 = a.open().await;
            s2.write_all(b"after").await.expect("write");
            s2.close().await.expect("close");
            let mut r = b.accept().await;
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, b"after");
            let _ = &mut a;
        })
        .await;
    }
}

#[cfg(test)]
mod restart_tests {
    //! ICE restarts of a connected pair, signaled by hand.

    use std::time::Duration;

    use futures::{AsyncReadExt, AsyncWriteExt};

    use crate::test_common as common;
    use crate::{Error, SdpRole, Session};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ice_restart_keeps_the_connection_and_its_streams() {
        common::init_tracing();
        let config = common::loopback_config();
        let (a, b) = common::pair(config.clone()).await;
        let (a_peer, b_peer) = (a.peer.clone(), b.peer.clone());
        let (a, mut b) = (common::Driver::new(a), common::Driver::new(b));
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut s = a.open().await;
            s.write_all(b"before").await.expect("write");
            s.flush().await.expect("flush");
            let mut r = b.accept().await;
            let mut got = [0u8; 6];
            r.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"before");

            let mut x = Session::restart(a_peer, SdpRole::Offerer, &config);
            let mut y = Session::restart(b_peer, SdpRole::Answerer, &config);
            common::negotiate(&mut x, &mut y, &common::Tamper::default())
                .await
                .expect("restart");
            assert!(x.ice_connected_at().is_some() && y.ice_connected_at().is_some());

            // The stream opened before the restart carries on, and new ones open.
            s.write_all(b"after")
                .await
                .expect("write after the restart");
            s.close().await.expect("close");
            let mut rest = Vec::new();
            r.read_to_end(&mut rest)
                .await
                .expect("read after the restart");
            assert_eq!(rest, b"after");
            let mut s2 = b.open().await;
            s2.write_all(b"new").await.expect("write on a new stream");
            s2.close().await.expect("close");
        })
        .await
        .expect("hang");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_offer_from_another_certificate_is_refused() {
        common::init_tracing();
        let config = common::loopback_config();
        let (a, b) = common::pair(config.clone()).await;
        let b_peer = b.peer.clone();
        let _drivers = (common::Driver::new(a), common::Driver::new(b));
        // Someone else's offer, on the signaling stream of `a`'s relayed connection.
        let mut stranger = Session::new(&config, SdpRole::Offerer)
            .await
            .expect("session");
        let offer = stranger.create_offer().await.expect("offer");
        let mut y = Session::restart(b_peer, SdpRole::Answerer, &config);
        let refused = y.accept_offer(&offer).await;
        assert!(
            matches!(refused, Err(Error::FingerprintMismatch)),
            "{refused:?}"
        );
        stranger.close().await;
    }
}
