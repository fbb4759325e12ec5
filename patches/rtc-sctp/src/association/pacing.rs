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

use std::time::{Duration, Instant};

/// Sending time one burst may take at the pacing rate.
pub(crate) const BURST: Duration = Duration::from_millis(2);
/// The smallest burst, in packets (MTUs).
pub(crate) const MIN_BURST_PACKETS: u32 = 2;
/// The pacing rate in slow start, in multiples of `cwnd / srtt`.
pub(crate) const GAIN_SLOW_START: f64 = 2.0;
/// The pacing rate otherwise.
pub(crate) const GAIN: f64 = 1.25;

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
