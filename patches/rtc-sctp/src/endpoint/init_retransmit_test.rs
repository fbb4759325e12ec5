//! Patch test: an INIT retransmitted because its INIT ACK was lost reaches the association
//! the first INIT created, and the handshake completes on it (one association, not two).

use super::test_util::{endpoint, transmits};
use super::*;
use crate::association::state::AssociationState;
use std::time::Duration;

/// Delivers `datagrams` to `endpoint`, whose association `ch` must receive them.
fn deliver(
    endpoint: &mut Endpoint,
    conn: &mut Association,
    ch: AssociationHandle,
    from: SocketAddr,
    now: Instant,
    datagrams: Vec<Bytes>,
) {
    assert!(!datagrams.is_empty(), "nothing sent");
    for data in datagrams {
        match endpoint.handle(now, from, None, data) {
            Some((got, DatagramEvent::AssociationEvent(event))) => {
                assert_eq!(got, ch, "a datagram reached another association");
                conn.handle_event(event);
            }
            Some((_, DatagramEvent::NewAssociation(_))) => {
                panic!("a second association was created")
            }
            None => panic!("a datagram was dropped"),
        }
    }
}

#[test]
fn a_retransmitted_init_reaches_the_association_of_the_first() {
    let (mut client, client_addr) = endpoint(6001, false);
    let (mut server, server_addr) = endpoint(6002, true);
    let start = Instant::now();
    let (client_ch, mut client_conn) = client
        .connect(start, ClientConfig::default(), server_addr)
        .expect("connect");
    let init = transmits(&mut client_conn, start);
    assert_eq!(init.len(), 1, "one INIT");

    // The first INIT creates the server's association; its INIT ACK is lost.
    let (server_ch, mut server_conn) =
        match server.handle(start, client_addr, None, init[0].clone()) {
            Some((ch, DatagramEvent::NewAssociation(conn))) => (ch, conn),
            _ => panic!("the INIT did not create an association"),
        };
    let lost = transmits(&mut server_conn, start);
    assert_eq!(lost.len(), 1, "one INIT ACK");

    // T1-init expires: the client sends its INIT again, to the same association.
    let t1 = client_conn.poll_timeout().expect("T1-init");
    assert!(t1 > start && t1 <= start + Duration::from_secs(3));
    client_conn.handle_timeout(t1);
    let again = transmits(&mut client_conn, t1);
    deliver(
        &mut server,
        &mut server_conn,
        server_ch,
        client_addr,
        t1,
        again,
    );

    // The handshake completes on that association.
    let init_ack = transmits(&mut server_conn, t1);
    deliver(
        &mut client,
        &mut client_conn,
        client_ch,
        server_addr,
        t1,
        init_ack,
    );
    let cookie_echo = transmits(&mut client_conn, t1);
    deliver(
        &mut server,
        &mut server_conn,
        server_ch,
        client_addr,
        t1,
        cookie_echo,
    );
    let cookie_ack = transmits(&mut server_conn, t1);
    deliver(
        &mut client,
        &mut client_conn,
        client_ch,
        server_addr,
        t1,
        cookie_ack,
    );
    assert_eq!(server_conn.state(), AssociationState::Established);
    assert_eq!(client_conn.state(), AssociationState::Established);
    assert_eq!(server.associations.len(), 1);
}

#[test]
fn an_init_from_another_remote_with_the_same_tag_is_a_new_association() {
    let (mut client, _) = endpoint(6003, false);
    let (mut server, server_addr) = endpoint(6004, true);
    let now = Instant::now();
    let (_, mut conn) = client
        .connect(now, ClientConfig::default(), server_addr)
        .expect("connect");
    let init = transmits(&mut conn, now).remove(0);
    let first: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
    let second: SocketAddr = "127.0.0.1:7002".parse().expect("addr");
    let a = match server.handle(now, first, None, init.clone()) {
        Some((ch, DatagramEvent::NewAssociation(_))) => ch,
        _ => panic!("no association"),
    };
    match server.handle(now, second, None, init) {
        Some((b, DatagramEvent::NewAssociation(_))) => assert_ne!(a, b),
        _ => panic!("the INIT of another remote went to the first association"),
    }
}
