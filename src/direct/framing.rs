//! Message framing on data channels (libp2p WebRTC spec, "Multiplexing").
//!
//! Every data channel message carries one or more frames: a varint length prefix followed by
//! a protobuf `webrtc.pb.Message`. Pure code, no I/O: [`encode`] builds frames and
//! [`FrameDecoder`] splits received bytes back into frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::generated::webrtc_pb::{message::Flag as PbFlag, Message as PbMessage};

/// Largest frame the libp2p WebRTC spec allows, length prefix included.
pub const MAX_FRAME_SIZE: usize = 16 * 1024;

/// Smallest frame size a [`crate::Config`] accepts: a frame must carry at least a few bytes.
pub const MIN_FRAME_SIZE: usize = 64;

/// A flag carried by a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// The sender will send no more data.
    Fin,
    /// The sender will read no more data.
    StopSending,
    /// The sender abruptly ends its sending side.
    ResetStream,
    /// Acknowledges a received `Fin`.
    FinAck,
}

impl Flag {
    fn to_pb(self) -> PbFlag {
        match self {
            Flag::Fin => PbFlag::Fin,
            Flag::StopSending => PbFlag::StopSending,
            Flag::ResetStream => PbFlag::ResetStream,
            Flag::FinAck => PbFlag::FinAck,
        }
    }

    fn from_pb(value: i32) -> Option<Self> {
        match PbFlag::try_from(value).ok()? {
            PbFlag::Fin => Some(Flag::Fin),
            PbFlag::StopSending => Some(Flag::StopSending),
            PbFlag::ResetStream => Some(Flag::ResetStream),
            PbFlag::FinAck => Some(Flag::FinAck),
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The flag, if any (an unknown flag value is reported as `None`).
    pub flag: Option<Flag>,
    /// The payload (possibly empty).
    pub data: Bytes,
}

/// Why received bytes could not be decoded into frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces a frame larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced frame length, prefix included.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("invalid frame length prefix")]
    InvalidLength,
    /// The frame body is not a valid `webrtc.pb.Message`.
    #[error("invalid frame protobuf: {0}")]
    InvalidProtobuf(String),
}

fn varint_len(value: usize) -> usize {
    prost::length_delimiter_len(value)
}

/// Encoded size of a frame carrying `payload` bytes and an optional flag, prefix included.
pub fn encoded_len(flag: Option<Flag>, payload: usize) -> usize {
    let body = body_len(flag, payload);
    varint_len(body) + body
}

/// Whether a frame carries its payload field: a flag alone omits an empty one.
fn carries_data(flag: Option<Flag>, payload: usize) -> bool {
    payload > 0 || flag.is_none()
}

/// A frame's length without its length prefix.
fn body_len(flag: Option<Flag>, payload: usize) -> usize {
    let flag_len = if flag.is_some() { 2 } else { 0 };
    let data_len = if carries_data(flag, payload) {
        1 + varint_len(payload) + payload
    } else {
        0
    };
    flag_len + data_len
}

/// The largest payload whose data frame (no flag) fits in `max_frame_size`, prefix included.
pub fn max_payload(max_frame_size: usize) -> usize {
    // Start from an upper bound and step down: at most a few iterations, since the varints
    // involved are at most three bytes for any frame size we allow.
    let mut payload = max_frame_size.saturating_sub(2);
    while payload > 0 && encoded_len(None, payload) > max_frame_size {
        payload -= 1;
    }
    payload
}

/// Encodes one frame, length prefix included.
///
/// Written field by field, as `prost` would encode a `webrtc.pb.Message` (field 1 the flag,
/// field 2 the payload; `encode_matches_prost` checks it byte for byte), so the payload is
/// copied once, into the frame: building the message first copied it into a `Bytes` too,
/// about 5% of the CPU of a bulk transfer.
pub fn encode(flag: Option<Flag>, data: &[u8]) -> BytesMut {
    let body = body_len(flag, data.len());
    let mut buf = BytesMut::with_capacity(varint_len(body) + body);
    prost::encoding::encode_varint(body as u64, &mut buf);
    if let Some(flag) = flag {
        // Field 1, varint; the flag values are 0..=3, one byte.
        buf.put_u8(0x08);
        prost::encoding::encode_varint(flag.to_pb() as u64, &mut buf);
    }
    if carries_data(flag, data.len()) {
        // Field 2, length-delimited.
        buf.put_u8(0x12);
        prost::encoding::encode_varint(data.len() as u64, &mut buf);
        buf.extend_from_slice(data);
    }
    buf
}

/// Accumulates received bytes and yields complete frames.
///
/// A frame may span data channel messages, and one message may hold several frames; both are
/// accepted. Memory is bounded by `max_frame_size` plus one received message. After a
/// malformed frame nothing more can be framed: the decoder keeps failing quietly, discarding
/// whatever arrives.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_size: usize,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder that rejects frames over `max_frame_size` bytes (prefix included).
    pub fn new(max_frame_size: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_size,
            failed: false,
        }
    }

    /// Adds received bytes (discarded once a malformed frame was found).
    pub fn push(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Whether a malformed frame was found.
    #[cfg(test)]
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Bytes received but not yet decoded into a frame.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. The first malformed
    /// frame is an error; from then on there is nothing more (`Ok(None)`).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Ok(None);
        }
        let frame = self.decode();
        if frame.is_err() {
            self.failed = true;
            self.buf = BytesMut::new();
        }
        frame
    }

    fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut peek = &self.buf[..];
        let len = match prost::decode_length_delimiter(&mut peek) {
            Ok(len) => len,
            // Up to 10 bytes make a varint; fewer may simply be incomplete.
            Err(_) if self.buf.len() < 10 && self.buf.iter().all(|b| b & 0x80 != 0) => {
                return Ok(None);
            }
            Err(_) => return Err(FrameError::InvalidLength),
        };
        let prefix = self.buf.len() - peek.len();
        let total = prefix.saturating_add(len);
        if total > self.max_frame_size {
            return Err(FrameError::TooLarge {
                len: total,
                max: self.max_frame_size,
            });
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        self.buf.advance(prefix);
        let body = self.buf.split_to(len).freeze();
        let msg =
            PbMessage::decode(body).map_err(|e| FrameError::InvalidProtobuf(e.to_string()))?;
        Ok(Some(Frame {
            flag: msg.flag.and_then(Flag::from_pb),
            data: msg.message.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `encode` writes what prost writes for the same `webrtc.pb.Message`.
    #[test]
    fn encode_matches_prost() {
        let flags = [
            None,
            Some(Flag::Fin),
            Some(Flag::StopSending),
            Some(Flag::ResetStream),
            Some(Flag::FinAck),
        ];
        for flag in flags {
            for len in [0, 1, 127, 128, 16383, 16384, MAX_FRAME_SIZE] {
                let data = vec![0x5a; len];
                let msg = PbMessage {
                    flag: flag.map(|f| f.to_pb() as i32),
                    message: (!(data.is_empty() && flag.is_some()))
                        .then(|| Bytes::copy_from_slice(&data)),
                };
                let mut want = BytesMut::new();
                msg.encode_length_delimited(&mut want).unwrap();
                let got = encode(flag, &data);
                assert_eq!(got, want, "{flag:?}, {len} bytes");
                assert_eq!(got.len(), encoded_len(flag, len));
            }
        }
    }

    #[test]
    fn max_payload_fills_frame_exactly() {
        for max in [MIN_FRAME_SIZE, 127, 128, 129, 1000, 16383, MAX_FRAME_SIZE] {
            let p = max_payload(max);
            assert!(encoded_len(None, p) <= max, "max={max}");
            assert!(encoded_len(None, p + 1) > max, "max={max}");
            assert_eq!(encode(None, &vec![7u8; p]).len(), encoded_len(None, p));
        }
        assert_eq!(
            encode(None, &vec![0u8; max_payload(MAX_FRAME_SIZE)]).len(),
            MAX_FRAME_SIZE
        );
    }

    #[test]
    fn round_trip_data_and_flags() {
        let mut dec = FrameDecoder::new(MAX_FRAME_SIZE);
        dec.push(&encode(None, b"hello"));
        dec.push(&encode(Some(Flag::Fin), b""));
        dec.push(&encode(Some(Flag::FinAck), b""));
        dec.push(&encode(Some(Flag::ResetStream), b""));
        dec.push(&encode(Some(Flag::StopSending), b""));
        dec.push(&encode(None, b""));
        let frames: Vec<_> = std::iter::from_fn(|| dec.next_frame().unwrap()).collect();
        let flags: Vec<_> = frames.iter().map(|f| f.flag).collect();
        assert_eq!(
            flags,
            [
                None,
                Some(Flag::Fin),
                Some(Flag::FinAck),
                Some(Flag::ResetStream),
                Some(Flag::StopSending),
                None
            ]
        );
        assert_eq!(&frames[0].data[..], b"hello");
        assert!(frames[5].data.is_empty());
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn frames_split_across_messages() {
        let frame = encode(None, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut dec = FrameDecoder::new(MAX_FRAME_SIZE);
        for byte in &frame[..frame.len() - 1] {
            dec.push(std::slice::from_ref(byte));
            assert_eq!(dec.next_frame(), Ok(None));
        }
        dec.push(&frame[frame.len() - 1..]);
        assert_eq!(dec.next_frame().unwrap().unwrap().data.len(), 8);
    }

    #[test]
    fn oversize_length_is_rejected_before_buffering() {
        let mut dec = FrameDecoder::new(MAX_FRAME_SIZE);
        let mut prefix = BytesMut::new();
        prost::encode_length_delimiter(1 << 20, &mut prefix).unwrap();
        dec.push(&prefix);
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn nothing_is_buffered_after_a_malformed_frame() {
        let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
        // A length prefix of 1 MiB: too large.
        d.push(&[0x80, 0x80, 0x40]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        for _ in 0..64 {
            d.push(&[0u8; 16 * 1024]);
            assert!(matches!(d.next_frame(), Ok(None)));
        }
        assert_eq!(d.buffered(), 0);
        assert!(d.has_failed());
    }

    #[test]
    fn garbage_is_rejected() {
        let mut dec = FrameDecoder::new(MAX_FRAME_SIZE);
        // Length 3, then a body with an invalid wire type (7).
        dec.push(&[3, 0x0f, 0xff, 0xff]);
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::InvalidProtobuf(_))
        ));
        let mut dec = FrameDecoder::new(MAX_FRAME_SIZE);
        dec.push(&[0xff; 11]);
        assert_eq!(dec.next_frame(), Err(FrameError::InvalidLength));
    }

    #[test]
    fn unknown_flag_is_none() {
        let msg = PbMessage {
            flag: Some(42),
            message: Some(Bytes::from_static(b"x")),
        };
        let mut dec = FrameDecoder::new(MAX_FRAME_SIZE);
        dec.push(&msg.encode_length_delimited_to_vec());
        let frame = dec.next_frame().unwrap().unwrap();
        assert_eq!(frame.flag, None);
        assert_eq!(&frame.data[..], b"x");
    }
}
