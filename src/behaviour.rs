//! The network behaviour: notices relayed connections, drives one upgrade per peer, hands
//! the direct connection to the Swarm through the [`Transport`](crate::Transport), then
//! drains and closes the relayed connections to that peer.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::FutureExt;
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_core::transport::PortUse;
use libp2p_core::Endpoint;
use libp2p_identity::PeerId;
use libp2p_swarm::behaviour::{ConnectionClosed, ConnectionEstablished, FromSwarm};
use libp2p_swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, ListenOpts, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

use crate::handler::{Command, Handler, Report};
use crate::slots::Slots;
use crate::transport::{listen_addr, Handoff};
use crate::upgrade::Timings;
use crate::{Config, Error, SdpRole};

/// What the behaviour reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// An upgrade attempt started on a relayed connection.
    UpgradeStarted {
        /// The remote peer.
        peer: PeerId,
        /// The relayed connection carrying the signaling.
        relayed_connection: ConnectionId,
        /// Whether this side offers or answers.
        role: SdpRole,
        /// The attempt number, from 1.
        attempt: u32,
    },
    /// The peer is now reachable over a direct WebRTC connection.
    Upgraded {
        /// The remote peer.
        peer: PeerId,
        /// The relayed connection the upgrade was signaled over.
        relayed_connection: ConnectionId,
        /// The new direct connection.
        direct_connection: ConnectionId,
        /// From the start of the successful attempt to the direct connection in the Swarm.
        took: Duration,
        /// Where that time went, and what the signaling cost.
        timings: Timings,
    },
    /// An upgrade attempt failed; the relayed connection is untouched.
    UpgradeFailed {
        /// The remote peer.
        peer: PeerId,
        /// The relayed connection.
        relayed_connection: ConnectionId,
        /// Why.
        error: Error,
        /// The attempt number, from 1.
        attempt: u32,
        /// Whether this side will try again (only the offering side retries).
        will_retry: bool,
    },
    /// A relayed connection to an upgraded peer was closed.
    RelayClosed {
        /// The remote peer.
        peer: PeerId,
        /// The relayed connection that closed.
        relayed_connection: ConnectionId,
    },
}

#[derive(Debug)]
struct Relayed {
    peer: PeerId,
    /// The address the direct connection's remote address is built from.
    remote_addr: Multiaddr,
    /// This side dialed the relayed connection: it offers.
    dialer: bool,
    draining: bool,
}

/// An upgrade waiting for its direct connection to show up in the Swarm.
#[derive(Debug)]
struct Pending {
    relayed: ConnectionId,
    offerer: PeerId,
    /// When the connection was handed to the transport.
    handed: Instant,
    timings: Timings,
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    Retry {
        connection: ConnectionId,
        attempt: u32,
    },
    Drain {
        connection: ConnectionId,
    },
}

/// Upgrades relayed connections to direct WebRTC connections. Made by [`crate::new`]; add it
/// to your `#[derive(NetworkBehaviour)]`.
pub struct Behaviour {
    config: Arc<Config>,
    local: PeerId,
    slots: Arc<Slots>,
    handoffs: mpsc::UnboundedSender<Handoff>,
    listen: Option<ListenOpts>,
    relayed: HashMap<ConnectionId, Relayed>,
    /// Direct connections per peer, with the peer id of the side that offered.
    direct: HashMap<PeerId, Vec<(ConnectionId, PeerId)>>,
    /// The running upgrade per peer (one at a time): relayed connection, role, attempt.
    active: HashMap<PeerId, (ConnectionId, SdpRole, u32)>,
    pending: HashMap<PeerId, VecDeque<Pending>>,
    /// Our direct connections, known from their local address before they are established.
    direct_ids: HashMap<ConnectionId, PeerId>,
    timers: Vec<(Instant, Timer)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    events: VecDeque<ToSwarm<Event, Command>>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("relayed", &self.relayed)
            .field("direct", &self.direct)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// `/p2p-circuit` followed by `/webrtc`: the user asked for a WebRTC upgrade.
fn is_explicit(addr: &Multiaddr) -> bool {
    let mut after_circuit = false;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => after_circuit = true,
            Protocol::WebRTC if after_circuit => return true,
            _ => {}
        }
    }
    false
}

/// `<relayed addr>/webrtc/p2p/<peer>`, from a relayed address with or without the tail.
fn direct_addr(relayed: &Multiaddr, peer: PeerId) -> Multiaddr {
    let mut addr: Multiaddr = relayed
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(id) if *id == peer) && *p != Protocol::WebRTC)
        .collect();
    addr.push(Protocol::WebRTC);
    addr.push(Protocol::P2p(peer));
    addr
}

impl Behaviour {
    pub(crate) fn new(
        local: PeerId,
        config: Config,
        handoffs: mpsc::UnboundedSender<Handoff>,
    ) -> Self {
        let slots = Slots::new(config.max_concurrent_upgrades);
        Self {
            config: Arc::new(config),
            local,
            slots,
            handoffs,
            listen: Some(ListenOpts::new(listen_addr())),
            relayed: HashMap::new(),
            direct: HashMap::new(),
            active: HashMap::new(),
            pending: HashMap::new(),
            direct_ids: HashMap::new(),
            timers: Vec::new(),
            sleep: None,
            events: VecDeque::new(),
        }
    }

    /// Whether `peer` has a direct WebRTC connection made by this behaviour.
    pub fn is_upgraded(&self, peer: &PeerId) -> bool {
        self.direct.get(peer).is_some_and(|c| !c.is_empty())
    }

    /// Starts an upgrade of the relayed connection to `peer` now, with this side offering.
    ///
    /// For nodes with [`Config::with_auto_upgrade`] off, or to try again after the retries
    /// ran out. Returns `false`, doing nothing, when there is no relayed connection to `peer`
    /// (or only ones being drained), when `peer` is already upgraded, or when an upgrade
    /// with `peer` is running. The outcome comes as [`Event::Upgraded`] or
    /// [`Event::UpgradeFailed`], with retries as for automatic upgrades.
    ///
    /// ```no_run
    /// # fn f(behaviour: &mut libp2p_webrtc_signal::Behaviour, peer: libp2p_identity::PeerId) {
    /// if !behaviour.upgrade(peer) {
    ///     // Nothing to upgrade, or already done / under way.
    /// }
    /// # }
    /// ```
    pub fn upgrade(&mut self, peer: PeerId) -> bool {
        if self.is_upgraded(&peer) || self.active.contains_key(&peer) {
            return false;
        }
        // Prefer a connection we dialed: that is the one the remote expects an offer on.
        let Some(connection) = self
            .relayed
            .iter()
            .filter(|(_, r)| r.peer == peer && !r.draining)
            .max_by_key(|(id, r)| (r.dialer, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
        else {
            return false;
        };
        self.start(connection, 1);
        self.active.contains_key(&peer)
    }

    fn handler(&self, relayed: bool, peer: PeerId, connection: ConnectionId) -> Handler {
        Handler::new(
            relayed,
            self.config.clone(),
            self.local,
            peer,
            connection,
            self.slots.clone(),
        )
    }

    /// Starts attempt `attempt` on a relayed connection we dialed, if nothing forbids it.
    fn start(&mut self, connection: ConnectionId, attempt: u32) {
        let Some(r) = self.relayed.get(&connection) else {
            return;
        };
        let peer = r.peer;
        if r.draining || self.is_upgraded(&peer) || self.active.contains_key(&peer) {
            return;
        }
        self.active
            .insert(peer, (connection, SdpRole::Offerer, attempt));
        self.notify(peer, connection, Command::Start { attempt });
    }

    fn notify(&mut self, peer: PeerId, connection: ConnectionId, command: Command) {
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event: command,
        });
    }

    /// Forgets the peer's running upgrade if it is the one on `connection`.
    fn clear_active(&mut self, peer: PeerId, connection: ConnectionId) {
        if self
            .active
            .get(&peer)
            .is_some_and(|(c, _, _)| *c == connection)
        {
            self.active.remove(&peer);
        }
    }

    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.timers.push((at, timer));
        self.sleep = None;
    }

    fn on_established(&mut self, e: ConnectionEstablished) {
        let peer = e.peer_id;
        if self.direct_ids.contains_key(&e.connection_id) {
            let Some(p) = self.pending.get_mut(&peer).and_then(|q| q.pop_front()) else {
                return;
            };
            let entry = self.direct.entry(peer).or_default();
            entry.push((e.connection_id, p.offerer));
            let timings = Timings {
                handoff: p.handed.elapsed(),
                ..p.timings
            };
            self.events
                .push_back(ToSwarm::GenerateEvent(Event::Upgraded {
                    peer,
                    relayed_connection: p.relayed,
                    direct_connection: e.connection_id,
                    took: timings.total(),
                    timings,
                }));
            // Glare safety net: keep one direct connection, the one the smaller peer id
            // offered (the same choice on both sides).
            if entry.len() > 1 {
                let winner = self.local.min(peer);
                let keep = entry
                    .iter()
                    .position(|(_, offerer)| *offerer == winner)
                    .unwrap_or(0);
                for (i, (id, _)) in entry.iter().enumerate() {
                    if i != keep {
                        self.events.push_back(ToSwarm::CloseConnection {
                            peer_id: peer,
                            connection: CloseConnection::One(*id),
                        });
                    }
                }
            }
            // Drain the relayed connections to this peer.
            let now = Instant::now();
            let drain: Vec<ConnectionId> = self
                .relayed
                .iter_mut()
                .filter(|(_, r)| r.peer == peer && !r.draining)
                .map(|(id, r)| {
                    r.draining = true;
                    *id
                })
                .collect();
            for connection in drain {
                self.notify(peer, connection, Command::Idle);
                self.schedule(now + self.config.drain_timeout, Timer::Drain { connection });
            }
            return;
        }
        let (remote_addr, dialer) = match e.endpoint {
            libp2p_core::ConnectedPoint::Dialer { address, .. } => (address.clone(), true),
            // An inbound circuit: the local address is `<relay>/p2p-circuit`, the remote
            // address only `/p2p/<peer>`.
            libp2p_core::ConnectedPoint::Listener {
                local_addr,
                send_back_addr,
            } if !is_relayed(send_back_addr) && is_relayed(local_addr) => {
                (local_addr.clone(), false)
            }
            libp2p_core::ConnectedPoint::Listener { send_back_addr, .. } => {
                (send_back_addr.clone(), false)
            }
        };
        if !is_relayed(&remote_addr) {
            return;
        }
        let explicit = dialer && is_explicit(&remote_addr);
        let upgraded = self.is_upgraded(&peer);
        self.relayed.insert(
            e.connection_id,
            Relayed {
                peer,
                remote_addr,
                dialer,
                draining: upgraded,
            },
        );
        if upgraded {
            self.notify(peer, e.connection_id, Command::Idle);
            let at = Instant::now() + self.config.drain_timeout;
            self.schedule(
                at,
                Timer::Drain {
                    connection: e.connection_id,
                },
            );
            return;
        }
        if dialer && (self.config.auto_upgrade || explicit) {
            self.start(e.connection_id, 1);
        } else {
            self.notify(peer, e.connection_id, Command::Idle);
        }
    }

    fn on_closed(&mut self, e: ConnectionClosed) {
        let peer = e.peer_id;
        if self.direct_ids.remove(&e.connection_id).is_some() {
            if let Some(list) = self.direct.get_mut(&peer) {
                list.retain(|(id, _)| *id != e.connection_id);
                if list.is_empty() {
                    self.direct.remove(&peer);
                }
            }
            return;
        }
        if let Some(r) = self.relayed.remove(&e.connection_id) {
            if let Some(&(connection, _, attempt)) = self.active.get(&peer) {
                if connection == e.connection_id {
                    // The attempt went with its connection (the handler is gone).
                    self.active.remove(&peer);
                    self.events
                        .push_back(ToSwarm::GenerateEvent(Event::UpgradeFailed {
                            peer,
                            relayed_connection: connection,
                            error: Error::RelayLost,
                            attempt,
                            will_retry: false,
                        }));
                }
            }
            if r.draining {
                self.events
                    .push_back(ToSwarm::GenerateEvent(Event::RelayClosed {
                        peer,
                        relayed_connection: e.connection_id,
                    }));
            }
        }
    }

    fn on_report(&mut self, peer: PeerId, connection: ConnectionId, report: Report) {
        match report {
            Report::Started { role, attempt } => {
                if role == SdpRole::Answerer {
                    if let Some(&(other, SdpRole::Offerer, _)) = self.active.get(&peer) {
                        if other != connection {
                            // Glare across two relayed connections: the smaller peer id's
                            // offer wins, on both sides.
                            if self.local < peer {
                                self.notify(peer, connection, Command::Abort);
                                return;
                            }
                            self.notify(peer, other, Command::Abort);
                        }
                    }
                    self.active.insert(peer, (connection, role, attempt));
                }
                self.events
                    .push_back(ToSwarm::GenerateEvent(Event::UpgradeStarted {
                        peer,
                        relayed_connection: connection,
                        role,
                        attempt,
                    }));
            }
            Report::Upgraded {
                connection: direct,
                role,
                timings,
                ..
            } => {
                self.clear_active(peer, connection);
                let Some(r) = self.relayed.get(&connection) else {
                    return;
                };
                let offerer = match role {
                    SdpRole::Offerer => self.local,
                    SdpRole::Answerer => peer,
                };
                self.pending.entry(peer).or_default().push_back(Pending {
                    relayed: connection,
                    offerer,
                    handed: Instant::now(),
                    timings,
                });
                let _ = self.handoffs.unbounded_send(Handoff {
                    peer,
                    connection: *direct,
                    remote_addr: direct_addr(&r.remote_addr, peer),
                });
            }
            Report::Failed {
                role,
                attempt,
                error,
            } => {
                self.clear_active(peer, connection);
                let will_retry = role == SdpRole::Offerer
                    && attempt < self.config.max_upgrade_attempts
                    && !self.is_upgraded(&peer)
                    && self.relayed.get(&connection).is_some_and(|r| !r.draining);
                tracing::debug!(%peer, %connection, attempt, will_retry, "upgrade failed: {error}");
                self.events
                    .push_back(ToSwarm::GenerateEvent(Event::UpgradeFailed {
                        peer,
                        relayed_connection: connection,
                        error,
                        attempt,
                        will_retry,
                    }));
                if will_retry {
                    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
                    let delay = self.config.retry_backoff.saturating_mul(factor);
                    self.schedule(
                        Instant::now() + delay,
                        Timer::Retry {
                            connection,
                            attempt: attempt + 1,
                        },
                    );
                } else if role == SdpRole::Offerer {
                    self.notify(peer, connection, Command::Idle);
                }
            }
            Report::Superseded { .. } => {
                self.clear_active(peer, connection);
            }
        }
    }

    fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Retry {
                connection,
                attempt,
            } => self.start(connection, attempt),
            Timer::Drain { connection } => {
                if let Some(r) = self.relayed.get(&connection) {
                    self.events.push_back(ToSwarm::CloseConnection {
                        peer_id: r.peer,
                        connection: CloseConnection::One(connection),
                    });
                }
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if *local_addr == listen_addr() {
            self.direct_ids.insert(connection_id, peer);
            return Ok(self.handler(false, peer, connection_id));
        }
        let relayed = is_relayed(remote_addr) || is_relayed(local_addr);
        Ok(self.handler(relayed, peer, connection_id))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(is_relayed(addr), peer, connection_id))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => self.on_established(e),
            FromSwarm::ConnectionClosed(e) => self.on_closed(e),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        report: THandlerOutEvent<Self>,
    ) {
        self.on_report(peer, connection, report);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(opts) = self.listen.take() {
            return Poll::Ready(ToSwarm::ListenOn { opts });
        }
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            let now = Instant::now();
            if let Some(i) = self.timers.iter().position(|(at, _)| *at <= now) {
                let (_, timer) = self.timers.swap_remove(i);
                self.fire(timer);
                continue;
            }
            let Some(next) = self.timers.iter().map(|(at, _)| *at).min() else {
                self.sleep = None;
                return Poll::Pending;
            };
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next.into())));
            if sleep.deadline() != next.into() {
                sleep.as_mut().reset(next.into());
            }
            if sleep.poll_unpin(cx).is_ready() {
                self.sleep = None;
                continue;
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let peer = PeerId::random();
        let relay: Multiaddr =
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                .parse()
                .unwrap();
        let circuit = relay
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(peer));
        assert!(is_relayed(&circuit));
        assert!(!is_explicit(&circuit));
        let explicit = relay
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::WebRTC)
            .with(Protocol::P2p(peer));
        assert!(is_explicit(&explicit));
        assert!(!is_explicit(&relay.clone().with(Protocol::WebRTC)));
        // Both forms give the same direct address.
        assert_eq!(direct_addr(&circuit, peer), explicit);
        assert_eq!(direct_addr(&explicit, peer), explicit);
        let bare = relay.with(Protocol::P2pCircuit);
        assert_eq!(direct_addr(&bare, peer), explicit);
    }
}
