//! Relayed connections upgraded to direct WebRTC connections: real swarms in one process, a
//! relay server on TCP 127.0.0.1, WebRTC on real UDP.

mod common;
mod swarm;

use std::time::{Duration, Instant};

use common::{init_tracing, loopback_config};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{ping, request_response, Multiaddr, PeerId};
use libp2p_webrtc_signal::{Config, Event};
use swarm::*;

const T: Duration = Duration::from_secs(60);

/// Which node an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// Drives both nodes until `f` returns `Some`.
async fn both<R>(
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

fn is_webrtc(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::WebRTC)
}

struct Setup {
    a: NodeSwarm,
    b: NodeSwarm,
    relay_addr: Multiaddr,
    _relay: (futures::channel::oneshot::Sender<()>, tokio::task::JoinHandle<libp2p::Swarm<libp2p::relay::Behaviour>>),
}

/// A relay, node B reserved on it, node A (not yet connected).
async fn setup(a_config: Option<Config>, b_config: Option<Config>) -> Setup {
    let (relay, relay_addr) = relay_server().await;
    let (_events, stop, handle) = spawn(relay);
    let (a, _) = node(a_config, ECHO);
    let (mut b, _) = node(b_config, ECHO);
    reserve(&mut b, &relay_addr).await;
    Setup {
        a,
        b,
        relay_addr,
        _relay: (stop, handle),
    }
}

fn circuit(relay: &Multiaddr, peer: PeerId) -> Multiaddr {
    relay.clone().with(Protocol::P2pCircuit).with(Protocol::P2p(peer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_connection_is_upgraded_without_app_code() {
    init_tracing();
    let config = loopback_config().with_drain_timeout(Duration::from_secs(3));
    let Setup {
        mut a,
        mut b,
        relay_addr,
        _relay,
    } = setup(Some(config.clone()), Some(config)).await;
    let b_id = *b.local_peer_id();
    let a_id = *a.local_peer_id();
    a.dial(circuit(&relay_addr, b_id)).unwrap();

    // Both sides report the upgrade, and the relayed connections close.
    let mut upgraded = [None, None];
    let mut relay_closed = [false, false];
    let mut relayed_at = None;
    both(&mut a, &mut b, |side, e| {
        let i = side as usize;
        match e {
            SwarmEvent::ConnectionEstablished { endpoint, .. }
                if side == Side::A && !is_webrtc(endpoint.get_remote_address()) =>
            {
                relayed_at = Some(Instant::now());
            }
            SwarmEvent::Behaviour(NodeEvent::Webrtc(Event::Upgraded {
                direct_connection,
                ..
            })) => upgraded[i] = Some(direct_connection),
            SwarmEvent::Behaviour(NodeEvent::Webrtc(Event::UpgradeFailed { error, .. })) => {
                panic!("{side:?}: upgrade failed: {error}")
            }
            SwarmEvent::Behaviour(NodeEvent::Webrtc(Event::RelayClosed { .. })) => {
                relay_closed[i] = true
            }
            _ => {}
        }
        (upgraded.iter().all(Option::is_some) && relay_closed.iter().all(|c| *c)).then_some(())
    })
    .await;
    let direct_a = upgraded[0].unwrap();
    eprintln!(
        "relayed connection established → upgraded and relay closed: {:?}",
        relayed_at.map(|t| t.elapsed())
    );

    // Exactly one connection each way, and it is the WebRTC one.
    assert!(a.is_connected(&b_id));
    assert_eq!(a.network_info().num_peers(), 2, "relay server and B");
    assert_eq!(
        a.network_info().connection_counters().num_established(),
        2,
        "one to the relay server, one (direct) to B"
    );
    assert!(a.behaviour().webrtc.as_ref().unwrap().is_upgraded(&b_id));
    assert!(b.behaviour().webrtc.as_ref().unwrap().is_upgraded(&a_id));

    // Ping and a request/response protocol run over the direct connection.
    let request = a.behaviour_mut().rr.send_request(&b_id, Req("hello".into()));
    let channel = both(&mut a, &mut b, |side, e| match e {
        SwarmEvent::Behaviour(NodeEvent::Rr(request_response::Event::Message {
            message: request_response::Message::Request { request, channel, .. },
            connection_id,
            ..
        })) => {
            assert_eq!(side, Side::B);
            assert_eq!(request, Req("hello".into()));
            assert_eq!(connection_id, upgraded[1].unwrap(), "request over the direct connection");
            Some(channel)
        }
        _ => None,
    })
    .await;
    b.behaviour_mut()
        .rr
        .send_response(channel, Resp("hello back".into()))
        .unwrap();
    let (mut pinged, mut answered) = (false, false);
    both(&mut a, &mut b, |side, e| {
        match e {
            SwarmEvent::Behaviour(NodeEvent::Ping(ping::Event {
                connection, result, peer, ..
            })) if side == Side::A && peer == b_id => {
                assert_eq!(connection, direct_a, "ping over another connection");
                result.expect("ping over the direct connection");
                pinged = true;
            }
            SwarmEvent::Behaviour(NodeEvent::Rr(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                connection_id,
                ..
            })) => {
                assert_eq!(request_id, request);
                assert_eq!(response, Resp("hello back".into()));
                assert_eq!(connection_id, direct_a, "response over another connection");
                answered = true;
            }
            SwarmEvent::Behaviour(NodeEvent::Rr(request_response::Event::OutboundFailure {
                error, ..
            })) => panic!("request failed: {error}"),
            _ => {}
        }
        (pinged && answered).then_some(())
    })
    .await;
}
