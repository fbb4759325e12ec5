//! Upgrade relayed libp2p connections to direct WebRTC connections ("WebRTC
//! private-to-private").
//!
//! [`new`] returns a [`Transport`] and a [`Behaviour`]. With both in a Swarm (see the README
//! for a complete node), every relayed connection is upgraded automatically: the behaviour
//! negotiates `/webrtc-signal/1.0.0` (or the spec's `/webrtc-signaling/0.0.1`) on the relayed
//! connection, trickles the SDP offer/answer and ICE candidates over it, lets ICE find a
//! direct UDP path, checks the remote's DTLS certificate against the SDP fingerprint, brings
//! the direct connection into the Swarm through the transport, then drains and closes the
//! relayed connection. [`Event`]s report each step; every limit lives in [`Config`].
//!
//! The layer below is usable on its own with any signaling channel:
//!
//! - [`Session`] sets up one peer connection on webrtc-rs: an SDP offer/answer and trickled
//!   ICE candidates go in and out through plain methods. Candidates that arrive early are
//!   buffered; end-of-candidates and unusable candidates are accepted.
//! - [`Session::into_connection`] checks that the remote's DTLS certificate matches the
//!   `a=fingerprint` of the remote SDP, then yields a [`Connection`].
//! - [`Connection`] implements [`libp2p_core::muxing::StreamMuxer`]: one libp2p stream is one
//!   in-band data channel, framed per the libp2p WebRTC spec (`FIN`/`FIN_ACK` half-close,
//!   `STOP_SENDING`, `RESET_STREAM`, frames of at most 16 KiB).

#![forbid(unsafe_code)]
#![cfg_attr(doctest, doc = include_str!("../README.md"))]
#![warn(missing_docs)]

// Lets the shared test helpers in tests/common name this crate from unit tests too.
#[cfg(test)]
extern crate self as libp2p_webrtc_signal;

mod config;
mod direct;
mod error;
#[cfg(test)]
mod fuzz;
mod generated;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod rtc;
mod slots;
mod swarm;

/// The guides in `docs/` with Rust examples, compiled and run as doctests like the README.
#[cfg(doctest)]
mod guides {
    #[doc = include_str!("../docs/connection-layer.md")]
    struct ConnectionLayer;
    #[doc = include_str!("../docs/nat-traversal.md")]
    struct NatTraversal;
}
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_common;

pub use crate::rtc::stun::{StunResponder, StunStats, DEFAULT_STUN_PORT};
pub use config::{Config, IceServer};
pub use direct::connection::Connection;
pub use direct::framing::{MAX_FRAME_SIZE, MIN_FRAME_SIZE};
pub use direct::path::{CandidateKind, DirectPath};
pub use direct::session::{SdpRole, Session, SessionEvent};
pub use direct::stream::Stream;
pub use error::{Cause, Error, ProtocolViolation, WebRtcError};
pub use swarm::behaviour::{Behaviour, Event};
pub use swarm::exchange::Timings;
pub use swarm::protocol::{PROTOCOL_NAME, RESTART_PROTOCOL_NAME, SPEC_PROTOCOL_NAME};
pub use swarm::transport::Transport;

/// Creates the transport and the behaviour that upgrade relayed connections to WebRTC.
///
/// Add the [`Transport`] with `SwarmBuilder::with_other_transport` and the [`Behaviour`] as a
/// field of your `#[derive(NetworkBehaviour)]`, next to the relay client. An invalid `config`
/// (see [`Config::validate`]) makes every upgrade fail with [`Error::InvalidConfig`].
///
/// ```
/// use libp2p_webrtc_signal::{Config, IceServer};
///
/// let keypair = libp2p_identity::Keypair::generate_ed25519();
/// let config = Config::default().with_ice_servers(vec![IceServer::stun("stun:stun.example.org")]);
/// config.validate().unwrap();
/// let (transport, behaviour) = libp2p_webrtc_signal::new(&keypair, config);
/// # let _ = (transport, behaviour);
/// ```
pub fn new(keypair: &libp2p_identity::Keypair, config: Config) -> (Transport, Behaviour) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let local = keypair.public().to_peer_id();
    (
        swarm::transport::Transport::new(rx),
        swarm::behaviour::Behaviour::new(local, config, tx),
    )
}
