//! The transport half: brings direct WebRTC connections made by the [`crate::Behaviour`]
//! into the Swarm.
//!
//! The behaviour listens on `/webrtc` through this transport (it asks the Swarm to, on its
//! first poll). Every upgraded connection, whichever side offered, arrives as an inbound
//! connection of that listener, with local address `/webrtc` and remote address
//! `<relayed address>/webrtc/p2p/<peer>`. Dialing is not this transport's job: a
//! `/p2p-circuit/webrtc` address is dialed by the relay client as a relayed connection,
//! which the behaviour then upgrades.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::mpsc;
use futures::future::{ready, Ready};
use futures::StreamExt;
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p_identity::PeerId;

use crate::{Connection, Error};

/// The address the transport listens on and stamps as local address of every connection.
pub(crate) fn listen_addr() -> Multiaddr {
    Multiaddr::empty().with(Protocol::WebRTC)
}

/// A direct connection made by the behaviour, on its way into the Swarm.
pub(crate) struct Handoff {
    pub(crate) peer: PeerId,
    pub(crate) connection: Connection,
    pub(crate) remote_addr: Multiaddr,
}

/// Hands direct WebRTC connections to the Swarm; add it with
/// `SwarmBuilder::with_other_transport`. Made by [`crate::new`].
pub struct Transport {
    handoffs: mpsc::UnboundedReceiver<Handoff>,
    listeners: VecDeque<ListenerId>,
    /// Handoffs that arrived before the listener existed.
    waiting: VecDeque<Handoff>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("listeners", &self.listeners)
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl Transport {
    pub(crate) fn new(handoffs: mpsc::UnboundedReceiver<Handoff>) -> Self {
        Self {
            handoffs,
            listeners: VecDeque::new(),
            waiting: VecDeque::new(),
        }
    }
}

impl libp2p_core::Transport for Transport {
    type Output = (PeerId, Connection);
    type Error = Error;
    type ListenerUpgrade = Ready<Result<Self::Output, Error>>;
    type Dial = Ready<Result<Self::Output, Error>>;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Error>> {
        if addr != listen_addr() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        self.listeners.push_back(id);
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let before = self.listeners.len();
        self.listeners.retain(|l| *l != id);
        before != self.listeners.len()
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Error>> {
        let this = self.get_mut();
        while let Poll::Ready(Some(handoff)) = this.handoffs.poll_next_unpin(cx) {
            this.waiting.push_back(handoff);
        }
        let Some(&listener_id) = this.listeners.front() else {
            return Poll::Pending;
        };
        match this.waiting.pop_front() {
            Some(Handoff {
                peer,
                connection,
                remote_addr,
            }) => Poll::Ready(TransportEvent::Incoming {
                listener_id,
                upgrade: ready(Ok((peer, connection))),
                local_addr: listen_addr(),
                send_back_addr: remote_addr,
            }),
            None => Poll::Pending,
        }
    }
}
