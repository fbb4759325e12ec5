//! Congestion control for DATA (patch; see `PATCHES.md`).
//!
//! RFC 9260's congestion control halves the window on every loss episode and collapses it to
//! one MTU on every T3-rtx expiry. On a path with random (non-congestion) loss that caps the
//! window at a few packets: at 2% loss and a 40 ms RTT an association moves ~0.4 MiB/s where
//! TCP with BBR moves tens of MiB/s. [`CongestionControl::DeliveryRate`] keeps RFC 9260's
//! growth (slow start, congestion avoidance) and its response to loss, but the window never
//! stays below what the path has shown it delivers: [`CWND_GAIN`] times the largest delivery rate
//! measured over the last [`BW_WINDOW_ROUNDS`] round trips times the smallest RTT of the last
//! [`MIN_RTT_WINDOW`] (BBR's estimate of the bandwidth-delay product, and its window gain).
//! Random loss then costs a retransmission, not the window; on a congested bottleneck the
//! measured rate is the bottleneck's, so the window still falls back to about twice its
//! bandwidth-delay product. Without loss the behaviour is RFC 9260's, unchanged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Which congestion controller an association uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionControl {
    /// RFC 9260 section 7.2: slow start, congestion avoidance, the window halved on each loss
    /// episode and collapsed on T3-rtx expiry.
    Reno,
    /// RFC 9260's window, whose reductions on loss stop at twice the measured
    /// bandwidth-delay product (see the module documentation).
    #[default]
    DeliveryRate,
}

/// Round trips over which the largest delivery rate is kept.
pub(crate) const BW_WINDOW_ROUNDS: u64 = 10;
/// The smallest minimum RTT at which a rate sample spans its send phase too: where the
/// association's pacing at the estimate and its in-flight cap start.
pub(crate) const SEND_PHASE_MIN_RTT: Duration = super::recovery::BW_PACING_MIN_RTT;
/// How long the smallest RTT is kept before a larger sample may replace it.
pub(crate) const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// The window, in multiples of the estimated bandwidth-delay product.
pub(crate) const CWND_GAIN: f64 = 2.0;
/// A round's delivery rate this many times the rounds' before it: the rate still grows
/// ([`RateModel::bw_growing`]; BBR's full-pipe threshold).
pub(crate) const STILL_GROWING: f64 = 1.25;

/// What the rate model knew when a chunk was transmitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxSnapshot {
    /// Bytes delivered (acknowledged) when the chunk was sent.
    pub(crate) delivered: u64,
    /// When the last of those bytes was acknowledged (or the send time, before any).
    pub(crate) delivered_time: Instant,
    /// The sender had nothing more to send when the chunk went out: a rate measured over
    /// it says how fast the application wrote, not what the path can carry.
    pub(crate) app_limited: bool,
    /// When the chunk was sent.
    pub(crate) sent: Instant,
    /// When the newest chunk acknowledged by then had been sent (or the send time, before
    /// any): the start of the send phase a rate sample over this chunk spans.
    pub(crate) first_sent: Instant,
}

/// The delivery-rate model: bandwidth and minimum RTT estimates over round trips.
#[derive(Debug, Default)]
pub(crate) struct RateModel {
    delivered: u64,
    delivered_time: Option<Instant>,
    /// When the newest acknowledged chunk had been sent.
    first_sent: Option<Instant>,
    /// The newest acknowledged chunk was sent with nothing more to send.
    app_limited: bool,
    round: u64,
    next_round_delivered: u64,
    /// The largest rate (bytes per second) of each of the last rounds: (round, rate).
    bw_rounds: VecDeque<(u64, f64)>,
    min_rtt: Option<(Duration, Instant)>,
    /// While the minimum RTT is re-measured ([`Self::begin_min_rtt_probe`]): the smallest
    /// sample so far.
    probe_min: Option<Option<Duration>>,
}

impl RateModel {
    /// The snapshot to store with a chunk transmitted now.
    pub(crate) fn snapshot(&self, now: Instant, app_limited: bool) -> TxSnapshot {
        TxSnapshot {
            delivered: self.delivered,
            delivered_time: self.delivered_time.unwrap_or(now),
            app_limited,
            sent: now,
            first_sent: self.first_sent.unwrap_or(now),
        }
    }

    /// A SACK acknowledged `acked` new bytes; `newest` is the snapshot of the most recently
    /// transmitted chunk it acknowledged.
    pub(crate) fn on_ack(&mut self, now: Instant, acked: u64, newest: Option<TxSnapshot>) {
        if acked == 0 {
            return;
        }
        self.delivered += acked;
        self.delivered_time = Some(now);
        let Some(snap) = newest else { return };
        self.first_sent = Some(snap.sent);
        self.app_limited = snap.app_limited;
        if snap.delivered >= self.next_round_delivered {
            self.next_round_delivered = self.delivered;
            self.round += 1;
        }
        self.sample_rate(now, snap);
    }

    fn sample_rate(&mut self, now: Instant, snap: TxSnapshot) {
        // The longer of the ack phase and the send phase, as Linux's tcp_rate.c takes it:
        // SACKs that waited behind a queue (the opposite direction's data) and then arrive
        // together shorten the ack phase, and a rate over it alone ran above the path's:
        // 2.63 MB/s measured on a 20 Mbit/s line, a window capped at twice that BDP and a
        // queue that never drained.
        // Below SEND_PHASE_MIN_RTT of minimum RTT (loopback, a LAN) the ack phase alone, as
        // before: there the estimate only sets the window floor, no pacing or cap, and the
        // loopback figures were measured with it.
        let ack_phase = now.saturating_duration_since(snap.delivered_time);
        let send_phase = if self.min_rtt.is_some_and(|(m, _)| m >= SEND_PHASE_MIN_RTT) {
            snap.sent.saturating_duration_since(snap.first_sent)
        } else {
            Duration::ZERO
        };
        let interval = ack_phase.max(send_phase);
        // A sample over less than the minimum RTT is ACK compression, not a rate (as in
        // Linux's tcp_rate.c).
        if interval.is_zero() || self.min_rtt.is_some_and(|(m, _)| interval < m) {
            return;
        }
        let rate = (self.delivered - snap.delivered) as f64 / interval.as_secs_f64();
        if snap.app_limited && rate <= self.max_bw() {
            return;
        }
        match self.bw_rounds.back_mut() {
            Some((round, best)) if *round == self.round => *best = best.max(rate),
            _ => self.bw_rounds.push_back((self.round, rate)),
        }
        while self
            .bw_rounds
            .front()
            .is_some_and(|(r, _)| r + BW_WINDOW_ROUNDS <= self.round)
        {
            self.bw_rounds.pop_front();
        }
    }

    /// A new RTT sample (from a chunk transmitted once).
    pub(crate) fn on_rtt(&mut self, now: Instant, rtt: Duration) {
        if let Some(probe) = &mut self.probe_min {
            *probe = Some(probe.map_or(rtt, |p| p.min(rtt)));
        }
        if self.min_rtt.is_none_or(|(min, _)| rtt <= min) {
            self.min_rtt = Some((rtt, now));
        }
    }

    /// The minimum RTT is older than [`MIN_RTT_WINDOW`]: it is time to measure it again
    /// ([`Self::begin_min_rtt_probe`]).
    pub(crate) fn min_rtt_expired(&self, now: Instant) -> bool {
        self.min_rtt
            .is_some_and(|(_, at)| now.saturating_duration_since(at) > MIN_RTT_WINDOW)
    }

    /// Starts measuring the minimum RTT again: the smallest sample until
    /// [`Self::end_min_rtt_probe`] replaces it, larger or not (the path may have changed).
    /// Before, the first sample after expiry replaced it: behind a queue (another flow's,
    /// or this sender's) that sample is the queue's, the window floor doubled with it and a
    /// transfer that ran past ten seconds flooded the line.
    pub(crate) fn begin_min_rtt_probe(&mut self) {
        self.probe_min = Some(None);
    }

    /// Ends the measurement begun by [`Self::begin_min_rtt_probe`]. Without a sample in it
    /// (every acknowledgement was of a retransmission) the old minimum is kept for another
    /// window: probing again at once would keep the window capped.
    pub(crate) fn end_min_rtt_probe(&mut self, now: Instant) {
        match self.probe_min.take() {
            Some(Some(min)) => self.min_rtt = Some((min, now)),
            Some(None) => self.min_rtt = self.min_rtt.map(|(min, _)| (min, now)),
            None => {}
        }
    }

    /// The newest acknowledged chunk was sent with nothing more queued: the application,
    /// not the path, set the rate of late.
    pub(crate) fn app_limited(&self) -> bool {
        self.app_limited
    }

    /// Round trips counted so far.
    pub(crate) fn round(&self) -> u64 {
        self.round
    }

    /// The largest delivery rate of the window, bytes per second.
    pub(crate) fn max_bw(&self) -> f64 {
        self.bw_rounds.iter().map(|(_, r)| *r).fold(0.0, f64::max)
    }

    /// Whether the delivery rate still grows: the largest rate of the last completed round is
    /// at least [`STILL_GROWING`] times the largest of the rounds before it (BBR's full-pipe
    /// test, over one round), or fewer than two rounds have completed. While it grows, a
    /// rising RTT is not this sender's queue: on a path that carries the opposite
    /// direction's data too, the SACKs queue behind that data and the RTT rises while this
    /// direction's window is still small.
    pub(crate) fn bw_growing(&self) -> bool {
        let mut completed = self.bw_rounds.iter().filter(|(r, _)| *r < self.round).rev();
        let Some((_, last)) = completed.next() else {
            return true;
        };
        let Some(before) = completed.map(|(_, rate)| *rate).reduce(f64::max) else {
            return true;
        };
        *last >= STILL_GROWING * before
    }

    /// The smallest RTT of the window.
    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(|(m, _)| m)
    }

    /// `CWND_GAIN` times the estimated bandwidth-delay product, in bytes; 0 until a rate
    /// and an RTT have been measured.
    pub(crate) fn floor(&self) -> u32 {
        let Some(min_rtt) = self.min_rtt() else {
            return 0;
        };
        let bdp = self.max_bw() * min_rtt.as_secs_f64();
        (CWND_GAIN * bdp).min(f64::from(u32::MAX / 2)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u32 = 1200;

    /// Runs an ack-clocked sender with a fixed window over a path that delivers at most
    /// `rate` bytes per second with this base RTT, MTU-sized chunks, for `duration`.
    fn drive(model: &mut RateModel, cwnd: u32, rate: f64, rtt: Duration, duration: Duration) {
        let start = Instant::now();
        let mut in_flight: std::collections::VecDeque<(Instant, TxSnapshot)> = Default::default();
        let mut now = start;
        let mut last_delivery = start;
        let per_chunk = Duration::from_secs_f64(f64::from(MTU) / rate);
        while now < start + duration {
            while (in_flight.len() as u32 + 1) * MTU <= cwnd {
                in_flight.push_back((now, model.snapshot(now, false)));
            }
            let Some((sent, snap)) = in_flight.pop_front() else {
                break;
            };
            // The bottleneck serializes chunks; the ack returns half a base RTT later.
            last_delivery = (sent + rtt / 2).max(last_delivery + per_chunk);
            now = now.max(last_delivery + rtt / 2);
            model.on_rtt(now, now - sent);
            model.on_ack(now, u64::from(MTU), Some(snap));
        }
    }

    #[test]
    fn floor_is_twice_the_bdp_of_a_saturated_path() {
        let rtt = Duration::from_millis(40);
        let rate = 4.0 * 1024.0 * 1024.0;
        let bdp = rate * rtt.as_secs_f64();
        // A window of three BDPs: the path is saturated and a queue builds, which must
        // inflate neither estimate.
        let mut model = RateModel::default();
        drive(
            &mut model,
            (3.0 * bdp) as u32,
            rate,
            rtt,
            Duration::from_secs(3),
        );
        let bw = model.max_bw();
        assert!((bw / rate - 1.0).abs() < 0.1, "bw estimate {bw} for {rate}");
        assert_eq!(model.min_rtt(), Some(rtt));
        let ratio = f64::from(model.floor()) / bdp;
        assert!(
            (1.8..=2.2).contains(&ratio),
            "floor {} is {ratio:.2}x the BDP",
            model.floor()
        );
    }

    /// A window that doubles every round: the rate grows. A fixed window on a saturated
    /// path: after a few rounds it does not.
    #[test]
    fn bw_growing_tells_a_growing_rate_from_a_plateau() {
        let rtt = Duration::from_millis(40);
        let rate = 4.0 * 1024.0 * 1024.0;
        let mut model = RateModel::default();
        assert!(model.bw_growing(), "no rounds yet");
        // Slow start: the window doubles every round, far below the path's 140-packet BDP.
        for cwnd in [4, 8, 16, 32, 64] {
            drive(&mut model, cwnd * MTU, rate, rtt, rtt);
            assert!(model.bw_growing(), "window {cwnd} MTUs");
        }
        // A window of three BDPs for a second: the rate is the path's, round after round.
        let bdp = rate * rtt.as_secs_f64();
        drive(
            &mut model,
            (3.0 * bdp) as u32,
            rate,
            rtt,
            Duration::from_secs(1),
        );
        assert!(!model.bw_growing());
    }

    /// SACKs held behind a queue and then released together (ACK compression, e.g. behind
    /// the opposite direction's data) must not raise the estimate above the rate the data
    /// was sent at: a rate sample spans the send phase too, as in Linux's tcp_rate.c.
    #[test]
    fn compressed_acks_do_not_inflate_the_estimate() {
        let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
        let start = Instant::now();
        let rate = f64::from(MTU) / 0.0012; // a chunk every 1.2 ms: 1 MB/s
        let rtt = 40.0;
        // Chunk i is sent at 1.2 i ms and acknowledged one RTT later, except that the
        // acknowledgements due between 158.8 and 320 ms are held until 320 ms and then arrive
        // 0.2 ms apart.
        let mut events: Vec<(Duration, bool, usize)> = Vec::new();
        let mut held = 0;
        for i in 0..400 {
            let sent = 1.2 * i as f64;
            events.push((ms(sent), true, i));
            let mut acked = sent + rtt;
            if (158.8..320.0).contains(&acked) {
                acked = 320.0 + 0.2 * held as f64;
                held += 1;
            }
            events.push((ms(acked), false, i));
        }
        events.sort_by_key(|(at, is_send, _)| (*at, !*is_send));
        let mut model = RateModel::default();
        let mut snaps = vec![None; 400];
        for (at, is_send, i) in events {
            let now = start + at;
            if is_send {
                snaps[i] = Some((now, model.snapshot(now, false)));
            } else if let Some((sent, snap)) = snaps[i] {
                model.on_rtt(now, now - sent);
                model.on_ack(now, u64::from(MTU), Some(snap));
            }
        }
        assert!(held > 100, "the scenario holds acknowledgements ({held})");
        let bw = model.max_bw();
        assert!(
            bw <= 1.1 * rate,
            "estimate {bw:.0} B/s for data sent at {rate:.0} B/s"
        );
    }

    #[test]
    fn floor_is_zero_before_samples() {
        let mut model = RateModel::default();
        assert_eq!(model.floor(), 0);
        model.on_rtt(Instant::now(), Duration::from_millis(10));
        assert_eq!(model.floor(), 0, "an RTT but no rate yet");
    }

    #[test]
    fn app_limited_samples_do_not_lower_the_estimate() {
        let mut model = RateModel::default();
        let rtt = Duration::from_millis(20);
        drive(&mut model, 64 * MTU, 8.0e6, rtt, Duration::from_secs(2));
        let before = model.max_bw();
        assert!(before > 0.0);
        let mut now = Instant::now() + Duration::from_secs(3);
        // The application now writes a trickle: app-limited, slow samples, for more than
        // the rate window's rounds.
        for _ in 0..(3 * BW_WINDOW_ROUNDS) {
            let snap = model.snapshot(now, true);
            now += Duration::from_millis(100);
            model.on_ack(now, 100, Some(snap));
        }
        assert!(
            model.max_bw() >= before * 0.99,
            "{} < {before}",
            model.max_bw()
        );
    }

    #[test]
    fn rate_samples_shorter_than_the_min_rtt_are_ignored() {
        let mut model = RateModel::default();
        let now = Instant::now();
        model.on_rtt(now, Duration::from_millis(50));
        let snap = model.snapshot(now, false);
        // 1 MB acknowledged 1 ms after: ACK compression, not 1 GB/s.
        model.on_ack(now + Duration::from_millis(1), 1_000_000, Some(snap));
        assert_eq!(model.max_bw(), 0.0);
    }

    /// The minimum RTT expires after its window, and the smallest sample of the probe that
    /// follows replaces it (before: the first sample after expiry, a queued one).
    #[test]
    fn min_rtt_expires_after_its_window() {
        let mut model = RateModel::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        model.on_rtt(t0, ms(10));
        model.on_rtt(t0 + Duration::from_secs(1), ms(30));
        assert_eq!(model.min_rtt(), Some(ms(10)));
        let later = t0 + MIN_RTT_WINDOW + Duration::from_secs(1);
        assert!(!model.min_rtt_expired(t0 + Duration::from_secs(1)));
        assert!(model.min_rtt_expired(later));
        // A queued sample alone does not replace it.
        model.on_rtt(later, ms(90));
        assert_eq!(model.min_rtt(), Some(ms(10)));
        model.begin_min_rtt_probe();
        for rtt in [90, 30, 45] {
            model.on_rtt(later, ms(rtt));
        }
        model.end_min_rtt_probe(later);
        assert_eq!(model.min_rtt(), Some(ms(30)));
        assert!(!model.min_rtt_expired(later + Duration::from_secs(1)));
        // A probe without a sample keeps the minimum for another window.
        let much_later = later + MIN_RTT_WINDOW + Duration::from_secs(1);
        assert!(model.min_rtt_expired(much_later));
        model.begin_min_rtt_probe();
        model.end_min_rtt_probe(much_later);
        assert_eq!(model.min_rtt(), Some(ms(30)));
        assert!(!model.min_rtt_expired(much_later + Duration::from_secs(1)));
    }
}
