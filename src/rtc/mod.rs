//! Everything that touches webrtc-rs, behind a small interface: a [`Peer`] (one peer
//! connection: descriptions, candidates, channels, close), its [`PeerEvent`]s, a [`Channel`]
//! (one data channel: send, events, close) and the UDP socket wrapper its driver gets
//! ([`socket`]). No other module names a `webrtc::` or `rtc::` item; [`crate::direct`] builds
//! sessions, connections and streams on this interface.
//!
//! # webrtc-rs 0.21.1 workarounds: the checklist for the next upgrade
//!
//! Each entry: what webrtc-rs does, what this crate does about it, and the test or benchmark
//! that shows it. On a webrtc-rs upgrade, check each: drop the workaround when the cause is
//! gone (its test must still pass without it).
//!
//! 1. **The driver is not woken for a new remote candidate**: the first check of the new pair
//!    waits for the agent's next timer, up to a second. [`Peer::add_candidates`] wakes it
//!    ([`Peer::wake`]: re-applying the unchanged configuration, the one public call that
//!    runs a driver iteration). Shows in `tests/bench.rs` `measure_upgrade_time` (loopback
//!    upgrade ~26 ms instead of ~1 s) and in every upgrade test's timeout margin.
//! 2. **The SCTP INIT waits for the driver's next wake-up** (up to 200 ms after DTLS):
//!    [`Peer::wait_for_sctp`] wakes it once. Shows in the `Timings::sctp` phase of
//!    `measure_upgrade_time`.
//! 3. **A data channel created while the SCTP handshake runs never opens** (its open message
//!    is lost): no stream is handed out before [`Peer::wait_for_sctp`] saw the association
//!    up. Test: `tests/connection.rs` `streams_opened_right_after_connecting_open_at_once`.
//! 4. **Datagrams other than STUN that arrive before ICE selected a pair are dropped**: a peer
//!    that finishes ICE first (libjuice, in js-libp2p's Node.js transport) loses its DTLS
//!    ClientHello and waits a second for the retransmission. [`socket::EarlyDtls`] holds such
//!    records (bounded by `Config::early_dtls_records`) until ICE is connected. Tests: the
//!    unit tests in [`socket`]; `tests/interop.rs` (Node.js dialing Rust).
//! 5. **A data channel's stream id is freed while resets for it are still in flight**: a new
//!    channel that gets the id is killed or loses messages. `direct::stream::reuse` delays
//!    new outbound channels and lets only one side close. Tests:
//!    `tests/connection.rs` `sequential_request_response_streams`,
//!    `resets_mid_transfer_do_not_poison_later_streams`; unit tests in `reuse`.
//! 6. **Peer-reflexive and server-reflexive pairs wait 1 s / 500 ms before nomination**
//!    (acceptance minimum waits): set to zero for host, server- and peer-reflexive pairs in
//!    [`Peer::new`]; TURN-relayed pairs wait `Config::ice_relay_acceptance_wait` (default
//!    0, webrtc-rs's 2 s). Shows in the NAT lab's upgrade times (`tests/nat_lab.rs`).
//! 7. **The offer needs an application m-line, and closing a channel frees its stream id
//!    early** (5): the offerer opens a data channel labelled [`INIT_CHANNEL_LABEL`] before
//!    the offer and keeps it open for the connection's lifetime; a remote's `init` channel
//!    is never surfaced as a stream. Tests: every upgrade; interop with js-libp2p (which opens
//!    and closes its own `init` channel).
//! 8. **Dropping a peer connection does not stop its driver or release its sockets** (that
//!    happens on `close`, or on drop only with a dedicated reactor), and neither does dropping
//!    the builder's future halfway. The last [`Peer`] clone closes the connection when it is
//!    dropped, and [`Peer::new`] builds on a task of its own, so a cancelled setup completes
//!    and is then closed. Tests: `tests/leaks.rs` (UDP sockets back to the baseline after
//!    cancelled creations, dropped sessions at every stage, silent offers, relay loss, glare).
//! 9. **A lone data channel or small window recovers from loss only by a 1 s timeout, and
//!    Reno halves the window on random loss**: this is in `rtc-sctp`, patched in
//!    `patches/rtc-sctp` (see its `PATCHES.md`); not a workaround here.
//! 10. **mDNS candidates** are off (`MulticastDnsMode::Disabled`): a remote's `.local`
//!     candidate is skipped by `direct::candidate`, never resolved.
//! 11. **A statistics entry per data channel is kept for the connection's lifetime**: this is
//!     in `rtc`, patched in `patches/rtc` (see its `PATCHES.md`). Test: `tests/leaks.rs`
//!     `stream_churn_keeps_the_heap_bounded`.

mod channel;
mod peer;
pub(crate) mod socket;
pub(crate) mod stun;

pub(crate) use channel::{Channel, ChannelEvent};
pub(crate) use peer::{Peer, PeerEvent, PeerState, WeakPeer};

/// A candidate as webrtc-rs takes and gives it (the JSON form of `RTCIceCandidateInit`).
pub(crate) use webrtc::peer_connection::RTCIceCandidateInit as CandidateInit;

/// Label of the data channel an offerer opens so that its offer has an application m-line
/// (js-libp2p does the same). It is never surfaced as a stream.
pub(crate) const INIT_CHANNEL_LABEL: &str = "init";

impl From<webrtc::error::Error> for crate::Error {
    fn from(e: webrtc::error::Error) -> Self {
        crate::Error::WebRtc(crate::error::WebRtcError::new(e))
    }
}
