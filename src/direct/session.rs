//! Setting up one WebRTC peer connection: offer/answer, trickled candidates, identity check.
//!
//! A [`Session`] knows nothing about how SDP and candidates travel: a signaling layer (this
//! crate's behaviour, or your own) calls its methods with what the remote sent and forwards
//! what [`Session::next_event`] yields. Once connected, [`Session::into_connection`] checks the
//! DTLS certificate against the remote SDP and returns a [`Connection`].

use std::collections::VecDeque;

use futures::channel::mpsc;
use futures::StreamExt;

use super::candidate::{self, RemoteCandidate};
use super::connection::Connection;
use super::fingerprint::Fingerprint;
use crate::rtc::{CandidateInit, Channel, Peer, PeerEvent, PeerState};
use crate::{Config, Error};

/// Which side of the SDP exchange a session is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpRole {
    /// Creates the offer (by convention the outbound side of the relayed connection).
    Offerer,
    /// Answers the remote's offer.
    Answerer,
}

/// What a [`Session`] asks its signaling layer to do, or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A local candidate to send to the remote: the JSON of an `RTCIceCandidateInit`.
    LocalCandidate(String),
    /// Local gathering finished: send end-of-candidates.
    LocalCandidatesComplete,
    /// ICE and DTLS are connected: call [`Session::into_connection`].
    Connected,
}

/// One WebRTC peer connection being set up.
///
/// ```no_run
/// # async fn run() -> Result<(), libp2p_webrtc_signal::Error> {
/// use libp2p_webrtc_signal::{Config, SdpRole, Session, SessionEvent};
///
/// let config = Config::default();
/// let mut offerer = Session::new(&config, SdpRole::Offerer).await?;
/// let mut answerer = Session::new(&config, SdpRole::Answerer).await?;
/// let offer = offerer.create_offer().await?;
/// let answer = answerer.accept_offer(&offer).await?;
/// offerer.accept_answer(&answer).await?;
/// // ... forward SessionEvent::LocalCandidate from each side to the other with
/// // `add_remote_candidate`, until both report SessionEvent::Connected ...
/// let connection = offerer.into_connection().await?;
/// # let _ = connection; Ok(()) }
/// ```
pub struct Session {
    peer: Peer,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    role: SdpRole,
    config: Config,
    init_channel: Option<Channel>,
    /// Remote candidates received before the remote description.
    pending_remote: Vec<CandidateInit>,
    remote_description_set: bool,
    remote_candidates: usize,
    remote_fingerprints: Vec<Fingerprint>,
    /// `a=mid` and `a=ice-ufrag` of the local description, stamped on outgoing candidates.
    local_mid: Option<String>,
    local_ufrag: Option<String>,
    /// Data channels the remote opened before the connection was handed out.
    early_channels: VecDeque<Channel>,
    /// When ICE connected (a candidate pair works), before DTLS.
    ice_connected_at: Option<std::time::Instant>,
    connected: bool,
    /// An ICE restart of a connected peer connection (see [`Session::restart`]).
    restart: bool,
    /// Local candidates already reported: gathering that started before the answer (see
    /// [`Session::gather_early`]) may report a candidate, or the end of them, twice.
    reported: std::collections::HashSet<String>,
    gathering_reported: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("remote_candidates", &self.remote_candidates)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

/// `sdp` without its candidate and end-of-candidates lines. Candidates always travel trickled,
/// each once ([`Session::next_event`]): webrtc-rs writes those it gathered before the
/// description into it too (with [`Session::gather_early`], all of them), including a
/// component 2 copy of each, and js-libp2p in Node.js (libdatachannel) then failed to apply
/// the answer now and then ("Failed to set remoteDescription").
fn strip_candidates(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let attr = line.trim_end();
        if attr.starts_with("a=candidate:") || attr == "a=end-of-candidates" {
            continue;
        }
        out.push_str(line);
    }
    out
}

fn sdp_attribute(sdp: &str, name: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .map(|v| v.trim().to_owned())
}

impl Session {
    /// Creates the peer connection and binds its UDP sockets. Must run inside a tokio runtime.
    pub async fn new(config: &Config, role: SdpRole) -> Result<Self, Error> {
        config.validate()?;
        let (peer, events, init_channel) = Peer::new(config, role == SdpRole::Offerer).await?;
        let mut session = Self::with(peer, events, role, config, false);
        session.init_channel = init_channel;
        Ok(session)
    }

    /// An ICE restart of `peer`, a connected peer connection, driven through the same
    /// exchange as a new session: the offerer's offer and the answer carry new ICE
    /// credentials, both sides gather and trickle candidates again, and
    /// [`SessionEvent::Connected`] comes when ICE has a working pair again. DTLS, SCTP and the
    /// streams carry on over it. Both descriptions must carry the fingerprint of the
    /// certificate the remote already presented.
    pub(crate) fn restart(peer: Peer, role: SdpRole, config: &Config) -> Self {
        let events = peer.observe();
        Self::with(peer, events, role, config, true)
    }

    fn with(
        peer: Peer,
        events: mpsc::UnboundedReceiver<PeerEvent>,
        role: SdpRole,
        config: &Config,
        restart: bool,
    ) -> Self {
        Self {
            peer,
            events,
            role,
            config: config.clone(),
            init_channel: None,
            pending_remote: Vec::new(),
            remote_description_set: false,
            remote_candidates: 0,
            remote_fingerprints: Vec::new(),
            local_mid: None,
            local_ufrag: None,
            early_channels: VecDeque::new(),
            ice_connected_at: None,
            connected: false,
            restart,
            reported: std::collections::HashSet::new(),
            gathering_reported: false,
        }
    }

    /// Answerer: starts gathering candidates before the offer arrives, so that the
    /// server-reflexive (and relayed) candidates follow the answer at once instead of one
    /// STUN (or TURN) round trip after it. The behaviour calls it when the signaling stream
    /// is negotiated, a relayed round trip before the offer arrives. Does nothing for an
    /// offerer or a restart, or once the offer is applied.
    ///
    /// The candidates gathered are reported by [`Session::next_event`] once each, right
    /// after the answer is made, as they would be without it (descriptions never carry
    /// candidates).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), libp2p_webrtc_signal::Error> {
    /// use libp2p_webrtc_signal::{Config, SdpRole, Session};
    /// let mut answerer = Session::new(&Config::default(), SdpRole::Answerer).await?;
    /// answerer.gather_early().await?;
    /// // ... the offer arrives over signaling ...
    /// # let offer = String::new();
    /// let answer = answerer.accept_offer(&offer).await?;
    /// # Ok(()) }
    /// ```
    pub async fn gather_early(&mut self) -> Result<(), Error> {
        if self.role != SdpRole::Answerer || self.restart || self.remote_description_set {
            return Ok(());
        }
        // webrtc-rs starts gathering on `set_local_description` or on an ICE restart; before
        // any description, the restart only stages new credentials for a later offer (which
        // an answerer never makes without restarting again), and gathers.
        self.peer.restart_ice().await
    }

    /// The role this session was created with.
    pub fn role(&self) -> SdpRole {
        self.role
    }

    /// A new session's description without candidates ([`strip_candidates`]). A
    /// restart's keeps them: the peer connection keeps the candidates it gathered before, and
    /// announces none of them again, so its descriptions are where the remote learns them.
    fn without_candidates(&self, sdp: String) -> String {
        if self.restart {
            sdp
        } else {
            strip_candidates(&sdp)
        }
    }

    fn remember_local(&mut self, sdp: &str) {
        tracing::trace!(role = ?self.role, %sdp, "local description");
        self.local_mid = sdp_attribute(sdp, "a=mid:");
        self.local_ufrag = sdp_attribute(sdp, "a=ice-ufrag:");
    }

    async fn set_remote(&mut self, sdp: &str, offer: bool) -> Result<(), Error> {
        let fingerprints = Fingerprint::from_sdp(sdp);
        if fingerprints.is_empty() {
            return Err(Error::NoFingerprint);
        }
        if self.restart {
            // The same remote, with the certificate it presented on this connection.
            self.certificate_in(&fingerprints).await?;
        }
        self.peer.set_remote(sdp, offer).await?;
        self.remote_fingerprints = fingerprints;
        self.remote_description_set = true;
        let pending = std::mem::take(&mut self.pending_remote);
        self.peer.add_candidates(pending).await
    }

    /// Offerer: creates the SDP offer and applies it locally. Returns the SDP text.
    pub async fn create_offer(&mut self) -> Result<String, Error> {
        if self.role != SdpRole::Offerer || self.local_mid.is_some() {
            return Err(Error::InvalidState(
                "only the offerer creates an offer, once",
            ));
        }
        if self.restart {
            self.peer.restart_ice().await?;
        }
        let sdp = self.without_candidates(self.peer.create_offer().await?);
        self.remember_local(&sdp);
        Ok(sdp)
    }

    /// Answerer: applies the remote offer, creates the answer and applies it locally.
    /// Returns the answer's SDP text.
    pub async fn accept_offer(&mut self, offer: &str) -> Result<String, Error> {
        if self.role != SdpRole::Answerer || self.remote_description_set {
            return Err(Error::InvalidState("unexpected offer"));
        }
        self.set_remote(offer, true).await?;
        let sdp = self.without_candidates(self.peer.create_answer().await?);
        self.remember_local(&sdp);
        Ok(sdp)
    }

    /// Offerer: applies the remote answer.
    pub async fn accept_answer(&mut self, answer: &str) -> Result<(), Error> {
        if self.role != SdpRole::Offerer || self.remote_description_set || self.local_mid.is_none()
        {
            return Err(Error::InvalidState("unexpected answer"));
        }
        self.set_remote(answer, false).await
    }

    /// Adds a remote candidate: the `data` of an `ICE_CANDIDATE` signaling message.
    ///
    /// Candidates that arrive before the remote description are buffered. End-of-candidates
    /// (`None`, `""`, `"null"`) and unusable candidates (mDNS `.local`, TCP) are accepted and
    /// ignored. More than [`Config::max_remote_candidates`] is an error.
    pub async fn add_remote_candidate(&mut self, data: Option<&str>) -> Result<(), Error> {
        let init = match candidate::parse(data, self.config.allow_loopback_candidates)? {
            RemoteCandidate::EndOfCandidates => return Ok(()),
            RemoteCandidate::Skipped(why) => {
                self.count_remote_candidate()?;
                tracing::debug!(?data, "skipping remote candidate: {why}");
                return Ok(());
            }
            RemoteCandidate::Candidate(init) => init,
        };
        self.count_remote_candidate()?;
        if self.remote_description_set {
            self.peer.add_candidates([init]).await
        } else {
            self.pending_remote.push(init);
            Ok(())
        }
    }

    fn count_remote_candidate(&mut self) -> Result<(), Error> {
        if self.remote_candidates >= self.config.max_remote_candidates {
            return Err(Error::TooManyCandidates(self.config.max_remote_candidates));
        }
        self.remote_candidates += 1;
        Ok(())
    }

    /// The next thing to forward to the remote, or `Connected`.
    ///
    /// Errors with [`Error::ConnectionFailed`] when ICE/DTLS fails and [`Error::Closed`] when
    /// the peer connection closes. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<SessionEvent, Error> {
        loop {
            let event = self.events.next().await.ok_or(Error::Closed)?;
            match event {
                PeerEvent::LocalCandidate(mut init) => {
                    if !self.reported.insert(init.candidate.clone()) {
                        continue;
                    }
                    init.sdp_mid = self.local_mid.clone().or(init.sdp_mid);
                    init.username_fragment = self.local_ufrag.clone();
                    return Ok(SessionEvent::LocalCandidate(candidate::to_json(&init)));
                }
                PeerEvent::GatheringComplete => {
                    if std::mem::replace(&mut self.gathering_reported, true) {
                        continue;
                    }
                    return Ok(SessionEvent::LocalCandidatesComplete);
                }
                // A restart is done when ICE works again; the rest is connected already.
                PeerEvent::State(PeerState::Connected) if !self.restart => {
                    self.connected = true;
                    return Ok(SessionEvent::Connected);
                }
                PeerEvent::State(PeerState::Failed) => return Err(Error::ConnectionFailed),
                PeerEvent::State(PeerState::Closed) => return Err(Error::Closed),
                PeerEvent::State(_) => {}
                PeerEvent::Channel(channel) => self.early_channels.push_back(channel),
                PeerEvent::IceConnected(at) => {
                    self.ice_connected_at.get_or_insert(at);
                    if self.restart && self.remote_description_set {
                        self.connected = true;
                        return Ok(SessionEvent::Connected);
                    }
                }
            }
        }
    }

    /// Verifies the remote's DTLS certificate against the remote SDP's fingerprint and turns
    /// the connected session into a [`Connection`].
    ///
    /// Fails with [`Error::InvalidState`] before [`SessionEvent::Connected`], and with
    /// [`Error::FingerprintMismatch`] if the certificate does not match, and with
    /// [`Error::Timeout`] if the SCTP association is not up within [`Config::upgrade_timeout`]
    /// (the peer connection is closed then).
    ///
    /// The SCTP bound is the whole upgrade timeout: SCTP retransmits a lost handshake packet
    /// after 1 s, then 2 s, ..., so a shorter bound would fail attempts on a lossy path that
    /// would have connected (the behaviour's attempt is bounded by the same timeout from its
    /// start).
    pub async fn into_connection(self) -> Result<Connection, Error> {
        if !self.connected {
            return Err(Error::InvalidState("not connected yet"));
        }
        if self.restart {
            return Err(Error::InvalidState("a restart keeps its connection"));
        }
        self.verify_fingerprint().await?;
        let deadline = tokio::time::Instant::now() + self.config.upgrade_timeout;
        self.peer.wait_for_sctp(deadline).await?;
        let path = self.peer.selected_path().await;
        if path.is_none() {
            tracing::debug!("webrtc-rs reports no selected candidate pair");
        }
        // From here the connection owns the peer connection and closes it.
        Ok(Connection::new(
            self.peer,
            self.events,
            self.early_channels,
            self.init_channel,
            path,
            &self.config,
        ))
    }

    async fn verify_fingerprint(&self) -> Result<(), Error> {
        self.certificate_in(&self.remote_fingerprints).await
    }

    /// Whether the certificate the remote presented in DTLS has one of `fingerprints`.
    async fn certificate_in(&self, fingerprints: &[Fingerprint]) -> Result<(), Error> {
        let cert = self
            .peer
            .remote_certificate()
            .await?
            .ok_or(Error::FingerprintMismatch)?;
        if fingerprints.contains(&Fingerprint::of_certificate(&cert)) {
            Ok(())
        } else {
            Err(Error::FingerprintMismatch)
        }
    }

    /// When ICE found a working candidate pair (DTLS comes after), if it has.
    pub fn ice_connected_at(&self) -> Option<std::time::Instant> {
        self.ice_connected_at
    }

    /// Closes the peer connection and waits until it is closed. Dropping a session closes it
    /// too, in the background (webrtc-rs would otherwise keep its driver task and sockets).
    pub async fn close(self) {
        self.peer.close().await;
    }
}
