//! Which network path a direct connection runs over: the candidate pair ICE selected.

use std::fmt;
use std::net::SocketAddr;

/// How a candidate's address was learned (RFC 8445, section 5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CandidateKind {
    /// An address of a local interface.
    Host,
    /// The address a STUN server saw: a NAT's public mapping.
    ServerReflexive,
    /// The address a connectivity check arrived from, not signaled (a NAT mapping the peer
    /// could not learn in advance).
    PeerReflexive,
    /// An address allocated on a TURN server: the traffic goes through that server.
    Relay,
}

impl CandidateKind {
    /// The SDP name: `host`, `srflx`, `prflx` or `relay`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CandidateKind::Host => "host",
            CandidateKind::ServerReflexive => "srflx",
            CandidateKind::PeerReflexive => "prflx",
            CandidateKind::Relay => "relay",
        }
    }
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The candidate pair a direct connection runs over, as ICE selected it when the connection
/// came up (an ICE restart may move it to another pair later).
///
/// ```
/// # fn show(path: &libp2p_webrtc_signal::DirectPath) {
/// // "udp6 host -> host", "udp4 srflx -> prflx", "udp4 relay -> srflx", ...
/// println!("{} {} -> {}", path.family(), path.local_kind, path.remote_kind);
/// if path.is_ipv6() { /* IPv4 NATs were not in the way */ }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DirectPath {
    /// This side's candidate address: an interface address, this side's NAT mapping, or
    /// its TURN allocation.
    pub local: SocketAddr,
    /// How `local` was learned.
    pub local_kind: CandidateKind,
    /// The remote's candidate address, where this side sends.
    pub remote: SocketAddr,
    /// How `remote` was learned.
    pub remote_kind: CandidateKind,
}

impl DirectPath {
    /// Whether the pair is IPv6 (ICE pairs only candidates of one address family).
    pub fn is_ipv6(&self) -> bool {
        self.remote.is_ipv6()
    }

    /// `"udp4"` or `"udp6"`.
    pub fn family(&self) -> &'static str {
        if self.is_ipv6() {
            "udp6"
        } else {
            "udp4"
        }
    }

    /// Whether the traffic goes through a TURN server (either side's candidate is a relay
    /// candidate).
    pub fn is_turn_relayed(&self) -> bool {
        self.local_kind == CandidateKind::Relay || self.remote_kind == CandidateKind::Relay
    }
}

impl fmt::Display for DirectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} -> {} {}",
            self.family(),
            self.local_kind,
            self.local,
            self.remote_kind,
            self.remote
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_follows_the_addresses() {
        let v6 = DirectPath {
            local: "[2001:db8:1::2]:5000".parse().unwrap(),
            local_kind: CandidateKind::Host,
            remote: "[2001:db8:2::2]:6000".parse().unwrap(),
            remote_kind: CandidateKind::PeerReflexive,
        };
        assert!(v6.is_ipv6());
        assert_eq!(v6.family(), "udp6");
        assert!(!v6.is_turn_relayed());
        assert_eq!(
            v6.to_string(),
            "udp6 host [2001:db8:1::2]:5000 -> prflx [2001:db8:2::2]:6000"
        );
        let v4 = DirectPath {
            local: "198.51.101.2:49152".parse().unwrap(),
            local_kind: CandidateKind::Relay,
            remote: "192.0.2.2:7000".parse().unwrap(),
            remote_kind: CandidateKind::ServerReflexive,
        };
        assert!(!v4.is_ipv6());
        assert_eq!(v4.family(), "udp4");
        assert!(v4.is_turn_relayed());
    }
}
