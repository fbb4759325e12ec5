//! A direct path that goes quiet or dies: ICE restart over a redialed relay, fallback to the relay, redials.

use super::*;

impl PeerPolicy {
    /// The last direct connection died: go back to the relay. Relayed connections still
    /// being drained are kept and upgraded again; without one, the side that dialed the
    /// relayed connection dials it again.
    pub(super) fn fall_back(
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
    pub(super) fn on_path_down(&mut self, now: Instant, out: &mut Vec<Action>) {
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
    pub(super) fn restart_on(
        &mut self,
        connection: ConnectionId,
        command: Command,
        out: &mut Vec<Action>,
    ) {
        self.restart = Some(connection);
        self.timers
            .retain(|(_, t)| *t != Timer::Drain { connection });
        out.push(Action::Command {
            connection,
            command,
        });
    }

    /// The direct connection's path works (again), or the connection is gone.
    pub(super) fn path_up(&mut self) {
        self.path_down = false;
        self.timers.retain(|(_, t)| *t != Timer::PathDead);
    }

    /// The restart on `connection` ended: the relayed connection is drained again.
    pub(super) fn end_restart(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        out: &mut Vec<Action>,
    ) {
        if self.restart == Some(connection) {
            self.restart = None;
        }
        if self.is_upgraded() && self.relayed.contains_key(&connection) {
            self.drain(now, connection, out);
        }
    }

    /// Dials the relayed address again (the first redial at once, then per the backoff).
    pub(super) fn redial(&mut self, out: &mut Vec<Action>) {
        let Some(addr) = self.redial_addr.clone() else {
            return;
        };
        self.redials = Some(self.redials.unwrap_or(0) + 1);
        out.push(Action::Dial { addr });
    }

    pub(super) fn on_redial_failed(&mut self, now: Instant, reason: String, out: &mut Vec<Action>) {
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
}

#[cfg(test)]
mod tests {
    use crate::swarm::policy::test_support::*;
    use crate::swarm::policy::*;

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
}
