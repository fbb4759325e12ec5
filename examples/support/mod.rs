//! What the `demo` and `node` examples share: the node's behaviour, the relay server, and an
//! echo protocol for checked transfers.
#![allow(dead_code)]

pub mod streams;

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::core::transport::OptionalTransport;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, StreamProtocol, SwarmEvent};
use libp2p::{noise, ping, relay, tcp, yamux, Multiaddr, Stream, Swarm};

pub use streams::Raw;

/// The echo protocol: everything written is sent back, until the writer closes.
pub const ECHO: StreamProtocol = StreamProtocol::new("/webrtc-signal-example/echo/1.0.0");

/// A peer: relay client, the WebRTC upgrade (optional), ping and echo streams.
#[derive(NetworkBehaviour)]
pub struct Peer {
    pub relay: relay::client::Behaviour,
    pub webrtc: Toggle<libp2p_webrtc_signal::Behaviour>,
    pub ping: ping::Behaviour,
    /// Raw streams: [`ECHO`] (or another protocol, see [`peer_with`]).
    pub echo: Raw,
}

/// Where the echo streams the remote opens arrive.
pub type Inbound = futures::channel::mpsc::UnboundedReceiver<(
    libp2p::PeerId,
    libp2p::swarm::ConnectionId,
    Stream,
)>;

/// Builds a peer over TCP and circuit relay; with `webrtc: Some`, relayed connections are
/// upgraded to direct WebRTC connections.
pub fn peer(
    key: Keypair,
    webrtc: Option<libp2p_webrtc_signal::Config>,
    ping_interval: Duration,
) -> anyhow::Result<(Swarm<Peer>, Inbound)> {
    peer_with(key, webrtc, ping_interval, ECHO)
}

/// [`peer`] whose raw streams speak `protocol` instead of [`ECHO`]; it also has QUIC, for
/// side-by-side comparisons.
pub fn peer_with(
    key: Keypair,
    webrtc: Option<libp2p_webrtc_signal::Config>,
    ping_interval: Duration,
    protocol: StreamProtocol,
) -> anyhow::Result<(Swarm<Peer>, Inbound)> {
    let (transport, webrtc) = upgrade(&key, webrtc);
    let (echo, inbound) = Raw::new(protocol);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_other_transport(move |_| transport)?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(move |_, relay| Peer {
            relay,
            webrtc,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(ping_interval)),
            echo,
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok((swarm, inbound))
}

/// The upgrade's transport and behaviour for a swarm, or (with `None`) neither.
pub fn upgrade(
    key: &Keypair,
    config: Option<libp2p_webrtc_signal::Config>,
) -> (
    OptionalTransport<libp2p_webrtc_signal::Transport>,
    Toggle<libp2p_webrtc_signal::Behaviour>,
) {
    match config {
        Some(config) => {
            let (t, b) = libp2p_webrtc_signal::new(key, config);
            (OptionalTransport::some(t), Some(b).into())
        }
        None => (OptionalTransport::none(), None.into()),
    }
}

/// A relay server listening on a free TCP port of 127.0.0.1; returns it with its address
/// (`/p2p/<id>` included), once listening.
pub async fn loopback_relay(
    config: relay::Config,
) -> anyhow::Result<(Swarm<relay::Behaviour>, Multiaddr)> {
    let mut relay = relay_server(Keypair::generate_ed25519(), config)?;
    relay.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = relay.select_next_some().await {
            break address;
        }
    };
    relay.add_external_address(addr.clone());
    let addr = addr.with(Protocol::P2p(*relay.local_peer_id()));
    Ok((relay, addr))
}

/// Builds a circuit relay v2 server over TCP.
pub fn relay_server(
    key: Keypair,
    config: relay::Config,
) -> anyhow::Result<Swarm<relay::Behaviour>> {
    let local = key.public().to_peer_id();
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| relay::Behaviour::new(local, config))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// A connection's address is direct WebRTC: it has `/webrtc` after `/p2p-circuit`.
pub fn is_webrtc(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::WebRTC)
}

/// A connection's address goes through a relay (and is not the WebRTC upgrade of one).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit) && !is_webrtc(addr)
}

/// Echoes a stream back to its writer until it closes its side.
pub async fn serve_echo(mut stream: Stream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.close().await;
}

/// `len` bytes of a fixed pattern, so a corrupted or reordered echo is caught.
pub fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends `len` bytes over an echo stream while reading the echo; checks it byte for byte.
/// Returns the time from the first byte written to the last byte read back.
pub async fn echo_transfer(stream: Stream, len: usize) -> anyhow::Result<Duration> {
    let data = payload(len);
    let started = Instant::now();
    let (mut r, mut w) = stream.split();
    let writer = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await?;
        }
        w.close().await?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut got = Vec::with_capacity(len);
        r.read_to_end(&mut got).await?;
        anyhow::Ok(got)
    };
    let (written, got) = futures::join!(writer, reader);
    written?;
    let got = got?;
    let took = started.elapsed();
    if got.len() != data.len() {
        anyhow::bail!("echo returned {} of {} bytes", got.len(), data.len());
    }
    if let Some(i) = got.iter().zip(&data).position(|(a, b)| a != b) {
        anyhow::bail!("echo differs at byte {i}");
    }
    Ok(took)
}
