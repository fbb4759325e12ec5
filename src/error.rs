//! Errors of WebRTC session setup and of established connections.

/// Why a WebRTC session could not be set up or a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The WebRTC stack reported an error.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// The remote SDP could not be used.
    #[error("invalid remote SDP: {0}")]
    InvalidSdp(String),
    /// A remote ICE candidate could not be parsed.
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
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
    #[error("signaling stream: {0}")]
    Signaling(String),
    /// The remote broke the signaling protocol (unexpected, malformed or oversized message).
    #[error("signaling protocol violation: {0}")]
    Protocol(String),
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
    /// The Swarm refused the direct connection (another behaviour denied it).
    #[error("the direct connection was refused: {0}")]
    Denied(String),
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}
