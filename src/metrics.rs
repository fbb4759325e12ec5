//! Prometheus metrics (feature `metrics`): [`Metrics`] records the behaviour's [`Event`]s into
//! a [`prometheus_client::registry::Registry`], the way `libp2p-metrics` records its
//! protocols' events.
//!
//! ```
//! use libp2p_webrtc_signal::metrics::Metrics;
//! use prometheus_client::registry::Registry;
//!
//! let mut registry = Registry::default();
//! let metrics = Metrics::new(&mut registry);
//! // In the Swarm's event loop:
//! //   SwarmEvent::Behaviour(MyEvent::Webrtc(e)) => metrics.record(&e),
//! // and for every Swarm event (the open direct connections gauge needs the closes):
//! //   metrics.record_swarm_event(&event);
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains("webrtc_signal_relays_drained_total 0"));
//! ```
//!
//! All names start with `webrtc_signal_`:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `upgrades_started_total` | counter | `role` (`offerer`, `answerer`) |
//! | `upgrades_succeeded_total` | counter | `family` (`udp4`, `udp6`, `unknown`), `turn` (`true`, `false`) |
//! | `upgrades_failed_total` | counter | `reason` (see below), `will_retry` |
//! | `upgrade_attempts` | histogram | attempts an upgrade took (1 = the first succeeded) |
//! | `upgrade_duration_seconds` | histogram | successful attempt, start to direct connection |
//! | `upgrade_phase_duration_seconds` | histogram | `phase`: `stream`, `descriptions`, `ice`, `dtls`, `sctp`, `handoff` |
//! | `signaling_bytes_total` | counter | `direction` (`sent`, `received`), of successful upgrades |
//! | `direct_connections` | gauge | open direct connections made by upgrades |
//! | `relays_drained_total` | counter | relayed connections closed after an upgrade |
//! | `direct_lost_total` | counter | `will_redial`: direct connections whose path died (fallback) |
//! | `fallbacks_failed_total` | counter | peers disconnected after every redial failed |
//! | `restarts_total` | counter | `outcome` (`succeeded`, `failed`): ICE restarts |
//!
//! `reason` is one of `webrtc`, `invalid_sdp`, `invalid_candidate`, `too_many_candidates`,
//! `fingerprint_mismatch`, `no_fingerprint`, `connection_failed`, `closed`,
//! `invalid_state`, `signaling`, `protocol`, `timeout`, `too_many_upgrades`, `relay_lost`,
//! `unsupported`, `denied`, `invalid_config`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use libp2p_swarm::{ConnectionId, SwarmEvent};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::{Error, Event, SdpRole};

/// Records [`Event`]s into a Prometheus registry. Cheap to clone: clones record into the
/// same metrics.
#[derive(Clone)]
pub struct Metrics {
    started: Family<RoleLabels, Counter>,
    succeeded: Family<PathLabels, Counter>,
    failed: Family<FailureLabels, Counter>,
    attempts: Histogram,
    duration: Histogram,
    phases: Family<PhaseLabels, Histogram>,
    signaling_bytes: Family<DirectionLabels, Counter>,
    direct: Gauge,
    /// The direct connections counted in `direct`, so that only their closes count down.
    /// Bounded by the open direct connections when [`Metrics::record_swarm_event`] is fed.
    direct_ids: Arc<Mutex<HashSet<ConnectionId>>>,
    relays_drained: Counter,
    direct_lost: Family<RedialLabels, Counter>,
    fallbacks_failed: Counter,
    restarts: Family<OutcomeLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    family: &'static str,
    turn: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    reason: &'static str,
    will_retry: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedialLabels {
    will_redial: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Histogram buckets for upgrade durations: 10 ms to ~41 s.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

impl Metrics {
    /// Registers the metrics in `registry`, under the prefix `webrtc_signal`.
    pub fn new(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("webrtc_signal");
        let metrics = Self {
            started: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            attempts: Histogram::new([1.0, 2.0, 3.0, 5.0, 8.0]),
            duration: duration_buckets(),
            phases: Family::new_with_constructor(duration_buckets),
            signaling_bytes: Family::default(),
            direct: Gauge::default(),
            direct_ids: Default::default(),
            relays_drained: Counter::default(),
            direct_lost: Family::default(),
            fallbacks_failed: Counter::default(),
            restarts: Family::default(),
        };
        registry.register(
            "upgrades_started",
            "Upgrade attempts started, by role",
            metrics.started.clone(),
        );
        registry.register(
            "upgrades_succeeded",
            "Upgrades that ended with a direct connection, by address family and TURN use",
            metrics.succeeded.clone(),
        );
        registry.register(
            "upgrades_failed",
            "Upgrade attempts that failed, by reason and whether this side retries",
            metrics.failed.clone(),
        );
        registry.register(
            "upgrade_attempts",
            "Attempts a successful upgrade took",
            metrics.attempts.clone(),
        );
        registry.register_with_unit(
            "upgrade_duration",
            "Successful upgrade attempts, from their start to the direct connection",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register_with_unit(
            "upgrade_phase_duration",
            "Phases of successful upgrade attempts",
            Unit::Seconds,
            metrics.phases.clone(),
        );
        registry.register_with_unit(
            "signaling",
            "Signaling bytes of successful upgrades, by direction",
            Unit::Bytes,
            metrics.signaling_bytes.clone(),
        );
        registry.register(
            "direct_connections",
            "Open direct connections made by upgrades",
            metrics.direct.clone(),
        );
        registry.register(
            "relays_drained",
            "Relayed connections closed after an upgrade",
            metrics.relays_drained.clone(),
        );
        registry.register(
            "direct_lost",
            "Direct connections whose path died, by whether this side redials the relay",
            metrics.direct_lost.clone(),
        );
        registry.register(
            "fallbacks_failed",
            "Peers disconnected because every redial after a lost direct path failed",
            metrics.fallbacks_failed.clone(),
        );
        registry.register(
            "restarts",
            "ICE restarts of direct connections, by outcome",
            metrics.restarts.clone(),
        );
        metrics
    }

    /// Records one of the behaviour's events.
    pub fn record(&self, event: &Event) {
        match event {
            Event::UpgradeStarted { role, .. } => {
                let role = match role {
                    SdpRole::Offerer => "offerer",
                    SdpRole::Answerer => "answerer",
                };
                self.started.get_or_create(&RoleLabels { role }).inc();
            }
            Event::Upgraded {
                direct_connection,
                attempt,
                took,
                timings,
                path,
                ..
            } => {
                let labels = PathLabels {
                    family: path.map_or("unknown", |p| p.family()),
                    turn: path.is_some_and(|p| p.is_turn_relayed()),
                };
                self.succeeded.get_or_create(&labels).inc();
                self.attempts.observe(f64::from(*attempt));
                self.duration.observe(took.as_secs_f64());
                for (phase, d) in [
                    ("stream", timings.stream),
                    ("descriptions", timings.descriptions),
                    ("ice", timings.ice),
                    ("dtls", timings.dtls),
                    ("sctp", timings.sctp),
                    ("handoff", timings.handoff),
                ] {
                    self.phases
                        .get_or_create(&PhaseLabels { phase })
                        .observe(d.as_secs_f64());
                }
                for (direction, bytes) in [
                    ("sent", timings.signaling_bytes_sent),
                    ("received", timings.signaling_bytes_received),
                ] {
                    self.signaling_bytes
                        .get_or_create(&DirectionLabels { direction })
                        .inc_by(bytes);
                }
                if self.track(*direct_connection) {
                    self.direct.inc();
                }
            }
            Event::UpgradeFailed {
                error, will_retry, ..
            } => {
                let labels = FailureLabels {
                    reason: reason(error),
                    will_retry: *will_retry,
                };
                self.failed.get_or_create(&labels).inc();
            }
            Event::DirectLost {
                direct_connection,
                will_redial,
                ..
            } => {
                self.direct_lost
                    .get_or_create(&RedialLabels {
                        will_redial: *will_redial,
                    })
                    .inc();
                self.closed(*direct_connection);
            }
            Event::FallbackFailed { .. } => {
                self.fallbacks_failed.inc();
            }
            Event::Restarted { .. } => {
                self.restarts
                    .get_or_create(&OutcomeLabels {
                        outcome: "succeeded",
                    })
                    .inc();
            }
            Event::RestartFailed { .. } => {
                self.restarts
                    .get_or_create(&OutcomeLabels { outcome: "failed" })
                    .inc();
            }
            Event::RelayClosed { .. } => {
                self.relays_drained.inc();
            }
        }
    }

    /// Records what the metrics need of the Swarm's own events: the closes of direct
    /// connections (for `direct_connections`). Feed it every Swarm event; the others are
    /// ignored. Without it, `direct_connections` only counts up, and the ids of closed
    /// direct connections are kept (a few bytes each).
    pub fn record_swarm_event<T>(&self, event: &SwarmEvent<T>) {
        if let SwarmEvent::ConnectionClosed { connection_id, .. } = event {
            self.closed(*connection_id);
        }
    }

    /// Starts tracking a direct connection; `false` if it was already tracked.
    fn track(&self, connection: ConnectionId) -> bool {
        self.direct_ids
            .lock()
            .map(|mut ids| ids.insert(connection))
            .unwrap_or(false)
    }

    fn closed(&self, connection: ConnectionId) {
        let removed = self
            .direct_ids
            .lock()
            .map(|mut ids| ids.remove(&connection))
            .unwrap_or(false);
        if removed {
            self.direct.dec();
        }
    }
}

/// The `reason` label of an error.
fn reason(error: &Error) -> &'static str {
    match error {
        Error::WebRtc(_) => "webrtc",
        Error::InvalidSdp(_) => "invalid_sdp",
        Error::InvalidCandidate(_) => "invalid_candidate",
        Error::TooManyCandidates(_) => "too_many_candidates",
        Error::FingerprintMismatch => "fingerprint_mismatch",
        Error::NoFingerprint => "no_fingerprint",
        Error::ConnectionFailed => "connection_failed",
        Error::Closed => "closed",
        Error::InvalidState(_) => "invalid_state",
        Error::Signaling(_) => "signaling",
        Error::Protocol(_) => "protocol",
        Error::Timeout => "timeout",
        Error::TooManyUpgrades => "too_many_upgrades",
        Error::RelayLost => "relay_lost",
        Error::Unsupported => "unsupported",
        Error::Denied(_) => "denied",
        Error::InvalidConfig(_) => "invalid_config",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p_identity::PeerId;

    use super::*;
    use crate::{CandidateKind, DirectPath, Timings};

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    /// The value of the sample line that starts with `prefix` (name and labels).
    fn value(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
    }

    #[test]
    fn events_become_samples() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let peer = PeerId::random();
        let (relayed, direct) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        for attempt in 1..=2 {
            metrics.record(&Event::UpgradeStarted {
                peer,
                relayed_connection: relayed,
                role: SdpRole::Offerer,
                attempt,
            });
        }
        metrics.record(&Event::UpgradeFailed {
            peer,
            relayed_connection: relayed,
            error: Error::Timeout,
            attempt: 1,
            will_retry: true,
        });
        let upgraded = Event::Upgraded {
            peer,
            relayed_connection: relayed,
            direct_connection: direct,
            attempt: 2,
            took: Duration::from_millis(300),
            timings: Timings {
                ice: Duration::from_millis(100),
                signaling_bytes_sent: 1200,
                signaling_bytes_received: 1100,
                ..Timings::default()
            },
            path: Some(DirectPath {
                local: "[2001:db8:1::2]:5000".parse().unwrap(),
                local_kind: CandidateKind::Host,
                remote: "[2001:db8:2::2]:6000".parse().unwrap(),
                remote_kind: CandidateKind::Host,
            }),
        };
        metrics.record(&upgraded);
        // The same event twice (a caller feeding it again) counts the connection once.
        metrics.record(&upgraded);
        metrics.record(&Event::RelayClosed {
            peer,
            relayed_connection: relayed,
        });
        let t = text(&registry);
        let p = "webrtc_signal_";
        assert_eq!(
            value(
                &t,
                &format!("{p}upgrades_started_total{{role=\"offerer\"}}")
            ),
            2.0
        );
        assert_eq!(
            value(
                &t,
                &format!("{p}upgrades_failed_total{{reason=\"timeout\",will_retry=\"true\"}}")
            ),
            1.0
        );
        assert_eq!(
            value(
                &t,
                &format!("{p}upgrades_succeeded_total{{family=\"udp6\",turn=\"false\"}}")
            ),
            2.0
        );
        assert_eq!(value(&t, &format!("{p}upgrade_attempts_sum")), 4.0);
        assert_eq!(
            value(&t, &format!("{p}upgrade_duration_seconds_count")),
            2.0
        );
        assert_eq!(
            value(
                &t,
                &format!("{p}upgrade_phase_duration_seconds_sum{{phase=\"ice\"}}")
            ),
            0.2
        );
        assert_eq!(
            value(
                &t,
                &format!("{p}signaling_bytes_total{{direction=\"sent\"}}")
            ),
            2400.0
        );
        assert_eq!(value(&t, &format!("{p}direct_connections ")), 1.0);
        assert_eq!(value(&t, &format!("{p}relays_drained_total")), 1.0);

        // Only the close of a direct connection counts down, once.
        let closed = |id| SwarmEvent::<()>::ConnectionClosed {
            peer_id: peer,
            connection_id: id,
            endpoint: libp2p_core::ConnectedPoint::Listener {
                local_addr: libp2p_core::Multiaddr::empty(),
                send_back_addr: libp2p_core::Multiaddr::empty(),
            },
            num_established: 0,
            cause: None,
        };
        metrics.record_swarm_event(&closed(relayed));
        assert_eq!(
            value(&text(&registry), &format!("{p}direct_connections ")),
            1.0
        );
        metrics.record_swarm_event(&closed(direct));
        metrics.record_swarm_event(&closed(direct));
        assert_eq!(
            value(&text(&registry), &format!("{p}direct_connections ")),
            0.0
        );
    }
}
