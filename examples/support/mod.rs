//! What the `demo` and `node` examples share: the node's behaviour, the relay server, and an
//! echo protocol for checked transfers.
#![allow(dead_code)]

#[cfg(feature = "metrics")]
pub mod metrics;
pub mod payload;
pub mod pongs;
#[cfg(feature = "metrics")]
pub mod relay_metrics;
pub mod streams;

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, OptionalTransport};
use libp2p::core::{upgrade, Transport as _};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, StreamProtocol, SwarmEvent};
use libp2p::{noise, ping, relay, tcp, yamux, Multiaddr, Stream, Swarm};

pub use payload::payload;
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
    peer_with(key, webrtc, ping_interval, ECHO, IDLE_TIMEOUT)
}

/// How long the examples keep a connection with no open stream (pings do not keep a
/// connection alive).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// [`peer`] whose raw streams speak `protocol` instead of [`ECHO`]; it also has QUIC, for
/// side-by-side comparisons.
pub fn peer_with(
    key: Keypair,
    webrtc: Option<libp2p_webrtc_signal::Config>,
    ping_interval: Duration,
    protocol: StreamProtocol,
    idle: Duration,
) -> anyhow::Result<(Swarm<Peer>, Inbound)> {
    let (echo, inbound) = Raw::new(protocol);
    let swarm = swarm(key, webrtc, idle, move |relay, webrtc| Peer {
        relay,
        webrtc,
        ping: ping::Behaviour::new(ping::Config::new().with_interval(ping_interval)),
        echo,
    })?;
    Ok((swarm, inbound))
}

/// The one `SwarmBuilder` chain of the examples and tests: TCP (noise, yamux), QUIC, the
/// upgrade's transport (with `webrtc: Some`), WebSockets (`/ws`), the relay client; `behaviour` builds the
/// node's behaviour from the relay client and the upgrade's behaviour. A connection with
/// no open stream is closed after `idle`.
pub fn swarm<B: NetworkBehaviour>(
    key: Keypair,
    webrtc: Option<libp2p_webrtc_signal::Config>,
    idle: Duration,
    behaviour: impl FnOnce(relay::client::Behaviour, Toggle<libp2p_webrtc_signal::Behaviour>) -> B,
) -> anyhow::Result<Swarm<B>> {
    let (transport, webrtc) = upgrade(&key, webrtc);
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_other_transport(move |_| transport)?
        .with_other_transport(websocket)?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(move |_, relay| behaviour(relay, webrtc))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build())
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

/// WebSockets over TCP (`/ws`; no TLS), with noise and yamux: how browsers reach a relay.
pub fn websocket(
    key: &Keypair,
) -> Result<Boxed<(libp2p::PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let ws = libp2p_websocket::Config::new(tcp::tokio::Transport::new(tcp::Config::default()));
    Ok(ws
        .upgrade(upgrade::Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Builds a circuit relay v2 server over TCP and WebSockets (listen on `/tcp/P/ws` for
/// browsers).
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
        .with_other_transport(websocket)?
        .with_behaviour(|_| relay::Behaviour::new(local, config))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build())
}

/// Logs to stderr per `RUST_LOG` (nothing by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// The value after a command-line `flag`, parsed.
pub fn flag_value<T: std::str::FromStr>(
    flag: &str,
    it: &mut impl Iterator<Item = String>,
) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    let v = it
        .next()
        .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
    v.parse().map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e}"))
}

/// The comma-separated list after a command-line `flag`, parsed.
pub fn flag_list<T: std::str::FromStr>(
    flag: &str,
    it: &mut impl Iterator<Item = String>,
) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    let v: String = flag_value(flag, it)?;
    v.split(',')
        .map(|n| n.parse().map_err(|e| anyhow::anyhow!("{flag} {n:?}: {e}")))
        .collect()
}

/// A connection's address is direct WebRTC: it has `/webrtc` after `/p2p-circuit`.
pub fn is_webrtc(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::WebRTC)
}

/// A connection's address goes through a relay (and is not the WebRTC upgrade of one).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit) && !is_webrtc(addr)
}

/// How a stream served by [`serve_echo`] ended.
#[derive(Debug)]
pub struct Served {
    /// Bytes read (and written back).
    pub bytes: u64,
    /// `Ok` when the writer closed its side and the echo was closed in turn; the error
    /// otherwise (`ConnectionReset`: the remote reset the stream).
    pub end: std::io::Result<()>,
}

impl Served {
    /// `"closed"`, `"reset"` or `"error"`, for reports.
    pub fn end_name(&self) -> &'static str {
        match &self.end {
            Ok(()) => "closed",
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
            Err(_) => "error",
        }
    }
}

/// Echoes a stream back to its writer until it closes its side, then closes ours.
pub async fn serve_echo(mut stream: Stream) -> Served {
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    let end = async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            stream.write_all(&buf[..n]).await?;
        }
        stream.close().await
    }
    .await;
    Served { bytes, end }
}

/// What [`echo_transfer`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Echoed {
    /// From the first byte written to the last byte read back.
    pub took: Duration,
    /// How long closing our write side took, started once the whole echo was back (our
    /// data has left every buffer): the `FIN` → `FIN_ACK` round trip.
    pub close: Duration,
}

/// Sends `len` bytes over an echo stream while reading the echo; checks it byte for byte.
pub async fn echo_transfer(stream: Stream, len: usize) -> anyhow::Result<Echoed> {
    let data = payload(len, 1);
    let started = Instant::now();
    let (mut r, mut w) = stream.split();
    let (echoed_tx, echoed_rx) = futures::channel::oneshot::channel::<()>();
    let writer = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await?;
        }
        // Also goes on if the reader failed (the sender is dropped).
        let _ = echoed_rx.await;
        let closing = Instant::now();
        w.close().await?;
        anyhow::Ok(closing.elapsed())
    };
    let reader = async {
        let mut echoed_tx = Some(echoed_tx);
        let mut got = Vec::with_capacity(len);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if got.len() >= len {
                if let Some(tx) = echoed_tx.take() {
                    let _ = tx.send(());
                }
            }
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(got)
    };
    let (close, got) = futures::join!(writer, reader);
    let close = close?;
    let got = got?;
    let took = started.elapsed();
    check_echo(&got, &data)?;
    Ok(Echoed { took, close })
}

/// Sends `len` bytes over an echo stream, reads them back, checks them, then resets the
/// stream (drops it unclosed): the remote's echo server must see the reset.
pub async fn echo_then_reset(mut stream: Stream, len: usize) -> anyhow::Result<()> {
    let data = payload(len, 1);
    stream.write_all(&data).await?;
    stream.flush().await?;
    let mut got = vec![0u8; len];
    stream.read_exact(&mut got).await?;
    check_echo(&got, &data)?;
    drop(stream);
    Ok(())
}

fn check_echo(got: &[u8], data: &[u8]) -> anyhow::Result<()> {
    if got.len() != data.len() {
        anyhow::bail!("echo returned {} of {} bytes", got.len(), data.len());
    }
    if let Some(i) = got.iter().zip(data).position(|(a, b)| a != b) {
        anyhow::bail!("echo differs at byte {i}");
    }
    Ok(())
}
