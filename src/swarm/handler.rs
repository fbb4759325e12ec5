//! The connection handler: on relayed connections it opens or accepts the signaling stream
//! and runs one upgrade attempt at a time; on other connections it does nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use libp2p_identity::PeerId;
use libp2p_swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p_swarm::{
    ConnectionHandler, ConnectionHandlerEvent, ConnectionId, StreamUpgradeError, SubstreamProtocol,
};
use tracing::Instrument;

use super::exchange::{self, Timings};
use super::protocol::{Upgrade, RESTART_PROTOCOL_NAME};
use crate::rtc::WeakPeer;
use crate::slots::{Slot, Slots};
use crate::{Config, Connection, Error, IceServer, SdpRole};

/// From the behaviour to a handler.
#[derive(Debug)]
pub enum Command {
    /// Start an attempt as the offerer (`attempt` counts from 1).
    Start {
        /// The attempt number.
        attempt: u32,
    },
    /// Abandon the running attempt (glare: the remote's offer wins, or vice versa).
    Abort,
    /// No more upgrades here: stop keeping the connection alive.
    Idle,
    /// Keep the connection alive for upgrades again (after a fallback to the relay).
    Resume,
    /// Restart ICE on the direct connection to this peer, as the offerer, over this relayed
    /// connection (its path went quiet).
    Restart,
}

/// From a handler to the behaviour.
#[derive(Debug)]
pub enum Report {
    /// An attempt started (for the answerer: a signaling stream arrived).
    Started {
        /// Our role in it.
        role: SdpRole,
        /// The attempt number (always 1 for the answerer).
        attempt: u32,
    },
    /// The attempt produced a verified direct connection.
    Upgraded {
        /// The direct connection, to be handed to the Swarm.
        connection: Box<Connection>,
        /// Our role.
        role: SdpRole,
        /// The attempt number.
        attempt: u32,
        /// Where the time went (all but `handoff`, which the behaviour measures).
        timings: Timings,
    },
    /// The attempt failed.
    Failed {
        /// Our role.
        role: SdpRole,
        /// The attempt number.
        attempt: u32,
        /// Why.
        error: Error,
    },
    /// The attempt was dropped for one of the remote's: our offer lost the glare tie-break,
    /// or the remote sent a new offer while we answered its previous one.
    Superseded {
        /// The attempt number.
        attempt: u32,
    },
    /// An ICE restart of the direct connection started (for the answerer: a restart stream
    /// arrived).
    RestartStarted {
        /// Our role in it.
        role: SdpRole,
    },
    /// ICE works again on the direct connection.
    Restarted {
        /// Our role.
        role: SdpRole,
        /// From the start of the restart until ICE had a working pair.
        took: Duration,
    },
    /// The ICE restart failed (the direct connection may still recover, or die).
    RestartFailed {
        /// Our role.
        role: SdpRole,
        /// Why.
        error: Error,
    },
}

/// The direct connection to each peer, for ICE restarts: written by the behaviour when a
/// direct connection is established or closed, read by the handlers of relayed connections.
/// It does not keep a peer connection open.
pub(crate) type Paths = Arc<std::sync::Mutex<std::collections::HashMap<PeerId, WeakPeer>>>;

/// An outbound signaling stream request: a fresh id, so a stream that was asked for by an
/// aborted attempt is recognised when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    id: u64,
    attempt: u32,
    restart: bool,
}

/// What a running exchange produced.
enum Outcome {
    Upgraded(Box<Connection>, Timings),
    Restarted(Duration),
}

struct Running {
    role: SdpRole,
    attempt: u32,
    restart: bool,
    /// How long opening the signaling stream took (offerer).
    stream: Duration,
    future: BoxFuture<'static, Result<Outcome, Error>>,
    /// Permits of the node's and the peer's upgrade limits.
    _slots: (Slot, Slot),
}

/// Handler of one relayed connection (other connections get a dummy handler).
pub struct Handler {
    config: Arc<Config>,
    local: PeerId,
    remote: PeerId,
    connection: ConnectionId,
    slots: Arc<Slots>,
    /// The remote peer's share of the upgrade slots ([`Config::max_concurrent_upgrades_per_peer`]).
    peer_slots: Arc<Slots>,
    keep_alive: bool,
    /// The direct connections to restart.
    paths: Paths,
    /// The configuration of an attempt on this connection: the node's, with the STUN server
    /// of the relay it goes through ([`Config::relay_stun_port`]) after the configured ones.
    attempt_config: Arc<Config>,
    /// An outbound signaling stream to request, for this attempt (`true`: a restart).
    to_open: Option<(u32, bool)>,
    /// An outbound signaling stream requested, for this attempt.
    opening: Option<Request>,
    /// The id of the next outbound signaling stream request.
    next_request: u64,
    /// When the current outbound signaling stream was asked for.
    open_started: Option<Instant>,
    /// The offer being prepared while the stream opens, with the upgrade slots it holds.
    prepared: Option<(exchange::PreparedOffer, (Slot, Slot))>,
    running: Option<Running>,
    reports: VecDeque<Report>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("remote", &self.remote)
            .field("connection", &self.connection)
            .field(
                "running",
                &self.running.as_ref().map(|r| (r.role, r.attempt)),
            )
            .finish_non_exhaustive()
    }
}

/// What every handler of a node shares.
#[derive(Clone)]
pub(crate) struct NodeShare {
    pub(crate) config: Arc<Config>,
    pub(crate) local: PeerId,
    /// The node's upgrade slots ([`Config::max_concurrent_upgrades`]).
    pub(crate) slots: Arc<Slots>,
    pub(crate) paths: Paths,
}

impl Handler {
    pub(crate) fn new(
        node: NodeShare,
        remote: PeerId,
        connection: ConnectionId,
        peer_slots: Arc<Slots>,
        relay_stun: Option<IceServer>,
    ) -> Self {
        let NodeShare {
            config,
            local,
            slots,
            paths,
        } = node;
        let attempt_config = match relay_stun {
            Some(server) => {
                let mut attempt = (*config).clone();
                attempt.ice_servers.push(server);
                Arc::new(attempt)
            }
            None => config.clone(),
        };
        Self {
            config,
            local,
            remote,
            connection,
            slots,
            peer_slots,
            paths,
            attempt_config,
            keep_alive: true,
            to_open: None,
            opening: None,
            next_request: 0,
            open_started: None,
            prepared: None,
            running: None,
            reports: VecDeque::new(),
            waker: None,
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Asks for an outbound signaling stream for `attempt` (`restart`: an ICE restart), unless
    /// an exchange runs or a stream is being opened already.
    fn ask_for_stream(&mut self, attempt: u32, restart: bool) {
        self.keep_alive = true;
        if self.running.is_some() || self.opening.is_some() {
            // One exchange per connection at a time. Say so: before, the command was dropped
            // without a word, and the policy waited for an outcome that never came (a
            // restart asked while the remote's attempt ran here left it never restarting
            // again; an attempt, never offering again on this peer).
            tracing::debug!(peer = %self.remote, restart, "an exchange runs here: not started");
            let role = SdpRole::Offerer;
            let error = Error::TooManyUpgrades;
            self.reports.push_back(if restart {
                Report::RestartFailed { role, error }
            } else {
                Report::Failed {
                    role,
                    attempt,
                    error,
                }
            });
            return;
        }
        self.to_open = Some((attempt, restart));
        self.open_started = Some(Instant::now());
    }

    /// Takes a permit of the peer's and of the node's upgrade limits, if both have one free.
    fn slots(&self) -> Option<(Slot, Slot)> {
        self.peer_slots
            .try_acquire()
            .and_then(|peer| Some((self.slots.try_acquire()?, peer)))
    }

    /// Starts an attempt on a negotiated stream, if a slot is free (an offerer's prepared
    /// offer holds its slots already).
    fn start(&mut self, stream: libp2p_swarm::Stream, role: SdpRole, attempt: u32) {
        let (prepared, slots) = match self.prepared.take() {
            Some((prepared, slots)) if role == SdpRole::Offerer => (Some(prepared), Some(slots)),
            _ => (None, None),
        };
        let Some(slots) = slots.or_else(|| self.slots()) else {
            tracing::debug!(peer = %self.remote, "refusing upgrade: too many running");
            self.reports.push_back(Report::Failed {
                role,
                attempt,
                error: Error::TooManyUpgrades,
            });
            return;
        };
        let span = tracing::debug_span!(
            "webrtc_upgrade",
            peer = %self.remote,
            connection = %self.connection,
            ?role,
            attempt
        );
        let future = exchange::run(stream, role, self.attempt_config.clone(), prepared)
            .map(|r| r.map(|(c, t)| Outcome::Upgraded(Box::new(c), t)))
            .instrument(span)
            .boxed();
        self.reports.push_back(Report::Started { role, attempt });
        let stream_time = match role {
            SdpRole::Offerer => self.open_started.take().map(|t| t.elapsed()),
            SdpRole::Answerer => None,
        };
        self.running = Some(Running {
            role,
            attempt,
            restart: false,
            stream: stream_time.unwrap_or_default(),
            future,
            _slots: slots,
        });
    }

    /// Starts an ICE restart of the direct connection to the remote on a negotiated stream.
    fn start_restart(&mut self, stream: libp2p_swarm::Stream, role: SdpRole) {
        let peer = self
            .paths
            .lock()
            .ok()
            .and_then(|paths| paths.get(&self.remote).and_then(WeakPeer::upgrade));
        let (Some(peer), Some(slots)) = (peer, self.slots()) else {
            tracing::debug!(peer = %self.remote, ?role, "no direct connection to restart, or no slot");
            if role == SdpRole::Offerer {
                self.reports.push_back(Report::RestartFailed {
                    role,
                    error: Error::Closed,
                });
            }
            return;
        };
        let span = tracing::debug_span!(
            "webrtc_restart",
            peer = %self.remote,
            connection = %self.connection,
            ?role
        );
        let future = exchange::restart(stream, role, peer, self.config.clone())
            .map(|r| r.map(Outcome::Restarted))
            .instrument(span)
            .boxed();
        self.reports.push_back(Report::RestartStarted { role });
        self.running = Some(Running {
            role,
            attempt: 1,
            restart: true,
            stream: Duration::ZERO,
            future,
            _slots: slots,
        });
    }

    /// Whether our offer loses a glare against the remote's on this connection.
    fn remote_offer_wins(&self) -> bool {
        super::protocol::offer_wins(&self.remote, &self.local)
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Command;
    type ToBehaviour = Report;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Request;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(Upgrade::Any, ()).with_timeout(self.config.signaling_stream_timeout)
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep_alive
            || self.running.is_some()
            || self.opening.is_some()
            || self.to_open.is_some()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Request, Report>> {
        if let Some(report) = self.reports.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(report));
        }
        if let Some((attempt, restart)) = self.to_open.take() {
            let request = Request {
                id: self.next_request,
                attempt,
                restart,
            };
            self.next_request += 1;
            self.opening = Some(request);
            // Prepare the offer while the stream opens (a relayed round trip): the peer
            // connection gathers meanwhile, so its candidates follow the offer at once.
            self.prepared = None;
            if !restart {
                if let Some(slots) = self.slots() {
                    self.prepared = exchange::PreparedOffer::start(self.attempt_config.clone())
                        .map(|p| (p, slots));
                }
            }
            let upgrade = if restart {
                Upgrade::Restart
            } else {
                Upgrade::Offer
            };
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(upgrade, request)
                    .with_timeout(self.config.signaling_stream_timeout),
            });
        }
        if let Some(mut running) = self.running.take() {
            match running.future.poll_unpin(cx) {
                Poll::Pending => self.running = Some(running),
                Poll::Ready(result) => {
                    let (role, attempt) = (running.role, running.attempt);
                    let report = match result {
                        Ok(Outcome::Upgraded(connection, timings)) => Report::Upgraded {
                            connection,
                            role,
                            attempt,
                            timings: Timings {
                                stream: running.stream,
                                ..timings
                            },
                        },
                        Ok(Outcome::Restarted(took)) => Report::Restarted { role, took },
                        Err(error) if running.restart => Report::RestartFailed { role, error },
                        Err(error) => Report::Failed {
                            role,
                            attempt,
                            error,
                        },
                    };
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(report));
                }
            }
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, command: Command) {
        match command {
            Command::Start { attempt } => self.ask_for_stream(attempt, false),
            Command::Restart => self.ask_for_stream(1, true),
            Command::Abort => {
                self.to_open = None;
                self.opening = None;
                self.prepared = None;
                if let Some(running) = self.running.take() {
                    tracing::debug!(peer = %self.remote, role = ?running.role, "upgrade aborted");
                }
            }
            Command::Idle => self.keep_alive = false,
            Command::Resume => self.keep_alive = true,
        }
        self.wake();
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Upgrade, Upgrade, (), Request>) {
        match event {
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: request,
            }) => {
                if self.opening != Some(request) {
                    // Aborted while the stream was opening: nobody waits for this offer (its
                    // preparation was dropped with the attempt).
                    tracing::debug!(peer = %self.remote, attempt = request.attempt, "dropping a signaling stream opened for an aborted attempt");
                    return;
                }
                self.opening = None;
                let attempt = request.attempt;
                if self.running.is_some() {
                    // The remote's offer got here first and won the tie-break.
                    self.prepared = None;
                    return;
                }
                if request.restart {
                    self.start_restart(stream, SdpRole::Offerer);
                } else {
                    self.start(stream, SdpRole::Offerer, attempt);
                }
            }
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => {
                if protocol == RESTART_PROTOCOL_NAME {
                    // Only the side that dialed the relayed connection offers a restart; one
                    // exchange at a time.
                    if self.running.is_none() && self.opening.is_none() {
                        self.start_restart(stream, SdpRole::Answerer);
                    }
                    return;
                }
                if self.running.as_ref().is_some_and(|r| r.restart) {
                    return; // A restart runs here.
                }
                let offering = self
                    .running
                    .as_ref()
                    .map(|r| r.role == SdpRole::Offerer)
                    .or(self.opening.map(|_| true));
                match offering {
                    Some(false) => {
                        // The remote runs one attempt per connection at a time: a new offer
                        // means it gave up the one answered here (its side failed or timed
                        // out first). Answering on would leave the remote's retries refused
                        // until this side's attempt timed out too.
                        if let Some(old) = self.running.take() {
                            tracing::debug!(
                                peer = %self.remote,
                                "a new offer replaces the one being answered"
                            );
                            self.reports.push_back(Report::Superseded {
                                attempt: old.attempt,
                            });
                        }
                    }
                    Some(true) if !self.remote_offer_wins() => return, // Our offer wins.
                    Some(true) => {
                        let attempt = self
                            .running
                            .take()
                            .map(|r| r.attempt)
                            .or(self.opening.take().map(|r| r.attempt))
                            .unwrap_or(1);
                        self.reports.push_back(Report::Superseded { attempt });
                    }
                    None => {}
                }
                self.to_open = None;
                self.prepared = None;
                self.start(stream, SdpRole::Answerer, 1);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                if self.opening != Some(info) {
                    return;
                }
                self.opening = None;
                self.prepared = None;
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => Error::Unsupported,
                    StreamUpgradeError::Timeout => Error::Timeout,
                    StreamUpgradeError::Apply(never) => match never {},
                    StreamUpgradeError::Io(e) => Error::Signaling(e),
                };
                let role = SdpRole::Offerer;
                self.reports.push_back(if info.restart {
                    Report::RestartFailed { role, error }
                } else {
                    Report::Failed {
                        role,
                        attempt: info.attempt,
                        error,
                    }
                });
            }
            _ => {}
        }
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    fn relayed_handler() -> Handler {
        relayed_handler_with(Config::default())
    }

    fn relayed_handler_with(config: Config) -> Handler {
        let node = NodeShare {
            config: Arc::new(config),
            local: PeerId::random(),
            slots: Slots::new(4),
            paths: Paths::default(),
        };
        Handler::new(
            node,
            PeerId::random(),
            ConnectionId::new_unchecked(1),
            Slots::new(2),
            None,
        )
    }

    /// Polls once; the request of an outbound signaling stream, if the handler asked for one.
    fn requested(handler: &mut Handler) -> Option<Request> {
        let mut cx = Context::from_waker(noop_waker_ref());
        match handler.poll(&mut cx) {
            Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol }) => {
                Some(*protocol.info())
            }
            _ => None,
        }
    }

    fn reported(handler: &mut Handler) -> Option<Report> {
        let mut cx = Context::from_waker(noop_waker_ref());
        match handler.poll(&mut cx) {
            Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(report)) => Some(report),
            _ => None,
        }
    }

    fn refused(request: Request) -> ConnectionEvent<'static, Upgrade, Upgrade, (), Request> {
        ConnectionEvent::DialUpgradeError(DialUpgradeError {
            info: request,
            error: StreamUpgradeError::NegotiationFailed,
        })
    }

    #[test]
    fn an_attempt_aborted_while_its_stream_opens_leaves_nothing_behind() {
        let mut handler = relayed_handler();
        handler.on_behaviour_event(Command::Start { attempt: 1 });
        let first = requested(&mut handler).expect("a signaling stream request");
        handler.on_behaviour_event(Command::Abort);
        handler.on_behaviour_event(Command::Idle);
        // Nothing is pending any more: the connection may close.
        assert!(!handler.connection_keep_alive());
        // The aborted attempt's stream request ends later: nobody hears of it.
        handler.on_connection_event(refused(first));
        assert!(reported(&mut handler).is_none());
        // The next attempt asks for a stream of its own; the old request's outcome is not
        // taken for the new one's.
        handler.on_behaviour_event(Command::Start { attempt: 2 });
        let second = requested(&mut handler).expect("a new request");
        assert_ne!(first, second);
        handler.on_connection_event(refused(first));
        assert!(reported(&mut handler).is_none());
        handler.on_connection_event(refused(second));
        match reported(&mut handler) {
            Some(Report::Failed {
                role: SdpRole::Offerer,
                attempt: 2,
                error: Error::Unsupported,
            }) => {}
            other => panic!("expected attempt 2 to fail as unsupported, got {other:?}"),
        }
    }

    /// A start or a restart asked while another exchange opens or runs on the connection is
    /// refused with a report, not dropped: the policy waits for every outcome.
    #[test]
    fn a_command_that_finds_an_exchange_running_is_refused_with_a_report() {
        let mut handler = relayed_handler();
        handler.on_behaviour_event(Command::Start { attempt: 1 });
        requested(&mut handler).expect("a signaling stream request");
        handler.on_behaviour_event(Command::Restart);
        match reported(&mut handler) {
            Some(Report::RestartFailed {
                role: SdpRole::Offerer,
                error: Error::TooManyUpgrades,
            }) => {}
            other => panic!("expected the restart to be refused, got {other:?}"),
        }
        handler.on_behaviour_event(Command::Start { attempt: 2 });
        match reported(&mut handler) {
            Some(Report::Failed {
                role: SdpRole::Offerer,
                attempt: 2,
                error: Error::TooManyUpgrades,
            }) => {}
            other => panic!("expected attempt 2 to be refused, got {other:?}"),
        }
        // The first attempt's stream is still the one asked for.
        assert!(requested(&mut handler).is_none());
    }

    #[test]
    fn signaling_streams_are_negotiated_within_the_configured_timeout() {
        let timeout = Duration::from_millis(1500);
        let mut handler =
            relayed_handler_with(Config::default().with_signaling_stream_timeout(timeout));
        // The streams the remote opens.
        assert_eq!(*handler.listen_protocol().timeout(), timeout);
        // The streams this side opens, for an upgrade and for a restart.
        for command in [Command::Start { attempt: 1 }, Command::Restart] {
            handler.on_behaviour_event(command);
            let mut cx = Context::from_waker(noop_waker_ref());
            match handler.poll(&mut cx) {
                Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol }) => {
                    assert_eq!(*protocol.timeout(), timeout);
                    handler.on_connection_event(refused(*protocol.info()));
                }
                _ => panic!("no signaling stream request"),
            }
            while reported(&mut handler).is_some() {}
        }
    }

    #[test]
    fn a_remote_without_restarts_fails_the_restart_not_the_connection() {
        let mut handler = relayed_handler();
        handler.on_behaviour_event(Command::Restart);
        let request = requested(&mut handler).expect("a restart stream request");
        assert!(request.restart);
        // js-libp2p, for one, does not know the restart protocol.
        handler.on_connection_event(refused(request));
        match reported(&mut handler) {
            Some(Report::RestartFailed {
                role: SdpRole::Offerer,
                error: Error::Unsupported,
            }) => {}
            other => panic!("expected the restart to fail as unsupported, got {other:?}"),
        }
        // Upgrades on this connection are not affected.
        handler.on_behaviour_event(Command::Start { attempt: 1 });
        assert!(!requested(&mut handler).expect("an upgrade request").restart);
    }
}
