//! NAT traversal across real NATs: the lab of `tests/lab/mod.rs` (network namespaces, veth,
//! iptables NAT with stateful firewalls, coturn for STUN/TURN, userspace delay/loss), with
//! the `node` example as relay, listener (behind r1) and dialer (behind r2).
//!
//! Needs root and `iproute2 iptables conntrack coturn` (`.ci/run` installs them). Without
//! them each test prints "skipped: ..." on stderr and returns, except under CI (`CI=true`),
//! where that is a failure. The lab's namespaces are shared, so
//! the tests take a lock and run one at a time.

mod lab;
mod procs;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::{Lab, Links, Nat};
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
    None,
    Stun,
    StunTurn,
}

fn ice_flags(ice: Ice) -> Vec<String> {
    let stun = format!("stun:{}:3478", lab::STUN_IP);
    let turn = format!("turn:{}:3478?transport=udp", lab::STUN_IP);
    match ice {
        Ice::None => vec![],
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
    let listen = format!("/ip4/{}/tcp/4001", lab::RELAY_IP);
    let mut relay = Node::start_in(
        &lab.ns("relay"),
        &["relay", "--listen", &listen, "--seed", "1"],
    );
    let relay_addr = relay.wait("listening")["addr"]
        .as_str()
        .expect("addr")
        .to_string();
    let mut args: Vec<String> = vec![
        "listen".into(),
        "--relay".into(),
        relay_addr,
        "--seed".into(),
        "2".into(),
    ];
    args.extend(ice_flags(ice));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut listener = Node::start_in(&lab.ns("p1"), &args);
    let addr = listener.wait("reserved")["addr"]
        .as_str()
        .expect("addr")
        .to_string();
    (relay, listener, addr)
}

/// Starts the dialer behind r2.
fn dialer(lab: &Lab, addr: &str, ice: Ice, extra: &[&str]) -> Node {
    let mut args: Vec<String> = vec!["dial".into(), addr.into(), "--seed".into(), "3".into()];
    args.extend(ice_flags(ice));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start_in(&lab.ns("p2"), &args)
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
}

fn run_row(row: &Row) -> Outcome {
    run_row_with(row, &[])
}

/// [`run_row`] with `extra` flags for both peers.
fn run_row_with(row: &Row, extra: &[&str]) -> Outcome {
    let lab = Lab::up(row.r1, row.r2, row.links);
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
    let upgrade_ms = events(&all, "upgraded")
        .next()
        .and_then(|u| u["ms"].as_f64());
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
            // 2%: at 5% per link (~10% end to end) about 1 run in 13 fails, mostly by the
            // relayed connection closing first (`repeat_the_loss_row`): too flaky for CI.
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
    ];
    let mut table = Vec::new();
    for row in &rows {
        let started = Instant::now();
        let outcome = run_row(row);
        let ice = match row.ice {
            Ice::None => "none",
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
    // ICE consent: disconnected after 5 s, failed after 10 s (Config defaults).
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
    const DELAY_MS: u32 = 25;
    // The direct path crosses two delayed links each way; the relayed one four.
    let rtt = 4.0 * f64::from(DELAY_MS);
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let lab = Lab::up(
        Nat::Cone,
        Nat::Cone,
        Links {
            delay_ms: DELAY_MS,
            loss_pct: 0.0,
        },
    );
    let (_relay, _listener, addr) = relay_and_listener(&lab, Ice::Stun, &[]);
    let phases = ["stream", "descriptions", "ice", "dtls", "sctp", "handoff"];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); phases.len() + 1];
    for run in 0..runs {
        let seed = (100 + run).to_string();
        let mut args: Vec<String> = vec!["dial".into(), addr.clone(), "--seed".into(), seed];
        args.extend(ice_flags(Ice::Stun));
        args.extend(["--ping", "1", "--timeout", "60"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, all) = Node::start_in(&lab.ns("p2"), &args).finish();
        assert_eq!(code, 0, "run {run}: {all:#?}");
        let upgraded = events(&all, "upgraded").next().expect("upgraded");
        let ms = upgraded["ms"].as_f64().expect("ms");
        eprintln!("run {run}: {ms:.0} ms = {:.1} RTT", ms / rtt);
        samples[0].push(ms);
        for (i, phase) in phases.iter().enumerate() {
            samples[i + 1].push(upgraded["phases_ms"][phase].as_f64().unwrap_or(f64::NAN));
        }
    }
    let pct = |v: &mut Vec<f64>, p: usize| {
        v.sort_by(f64::total_cmp);
        let rank = (p * v.len()).div_ceil(100).clamp(1, v.len());
        v[rank - 1]
    };
    eprintln!(
        "\n### Upgrade latency, NAT lab (cone/cone, STUN, {DELAY_MS} ms per link, direct RTT \
         {rtt:.0} ms, relayed RTT {:.0} ms), {runs} runs\n",
        2.0 * rtt
    );
    eprintln!("| phase | p50 ms | p50 RTT | p90 ms | p90 RTT |\n|---|---|---|---|---|");
    let names = std::iter::once("attempt start → direct established").chain(phases);
    for (name, v) in names.zip(samples.iter_mut()) {
        let (p50, p90) = (pct(v, 50), pct(v, 90));
        eprintln!(
            "| {name} | {p50:.0} | {:.1} | {p90:.0} | {:.1} |",
            p50 / rtt,
            p90 / rtt
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
    let runs: usize = std::env::var("LOSS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let row = Row {
        r1: Nat::Cone,
        r2: Nat::Cone,
        ice: Ice::Stun,
        links: Links {
            delay_ms: 0,
            loss_pct: std::env::var("LOSS_PCT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(5.0),
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
