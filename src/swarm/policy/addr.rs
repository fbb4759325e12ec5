//! Addresses: what a relayed address is, the direct address built from it, the relay's STUN server.

use super::*;

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

#[cfg(test)]
mod tests {
    use crate::swarm::policy::test_support::*;
    use crate::swarm::policy::*;

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
}
