//! The upgrade policy: every per-peer decision, as a plain state machine.
//!
//! One [`PeerPolicy`] per remote peer owns that peer's relayed connections, the running
//! upgrade attempt, glare, retries and their backoff, the direct connections and the drain of
//! the relayed ones. It does no I/O and reads no clock: the [`Behaviour`](super::behaviour)
//! feeds it Swarm events and handler reports as [`Input`]s with the current time, carries out
//! the [`Action`]s it returns, and calls [`Input::Tick`] at [`PeerPolicy::next_deadline`].
//! Its unit tests, beside each part, drive it with made-up connection ids and instants
//! (`test_support`).
//!
//! The parts: [`addr`] (relayed and direct addresses), [`attempts`] (starting, retrying,
//! giving up), [`glare`] (whose offer wins, the remote's offer bound), [`restart`] (a path
//! that goes quiet or dies: ICE restart, fallback, redials), [`drain`] (closing the relay
//! after an upgrade); this file holds the state and the dispatch of inputs and timers.

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

mod addr;
mod attempts;
mod drain;
mod glare;
mod restart;
#[cfg(test)]
mod test_support;

pub(crate) use addr::{direct_addr, is_explicit, is_relayed, relay_stun_url};
use attempts::retry_delay;
pub(crate) use glare::offer_wins;

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
}
