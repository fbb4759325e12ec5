//! The upgrade policy: every per-peer decision, as a plain state machine.
//!
//! One [`PeerPolicy`] per remote peer owns that peer's relayed connections, the running
//! upgrade attempt, glare, retries and their backoff, the direct connections and the drain of
//! the relayed ones. It does no I/O and reads no clock: the [`Behaviour`](super::behaviour)
//! feeds it Swarm events and handler reports as [`Input`]s with the current time, carries out
//! the [`Action`]s it returns, and calls [`Input::Tick`] at [`PeerPolicy::next_deadline`].
//! The unit tests below drive it with made-up connection ids and instants.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_identity::PeerId;
use libp2p_swarm::ConnectionId;

use super::exchange::Timings;
use super::handler::Command;
use crate::error::ProtocolViolation;
use crate::{Config, DirectPath, Error, Event, SdpRole};

/// Whether `offerer`'s offer wins a glare against an offer from `other`: the smaller peer id
/// (by its byte encoding) offers. Both sides reach the same answer; every glare decision (the
/// handler's on one connection, the policy's across connections and between two direct
/// connections) goes through here.
pub(crate) fn offer_wins(offerer: &PeerId, other: &PeerId) -> bool {
    offerer.to_bytes() < other.to_bytes()
}

/// Whether `addr` goes through a relay.
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// `stun:<host>:<port>` for the relay a relayed address goes through: the host its address
/// names before `/p2p-circuit` (an IP address or a DNS name). `None` for an address that is
/// not relayed, names no host, or names a loopback or unspecified one.
pub(crate) fn relay_stun_url(addr: &Multiaddr, port: u16) -> Option<String> {
    let mut host = None;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => return host.map(|h| format!("stun:{h}:{port}")),
            Protocol::Ip4(ip) => {
                host = (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
            }
            Protocol::Ip6(ip) => {
                host = (!ip.is_loopback() && !ip.is_unspecified()).then(|| format!("[{ip}]"))
            }
            Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => host = Some(h.to_string()),
            _ => {}
        }
    }
    None
}

/// `/p2p-circuit` followed by `/webrtc`: the user asked for a WebRTC upgrade.
pub(crate) fn is_explicit(addr: &Multiaddr) -> bool {
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
pub(crate) fn direct_addr(relayed: &Multiaddr, peer: PeerId) -> Multiaddr {
    let mut addr: Multiaddr = relayed
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(id) if *id == peer) && *p != Protocol::WebRTC)
        .collect();
    addr.push(Protocol::WebRTC);
    addr.push(Protocol::P2p(peer));
    addr
}

/// What happened, as far as the policy cares.
#[derive(Debug)]
pub(crate) enum Input {
    /// A relayed connection to the peer was established. `addr` is the relayed address the
    /// direct connection's address is built from; `dialer`: this side dialed it (and offers).
    RelayEstablished {
        connection: ConnectionId,
        addr: Multiaddr,
        dialer: bool,
    },
    /// A direct connection handed to the transport was established in the Swarm.
    DirectEstablished { connection: ConnectionId },
    /// A direct connection handed to the transport was refused by the Swarm.
    DirectRefused {
        connection: ConnectionId,
        reason: String,
    },
    /// A connection to the peer closed (relayed or direct). `failed`: it died (ICE/DTLS
    /// failure, consent lost), as opposed to a close on purpose by either side.
    Closed {
        connection: ConnectionId,
        failed: bool,
        reason: String,
    },
    /// A redial of the relayed address, after the direct connection died, failed.
    RedialFailed { reason: String },
    /// The application asked for an upgrade ([`Behaviour::upgrade`](crate::Behaviour::upgrade)).
    UpgradeRequested,
    /// A handler started an attempt.
    Started {
        connection: ConnectionId,
        role: SdpRole,
        attempt: u32,
    },
    /// A handler's attempt produced a verified direct connection.
    Upgraded {
        connection: ConnectionId,
        role: SdpRole,
        attempt: u32,
        timings: Timings,
        path: Option<DirectPath>,
    },
    /// A handler's attempt failed.
    Failed {
        connection: ConnectionId,
        role: SdpRole,
        attempt: u32,
        error: Error,
    },
    /// A handler dropped its offer for the remote's (glare on one connection).
    Superseded { connection: ConnectionId },
    /// Nothing arrived on the direct connection's path for `ice_disconnected_timeout`.
    PathDown,
    /// ICE works again on the direct connection's path.
    PathUp,
    /// A handler started an ICE restart of the direct connection on a relayed connection.
    RestartStarted { connection: ConnectionId },
    /// The ICE restart on `connection` succeeded.
    Restarted {
        connection: ConnectionId,
        took: Duration,
    },
    /// The ICE restart on `connection` failed.
    RestartFailed {
        connection: ConnectionId,
        error: Error,
    },
    /// Time passed: fire the timers that are due.
    Tick,
}

/// What the policy asks for.
// Actions live only while one input is processed (a few at a time), and most of them are
// events, which the Swarm takes by value anyway: boxing them would add an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Action {
    /// Send a command to the handler of a connection to the peer.
    Command {
        connection: ConnectionId,
        command: Command,
    },
    /// Close a connection to the peer.
    Close { connection: ConnectionId },
    /// Dial the peer again at this relayed address (the direct connection died).
    Dial { addr: Multiaddr },
    /// Report an event to the application.
    Emit(Event),
    /// Hand the direct connection made over `relayed` to the transport, under `remote_addr`.
    /// (Without this action, after [`Input::Upgraded`], the direct connection is dropped.)
    HandOff {
        relayed: ConnectionId,
        remote_addr: Multiaddr,
    },
}

#[derive(Debug)]
struct Relayed {
    /// The address the direct connection's remote address is built from.
    addr: Multiaddr,
    /// This side dialed the relayed connection: it offers.
    dialer: bool,
    /// The peer is upgraded: the connection is being drained, then closed.
    draining: bool,
    /// When the remote's offers on this connection started, within
    /// [`Config::remote_offer_window`].
    remote_offers: VecDeque<Instant>,
    /// ICE restarts the remote started on this connection.
    remote_restarts: u32,
}

/// Direct-connection losses a peer's policy remembers for [`Config::flap_window`].
const MAX_TRACKED_LOSSES: usize = 8;

/// The running attempt (one at a time per peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempt {
    connection: ConnectionId,
    role: SdpRole,
    number: u32,
}

/// A direct connection handed to the transport, not established yet.
#[derive(Debug)]
struct Handed {
    relayed: ConnectionId,
    offerer: PeerId,
    at: Instant,
    attempt: u32,
    timings: Timings,
    path: Option<DirectPath>,
}

#[derive(Debug)]
struct Direct {
    connection: ConnectionId,
    offerer: PeerId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Start attempt `attempt` on `connection`.
    Retry {
        connection: ConnectionId,
        attempt: u32,
    },
    /// Close the drained relayed `connection`.
    Drain { connection: ConnectionId },
    /// Start a new round of attempts on `connection`.
    Round { connection: ConnectionId },
    /// Redial the relayed address.
    Redial,
    /// The direct connection's path went quiet `ice_failed_timeout` ago: if it is still
    /// quiet, the connection is dead (an ICE restart would otherwise push webrtc-rs's own
    /// verdict further out).
    PathDead,
}

impl Timer {
    fn connection(&self) -> Option<ConnectionId> {
        match self {
            Timer::Retry { connection, .. }
            | Timer::Drain { connection }
            | Timer::Round { connection } => Some(*connection),
            Timer::Redial | Timer::PathDead => None,
        }
    }
}

/// The upgrade policy for one remote peer.
#[derive(Debug)]
pub(crate) struct PeerPolicy {
    local: PeerId,
    peer: PeerId,
    config: Arc<Config>,
    relayed: BTreeMap<ConnectionId, Relayed>,
    attempt: Option<Attempt>,
    handed: VecDeque<Handed>,
    direct: Vec<Direct>,
    timers: Vec<(Instant, Timer)>,
    /// The relayed address this side dialed: redialed when the direct connection dies.
    redial_addr: Option<Multiaddr>,
    /// Redials made since the direct connection died (`None`: not redialing).
    redials: Option<u32>,
    /// Rounds of attempts that failed since the last upgrade.
    failed_rounds: u32,
    /// When direct connections to the peer died, within [`Config::flap_window`] (at most
    /// [`MAX_TRACKED_LOSSES`]). Not reset by an upgrade: a path that dies again and again
    /// is upgraded less and less often.
    losses: VecDeque<Instant>,
    /// The direct connection's path went quiet and has not come back yet.
    path_down: bool,
    /// The relayed connection an ICE restart of the direct connection runs on.
    restart: Option<ConnectionId>,
    /// The relayed address is being dialed for an ICE restart.
    restart_dial: bool,
}

impl PeerPolicy {
    pub(crate) fn new(local: PeerId, peer: PeerId, config: Arc<Config>) -> Self {
        Self {
            local,
            peer,
            config,
            relayed: BTreeMap::new(),
            attempt: None,
            handed: VecDeque::new(),
            direct: Vec::new(),
            timers: Vec::new(),
            redial_addr: None,
            redials: None,
            failed_rounds: 0,
            losses: VecDeque::new(),
            path_down: false,
            restart: None,
            restart_dial: false,
        }
    }

    /// Whether the peer has a direct connection made by an upgrade.
    pub(crate) fn is_upgraded(&self) -> bool {
        !self.direct.is_empty()
    }

    /// Whether an attempt is running.
    pub(crate) fn is_upgrading(&self) -> bool {
        self.attempt.is_some()
    }

    /// Nothing left to track: the entry can go.
    pub(crate) fn is_idle(&self) -> bool {
        self.relayed.is_empty()
            && self.direct.is_empty()
            && self.handed.is_empty()
            && self.attempt.is_none()
            && self.timers.is_empty()
            && self.redials.is_none()
            && !self.restart_dial
    }

    /// When [`Input::Tick`] is due next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.iter().map(|(at, _)| *at).min()
    }

    /// Applies one input at time `now`; returns what to do, in order.
    pub(crate) fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::RelayEstablished {
                connection,
                addr,
                dialer,
            } => self.on_relay_established(now, connection, addr, dialer, &mut out),
            Input::DirectEstablished { connection } => {
                self.on_direct_established(now, connection, &mut out)
            }
            Input::DirectRefused { connection, reason } => {
                if let Some(h) = self.handed.pop_front() {
                    tracing::debug!(peer = %self.peer, %connection, "direct connection refused: {reason}");
                    out.push(Action::Emit(Event::UpgradeFailed {
                        peer: self.peer,
                        relayed_connection: h.relayed,
                        error: Error::Denied(crate::Cause::new(reason)),
                        attempt: 1,
                        will_retry: false,
                    }));
                }
            }
            Input::Closed {
                connection,
                failed,
                reason,
            } => self.on_closed(now, connection, failed, reason, &mut out),
            Input::RedialFailed { reason } => self.on_redial_failed(now, reason, &mut out),
            Input::UpgradeRequested => {
                // Prefer a connection we dialed: that is the one the remote expects an offer on.
                let chosen = self
                    .relayed
                    .iter()
                    .filter(|(_, r)| !r.draining)
                    .max_by_key(|(id, r)| (r.dialer, std::cmp::Reverse(**id)))
                    .map(|(id, _)| *id);
                if let Some(connection) = chosen {
                    self.start(connection, 1, &mut out);
                }
            }
            Input::Started {
                connection,
                role,
                attempt,
            } => self.on_started(now, connection, role, attempt, &mut out),
            Input::Upgraded {
                connection,
                role,
                attempt,
                timings,
                path,
            } => {
                self.clear_attempt(connection);
                if let Some(r) = self.relayed.get(&connection) {
                    let offerer = match role {
                        SdpRole::Offerer => self.local,
                        SdpRole::Answerer => self.peer,
                    };
                    out.push(Action::HandOff {
                        relayed: connection,
                        remote_addr: direct_addr(&r.addr, self.peer),
                    });
                    self.handed.push_back(Handed {
                        relayed: connection,
                        offerer,
                        at: now,
                        attempt,
                        timings,
                        path,
                    });
                }
            }
            Input::Failed {
                connection,
                role,
                attempt,
                error,
            } => self.on_failed(now, connection, role, attempt, error, &mut out),
            Input::Superseded { connection } => self.clear_attempt(connection),
            Input::PathDown => self.on_path_down(now, &mut out),
            Input::PathUp => self.path_up(),
            // Keep the relayed connection while the restart runs (the answerer learns of it
            // here). Only the side that dialed the relayed connection offers a restart on it
            // (`on_path_down`): one the remote offers on a connection this side dialed is
            // refused, as is one past `max_remote_restarts`, and the connection keeps its
            // drain schedule.
            Input::RestartStarted { connection } => {
                let asked = self.restart == Some(connection);
                let limit = self.config.max_remote_restarts;
                let refusal = match self.relayed.get_mut(&connection) {
                    _ if asked => None,
                    Some(r) if r.dialer => Some(ProtocolViolation::Unexpected(
                        "an ICE restart from the side that did not dial the relayed connection",
                    )),
                    Some(r) => {
                        r.remote_restarts += 1;
                        (r.remote_restarts > limit).then_some(ProtocolViolation::OverLimit {
                            what: "ICE restarts by the remote on one relayed connection",
                            limit,
                        })
                    }
                    None => None,
                };
                if let Some(violation) = refusal {
                    tracing::debug!(peer = %self.peer, %connection, "ICE restart refused: {violation}");
                    out.push(Action::Command {
                        connection,
                        command: Command::Abort,
                    });
                    out.push(Action::Emit(Event::RestartFailed {
                        peer: self.peer,
                        relayed_connection: connection,
                        error: Error::Protocol(violation),
                    }));
                } else {
                    self.restart_on(connection, Command::Resume, &mut out)
                }
            }
            Input::Restarted { connection, took } => {
                self.end_restart(now, connection, &mut out);
                self.path_up();
                if let Some(direct) = self.direct.last() {
                    tracing::debug!(peer = %self.peer, %connection, ?took, "ICE restarted");
                    out.push(Action::Emit(Event::Restarted {
                        peer: self.peer,
                        direct_connection: direct.connection,
                        relayed_connection: connection,
                        took,
                    }));
                }
            }
            Input::RestartFailed { connection, error } => {
                self.end_restart(now, connection, &mut out);
                tracing::debug!(peer = %self.peer, %connection, "ICE restart failed: {}", crate::error::chain(&error));
                out.push(Action::Emit(Event::RestartFailed {
                    peer: self.peer,
                    relayed_connection: connection,
                    error,
                }));
            }
            Input::Tick => {
                while let Some(i) = self.timers.iter().position(|(at, _)| *at <= now) {
                    let (_, timer) = self.timers.swap_remove(i);
                    self.fire(now, timer, &mut out);
                }
            }
        }
        out
    }

    fn on_relay_established(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        addr: Multiaddr,
        dialer: bool,
        out: &mut Vec<Action>,
    ) {
        let explicit = dialer && is_explicit(&addr);
        let upgraded = self.is_upgraded();
        let for_restart = dialer && std::mem::take(&mut self.restart_dial);
        if dialer {
            self.redial_addr = Some(addr.clone());
            self.redials = None;
            self.timers.retain(|(_, t)| *t != Timer::Redial);
        }
        self.relayed.insert(
            connection,
            Relayed {
                addr,
                dialer,
                draining: upgraded,
                remote_offers: VecDeque::new(),
                remote_restarts: 0,
            },
        );
        if upgraded && for_restart && self.path_down && self.restart.is_none() {
            self.restart_on(connection, Command::Restart, out);
        } else if upgraded {
            self.drain(now, connection, out);
        } else if dialer && (self.config.auto_upgrade || explicit) {
            self.start_or_hold_off(now, connection, out);
        } else {
            out.push(Action::Command {
                connection,
                command: Command::Idle,
            });
        }
    }

    fn on_direct_established(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        out: &mut Vec<Action>,
    ) {
        let Some(h) = self.handed.pop_front() else {
            return;
        };
        self.failed_rounds = 0;
        self.direct.push(Direct {
            connection,
            offerer: h.offerer,
        });
        let timings = Timings {
            handoff: now.saturating_duration_since(h.at),
            ..h.timings
        };
        out.push(Action::Emit(Event::Upgraded {
            peer: self.peer,
            relayed_connection: h.relayed,
            direct_connection: connection,
            attempt: h.attempt,
            took: timings.total(),
            timings,
            path: h.path,
        }));
        // Glare safety net: keep one direct connection, the one the glare winner offered
        // (the same choice on both sides).
        if self.direct.len() > 1 {
            let winner = if offer_wins(&self.local, &self.peer) {
                self.local
            } else {
                self.peer
            };
            let keep = self
                .direct
                .iter()
                .position(|d| d.offerer == winner)
                .unwrap_or(0);
            for (i, d) in self.direct.iter().enumerate() {
                if i != keep {
                    out.push(Action::Close {
                        connection: d.connection,
                    });
                }
            }
        }
        // Drain the relayed connections.
        let drain: Vec<ConnectionId> = self
            .relayed
            .iter_mut()
            .filter(|(_, r)| !r.draining)
            .map(|(id, r)| {
                r.draining = true;
                *id
            })
            .collect();
        for connection in drain {
            self.drain(now, connection, out);
        }
    }

    fn on_closed(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        failed: bool,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        if let Some(i) = self.direct.iter().position(|d| d.connection == connection) {
            self.direct.swap_remove(i);
            if failed && self.direct.is_empty() {
                self.fall_back(now, connection, reason, out);
            }
            return;
        }
        let Some(r) = self.relayed.remove(&connection) else {
            return;
        };
        if self.restart == Some(connection) {
            self.restart = None;
        }
        self.timers
            .retain(|(_, t)| t.connection() != Some(connection));
        if let Some(a) = self.attempt.filter(|a| a.connection == connection) {
            // The attempt went with its connection (the handler is gone).
            self.attempt = None;
            out.push(Action::Emit(Event::UpgradeFailed {
                peer: self.peer,
                relayed_connection: connection,
                error: Error::RelayLost,
                attempt: a.number,
                will_retry: false,
            }));
        }
        if r.draining {
            out.push(Action::Emit(Event::RelayClosed {
                peer: self.peer,
                relayed_connection: connection,
            }));
        }
    }

    fn on_started(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        role: SdpRole,
        attempt: u32,
        out: &mut Vec<Action>,
    ) {
        if role == SdpRole::Answerer && self.remote_offer_over_limit(now, connection) {
            let limit = self.config.max_remote_offers;
            tracing::debug!(peer = %self.peer, %connection, "offer past max_remote_offers: refused");
            out.push(Action::Command {
                connection,
                command: Command::Abort,
            });
            out.push(Action::Emit(Event::UpgradeFailed {
                peer: self.peer,
                relayed_connection: connection,
                error: Error::Protocol(ProtocolViolation::OverLimit {
                    what: "offers by the remote on one relayed connection",
                    limit,
                }),
                attempt,
                will_retry: false,
            }));
            return;
        }
        if role == SdpRole::Answerer {
            if let Some(ours) = self
                .attempt
                .filter(|a| a.role == SdpRole::Offerer && a.connection != connection)
            {
                // Glare across two relayed connections: one offer wins, on both sides.
                if offer_wins(&self.local, &self.peer) {
                    out.push(Action::Command {
                        connection,
                        command: Command::Abort,
                    });
                    return;
                }
                out.push(Action::Command {
                    connection: ours.connection,
                    command: Command::Abort,
                });
            }
            self.attempt = Some(Attempt {
                connection,
                role,
                number: attempt,
            });
        }
        out.push(Action::Emit(Event::UpgradeStarted {
            peer: self.peer,
            relayed_connection: connection,
            role,
            attempt,
        }));
    }

    /// Counts an offer the remote started on `connection`: whether it is past
    /// [`Config::max_remote_offers`] within [`Config::remote_offer_window`]. Refused offers
    /// count too, so a remote that keeps offering stays refused.
    fn remote_offer_over_limit(&mut self, now: Instant, connection: ConnectionId) -> bool {
        let window = self.config.remote_offer_window;
        let limit = self.config.max_remote_offers as usize;
        let Some(r) = self.relayed.get_mut(&connection) else {
            return false;
        };
        while r
            .remote_offers
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            r.remote_offers.pop_front();
        }
        // Bounded: at most one past the limit is kept.
        if r.remote_offers.len() <= limit {
            r.remote_offers.push_back(now);
        }
        r.remote_offers.len() > limit
    }

    fn on_failed(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        role: SdpRole,
        attempt: u32,
        error: Error,
        out: &mut Vec<Action>,
    ) {
        self.clear_attempt(connection);
        // A remote without the protocol will not gain it: no later rounds.
        let hopeless = matches!(error, Error::Unsupported);
        let will_retry = role == SdpRole::Offerer
            && attempt < self.config.max_upgrade_attempts
            && !self.is_upgraded()
            && self.relayed.get(&connection).is_some_and(|r| !r.draining);
        tracing::debug!(peer = %self.peer, %connection, attempt, will_retry, "upgrade failed: {}", crate::error::chain(&error));
        out.push(Action::Emit(Event::UpgradeFailed {
            peer: self.peer,
            relayed_connection: connection,
            error,
            attempt,
            will_retry,
        }));
        if will_retry {
            self.timers.push((
                now + retry_delay(self.config.retry_backoff, attempt),
                Timer::Retry {
                    connection,
                    attempt: attempt + 1,
                },
            ));
        } else if role == SdpRole::Offerer {
            out.push(Action::Command {
                connection,
                command: Command::Idle,
            });
            // The path may come back: a new round of attempts later, while the relayed
            // connection lives.
            let backoff = self.config.upgrade_round_backoff;
            if !hopeless
                && !backoff.is_zero()
                && self.relayed.get(&connection).is_some_and(|r| !r.draining)
            {
                let factor = 2u32.pow(self.failed_rounds.min(3));
                self.failed_rounds += 1;
                self.timers.push((
                    now + backoff.saturating_mul(factor),
                    Timer::Round { connection },
                ));
            }
        }
    }

    /// The last direct connection died: go back to the relay. Relayed connections still
    /// being drained are kept and upgraded again; without one, the side that dialed the
    /// relayed connection dials it again.
    fn fall_back(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        self.path_up();
        let window = self.config.flap_window;
        self.losses
            .retain(|at| now.saturating_duration_since(*at) < window);
        if self.losses.len() == MAX_TRACKED_LOSSES {
            self.losses.pop_front();
        }
        self.losses.push_back(now);
        if let Some(restart) = self.restart.take() {
            // Too late: the connection to restart is gone. The relayed connection is upgraded
            // instead.
            out.push(Action::Command {
                connection: restart,
                command: Command::Abort,
            });
        }
        let kept: Vec<ConnectionId> = self
            .relayed
            .iter_mut()
            .map(|(id, r)| {
                r.draining = false;
                *id
            })
            .collect();
        self.timers
            .retain(|(_, t)| !matches!(t, Timer::Drain { .. }));
        // A dial made for a restart counts as the first redial.
        let dialing = std::mem::take(&mut self.restart_dial);
        let will_redial = kept.is_empty() && self.redial_addr.is_some();
        tracing::debug!(peer = %self.peer, %connection, will_redial, "direct connection lost: {reason}");
        out.push(Action::Emit(Event::DirectLost {
            peer: self.peer,
            direct_connection: connection,
            reason,
            will_redial,
        }));
        for relayed in kept {
            out.push(Action::Command {
                connection: relayed,
                command: Command::Resume,
            });
            if self.relayed.get(&relayed).is_some_and(|r| r.dialer) {
                self.start_or_hold_off(now, relayed, out);
            }
        }
        if will_redial && dialing {
            self.redials = Some(1);
        } else if will_redial {
            self.redial(out);
        }
    }

    /// The direct connection's path went quiet: if this side dialed the relayed connection,
    /// restart ICE over a relayed connection, dialing one if there is none.
    fn on_path_down(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.is_upgraded() || self.path_down {
            return;
        }
        self.path_down = true;
        self.timers
            .push((now + self.config.ice_failed_timeout, Timer::PathDead));
        // The side that offered the direct connection offers its restarts: after glare both
        // sides dialed a relayed connection, and both restarting at once (each answering the
        // other's restart on the same peer connection) left the surviving connection unable
        // to restart. Without glare it is the side that dialed the relayed connection.
        let offered_here = self.direct.last().is_some_and(|d| d.offerer == self.local);
        if !self.config.ice_restart || !offered_here || self.restart.is_some() || self.restart_dial
        {
            return;
        }
        let ours = self
            .relayed
            .iter()
            .find(|(_, r)| r.dialer)
            .map(|(id, _)| *id);
        if let Some(connection) = ours {
            self.restart_on(connection, Command::Restart, out);
        } else if let Some(addr) = self.redial_addr.clone() {
            tracing::debug!(peer = %self.peer, "direct path quiet: dialing the relay to restart ICE");
            self.restart_dial = true;
            out.push(Action::Dial { addr });
        }
    }

    /// A restart runs on `connection`: it is kept (no drain timer) and gets `command`.
    fn restart_on(&mut self, connection: ConnectionId, command: Command, out: &mut Vec<Action>) {
        self.restart = Some(connection);
        self.timers
            .retain(|(_, t)| *t != Timer::Drain { connection });
        out.push(Action::Command {
            connection,
            command,
        });
    }

    /// The direct connection's path works (again), or the connection is gone.
    fn path_up(&mut self) {
        self.path_down = false;
        self.timers.retain(|(_, t)| *t != Timer::PathDead);
    }

    /// The restart on `connection` ended: the relayed connection is drained again.
    fn end_restart(&mut self, now: Instant, connection: ConnectionId, out: &mut Vec<Action>) {
        if self.restart == Some(connection) {
            self.restart = None;
        }
        if self.is_upgraded() && self.relayed.contains_key(&connection) {
            self.drain(now, connection, out);
        }
    }

    /// Dials the relayed address again (the first redial at once, then per the backoff).
    fn redial(&mut self, out: &mut Vec<Action>) {
        let Some(addr) = self.redial_addr.clone() else {
            return;
        };
        self.redials = Some(self.redials.unwrap_or(0) + 1);
        out.push(Action::Dial { addr });
    }

    fn on_redial_failed(&mut self, now: Instant, reason: String, out: &mut Vec<Action>) {
        if std::mem::take(&mut self.restart_dial) {
            // No restart; if the path dies, the fallback dials again.
            tracing::debug!(peer = %self.peer, "dialing the relay to restart ICE failed: {reason}");
            return;
        }
        let Some(made) = self.redials else {
            return;
        };
        if made < self.config.max_redials {
            tracing::debug!(peer = %self.peer, made, "redial failed: {reason}");
            self.timers.push((
                now + retry_delay(self.config.redial_backoff, made),
                Timer::Redial,
            ));
        } else {
            self.redials = None;
            out.push(Action::Emit(Event::FallbackFailed {
                peer: self.peer,
                redials: made,
                reason,
            }));
        }
    }

    fn fire(&mut self, now: Instant, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::Retry {
                connection,
                attempt,
            } => self.start(connection, attempt, out),
            Timer::Drain { connection } => {
                if self.relayed.contains_key(&connection) {
                    out.push(Action::Close { connection });
                }
            }
            Timer::Round { connection } => {
                if self.relayed.contains_key(&connection) {
                    out.push(Action::Command {
                        connection,
                        command: Command::Resume,
                    });
                    self.start(connection, 1, out);
                }
            }
            Timer::Redial => {
                if self.redials.is_some() && self.relayed.is_empty() && self.direct.is_empty() {
                    self.redial(out);
                }
            }
            Timer::PathDead => {
                if self.path_down && self.direct.len() == 1 {
                    let dead = self.direct.remove(0).connection;
                    out.push(Action::Close { connection: dead });
                    let timeout =
                        self.config.ice_disconnected_timeout + self.config.ice_failed_timeout;
                    let reason = format!("nothing received on the direct path for {timeout:?}");
                    self.fall_back(now, dead, reason, out);
                }
            }
        }
    }

    /// Starts attempt `attempt` as the offerer on `connection`, if nothing forbids it.
    /// Starts upgrading `connection` now, unless direct connections to the peer died twice or
    /// more within [`Config::flap_window`]: then the attempt waits
    /// [`Config::upgrade_round_backoff`], doubled per further loss up to 8×, and the peer
    /// stays on the relay meanwhile. Before, each loss was followed at once by a redial and a
    /// new upgrade, however often the path (or a remote, on purpose) let it die.
    fn start_or_hold_off(&mut self, now: Instant, connection: ConnectionId, out: &mut Vec<Action>) {
        let window = self.config.flap_window;
        let recent = self
            .losses
            .iter()
            .filter(|at| now.saturating_duration_since(**at) < window)
            .count() as u32;
        let backoff = self.config.upgrade_round_backoff;
        if recent < 2 || backoff.is_zero() {
            self.start(connection, 1, out);
            return;
        }
        let factor = 2u32.pow((recent - 2).min(3));
        let delay = backoff.saturating_mul(factor);
        tracing::debug!(peer = %self.peer, %connection, recent, ?delay, "the direct path keeps dying: upgrading later");
        out.push(Action::Command {
            connection,
            command: Command::Idle,
        });
        self.timers
            .retain(|(_, t)| *t != Timer::Round { connection });
        self.timers.push((now + delay, Timer::Round { connection }));
    }

    fn start(&mut self, connection: ConnectionId, attempt: u32, out: &mut Vec<Action>) {
        let Some(r) = self.relayed.get(&connection) else {
            return;
        };
        if r.draining || self.is_upgraded() || self.attempt.is_some() {
            return;
        }
        self.attempt = Some(Attempt {
            connection,
            role: SdpRole::Offerer,
            number: attempt,
        });
        out.push(Action::Command {
            connection,
            command: Command::Start { attempt },
        });
    }

    /// Stops keeping `connection` alive for upgrades and closes it after the drain timeout.
    ///
    /// The side that did not dial it waits at least `upgrade_timeout`: its own side of the
    /// direct connection may be up while the dialer's is not yet (a lost DTLS or SCTP
    /// handshake packet on a lossy path), and closing the relay then would cut the dialer's
    /// attempt and its retries. The dialer, which knows, closes it after `drain_timeout`.
    fn drain(&mut self, now: Instant, connection: ConnectionId, out: &mut Vec<Action>) {
        out.push(Action::Command {
            connection,
            command: Command::Idle,
        });
        let wait = if self.relayed.get(&connection).is_some_and(|r| r.dialer) {
            self.config.drain_timeout
        } else {
            self.config.drain_timeout.max(self.config.upgrade_timeout)
        };
        self.timers.push((now + wait, Timer::Drain { connection }));
    }

    /// Forgets the running attempt if it is the one on `connection`.
    fn clear_attempt(&mut self, connection: ConnectionId) {
        if self.attempt.is_some_and(|a| a.connection == connection) {
            self.attempt = None;
        }
    }
}

/// The wait before attempt `attempt + 1`: the backoff, doubled per failed attempt.
fn retry_delay(backoff: Duration, attempt: u32) -> Duration {
    backoff.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_addr(peer: PeerId) -> Multiaddr {
        let relay: Multiaddr =
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                .parse()
                .unwrap();
        relay.with(Protocol::P2pCircuit).with(Protocol::P2p(peer))
    }

    fn conn(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    /// Two peer ids, the first of which wins glares.
    fn ordered_peers() -> (PeerId, PeerId) {
        let (a, b) = (PeerId::random(), PeerId::random());
        if offer_wins(&a, &b) {
            (a, b)
        } else {
            (b, a)
        }
    }

    struct Fixture {
        policy: PeerPolicy,
        now: Instant,
    }

    impl Fixture {
        fn new(local: PeerId, peer: PeerId, config: Config) -> Self {
            Self {
                policy: PeerPolicy::new(local, peer, Arc::new(config)),
                now: Instant::now(),
            }
        }

        fn with_defaults() -> Self {
            Self::new(PeerId::random(), PeerId::random(), Config::default())
        }

        fn input(&mut self, input: Input) -> Vec<Action> {
            self.policy.handle(self.now, input)
        }

        fn relay(&mut self, connection: ConnectionId, dialer: bool) -> Vec<Action> {
            let addr = relay_addr(self.policy.peer);
            self.input(Input::RelayEstablished {
                connection,
                addr,
                dialer,
            })
        }

        /// Advances to the next deadline and ticks.
        fn advance(&mut self) -> Vec<Action> {
            let at = self.policy.next_deadline().expect("a timer");
            assert!(at >= self.now, "deadlines never lie in the past");
            self.now = at;
            self.input(Input::Tick)
        }

        /// The handler of `connection` started answering the remote's offer.
        fn answering(&mut self, connection: ConnectionId) -> Vec<Action> {
            self.input(Input::Started {
                connection,
                role: SdpRole::Answerer,
                attempt: 1,
            })
        }

        fn fail(&mut self, connection: ConnectionId, attempt: u32) -> Vec<Action> {
            self.input(Input::Failed {
                connection,
                role: SdpRole::Offerer,
                attempt,
                error: Error::ConnectionFailed,
            })
        }

        /// A successful upgrade over `connection`, direct connection `direct`.
        fn upgrade(&mut self, connection: ConnectionId, role: SdpRole, direct: ConnectionId) {
            let out = self.input(Input::Upgraded {
                connection,
                role,
                attempt: 1,
                timings: Timings::default(),
                path: None,
            });
            assert!(matches!(out[..], [Action::HandOff { relayed, .. }] if relayed == connection));
            let out = self.input(Input::DirectEstablished { connection: direct });
            assert!(matches!(
                out.first(),
                Some(Action::Emit(Event::Upgraded { direct_connection, .. })) if *direct_connection == direct
            ));
        }
    }

    /// A close on purpose.
    fn closed(connection: ConnectionId) -> Input {
        Input::Closed {
            connection,
            failed: false,
            reason: "closed".into(),
        }
    }

    /// A connection that died.
    fn died(connection: ConnectionId) -> Input {
        Input::Closed {
            connection,
            failed: true,
            reason: "ICE failed".into(),
        }
    }

    fn dials(out: &[Action]) -> usize {
        out.iter()
            .filter(|a| matches!(a, Action::Dial { .. }))
            .count()
    }

    fn commands(out: &[Action]) -> Vec<(ConnectionId, String)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Command {
                    connection,
                    command,
                } => Some((*connection, format!("{command:?}"))),
                _ => None,
            })
            .collect()
    }

    fn closes(out: &[Action]) -> Vec<ConnectionId> {
        out.iter()
            .filter_map(|a| match a {
                Action::Close { connection } => Some(*connection),
                _ => None,
            })
            .collect()
    }

    fn failures(out: &[Action]) -> Vec<(u32, bool)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Emit(Event::UpgradeFailed {
                    attempt,
                    will_retry,
                    ..
                }) => Some((*attempt, *will_retry)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn addresses() {
        let peer = PeerId::random();
        let circuit = relay_addr(peer);
        assert!(is_relayed(&circuit));
        assert!(!is_explicit(&circuit));
        let relay: Multiaddr = circuit
            .iter()
            .take_while(|p| *p != Protocol::P2pCircuit)
            .collect();
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

    #[test]
    fn glare_has_one_winner_both_ways() {
        for _ in 0..32 {
            let (a, b) = (PeerId::random(), PeerId::random());
            assert_ne!(offer_wins(&a, &b), offer_wins(&b, &a));
        }
    }

    #[test]
    fn the_dialer_offers_and_the_listener_waits() {
        let mut f = Fixture::with_defaults();
        assert_eq!(
            commands(&f.relay(conn(1), true)),
            [(conn(1), "Start { attempt: 1 }".into())]
        );
        assert!(f.policy.is_upgrading());
        let mut f = Fixture::with_defaults();
        assert_eq!(
            commands(&f.relay(conn(1), false)),
            [(conn(1), "Idle".into())]
        );
        assert!(!f.policy.is_upgrading());
    }

    #[test]
    fn without_auto_upgrade_only_explicit_dials_upgrade() {
        let config = Config::default().with_auto_upgrade(false);
        let peer = PeerId::random();
        let mut f = Fixture::new(PeerId::random(), peer, config);
        assert_eq!(
            commands(&f.relay(conn(1), true)),
            [(conn(1), "Idle".into())]
        );
        let explicit = relay_addr(peer)
            .iter()
            .filter(|p| !matches!(p, Protocol::P2p(id) if *id == peer))
            .collect::<Multiaddr>()
            .with(Protocol::WebRTC);
        let out = f.input(Input::RelayEstablished {
            connection: conn(2),
            addr: explicit,
            dialer: true,
        });
        assert_eq!(commands(&out), [(conn(2), "Start { attempt: 1 }".into())]);
        // An explicit request picks the dialed connection again once this one is done.
        f.fail(conn(2), f.policy.config.max_upgrade_attempts);
        let out = f.input(Input::UpgradeRequested);
        assert_eq!(commands(&out).len(), 1);
    }

    #[test]
    fn retries_back_off_and_are_bounded() {
        let config = Config::default()
            .with_retries(3, Duration::from_millis(100))
            .with_upgrade_round_backoff(Duration::ZERO);
        let mut f = Fixture::new(PeerId::random(), PeerId::random(), config);
        f.relay(conn(1), true);
        let start = f.now;
        assert_eq!(failures(&f.fail(conn(1), 1)), [(1, true)]);
        assert_eq!(
            f.policy.next_deadline(),
            Some(start + Duration::from_millis(100))
        );
        assert_eq!(
            commands(&f.advance()),
            [(conn(1), "Start { attempt: 2 }".into())]
        );
        assert_eq!(failures(&f.fail(conn(1), 2)), [(2, true)]);
        assert_eq!(
            f.policy.next_deadline(),
            Some(start + Duration::from_millis(300)),
            "the backoff doubles"
        );
        assert_eq!(
            commands(&f.advance()),
            [(conn(1), "Start { attempt: 3 }".into())]
        );
        let out = f.fail(conn(1), 3);
        assert_eq!(failures(&out), [(3, false)], "retries exhausted");
        assert_eq!(commands(&out), [(conn(1), "Idle".into())]);
        assert_eq!(f.policy.next_deadline(), None);
        // The application may ask again.
        assert_eq!(
            commands(&f.input(Input::UpgradeRequested)),
            [(conn(1), "Start { attempt: 1 }".into())]
        );
    }

    #[test]
    fn the_answerer_never_retries() {
        let mut f = Fixture::with_defaults();
        f.relay(conn(1), false);
        f.answering(conn(1));
        let out = f.input(Input::Failed {
            connection: conn(1),
            role: SdpRole::Answerer,
            attempt: 1,
            error: Error::Timeout,
        });
        assert_eq!(failures(&out), [(1, false)]);
        assert!(commands(&out).is_empty());
        assert_eq!(f.policy.next_deadline(), None);
    }

    #[test]
    fn an_upgrade_drains_every_relayed_connection() {
        let mut f = Fixture::with_defaults();
        f.relay(conn(1), true);
        f.relay(conn(2), false);
        let before = f.now;
        f.upgrade(conn(1), SdpRole::Offerer, conn(10));
        assert!(f.policy.is_upgraded());
        assert_eq!(
            f.policy.next_deadline(),
            Some(before + f.policy.config.drain_timeout)
        );
        assert_eq!(closes(&f.advance()), [conn(1)]);
        // The one the remote dialed, once an attempt of the remote's could have ended.
        assert_eq!(closes(&f.advance()), [conn(2)]);
        assert_eq!(f.now - before, f.policy.config.upgrade_timeout);
        for c in [conn(1), conn(2)] {
            let out = f.input(closed(c));
            assert!(matches!(out[..], [Action::Emit(Event::RelayClosed { .. })]));
        }
        // A relayed connection made later is drained too, and never upgraded.
        let out = f.relay(conn(3), true);
        assert_eq!(commands(&out), [(conn(3), "Idle".into())]);
        assert!(!f.policy.is_upgrading());
        f.input(closed(conn(3)));
        f.input(closed(conn(10)));
        assert!(f.policy.is_idle(), "nothing left behind: {:?}", f.policy);
    }

    #[test]
    fn the_drain_timer_of_a_closed_relay_is_dropped() {
        let mut f = Fixture::with_defaults();
        f.relay(conn(1), true);
        f.upgrade(conn(1), SdpRole::Offerer, conn(10));
        f.input(closed(conn(1)));
        assert_eq!(f.policy.next_deadline(), None);
    }

    #[test]
    fn losing_the_relay_fails_the_attempt_without_retry() {
        let mut f = Fixture::with_defaults();
        f.relay(conn(1), true);
        let out = f.input(closed(conn(1)));
        assert!(matches!(
            out[..],
            [Action::Emit(Event::UpgradeFailed {
                error: Error::RelayLost,
                will_retry: false,
                ..
            })]
        ));
        assert!(f.policy.is_idle());
        // A retry scheduled on a relay that then closes never fires.
        f.relay(conn(2), true);
        f.fail(conn(2), 1);
        assert!(f.policy.next_deadline().is_some());
        f.input(closed(conn(2)));
        assert!(f.policy.is_idle());
    }

    #[test]
    fn glare_across_two_relayed_connections() {
        // We win: the remote's offer on the other connection is aborted.
        let (winner, loser) = ordered_peers();
        let mut f = Fixture::new(winner, loser, Config::default());
        f.relay(conn(1), true);
        f.relay(conn(2), false);
        let out = f.answering(conn(2));
        assert_eq!(commands(&out), [(conn(2), "Abort".into())]);
        assert!(!out.iter().any(|a| matches!(a, Action::Emit(_))));
        // We lose: our offer is aborted and we answer.
        let mut f = Fixture::new(loser, winner, Config::default());
        f.relay(conn(1), true);
        f.relay(conn(2), false);
        let out = f.answering(conn(2));
        assert_eq!(commands(&out), [(conn(1), "Abort".into())]);
        assert!(matches!(
            out.last(),
            Some(Action::Emit(Event::UpgradeStarted {
                role: SdpRole::Answerer,
                ..
            }))
        ));
        f.upgrade(conn(2), SdpRole::Answerer, conn(10));
        assert!(f.policy.is_upgraded());
    }

    #[test]
    fn two_direct_connections_keep_the_glare_winners() {
        for local_wins in [true, false] {
            let (winner, loser) = ordered_peers();
            let (local, peer) = if local_wins {
                (winner, loser)
            } else {
                (loser, winner)
            };
            let mut f = Fixture::new(local, peer, Config::default());
            f.relay(conn(1), true);
            f.relay(conn(2), false);
            f.upgrade(conn(1), SdpRole::Offerer, conn(10));
            // The other direction completes too: its direct connection arrives second.
            f.input(Input::Upgraded {
                connection: conn(2),
                role: SdpRole::Answerer,
                attempt: 1,
                timings: Timings::default(),
                path: None,
            });
            let out = f.input(Input::DirectEstablished {
                connection: conn(11),
            });
            // Ours (conn 10) was offered by us; the remote's (conn 11) by the peer.
            let loser_conn = if local_wins { conn(11) } else { conn(10) };
            assert_eq!(closes(&out), [loser_conn]);
        }
    }

    #[test]
    fn a_refused_direct_connection_is_reported_and_forgotten() {
        let mut f = Fixture::with_defaults();
        f.relay(conn(1), true);
        f.input(Input::Upgraded {
            connection: conn(1),
            role: SdpRole::Offerer,
            attempt: 1,
            timings: Timings::default(),
            path: None,
        });
        let out = f.input(Input::DirectRefused {
            connection: conn(10),
            reason: "denied".into(),
        });
        assert!(matches!(
            out[..],
            [Action::Emit(Event::UpgradeFailed {
                error: Error::Denied(_),
                ..
            })]
        ));
        assert!(!f.policy.is_upgraded());
        f.input(closed(conn(1)));
        assert!(f.policy.is_idle());
    }

    #[test]
    fn handoff_time_and_path_come_from_the_inputs() {
        let v6_path = DirectPath {
            local: "[2001:db8:1::2]:5000".parse().unwrap(),
            local_kind: crate::CandidateKind::Host,
            remote: "[2001:db8:2::2]:6000".parse().unwrap(),
            remote_kind: crate::CandidateKind::Host,
        };
        let mut f = Fixture::with_defaults();
        f.relay(conn(1), true);
        f.input(Input::Upgraded {
            connection: conn(1),
            role: SdpRole::Offerer,
            attempt: 1,
            timings: Timings {
                ice: Duration::from_millis(5),
                ..Timings::default()
            },
            path: Some(v6_path),
        });
        f.now += Duration::from_millis(7);
        let out = f.input(Input::DirectEstablished {
            connection: conn(10),
        });
        let Some(Action::Emit(Event::Upgraded {
            took,
            timings,
            path,
            ..
        })) = out.first()
        else {
            panic!("{out:?}");
        };
        assert_eq!(
            *path,
            Some(v6_path),
            "the path is reported as the handler saw it"
        );
        assert_eq!(timings.handoff, Duration::from_millis(7));
        assert_eq!(*took, Duration::from_millis(12));
    }

    fn lost(out: &[Action]) -> Option<bool> {
        out.iter().find_map(|a| match a {
            Action::Emit(Event::DirectLost { will_redial, .. }) => Some(*will_redial),
            _ => None,
        })
    }

    /// Upgraded over `conn(1)` (dialed by us when `dialer`), direct `conn(10)`, relay drained
    /// and closed.
    fn upgraded_and_drained(config: Config, dialer: bool) -> Fixture {
        let mut f = Fixture::new(PeerId::random(), PeerId::random(), config);
        f.relay(conn(1), dialer);
        let role = if dialer {
            SdpRole::Offerer
        } else {
            f.answering(conn(1));
            SdpRole::Answerer
        };
        f.upgrade(conn(1), role, conn(10));
        assert_eq!(closes(&f.advance()), [conn(1)]);
        f.input(closed(conn(1)));
        f
    }

    #[test]
    fn a_dead_direct_connection_falls_back_and_upgrades_again() {
        let mut f = upgraded_and_drained(Config::default(), true);
        let out = f.input(died(conn(10)));
        assert_eq!(lost(&out), Some(true));
        assert_eq!(dials(&out), 1, "the dialer redials at once");
        assert!(!f.policy.is_upgraded() && !f.policy.is_idle());
        // The new relayed connection is upgraded as usual.
        let out = f.relay(conn(2), true);
        assert_eq!(commands(&out), [(conn(2), "Start { attempt: 1 }".into())]);
        f.upgrade(conn(2), SdpRole::Offerer, conn(11));
        assert!(f.policy.is_upgraded());
    }

    #[test]
    fn the_listener_waits_for_the_redial() {
        let mut f = upgraded_and_drained(Config::default(), false);
        let out = f.input(died(conn(10)));
        assert_eq!(lost(&out), Some(false));
        assert_eq!(dials(&out), 0);
        assert!(f.policy.is_idle(), "nothing to wait for: {:?}", f.policy);
    }

    #[test]
    fn a_close_on_purpose_is_not_a_fallback() {
        let mut f = upgraded_and_drained(Config::default(), true);
        let out = f.input(closed(conn(10)));
        assert!(out.is_empty(), "{out:?}");
        assert!(f.policy.is_idle());
    }

    /// A direct path that dies again and again (or a remote that lets it die on purpose):
    /// the first loss is upgraded again at once; from the second within `flap_window` on, the
    /// upgrade over the redialed relay waits `upgrade_round_backoff`, doubled per further
    /// loss, and upgrades in between do not reset the count. Before, every loss cost a
    /// redial and an upgrade at once, however often it happened.
    #[test]
    fn a_path_that_keeps_dying_is_upgraded_later_and_later() {
        let config = Config::default();
        let backoff = config.upgrade_round_backoff;
        let mut f = upgraded_and_drained(config, true);
        let started = |out: &[Action], connection| {
            commands(out).contains(&(connection, "Start { attempt: 1 }".into()))
        };
        // Loss 1: redial and upgrade at once.
        assert_eq!(dials(&f.input(died(conn(10)))), 1);
        assert!(started(&f.relay(conn(2), true), conn(2)));
        f.upgrade(conn(2), SdpRole::Offerer, conn(11));
        assert_eq!(closes(&f.advance()), [conn(2)]);
        f.input(closed(conn(2)));
        // Losses 2 and 3: the redial still goes at once (the peer keeps a connection), the
        // upgrade waits.
        for (lost, relayed, direct, factor) in [(11, 3, 12, 1), (12, 4, 13, 2)] {
            f.now += Duration::from_secs(5);
            assert_eq!(dials(&f.input(died(conn(lost)))), 1);
            let out = f.relay(conn(relayed), true);
            assert!(!started(&out, conn(relayed)), "upgraded at once: {out:?}");
            assert_eq!(commands(&out), [(conn(relayed), "Idle".into())]);
            let held = f.now;
            let out = f.advance();
            assert_eq!(f.now, held + backoff * factor);
            assert!(started(&out, conn(relayed)), "{out:?}");
            f.upgrade(conn(relayed), SdpRole::Offerer, conn(direct));
            assert_eq!(closes(&f.advance()), [conn(relayed)]);
            f.input(closed(conn(relayed)));
        }
        // Past the window the count starts over.
        f.now += Duration::from_secs(601);
        assert_eq!(dials(&f.input(died(conn(13)))), 1);
        assert!(started(&f.relay(conn(5), true), conn(5)));
    }

    #[test]
    fn redials_back_off_and_are_bounded() {
        let config = Config::default().with_redials(3, Duration::from_millis(100));
        let mut f = upgraded_and_drained(config, true);
        let start = f.now;
        assert_eq!(dials(&f.input(died(conn(10)))), 1);
        let failed = || Input::RedialFailed {
            reason: "no route".into(),
        };
        assert!(f.input(failed()).is_empty());
        assert_eq!(
            f.policy.next_deadline(),
            Some(start + Duration::from_millis(100))
        );
        assert_eq!(dials(&f.advance()), 1);
        f.input(failed());
        assert_eq!(
            f.policy.next_deadline(),
            Some(start + Duration::from_millis(300)),
            "the backoff doubles"
        );
        assert_eq!(dials(&f.advance()), 1);
        let out = f.input(failed());
        assert!(matches!(
            out[..],
            [Action::Emit(Event::FallbackFailed { redials: 3, .. })]
        ));
        assert!(f.policy.is_idle());
    }

    #[test]
    fn a_relay_still_draining_is_kept_and_upgraded_again() {
        let mut f = Fixture::with_defaults();
        f.relay(conn(1), true);
        f.upgrade(conn(1), SdpRole::Offerer, conn(10));
        // The direct connection dies before the drain timeout closed the relay.
        let out = f.input(died(conn(10)));
        assert_eq!(lost(&out), Some(false));
        assert_eq!(dials(&out), 0);
        assert_eq!(
            commands(&out),
            [
                (conn(1), "Resume".into()),
                (conn(1), "Start { attempt: 1 }".into())
            ]
        );
        assert_eq!(f.policy.next_deadline(), None, "the drain is cancelled");
    }

    #[test]
    fn a_dead_path_gets_later_rounds_of_attempts() {
        let config = Config::default()
            .with_retries(1, Duration::from_millis(100))
            .with_upgrade_round_backoff(Duration::from_secs(10));
        let mut f = Fixture::new(PeerId::random(), PeerId::random(), config);
        f.relay(conn(1), true);
        let start = f.now;
        for (round, wait) in [(1, 10), (2, 30), (3, 70), (4, 150), (5, 230)] {
            let out = f.fail(conn(1), 1);
            assert_eq!(failures(&out), [(1, false)], "round {round}");
            assert_eq!(
                f.policy.next_deadline(),
                Some(start + Duration::from_secs(wait)),
                "round {round}: the delay doubles, up to 8x"
            );
            let out = f.advance();
            assert_eq!(
                commands(&out),
                [
                    (conn(1), "Resume".into()),
                    (conn(1), "Start { attempt: 1 }".into())
                ]
            );
        }
        // A relayed connection that closes takes its rounds with it.
        f.fail(conn(1), 1);
        f.input(closed(conn(1)));
        assert!(f.policy.is_idle());
    }

    #[test]
    fn a_remote_without_the_protocol_gets_no_later_rounds() {
        let config = Config::default().with_retries(1, Duration::from_secs(1));
        let mut f = Fixture::new(PeerId::random(), PeerId::random(), config);
        f.relay(conn(1), true);
        let out = f.input(Input::Failed {
            connection: conn(1),
            role: SdpRole::Offerer,
            attempt: 1,
            error: Error::Unsupported,
        });
        assert_eq!(failures(&out), [(1, false)]);
        assert_eq!(commands(&out), [(conn(1), "Idle".into())]);
        assert_eq!(f.policy.next_deadline(), None);
    }

    fn restarted(out: &[Action]) -> Option<(ConnectionId, ConnectionId)> {
        out.iter().find_map(|a| match a {
            Action::Emit(Event::Restarted {
                direct_connection,
                relayed_connection,
                ..
            }) => Some((*direct_connection, *relayed_connection)),
            _ => None,
        })
    }

    #[test]
    fn a_quiet_path_is_restarted_over_a_redialed_relay() {
        let mut f = upgraded_and_drained(Config::default(), true);
        let out = f.input(Input::PathDown);
        assert_eq!(dials(&out), 1, "the dialer dials the relay to restart ICE");
        assert_eq!(lost(&out), None, "nothing is lost yet");
        assert!(!f.policy.is_idle());
        // A second report of the same quiet path changes nothing.
        assert!(f.input(Input::PathDown).is_empty());
        let out = f.relay(conn(2), true);
        assert_eq!(commands(&out), [(conn(2), "Restart".into())]);
        // The one timer: the path's deadline, not a drain.
        assert_eq!(
            f.policy.next_deadline(),
            Some(f.now + Config::default().ice_failed_timeout)
        );
        f.input(Input::RestartStarted {
            connection: conn(2),
        });
        let out = f.input(Input::Restarted {
            connection: conn(2),
            took: Duration::from_millis(300),
        });
        assert_eq!(restarted(&out), Some((conn(10), conn(2))));
        assert_eq!(commands(&out), [(conn(2), "Idle".into())]);
        // The relayed connection is drained and closed as after an upgrade.
        assert_eq!(closes(&f.advance()), [conn(2)]);
        assert!(f.policy.is_upgraded());
    }

    #[test]
    fn a_path_that_comes_back_before_the_relay_needs_no_restart() {
        let mut f = upgraded_and_drained(Config::default(), true);
        assert_eq!(dials(&f.input(Input::PathDown)), 1);
        f.input(Input::PathUp);
        let out = f.relay(conn(2), true);
        assert_eq!(
            commands(&out),
            [(conn(2), "Idle".into())],
            "drained at once"
        );
        assert_eq!(closes(&f.advance()), [conn(2)]);
    }

    #[test]
    fn a_path_that_dies_during_the_restart_dial_falls_back_without_a_second_dial() {
        let mut f = upgraded_and_drained(Config::default(), true);
        assert_eq!(dials(&f.input(Input::PathDown)), 1);
        let out = f.input(died(conn(10)));
        assert_eq!(lost(&out), Some(true));
        assert_eq!(dials(&out), 0, "the restart's dial is the redial");
        // The relayed connection it makes is upgraded.
        let out = f.relay(conn(2), true);
        assert_eq!(commands(&out), [(conn(2), "Start { attempt: 1 }".into())]);
    }

    #[test]
    fn a_path_that_dies_during_the_restart_is_upgraded_again() {
        let mut f = upgraded_and_drained(Config::default(), true);
        f.input(Input::PathDown);
        f.relay(conn(2), true);
        let out = f.input(died(conn(10)));
        assert_eq!(lost(&out), Some(false), "a relayed connection is there");
        assert_eq!(
            commands(&out),
            [
                (conn(2), "Abort".into()),
                (conn(2), "Resume".into()),
                (conn(2), "Start { attempt: 1 }".into())
            ]
        );
    }

    #[test]
    fn a_failed_restart_drains_the_relay_and_keeps_the_direct_connection() {
        let mut f = upgraded_and_drained(Config::default(), true);
        f.input(Input::PathDown);
        f.relay(conn(2), true);
        let out = f.input(Input::RestartFailed {
            connection: conn(2),
            error: Error::Unsupported,
        });
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::Emit(Event::RestartFailed { .. }))));
        assert_eq!(commands(&out), [(conn(2), "Idle".into())]);
        assert!(f.policy.is_upgraded());
        // If the path then dies, the relayed connection (still draining) is upgraded.
        let out = f.input(died(conn(10)));
        assert_eq!(dials(&out), 0);
        assert!(commands(&out).contains(&(conn(2), "Start { attempt: 1 }".into())));
    }

    #[test]
    fn the_answering_side_keeps_the_relay_while_a_restart_runs() {
        let mut f = upgraded_and_drained(Config::default(), false);
        // The listener's own view of the quiet path: it cannot dial, it waits.
        assert!(f.input(Input::PathDown).is_empty());
        // The remote redials; the new relayed connection is drained, until a restart starts.
        let out = f.relay(conn(2), false);
        assert_eq!(commands(&out), [(conn(2), "Idle".into())]);
        let out = f.input(Input::RestartStarted {
            connection: conn(2),
        });
        assert_eq!(commands(&out), [(conn(2), "Resume".into())]);
        assert_eq!(
            f.policy.next_deadline(),
            Some(f.now + Config::default().ice_failed_timeout),
            "the drain timer is off; the path's deadline runs"
        );
        let out = f.input(Input::Restarted {
            connection: conn(2),
            took: Duration::from_millis(200),
        });
        assert_eq!(restarted(&out), Some((conn(10), conn(2))));
        assert_eq!(closes(&f.advance()), [conn(2)]);
    }

    /// The remote may start `max_remote_offers` offers on one relayed connection per window;
    /// past it each is aborted with a typed reason (before: each was answered, at the cost of
    /// a peer connection, sockets and STUN gathering apiece), until the window has passed.
    #[test]
    fn remote_offers_past_the_limit_are_refused_until_the_window_passes() {
        let window = Duration::from_secs(60);
        let mut f = Fixture::new(
            PeerId::random(),
            PeerId::random(),
            Config::default().with_remote_offer_limit(3, window),
        );
        f.relay(conn(1), false);
        let refused = |out: &[Action]| {
            out.iter().any(|a| {
                matches!(
                    a,
                    Action::Emit(Event::UpgradeFailed {
                        error: Error::Protocol(ProtocolViolation::OverLimit { limit: 3, .. }),
                        will_retry: false,
                        ..
                    })
                )
            })
        };
        let offer = |f: &mut Fixture| {
            let out = f.answering(conn(1));
            if !refused(&out) {
                assert!(commands(&out).is_empty(), "{out:?}");
                f.input(Input::Failed {
                    connection: conn(1),
                    role: SdpRole::Answerer,
                    attempt: 1,
                    error: Error::ConnectionFailed,
                });
            }
            out
        };
        for _ in 0..3 {
            assert!(!refused(&offer(&mut f)));
            f.now += Duration::from_secs(1);
        }
        for _ in 0..5 {
            let out = offer(&mut f);
            assert!(refused(&out), "{out:?}");
            assert_eq!(commands(&out), [(conn(1), "Abort".into())]);
        }
        f.now += window;
        assert!(!refused(&offer(&mut f)), "a new window");
    }

    /// The remote may start `max_remote_restarts` ICE restarts on one relayed connection;
    /// past it they are refused with a typed reason and the connection is drained on
    /// schedule (before: every restart ran and held the relay while it did, so a remote
    /// restarting again and again kept the relay open for ever).
    #[test]
    fn remote_restarts_past_the_limit_are_refused_and_the_relay_drains() {
        let mut f = upgraded_and_drained(Config::default().with_max_remote_restarts(2), false);
        f.relay(conn(2), false);
        for _ in 0..2 {
            let out = f.input(Input::RestartStarted {
                connection: conn(2),
            });
            assert_eq!(commands(&out), [(conn(2), "Resume".into())]);
            f.input(Input::Restarted {
                connection: conn(2),
                took: Duration::from_millis(100),
            });
        }
        let out = f.input(Input::RestartStarted {
            connection: conn(2),
        });
        assert_eq!(commands(&out), [(conn(2), "Abort".into())]);
        assert!(
            out.iter().any(|a| matches!(
                a,
                Action::Emit(Event::RestartFailed {
                    error: Error::Protocol(ProtocolViolation::OverLimit { limit: 2, .. }),
                    ..
                })
            )),
            "{out:?}"
        );
        assert_eq!(closes(&f.advance()), [conn(2)], "drained on schedule");
    }

    /// After glare (both sides dialed a relayed connection) only the side whose offer made
    /// the direct connection restarts it; the other waits for that restart. Before, both
    /// dialed the relay and offered a restart on the same peer connection at once.
    #[test]
    fn after_glare_only_the_winning_offerer_restarts() {
        for we_offered in [true, false] {
            let mut f = Fixture::with_defaults();
            f.relay(conn(1), true);
            f.relay(conn(2), false);
            if we_offered {
                f.upgrade(conn(1), SdpRole::Offerer, conn(10));
            } else {
                f.answering(conn(2));
                f.upgrade(conn(2), SdpRole::Answerer, conn(10));
            }
            for _ in 0..2 {
                for c in closes(&f.advance()) {
                    f.input(closed(c));
                }
            }
            assert!(
                f.policy.relayed.is_empty(),
                "both relayed connections drained"
            );
            let out = f.input(Input::PathDown);
            assert_eq!(dials(&out), usize::from(we_offered), "{out:?}");
        }
    }

    /// Only the side that dialed a relayed connection offers a restart on it. One the remote
    /// offers on a connection this side dialed is aborted with a typed reason, and the
    /// connection is still drained and closed on schedule (before: the restart ran, and
    /// each one cancelled the drain timer, so a remote could keep the relay open for ever).
    #[test]
    fn a_restart_offered_by_the_wrong_side_is_refused() {
        let mut f = upgraded_and_drained(Config::default(), true);
        // This side dials the relay again (e.g. another protocol wanted the peer); the
        // connection is drained as after an upgrade.
        f.relay(conn(2), true);
        let out = f.input(Input::RestartStarted {
            connection: conn(2),
        });
        assert_eq!(commands(&out), [(conn(2), "Abort".into())]);
        assert!(
            out.iter().any(|a| matches!(
                a,
                Action::Emit(Event::RestartFailed {
                    relayed_connection,
                    error: Error::Protocol(ProtocolViolation::Unexpected(_)),
                    ..
                }) if *relayed_connection == conn(2)
            )),
            "{out:?}"
        );
        assert_eq!(closes(&f.advance()), [conn(2)], "drained on schedule");
    }

    #[test]
    fn no_restart_when_disabled_or_when_the_restart_dial_fails() {
        let mut f = upgraded_and_drained(Config::default().with_ice_restart(false), true);
        assert!(f.input(Input::PathDown).is_empty());
        let mut f = upgraded_and_drained(Config::default(), true);
        assert_eq!(dials(&f.input(Input::PathDown)), 1);
        let out = f.input(Input::RedialFailed {
            reason: "no route".into(),
        });
        assert!(
            out.is_empty(),
            "no fallback event for a restart's dial: {out:?}"
        );
        assert!(f.policy.is_upgraded());
    }

    #[test]
    fn a_restart_that_does_not_finish_in_time_falls_back_on_time() {
        let mut f = upgraded_and_drained(Config::default(), true);
        let down = f.now;
        f.input(Input::PathDown);
        f.relay(conn(2), true);
        // Nothing comes back: the restart runs, and ICE's own verdict is pushed out by it.
        let out = f.advance();
        assert_eq!(f.now - down, Config::default().ice_failed_timeout);
        assert_eq!(closes(&out), [conn(10)]);
        assert_eq!(lost(&out), Some(false));
        assert_eq!(
            commands(&out),
            [
                (conn(2), "Abort".into()),
                (conn(2), "Resume".into()),
                (conn(2), "Start { attempt: 1 }".into())
            ]
        );
        // The close that follows is not a second loss.
        assert!(f.input(died(conn(10))).is_empty());
    }

    #[test]
    fn the_relays_stun_server_is_named_by_the_relayed_address() {
        let url = |a: &str| relay_stun_url(&a.parse().unwrap(), 3478);
        let peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        assert_eq!(
            url(&format!(
                "/ip4/198.51.100.2/tcp/4001/p2p/{peer}/p2p-circuit/p2p/{peer}"
            )),
            Some("stun:198.51.100.2:3478".into())
        );
        assert_eq!(
            url(&format!("/ip6/2001:db8::1/tcp/4001/p2p/{peer}/p2p-circuit")),
            Some("stun:[2001:db8::1]:3478".into())
        );
        assert_eq!(
            url(&format!(
                "/dns4/relay.example.org/tcp/443/wss/p2p/{peer}/p2p-circuit"
            )),
            Some("stun:relay.example.org:3478".into())
        );
        // Not relayed, loopback, no host.
        assert_eq!(url("/ip4/198.51.100.2/tcp/4001"), None);
        assert_eq!(
            url(&format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}/p2p-circuit")),
            None
        );
        assert_eq!(url(&format!("/p2p/{peer}/p2p-circuit")), None);
    }

    #[test]
    fn the_side_that_did_not_dial_closes_the_relay_only_after_an_attempt_could_end() {
        let config = Config::default();
        for (dialer, wait) in [
            (true, config.drain_timeout),
            (false, config.drain_timeout.max(config.upgrade_timeout)),
        ] {
            let mut f = Fixture::new(PeerId::random(), PeerId::random(), config.clone());
            f.relay(conn(1), dialer);
            let role = if dialer {
                SdpRole::Offerer
            } else {
                f.answering(conn(1));
                SdpRole::Answerer
            };
            let upgraded_at = f.now;
            f.upgrade(conn(1), role, conn(10));
            assert_eq!(closes(&f.advance()), [conn(1)]);
            assert_eq!(f.now - upgraded_at, wait, "dialer: {dialer}");
        }
    }
}
