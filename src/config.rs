//! Configuration of WebRTC sessions and connections.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::direct::framing::{MAX_FRAME_SIZE, MIN_FRAME_SIZE};
use crate::Error;

/// webrtc-rs's SCTP packet budget: a TURN-relayed IPv6 path at the minimum MTU.
const DEFAULT_SCTP_MTU: u32 = 1191;
/// A jumbo-frame path's budget, with room for the headers.
const MAX_SCTP_MTU: u32 = 8192;
/// [`Config::sctp_max_mtu`]'s default: an Ethernet path, direct or through TURN.
const DEFAULT_SCTP_MAX_MTU: u32 = 1428;
const MIN_SCTP_WINDOW: u32 = 64 * 1024;
const MAX_SCTP_WINDOW: u32 = 64 * 1024 * 1024;

/// A STUN or TURN server used to gather ICE candidates.
///
/// ```
/// use libp2p_webrtc_signal::IceServer;
/// let stun = IceServer::stun("stun:stun.example.org:3478");
/// let turn = IceServer::turn("turn:turn.example.org:3478?transport=udp", "user", "secret");
/// assert_eq!(turn.username.as_deref(), Some("user"));
/// # let _ = stun;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port` or `turn:host:port[?transport=udp]` URLs.
    pub urls: Vec<String>,
    /// TURN long-term credential user name.
    pub username: Option<String>,
    /// TURN long-term credential password.
    pub credential: Option<String>,
}

impl IceServer {
    /// A STUN server.
    pub fn stun(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            username: None,
            credential: None,
        }
    }

    /// A TURN server with a long-term credential.
    pub fn turn(
        url: impl Into<String>,
        username: impl Into<String>,
        credential: impl Into<String>,
    ) -> Self {
        Self {
            urls: vec![url.into()],
            username: Some(username.into()),
            credential: Some(credential.into()),
        }
    }
}

/// Configuration of the WebRTC layer: ICE, sockets, timers and per-connection limits.
///
/// Every limit has a documented default and is enforced. Build one with the `with_*` methods:
///
/// ```
/// use std::time::Duration;
/// use libp2p_webrtc_signal::{Config, IceServer};
///
/// let config = Config::default()
///     .with_ice_servers(vec![IceServer::stun("stun:stun.example.org:3478")])
///     .with_max_streams(128)
///     .with_fin_ack_timeout(Duration::from_secs(2));
/// assert_eq!(config.max_streams, 128);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// STUN/TURN servers. Default: none (host candidates only; no public servers are used
    /// unless you configure them).
    pub ice_servers: Vec<IceServer>,
    /// Use only TURN relay candidates (no host or server-reflexive ones): hides this node's
    /// addresses from the peer, at the cost of relaying all traffic. Without a TURN server in
    /// [`Config::ice_servers`] no path can be found. Default: `false`.
    pub relay_only: bool,
    /// The circuit relay of each relayed connection is asked for this node's public address
    /// too: an upgrade's ICE servers are [`Config::ice_servers`] followed by
    /// `stun:<relay host>:<port>`, with the host the relayed address names (a relay running
    /// [`crate::StunResponder`] answers there; one that does not just stays silent). Loopback
    /// relays are skipped. `None`: only the configured servers. Default:
    /// `Some(`[`crate::DEFAULT_STUN_PORT`]`)` (3478).
    pub relay_stun_port: Option<u16>,
    /// Local UDP addresses to bind, one socket each. A wildcard address binds every
    /// interface address of its family but loopback and link-local ones, each a host
    /// candidate; a wildcard of a family this host has no such address of is skipped (no
    /// error, no delay). Default: `0.0.0.0:0` and `[::]:0`, dual stack: where IPv4 NATs
    /// block hole punching, IPv6 often connects directly through stateful firewalls.
    pub udp_bind_addrs: Vec<SocketAddr>,
    /// Gather loopback host candidates (needed to connect two peers on `127.0.0.1`).
    /// Default: `false`.
    pub allow_loopback_candidates: bool,
    /// `SO_RCVBUF`/`SO_SNDBUF` of every UDP socket, in bytes. Small kernel defaults
    /// (~208 KiB) drop packets under load and collapse throughput. Default: 4 MiB.
    pub udp_socket_buffer: usize,
    /// DTLS records held per UDP socket while ICE is not connected yet, handed to the DTLS
    /// handshake once it is. webrtc-rs drops them otherwise, and a remote that finishes ICE
    /// first (js-libp2p in Node.js) then retransmits its ClientHello a second later.
    /// Records past the limit are dropped; 0 holds none. Default: 16.
    pub early_dtls_records: usize,
    /// Interval between ICE connectivity checks. Default: 20 ms (webrtc-rs: 200 ms).
    ///
    /// Each tick checks every pair still in progress, and the controlling (offering) side
    /// nominates a working pair only on the tick after it worked: the answering side's ICE,
    /// and so DTLS, waits up to one interval. At 50 ms that interval was most of a loopback
    /// upgrade (55 ms p50 against 20 ms at this default; BENCHMARKS.md).
    pub ice_check_interval: Duration,
    /// Connectivity checks per candidate pair before it is given up. Default: 100
    /// (2 s at the default interval).
    pub ice_max_binding_requests: u16,
    /// Time without any packet from the remote before the connection counts as
    /// disconnected. Default: 2 s.
    pub ice_disconnected_timeout: Duration,
    /// Time disconnected before the connection fails and is closed: a path that drops every
    /// packet is declared dead after `ice_disconnected_timeout + ice_failed_timeout`
    /// (default 5 s), and the peer falls back to the relay ([`Event::DirectLost`]).
    /// Default: 3 s.
    ///
    /// [`Event::DirectLost`]: crate::Event::DirectLost
    pub ice_failed_timeout: Duration,
    /// Interval of ICE keep-alives (consent checks) on the selected pair; both sides send
    /// them, so an idle healthy path carries a packet each way per interval. Default: 1 s.
    pub ice_keepalive_interval: Duration,
    /// How long a working pair through a TURN server waits before it may be nominated, so
    /// that a direct pair that works too can win first (the first nominated pair stays).
    /// webrtc-rs waits 2 s; a pair through TURN becomes valid after the TURN allocation and
    /// its permission, later than direct pairs anyway (with TURN configured, cone/cone in
    /// the lab chose a direct pair in 8 runs of 8 without a wait), so the default does not
    /// wait: where only TURN works, the upgrade is 2 s shorter. Must be below
    /// `upgrade_timeout`. Default: 0.
    pub ice_relay_acceptance_wait: Duration,
    /// Remote ICE candidates accepted per session; more is a protocol error. Default: 64.
    pub max_remote_candidates: usize,
    /// Concurrent streams (data channels) per connection, both directions together.
    /// Inbound ones over the limit are closed at once; outbound ones wait. Default: 512.
    pub max_streams: usize,
    /// Largest frame sent or accepted on a stream, length prefix included; a larger inbound
    /// frame resets that stream. Range 64 B ..= 16 KiB (the spec's maximum). Default: 16 KiB.
    pub max_frame_size: usize,
    /// Bytes a stream may hand to the data channel before writers wait (back-pressure).
    /// Default: 1 MiB.
    pub stream_send_buffer: usize,
    /// Bytes a stream buffers from the remote while its owner is not reading, e.g. while
    /// waiting for `FIN_ACK` in `close`. Past it, the stream stops reading. Default: 1 MiB.
    pub stream_receive_buffer: usize,
    /// How long closing a stream waits for the remote's `FIN_ACK`. Default: 5 s.
    pub fin_ack_timeout: Duration,
    /// Size budget of each SCTP data packet, in bytes; each becomes one DTLS record in one
    /// UDP datagram (~37 B DTLS and 28 B IPv4/UDP on top). Range 1191 ..= 8192.
    /// Default: 1191, webrtc-rs's choice, which fits a TURN-relayed IPv6 path at the
    /// minimum MTU of 1280. Raise it only where every path is known to carry more
    /// (e.g. 1400 on Ethernet without TURN or tunnels): fewer, larger packets cost less CPU
    /// per byte. Packets too large for the path are dropped, and SCTP has no path-MTU
    /// discovery here, so the connection would stall.
    pub sctp_mtu: u32,
    /// The largest SCTP packet, in bytes, that path MTU discovery may raise the packet size
    /// to (RFC 8899: HEARTBEAT probes padded with PAD chunks, all sizes of a short ladder in
    /// one round trip; the largest size answered is used, and a peer that does not answer
    /// keeps [`Config::sctp_mtu`]). 1428 fits an Ethernet path (MTU 1500), IPv4 or IPv6,
    /// direct or through a TURN relay: in an echo 19% fewer packets for the same data and
    /// 3-6% fewer bytes on the wire; 12-26% more throughput on loopback (BENCHMARKS.md
    /// sections 2 and 8).
    ///
    /// If the path's MTU falls under a live connection (an ICE restart onto a network of
    /// smaller MTU, a VPN coming up), the DATA already sent at the larger size cannot be cut
    /// again: the connection then sends without "don't fragment" until the peer has those
    /// chunks, so IP fragments them (over IPv4 always, over IPv6 where the host learned the
    /// path's MTU), and searches again afterwards. Data not yet sent is cut again.
    ///
    /// 0, or a value at most `sctp_mtu`: no probing. Range 0 or 1191 ..= 8192.
    /// Default: 1428.
    pub sctp_max_mtu: u32,
    /// The SCTP receive window (`a_rwnd`) per connection, in bytes: how much unacknowledged
    /// data the remote may have in flight towards this side, for all streams together.
    /// A bandwidth-delay-product ceiling: 1 MiB carries 80 MiB/s at 12.5 ms RTT. Range
    /// 64 KiB ..= 64 MiB. Default: 1 MiB.
    pub sctp_receive_window: u32,
    /// How many times one SCTP DATA chunk may be retransmitted before the direct connection
    /// is aborted (the remote gets an SCTP ABORT; the connection closes as if the path had
    /// failed). It bounds what a remote that acknowledges every chunk but one can make this
    /// side resend: without it, a 256-chunk window was resent about 60 times over. A path
    /// that loses the same chunk this often is not usable either. Range 1 ..= 100.
    /// Default: 10, RFC 9260's Association.Max.Retrans.
    pub sctp_max_retransmissions: u32,
    /// How long an outbound stream's data channel may take to open before the stream moves
    /// to a fresh channel (nothing is lost: no data was sent on it). Default: 2 s.
    pub stream_open_timeout: Duration,
    /// How long an inbound stream's data channel may stay without its first message; then it
    /// is closed and its slot of [`Config::max_streams`] freed. In libp2p the opener writes
    /// first (multistream-select), so an honest channel carries a message within a round
    /// trip or two; an idle one only holds a slot. Default: 10 s.
    pub inbound_stream_timeout: Duration,

    /// Upgrade relayed connections as soon as they are established. When off, only relayed
    /// connections dialed as `<relay>/p2p-circuit/webrtc/p2p/<peer>` are upgraded.
    /// Default: `true`.
    pub auto_upgrade: bool,
    /// Largest signaling message accepted (SDP offer/answer, one candidate), length prefix
    /// excluded; a larger one fails the upgrade. Default: 64 KiB (a webrtc-rs SDP is ~1 KiB,
    /// a browser's a few KiB).
    pub max_signaling_message_size: usize,
    /// Upgrades (signaling plus ICE/DTLS) running at once on this node, both roles together.
    /// An inbound upgrade over it is refused (stream reset); an outbound one fails and is
    /// retried. Default: 16.
    pub max_concurrent_upgrades: usize,
    /// Upgrades running at once with one remote peer, both roles together and across all its
    /// relayed connections: one peer cannot take every slot of
    /// [`Config::max_concurrent_upgrades`]. Over it, as there. Default: 2 (a glare over two
    /// relayed connections runs two at once, briefly).
    pub max_concurrent_upgrades_per_peer: usize,
    /// Time the negotiation of a signaling stream on the relayed connection may take
    /// (multistream-select, for the streams this side opens and the streams the remote
    /// opens); then the attempt fails with [`Error::Timeout`](crate::Error::Timeout) and the
    /// stream is dropped. Part of [`Config::upgrade_timeout`] for the side that opens it.
    /// Default: 10 s.
    pub signaling_stream_timeout: Duration,
    /// Time one upgrade attempt may take, from opening the signaling stream to the verified
    /// direct connection. Default: 30 s (well inside a relay circuit's default 2 minutes).
    pub upgrade_timeout: Duration,
    /// How long a relayed connection may keep running after its peer was upgraded, for
    /// streams still open on it; then the side that dialed it closes it. The other side
    /// waits at least [`Config::upgrade_timeout`] before it closes it too: its own side of
    /// the direct connection can be up while the dialer's is not yet (a lost handshake packet
    /// on a lossy path), and the dialer's attempt must not lose its relay. It closes earlier
    /// when it is idle (no streams and no handler keeping it alive). Default: 10 s.
    pub drain_timeout: Duration,
    /// Attempts per relayed connection, the first included; after a failure the offering
    /// side tries again after [`Config::retry_backoff`], doubled per attempt. Default: 3.
    pub max_upgrade_attempts: u32,
    /// Delay before the first retry of a failed upgrade. Default: 1 s.
    pub retry_backoff: Duration,
    /// After a round of [`Config::max_upgrade_attempts`] failed, the offering side starts a
    /// new round after this delay, doubled per failed round up to 8×, for as long as the
    /// relayed connection lives (the path may come back). Zero: no later rounds.
    /// Default: 60 s.
    pub upgrade_round_backoff: Duration,
    /// When direct connections to a peer died twice or more within this window, the next
    /// upgrade waits [`Config::upgrade_round_backoff`] (doubled per further loss, up to 8×)
    /// and the peer stays on the relay meanwhile, so a path that keeps dying (or a remote
    /// that lets it die on purpose) does not cost a redial and an upgrade every few seconds.
    /// Upgrades do not reset the count. Default: 10 minutes.
    pub flap_window: Duration,
    /// Upgrade attempts the remote may start (offer) on one relayed connection within
    /// [`Config::remote_offer_window`]; past it, its offers are refused
    /// ([`Event::UpgradeFailed`](crate::Event::UpgradeFailed) with
    /// [`ProtocolViolation::OverLimit`](crate::ProtocolViolation::OverLimit)). Each answered
    /// offer costs a peer connection, UDP sockets and STUN gathering. An honest remote starts
    /// [`Config::max_upgrade_attempts`] per round, a round per
    /// [`Config::upgrade_round_backoff`]. Default: 6.
    pub max_remote_offers: u32,
    /// The window of [`Config::max_remote_offers`]. Default: 60 s.
    pub remote_offer_window: Duration,
    /// ICE restarts the remote may start on one relayed connection, in its lifetime; past
    /// it they are refused ([`Event::RestartFailed`](crate::Event::RestartFailed) with
    /// [`ProtocolViolation::OverLimit`](crate::ProtocolViolation::OverLimit)) and the
    /// connection keeps its drain schedule. Each restart keeps the relayed connection open
    /// while it runs (up to [`Config::upgrade_timeout`]), so this bounds how long a remote
    /// can hold the relay after an upgrade. An honest remote restarts on a fresh relayed
    /// connection each time the direct path dies. Default: 3.
    pub max_remote_restarts: u32,
    /// Redials of the relayed address after the direct connection died, by the side that
    /// dialed the relayed connection. Default: 5.
    pub max_redials: u32,
    /// Delay before the second redial (the first is immediate), doubled for each further
    /// one. Default: 1 s.
    pub redial_backoff: Duration,
    /// When the direct connection's path goes quiet (nothing received for
    /// [`Config::ice_disconnected_timeout`]), the side that dialed the relayed connection
    /// restarts ICE over a relayed connection (dialing the relayed address again if needed),
    /// so that a path that changed (a new NAT mapping, a new local address) carries the same
    /// connection and its streams. A restart that fails changes nothing; a path that stays
    /// dead still falls back as [`Event::DirectLost`](crate::Event::DirectLost) says. At most
    /// one restart runs per peer, bounded by [`Config::upgrade_timeout`]. Default: `true`.
    pub ice_restart: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            relay_only: false,
            relay_stun_port: Some(crate::DEFAULT_STUN_PORT),
            udp_bind_addrs: vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            ],
            allow_loopback_candidates: false,
            udp_socket_buffer: 4 * 1024 * 1024,
            early_dtls_records: 16,
            ice_check_interval: Duration::from_millis(20),
            ice_max_binding_requests: 100,
            ice_disconnected_timeout: Duration::from_secs(2),
            ice_failed_timeout: Duration::from_secs(3),
            ice_keepalive_interval: Duration::from_secs(1),
            ice_relay_acceptance_wait: Duration::ZERO,
            max_remote_candidates: 64,
            max_streams: 512,
            max_frame_size: MAX_FRAME_SIZE,
            stream_send_buffer: 1024 * 1024,
            stream_receive_buffer: 1024 * 1024,
            fin_ack_timeout: Duration::from_secs(5),
            sctp_mtu: DEFAULT_SCTP_MTU,
            sctp_max_mtu: DEFAULT_SCTP_MAX_MTU,
            sctp_receive_window: 1024 * 1024,
            sctp_max_retransmissions: 10,
            stream_open_timeout: Duration::from_secs(2),
            inbound_stream_timeout: Duration::from_secs(10),
            auto_upgrade: true,
            max_signaling_message_size: 64 * 1024,
            max_concurrent_upgrades: 16,
            max_concurrent_upgrades_per_peer: 2,
            signaling_stream_timeout: Duration::from_secs(10),
            upgrade_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            max_upgrade_attempts: 3,
            retry_backoff: Duration::from_secs(1),
            upgrade_round_backoff: Duration::from_secs(60),
            flap_window: Duration::from_secs(600),
            max_remote_offers: 6,
            remote_offer_window: Duration::from_secs(60),
            max_remote_restarts: 3,
            max_redials: 5,
            redial_backoff: Duration::from_secs(1),
            ice_restart: true,
        }
    }
}

impl Config {
    /// Sets [`Config::ice_servers`].
    pub fn with_ice_servers(mut self, servers: Vec<IceServer>) -> Self {
        self.ice_servers = servers;
        self
    }

    /// Sets [`Config::udp_bind_addrs`].
    pub fn with_udp_bind_addrs(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.udp_bind_addrs = addrs;
        self
    }

    /// Sets [`Config::allow_loopback_candidates`].
    pub fn with_loopback_candidates(mut self, allow: bool) -> Self {
        self.allow_loopback_candidates = allow;
        self
    }

    /// Sets [`Config::udp_socket_buffer`].
    pub fn with_udp_socket_buffer(mut self, bytes: usize) -> Self {
        self.udp_socket_buffer = bytes;
        self
    }

    /// Sets [`Config::early_dtls_records`].
    pub fn with_early_dtls_records(mut self, records: usize) -> Self {
        self.early_dtls_records = records;
        self
    }

    /// Sets [`Config::ice_check_interval`] and [`Config::ice_max_binding_requests`].
    pub fn with_ice_checks(mut self, interval: Duration, max_binding_requests: u16) -> Self {
        self.ice_check_interval = interval;
        self.ice_max_binding_requests = max_binding_requests;
        self
    }

    /// Sets [`Config::ice_disconnected_timeout`], [`Config::ice_failed_timeout`] and
    /// [`Config::ice_keepalive_interval`].
    pub fn with_ice_timeouts(
        mut self,
        disconnected: Duration,
        failed: Duration,
        keepalive: Duration,
    ) -> Self {
        self.ice_disconnected_timeout = disconnected;
        self.ice_failed_timeout = failed;
        self.ice_keepalive_interval = keepalive;
        self
    }

    /// Sets [`Config::ice_relay_acceptance_wait`].
    pub fn with_ice_relay_acceptance_wait(mut self, wait: Duration) -> Self {
        self.ice_relay_acceptance_wait = wait;
        self
    }

    /// Sets [`Config::upgrade_round_backoff`].
    pub fn with_upgrade_round_backoff(mut self, backoff: Duration) -> Self {
        self.upgrade_round_backoff = backoff;
        self
    }

    /// Sets [`Config::max_redials`] and [`Config::redial_backoff`].
    pub fn with_redials(mut self, max: u32, backoff: Duration) -> Self {
        self.max_redials = max;
        self.redial_backoff = backoff;
        self
    }

    /// Sets [`Config::ice_restart`].
    ///
    /// ```
    /// let config = libp2p_webrtc_signal::Config::default().with_ice_restart(false);
    /// assert!(!config.ice_restart);
    /// ```
    pub fn with_ice_restart(mut self, enabled: bool) -> Self {
        self.ice_restart = enabled;
        self
    }

    /// Sets [`Config::inbound_stream_timeout`].
    pub fn with_inbound_stream_timeout(mut self, timeout: Duration) -> Self {
        self.inbound_stream_timeout = timeout;
        self
    }

    /// Sets [`Config::signaling_stream_timeout`].
    pub fn with_signaling_stream_timeout(mut self, timeout: Duration) -> Self {
        self.signaling_stream_timeout = timeout;
        self
    }

    /// Sets [`Config::max_concurrent_upgrades_per_peer`].
    pub fn with_max_concurrent_upgrades_per_peer(mut self, n: usize) -> Self {
        self.max_concurrent_upgrades_per_peer = n;
        self
    }

    /// Sets [`Config::max_remote_candidates`].
    pub fn with_max_remote_candidates(mut self, n: usize) -> Self {
        self.max_remote_candidates = n;
        self
    }

    /// Sets [`Config::max_streams`].
    pub fn with_max_streams(mut self, n: usize) -> Self {
        self.max_streams = n;
        self
    }

    /// Sets [`Config::max_frame_size`].
    pub fn with_max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`Config::stream_send_buffer`].
    pub fn with_stream_send_buffer(mut self, bytes: usize) -> Self {
        self.stream_send_buffer = bytes;
        self
    }

    /// Sets [`Config::stream_receive_buffer`].
    pub fn with_stream_receive_buffer(mut self, bytes: usize) -> Self {
        self.stream_receive_buffer = bytes;
        self
    }

    /// Sets [`Config::fin_ack_timeout`].
    pub fn with_fin_ack_timeout(mut self, timeout: Duration) -> Self {
        self.fin_ack_timeout = timeout;
        self
    }

    /// Sets [`Config::stream_open_timeout`].
    pub fn with_stream_open_timeout(mut self, timeout: Duration) -> Self {
        self.stream_open_timeout = timeout;
        self
    }

    /// Sets [`Config::relay_stun_port`].
    ///
    /// ```
    /// let config = libp2p_webrtc_signal::Config::default().with_relay_stun_port(None);
    /// assert_eq!(config.relay_stun_port, None);
    /// ```
    pub fn with_relay_stun_port(mut self, port: Option<u16>) -> Self {
        self.relay_stun_port = port;
        self
    }

    /// Sets [`Config::relay_only`].
    pub fn with_relay_only(mut self, on: bool) -> Self {
        self.relay_only = on;
        self
    }

    /// Sets [`Config::auto_upgrade`].
    pub fn with_auto_upgrade(mut self, on: bool) -> Self {
        self.auto_upgrade = on;
        self
    }

    /// Sets [`Config::max_signaling_message_size`].
    pub fn with_max_signaling_message_size(mut self, bytes: usize) -> Self {
        self.max_signaling_message_size = bytes;
        self
    }

    /// Sets [`Config::max_concurrent_upgrades`].
    pub fn with_max_concurrent_upgrades(mut self, n: usize) -> Self {
        self.max_concurrent_upgrades = n;
        self
    }

    /// Sets [`Config::upgrade_timeout`].
    pub fn with_upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// Sets [`Config::drain_timeout`].
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Sets [`Config::sctp_mtu`].
    pub fn with_sctp_mtu(mut self, bytes: u32) -> Self {
        self.sctp_mtu = bytes;
        self
    }

    /// Sets [`Config::sctp_max_mtu`].
    ///
    /// ```
    /// use libp2p_webrtc_signal::Config;
    /// // Discovery is on by default, up to 1428-byte packets.
    /// assert_eq!(Config::default().sctp_max_mtu, 1428);
    /// // A lower ceiling, e.g. for links inside a 1420-byte tunnel.
    /// assert!(Config::default().with_sctp_max_mtu(1348).validate().is_ok());
    /// // Off: every packet at `sctp_mtu`.
    /// assert!(Config::default().with_sctp_max_mtu(0).validate().is_ok());
    /// ```
    pub fn with_sctp_max_mtu(mut self, bytes: u32) -> Self {
        self.sctp_max_mtu = bytes;
        self
    }

    /// Sets [`Config::sctp_receive_window`].
    pub fn with_sctp_receive_window(mut self, bytes: u32) -> Self {
        self.sctp_receive_window = bytes;
        self
    }

    /// Sets [`Config::sctp_max_retransmissions`].
    pub fn with_sctp_max_retransmissions(mut self, times: u32) -> Self {
        self.sctp_max_retransmissions = times;
        self
    }

    /// Sets [`Config::max_remote_offers`] and [`Config::remote_offer_window`].
    pub fn with_remote_offer_limit(mut self, max_offers: u32, window: Duration) -> Self {
        self.max_remote_offers = max_offers;
        self.remote_offer_window = window;
        self
    }

    /// Sets [`Config::flap_window`].
    pub fn with_flap_window(mut self, window: Duration) -> Self {
        self.flap_window = window;
        self
    }

    /// Sets [`Config::max_remote_restarts`].
    pub fn with_max_remote_restarts(mut self, max_restarts: u32) -> Self {
        self.max_remote_restarts = max_restarts;
        self
    }

    /// Sets [`Config::max_upgrade_attempts`] and [`Config::retry_backoff`].
    pub fn with_retries(mut self, max_attempts: u32, backoff: Duration) -> Self {
        self.max_upgrade_attempts = max_attempts;
        self.retry_backoff = backoff;
        self
    }

    /// Checks that the values can be used; called when a session is created.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::InvalidConfig(crate::Cause::new(msg)));
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&self.max_frame_size) {
            return bad(format!(
                "max_frame_size {} outside {MIN_FRAME_SIZE}..={MAX_FRAME_SIZE}",
                self.max_frame_size
            ));
        }
        if !(DEFAULT_SCTP_MTU..=MAX_SCTP_MTU).contains(&self.sctp_mtu) {
            return bad(format!(
                "sctp_mtu {} outside {DEFAULT_SCTP_MTU}..={MAX_SCTP_MTU}",
                self.sctp_mtu
            ));
        }
        if self.sctp_max_mtu != 0 && !(DEFAULT_SCTP_MTU..=MAX_SCTP_MTU).contains(&self.sctp_max_mtu)
        {
            return bad(format!(
                "sctp_max_mtu {} neither 0 nor within {DEFAULT_SCTP_MTU}..={MAX_SCTP_MTU}",
                self.sctp_max_mtu
            ));
        }
        if !(MIN_SCTP_WINDOW..=MAX_SCTP_WINDOW).contains(&self.sctp_receive_window) {
            return bad(format!(
                "sctp_receive_window {} outside {MIN_SCTP_WINDOW}..={MAX_SCTP_WINDOW}",
                self.sctp_receive_window
            ));
        }
        if self.max_remote_offers == 0 || self.remote_offer_window.is_zero() {
            return bad("max_remote_offers and remote_offer_window must be non-zero".into());
        }
        if !(1..=100).contains(&self.sctp_max_retransmissions) {
            return bad(format!(
                "sctp_max_retransmissions {} outside 1..=100",
                self.sctp_max_retransmissions
            ));
        }
        if self.udp_bind_addrs.is_empty() {
            return bad("udp_bind_addrs is empty".into());
        }
        if self.max_streams == 0 {
            return bad("max_streams is 0".into());
        }
        if self.stream_send_buffer == 0 || self.stream_receive_buffer == 0 {
            return bad("stream buffers must be non-zero".into());
        }
        if self.ice_check_interval.is_zero() || self.ice_max_binding_requests == 0 {
            return bad("ICE check interval and binding requests must be non-zero".into());
        }
        if self.ice_relay_acceptance_wait >= self.upgrade_timeout {
            return bad("ice_relay_acceptance_wait must be below upgrade_timeout".into());
        }
        if self.max_signaling_message_size < 1024 {
            return bad("max_signaling_message_size below 1 KiB cannot carry an SDP".into());
        }
        if self.max_concurrent_upgrades == 0
            || self.max_concurrent_upgrades_per_peer == 0
            || self.max_upgrade_attempts == 0
        {
            return bad(
                "max_concurrent_upgrades(_per_peer) and max_upgrade_attempts must be non-zero"
                    .into(),
            );
        }
        if self.inbound_stream_timeout.is_zero() {
            return bad("inbound_stream_timeout is 0".into());
        }
        if self.upgrade_timeout.is_zero() {
            return bad("upgrade_timeout is 0".into());
        }
        if self.signaling_stream_timeout.is_zero() {
            return bad("signaling_stream_timeout is 0".into());
        }
        for server in &self.ice_servers {
            for url in &server.urls {
                let scheme = url.split(':').next().unwrap_or_default();
                if !matches!(scheme, "stun" | "stuns" | "turn" | "turns") {
                    return bad(format!("ICE server URL {url:?} is not stun: or turn:"));
                }
                if scheme.starts_with("turn")
                    && (server.username.is_none() || server.credential.is_none())
                {
                    return bad(format!(
                        "TURN server {url:?} needs a username and credential"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn invalid_values_are_rejected() {
        let cases = [
            Config::default().with_max_frame_size(MAX_FRAME_SIZE + 1),
            Config::default().with_max_frame_size(10),
            Config::default().with_max_streams(0),
            Config::default().with_udp_bind_addrs(vec![]),
            Config::default().with_stream_send_buffer(0),
            Config::default().with_max_signaling_message_size(100),
            Config::default().with_max_concurrent_upgrades(0),
            Config::default().with_max_concurrent_upgrades_per_peer(0),
            Config::default().with_inbound_stream_timeout(Duration::ZERO),
            Config::default().with_retries(0, Duration::from_secs(1)),
            Config::default().with_upgrade_timeout(Duration::ZERO),
            Config::default().with_signaling_stream_timeout(Duration::ZERO),
            Config::default().with_sctp_mtu(1190),
            Config::default().with_sctp_mtu(MAX_SCTP_MTU + 1),
            Config::default().with_sctp_max_mtu(1190),
            Config::default().with_sctp_max_mtu(MAX_SCTP_MTU + 1),
            Config::default().with_sctp_receive_window(MIN_SCTP_WINDOW - 1),
            Config::default().with_sctp_receive_window(MAX_SCTP_WINDOW + 1),
            Config::default().with_sctp_max_retransmissions(0),
            Config::default().with_remote_offer_limit(0, Duration::from_secs(60)),
            Config::default().with_remote_offer_limit(6, Duration::ZERO),
            Config::default().with_sctp_max_retransmissions(101),
            Config::default().with_ice_servers(vec![IceServer::stun("http://x")]),
            Config::default().with_ice_relay_acceptance_wait(Duration::from_secs(30)),
            Config::default().with_ice_servers(vec![IceServer {
                urls: vec!["turn:x:3478".into()],
                username: None,
                credential: None,
            }]),
        ];
        for config in cases {
            assert!(
                matches!(config.validate(), Err(Error::InvalidConfig(_))),
                "{config:?}"
            );
        }
    }
}
