//! When pings were last answered, per connection, for `node`'s `direct_lost` event.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use libp2p::swarm::ConnectionId;

/// When a ping was last answered on each open connection, and on the last
/// [`PongTimes::CLOSED_KEPT`] closed ones: a `DirectLost` event can come after the Swarm
/// reported its connection closed. Holds at most one entry per open connection plus
/// `CLOSED_KEPT`, however many connections come and go.
#[derive(Debug, Default)]
pub struct PongTimes {
    open: HashMap<ConnectionId, Instant>,
    closed: VecDeque<(ConnectionId, Instant)>,
}

impl PongTimes {
    /// Closed connections whose last pong is kept.
    pub const CLOSED_KEPT: usize = 16;

    /// A ping was answered on `connection` at `at`.
    pub fn pong(&mut self, connection: ConnectionId, at: Instant) {
        self.open.insert(connection, at);
    }

    /// `connection` closed: its last pong moves to the few kept after closing.
    pub fn closed(&mut self, connection: ConnectionId) {
        let Some(at) = self.open.remove(&connection) else {
            return;
        };
        if self.closed.len() >= Self::CLOSED_KEPT {
            self.closed.pop_front();
        }
        self.closed.push_back((connection, at));
    }

    /// The last pong on `connection`, forgotten from now on.
    pub fn take(&mut self, connection: ConnectionId) -> Option<Instant> {
        if let Some(at) = self.open.remove(&connection) {
            return Some(at);
        }
        let i = self.closed.iter().position(|(c, _)| *c == connection)?;
        self.closed.remove(i).map(|(_, at)| at)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.open.len() + self.closed.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that reconnects for ever holds a bounded number of entries (before, one per
    /// connection it ever pinged), and a `DirectLost` that follows the close still finds its
    /// connection's last pong.
    #[test]
    fn pong_times_are_bounded_by_the_open_connections() {
        let mut pongs = PongTimes::default();
        let now = Instant::now();
        let mut last = None;
        for i in 0..10_000 {
            let connection = ConnectionId::new_unchecked(i);
            pongs.pong(connection, now);
            pongs.closed(connection);
            last = Some(connection);
        }
        assert!(
            pongs.len() <= PongTimes::CLOSED_KEPT,
            "{} entries",
            pongs.len()
        );
        let last = last.expect("a connection");
        assert_eq!(pongs.take(last), Some(now));
        assert_eq!(pongs.take(last), None, "taken once");
        let open = ConnectionId::new_unchecked(10_000);
        pongs.pong(open, now);
        assert_eq!(pongs.take(open), Some(now));
    }
}
