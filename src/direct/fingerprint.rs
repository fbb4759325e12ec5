//! DTLS certificate fingerprints: parsing `a=fingerprint` from SDP and hashing certificates.
//!
//! The SDP travels over the relayed connection, which Noise already authenticates, so a
//! matching certificate fingerprint proves the DTLS peer is the libp2p peer we signaled with.

use sha2::{Digest, Sha256};

/// A SHA-256 certificate fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_certificate(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Parses `AB:CD:...` (32 colon-separated hex bytes, any case).
    pub fn parse_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        let mut parts = s.trim().split(':');
        for byte in out.iter_mut() {
            let part = parts.next()?;
            // Exactly two hex digits (`from_str_radix` alone would take "+F").
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Fingerprint(out))
    }

    /// The sha-256 fingerprints announced by an SDP (session or media level).
    ///
    /// Other hash functions are ignored: every WebRTC stack announces sha-256.
    pub fn from_sdp(sdp: &str) -> Vec<Self> {
        sdp.lines()
            .filter_map(|line| line.trim().strip_prefix("a=fingerprint:"))
            .filter_map(|rest| {
                let (alg, value) = rest.split_once(' ')?;
                alg.eq_ignore_ascii_case("sha-256")
                    .then(|| Self::parse_hex(value))
                    .flatten()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sdp_fingerprint() {
        let hex = (0..32)
            .map(|i| format!("{i:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let sdp = format!("v=0\r\na=fingerprint:sha-256 {hex}\r\na=fingerprint:sha-1 00:11\r\n");
        let fps = Fingerprint::from_sdp(&sdp);
        assert_eq!(fps.len(), 1);
        assert_eq!(fps[0].0[31], 31);
        assert_eq!(Fingerprint::from_sdp(&sdp.to_lowercase()), fps);
    }

    #[test]
    fn rejects_malformed_hex() {
        assert!(Fingerprint::parse_hex("00:11").is_none());
        assert!(Fingerprint::parse_hex(&["0"; 32].join(":")).is_none());
        assert!(Fingerprint::parse_hex(&["GG"; 32].join(":")).is_none());
        assert!(Fingerprint::parse_hex(&["00"; 33].join(":")).is_none());
        assert!(Fingerprint::parse_hex(&["00"; 32].join(":")).is_some());
    }

    #[test]
    fn certificate_hash() {
        let fp = Fingerprint::of_certificate(b"abc");
        assert_eq!(fp.0[0], 0xba);
        assert_eq!(fp.0[31], 0xad);
    }
}
