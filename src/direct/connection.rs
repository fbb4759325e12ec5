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
use super::stream::{Stream, StreamContext};
use crate::rtc::{Channel, Peer, PeerEvent, PeerState, INIT_CHANNEL_LABEL};
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
    /// The offerer's `init` channel, kept open (see [`Connection::new`]).
    _init: Option<Channel>,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    /// Inbound channels whose label is being read.
    labelling: Vec<BoxFuture<'static, (Channel, String)>>,
    /// Inbound streams waiting for their first message.
    arriving: Vec<Stream>,
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
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("streams", &self.slots.used())
            .field("closed", &self.closed)
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
        let mut this = Self {
            _init: init,
            peer,
            events,
            labelling: Vec::new(),
            arriving: Vec::new(),
            inbound: VecDeque::new(),
            outbound: None,
            reuse_wait: None,
            reuse_wait_started: None,
            closing: None,
            closed: false,
            slots: Slots::new(config.max_streams),
            ctx,
            handle,
        };
        for dc in early_channels {
            this.on_remote_channel(dc);
        }
        this
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
                    PeerState::Connected | PeerState::Other => {}
                },
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
                // Not a stream. Its opener may close it (js-libp2p does); we leave it be.
                tracing::trace!("ignoring the remote's init channel");
            } else if let Some(slot) = self.slots.try_acquire() {
                let stream = Stream::new(dc, None, self.ctx.clone(), slot, &self.handle);
                self.arriving.push(stream);
            } else {
                tracing::debug!(
                    limit = self.slots.used(),
                    "too many streams; refusing an inbound data channel"
                );
                self.close_channel(dc);
            }
        }
        let mut i = 0;
        while i < self.arriving.len() {
            match self.arriving[i].poll_surface(cx) {
                Poll::Pending => i += 1,
                Poll::Ready(true) => {
                    let stream = self.arriving.swap_remove(i);
                    self.inbound.push_back(stream);
                }
                Poll::Ready(false) => {
                    tracing::trace!("dropping an inbound channel that closed unused");
                    drop(self.arriving.swap_remove(i));
                }
            }
        }
        Ok(())
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
            let fut = async move { peer.create_channel().await }.boxed();
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
