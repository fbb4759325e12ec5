//! Attempts: starting them, retries with backoff, later rounds, giving up.

use super::*;

/// The wait before attempt `attempt + 1`: the backoff, doubled per failed attempt.
pub(super) fn retry_delay(backoff: Duration, attempt: u32) -> Duration {
    backoff.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
}

impl PeerPolicy {
    pub(super) fn on_started(
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

    pub(super) fn on_failed(
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

    /// Starts attempt `attempt` as the offerer on `connection`, if nothing forbids it.
    /// Starts upgrading `connection` now, unless direct connections to the peer died twice or
    /// more within [`Config::flap_window`]: then the attempt waits
    /// [`Config::upgrade_round_backoff`], doubled per further loss up to 8×, and the peer
    /// stays on the relay meanwhile. Before, each loss was followed at once by a redial and a
    /// new upgrade, however often the path (or a remote, on purpose) let it die.
    pub(super) fn start_or_hold_off(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        out: &mut Vec<Action>,
    ) {
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

    pub(super) fn start(&mut self, connection: ConnectionId, attempt: u32, out: &mut Vec<Action>) {
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

    /// Forgets the running attempt if it is the one on `connection`.
    pub(super) fn clear_attempt(&mut self, connection: ConnectionId) {
        if self.attempt.is_some_and(|a| a.connection == connection) {
            self.attempt = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::swarm::policy::test_support::*;
    use crate::swarm::policy::*;

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
}
