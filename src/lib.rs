//! Upgrade relayed libp2p connections to direct WebRTC connections ("WebRTC
//! private-to-private").
//!
//! This crate is being built in layers. The layer available now turns a WebRTC peer
//! connection into a libp2p connection:
//!
//! - [`Session`] sets up one peer connection on webrtc-rs: an SDP offer/answer and trickled
//!   ICE candidates go in and out through plain methods, so any signaling channel can drive it.
//!   Candidates that arrive early are buffered; end-of-candidates and unusable candidates are
//!   accepted.
//! - [`Session::into_connection`] checks that the remote's DTLS certificate matches the
//!   `a=fingerprint` of the remote SDP, then yields a [`Connection`].
//! - [`Connection`] implements [`libp2p_core::muxing::StreamMuxer`]: one libp2p stream is one
//!   in-band data channel, framed per the libp2p WebRTC spec (`FIN`/`FIN_ACK` half-close,
//!   `STOP_SENDING`, `RESET_STREAM`, frames of at most 16 KiB).
//!
//! Every limit lives in [`Config`].

#![forbid(unsafe_code)]
#![cfg_attr(doctest, doc = include_str!("../README.md"))]
#![warn(missing_docs)]

// Lets the shared test helpers in tests/common name this crate from unit tests too.
#[cfg(test)]
extern crate self as libp2p_webrtc_signal;

mod behaviour;
mod candidate;
mod config;
mod connection;
mod error;
mod fingerprint;
pub mod framing;
mod generated;
mod handler;
mod protocol;
mod runtime;
mod session;
mod slots;
mod stream;
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_common;
mod transport;
mod upgrade;

pub use behaviour::{Behaviour, Event};
pub use config::{Config, IceServer};
pub use connection::Connection;
pub use error::Error;
pub use handler::{Command, Handler, Report};
pub use protocol::{PROTOCOL_NAME, SPEC_PROTOCOL_NAME};
pub use session::{SdpRole, Session, SessionEvent};
pub use stream::Stream;
pub use transport::Transport;

/// Creates the transport and the behaviour that upgrade relayed connections to WebRTC.
///
/// Add the [`Transport`] with `SwarmBuilder::with_other_transport` and the [`Behaviour`] as a
/// field of your `#[derive(NetworkBehaviour)]`. An invalid `config` (see
/// [`Config::validate`]) makes every upgrade fail with [`Error::InvalidConfig`].
pub fn new(keypair: &libp2p_identity::Keypair, config: Config) -> (Transport, Behaviour) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let local = keypair.public().to_peer_id();
    (
        transport::Transport::new(rx),
        behaviour::Behaviour::new(local, config, tx),
    )
}
