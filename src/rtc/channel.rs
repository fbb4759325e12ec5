//! One webrtc-rs data channel behind plain methods.

use std::sync::Arc;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::FutureExt;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use crate::Error;

/// What a data channel reports.
#[derive(Debug)]
pub(crate) enum ChannelEvent {
    /// The channel is open.
    Open,
    /// A binary or text message.
    Message(BytesMut),
    /// The channel closed (or failed).
    Closed,
    /// Anything else (closing, buffered-amount thresholds): ignored.
    Other(&'static str),
}

impl ChannelEvent {
    /// A short name for logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            ChannelEvent::Open => "open",
            ChannelEvent::Message(_) => "message",
            ChannelEvent::Closed => "closed",
            ChannelEvent::Other(name) => name,
        }
    }
}

/// A webrtc-rs data channel. Cheap to clone; all clones are the same channel.
#[derive(Clone)]
pub(crate) struct Channel {
    dc: Arc<dyn DataChannel>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Channel").field(&self.dc.id()).finish()
    }
}

impl Channel {
    pub(crate) fn new(dc: Arc<dyn DataChannel>) -> Self {
        Self { dc }
    }

    /// The channel's id in this peer connection's registry (not the SCTP stream id).
    pub(crate) fn id(&self) -> usize {
        self.dc.id()
    }

    /// The channel's label (`""` for libp2p streams).
    pub(crate) async fn label(&self) -> String {
        self.dc.label().await.unwrap_or_default()
    }

    /// Sends one message; completes when webrtc-rs's send buffer took it (back-pressure).
    /// The future owns the channel, so it can be kept across polls.
    pub(crate) fn send(&self, data: BytesMut) -> BoxFuture<'static, Result<(), Error>> {
        let dc = self.dc.clone();
        async move { dc.send(data).await.map_err(Error::from) }.boxed()
    }

    /// The next event; `None` once the channel is gone. The future owns the channel.
    pub(crate) fn next_event(&self) -> BoxFuture<'static, Option<ChannelEvent>> {
        let dc = self.dc.clone();
        async move {
            let event = dc.poll().await?;
            Some(match event {
                DataChannelEvent::OnOpen => ChannelEvent::Open,
                DataChannelEvent::OnMessage(msg) => ChannelEvent::Message(msg.data),
                DataChannelEvent::OnClose | DataChannelEvent::OnError => ChannelEvent::Closed,
                DataChannelEvent::OnClosing => ChannelEvent::Other("closing"),
                _ => ChannelEvent::Other("other"),
            })
        }
        .boxed()
    }

    /// Starts closing the channel (an SCTP stream reset).
    pub(crate) async fn close(&self) {
        if let Err(e) = self.dc.close().await {
            tracing::trace!(channel = %self.dc.id(), "closing the data channel: {e}");
        }
    }
}
