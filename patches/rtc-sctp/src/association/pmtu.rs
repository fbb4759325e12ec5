//! Patch: packetization-layer path MTU discovery (RFC 8899, DPLPMTUD; section 6.2 for SCTP).
//!
//! Every SCTP packet here is one DTLS record in one UDP datagram, sent with "don't fragment"
//! (quinn-udp sets `IP_PMTUDISC_PROBE`). Upstream cuts every DATA chunk for a 1191-byte
//! packet, which fits a TURN-relayed IPv6 path at the minimum MTU of 1280: on an Ethernet
//! path a fifth of each packet's room goes unused and every packet pays ~110 bytes of
//! headers for ~1160 of payload.
//!
//! This module decides which packet sizes to probe and which one is confirmed; the
//! association sends the probes and applies the result. A probe is a HEARTBEAT whose
//! information names the probe, padded with a PAD chunk (RFC 4820) to the size under test;
//! its HEARTBEAT ACK is small, so only the size of this direction is tested. A peer that
//! does not know the PAD chunk type drops the whole packet (upstream webrtc-rs does) or
//! skips the chunk (RFC 9260 3.2, type 0x84: "skip and continue"): either way nothing breaks,
//! and without an answer the size stays at the base.
//!
//! The search probes all candidate sizes above the confirmed one at once (a few packets,
//! once per connection) instead of one size per round trip: the largest answered size wins
//! after one round trip; sizes without an answer are probed again at most
//! [`MAX_PROBES`] times, a probe timeout apart. After the search, a connection below the
//! ceiling searches again every [`RAISE_INTERVAL`] (RFC 8899's PMTU_RAISE_TIMER).
//!
//! Black holes: when the confirmed size stops getting through (T3-rtx expires twice in a
//! row), the association falls back to the base size and searches again. Chunks still
//! queued are cut again for the base size before they get a TSN
//! (`PendingQueue::cut_front`). Chunks already sent keep their size: SCTP cannot cut a TSN
//! again. If the path really shrank (an ICE restart onto a network of smaller MTU, a VPN
//! coming up) they only get through as IP fragments, so until the peer has them
//! `Association::needs_fragmentation` asks the caller to send without "don't fragment"
//! (RFC 9260 7.3), and no probe goes (a fragmented probe would get through at a size the
//! path does not carry): the search starts again once they are acknowledged.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// Sent probes of one size without an answer before that size is given up (RFC 8899's
/// MAX_PROBES).
pub(crate) const MAX_PROBES: u8 = 3;

/// How long a search that stopped below the ceiling waits before it searches again
/// (RFC 8899's PMTU_RAISE_TIMER).
pub(crate) const RAISE_INTERVAL: Duration = Duration::from_secs(600);

/// The shortest wait for a probe's answer, whatever the RTO estimate says.
pub(crate) const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// The largest candidate size, a ceiling for `TransportConfig::with_max_mtu`: an IPv4 path of
/// Ethernet MTU, also when it is relayed by TURN over UDP (1500 - 20 IPv4 - 8 UDP - 4 TURN
/// ChannelData - 37 DTLS with AES-GCM = 1431), rounded down to SCTP's 4-byte boundary.
pub const ETHERNET_MAX_MTU: u32 = 1428;

/// The candidate SCTP packet sizes, largest first. Each fits a link MTU both directly and
/// relayed by TURN over UDP (4 bytes less), so that an ICE restart onto a TURN relay of the
/// same network does not strand chunks already cut for the size: IPv4 and IPv6 over
/// Ethernet (1500), over PPPoE (1492), over a 1420-byte tunnel (WireGuard), then steps
/// towards the base.
const LADDER: [u32; 9] = [1428, 1420, 1408, 1400, 1348, 1328, 1300, 1260, 1232];

/// The heartbeat information of a probe: this magic, then the search's round and the
/// probed size, big-endian.
const PROBE_MAGIC: [u8; 4] = *b"PMTU";
const PROBE_INFO_LEN: usize = 12;

/// One probe to send: a packet of `size` bytes whose heartbeat carries `info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) size: u32,
    pub(crate) info: Bytes,
}

/// Where the search is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Search {
    /// Nothing above the base to probe: the ceiling is the base.
    Disabled,
    /// Probes go out at `due`.
    Due { due: Instant },
    /// Round `round` of probes went out; `attempts` rounds so far in this search. Sizes above
    /// the confirmed one are probed again at `deadline`, or given up after [`MAX_PROBES`].
    Probing {
        round: u32,
        attempts: u8,
        deadline: Instant,
    },
    /// The search ended; it starts again at `raise` if the ceiling was not reached.
    Done { raise: Option<Instant> },
}

/// The path MTU of one association's send direction.
#[derive(Debug, Clone)]
pub(crate) struct PathMtu {
    base: u32,
    ceiling: u32,
    confirmed: u32,
    search: Search,
    /// Rounds sent so far, over all searches: names the round a probe belongs to, so an
    /// answer to a probe of an older search is not taken for a new one.
    rounds: u32,
}

impl PathMtu {
    /// A search between `base` (the size every path carries, confirmed from the start) and
    /// `ceiling`, beginning at `now`. Both are SCTP packet sizes; they are rounded down to
    /// SCTP's 4-byte boundary.
    pub(crate) fn new(base: u32, ceiling: u32, now: Instant) -> Self {
        let base = base & !3;
        let ceiling = ceiling & !3;
        let search = if ceiling > base {
            Search::Due { due: now }
        } else {
            Search::Disabled
        };
        Self {
            base,
            ceiling: ceiling.max(base),
            confirmed: base,
            search,
            rounds: 0,
        }
    }

    /// No search; what a default association holds until [`new`](Self::new) replaces it.
    pub(crate) fn disabled() -> Self {
        Self {
            base: 0,
            ceiling: 0,
            confirmed: 0,
            search: Search::Disabled,
            rounds: 0,
        }
    }

    /// The largest SCTP packet size known to get through.
    pub(crate) fn confirmed(&self) -> u32 {
        self.confirmed
    }

    #[cfg(test)]
    pub(crate) fn search(&self) -> Search {
        self.search
    }

    /// When [`poll_probes`](Self::poll_probes) has something to do next.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.search {
            Search::Disabled | Search::Done { raise: None } => None,
            Search::Due { due } => Some(due),
            Search::Probing { deadline, .. } => Some(deadline),
            Search::Done { raise: Some(raise) } => Some(raise),
        }
    }

    /// The probes due at `now`, each to be answered within `timeout` (at least
    /// [`MIN_PROBE_TIMEOUT`]). Empty when none are due; a search whose sizes were each probed
    /// [`MAX_PROBES`] times ends here.
    pub(crate) fn poll_probes(&mut self, now: Instant, timeout: Duration) -> Vec<Probe> {
        let attempts = match self.search {
            Search::Due { due } if now >= due => 0,
            Search::Done { raise: Some(raise) } if now >= raise => 0,
            Search::Probing {
                attempts, deadline, ..
            } if now >= deadline => attempts,
            _ => return Vec::new(),
        };
        if attempts >= MAX_PROBES {
            self.search = self.done(now);
            return Vec::new();
        }
        let round = self.rounds;
        self.rounds = self.rounds.wrapping_add(1);
        let probes: Vec<Probe> = self
            .candidates()
            .map(|size| Probe {
                size,
                info: probe_info(round, size),
            })
            .collect();
        if probes.is_empty() {
            self.search = self.done(now);
            return probes;
        }
        self.search = Search::Probing {
            round,
            attempts: attempts + 1,
            deadline: now + timeout.max(MIN_PROBE_TIMEOUT),
        };
        probes
    }

    /// The sizes a round probes: the ladder's sizes above the confirmed one, up to the
    /// ceiling, and the ceiling itself.
    fn candidates(&self) -> impl Iterator<Item = u32> + '_ {
        let top = (!LADDER.contains(&self.ceiling)).then_some(self.ceiling);
        top.into_iter()
            .chain(LADDER.iter().copied())
            .filter(move |&size| size > self.confirmed && size <= self.ceiling)
    }

    /// A heartbeat's answer carried `info`. Returns the new confirmed size when this answer
    /// raised it. An answer that is not to a probe of the current search is ignored.
    pub(crate) fn on_heartbeat_ack(&mut self, info: &[u8], now: Instant) -> Option<u32> {
        let (round, size) = parse_probe_info(info)?;
        let Search::Probing { round: current, .. } = self.search else {
            return None;
        };
        if round != current || size <= self.confirmed || size > self.ceiling {
            return None;
        }
        self.confirmed = size;
        if self.candidates().next().is_none() {
            self.search = self.done(now);
        }
        Some(size)
    }

    /// The confirmed size stopped getting through. Returns the base when the size fell back
    /// to it; the search starts again at once.
    pub(crate) fn on_black_hole(&mut self, now: Instant) -> Option<u32> {
        if self.confirmed <= self.base {
            return None;
        }
        self.confirmed = self.base;
        self.search = Search::Due { due: now };
        Some(self.base)
    }

    fn done(&self, now: Instant) -> Search {
        Search::Done {
            raise: (self.confirmed < self.ceiling).then(|| now + RAISE_INTERVAL),
        }
    }
}

fn probe_info(round: u32, size: u32) -> Bytes {
    let mut info = BytesMut::with_capacity(PROBE_INFO_LEN);
    info.put_slice(&PROBE_MAGIC);
    info.put_u32(round);
    info.put_u32(size);
    info.freeze()
}

fn parse_probe_info(info: &[u8]) -> Option<(u32, u32)> {
    if info.len() != PROBE_INFO_LEN || info.get(..4)? != PROBE_MAGIC {
        return None;
    }
    let round = u32::from_be_bytes(info.get(4..8)?.try_into().ok()?);
    let size = u32::from_be_bytes(info.get(8..12)?.try_into().ok()?);
    Some((round, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u32 = 1188;
    const RTO: Duration = Duration::from_millis(300);

    fn sizes(probes: &[Probe]) -> Vec<u32> {
        probes.iter().map(|p| p.size).collect()
    }

    #[test]
    fn one_round_trip_finds_the_largest_size_that_gets_through() {
        let t0 = Instant::now();
        let mut pmtu = PathMtu::new(1191, ETHERNET_MAX_MTU, t0);
        assert_eq!(pmtu.confirmed(), BASE);
        let probes = pmtu.poll_probes(t0, RTO);
        assert_eq!(sizes(&probes), LADDER.to_vec());
        // A path of 1420 bytes (a WireGuard tunnel over IPv4): 1348 and below get through.
        let mut raised = vec![];
        for p in probes.iter().filter(|p| p.size <= 1352).rev() {
            raised.extend(pmtu.on_heartbeat_ack(&p.info, t0));
        }
        assert_eq!(raised, vec![1232, 1260, 1300, 1328, 1348]);
        assert_eq!(pmtu.confirmed(), 1348);
        // Sizes above are probed again, a timeout apart, MAX_PROBES times in all.
        assert!(pmtu.poll_probes(t0 + RTO / 2, RTO).is_empty());
        let again = pmtu.poll_probes(t0 + RTO, RTO);
        assert_eq!(sizes(&again), vec![1428, 1420, 1408, 1400]);
        assert_eq!(pmtu.poll_probes(t0 + RTO * 2, RTO).len(), 4);
        assert!(pmtu.poll_probes(t0 + RTO * 3, RTO).is_empty());
        assert_eq!(
            pmtu.search(),
            Search::Done {
                raise: Some(t0 + RTO * 3 + RAISE_INTERVAL)
            }
        );
        // An answer that comes too late changes nothing.
        assert_eq!(pmtu.on_heartbeat_ack(&again[0].info, t0 + RTO * 4), None);
        // After the raise interval, the search starts again above 1348.
        let later = t0 + RTO * 3 + RAISE_INTERVAL;
        assert_eq!(pmtu.deadline(), Some(later));
        assert_eq!(pmtu.poll_probes(later, RTO).len(), 4);
    }

    #[test]
    fn the_ceiling_answered_ends_the_search() {
        let t0 = Instant::now();
        let mut pmtu = PathMtu::new(1191, ETHERNET_MAX_MTU, t0);
        let probes = pmtu.poll_probes(t0, RTO);
        assert_eq!(pmtu.on_heartbeat_ack(&probes[0].info, t0), Some(1428));
        assert_eq!(pmtu.search(), Search::Done { raise: None });
        assert_eq!(pmtu.deadline(), None);
        // Smaller answers arriving after it change nothing.
        assert_eq!(pmtu.on_heartbeat_ack(&probes[3].info, t0), None);
        assert_eq!(pmtu.confirmed(), 1428);
    }

    #[test]
    fn a_path_that_carries_nothing_larger_keeps_the_base() {
        let t0 = Instant::now();
        let mut pmtu = PathMtu::new(1191, ETHERNET_MAX_MTU, t0);
        for i in 0..MAX_PROBES as u32 {
            assert_eq!(pmtu.poll_probes(t0 + RTO * i, RTO).len(), LADDER.len());
        }
        assert!(pmtu.poll_probes(t0 + RTO * 3, RTO).is_empty());
        assert_eq!(pmtu.confirmed(), BASE);
        assert!(matches!(pmtu.search(), Search::Done { raise: Some(_) }));
    }

    #[test]
    fn a_ceiling_at_the_base_probes_nothing_and_odd_ceilings_are_probed_too() {
        let t0 = Instant::now();
        let mut off = PathMtu::new(1191, 1191, t0);
        assert_eq!(off.search(), Search::Disabled);
        assert!(off.poll_probes(t0, RTO).is_empty());
        assert_eq!(off.deadline(), None);

        let mut small = PathMtu::new(1191, 1350, t0);
        assert_eq!(
            sizes(&small.poll_probes(t0, RTO)),
            vec![1348, 1328, 1300, 1260, 1232]
        );
        let mut big = PathMtu::new(1400, 9000, t0);
        assert_eq!(
            sizes(&big.poll_probes(t0, RTO)),
            vec![9000, 1428, 1420, 1408]
        );
    }

    #[test]
    fn forged_or_stale_answers_are_ignored() {
        let t0 = Instant::now();
        let mut pmtu = PathMtu::new(1191, ETHERNET_MAX_MTU, t0);
        let first = pmtu.poll_probes(t0, RTO);
        // Not a probe, a size above the ceiling, a truncated info.
        assert_eq!(pmtu.on_heartbeat_ack(b"hello", t0), None);
        assert_eq!(pmtu.on_heartbeat_ack(&probe_info(0, 9000), t0), None);
        assert_eq!(pmtu.on_heartbeat_ack(&first[0].info[..11], t0), None);
        // The first round's answer after the second round went out.
        let _second = pmtu.poll_probes(t0 + RTO, RTO);
        assert_eq!(pmtu.on_heartbeat_ack(&first[0].info, t0 + RTO), None);
        assert_eq!(pmtu.confirmed(), BASE);
    }

    #[test]
    fn a_black_hole_falls_back_to_the_base_and_searches_again() {
        let t0 = Instant::now();
        let mut pmtu = PathMtu::new(1191, ETHERNET_MAX_MTU, t0);
        assert_eq!(pmtu.on_black_hole(t0), None, "nothing to fall back from");
        let probes = pmtu.poll_probes(t0, RTO);
        pmtu.on_heartbeat_ack(&probes[0].info, t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(pmtu.on_black_hole(t1), Some(BASE));
        assert_eq!(pmtu.confirmed(), BASE);
        assert_eq!(pmtu.poll_probes(t1, RTO).len(), LADDER.len());
        // The answer to the old search's probe does not count for the new one.
        assert_eq!(pmtu.on_heartbeat_ack(&probes[0].info, t1), None);
    }
}
