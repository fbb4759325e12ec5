//! Fixtures the policy's unit tests share: made-up peers, connections and addresses, and
//! a policy driven on made-up instants.

#![allow(dead_code)]

use super::*;

pub(crate) fn relay_addr(peer: PeerId) -> Multiaddr {
    let relay: Multiaddr =
        "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
            .parse()
            .unwrap();
    relay.with(Protocol::P2pCircuit).with(Protocol::P2p(peer))
}

pub(crate) fn conn(n: usize) -> ConnectionId {
    ConnectionId::new_unchecked(n)
}

/// Two peer ids, the first of which wins glares.
pub(crate) fn ordered_peers() -> (PeerId, PeerId) {
    let (a, b) = (PeerId::random(), PeerId::random());
    if offer_wins(&a, &b) {
        (a, b)
    } else {
        (b, a)
    }
}

pub(crate) struct Fixture {
    pub(crate) policy: PeerPolicy,
    pub(crate) now: Instant,
}

impl Fixture {
    pub(crate) fn new(local: PeerId, peer: PeerId, config: Config) -> Self {
        Self {
            policy: PeerPolicy::new(local, peer, Arc::new(config)),
            now: Instant::now(),
        }
    }

    pub(crate) fn with_defaults() -> Self {
        Self::new(PeerId::random(), PeerId::random(), Config::default())
    }

    pub(crate) fn input(&mut self, input: Input) -> Vec<Action> {
        self.policy.handle(self.now, input)
    }

    pub(crate) fn relay(&mut self, connection: ConnectionId, dialer: bool) -> Vec<Action> {
        let addr = relay_addr(self.policy.peer);
        self.input(Input::RelayEstablished {
            connection,
            addr,
            dialer,
        })
    }

    /// Advances to the next deadline and ticks.
    pub(crate) fn advance(&mut self) -> Vec<Action> {
        let at = self.policy.next_deadline().expect("a timer");
        assert!(at >= self.now, "deadlines never lie in the past");
        self.now = at;
        self.input(Input::Tick)
    }

    /// The handler of `connection` started answering the remote's offer.
    pub(crate) fn answering(&mut self, connection: ConnectionId) -> Vec<Action> {
        self.input(Input::Started {
            connection,
            role: SdpRole::Answerer,
            attempt: 1,
        })
    }

    pub(crate) fn fail(&mut self, connection: ConnectionId, attempt: u32) -> Vec<Action> {
        self.input(Input::Failed {
            connection,
            role: SdpRole::Offerer,
            attempt,
            error: Error::ConnectionFailed,
        })
    }

    /// A successful upgrade over `connection`, direct connection `direct`.
    pub(crate) fn upgrade(
        &mut self,
        connection: ConnectionId,
        role: SdpRole,
        direct: ConnectionId,
    ) {
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
pub(crate) fn closed(connection: ConnectionId) -> Input {
    Input::Closed {
        connection,
        failed: false,
        reason: "closed".into(),
    }
}

/// A connection that died.
pub(crate) fn died(connection: ConnectionId) -> Input {
    Input::Closed {
        connection,
        failed: true,
        reason: "ICE failed".into(),
    }
}

pub(crate) fn dials(out: &[Action]) -> usize {
    out.iter()
        .filter(|a| matches!(a, Action::Dial { .. }))
        .count()
}

pub(crate) fn commands(out: &[Action]) -> Vec<(ConnectionId, String)> {
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

pub(crate) fn closes(out: &[Action]) -> Vec<ConnectionId> {
    out.iter()
        .filter_map(|a| match a {
            Action::Close { connection } => Some(*connection),
            _ => None,
        })
        .collect()
}

pub(crate) fn failures(out: &[Action]) -> Vec<(u32, bool)> {
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

pub(crate) fn lost(out: &[Action]) -> Option<bool> {
    out.iter().find_map(|a| match a {
        Action::Emit(Event::DirectLost { will_redial, .. }) => Some(*will_redial),
        _ => None,
    })
}

/// Upgraded over `conn(1)` (dialed by us when `dialer`), direct `conn(10)`, relay drained
/// and closed.
pub(crate) fn upgraded_and_drained(config: Config, dialer: bool) -> Fixture {
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

pub(crate) fn restarted(out: &[Action]) -> Option<(ConnectionId, ConnectionId)> {
    out.iter().find_map(|a| match a {
        Action::Emit(Event::Restarted {
            direct_connection,
            relayed_connection,
            ..
        }) => Some((*direct_connection, *relayed_connection)),
        _ => None,
    })
}
