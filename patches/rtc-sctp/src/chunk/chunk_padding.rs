//! Patch: the PAD chunk (RFC 4820), which fills a path MTU probe to the size under test
//! (`association::pmtu`).

use super::{chunk_header::*, chunk_type::*, *};

/// A PAD chunk: `len` zero bytes that the receiver skips (type 0x84: its two high bits say
/// "skip this chunk and continue", RFC 9260 3.2, so a receiver that does not know it skips
/// it too).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Type = 0x84   |   Flags=0     |             Length            |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// \                         Padding Data                          /
/// /                                                               \
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkPadding {
    pub(crate) len: usize,
}

impl fmt::Display for ChunkPadding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.header())
    }
}

impl Chunk for ChunkPadding {
    fn header(&self) -> ChunkHeader {
        ChunkHeader {
            typ: CT_PAD,
            flags: 0,
            value_length: self.len as u16,
        }
    }

    fn unmarshal(raw: &Bytes) -> Result<Self> {
        let header = ChunkHeader::unmarshal(raw)?;
        if header.typ != CT_PAD {
            return Err(Error::ErrUnmarshalUnknownChunkType);
        }
        Ok(ChunkPadding {
            len: header.value_length(),
        })
    }

    fn marshal_to(&self, buf: &mut BytesMut) -> Result<usize> {
        self.header().marshal_to(buf)?;
        buf.put_bytes(0, self.len);
        Ok(buf.len())
    }

    fn check(&self) -> Result<()> {
        if CHUNK_HEADER_SIZE + self.len > u16::MAX as usize {
            return Err(Error::ErrChunkHeaderInvalidLength);
        }
        Ok(())
    }

    fn value_length(&self) -> usize {
        self.len
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
