//! The NAT lab: network namespaces joined by veth links, all on this machine.
//!
//! ```text
//!                 relay 198.51.100.2        stun/turn 198.51.101.2
//!                          \                   /
//!                           core (router; delay and loss in userspace, NFQUEUE)
//!                          /                   \
//!          203.0.113.2 r1 (NAT + firewall)    r2 (NAT + firewall) 192.0.2.2
//!                      |                       |
//!               p1 10.0.1.2                 p2 10.0.2.2
//!                  2001:db8:1::2               2001:db8:2::2   (with [`V6`])
//! ```
//!
//! With [`Lab::up_dual`], IPv6 too: global addresses routed by the core without NAT
//! (`2001:db8:a1::/64` and `2001:db8:a2::/64` to the home routers), behind the same
//! stateful firewall (`ip6tables`) on each home router.
//!
//! Each home router does NAT per [`Nat`] and drops unsolicited inbound traffic. The core
//! router knows no private range (with [`Nat::None`] it routes that LAN as public), so
//! without a working NAT traversal nothing reaches a LAN. [`Lab::up`] first removes what a
//! previous run may have left; dropping the [`Lab`] removes it all, whatever happened.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

use std::io::{BufRead, BufReader};

/// Namespace names start with this, so cleaning up cannot touch anything else.
pub const PREFIX: &str = "wsl-";

/// A home router's NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Routing only (the LAN is reachable, the firewall still drops unsolicited inbound).
    None,
    /// `MASQUERADE`: endpoint-independent mapping, port preserving.
    Cone,
    /// `MASQUERADE --random-fully`: a new port per destination.
    Symmetric,
}

/// Conditions on each link of the core router.
#[derive(Debug, Clone, Copy, Default)]
pub struct Links {
    /// One-way delay per link, in milliseconds.
    pub delay_ms: u32,
    /// Loss per link, in percent.
    pub loss_pct: f64,
}

/// A home line's access link, on both home routers: rate-limited each way by a token
/// bucket filter (`tc tbf`) with a finite queue, as a home router's WAN port (uplink) and
/// the ISP's side of the line (downlink, on the core router's link to the home router).
/// The relay's and the STUN server's links stay unlimited, so the relayed and the direct
/// path cross the same access queues.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Access {
    /// Home → internet, kbit/s.
    pub up_kbit: u32,
    /// Internet → home, kbit/s.
    pub down_kbit: u32,
    /// Each queue holds this many milliseconds at its link's rate.
    pub buffer_ms: u32,
}

/// What the four access queues did (summed), from their `tc -s` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueStats {
    /// Bytes sent on (left the queues for) the links.
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets the queues dropped (full).
    pub dropped: u64,
}

impl std::ops::Sub for QueueStats {
    type Output = QueueStats;
    fn sub(self, earlier: QueueStats) -> QueueStats {
        QueueStats {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            packets: self.packets.saturating_sub(earlier.packets),
            dropped: self.dropped.saturating_sub(earlier.dropped),
        }
    }
}

/// The access queues: (namespace, device) of r1's and r2's uplinks and downlinks.
const ACCESS_QUEUES: [(&str, &str); 4] =
    [("r1", "wan"), ("r2", "wan"), ("core", "r1"), ("core", "r2")];

/// IPv6 in the lab: global addresses (`2001:db8::/32`, no NAT) where asked for, behind the
/// same stateful firewall on each home router as IPv4.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V6 {
    /// p1's LAN has IPv6.
    pub p1: bool,
    /// p2's LAN has IPv6. A peer whose LAN has none has IPv6 turned off.
    pub p2: bool,
    /// Both home routers drop all IPv6 UDP (a firewall that only lets TCP through).
    pub drop_udp: bool,
}

impl V6 {
    /// IPv6 on both LANs.
    pub const BOTH: V6 = V6 {
        p1: true,
        p2: true,
        drop_udp: false,
    };
    /// No IPv6 anywhere (the default, and [`Lab::up`]'s).
    pub const NONE: V6 = V6 {
        p1: false,
        p2: false,
        drop_udp: false,
    };
}

/// IPv6 addresses (with [`V6`]).
pub const P1_IP6: &str = "2001:db8:1::2";
pub const P2_IP6: &str = "2001:db8:2::2";

/// The TURN credentials coturn is started with.
pub const TURN_USER: &str = "lab";
pub const TURN_PASS: &str = "labpass";

/// Addresses.
pub const RELAY_IP: &str = "198.51.100.2";
pub const STUN_IP: &str = "198.51.101.2";
pub const R1_WAN: &str = "203.0.113.2";
pub const R2_WAN: &str = "192.0.2.2";
pub const P1_IP: &str = "10.0.1.2";
pub const P2_IP: &str = "10.0.2.2";

/// Why the lab cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, iptables)".into());
    }
    for tool in [
        "ip",
        "iptables",
        "ip6tables",
        "conntrack",
        "turnserver",
        "tc",
        "ping",
        "iperf3",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "needs {tool} (apt-get install -y iproute2 iptables conntrack coturn iputils-ping iperf3)"
            ));
        }
    }
    None
}

/// This process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn ns(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "lab command failed: {cmd}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command in a namespace.
fn nsx(name: &str, cmd: &str) {
    sh(&format!("ip netns exec {} {cmd}", ns(name)));
}

/// Removes every namespace of the lab (idempotent; its links and processes go with it).
pub fn clean() {
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!(
                "for n in $(ip netns list | awk '{{print $1}}' | grep '^{PREFIX}'); do \
                 ip netns pids $n | xargs -r kill -9; ip netns del $n; done; \
                 for l in $(ip -o link show | awk -F': ' '{{print $2}}' | cut -d@ -f1 | grep '^wsl[0-9]'); do \
                 ip link del $l; done"
            ),
        ])
        .status();
}

/// A running lab; removed on drop.
pub struct Lab {
    turn: Option<Child>,
    netem: Option<Child>,
}

impl Lab {
    /// Builds the topology with these NATs and link conditions, and starts coturn.
    pub fn up(r1: Nat, r2: Nat, links: Links) -> Self {
        Self::up_dual(r1, r2, links, V6::NONE)
    }

    /// [`Lab::up`] with IPv6 per `v6` besides IPv4.
    pub fn up_dual(r1: Nat, r2: Nat, links: Links, v6: V6) -> Self {
        clean();
        let mut lab = Lab {
            turn: None,
            netem: None,
        };
        for n in ["core", "relay", "stun", "r1", "r2", "p1", "p2"] {
            sh(&format!("ip netns add {}", ns(n)));
            nsx(n, "ip link set lo up");
        }
        // (a, a's interface, a's address, b, b's interface, b's address), /24 each.
        let links_: [(&str, &str, &str, &str, &str, &str); 6] = [
            ("core", "relay", "198.51.100.1", "relay", "eth0", RELAY_IP),
            ("core", "stun", "198.51.101.1", "stun", "eth0", STUN_IP),
            ("core", "r1", "203.0.113.1", "r1", "wan", R1_WAN),
            ("core", "r2", "192.0.2.1", "r2", "wan", R2_WAN),
            ("r1", "lan", "10.0.1.1", "p1", "eth0", P1_IP),
            ("r2", "lan", "10.0.2.1", "p2", "eth0", P2_IP),
        ];
        for (i, (a, ai, aip, b, bi, bip)) in links_.iter().enumerate() {
            let (va, vb) = (format!("wsl{i}a"), format!("wsl{i}b"));
            sh(&format!("ip link add {va} type veth peer name {vb}"));
            sh(&format!("ip link set {va} netns {} name {ai}", ns(a)));
            sh(&format!("ip link set {vb} netns {} name {bi}", ns(b)));
            nsx(a, &format!("ip addr add {aip}/24 dev {ai}"));
            nsx(b, &format!("ip addr add {bip}/24 dev {bi}"));
            if v6 != V6::NONE {
                // No duplicate address detection for the link-local addresses either:
                // while they are tentative (1-2 s after the link comes up) neighbor
                // discovery cannot run, and the first IPv6 packets wait for it.
                nsx(a, &format!("sysctl -qw net.ipv6.conf.{ai}.accept_dad=0"));
                nsx(b, &format!("sysctl -qw net.ipv6.conf.{bi}.accept_dad=0"));
            }
            nsx(a, &format!("ip link set {ai} up"));
            nsx(b, &format!("ip link set {bi} up"));
        }
        for (host, gw) in [
            ("relay", "198.51.100.1"),
            ("stun", "198.51.101.1"),
            ("r1", "203.0.113.1"),
            ("r2", "192.0.2.1"),
            ("p1", "10.0.1.1"),
            ("p2", "10.0.2.1"),
        ] {
            nsx(host, &format!("ip route add default via {gw}"));
        }
        for router in ["core", "r1", "r2"] {
            nsx(router, "sysctl -qw net.ipv4.ip_forward=1");
        }
        for (router, nat, lan, wan_ip) in [
            ("r1", r1, "10.0.1.0/24", R1_WAN),
            ("r2", r2, "10.0.2.0/24", R2_WAN),
        ] {
            match nat {
                Nat::None => nsx("core", &format!("ip route add {lan} via {wan_ip}")),
                Nat::Cone => nsx(
                    router,
                    "iptables -t nat -A POSTROUTING -o wan -j MASQUERADE",
                ),
                Nat::Symmetric => nsx(
                    router,
                    "iptables -t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully",
                ),
            }
            // A home router's stateful firewall: replies in, nothing unsolicited.
            nsx(
                router,
                "iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            );
            nsx(router, "iptables -A FORWARD -i wan -o lan -j DROP");
            nsx(
                router,
                "iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            );
            nsx(router, "iptables -A INPUT -i wan -j DROP");
        }
        if v6 != V6::NONE {
            ipv6(v6);
        }
        if links.delay_ms > 0 || links.loss_pct > 0.0 {
            // A forwarded packet crosses two links of the core router.
            let loss_two = 100.0 * (1.0 - (1.0 - links.loss_pct / 100.0).powi(2));
            lab.netem = Some(start_netem(
                &ns("core"),
                2 * links.delay_ms,
                loss_two,
                "-t mangle -A FORWARD",
            ));
            if v6 != V6::NONE {
                nsx(
                    "core",
                    "ip6tables -t mangle -A FORWARD -j NFQUEUE --queue-num 0",
                );
            }
        }
        // STUN and TURN (long-term credentials), no config file.
        let turn = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns("stun"),
                "turnserver",
                "-n",
                "--no-cli",
                "--no-tls",
            ])
            .args(["--no-dtls", "-L", STUN_IP, "-E", STUN_IP, "--lt-cred-mech"])
            .args([
                "--realm",
                "lab",
                "--user",
                &format!("{TURN_USER}:{TURN_PASS}"),
            ])
            .args([
                "--userdb",
                &format!("/tmp/{PREFIX}turndb"),
                "--log-file",
                "stdout",
            ])
            .args([
                "--min-port",
                "49152",
                "--max-port",
                "49999",
                "--no-multicast-peers",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        lab.turn = Some(turn);
        wait_for_udp(&ns("stun"), 3478);
        lab
    }

    /// Rate-limits both home routers' access links per `access` (see [`Access`]), and lets
    /// ICMP echo requests from the internet reach r1 (so p2 can ping r1's WAN address across
    /// all four access queues while a transfer runs).
    pub fn limit_access(&self, access: Access) {
        for (netns, dev) in ACCESS_QUEUES {
            let kbit = if netns == "core" {
                access.down_kbit
            } else {
                access.up_kbit
            };
            let rate = u64::from(kbit) * 1000 / 8;
            // A burst of 1 ms at the rate, at least two full-size packets; the queue holds
            // `buffer_ms` at the rate, at least two full-size packets too.
            let burst = (rate / 1000).max(3028);
            let limit = (rate * u64::from(access.buffer_ms) / 1000).max(3028);
            nsx(
                netns,
                &format!("tc qdisc replace dev {dev} root tbf rate {kbit}kbit burst {burst} limit {limit}"),
            );
        }
        nsx(
            "r1",
            "iptables -I INPUT -i wan -p icmp --icmp-type echo-request -j ACCEPT",
        );
    }

    /// The four access queues' counters, summed (all zero without [`Lab::limit_access`]).
    pub fn access_stats(&self) -> QueueStats {
        let mut sum = QueueStats::default();
        for (netns, dev) in ACCESS_QUEUES {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns(netns),
                    "tc",
                    "-s",
                    "-j",
                    "qdisc",
                    "show",
                ])
                .args(["dev", dev])
                .output()
                .expect("tc");
            let qdiscs: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            let Some(tbf) = qdiscs
                .as_array()
                .and_then(|q| q.iter().find(|q| q["kind"] == "tbf"))
            else {
                continue;
            };
            let n = |k: &str| tbf[k].as_u64().unwrap_or(0);
            sum.bytes += n("bytes");
            sum.packets += n("packets");
            sum.dropped += n("drops");
        }
        sum
    }

    /// The namespace of a host: `relay`, `stun`, `p1`, `p2`.
    pub fn ns(&self, host: &str) -> String {
        ns(host)
    }

    /// Forwards TCP `port` of r1's WAN address to p1 and lets it through r1's firewall (a
    /// port forward, as for a server at home), so p2 can reach a TCP server in p1 at
    /// `R1_WAN:port` across the same core router as the peers' traffic.
    pub fn forward_tcp_to_p1(&self, port: u16) {
        nsx(
            "r1",
            &format!(
                "iptables -t nat -A PREROUTING -i wan -p tcp --dport {port} -j DNAT --to-destination {P1_IP}"
            ),
        );
        nsx(
            "r1",
            &format!("iptables -I FORWARD -i wan -o lan -p tcp --dport {port} -j ACCEPT"),
        );
    }
}

/// Adds IPv6 to the lab's routers and the LANs `v6` names: global addresses, routed by the
/// core without NAT, each home router's firewall letting in only replies (IPv6 UDP dropped
/// altogether with `v6.drop_udp`). Addresses skip duplicate address detection (`nodad`) so
/// they can be bound at once.
fn ipv6(v6: V6) {
    let addr = |host: &str, ip: &str, dev: &str| {
        nsx(host, &format!("ip -6 addr add {ip}/64 dev {dev} nodad"));
    };
    for router in ["core", "r1", "r2"] {
        nsx(router, "sysctl -qw net.ipv6.conf.all.forwarding=1");
    }
    for (router, n, lan_on) in [("r1", 1, v6.p1), ("r2", 2, v6.p2)] {
        addr("core", &format!("2001:db8:a{n}::1"), router);
        addr(router, &format!("2001:db8:a{n}::2"), "wan");
        nsx(
            router,
            &format!("ip -6 route add default via 2001:db8:a{n}::1"),
        );
        nsx(
            "core",
            &format!("ip -6 route add 2001:db8:{n}::/64 via 2001:db8:a{n}::2"),
        );
        let host = format!("p{n}");
        if lan_on {
            addr(router, &format!("2001:db8:{n}::1"), "lan");
            addr(&host, &format!("2001:db8:{n}::2"), "eth0");
            nsx(
                &host,
                &format!("ip -6 route add default via 2001:db8:{n}::1"),
            );
        } else {
            // A host with IPv6 turned off altogether (not even `::1`).
            nsx(&host, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
        }
        nsx(
            router,
            "ip6tables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        );
        nsx(router, "ip6tables -A FORWARD -i wan -o lan -j DROP");
        if v6.drop_udp {
            nsx(router, "ip6tables -I FORWARD -p udp -j DROP");
        }
    }
}

/// Starts `lab-netem` in `netns` (delay in ms, loss in percent) and sends the packets of the
/// iptables chain `chain` (e.g. `-t mangle -A FORWARD`) through it; returns once it is ready.
pub fn start_netem(netns: &str, delay_ms: u32, loss_pct: f64, chain: &str) -> Child {
    let mut netem = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(super::procs::example("lab-netem"))
        .args(["--queue", "0", "--delay-ms", &delay_ms.to_string()])
        .args(["--loss", &format!("{loss_pct:.4}")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lab-netem");
    let mut ready = String::new();
    if let Some(out) = netem.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut ready);
    }
    assert_eq!(ready.trim(), "ready", "lab-netem did not start in {netns}");
    sh(&format!(
        "ip netns exec {netns} iptables {chain} -j NFQUEUE --queue-num 0"
    ));
    netem
}

/// Waits until something listens on this UDP port in the namespace.
fn wait_for_udp(netns: &str, port: u16) {
    wait_for_port(netns, "-uln", port);
}

/// Waits until something listens on this TCP port in the namespace.
pub fn wait_for_tcp(netns: &str, port: u16) {
    wait_for_port(netns, "-tln", port);
}

/// Waits until `ss <flags>` in the namespace lists this local port.
fn wait_for_port(netns: &str, flags: &str, port: u16) {
    for _ in 0..200 {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "ss", flags])
            .output()
            .expect("ss");
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing listens on port {port} (ss {flags}) in {netns}");
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in [self.turn.as_mut(), self.netem.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        clean();
    }
}
