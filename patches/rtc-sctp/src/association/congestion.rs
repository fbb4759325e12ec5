//! Congestion control and loss-recovery state for DATA (patch; see `PATCHES.md`).
//!
//! RFC 9260's congestion control halves the window on every loss episode and collapses it to
//! one MTU on every T3-rtx expiry. On a path with random (non-congestion) loss that caps the
//! window at a few packets: at 2% loss and a 40 ms RTT an association moves ~0.2 MiB/s
//! where TCP with BBR moves tens of MiB/s. [`CongestionControl::DeliveryRate`] sizes the window
//! from what the path delivers instead: the largest delivery rate measured over the last
//! [`BW_WINDOW_ROUNDS`] round trips times the smallest RTT of the last [`MIN_RTT_WINDOW`],
//! with the gain BBR uses for its congestion window ([`CWND_GAIN`]), and grows the window
//! exponentially until the measured rate stops growing (the "full pipe" test of BBR). Loss
//! does not shrink it; a T3-rtx expiry does (to one MTU, regrown by acknowledgements up to the
//! model's window). There is no pacing and no probe cycling: the window bounds what is in
//! flight to twice the path's bandwidth-delay product.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Which congestion controller an association uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionControl {
    /// RFC 9260 section 7.2: slow start, congestion avoidance, the window halved on each loss
    /// episode and collapsed on T3-rtx expiry.
    Reno,
    /// The window follows the measured delivery rate and minimum RTT, as BBR's does (see the
    /// module documentation). Random loss does not shrink it.
    #[default]
    DeliveryRate,
}

/// Round trips over which the largest delivery rate is kept.
pub(crate) const BW_WINDOW_ROUNDS: u64 = 10;
/// How long the smallest RTT is kept before a larger sample may replace it.
pub(crate) const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// The window, in multiples of the estimated bandwidth-delay product.
pub(crate) const CWND_GAIN: f64 = 2.0;
/// Rounds without 25% growth of the delivery rate after which the pipe counts as full.
const FULL_PIPE_ROUNDS: u32 = 3;
/// The smallest window, in MTUs.
pub(crate) const MIN_CWND_MTUS: u32 = 4;

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
}

/// The delivery-rate model: bandwidth and minimum RTT estimates, round counting and the
/// full-pipe test.
#[derive(Debug, Default)]
pub(crate) struct RateModel {
    delivered: u64,
    delivered_time: Option<Instant>,
    round: u64,
    next_round_delivered: u64,
    round_app_limited: bool,
    /// The largest rate (bytes per second) of each of the last rounds: (round, rate).
    bw_rounds: VecDeque<(u64, f64)>,
    min_rtt: Option<(Duration, Instant)>,
    full_bw: f64,
    full_bw_rounds: u32,
    filled_pipe: bool,
}

impl RateModel {
    /// The snapshot to store with a chunk transmitted now.
    pub(crate) fn snapshot(&self, now: Instant, app_limited: bool) -> TxSnapshot {
        TxSnapshot {
            delivered: self.delivered,
            delivered_time: self.delivered_time.unwrap_or(now),
            app_limited,
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
        self.round_app_limited |= snap.app_limited;
        if snap.delivered >= self.next_round_delivered {
            self.next_round_delivered = self.delivered;
            self.round += 1;
            self.on_round_end();
        }
        let interval = now.saturating_duration_since(snap.delivered_time);
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

    fn on_round_end(&mut self) {
        let app_limited = std::mem::take(&mut self.round_app_limited);
        if self.filled_pipe || app_limited {
            return;
        }
        let bw = self.max_bw();
        if bw >= self.full_bw * 1.25 {
            self.full_bw = bw;
            self.full_bw_rounds = 0;
        } else {
            self.full_bw_rounds += 1;
            self.filled_pipe = self.full_bw_rounds >= FULL_PIPE_ROUNDS;
        }
    }

    /// A new RTT sample (from a chunk transmitted once).
    pub(crate) fn on_rtt(&mut self, now: Instant, rtt: Duration) {
        let expired = self.min_rtt.is_none_or(|(min, at)| {
            rtt <= min || now.saturating_duration_since(at) > MIN_RTT_WINDOW
        });
        if expired {
            self.min_rtt = Some((rtt, now));
        }
    }

    /// The largest delivery rate of the window, bytes per second.
    pub(crate) fn max_bw(&self) -> f64 {
        self.bw_rounds.iter().map(|(_, r)| *r).fold(0.0, f64::max)
    }

    /// Whether the full-pipe test has passed.
    pub(crate) fn filled_pipe(&self) -> bool {
        self.filled_pipe
    }

    /// The smallest RTT of the window.
    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(|(m, _)| m)
    }

    /// `CWND_GAIN` times the estimated bandwidth-delay product, plus `quantum` bytes; `None`
    /// until a rate and an RTT have been measured.
    pub(crate) fn target_cwnd(&self, quantum: u32) -> Option<u32> {
        let min_rtt = self.min_rtt()?;
        let bw = self.max_bw();
        if bw <= 0.0 {
            return None;
        }
        let bdp = bw * min_rtt.as_secs_f64();
        Some((CWND_GAIN * bdp).min(f64::from(u32::MAX / 2)) as u32 + quantum)
    }

    /// The next window for [`CongestionControl::DeliveryRate`] after `acked` new bytes.
    pub(crate) fn next_cwnd(&self, cwnd: u32, acked: u32, mtu: u32) -> u32 {
        let floor = MIN_CWND_MTUS * mtu;
        let grown = cwnd.saturating_add(acked);
        let next = match self.target_cwnd(3 * mtu) {
            // Until the pipe is full, grow as slow start does, and never below the model.
            Some(target) if !self.filled_pipe => grown.max(target),
            Some(target) => grown.min(target),
            None => grown,
        };
        next.max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u32 = 1200;

    /// Runs an ack-clocked sender over a path that delivers at most `rate` bytes per second
    /// with this base RTT, MTU-sized chunks, for `duration`; returns the final window.
    fn drive(
        model: &mut RateModel,
        rate: f64,
        rtt: Duration,
        duration: Duration,
        start: Instant,
    ) -> u32 {
        let mut cwnd = MIN_CWND_MTUS * MTU;
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
            // The bottleneck serializes chunks; the ack returns one base RTT later.
            last_delivery = (sent + rtt / 2).max(last_delivery + per_chunk);
            now = now.max(last_delivery + rtt / 2);
            model.on_rtt(now, now - sent);
            model.on_ack(now, u64::from(MTU), Some(snap));
            cwnd = model.next_cwnd(cwnd, MTU, MTU);
        }
        cwnd
    }

    #[test]
    fn window_converges_to_twice_the_bdp() {
        let mut model = RateModel::default();
        let rtt = Duration::from_millis(40);
        let rate = 4.0 * 1024.0 * 1024.0;
        let cwnd = drive(
            &mut model,
            rate,
            rtt,
            Duration::from_secs(5),
            Instant::now(),
        );
        assert!(model.filled_pipe(), "the pipe should be found full");
        let bdp = rate * rtt.as_secs_f64();
        let ratio = f64::from(cwnd) / bdp;
        assert!(
            (1.8..=2.4).contains(&ratio),
            "cwnd {cwnd} is {ratio:.2}x the BDP"
        );
        let bw = model.max_bw();
        assert!((bw / rate - 1.0).abs() < 0.2, "bw estimate {bw} for {rate}");
    }

    #[test]
    fn window_never_below_the_floor_and_grows_before_a_sample() {
        let model = RateModel::default();
        assert_eq!(model.next_cwnd(0, 0, MTU), MIN_CWND_MTUS * MTU);
        assert_eq!(model.next_cwnd(10 * MTU, MTU, MTU), 11 * MTU);
    }

    #[test]
    fn app_limited_samples_do_not_lower_the_estimate_nor_fill_the_pipe() {
        let mut model = RateModel::default();
        let start = Instant::now();
        let rtt = Duration::from_millis(20);
        drive(&mut model, 8.0e6, rtt, Duration::from_secs(2), start);
        let before = model.max_bw();
        let filled = model.filled_pipe();
        let mut now = start + Duration::from_secs(3);
        // The application now writes a trickle: app-limited, slow samples.
        for _ in 0..50 {
            let snap = model.snapshot(now, true);
            now += Duration::from_millis(100);
            model.on_ack(now, 100, Some(snap));
        }
        assert!(
            model.max_bw() >= before * 0.99,
            "{} < {before}",
            model.max_bw()
        );
        assert_eq!(model.filled_pipe(), filled);
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

    #[test]
    fn min_rtt_expires_after_its_window() {
        let mut model = RateModel::default();
        let t0 = Instant::now();
        model.on_rtt(t0, Duration::from_millis(10));
        model.on_rtt(t0 + Duration::from_secs(1), Duration::from_millis(30));
        assert_eq!(model.min_rtt(), Some(Duration::from_millis(10)));
        model.on_rtt(
            t0 + MIN_RTT_WINDOW + Duration::from_secs(1),
            Duration::from_millis(30),
        );
        assert_eq!(model.min_rtt(), Some(Duration::from_millis(30)));
    }
}
