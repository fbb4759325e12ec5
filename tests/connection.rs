//! A WebRTC peer connection as a libp2p connection: real UDP on 127.0.0.1, no mocks.

mod common;

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p_webrtc_signal::{Config, Error, SdpRole, Session, SessionEvent};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .expect("test timed out (hang)")
}

fn checksum(data: &[u8]) -> u64 {
    // FNV-1a
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Echo server: every inbound stream is echoed until EOF, then closed.
fn spawn_echo(mut server: Driver) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        loop {
            let mut s = server.accept().await;
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.unwrap();
                }
                s.close().await.unwrap();
            }));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_echo_one_mib_each() {
    init_tracing();
    let (client, server) = driven_pair(loopback_config()).await;
    let _echo = spawn_echo(server);
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let s = client.open().await;
            let data = payload(1024 * 1024, i);
            let (mut r, mut w) = s.split();
            let writer = async {
                w.write_all(&data).await.unwrap();
                w.close().await.unwrap();
            };
            let reader = async {
                let mut back = Vec::with_capacity(data.len());
                r.read_to_end(&mut back).await.unwrap();
                back
            };
            let ((), back) = futures::join!(writer, reader);
            assert_eq!(back.len(), data.len(), "stream {i}");
            assert_eq!(checksum(&back), checksum(&data), "stream {i}");
        }));
    }
    within(async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_one_way() {
    init_tracing();
    let (client, mut server) = driven_pair(loopback_config()).await;
    const LEN: usize = 64 * 1024 * 1024;
    let data = payload(LEN, 64);
    let expected = checksum(&data);
    let receiver = tokio::spawn(async move {
        let mut s = server.accept().await;
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).await.unwrap();
        (got.len(), checksum(&got))
    });
    let started = Instant::now();
    within(async {
        let mut s = client.open().await;
        s.write_all(&data).await.unwrap();
        s.close().await.unwrap();
    })
    .await;
    let (len, sum) = within(receiver).await.unwrap();
    eprintln!("64 MiB in {:?}", started.elapsed());
    assert_eq!(len, LEN);
    assert_eq!(sum, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_open() {
    init_tracing();
    let (client, mut server) = driven_pair(loopback_config()).await;
    within(async {
        let mut c = client.open().await;
        c.write_all(b"request").await.unwrap();
        c.close().await.unwrap(); // FIN, and FIN_ACK came back
        assert_eq!(
            c.write(b"more").await.unwrap_err().kind(),
            ErrorKind::BrokenPipe
        );

        let mut s = server.accept().await;
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        assert_eq!(req, b"request");
        // The server can still write after the client's half-close.
        let reply = payload(300_000, 7);
        s.write_all(&reply).await.unwrap();
        s.close().await.unwrap();

        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, reply);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_in_the_middle_of_a_transfer() {
    init_tracing();
    let (client, mut server) = driven_pair(loopback_config()).await;
    within(async {
        let mut c = client.open().await;
        c.write_all(&payload(100_000, 1)).await.unwrap();
        c.flush().await.unwrap();
        let mut s = server.accept().await;
        let mut first = vec![0u8; 1000];
        s.read_exact(&mut first).await.unwrap();
        // The receiver drops its stream mid-transfer: a reset.
        drop(s);
        // The sender's writes fail with a reset soon after.
        let chunk = payload(16 * 1024, 2);
        let err = loop {
            match c.write_all(&chunk).await {
                Ok(()) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        let mut rest = Vec::new();
        assert_eq!(
            c.read_to_end(&mut rest).await.unwrap_err().kind(),
            ErrorKind::ConnectionReset
        );

        // The connection is unaffected: a new stream works.
        let mut c2 = client.open().await;
        c2.write_all(b"still here").await.unwrap();
        c2.close().await.unwrap();
        let mut s2 = server.accept().await;
        let mut got = Vec::new();
        s2.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"still here");
    })
    .await;

    // Reset initiated by the writer: the reader sees ConnectionReset, not a clean EOF.
    within(async {
        let mut c = client.open().await;
        c.write_all(&payload(50_000, 3)).await.unwrap();
        c.flush().await.unwrap();
        let mut s = server.accept().await;
        let mut first = vec![0u8; 100];
        s.read_exact(&mut first).await.unwrap();
        drop(c);
        let mut rest = Vec::new();
        assert_eq!(
            s.read_to_end(&mut rest).await.unwrap_err().kind(),
            ErrorKind::ConnectionReset
        );
    })
    .await;
}

/// A reset while the other side still has data queued must not break the stream id for the
/// next channel that gets it (webrtc-rs answers a stream reset before sending queued DATA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_mid_transfer_do_not_poison_later_streams() {
    init_tracing();
    let (client, mut server) = driven_pair(loopback_config()).await;
    within(async {
        for i in 0..16u64 {
            let mut c = client.open().await;
            c.write_all(&payload(64 * 1024, i)).await.unwrap();
            let mut s = server.accept().await;
            let mut first = [0u8; 100];
            s.read_exact(&mut first).await.unwrap();
            if i % 2 == 0 {
                // The reader resets while the writer has data queued.
                drop(s);
                let chunk = payload(16 * 1024, i);
                while c.write_all(&chunk).await.is_ok() {}
            } else {
                // The writer resets with data queued.
                drop(c);
                let mut rest = Vec::new();
                let err = s.read_to_end(&mut rest).await.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::ConnectionReset);
            }
            // A new stream right away carries a request, a response and both ends.
            let mut c2 = client.open().await;
            c2.write_all(b"ping").await.unwrap();
            c2.close().await.unwrap();
            let mut s2 = server.accept().await;
            let mut got = Vec::new();
            s2.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"ping", "round {i}");
            s2.write_all(b"pong").await.unwrap();
            s2.close().await.unwrap();
            got.clear();
            c2.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"pong", "round {i}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_bounds_sender_memory() {
    init_tracing();
    let send_buffer = 256 * 1024;
    let config = loopback_config().with_stream_send_buffer(send_buffer);
    let (client, mut server) = driven_pair(config).await;
    let total = 48 * 1024 * 1024;
    let data = Arc::new(payload(total, 9));
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (data, written) = (data.clone(), written.clone());
        let mut c = within(client.open()).await;
        tokio::spawn(async move {
            for chunk in data.chunks(16 * 1024) {
                c.write_all(chunk).await.unwrap();
                written.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
            }
            c.close().await.unwrap();
            c
        })
    };
    let mut s = within(server.accept()).await;
    // Nobody reads for a while: the writer must stall, not buffer everything.
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled_at = written.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("writer stalled after {stalled_at} bytes");
    // What can be in flight: the send buffer, the stream's receive buffer, the SCTP receive
    // window (1 MiB), webrtc-rs's per-channel event queue (256 messages of <= 16 KiB) and
    // a few frames of slack.
    let receive_buffer = Config::default().stream_receive_buffer;
    let bound = send_buffer + receive_buffer + 1024 * 1024 + 256 * 16 * 1024 + 1024 * 1024;
    assert!(
        stalled_at < bound,
        "writer got {stalled_at} bytes ahead of a stalled reader (bound {bound})"
    );
    assert!(stalled_at < total);
    // Then the reader catches up and gets every byte intact.
    let mut rest = Vec::with_capacity(total);
    within(s.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(rest.len() + 1, total);
    assert_eq!(one[0], data[0]);
    assert_eq!(checksum(&rest), checksum(&data[1..]));
    within(writer).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_connection_is_seen_by_the_remote() {
    init_tracing();
    let (mut client, mut server) = driven_pair(loopback_config()).await;
    let mut c = within(client.open()).await;
    c.write_all(b"x").await.unwrap();
    c.flush().await.unwrap();
    let mut s = within(server.accept()).await;
    let mut one = [0u8; 1];
    within(s.read_exact(&mut one)).await.unwrap();
    client.close();
    // The remote connection ends, and its open stream does not hang.
    let err = within(server.ended.take().unwrap()).await.unwrap();
    assert!(
        matches!(err, Error::Closed | Error::ConnectionFailed),
        "{err:?}"
    );
    let mut rest = Vec::new();
    assert!(within(s.read_to_end(&mut rest)).await.is_err());
}

/// Echoes 256 KiB through a UDP proxy; returns the largest datagram it forwarded.
async fn largest_datagram(config: Config) -> usize {
    largest_datagram_through(config, usize::MAX).await
}

/// Echoes 256 KiB through a UDP proxy that drops datagrams larger than `max_datagram`;
/// returns the largest datagram it forwarded.
async fn largest_datagram_through(config: Config, max_datagram: usize) -> usize {
    let proxy = UdpProxy::start().await;
    proxy
        .max_datagram
        .store(max_datagram, std::sync::atomic::Ordering::Relaxed);
    let (a, b) = within(connect(config.clone(), config, proxy.tamper()))
        .await
        .unwrap();
    let (client, server) = (Driver::new(a), spawn_echo(Driver::new(b)));
    let data = payload(256 * 1024, 7);
    let mut s = within(client.open()).await;
    within(s.write_all(&data)).await.unwrap();
    within(s.close()).await.unwrap();
    let mut got = Vec::new();
    within(s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(checksum(&got), checksum(&data));
    server.abort();
    proxy.largest.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_mtu_bounds_the_datagrams() {
    init_tracing();
    // DTLS adds ~37 bytes per record (header, explicit nonce, GCM tag).
    // Without path MTU discovery (on by default, the next test).
    let config = loopback_config().with_sctp_max_mtu(0);
    let default = largest_datagram(config.clone()).await;
    assert!((1191..=1191 + 64).contains(&default), "{default}");
    let raised = largest_datagram(config.with_sctp_mtu(1400)).await;
    assert!((1400 - 16..=1400 + 64).contains(&raised), "{raised}");
    eprintln!("largest datagram: {default} B by default, {raised} B with sctp_mtu 1400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_path_mtu_discovery_finds_what_the_path_carries() {
    init_tracing();
    // On by default. A path of 1500 bytes (1472 above IPv4 and UDP): the 1428-byte ceiling
    // gets through.
    let open = largest_datagram_through(loopback_config(), 1472).await;
    assert!((1428..=1428 + 64).contains(&open), "{open}");
    // A path that drops datagrams above 1400 bytes (a tunnel): the largest probe that fits
    // is used, and nothing is lost on the way there.
    let narrow = largest_datagram_through(loopback_config(), 1400).await;
    assert!((1300..=1400).contains(&narrow), "{narrow}");
    eprintln!(
        "largest datagram with discovery: {open} B on a 1500-byte path, {narrow} B under 1400"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_remote_is_detected_within_the_ice_timeouts() {
    init_tracing();
    let config = loopback_config().with_ice_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_millis(300),
    );
    let proxy = UdpProxy::start().await;
    let (a, b) = within(connect(config.clone(), config, proxy.tamper()))
        .await
        .unwrap();
    let (mut a, _b) = (Driver::new(a), Driver::new(b));
    // The path works through the proxy...
    let mut s = within(a.open()).await;
    s.write_all(b"ping").await.unwrap();
    s.flush().await.unwrap();
    // ...until the remote vanishes without a word.
    proxy.stop();
    let started = Instant::now();
    let err = within(a.ended.take().unwrap()).await.unwrap();
    let took = started.elapsed();
    eprintln!("vanished remote detected after {took:?}: {err}");
    assert!(
        matches!(err, Error::ConnectionFailed | Error::Closed),
        "{err:?}"
    );
    // disconnected (1 s) + failed (2 s), with generous slack for a loaded machine.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // The stream that was open on it fails cleanly: no data, no hang.
    let mut buf = [0u8; 8];
    let read = within(s.read(&mut buf)).await;
    assert!(!matches!(read, Ok(n) if n > 0), "{read:?}");
    let write = within(async {
        s.write_all(b"more").await?;
        s.flush().await
    })
    .await;
    assert!(write.is_err(), "a write on a dead connection succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprint_mismatch_is_rejected() {
    init_tracing();
    // A man in the middle swaps the answer's certificate fingerprint.
    let forged = (0..32).map(|_| "AB").collect::<Vec<_>>().join(":");
    let tamper = Tamper {
        answer: Some(Arc::new(move |sdp: String| {
            sdp.lines()
                .map(|l| {
                    if l.starts_with("a=fingerprint:sha-256 ") {
                        format!("a=fingerprint:sha-256 {forged}")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\r\n")
                + "\r\n"
        })),
        ..Default::default()
    };
    let config = loopback_config().with_ice_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_millis(300),
    );
    let result = within(connect(config.clone(), config, tamper)).await;
    match result {
        Err(Error::FingerprintMismatch | Error::ConnectionFailed | Error::Closed) => {}
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("a connection with a forged fingerprint was handed out"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_resets_only_that_stream() {
    init_tracing();
    // The server accepts frames of at most 1 KiB; the client sends 16 KiB frames.
    let small = loopback_config().with_max_frame_size(1024);
    let (a, b) = within(connect(loopback_config(), small, Tamper::default()))
        .await
        .unwrap();
    let (client, mut server) = (Driver::new(a), Driver::new(b));
    within(async {
        let mut c = client.open().await;
        c.write_all(&payload(4000, 1)).await.unwrap();
        c.flush().await.unwrap();
        let mut s = server.accept().await;
        let mut buf = Vec::new();
        let err = s.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        // The sender sees the reset.
        let mut rest = Vec::new();
        assert_eq!(
            c.read_to_end(&mut rest).await.unwrap_err().kind(),
            ErrorKind::ConnectionReset
        );

        // Small writes on another stream of the same connection still work.
        let mut c2 = client.open().await;
        c2.write_all(b"fits").await.unwrap();
        c2.close().await.unwrap();
        let mut s2 = server.accept().await;
        let mut got = Vec::new();
        s2.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"fits");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_streams_over_the_limit_are_refused() {
    init_tracing();
    let (a, b) = within(connect(
        loopback_config(),
        loopback_config().with_max_streams(2),
        Tamper::default(),
    ))
    .await
    .unwrap();
    let (client, mut server) = (Driver::new(a), Driver::new(b));
    within(async {
        let mut held = Vec::new();
        for i in 0..2u8 {
            let mut c = client.open().await;
            c.write_all(&[i]).await.unwrap();
            c.flush().await.unwrap();
            held.push((c, server.accept().await));
        }
        // A third stream is refused: its channel is closed, so the opener sees a reset.
        let mut c3 = client.open().await;
        let _ = c3.write_all(b"over").await;
        let mut buf = Vec::new();
        assert!(c3.read_to_end(&mut buf).await.is_err());
        // Freeing a slot admits new streams again.
        held.pop();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut c4 = client.open().await;
        c4.write_all(b"ok").await.unwrap();
        c4.close().await.unwrap();
        let mut s4 = server.accept().await;
        let mut got = Vec::new();
        s4.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok");
    })
    .await;
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let err = libp2p_webrtc_signal::Session::new(
        &Config::default().with_max_frame_size(1 << 20),
        libp2p_webrtc_signal::SdpRole::Offerer,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_request_response_streams() {
    init_tracing();
    let (client, server) = driven_pair(loopback_config()).await;
    let _echo = spawn_echo(server);
    let started = Instant::now();
    within(async {
        for i in 0..200u64 {
            let mut s = client.open().await;
            let req = payload(100 + i as usize, i);
            s.write_all(&req).await.unwrap();
            s.close().await.unwrap();
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await.unwrap();
            assert_eq!(resp, req, "stream {i}");
        }
    })
    .await;
    eprintln!("200 sequential streams in {:?}", started.elapsed());
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap())
        })
        .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Measurements for the README and issue notes, not pass/fail:
/// `cargo test --release --test connection measure -- --ignored --nocapture --test-threads 1`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn measure_loopback_setup_and_throughput() {
    // Offer created -> both sides connected and the fingerprint checked, 20 runs.
    let mut setup = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (a, b) = pair(loopback_config()).await;
        setup.push(started.elapsed());
        drop((a, b));
    }
    eprintln!(
        "offer -> connected: median {:?}, min {:?}, max {:?} (20 runs)",
        median(setup.clone()),
        setup.iter().min().unwrap(),
        setup.iter().max().unwrap()
    );
    // One stream, 256 MiB one way, 5 runs.
    const LEN: usize = 256 * 1024 * 1024;
    let chunk = payload(1024 * 1024, 5);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let (client, mut server) = driven_pair(loopback_config()).await;
        let receiver = tokio::spawn(async move {
            let mut s = server.accept().await;
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0;
            loop {
                let r = s.read(&mut buf).await.unwrap();
                if r == 0 {
                    break n;
                }
                n += r;
            }
        });
        let started = Instant::now();
        let mut s = client.open().await;
        for _ in 0..LEN / chunk.len() {
            s.write_all(&chunk).await.unwrap();
        }
        s.close().await.unwrap();
        assert_eq!(receiver.await.unwrap(), LEN);
        let secs = started.elapsed().as_secs_f64();
        rates.push(Duration::from_secs_f64(secs));
        eprintln!("256 MiB in {secs:.2} s = {:.0} MiB/s", 256.0 / secs);
    }
    let m = median(rates).as_secs_f64();
    eprintln!(
        "one stream: median {:.0} MiB/s (5 runs of 256 MiB)",
        256.0 / m
    );
}

/// Stream churn: time and memory per 2000 sequential request/response streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn measure_stream_churn() {
    let (client, server) = driven_pair(loopback_config()).await;
    let _echo = spawn_echo(server);
    let mut last = rss_kib();
    for round in 0..4 {
        let started = Instant::now();
        for i in 0..2000u64 {
            let mut s = client.open().await;
            s.write_all(&i.to_le_bytes()).await.unwrap();
            s.close().await.unwrap();
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await.unwrap();
            assert_eq!(resp, i.to_le_bytes());
        }
        let now = rss_kib();
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "round {round}: 2000 streams in {:?}, rss {now} KiB ({:+} KiB), {} live tasks",
            started.elapsed(),
            now as i64 - last as i64,
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        );
        last = now;
    }
}

/// The first streams, opened by both sides the moment the connection is handed out, open
/// at once. (webrtc-rs loses the open message of a data channel created during the SCTP
/// handshake; such a channel would only be replaced after `stream_open_timeout`, set far
/// beyond this test's hang timeout here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_right_after_connecting_open_at_once() {
    init_tracing();
    for _ in 0..3 {
        let config = loopback_config().with_stream_open_timeout(Duration::from_secs(300));
        let (mut a, mut b) = driven_pair(config).await;
        tokio::time::timeout(Duration::from_secs(20), async {
            let (mut from_a, mut from_b) = futures::join!(a.open(), b.open());
            from_a.write_all(b"a").await.unwrap();
            from_a.flush().await.unwrap();
            from_b.write_all(b"b").await.unwrap();
            from_b.flush().await.unwrap();
            let (mut at_b, mut at_a) = futures::join!(b.accept(), a.accept());
            let mut buf = [0u8; 1];
            at_b.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"a");
            at_a.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"b");
        })
        .await
        .expect("a first stream did not open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_towards_a_remote_candidate_are_bounded() {
    common::init_tracing();
    // A hostile answer points the offerer's connectivity checks at a UDP port of ours that
    // never answers: it gets at most `ice_max_binding_requests` checks per local candidate
    // (plus one: webrtc-rs gives up on the check after the limit).
    let max_checks = 10;
    let config = loopback_config().with_ice_checks(Duration::from_millis(20), max_checks);
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let mut offerer = Session::new(&config, SdpRole::Offerer).await.unwrap();
    let mut answerer = Session::new(&config, SdpRole::Answerer).await.unwrap();
    let offer = offerer.create_offer().await.unwrap();
    let answer = answerer.accept_offer(&offer).await.unwrap();
    offerer.accept_answer(&answer).await.unwrap();
    let mut local_candidates = 0;
    let mut forged = false;
    let mut received = 0usize;
    let mut buf = [0u8; 2048];
    let quiet = Duration::from_secs(3);
    let mut last = tokio::time::Instant::now();
    let mut failed = false;
    loop {
        tokio::select! {
            event = offerer.next_event(), if !failed => match event {
                // ICE gave up: the checks are over.
                Err(_) => failed = true,
                Ok(SessionEvent::LocalCandidate(json)) => {
                    local_candidates += 1;
                    if !forged {
                        // The answerer's would-be candidate, moved to the sink.
                        let c = common::rewrite_candidate_addr(&json, sink_addr);
                        offerer.add_remote_candidate(Some(&c)).await.unwrap();
                        forged = true;
                    }
                }
                Ok(SessionEvent::LocalCandidatesComplete) => {}
                Ok(SessionEvent::Connected) => panic!("connected to a sink"),
            },
            r = sink.recv_from(&mut buf) => {
                r.unwrap();
                received += 1;
                last = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until(last + quiet) => break,
        }
    }
    assert!(forged && received > 0, "no checks reached the sink");
    assert!(
        received <= (usize::from(max_checks) + 1) * local_candidates,
        "{received} checks from {local_candidates} local candidates"
    );
    offerer.close().await;
    answerer.close().await;
}

/// An answerer that gathered before the offer has its candidates ready the moment its answer
/// is made (they follow the answer at once, instead of a STUN or TURN round trip later),
/// reports each of them once, and connects. Descriptions carry no candidates either way:
/// candidates always travel trickled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answerer_that_gathered_early_has_its_candidates_ready_with_the_answer() {
    use futures::FutureExt;
    init_tracing();
    within(async {
        let config = loopback_config();
        let mut offerer = Session::new(&config, SdpRole::Offerer).await.unwrap();
        let mut answerer = Session::new(&config, SdpRole::Answerer).await.unwrap();
        answerer.gather_early().await.expect("gather early");
        // Host candidates come at once; this is slack for a busy machine.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let offer = offerer.create_offer().await.unwrap();
        let answer = answerer.accept_offer(&offer).await.unwrap();
        for sdp in [&offer, &answer] {
            assert!(
                !sdp.lines().any(|l| l.starts_with("a=candidate:")),
                "a candidate in a description:\n{sdp}"
            );
        }
        offerer.accept_answer(&answer).await.unwrap();
        // Ready now, not after another gathering.
        let first = answerer.next_event().now_or_never();
        let Some(Ok(SessionEvent::LocalCandidate(first))) = first else {
            panic!("no candidate ready with the answer: {first:?}");
        };
        offerer.add_remote_candidate(Some(&first)).await.unwrap();
        let mut trickled = vec![first];
        let (mut a_up, mut b_up) = (false, false);
        while !(a_up && b_up) {
            tokio::select! {
                ev = offerer.next_event(), if !a_up => match ev.unwrap() {
                    SessionEvent::LocalCandidate(c) => {
                        answerer.add_remote_candidate(Some(&c)).await.unwrap()
                    }
                    SessionEvent::LocalCandidatesComplete => {
                        answerer.add_remote_candidate(None).await.unwrap()
                    }
                    SessionEvent::Connected => a_up = true,
                },
                ev = answerer.next_event(), if !b_up => match ev.unwrap() {
                    SessionEvent::LocalCandidate(c) => {
                        trickled.push(c.clone());
                        offerer.add_remote_candidate(Some(&c)).await.unwrap();
                    }
                    SessionEvent::LocalCandidatesComplete => {}
                    SessionEvent::Connected => b_up = true,
                },
            }
        }
        let unique: std::collections::HashSet<_> = trickled.iter().collect();
        assert_eq!(
            unique.len(),
            trickled.len(),
            "a candidate twice: {trickled:?}"
        );
        let a = offerer.into_connection().await.expect("offerer connection");
        let b = answerer
            .into_connection()
            .await
            .expect("answerer connection");
        drop((a, b));
    })
    .await;
}
