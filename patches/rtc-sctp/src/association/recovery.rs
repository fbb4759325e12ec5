//! Loss detection and tail-loss probes for DATA (patch; see `PATCHES.md`).
//!
//! RFC 9260 finds a lost chunk by three miss indications (three SACKs reporting it missing
//! while reporting later TSNs), else by the T3-rtx timer, whose minimum is one second. With a
//! small window (a ping, the end of a message, a window collapsed by earlier losses) three
//! SACKs never come, and a lost retransmission can only be found by T3-rtx. So every such loss
//! costs a second or more. This module adds, after RACK-TLP (RFC 8985):
//!
//! - **Transmission order.** Every transmission of a chunk (first or again) gets the next
//!   number of a per-association counter and its send time.
//! - **Loss by what was delivered after it.** When a SACK acknowledges a transmission, every
//!   outstanding chunk transmitted before it is lost once [`DUP_THRESH`] later transmissions
//!   were delivered, or once it is older than the delivered one by a reordering window
//!   (a quarter of the minimum RTT). Lost retransmissions are found the same way.
//! - **A recovery timer** that re-runs that check when the reordering window of a chunk
//!   expires, and otherwise fires a **probe** one probe timeout after the last progress
//!   (`srtt + max(4 * rttvar, 4 ms)`): the newest outstanding chunk is sent again, with the
//!   SACK-IMMEDIATELY bit, so that the SACK it elicits reveals what else was lost. One probe
//!   per flight; T3-rtx remains the last resort.

use std::time::{Duration, Instant};

use super::Association;
use super::congestion::{CongestionControl, RateModel, TxSnapshot};
use super::pacing::{self, GainCycle, Pacer};
use super::timer::Timer;
use crate::chunk::chunk_payload_data::ChunkPayloadData;

/// Transmissions delivered after a chunk that make it lost (the duplicate threshold of
/// RFC 8985, counted in chunk transmissions).
pub(crate) const DUP_THRESH: u64 = 3;
/// The smallest reordering window and probe-timeout variance term.
const MIN_WINDOW: Duration = Duration::from_millis(1);
/// The smallest variance allowance in the probe timeout.
const MIN_PTO_VAR: Duration = Duration::from_millis(4);
/// A smoothed RTT above this multiple of the minimum says a queue stands on the path: the
/// sender then paces at its bandwidth estimate (`pacing::CYCLE`) instead of its window.
const QUEUED_RTT: f64 = 1.25;
/// The smallest minimum RTT at which the bandwidth estimate paces. Below it (loopback, a
/// LAN) the estimate is made of sub-millisecond intervals that the millisecond-grained
/// `srtt` and the pacing timer cannot follow: on loopback, pacing at it slowed 100
/// concurrent 1 MiB echoes past the close timeout once in five runs.
pub(crate) const BW_PACING_MIN_RTT: Duration = Duration::from_millis(4);

/// How much faster than this side sends the peer's data must arrive for a rising RTT to be
/// read as the peer's queue ([`Recovery::mostly_receiving`]).
const RECEIVING_MORE: f64 = 1.5;

/// Slow start grows the window to at most this many times the estimated bandwidth-delay
/// product (BBR's startup `cwnd_gain`, 2/ln 2).
const STARTUP_GAIN: f64 = 2.89;

/// What a loss behind a standing queue leaves of the window as its bound (BBRv3's
/// `beta`), [`Association::bound_inflight_on_loss`].
const LOSS_BETA: f64 = 0.7;

/// How long the window stays capped while the minimum RTT is measured again (at least a
/// round trip too; BBR's ProbeRTT).
const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// The smallest window cap during that time, in MTUs (BBR's 4 packets).
const PROBE_RTT_MIN_PACKETS: u32 = 4;

/// How many recent retransmissions are remembered, to match the duplicate TSNs a SACK
/// reports against.
const REMEMBERED_RETRANSMISSIONS: usize = 256;
/// Loss episodes a widened reordering window outlives without a new spurious retransmission
/// (RFC 8985's `reo_wnd_persist`).
const REORDER_PERSIST: u32 = 16;
/// The widest reordering window, in quarters of the minimum RTT (it is also never wider than
/// the smoothed RTT).
const MAX_REORDER_MULT: u32 = 8;

/// Why a chunk was sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// Found lost: by later deliveries (RACK) or by three miss indications.
    Loss,
    /// A tail-loss probe: sent again without a loss found.
    Probe,
    /// The T3-rtx timer expired.
    Timeout,
}

/// Retransmissions the peer reported receiving twice (duplicate TSNs in its SACKs), by
/// what sent them again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpuriousRetransmissions {
    /// Sent again because found lost.
    pub(crate) loss: u64,
    /// Tail-loss probes whose first copy had arrived.
    pub(crate) probe: u64,
    /// Sent again after a T3-rtx expiry.
    pub(crate) timeout: u64,
}

/// A congestion response that duplicate-TSN reports may prove needless (Linux's DSACK
/// undo, RFC 3708's idea for SCTP): the window before it, and how many of its
/// retransmissions are not yet proven spurious.
#[derive(Debug, Clone, Copy)]
struct Undo {
    episode: u64,
    prior_cwnd: u32,
    prior_ssthresh: u32,
    /// The loss bound before the episode (patch, eighth round).
    prior_inflight_hi: Option<u32>,
    unproven: u32,
}

/// Re-measuring the minimum RTT (BBR's ProbeRTT): the window is capped so that this
/// sender's own queue drains, until `until` and the end of round `round`.
#[derive(Debug, Clone, Copy)]
struct ProbeRtt {
    until: Instant,
    round: u64,
    prior_cwnd: u32,
    /// None below [`BW_PACING_MIN_RTT`]: there the samples of a round are enough.
    cap: Option<u32>,
}

/// Per-association loss-recovery state.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pub(crate) congestion_control: CongestionControl,
    pub(crate) rate: RateModel,
    next_tx_seq: u64,
    /// The newest transmission a SACK has acknowledged: (order, its RTT).
    rack: Option<(u64, Duration)>,
    /// The last new transmission or acknowledgement of new data.
    last_progress: Option<Instant>,
    /// A probe was sent and nothing new has been acknowledged since.
    pub(crate) probe_sent: bool,
    /// When the earliest chunk that is not yet lost, but may be, becomes lost.
    reorder_deadline: Option<Instant>,
    /// Paces DATA (`pacing.rs`).
    pacer: Pacer,
    /// The pacing gain after slow start (`pacing.rs`).
    cycle: GainCycle,
    /// The next retransmission may exceed the window by one packet: the first of a loss
    /// episode and a probe go at once (RFC 9260 7.2.4 step 3, RFC 8985 7.3).
    pub(crate) force_one_retransmission: bool,
    /// Lost chunks wait for room in the window (the next SACK) or for the pacer (its
    /// timer): a retransmission pass runs again then, not in the same flush.
    pub(crate) retransmit_waiting: bool,
    /// Set while the minimum RTT is measured again.
    probe_rtt: Option<ProbeRtt>,
    /// Recent retransmissions: (TSN, why, the loss episode it belongs to), oldest first.
    resent: std::collections::VecDeque<(u32, Resend, u64)>,
    /// Loss episodes (congestion responses) so far.
    episode: u64,
    /// The newest congestion response, while it may still be undone.
    undo: Option<Undo>,
    /// The reordering window, in quarters of the minimum RTT (RFC 8985's `reo_wnd_mult`):
    /// widened by each spurious retransmission of a found loss, at most once a round.
    reorder_mult: u32,
    /// Loss episodes left before the widened window returns to a quarter (and later
    /// deliveries alone may again prove a loss).
    reorder_persist: u32,
    /// The round of the last widening.
    reorder_round: Option<u64>,
    /// Spurious retransmissions found (statistics, tests).
    pub(crate) spurious: SpuriousRetransmissions,
    /// Congestion responses undone (statistics, tests).
    pub(crate) undone: u64,
    /// DATA payload bytes received from the peer.
    received: u64,
    /// `received` and the time when the current round began.
    round_start: Option<(u64, Instant)>,
    /// The rate at which the peer's DATA arrived over the last round, bytes per second.
    receive_rate: f64,
    /// The chunk the last probe marked for sending again.
    pub(crate) probe_tsn: Option<u32>,
    /// Probes sent (statistics, tests).
    pub(crate) probes: u64,
    /// Chunks found lost by this module (statistics, tests).
    pub(crate) detected_lost: u64,
    /// Patch (eighth round): a bound on the window learnt from losses while a queue stood
    /// (BBRv3's `inflight_hi`): see [`Association::bound_inflight_on_loss`].
    pub(crate) inflight_hi: Option<u32>,
}

impl Recovery {
    pub(crate) fn new(congestion_control: CongestionControl) -> Self {
        Recovery {
            congestion_control,
            ..Default::default()
        }
    }

    /// A transmission starts now: its order number.
    pub(crate) fn begin_transmission(&mut self, now: Instant) -> u64 {
        let seq = self.next_tx_seq;
        self.next_tx_seq += 1;
        self.last_progress = Some(now);
        seq
    }

    /// `tsn` goes again, for `why`: remembered until a SACK reports it received twice.
    pub(crate) fn remember_retransmission(&mut self, tsn: u32, why: Resend) {
        if self.resent.len() == REMEMBERED_RETRANSMISSIONS {
            self.resent.pop_front();
        }
        self.resent.push_back((tsn, why, self.episode));
        if why != Resend::Probe
            && let Some(undo) = self.undo.as_mut()
            && undo.episode == self.episode
        {
            undo.unproven += 1;
        }
    }

    /// A congestion response is about to cut the window from `cwnd` and `ssthresh`: a new
    /// loss episode, which duplicate-TSN reports may undo.
    pub(crate) fn begin_episode(&mut self, cwnd: u32, ssthresh: u32) {
        self.episode += 1;
        self.undo = Some(Undo {
            episode: self.episode,
            prior_cwnd: cwnd,
            prior_ssthresh: ssthresh,
            prior_inflight_hi: self.inflight_hi,
            unproven: 0,
        });
        if self.reorder_persist > 0 {
            self.reorder_persist -= 1;
            if self.reorder_persist == 0 {
                self.reorder_mult = 0;
            }
        }
    }

    /// Reordering or a delay spike has made a found loss spurious: later deliveries alone no
    /// longer prove a loss, and the reordering window widens by a quarter of the minimum RTT,
    /// at most once a round (RFC 8985 6.2 step 4).
    fn widen_reorder_window(&mut self) {
        let round = self.rate.round();
        if self.reorder_round != Some(round) {
            self.reorder_round = Some(round);
            self.reorder_mult = (self.reorder_mult + 1).min(MAX_REORDER_MULT);
        }
        self.reorder_persist = REORDER_PERSIST;
    }

    /// Reordering was seen lately (a spurious retransmission of a found loss).
    pub(crate) fn reordering_seen(&self) -> bool {
        self.reorder_mult > 0
    }

    /// The peer's DATA brought `bytes` of payload.
    pub(crate) fn on_data_received(&mut self, bytes: usize) {
        self.received = self.received.saturating_add(bytes as u64);
    }

    /// A new round began `now`: the receive rate of the round that ended.
    pub(crate) fn on_round(&mut self, now: Instant) {
        if let Some((bytes, at)) = self.round_start {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs > 0.0 {
                self.receive_rate = (self.received - bytes) as f64 / secs;
            }
        }
        self.round_start = Some((self.received, now));
    }

    /// The peer's data arrives at more than [`RECEIVING_MORE`] times the rate this side's
    /// data is delivered at: a rise in this side's RTT is then likely the peer's queue, in
    /// which this side's SACKs wait on their way back, not this side's own.
    pub(crate) fn mostly_receiving(&self) -> bool {
        self.receive_rate > RECEIVING_MORE * self.rate.max_bw()
    }
}

/// The newest transmission among those a SACK newly acknowledged.
#[derive(Debug, Default)]
pub(crate) struct NewestAcked {
    tx_seq: u64,
    sent: Option<Instant>,
    snapshot: Option<TxSnapshot>,
}

impl NewestAcked {
    /// Considers a chunk the SACK newly acknowledged.
    ///
    /// A retransmitted chunk is left out: which copy was delivered is unknown (Karn). RFC 8985
    /// 6.2 step 2 leaves out only one acknowledged sooner than the minimum RTT after its
    /// retransmission, but behind a bottleneck queue the first copy's acknowledgement comes
    /// later than that; taken as the newest delivered transmission, it makes every chunk
    /// sent between the two copies lost. A lost retransmission is still found by the first
    /// transmissions delivered after it, or by the probe.
    pub(crate) fn offer(&mut self, c: &ChunkPayloadData) {
        if c.nsent > 1 {
            return;
        }
        if let Some(sent) = c.last_sent
            && (self.sent.is_none() || c.tx_seq > self.tx_seq)
        {
            self.tx_seq = c.tx_seq;
            self.sent = Some(sent);
            self.snapshot = c.tx_snapshot;
        }
    }
}

impl Association {
    /// Stamps the in-flight copy of `tsn` as transmitted now.
    pub(crate) fn stamp_transmission(&mut self, tsn: u32, now: Instant, app_limited: bool) {
        let tx_seq = self.recovery.begin_transmission(now);
        let snapshot = self.recovery.rate.snapshot(now, app_limited);
        if let Some(c) = self.inflight_queue.get_mut(tsn) {
            c.tx_seq = tx_seq;
            c.last_sent = Some(now);
            c.tx_snapshot = Some(snapshot);
            c.lost = false;
        }
    }

    /// Stamps the in-flight copy of `tsn` as sent again now, for `why`, and remembers it for
    /// the duplicate-TSN reports ([`Self::on_duplicates_reported`]).
    pub(crate) fn stamp_retransmission(&mut self, tsn: u32, now: Instant, why: Resend) {
        self.stamp_transmission(tsn, now, false);
        self.recovery.remember_retransmission(tsn, why);
    }

    /// Feeds a SACK's new acknowledgements to the rate model and the window, then looks for
    /// lost chunks. Called after the SACK's acknowledgements have been recorded.
    pub(crate) fn on_sack_recovery(&mut self, now: Instant, acked_bytes: u64, newest: NewestAcked) {
        if acked_bytes > 0 {
            self.recovery.probe_sent = false;
            self.recovery.last_progress = Some(now);
            self.resume_waiting_retransmissions();
        }
        let round = self.recovery.rate.round();
        self.recovery.rate.on_ack(now, acked_bytes, newest.snapshot);
        if self.recovery.rate.round() != round {
            self.recovery.on_round(now);
            self.log_round(now);
            self.raise_inflight_bound();
        }
        if self.recovery.congestion_control == CongestionControl::DeliveryRate && acked_bytes > 0 {
            // The window never stays below what the path has shown it delivers; it moves
            // only on acknowledged data (abandoned chunks do not grow it).
            self.cwnd = self.cwnd.max(self.bounded_floor());
            self.cap_inflight_while_queued();
            self.update_probe_rtt(now);
        }
        if let Some(sent) = newest.sent
            && self
                .recovery
                .rack
                .is_none_or(|(seq, _)| newest.tx_seq > seq)
        {
            self.recovery.rack = Some((newest.tx_seq, now.saturating_duration_since(sent)));
        }
        self.detect_losses(now);
        self.arm_recovery_timer(now);
    }

    /// One line per round trip on the `rtc_sctp::timeline` target (trace level): the window,
    /// the estimates and the queue, to follow the controller in a lab run.
    fn log_round(&self, now: Instant) {
        if !log::log_enabled!(target: "rtc_sctp::timeline", log::Level::Trace) {
            return;
        }
        log::trace!(
            target: "rtc_sctp::timeline",
            "[{}] round={} cwnd={} ssthresh={} pipe={} srtt={}ms min_rtt={:?} bw={:.0} floor={} queued={} probe_rtt={} pending={} recv={:.0} t={:?} hi={:?}",
            self.side,
            self.recovery.rate.round(),
            self.cwnd,
            self.ssthresh,
            self.pipe(),
            self.rto_mgr.srtt,
            self.recovery.rate.min_rtt(),
            self.recovery.rate.max_bw(),
            self.recovery.rate.floor(),
            self.queue_standing(),
            self.recovery.probe_rtt.is_some(),
            self.pending_queue.get_num_bytes(),
            self.recovery.receive_rate,
            now,
            self.recovery.inflight_hi,
        );
    }

    /// After slow start, while a queue stands on the path ([`Self::queue_standing`]), the
    /// window is capped at the floor, twice the estimated bandwidth-delay product (BBR's
    /// in-flight cap, `cwnd_gain` x BDP): more only lengthens the queue. Without the cap,
    /// Reno's growth above the floor went on until a loss, so a deep buffer filled (20 Mbit/s
    /// with 200 ms of queue: ping across the line 179 ms against 42 ms idle). Without a
    /// queue (random loss, no rate limit) the window grows as before.
    ///
    /// While the gain cycle probes for bandwidth (gain above 1), the cap grows by that gain:
    /// a sender whose SACKs wait behind the opposite direction's queue has an RTT above the
    /// minimum, so at twice the BDP it is window-limited at its current estimate, and a
    /// faster pacing rate alone could never show that the path carries more.
    pub(crate) fn cap_inflight_while_queued(&mut self) {
        let floor = self.recovery.rate.floor();
        let probe = self.recovery.cycle.current().max(1.0);
        let cap = ((f64::from(floor) * probe) as u32)
            .min(self.recovery.inflight_hi.unwrap_or(u32::MAX))
            .max(PROBE_RTT_MIN_PACKETS * self.mtu);
        if floor > 0 && self.cwnd >= self.ssthresh && self.cwnd > cap && self.queue_standing() {
            self.cwnd = cap;
            // Still past slow start.
            self.ssthresh = self.ssthresh.min(cap);
        }
    }

    /// The window floor ([`RateModel::floor`], twice the estimated BDP) under the bound
    /// learnt from losses, if any.
    pub(crate) fn bounded_floor(&self) -> u32 {
        self.recovery
            .rate
            .floor()
            .min(self.recovery.inflight_hi.unwrap_or(u32::MAX))
    }

    /// Patch (eighth round): a loss while a queue stands ([`Self::queue_standing`]) says the
    /// queue overflowed at this window: the window is bounded at [`LOSS_BETA`] of it, but
    /// never under the estimated BDP plus [`PROBE_RTT_MIN_PACKETS`] (what the line's rate
    /// needs, paced). The floor is twice the BDP, so a queue shorter than one BDP (a 20 ms
    /// buffer on a 40 ms path) overflowed on every round: 2-4% of the packets dropped.
    /// Random loss on a path without a queue does not bound anything. The bound grows by
    /// one packet per round ([`Self::raise_inflight_bound`]), as BBRv3's `inflight_hi`.
    pub(crate) fn bound_inflight_on_loss(&mut self) {
        if self.recovery.congestion_control != CongestionControl::DeliveryRate
            || !self.queue_standing()
        {
            return;
        }
        let floor = self.recovery.rate.floor();
        if floor == 0 {
            return;
        }
        let bdp = (f64::from(floor) / super::congestion::CWND_GAIN) as u32;
        let lowest = bdp.saturating_add(PROBE_RTT_MIN_PACKETS * self.mtu);
        let bound = ((f64::from(self.cwnd) * LOSS_BETA) as u32).max(lowest);
        self.recovery.inflight_hi = Some(
            self.recovery
                .inflight_hi
                .map_or(bound, |hi| hi.min(bound).max(lowest)),
        );
    }

    /// One packet more per round for the loss bound; gone once it is above what the window
    /// may be anyway (the floor at the gain cycle's probe).
    pub(crate) fn raise_inflight_bound(&mut self) {
        let Some(hi) = self.recovery.inflight_hi else {
            return;
        };
        let hi = hi.saturating_add(self.mtu);
        let ceiling = f64::from(self.recovery.rate.floor()) * pacing::GAIN;
        self.recovery.inflight_hi = (f64::from(hi) < ceiling).then_some(hi);
    }

    /// Every [`MIN_RTT_WINDOW`](super::congestion::MIN_RTT_WINDOW) the minimum RTT is
    /// measured again: for at least [`PROBE_RTT_DURATION`] and a round trip the window is
    /// capped at half the estimated bandwidth-delay product (at least
    /// [`PROBE_RTT_MIN_PACKETS`]), so that what this sender queued at the bottleneck drains,
    /// and the smallest sample becomes the minimum (BBR's ProbeRTT, with BBRv2's half-BDP
    /// cap). Then the window is restored.
    fn update_probe_rtt(&mut self, now: Instant) {
        match self.recovery.probe_rtt {
            None if self.recovery.rate.min_rtt_expired(now) => {
                let cap = self
                    .recovery
                    .rate
                    .min_rtt()
                    .filter(|m| *m >= BW_PACING_MIN_RTT)
                    .map(|_| {
                        (self.recovery.rate.floor() / 4).max(PROBE_RTT_MIN_PACKETS * self.mtu)
                    });
                self.recovery.rate.begin_min_rtt_probe();
                self.recovery.probe_rtt = Some(ProbeRtt {
                    until: now + PROBE_RTT_DURATION,
                    round: self.recovery.rate.round(),
                    prior_cwnd: self.cwnd,
                    cap,
                });
            }
            Some(p) if now >= p.until && self.recovery.rate.round() > p.round => {
                self.recovery.probe_rtt = None;
                self.recovery.rate.end_min_rtt_probe(now);
                self.cwnd = self.cwnd.max(p.prior_cwnd);
                return;
            }
            _ => {}
        }
        if let Some(ProbeRtt { cap: Some(cap), .. }) = self.recovery.probe_rtt {
            self.cwnd = self.cwnd.min(cap);
        }
    }

    /// The largest window slow start may grow to: [`STARTUP_GAIN`] times the estimated
    /// bandwidth-delay product, at least 4 MTUs (BBR's startup bound). While the window
    /// doubles each round the bound is not reached (the estimate trails the window by a
    /// round: the bound is ~2.9 times the window of the round before); once the rate stops
    /// growing it stops the doubling, within the round, where the RTT exit comes a round
    /// late (behind a 200 ms buffer the window had reached seven times the BDP). `None` (no
    /// bound) before a rate is measured, with [`CongestionControl::Reno`], below
    /// [`BW_PACING_MIN_RTT`], while the application sets the rate (the newest acknowledged
    /// chunk left nothing queued: the estimate is the application's, and a window bounded
    /// by it could not resend a loss burst in time), and while this side mostly receives
    /// ([`Recovery::mostly_receiving`]): its RTT then holds the peer's queue, and a bound
    /// computed from the rate it measures through that queue held it at a tenth of the line.
    pub(crate) fn startup_cap(&self) -> Option<u32> {
        if self.recovery.congestion_control == CongestionControl::Reno
            || self.recovery.mostly_receiving()
            || self.recovery.rate.app_limited()
        {
            return None;
        }
        let min_rtt = self.recovery.rate.min_rtt()?;
        let bw = self.recovery.rate.max_bw();
        if min_rtt < BW_PACING_MIN_RTT || bw <= 0.0 {
            return None;
        }
        let cap = STARTUP_GAIN * bw * min_rtt.as_secs_f64();
        Some((cap.min(f64::from(u32::MAX / 2)) as u32).max(PROBE_RTT_MIN_PACKETS * self.mtu))
    }

    /// The reordering window: a quarter of the minimum RTT, times the widening spurious
    /// retransmissions caused (never wider than the smoothed RTT then).
    fn reorder_window(&self) -> Duration {
        let srtt = Duration::from_millis(self.rto_mgr.srtt);
        let min_rtt = self.recovery.rate.min_rtt().unwrap_or(srtt);
        let quarter = (min_rtt / 4).max(MIN_WINDOW);
        match self.recovery.reorder_mult {
            0 => quarter,
            mult => (quarter * mult).min(srtt.max(quarter)),
        }
    }

    /// A SACK reported `tsns` received more than once. Each that this side sent again is a
    /// spurious retransmission: counted by cause; a found loss widens the reordering window
    /// ([`Recovery::widen_reorder_window`]); and once every retransmission of the newest
    /// loss episode proves spurious, its congestion response is undone: the window and
    /// ssthresh go back to what they were (at least), and fast recovery ends. Before, the
    /// receiver reported no duplicates, so a retransmission caused by reordering or a delay
    /// spike cut the window as a real loss does, and kept doing so.
    pub(crate) fn on_duplicates_reported(&mut self, tsns: &[u32]) {
        for &tsn in tsns
            .iter()
            .take(crate::queue::payload_queue::MAX_REPORTED_DUPLICATES)
        {
            let Some(at) = self.recovery.resent.iter().rposition(|(t, ..)| *t == tsn) else {
                continue;
            };
            let Some((_, why, episode)) = self.recovery.resent.remove(at) else {
                continue;
            };
            let spurious = &mut self.recovery.spurious;
            match why {
                Resend::Loss => spurious.loss += 1,
                Resend::Probe => spurious.probe += 1,
                Resend::Timeout => spurious.timeout += 1,
            }
            if why == Resend::Probe {
                // A probe is no congestion response: nothing to undo.
                continue;
            }
            if why == Resend::Loss {
                self.recovery.widen_reorder_window();
            }
            let Some(undo) = self.recovery.undo.as_mut() else {
                continue;
            };
            if undo.episode != episode {
                continue;
            }
            undo.unproven = undo.unproven.saturating_sub(1);
            if undo.unproven == 0 {
                let undo = *undo;
                self.recovery.undo = None;
                self.recovery.undone += 1;
                self.cwnd = self.cwnd.max(undo.prior_cwnd);
                self.ssthresh = self.ssthresh.max(undo.prior_ssthresh);
                self.recovery.inflight_hi = undo.prior_inflight_hi;
                self.in_fast_recovery = false;
                log::debug!(
                    "[{}] loss episode undone (its retransmissions were spurious): cwnd={} ssthresh={}",
                    self.side,
                    self.cwnd,
                    self.ssthresh
                );
            }
        }
    }

    /// Marks lost every outstanding chunk that transmissions delivered after it prove lost;
    /// returns how many were newly marked.
    pub(crate) fn detect_losses(&mut self, now: Instant) -> usize {
        self.recovery.reorder_deadline = None;
        let Some((rack_seq, rack_rtt)) = self.recovery.rack else {
            return 0;
        };
        let window = self.reorder_window();
        let mut lost = Vec::new();
        let mut deadline: Option<Instant> = None;
        for &tsn in &self.inflight_queue.sorted {
            let Some(c) = self.inflight_queue.get(tsn) else {
                continue;
            };
            if !c.is_outstanding() || c.lost || c.tx_seq >= rack_seq {
                continue;
            }
            let Some(sent) = c.last_sent else { continue };
            let due = sent + rack_rtt + window;
            let by_count = !self.recovery.reordering_seen() && rack_seq - c.tx_seq >= DUP_THRESH;
            if by_count || now >= due {
                lost.push(tsn);
            } else {
                deadline = Some(deadline.map_or(due, |d| d.min(due)));
            }
        }
        let newly_lost = lost.len();
        for tsn in lost {
            if let Some(c) = self.inflight_queue.get_mut(tsn) {
                c.lost = true;
            }
        }
        if newly_lost > 0 {
            self.recovery.detected_lost += newly_lost as u64;
            self.on_loss_detected();
        }
        self.recovery.reorder_deadline = deadline;
        newly_lost
    }

    /// The slow-start threshold after a loss: half the window (at least 4 MTUs), as RFC 9260
    /// says, but with [`CongestionControl::DeliveryRate`] never below the window the path has
    /// shown it delivers ([`RateModel::floor`]).
    pub(crate) fn loss_ssthresh(&self) -> u32 {
        let half = std::cmp::max(self.cwnd / 2, 4 * self.mtu);
        match self.recovery.congestion_control {
            CongestionControl::Reno => half,
            CongestionControl::DeliveryRate => half.max(self.bounded_floor()),
        }
    }

    /// The congestion response to newly found losses, and their retransmission.
    fn on_loss_detected(&mut self) {
        if !self.in_fast_recovery {
            self.enter_fast_recovery(self.my_next_tsn.wrapping_sub(1));
            self.recovery.force_one_retransmission = true;
        }
        self.will_retransmit_fast = true;
    }

    /// RFC 9260 7.2.4 step 2: enters Fast Recovery until `exit_point` is acknowledged, with
    /// the window cut to [`Self::loss_ssthresh`].
    pub(crate) fn enter_fast_recovery(&mut self, exit_point: u32) {
        self.recovery.begin_episode(self.cwnd, self.ssthresh);
        self.bound_inflight_on_loss();
        self.in_fast_recovery = true;
        self.fast_recover_exit_point = exit_point;
        self.ssthresh = self.loss_ssthresh();
        self.cwnd = self.ssthresh;
        self.partial_bytes_acked = 0;
        self.will_retransmit_fast = true;
    }

    /// The probe timeout: `srtt + max(4 * rttvar, 4 ms)`; `None` before an RTT sample.
    fn probe_timeout(&self) -> Option<Duration> {
        if self.rto_mgr.srtt == 0 {
            return None;
        }
        let srtt = Duration::from_millis(self.rto_mgr.srtt);
        let var = Duration::from_secs_f64((4.0 * self.rto_mgr.rttvar).max(0.0) / 1000.0);
        Some(srtt + var.max(MIN_PTO_VAR))
    }

    /// When the next probe is due: one probe timeout after the last progress, unless a
    /// probe is already out or there is no RTT sample yet.
    fn probe_deadline(&self, now: Instant) -> Option<Instant> {
        if self.recovery.probe_sent {
            return None;
        }
        let pto = self.probe_timeout()?;
        Some(self.recovery.last_progress.unwrap_or(now) + pto)
    }

    /// The lowest TSN still outstanding (sent, neither acknowledged nor abandoned).
    pub(crate) fn earliest_outstanding(&self) -> Option<u32> {
        self.inflight_queue.sorted.iter().copied().find(|tsn| {
            self.inflight_queue
                .get(*tsn)
                .is_some_and(ChunkPayloadData::is_outstanding)
        })
    }

    fn has_outstanding(&self) -> bool {
        self.earliest_outstanding().is_some()
    }

    /// Arms the recovery timer at the earlier of the reordering deadline and the probe
    /// timeout, or stops it when nothing is outstanding.
    pub(crate) fn arm_recovery_timer(&mut self, now: Instant) {
        if !self.has_outstanding() {
            self.recovery.reorder_deadline = None;
            self.timers.set(Timer::Recovery, None);
            return;
        }
        let at = match (self.recovery.reorder_deadline, self.probe_deadline(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.timers.set(Timer::Recovery, at);
    }

    /// The recovery timer fired: chunks whose reordering window passed are lost; otherwise,
    /// once the probe timeout passed, the newest outstanding chunk is sent again as a probe.
    pub(crate) fn on_recovery_timeout(&mut self, now: Instant) {
        let probe_due = self.probe_deadline(now).is_some_and(|due| now >= due);
        if self.detect_losses(now) == 0 && probe_due {
            let newest = self
                .inflight_queue
                .sorted
                .iter()
                .rev()
                .copied()
                .find(|tsn| {
                    self.inflight_queue
                        .get(*tsn)
                        .is_some_and(ChunkPayloadData::is_outstanding)
                });
            if let Some(tsn) = newest
                && let Some(c) = self.inflight_queue.get_mut(tsn)
            {
                // A probe, not a loss: no congestion response.
                c.lost = true;
                self.recovery.probe_tsn = Some(tsn);
                self.recovery.probe_sent = true;
                self.recovery.force_one_retransmission = true;
                self.recovery.probes += 1;
                self.will_retransmit_fast = true;
                log::debug!("[{}] loss probe: tsn={}", self.side, tsn);
            }
        }
        self.arm_recovery_timer(now);
    }

    /// RFC 6675's pipe: bytes of DATA still in the network, the outstanding chunks not found
    /// lost and not waiting for retransmission. Retransmissions are budgeted against
    /// `cwnd - pipe`: before, a T3-rtx expiry or a batch of losses resent a window per poll
    /// whatever was in flight, and the driver polls until nothing comes.
    pub(crate) fn pipe(&self) -> u32 {
        u32::try_from(self.inflight_queue.pipe_bytes()).unwrap_or(u32::MAX)
    }

    /// `rtt`, the largest RTT sample of a SACK (already fed to the rate model): slow start
    /// ends when it exceeds the minimum by a quarter (at least 4 ms): a queue is building at
    /// the bottleneck, and doubling the window again would overflow it (the delay-based exit
    /// of HyStart, Linux's CUBIC). Without it, slow start ran until a loss, one round after
    /// the queue was full, and lost up to a whole window. Not while the delivery rate still
    /// grows by a quarter a round ([`RateModel::bw_growing`]): then the queue is not this
    /// sender's. With data flowing both ways, the SACKs wait behind the other direction's
    /// data; the echo's second direction left slow start at a 24 KB window and took a
    /// second to reach the line's rate.
    pub(crate) fn end_slow_start_on_rtt_rise(&mut self, rtt: Duration) {
        if self.recovery.congestion_control == CongestionControl::DeliveryRate
            && self.cwnd < self.ssthresh
            && let Some(min_rtt) = self.recovery.rate.min_rtt()
            && rtt > min_rtt + (min_rtt / 4).max(Duration::from_millis(4))
            && !self.recovery.rate.bw_growing()
            && !self.recovery.mostly_receiving()
        {
            log::debug!(
                "[{}] slow start ends: rtt {:?} over min {:?}, cwnd={}",
                self.side,
                rtt,
                min_rtt,
                self.cwnd
            );
            self.ssthresh = self.cwnd;
        }
    }

    /// The pacing rate, bytes per second (`pacing.rs`); `None` (unpaced) before an RTT sample
    /// or with [`CongestionControl::Reno`]. After slow start, while the smoothed RTT is more
    /// than [`QUEUED_RTT`] times the minimum (a queue stands on the path) and the minimum is
    /// at least [`BW_PACING_MIN_RTT`], the bandwidth estimate times the gain of
    /// [`pacing::CYCLE`]; otherwise a multiple of `cwnd / srtt`.
    pub(crate) fn pacing_rate(&mut self, now: Instant) -> Option<f64> {
        if self.recovery.congestion_control == CongestionControl::Reno || self.rto_mgr.srtt == 0 {
            return None;
        }
        let srtt = Duration::from_millis(self.rto_mgr.srtt).as_secs_f64();
        if self.cwnd >= self.ssthresh {
            let bw = self.recovery.rate.max_bw();
            if let Some(min_rtt) = self.recovery.rate.min_rtt()
                && bw > 0.0
                && self.queue_standing()
            {
                // At least a packet per round trip, whatever the estimate.
                let least = f64::from(self.mtu) / srtt;
                let bdp = bw * min_rtt.as_secs_f64();
                let inflight = &self.inflight_queue;
                let drained = || inflight.pipe_bytes() as f64 <= bdp;
                let gain = self.recovery.cycle.gain(now, min_rtt, drained, bw);
                return Some((gain * bw).max(least));
            }
        }
        let gain = if self.cwnd < self.ssthresh / 2 {
            pacing::GAIN_SLOW_START
        } else {
            pacing::GAIN
        };
        Some(gain * f64::from(self.cwnd.max(self.mtu)) / srtt)
    }

    /// The smoothed RTT is more than [`QUEUED_RTT`] times the minimum, which is at least
    /// [`BW_PACING_MIN_RTT`]: a queue stands on the path.
    pub(crate) fn queue_standing(&self) -> bool {
        let srtt = Duration::from_millis(self.rto_mgr.srtt);
        self.recovery.rate.min_rtt().is_some_and(|min_rtt| {
            min_rtt >= BW_PACING_MIN_RTT && srtt.as_secs_f64() > QUEUED_RTT * min_rtt.as_secs_f64()
        })
    }

    /// May a DATA chunk of `bytes` go now? Takes it from the pacer's budget, or arms the
    /// pacing timer for when there is budget again and says no.
    pub(crate) fn pace(&mut self, now: Instant, bytes: usize) -> bool {
        let Some(rate) = self.pacing_rate(now) else {
            return true;
        };
        let capacity = (rate * pacing::BURST.as_secs_f64())
            .max(f64::from(pacing::MIN_BURST_PACKETS * self.mtu));
        match self.recovery.pacer.take(now, rate, capacity, bytes as u32) {
            Ok(()) => true,
            Err(when) => {
                let armed = self.timers.get(Timer::Pacing);
                if armed.is_none_or(|at| at > when || at <= now) {
                    self.timers.set(Timer::Pacing, Some(when));
                }
                false
            }
        }
    }

    /// Lets lost chunks that waited for room or for the pacer go in the next pass.
    pub(crate) fn resume_waiting_retransmissions(&mut self) {
        if std::mem::take(&mut self.recovery.retransmit_waiting) {
            self.will_retransmit_fast = true;
        }
    }

    /// T3-rtx fired: everything is retransmitted by that path; forget marks and the probe.
    pub(crate) fn on_t3_recovery(&mut self) {
        self.inflight_queue.clear_lost();
        self.recovery.probe_sent = false;
        self.recovery.reorder_deadline = None;
        self.timers.set(Timer::Recovery, None);
    }
}
