//! Upgrades that fail: bounded retries, hostile signaling, silent peers, relay loss, the concurrency limit. The relayed connection always survives.

use std::time::{Duration, Instant};

use libp2p::ping;
use libp2p::swarm::SwarmEvent;
use libp2p_webrtc_signal::Event;

use crate::common::{init_tracing, loopback_config};
use crate::swarm::*;

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

/// A raw peer A (no WebRTC behaviour, raw access to the signaling protocol) connected over
/// the relay to B, which upgrades (loopback config): the setup, B's id and A's id of the
/// relayed connection.
async fn raw_peer_and_b() -> (Setup, libp2p::PeerId, libp2p::swarm::ConnectionId) {
    let mut setup = setup_raw(
        None,
        Some(loopback_config()),
        libp2p_webrtc_signal::PROTOCOL_NAME,
    )
    .await;
    let b_id = *setup.b.local_peer_id();
    let relayed = dial_relayed(&mut setup.a, &mut setup.b, &setup.relay_addr).await;
    (setup, b_id, relayed)
}

/// A fresh offering session and its offer.
async fn raw_offer() -> (libp2p_webrtc_signal::Session, String) {
    let mut session = libp2p_webrtc_signal::Session::new(
        &loopback_config(),
        libp2p_webrtc_signal::SdpRole::Offerer,
    )
    .await
    .unwrap();
    let offer = session.create_offer().await.unwrap();
    (session, offer)
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
    let (
        Setup {
            mut a,
            mut b,
            _relay,
            ..
        },
        b_id,
        relayed,
    ) = raw_peer_and_b().await;

    let (_session, offer) = raw_offer().await;
    let mut flood = message(0, offer.as_bytes());
    for i in 0..100 {
        let c = format!(
            r#"{{"candidate":"candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host","sdpMid":"0"}}"#,
            10000 + i
        );
        flood.extend(message(2, c.as_bytes()));
    }
    // SNAP: an `a=sctp-init` that is not an INIT chunk, and one that is not base64. Taken,
    // either would leave the association waiting after DTLS for a handshake that never
    // comes, until the upgrade timeout; refused, the upgrade fails at the offer.
    let with_sctp_init = |value: &str| {
        let munged: String = offer
            .lines()
            .map(|l| {
                if l.starts_with("a=sctp-init:") {
                    format!("a=sctp-init:{value}\r\n")
                } else {
                    format!("{l}\r\n")
                }
            })
            .collect();
        assert!(
            munged.contains(&format!("a=sctp-init:{value}")),
            "no a=sctp-init"
        );
        message(0, munged.as_bytes())
    };
    let not_an_init = with_sctp_init("bm90IGFuIElOSVQgY2h1bmsgYXQgYWxs");
    let not_base64 = with_sctp_init("*** not base64 ***");
    type Check = fn(&libp2p_webrtc_signal::Error) -> bool;
    fn sctp_init_refused(e: &libp2p_webrtc_signal::Error) -> bool {
        matches!(e, libp2p_webrtc_signal::Error::InvalidSdp(cause)
            if cause.to_string().contains("a=sctp-init"))
    }
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
        (
            "a=sctp-init that is not an INIT",
            not_an_init,
            sctp_init_refused,
        ),
        (
            "a=sctp-init that is not base64",
            not_base64,
            sctp_init_refused,
        ),
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
async fn one_peer_cannot_take_every_upgrade_slot() {
    use futures::AsyncWriteExt;
    init_tracing();
    // B runs two upgrades at once, one per peer. H (hostile) opens two relayed connections and
    // a never-finished offer on each: one is answered, the other refused. A still upgrades
    // at once, long before H's attempt times out.
    let b_config = loopback_config()
        .with_max_concurrent_upgrades(2)
        .with_max_concurrent_upgrades_per_peer(1);
    let Setup {
        mut a,
        mut b,
        relay_addr,
        _relay,
        ..
    } = setup(Some(loopback_config()), Some(b_config)).await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    let (mut h, _) = node(None, libp2p_webrtc_signal::PROTOCOL_NAME);
    let h_id = *h.local_peer_id();
    let first = dial_relayed(&mut h, &mut b, &relay_addr).await;
    let second = dial_relayed(&mut h, &mut b, &relay_addr).await;
    assert_ne!(first, second);
    let mut rxs = [
        h.behaviour_mut().raw.open(b_id, first),
        h.behaviour_mut().raw.open(b_id, second),
    ];
    let mut streams = Vec::new();
    let (mut started, mut refused) = (0, 0);
    both(&mut h, &mut b, |side, e| {
        for rx in rxs.iter_mut() {
            if let Ok(Some(s)) = rx.try_recv() {
                streams.push(s.expect("negotiated"));
            }
        }
        match (side, webrtc_event(&e)) {
            (Side::B, Some(Event::UpgradeStarted { peer, .. })) if *peer == h_id => started += 1,
            (Side::B, Some(Event::UpgradeFailed { peer, error, .. })) if *peer == h_id => {
                assert!(
                    matches!(error, libp2p_webrtc_signal::Error::TooManyUpgrades),
                    "{error}"
                );
                refused += 1;
            }
            _ => {}
        }
        (started + refused == 2 && streams.len() == 2).then_some(())
    })
    .await;
    assert_eq!((started, refused), (1, 1));
    // The answered offer stays unfinished: the start of a 100-byte message.
    for s in streams.iter_mut() {
        let _ = s.write_all(&[100, 0x0a]).await;
        let _ = s.flush().await;
    }
    let (_h_events, _h_stop, _h_task) = spawn(h);
    a.dial(circuit(&relay_addr, b_id)).unwrap();
    // A refusal of A, or H's attempt timing out first, would show as a failure on B.
    let (mut a_up, mut b_up) = (false, false);
    both(&mut a, &mut b, |side, e| {
        match (side, webrtc_event(&e)) {
            (Side::B, Some(Event::UpgradeFailed { peer, error, .. })) => {
                panic!("B failed an upgrade with {peer} ({error}) before A upgraded")
            }
            (Side::A, Some(Event::Upgraded { peer, .. })) if *peer == b_id => a_up = true,
            (Side::B, Some(Event::Upgraded { peer, .. })) if *peer == a_id => b_up = true,
            _ => {}
        }
        (a_up && b_up).then_some(())
    })
    .await;
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_offer_ends_at_the_upgrade_timeout() {
    use futures::AsyncWriteExt;
    init_tracing();
    // H announces a 1000-byte offer and sends it one byte every 100 ms: B's attempt ends at
    // its upgrade timeout, not when H is done.
    let b_config = loopback_config().with_upgrade_timeout(Duration::from_secs(2));
    let Setup {
        mut a,
        mut b,
        relay_addr,
        _relay,
        ..
    } = setup_raw(None, Some(b_config), libp2p_webrtc_signal::PROTOCOL_NAME).await;
    let (b_id, h_id) = (*b.local_peer_id(), *a.local_peer_id());
    let relayed = dial_relayed(&mut a, &mut b, &relay_addr).await;
    let mut rx = a.behaviour_mut().raw.open(b_id, relayed);
    let mut stream = None;
    both(&mut a, &mut b, |_, _| {
        if let Ok(Some(s)) = rx.try_recv() {
            stream = Some(s.expect("negotiated"));
        }
        stream.is_some().then_some(())
    })
    .await;
    let mut stream = stream.expect("stream");
    let drip = tokio::spawn(async move {
        // Length 1000 (varint), then the type field, then the SDP, a byte at a time.
        let _ = stream.write_all(&[0xe8, 0x07, 0x08, 0x00, 0x12]).await;
        for _ in 0..1000 {
            if stream.write_all(b"v").await.is_err() || stream.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let error = both(&mut a, &mut b, |side, e| match (side, webrtc_event(&e)) {
        (Side::B, Some(Event::UpgradeFailed { peer, error, .. })) if *peer == h_id => {
            Some(error.to_string())
        }
        _ => None,
    })
    .await;
    drip.abort();
    assert_eq!(error, libp2p_webrtc_signal::Error::Timeout.to_string());
    // 1000 bytes at 10 per second would take 100 s; the hang guard of `both` is 60 s.
    eprintln!("slowloris ended after {:?}", started.elapsed());
    assert!(b.is_connected(&h_id), "the relayed connection survives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_offer_replaces_the_one_being_answered() {
    use futures::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    // H offers, then gives up on its side (as an offerer whose attempt failed first does) and
    // offers again on a new stream while B still answers the first. B must answer the new
    // offer: refusing it left H's retries failing until B's own attempt timed out (30 s).
    let (
        Setup {
            mut a,
            mut b,
            _relay,
            ..
        },
        b_id,
        relayed,
    ) = raw_peer_and_b().await;
    let mut answered = Vec::new();
    let mut sessions = Vec::new();
    for round in 0..2 {
        let (session, sdp) = raw_offer().await;
        sessions.push(session);
        let rx = a.behaviour_mut().raw.open(b_id, relayed);
        let mut stream = drive(&mut a, &mut b, rx)
            .await
            .expect("open")
            .expect("negotiated");
        stream.write_all(&message(0, sdp.as_bytes())).await.unwrap();
        stream.flush().await.unwrap();
        // B answers it (before the change, B reset the second stream).
        let mut first = [0u8; 4];
        drive(&mut a, &mut b, stream.read_exact(&mut first))
            .await
            .expect("an answer");
        // A length varint, then field 1 (the type): SDP_ANSWER.
        let at = first.iter().position(|b| b & 0x80 == 0).expect("varint") + 1;
        assert_eq!(
            &first[at..at + 2],
            &[0x08, 0x01],
            "round {round}: {first:?}"
        );
        answered.push(stream);
    }
    // The first answer was dropped: its stream ends on B's side.
    let mut first = answered.remove(0);
    let mut rest = Vec::new();
    // (`drive` fails the test if it does not end.)
    let _ = drive(&mut a, &mut b, first.read_to_end(&mut rest)).await;
    assert!(
        b.is_connected(a.local_peer_id()),
        "the relayed connection survives"
    );
}

/// A remote that offers again and again on one relayed connection gets its first
/// `max_remote_offers` answered; past them each offer is refused at once with a typed reason
/// (before, each was answered, at the cost of a peer connection, sockets and STUN gathering
/// apiece), and the relayed connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_past_the_remote_offer_limit_are_refused() {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p_webrtc_signal::{Error, ProtocolViolation};
    init_tracing();
    let mut setup = setup_raw(
        None,
        Some(loopback_config().with_remote_offer_limit(2, Duration::from_secs(60))),
        libp2p_webrtc_signal::PROTOCOL_NAME,
    )
    .await;
    let b_id = *setup.b.local_peer_id();
    let relayed = dial_relayed(&mut setup.a, &mut setup.b, &setup.relay_addr).await;
    let Setup {
        mut a,
        mut b,
        _relay,
        ..
    } = setup;
    use futures::StreamExt;
    let over_limit = |error: &Error| {
        matches!(
            error,
            Error::Protocol(ProtocolViolation::OverLimit { limit: 2, .. })
        )
    };
    for round in 0..4 {
        // A refused offer fails as soon as its stream arrives: watch B while opening.
        let rx = a.behaviour_mut().raw.open(b_id, relayed);
        tokio::pin!(rx);
        let mut refused = None;
        let mut stream = tokio::time::timeout(T, async {
            loop {
                tokio::select! {
                    r = &mut rx => break r,
                    _ = a.select_next_some() => {}
                    e = b.select_next_some() => {
                        if let Some(Event::UpgradeFailed { error, .. }) = webrtc_event(&e) {
                            refused = Some(over_limit(error));
                        }
                    }
                }
            }
        })
        .await
        .expect("timed out (hang)")
        .expect("open")
        .expect("negotiated");
        // Not an offer: an answered attempt fails on it at once.
        let io = tokio::spawn(async move {
            let _ = stream
                .write_all(&[0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .await;
            let _ = stream.flush().await;
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf).await;
        });
        let refused = match refused {
            Some(r) => r,
            None => {
                both(&mut a, &mut b, |side, e| match webrtc_event(&e) {
                    Some(Event::UpgradeFailed { error, .. }) => {
                        assert_eq!(side, Side::B);
                        Some(over_limit(error))
                    }
                    _ => None,
                })
                .await
            }
        };
        assert_eq!(refused, round >= 2, "round {round}");
        tokio::time::timeout(T, io)
            .await
            .expect("stream not ended")
            .unwrap();
    }
    pings_over(&mut a, &mut b, relayed).await;
}

/// A connection that is not relayed has no signaling handler: the protocols are not offered
/// there (a dummy handler), so a signaling stream on it is refused in the negotiation and
/// nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_tcp_connection_does_not_offer_signaling() {
    use futures::StreamExt;
    init_tracing();
    // A: raw access to the signaling protocol, no WebRTC behaviour. B: the behaviour (its
    // raw streams speak another protocol).
    let (mut a, _) = node(None, libp2p_webrtc_signal::PROTOCOL_NAME);
    let (mut b, _) = node(
        Some(loopback_config()),
        libp2p::StreamProtocol::new("/test/other/1"),
    );
    let b_id = *b.local_peer_id();
    b.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
            if !address.to_string().contains("p2p-circuit") {
                break address;
            }
        }
    };
    a.dial(addr.clone()).unwrap();
    let direct = both(&mut a, &mut b, |side, e| match e {
        SwarmEvent::ConnectionEstablished {
            connection_id,
            endpoint,
            ..
        } if side == Side::A && *endpoint.get_remote_address() == addr => Some(connection_id),
        SwarmEvent::OutgoingConnectionError { error, .. } if side == Side::A => {
            panic!("dial {addr}: {error}")
        }
        _ => None,
    })
    .await;
    let rx = a.behaviour_mut().raw.open(b_id, direct);
    let opened = drive(&mut a, &mut b, rx).await.expect("an answer");
    assert!(
        opened.is_err(),
        "a signaling stream on a direct TCP connection was accepted"
    );
    // And B started nothing.
    let started = tokio::time::timeout(
        Duration::from_millis(500),
        both(&mut a, &mut b, |_, e| {
            matches!(
                webrtc_event(&e),
                Some(Event::UpgradeStarted { .. } | Event::UpgradeFailed { .. })
            )
            .then_some(())
        }),
    )
    .await;
    assert!(started.is_err(), "B reacted to the refused stream");
}
