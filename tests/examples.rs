//! The examples as users run them: the `demo`, and the `node` binary as separate processes
//! (relay, listener, dialer) on 127.0.0.1, checked through their JSON events.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Hang guard for one wait; generous, the steps take milliseconds to a few seconds.
const T: Duration = Duration::from_secs(60);

/// The path of a built example. `cargo test` builds the examples before running any test;
/// `cargo test --test examples` alone does not rebuild them (run `cargo build --examples`
/// first). Built here only if missing: a nested cargo run would not share the outer one's
/// build fingerprints and would rebuild dependencies.
fn example(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples")))
        .expect("target dir");
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", name])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building example {name} failed");
    }
    path
}

/// A running `node`; killed when dropped. Its stdout lines arrive as JSON values.
struct Node {
    child: Child,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Node {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(example("node"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
                assert!(value["event"].is_string(), "no \"event\" in {line}");
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// The next event called `name` (events before it are kept in `seen`).
    fn wait(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {name:?} event ({e}); saw {:#?}", self.seen));
            self.seen.push(event.clone());
            if event["event"] == name {
                return event;
            }
        }
    }

    /// Waits for the process to exit; returns its status code and all its events.
    fn finish(mut self) -> (i32, Vec<Value>) {
        let deadline = Instant::now() + T * 2;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(event) = self.events.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(event);
        }
        (code, std::mem::take(&mut self.seen))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events<'a>(all: &'a [Value], name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    all.iter().filter(move |e| e["event"] == name)
}

/// A relay and a listener with a reservation on it; returns them and the listener's
/// circuit address.
fn relay_and_listener(listener_flags: &[&str]) -> (Node, Node, String) {
    let mut relay = Node::start(&["relay", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let relay_addr = relay.wait("listening")["addr"]
        .as_str()
        .expect("addr")
        .to_string();
    let mut args = vec!["listen", "--relay", &relay_addr, "--loopback"];
    args.extend_from_slice(listener_flags);
    let mut listener = Node::start(&args);
    let reserved = listener.wait("reserved");
    let addr = reserved["addr"].as_str().expect("addr").to_string();
    assert!(addr.starts_with(&relay_addr) && addr.contains("/p2p-circuit/p2p/"));
    (relay, listener, addr)
}

#[test]
fn demo_runs_to_completion() {
    let output = Command::new(example("demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {stdout}\n{stderr}");
    for step in [
        "relayed connection up",
        "over the relay: median",
        "WebRTC connection up in",
        "over WebRTC: median",
        "relayed connection drained and closed",
        "16 MiB each way over WebRTC",
        "echo checked",
        "done in",
    ] {
        assert!(
            stdout.contains(step),
            "no {step:?} in the demo's output:\n{stdout}"
        );
    }
}

#[test]
fn node_dial_upgrades_then_pings_and_echoes_over_webrtc() {
    let (_relay, mut listener, addr) = relay_and_listener(&[]);
    let dialer = Node::start(&[
        "dial",
        &addr,
        "--loopback",
        "--ping",
        "3",
        "--send-bytes",
        "1048576",
    ]);
    let (code, all) = dialer.finish();
    assert_eq!(code, 0, "dial failed: {all:#?}");
    let listener_id = addr.rsplit('/').next().expect("id");
    assert!(
        events(&all, "connected").any(|e| e["relayed"] == true && e["peer"] == listener_id),
        "no relayed connection: {all:#?}"
    );
    let upgraded = events(&all, "upgraded").next().expect("upgraded");
    assert_eq!(upgraded["peer"], listener_id);
    assert!(
        upgraded["addr"]
            .as_str()
            .is_some_and(|a| a.contains("/p2p-circuit/webrtc/p2p/")),
        "{upgraded}"
    );
    assert!(upgraded["ms"].as_f64().expect("ms") > 0.0);
    assert!(
        events(&all, "connected").any(|e| e["direct"] == true
            && e["addr"]
                .as_str()
                .is_some_and(|a| a.contains("/p2p-circuit/webrtc/p2p/"))),
        "no direct connection: {all:#?}"
    );
    let pings: Vec<_> = events(&all, "ping").collect();
    assert_eq!(pings.len(), 3, "{all:#?}");
    assert!(pings.iter().all(|p| p["ok"] == true && p["direct"] == true));
    let transfer = events(&all, "transfer").next().expect("transfer");
    assert_eq!(transfer["ok"], true);
    assert_eq!(transfer["direct"], true);
    assert_eq!(transfer["bytes"], 1048576);
    assert_eq!(events(&all, "done").next().expect("done")["ok"], true);
    // The listener saw the same upgrade, from the answering side, and closed the relay.
    assert_eq!(listener.wait("upgrade_started")["role"], "answerer");
    listener.wait("upgraded");
    listener.wait("relay_closed");
}

#[test]
fn node_explicit_webrtc_dial_address() {
    let (_relay, _listener, addr) = relay_and_listener(&[]);
    let explicit = addr.replace("/p2p-circuit/p2p/", "/p2p-circuit/webrtc/p2p/");
    let dialer = Node::start(&["dial", &explicit, "--loopback", "--ping", "1"]);
    let (code, all) = dialer.finish();
    assert_eq!(code, 0, "{all:#?}");
    assert!(events(&all, "upgraded").next().is_some());
    assert!(events(&all, "ping").all(|p| p["direct"] == true));
}

#[test]
fn node_without_upgrade_stays_relayed() {
    let (_relay, _listener, addr) = relay_and_listener(&[]);
    let args = [
        "dial",
        addr.as_str(),
        "--no-upgrade",
        "--ping",
        "2",
        // Echoed both ways over the circuit: well inside the relay's default 128 KiB.
        "--send-bytes",
        "16384",
    ];

    // Without --allow-relayed, working checks over the relay are not a success.
    let (code, all) = Node::start(&args).finish();
    assert_eq!(code, 1, "{all:#?}");
    assert!(events(&all, "upgrade_started").next().is_none());
    let pings: Vec<_> = events(&all, "ping").collect();
    assert_eq!(pings.len(), 2, "{all:#?}");
    assert!(pings
        .iter()
        .all(|p| p["ok"] == true && p["direct"] == false));
    let transfer = events(&all, "transfer").next().expect("transfer");
    assert_eq!(
        (&transfer["ok"], &transfer["direct"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    assert_eq!(events(&all, "done").next().expect("done")["ok"], false);

    // With it, they are.
    let mut relayed = args.to_vec();
    relayed.push("--allow-relayed");
    let (code, all) = Node::start(&relayed).finish();
    assert_eq!(code, 0, "{all:#?}");
    let done = events(&all, "done").next().expect("done");
    assert_eq!(
        (&done["ok"], &done["direct"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
}

#[test]
fn node_failed_upgrade_falls_back_to_the_relay_with_allow_relayed() {
    // The listener has no WebRTC: every attempt is refused (protocol not supported).
    let (_relay, _listener, addr) = relay_and_listener(&["--no-upgrade"]);
    let (code, all) = Node::start(&[
        "dial",
        &addr,
        "--loopback",
        "--max-attempts",
        "2",
        "--ping",
        "1",
        "--allow-relayed",
    ])
    .finish();
    assert_eq!(code, 0, "{all:#?}");
    let failures: Vec<_> = events(&all, "upgrade_failed").collect();
    assert_eq!(failures.len(), 2, "{all:#?}");
    assert_eq!(failures[1]["will_retry"], false);
    assert!(events(&all, "ping").all(|p| p["direct"] == false && p["ok"] == true));
}

#[test]
fn node_rejects_bad_usage() {
    for args in [
        vec!["fly"],
        vec!["dial"],
        vec!["listen"],
        vec!["dial", "/ip4/127.0.0.1/tcp/1", "--ping"],
        vec!["dial", "not-a-multiaddr"],
        vec![
            "listen",
            "--relay",
            "/ip4/127.0.0.1/tcp/1",
            "--turn",
            "turn:x:3478",
        ],
    ] {
        let output = Command::new(example("node"))
            .args(&args)
            .output()
            .expect("run node");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("usage:"),
            "{args:?}: no usage on stderr"
        );
    }
}
