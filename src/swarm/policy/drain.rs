//! Draining: the relayed connections of an upgraded peer are left idle, then closed.

use super::*;

impl PeerPolicy {
    /// Stops keeping `connection` alive for upgrades and closes it after the drain timeout.
    ///
    /// The side that did not dial it waits at least `upgrade_timeout`: its own side of the
    /// direct connection may be up while the dialer's is not yet (a lost DTLS or SCTP
    /// handshake packet on a lossy path), and closing the relay then would cut the dialer's
    /// attempt and its retries. The dialer, which knows, closes it after `drain_timeout`.
    pub(super) fn drain(&mut self, now: Instant, connection: ConnectionId, out: &mut Vec<Action>) {
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
}

#[cfg(test)]
mod tests {
    use crate::swarm::policy::test_support::*;
    use crate::swarm::policy::*;

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
