//! `node relay --metrics`: the relay's own figures. Reservations and circuits from the relay
//! behaviour's events, connections from the Swarm's, and the STUN responder's counters, read
//! at each scrape.

use std::collections::HashSet;

use libp2p::swarm::SwarmEvent;
use libp2p::{relay, PeerId};
use libp2p_webrtc_signal::StunStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The outcome of a reservation or circuit request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// The relay's metrics, recorded from its Swarm's events.
pub struct RelayMetrics {
    reservations: Gauge,
    reservation_requests: Family<Outcome, Counter>,
    circuits: Gauge,
    circuit_requests: Family<Outcome, Counter>,
    connections: Gauge,
    /// The peers holding a reservation (bounded by the relay's `max_reservations`): a
    /// renewal is not a second reservation, and a closed one is not counted down twice.
    reserved: HashSet<PeerId>,
}

impl RelayMetrics {
    /// Registers the metrics (`relay_*`, and `stun_*` when `stun` is given).
    pub fn new(registry: &mut Registry, stun: Option<StunStats>) -> Self {
        let sub = registry.sub_registry_with_prefix("relay");
        let reservations = Gauge::default();
        sub.register(
            "reservations",
            "Peers holding a reservation",
            reservations.clone(),
        );
        let reservation_requests = Family::<Outcome, Counter>::default();
        sub.register(
            "reservation_requests",
            "Reservation requests, by outcome (accepted, denied)",
            reservation_requests.clone(),
        );
        let circuits = Gauge::default();
        sub.register("circuits", "Circuits open", circuits.clone());
        let circuit_requests = Family::<Outcome, Counter>::default();
        sub.register(
            "circuit_requests",
            "Circuit requests, by outcome (accepted, denied)",
            circuit_requests.clone(),
        );
        let connections = Gauge::default();
        sub.register("connections", "Connections open", connections.clone());
        if let Some(stats) = stun {
            registry.register_collector(Box::new(StunCollector(stats)));
        }
        Self {
            reservations,
            reservation_requests,
            circuits,
            circuit_requests,
            connections,
            reserved: HashSet::new(),
        }
    }

    /// Records one event of the relay's Swarm.
    pub fn record(&mut self, event: &SwarmEvent<relay::Event>) {
        let outcome = |outcome| Outcome { outcome };
        match event {
            SwarmEvent::ConnectionEstablished { .. } => {
                self.connections.inc();
            }
            SwarmEvent::ConnectionClosed { .. } => {
                self.connections.dec();
            }
            SwarmEvent::Behaviour(event) => match event {
                relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                    self.reservation_requests
                        .get_or_create(&outcome("accepted"))
                        .inc();
                    self.reserved.insert(*src_peer_id);
                }
                relay::Event::ReservationReqDenied { .. } => {
                    self.reservation_requests
                        .get_or_create(&outcome("denied"))
                        .inc();
                }
                relay::Event::ReservationClosed { src_peer_id }
                | relay::Event::ReservationTimedOut { src_peer_id } => {
                    self.reserved.remove(src_peer_id);
                }
                relay::Event::CircuitReqAccepted { .. } => {
                    self.circuit_requests
                        .get_or_create(&outcome("accepted"))
                        .inc();
                    self.circuits.inc();
                }
                relay::Event::CircuitReqDenied { .. } => {
                    self.circuit_requests
                        .get_or_create(&outcome("denied"))
                        .inc();
                }
                relay::Event::CircuitClosed { .. } => {
                    self.circuits.dec();
                }
                _ => {}
            },
            _ => {}
        }
        self.reservations
            .set(i64::try_from(self.reserved.len()).unwrap_or(i64::MAX));
    }
}

/// The STUN responder's counters, read at each scrape.
#[derive(Debug)]
struct StunCollector(StunStats);

impl Collector for StunCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "stun_binding_requests_answered",
                "STUN Binding requests answered",
                self.0.answered(),
            ),
            (
                "stun_binding_requests_rate_limited",
                "STUN Binding requests dropped by the per-source rate limit",
                self.0.rate_limited(),
            ),
            (
                "stun_datagrams_ignored",
                "Datagrams to the STUN port that were not a Binding request",
                self.0.ignored(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
