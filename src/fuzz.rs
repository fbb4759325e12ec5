//! Property-based fuzzing of everything that parses remote input, on the stable toolchain.
//!
//! `cargo test` runs each target with [`DEFAULT_CASES`] cases; `FUZZ_CASES=100000 cargo test
//! --release --lib fuzz` runs a longer campaign. Failing inputs are shrunk and printed; no
//! regression files are written.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::direct::candidate::{self, RemoteCandidate};
use crate::direct::fingerprint::Fingerprint;
use crate::direct::framing::{self, Flag, FrameDecoder, MAX_FRAME_SIZE, MIN_FRAME_SIZE};
use crate::direct::stream::state::State;
use crate::generated::signaling_pb::Message;
use crate::swarm::exchange::{Exchange, Phase};
use crate::swarm::protocol::Signal;
use crate::SdpRole;

/// Cases per target in a plain `cargo test`.
const DEFAULT_CASES: u32 = 256;

fn config() -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn flag() -> impl Strategy<Value = Flag> {
    prop_oneof![
        Just(Flag::Fin),
        Just(Flag::StopSending),
        Just(Flag::ResetStream),
        Just(Flag::FinAck),
    ]
}

/// Splits `bytes` at the given (sorted, deduplicated) cut points.
fn split(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.iter_mut().for_each(|c| *c %= bytes.len() + 1);
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts {
        out.push(&bytes[start..cut]);
        start = cut;
    }
    out.push(&bytes[start..]);
    out
}

/// What a stream's state machine is told, from the remote or from this side.
#[derive(Debug, Clone)]
enum StreamInput {
    Flag(Flag),
    Reset,
    ChannelClosed,
    StartClose,
    FinAckTimeout,
}

fn stream_input() -> impl Strategy<Value = StreamInput> {
    prop_oneof![
        flag().prop_map(StreamInput::Flag),
        Just(StreamInput::Reset),
        Just(StreamInput::ChannelClosed),
        Just(StreamInput::StartClose),
        Just(StreamInput::FinAckTimeout),
    ]
}

/// A candidate line from parts, as stacks write it.
fn candidate_line() -> impl Strategy<Value = (String, bool)> {
    (
        any::<[u8; 4]>(),
        0u16..=u16::MAX,
        any::<u32>(),
        prop_oneof![Just("host"), Just("srflx"), Just("prflx"), Just("relay")],
        any::<bool>(),
    )
        .prop_map(|(ip, port, priority, typ, prefixed)| {
            let ip = std::net::Ipv4Addr::from(ip);
            let line = format!("candidate:1 1 udp {priority} {ip} {port} typ {typ}");
            let usable = port != 0
                && !ip.is_unspecified()
                && !ip.is_multicast()
                && !ip.is_loopback()
                && !ip.is_broadcast();
            (if prefixed { format!("a={line}") } else { line }, usable)
        })
}

/// SDPs as webrtc-rs, Chromium and js-libp2p (node-datachannel) write them, with a known
/// sha-256 fingerprint (`FP`).
const FP: &str = "0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9";

fn seed_sdps() -> Vec<String> {
    let webrtc_rs = format!(
        "v=0\r\no=- 7393217368393526370 847063458 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
         a=fingerprint:sha-256 {FP}\r\na=extmap-allow-mixed\r\na=group:BUNDLE 0\r\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
         a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=sctp-port:5000\r\n\
         a=ice-ufrag:hQkUeNnGbDYPbLlm\r\na=ice-pwd:dmXbwQoQsQHUaFqkCWvqkxCfpgNBcbDd\r\n"
    );
    let chromium = format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         a=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:Zq2V\r\na=ice-pwd:tdBq6CxJ/Wv3K1QpJ4ZzDtqN\r\na=ice-options:trickle\r\n\
         a=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\na=mid:0\r\n\
         a=sctp-port:5000\r\na=max-message-size:262144\r\n"
    );
    let node_datachannel = format!(
        "v=0\r\no=rtc 2961632585 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         a=group:BUNDLE 0\r\na=group:LS 0\r\na=msid-semantic:WMS *\r\n\
         a=ice-options:ice2,trickle\r\na=fingerprint:sha-256 {}\r\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
         a=mid:0\r\na=sendrecv\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n\
         a=setup:actpass\r\na=ice-ufrag:Nh3d\r\na=ice-pwd:9SxU6mrnTjzh3kyvyHT0SN\r\n",
        FP.to_lowercase()
    );
    vec![webrtc_rs, chromium, node_datachannel]
}

/// A line edit applied to a seed SDP.
#[derive(Debug, Clone)]
enum SdpEdit {
    Delete(usize),
    Duplicate(usize),
    Insert(usize, String),
    Truncate(usize),
}

fn sdp_edit() -> impl Strategy<Value = SdpEdit> {
    prop_oneof![
        any::<usize>().prop_map(SdpEdit::Delete),
        any::<usize>().prop_map(SdpEdit::Duplicate),
        (any::<usize>(), "(a=fingerprint:)?[ -~]{0,120}")
            .prop_map(|(at, line)| SdpEdit::Insert(at, line)),
        any::<usize>().prop_map(SdpEdit::Truncate),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes in arbitrary chunks: never a panic, and after each chunk the decoder
    /// holds less than one frame.
    #[test]
    fn frame_decoder_holds_less_than_a_frame(
        bytes in vec(any::<u8>(), 0..65536),
        cuts in vec(any::<usize>(), 0..32),
        max in MIN_FRAME_SIZE..=MAX_FRAME_SIZE,
    ) {
        let mut decoder = FrameDecoder::new(max);
        for chunk in split(&bytes, cuts) {
            decoder.push(chunk);
            let mut frames = 0usize;
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        prop_assert!(frame.data.len() < max);
                        frames += 1;
                        prop_assert!(frames <= chunk.len() + 1, "frames out of nothing");
                    }
                    Ok(None) => break,
                    Err(_) => prop_assert!(decoder.has_failed()),
                }
            }
            prop_assert!(decoder.buffered() < max, "{} buffered, max {max}", decoder.buffered());
        }
    }

    /// Frames encoded back to back, cut anywhere, decode to the same frames.
    #[test]
    fn frames_survive_any_split(
        frames in vec((proptest::option::of(flag()), vec(any::<u8>(), 0..2000)), 0..16),
        cuts in vec(any::<usize>(), 0..32),
    ) {
        let wire: Vec<u8> = frames
            .iter()
            .flat_map(|(flag, data)| framing::encode(*flag, data).to_vec())
            .collect();
        let mut decoder = FrameDecoder::new(MAX_FRAME_SIZE);
        let mut got = Vec::new();
        for chunk in split(&wire, cuts) {
            decoder.push(chunk);
            while let Some(frame) = decoder.next_frame().expect("valid frames") {
                got.push((frame.flag, frame.data.to_vec()));
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    /// Any sequence of flags and local events: no panic, and the halves only move forward.
    #[test]
    fn stream_state_only_moves_forward(inputs in vec(stream_input(), 0..64)) {
        let mut state = State::new();
        for input in inputs {
            let before = state;
            match input {
                StreamInput::Flag(flag) => {
                    let reply = state.on_flag(flag);
                    prop_assert!(reply.is_none() || reply == Some(Flag::FinAck));
                    prop_assert!(reply.is_none() || flag == Flag::Fin);
                }
                StreamInput::Reset => state.reset(),
                StreamInput::ChannelClosed => state.on_channel_closed(),
                StreamInput::StartClose => {
                    let fin = state.start_close();
                    prop_assert_eq!(fin, before.check_write().is_ok());
                }
                StreamInput::FinAckTimeout => state.on_fin_ack_timeout(),
            }
            // What ended stays ended; what was done stays done.
            prop_assert!(before.read_end().is_none() || state.read_end().is_some());
            prop_assert!(before.check_write().is_ok() || state.check_write().is_err());
            prop_assert!(!before.is_done() || state.is_done());
            prop_assert!(!before.reset_by_remote || state.reset_by_remote);
        }
    }

    /// Arbitrary bytes as a signaling message, then through the exchange: never a panic; the
    /// exchange only moves forward and accepts one description at most. A restart stream
    /// (`/webrtc-signal/restart/1.0.0`) carries the same messages through the same decoder
    /// and exchange (`exchange::restart`), so this covers it too.
    #[test]
    fn signaling_input_never_panics(
        messages in vec(
            prop_oneof![
                vec(any::<u8>(), 0..256).prop_map(|b| <Message as prost::Message>::decode(&b[..]).ok()),
                (proptest::option::of(0i32..5), proptest::option::of("[ -~]{0,64}"))
                    .prop_map(|(r#type, data)| Some(Message { r#type, data })),
            ],
            0..16,
        ),
        offerer in any::<bool>(),
    ) {
        let role = if offerer { SdpRole::Offerer } else { SdpRole::Answerer };
        let mut exchange = Exchange::new(role);
        let mut descriptions = 0;
        for msg in messages.into_iter().flatten() {
            let Ok(signal) = Signal::from_message(msg) else { continue };
            let before = exchange.phase();
            match exchange.on_signal(signal) {
                Ok(crate::swarm::exchange::Step::AcceptOffer(_))
                | Ok(crate::swarm::exchange::Step::AcceptAnswer(_)) => descriptions += 1,
                Ok(_) => {}
                Err(_) => break,
            }
            prop_assert!(before != Phase::Checking || exchange.phase() == Phase::Checking);
        }
        prop_assert!(descriptions <= 1);
    }

    /// Arbitrary candidate data: never a panic.
    #[test]
    fn candidate_parsing_never_panics(data in "[ -~]{0,300}", json in any::<bool>(), loopback in any::<bool>()) {
        let data = if json { format!(r#"{{"candidate":"{}"}}"#, data.replace(['"', '\\'], "")) } else { data };
        let _ = candidate::parse(Some(&data), loopback);
    }

    /// Candidates as stacks write them: usable ones round-trip through our JSON, the rest are
    /// skipped, none is an error.
    #[test]
    fn candidates_round_trip((line, usable) in candidate_line(), mid in proptest::option::of("[0-9]{1,2}")) {
        let json = serde_json::json!({ "candidate": line, "sdpMid": mid, "sdpMLineIndex": 0 }).to_string();
        match candidate::parse(Some(&json), false).expect("a well-formed candidate") {
            RemoteCandidate::Candidate(init) => {
                prop_assert!(usable);
                let again = candidate::parse(Some(&candidate::to_json(&init)), false).expect("our own JSON");
                prop_assert_eq!(again, RemoteCandidate::Candidate(init));
            }
            RemoteCandidate::Skipped(_) => prop_assert!(!usable),
            RemoteCandidate::EndOfCandidates => prop_assert!(false, "end of candidates from {}", json),
        }
    }

    /// Fingerprint text, valid or with one character replaced: whatever parses is exactly 32
    /// hex bytes, and prints back the same.
    #[test]
    fn fingerprint_parsing_is_exact(
        bytes in any::<[u8; 32]>(),
        lower in any::<bool>(),
        edit in proptest::option::of((any::<usize>(), prop_oneof![Just('+'), Just('-'), Just(' '), Just(':'), Just('g'), Just('0')])),
    ) {
        let mut text = bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
        if lower {
            text = text.to_lowercase();
        }
        if let Some((at, c)) = edit {
            let at = at % text.len();
            text.replace_range(at..at + 1, &c.to_string());
        }
        if let Some(fp) = Fingerprint::parse_hex(&text) {
            let printed = fp.0.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
            prop_assert_eq!(printed, text.trim().to_uppercase());
        }
    }

    /// SDPs from three stacks, edited line by line: never a panic, and the fingerprint is
    /// found exactly when its line survived.
    #[test]
    fn sdp_fingerprints_from_edited_seeds(seed in 0usize..3, edits in vec(sdp_edit(), 0..8)) {
        let sdp = &seed_sdps()[seed];
        let mut lines: Vec<String> = sdp.split("\r\n").map(str::to_owned).collect();
        for edit in edits {
            let n = lines.len().max(1);
            match edit {
                SdpEdit::Delete(i) if !lines.is_empty() => { lines.remove(i % n); }
                SdpEdit::Duplicate(i) if !lines.is_empty() => { let l = lines[i % n].clone(); lines.insert(i % n, l); }
                SdpEdit::Insert(i, line) => lines.insert(i % (lines.len() + 1), line),
                SdpEdit::Truncate(i) if !lines.is_empty() => { let l = &mut lines[i % n]; let cut = (i / n) % (l.len() + 1); l.truncate(cut); }
                _ => {}
            }
        }
        let edited = lines.join("\r\n");
        let expected = Fingerprint::parse_hex(FP).expect("the seed fingerprint");
        let found = Fingerprint::from_sdp(&edited);
        let intact = lines.iter().any(|l| l.eq_ignore_ascii_case(&format!("a=fingerprint:sha-256 {FP}")));
        prop_assert_eq!(found.contains(&expected), intact, "{}", edited);
    }
}
