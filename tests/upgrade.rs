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

type RawRx = futures::channel::mpsc::UnboundedReceiver<(
    PeerId,
    libp2p::swarm::ConnectionId,
    libp2p::Stream,
)>;

struct Setup {
    a: NodeSwarm,
    b: NodeSwarm,
    b_raw: RawRx,
    relay_addr: Multiaddr,
    _relay: (
        futures::channel::oneshot::Sender<()>,
        tokio::task::JoinHandle<libp2p::Swarm<libp2p::relay::Behaviour>>,
    ),
}

/// A relay, node B reserved on it, node A (not yet connected).
async fn setup(a_config: Option<Config>, b_config: Option<Config>) -> Setup {
    setup_raw(a_config, b_config, ECHO).await
}

async fn setup_raw(
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

/// A dials B through the relay; returns A's id of the relayed connection once established.
async fn dial_relayed(
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

fn circuit(relay: &Multiaddr, peer: PeerId) -> Multiaddr {
    relay
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(peer))
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
        ..
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
                took,
                timings,
                ..
            })) => {
                assert_eq!(took, timings.total());
                assert!(timings.signaling_bytes_sent > 0 && timings.signaling_bytes_received > 0);
                assert!(timings.ice > Duration::ZERO && timings.dtls > Duration::ZERO);
                if side == Side::A {
                    assert!(timings.stream > Duration::ZERO, "A opened the stream");
                } else {
                    assert_eq!(timings.stream, Duration::ZERO, "B answered");
                }
                eprintln!("{side:?}: {timings:?}");
                upgraded[i] = Some(direct_connection)
            }
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
    let request = a
        .behaviour_mut()
        .rr
        .send_request(&b_id, Req("hello".into()));
    let channel = both(&mut a, &mut b, |side, e| match e {
        SwarmEvent::Behaviour(NodeEvent::Rr(request_response::Event::Message {
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            connection_id,
            ..
        })) => {
            assert_eq!(side, Side::B);
            assert_eq!(request, Req("hello".into()));
            assert_eq!(
                connection_id,
                upgraded[1].unwrap(),
                "request over the direct connection"
            );
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
                connection,
                result,
                peer,
                ..
            })) if side == Side::A && peer == b_id => {
                assert_eq!(connection, direct_a, "ping over another connection");
                result.expect("ping over the direct connection");
                pinged = true;
            }
            SwarmEvent::Behaviour(NodeEvent::Rr(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                connection_id,
                ..
            })) => {
                assert_eq!(request_id, request);
                assert_eq!(response, Resp("hello back".into()));
                assert_eq!(connection_id, direct_a, "response over another connection");
                answered = true;
            }
            SwarmEvent::Behaviour(NodeEvent::Rr(request_response::Event::OutboundFailure {
                error,
                ..
            })) => panic!("request failed: {error}"),
            _ => {}
        }
        (pinged && answered).then_some(())
    })
    .await;
}

fn webrtc_event(e: &SwarmEvent<NodeEvent>) -> Option<&Event> {
    match e {
        SwarmEvent::Behaviour(NodeEvent::Webrtc(e)) => Some(e),
        _ => None,
    }
}

/// Waits until A pinged B successfully over `connection`, twice.
async fn pings_over(a: &mut NodeSwarm, b: &mut NodeSwarm, connection: libp2p::swarm::ConnectionId) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrade_keeps_the_relay_and_retries_are_bounded() {
    init_tracing();
    // Relay-only candidates and no TURN server, on both sides: ICE cannot find a path.
    let a_config = loopback_config()
        .with_relay_only(true)
        .with_upgrade_timeout(Duration::from_secs(3))
        .with_retries(2, Duration::from_millis(200));
    let Setup {
        mut a,
        mut b,
        relay_addr,
        _relay,
        ..
    } = setup(Some(a_config.clone()), Some(a_config)).await;
    let b_id = *b.local_peer_id();
    a.dial(circuit(&relay_addr, b_id)).unwrap();
    let mut relayed = None;
    let mut failures = Vec::new();
    let mut b_failed = false;
    both(&mut a, &mut b, |side, e| {
        if let SwarmEvent::ConnectionEstablished {
            connection_id,
            peer_id,
            ..
        } = &e
        {
            if side == Side::A && *peer_id == b_id {
                relayed = Some(*connection_id);
            }
        }
        match webrtc_event(&e) {
            Some(Event::Upgraded { .. }) => panic!("upgrade cannot succeed here"),
            Some(Event::UpgradeFailed {
                attempt,
                will_retry,
                relayed_connection,
                ..
            }) => {
                if side == Side::A {
                    assert_eq!(Some(*relayed_connection), relayed);
                    failures.push((*attempt, *will_retry));
                } else {
                    assert!(!will_retry, "the answering side does not retry");
                    b_failed = true;
                }
            }
            _ => {}
        }
        (failures.len() == 2 && b_failed).then_some(())
    })
    .await;
    assert_eq!(failures, vec![(1, true), (2, false)]);
    // The relayed connection still carries ping, and no third attempt starts.
    let relayed = relayed.unwrap();
    let mut started = 0;
    let mut pinged = 0;
    both(&mut a, &mut b, |side, e| {
        match (&e, webrtc_event(&e)) {
            (_, Some(Event::UpgradeStarted { .. })) if side == Side::A => started += 1,
            (
                SwarmEvent::Behaviour(NodeEvent::Ping(ping::Event {
                    connection,
                    result: Ok(_),
                    ..
                })),
                _,
            ) if side == Side::A && *connection == relayed => pinged += 1,
            _ => {}
        }
        (pinged >= 3).then_some(())
    })
    .await;
    assert_eq!(started, 0, "retries must stop at max_upgrade_attempts");
    assert!(a.is_connected(&b_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_upgrade_off_upgrades_only_explicit_webrtc_dials() {
    init_tracing();
    let config = loopback_config()
        .with_auto_upgrade(false)
        .with_drain_timeout(Duration::from_secs(2));
    let Setup {
        mut a,
        mut b,
        relay_addr,
        _relay,
        ..
    } = setup(Some(config.clone()), Some(config)).await;
    let b_id = *b.local_peer_id();

    // A plain relayed dial stays relayed.
    let relayed = dial_relayed(&mut a, &mut b, &relay_addr).await;
    let mut started = false;
    let mut pinged = 0;
    both(&mut a, &mut b, |side, e| {
        started |= matches!(webrtc_event(&e), Some(Event::UpgradeStarted { .. }));
        if let SwarmEvent::Behaviour(NodeEvent::Ping(ping::Event {
            connection,
            result: Ok(_),
            ..
        })) = e
        {
            if side == Side::A && connection == relayed {
                pinged += 1;
            }
        }
        (pinged >= 3).then_some(())
    })
    .await;
    assert!(!started, "auto-upgrade is off");

    // An explicit `/p2p-circuit/webrtc` dial is upgraded.
    let explicit = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::WebRTC)
        .with(Protocol::P2p(b_id));
    a.dial(explicit).unwrap();
    let mut upgraded = [false, false];
    both(&mut a, &mut b, |side, e| {
        match webrtc_event(&e) {
            Some(Event::Upgraded { .. }) => upgraded[side as usize] = true,
            Some(Event::UpgradeFailed { error, .. }) => panic!("{side:?}: {error}"),
            _ => {}
        }
        upgraded.iter().all(|u| *u).then_some(())
    })
    .await;
    assert!(a.behaviour().webrtc.as_ref().unwrap().is_upgraded(&b_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_on_request_from_either_side() {
    init_tracing();
    let config = loopback_config()
        .with_auto_upgrade(false)
        .with_drain_timeout(Duration::from_secs(2));
    let Setup {
        mut a,
        mut b,
        relay_addr,
        _relay,
        ..
    } = setup(Some(config.clone()), Some(config)).await;
    let a_id = *a.local_peer_id();
    let b_id = *b.local_peer_id();
    fn webrtc(s: &mut NodeSwarm) -> &mut libp2p_webrtc_signal::Behaviour {
        s.behaviour_mut().webrtc.as_mut().unwrap()
    }
    assert!(
        !webrtc(&mut a).upgrade(b_id),
        "no connection to upgrade yet"
    );
    let relayed = dial_relayed(&mut a, &mut b, &relay_addr).await;
    pings_over(&mut a, &mut b, relayed).await;

    // B, the side that accepted the circuit, asks for the upgrade: it offers.
    assert!(webrtc(&mut b).upgrade(a_id));
    assert!(!webrtc(&mut b).upgrade(a_id), "one upgrade at a time");
    let mut upgraded = [false, false];
    both(&mut a, &mut b, |side, e| {
        match webrtc_event(&e) {
            Some(Event::UpgradeStarted { role, .. }) => {
                let offers = *role == libp2p_webrtc_signal::SdpRole::Offerer;
                assert_eq!(offers, side == Side::B, "{side:?} {role:?}");
            }
            Some(Event::Upgraded { .. }) => upgraded[side as usize] = true,
            Some(Event::UpgradeFailed { error, .. }) => panic!("{side:?}: {error}"),
            _ => {}
        }
        upgraded.iter().all(|u| *u).then_some(())
    })
    .await;
    assert!(!webrtc(&mut a).upgrade(b_id), "already upgraded");
    assert!(!webrtc(&mut b).upgrade(a_id), "already upgraded");
}

/// One signaling message, varint length-prefixed, encoded by hand.
fn message(kind: u8, data: &[u8]) -> Vec<u8> {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut body = vec![0x08, kind, 0x12];
    varint(data.len(), &mut body);
    body.extend_from_slice(data);
    let mut out = Vec::new();
    varint(body.len(), &mut out);
    out.extend(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_signaling_input_fails_the_upgrade_not_the_relay() {
    use futures::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    // A is hostile: no WebRTC behaviour, raw access to the signaling protocol.
    let Setup {
        mut a,
        mut b,
        relay_addr,
        _relay,
        ..
    } = setup_raw(
        None,
        Some(loopback_config()),
        libp2p_webrtc_signal::PROTOCOL_NAME,
    )
    .await;
    let b_id = *b.local_peer_id();
    let relayed = dial_relayed(&mut a, &mut b, &relay_addr).await;

    let offer = {
        let mut s = libp2p_webrtc_signal::Session::new(
            &loopback_config(),
            libp2p_webrtc_signal::SdpRole::Offerer,
        )
        .await
        .unwrap();
        s.create_offer().await.unwrap()
    };
    let mut flood = message(0, offer.as_bytes());
    for i in 0..100 {
        let c = format!(
            r#"{{"candidate":"candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host","sdpMid":"0"}}"#,
            10000 + i
        );
        flood.extend(message(2, c.as_bytes()));
    }
    type Check = fn(&libp2p_webrtc_signal::Error) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        (
            "oversized message",
            message(0, &vec![b'v'; 1024 * 1024]),
            |e| matches!(e, libp2p_webrtc_signal::Error::Protocol(_)),
        ),
        (
            "garbage",
            vec![0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            |e| matches!(e, libp2p_webrtc_signal::Error::Protocol(_)),
        ),
        (
            "SDP that does not parse",
            message(0, b"this is not SDP"),
            |e| {
                matches!(
                    e,
                    libp2p_webrtc_signal::Error::InvalidSdp(_)
                        | libp2p_webrtc_signal::Error::NoFingerprint
                )
            },
        ),
        ("candidate flood", flood, |e| {
            matches!(e, libp2p_webrtc_signal::Error::TooManyCandidates(64))
        }),
    ];
    for (name, bytes, expected) in cases {
        let rx = a.behaviour_mut().raw.open(b_id, relayed);
        let mut stream = drive(&mut a, &mut b, rx)
            .await
            .expect("open")
            .expect("negotiated");
        let io = tokio::spawn(async move {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
            let mut buf = Vec::new();
            // The victim resets or closes the stream: reading ends, it does not hang.
            let _ = stream.read_to_end(&mut buf).await;
        });
        let error = both(&mut a, &mut b, |side, e| match webrtc_event(&e) {
            Some(Event::UpgradeFailed {
                error, will_retry, ..
            }) => {
                assert_eq!(side, Side::B);
                assert!(!will_retry);
                assert!(expected(error), "{name}: unexpected error {error}");
                Some(error.to_string())
            }
            Some(Event::Upgraded { .. }) => panic!("{name}: upgraded"),
            _ => None,
        })
        .await;
        eprintln!("{name}: {error}");
        tokio::time::timeout(T, io)
            .await
            .expect("stream not ended")
            .unwrap();
        // The relayed connection keeps working.
        pings_over(&mut a, &mut b, relayed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_times_out() {
    init_tracing();
    // B is silent: it accepts the signaling stream and never writes.
    let a_config = loopback_config()
        .with_upgrade_timeout(Duration::from_secs(2))
        .with_retries(2, Duration::from_millis(100));
    let Setup {
        mut a,
        mut b,
        mut b_raw,
        relay_addr,
        _relay,
        ..
    } = setup_raw(Some(a_config), None, libp2p_webrtc_signal::PROTOCOL_NAME).await;
    let b_id = *b.local_peer_id();
    a.dial(circuit(&relay_addr, b_id)).unwrap();
    let mut held = Vec::new();
    let mut failures = Vec::new();
    both(&mut a, &mut b, |side, e| {
        while let Ok(s) = b_raw.try_recv() {
            held.push(s);
        }
        if let Some(Event::UpgradeFailed {
            error,
            attempt,
            will_retry,
            ..
        }) = webrtc_event(&e)
        {
            assert_eq!(side, Side::A);
            assert!(
                matches!(error, libp2p_webrtc_signal::Error::Timeout),
                "{error}"
            );
            failures.push((*attempt, *will_retry));
        }
        (failures.len() == 2).then_some(())
    })
    .await;
    assert_eq!(failures, vec![(1, true), (2, false)]);
    assert!(
        !held.is_empty(),
        "the silent peer got the signaling streams"
    );
    assert!(a.is_connected(&b_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_relay_mid_upgrade_fails_the_attempt() {
    init_tracing();
    // B is silent (it takes the signaling stream and never answers), so A's attempt is
    // still running when the relay server goes away.
    let Setup {
        mut a,
        mut b,
        mut b_raw,
        relay_addr,
        _relay,
        ..
    } = setup_raw(
        Some(loopback_config()),
        None,
        libp2p_webrtc_signal::PROTOCOL_NAME,
    )
    .await;
    let b_id = *b.local_peer_id();
    let relayed = dial_relayed(&mut a, &mut b, &relay_addr).await;
    let mut held = Vec::new();
    both(&mut a, &mut b, |side, e| {
        while let Ok(s) = b_raw.try_recv() {
            held.push(s);
        }
        (side == Side::A && matches!(webrtc_event(&e), Some(Event::UpgradeStarted { .. })))
            .then_some(())
    })
    .await;
    let (stop, relay_task) = _relay;
    let _ = stop.send(());
    drop(relay_task.await.expect("relay task"));
    let (error, will_retry, connection) = both(&mut a, &mut b, |side, e| match webrtc_event(&e) {
        Some(Event::UpgradeFailed {
            error,
            will_retry,
            relayed_connection,
            ..
        }) if side == Side::A => Some((error.to_string(), *will_retry, *relayed_connection)),
        _ => None,
    })
    .await;
    assert_eq!(connection, relayed);
    assert!(!will_retry);
    assert_eq!(error, libp2p_webrtc_signal::Error::RelayLost.to_string());
    assert!(!a.is_connected(&b_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrent_upgrade_limit_is_enforced() {
    use futures::AsyncWriteExt;
    init_tracing();
    // B allows one upgrade at a time. H (hostile) holds that slot with an offer that never
    // completes; A's upgrade is refused until B's attempt with H times out, then succeeds.
    let b_config = loopback_config()
        .with_max_concurrent_upgrades(1)
        .with_upgrade_timeout(Duration::from_secs(3));
    let a_config = loopback_config().with_retries(6, Duration::from_millis(250));
    let Setup {
        mut a,
        mut b,
        relay_addr,
        _relay,
        ..
    } = setup(Some(a_config), Some(b_config)).await;
    let b_id = *b.local_peer_id();
    let a_id = *a.local_peer_id();
    let (mut h, _) = node(None, libp2p_webrtc_signal::PROTOCOL_NAME);
    let h_id = *h.local_peer_id();

    let relayed = dial_relayed(&mut h, &mut b, &relay_addr).await;
    let mut rx = h.behaviour_mut().raw.open(b_id, relayed);
    // B may negotiate the stream (and start answering) before H's side reports it open.
    let mut stream = None;
    let mut b_started = false;
    both(&mut h, &mut b, |side, e| {
        if let Some(Event::UpgradeStarted { peer, .. }) = webrtc_event(&e) {
            assert_eq!((side, *peer), (Side::B, h_id));
            b_started = true;
        }
        if let Ok(Some(s)) = rx.try_recv() {
            stream = Some(s.expect("negotiated"));
        }
        (b_started && stream.is_some()).then_some(())
    })
    .await;
    let mut stream = stream.expect("stream");
    // The start of a 100-byte message: B's answerer waits for the rest, holding its slot.
    let holder = tokio::spawn(async move {
        let _ = stream.write_all(&[100, 0x0a]).await;
        let _ = stream.flush().await;
        futures::future::pending::<()>().await;
        drop(stream);
    });
    let (_h_events, _h_stop, _h_task) = spawn(h);

    a.dial(circuit(&relay_addr, b_id)).unwrap();
    let started = Instant::now();
    let mut refused = 0;
    let mut h_timed_out = None;
    let upgraded = both(&mut a, &mut b, |side, e| match (side, webrtc_event(&e)) {
        (Side::B, Some(Event::UpgradeFailed { peer, error, .. })) if *peer == a_id => {
            assert!(
                matches!(error, libp2p_webrtc_signal::Error::TooManyUpgrades),
                "{error}"
            );
            refused += 1;
            None
        }
        (Side::B, Some(Event::UpgradeFailed { peer, error, .. })) if *peer == h_id => {
            assert!(
                matches!(error, libp2p_webrtc_signal::Error::Timeout),
                "{error}"
            );
            h_timed_out = Some(started.elapsed());
            None
        }
        (Side::B, Some(Event::UpgradeStarted { peer, .. })) if *peer == a_id => {
            assert!(
                h_timed_out.is_some(),
                "a second upgrade ran beside the first"
            );
            None
        }
        (_, Some(Event::Upgraded { peer, .. })) if *peer == b_id => Some(started.elapsed()),
        _ => None,
    })
    .await;
    holder.abort();
    assert!(refused >= 1, "B never refused A's upgrade");
    let h_timed_out = h_timed_out.expect("H's attempt ended before A's upgrade");
    assert!(upgraded >= h_timed_out);
    eprintln!(
        "refused {refused} times; H timed out at {h_timed_out:?}; A upgraded at {upgraded:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_the_relay_completes_across_the_migration() {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    init_tracing();
    let config = loopback_config().with_drain_timeout(Duration::from_secs(8));
    let Setup {
        mut a,
        mut b,
        mut b_raw,
        relay_addr,
        _relay,
        ..
    } = setup(Some(config.clone()), Some(config)).await;
    let b_id = *b.local_peer_id();
    let relayed = dial_relayed(&mut a, &mut b, &relay_addr).await;
    // B echoes every raw stream.
    tokio::spawn(async move {
        while let Some((_, _, mut s)) = b_raw.next().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.close().await;
            });
        }
    });
    let rx = a.behaviour_mut().raw.open(b_id, relayed);
    let stream = drive(&mut a, &mut b, rx)
        .await
        .expect("open")
        .expect("negotiated");
    // 1 MiB each way, paced over about a second so it spans the upgrade.
    let data = common::payload(1024 * 1024, 7);
    let sent = data.clone();
    let transfer = tokio::spawn(async move {
        let (mut r, mut w) = stream.split();
        let writer = async move {
            for chunk in sent.chunks(16 * 1024) {
                w.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            w.close().await.unwrap();
        };
        let reader = async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = futures::join!(writer, reader);
        got
    });
    let mut upgraded = [false, false];
    let mut relay_closed = false;
    let mut transfer = Some(transfer);
    let mut echoed = None;
    while !(upgraded.iter().all(|u| *u) && relay_closed) {
        let ev = both(&mut a, &mut b, |side, e| Some((side, e))).await;
        match webrtc_event(&ev.1) {
            Some(Event::Upgraded { .. }) => upgraded[ev.0 as usize] = true,
            Some(Event::RelayClosed { .. }) if ev.0 == Side::A => {
                // Nothing in flight is lost: the stream finished before the relay closed.
                let t = transfer.take().expect("relay closed twice");
                assert!(
                    t.is_finished(),
                    "relay closed while its stream was still running"
                );
                echoed = Some(t.await.unwrap());
                relay_closed = true;
            }
            Some(Event::UpgradeFailed { error, .. }) => panic!("{error}"),
            _ => {}
        }
    }
    assert_eq!(
        echoed.unwrap(),
        data,
        "1 MiB echoed byte-exact across the migration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_closes_a_relay_whose_stream_never_ends() {
    use futures::AsyncWriteExt;
    init_tracing();
    let drain = Duration::from_secs(2);
    let config = loopback_config().with_drain_timeout(drain);
    let Setup {
        mut a,
        mut b,
        mut b_raw,
        relay_addr,
        _relay,
        ..
    } = setup(Some(config.clone()), Some(config)).await;
    let b_id = *b.local_peer_id();
    let relayed = dial_relayed(&mut a, &mut b, &relay_addr).await;
    // A stream on the relayed connection that neither side ever closes.
    let rx = a.behaviour_mut().raw.open(b_id, relayed);
    let mut stream = drive(&mut a, &mut b, rx)
        .await
        .expect("open")
        .expect("negotiated");
    stream.write_all(b"hold").await.unwrap();
    stream.flush().await.unwrap();
    let mut upgraded_at = None;
    let mut b_ends = Vec::new(); // B holds its end open too.
    let closed_at = both(&mut a, &mut b, |side, e| {
        while let Ok(s) = b_raw.try_recv() {
            b_ends.push(s);
        }
        match (side, webrtc_event(&e)) {
            (Side::A, Some(Event::Upgraded { .. })) => {
                upgraded_at = Some(Instant::now());
                None
            }
            (Side::A, Some(Event::RelayClosed { .. })) => Some(Instant::now()),
            (_, Some(Event::UpgradeFailed { error, .. })) => panic!("{error}"),
            _ => None,
        }
    })
    .await;
    let waited = closed_at - upgraded_at.expect("relay closed before the upgrade");
    eprintln!("relay closed {waited:?} after the upgrade (drain timeout {drain:?})");
    assert!(
        waited >= drain - Duration::from_millis(100),
        "relay closed after {waited:?}, before the drain timeout, with a stream open"
    );
    // The held stream is closed with the relay: writing to it fails. (Reading would hang:
    // yamux does not wake readers on a graceful connection close, libp2p/rust-yamux#216.)
    let write = async {
        loop {
            if stream.write_all(b"more").await.is_err() || stream.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    drive(&mut a, &mut b, write).await;
    assert!(a.behaviour().webrtc.as_ref().unwrap().is_upgraded(&b_id));
}

/// Drives both swarms (their events are dropped) until `fut` completes.
async fn drive<F: std::future::Future>(a: &mut NodeSwarm, b: &mut NodeSwarm, fut: F) -> F::Output {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glare_two_relayed_connections_end_with_one_direct_connection() {
    init_tracing();
    let config = loopback_config().with_drain_timeout(Duration::from_secs(1));
    let Setup {
        mut a,
        mut b,
        relay_addr,
        _relay,
        ..
    } = setup(Some(config.clone()), Some(config)).await;
    reserve(&mut a, &relay_addr).await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    // Both dial at once: two relayed connections, each side the offerer on one.
    a.dial(circuit(&relay_addr, b_id)).unwrap();
    b.dial(circuit(&relay_addr, a_id)).unwrap();
    let mut direct: [std::collections::HashSet<libp2p::swarm::ConnectionId>; 2] =
        Default::default();
    let mut settle_until: Option<Instant> = None;
    loop {
        let next = both(&mut a, &mut b, |side, e| Some((side, e)));
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
                settle_until.get_or_insert(Instant::now() + Duration::from_secs(4));
            }
            _ => {}
        }
    }
    assert_eq!(direct[0].len(), 1, "A: {:?}", direct[0]);
    assert_eq!(direct[1].len(), 1, "B: {:?}", direct[1]);
    assert!(a.is_connected(&b_id) && b.is_connected(&a_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn measure_upgrade_time() {
    let mut samples = Vec::new();
    for _ in 0..20 {
        let Setup {
            mut a,
            mut b,
            relay_addr,
            _relay,
            ..
        } = setup(Some(loopback_config()), Some(loopback_config())).await;
        let b_id = *b.local_peer_id();
        a.dial(circuit(&relay_addr, b_id)).unwrap();
        let mut relayed_at = None;
        let took = both(&mut a, &mut b, |side, e| match e {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if side == Side::A && peer_id == b_id && relayed_at.is_none() => {
                assert!(!endpoint
                    .get_remote_address()
                    .iter()
                    .any(|p| p == Protocol::WebRTC));
                relayed_at = Some(Instant::now());
                None
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. }
                if side == Side::A && peer_id == b_id =>
            {
                relayed_at.map(|t| t.elapsed())
            }
            _ => None,
        })
        .await;
        samples.push(took);
    }
    samples.sort();
    eprintln!(
        "relayed connection established -> direct connection established, 20 runs: median {:?}, min {:?}, max {:?}",
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1]
    );
}
