//! Helpers shared by the patch tests of this module: loopback endpoints and what an
//! association sends.

use super::*;
use std::net::Ipv4Addr;

/// An endpoint on 127.0.0.1:`port`, accepting associations if `server`.
pub(super) fn endpoint(port: u16, server: bool) -> (Endpoint, SocketAddr) {
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let server = server.then(|| Arc::new(ServerConfig::default()));
    let endpoint = Endpoint::new(
        addr,
        TransportProtocol::UDP,
        Arc::new(EndpointConfig::default()),
        server,
    );
    (endpoint, addr)
}

/// The datagrams `conn` sends at `now`.
pub(super) fn transmits(conn: &mut Association, now: Instant) -> Vec<Bytes> {
    let mut out = vec![];
    while let Some(t) = conn.poll_transmit(now) {
        if let Payload::RawEncode(contents) = t.message {
            out.extend(contents);
        }
    }
    out
}
