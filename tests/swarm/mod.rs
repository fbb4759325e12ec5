//! Real swarms in one process: a relay server on TCP 127.0.0.1, nodes that reach each other
//! through it, and a raw-stream behaviour for tests that need byte-level access.
#![allow(dead_code)]

use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, Stream, StreamProtocol, SwarmEvent};
use libp2p::{ping, relay, request_response, Multiaddr, PeerId, Swarm};
use libp2p_webrtc_signal::{Config, Event};
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
    let (raw, raw_rx) = Raw::new(raw_protocol);
    let swarm = support::swarm(
        Keypair::generate_ed25519(),
        webrtc,
        support::IDLE_TIMEOUT,
        move |relay, webrtc| Node {
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
        },
    )
    .expect("a swarm");
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

// What the upgrade tests share: two nodes and a relay, driving both, waiting for events.

pub const T: Duration = Duration::from_secs(60);

/// Which node an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Drives both nodes until `f` returns `Some`.
pub async fn both<R>(
    a: &mut NodeSwarm,
    b: &mut NodeSwarm,
    mut f: impl FnMut(Side, SwarmEvent<NodeEvent>) -> Option<R>,
) -> R {
    use futures::StreamExt;
    tokio::time::timeout(T, async {
        loop {
            let r = tokio::select! {
                e = a.select_next_some() => f(Side::A, e),
                e = b.select_next_some() => f(Side::B, e),
            };
            if let Some(r) = r {
                return r;
            }
        }
    })
    .await
    .expect("timed out (hang)")
}

pub fn is_webrtc(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::WebRTC)
}

pub type RawRx = futures::channel::mpsc::UnboundedReceiver<(
    PeerId,
    libp2p::swarm::ConnectionId,
    libp2p::Stream,
)>;

pub struct Setup {
    pub a: NodeSwarm,
    pub b: NodeSwarm,
    pub b_raw: RawRx,
    pub relay_addr: Multiaddr,
    pub _relay: (
        futures::channel::oneshot::Sender<()>,
        tokio::task::JoinHandle<libp2p::Swarm<libp2p::relay::Behaviour>>,
    ),
}

/// A relay, node B reserved on it, node A (not yet connected).
pub async fn setup(a_config: Option<Config>, b_config: Option<Config>) -> Setup {
    setup_raw(a_config, b_config, ECHO).await
}

pub async fn setup_raw(
    a_config: Option<Config>,
    b_config: Option<Config>,
    raw: libp2p::StreamProtocol,
) -> Setup {
    let (relay, relay_addr) = relay_server().await;
    let (_events, stop, handle) = spawn(relay);
    let (a, _) = node(a_config, raw.clone());
    let (mut b, b_raw) = node(b_config, raw);
    reserve(&mut b, &relay_addr).await;
    Setup {
        a,
        b,
        b_raw,
        relay_addr,
        _relay: (stop, handle),
    }
}

/// [`setup`] with `config` on both nodes, and A dialing B through the relay; returns the
/// setup (keep it: it holds the relay) and B's peer id.
pub async fn setup_and_dial(config: Config) -> (Setup, PeerId) {
    let mut s = setup(Some(config.clone()), Some(config)).await;
    let b_id = *s.b.local_peer_id();
    s.a.dial(circuit(&s.relay_addr, b_id)).expect("dial");
    (s, b_id)
}

/// A dials B through the relay; returns A's id of the relayed connection once established.
pub async fn dial_relayed(
    a: &mut NodeSwarm,
    b: &mut NodeSwarm,
    relay_addr: &Multiaddr,
) -> libp2p::swarm::ConnectionId {
    let b_id = *b.local_peer_id();
    a.dial(circuit(relay_addr, b_id)).unwrap();
    both(a, b, |side, e| match e {
        SwarmEvent::ConnectionEstablished {
            connection_id,
            peer_id,
            ..
        } if side == Side::A && peer_id == b_id => Some(connection_id),
        _ => None,
    })
    .await
}

pub fn circuit(relay: &Multiaddr, peer: PeerId) -> Multiaddr {
    relay
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(peer))
}

pub fn webrtc_event(e: &SwarmEvent<NodeEvent>) -> Option<&Event> {
    match e {
        SwarmEvent::Behaviour(NodeEvent::Webrtc(e)) => Some(e),
        _ => None,
    }
}

/// Waits until A pinged B successfully over `connection`, twice.
pub async fn pings_over(
    a: &mut NodeSwarm,
    b: &mut NodeSwarm,
    connection: libp2p::swarm::ConnectionId,
) {
    let mut n = 0;
    both(a, b, |side, e| {
        if let SwarmEvent::Behaviour(NodeEvent::Ping(ping::Event {
            connection: c,
            result: Ok(_),
            ..
        })) = e
        {
            if side == Side::A && c == connection {
                n += 1;
            }
        }
        (n >= 2).then_some(())
    })
    .await;
}

/// Drives both swarms (their events are dropped) until `fut` completes.
pub async fn drive<F: std::future::Future>(
    a: &mut NodeSwarm,
    b: &mut NodeSwarm,
    fut: F,
) -> F::Output {
    use futures::StreamExt;
    tokio::pin!(fut);
    tokio::time::timeout(T, async {
        loop {
            tokio::select! {
                r = &mut fut => return r,
                _ = a.select_next_some() => {}
                _ = b.select_next_some() => {}
            }
        }
    })
    .await
    .expect("timed out (hang)")
}

/// Both nodes (each reserved on the relay) dial each other at once: two relayed connections,
/// each side the offerer on one. Runs until 4 s after the first upgrade; returns each side's
/// direct connections then (A first).
pub async fn glare(
    a: &mut NodeSwarm,
    b: &mut NodeSwarm,
    relay_addr: &Multiaddr,
) -> [std::collections::HashSet<ConnectionId>; 2] {
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    a.dial(circuit(relay_addr, b_id)).unwrap();
    b.dial(circuit(relay_addr, a_id)).unwrap();
    let mut direct: [std::collections::HashSet<ConnectionId>; 2] = Default::default();
    let mut settle_until: Option<std::time::Instant> = None;
    loop {
        let next = both(a, b, |side, e| Some((side, e)));
        let (side, e) = match settle_until {
            Some(t) => match tokio::time::timeout_at(t.into(), next).await {
                Ok(x) => x,
                Err(_) => break,
            },
            None => next.await,
        };
        let i = side as usize;
        match e {
            SwarmEvent::ConnectionEstablished {
                connection_id,
                endpoint,
                ..
            } if endpoint
                .get_remote_address()
                .iter()
                .any(|p| p == Protocol::WebRTC)
                && !endpoint.is_dialer() =>
            {
                direct[i].insert(connection_id);
            }
            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                direct[i].remove(&connection_id);
            }
            SwarmEvent::Behaviour(NodeEvent::Webrtc(Event::Upgraded { .. })) => {
                settle_until.get_or_insert(std::time::Instant::now() + Duration::from_secs(4));
            }
            _ => {}
        }
    }
    direct
}
