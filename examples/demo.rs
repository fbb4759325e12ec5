//! The one-command demo: `cargo run --release --example demo`.
//!
//! Starts, in one process on 127.0.0.1, a circuit relay server, a listener with a reservation
//! on it and a dialer. The dialer reaches the listener through the relay, pings it there,
//! upgrades the connection to a direct WebRTC connection, pings again and moves 16 MiB each
//! way over the direct connection, while the relayed connection is drained and closed. Each
//! step is printed with its time. Exits 0 on success, 1 with the reason on failure.
//!
//! `RUST_LOG=libp2p_webrtc_signal=debug` shows the library's logs on stderr.

mod support;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{ping, relay};
use libp2p_webrtc_signal::{Config, Event};
use support::PeerEvent;

/// Pings per kind of connection.
const PINGS: usize = 5;
/// Bytes echoed over the direct connection.
const TRANSFER: usize = 16 * 1024 * 1024;
/// The whole demo, or it failed.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> ExitCode {
    support::init_logging();
    let out = Output::new();
    let result = tokio::time::timeout(DEADLINE, run(out.clone())).await;
    out.stop();
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("\ndemo failed: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("\ndemo failed: not done within {DEADLINE:?}");
            ExitCode::FAILURE
        }
    }
}

async fn run(out: Output) -> anyhow::Result<()> {
    out.line("libp2p-webrtc-signal demo: a relay, a listener and a dialer on 127.0.0.1\n");

    // The relay server, with the default circuit limits (2 minutes, 128 KiB): the signaling
    // and the pings over the relay fit in them.
    out.waiting("starting the relay");
    let (mut relay, relay_addr) = support::loopback_relay(relay::Config::default()).await?;
    out.step("relay", format!("listening on {relay_addr}"));
    tokio::spawn(async move {
        loop {
            relay.select_next_some().await;
        }
    });

    // The listener: a reservation on the relay, echo for whoever asks.
    let config = Config::default()
        .with_udp_bind_addrs(vec!["127.0.0.1:0".parse()?])
        .with_loopback_candidates(true)
        .with_drain_timeout(Duration::from_secs(3));
    out.waiting("reserving a slot on the relay");
    let (mut listener, mut echo_requests) = support::peer(
        Keypair::generate_ed25519(),
        Some(config.clone()),
        Duration::from_millis(200),
    )?;
    let listener_id = *listener.local_peer_id();
    listener.listen_on(relay_addr.clone().with(Protocol::P2pCircuit))?;
    loop {
        match listener.select_next_some().await {
            SwarmEvent::Behaviour(PeerEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. },
            )) => break,
            SwarmEvent::ListenerClosed { reason, .. } => bail!("reservation failed: {reason:?}"),
            _ => {}
        }
    }
    let listener_addr = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(listener_id));
    out.step(
        "listener",
        format!("reserved: reachable at {listener_addr}"),
    );
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = listener.select_next_some() => {}
                Some((_, _, stream)) = echo_requests.next() => {
                    tokio::spawn(support::serve_echo(stream));
                }
            }
        }
    });

    // The dialer upgrades on request here, so that it can ping over the relay first; with
    // the default config the upgrade starts as soon as the relayed connection is up.
    let (mut dialer, _) = support::peer(
        Keypair::generate_ed25519(),
        Some(config.with_auto_upgrade(false)),
        Duration::from_millis(200),
    )?;
    out.waiting("dialing the listener through the relay");
    let dialed = Instant::now();
    dialer.dial(listener_addr)?;

    let mut demo = Demo::default();
    loop {
        let event = dialer.select_next_some().await;
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } if peer_id == listener_id && support::is_relayed(endpoint.get_remote_address()) => {
                demo.relayed = Some(connection_id);
                out.step(
                    "dialer",
                    format!("relayed connection up ({})", ms(dialed.elapsed())),
                );
                out.waiting("pinging over the relay");
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                bail!("dialing through the relay failed: {error}")
            }
            SwarmEvent::Behaviour(PeerEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            })) if peer == listener_id => {
                let rtt = result.context("ping failed")?;
                if Some(connection) == demo.relayed && demo.direct.is_none() {
                    demo.relay_rtts.push(rtt);
                    if demo.relay_rtts.len() == PINGS {
                        out.step(
                            "ping",
                            format!("over the relay: median {}", ms(median(&demo.relay_rtts))),
                        );
                        let webrtc = dialer
                            .behaviour_mut()
                            .webrtc
                            .as_mut()
                            .context("no webrtc")?;
                        if !webrtc.upgrade(listener_id) {
                            bail!("could not start the upgrade");
                        }
                    }
                } else if Some(connection) == demo.direct && demo.direct_rtts.len() < PINGS {
                    demo.direct_rtts.push(rtt);
                    if demo.direct_rtts.len() == PINGS {
                        out.step(
                            "ping",
                            format!(
                                "over WebRTC: median {} (relay: {})",
                                ms(median(&demo.direct_rtts)),
                                ms(median(&demo.relay_rtts)),
                            ),
                        );
                        out.waiting("echoing 16 MiB over WebRTC");
                        let open = dialer.behaviour_mut().echo.open(listener_id, connection);
                        demo.transfer = Some(tokio::spawn(async move {
                            let stream = open.await?.map_err(anyhow::Error::msg)?;
                            Ok(support::echo_transfer(stream, TRANSFER).await?.took)
                        }));
                    }
                }
            }
            SwarmEvent::Behaviour(PeerEvent::Webrtc(event)) => match event {
                Event::UpgradeStarted { role, .. } => {
                    out.step(
                        "signaling",
                        format!(
                            "{} stream on the relayed connection, this side: {role:?}",
                            libp2p_webrtc_signal::PROTOCOL_NAME
                        ),
                    );
                    out.waiting("SDP offer/answer, ICE, DTLS");
                }
                Event::Upgraded {
                    direct_connection,
                    took,
                    timings: t,
                    ..
                } => {
                    demo.direct = Some(direct_connection);
                    out.step("direct", format!("WebRTC connection up in {}", ms(took)));
                    out.detail(format!(
                        "stream open {} · offer/answer {} · ICE {} · DTLS {} · SCTP {} · hand-off {}",
                        ms(t.stream),
                        ms(t.descriptions),
                        ms(t.ice),
                        ms(t.dtls),
                        ms(t.sctp),
                        ms(t.handoff)
                    ));
                    out.detail(format!(
                        "signaling over the relay: {} B sent, {} B received",
                        t.signaling_bytes_sent, t.signaling_bytes_received
                    ));
                    out.waiting("pinging over WebRTC; draining the relayed connection");
                }
                Event::UpgradeFailed {
                    error,
                    will_retry,
                    attempt,
                    ..
                } => {
                    out.step("upgrade", format!("attempt {attempt} failed: {error}"));
                    if !will_retry {
                        bail!("the upgrade failed: {error}");
                    }
                }
                Event::RelayClosed { .. } => {
                    demo.relay_closed = true;
                    out.step("relay", "relayed connection drained and closed".to_string());
                }
                _ => {}
            },
            _ => {}
        }
        if let Some(transfer) = demo.transfer.as_mut().filter(|t| t.is_finished()) {
            let took = transfer.await??;
            demo.transfer = None;
            demo.transferred = true;
            let mib = TRANSFER as f64 / (1024.0 * 1024.0);
            out.step(
                "transfer",
                format!(
                    "{mib:.0} MiB each way over WebRTC in {}: {:.1} MiB/s, echo checked",
                    ms(took),
                    mib / took.as_secs_f64()
                ),
            );
        }
        if demo.transferred && demo.relay_closed {
            break;
        }
        if demo.transfer.is_some() || (demo.transferred && !demo.relay_closed) {
            out.waiting(if demo.transferred {
                "draining the relayed connection"
            } else {
                "echoing 16 MiB over WebRTC"
            });
        }
    }
    out.line(&format!(
        "\ndone in {}: {listener_id} reached through the relay, then directly over WebRTC",
        ms(out.started.elapsed())
    ));
    Ok(())
}

/// What the dialer has seen.
#[derive(Default)]
struct Demo {
    relayed: Option<ConnectionId>,
    direct: Option<ConnectionId>,
    relay_rtts: Vec<Duration>,
    direct_rtts: Vec<Duration>,
    transfer: Option<tokio::task::JoinHandle<anyhow::Result<Duration>>>,
    transferred: bool,
    relay_closed: bool,
}

fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Steps on stdout; a spinner on stderr while waiting, when stderr is a terminal.
#[derive(Clone)]
struct Output {
    started: Instant,
    waiting: Arc<Mutex<Option<String>>>,
    spinner: Option<Arc<tokio::task::JoinHandle<()>>>,
}

impl Output {
    fn new() -> Self {
        let waiting = Arc::new(Mutex::new(None::<String>));
        let spinner = std::io::stderr().is_terminal().then(|| {
            let waiting = waiting.clone();
            Arc::new(tokio::spawn(async move {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                for i in 0.. {
                    if let Ok(label) = waiting.lock() {
                        if let Some(label) = label.as_ref() {
                            let mut err = std::io::stderr().lock();
                            let _ = write!(err, "\r\x1b[2K{} {label}…", frames[i % frames.len()]);
                            let _ = err.flush();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(80)).await;
                }
            }))
        });
        Self {
            started: Instant::now(),
            waiting,
            spinner,
        }
    }

    fn clear(&self) {
        if self.spinner.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    fn line(&self, text: &str) {
        let guard = self.waiting.lock();
        self.clear();
        println!("{text}");
        drop(guard);
    }

    /// A step, with the time since the start.
    fn step(&self, what: &str, detail: String) {
        let t = self.started.elapsed().as_secs_f64();
        self.line(&format!("[{t:7.3} s]  {what:<10} {detail}"));
    }

    /// A further line for the last step.
    fn detail(&self, detail: String) {
        self.line(&format!("{:12}{:<10} {detail}", "", ""));
    }

    /// What the spinner says until the next step.
    fn waiting(&self, label: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            *w = Some(label.to_string());
        }
    }

    fn stop(&self) {
        if let Ok(mut w) = self.waiting.lock() {
            *w = None;
        }
        if let Some(spinner) = &self.spinner {
            spinner.abort();
        }
        self.clear();
    }
}
