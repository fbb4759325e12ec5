//! Errors of WebRTC session setup and of established connections.

/// Why a WebRTC session could not be set up or a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The WebRTC stack reported an error (its error is the [`source`](std::error::Error::source)).
    #[error("webrtc")]
    WebRtc(#[source] WebRtcError),
    /// The remote SDP could not be used (the parser's error is the source).
    #[error("invalid remote SDP")]
    InvalidSdp(#[source] Cause),
    /// A remote ICE candidate could not be parsed.
    #[error("invalid ICE candidate")]
    InvalidCandidate(#[source] Cause),
    /// The remote sent more ICE candidates than the configured limit.
    #[error("too many remote ICE candidates (limit {0})")]
    TooManyCandidates(usize),
    /// The DTLS certificate the remote presented does not match the SDP's fingerprint.
    #[error("DTLS certificate fingerprint does not match the remote SDP")]
    FingerprintMismatch,
    /// The remote SDP carries no fingerprint this crate can verify.
    #[error("remote SDP has no sha-256 fingerprint")]
    NoFingerprint,
    /// ICE or DTLS failed; no direct path was found.
    #[error("WebRTC connection failed")]
    ConnectionFailed,
    /// The session or connection was closed.
    #[error("WebRTC connection closed")]
    Closed,
    /// A method was called in a state where it makes no sense (e.g. an answer without an offer).
    #[error("invalid session state: {0}")]
    InvalidState(&'static str),
    /// The signaling stream failed or ended before the upgrade completed.
    #[error("signaling stream")]
    Signaling(#[source] std::io::Error),
    /// The remote broke the signaling protocol (unexpected, malformed or oversized message).
    #[error("signaling protocol violation")]
    Protocol(#[source] ProtocolViolation),
    /// The upgrade did not complete within [`crate::Config::upgrade_timeout`].
    #[error("upgrade timed out")]
    Timeout,
    /// [`crate::Config::max_concurrent_upgrades`] upgrades were already running.
    #[error("too many concurrent upgrades")]
    TooManyUpgrades,
    /// The relayed connection carrying the signaling closed before the upgrade completed.
    #[error("the relayed connection closed during the upgrade")]
    RelayLost,
    /// The remote does not speak the signaling protocol.
    #[error("remote does not support WebRTC signaling")]
    Unsupported,
    /// The Swarm refused the direct connection (another behaviour denied it; the source
    /// has the Swarm's reason).
    #[error("the direct connection was refused")]
    Denied(#[source] Cause),
    /// The configuration is not usable (the source says which setting and why).
    #[error("invalid configuration")]
    InvalidConfig(#[source] Cause),
}

/// An opaque error type: `Display` is the wrapped error's message, `source` its source.
macro_rules! opaque_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(Box<dyn std::error::Error + Send + Sync>);

        impl $name {
            pub(crate) fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
                Self(e.into())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.0.source()
            }
        }
    };
}

opaque_error!(
    /// An error of the WebRTC stack (webrtc-rs), kept opaque so that this crate's API does
    /// not name webrtc-rs types. Its [`Display`](std::fmt::Display) is webrtc-rs's message.
    WebRtcError
);

opaque_error!(
    /// What was wrong, behind [`Error::InvalidSdp`], [`Error::InvalidCandidate`],
    /// [`Error::Denied`] and [`Error::InvalidConfig`]: a parser's error (then also its
    /// [`source`](std::error::Error::source)) or the rule that was broken. Its
    /// [`Display`](std::fmt::Display) is that message.
    Cause
);

/// How the remote broke the signaling protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// A message that the exchange does not allow where it came (a candidate before the
    /// offer, a second offer, an answer to the answerer).
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// A message without a field it needs, or of an unknown type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes that do not decode as a message, or a message over
    /// [`Config::max_signaling_message_size`](crate::Config::max_signaling_message_size).
    #[error("undecodable or oversized message")]
    Undecodable(#[source] std::io::Error),
    /// More exchanges of one kind than a limit allows (e.g. offers per
    /// [`Config::remote_offer_window`](crate::Config::remote_offer_window), restarts per
    /// relayed connection): refused.
    #[error("too many {what} (limit {limit})")]
    OverLimit {
        /// What was counted.
        what: &'static str,
        /// The limit.
        limit: u32,
    },
}

/// `e` and its sources, joined with `: ` (for logs and reports that show one line).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn causes_are_sources_not_strings() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large");
        let e = Error::Protocol(ProtocolViolation::Undecodable(io));
        let violation = e.source().expect("the violation");
        assert!(violation.is::<ProtocolViolation>());
        let io = violation.source().expect("the I/O error");
        assert_eq!(
            io.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::InvalidData)
        );
        assert_eq!(
            chain(&e),
            "signaling protocol violation: undecodable or oversized message: frame too large"
        );
        let e = Error::WebRtc(WebRtcError::new("ice agent closed"));
        assert_eq!(chain(&e), "webrtc: ice agent closed");
        // A parser's error stays reachable behind the cause.
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let e = Error::InvalidCandidate(Cause::new(json));
        let cause = e.source().expect("the cause");
        assert!(cause.is::<Cause>());
        assert!(chain(&e).starts_with("invalid ICE candidate: EOF while parsing"));
    }
}
