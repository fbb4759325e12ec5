//! The network behaviour: a thin adapter between the Swarm and the per-peer upgrade
//! [`policy`](super::policy). It turns Swarm events and handler reports into policy inputs,
//! carries out the policy's actions (handler commands, closes, events, hand-offs of direct
//! connections to the [`Transport`](crate::Transport)) and runs its timers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use either::Either;
use futures::channel::mpsc;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use libp2p_core::multiaddr::Multiaddr;
use libp2p_core::transport::PortUse;
use libp2p_core::{ConnectedPoint, Endpoint};
use libp2p_identity::PeerId;
use libp2p_swarm::behaviour::{
    ConnectionClosed, ConnectionEstablished, DialFailure, FromSwarm, ListenFailure,
};
use libp2p_swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p_swarm::dummy;
use libp2p_swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, ListenOpts, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

use super::exchange::Timings;
use super::handler::{Handler, NodeShare, Paths, Report};
use super::policy::{is_relayed, relay_stun_url, Action, Input, PeerPolicy};
use super::transport::{listen_addr, Handoff};
use crate::rtc::{PeerEvent, PeerState};
use crate::slots::Slots;
use crate::{Config, Connection, DirectPath, Error, IceServer, SdpRole};

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
        /// The attempt that succeeded, from 1 (as in [`Event::UpgradeStarted`]).
        attempt: u32,
        /// From the start of the successful attempt to the direct connection in the Swarm.
        took: Duration,
        /// Where that time went, and what the signaling cost.
        timings: Timings,
        /// The candidate pair the direct connection runs over: IPv4 or IPv6, through a NAT
        /// mapping or a TURN server. `None` only if webrtc-rs did not report it.
        path: Option<DirectPath>,
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
        /// Whether this side tries again in this round of
        /// [`Config::max_upgrade_attempts`] (only the offering side retries). After the
        /// last attempt of a round, a new round follows after
        /// [`Config::upgrade_round_backoff`] while the relayed connection lives.
        will_retry: bool,
    },
    /// The direct connection to a peer died (ICE or DTLS failed, consent lost: the path
    /// stopped carrying packets); it was not closed on purpose by either side. Streams on it
    /// failed. The peer falls back to the relay: a relayed connection still being drained
    /// is kept and upgraded again; otherwise the side that dialed the relayed connection
    /// dials it again (`will_redial`), and the new relayed connection is upgraded as usual.
    DirectLost {
        /// The remote peer.
        peer: PeerId,
        /// The direct connection that died.
        direct_connection: ConnectionId,
        /// Why, as the Swarm reported it.
        reason: String,
        /// Whether this side dials the relayed address again.
        will_redial: bool,
    },
    /// Every redial after a [`Event::DirectLost`] failed
    /// ([`Config::max_redials`](crate::Config::max_redials)); the peer is disconnected.
    FallbackFailed {
        /// The remote peer.
        peer: PeerId,
        /// Redials made.
        redials: u32,
        /// Why the last one failed.
        reason: String,
    },
    /// The direct connection's path went quiet and an ICE restart, signaled over a relayed
    /// connection, found a working path again: the same direct connection, with its streams,
    /// carries on ([`Config::ice_restart`]).
    Restarted {
        /// The remote peer.
        peer: PeerId,
        /// The direct connection that was restarted.
        direct_connection: ConnectionId,
        /// The relayed connection the restart was signaled over (drained and closed next).
        relayed_connection: ConnectionId,
        /// From the start of the restart until ICE had a working pair.
        took: Duration,
    },
    /// An ICE restart failed (or the remote does not do restarts). The direct connection is
    /// left as it is: it recovers by itself, or dies and falls back ([`Event::DirectLost`]).
    RestartFailed {
        /// The remote peer.
        peer: PeerId,
        /// The relayed connection the restart was signaled over.
        relayed_connection: ConnectionId,
        /// Why.
        error: Error,
    },
    /// A relayed connection to an upgraded peer was closed.
    RelayClosed {
        /// The remote peer.
        peer: PeerId,
        /// The relayed connection that closed.
        relayed_connection: ConnectionId,
    },
}

/// Upgrades relayed connections to direct WebRTC connections. Made by [`crate::new`]; add it
/// to your `#[derive(NetworkBehaviour)]`.
pub struct Behaviour {
    config: Arc<Config>,
    local: PeerId,
    slots: Arc<Slots>,
    /// Each connected peer's share of the upgrade slots, shared by its connections' handlers.
    peer_slots: HashMap<PeerId, Arc<Slots>>,
    handoffs: mpsc::UnboundedSender<Handoff>,
    listen: Option<ListenOpts>,
    /// The upgrade policy of each peer with something to track.
    peers: HashMap<PeerId, PeerPolicy>,
    /// Direct connections handed to the transport, known from their local address before
    /// they are established.
    direct_ids: HashMap<ConnectionId, PeerId>,
    /// Redials of relayed addresses in flight, after a direct connection died.
    redials: HashMap<ConnectionId, PeerId>,
    /// Established relayed connections: the ones with a [`Handler`] (the others have a
    /// dummy handler, which no command may reach).
    relayed_ids: HashSet<ConnectionId>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    events: VecDeque<ToSwarm<Event, THandlerInEvent<Self>>>,
    /// The direct connection to each peer, for the handlers' ICE restarts.
    paths: Paths,
    /// What each direct connection's driver reports about its path.
    path_events: SelectAll<BoxStream<'static, (PeerId, PeerEvent)>>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
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
            peer_slots: HashMap::new(),
            handoffs,
            listen: Some(ListenOpts::new(listen_addr())),
            peers: HashMap::new(),
            direct_ids: HashMap::new(),
            relayed_ids: HashSet::new(),
            redials: HashMap::new(),
            sleep: None,
            events: VecDeque::new(),
            paths: Paths::default(),
            path_events: SelectAll::new(),
        }
    }

    /// Whether `peer` has a direct WebRTC connection made by this behaviour.
    pub fn is_upgraded(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(PeerPolicy::is_upgraded)
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
        match self.peers.get(&peer) {
            Some(p) if !p.is_upgraded() && !p.is_upgrading() => {}
            _ => return false,
        }
        self.input(peer, Input::UpgradeRequested, None);
        self.peers.get(&peer).is_some_and(PeerPolicy::is_upgrading)
    }

    /// A connection's handler: a [`Handler`] for a relayed connection (`relayed`: its
    /// relayed address), a dummy one for the others.
    fn handler(
        &mut self,
        relayed: Option<&Multiaddr>,
        peer: PeerId,
        connection: ConnectionId,
    ) -> THandler<Self> {
        let Some(relayed) = relayed else {
            return Either::Right(dummy::ConnectionHandler);
        };
        let per_peer = self.config.max_concurrent_upgrades_per_peer;
        let peer_slots = self
            .peer_slots
            .entry(peer)
            .or_insert_with(|| Slots::new(per_peer))
            .clone();
        let node = NodeShare {
            config: self.config.clone(),
            local: self.local,
            slots: self.slots.clone(),
            paths: self.paths.clone(),
        };
        let relay_stun = self
            .config
            .relay_stun_port
            .and_then(|port| relay_stun_url(relayed, port))
            .map(IceServer::stun);
        Either::Left(Handler::new(node, peer, connection, peer_slots, relay_stun))
    }

    /// Feeds `input` to `peer`'s policy and carries out its actions. `direct` is the direct
    /// connection of an [`Input::Upgraded`], for its hand-off.
    fn input(&mut self, peer: PeerId, input: Input, mut direct: Option<Box<Connection>>) {
        let (local, config) = (self.local, self.config.clone());
        let policy = self
            .peers
            .entry(peer)
            .or_insert_with(|| PeerPolicy::new(local, peer, config));
        let actions = policy.handle(Instant::now(), input);
        if policy.is_idle() {
            self.peers.remove(&peer);
        }
        for action in actions {
            match action {
                Action::Command {
                    connection,
                    command,
                } => {
                    // Only a relayed connection's handler takes commands; the policy only
                    // sends them there, and this keeps a slip from reaching a dummy handler.
                    if self.relayed_ids.contains(&connection) {
                        self.events.push_back(ToSwarm::NotifyHandler {
                            peer_id: peer,
                            handler: NotifyHandler::One(connection),
                            event: Either::Left(command),
                        })
                    } else {
                        tracing::debug!(%peer, %connection, ?command, "no handler takes this command");
                    }
                }
                Action::Close { connection } => self.events.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::One(connection),
                }),
                Action::Emit(event) => self.events.push_back(ToSwarm::GenerateEvent(event)),
                Action::Dial { addr } => {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![addr])
                        .condition(PeerCondition::Always)
                        .build();
                    self.redials.insert(opts.connection_id(), peer);
                    self.events.push_back(ToSwarm::Dial { opts });
                }
                Action::HandOff {
                    relayed,
                    remote_addr,
                } => {
                    let Some(connection) = direct.take() else {
                        continue;
                    };
                    tracing::debug!(%peer, %relayed, %remote_addr, "handing the direct connection to the Swarm");
                    let rtc = connection.peer();
                    if let Ok(mut paths) = self.paths.lock() {
                        paths.insert(peer, rtc.downgrade());
                    }
                    self.path_events
                        .push(rtc.observe().map(move |e| (peer, e)).boxed());
                    if self
                        .handoffs
                        .unbounded_send(Handoff {
                            peer,
                            connection: *connection,
                            remote_addr,
                        })
                        .is_err()
                    {
                        tracing::debug!(%peer, "the transport is gone; dropping a direct connection");
                    }
                }
            }
        }
    }

    fn on_established(&mut self, e: ConnectionEstablished) {
        let peer = e.peer_id;
        self.redials.remove(&e.connection_id);
        if self.direct_ids.contains_key(&e.connection_id) {
            let input = Input::DirectEstablished {
                connection: e.connection_id,
            };
            self.input(peer, input, None);
            return;
        }
        let (addr, dialer) = match e.endpoint {
            ConnectedPoint::Dialer { address, .. } => (address.clone(), true),
            // An inbound circuit: the local address is `<relay>/p2p-circuit`, the remote
            // address only `/p2p/<peer>`.
            ConnectedPoint::Listener {
                local_addr,
                send_back_addr,
            } if !is_relayed(send_back_addr) && is_relayed(local_addr) => {
                (local_addr.clone(), false)
            }
            ConnectedPoint::Listener { send_back_addr, .. } => (send_back_addr.clone(), false),
        };
        if !is_relayed(&addr) {
            return;
        }
        self.relayed_ids.insert(e.connection_id);
        let input = Input::RelayEstablished {
            connection: e.connection_id,
            addr,
            dialer,
        };
        self.input(peer, input, None);
    }

    fn on_closed(&mut self, e: ConnectionClosed) {
        self.relayed_ids.remove(&e.connection_id);
        let direct = self.direct_ids.remove(&e.connection_id).is_some();
        if direct {
            if let Ok(mut paths) = self.paths.lock() {
                paths.retain(|_, p| p.is_alive());
            }
        }
        if e.remaining_established == 0 {
            // Forget the shares no handler holds any more (this peer's, and any left by a
            // connection that was denied before it was established).
            self.peer_slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        if self.peers.contains_key(&e.peer_id) {
            let input = Input::Closed {
                connection: e.connection_id,
                failed: direct && died(e.cause),
                reason: e
                    .cause
                    .map_or_else(|| "closed".to_owned(), |c| c.to_string()),
            };
            self.input(e.peer_id, input, None);
        }
    }

    fn on_dial_failure(&mut self, e: DialFailure) {
        self.redials.remove(&e.connection_id);
        let Some(peer) = e.peer_id else { return };
        if !self.peers.contains_key(&peer) {
            return;
        }
        let input = Input::RedialFailed {
            reason: e.error.to_string(),
        };
        self.input(peer, input, None);
    }

    fn on_listen_failure(&mut self, e: ListenFailure) {
        let Some(peer) = self.direct_ids.remove(&e.connection_id) else {
            return;
        };
        let input = Input::DirectRefused {
            connection: e.connection_id,
            reason: e.error.to_string(),
        };
        self.input(peer, input, None);
    }

    fn on_report(&mut self, peer: PeerId, connection: ConnectionId, report: Report) {
        let (input, direct) = match report {
            Report::Started { role, attempt } => (
                Input::Started {
                    connection,
                    role,
                    attempt,
                },
                None,
            ),
            Report::Upgraded {
                connection: direct,
                role,
                attempt,
                timings,
            } => (
                Input::Upgraded {
                    connection,
                    role,
                    attempt,
                    timings,
                    path: direct.path(),
                },
                Some(direct),
            ),
            Report::Failed {
                role,
                attempt,
                error,
            } => (
                Input::Failed {
                    connection,
                    role,
                    attempt,
                    error,
                },
                None,
            ),
            Report::Superseded { .. } => (Input::Superseded { connection }, None),
            Report::RestartStarted { .. } => (Input::RestartStarted { connection }, None),
            Report::Restarted { took, .. } => (Input::Restarted { connection, took }, None),
            Report::RestartFailed { error, .. } => {
                (Input::RestartFailed { connection, error }, None)
            }
        };
        self.input(peer, input, direct);
    }

    /// Ticks every peer whose deadline passed; returns the next deadline.
    fn tick(&mut self, now: Instant) -> Option<Instant> {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next_deadline().is_some_and(|at| at <= now))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            self.input(peer, Input::Tick, None);
        }
        self.peers
            .values()
            .filter_map(PeerPolicy::next_deadline)
            .min()
    }
}

/// Whether a direct connection closed because it died rather than on purpose: the WebRTC
/// connection failed (ICE or DTLS; consent lost), as opposed to a local close, a close by the
/// remote, or an idle timeout.
fn died(cause: Option<&libp2p_swarm::ConnectionError>) -> bool {
    let Some(libp2p_swarm::ConnectionError::IO(e)) = cause else {
        return false;
    };
    // The muxer's error, boxed by the Swarm.
    !matches!(
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()),
        Some(Error::Closed)
    )
}

impl NetworkBehaviour for Behaviour {
    /// A signaling handler on relayed connections; nothing on the others (the signaling protocols
    /// are not even offered there).
    type ConnectionHandler = Either<Handler, dummy::ConnectionHandler>;
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
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        // An inbound circuit: the local address is `<relay>/p2p-circuit`.
        let relayed = [local_addr, remote_addr]
            .into_iter()
            .find(|a| is_relayed(a));
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
        let relayed = is_relayed(addr).then_some(addr);
        Ok(self.handler(relayed, peer, connection_id))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => self.on_established(e),
            FromSwarm::ConnectionClosed(e) => self.on_closed(e),
            FromSwarm::ListenFailure(e) => self.on_listen_failure(e),
            FromSwarm::DialFailure(e) if self.redials.contains_key(&e.connection_id) => {
                self.on_dial_failure(e)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        report: THandlerOutEvent<Self>,
    ) {
        match report {
            Either::Left(report) => self.on_report(peer, connection, report),
            Either::Right(never) => match never {},
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(opts) = self.listen.take() {
            return Poll::Ready(ToSwarm::ListenOn { opts });
        }
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            if let Poll::Ready(Some((peer, event))) = self.path_events.poll_next_unpin(cx) {
                let input = match event {
                    PeerEvent::State(PeerState::Disconnected) => Input::PathDown,
                    PeerEvent::IceConnected(_) => Input::PathUp,
                    _ => continue,
                };
                if self.peers.get(&peer).is_some_and(PeerPolicy::is_upgraded) {
                    self.input(peer, input, None);
                }
                continue;
            }
            let Some(next) = self.tick(Instant::now()) else {
                self.sleep = None;
                return Poll::Pending;
            };
            if !self.events.is_empty() {
                continue;
            }
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
    fn a_failed_connection_died_a_closed_one_did_not() {
        use libp2p_swarm::ConnectionError;
        let io = |e: Error| ConnectionError::IO(std::io::Error::other(e));
        assert!(died(Some(&io(Error::ConnectionFailed))));
        assert!(died(Some(&ConnectionError::IO(
            std::io::ErrorKind::ConnectionReset.into()
        ))));
        assert!(!died(Some(&io(Error::Closed))));
        assert!(!died(Some(&ConnectionError::KeepAliveTimeout)));
        assert!(!died(None));
    }
}
