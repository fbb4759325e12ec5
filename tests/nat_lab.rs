//! NAT traversal across real NATs: the lab of `tests/lab/mod.rs` (network namespaces, veth,
//! iptables NAT with stateful firewalls, coturn for STUN/TURN, userspace delay/loss), with
//! the `node` example as relay, listener (behind r1) and dialer (behind r2).
//!
//! Needs root and `iproute2 iptables conntrack coturn iputils-ping iperf3` (`.ci/run` installs them). Without
//! them each test prints "skipped: ..." on stderr and returns, except under CI (`CI=true`),
//! where that is a failure. The lab's namespaces are shared, so
//! the tests take a lock and run one at a time.

mod lab;
mod procs;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::{Lab, Links, Nat, V6};
use procs::{events, Node};
use serde_json::Value;

static LAB: Mutex<()> = Mutex::new(());

/// Takes the lab, or says why it cannot run.
fn lab_lock() -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Some(why) = lab::unavailable() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the NAT lab is required here but {why}");
        }
        eprintln!("\n*** NAT lab skipped: {why} ***\n");
        return None;
    }
    Some(LAB.lock().unwrap_or_else(|e| e.into_inner()))
}

/// ICE servers the peers are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ice {
    /// None, and the relay does not answer STUN.
    None,
    /// None configured: the relay answers STUN (the `node` default), which the peers use
    /// with no flag.
    Relay,
    /// The lab's STUN server (and the relay's).
    Stun,
    /// The lab's STUN and TURN server (and the relay's STUN).
    StunTurn,
}

fn ice_flags(ice: Ice) -> Vec<String> {
    let stun = format!("stun:{}:3478", lab::STUN_IP);
    let turn = format!("turn:{}:3478?transport=udp", lab::STUN_IP);
    match ice {
        Ice::None | Ice::Relay => vec![],
        Ice::Stun => vec!["--stun".into(), stun],
        Ice::StunTurn => vec![
            "--stun".into(),
            stun,
            "--turn".into(),
            turn,
            "--turn-user".into(),
            lab::TURN_USER.into(),
            "--turn-pass".into(),
            lab::TURN_PASS.into(),
        ],
    }
}

/// A relay in its namespace and a listener behind r1 with a reservation; returns them and
/// the listener's circuit address.
fn relay_and_listener(lab: &Lab, ice: Ice, extra: &[&str]) -> (Node, Node, String) {
    relay_and_listener_with(lab, ice, &[], extra)
}

/// [`relay_and_listener`], with `relay_extra` flags for the relay (its limits).
fn relay_and_listener_with(
    lab: &Lab,
    ice: Ice,
    relay_extra: &[&str],
    extra: &[&str],
) -> (Node, Node, String) {
    let (relay, relay_addr) = start_relay(lab, ice, relay_extra);
    let (listener, addr) = start_listener(lab, &procs::example("node"), &relay_addr, ice, extra);
    (relay, listener, addr)
}

/// Starts the relay (`relay_extra`: its limits); returns it and its address.
fn start_relay(lab: &Lab, ice: Ice, relay_extra: &[&str]) -> (Node, String) {
    let listen = format!("/ip4/{}/tcp/4001", lab::RELAY_IP);
    let mut args = vec!["relay", "--listen", &listen, "--seed", "1"];
    if ice == Ice::None {
        args.push("--no-stun-responder");
    }
    args.extend_from_slice(relay_extra);
    let mut relay = Node::start_in(&lab.ns("relay"), &args);
    let relay_addr = relay.wait("listening")["addr"]
        .as_str()
        .expect("addr")
        .to_string();
    (relay, relay_addr)
}

/// Starts `bin` (a build of `node`) listening behind r1 through the relay at `relay_addr`;
/// returns it and its relayed address, once reserved.
fn start_listener(
    lab: &Lab,
    bin: &std::path::Path,
    relay_addr: &str,
    ice: Ice,
    extra: &[&str],
) -> (Node, String) {
    let mut args: Vec<String> = vec![
        "listen".into(),
        "--relay".into(),
        relay_addr.into(),
        "--seed".into(),
        "2".into(),
    ];
    args.extend(ice_flags(ice));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut listener = Node::start_bin_in(bin, &lab.ns("p1"), &args);
    let addr = listener.wait("reserved")["addr"]
        .as_str()
        .expect("addr")
        .to_string();
    (listener, addr)
}

/// Starts the dialer behind r2.
fn dialer(lab: &Lab, addr: &str, ice: Ice, extra: &[&str]) -> Node {
    let mut args: Vec<String> = vec!["dial".into(), addr.into(), "--seed".into(), "3".into()];
    args.extend(ice_flags(ice));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start_in(&lab.ns("p2"), &args)
}

/// The `p`th percentile (nearest rank) of `v`, which it sorts; NaN if `v` is empty.
fn pct(v: &mut [f64], p: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = (p * v.len()).div_ceil(100).clamp(1, v.len());
    v[rank - 1]
}

/// Flags for this build's `node` in the rate-limited measurements (listener and dialer, not
/// `BEFORE_NODE`'s), from `LAB_NODE_ARGS`, e.g. `--sctp-max-mtu 1428`.
fn lab_node_args() -> Vec<String> {
    std::env::var("LAB_NODE_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The environment variable `name` parsed, or `default` if it is unset or does not parse.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One row of the matrix.
struct Row {
    r1: Nat,
    r2: Nat,
    ice: Ice,
    links: Links,
    direct: bool,
}

/// What a row measured.
struct Outcome {
    upgrade_ms: Option<f64>,
    failures: usize,
    /// The dialer's `upgraded` event's `path`: `udp4` or `udp6`.
    path: Option<String>,
}

fn run_row(row: &Row) -> Outcome {
    run_row_with(row, &[])
}

/// [`run_row`] with `extra` flags for both peers.
fn run_row_with(row: &Row, extra: &[&str]) -> Outcome {
    run_row_dual(row, V6::NONE, extra)
}

/// [`run_row_with`] in a lab with IPv6 per `v6`.
fn run_row_dual(row: &Row, v6: V6, extra: &[&str]) -> Outcome {
    let lab = Lab::up_dual(row.r1, row.r2, row.links, v6);
    let (_relay, _listener, addr) = relay_and_listener(&lab, row.ice, extra);
    let mut flags = vec!["--ping", "3", "--send-bytes", "16384", "--timeout", "90"];
    flags.extend_from_slice(extra);
    if !row.direct {
        // One attempt, bounded: the failure is the expected outcome.
        flags.extend([
            "--allow-relayed",
            "--max-attempts",
            "1",
            "--upgrade-timeout",
            "15",
        ]);
    }
    let (code, all) = dialer(&lab, &addr, row.ice, &flags).finish();
    let label = format!("{:?}/{:?}/{:?}/{:?}", row.r1, row.r2, row.ice, row.links);
    assert_eq!(code, 0, "{label}: dial failed: {all:#?}");
    let done = events(&all, "done").next().expect("done");
    assert_eq!(done["ok"], true, "{label}: {all:#?}");
    assert_eq!(done["direct"], row.direct, "{label}: {all:#?}");
    let pings: Vec<&Value> = events(&all, "ping").collect();
    assert_eq!(pings.len(), 3, "{label}: {all:#?}");
    assert!(
        pings
            .iter()
            .all(|p| p["ok"] == true && p["direct"] == row.direct),
        "{label}: {all:#?}"
    );
    let transfer = events(&all, "transfer").next().expect("transfer");
    assert_eq!(transfer["ok"], true, "{label}: {all:#?}");
    let failures = events(&all, "upgrade_failed").count();
    let upgraded = events(&all, "upgraded").next();
    let upgrade_ms = upgraded.and_then(|u| u["ms"].as_f64());
    let path = upgraded.and_then(|u| u["path"].as_str().map(str::to_string));
    if upgraded.is_some() {
        assert!(path.is_some(), "{label}: no path: {all:#?}");
    }
    if row.direct {
        assert!(upgrade_ms.is_some(), "{label}: no upgrade: {all:#?}");
    } else {
        assert!(upgrade_ms.is_none(), "{label}: upgraded: {all:#?}");
        let last = events(&all, "upgrade_failed")
            .last()
            .expect("upgrade_failed");
        assert_eq!(last["will_retry"], false, "{label}");
        eprintln!("{label}: failed as expected: {}", last["reason"]);
    }
    Outcome {
        upgrade_ms,
        failures,
        path,
    }
}

#[test]
fn nat_matrix() {
    let Some(_lab) = lab_lock() else { return };
    let plain = Links::default();
    let rows = [
        Row {
            r1: Nat::None,
            r2: Nat::Cone,
            ice: Ice::Stun,
            links: plain,
            direct: true,
        },
        Row {
            r1: Nat::Cone,
            r2: Nat::Cone,
            ice: Ice::Stun,
            links: plain,
            direct: true,
        },
        Row {
            r1: Nat::Cone,
            r2: Nat::Symmetric,
            ice: Ice::Stun,
            links: plain,
            direct: false,
        },
        Row {
            r1: Nat::Symmetric,
            r2: Nat::Symmetric,
            ice: Ice::Stun,
            links: plain,
            direct: false,
        },
        Row {
            r1: Nat::Symmetric,
            r2: Nat::Symmetric,
            ice: Ice::StunTurn,
            links: plain,
            direct: true,
        },
        Row {
            r1: Nat::Cone,
            r2: Nat::Cone,
            ice: Ice::Stun,
            links: Links {
                delay_ms: 25,
                loss_pct: 0.0,
            },
            direct: true,
        },
        Row {
            r1: Nat::Cone,
            r2: Nat::Cone,
            ice: Ice::Stun,
            // 2%: at 5% per link (~10% end to end) 24 of 24 runs pass since the DTLS and
            // SCTP handshake patches (3 of 10 failed before; `repeat_the_loss_row`), but an
            // upgrade there can take 5 s: kept out of CI's time budget.
            links: Links {
                delay_ms: 0,
                loss_pct: 2.0,
            },
            direct: true,
        },
        Row {
            r1: Nat::Cone,
            r2: Nat::Cone,
            ice: Ice::None,
            links: plain,
            direct: false,
        },
        // No STUN server configured anywhere: the relay answers STUN.
        Row {
            r1: Nat::Cone,
            r2: Nat::Cone,
            ice: Ice::Relay,
            links: plain,
            direct: true,
        },
        Row {
            r1: Nat::None,
            r2: Nat::Cone,
            ice: Ice::Relay,
            links: plain,
            direct: true,
        },
    ];
    let mut table = Vec::new();
    let mut upgrade_ms = Vec::new();
    for row in &rows {
        let started = Instant::now();
        let outcome = run_row(row);
        upgrade_ms.push(outcome.upgrade_ms);
        let ice = match row.ice {
            Ice::None => "none",
            Ice::Relay => "none (the relay answers STUN)",
            Ice::Stun => "STUN",
            Ice::StunTurn => "STUN + TURN",
        };
        let (delay, loss) = (row.links.delay_ms, row.links.loss_pct);
        let links = match (delay > 0, loss > 0.0) {
            (false, false) => String::new(),
            (true, false) => format!(", {delay} ms per link"),
            (false, true) => format!(", {loss}% loss per link"),
            (true, true) => format!(", {delay} ms, {loss}% loss per link"),
        };
        let result = match outcome.upgrade_ms {
            Some(ms) if row.links.delay_ms > 0 => {
                // The direct path crosses two delayed links each way.
                let rtt = 4.0 * f64::from(row.links.delay_ms);
                format!("direct in {ms:.0} ms = {:.1} RTT ({rtt:.0} ms)", ms / rtt)
            }
            Some(ms) => format!("direct in {ms:.0} ms"),
            None => "stayed relayed (upgrade failed), pings and echo over the relay".into(),
        };
        table.push(format!(
            "| {:?} | {:?} | {ice}{links} | {result}; {} failed attempt(s) | {:.1} s |",
            row.r1,
            row.r2,
            outcome.failures,
            started.elapsed().as_secs_f64()
        ));
    }
    eprintln!("\n| r1 | r2 | ICE servers, links | outcome | row time |\n|---|---|---|---|---|");
    for line in &table {
        eprintln!("{line}");
    }
    // Through TURN, the handshakes take no longer than on a direct path (the TURN server is
    // one more hop on the same lab). Before the webrtc driver patch every DTLS and SCTP
    // flight over TURN waited for the driver's next timer: 1.06 s against ~50 ms direct
    // (3 s before `ice_relay_acceptance_wait`).
    let (Some(direct), Some(turn)) = (upgrade_ms[1], upgrade_ms[4]) else {
        panic!("rows 1 and 4 upgrade: {upgrade_ms:?}");
    };
    assert!(
        turn <= 5.0 * direct + 250.0,
        "symmetric/symmetric through TURN took {turn:.0} ms, cone/cone direct {direct:.0} ms"
    );
    // Round trips at 25 ms per link (issue 17): 6.3 RTT of the direct path since SNAP,
    // aggressive nomination and gathering before the offer and the answer (10.4 before).
    // Two round trips more fail it.
    let Some(delayed) = upgrade_ms[5] else {
        panic!("row 5 upgrades: {upgrade_ms:?}");
    };
    let rtts = delayed / (4.0 * 25.0);
    assert!(
        rtts <= 8.0,
        "cone/cone at 25 ms per link took {delayed:.0} ms = {rtts:.1} RTT (6.3 expected)"
    );
}

/// Dual stack (issue 20): global IPv6 behind each home router's stateful firewall beside
/// IPv4 NAT. Where IPv4 cannot punch through (symmetric on both sides) the peers connect
/// over IPv6; where IPv6 is missing on one side or its UDP is blocked, IPv4 does as it
/// does without IPv6. The dialer's `upgraded` event names the family.
#[test]
fn dual_stack_matrix() {
    let Some(_lab) = lab_lock() else { return };
    let row = |r1, r2| Row {
        r1,
        r2,
        ice: Ice::Stun,
        links: Links::default(),
        direct: true,
    };
    let one_side = V6 {
        p2: false,
        ..V6::BOTH
    };
    let udp_dropped = V6 {
        drop_udp: true,
        ..V6::BOTH
    };
    // (row, IPv6, the family the direct path must use: None = either)
    let cases = [
        (row(Nat::Symmetric, Nat::Symmetric), V6::BOTH, Some("udp6")),
        (row(Nat::Cone, Nat::Cone), V6::BOTH, None),
        (row(Nat::Cone, Nat::Cone), one_side, Some("udp4")),
        (row(Nat::Cone, Nat::Cone), udp_dropped, Some("udp4")),
    ];
    let mut table = Vec::new();
    for (row, v6, family) in &cases {
        let outcome = run_row_dual(row, *v6, &[]);
        let label = format!("{:?}/{:?} {v6:?}", row.r1, row.r2);
        let path = outcome.path.expect("an upgraded row has a path");
        if let Some(family) = family {
            assert_eq!(&path, family, "{label}");
        }
        assert!(path == "udp4" || path == "udp6", "{label}: {path}");
        table.push(format!(
            "| {:?} | {:?} | {v6:?} | direct over {path} in {:.0} ms |",
            row.r1,
            row.r2,
            outcome.upgrade_ms.unwrap_or(f64::NAN)
        ));
    }
    eprintln!("\n| r1 | r2 | IPv6 | outcome |\n|---|---|---|---|");
    for line in &table {
        eprintln!("{line}");
    }
}

#[test]
fn relay_killed_during_signaling_never_hangs() {
    let Some(_lab) = lab_lock() else { return };
    let lab = Lab::up(
        Nat::Cone,
        Nat::Cone,
        Links {
            delay_ms: 25,
            loss_pct: 0.0,
        },
    );
    let (mut relay, _listener, addr) = relay_and_listener(&lab, Ice::Stun, &[]);
    let mut dial = dialer(&lab, &addr, Ice::Stun, &["--ping", "2", "--timeout", "60"]);
    dial.wait("upgrade_started");
    let _ = relay.child.kill();
    let killed = Instant::now();
    let (code, all) = dial.finish();
    // Completing (exit 0, direct) and failing cleanly (exit 1) are both fine; a panic
    // (101) or a hang (the dialer's own timeout, or `finish`'s) are not.
    assert!(code == 0 || code == 1, "exit {code}: {all:#?}");
    if code == 0 {
        assert_eq!(events(&all, "done").next().expect("done")["direct"], true);
    }
    eprintln!(
        "relay killed during signaling: exit {code} after {:.1} s",
        killed.elapsed().as_secs_f64()
    );
}

#[test]
fn remote_killed_after_the_upgrade_is_noticed() {
    let Some(_lab) = lab_lock() else { return };
    let lab = Lab::up(Nat::Cone, Nat::Cone, Links::default());
    let (_relay, mut listener, addr) = relay_and_listener(&lab, Ice::Stun, &[]);
    // Many pings: the dialer is still checking when the listener dies.
    let mut dial = dialer(
        &lab,
        &addr,
        Ice::Stun,
        &["--ping", "1000", "--timeout", "90"],
    );
    dial.wait("upgraded");
    dial.wait("ping");
    let _ = listener.child.kill();
    let killed = Instant::now();
    let (code, all) = dial.finish();
    let noticed = killed.elapsed();
    assert_eq!(code, 1, "{all:#?}");
    let error = events(&all, "error").next().expect("error event");
    let reason = error["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("closed") || reason.contains("ping"),
        "unexpected reason {reason}"
    );
    // ICE consent: dead after 5 s (Config defaults), then up to 5 redials of the relayed
    // address (the listener's reservation went with it) before the fallback gives up.
    assert!(
        noticed < Duration::from_secs(60),
        "noticed after {noticed:?}"
    );
    eprintln!(
        "remote killed: the dialer noticed after {:.1} s ({reason})",
        noticed.as_secs_f64()
    );
}

/// Upgrade latency across two cone NATs with 25 ms per link, in RTTs of the direct path
/// (BENCHMARKS.md). `cargo test --release --test nat_lab measure -- --ignored --nocapture`
/// (root, with the lab's packages).
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_upgrade_in_rtts() {
    let Some(_lock) = lab_lock() else { return };
    measure_phases(Nat::Cone, Nat::Cone, Ice::Stun, 25, env_or("RUNS", 20));
}

/// The TURN row's upgrade, phase by phase: symmetric/symmetric with STUN and TURN, no delay
/// (`RUNS`, default 10). `NATS=cone`: cone/cone with the same servers, to see which pair
/// wins where a direct one works too.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_turn_upgrade() {
    let Some(_lock) = lab_lock() else { return };
    let nat = if std::env::var("NATS").is_ok_and(|v| v == "cone") {
        Nat::Cone
    } else {
        Nat::Symmetric
    };
    measure_phases(nat, nat, Ice::StunTurn, 0, env_or("RUNS", 10));
}

/// The phases of `upgraded`'s `phases_ms`, in order.
const PHASES: [&str; 6] = ["stream", "descriptions", "ice", "dtls", "sctp", "handoff"];

/// One dial with `bin` (a build of `node`) from behind r2 to `addr`, which must upgrade; its
/// `upgraded` event.
fn measured_dial(
    lab: &Lab,
    bin: &std::path::Path,
    addr: &str,
    ice: Ice,
    run: usize,
) -> serde_json::Value {
    let seed = (100 + run).to_string();
    let mut args: Vec<String> = vec!["dial".into(), addr.into(), "--seed".into(), seed];
    args.extend(ice_flags(ice));
    args.extend(["--ping", "1", "--timeout", "60"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, all) = Node::start_bin_in(bin, &lab.ns("p2"), &args).finish();
    assert_eq!(code, 0, "{} run {run}: {all:#?}", bin.display());
    let upgraded = events(&all, "upgraded").next().expect("upgraded").clone();
    upgraded
}

/// Adds `upgraded`'s total (`samples[0]`) and [`PHASES`] (the rest) to `samples`.
fn record(samples: &mut [Vec<f64>], upgraded: &serde_json::Value) {
    samples[0].push(upgraded["ms"].as_f64().expect("ms"));
    for (i, phase) in PHASES.iter().enumerate() {
        samples[i + 1].push(upgraded["phases_ms"][phase].as_f64().unwrap_or(f64::NAN));
    }
}

/// Dials `runs` times across one lab and prints the upgrade's phases (p50, p90), in RTTs of
/// the direct path when there is a delay.
fn measure_phases(r1: Nat, r2: Nat, ice: Ice, delay_ms: u32, runs: usize) {
    // The direct path crosses two delayed links each way; the relayed one four.
    let rtt = 4.0 * f64::from(delay_ms);
    let lab = Lab::up(
        r1,
        r2,
        Links {
            delay_ms,
            loss_pct: 0.0,
        },
    );
    let (_relay, _listener, addr) = relay_and_listener(&lab, ice, &[]);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len() + 1];
    for run in 0..runs {
        let upgraded = measured_dial(&lab, &procs::example("node"), &addr, ice, run);
        let ms = upgraded["ms"].as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "run {run}: {ms:.0} ms ({} {})",
            upgraded["path"], upgraded["pair"]
        );
        record(&mut samples, &upgraded);
    }
    eprintln!(
        "\n### Upgrade latency, NAT lab ({r1:?}/{r2:?}, {ice:?}, {delay_ms} ms per link, direct \
         RTT {rtt:.0} ms, relayed RTT {:.0} ms), {runs} runs\n",
        2.0 * rtt
    );
    eprintln!("| phase | p50 ms | p50 RTT | p90 ms | p90 RTT |\n|---|---|---|---|---|");
    let names = std::iter::once("attempt start → direct established").chain(PHASES);
    for (name, v) in names.zip(samples.iter_mut()) {
        let (p50, p90) = (pct(v, 50), pct(v, 90));
        eprintln!(
            "| {name} | {p50:.0} | {:.1} | {p90:.0} | {:.1} |",
            p50 / rtt,
            p90 / rtt
        );
    }
}

/// This build against an earlier one (`BEFORE_NODE`, the path of that commit's `node`
/// example) in one lab: cone/cone, STUN, `DELAY_MS` per link (default 25), `RUNS` pairs of
/// runs (default 10), the two builds alternating, each with its own listener and dialer
/// behind the same relay. Prints the phases of both, p50, in ms and in RTTs of the direct
/// path. A measurement, run by hand (docs/benchmark-history.md section 1):
/// `BEFORE_NODE=/tmp/before-target/debug/examples/node cargo test --features metrics --test
/// nat_lab measure_upgrade_before_after -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_upgrade_before_after() {
    let Some(_lock) = lab_lock() else { return };
    let Some(before) = std::env::var_os("BEFORE_NODE").map(std::path::PathBuf::from) else {
        eprintln!("BEFORE_NODE is not set: nothing to compare");
        return;
    };
    let after = procs::example("node");
    let delay_ms: u32 = env_or("DELAY_MS", 25);
    let runs: usize = env_or("RUNS", 10);
    let rtt = 4.0 * f64::from(delay_ms);
    let lab = Lab::up(
        Nat::Cone,
        Nat::Cone,
        Links {
            delay_ms,
            loss_pct: 0.0,
        },
    );
    let (_relay, relay_addr) = start_relay(&lab, Ice::Stun, &[]);
    let builds = [("before", before), ("after", after)];
    // samples[build][0] is the total, then one per phase.
    let mut samples = vec![vec![Vec::<f64>::new(); PHASES.len() + 1]; builds.len()];
    for run in 0..runs {
        for (b, (name, bin)) in builds.iter().enumerate() {
            let (listener, addr) = start_listener(&lab, bin, &relay_addr, Ice::Stun, &[]);
            let upgraded = measured_dial(&lab, bin, &addr, Ice::Stun, run);
            let ms = upgraded["ms"].as_f64().unwrap_or(f64::NAN);
            eprintln!("run {run} {name}: {ms:.0} ms");
            record(&mut samples[b], &upgraded);
            drop(listener);
        }
    }
    eprintln!(
        "\n### Upgrade latency before/after, NAT lab (cone/cone, STUN, {delay_ms} ms per link, \
         direct RTT {rtt:.0} ms), {runs} runs each, alternating\n"
    );
    eprintln!(
        "| phase | before p50 ms | before p50 RTT | after p50 ms | after p50 RTT |\n|---|---|---|---|---|"
    );
    let names = std::iter::once("attempt start → direct established").chain(PHASES);
    for (i, name) in names.enumerate() {
        let before = pct(&mut samples[0][i], 50);
        let after = pct(&mut samples[1][i], 50);
        eprintln!(
            "| {name} | {before:.0} | {:.1} | {after:.0} | {:.1} |",
            before / rtt,
            after / rtt
        );
    }
}

/// The loss row, repeated with and without the early-DTLS hold: how often each succeeds.
/// `LOSS_RUNS` runs each (default 5), `LOSS_PCT` per link (default 5). A measurement, run
/// by hand:
/// `cargo test --test nat_lab repeat_the_loss_row -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn repeat_the_loss_row() {
    let Some(_lab) = lab_lock() else { return };
    let runs: usize = env_or("LOSS_RUNS", 5);
    let row = Row {
        r1: Nat::Cone,
        r2: Nat::Cone,
        ice: Ice::Stun,
        links: Links {
            delay_ms: 0,
            loss_pct: env_or("LOSS_PCT", 5.0),
        },
        direct: true,
    };
    for records in ["16", "0"] {
        let mut ok = 0;
        let mut ms = Vec::new();
        for _ in 0..runs {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_row_with(&row, &["--early-dtls-records", records])
            }));
            if let Ok(outcome) = result {
                ok += 1;
                ms.extend(outcome.upgrade_ms);
            }
        }
        ms.sort_by(f64::total_cmp);
        eprintln!("early_dtls_records {records}: {ok}/{runs} succeeded; upgrade ms {ms:?}");
    }
}

/// The relay's limits lifted for the lossy-path measurements: 1 GiB and 10 minutes per
/// circuit (the defaults, 128 KiB and 2 minutes, would cut the relayed echo).
const RELAY_UNLIMITED: &[&str] = &[
    "--max-circuit-bytes",
    "1073741824",
    "--max-circuit-duration",
    "600",
];

/// One row of the lossy-path measurements (issue 13).
struct Lossy {
    links: Links,
    /// Echoed over each connection, and sent each way over plain TCP.
    bytes: usize,
    pings: usize,
    ping_interval_ms: u64,
    /// Each dialer's `--timeout`, and the bound of each TCP transfer.
    timeout_s: u64,
    /// Also measure plain TCP (iperf3).
    tcp: bool,
}

impl Lossy {
    fn label(&self) -> String {
        format!(
            "{} ms, {}% loss per link, {} MiB",
            self.links.delay_ms,
            self.links.loss_pct,
            self.bytes as f64 / MIB
        )
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// What one dialer measured on the connection under test.
struct Case {
    /// Seconds for the echo, or why there is none.
    echo_s: Result<f64, String>,
    /// `rtt_ms` of the successful pings on that connection.
    pings_ms: Vec<f64>,
    ping_failures: usize,
}

impl Case {
    /// The `p`th percentile of the ping RTTs, in ms.
    fn ping_pct(&self, p: usize) -> f64 {
        pct(&mut self.pings_ms.clone(), p)
    }
}

/// Plain TCP between p2 and p1 across the same core router.
struct Tcp {
    /// Seconds to move the bytes p2 → p1 and p1 → p2 (at the same time).
    up_s: f64,
    down_s: f64,
    /// The congestion control iperf3 reports for its senders.
    congestion: String,
}

impl Tcp {
    /// Until both directions are done.
    fn secs(&self) -> f64 {
        self.up_s.max(self.down_s)
    }
}

/// What one row measured, in one lab.
struct LossyResult {
    direct: Case,
    relayed: Case,
    tcp: Option<Result<Tcp, String>>,
}

/// A dialer behind r2 that pings the listener, then echoes the row's bytes, on the direct
/// connection, or (`relayed`) on the relayed one without trying an upgrade.
fn lossy_case(lab: &Lab, addr: &str, relayed: bool, row: &Lossy) -> Case {
    let pings = row.pings.to_string();
    let interval = row.ping_interval_ms.to_string();
    let bytes = row.bytes.to_string();
    let timeout = row.timeout_s.to_string();
    let mut flags = vec![
        "--ping",
        &pings,
        "--ping-interval-ms",
        &interval,
        "--send-bytes",
        &bytes,
        "--timeout",
        &timeout,
    ];
    if relayed {
        flags.extend(["--no-upgrade", "--allow-relayed"]);
    }
    let (code, all) = dialer(lab, addr, Ice::Stun, &flags).finish();
    let direct = !relayed;
    let pings_ms: Vec<f64> = events(&all, "ping")
        .filter(|p| p["ok"] == true && p["direct"] == direct)
        .filter_map(|p| p["rtt_ms"].as_f64())
        .collect();
    let ping_failures = events(&all, "ping").filter(|p| p["ok"] != true).count();
    // The dialer's timeout first: exiting on it resets the echo stream, which then also
    // reports a failed transfer.
    let timed_out =
        events(&all, "error").any(|e| e["reason"].as_str().is_some_and(|r| r.contains("timeout")));
    let echo_s = match events(&all, "transfer").next() {
        _ if timed_out => {
            let stage = if pings_ms.len() < row.pings {
                "echo not started"
            } else {
                "echo unfinished"
            };
            Err(format!(
                "did not finish in {timeout} s ({}/{pings} pings, {stage})",
                pings_ms.len()
            ))
        }
        Some(t) if t["ok"] != true => Err(format!("echo failed: {}", t["error"])),
        Some(t) if t["direct"] != direct => Err("went over the relay (no upgrade)".into()),
        Some(t) => t["ms"]
            .as_f64()
            .map(|ms| ms / 1000.0)
            .ok_or_else(|| format!("no ms in {t}")),
        None => Err(match events(&all, "error").next() {
            Some(e) => format!("failed: {}", e["reason"]),
            None if code == -1 => "killed by a signal, without a transfer".into(),
            None => format!("exit {code} without a transfer"),
        }),
    };
    Case {
        echo_s,
        pings_ms,
        ping_failures,
    }
}

/// Plain TCP as the echo moves data, `bytes` each way at once: two iperf3 servers in p1
/// (behind a port forward on r1), two clients in p2, one sending, one receiving (`-R`).
fn tcp_baseline(lab: &Lab, bytes: usize, timeout_s: u64) -> Result<Tcp, String> {
    let found = Command::new("sh")
        .args(["-c", "command -v iperf3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Err("needs iperf3 (apt-get install -y iperf3)".into());
    }
    let ports = [5201u16, 5202];
    let mut servers = Vec::new();
    for port in ports {
        lab.forward_tcp_to_p1(port);
        let server = Command::new("ip")
            .args(["netns", "exec", &lab.ns("p1"), "iperf3", "-s", "-1"])
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("iperf3: {e}"))?;
        servers.push(server);
        lab::wait_for_tcp(&lab.ns("p1"), port);
    }
    let clients: Vec<_> = ports
        .iter()
        .zip([false, true])
        .map(|(port, reverse)| {
            Command::new("ip")
                .args(["netns", "exec", &lab.ns("p2"), "timeout"])
                .args([&timeout_s.to_string(), "iperf3", "-J", "-c", lab::R1_WAN])
                .args(["-p", &port.to_string(), "-n", &bytes.to_string()])
                .args(reverse.then_some("-R"))
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect();
    let outputs: Vec<_> = clients
        .into_iter()
        .map(|c| c.and_then(|c| c.wait_with_output()))
        .collect();
    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    let mut secs = Vec::new();
    let mut congestion = String::new();
    for out in outputs {
        let out = out.map_err(|e| format!("iperf3: {e}"))?;
        if out.status.code() == Some(124) {
            return Err(format!("did not finish in {timeout_s} s"));
        }
        let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "iperf3 output ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        if let Some(error) = json["error"].as_str() {
            return Err(format!("iperf3: {error}"));
        }
        let end = &json["end"];
        secs.push(
            end["sum_received"]["seconds"]
                .as_f64()
                .ok_or("iperf3: no end.sum_received.seconds")?,
        );
        congestion = end["sender_tcp_congestion"]
            .as_str()
            .unwrap_or("?")
            .to_string();
    }
    Ok(Tcp {
        up_s: secs[0],
        down_s: secs[1],
        congestion,
    })
}

/// Builds the lab (cone/cone NATs, STUN) with the row's links and measures in it, one after
/// the other: plain TCP (if asked), the relayed connection, the direct one. The direct case
/// goes last: one that times out leaves the listener's side retransmitting for a while.
fn lossy_row(row: &Lossy) -> LossyResult {
    let lab = Lab::up(Nat::Cone, Nat::Cone, row.links);
    let tcp = row
        .tcp
        .then(|| tcp_baseline(&lab, row.bytes, row.timeout_s));
    let (_relay, _listener, addr) = relay_and_listener_with(&lab, Ice::Stun, RELAY_UNLIMITED, &[]);
    let relayed = lossy_case(&lab, &addr, true, row);
    let direct = lossy_case(&lab, &addr, false, row);
    LossyResult {
        direct,
        relayed,
        tcp,
    }
}

const LOSSY_HEADER: &str = "| row | direct echo s | relayed echo s | TCP s | direct/relayed \
                            | direct ping p50/p99 ms | relayed ping p50/p99 ms |\n\
                            |---|---|---|---|---|---|---|";

impl LossyResult {
    /// The row of the Markdown table under [`LOSSY_HEADER`].
    fn line(&self, row: &Lossy) -> String {
        let rate = |s: f64| row.bytes as f64 / MIB / s;
        let echo = |case: &Case| match &case.echo_s {
            Ok(s) => format!("{s:.2} ({:.2} MiB/s)", rate(*s)),
            Err(e) => e.clone(),
        };
        let tcp = match &self.tcp {
            None => "not measured".into(),
            Some(Ok(t)) => format!(
                "{:.2} ({:.1} MiB/s each way, {})",
                t.secs(),
                rate(t.secs()),
                t.congestion
            ),
            Some(Err(e)) => e.clone(),
        };
        let ratio = match (&self.direct.echo_s, &self.relayed.echo_s) {
            (Ok(d), Ok(r)) => format!("{:.2}", d / r),
            _ => "—".into(),
        };
        let ping = |case: &Case| {
            let mut cell = format!("{:.0} / {:.0}", case.ping_pct(50), case.ping_pct(99));
            if case.pings_ms.len() < row.pings {
                cell += &format!(" ({} of {})", case.pings_ms.len(), row.pings);
            }
            if case.ping_failures > 0 {
                cell += &format!(", {} failed", case.ping_failures);
            }
            cell
        };
        format!(
            "| {} | {} | {} | {tcp} | {ratio} | {} | {} |",
            row.label(),
            echo(&self.direct),
            echo(&self.relayed),
            ping(&self.direct),
            ping(&self.relayed)
        )
    }
}

/// Issue 13: on a lossy path (10 ms and 1% loss per link; direct RTT 40 ms, relayed 80 ms)
/// the direct connection must be no slower than the relayed one it replaces, measured side
/// by side in one lab: its 8 MiB echo within 1.5 × the relayed echo's time, its ping p99
/// within 1.5 × the relayed p99 + 50 ms (100 pings, 50 ms apart). The direct path has half
/// the RTT and half the lossy links, so a healthy direct connection is well inside both.
#[test]
fn lossy_path_direct_not_slower_than_relay() {
    let Some(_lab) = lab_lock() else { return };
    let row = Lossy {
        links: Links {
            delay_ms: 10,
            loss_pct: 1.0,
        },
        bytes: 8 << 20,
        pings: 100,
        ping_interval_ms: 50,
        timeout_s: 40,
        tcp: false,
    };
    let started = Instant::now();
    let result = lossy_row(&row);
    eprintln!(
        "\n{LOSSY_HEADER}\n{}\n(in {:.0} s)",
        result.line(&row),
        started.elapsed().as_secs_f64()
    );
    let relayed_s = *result
        .relayed
        .echo_s
        .as_ref()
        .unwrap_or_else(|e| panic!("the relayed echo, the reference: {e}"));
    let direct_s = *result.direct.echo_s.as_ref().unwrap_or_else(|e| {
        panic!("the direct 8 MiB echo {e}; the relayed one took {relayed_s:.2} s")
    });
    assert!(
        direct_s <= 1.5 * relayed_s,
        "the direct 8 MiB echo took {direct_s:.2} s, {:.1} × the relayed one's {relayed_s:.2} s \
         (at most 1.5 ×)",
        direct_s / relayed_s
    );
    let (direct_p99, relayed_p99) = (result.direct.ping_pct(99), result.relayed.ping_pct(99));
    assert!(
        direct_p99 <= 1.5 * relayed_p99 + 50.0,
        "direct ping p99 {direct_p99:.0} ms, relayed {relayed_p99:.0} ms (at most 1.5 × + 50 ms)"
    );
}

/// Issue 13: the direct WebRTC connection side by side with the relayed connection it
/// replaces and with plain TCP, on lossy paths. A measurement, run by hand (root, the lab's
/// packages and iperf3):
///
/// ```text
/// cargo build --release --examples
/// cargo test --release --test nat_lab measure_lossy_path -- --ignored --nocapture
/// ```
///
/// Each row builds one lab (cone/cone NATs, STUN) and measures in it: iperf3 moving B bytes
/// each way at once over TCP from p2 to p1 (a port forward on r1) through the same core
/// router; then, over the relayed connection (`--no-upgrade`, the relay's limits lifted)
/// and over the direct one, `LOSSY_PINGS` pings (default 100, 50 ms apart) and an echo of B
/// bytes (8 MiB up to 1% loss, 4 MiB above; `LOSSY_BYTES`). Each case gives up after 100 s.
/// Rows: `LOSSY_ROWS`, `delay ms/loss %` per link, comma separated (default
/// `10/0,10/0.5,10/1,10/3,25/1`).
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_lossy_path() {
    let Some(_lab) = lab_lock() else { return };
    let spec = env_or("LOSSY_ROWS", "10/0,10/0.5,10/1,10/3,25/1".to_string());
    let rows: Vec<Lossy> = spec
        .split(',')
        .map(|r| {
            let parsed = r
                .trim()
                .split_once('/')
                .and_then(|(d, l)| Some((d.parse().ok()?, l.parse().ok()?)));
            let Some((delay_ms, loss_pct)) = parsed else {
                panic!("LOSSY_ROWS: {r:?} is not <delay ms>/<loss %>")
            };
            let default_bytes = if loss_pct <= 1.0 { 8 << 20 } else { 4 << 20 };
            Lossy {
                links: Links { delay_ms, loss_pct },
                bytes: env_or("LOSSY_BYTES", default_bytes),
                pings: env_or("LOSSY_PINGS", 100),
                ping_interval_ms: 50,
                timeout_s: 100,
                tcp: true,
            }
        })
        .collect();
    let mut lines = Vec::new();
    let mut notes = Vec::new();
    for row in &rows {
        let started = Instant::now();
        let result = lossy_row(row);
        let line = result.line(row);
        eprintln!("{line} ({:.0} s)", started.elapsed().as_secs_f64());
        lines.push(line);
        // The lab's ceiling: at least what plain TCP gets through lab-netem without loss.
        // A connection near it may have been held back by the lab, not by itself.
        if let Some(Ok(tcp)) = result.tcp.as_ref().filter(|_| row.links.loss_pct == 0.0) {
            let mibs = |s: f64| row.bytes as f64 / MIB / s;
            let best = [&result.direct, &result.relayed]
                .iter()
                .filter_map(|c| c.echo_s.as_ref().ok())
                .map(|s| mibs(*s))
                .fold(0.0, f64::max);
            notes.push(format!(
                "Lab ceiling at {} ms, 0% loss: plain TCP moves at least {:.1} MiB/s each way ({}) \
                 through lab-netem; the faster of direct and relayed {best:.1} MiB/s ({:.0}% of \
                 it){}.",
                row.links.delay_ms,
                mibs(tcp.secs()),
                tcp.congestion,
                100.0 * best / mibs(tcp.secs()),
                if best > 0.5 * mibs(tcp.secs()) {
                    ": near the ceiling, lab-netem may be the bottleneck"
                } else {
                    ""
                }
            ));
        }
    }
    eprintln!(
        "\n### Lossy paths, NAT lab (cone/cone, STUN; direct RTT = 4 × delay, 2 lossy links \
         each way; relayed RTT 8 × delay, 4 lossy links, over two TCP hops)\n"
    );
    eprintln!("{LOSSY_HEADER}");
    for line in &lines {
        eprintln!("{line}");
    }
    for note in &notes {
        eprintln!("\n{note}");
    }
}

/// Dialer flags for the fallback cases: pings every 250 ms throughout, later upgrade rounds
/// every few seconds (the default is a minute).
const FALLBACK_DIAL: &[&str] = &[
    "--ping",
    "100000",
    "--ping-interval-ms",
    "250",
    "--round-backoff-ms",
    "3000",
    "--timeout",
    "300",
    "--idle-timeout",
    "300",
];

/// The listener's flags for the same tests: pings do not keep a connection open, so the
/// direct connection under test must not close for idleness (60 s by default) first.
const FALLBACK_LISTEN: &[&str] = &["--idle-timeout", "300"];

/// The pings of `events`, from the first relayed one after a fallback: all answered.
fn pings_after_fallback_answered(seen: &[Value]) -> usize {
    let pings: Vec<&Value> = events(seen, "ping").collect();
    let from = pings
        .iter()
        .position(|p| p["direct"] == false)
        .unwrap_or(pings.len());
    let after = &pings[from..];
    let failed: Vec<_> = after.iter().filter(|p| p["ok"] != true).collect();
    assert!(
        failed.is_empty(),
        "pings failed after the fallback: {failed:#?}"
    );
    after.len()
}

fn core_udp_drop(lab: &Lab, op: &str) {
    for (src, dst) in [(lab::R1_WAN, lab::R2_WAN), (lab::R2_WAN, lab::R1_WAN)] {
        lab::sh(&format!(
            "ip netns exec {} iptables {op} FORWARD -p udp -s {src} -d {dst} -j DROP",
            lab.ns("core")
        ));
    }
}

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_and_upgrades_again() {
    let Some(_lab) = lab_lock() else { return };
    let lab = Lab::up(Nat::Cone, Nat::Cone, Links::default());
    let (_relay, _listener, addr) = relay_and_listener(&lab, Ice::Stun, FALLBACK_LISTEN);
    let mut dial = dialer(&lab, &addr, Ice::Stun, FALLBACK_DIAL);
    dial.wait("upgraded");
    // Once the relayed connection is drained and closed, a fallback must redial it.
    dial.wait("relay_closed");
    dial.next("a direct ping", |e| {
        e["event"] == "ping" && e["direct"] == true
    });
    // Every UDP packet between the two home routers is dropped for 30 s.
    let from = dial.seen().len();
    core_udp_drop(&lab, "-I");
    let cut = Instant::now();
    let lost = dial.wait("direct_lost");
    let detected = cut.elapsed();
    // The quiet path made the dialer redial the relay for an ICE restart, which a dead path
    // cannot complete; the direct connection then died with the relayed connection already
    // there (`will_redial` false), or, without the restart, the dialer redials now.
    let relayed_again = |e: &Value| e["event"] == "connected" && e["relayed"] == true;
    let redialed_early = dial.seen()[from..].iter().any(relayed_again);
    assert_eq!(lost["will_redial"], !redialed_early, "{lost}");
    assert_eq!(
        events(&dial.seen()[from..], "restarted").count(),
        0,
        "a dead path cannot be restarted"
    );
    if !redialed_early {
        dial.next("the relayed connection again", relayed_again);
    }
    dial.next("a relayed ping", |e| {
        e["event"] == "ping" && e["direct"] == false
    });
    let relayed = cut.elapsed();
    std::thread::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed()));
    core_udp_drop(&lab, "-D");
    let healed = Instant::now();
    dial.wait("upgraded");
    let upgraded = healed.elapsed();
    dial.next("a direct ping again", |e| {
        e["event"] == "ping" && e["direct"] == true && e["ok"] == true
    });
    let after = pings_after_fallback_answered(dial.seen());
    assert!(after > 0);
    // Generous bounds that catch a hang, not a measurement (the README has the timeline).
    assert!(
        detected < Duration::from_secs(20),
        "detected after {detected:?}"
    );
    assert!(
        upgraded < Duration::from_secs(90),
        "upgraded after {upgraded:?}"
    );
    eprintln!(
        "fallback timeline: path cut; relay redialed before the loss (for a restart): {redialed_early}; \
         direct_lost after {:.1} s (after_ms {}); \
         pinging over the relay after {:.1} s; path healed at 30 s; direct again {:.1} s later; \
         {after} pings after the fallback, all answered",
        detected.as_secs_f64(),
        lost["after_ms"],
        relayed.as_secs_f64(),
        upgraded.as_secs_f64()
    );
}

#[test]
fn a_flushed_nat_mapping_keeps_the_peer_reachable() {
    let Some(_lab) = lab_lock() else { return };
    let lab = Lab::up(Nat::Cone, Nat::Cone, Links::default());
    let (_relay, _listener, addr) = relay_and_listener(&lab, Ice::Stun, FALLBACK_LISTEN);
    let mut dial = dialer(&lab, &addr, Ice::Stun, FALLBACK_DIAL);
    dial.wait("upgraded");
    dial.next("a direct ping", |e| {
        e["event"] == "ping" && e["direct"] == true
    });
    let before = dial.seen().len();
    // The listener's router forgets every mapping and firewall state.
    lab::sh(&format!("ip netns exec {} conntrack -F", lab.ns("r1")));
    let flushed = Instant::now();
    // Either the path survives (a keep-alive from behind the NAT makes a new mapping), or the
    // peer falls back and upgrades again. Either way: pings go on, and end up direct.
    // 40 pings (10 s) are longer than the 5 s it takes to declare a path dead.
    for _ in 0..40 {
        dial.wait("ping");
    }
    let since: Vec<Value> = dial.seen()[before..].to_vec();
    let lost_at = since.iter().position(|e| e["event"] == "direct_lost");
    let outcome = match lost_at {
        Some(at) => {
            if !events(&since[at..], "upgraded").any(|_| true) {
                dial.wait("upgraded");
            }
            format!("fell back ({}) and upgraded again", since[at]["reason"])
        }
        None => "the direct path survived".to_string(),
    };
    pings_after_fallback_answered(&dial.seen()[before..]);
    let pings = events(&dial.seen()[before..], "ping").count();
    dial.next("a direct ping at the end", |e| {
        e["event"] == "ping" && e["direct"] == true && e["ok"] == true
    });
    eprintln!(
        "conntrack -F on the listener's router: {outcome}, {:.1} s after the flush ({pings} pings since, all answered)",
        flushed.elapsed().as_secs_f64()
    );
}

/// A home router starts mapping UDP to other ports (a NAT reboot, a new mapping after a
/// timeout, a carrier NAT): packets to the old mapping go nowhere, while the peers can still
/// reach each other. Usually the dialer sees its path go quiet (whichever side's NAT
/// changed), redials the relay and restarts ICE over it; sometimes ICE already moves to the
/// new mapping by itself (a check from it arrives first). Either way the same direct
/// connection carries on, no ping fails, nothing falls back. (Before ICE restarts: the
/// direct connection died after 5 s and was replaced.)
fn a_changed_nat_mapping_is_restarted(router: &str) {
    let Some(_lab) = lab_lock() else { return };
    let lab = Lab::up(Nat::Cone, Nat::Cone, Links::default());
    let (_relay, _listener, addr) = relay_and_listener(&lab, Ice::Stun, FALLBACK_LISTEN);
    let mut dial = dialer(&lab, &addr, Ice::Stun, FALLBACK_DIAL);
    let upgraded = dial.wait("upgraded");
    dial.wait("relay_closed");
    dial.next("a direct ping", |e| {
        e["event"] == "ping" && e["direct"] == true
    });
    let before = dial.seen().len();
    let ns = lab.ns(router);
    lab::sh(&format!(
        "ip netns exec {ns} iptables -t nat -I POSTROUTING 1 -o wan -p udp -j MASQUERADE --to-ports 40000-40999"
    ));
    lab::sh(&format!("ip netns exec {ns} conntrack -D -p udp"));
    let changed = Instant::now();
    // 40 pings (10 s): longer than a quiet path takes to be restarted (2 s) or declared dead
    // (5 s).
    for _ in 0..40 {
        dial.wait("ping");
    }
    let since: Vec<Value> = dial.seen()[before..].to_vec();
    assert_eq!(events(&since, "direct_lost").count(), 0, "{since:#?}");
    let pings: Vec<&Value> = events(&since, "ping").collect();
    assert!(
        pings.iter().all(|p| p["ok"] == true && p["direct"] == true),
        "every ping answered over the direct connection: {pings:#?}"
    );
    let outcome = match events(&since, "restarted").next() {
        Some(restarted) => {
            assert_eq!(
                restarted["direct_connection"], upgraded["direct_connection"],
                "the same direct connection goes on"
            );
            format!(
                "restarted (the restart itself {:.0} ms)",
                restarted["took_ms"].as_f64().unwrap_or(0.0)
            )
        }
        None => "ICE moved to the new mapping by itself".to_string(),
    };
    eprintln!(
        "NAT mapping of {router} changed: {outcome}; 40 pings in {:.1} s since, all answered",
        changed.elapsed().as_secs_f64()
    );
}

#[test]
fn a_changed_nat_mapping_of_the_listener_is_restarted_in_place() {
    a_changed_nat_mapping_is_restarted("r1");
}

#[test]
fn a_changed_nat_mapping_of_the_dialer_is_restarted_in_place() {
    a_changed_nat_mapping_is_restarted("r2");
}

/// A STUN flood at the relay's responder, from one public host, while two peers upgrade
/// through the relay with no STUN server configured: the flood gets at most the per-source
/// rate (`StunResponder` defaults: bursts of 40, then 20 per second) and the upgrade goes
/// through.
#[test]
fn a_stun_flood_at_the_relay_is_rate_limited() {
    let Some(_lab) = lab_lock() else { return };
    let lab = Lab::up(Nat::Cone, Nat::Cone, Links::default());
    let (_relay, _listener, addr) = relay_and_listener(&lab, Ice::Relay, &[]);
    let stun = lab.ns("stun");
    // Counts the responses that reach the flooding host.
    lab::sh(&format!(
        "ip netns exec {stun} iptables -I INPUT -s {} -p udp --sport 3478",
        lab::RELAY_IP
    ));
    let requests = 5000;
    let started = Instant::now();
    let mut flood = std::process::Command::new("ip")
        .args(["netns", "exec", &stun, "bash", "-c"])
        .arg(format!(
            "for i in $(seq {requests}); do printf '\\x00\\x01\\x00\\x00\\x21\\x12\\xa4\\x42%012d' $i > /dev/udp/{}/3478; done",
            lab::RELAY_IP
        ))
        .spawn()
        .expect("flood");
    let (code, all) = dialer(&lab, &addr, Ice::Relay, &["--ping", "3"]).finish();
    assert_eq!(code, 0, "{all:#?}");
    assert_eq!(
        events(&all, "done").next().expect("done")["direct"],
        true,
        "{all:#?}"
    );
    assert!(flood.wait().expect("flood").success());
    let flooded = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &stun, "iptables", "-L", "INPUT", "-v", "-x", "-n",
        ])
        .output()
        .expect("iptables");
    let table = String::from_utf8_lossy(&out.stdout);
    let answered: f64 = table
        .lines()
        .find(|l| l.contains(lab::RELAY_IP))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the counting rule");
    let allowed = 40.0 + 20.0 * (flooded + 1.0);
    eprintln!(
        "STUN flood: {requests} requests in {flooded:.1} s, {answered} answered (at most {allowed:.0} allowed); the upgrade went direct"
    );
    assert!(answered > 0.0, "the responder never answered");
    assert!(
        answered <= allowed,
        "{answered} answers to one source in {flooded:.1} s"
    );
}

/// No false alarm: a healthy but lossy path (10 ms and 1% loss per link) under pings for ten
/// minutes, then a 64 MiB echo, must never be declared dead. `FALSE_ALARM_PINGS` (default
/// 2400 at 250 ms: 10 minutes) and `FALSE_ALARM_BYTES` (default 64 MiB) shorten it.
/// `cargo test --release --test nat_lab measure_no_false -- --ignored --nocapture` (root).
#[test]
#[ignore = "a measurement, run by hand (10+ minutes)"]
fn measure_no_false_fallback_under_load_and_loss() {
    let Some(_lab) = lab_lock() else { return };
    let pings: usize = env_or("FALSE_ALARM_PINGS", 2400);
    let bytes: usize = env_or("FALSE_ALARM_BYTES", 64 * 1024 * 1024);
    let lab = Lab::up(
        Nat::Cone,
        Nat::Cone,
        Links {
            delay_ms: env_or("FALSE_ALARM_DELAY_MS", 10),
            loss_pct: env_or("FALSE_ALARM_LOSS", 1.0),
        },
    );
    let timeout = (pings / 4 + 600).to_string();
    // Pings do not keep a connection open: keep the one under test for the whole run.
    let idle = ["--idle-timeout", timeout.as_str()];
    let (_relay, _listener, addr) = relay_and_listener(&lab, Ice::Stun, &idle);
    let (pings_s, bytes_s) = (pings.to_string(), bytes.to_string());
    let started = Instant::now();
    let mut dial = dialer(
        &lab,
        &addr,
        Ice::Stun,
        &[
            "--ping",
            &pings_s,
            "--ping-interval-ms",
            "250",
            "--send-bytes",
            &bytes_s,
            "--timeout",
            &timeout,
            "--idle-timeout",
            &timeout,
        ],
    );
    // Longer than `finish` waits: follow the events (one every 250 ms) to the end.
    loop {
        let e = dial.next("the next event", |_| true);
        if e["event"] == "done" || e["event"] == "error" {
            break;
        }
    }
    let (code, all) = dial.finish();
    let lost = events(&all, "direct_lost").count();
    let restarts = events(&all, "restarted").count() + events(&all, "restart_failed").count();
    let answered = events(&all, "ping").filter(|p| p["ok"] == true).count();
    let transfer = events(&all, "transfer").next().cloned();
    eprintln!(
        "no-false-alarm run: {:.0} s, {answered}/{pings} pings answered, direct_lost {lost}, \
         ICE restarts {restarts}, transfer {transfer:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0, "a healthy path was declared dead");
    assert_eq!(code, 0, "{:#?}", events(&all, "error").collect::<Vec<_>>());
}

/// A js-libp2p node (`interop/node.mjs`, the `node` example's command line) in `netns`.
fn js_node(netns: &str, args: &[&str]) -> Node {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(dir.join("node_modules/.bin/node"))
        .arg(dir.join("node.mjs"))
        .args(args);
    Node::spawn(cmd)
}

/// This crate and js-libp2p (`@libp2p/webrtc`, Node.js) side by side in one lab per case:
/// the same relay (ours), the same NATs, links and ICE servers; each listener behind r1,
/// each dialer behind r2. Reports the p50 of "relayed connection up → direct connection"
/// (`upgraded`'s `ms`: ours from the start of the attempt, js's from the start of its
/// `/webrtc` dial over the relayed connection) and the ratio. `RUNS` per side (default 5).
/// Needs `cd interop && npm ci`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_js_side_by_side() {
    let Some(_lock) = lab_lock() else { return };
    let node_bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/node_modules/.bin/node");
    if !node_bin.exists() {
        eprintln!("skipped: cd interop && npm ci");
        return;
    }
    let runs: usize = env_or("RUNS", 5);
    let cases = [
        (Nat::Cone, Nat::Cone, Ice::Stun, 0),
        (Nat::Cone, Nat::Cone, Ice::Stun, 25),
        (Nat::Symmetric, Nat::Symmetric, Ice::StunTurn, 0),
    ];
    let mut table = Vec::new();
    for (r1, r2, ice, delay_ms) in cases {
        let links = Links {
            delay_ms,
            loss_pct: 0.0,
        };
        let lab = Lab::up(r1, r2, links);
        let (relay, _rust_listener, rust_addr) = relay_and_listener(&lab, ice, &[]);
        let relay_addr = rust_addr
            .split("/p2p-circuit")
            .next()
            .expect("relay address")
            .to_string();
        let flags = ice_flags(ice);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut args = vec!["listen", "--relay", &relay_addr, "--seed", "5"];
        args.extend(&flags);
        let mut js_listener = js_node(&lab.ns("p1"), &args);
        let reserved = js_listener.wait("reserved");
        let js_addr = reserved["addr"].as_str().expect("addr").to_string();
        let mut ours = Vec::new();
        let mut js = Vec::new();
        for run in 0..runs {
            let seed = (100 + run).to_string();
            let mut args = vec!["dial", &rust_addr, "--seed", &seed, "--ping", "1"];
            args.extend(&flags);
            let (code, all) = Node::start_in(&lab.ns("p2"), &args).finish();
            assert_eq!(code, 0, "ours, run {run}: {all:#?}");
            let up = events(&all, "upgraded").next().expect("upgraded");
            ours.push(up["ms"].as_f64().expect("ms"));
            let seed = (200 + run).to_string();
            let mut args = vec!["dial", &js_addr, "--seed", &seed, "--ping", "1"];
            args.extend(&flags);
            let (code, all) = js_node(&lab.ns("p2"), &args).finish();
            assert_eq!(code, 0, "js, run {run}: {all:#?}");
            let up = events(&all, "upgraded").next().expect("upgraded");
            js.push(up["ms"].as_f64().expect("ms"));
        }
        let (o, j) = (pct(&mut ours, 50), pct(&mut js, 50));
        let rtt = 4.0 * f64::from(delay_ms);
        let in_rtt = |ms: f64| {
            if rtt > 0.0 {
                format!(" = {:.1} RTT", ms / rtt)
            } else {
                String::new()
            }
        };
        table.push(format!(
            "| {r1:?}/{r2:?}, {ice:?}, {delay_ms} ms per link | {o:.0} ms{} | {j:.0} ms{} | {:.2} |",
            in_rtt(o),
            in_rtt(j),
            o / j
        ));
        drop(js_listener);
        drop(relay);
    }
    eprintln!(
        "\n| case ({runs} runs each) | this crate, p50 | js-libp2p, p50 | ours / js |\n|---|---|---|---|"
    );
    for line in &table {
        eprintln!("{line}");
    }
}

/// ICMP echo from p2 to r1's WAN address every 100 ms, across all four access queues (r2's
/// uplink and r1's downlink, r1's uplink and r2's downlink) and the core's delay: the queueing
/// delay a transfer adds for everything else on those lines. Stopped with [`Pinger::stop`].
struct Pinger(std::process::Child);

impl Pinger {
    fn start(lab: &Lab) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns("p2"), "ping", "-n", "-i", "0.1"])
            .arg(lab::R1_WAN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping (apt-get install -y iputils-ping)");
        Pinger(child)
    }

    /// The round trips, in ms.
    fn stop(self) -> Vec<f64> {
        let Pinger(mut child) = self;
        let _ = child.kill();
        let out = child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| l.split("time=").nth(1))
            .filter_map(|t| t.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

/// One case of a bottleneck row: an echo (or iperf3) with what it did to the access queues
/// and to a concurrent ping.
struct Loaded {
    /// Seconds, or why there is none.
    secs: Result<f64, String>,
    /// What crossed the four access queues meanwhile.
    wire: lab::QueueStats,
    /// ICMP round trips while it ran, ms.
    icmp_ms: Vec<f64>,
}

impl Loaded {
    /// Bytes the access queues sent per payload byte, for an echo of `bytes` each way: each
    /// byte crosses two access queues each way (the sender's uplink, the receiver's
    /// downlink).
    fn wire_per_payload(&self, bytes: usize) -> f64 {
        self.wire.bytes as f64 / (4.0 * bytes as f64)
    }

    /// The share of the packets offered to the access queues that they dropped.
    fn drop_share(&self) -> f64 {
        let offered = self.wire.packets + self.wire.dropped;
        if offered == 0 {
            0.0
        } else {
            self.wire.dropped as f64 / offered as f64
        }
    }

    /// `| s | wire/payload | drops % | ping p50/p90 | packets (mean size) |` cells for
    /// `bytes` each way.
    fn cells(&self, bytes: usize) -> String {
        let secs = match &self.secs {
            Ok(s) => format!("{s:.2}"),
            Err(e) => e.clone(),
        };
        let mut icmp = self.icmp_ms.clone();
        format!(
            "{secs} | {:.3} | {:.1}% | {:.0} / {:.0} | {} ({} B)",
            self.wire_per_payload(bytes),
            100.0 * self.drop_share(),
            pct(&mut icmp, 50),
            pct(&mut icmp, 90),
            self.wire.packets,
            self.wire.bytes / self.wire.packets.max(1)
        )
    }
}

/// A dialer behind r2 that echoes `bytes` over a new stream on the connection under test:
/// the relayed one (`--no-upgrade`) or the direct one; js-libp2p's (`js`), another build's
/// `node` (`bin`) or ours. Returned once its first application ping was answered (the
/// connection under test is up).
fn echo_dialer(
    lab: &Lab,
    addr: &str,
    seed: &str,
    relayed: bool,
    js: bool,
    bin: Option<&std::path::Path>,
    bytes: usize,
) -> Node {
    let bytes = bytes.to_string();
    let mut args = vec![
        "dial",
        addr,
        "--seed",
        seed,
        "--ping",
        "1",
        "--send-bytes",
        &bytes,
        "--timeout",
        "120",
    ];
    let flags = ice_flags(Ice::Stun);
    args.extend(flags.iter().map(String::as_str));
    if relayed {
        args.extend(["--no-upgrade", "--allow-relayed"]);
    }
    let mut node = match (js, bin) {
        (true, _) => js_node(&lab.ns("p2"), &args),
        (false, Some(bin)) => Node::start_bin_in(bin, &lab.ns("p2"), &args),
        (false, None) => {
            let extra = lab_node_args();
            args.extend(extra.iter().map(String::as_str));
            Node::start_in(&lab.ns("p2"), &args)
        }
    };
    node.wait_for("the first ping", |e| e["event"] == "ping");
    node
}

/// An echo of `bytes` by a dialer behind r2 (`js`: js-libp2p's, else ours), relayed
/// (`--no-upgrade`) or direct; the ping and the counters run from its first answered
/// application ping (the connection under test is up) to its exit.
fn loaded_echo(
    lab: &Lab,
    addr: &str,
    relayed: bool,
    js: bool,
    bin: Option<&std::path::Path>,
    bytes: usize,
) -> Loaded {
    // Another build's dialer gets another identity: the listener may still hold the last
    // dialer's connection.
    let seed = if bin.is_some() { "4" } else { "3" };
    let node = echo_dialer(lab, addr, seed, relayed, js, bin, bytes);
    let before = lab.access_stats();
    let pinger = Pinger::start(lab);
    let (_code, all) = node.finish();
    let icmp_ms = pinger.stop();
    let wire = lab.access_stats() - before;
    let secs = match events(&all, "transfer").next() {
        Some(t) if t["ok"] != true => Err(format!("echo failed: {}", t["error"])),
        Some(t) if t["direct"] == relayed => Err("not on the connection under test".into()),
        Some(t) => t["ms"]
            .as_f64()
            .map(|ms| ms / 1000.0)
            .ok_or_else(|| "no ms".into()),
        None => Err(format!(
            "no transfer ({:?})",
            events(&all, "error").next().map(|e| e["reason"].clone())
        )),
    };
    Loaded {
        secs,
        wire,
        icmp_ms,
    }
}

/// Plain TCP between the peers (iperf3 both ways at once, `bytes` each way) under the same
/// counters and ping.
fn loaded_tcp(lab: &Lab, bytes: usize) -> Loaded {
    let before = lab.access_stats();
    let pinger = Pinger::start(lab);
    let tcp = tcp_baseline(lab, bytes, 120);
    let icmp_ms = pinger.stop();
    Loaded {
        secs: tcp.map(|t| t.secs()),
        wire: lab.access_stats() - before,
        icmp_ms,
    }
}

/// A lab (cone/cone, 10 ms per link, no loss) whose access links run at `kbit` each way
/// with `buffer_ms` of queue.
fn home_lines(kbit: u32, buffer_ms: u32) -> Lab {
    let lab = Lab::up(
        Nat::Cone,
        Nat::Cone,
        Links {
            delay_ms: 10,
            loss_pct: 0.0,
        },
    );
    lab.limit_access(lab::Access {
        up_kbit: kbit,
        down_kbit: kbit,
        buffer_ms,
    });
    lab
}

/// Issue 28: on a home line (20 Mbit/s each way, 50 ms of queue in each router, 10 ms per
/// link) the direct connection must not flood the access queues: its 8 MiB echo puts at most
/// 1.2x the payload through them and they drop at most 10% of its packets (before the fix:
/// 1.88x and 54% dropped, mostly retransmissions of what had arrived); and it takes at most
/// 2x the relayed echo's time in the same lab (1.7x before, 1.3x after). Ratios with margins:
/// `measure_bottleneck` has the figures. Since the ninth round SACKs ride in front of paced
/// DATA: the packets through the queues average at least 1,250 bytes (about 1,350 at
/// 1.10x the payload; 1,040-1,170 before, when a third of them held only a SACK).
#[test]
fn bottleneck_direct_does_not_flood_the_line() {
    let Some(_lock) = lab_lock() else { return };
    let bytes = 8 << 20;
    let (direct, direct_s, relayed_s) = echoes_on_home_lines(20_000, 50, bytes);
    let wire = direct.wire_per_payload(bytes);
    assert!(
        wire <= 1.2,
        "the direct echo put {wire:.3}x its payload on the line"
    );
    let mean = direct.wire.bytes / direct.wire.packets.max(1);
    assert!(
        mean >= 1250,
        "the direct echo's packets averaged {mean} bytes ({} packets): SACKs alone?",
        direct.wire.packets
    );
    let drops = direct.drop_share();
    assert!(
        drops <= 0.10,
        "the access queues dropped {:.1}% of the direct echo's packets",
        100.0 * drops
    );
    assert!(
        direct_s <= 2.0 * relayed_s,
        "the direct echo took {direct_s:.2} s, the relayed one {relayed_s:.2} s"
    );
}

/// Issue 28, seventh round: behind a deep buffer (20 Mbit/s, 200 ms of queue) the echo's
/// two directions must not hold each other back. Each side's SACKs wait in the other side's
/// queue; the side that started second used to read that as its own queue, leave slow start
/// at a third of the line and take seconds to find the rest: 1.19-1.63x the relayed echo's
/// time in the same lab (seven runs). Since slow start tells the two directions apart,
/// 1.06-1.10x (four runs). The margin (1.25x) catches the old behaviour in six runs of
/// seven; `measure_bottleneck` has the figures.
#[test]
fn bottleneck_a_deep_buffer_does_not_slow_the_echo() {
    let Some(_lock) = lab_lock() else { return };
    let bytes = 8 << 20;
    let (direct, direct_s, relayed_s) = echoes_on_home_lines(20_000, 200, bytes);
    let drops = direct.drop_share();
    assert!(
        drops <= 0.05,
        "the access queues dropped {:.1}% of the direct echo's packets",
        100.0 * drops
    );
    assert!(
        direct_s <= 1.25 * relayed_s,
        "the direct echo took {direct_s:.2} s, the relayed one {relayed_s:.2} s"
    );
}

/// A relayed and then a direct echo of `bytes` each way over home lines of `kbit` each way
/// with `buffer_ms` of queue: the direct echo's counters and both times, in seconds.
fn echoes_on_home_lines(kbit: u32, buffer_ms: u32, bytes: usize) -> (Loaded, f64, f64) {
    let lab = home_lines(kbit, buffer_ms);
    let (_relay, _listener, addr) = relay_and_listener_with(&lab, Ice::Stun, RELAY_UNLIMITED, &[]);
    let relayed = loaded_echo(&lab, &addr, true, false, None, bytes);
    let direct = loaded_echo(&lab, &addr, false, false, None, bytes);
    eprintln!(
        "| connection | echo s | wire bytes / payload | queue drops | ping p50 / p90 ms |\n\
         | direct | {} |\n| relayed | {} |",
        direct.cells(bytes),
        relayed.cells(bytes)
    );
    let relayed_s = *relayed
        .secs
        .as_ref()
        .unwrap_or_else(|e| panic!("the relayed echo, the reference: {e}"));
    let direct_s = *direct
        .secs
        .as_ref()
        .unwrap_or_else(|e| panic!("the direct echo: {e}"));
    (direct, direct_s, relayed_s)
}

/// `name`'s counter in the `Ip:` lines of a namespace's `/proc/net/snmp`.
fn ip_counter(lab: &Lab, host: &str, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(host), "cat", "/proc/net/snmp"])
        .output()
        .expect("/proc/net/snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Path MTU discovery is on by default (`Config::sctp_max_mtu` 1428), so a path whose MTU
/// falls under a live connection (a VPN coming up, a route change) must not strand the DATA
/// chunks already cut for the larger size: SCTP cannot cut a TSN again. Mid-echo, the link
/// between the core router and p2's home router drops to an MTU of 1400 (both routers answer
/// larger packets with ICMP "fragmentation needed"). The listener's association notices the black hole (T3-rtx
/// twice), cuts what is queued for the base size, and sends what is in flight with IP
/// fragmentation allowed until the peer has it; the echo completes. Before, those chunks
/// went with "don't fragment" until the association gave up.
#[test]
fn direct_connection_survives_a_path_mtu_that_falls() {
    let Some(_lock) = lab_lock() else { return };
    let bytes = 8 << 20;
    // 20 Mbit/s lines, so the echo lasts seconds and the fall comes in the middle of it.
    let lab = home_lines(20_000, 50);
    let extra = lab_node_args();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (_relay, _listener, addr) =
        relay_and_listener_with(&lab, Ice::Stun, RELAY_UNLIMITED, &extra);
    // IP fragments made by p1 (its kernel learned the smaller MTU from the ICMP) or by the
    // core router (a datagram without "don't fragment" above its link's MTU).
    let fragments_made =
        || ip_counter(&lab, "p1", "FragCreates") + ip_counter(&lab, "core", "FragCreates");
    let fragments_before = fragments_made();
    // The direct connection is up and the echo starts; the search takes one round trip.
    let node = echo_dialer(&lab, &addr, "3", false, false, None, bytes);
    std::thread::sleep(Duration::from_millis(1500));
    // Both ends of the link (a veth also drops what exceeds its receiving end's MTU).
    lab::sh(&format!(
        "ip netns exec {} ip link set dev r2 mtu 1400",
        lab.ns("core")
    ));
    lab::sh(&format!(
        "ip netns exec {} ip link set dev wan mtu 1400",
        lab.ns("r2")
    ));
    let (_code, all) = node.finish();
    let transfer = events(&all, "transfer").next().cloned();
    let fragments = fragments_made() - fragments_before;
    eprintln!("transfer: {transfer:?}; IP fragments made: {fragments}");
    let transfer = transfer.expect("the echo's result");
    assert_eq!(
        transfer["ok"], true,
        "the echo failed: {}",
        transfer["error"]
    );
    assert_eq!(transfer["direct"], true, "not over the direct connection");
    // The peers had raised their packets above 1400 bytes and sent what the smaller path
    // stranded as IP fragments.
    assert!(
        fragments > 0,
        "nothing was fragmented: was the size ever raised?"
    );
}

/// Issue 28, deliverable 3: a plain TCP upload with CUBIC (the default congestion control of
/// most systems) from the dialer's machine to a server outside, through a 12 Mbit/s uplink
/// with 50 ms of queue, keeps its share of the line beside an echo over the direct
/// connection: at least 20% of what it moves alone. It keeps 36-42% since the in-flight
/// cap (issue 28's fifth round; the target is a third), 19-31% before it, 15% before the
/// fourth round, 4-6% before issue 28: the margin catches a sender that floods the line
/// again, not every step back. `measure_competing_flow` has the figures, with BBR and the
/// relayed connection.
#[test]
fn bottleneck_a_competing_upload_keeps_its_share() {
    let Some(_lock) = lab_lock() else { return };
    let lab = home_lines(12_000, 50);
    let (_relay, _listener, addr) = relay_and_listener_with(&lab, Ice::Stun, RELAY_UNLIMITED, &[]);
    let alone = upload_bytes(&lab, "cubic").unwrap_or_else(|e| panic!("the upload alone: {e}"));
    // 32 MiB each way through a 12 Mbit/s uplink: over 20 s, longer than the upload.
    let mut echo = echo_dialer(&lab, &addr, "6", false, false, None, 32 << 20);
    let ping = echo.wait_for("the first ping", |e| e["event"] == "ping");
    assert_eq!(
        ping["direct"], true,
        "the echo is not on the direct connection: {ping}"
    );
    let beside = upload_bytes(&lab, "cubic").unwrap_or_else(|e| panic!("the upload beside: {e}"));
    let seen = echo.seen_now();
    assert!(
        !seen
            .iter()
            .any(|e| e["event"] == "transfer" || e["event"] == "error"),
        "the echo did not run for the whole upload: {seen:#?}"
    );
    drop(echo);
    let share = beside / alone;
    eprintln!(
        "CUBIC upload: alone {:.1} MB, beside the direct echo {:.1} MB ({:.0}%)",
        alone / 1e6,
        beside / 1e6,
        100.0 * share
    );
    assert!(
        share >= 0.20,
        "the upload kept {:.0}% of what it moves alone beside the direct echo",
        100.0 * share
    );
}

/// Issue 28: home lines are bottlenecks. The direct connection beside the relayed one,
/// js-libp2p's direct connection and plain TCP, on rate-limited access links with finite
/// queues (`tc tbf` on both home routers, both directions; the relay's links unlimited), in
/// one lab per row. Each case: the echo's time, the bytes the four access queues sent per
/// payload byte, the share of packets they dropped, and the ping RTT across them while it
/// ran. A measurement, run by hand (root, the lab's packages, iperf3 and iputils-ping; js
/// with `cd interop && npm ci`):
///
/// ```text
/// cargo build --release --examples --features metrics
/// cargo test --release --features metrics --test nat_lab measure_bottleneck -- --ignored --nocapture
/// ```
///
/// `BOTTLENECK_ROWS`: `up/down/buffer ms/loss %` per row (Mbit/s), comma separated (default
/// `20/20/50/0,20/20/50/1,5/50/50/0,100/100/20/0`); `DELAY_MS` per link (default 10);
/// `BOTTLENECK_BYTES` (default 8 MiB); `BEFORE_NODE`: also the direct echo with another
/// build's `node` as the dialer (the sender of the echo's first half), for before/after.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_bottleneck() {
    let Some(_lock) = lab_lock() else { return };
    let spec = env_or(
        "BOTTLENECK_ROWS",
        "20/20/50/0,20/20/50/1,5/50/50/0,100/100/20/0".to_string(),
    );
    let delay_ms: u32 = env_or("DELAY_MS", 10);
    let bytes: usize = env_or("BOTTLENECK_BYTES", 8 << 20);
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop/node_modules/.bin/node")
        .exists();
    let before = std::env::var_os("BEFORE_NODE").map(std::path::PathBuf::from);
    let mut lines = Vec::new();
    for row in spec.split(',') {
        let f: Vec<f64> = row
            .trim()
            .split('/')
            .map(|v| {
                v.parse()
                    .expect("BOTTLENECK_ROWS: up/down/buffer ms/loss %")
            })
            .collect();
        let [up, down, buffer_ms, loss_pct] = f[..] else {
            panic!("BOTTLENECK_ROWS: {row:?} is not up/down/buffer ms/loss %");
        };
        let access = lab::Access {
            up_kbit: (up * 1000.0) as u32,
            down_kbit: (down * 1000.0) as u32,
            buffer_ms: buffer_ms as u32,
        };
        let lab = Lab::up(Nat::Cone, Nat::Cone, Links { delay_ms, loss_pct });
        lab.limit_access(access);
        let idle = {
            let pinger = Pinger::start(&lab);
            std::thread::sleep(Duration::from_secs(2));
            let mut ms = pinger.stop();
            pct(&mut ms, 50)
        };
        let tcp = loaded_tcp(&lab, bytes);
        let extra = lab_node_args();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (relay, _listener, addr) =
            relay_and_listener_with(&lab, Ice::Stun, RELAY_UNLIMITED, &extra);
        let relayed = loaded_echo(&lab, &addr, true, false, None, bytes);
        let direct = loaded_echo(&lab, &addr, false, false, None, bytes);
        // Another build's dialer against this build's listener (`BEFORE_NODE`).
        let before = before
            .as_deref()
            .map(|bin| loaded_echo(&lab, &addr, false, false, Some(bin), bytes));
        let js_direct = js.then(|| {
            let relay_addr = addr.split("/p2p-circuit").next().expect("relay address");
            let mut args = vec!["listen", "--relay", relay_addr, "--seed", "5"];
            let flags = ice_flags(Ice::Stun);
            args.extend(flags.iter().map(String::as_str));
            let mut listener = js_node(&lab.ns("p1"), &args);
            let reserved = listener.wait("reserved");
            let js_addr = reserved["addr"].as_str().expect("addr").to_string();
            loaded_echo(&lab, &js_addr, false, true, None, bytes)
        });
        drop(relay);
        let label = format!(
            "{up}/{down} Mbit/s, {buffer_ms} ms buffer, {loss_pct}% loss/link (idle ping {idle:.0} ms)"
        );
        for (name, case) in [
            ("direct", Some(&direct)),
            ("direct, BEFORE_NODE's dialer", before.as_ref()),
            ("relayed", Some(&relayed)),
            ("js-libp2p direct", js_direct.as_ref()),
            ("TCP (iperf3)", Some(&tcp)),
        ] {
            let Some(case) = case else { continue };
            let line = format!("| {label} | {name} | {} |", case.cells(bytes));
            eprintln!("{line}");
            lines.push(line);
        }
    }
    eprintln!(
        "\n### Bottlenecks, NAT lab (cone/cone, STUN, {delay_ms} ms per link: direct RTT {} ms), \
         {} MiB echo each way\n",
        4 * delay_ms,
        bytes >> 20
    );
    eprintln!("| line | connection | echo s | wire bytes / payload | queue drops | ping p50 / p90 ms during | packets (mean size) |");
    eprintln!("|---|---|---|---|---|---|---|");
    for line in &lines {
        eprintln!("{line}");
    }
}

/// Bytes a 12 s iperf3 upload with congestion control `cc` moves from p2 to an iperf3
/// server at the STUN host (outside both homes, unlimited link), through r2's uplink.
fn upload_bytes(lab: &Lab, cc: &str) -> Result<f64, String> {
    let port = "5301";
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("stun"),
            "iperf3",
            "-s",
            "-1",
            "-p",
            port,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3: {e}"))?;
    lab::wait_for_tcp(&lab.ns("stun"), 5301);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("p2"),
            "timeout",
            "30",
            "iperf3",
            "-J",
        ])
        .args(["-c", lab::STUN_IP, "-p", port, "-t", "12", "-C", cc])
        .output()
        .map_err(|e| format!("iperf3: {e}"))?;
    let _ = server.kill();
    let _ = server.wait();
    let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3: {e}"))?;
    json["end"]["sum_received"]["bytes"]
        .as_f64()
        .ok_or_else(|| format!("iperf3: {}", json["error"]))
}

/// Issue 28, deliverable 3: does a bulk transfer over the direct connection leave a plain
/// TCP upload on the same line its share? A 12 s iperf3 upload (CUBIC, then BBR) from the
/// dialer's machine to a server outside, through a 12 Mbit/s uplink with 50 ms of queue:
/// alone, beside a 32 MiB echo over the relayed connection, beside the same echo over the
/// direct one (and with `BEFORE_NODE`, beside another build's direct echo). A measurement,
/// run by hand (as `measure_bottleneck`):
/// `cargo test --release --features metrics --test nat_lab measure_competing_flow -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_competing_flow() {
    let Some(_lock) = lab_lock() else { return };
    let lab = home_lines(12_000, 50);
    let (_relay, _listener, addr) = relay_and_listener_with(&lab, Ice::Stun, RELAY_UNLIMITED, &[]);
    let before = std::env::var_os("BEFORE_NODE").map(std::path::PathBuf::from);
    let mut rows = Vec::new();
    for cc in ["cubic", "bbr"] {
        let alone = upload_bytes(&lab, cc);
        let mut beside = Vec::new();
        // (relayed, another build's dialer)
        let mut cases = vec![(true, None), (false, None)];
        if let Some(bin) = &before {
            cases.push((false, Some(bin.as_path())));
        }
        for (i, (relayed, bin)) in cases.into_iter().enumerate() {
            let seed = ["6", "7", "8"][i];
            let node = echo_dialer(&lab, &addr, seed, relayed, false, bin, 32 << 20);
            beside.push(upload_bytes(&lab, cc));
            drop(node);
            std::thread::sleep(Duration::from_secs(2));
        }
        let mb = |r: &Result<f64, String>| match r {
            Ok(b) => format!("{:.1} MB", b / 1e6),
            Err(e) => e.clone(),
        };
        let share = |r: &Result<f64, String>| match (r, &alone) {
            (Ok(b), Ok(a)) => format!(" ({:.0}%)", 100.0 * b / a),
            _ => String::new(),
        };
        let cells: Vec<String> = beside
            .iter()
            .map(|r| format!("{}{}", mb(r), share(r)))
            .collect();
        rows.push(format!("| {cc} | {} | {} |", mb(&alone), cells.join(" | ")));
    }
    eprintln!(
        "\n| upload | alone | beside the relayed echo | beside the direct echo |{}\n|---|---|---|---|{}",
        if before.is_some() { " beside BEFORE_NODE's direct echo |" } else { "" },
        if before.is_some() { "---|" } else { "" }
    );
    for row in rows {
        eprintln!("{row}");
    }
}
