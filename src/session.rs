//! Setting up one WebRTC peer connection: offer/answer, trickled candidates, identity check.
//!
//! A [`Session`] knows nothing about how SDP and candidates travel: a signaling layer (this
//! crate's behaviour, or your own) calls its methods with what the remote sent and forwards
//! what [`Session::next_event`] yields. Once connected, [`Session::into_connection`] checks the
//! DTLS certificate against the remote SDP and returns a [`Connection`].

use std::collections::VecDeque;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::StreamExt;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::RTCIceTransportPolicy;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

use crate::candidate::{self, RemoteCandidate};
use crate::connection::Connection;
use crate::fingerprint::Fingerprint;
use crate::runtime::{BufferedRuntime, EarlyDtls};
use crate::{Config, Error};

/// Label of the data channel an offerer opens so that its offer has an application m-line
/// (js-libp2p does the same). It is never surfaced as a stream.
pub(crate) const INIT_CHANNEL_LABEL: &str = "init";

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

/// Events from the webrtc-rs driver, forwarded by [`Handler`].
pub(crate) enum DriverEvent {
    LocalCandidate(RTCIceCandidateInit),
    GatheringComplete,
    /// ICE found a working candidate pair, at this instant.
    IceConnected(std::time::Instant),
    State(RTCPeerConnectionState),
    DataChannel(Arc<dyn DataChannel>),
}

/// Forwards driver callbacks into a channel. Never blocks the driver.
struct Handler {
    tx: mpsc::UnboundedSender<DriverEvent>,
    /// Opened once ICE is connected (see [`EarlyDtls`]).
    early_dtls: Arc<EarlyDtls>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.tx.unbounded_send(DriverEvent::LocalCandidate(init));
            }
            Err(e) => tracing::debug!("skipping local candidate: {e}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.tx.unbounded_send(DriverEvent::GatheringComplete);
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if matches!(
            state,
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
        ) {
            self.early_dtls.open();
        }
        if state == RTCIceConnectionState::Connected {
            let now = std::time::Instant::now();
            let _ = self.tx.unbounded_send(DriverEvent::IceConnected(now));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            // Already open by now; never leave the gate shut on a working connection.
            self.early_dtls.open();
        }
        let _ = self.tx.unbounded_send(DriverEvent::State(state));
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        let _ = self
            .tx
            .unbounded_send(DriverEvent::DataChannel(data_channel));
    }
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
    pc: Arc<dyn PeerConnection>,
    events: mpsc::UnboundedReceiver<DriverEvent>,
    role: SdpRole,
    config: Config,
    init_channel: Option<Arc<dyn DataChannel>>,
    /// Remote candidates received before the remote description.
    pending_remote: Vec<RTCIceCandidateInit>,
    remote_description_set: bool,
    remote_candidates: usize,
    remote_fingerprints: Vec<Fingerprint>,
    /// `a=mid` and `a=ice-ufrag` of the local description, stamped on outgoing candidates.
    local_mid: Option<String>,
    local_ufrag: Option<String>,
    /// Data channels the remote opened before the connection was handed out.
    early_channels: VecDeque<Arc<dyn DataChannel>>,
    /// When ICE connected (a candidate pair works), before DTLS.
    ice_connected_at: Option<std::time::Instant>,
    connected: bool,
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

fn sdp_attribute(sdp: &str, name: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .map(|v| v.trim().to_owned())
}

impl Session {
    /// Creates the peer connection and binds its UDP sockets. Must run inside a tokio runtime.
    pub async fn new(config: &Config, role: SdpRole) -> Result<Self, Error> {
        config.validate()?;
        let ice_servers = config
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let policy = if config.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        };
        let rtc_config = RTCConfigurationBuilder::default()
            .with_ice_servers(ice_servers)
            .with_ice_transport_policy(policy)
            .build();
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(config.allow_loopback_candidates)
            .with_sctp_mtu(config.sctp_mtu)
            .with_sctp_max_receive_buffer_size(config.sctp_receive_window)
            .with_ice_connection_attempts(
                Some(config.ice_check_interval),
                Some(config.ice_max_binding_requests),
            )
            .with_ice_timeouts(
                Some(config.ice_disconnected_timeout),
                Some(config.ice_failed_timeout),
                Some(config.ice_keepalive_interval),
            )
            // Nominate the first working direct pair at once. `None` here would mean the
            // defaults (host 0, srflx 500 ms, prflx 1 s): a pair first seen as
            // peer-reflexive (the remote's check arriving before its candidate) would wait a
            // second. TURN-relayed pairs keep their default wait, so a direct pair wins.
            .with_host_acceptance_min_wait(Some(std::time::Duration::ZERO))
            .with_prflx_acceptance_min_wait(Some(std::time::Duration::ZERO))
            .with_srflx_acceptance_min_wait(Some(std::time::Duration::ZERO))
            .build();
        let early_dtls = Arc::new(EarlyDtls::new(config.early_dtls_records));
        let runtime = BufferedRuntime::tokio(config.udp_socket_buffer, early_dtls.clone())
            .ok_or_else(|| Error::InvalidConfig("no async runtime available".into()))?;
        let (tx, events) = mpsc::unbounded();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(rtc_config)
            .with_setting_engine(settings)
            .with_runtime(runtime)
            .with_handler(Arc::new(Handler { tx, early_dtls }))
            .with_udp_addrs(config.udp_bind_addrs.clone())
            .with_data_channel_send_buffer_limit(config.stream_send_buffer)
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let init_channel = match role {
            SdpRole::Offerer => Some(pc.create_data_channel(INIT_CHANNEL_LABEL, None).await?),
            SdpRole::Answerer => None,
        };
        Ok(Self {
            pc,
            events,
            role,
            config: config.clone(),
            init_channel,
            pending_remote: Vec::new(),
            remote_description_set: false,
            remote_candidates: 0,
            remote_fingerprints: Vec::new(),
            local_mid: None,
            local_ufrag: None,
            early_channels: VecDeque::new(),
            ice_connected_at: None,
            connected: false,
        })
    }

    /// The role this session was created with.
    pub fn role(&self) -> SdpRole {
        self.role
    }

    fn remember_local(&mut self, sdp: &str) {
        self.local_mid = sdp_attribute(sdp, "a=mid:");
        self.local_ufrag = sdp_attribute(sdp, "a=ice-ufrag:");
    }

    async fn set_remote(&mut self, desc: RTCSessionDescription) -> Result<(), Error> {
        let fingerprints = Fingerprint::from_sdp(&desc.sdp);
        if fingerprints.is_empty() {
            return Err(Error::NoFingerprint);
        }
        self.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| Error::InvalidSdp(e.to_string()))?;
        self.remote_fingerprints = fingerprints;
        self.remote_description_set = true;
        let pending = std::mem::take(&mut self.pending_remote);
        let added = !pending.is_empty();
        for init in pending {
            self.pc
                .add_ice_candidate(init)
                .await
                .map_err(|e| Error::InvalidCandidate(e.to_string()))?;
        }
        if added {
            self.wake_driver().await;
        }
        Ok(())
    }

    /// Offerer: creates the SDP offer and applies it locally. Returns the SDP text.
    pub async fn create_offer(&mut self) -> Result<String, Error> {
        if self.role != SdpRole::Offerer {
            return Err(Error::InvalidState("only the offerer creates an offer"));
        }
        let offer = self.pc.create_offer(None).await?;
        let sdp = offer.sdp.clone();
        self.pc.set_local_description(offer).await?;
        self.remember_local(&sdp);
        Ok(sdp)
    }

    /// Answerer: applies the remote offer, creates the answer and applies it locally.
    /// Returns the answer's SDP text.
    pub async fn accept_offer(&mut self, offer: &str) -> Result<String, Error> {
        if self.role != SdpRole::Answerer || self.remote_description_set {
            return Err(Error::InvalidState("unexpected offer"));
        }
        let desc = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|e| Error::InvalidSdp(e.to_string()))?;
        self.set_remote(desc).await?;
        let answer = self.pc.create_answer(None).await?;
        let sdp = answer.sdp.clone();
        self.pc.set_local_description(answer).await?;
        self.remember_local(&sdp);
        Ok(sdp)
    }

    /// Offerer: applies the remote answer.
    pub async fn accept_answer(&mut self, answer: &str) -> Result<(), Error> {
        if self.role != SdpRole::Offerer || self.remote_description_set || self.local_mid.is_none()
        {
            return Err(Error::InvalidState("unexpected answer"));
        }
        let desc = RTCSessionDescription::answer(answer.to_owned())
            .map_err(|e| Error::InvalidSdp(e.to_string()))?;
        self.set_remote(desc).await
    }

    /// Adds a remote candidate: the `data` of an `ICE_CANDIDATE` signaling message.
    ///
    /// Candidates that arrive before the remote description are buffered. End-of-candidates
    /// (`None`, `""`, `"null"`) and unusable candidates (mDNS `.local`, TCP) are accepted and
    /// ignored. More than [`Config::max_remote_candidates`] is an error.
    pub async fn add_remote_candidate(&mut self, data: Option<&str>) -> Result<(), Error> {
        let init = match candidate::parse(data)? {
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
            self.pc
                .add_ice_candidate(init)
                .await
                .map_err(|e| Error::InvalidCandidate(e.to_string()))?;
            // webrtc-rs 0.21.1 does not wake its driver for a new remote candidate: the first
            // check of the new pair waits for the agent's next timer, up to a second.
            self.wake_driver().await;
            Ok(())
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
                DriverEvent::LocalCandidate(mut init) => {
                    init.sdp_mid = self.local_mid.clone().or(init.sdp_mid);
                    init.username_fragment = self.local_ufrag.clone();
                    return Ok(SessionEvent::LocalCandidate(candidate::to_json(&init)));
                }
                DriverEvent::GatheringComplete => return Ok(SessionEvent::LocalCandidatesComplete),
                DriverEvent::State(RTCPeerConnectionState::Connected) => {
                    self.connected = true;
                    return Ok(SessionEvent::Connected);
                }
                DriverEvent::State(RTCPeerConnectionState::Failed) => {
                    return Err(Error::ConnectionFailed)
                }
                DriverEvent::State(RTCPeerConnectionState::Closed) => return Err(Error::Closed),
                DriverEvent::State(state) => tracing::trace!(?state, "peer connection state"),
                DriverEvent::DataChannel(dc) => self.early_channels.push_back(dc),
                DriverEvent::IceConnected(at) => {
                    self.ice_connected_at.get_or_insert(at);
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
    pub async fn into_connection(self) -> Result<Connection, Error> {
        if !self.connected {
            return Err(Error::InvalidState("not connected yet"));
        }
        let ready = async {
            self.verify_fingerprint().await?;
            self.wait_for_sctp().await
        };
        if let Err(e) = ready.await {
            let _ = self.pc.close().await;
            return Err(e);
        }
        // The init channel is closed by the answerer (the side that accepted it).
        Ok(Connection::new(
            self.pc,
            self.events,
            self.early_channels,
            self.init_channel,
            &self.config,
        ))
    }

    /// Waits until the SCTP association is established (bounded by
    /// [`Config::upgrade_timeout`]: SCTP retransmits a lost handshake packet after 1 s, then
    /// 2 s, ..., so a shorter bound would fail attempts on a lossy path that would have
    /// connected; the behaviour's attempt is bounded by the same timeout from its start).
    /// Connected is reported when DTLS is up; SCTP's
    /// handshake follows, and webrtc-rs 0.21.1 loses the open message of a data channel
    /// created while it runs (the channel never opens; streams stalled until replaced,
    /// ~2 s), so no stream is opened before.
    pub(crate) async fn wait_for_sctp(&self) -> Result<(), Error> {
        use rtc::peer_connection::transport::RTCSctpTransportState;
        let sctp = self
            .pc
            .sctp()
            .await
            .ok_or(Error::InvalidState("no SCTP transport"))?;
        let deadline = tokio::time::Instant::now() + self.config.upgrade_timeout;
        let mut pause = std::time::Duration::from_micros(250);
        let mut kicked = false;
        loop {
            let state = sctp.state().await?;
            // Not `Closed` as a failure: the accepting side's association reports it until
            // the COOKIE-ECHO arrives. A dead connection ends in the deadline.
            if state == RTCSctpTransportState::Connected {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            if !kicked {
                // webrtc-rs 0.21.1 queues the SCTP INIT when DTLS completes but sends it only
                // on the driver's next wake-up, up to 200 ms later.
                kicked = true;
                self.wake_driver().await;
            }
            // No event reports the association's state: poll, backing off to 10 ms.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(10));
        }
    }

    /// Makes the webrtc-rs driver run one loop iteration: it then flushes what its state
    /// machines queued and re-arms its timers. Re-applying the unchanged configuration is
    /// the one public call that does this without side effects (webrtc-rs 0.21.1).
    async fn wake_driver(&self) {
        let configuration = self.pc.get_configuration().await;
        if let Err(e) = self.pc.set_configuration(configuration).await {
            tracing::debug!("could not wake the WebRTC driver: {e}");
        }
    }

    async fn verify_fingerprint(&self) -> Result<(), Error> {
        let sctp = self
            .pc
            .sctp()
            .await
            .ok_or(Error::InvalidState("no SCTP transport"))?;
        let certs = sctp.transport().get_remote_certificates().await?;
        let cert = certs.first().ok_or(Error::FingerprintMismatch)?;
        let actual = Fingerprint::of_certificate(cert);
        if self.remote_fingerprints.contains(&actual) {
            Ok(())
        } else {
            Err(Error::FingerprintMismatch)
        }
    }

    /// When ICE found a working candidate pair (DTLS comes after), if it has.
    pub fn ice_connected_at(&self) -> Option<std::time::Instant> {
        self.ice_connected_at
    }

    /// Closes the peer connection.
    pub async fn close(self) {
        let _ = self.pc.close().await;
    }
}
