//! Patch tests: two associations over a simulated path with a fixed one-way delay and
//! random loss, on virtual time (deterministic; no sockets, no sleeping). They measure what
//! the loss-recovery patch changes: bulk transfer time on a lossy path, and how long a lost
//! single message (a ping) takes to arrive.

use super::*;
use crate::CongestionControl;
use crate::association::state::AssociationState;
use crate::association::stream::Stream;
use crate::chunk::chunk_payload_data::PayloadProtocolIdentifier;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

const SI: u16 = 1;
/// The messages the tests write (16 KiB, as a libp2p stream frames them).
static MESSAGE: [u8; 16 * 1024] = [0xa5; 16 * 1024];
const PPI: PayloadProtocolIdentifier = PayloadProtocolIdentifier::Binary;

/// One side: its endpoint, association and the datagrams on their way to it.
struct Side {
    endpoint: Endpoint,
    addr: SocketAddr,
    assoc: Option<(AssociationHandle, Association)>,
    inbound: VecDeque<(Instant, Bytes)>,
}

impl Side {
    fn new(port: u16, server: Option<Arc<ServerConfig>>) -> Self {
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        Side {
            endpoint: Endpoint::new(
                addr,
                TransportProtocol::UDP,
                Arc::new(EndpointConfig::default()),
                server,
            ),
            addr,
            assoc: None,
            inbound: VecDeque::new(),
        }
    }

    fn conn(&mut self) -> &mut Association {
        &mut self.assoc.as_mut().expect("association").1
    }

    /// Handles what arrived by `now` and timers due; returns what it sends.
    fn drive(&mut self, now: Instant, remote: SocketAddr) -> Vec<Bytes> {
        while self.inbound.front().is_some_and(|(at, _)| *at <= now) {
            let Some((at, data)) = self.inbound.pop_front() else {
                break;
            };
            match self.endpoint.handle(at, remote, None, data) {
                Some((ch, DatagramEvent::NewAssociation(conn))) => self.assoc = Some((ch, conn)),
                Some((_, DatagramEvent::AssociationEvent(event))) => {
                    if let Some((_, conn)) = self.assoc.as_mut() {
                        conn.handle_event(event);
                    }
                }
                None => {}
            }
        }
        let mut out = vec![];
        if let Some((ch, conn)) = self.assoc.as_mut() {
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.handle_timeout(now);
            }
            while let Some(event) = conn.poll_endpoint_event() {
                self.endpoint.handle_event(*ch, event);
            }
            while let Some(t) = conn.poll_transmit(now) {
                if let Payload::RawEncode(contents) = t.message {
                    out.extend(contents);
                }
            }
        }
        out
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let timer = self.assoc.as_ref().and_then(|(_, c)| c.poll_timeout());
        let inbound = self.inbound.front().map(|(at, _)| *at);
        match (timer, inbound) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Two associations over a path with `one_way` delay and `loss` (0..1) per datagram and
/// direction, from a seeded generator.
struct Path {
    client: Side,
    server: Side,
    now: Instant,
    one_way: Duration,
    loss: f64,
    seed: u64,
    dropped: usize,
    /// Datagrams larger than this are dropped (the path's MTU above UDP and DTLS).
    max_datagram: usize,
    /// Whether a datagram above `max_datagram` gets through (IP cuts it into fragments) when
    /// its sender's association says it needs that (`Association::needs_fragmentation`); how
    /// many did.
    fragments: bool,
    fragmented: usize,
    /// The largest datagram the client got through, and how many it sent.
    client_largest: usize,
    client_sent: usize,
    /// What crossed the path: datagrams, their bytes, and those that held only a SACK.
    datagrams: usize,
    bytes: usize,
    sack_only: usize,
    /// A bottleneck each way (`with_bottleneck`): its rate in bytes per second, how long its
    /// queue may grow, when each direction's link is next free (client's, server's), and
    /// what the queues dropped.
    rate: Option<f64>,
    buffer: Duration,
    free_at: [Instant; 2],
    queue_drops: usize,
}

impl Path {
    fn new(cc: CongestionControl, one_way: Duration, loss: f64, seed: u64) -> Self {
        Self::with_transport(
            TransportConfig::default().with_congestion_control(cc),
            one_way,
            loss,
            seed,
            usize::MAX,
        )
    }

    fn with_transport(
        transport: TransportConfig,
        one_way: Duration,
        loss: f64,
        seed: u64,
        max_datagram: usize,
    ) -> Self {
        let transport = Arc::new(transport);
        let server_config = Arc::new(ServerConfig {
            transport: Arc::clone(&transport),
            ..Default::default()
        });
        let mut path = Path {
            client: Side::new(5001, None),
            server: Side::new(5002, Some(server_config)),
            now: Instant::now(),
            one_way,
            loss: 0.0,
            seed: seed.max(1),
            dropped: 0,
            max_datagram,
            fragments: false,
            fragmented: 0,
            client_largest: 0,
            client_sent: 0,
            datagrams: 0,
            bytes: 0,
            sack_only: 0,
            rate: None,
            buffer: Duration::ZERO,
            free_at: [Instant::now(); 2],
            queue_drops: 0,
        };
        let now = path.now;
        let remote = path.server.addr;
        let (ch, conn) = path
            .client
            .endpoint
            .connect(now, ClientConfig { transport }, remote)
            .expect("connect");
        path.client.assoc = Some((ch, conn));
        // The handshake without loss; the loss starts with the data.
        path.run_until(|p| {
            p.server.assoc.is_some()
                && p.server.conn().state() == AssociationState::Established
                && p.client.conn().state() == AssociationState::Established
        });
        path.loss = loss;
        path.client
            .conn()
            .open_stream(SI, PPI)
            .expect("open stream");
        path
    }

    /// Puts a rate-limited link with a FIFO queue of `buffer` (of sending time) in each
    /// direction, as a home router's access link: a datagram that finds the queue full is
    /// dropped. The rate counts [`WIRE_HEADERS`] per datagram.
    fn with_bottleneck(mut self, bits_per_sec: f64, buffer: Duration) -> Self {
        self.rate = Some(bits_per_sec / 8.0);
        self.buffer = buffer;
        self.free_at = [self.now; 2];
        self
    }

    /// When a datagram of `len` bytes sent `now` by the client (`dir` 0) or the server (1)
    /// arrives, or `None` when the bottleneck's queue drops it.
    fn arrival(&mut self, dir: usize, now: Instant, len: usize) -> Option<Instant> {
        let Some(rate) = self.rate else {
            return Some(now + self.one_way);
        };
        let start = self.free_at[dir].max(now);
        if start - now > self.buffer {
            self.queue_drops += 1;
            return None;
        }
        self.free_at[dir] = start + Duration::from_secs_f64((len + WIRE_HEADERS) as f64 / rate);
        Some(self.free_at[dir] + self.one_way)
    }

    fn roll(&mut self) -> bool {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        ((self.seed >> 11) as f64 / (1u64 << 53) as f64) < self.loss
    }

    /// One step: both sides handle what is due; time moves to the next event.
    fn step(&mut self) -> bool {
        let now = self.now;
        for client_sends in [true, false] {
            let (from, remote) = if client_sends {
                (&mut self.client, self.server.addr)
            } else {
                (&mut self.server, self.client.addr)
            };
            let out = from.drive(now, remote);
            let may_fragment = self.fragments
                && from
                    .assoc
                    .as_ref()
                    .is_some_and(|(_, c)| c.needs_fragmentation());
            for data in out {
                let oversize = data.len() > self.max_datagram;
                if (oversize && !may_fragment) || self.roll() {
                    self.dropped += 1;
                    continue;
                }
                let Some(at) = self.arrival(usize::from(!client_sends), now, data.len()) else {
                    continue;
                };
                if oversize {
                    self.fragmented += 1;
                }
                self.datagrams += 1;
                self.bytes += data.len();
                if crate::packet::Packet::unmarshal(&data).is_ok_and(|p| {
                    p.chunks.len() == 1
                        && p.chunks[0].header().typ == crate::chunk::chunk_type::CT_SACK
                }) {
                    self.sack_only += 1;
                }
                if client_sends {
                    self.client_sent += 1;
                    self.client_largest = self.client_largest.max(data.len());
                }
                let to = if client_sends {
                    &mut self.server
                } else {
                    &mut self.client
                };
                to.inbound.push_back((at, data));
            }
        }
        let next = match (self.client.next_wakeup(), self.server.next_wakeup()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match next {
            Some(t) => {
                self.now = self.now.max(t);
                true
            }
            None => false,
        }
    }

    /// Steps until `done` holds (or a simulated minute passes); returns the time taken.
    fn run_until(&mut self, mut done: impl FnMut(&mut Self) -> bool) -> Duration {
        let start = self.now;
        while !done(self) {
            if !self.step() && !done(self) {
                let states = [&self.client, &self.server].map(|s| {
                    s.assoc
                        .as_ref()
                        .map(|(_, c)| (c.state(), c.poll_timeout().is_some()))
                });
                panic!("the associations went idle before the end: {states:?}");
            }
            assert!(
                self.now - start < Duration::from_secs(60),
                "no progress in a simulated minute"
            );
        }
        self.now - start
    }

    fn client_stream(&mut self) -> Stream<'_> {
        self.client.conn().stream(SI).expect("client stream")
    }

    /// Bytes the server has read from its stream so far (accepting it first).
    fn server_read(&mut self) -> usize {
        let conn = self.server.conn();
        let _ = conn.accept_stream();
        let Ok(mut s) = conn.stream(SI) else { return 0 };
        let mut n = 0;
        while let Ok(Some(chunks)) = s.read_sctp() {
            n += chunks.len();
        }
        n
    }

    /// The client writes 16 KiB messages until `written` reaches `total` or `buffer` bytes
    /// are unacknowledged.
    fn write_messages(&mut self, written: &mut usize, total: usize, buffer: usize) {
        let now = self.now;
        while *written < total
            && self.client_stream().buffered_amount().unwrap_or(usize::MAX) < buffer
        {
            let len = MESSAGE.len().min(total - *written);
            self.client_stream()
                .write_sctp(now, &Bytes::from_static(&MESSAGE[..len]), PPI)
                .expect("write");
            *written += len;
        }
    }

    /// Sends `total` bytes in 16 KiB messages, at most `buffer` unacknowledged at a time;
    /// returns the time until the server has read them all.
    fn transfer(&mut self, total: usize, buffer: usize) -> Duration {
        let (mut written, mut read) = (0, 0);
        self.run_until(|p| {
            p.write_messages(&mut written, total, buffer);
            read += p.server_read();
            read >= total
        })
    }

    /// An echo: the client sends `total` bytes in 16 KiB messages (at most a MiB unread), the
    /// server writes back what it reads as it reads it; returns when the client has it all.
    fn echo(&mut self, total: usize) -> Duration {
        let message = Bytes::from_static(&MESSAGE);
        let (mut written, mut back, mut unechoed) = (0, 0, 0);
        self.run_until(|p| {
            let now = p.now;
            p.write_messages(&mut written, total, MIB);
            // The server writes back in 16 KiB messages, as a libp2p stream frames them.
            unechoed += p.server_read();
            while unechoed >= message.len() || (unechoed > 0 && written >= total) {
                let len = unechoed.min(message.len());
                let conn = p.server.conn();
                let mut s = conn.stream(SI).expect("server stream");
                s.write_sctp(now, &message.slice(..len), PPI).expect("echo");
                unechoed -= len;
            }
            let conn = p.client.conn();
            let mut s = conn.stream(SI).expect("client stream");
            while let Ok(Some(chunks)) = s.read_sctp() {
                back += chunks.len();
            }
            back >= total
        })
    }

    /// Sends one small message; returns the time until the server has read it.
    fn ping(&mut self) -> Duration {
        let now = self.now;
        self.client_stream()
            .write_sctp(now, &Bytes::from_static(&[1; 32]), PPI)
            .expect("write");
        self.run_until(|p| p.server_read() > 0)
    }
}

const RTT: Duration = Duration::from_millis(40);
/// What a datagram carries on an Ethernet link besides the SCTP packet: DTLS 1.2 with
/// AES-GCM (13-byte record header, 8-byte explicit nonce, 16-byte tag), UDP, IPv4 and the
/// Ethernet header.
const WIRE_HEADERS: usize = 37 + 8 + 20 + 14;
const MIB: usize = 1024 * 1024;

/// 4 MiB over a 40 ms RTT with 2% loss each way (the NAT lab's 1% per link): RFC 9260's
/// window halves on every loss and T3-rtx waits a second; the patch's loss detection and
/// delivery-rate window keep the path busy.
#[test]
fn lossy_transfer_is_not_window_bound() {
    let mut times = vec![];
    for cc in [CongestionControl::Reno, CongestionControl::DeliveryRate] {
        let mut path = Path::new(cc, RTT / 2, 0.02, 7);
        let took = path.transfer(4 * MIB, MIB);
        assert!(path.dropped > 0, "the path dropped nothing");
        times.push(took);
    }
    let (reno, rate) = (times[0], times[1]);
    let mib_s = 4.0 / rate.as_secs_f64();
    // Lossless, the same sender moves ~9 MiB/s here (`lossless_transfer_fills_the_buffer`);
    // Reno moves ~0.4 MiB/s.
    assert!(
        mib_s > 3.0,
        "delivery-rate window: 4 MiB in {rate:?} ({mib_s:.1} MiB/s); Reno {reno:?}"
    );
    assert!(
        rate * 3 < reno,
        "delivery-rate window {rate:?} should beat Reno {reno:?} by 3x at 2% loss"
    );
}

/// Without loss, the delivery-rate window moves as much as the send buffer allows.
#[test]
fn lossless_transfer_fills_the_buffer() {
    let mut path = Path::new(CongestionControl::DeliveryRate, RTT / 2, 0.0, 1);
    let took = path.transfer(8 * MIB, MIB);
    // The send buffer and the peer's 1 MiB receive window bound it: ~0.9 s here.
    assert!(took < Duration::from_millis(1500), "8 MiB in {took:?}");
}

/// A single message whose only packet is lost arrives after a probe timeout, not after
/// RTO.Min (1 s in RFC 9260).
#[test]
fn lost_single_message_is_recovered_by_a_probe() {
    let mut path = Path::new(CongestionControl::DeliveryRate, RTT / 2, 0.0, 1);
    // Learn the RTT first.
    for _ in 0..5 {
        path.ping();
    }
    path.loss = 1.0;
    let now = path.now;
    path.client_stream()
        .write_sctp(now, &Bytes::from_static(&[1; 32]), PPI)
        .expect("write");
    // Only the first transmission is lost.
    path.step();
    path.loss = 0.0;
    let took = path.run_until(|p| p.server_read() > 0);
    assert!(path.dropped >= 1);
    let probes = path.client.conn().recovery.probes;
    assert_eq!(probes, 1, "one probe");
    assert!(
        took < 3 * RTT,
        "the lost message arrived after {took:?} (RTT {RTT:?})"
    );
}

/// A retransmission that is lost again is found by loss detection, not by T3-rtx.
#[test]
fn lost_retransmissions_are_detected_without_t3() {
    let mut path = Path::new(CongestionControl::DeliveryRate, RTT / 2, 0.05, 11);
    path.transfer(4 * MIB, MIB);
    let conn = path.client.conn();
    let t3 = conn.stats.get_num_t3timeouts();
    let lost = conn.recovery.detected_lost;
    assert!(lost > 50, "only {lost} losses detected at 5% loss");
    assert!(
        t3 <= 1,
        "{t3} T3-rtx expiries for {lost} detected losses: recovery should need none"
    );
}

/// Path MTU discovery (`association::pmtu`): on a path that carries 1400-byte SCTP packets,
/// the sender finds that size and cuts its DATA for it, and a transfer needs fewer packets
/// than at the 1191-byte default.
#[test]
fn path_mtu_discovery_finds_the_size_the_path_carries() {
    let run = |max_mtu: u32| {
        let transport = TransportConfig::default().with_max_mtu(max_mtu);
        let mut path = Path::with_transport(transport, RTT / 2, 0.0, 3, 1402);
        path.transfer(MIB, MIB);
        let mtu = path.client.conn().mtu;
        (mtu, path.client_largest, path.client_sent, path.dropped)
    };
    let (mtu, largest, sent, dropped) = run(crate::ETHERNET_MAX_MTU);
    assert_eq!(mtu, 1400, "the confirmed size");
    assert_eq!(largest, 1400, "DATA packets of the confirmed size");
    // Only probes above the path's size were lost: 1428, 1420 and 1408, from each side, at
    // most three times each.
    assert!((6..=18).contains(&dropped), "{dropped} dropped");
    let (base_mtu, base_largest, base_sent, base_dropped) = run(0);
    assert_eq!((base_mtu, base_largest, base_dropped), (1188, 1188, 0));
    assert!(
        sent * 100 < base_sent * 88,
        "{sent} datagrams with discovery, {base_sent} without"
    );
}

/// The path's MTU falls under a live association after discovery raised the packet size (a
/// VPN coming up): the chunks already cut for the larger size cannot be cut again, so the
/// association asks for IP fragmentation (`Association::needs_fragmentation`) until the peer
/// has them, and sends no probe meanwhile. With fragmentation the transfer completes and the
/// search settles on the smaller size; without it (what the socket's "don't fragment" did
/// before) those chunks never get through and the transfer stalls.
#[test]
fn chunks_stranded_by_a_shrinking_path_get_through_fragmented() {
    let run = |fragments: bool| {
        let transport = TransportConfig::default().with_max_mtu(crate::ETHERNET_MAX_MTU);
        let mut path = Path::with_transport(transport, RTT / 2, 0.0, 7, 1472 - 37);
        path.fragments = fragments;
        let total = 4 * MIB;
        let (mut written, mut read) = (0, 0);
        let mut shrunk = false;
        let mut flagged = false;
        let start = path.now;
        while read < total && path.now - start < Duration::from_secs(60) {
            path.write_messages(&mut written, total, MIB);
            read += path.server_read();
            // When the last message is written: what is in flight then is all cut for the
            // larger size, and nothing new comes behind it.
            if !shrunk && written == total {
                assert_eq!(
                    path.client.conn().mtu,
                    crate::ETHERNET_MAX_MTU,
                    "raised first"
                );
                // 1300-byte SCTP packets, as on a 1337-byte link.
                path.max_datagram = 1300;
                shrunk = true;
            }
            flagged |= path.client.conn().needs_fragmentation();
            if !path.step() {
                break;
            }
        }
        eprintln!(
            "fragments {fragments}: read {read} in {:?}, {} fragmented, {} dropped, T3 {}",
            path.now - start,
            path.fragmented,
            path.dropped,
            path.client.conn().stats.get_num_t3timeouts()
        );
        (read, flagged, path)
    };
    let (read, flagged, mut path) = run(true);
    assert_eq!(read, 4 * MIB, "the transfer completes");
    assert!(flagged, "the association asked for fragmentation");
    assert!(path.fragmented > 0, "stranded chunks went as fragments");
    assert!(
        !path.client.conn().needs_fragmentation(),
        "not once the peer has them"
    );
    // Then the search starts again, and settles on what the path carries.
    path.run_until(|p| p.client.conn().mtu == 1300);

    let (read, flagged, path) = run(false);
    assert!(flagged);
    assert!(read < 4 * MIB, "without fragmentation: {read} bytes");
    assert_eq!(path.fragmented, 0);
}

/// What an echo (data both ways, 16 KiB messages) puts on the path per byte of payload, with
/// the lab's per-datagram overhead (DTLS 37, UDP 8, IPv4 20, Ethernet 14 bytes): at the
/// 1191-byte default and with path MTU discovery up to 1428 bytes. No loss, so this is headers
/// and SACKs alone; a guard against packing regressions (messages cut when sent, SACKs in
/// front of DATA), and the measure of what the larger packet saves.
#[test]
fn echo_wire_overhead() {
    let run = |max_mtu: u32| {
        let transport = TransportConfig::default().with_max_mtu(max_mtu);
        let mut path = Path::with_transport(transport, RTT / 2, 0.0, 5, 1472 - 37);
        path.echo(4 * MIB);
        let wire = path.bytes + path.datagrams * WIRE_HEADERS;
        let ratio = wire as f64 / (8 * MIB) as f64;
        eprintln!(
            "echo of 4 MiB, max_mtu {max_mtu}: {} datagrams, {} only a SACK; wire / payload \
             {ratio:.3}",
            path.datagrams, path.sack_only
        );
        (ratio, path.sack_only, path.datagrams)
    };
    let (base, base_sacks, base_datagrams) = run(0);
    let (raised, _, raised_datagrams) = run(crate::ETHERNET_MAX_MTU);
    assert!(base < 1.13, "{base:.3}");
    assert!(
        base_sacks * 3 < base_datagrams,
        "{base_sacks} SACK-only of {base_datagrams}"
    );
    assert!(
        raised < base - 0.015,
        "{raised:.3} with discovery, {base:.3} without"
    );
    assert!(raised_datagrams * 100 < base_datagrams * 90);
}

/// An echo through a 20 Mbit/s bottleneck each way (50 ms of queue), 1428-byte packets: a
/// due SACK waits for the DATA the pacer releases next instead of going in a packet of its
/// own (`Association::hold_sack_for_paced_data`), and that DATA has room for it (a piece is
/// cut when it goes). Each side's DATA is paced at about the line's rate, so before nearly
/// every SACK found no DATA ready: 3,470 SACK-only datagrams of 9,683 here, wire 1.139x
/// (now ~660 of ~6,900, 1.113x, of which queue drops' retransmissions ~0.02).
#[test]
fn sacks_ride_with_paced_data_through_a_bottleneck() {
    let transport = TransportConfig::default().with_max_mtu(crate::ETHERNET_MAX_MTU);
    let mut path = Path::with_transport(transport, Duration::from_millis(20), 0.0, 5, 1472 - 37)
        .with_bottleneck(20e6, Duration::from_millis(50));
    let took = path.echo(4 * MIB);
    let wire = (path.bytes + path.datagrams * WIRE_HEADERS) as f64 / (8 * MIB) as f64;
    eprintln!(
        "echo of 4 MiB through 20 Mbit/s: {took:?}, {} datagrams, {} only a SACK, {} dropped \
         by the queues; wire / payload {wire:.3}",
        path.datagrams, path.sack_only, path.queue_drops
    );
    assert!(
        path.sack_only * 6 < path.datagrams,
        "{} SACK-only of {}",
        path.sack_only,
        path.datagrams
    );
    assert!(wire < 1.12, "{wire:.3}");
    // Each direction moves 4 MiB at up to 2.5 MB/s less headers: about 1.8 s.
    assert!(took < Duration::from_secs(4), "{took:?}");
}
