//! Patch test: SNAP (draft-hancke-tsvwg-snap). Two endpoints that exchanged INIT chunks out
//! of band are established at once, send DATA without any handshake chunk, and refuse
//! chunks that are not a valid INIT.

use super::test_util::{endpoint, transmits};
use super::*;
use crate::association::state::AssociationState;
use crate::chunk::chunk_payload_data::PayloadProtocolIdentifier;
use crate::{Event, StreamEvent};

fn deliver(
    endpoint: &mut Endpoint,
    conn: &mut Association,
    from: SocketAddr,
    now: Instant,
    datagrams: Vec<Bytes>,
) {
    for data in datagrams {
        match endpoint.handle(now, from, None, data) {
            Some((_, DatagramEvent::AssociationEvent(event))) => conn.handle_event(event),
            _ => panic!("a datagram did not reach the SNAP association"),
        }
    }
}

#[test]
fn snap_associations_are_established_without_a_handshake() {
    let (mut a, a_addr) = endpoint(6101, false);
    let (mut b, b_addr) = endpoint(6102, false);
    let config = TransportConfig::default();
    let a_init = snap_init_chunk(&config);
    let b_init = snap_init_chunk(&config);
    let now = Instant::now();
    let (_, mut a_conn) = a
        .connect_snap(
            now,
            ClientConfig::new(config.clone()),
            b_addr,
            &a_init,
            &b_init,
        )
        .expect("a");
    let (_, mut b_conn) = b
        .connect_snap(now, ClientConfig::new(config), a_addr, &b_init, &a_init)
        .expect("b");
    assert_eq!(a_conn.state(), AssociationState::Established);
    assert_eq!(b_conn.state(), AssociationState::Established);
    assert!(matches!(a_conn.poll(), Some(Event::Connected)));
    assert!(matches!(b_conn.poll(), Some(Event::Connected)));
    assert!(
        transmits(&mut a_conn, now).is_empty(),
        "a sent a handshake chunk"
    );
    assert!(
        transmits(&mut b_conn, now).is_empty(),
        "b sent a handshake chunk"
    );

    // The first datagram a sends carries DATA, and b takes it as the first TSN it expects.
    a_conn
        .open_stream(1, PayloadProtocolIdentifier::Binary)
        .expect("stream")
        .write(now, b"hello")
        .expect("write");
    let data = transmits(&mut a_conn, now);
    assert_eq!(data.len(), 1);
    deliver(&mut b, &mut b_conn, a_addr, now, data);
    let mut readable = false;
    while let Some(event) = b_conn.poll() {
        readable |= matches!(event, Event::Stream(StreamEvent::Readable { id: 1 }));
    }
    assert!(readable, "b has nothing to read");
    let mut stream = b_conn.accept_stream().expect("accepted");
    let chunks = stream.read().expect("read").expect("a message");
    let mut buf = [0u8; 16];
    let n = chunks.read(&mut buf).expect("copy");
    assert_eq!(&buf[..n], b"hello");

    // b's SACK (and b's own DATA) reach a: the tags match both ways.
    b_conn
        .stream(1)
        .expect("stream")
        .write(now, b"back")
        .expect("write");
    let back = transmits(&mut b_conn, now);
    assert!(!back.is_empty());
    deliver(&mut a, &mut a_conn, b_addr, now, back);
    let mut readable = false;
    while let Some(event) = a_conn.poll() {
        readable |= matches!(event, Event::Stream(StreamEvent::Readable { id: 1 }));
    }
    assert!(readable, "a has nothing to read");
}

#[test]
fn connect_snap_refuses_what_is_not_an_init() {
    let (mut a, _) = endpoint(6103, false);
    let (_, b_addr) = endpoint(6104, false);
    let config = TransportConfig::default();
    let local = snap_init_chunk(&config);
    let remote = snap_init_chunk(&config);
    let now = Instant::now();
    for bad in [
        &b""[..],
        &b"\x01\x00\x00\x04"[..],
        &remote[..remote.len() / 2],
    ] {
        let result = a.connect_snap(now, ClientConfig::new(config.clone()), b_addr, &local, bad);
        assert!(
            matches!(result, Err(ConnectError::InvalidSnapInit(_))),
            "{bad:?}"
        );
    }
    // An INIT with a zero verification tag is refused too.
    let mut zero_tag = remote.to_vec();
    zero_tag[4..8].copy_from_slice(&[0; 4]);
    let result = a.connect_snap(
        now,
        ClientConfig::new(config.clone()),
        b_addr,
        &local,
        &zero_tag,
    );
    assert!(matches!(result, Err(ConnectError::InvalidSnapInit(_))));
    // The same local INIT cannot make a second association.
    a.connect_snap(
        now,
        ClientConfig::new(config.clone()),
        b_addr,
        &local,
        &remote,
    )
    .expect("first");
    let again = a.connect_snap(now, ClientConfig::new(config), b_addr, &local, &remote);
    assert!(matches!(again, Err(ConnectError::InvalidSnapInit(_))));
}

/// `check_snap_init` refuses what `connect_snap` refuses, so a peer connection can refuse a
/// bad `a=sctp-init` when the description arrives.
#[test]
fn check_snap_init_refuses_what_connect_snap_refuses() {
    let config = TransportConfig::default();
    let good = snap_init_chunk(&config);
    assert_eq!(Ok(()), check_snap_init(&good));
    let mut zero_tag = good.to_vec();
    zero_tag[4..8].copy_from_slice(&[0; 4]);
    for bad in [
        &b""[..],
        &b"\x01\x00\x00\x04"[..],
        &good[..good.len() / 2],
        &zero_tag[..],
    ] {
        assert!(
            matches!(check_snap_init(bad), Err(ConnectError::InvalidSnapInit(_))),
            "{bad:?}"
        );
    }
}

/// Mutated and random INIT chunks: `check_snap_init` never panics, and every chunk it
/// accepts makes an association through `connect_snap`.
#[test]
fn check_snap_init_survives_mutated_chunks() {
    let config = TransportConfig::default();
    let good = snap_init_chunk(&config).to_vec();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..20_000 {
        let mut chunk = good.clone();
        match case % 4 {
            0 => {
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % chunk.len();
                    chunk[i] ^= 1 << (next() % 8);
                }
            }
            1 => chunk.truncate((next() as usize) % (chunk.len() + 1)),
            2 => chunk.extend((0..next() % 64).map(|_| next() as u8)),
            _ => chunk = (0..next() % 96).map(|_| next() as u8).collect(),
        }
        match check_snap_init(&chunk) {
            Ok(()) => {
                accepted += 1;
                if accepted <= 200 {
                    let (mut a, _) = endpoint(6105, false);
                    let (_, b_addr) = endpoint(6106, false);
                    let local = snap_init_chunk(&config);
                    a.connect_snap(
                        Instant::now(),
                        ClientConfig::new(config.clone()),
                        b_addr,
                        &local,
                        &chunk,
                    )
                    .unwrap_or_else(|e| panic!("accepted, then refused: {e}: {chunk:?}"));
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}
