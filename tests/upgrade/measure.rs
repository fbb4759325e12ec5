//! Measurements (ignored; run with `--ignored --nocapture`).

use std::time::Instant;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;

use crate::common::loopback_config;
use crate::swarm::*;

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
