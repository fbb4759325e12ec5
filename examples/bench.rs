//! Benchmarks: upgrade latency by phase, throughput of the direct connection against QUIC and
//! TCP+Noise+Yamux, many upgrades at once through one relay, and the signaling's cost.
//!
//! ```text
//! cargo run --release --example bench -- upgrade     [--runs 20]
//! cargo run --release --example bench -- throughput  [--mib 256] [--repeat 3]
//! cargo run --release --example bench -- scale       [--pairs 50,200,500]
//! cargo run --release --example bench -- all         [--short]
//! ```
//!
//! Everything runs on 127.0.0.1 in this process, except the relay of `scale` and the peer
//! holding many connections, which run as child processes of this binary so that their memory
//! can be read from `/proc`. Results are Markdown tables on stdout (one JSON object per line
//! with `--json`); progress goes to stderr. `--short` runs a few iterations of everything
//! (the test suite does, so the harness cannot rot). Exit status 1 if a check fails: bytes
//! lost, an upgrade that did not happen.

mod support;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::channel::{mpsc, oneshot};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{relay, Multiaddr, PeerId, Stream, StreamProtocol, Swarm};
use libp2p_webrtc_signal::{Config, Event, Timings};
use serde_json::{json, Value};
use support::{Peer, PeerEvent};

/// One-way transfers: the reader counts the bytes until the writer closes, then answers with
/// the count (8 bytes, big endian).
const SINK: StreamProtocol = StreamProtocol::new("/webrtc-signal-bench/sink/1.0.0");

/// Dials to the peer holding many connections that run at once.
const HUB_BATCH: usize = 8;

/// Hang guard of one step.
const STEP: Duration = Duration::from_secs(120);

const USAGE: &str = "\
usage: bench <scenario> [flags]
scenarios:
  upgrade      relayed -> direct upgrade latency by phase, signaling bytes   [--runs N]
  throughput   WebRTC vs QUIC vs TCP+Noise+Yamux, 1 and 8 streams            [--mib N] [--repeat N]
               [--streams N,N,..] [--only webrtc|quic|tcp] (for profiling)
  scale        N pairs upgrading at once through one relay; one peer holding N direct
               connections                                                   [--pairs N,N,..]
  all          all of the above
flags:
  --short      a few iterations of everything (CI)
  --json       one JSON object per result line instead of Markdown
  --sctp-mtu N, --sctp-max-mtu N, --sctp-window N, --ice-check-ms N
               tuning: Config::sctp_mtu, sctp_max_mtu, sctp_receive_window, ice_check_interval";

#[derive(Debug, Clone)]
struct Args {
    scenario: String,
    runs: usize,
    mib: u64,
    repeat: usize,
    pairs: Vec<usize>,
    json: bool,
    relay_max: usize,
    relay: Option<Multiaddr>,
    only: Option<String>,
    streams: Vec<usize>,
    sctp_mtu: Option<u32>,
    sctp_max_mtu: Option<u32>,
    sctp_window: Option<u32>,
    ice_check_ms: Option<u64>,
}

fn parse_args(raw: Vec<String>) -> anyhow::Result<Args> {
    let mut it = raw.into_iter();
    let scenario = it.next().ok_or_else(|| anyhow!("missing scenario"))?;
    let mut args = Args {
        scenario,
        runs: 20,
        mib: 256,
        repeat: 3,
        pairs: vec![50, 200, 500],
        json: false,
        relay_max: 0,
        relay: None,
        only: None,
        streams: vec![1, 8],
        sctp_mtu: None,
        sctp_max_mtu: None,
        sctp_window: None,
        ice_check_ms: None,
    };
    use support::flag_value as value;
    while let Some(flag) = it.next() {
        let it = &mut it;
        match flag.as_str() {
            "--runs" => args.runs = value(&flag, it)?,
            "--mib" => args.mib = value(&flag, it)?,
            "--repeat" => args.repeat = value(&flag, it)?,
            "--pairs" => args.pairs = support::flag_list(&flag, it)?,
            "--short" => {
                args.runs = 3;
                args.mib = 4;
                args.repeat = 1;
                args.pairs = vec![8];
            }
            "--json" => args.json = true,
            "--only" => args.only = Some(value(&flag, it)?),
            "--sctp-mtu" => args.sctp_mtu = Some(value(&flag, it)?),
            "--sctp-max-mtu" => args.sctp_max_mtu = Some(value(&flag, it)?),
            "--sctp-window" => args.sctp_window = Some(value(&flag, it)?),
            "--ice-check-ms" => args.ice_check_ms = Some(value(&flag, it)?),
            "--streams" => args.streams = support::flag_list(&flag, it)?,
            // The child processes' own flags.
            "--max" => args.relay_max = value(&flag, it)?,
            "--relay" => args.relay = Some(value(&flag, it)?),
            _ => bail!("unknown flag {flag}"),
        }
    }
    if args.runs == 0 || args.repeat == 0 || args.mib == 0 || args.pairs.contains(&0) {
        bail!("--runs, --repeat, --mib and --pairs must be positive");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    support::init_logging();
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let out = Report { json: args.json };
    let result = match args.scenario.as_str() {
        "upgrade" => upgrade(&args, &out).await,
        "throughput" => throughput(&args, &out).await,
        "scale" => scale(&args, &out).await,
        "all" => {
            async {
                upgrade(&args, &out).await?;
                throughput(&args, &out).await?;
                scale(&args, &out).await
            }
            .await
        }
        // Child processes of `scale`.
        "relay-server" => relay_server(&args).await,
        "hub" => hub(&args).await,
        other => {
            eprintln!("bench: unknown scenario {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where results go.
struct Report {
    json: bool,
}

impl Report {
    /// A table: a title, its column names, and rows of (JSON record, cells).
    fn table(&self, title: &str, columns: &[&str], rows: Vec<(Value, Vec<String>)>) {
        if self.json {
            for (record, _) in rows {
                println!("{record}");
            }
            return;
        }
        println!("\n### {title}\n");
        println!("| {} |", columns.join(" | "));
        println!(
            "|{}|",
            columns.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        );
        for (_, cells) in rows {
            println!("| {} |", cells.join(" | "));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Swarms driven by their own tasks.

type Call = Box<dyn FnOnce(&mut Swarm<Peer>) + Send>;

/// A peer's swarm, polled by a task of its own; events arrive on `events`. Dropping it stops
/// the swarm.
struct Driven {
    id: PeerId,
    commands: mpsc::UnboundedSender<Call>,
    events: mpsc::UnboundedReceiver<SwarmEvent<PeerEvent>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Driven {
    /// Builds a peer whose inbound [`SINK`] streams are served, and drives it.
    fn peer(config: Config) -> anyhow::Result<Self> {
        let (mut swarm, mut inbound) = support::peer_with(
            Keypair::generate_ed25519(),
            Some(config),
            Duration::from_secs(60),
            SINK,
            support::IDLE_TIMEOUT,
        )?;
        let id = *swarm.local_peer_id();
        let (commands, mut commands_rx) = mpsc::unbounded::<Call>();
        let (events_tx, events) = mpsc::unbounded();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    command = commands_rx.next() => match command {
                        Some(command) => command(&mut swarm),
                        None => return,
                    },
                    Some((_, _, stream)) = inbound.next() => {
                        tokio::spawn(serve_sink(stream));
                    }
                    event = swarm.select_next_some() => {
                        let _ = events_tx.unbounded_send(event);
                    }
                }
            }
        });
        Ok(Self {
            id,
            commands,
            events,
            task,
        })
    }

    /// Runs `f` on the swarm, between two of its polls.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Swarm<Peer>) -> R + Send + 'static,
    ) -> anyhow::Result<R> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .unbounded_send(Box::new(move |swarm| {
                let _ = tx.send(f(swarm));
            }))
            .map_err(|_| anyhow!("swarm task ended"))?;
        rx.await.map_err(|_| anyhow!("swarm task ended"))
    }

    /// Waits for the first event `f` maps to `Some`, within [`STEP`].
    async fn until<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(SwarmEvent<PeerEvent>) -> Option<anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let wait = async {
            while let Some(event) = self.events.next().await {
                if let Some(result) = f(event) {
                    return result;
                }
            }
            bail!("swarm task ended")
        };
        tokio::time::timeout(STEP, wait)
            .await
            .map_err(|_| anyhow!("no {what} within {STEP:?}"))?
    }

    /// Listens through the relay and waits for the reservation.
    async fn reserve(&mut self, relay: &Multiaddr) -> anyhow::Result<Multiaddr> {
        let circuit = relay.clone().with(Protocol::P2pCircuit);
        self.call(move |s| s.listen_on(circuit)).await??;
        self.until("reservation", |e| match e {
            SwarmEvent::Behaviour(PeerEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. },
            )) => Some(Ok(())),
            SwarmEvent::ListenerClosed { reason, .. } => {
                Some(Err(anyhow!("reservation refused: {reason:?}")))
            }
            _ => None,
        })
        .await?;
        Ok(relay
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(self.id)))
    }

    /// Opens a [`SINK`] stream on one connection.
    async fn open(&self, peer: PeerId, connection: ConnectionId) -> anyhow::Result<Stream> {
        let rx = self
            .call(move |s| s.behaviour_mut().echo.open(peer, connection))
            .await?;
        rx.await
            .map_err(|_| anyhow!("stream request dropped"))?
            .map_err(|e| anyhow!("opening a stream: {e}"))
    }
}

/// What one upgrade of a dialer measured.
struct Upgrade {
    /// Relayed connection established → direct connection established (dialer's clock).
    took: Duration,
    timings: Timings,
    direct: ConnectionId,
}

/// Dials `target` through the relay and waits for the direct connection.
async fn dial_and_upgrade(dialer: &mut Driven, target: Multiaddr) -> anyhow::Result<Upgrade> {
    dialer.call(move |s| s.dial(target)).await??;
    let relayed_at = dialer
        .until("relayed connection", |e| match e {
            SwarmEvent::ConnectionEstablished { endpoint, .. }
                if support::is_relayed(endpoint.get_remote_address()) =>
            {
                Some(Ok(Instant::now()))
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                Some(Err(anyhow!("relayed dial failed: {error}")))
            }
            _ => None,
        })
        .await?;
    let mut direct_at = None;
    let mut upgraded = None;
    dialer
        .until("upgrade", |e| {
            match e {
                SwarmEvent::ConnectionEstablished { endpoint, .. }
                    if support::is_webrtc(endpoint.get_remote_address()) =>
                {
                    direct_at = Some(Instant::now());
                }
                SwarmEvent::Behaviour(PeerEvent::Webrtc(Event::Upgraded {
                    direct_connection,
                    timings,
                    ..
                })) => upgraded = Some((direct_connection, timings)),
                SwarmEvent::Behaviour(PeerEvent::Webrtc(Event::UpgradeFailed {
                    error,
                    will_retry: false,
                    ..
                })) => return Some(Err(anyhow!("upgrade failed: {error}"))),
                _ => {}
            }
            (direct_at.is_some() && upgraded.is_some()).then_some(Ok(()))
        })
        .await?;
    let (direct, timings) = upgraded.context("upgraded")?;
    let direct_at = direct_at.context("direct")?;
    Ok(Upgrade {
        took: direct_at - relayed_at,
        timings,
        direct,
    })
}

/// The in-process relay: generous limits, no rate limits (everything comes from 127.0.0.1).
fn relay_config(max: usize) -> relay::Config {
    relay::Config {
        max_reservations: max,
        max_reservations_per_peer: 4,
        max_circuits: max,
        max_circuits_per_peer: max,
        reservation_rate_limiters: Vec::new(),
        circuit_src_rate_limiters: Vec::new(),
        ..relay::Config::default()
    }
}

/// A relay driven by its own task; returns its address and the task.
async fn spawn_relay(max: usize) -> anyhow::Result<(Multiaddr, tokio::task::JoinHandle<()>)> {
    let (mut relay, addr) = support::loopback_relay(relay_config(max)).await?;
    let task = tokio::spawn(async move {
        loop {
            relay.select_next_some().await;
        }
    });
    Ok((addr, task))
}

/// The configuration every benchmarked peer uses: the defaults on 127.0.0.1, with the
/// tuning flags applied.
fn loopback(args: &Args) -> Config {
    let mut config = Config::default()
        .with_udp_bind_addrs(vec![(std::net::Ipv4Addr::LOCALHOST, 0).into()])
        .with_loopback_candidates(true);
    if let Some(mtu) = args.sctp_max_mtu {
        config = config.with_sctp_max_mtu(mtu);
    }
    if let Some(mtu) = args.sctp_mtu {
        config = config.with_sctp_mtu(mtu);
    }
    if let Some(window) = args.sctp_window {
        config = config.with_sctp_receive_window(window);
    }
    if let Some(ms) = args.ice_check_ms {
        let n = config.ice_max_binding_requests;
        config = config.with_ice_checks(Duration::from_millis(ms), n);
    }
    config
}

// ---------------------------------------------------------------------------------------
// Scenario 1 and 4: upgrade latency and signaling bytes.

async fn upgrade(args: &Args, out: &Report) -> anyhow::Result<()> {
    let (relay, relay_task) = spawn_relay(64).await?;
    let mut samples = Vec::new();
    for run in 0..args.runs {
        let mut listener = Driven::peer(loopback(args))?;
        let target = listener.reserve(&relay).await?;
        let mut dialer = Driven::peer(loopback(args))?;
        let upgrade = dial_and_upgrade(&mut dialer, target)
            .await
            .with_context(|| format!("run {run}"))?;
        eprintln!("upgrade {}/{}: {:?}", run + 1, args.runs, upgrade.took);
        samples.push(upgrade);
    }
    relay_task.abort();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    type Phase = fn(&Upgrade) -> Duration;
    let phases: [(&str, Phase); 8] = [
        ("relayed → direct established", |u| u.took),
        ("signaling stream open", |u| u.timings.stream),
        ("offer/answer", |u| u.timings.descriptions),
        ("ICE connected", |u| u.timings.ice),
        ("DTLS", |u| u.timings.dtls),
        ("SCTP", |u| u.timings.sctp),
        ("Swarm hand-off", |u| u.timings.handoff),
        ("sum of phases (offerer's attempt)", |u| u.timings.total()),
    ];
    let rows = phases
        .iter()
        .map(|(name, f)| {
            let mut v: Vec<f64> = samples.iter().map(|u| ms(f(u))).collect();
            let (p50, p90) = (percentile(&mut v, 50), percentile(&mut v, 90));
            (
                json!({"bench": "upgrade", "phase": name, "runs": samples.len(),
                       "p50_ms": p50, "p90_ms": p90}),
                vec![name.to_string(), format!("{p50:.1}"), format!("{p90:.1}")],
            )
        })
        .collect();
    out.table(
        &format!(
            "Upgrade latency, loopback, {} runs (dialer = offerer)",
            samples.len()
        ),
        &["phase", "p50 ms", "p90 ms"],
        rows,
    );

    let mut sent: Vec<f64> = samples
        .iter()
        .map(|u| u.timings.signaling_bytes_sent as f64)
        .collect();
    let mut received: Vec<f64> = samples
        .iter()
        .map(|u| u.timings.signaling_bytes_received as f64)
        .collect();
    let mut total: Vec<f64> = samples
        .iter()
        .map(|u| (u.timings.signaling_bytes_sent + u.timings.signaling_bytes_received) as f64)
        .collect();
    let rows = [
        ("offerer → answerer", &mut sent),
        ("answerer → offerer", &mut received),
        ("both directions", &mut total),
    ]
    .into_iter()
    .map(|(name, v)| {
        let (p50, max) = (percentile(v, 50), percentile(v, 100));
        (
            json!({"bench": "signaling", "direction": name, "p50_bytes": p50, "max_bytes": max}),
            vec![name.to_string(), format!("{p50:.0}"), format!("{max:.0}")],
        )
    })
    .collect();
    out.table(
        "Signaling bytes over the relay per upgrade",
        &["direction", "p50 bytes", "max bytes"],
        rows,
    );
    Ok(())
}

/// The `p`th percentile (nearest rank) of `v`, sorting it.
fn percentile(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (p * v.len()).div_ceil(100).clamp(1, v.len());
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------
// Scenario 2: throughput.

/// Serves a [`SINK`] stream: counts what arrives until the writer closes, answers the count.
async fn serve_sink(mut stream: Stream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut count: u64 = 0;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => count += n as u64,
            Err(_) => return,
        }
    }
    let _ = stream.write_all(&count.to_be_bytes()).await;
    let _ = stream.close().await;
}

/// Writes `bytes` on a [`SINK`] stream, closes it and checks the count that comes back.
async fn sink(mut stream: Stream, bytes: u64) -> anyhow::Result<()> {
    let buf = vec![0xa5u8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    stream.close().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let count = u64::from_be_bytes(count);
    if count != bytes {
        bail!("sent {bytes} bytes, {count} arrived");
    }
    Ok(())
}

/// The transports compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebRtc,
    Quic,
    Tcp,
}

impl Transport {
    fn flag(self) -> &'static str {
        match self {
            Transport::WebRtc => "webrtc",
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Transport::WebRtc => "WebRTC (this crate)",
            Transport::Quic => "QUIC",
            Transport::Tcp => "TCP+Noise+Yamux",
        }
    }
}

async fn throughput(args: &Args, out: &Report) -> anyhow::Result<()> {
    let (relay, relay_task) = spawn_relay(16).await?;
    let mut listener = Driven::peer(loopback(args))?;
    let target = listener.reserve(&relay).await?;
    let b = listener.id;
    // The listener's TCP and QUIC addresses.
    listener
        .call(|s| {
            s.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("valid"))?;
            s.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("valid"))
        })
        .await??;
    let mut tcp_addr = None;
    let mut quic_addr = None;
    listener
        .until("listen addresses", |e| {
            if let SwarmEvent::NewListenAddr { address, .. } = e {
                if address.iter().any(|p| p == Protocol::QuicV1) {
                    quic_addr = Some(address);
                } else if address.iter().any(|p| matches!(p, Protocol::Tcp(_))) {
                    tcp_addr = Some(address);
                }
            }
            (tcp_addr.is_some() && quic_addr.is_some()).then_some(Ok(()))
        })
        .await?;
    // The listener's events are not needed any more; keep its task from queueing them.
    let mut listener_events = std::mem::replace(&mut listener.events, mpsc::unbounded().1);
    let drain = tokio::spawn(async move { while listener_events.next().await.is_some() {} });

    let mut dialer = Driven::peer(loopback(args))?;
    let webrtc = dial_and_upgrade(&mut dialer, target).await?.direct;
    let mut connections = vec![(Transport::WebRtc, webrtc)];
    for (transport, addr) in [(Transport::Quic, quic_addr), (Transport::Tcp, tcp_addr)] {
        let addr = addr.context("listen address")?;
        let opts = DialOpts::peer_id(b)
            .addresses(vec![addr])
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        dialer.call(move |s| s.dial(opts)).await??;
        dialer
            .until("direct dial", |e| match e {
                SwarmEvent::ConnectionEstablished { connection_id, .. } if connection_id == id => {
                    Some(Ok(()))
                }
                SwarmEvent::OutgoingConnectionError {
                    connection_id,
                    error,
                    ..
                } if connection_id == id => Some(Err(anyhow!("{transport:?} dial: {error}"))),
                _ => None,
            })
            .await?;
        connections.push((transport, id));
    }
    if let Some(only) = &args.only {
        connections.retain(|(t, _)| t.flag() == only);
        if connections.is_empty() {
            bail!("--only {only:?}: not webrtc, quic or tcp");
        }
    }
    let mut dialer_events = std::mem::replace(&mut dialer.events, mpsc::unbounded().1);
    let drain2 = tokio::spawn(async move { while dialer_events.next().await.is_some() {} });

    let bytes = args.mib * 1024 * 1024;
    let mut rows = Vec::new();
    for &streams in &args.streams {
        // Rates per transport, interleaved over the repetitions so that the machine's noise
        // falls on all of them alike.
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); connections.len()];
        // CPU time (this process: both peers, user + system) per MiB moved.
        let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); connections.len()];
        for _ in 0..args.repeat {
            for (i, (transport, connection)) in connections.iter().enumerate() {
                let mut opened = Vec::new();
                for _ in 0..streams {
                    opened.push(dialer.open(b, *connection).await?);
                }
                let cpu0 = Proc::own().cpu()?;
                let started = Instant::now();
                let results =
                    futures::future::join_all(opened.into_iter().map(|s| sink(s, bytes))).await;
                let took = started.elapsed();
                let cpu = Proc::own().cpu()? - cpu0;
                for r in results {
                    r.with_context(|| format!("{transport:?}, {streams} streams"))?;
                }
                let mib = (bytes * streams as u64) as f64 / 1048576.0;
                let rate = mib / took.as_secs_f64();
                let cpu_ms = cpu.as_secs_f64() * 1000.0 / mib;
                eprintln!("{transport:?} × {streams}: {rate:.1} MiB/s, {cpu_ms:.2} CPU ms/MiB");
                if let Some(r) = rates.get_mut(i) {
                    r.push(rate);
                }
                if let Some(c) = cpus.get_mut(i) {
                    c.push(cpu_ms);
                }
            }
        }
        let medians: Vec<f64> = rates.iter_mut().map(|r| percentile(r, 50)).collect();
        let cpu_medians: Vec<f64> = cpus.iter_mut().map(|c| percentile(c, 50)).collect();
        let quic = connections
            .iter()
            .position(|(t, _)| *t == Transport::Quic)
            .and_then(|i| medians.get(i).copied())
            .unwrap_or(f64::NAN);
        for (((transport, _), median), cpu_ms) in connections.iter().zip(&medians).zip(&cpu_medians)
        {
            rows.push((
                json!({"bench": "throughput", "transport": transport.name(), "streams": streams,
                       "mib_per_stream": args.mib, "repeat": args.repeat,
                       "median_mib_s": median, "vs_quic": median / quic,
                       "cpu_ms_per_mib": cpu_ms}),
                vec![
                    transport.name().to_string(),
                    streams.to_string(),
                    format!("{median:.1}"),
                    format!("{:.2}", median / quic),
                    format!("{cpu_ms:.2}"),
                ],
            ));
        }
    }
    out.table(
        &format!(
            "Throughput, loopback, {} MiB per stream, median of {}",
            args.mib, args.repeat
        ),
        &["transport", "streams", "MiB/s", "× QUIC", "CPU ms / MiB"],
        rows,
    );
    drop(dialer);
    drop(listener);
    drain.abort();
    drain2.abort();
    relay_task.abort();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Scenario 3: scale.

/// A child process of this binary that prints one JSON line when ready.
struct Subprocess {
    child: Child,
    ready: Value,
}

impl Drop for Subprocess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Subprocess {
    fn start(args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let ready = serde_json::from_str(&line).with_context(|| format!("{line:?}"))?;
        Ok(Self { child, ready })
    }

    fn addr(&self) -> anyhow::Result<Multiaddr> {
        Ok(self.ready["addr"].as_str().context("addr")?.parse()?)
    }

    fn proc(&self) -> Proc {
        Proc(self.child.id().to_string())
    }
}

/// Readings of a process from `/proc`.
struct Proc(String);

impl Proc {
    fn own() -> Self {
        Proc("self".into())
    }

    /// A `VmXXX` line of `/proc/<pid>/status`, in KiB.
    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{field} in /proc/{}/status", self.0))
    }

    /// User + system CPU time so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0))?;
        // Fields after the command name (which may contain spaces) start at field 3.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
        let ticks: u64 = [11, 12]
            .iter()
            .map(|&i| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum();
        // USER_HZ is 100 on every Linux this runs on.
        Ok(Duration::from_millis(ticks * 10))
    }
}

/// The child process `relay-server --max N`: a relay on 127.0.0.1 for N pairs.
async fn relay_server(args: &Args) -> anyhow::Result<()> {
    let max = args.relay_max.max(16);
    let (mut relay, addr) = support::loopback_relay(relay_config(2 * max)).await?;
    println!("{}", json!({"addr": addr.to_string()}));
    loop {
        relay.select_next_some().await;
    }
}

/// The child process `hub --relay <addr> --max N`: a peer with a reservation that accepts N
/// upgrades at once.
async fn hub(args: &Args) -> anyhow::Result<()> {
    let relay = args.relay.clone().context("--relay")?;
    let max = args.relay_max.max(1);
    let mut hub = Driven::peer(loopback(args).with_max_concurrent_upgrades(max))?;
    let addr = hub.reserve(&relay).await?;
    println!("{}", json!({"addr": addr.to_string()}));
    while hub.events.next().await.is_some() {}
    Ok(())
}

/// Builds `n` peers, each with its events drained by a task of its own.
fn peers(n: usize, config: &Config) -> anyhow::Result<Vec<Driven>> {
    (0..n).map(|_| Driven::peer(config.clone())).collect()
}

/// Runs `f` on every item at once; collects the results in order.
async fn all<T, R, F: Future<Output = R>>(items: Vec<T>, f: impl Fn(T) -> F) -> Vec<R> {
    futures::future::join_all(items.into_iter().map(f)).await
}

async fn scale(args: &Args, out: &Report) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut hub_rows = Vec::new();
    let mut failed = false;
    for &n in &args.pairs {
        let relay = Subprocess::start(&["relay-server", "--max", &n.to_string()])?;
        let relay_addr = relay.addr()?;

        // N pairs upgrading at once.
        eprintln!("scale {n}: reserving");
        let listeners = all(peers(n, &loopback(args))?, |mut l| {
            let relay_addr = relay_addr.clone();
            async move {
                let target = l.reserve(&relay_addr).await?;
                anyhow::Ok((l, target))
            }
        })
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
        let (listeners, targets): (Vec<_>, Vec<_>) = listeners.into_iter().unzip();
        let dialers = peers(n, &loopback(args))?;
        eprintln!("scale {n}: upgrading");
        let (cpu0, relay_cpu0) = (Proc::own().cpu()?, relay.proc().cpu()?);
        let started = Instant::now();
        let results = all(
            dialers.into_iter().zip(targets).collect(),
            |(mut d, t)| async move {
                let r = dial_and_upgrade(&mut d, t).await.map(|_| started.elapsed());
                (d, r)
            },
        )
        .await;
        let cpu = Proc::own().cpu()? - cpu0;
        let relay_cpu = relay.proc().cpu()? - relay_cpu0;
        let relay_peak = relay.proc().status_kib("VmHWM")?;
        let mut done: Vec<f64> = Vec::new();
        for (_, r) in &results {
            match r {
                Ok(at) => done.push(at.as_secs_f64()),
                Err(e) => eprintln!("scale {n}: {e:#}"),
            }
        }
        let ok = done.len();
        failed |= ok != n;
        let wall = percentile(&mut done.clone(), 100);
        let p50 = percentile(&mut done, 50);
        let per_upgrade = |d: Duration| d.as_secs_f64() * 1000.0 / ok.max(1) as f64;
        rows.push((
            json!({"bench": "scale", "pairs": n, "upgraded": ok, "wall_s": wall,
                   "p50_s": p50, "relay_peak_rss_kib": relay_peak,
                   "peers_cpu_ms_per_upgrade": per_upgrade(cpu),
                   "relay_cpu_ms_per_upgrade": per_upgrade(relay_cpu)}),
            vec![
                n.to_string(),
                format!("{ok}/{n}"),
                format!("{wall:.2}"),
                format!("{p50:.2}"),
                format!("{:.1}", relay_peak as f64 / 1024.0),
                format!("{:.1}", per_upgrade(cpu)),
                format!("{:.2}", per_upgrade(relay_cpu)),
            ],
        ));
        drop(results);
        drop(listeners);

        // One peer holding N direct connections.
        eprintln!("scale {n}: one peer, {n} connections");
        let hub = Subprocess::start(&[
            "hub",
            "--relay",
            &relay_addr.to_string(),
            "--max",
            &n.to_string(),
        ])?;
        let hub_addr = hub.addr()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = hub.proc().status_kib("VmRSS")?;
        // In batches: libp2p's relay client negotiates at most 10 inbound circuits at once
        // per relay connection and drops the rest (a limit of libp2p-relay, not ours).
        let mut results = Vec::new();
        for _ in (0..n).step_by(HUB_BATCH) {
            let batch = peers(HUB_BATCH.min(n - results.len()), &loopback(args))?;
            results.extend(
                all(batch, |mut d| {
                    let t = hub_addr.clone();
                    async move {
                        let r = dial_and_upgrade(&mut d, t).await;
                        (d, r)
                    }
                })
                .await,
            );
        }
        let mut ok = 0;
        for (_, r) in &results {
            match r {
                Ok(_) => ok += 1,
                Err(e) => eprintln!("scale {n}, hub: {e:#}"),
            }
        }
        failed |= ok != n;
        // Idle: the relayed connections drained and closed, nothing moving.
        tokio::time::sleep(Config::default().drain_timeout + Duration::from_secs(2)).await;
        let after = hub.proc().status_kib("VmRSS")?;
        let per_connection = after.saturating_sub(before) as f64 / ok.max(1) as f64;
        hub_rows.push((
            json!({"bench": "hub", "connections": n, "upgraded": ok,
                   "rss_before_kib": before, "rss_after_kib": after,
                   "kib_per_connection": per_connection}),
            vec![
                n.to_string(),
                format!("{ok}/{n}"),
                format!("{:.1}", before as f64 / 1024.0),
                format!("{:.1}", after as f64 / 1024.0),
                format!("{per_connection:.0}"),
            ],
        ));
        drop(results);
    }
    out.table(
        "Scale: N pairs upgrading at once through one relay, loopback",
        &[
            "pairs",
            "upgraded",
            "wall s (all)",
            "p50 s",
            "relay peak RSS MiB",
            "peers' CPU ms / upgrade",
            "relay CPU ms / upgrade",
        ],
        rows,
    );
    out.table(
        "One peer holding N idle direct connections",
        &[
            "connections",
            "upgraded",
            "RSS before MiB",
            "RSS after MiB",
            "KiB / connection",
        ],
        hub_rows,
    );
    if failed {
        bail!("not every upgrade succeeded");
    }
    Ok(())
}
