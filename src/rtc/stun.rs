//! A STUN responder for relay nodes: the relay both peers already trust tells each of them its
//! public address, so that their upgrades gather server-reflexive candidates with no STUN
//! server to configure.
//!
//! It answers Binding requests (RFC 8489) with an XOR-MAPPED-ADDRESS, and FINGERPRINT when the
//! request carried one; nothing else. It keeps no state per request; per source IP it keeps a
//! token bucket ([`StunResponder::with_rate_limit`]), for at most
//! [`StunResponder::with_max_sources`] sources at once. Anything that is not a well-formed
//! Binding request is dropped without an answer.
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
use std::time::{Duration, Instant};

use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::message::{Message, Setter, BINDING_REQUEST, BINDING_SUCCESS};
use rtc::stun::xoraddr::XorMappedAddress;

/// The UDP port relays answer STUN on by convention (RFC 8489's default port), and the one
/// [`crate::Config::relay_stun_port`] points peers to.
pub const DEFAULT_STUN_PORT: u16 = 3478;

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

    /// Answers at most `per_second` requests per second from one source IP, after a burst of
    /// `burst` (defaults: 20 per second, bursts of 40: an ICE agent sends a handful per
    /// upgrade). Requests over the limit are dropped.
    pub fn with_rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.core.per_second = f64::from(per_second);
        self.core.burst = f64::from(burst.max(1));
        self
    }

    /// Tracks at most this many source IPs at once (default 4096). When all are busy, new
    /// sources are not answered until one has been quiet long enough to be forgotten.
    pub fn with_max_sources(mut self, max: usize) -> Self {
        self.core.max_sources = max.max(1);
        self
    }

    /// The address the responder answers on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
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
    /// Tokens left per source IP, as of the instant.
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Responder {
    pub(crate) fn new(per_second: u32, burst: u32, max_sources: usize) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    /// The response to `packet` from `from`, if it is a Binding request within the rate.
    pub(crate) fn answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &[u8],
    ) -> Option<Vec<u8>> {
        let mut request = Message::new();
        request.unmarshal_binary(packet).ok()?;
        if request.typ != BINDING_REQUEST || !self.take_token(now, from.ip()) {
            return None;
        }
        let mut response = Message::new();
        response.typ = BINDING_SUCCESS;
        response.transaction_id = request.transaction_id;
        response.write_header();
        XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        }
        .add_to(&mut response)
        .ok()?;
        if request.contains(rtc::stun::attributes::ATTR_FINGERPRINT) {
            FINGERPRINT.add_to(&mut response).ok()?;
        }
        Some(response.raw)
    }

    fn take_token(&mut self, now: Instant, ip: IpAddr) -> bool {
        let full = self.burst / self.per_second.max(f64::MIN_POSITIVE);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_sources {
            // Forget the sources whose bucket has refilled: they are like new ones.
            let refill = Duration::from_secs_f64(full.min(3600.0));
            self.buckets
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < refill);
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
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
        // Another source has its own bucket; a third one does not fit while both are busy.
        let second: SocketAddr = "198.51.100.8:1".parse().unwrap();
        let third: SocketAddr = "198.51.100.9:1".parse().unwrap();
        assert!(r.answer(later, second, &req).is_some());
        assert!(r.answer(later, third, &req).is_none());
        // Once the others have refilled (0.5 s), they are forgotten and the third one fits.
        let refilled = later + Duration::from_secs(1);
        assert!(r.answer(refilled, third, &req).is_some());
        assert!(r.buckets.len() <= 2);
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
