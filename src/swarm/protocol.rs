//! The signaling protocol: ids, the stream upgrade, and the message codec.
//!
//! Messages are varint length-prefixed `webrtc.signaling.pb.Message`s (see
//! `proto/signaling.proto`): an SDP offer, an SDP answer, or an ICE candidate as the JSON of an
//! `RTCIceCandidateInit` (missing, `""` or `"null"` data: end of candidates).

use std::convert::Infallible;

use asynchronous_codec::Framed;
use futures::future::{ready, Ready};
use libp2p_core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p_swarm::{Stream, StreamProtocol};

use crate::generated::signaling_pb::{message::Type, Message};
use crate::Error;
use libp2p_identity::PeerId;

/// This crate's signaling protocol id, proposed first.
pub const PROTOCOL_NAME: StreamProtocol = StreamProtocol::new("/webrtc-signal/1.0.0");
/// The libp2p spec's id for the same protocol (js-libp2p speaks it); accepted and proposed
/// second.
pub const SPEC_PROTOCOL_NAME: StreamProtocol = StreamProtocol::new("/webrtc-signaling/0.0.1");

/// The ICE restart of a direct connection that lives on: the same messages, on a relayed
/// connection between the same two peers (see [`crate::Event::Restarted`]). A separate id, so
/// a peer without restarts (js-libp2p) refuses it in the negotiation.
pub const RESTART_PROTOCOL_NAME: StreamProtocol =
    StreamProtocol::new("/webrtc-signal/restart/1.0.0");

/// What a signaling stream is negotiated for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Upgrade {
    /// Inbound: any of the ids; the negotiated one says what the remote wants.
    #[default]
    Any,
    /// Outbound: an upgrade's offer (this crate's id, then the spec's).
    Offer,
    /// Outbound: the ICE restart of a direct connection.
    Restart,
}

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        match self {
            Upgrade::Any => vec![PROTOCOL_NAME, SPEC_PROTOCOL_NAME, RESTART_PROTOCOL_NAME],
            Upgrade::Offer => vec![PROTOCOL_NAME, SPEC_PROTOCOL_NAME],
            Upgrade::Restart => vec![RESTART_PROTOCOL_NAME],
        }
        .into_iter()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

/// A signaling message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signal {
    /// `SDP_OFFER` with its SDP text.
    Offer(String),
    /// `SDP_ANSWER` with its SDP text.
    Answer(String),
    /// `ICE_CANDIDATE`: the candidate JSON, or `None` for end-of-candidates.
    Candidate(Option<String>),
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Protocol(crate::error::ProtocolViolation::Malformed(what.into()))
}

impl Signal {
    /// Decodes a received message. Offers and answers need their SDP text.
    pub(crate) fn from_message(msg: Message) -> Result<Self, Error> {
        let kind = msg
            .r#type
            .ok_or_else(|| malformed("message without a type"))?;
        match Type::try_from(kind) {
            Ok(Type::SdpOffer) => msg
                .data
                .map(Signal::Offer)
                .ok_or_else(|| malformed("offer without SDP")),
            Ok(Type::SdpAnswer) => msg
                .data
                .map(Signal::Answer)
                .ok_or_else(|| malformed("answer without SDP")),
            Ok(Type::IceCandidate) => Ok(Signal::Candidate(
                msg.data.filter(|d| !d.is_empty() && d != "null"),
            )),
            Err(_) => Err(malformed(format!("unknown message type {kind}"))),
        }
    }

    /// Encodes for sending. End-of-candidates goes out as the JSON `null`: js-libp2p runs
    /// `JSON.parse` on every candidate's data and stops reading candidates at one that does
    /// not parse (an empty string did not).
    pub(crate) fn into_message(self) -> Message {
        let (kind, data) = match self {
            Signal::Offer(sdp) => (Type::SdpOffer, sdp),
            Signal::Answer(sdp) => (Type::SdpAnswer, sdp),
            Signal::Candidate(json) => (
                Type::IceCandidate,
                json.unwrap_or_else(|| "null".to_owned()),
            ),
        };
        Message {
            r#type: Some(kind as i32),
            data: Some(data),
        }
    }
}

/// The signaling stream with its codec.
pub(crate) type SignalingStream = Framed<Stream, prost_codec::Codec<Message>>;

/// Wraps a negotiated stream; messages over `max_message_size` bytes are refused.
pub(crate) fn framed(stream: Stream, max_message_size: usize) -> SignalingStream {
    Framed::new(stream, prost_codec::Codec::new(max_message_size))
}

/// Whether `offerer`'s offer wins a glare against an offer from `other`: the smaller peer id
/// (by its byte encoding) offers. Both sides reach the same answer; every glare decision (the
/// handler's on one connection, the policy's across connections and between two direct
/// connections) goes through here. It is part of the protocol: both peers must
/// compute the same answer.
pub(crate) fn offer_wins(offerer: &PeerId, other: &PeerId) -> bool {
    offerer.to_bytes() < other.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip() {
        for signal in [
            Signal::Offer("v=0".into()),
            Signal::Answer("v=0".into()),
            Signal::Candidate(Some("{\"candidate\":\"candidate:1\"}".into())),
            Signal::Candidate(None),
        ] {
            let msg = signal.clone().into_message();
            assert_eq!(Signal::from_message(msg).unwrap(), signal);
        }
    }

    #[test]
    fn candidate_data_is_always_json() {
        // What js-libp2p does with it: `JSON.parse(message.data ?? 'null')`.
        for signal in [
            Signal::Candidate(Some("{\"candidate\":\"candidate:1\"}".into())),
            Signal::Candidate(None),
        ] {
            let data = signal.into_message().data.unwrap_or_default();
            assert!(
                serde_json::from_str::<serde_json::Value>(&data).is_ok(),
                "{data:?}"
            );
        }
    }

    #[test]
    fn end_of_candidates_in_every_form() {
        for data in [None, Some(String::new()), Some("null".to_owned())] {
            let msg = Message {
                r#type: Some(Type::IceCandidate as i32),
                data,
            };
            assert_eq!(Signal::from_message(msg).unwrap(), Signal::Candidate(None));
        }
    }

    #[test]
    fn malformed_messages_are_protocol_errors() {
        let cases = [
            Message {
                r#type: None,
                data: Some("x".into()),
            },
            Message {
                r#type: Some(7),
                data: Some("x".into()),
            },
            Message {
                r#type: Some(Type::SdpOffer as i32),
                data: None,
            },
            Message {
                r#type: Some(Type::SdpAnswer as i32),
                data: None,
            },
        ];
        for msg in cases {
            assert!(matches!(Signal::from_message(msg), Err(Error::Protocol(_))));
        }
    }
}
