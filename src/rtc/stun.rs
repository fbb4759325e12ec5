//! A STUN responder for relay nodes: the relay both peers already trust tells each of them its
//! public address, so that their upgrades gather server-reflexive candidates with no STUN
//! server to configure.
//!
//! It answers Binding requests (RFC 8489) with an XOR-MAPPED-ADDRESS, and FINGERPRINT when the
//! request carried one; nothing else: 32 to 52 bytes. It keeps no state per request; per
//! source it keeps a token bucket ([`StunResponder::with_rate_limit`]), for at most
//! [`StunResponder::with_max_sources`] sources at once. A source is an IPv4 address or an
//! IPv6 /64 ([`StunResponder::with_source_prefixes`]): one host owns a whole /64. When the
//! table is full, a source that is not in it draws from one bucket that all such sources
//! share: a flood from spoofed addresses neither evicts the sources being answered nor
//! starves new ones completely. An IPv4 peer that reaches a responder bound to `[::]` gets
//! its IPv4 address back, not the IPv4-mapped IPv6 one. Anything that is not a well-formed
//! Binding request is dropped without an answer.
//!
//! A spoofed request makes the responder send at most 2.6 times its size (a 20-byte request,
//! a 52-byte answer to an IPv6 address with FINGERPRINT) to the spoofed address, and at most
//! the rate limit's worth per source: 40 answers, then 20 per second (about 1 KB/s).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use libp2p_webrtc_signal::StunResponder;
//!
//! let responder = StunResponder::bind("0.0.0.0:3478".parse().unwrap()).await?;
//! tokio::spawn(responder.run());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::message::{Message, Setter, BINDING_REQUEST, BINDING_SUCCESS};
use rtc::stun::xoraddr::XorMappedAddress;

/// The UDP port relays answer STUN on by convention (RFC 8489's default port), and the one
/// [`crate::Config::relay_stun_port`] points peers to.
pub const DEFAULT_STUN_PORT: u16 = 3478;

/// What a [`StunResponder`] did, counted as it runs ([`StunResponder::stats`]): for a
/// relay operator's metrics. Cheap to clone; all clones read the same counters.
#[derive(Debug, Clone, Default)]
pub struct StunStats(Arc<StunCounters>);

#[derive(Debug, Default)]
struct StunCounters {
    answered: AtomicU64,
    rate_limited: AtomicU64,
    ignored: AtomicU64,
}

impl StunStats {
    /// Binding requests answered.
    pub fn answered(&self) -> u64 {
        self.0.answered.load(Ordering::Relaxed)
    }

    /// Binding requests dropped by the rate limits ([`StunResponder::with_rate_limit`]).
    pub fn rate_limited(&self) -> u64 {
        self.0.rate_limited.load(Ordering::Relaxed)
    }

    /// Datagrams that were not a well-formed Binding request (dropped, not answered).
    pub fn ignored(&self) -> u64 {
        self.0.ignored.load(Ordering::Relaxed)
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers STUN Binding requests on one UDP socket. Made by [`StunResponder::bind`].
#[derive(Debug)]
pub struct StunResponder {
    socket: tokio::net::UdpSocket,
    core: Responder,
}

impl StunResponder {
    /// Binds the UDP socket the responder answers on.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            socket: tokio::net::UdpSocket::bind(addr).await?,
            core: Responder::new(20, 40, 4096),
        })
    }

    /// Which source addresses share a bucket: IPv4 addresses with the same first `v4_bits`
    /// bits, IPv6 addresses with the same first `v6_bits` (defaults: 32, each IPv4 address
    /// on its own, as many users may share one behind a carrier-grade NAT; and 64, as one
    /// host may use every address of its /64). Clamped to 8..=32 and 16..=128.
    pub fn with_source_prefixes(mut self, v4_bits: u8, v6_bits: u8) -> Self {
        self.core.v4_bits = v4_bits.clamp(8, 32);
        self.core.v6_bits = v6_bits.clamp(16, 128);
        self
    }

    /// Answers at most `per_second` requests per second from one source IP, after a burst of
    /// `burst` (defaults: 20 per second, bursts of 40: an ICE agent sends a handful per
    /// upgrade). Requests over the limit are dropped.
    pub fn with_rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.core.per_second = f64::from(per_second);
        self.core.burst = f64::from(burst.max(1));
        self
    }

    /// Tracks at most this many sources at once (default 4096). When all are busy, sources
    /// that are not tracked share one more bucket (the same rate and burst) until one of the
    /// tracked has been quiet long enough to be forgotten; a tracked source is never
    /// evicted for a new one.
    pub fn with_max_sources(mut self, max: usize) -> Self {
        self.core.max_sources = max.max(1);
        self
    }

    /// The address the responder answers on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Its counters, which go on counting after [`StunResponder::run`] took the responder.
    ///
    /// ```no_run
    /// # async fn run() -> std::io::Result<()> {
    /// use libp2p_webrtc_signal::StunResponder;
    ///
    /// let responder = StunResponder::bind("0.0.0.0:3478".parse().unwrap()).await?;
    /// let stats = responder.stats();
    /// tokio::spawn(responder.run());
    /// println!("{} answered, {} rate-limited", stats.answered(), stats.rate_limited());
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> StunStats {
        self.core.stats.clone()
    }

    /// Answers requests until the socket fails.
    pub async fn run(mut self) -> std::io::Result<()> {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = self.socket.recv_from(&mut buf).await?;
            let Some(packet) = buf.get(..n) else { continue };
            if let Some(response) = self.core.answer(Instant::now(), from, packet) {
                if let Err(e) = self.socket.send_to(&response, from).await {
                    tracing::debug!(%from, "STUN response not sent: {e}");
                }
            }
        }
    }
}

/// The responder without a socket: what to answer to a datagram from a source.
#[derive(Debug)]
pub(crate) struct Responder {
    per_second: f64,
    burst: f64,
    max_sources: usize,
    /// Prefix lengths that make a source (see [`StunResponder::with_source_prefixes`]).
    v4_bits: u8,
    v6_bits: u8,
    /// Tokens left per source, as of the instant.
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// The bucket that sources share while the table is full.
    overflow: Option<(f64, Instant)>,
    stats: StunStats,
}

/// `ip` with only its first `bits` bits (of its family's width) kept.
fn prefix(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(v4_bits.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_bits.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// Refills `bucket` for the time since its instant and takes a token if there is one.
fn take(bucket: &mut (f64, Instant), now: Instant, per_second: f64, burst: f64) -> bool {
    let (tokens, at) = bucket;
    let elapsed = now.saturating_duration_since(*at).as_secs_f64();
    *tokens = (*tokens + elapsed * per_second).min(burst);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

impl Responder {
    pub(crate) fn new(per_second: u32, burst: u32, max_sources: usize) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            max_sources: max_sources.max(1),
            v4_bits: 32,
            v6_bits: 64,
            buckets: HashMap::new(),
            overflow: None,
            stats: StunStats::default(),
        }
    }

    /// The response to `packet` from `from`, if it is a Binding request within the rate.
    pub(crate) fn answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &[u8],
    ) -> Option<Vec<u8>> {
        let counters = &self.stats.0;
        let mut request = Message::new();
        if request.unmarshal_binary(packet).is_err() || request.typ != BINDING_REQUEST {
            StunStats::count(&counters.ignored);
            return None;
        }
        // An IPv4 peer of a socket bound to `[::]` arrives as `::ffff:a.b.c.d`.
        let ip = from.ip().to_canonical();
        if !self.take_token(now, ip) {
            StunStats::count(&self.stats.0.rate_limited);
            return None;
        }
        let mut response = Message::new();
        response.typ = BINDING_SUCCESS;
        response.transaction_id = request.transaction_id;
        response.write_header();
        XorMappedAddress {
            ip,
            port: from.port(),
        }
        .add_to(&mut response)
        .ok()?;
        if request.contains(rtc::stun::attributes::ATTR_FINGERPRINT) {
            FINGERPRINT.add_to(&mut response).ok()?;
        }
        StunStats::count(&self.stats.0.answered);
        Some(response.raw)
    }

    fn take_token(&mut self, now: Instant, ip: IpAddr) -> bool {
        let (per_second, burst) = (self.per_second, self.burst);
        let source = prefix(ip, self.v4_bits, self.v6_bits);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            // Forget the sources whose bucket has refilled: they are like new ones.
            let full = burst / per_second.max(f64::MIN_POSITIVE);
            let refill = Duration::from_secs_f64(full.min(3600.0));
            self.buckets
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < refill);
            if self.buckets.len() >= self.max_sources {
                // Every tracked source is busy: none is evicted for this one, which shares
                // the overflow bucket with every other source that does not fit.
                let overflow = self.overflow.get_or_insert((burst, now));
                return take(overflow, now, per_second, burst);
            }
        }
        let bucket = self.buckets.entry(source).or_insert((burst, now));
        take(bucket, now, per_second, burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::message::Getter;

    fn request(fingerprint: bool) -> Vec<u8> {
        let mut m = Message::new();
        m.typ = BINDING_REQUEST;
        m.new_transaction_id().unwrap();
        m.write_header();
        if fingerprint {
            FINGERPRINT.add_to(&mut m).unwrap();
        }
        m.raw
    }

    fn from() -> SocketAddr {
        "198.51.100.7:40123".parse().unwrap()
    }

    #[test]
    fn a_binding_request_gets_the_source_address_back() {
        let mut r = Responder::new(20, 40, 16);
        for fingerprint in [false, true] {
            let req = request(fingerprint);
            let raw = r.answer(Instant::now(), from(), &req).expect("an answer");
            let mut resp = Message::new();
            resp.unmarshal_binary(&raw).unwrap();
            assert_eq!(resp.typ, BINDING_SUCCESS);
            let mut sent = Message::new();
            sent.unmarshal_binary(&req).unwrap();
            assert_eq!(resp.transaction_id, sent.transaction_id);
            let mut mapped = XorMappedAddress::default();
            mapped.get_from(&resp).unwrap();
            assert_eq!(SocketAddr::new(mapped.ip, mapped.port), from());
            // Nothing but what is needed: header, XOR-MAPPED-ADDRESS (IPv4), FINGERPRINT.
            assert_eq!(raw.len(), 20 + 12 + if fingerprint { 8 } else { 0 });
            if fingerprint {
                FINGERPRINT.check(&resp).unwrap();
            }
        }
    }

    #[test]
    fn anything_else_is_dropped() {
        let mut r = Responder::new(20, 40, 16);
        let now = Instant::now();
        assert!(r.answer(now, from(), b"").is_none());
        assert!(r.answer(now, from(), &[0u8; 64]).is_none());
        let mut truncated = request(true);
        truncated.truncate(24);
        assert!(r.answer(now, from(), &truncated).is_none());
        // A Binding response (or any other method or class) is not answered.
        let mut m = Message::new();
        m.typ = BINDING_SUCCESS;
        m.new_transaction_id().unwrap();
        m.write_header();
        assert!(r.answer(now, from(), &m.raw).is_none());
        assert_eq!((r.stats.answered(), r.stats.ignored()), (0, 4));
    }

    /// The counters say what happened to each datagram: answered, rate-limited, ignored.
    #[test]
    fn stats_count_answers_limits_and_other_datagrams() {
        let mut r = Responder::new(10, 3, 16);
        let stats = r.stats.clone();
        let now = Instant::now();
        for _ in 0..5 {
            r.answer(now, from(), &request(true));
        }
        r.answer(now, from(), b"not STUN");
        assert_eq!(
            (stats.answered(), stats.rate_limited(), stats.ignored()),
            (3, 2, 1)
        );
    }

    #[test]
    fn each_source_is_rate_limited_and_the_sources_tracked_are_bounded() {
        let mut r = Responder::new(10, 5, 2);
        let now = Instant::now();
        let req = request(false);
        let answered = (0..100)
            .filter(|_| r.answer(now, from(), &req).is_some())
            .count();
        assert_eq!(answered, 5, "the burst, then nothing");
        // 10 per second: 200 ms later, two more.
        let later = now + Duration::from_millis(200);
        let answered = (0..100)
            .filter(|_| r.answer(later, from(), &req).is_some())
            .count();
        assert_eq!(answered, 2);
        // Another source has its own bucket. While both are busy, the sources that do not
        // fit share one more bucket: a flood of new (spoofed) sources gets its burst and
        // rate in all, evicts neither tracked source, and leaves them their own buckets.
        let second: SocketAddr = "198.51.100.8:1".parse().unwrap();
        assert!(r.answer(later, second, &req).is_some());
        let flood = (0..1000u32)
            .filter(|i| {
                let spoofed = SocketAddr::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), 1);
                r.answer(later, spoofed, &req).is_some()
            })
            .count();
        assert_eq!(flood, 5, "the shared burst, then nothing");
        assert_eq!(r.buckets.len(), 2);
        let third: SocketAddr = "198.51.100.9:1".parse().unwrap();
        assert!(
            r.answer(later, third, &req).is_none(),
            "the shared bucket is empty"
        );
        assert!(
            r.answer(later, second, &req).is_some(),
            "the tracked source still has its own"
        );
        // Once the tracked ones have refilled (0.5 s), they are forgotten and the third one
        // gets a bucket of its own.
        let refilled = later + Duration::from_secs(1);
        assert!(r.answer(refilled, third, &req).is_some());
        assert!(r.buckets.len() <= 2);
    }

    /// One IPv6 host owns a whole /64: its addresses share one bucket and one table entry.
    /// IPv4 addresses each have their own by default.
    #[test]
    fn an_ipv6_64_is_one_source() {
        let mut r = Responder::new(10, 5, 16);
        let now = Instant::now();
        let req = request(false);
        let answered = (0..100u16)
            .filter(|i| {
                let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, *i, 0, 0, 1);
                r.answer(now, SocketAddr::new(ip.into(), 1), &req).is_some()
            })
            .count();
        assert_eq!(answered, 5);
        assert_eq!(r.buckets.len(), 1);
        let other = SocketAddr::new(
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1).into(),
            1,
        );
        assert!(r.answer(now, other, &req).is_some(), "another /64");
        for i in 0..3u8 {
            let v4 = SocketAddr::new(std::net::Ipv4Addr::new(192, 0, 2, i).into(), 1);
            assert!(r.answer(now, v4, &req).is_some());
        }
        assert_eq!(r.buckets.len(), 5);
        assert_eq!(
            prefix("192.0.2.77".parse().unwrap(), 24, 64),
            "192.0.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            prefix("2001:db8::1".parse().unwrap(), 32, 128),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    /// A responder bound to `[::]` sees an IPv4 peer as `::ffff:a.b.c.d`; the peer must get
    /// its IPv4 address back (a v4-mapped one is no candidate it can use), in the shorter
    /// IPv4 form.
    #[test]
    fn an_ipv4_mapped_source_gets_its_ipv4_address() {
        let mut r = Responder::new(20, 40, 16);
        let mapped: SocketAddr = "[::ffff:198.51.100.7]:40123".parse().unwrap();
        let raw = r
            .answer(Instant::now(), mapped, &request(false))
            .expect("an answer");
        let mut resp = Message::new();
        resp.unmarshal_binary(&raw).unwrap();
        let mut got = XorMappedAddress::default();
        got.get_from(&resp).unwrap();
        assert_eq!(SocketAddr::new(got.ip, got.port), from());
        assert_eq!(raw.len(), 20 + 12);
    }

    #[tokio::test]
    async fn answers_over_udp_with_the_address_it_sees() {
        let responder = StunResponder::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .with_rate_limit(1, 3);
        let server = responder.local_addr().unwrap();
        let task = tokio::spawn(responder.run());
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut answers = 0;
        for _ in 0..10 {
            client.send_to(&request(true), server).await.unwrap();
        }
        let mut buf = [0u8; 64];
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await
        {
            let mut resp = Message::new();
            resp.unmarshal_binary(&buf[..n]).unwrap();
            let mut mapped = XorMappedAddress::default();
            mapped.get_from(&resp).unwrap();
            assert_eq!(
                SocketAddr::new(mapped.ip, mapped.port),
                client.local_addr().unwrap()
            );
            answers += 1;
        }
        assert_eq!(answers, 3, "the burst, then the rate limit");
        task.abort();
    }
}
