//! The examples as users run them: the `demo`, and the `node` binary as separate processes
//! (relay, listener, dialer) on 127.0.0.1, checked through their JSON events.

mod procs;

use std::process::{Command, Stdio};

use procs::{events, example, Node};
use serde_json::Value;

/// A relay and a listener with a reservation on it; returns them and the listener's
/// circuit address.
fn relay_and_listener(listener_flags: &[&str]) -> (Node, Node, String) {
    relay_and_listener_on("/ip4/127.0.0.1/tcp/0", listener_flags)
}

/// [`relay_and_listener`] with the relay listening on `listen`.
fn relay_and_listener_on(listen: &str, listener_flags: &[&str]) -> (Node, Node, String) {
    let mut relay = Node::start(&["relay", "--listen", listen]);
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

/// Browsers reach relays over WebSockets: the relay serves `/ws`, the listener reserves
/// through it, and the dialer uses the address form a browser advertises
/// (`<relay>/tcp/P/ws/p2p/<relay>/p2p-circuit/webrtc/p2p/<id>`).
#[test]
fn node_upgrades_through_a_websocket_relay() {
    let (_relay, mut listener, addr) = relay_and_listener_on("/ip4/127.0.0.1/tcp/0/ws", &[]);
    assert!(addr.contains("/ws/p2p/"), "{addr}");
    let advertised = addr.replace("/p2p-circuit/p2p/", "/p2p-circuit/webrtc/p2p/");
    let dialer = Node::start(&["dial", &advertised, "--loopback", "--ping", "2"]);
    let (code, all) = dialer.finish();
    assert_eq!(code, 0, "{all:#?}");
    // The first connection to the listener is the relayed one, over /ws. (With an explicit
    // `/webrtc` address its address is the dialed one, so `relayed` is false there.)
    let listener_id = addr.rsplit('/').next().expect("id");
    let first = events(&all, "connected")
        .find(|e| e["peer"] == listener_id)
        .expect("connected");
    assert!(
        first["addr"]
            .as_str()
            .is_some_and(|a| a.contains("/ws/") && a.contains("/p2p-circuit/")),
        "{first}"
    );
    let upgraded = events(&all, "upgraded").next().expect("upgraded");
    assert_eq!(upgraded["path"], "udp4", "{upgraded}");
    // The remote side is a host candidate, or peer-reflexive when its check arrived before
    // its candidate was signaled (ICE selects the first pair that works).
    assert!(
        upgraded["pair"] == "host/host" || upgraded["pair"] == "host/prflx",
        "{upgraded}"
    );
    assert!(
        upgraded["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{upgraded}"
    );
    let pings: Vec<_> = events(&all, "ping").collect();
    assert!(pings.len() == 2 && pings.iter().all(|p| p["ok"] == true && p["direct"] == true));
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

/// `GET /metrics` from `addr` (HTTP/1.1, one request); returns the body of a 200 response.
#[cfg(feature = "metrics")]
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_string()
}

/// The value of the sample that starts with `prefix` (name and labels), if there is one.
#[cfg(feature = "metrics")]
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `node --metrics` serves Prometheus metrics: after one upgrade, the listener's counters
/// say so, and the open direct connection is counted down when the dialer leaves.
#[cfg(feature = "metrics")]
#[test]
fn node_serves_metrics_after_an_upgrade() {
    let (_relay, mut listener, addr) =
        relay_and_listener(&["--metrics", "127.0.0.1:0", "--idle-timeout", "2"]);
    // Emitted before "reserved", which `relay_and_listener` waited for.
    let metrics = events(listener.seen(), "metrics")
        .next()
        .and_then(|e| e["addr"].as_str())
        .expect("metrics event")
        .to_string();
    // Before any upgrade: the unlabelled metrics are there at 0 (labelled ones appear with
    // their first sample).
    let before = scrape(&metrics);
    assert_eq!(
        sample(&before, "webrtc_signal_relays_drained_total"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, "webrtc_signal_direct_connections "),
        Some(0.0),
        "{before}"
    );
    let dialer = Node::start(&["dial", &addr, "--loopback", "--ping", "1"]);
    let (code, all) = dialer.finish();
    assert_eq!(code, 0, "{all:#?}");
    listener.wait("relay_closed");
    let p = "webrtc_signal_";
    let body = scrape(&metrics);
    let value = |prefix: &str| {
        sample(&body, &format!("{p}{prefix}")).unwrap_or_else(|| panic!("no {prefix}:\n{body}"))
    };
    assert_eq!(value("upgrades_started_total{role=\"answerer\"}"), 1.0);
    assert_eq!(
        value("upgrades_succeeded_total{family=\"udp4\",turn=\"false\"}"),
        1.0
    );
    assert_eq!(value("upgrade_attempts_count"), 1.0);
    assert_eq!(value("upgrade_duration_seconds_count"), 1.0);
    assert!(value("signaling_bytes_total{direction=\"received\"}") > 0.0);
    assert_eq!(value("relays_drained_total"), 1.0);
    assert!(
        sample(&body, &format!("{p}upgrades_failed_total")).is_none(),
        "{body}"
    );
    // The dialer has exited: its direct connection closes (at the latest after the idle
    // timeout), and the gauge comes back to 0.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let body = scrape(&metrics);
        if sample(&body, &format!("{p}direct_connections ")) == Some(0.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `node relay --metrics` serves the relay's own figures: a reservation held, the circuit a
/// dialer opened, and the STUN responder's answers, rate limits and ignored datagrams.
#[cfg(feature = "metrics")]
#[test]
fn relay_serves_metrics() {
    let mut relay = Node::start(&[
        "relay",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--metrics",
        "127.0.0.1:0",
        "--stun-responder",
        "127.0.0.1:0",
        "--stun-burst",
        "2",
        "--stun-rate",
        "1",
    ]);
    let stun = relay.wait("stun_responder")["addr"]
        .as_str()
        .expect("STUN address")
        .to_string();
    let metrics = relay.wait("metrics")["addr"]
        .as_str()
        .expect("metrics address")
        .to_string();
    let relay_addr = relay.wait("listening")["addr"]
        .as_str()
        .expect("addr")
        .to_string();
    let body = scrape(&metrics);
    assert_eq!(sample(&body, "relay_reservations "), Some(0.0), "{body}");
    assert_eq!(sample(&body, "relay_circuits "), Some(0.0), "{body}");

    // STUN: three Binding requests from one source (a burst of two), and a datagram that is
    // not STUN.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(&[7u8; 12]);
    for _ in 0..3 {
        socket.send_to(&request, &stun).unwrap();
    }
    socket.send_to(b"not STUN", &stun).unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = socket.recv_from(&mut buf).expect("a STUN answer");
    assert!(n >= 20 && buf[..2] == [0x01, 0x01], "a Binding success");

    let mut listener = Node::start(&["listen", "--relay", &relay_addr, "--loopback"]);
    let addr = listener.wait("reserved")["addr"]
        .as_str()
        .expect("addr")
        .to_string();
    // Over the relay only: the circuit is the one to count.
    let dialer = Node::start(&[
        "dial",
        &addr,
        "--loopback",
        "--ping",
        "1",
        "--no-upgrade",
        "--allow-relayed",
    ]);
    let (code, all) = dialer.finish();
    assert_eq!(code, 0, "{all:#?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let body = scrape(&metrics);
        let value = |prefix: &str| sample(&body, prefix);
        let done = value("relay_reservations ") == Some(1.0)
            && value("relay_reservation_requests_total{outcome=\"accepted\"}") >= Some(1.0)
            && value("relay_circuit_requests_total{outcome=\"accepted\"}") == Some(1.0)
            && value("relay_connections ") >= Some(1.0)
            && value("stun_binding_requests_answered_total ") == Some(2.0)
            && value("stun_binding_requests_rate_limited_total ") == Some(1.0)
            && value("stun_datagrams_ignored_total ") == Some(1.0);
        if done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
