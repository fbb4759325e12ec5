//! Keeping webrtc-rs 0.21 from reusing a data channel's stream id too early.
//!
//! webrtc-rs frees a channel's SCTP stream id in its registry as soon as the peer's stream
//! reset arrives (or, for a local close, as soon as the close starts), while resets for that
//! id are still in flight: it answers a reset that is itself an answer. A channel that gets
//! the id within that window is killed or loses messages. Measured here: with channels
//! closed by the accepting side and reopened at once, 1 in 3 runs of 200 sequential
//! request/response streams failed; with no closes at all, none failed, but every open
//! channel costs memory and slows later opens (O(n) scans in webrtc-rs), so channels must be
//! closed.
//!
//! The guard: the opener closes a channel only after the peer reset the stream (see
//! `State::closes_channel`); otherwise the accepting side closes, and the opener sees the
//! close when the peer's reset arrives. After an outbound channel closed, new outbound
//! channels wait about two round trips, long enough for the remaining resets to land; a
//! stream that finished (reset, or closed both ways) counts as a close one round trip later,
//! since the close follows then. One open never waits more than a second in total, so
//! constant churn cannot starve it. Round trips are sampled from channel opens and from
//! `FIN` → `FIN_ACK`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Round-trip estimate used before any sample.
const INITIAL_RTT: Duration = Duration::from_millis(50);
/// Slack added to the wait, for scheduling on a loaded machine and for resets that wait for
/// a timer of webrtc-rs's driver. 10 ms was enough while the driver's write latency padded
/// the round-trip samples; with the patched driver (writes sent at once) the samples are
/// sub-millisecond on loopback, and 1 in 40 runs of
/// `resets_mid_transfer_do_not_poison_later_streams` lost a stream.
const SLACK: Duration = Duration::from_millis(25);
/// The wait never exceeds this, however slow the path looks.
const MAX_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Inner {
    last_close: Option<Instant>,
    srtt: Option<Duration>,
}

/// Per-connection state of the guard.
#[derive(Debug, Default)]
pub(crate) struct ReuseGuard {
    inner: Mutex<Inner>,
}

impl ReuseGuard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One of this side's outbound channels was closed by the peer.
    pub(crate) fn on_outbound_closed(&self, now: Instant) {
        let mut inner = self.lock();
        inner.last_close = Some(inner.last_close.map_or(now, |t| t.max(now)));
    }

    /// One of this side's outbound streams finished (reset, or both halves closed): the
    /// peer's close of its channel is about a round trip away, so count it as happening then.
    pub(crate) fn on_outbound_finished(&self, now: Instant) {
        let srtt = self.lock().srtt.unwrap_or(INITIAL_RTT);
        self.on_outbound_closed(now + srtt);
    }

    /// The longest one open waits in total, however often the guard is renewed meanwhile.
    pub(crate) fn max_wait(&self) -> Duration {
        MAX_WAIT
    }

    /// A round-trip sample (smoothed like TCP's SRTT, gain 1/8).
    pub(crate) fn on_rtt_sample(&self, sample: Duration) {
        let mut inner = self.lock();
        inner.srtt = Some(match inner.srtt {
            None => sample,
            Some(srtt) => (srtt * 7 + sample) / 8,
        });
    }

    /// The current wait after a close: two round trips plus slack, capped.
    pub(crate) fn wait(&self) -> Duration {
        let srtt = self.lock().srtt.unwrap_or(INITIAL_RTT);
        (srtt * 2 + SLACK).min(MAX_WAIT)
    }

    /// When a new outbound channel may be created; `None`: now.
    pub(crate) fn open_allowed_at(&self, now: Instant) -> Option<Instant> {
        let last = self.lock().last_close?;
        let at = last + self.wait();
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_wait_without_a_close() {
        let g = ReuseGuard::default();
        assert_eq!(g.open_allowed_at(Instant::now()), None);
    }

    #[test]
    fn waits_two_round_trips_after_a_close() {
        let g = ReuseGuard::default();
        let t0 = Instant::now();
        g.on_outbound_closed(t0);
        assert_eq!(g.open_allowed_at(t0), Some(t0 + INITIAL_RTT * 2 + SLACK));
        g.on_rtt_sample(Duration::from_millis(2));
        let wait = Duration::from_millis(4) + SLACK;
        assert_eq!(g.open_allowed_at(t0), Some(t0 + wait));
        assert_eq!(g.open_allowed_at(t0 + wait), None);
    }

    #[test]
    fn rtt_is_smoothed_and_wait_capped() {
        let g = ReuseGuard::default();
        g.on_rtt_sample(Duration::from_millis(80));
        g.on_rtt_sample(Duration::from_millis(160));
        assert_eq!(g.wait(), Duration::from_millis(90) * 2 + SLACK);
        for _ in 0..100 {
            g.on_rtt_sample(Duration::from_secs(10));
        }
        assert_eq!(g.wait(), MAX_WAIT);
    }

    #[test]
    fn a_finished_stream_counts_as_closing_one_rtt_later() {
        let g = ReuseGuard::default();
        g.on_rtt_sample(Duration::from_millis(4));
        let t0 = Instant::now();
        g.on_outbound_finished(t0);
        assert_eq!(
            g.open_allowed_at(t0),
            Some(t0 + Duration::from_millis(4 + 8) + SLACK)
        );
    }

    #[test]
    fn later_close_wins() {
        let g = ReuseGuard::default();
        let t0 = Instant::now();
        g.on_outbound_closed(t0 + Duration::from_millis(50));
        g.on_outbound_closed(t0);
        assert_eq!(
            g.open_allowed_at(t0),
            Some(t0 + Duration::from_millis(50) + g.wait())
        );
    }
}
