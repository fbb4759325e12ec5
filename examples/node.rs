//! One binary, three roles: a circuit relay server, a listener reachable through it, and a
//! dialer that reaches the listener, waits for the upgrade to a direct WebRTC connection and
//! checks it with pings and an echo. For real deployments and for scripted tests.
//!
//! ```text
//! node relay  --listen /ip4/0.0.0.0/tcp/4001 [--seed N]
//! node listen --relay /ip4/<relay ip>/tcp/4001/p2p/<relay id> [--seed N] [--stun stun:host:3478]
//! node dial   /ip4/<relay ip>/tcp/4001/p2p/<relay id>/p2p-circuit/p2p/<listener id> --ping 5 --send-bytes 1048576
//! ```
//!
//! stdout carries one JSON object per line, each with an `"event"` field; human logs go to
//! stderr (`RUST_LOG`). Run `node --help` for every flag.

mod support;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{ping, relay, Multiaddr, PeerId, Swarm};
use libp2p_webrtc_signal::{Config, Event, IceServer, StunResponder, DEFAULT_STUN_PORT};
use serde_json::json;
use support::{Peer, PeerEvent};

const USAGE: &str = "\
usage:
  node relay  --listen <multiaddr>... [--external <multiaddr>]... [relay limits] [common]
  node listen --relay <relay multiaddr with /p2p/ID> [--send-bytes N] [--check-reset] [common]
  node dial   <multiaddr> [--ping N] [--send-bytes N] [--check-reset] [--allow-relayed]
              [--linger S] [common]

  <multiaddr> for dial: <relay>/p2p-circuit/p2p/<id> (upgraded automatically) or
  <relay>/p2p-circuit/webrtc/p2p/<id> (explicit WebRTC dial).

common:
  --seed <u64>             deterministic Ed25519 identity (secret key = seed, little endian,
                           zero-padded to 32 bytes), so scripts know peer ids in advance
  --listen <multiaddr>     also listen here (repeatable)
  --stun <url>             STUN server, e.g. stun:192.0.2.1:3478 (repeatable; none by default)
  --turn <url>             TURN server, e.g. turn:192.0.2.1:3478?transport=udp (repeatable)
  --turn-user <name>       TURN username, for every --turn
  --turn-pass <password>   TURN password, for every --turn
  --no-upgrade             no WebRTC: stay on the relayed connection
  --loopback               allow loopback ICE candidates (everything on one machine)
  --upgrade-timeout <s>    bound of one upgrade attempt (default 30)
  --max-attempts <n>       upgrade attempts per round (default 3)
  --round-backoff-ms <n>   after a round of attempts failed, the next one starts after this,
                           doubled per round up to 8x (default 60000; 0: no more rounds)
  --early-dtls-records <n> DTLS records held until ICE is connected (default 16; 0: none)
  --sctp-max-mtu <n>       probe for SCTP packets of up to n bytes (Config::sctp_max_mtu;
                           default 1428; 0: off)
  --ping-interval-ms <n>   between two pings on a connection (default 250)
  --idle-timeout <s>       close a connection with no open stream after this long; pings do
                           not keep a connection open (default 60)
  --timeout <s>            dial: give up after this long (default 120); relay and listen:
                           exit 0 after this long (default: run until killed)
  --metrics <ip:port>      serve Prometheus metrics at http://<ip:port>/metrics (relay: its
                           reservations, circuits, connections and STUN answers)
                           (port 0: any; the `metrics` event has the address). Needs the
                           crate's `metrics` feature (cargo run --features metrics ...)

relay limits:
  --max-reservations <n>   (default 128)
  --max-circuits <n>       (default 16)
  --max-circuit-duration <s>  (default 120)
  --max-circuit-bytes <n>     (default 131072)
  --stun-responder <ip:port>  answer STUN here (default 0.0.0.0:3478, skipped if taken):
                              peers' upgrades ask the relay for their public address
  --no-stun-responder         do not answer STUN
  --stun-rate <n>             STUN answers per second per source (default 20)
  --stun-burst <n>            after a burst of this many (default 40)
  --stun-sources <n>          sources tracked at once (default 4096); a source is an IPv4
                              address or an IPv6 /64; the rest share one more bucket

checks (dial: on the connection under test; listen: on every direct connection):
  --send-bytes <n>         echo n bytes over a new stream, checked byte for byte (default 0)
  --check-reset            then echo 4 KiB over another stream and reset it: the remote's
                           echo server must report the reset (served event, end reset)

dial:
  --ping <n>               pings to the listener after the upgrade (default 3)
  --allow-relayed          exit 0 also when pings and echo succeeded over the relay after a
                           failed (or disabled) upgrade
  --linger <s>             after done, keep serving for this long before exiting
                           (default 0), so the listener's checks can finish

events (stdout, one JSON object per line): listening, reserved, connected, upgrade_started,
upgraded, upgrade_failed, restarted, restart_failed, direct_lost, fallback_failed,
relay_closed, ping, transfer, reset_sent, served, done, error. When the direct path goes
quiet, the dialer redials the relay and restarts ICE over it: restarted (took_ms), the same
connection goes on. When the direct connection dies, the dialer redials the relay and goes
on pinging over whichever connection there is: direct_lost (after_ms: since the last
answered ping on it), connected (relayed), upgraded again.
exit status: 0 success, 1 a check failed or an error, 2 bad usage.";

/// Parsed command line.
#[derive(Debug, Default)]
struct Args {
    role: String,
    target: Option<Multiaddr>,
    relay: Option<Multiaddr>,
    listen: Vec<Multiaddr>,
    external: Vec<Multiaddr>,
    seed: Option<u64>,
    stun: Vec<String>,
    turn: Vec<String>,
    turn_user: Option<String>,
    turn_pass: Option<String>,
    no_upgrade: bool,
    loopback: bool,
    upgrade_timeout: Option<u64>,
    max_attempts: Option<u32>,
    round_backoff_ms: Option<u64>,
    early_dtls_records: Option<usize>,
    sctp_max_mtu: Option<u32>,
    ping_interval_ms: u64,
    idle_timeout: u64,
    timeout: Option<u64>,
    pings: usize,
    send_bytes: usize,
    check_reset: bool,
    allow_relayed: bool,
    linger: u64,
    max_reservations: Option<usize>,
    max_circuits: Option<usize>,
    max_circuit_duration: Option<u64>,
    max_circuit_bytes: Option<u64>,
    stun_responder: Option<std::net::SocketAddr>,
    no_stun_responder: bool,
    stun_rate: Option<u32>,
    stun_burst: Option<u32>,
    stun_sources: Option<usize>,
    metrics: Option<std::net::SocketAddr>,
}

fn parse_args(raw: Vec<String>) -> anyhow::Result<Args> {
    let mut args = Args {
        pings: 3,
        ping_interval_ms: 250,
        idle_timeout: support::IDLE_TIMEOUT.as_secs(),
        ..Args::default()
    };
    let mut it = raw.into_iter();
    args.role = it.next().ok_or_else(|| anyhow!("missing role"))?;
    if !matches!(args.role.as_str(), "relay" | "listen" | "dial") {
        bail!("unknown role {:?}", args.role);
    }
    use support::flag_value as value;
    while let Some(arg) = it.next() {
        let it = &mut it;
        match arg.as_str() {
            "--listen" => args.listen.push(value(&arg, it)?),
            "--external" => args.external.push(value(&arg, it)?),
            "--relay" => args.relay = Some(value(&arg, it)?),
            "--seed" => args.seed = Some(value(&arg, it)?),
            "--stun" => args.stun.push(value(&arg, it)?),
            "--turn" => args.turn.push(value(&arg, it)?),
            "--turn-user" => args.turn_user = Some(value(&arg, it)?),
            "--turn-pass" => args.turn_pass = Some(value(&arg, it)?),
            "--no-upgrade" => args.no_upgrade = true,
            "--loopback" => args.loopback = true,
            "--upgrade-timeout" => args.upgrade_timeout = Some(value(&arg, it)?),
            "--max-attempts" => args.max_attempts = Some(value(&arg, it)?),
            "--round-backoff-ms" => args.round_backoff_ms = Some(value(&arg, it)?),
            "--early-dtls-records" => args.early_dtls_records = Some(value(&arg, it)?),
            "--sctp-max-mtu" => args.sctp_max_mtu = Some(value(&arg, it)?),
            "--ping-interval-ms" => args.ping_interval_ms = value(&arg, it)?,
            "--idle-timeout" => args.idle_timeout = value(&arg, it)?,
            "--timeout" => args.timeout = Some(value(&arg, it)?),
            "--ping" => args.pings = value(&arg, it)?,
            "--send-bytes" => args.send_bytes = value(&arg, it)?,
            "--check-reset" => args.check_reset = true,
            "--allow-relayed" => args.allow_relayed = true,
            "--linger" => args.linger = value(&arg, it)?,
            "--max-reservations" => args.max_reservations = Some(value(&arg, it)?),
            "--max-circuits" => args.max_circuits = Some(value(&arg, it)?),
            "--max-circuit-duration" => args.max_circuit_duration = Some(value(&arg, it)?),
            "--max-circuit-bytes" => args.max_circuit_bytes = Some(value(&arg, it)?),
            "--stun-responder" => args.stun_responder = Some(value(&arg, it)?),
            "--no-stun-responder" => args.no_stun_responder = true,
            "--stun-rate" => args.stun_rate = Some(value(&arg, it)?),
            "--stun-burst" => args.stun_burst = Some(value(&arg, it)?),
            "--stun-sources" => args.stun_sources = Some(value(&arg, it)?),
            "--metrics" => args.metrics = Some(value(&arg, it)?),
            flag if flag.starts_with("--") => bail!("unknown flag {flag}"),
            target if args.role == "dial" && args.target.is_none() => {
                args.target = Some(target.parse().map_err(|e| anyhow!("{target:?}: {e}"))?)
            }
            other => bail!("unexpected argument {other:?}"),
        }
    }
    match args.role.as_str() {
        "relay" if args.listen.is_empty() => bail!("relay needs --listen"),
        "listen" if args.relay.is_none() => bail!("listen needs --relay"),
        "dial" if args.target.is_none() => bail!("dial needs a multiaddr"),
        _ => {}
    }
    if !args.turn.is_empty() && (args.turn_user.is_none() || args.turn_pass.is_none()) {
        bail!("--turn needs --turn-user and --turn-pass");
    }
    Ok(args)
}

/// Answers STUN beside the relay: on `--stun-responder`, or on `0.0.0.0:3478` if that port is
/// free (a relay host that already runs a STUN server keeps it, and says so).
/// Starts the relay's STUN responder unless `--no-stun-responder`; its counters, if it runs.
async fn start_stun_responder(
    args: &Args,
) -> anyhow::Result<Option<libp2p_webrtc_signal::StunStats>> {
    let default = std::net::SocketAddr::from(([0, 0, 0, 0], DEFAULT_STUN_PORT));
    let addr = args.stun_responder.unwrap_or(default);
    match StunResponder::bind(addr).await {
        Ok(responder) => {
            let responder = responder
                .with_rate_limit(args.stun_rate.unwrap_or(20), args.stun_burst.unwrap_or(40))
                .with_max_sources(args.stun_sources.unwrap_or(4096));
            let addr = responder.local_addr()?;
            emit(json!({"event": "stun_responder", "addr": addr.to_string()}));
            let stats = responder.stats();
            tokio::spawn(async move {
                if let Err(e) = responder.run().await {
                    emit(json!({"event": "error", "reason": format!("STUN responder: {e}")}));
                }
            });
            Ok(Some(stats))
        }
        Err(e) if args.stun_responder.is_none() => {
            emit(json!({
                "event": "stun_responder",
                "addr": null,
                "reason": format!("{addr}: {e}; running without (see --stun-responder)"),
            }));
            Ok(None)
        }
        Err(e) => Err(anyhow!("--stun-responder {addr}: {e}")),
    }
}

/// `e` and its sources, joined with `: `.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let causes: Vec<String> = anyhow::Chain::new(e).map(|c| c.to_string()).collect();
    causes.join(": ")
}

/// One event on stdout.
fn emit(value: serde_json::Value) {
    println!("{value}");
}

fn identity(seed: Option<u64>) -> anyhow::Result<Keypair> {
    Ok(match seed {
        Some(seed) => {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            Keypair::ed25519_from_bytes(bytes)?
        }
        None => Keypair::generate_ed25519(),
    })
}

fn webrtc_config(args: &Args) -> anyhow::Result<Config> {
    let mut servers: Vec<IceServer> = args.stun.iter().map(IceServer::stun).collect();
    if let (Some(user), Some(pass)) = (&args.turn_user, &args.turn_pass) {
        servers.extend(
            args.turn
                .iter()
                .map(|url| IceServer::turn(url.clone(), user.clone(), pass.clone())),
        );
    }
    let mut config = Config::default()
        .with_ice_servers(servers)
        .with_loopback_candidates(args.loopback);
    if args.loopback {
        config = config.with_udp_bind_addrs(vec!["127.0.0.1:0".parse()?]);
    }
    if let Some(s) = args.upgrade_timeout {
        config = config.with_upgrade_timeout(Duration::from_secs(s));
    }
    if let Some(n) = args.max_attempts {
        config = config.with_retries(n, Duration::from_secs(1));
    }
    if let Some(ms) = args.round_backoff_ms {
        config = config.with_upgrade_round_backoff(Duration::from_millis(ms));
    }
    if let Some(n) = args.sctp_max_mtu {
        config = config.with_sctp_max_mtu(n);
    }
    if let Some(n) = args.early_dtls_records {
        config = config.with_early_dtls_records(n);
    }
    config.validate()?;
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rtc_dtls=error,rtc_ice=error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.is_empty() || raw.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return if raw.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let args = match parse_args(raw) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("node: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.role.as_str() {
        "relay" => run_relay(&args).await,
        "listen" => run_listen(&args).await,
        _ => run_dial(&args).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            emit(json!({"event": "error", "reason": format!("{e:#}")}));
            eprintln!("node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sleeps for `--timeout` seconds, or forever.
async fn run_for(timeout: Option<u64>) {
    match timeout {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => futures::future::pending().await,
    }
}

async fn run_relay(args: &Args) -> anyhow::Result<bool> {
    let defaults = relay::Config::default();
    let config = relay::Config {
        max_reservations: args.max_reservations.unwrap_or(defaults.max_reservations),
        max_circuits: args.max_circuits.unwrap_or(defaults.max_circuits),
        max_circuit_duration: args
            .max_circuit_duration
            .map(Duration::from_secs)
            .unwrap_or(defaults.max_circuit_duration),
        max_circuit_bytes: args.max_circuit_bytes.unwrap_or(defaults.max_circuit_bytes),
        ..defaults
    };
    let mut swarm = support::relay_server(identity(args.seed)?, config)?;
    let id = *swarm.local_peer_id();
    let stun = if args.no_stun_responder {
        None
    } else {
        start_stun_responder(args).await?
    };
    let mut metrics = relay_metrics(args, stun).await?;
    for addr in &args.listen {
        swarm.listen_on(addr.clone())?;
    }
    for addr in &args.external {
        swarm.add_external_address(addr.clone());
    }
    let deadline = run_for(args.timeout);
    tokio::pin!(deadline);
    loop {
        let event = tokio::select! {
            e = swarm.select_next_some() => e,
            _ = &mut deadline => return Ok(true),
        };
        if let Some(metrics) = &mut metrics {
            metrics.record(&event);
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                // Without --external, the listen addresses are the ones given out.
                if args.external.is_empty() {
                    swarm.add_external_address(address.clone());
                }
                let addr = address.with(Protocol::P2p(id));
                emit(
                    json!({"event": "listening", "addr": addr.to_string(), "peer": id.to_string()}),
                );
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => emit(json!({
                "event": "connected",
                "peer": peer_id.to_string(),
                "addr": endpoint.get_remote_address().to_string(),
                "relayed": false,
            })),
            SwarmEvent::Behaviour(relay::Event::ReservationReqAccepted { src_peer_id, .. }) => {
                emit(json!({"event": "reservation_accepted", "peer": src_peer_id.to_string()}))
            }
            SwarmEvent::Behaviour(relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            }) => emit(json!({
                "event": "circuit_accepted",
                "src": src_peer_id.to_string(),
                "dst": dst_peer_id.to_string(),
            })),
            SwarmEvent::Behaviour(relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                ..
            }) => emit(json!({
                "event": "circuit_closed",
                "src": src_peer_id.to_string(),
                "dst": dst_peer_id.to_string(),
            })),
            _ => {}
        }
    }
}

/// The relay's metrics with `--metrics` (served from then on), else nothing.
#[cfg(feature = "metrics")]
async fn relay_metrics(
    args: &Args,
    stun: Option<libp2p_webrtc_signal::StunStats>,
) -> anyhow::Result<Option<support::relay_metrics::RelayMetrics>> {
    let Some(addr) = args.metrics else {
        return Ok(None);
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = support::relay_metrics::RelayMetrics::new(&mut registry, stun);
    let bound = support::metrics::serve(addr, registry).await?;
    emit(json!({"event": "metrics", "addr": bound.to_string()}));
    Ok(Some(metrics))
}

/// Without the `metrics` feature, `--metrics` is refused.
#[cfg(not(feature = "metrics"))]
async fn relay_metrics(
    args: &Args,
    _stun: Option<libp2p_webrtc_signal::StunStats>,
) -> anyhow::Result<Option<NoMetrics>> {
    if let Some(addr) = args.metrics {
        bail!("--metrics {addr}: built without the `metrics` feature (cargo run --features metrics ...)")
    }
    Ok(None)
}

/// What records the relay's events without the `metrics` feature: nothing.
#[cfg(not(feature = "metrics"))]
struct NoMetrics;

#[cfg(not(feature = "metrics"))]
impl NoMetrics {
    fn record(&mut self, _: &SwarmEvent<relay::Event>) {}
}

fn peer_swarm(args: &Args) -> anyhow::Result<(Swarm<Peer>, support::Inbound)> {
    let webrtc = if args.no_upgrade {
        None
    } else {
        Some(webrtc_config(args)?)
    };
    let (mut swarm, inbound) = support::peer_with(
        identity(args.seed)?,
        webrtc,
        Duration::from_millis(args.ping_interval_ms),
        support::ECHO,
        Duration::from_secs(args.idle_timeout),
    )?;
    for addr in &args.listen {
        swarm.listen_on(addr.clone())?;
    }
    Ok((swarm, inbound))
}

/// What `report` remembers per open connection: the remote address (for the `upgraded`
/// event) and when a ping was last answered on it (for `direct_lost`); and the metrics it
/// records into (`--metrics`).
#[derive(Default)]
struct Addrs {
    remote: HashMap<ConnectionId, Multiaddr>,
    last_pong: support::pongs::PongTimes,
    #[cfg(feature = "metrics")]
    metrics: Option<libp2p_webrtc_signal::metrics::Metrics>,
}

impl Addrs {
    /// With `--metrics`: registers the metrics and serves them.
    async fn new(args: &Args) -> anyhow::Result<Self> {
        let Some(addr) = args.metrics else {
            return Ok(Self::default());
        };
        #[cfg(feature = "metrics")]
        {
            let mut registry = prometheus_client::registry::Registry::default();
            let metrics = libp2p_webrtc_signal::metrics::Metrics::new(&mut registry);
            let bound = support::metrics::serve(addr, registry).await?;
            emit(json!({"event": "metrics", "addr": bound.to_string()}));
            Ok(Self {
                metrics: Some(metrics),
                ..Self::default()
            })
        }
        #[cfg(not(feature = "metrics"))]
        bail!("--metrics {addr}: built without the `metrics` feature (cargo run --features metrics ...)")
    }
}

impl Addrs {
    fn get(&self, connection: &ConnectionId) -> Option<&Multiaddr> {
        self.remote.get(connection)
    }
}

/// Emits the events both listen and dial report.
fn report(addrs: &mut Addrs, event: &SwarmEvent<PeerEvent>) {
    #[cfg(feature = "metrics")]
    if let Some(metrics) = &addrs.metrics {
        metrics.record_swarm_event(event);
        if let SwarmEvent::Behaviour(PeerEvent::Webrtc(e)) = event {
            metrics.record(e);
        }
    }
    match event {
        SwarmEvent::ConnectionClosed { connection_id, .. } => {
            addrs.remote.remove(connection_id);
            addrs.last_pong.closed(*connection_id);
        }
        SwarmEvent::Behaviour(PeerEvent::Ping(ping::Event {
            connection,
            result: Ok(_),
            ..
        })) => {
            addrs.last_pong.pong(*connection, Instant::now());
        }
        SwarmEvent::NewListenAddr { address, .. } => {
            emit(json!({"event": "listening", "addr": address.to_string()}))
        }
        SwarmEvent::ConnectionEstablished {
            peer_id,
            endpoint,
            connection_id,
            ..
        } => {
            let addr = endpoint.get_remote_address();
            addrs.remote.insert(*connection_id, addr.clone());
            emit(json!({
                "event": "connected",
                "peer": peer_id.to_string(),
                "addr": addr.to_string(),
                "relayed": support::is_relayed(addr),
                "direct": support::is_webrtc(addr),
            }))
        }
        SwarmEvent::Behaviour(PeerEvent::Webrtc(event)) => match event {
            Event::UpgradeStarted {
                peer,
                role,
                attempt,
                ..
            } => emit(json!({
                "event": "upgrade_started",
                "peer": peer.to_string(),
                "role": format!("{role:?}").to_lowercase(),
                "attempt": attempt,
            })),
            Event::Upgraded {
                peer,
                took,
                timings,
                direct_connection,
                path,
                ..
            } => emit(json!({
                "event": "upgraded",
                "peer": peer.to_string(),
                "direct_connection": direct_connection.to_string(),
                "addr": addrs.get(direct_connection).map(|a| a.to_string()),
                "path": path.map(|p| p.family()),
                "pair": path.map(|p| format!("{}/{}", p.local_kind, p.remote_kind)),
                "remote": path.map(|p| p.remote.to_string()),
                "ms": took.as_secs_f64() * 1000.0,
                "phases_ms": {
                    "stream": timings.stream.as_secs_f64() * 1000.0,
                    "descriptions": timings.descriptions.as_secs_f64() * 1000.0,
                    "ice": timings.ice.as_secs_f64() * 1000.0,
                    "dtls": timings.dtls.as_secs_f64() * 1000.0,
                    "sctp": timings.sctp.as_secs_f64() * 1000.0,
                    "handoff": timings.handoff.as_secs_f64() * 1000.0,
                },
                "signaling_bytes_sent": timings.signaling_bytes_sent,
                "signaling_bytes_received": timings.signaling_bytes_received,
            })),
            Event::UpgradeFailed {
                peer,
                error,
                attempt,
                will_retry,
                ..
            } => emit(json!({
                "event": "upgrade_failed",
                "peer": peer.to_string(),
                "reason": chain(error),
                "attempt": attempt,
                "will_retry": will_retry,
            })),
            Event::RelayClosed { peer, .. } => {
                emit(json!({"event": "relay_closed", "peer": peer.to_string()}))
            }
            Event::DirectLost {
                peer,
                direct_connection,
                reason,
                will_redial,
            } => {
                let after = addrs
                    .last_pong
                    .take(*direct_connection)
                    .map(|at| at.elapsed().as_secs_f64() * 1000.0);
                emit(json!({
                    "event": "direct_lost",
                    "peer": peer.to_string(),
                    "reason": reason,
                    "after_ms": after,
                    "will_redial": will_redial,
                }))
            }
            Event::FallbackFailed {
                peer,
                redials,
                reason,
            } => emit(json!({
                "event": "fallback_failed",
                "peer": peer.to_string(),
                "redials": redials,
                "reason": reason,
            })),
            Event::Restarted {
                peer,
                direct_connection,
                took,
                ..
            } => emit(json!({
                "event": "restarted",
                "peer": peer.to_string(),
                "direct_connection": direct_connection.to_string(),
                "took_ms": took.as_secs_f64() * 1000.0,
            })),
            Event::RestartFailed { peer, error, .. } => emit(json!({
                "event": "restart_failed",
                "peer": peer.to_string(),
                "error": chain(error),
            })),
            _ => {}
        },
        _ => {}
    }
}

/// Serves an echo stream the remote opened and reports how it ended.
fn serve(peer: PeerId, stream: libp2p::Stream) {
    tokio::spawn(async move {
        let served = support::serve_echo(stream).await;
        let mut event = json!({
            "event": "served",
            "peer": peer.to_string(),
            "bytes": served.bytes,
            "end": served.end_name(),
        });
        if let Err(e) = &served.end {
            event["error"] = json!(e.to_string());
        }
        emit(event);
    });
}

/// Bytes echoed on the stream that `--check-reset` then resets.
const RESET_CHECK_BYTES: usize = 4096;

/// Starts the stream checks on one connection: an echo of `--send-bytes`, then with
/// `--check-reset` an echo whose stream is reset. Reports `transfer` and `reset_sent`;
/// the task's result says whether all passed.
fn start_checks(
    swarm: &mut Swarm<Peer>,
    args: &Args,
    peer: PeerId,
    connection: ConnectionId,
    direct: bool,
) -> tokio::task::JoinHandle<bool> {
    let len = args.send_bytes;
    let echo = (len > 0).then(|| swarm.behaviour_mut().echo.open(peer, connection));
    let reset = args
        .check_reset
        .then(|| swarm.behaviour_mut().echo.open(peer, connection));
    tokio::spawn(async move {
        let mut ok = true;
        if let Some(echo) = echo {
            let result = async {
                let stream = echo.await?.map_err(anyhow::Error::msg)?;
                support::echo_transfer(stream, len).await
            }
            .await;
            let mut event = json!({
                "event": "transfer",
                "peer": peer.to_string(),
                "bytes": len,
                "direct": direct,
                "ok": result.is_ok(),
            });
            match result {
                Ok(echoed) => {
                    event["ms"] = json!(echoed.took.as_secs_f64() * 1000.0);
                    event["close_ms"] = json!(echoed.close.as_secs_f64() * 1000.0);
                }
                Err(e) => {
                    ok = false;
                    event["error"] = json!(format!("{e:#}"));
                }
            }
            emit(event);
        }
        if let Some(reset) = reset {
            let result = async {
                let stream = reset.await?.map_err(anyhow::Error::msg)?;
                support::echo_then_reset(stream, RESET_CHECK_BYTES).await
            }
            .await;
            let mut event = json!({
                "event": "reset_sent",
                "peer": peer.to_string(),
                "direct": direct,
                "ok": result.is_ok(),
            });
            if let Err(e) = result {
                ok = false;
                event["error"] = json!(format!("{e:#}"));
            }
            emit(event);
        }
        ok
    })
}

async fn run_listen(args: &Args) -> anyhow::Result<bool> {
    let (mut swarm, mut echo_requests) = peer_swarm(args)?;
    let id = *swarm.local_peer_id();
    let relay_addr = args.relay.clone().context("--relay")?;
    if !relay_addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        bail!("--relay {relay_addr} has no /p2p/<relay id>");
    }
    swarm.listen_on(relay_addr.clone().with(Protocol::P2pCircuit))?;
    let mut addrs = Addrs::new(args).await?;
    let deadline = run_for(args.timeout);
    tokio::pin!(deadline);
    loop {
        let event = tokio::select! {
            e = swarm.select_next_some() => e,
            Some((peer, _, stream)) = echo_requests.next() => {
                serve(peer, stream);
                continue;
            }
            _ = &mut deadline => return Ok(true),
        };
        report(&mut addrs, &event);
        match event {
            SwarmEvent::Behaviour(PeerEvent::Webrtc(Event::Upgraded {
                peer,
                direct_connection,
                ..
            })) if args.send_bytes > 0 || args.check_reset => {
                let checks = start_checks(&mut swarm, args, peer, direct_connection, true);
                tokio::spawn(async move {
                    let ok = checks.await.unwrap_or(false);
                    emit(
                        json!({"event": "done", "peer": peer.to_string(), "direct": true, "ok": ok}),
                    );
                });
            }
            SwarmEvent::Behaviour(PeerEvent::Relay(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => emit(json!({
                "event": "reserved",
                "relay": relay_peer_id.to_string(),
                "addr": relay_addr
                    .clone()
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(id))
                    .to_string(),
            })),
            SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                bail!("reservation on {relay_addr} failed: {e}")
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!("listener error: {error}")
            }
            _ => {}
        }
    }
}

/// The dialer's progress.
#[derive(Default)]
struct Dial {
    relayed: Option<ConnectionId>,
    direct: Option<ConnectionId>,
    /// The connection the checks run on, once chosen.
    checked: Option<ConnectionId>,
    upgrade_gave_up: bool,
    /// The direct connection under test died: pings go on over the relay until the upgrade
    /// is made again.
    falling_back: bool,
    pings: usize,
    ping_failures: usize,
    checks: Option<tokio::task::JoinHandle<bool>>,
    checks_ok: Option<bool>,
}

async fn run_dial(args: &Args) -> anyhow::Result<bool> {
    let (mut swarm, mut echo_requests) = peer_swarm(args)?;
    let target = args.target.clone().context("target")?;
    let Some(Protocol::P2p(peer)) = target.iter().last() else {
        bail!("{target} does not end in /p2p/<peer id>");
    };
    let started = Instant::now();
    swarm.dial(target.clone())?;
    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout.unwrap_or(120)));
    tokio::pin!(deadline);
    let mut d = Dial::default();
    let mut addrs = Addrs::new(args).await?;
    // Re-checks progress while no swarm event comes (the checks finishing).
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let ok = loop {
        let event = tokio::select! {
            e = swarm.select_next_some() => Some(e),
            Some((peer, _, stream)) = echo_requests.next() => {
                serve(peer, stream);
                None
            }
            _ = tick.tick() => None,
            _ = &mut deadline => bail!("not done within the timeout"),
        };
        if let Some(event) = event {
            report(&mut addrs, &event);
            on_dial_event(args, peer, &target, &mut d, event)?;
        }
        // Choose the connection to check: the direct one, or the relay once the upgrade is
        // off the table.
        if d.checked.is_none() {
            d.checked = d
                .direct
                .or(d.relayed.filter(|_| d.upgrade_gave_up || d.falling_back));
        }
        let Some(checked) = d.checked else { continue };
        let direct = d.direct == Some(checked);
        if d.pings >= args.pings && d.checks.is_none() && d.checks_ok.is_none() {
            d.checks = Some(start_checks(&mut swarm, args, peer, checked, direct));
        }
        if let Some(t) = d.checks.as_mut().filter(|t| t.is_finished()) {
            d.checks_ok = Some(t.await?);
            d.checks = None;
        }
        if let Some(checks_ok) = d.checks_ok {
            let ok = checks_ok && (direct || args.allow_relayed);
            emit(json!({
                "event": "done",
                "peer": peer.to_string(),
                "direct": direct,
                "ok": ok,
                "ms": started.elapsed().as_secs_f64() * 1000.0,
            }));
            break ok;
        }
    };
    // Keep serving (the listener's checks) for --linger seconds.
    let linger = tokio::time::sleep(Duration::from_secs(args.linger));
    tokio::pin!(linger);
    loop {
        tokio::select! {
            e = swarm.select_next_some() => report(&mut addrs, &e),
            Some((peer, _, stream)) = echo_requests.next() => serve(peer, stream),
            _ = &mut linger => return Ok(ok),
        }
    }
}

/// Applies one swarm event to the dialer's progress.
fn on_dial_event(
    args: &Args,
    peer: PeerId,
    target: &Multiaddr,
    d: &mut Dial,
    event: SwarmEvent<PeerEvent>,
) -> anyhow::Result<()> {
    match event {
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            ..
        } if peer_id == peer
            && d.relayed.is_none()
            && support::is_relayed(endpoint.get_remote_address()) =>
        {
            d.relayed = Some(connection_id);
            if args.no_upgrade {
                d.upgrade_gave_up = true;
            }
        }
        // Once upgraded, the behaviour's own dials (ICE restart, fallback) may fail: it
        // reports what that means (`restart_failed`, `fallback_failed`).
        SwarmEvent::OutgoingConnectionError {
            peer_id: Some(p),
            error,
            ..
        } if p == peer && !d.falling_back && d.direct.is_none() => {
            bail!("dialing {target} failed: {error}")
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            cause: Some(libp2p::swarm::ConnectionError::IO(_)),
            ..
        } if peer_id == peer
            && Some(connection_id) == d.checked
            && d.direct == Some(connection_id) =>
        {
            // The direct connection died: the behaviour falls back (`direct_lost`) to a
            // relayed connection (one still open, or one it dials), or says the fallback
            // failed.
            d.checked = None;
            d.direct = None;
            d.falling_back = true;
        }
        SwarmEvent::Behaviour(PeerEvent::Webrtc(Event::DirectLost {
            peer: p,
            direct_connection,
            ..
        })) if p == peer && Some(direct_connection) == d.checked => {
            // The behaviour declared the direct connection dead (and closes it).
            d.checked = None;
            d.direct = None;
            d.falling_back = true;
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            ..
        } if peer_id == peer && Some(connection_id) == d.relayed && d.direct.is_some() => {
            // Drained after an upgrade or a restart: the next relayed connection is tracked.
            d.relayed = None;
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            cause,
            ..
        } if peer_id == peer && Some(connection_id) == d.checked => {
            bail!("the connection under test closed: {cause:?}")
        }
        SwarmEvent::Behaviour(PeerEvent::Webrtc(Event::FallbackFailed {
            peer: p, reason, ..
        })) if p == peer => {
            bail!("the connection under test closed and the fallback failed: {reason}")
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            cause,
            ..
        } if peer_id == peer && Some(connection_id) == d.relayed && d.direct.is_none() => {
            bail!("the relayed connection closed before the upgrade: {cause:?}")
        }
        SwarmEvent::Behaviour(PeerEvent::Webrtc(Event::Upgraded {
            peer: p,
            direct_connection,
            ..
        })) if p == peer => {
            d.direct = Some(direct_connection);
            if d.falling_back {
                // Upgraded again: the pings move to the new direct connection.
                d.falling_back = false;
                d.checked = Some(direct_connection);
            }
        }
        SwarmEvent::Behaviour(PeerEvent::Webrtc(Event::UpgradeFailed {
            peer: p,
            will_retry: false,
            ..
        })) if p == peer => d.upgrade_gave_up = true,
        SwarmEvent::Behaviour(PeerEvent::Ping(ping::Event {
            peer: p,
            connection,
            result,
        })) if p == peer && Some(connection) == d.checked && d.pings < args.pings => {
            let direct = d.direct == Some(connection);
            match result {
                Ok(rtt) => {
                    d.pings += 1;
                    emit(json!({
                        "event": "ping",
                        "peer": peer.to_string(),
                        "rtt_ms": rtt.as_secs_f64() * 1000.0,
                        "direct": direct,
                        "ok": true,
                    }));
                }
                Err(e) => {
                    d.ping_failures += 1;
                    emit(json!({
                        "event": "ping",
                        "peer": peer.to_string(),
                        "direct": direct,
                        "ok": false,
                        "error": e.to_string(),
                    }));
                    if d.ping_failures >= 3 {
                        bail!("pings keep failing: {e}");
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}
