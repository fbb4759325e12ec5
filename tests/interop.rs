//! Interoperability with js-libp2p's WebRTC private-to-private transport (`@libp2p/webrtc`,
//! signaling `/webrtc-signaling/0.0.1`), in Node.js and in headless Chromium, both ways.
//!
//! The js side is `interop/` (`node.mjs`, `browser.mjs`: the same command line and JSON events
//! as the `node` example). Each case runs a listener and a dialer in their own network
//! namespaces on one bridge, with a relay in a third: our relay for the Node.js cases,
//! js-libp2p's and ours for the Chromium cases (both serve TCP and WebSockets: a browser
//! reaches a relay over WebSockets only). A Rust peer dials a browser with the address the
//! browser advertises (`.../ws/p2p/<relay>/p2p-circuit/webrtc/p2p/<browser>`). Every case must end in a direct WebRTC connection on which:
//! - the dialer pings the listener and echoes 1 MiB over a stream it opens;
//! - the listener echoes 1 MiB over a stream it opens (streams opened by either side);
//! - each echo half-closes (FIN) and the remote acknowledges it (FIN_ACK): a js side reports
//!   that it saw the FIN_ACK; our side logs each flag it receives (`flag received`, debug)
//!   and each close that gave up waiting: it must have received FIN_ACKs, and no close of it
//!   may have fallen back to `fin_ack_timeout` (a close also ends when the remote closes the
//!   channel after our FIN; then a FIN_ACK sent just before can be lost with the channel);
//! - each side resets a stream after an echo on it, and the other side's echo server reports
//!   the reset (not a clean end).
//!
//! The `_lossy` cases run the Node.js ones again on a lossy path: every UDP datagram a peer
//! receives goes through the NAT lab's delay/loss program (`tests/lab/netem.rs`, NFQUEUE on
//! the peer's INPUT chain), 20 ms and 2% each way: the NAT lab's 10 ms and 1% per link, two
//! links per direction. The relayed TCP connection is not delayed.
//!
//! Needs root, `ip`, and the js side installed: `apt-get install -y chromium` and
//! `cd interop && npm ci` (`.ci/run` does both). Without them each test prints
//! "skipped: ..." and returns, except under CI (`CI=true`), where that is a failure.

mod lab;
mod procs;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;

use lab::sh;
use procs::{events, example, Node};
use serde_json::Value;

/// The cases share the namespaces: one at a time.
static LAB: Mutex<()> = Mutex::new(());

/// Namespace names start with this; cleaning up touches nothing else.
const PREFIX: &str = "wsi-";
const RELAY_IP: &str = "10.79.0.1";
const A_IP: &str = "10.79.0.2";
const B_IP: &str = "10.79.0.3";
/// The Rust relay (TCP, WebSockets), and the js relay (TCP, WebSockets).
const RUST_RELAY_PORT: u16 = 4501;
const RUST_RELAY_WS_PORT: u16 = 4502;
const JS_RELAY_TCP_PORT: u16 = 4511;
const JS_RELAY_WS_PORT: u16 = 4512;
/// Bytes each side echoes.
const ECHO_BYTES: u64 = 1024 * 1024;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

fn js_node() -> PathBuf {
    interop_dir().join("node_modules/.bin/node")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

/// Why the interop tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    if !lab::is_root() {
        return Some("needs root (network namespaces)".into());
    }
    if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("needs ip (apt-get install -y iproute2)".into());
    }
    if !js_node().exists() {
        return Some("needs the js side: cd interop && npm ci && npm run build".into());
    }
    if !chromium().exists() {
        return Some("needs Chromium (apt-get install -y chromium)".into());
    }
    None
}

/// Takes the namespaces, or says why the tests cannot run. The browser bundle is rebuilt
/// once per run (esbuild, under a second), so it always has the current `interop/lib`.
fn lock() -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Some(why) = unavailable() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the interop tests are required here but {why}");
        }
        eprintln!("\n*** interop skipped: {why} ***\n");
        return None;
    }
    let guard = LAB.lock().unwrap_or_else(|e| e.into_inner());
    static BUNDLE: std::sync::Once = std::sync::Once::new();
    BUNDLE.call_once(|| {
        let status = Command::new("npm")
            .args(["run", "build"])
            .current_dir(interop_dir())
            .status()
            .expect("npm run build");
        assert!(status.success(), "building the browser bundle failed");
    });
    Some(guard)
}

fn clean() {
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!(
                "for n in $(ip netns list | awk '{{print $1}}' | grep '^{PREFIX}'); do \
                 ip netns pids $n | xargs -r kill -9 2>/dev/null; ip netns del $n; done"
            ),
        ])
        .status();
}

/// A bridge in namespace `wsi-sw` joining `wsi-relay`, `wsi-a` and `wsi-b`; removed on drop.
struct Net {
    /// The delay/loss programs of a lossy net.
    netem: Vec<Child>,
}

/// One-way delay (ms) and loss (percent) on every UDP datagram a peer receives, for the
/// `_lossy` cases.
const LOSSY: (u32, f64) = (20, 1.99);

impl Net {
    /// The net; with `lossy`, UDP into `wsi-a` and `wsi-b` is delayed and dropped per [`LOSSY`].
    fn up(lossy: bool) -> Self {
        clean();
        sh(&format!("ip netns add {PREFIX}sw"));
        sh(&format!(
            "ip -n {PREFIX}sw link add br0 type bridge && ip -n {PREFIX}sw link set br0 up"
        ));
        for (i, (host, ip)) in [("relay", RELAY_IP), ("a", A_IP), ("b", B_IP)]
            .into_iter()
            .enumerate()
        {
            let ns = format!("{PREFIX}{host}");
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
            sh(&format!(
                "ip -n {PREFIX}sw link add p{i} type veth peer name eth0 netns {ns}"
            ));
            sh(&format!(
                "ip -n {PREFIX}sw link set p{i} master br0 up && \
                 ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up"
            ));
        }
        let mut net = Net { netem: Vec::new() };
        if lossy {
            let (delay, loss) = LOSSY;
            for host in ["a", "b"] {
                let ns = format!("{PREFIX}{host}");
                net.netem
                    .push(lab::start_netem(&ns, delay, loss, "-A INPUT -p udp"));
            }
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for netem in &mut self.netem {
            let _ = netem.kill();
            let _ = netem.wait();
        }
        clean();
    }
}

/// Which implementation a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rust,
    Node,
    Chromium,
}

/// Where a Rust peer in namespace `wsi-<host>` logs (its stream flags, at debug level).
fn log_path(host: &str) -> PathBuf {
    // Per test too (the test thread's name): the cases of one run share the process, and a
    // failed case's logs must outlive the cases that pass after it.
    let thread = std::thread::current();
    let case = thread.name().unwrap_or("main").replace("::", "-");
    std::env::temp_dir().join(format!("{PREFIX}{host}-{case}-{}.log", std::process::id()))
}

/// Starts a peer of this kind in namespace `wsi-<host>` with the `node` command line `args`.
fn start(kind: Kind, host: &str, args: &[&str]) -> Node {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &format!("{PREFIX}{host}")]);
    match kind {
        Kind::Rust => {
            cmd.arg(example("node"));
            cmd.env(
                "RUST_LOG",
                "warn,libp2p_webrtc_signal=debug,libp2p_webrtc_signal::direct::session=trace",
            );
            cmd.env("NO_COLOR", "1");
            let log = std::fs::File::create(log_path(host)).expect("log file");
            cmd.args(args);
            return Node::spawn_with_stderr(cmd, log.into());
        }
        Kind::Node | Kind::Chromium => {
            let script = if kind == Kind::Node {
                "node.mjs"
            } else {
                "browser.mjs"
            };
            cmd.arg(js_node()).arg(interop_dir().join(script));
            cmd.env("CHROMIUM", chromium());
        }
    }
    cmd.args(args);
    Node::spawn(cmd)
}

/// The relay for a case and the addresses each side reaches it at.
struct Relay {
    _node: Node,
    /// For a Rust or Node.js peer (TCP).
    tcp: String,
    /// For a Chromium peer (WebSockets).
    ws: String,
}

impl Relay {
    fn addr_for(&self, kind: Kind) -> &str {
        if kind == Kind::Chromium {
            &self.ws
        } else {
            &self.tcp
        }
    }
}

fn relay(js: bool) -> Relay {
    if js {
        let tcp = format!("/ip4/{RELAY_IP}/tcp/{JS_RELAY_TCP_PORT}");
        let ws = format!("/ip4/{RELAY_IP}/tcp/{JS_RELAY_WS_PORT}/ws");
        let mut node = start(
            Kind::Node,
            "relay",
            &["relay", "--listen", &tcp, "--listen", &ws, "--seed", "1"],
        );
        let peer = node.wait("listening")["peer"]
            .as_str()
            .expect("peer")
            .to_string();
        Relay {
            _node: node,
            tcp: format!("{tcp}/p2p/{peer}"),
            ws: format!("{ws}/p2p/{peer}"),
        }
    } else {
        let tcp = format!("/ip4/{RELAY_IP}/tcp/{RUST_RELAY_PORT}");
        let ws = format!("/ip4/{RELAY_IP}/tcp/{RUST_RELAY_WS_PORT}/ws");
        let mut node = start(
            Kind::Rust,
            "relay",
            &["relay", "--listen", &tcp, "--listen", &ws, "--seed", "1"],
        );
        let mut addr = || {
            node.wait("listening")["addr"]
                .as_str()
                .expect("addr")
                .to_string()
        };
        let (first, second) = (addr(), addr());
        let (ws, tcp) = if first.contains("/ws/") {
            (first, second)
        } else {
            (second, first)
        };
        Relay {
            _node: node,
            tcp,
            ws,
        }
    }
}

/// Asserts one side's own checks: its echo over the direct connection (and, for the dialer,
/// its pings) and its reset stream.
fn assert_checks(side: &str, kind: Kind, all: &[Value], dialer: bool) {
    if dialer {
        let pings: Vec<_> = events(all, "ping")
            .filter(|e| e["ok"] == true && e["direct"] == true)
            .collect();
        assert!(pings.len() >= 3, "{side}: pings over WebRTC: {all:#?}");
        assert!(
            events(all, "upgraded").next().is_some(),
            "{side}: no upgrade: {all:#?}"
        );
    }
    let transfer = events(all, "transfer")
        .next()
        .unwrap_or_else(|| panic!("{side}: no transfer: {all:#?}"));
    assert_eq!(transfer["ok"], true, "{side}: {transfer}");
    assert_eq!(transfer["direct"], true, "{side}: {transfer}");
    assert_eq!(transfer["bytes"], ECHO_BYTES, "{side}: {transfer}");
    if kind != Kind::Rust {
        assert_eq!(
            transfer["fin_ack"], true,
            "{side}: the FIN was not acknowledged: {transfer}"
        );
    }
    let reset = events(all, "reset_sent")
        .next()
        .unwrap_or_else(|| panic!("{side}: no reset_sent: {all:#?}"));
    assert_eq!(reset["ok"], true, "{side}: {reset}");
    assert_eq!(reset["direct"], true, "{side}: {reset}");
}

/// A Rust peer's log: FIN_ACKs received, and no close that gave up waiting for one.
fn assert_fin_acks(side: &str, host: &str) {
    let log = std::fs::read_to_string(log_path(host)).unwrap_or_default();
    let fin_acks = log
        .lines()
        .filter(|l| l.contains("flag received") && l.contains("FinAck"))
        .count();
    let tail: Vec<_> = log.lines().rev().take(40).collect();
    assert!(
        fin_acks >= 1,
        "{side}: no FIN_ACK received; log tail: {tail:#?}"
    );
    assert!(
        !log.contains("no FIN_ACK before the timeout"),
        "{side}: a close gave up waiting for FIN_ACK; log tail: {tail:#?}"
    );
}

/// Waits until `side`'s echo server has served the remote's two streams: the 1 MiB echo,
/// ended cleanly, and the reset one.
fn assert_served(side: &str, node: &mut Node) {
    let closed = node.wait_for(&format!("{side}: served closed"), |e| {
        e["event"] == "served" && e["end"] != "reset"
    });
    assert_eq!(closed["end"], "closed", "{side}: {closed}");
    assert_eq!(closed["bytes"], ECHO_BYTES, "{side}: {closed}");
    let reset = node.wait_for(&format!("{side}: served reset"), |e| {
        e["event"] == "served" && e["end"] == "reset"
    });
    assert_eq!(reset["bytes"], 4096, "{side}: {reset}");
}

/// One case: `listener` listens through the relay, `dialer` dials it, both run the checks.
/// The Node.js cases use our relay, the Chromium ones js-libp2p's.
fn case(dialer: Kind, listener: Kind, lossy: bool) {
    let js_relay = dialer == Kind::Chromium || listener == Kind::Chromium;
    case_via(dialer, listener, lossy, js_relay)
}

/// [`case`] through js-libp2p's relay or ours (`js_relay`). A Rust dialer of a Chromium
/// listener dials the address the browser advertises, as given
/// (`<relay>/tcp/P/ws/p2p/<relay>/p2p-circuit/webrtc/p2p/<browser>`).
fn case_via(dialer: Kind, listener: Kind, lossy: bool, js_relay: bool) {
    let Some(_lock) = lock() else { return };
    let _net = Net::up(lossy);
    let relay = relay(js_relay);
    let mb = ECHO_BYTES.to_string();
    let mut l = start(
        listener,
        "b",
        &[
            "listen",
            "--relay",
            relay.addr_for(listener),
            "--seed",
            "2",
            "--send-bytes",
            &mb,
            "--check-reset",
            "--timeout",
            "100",
        ],
    );
    let reserved = l.wait("reserved");
    let id = reserved["addr"]
        .as_str()
        .and_then(|a| a.rsplit('/').next())
        .expect("listener id")
        .to_string();
    let target = if listener == Kind::Chromium && dialer == Kind::Rust {
        let advertised = l.wait("listening")["addr"]
            .as_str()
            .expect("addr")
            .to_string();
        assert!(
            advertised.contains("/ws/") && advertised.contains("/p2p-circuit/webrtc/"),
            "{advertised}"
        );
        advertised
    } else {
        format!("{}/p2p-circuit/p2p/{id}", relay.addr_for(dialer))
    };
    let mut d = start(
        dialer,
        "a",
        &[
            "dial",
            &target,
            "--seed",
            "3",
            "--ping",
            "3",
            "--send-bytes",
            &mb,
            "--check-reset",
            "--linger",
            "30",
            "--timeout",
            "90",
        ],
    );
    let done = d.wait("done");
    assert_eq!(done["ok"], true, "dialer: {done}; saw {:#?}", d.seen());
    assert_eq!(done["direct"], true, "dialer: {done}");
    let l_done = l.wait("done");
    assert_eq!(
        l_done["ok"],
        true,
        "listener: {l_done}; saw {:#?}",
        l.seen()
    );
    assert_checks("dialer", dialer, d.seen(), true);
    assert_checks("listener", listener, l.seen(), false);
    assert_served("dialer", &mut d);
    assert_served("listener", &mut l);
    for (side, kind, host) in [("dialer", dialer, "a"), ("listener", listener, "b")] {
        if kind == Kind::Rust {
            assert_fin_acks(side, host);
        }
    }
    for host in ["relay", "a", "b"] {
        let _ = std::fs::remove_file(log_path(host));
    }
    let ms = |all: &[Value], name: &str, field: &str| {
        events(all, name)
            .next()
            .and_then(|e| e[field].as_f64())
            .map_or("-".to_string(), |v| format!("{v:.0}"))
    };
    let path = if lossy { " (lossy)" } else { "" };
    eprintln!(
        "{dialer:?} dials {listener:?}{path}: upgraded in {} ms; 1 MiB echo {} ms (dialer's), {} ms (listener's); \
         close {} / {} ms",
        ms(d.seen(), "upgraded", "ms"),
        ms(d.seen(), "transfer", "ms"),
        ms(l.seen(), "transfer", "ms"),
        ms(d.seen(), "transfer", "close_ms"),
        ms(l.seen(), "transfer", "close_ms"),
    );
}

#[test]
fn node_dials_rust() {
    case(Kind::Node, Kind::Rust, false);
}

#[test]
fn rust_dials_node() {
    case(Kind::Rust, Kind::Node, false);
}

#[test]
fn chromium_dials_rust() {
    case(Kind::Chromium, Kind::Rust, false);
}

#[test]
fn rust_dials_chromium() {
    case(Kind::Rust, Kind::Chromium, false);
}

/// A browser reserves on our relay (over WebSockets) and dials a Rust peer through it.
#[test]
fn chromium_dials_rust_through_a_rust_relay() {
    case_via(Kind::Chromium, Kind::Rust, false, false);
}

/// A Rust peer dials a browser through our relay, with the address the browser advertises.
#[test]
fn rust_dials_chromium_through_a_rust_relay() {
    case_via(Kind::Rust, Kind::Chromium, false, false);
}

#[test]
fn node_dials_rust_lossy() {
    case(Kind::Node, Kind::Rust, true);
}

#[test]
fn rust_dials_node_lossy() {
    case(Kind::Rust, Kind::Node, true);
}
