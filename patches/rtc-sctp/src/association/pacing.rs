//! Pacing of DATA (patch; see `PATCHES.md`, "Bottlenecks").
//!
//! Without pacing every window leaves as a burst at the sender's line rate: a SACK that
//! acknowledges a batch (receivers acknowledge up to a few dozen packets at once) releases
//! as many packets back to back, and a shallow queue at a bottleneck (a home router's uplink)
//! drops what does not fit. The pacer spreads DATA over time at a rate derived from the
//! window: `gain * cwnd / srtt`, as Linux paces TCP (`tcp_update_pacing_rate`: 2x the window's
//! rate in slow start, 1.2x after). It is a token bucket holding at most a small burst
//! ([`BURST`] of sending time, at least [`MIN_BURST_PACKETS`] packets); a chunk may go out
//! while the bucket is not empty (it may go into debt by one chunk), so a chunk larger than
//! the burst is never stuck. When the bucket is empty the association arms its pacing timer
//! for the moment it refills, and sends nothing more until then. SACKs and control chunks
//! are not paced.
//!
//! A window-derived rate never drains a queue: with the window above the path's
//! bandwidth-delay product (the delivery-rate floor keeps it at twice that) a queue of the
//! difference stands at the bottleneck. So after slow start, while the smoothed RTT says a
//! queue stands, the rate is the bandwidth estimate times BBR's gain cycle ([`CYCLE`]).
//! Where nothing queues (random loss, no rate limit) the window-derived rate stays, so the
//! pacer follows the window's growth.

use std::time::{Duration, Instant};

/// Sending time one burst may take at the pacing rate.
pub(crate) const BURST: Duration = Duration::from_millis(2);
/// The smallest burst, in packets (MTUs).
pub(crate) const MIN_BURST_PACKETS: u32 = 2;
/// The pacing rate in slow start, in multiples of `cwnd / srtt`.
pub(crate) const GAIN_SLOW_START: f64 = 2.0;
/// The pacing rate otherwise.
pub(crate) const GAIN: f64 = 1.25;

/// The pacing gains after slow start, one per minimum RTT, in multiples of the estimated
/// bottleneck rate (BBR's ProbeBW cycle): probe for more bandwidth for one round trip, drain
/// the queue that probe built for one, cruise at the estimate for six. Paced at the
/// estimate, the sender keeps the bottleneck busy without a standing queue; a standing
/// queue delays every SACK of the opposite direction, which then waits for window.
pub(crate) const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];

/// The longest the drain phase of [`CYCLE`] lasts, in minimum RTTs, while the data in flight
/// is still above the estimated bandwidth-delay product.
pub(crate) const MAX_DRAIN_PHASES: u32 = 3;

/// A probe that raised the bandwidth estimate by this factor (measured when the drain
/// phase after it ends, a round trip later) is followed at once by another probe instead of
/// the cruise phases: the path has room the estimate does not know yet.
pub(crate) const PROBE_PAID: f64 = 1.1;

/// Where the sender is in [`CYCLE`].
#[derive(Debug, Default)]
pub(crate) struct GainCycle {
    index: usize,
    started: Option<Instant>,
    /// The bandwidth estimate when the current probe began.
    probe_from_bw: f64,
}

impl GainCycle {
    /// The gain of the phase `now` falls in. A phase lasts `min_rtt`, except the drain phase
    /// (gain below 1): it lasts until `drained` (the data in flight is down to the estimated
    /// bandwidth-delay product: the queue this sender built is gone), at least one and at
    /// most [`MAX_DRAIN_PHASES`] minimum RTTs (BBRv3's ProbeBW_DOWN, which leaves when
    /// in-flight reaches the BDP). A fixed one-RTT drain only removed what the probe before
    /// it added: a queue that the estimate's error built during the cruise phases stood for
    /// good, and delayed every SACK of the opposite direction.
    ///
    /// `bw` is the bandwidth estimate now. When the drain phase ends with the estimate at
    /// least [`PROBE_PAID`] times what it was when the probe before it began, the cycle goes
    /// back to the probe instead of cruising (BBRv3 keeps probing up while the rate grows):
    /// a sender whose estimate is far below the path's rate (one whose slow start ended
    /// early because the opposite direction's queue delayed its SACKs) then grows by a
    /// quarter every two round trips, not every eight.
    ///
    /// `drained` is asked only when a drain phase could end (it is a pass over the chunks in
    /// flight, and this runs for every DATA chunk paced).
    pub(crate) fn gain(
        &mut self,
        now: Instant,
        min_rtt: Duration,
        drained: impl FnOnce() -> bool,
        bw: f64,
    ) -> f64 {
        match self.started {
            Some(started) => {
                let elapsed = now.saturating_duration_since(started);
                let draining = self.current() < 1.0;
                let over = elapsed >= min_rtt
                    && (!draining || elapsed >= min_rtt * MAX_DRAIN_PHASES || drained());
                if over {
                    let paid = draining && bw >= PROBE_PAID * self.probe_from_bw;
                    self.index = if paid {
                        0
                    } else {
                        (self.index + 1) % CYCLE.len()
                    };
                    self.started = Some(now);
                }
            }
            None => self.started = Some(now),
        }
        if self.index == 0 && self.started == Some(now) {
            self.probe_from_bw = bw;
        }
        self.current()
    }

    /// The gain of the current phase, without moving through the cycle; 1 before the cycle
    /// has begun.
    pub(crate) fn current(&self) -> f64 {
        if self.started.is_none() {
            return 1.0;
        }
        CYCLE.get(self.index).copied().unwrap_or(1.0)
    }
}

/// A token bucket in bytes.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    tokens: f64,
    last: Option<Instant>,
}

impl Pacer {
    /// Refills the bucket for the time since the last call, at `rate` bytes per second, up to
    /// `capacity` bytes.
    fn refill(&mut self, now: Instant, rate: f64, capacity: f64) {
        let elapsed = self
            .last
            .map_or(Duration::MAX, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        let added = rate * elapsed.as_secs_f64();
        self.tokens = if added.is_finite() {
            (self.tokens + added).min(capacity)
        } else {
            capacity
        };
    }

    /// Takes `bytes` now if the bucket (refilled at `rate`, holding at most `capacity`) is
    /// not empty; the bucket may go into debt by this one take. `Err(when)`: nothing may
    /// go before `when`.
    pub(crate) fn take(
        &mut self,
        now: Instant,
        rate: f64,
        capacity: f64,
        bytes: u32,
    ) -> Result<(), Instant> {
        self.refill(now, rate, capacity);
        // Half a byte of slack: a wait computed to refill to zero must let the chunk go.
        if self.tokens > -0.5 {
            self.tokens -= f64::from(bytes);
            return Ok(());
        }
        // At least a microsecond later: the refill must make progress.
        let wait = Duration::from_secs_f64((-self.tokens / rate).max(1e-6));
        Err(now + wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over a long run the bucket lets through `rate` bytes per second, plus one burst.
    #[test]
    fn paces_at_the_rate() {
        let mut pacer = Pacer::default();
        let start = Instant::now();
        let (rate, capacity, chunk) = (1_000_000.0, 4_000.0, 1_000);
        let mut now = start;
        let mut sent = 0u64;
        while now < start + Duration::from_secs(1) {
            match pacer.take(now, rate, capacity, chunk) {
                Ok(()) => sent += u64::from(chunk),
                Err(when) => {
                    assert!(when > now, "a wait that does not advance time");
                    now = when;
                }
            }
        }
        let expected = rate + capacity;
        assert!(
            (sent as f64 - expected).abs() <= 2.0 * f64::from(chunk),
            "sent {sent} bytes in 1 s at {rate} B/s (burst {capacity})"
        );
    }

    /// The drain phase lasts until the queue is drained (at most [`MAX_DRAIN_PHASES`]); a
    /// probe that raised the estimate is followed by another one, one that did not by the
    /// cruise phases.
    #[test]
    fn gain_cycle_drains_and_probes_again_while_it_pays() {
        let rtt = Duration::from_millis(40);
        let t0 = Instant::now();
        let at = |n: u32| t0 + rtt * n;
        let mut cycle = GainCycle::default();
        assert_eq!(cycle.gain(at(0), rtt, || true, 100.0), 1.25, "the probe");
        assert_eq!(cycle.gain(at(1), rtt, || false, 100.0), 0.75, "the drain");
        // Still queued: the drain goes on, up to its bound.
        assert_eq!(cycle.gain(at(2), rtt, || false, 100.0), 0.75);
        assert_eq!(cycle.gain(at(3), rtt, || false, 100.0), 0.75);
        // The probe raised nothing: cruise.
        assert_eq!(
            cycle.gain(at(4), rtt, || false, 100.0),
            1.0,
            "bounded drain"
        );
        for n in 5..10 {
            assert_eq!(cycle.gain(at(n), rtt, || true, 100.0), 1.0, "cruise {n}");
        }
        assert_eq!(
            cycle.gain(at(10), rtt, || true, 100.0),
            1.25,
            "the next probe"
        );
        // This probe pays: the drain (drained at once) ends with the estimate 20% up.
        assert_eq!(cycle.gain(at(11), rtt, || true, 100.0), 0.75);
        assert_eq!(cycle.gain(at(12), rtt, || true, 120.0), 1.25, "probe again");
        assert_eq!(cycle.gain(at(13), rtt, || true, 120.0), 0.75);
        // 5% more is not enough.
        assert_eq!(cycle.gain(at(14), rtt, || true, 126.0), 1.0, "cruise again");
    }

    /// A chunk larger than the whole burst still goes, once the bucket is not empty.
    #[test]
    fn a_chunk_larger_than_the_burst_is_not_stuck() {
        let mut pacer = Pacer::default();
        let now = Instant::now();
        assert!(pacer.take(now, 1000.0, 100.0, 5000).is_ok());
        let Err(when) = pacer.take(now, 1000.0, 100.0, 5000) else {
            panic!("the bucket is in debt");
        };
        assert!(pacer.take(when, 1000.0, 100.0, 5000).is_ok());
    }
}
