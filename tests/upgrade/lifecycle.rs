//! Upgrades that succeed: automatic, on request, explicit `/webrtc` dials, glare.

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{ping, request_response};
use libp2p_webrtc_signal::Event;

use crate::common::{init_tracing, loopback_config};
use crate::swarm::*;

/// A peer connection bound to IPv6 only connects over IPv6, and the event says so (the
/// relayed connection is IPv4: the families of signaling and direct path are independent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_path_is_reported_as_udp6() {
    init_tracing();
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        // CI's machine has IPv6 loopback; a host without it cannot run this.
        assert!(
            std::env::var("CI").is_err(),
            "IPv6 loopback is required in CI"
        );
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let config = loopback_config().with_udp_bind_addrs(vec!["[::1]:0".parse().unwrap()]);
    let (mut s, _) = setup_and_dial(config).await;
    let mut paths = [None, None];
    both(&mut s.a, &mut s.b, |side, e| {
        match e {
            SwarmEvent::Behaviour(NodeEvent::Webrtc(Event::Upgraded { path, .. })) => {
                paths[side as usize] = Some(path.expect("the selected pair is reported"));
            }
            SwarmEvent::Behaviour(NodeEvent::Webrtc(Event::UpgradeFailed { error, .. })) => {
                panic!("{side:?}: upgrade failed: {error}")
            }
            _ => {}
        }
        paths.iter().all(Option::is_some).then_some(())
    })
    .await;
    let [Some(a_path), Some(b_path)] = paths else {
        unreachable!()
    };
    for path in [a_path, b_path] {
        assert!(path.is_ipv6(), "{path}");
        assert_eq!(path.family(), "udp6");
        assert_eq!(path.remote.ip(), std::net::Ipv6Addr::LOCALHOST, "{path}");
        assert!(!path.is_turn_relayed(), "{path}");
    }
    // One pair, seen from both ends.
    assert_eq!(
        a_path.local.port(),
        b_path.remote.port(),
        "{a_path} / {b_path}"
    );
    assert_eq!(
        a_path.remote.port(),
        b_path.local.port(),
        "{a_path} / {b_path}"
    );
}

/// ICE selects a pair as soon as a check works, not on a later check tick (the patched
/// rtc-ice: the controlling agent nominates when its check succeeds, and the controlled agent
/// answers an early nomination and selects the pair when its own check succeeds). With a
/// 600 ms check interval the ICE phase stays far below one interval; unpatched, about one
/// upgrade in three waited for the controlling agent's next nomination (~200 ms here) and some
/// for its next tick. Four upgrades, so that a regression shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_selects_a_pair_without_waiting_for_a_check_tick() {
    init_tracing();
    let interval = Duration::from_millis(600);
    let config = loopback_config().with_ice_checks(interval, 20);
    for run in 0..4 {
        let (mut s, _) = setup_and_dial(config.clone()).await;
        let ice = both(&mut s.a, &mut s.b, |side, e| match e {
            SwarmEvent::Behaviour(NodeEvent::Webrtc(Event::Upgraded { timings, .. }))
                if side == Side::A =>
            {
                Some(timings.ice)
            }
            SwarmEvent::Behaviour(NodeEvent::Webrtc(Event::UpgradeFailed { error, .. })) => {
                panic!("{side:?}: upgrade failed: {error}")
            }
            _ => None,
        })
        .await;
        assert!(
            ice < Duration::from_millis(100),
            "run {run}: ICE took {ice:?} with a {interval:?} check interval: selection \
             waited for a tick"
        );
    }
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
                path,
                ..
            })) => {
                let path = path.expect("the selected pair is reported");
                assert_eq!(path.family(), "udp4", "{path}");
                assert_eq!(path.remote.ip(), std::net::Ipv4Addr::LOCALHOST, "{path}");
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
    let direct = glare(&mut a, &mut b, &relay_addr).await;
    assert_eq!(direct[0].len(), 1, "A: {:?}", direct[0]);
    assert_eq!(direct[1].len(), 1, "B: {:?}", direct[1]);
    assert!(a.is_connected(&b_id) && b.is_connected(&a_id));
}
