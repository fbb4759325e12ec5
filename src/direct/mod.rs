//! The WebRTC connection side: a [`Session`](session::Session) sets up one peer connection
//! from SDP and candidates, checks the remote's certificate and yields a
//! [`Connection`](connection::Connection), a libp2p `StreamMuxer` whose streams are data
//! channels framed per the libp2p WebRTC spec. Nothing here knows about the Swarm; webrtc-rs
//! is reached only through [`crate::rtc`].

pub(crate) mod candidate;
pub(crate) mod connection;
pub(crate) mod fingerprint;
pub(crate) mod framing;
pub(crate) mod path;
pub(crate) mod session;
pub(crate) mod stream;
