//! The move from the relay to the direct connection: streams on the relay finish, the drain is bounded.

use std::time::{Duration, Instant};

use libp2p_webrtc_signal::Event;

use crate::common::{self, init_tracing, loopback_config};
use crate::swarm::*;

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
