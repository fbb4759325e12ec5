//! Real swarms in one process: a relay server on TCP 127.0.0.1, nodes that reach each other
//! through it, and a raw-stream behaviour for tests that need byte-level access.
#![allow(dead_code)]

use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, Stream, StreamProtocol, SwarmEvent};
use libp2p::{noise, ping, relay, request_response, tcp, yamux, Multiaddr, PeerId, Swarm};
use libp2p_webrtc_signal::Config;
use serde::{Deserialize, Serialize};

pub const ECHO: StreamProtocol = StreamProtocol::new("/test/echo/1.0.0");

/// A request/response protocol for the tests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Req(pub String);
/// Its response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resp(pub String);

#[path = "../../examples/support/mod.rs"]
mod support;
pub use support::streams::*;

/// A node: relay client, the WebRTC upgrade (optional: a hostile node has none), ping,
/// a request/response protocol and raw streams.
#[derive(NetworkBehaviour)]
pub struct Node {
    pub relay: relay::client::Behaviour,
    pub webrtc: libp2p::swarm::behaviour::toggle::Toggle<libp2p_webrtc_signal::Behaviour>,
    pub ping: ping::Behaviour,
    pub rr: request_response::json::Behaviour<Req, Resp>,
    pub raw: Raw,
}

pub type NodeSwarm = Swarm<Node>;

/// Builds a node. `webrtc: None` builds one without the upgrade (and without its transport).
pub fn node(
    webrtc: Option<Config>,
    raw_protocol: StreamProtocol,
) -> (
    NodeSwarm,
    mpsc::UnboundedReceiver<(PeerId, ConnectionId, Stream)>,
) {
    let key = Keypair::generate_ed25519();
    let (transport, webrtc) = support::upgrade(&key, webrtc);
    let (raw, raw_rx) = Raw::new(raw_protocol);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_other_transport(move |_| transport)
        .unwrap()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(move |_, relay| Node {
            relay,
            webrtc,
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(Duration::from_millis(500)),
            ),
            rr: request_response::json::Behaviour::new(
                [(
                    StreamProtocol::new("/test/rr/1"),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default(),
            ),
            raw,
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    (swarm, raw_rx)
}

/// A relay server on TCP 127.0.0.1 with limits raised for the tests.
pub async fn relay_server() -> (Swarm<relay::Behaviour>, Multiaddr) {
    support::loopback_relay(relay::Config {
        max_circuit_duration: Duration::from_secs(600),
        max_circuit_bytes: 64 * 1024 * 1024,
        ..Default::default()
    })
    .await
    .expect("relay server")
}

/// Drives a swarm until `f` returns `Some`, failing the test after `timeout`.
pub async fn until<T>(
    swarm: &mut NodeSwarm,
    timeout: Duration,
    mut f: impl FnMut(&mut NodeSwarm, SwarmEvent<NodeEvent>) -> Option<T>,
) -> T {
    tokio::time::timeout(timeout, async {
        loop {
            let event = swarm.select_next_some().await;
            if let Some(t) = f(swarm, event) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for a swarm event")
}

/// Makes `swarm` reachable through the relay: a reservation, confirmed.
pub async fn reserve(swarm: &mut NodeSwarm, relay: &Multiaddr) {
    swarm
        .listen_on(relay.clone().with(Protocol::P2pCircuit))
        .unwrap();
    until(swarm, Duration::from_secs(20), |_, e| match e {
        SwarmEvent::Behaviour(NodeEvent::Relay(relay::client::Event::ReservationReqAccepted {
            ..
        })) => Some(()),
        _ => None,
    })
    .await;
}

/// Runs a swarm in the background until the returned sender is dropped or fires, then
/// hands the swarm back; its events go to the receiver.
pub fn spawn<S>(
    mut swarm: S,
) -> (
    mpsc::UnboundedReceiver<String>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<S>,
)
where
    S: futures::Stream + futures::stream::FusedStream + Unpin + Send + 'static,
    S::Item: std::fmt::Debug,
{
    let (tx, rx) = mpsc::unbounded();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        loop {
            tokio::select! {
                e = swarm.select_next_some() => { let _ = tx.unbounded_send(format!("{e:?}")); }
                _ = &mut stop_rx => break,
            }
        }
        swarm
    });
    (rx, stop_tx, handle)
}
