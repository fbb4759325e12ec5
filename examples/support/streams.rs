//! Raw streams of one protocol: open them on a chosen connection, receive the remote's.
//! Shared by the examples and the tests (`#[path]`-included), so kept free of their specifics.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::task::{Context, Poll};

use futures::channel::{mpsc, oneshot};
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Where an opened raw stream is delivered.
pub type OpenReply = oneshot::Sender<Result<Stream, String>>;

/// Opens and accepts raw streams of one protocol.
pub struct Raw {
    protocol: StreamProtocol,
    inbound: mpsc::UnboundedSender<(PeerId, ConnectionId, Stream)>,
    requests: VecDeque<(PeerId, ConnectionId, OpenReply)>,
}

impl Raw {
    pub fn new(
        protocol: StreamProtocol,
    ) -> (
        Self,
        mpsc::UnboundedReceiver<(PeerId, ConnectionId, Stream)>,
    ) {
        let (tx, rx) = mpsc::unbounded();
        (
            Self {
                protocol,
                inbound: tx,
                requests: VecDeque::new(),
            },
            rx,
        )
    }

    /// Opens a stream on one connection.
    pub fn open(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
    ) -> oneshot::Receiver<Result<Stream, String>> {
        let (tx, rx) = oneshot::channel();
        self.requests.push_back((peer, connection, tx));
        rx
    }
}

pub struct RawHandler {
    protocol: StreamProtocol,
    peer: PeerId,
    connection: ConnectionId,
    inbound: mpsc::UnboundedSender<(PeerId, ConnectionId, Stream)>,
    to_open: VecDeque<oneshot::Sender<Result<Stream, String>>>,
}

impl ConnectionHandler for RawHandler {
    type FromBehaviour = oneshot::Sender<Result<Stream, String>>;
    type ToBehaviour = std::convert::Infallible;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = oneshot::Sender<Result<Stream, String>>;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if let Some(tx) = self.to_open.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), tx),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, tx: Self::FromBehaviour) {
        self.to_open.push_back(tx);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol, ..
            }) => {
                let _ = self
                    .inbound
                    .unbounded_send((self.peer, self.connection, protocol));
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol,
                info,
            }) => {
                let _ = info.send(Ok(protocol));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                let _ = info.send(Err(error.to_string()));
            }
            _ => {}
        }
    }
}

impl NetworkBehaviour for Raw {
    type ConnectionHandler = RawHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        e: THandlerOutEvent<Self>,
    ) {
        match e {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some((peer, connection, tx)) = self.requests.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: tx,
            });
        }
        Poll::Pending
    }
}

impl Raw {
    fn handler(&self, peer: PeerId, connection: ConnectionId) -> RawHandler {
        RawHandler {
            protocol: self.protocol.clone(),
            peer,
            connection,
            inbound: self.inbound.clone(),
            to_open: VecDeque::new(),
        }
    }
}
