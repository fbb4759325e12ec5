//! Protobuf types generated from the `.proto` files in `proto/`.
//!
//! The code below mirrors what `prost-build` 0.14 emits for those files; it is kept apart
//! from hand-written code and only edited to follow the `.proto` sources.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `proto/webrtc.proto`: framing of libp2p streams on data channels.
pub mod webrtc_pb {
    include!("webrtc.pb.rs");
}

/// `proto/signaling.proto`: messages of the signaling protocol.
pub mod signaling_pb {
    include!("webrtc.signaling.pb.rs");
}
