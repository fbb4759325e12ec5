//! Glare: whose offer wins when both sides offer, and the bound on the remote's offers.

use super::*;

pub(crate) use crate::swarm::protocol::offer_wins;

impl PeerPolicy {
    /// Counts an offer the remote started on `connection`: whether it is past
    /// [`Config::max_remote_offers`] within [`Config::remote_offer_window`]. Refused offers
    /// count too, so a remote that keeps offering stays refused.
    pub(super) fn remote_offer_over_limit(
        &mut self,
        now: Instant,
        connection: ConnectionId,
    ) -> bool {
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
}

#[cfg(test)]
mod tests {
    use crate::swarm::policy::test_support::*;
    use crate::swarm::policy::*;

    #[test]
    fn glare_has_one_winner_both_ways() {
        for _ in 0..32 {
            let (a, b) = (PeerId::random(), PeerId::random());
            assert_ne!(offer_wins(&a, &b), offer_wins(&b, &a));
        }
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
}
