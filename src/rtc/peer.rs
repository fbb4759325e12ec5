//! One webrtc-rs peer connection behind plain methods: [`Peer`], and what its driver reports,
//! [`PeerEvent`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::RTCIceTransportPolicy;
use rtc::peer_connection::transport::{
    RTCIceCandidate, RTCIceCandidateType, RTCSctpTransportState,
};
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceConnectionState, RTCIceGatheringState, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

use super::socket::{BufferedRuntime, EarlyDtls};
use super::{CandidateInit, Channel, INIT_CHANNEL_LABEL};
use crate::direct::path::{CandidateKind, DirectPath};
use crate::{Cause, Config, Error};

/// A new peer connection: the [`Peer`], its events, and the offerer's `init` channel.
pub(crate) type NewPeer = (Peer, mpsc::UnboundedReceiver<PeerEvent>, Option<Channel>);

/// What the peer connection's driver reports, in order.
pub(crate) enum PeerEvent {
    /// A local candidate was gathered.
    LocalCandidate(CandidateInit),
    /// Local gathering finished.
    GatheringComplete,
    /// ICE found a working candidate pair, at this instant (DTLS follows).
    IceConnected(Instant),
    /// The connection state changed.
    State(PeerState),
    /// The remote opened a data channel.
    Channel(Channel),
}

/// The peer connection states this crate acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// ICE and DTLS are connected.
    Connected,
    /// Nothing arrived on the selected path for `Config::ice_disconnected_timeout`: the path
    /// may be gone, or may come back.
    Disconnected,
    /// ICE or DTLS failed (also after consent was lost on a connected path).
    Failed,
    /// Closed by either side.
    Closed,
    /// Any other state (new, connecting): logged only.
    Other,
}

impl PeerEvent {
    /// A copy for an observer (see [`Peer::observe`]); channels are not copied.
    fn observed(&self) -> Option<PeerEvent> {
        Some(match self {
            PeerEvent::LocalCandidate(c) => PeerEvent::LocalCandidate(c.clone()),
            PeerEvent::GatheringComplete => PeerEvent::GatheringComplete,
            PeerEvent::IceConnected(at) => PeerEvent::IceConnected(*at),
            PeerEvent::State(s) => PeerEvent::State(*s),
            PeerEvent::Channel(_) => return None,
        })
    }
}

/// Where the driver's events go besides the main channel (see [`Peer::observe`]).
type Observers = Arc<Mutex<Vec<mpsc::UnboundedSender<PeerEvent>>>>;

/// Forwards driver callbacks into a channel; never blocks the driver.
struct Callbacks {
    tx: mpsc::UnboundedSender<PeerEvent>,
    observers: Observers,
    /// Opened once ICE is connected (see [`EarlyDtls`]).
    early_dtls: Arc<EarlyDtls>,
}

impl Callbacks {
    fn send(&self, event: PeerEvent) {
        if let Ok(mut observers) = self.observers.lock() {
            // Observers whose receiver is gone are dropped here.
            observers.retain(|o| match event.observed() {
                Some(copy) => o.unbounded_send(copy).is_ok(),
                None => !o.is_closed(),
            });
        }
        let _ = self.tx.unbounded_send(event);
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Callbacks {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.send(PeerEvent::LocalCandidate(init)),
            Err(e) => tracing::debug!("skipping local candidate: {e}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.send(PeerEvent::GatheringComplete);
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
            self.send(PeerEvent::IceConnected(Instant::now()));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let state = match state {
            RTCPeerConnectionState::Connected => {
                // Already open by now; never leave the gate shut on a working connection.
                self.early_dtls.open();
                PeerState::Connected
            }
            RTCPeerConnectionState::Disconnected => PeerState::Disconnected,
            RTCPeerConnectionState::Failed => PeerState::Failed,
            RTCPeerConnectionState::Closed => PeerState::Closed,
            other => {
                tracing::trace!(state = ?other, "peer connection state");
                PeerState::Other
            }
        };
        self.send(PeerEvent::State(state));
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        self.send(PeerEvent::Channel(Channel::new(data_channel)));
    }
}

/// Owns the peer connection: when the last [`Peer`] clone goes, it is closed (workaround 8
/// in [`super`]: webrtc-rs would keep its driver task and sockets).
struct Owner {
    pc: Arc<dyn PeerConnection>,
    observers: Observers,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let pc = self.pc.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = pc.close().await {
                        tracing::debug!("closing a dropped peer connection failed: {e}");
                    }
                });
            }
            Err(_) => tracing::debug!("peer connection dropped outside a tokio runtime"),
        }
    }
}

/// A webrtc-rs peer connection. Cheap to clone; all clones are the same connection, which is
/// closed when the last clone is dropped (or earlier, by [`Peer::close`]).
#[derive(Clone)]
pub(crate) struct Peer {
    /// The last clone's drop closes the peer connection.
    owner: Arc<Owner>,
}

/// A [`Peer`] that does not keep the peer connection open: [`WeakPeer::upgrade`] gives it back
/// while some [`Peer`] clone lives.
#[derive(Clone)]
pub(crate) struct WeakPeer(std::sync::Weak<Owner>);

impl WeakPeer {
    pub(crate) fn upgrade(&self) -> Option<Peer> {
        self.0.upgrade().map(|owner| Peer { owner })
    }

    /// Whether some [`Peer`] clone still lives.
    pub(crate) fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

impl std::fmt::Debug for WeakPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakPeer").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").finish_non_exhaustive()
    }
}

impl Peer {
    fn pc(&self) -> &Arc<dyn PeerConnection> {
        &self.owner.pc
    }

    /// Builds a peer connection from `config` and binds its UDP sockets; the offerer also
    /// creates the `init` data channel (workaround 7 in [`super`]), returned beside it.
    ///
    /// The setup runs on a task of its own: if the caller stops waiting (an attempt aborted
    /// or timed out mid-setup), the setup still completes and its result is dropped, which
    /// closes the peer connection. Dropping webrtc-rs's builder future halfway would leak
    /// the sockets it bound.
    pub(crate) async fn new(config: &Config, offerer: bool) -> Result<NewPeer, Error> {
        let config = config.clone();
        tokio::spawn(async move { Self::build(&config, offerer).await })
            .await
            .map_err(|e| Error::WebRtc(crate::error::WebRtcError::new(e)))?
    }

    async fn build(config: &Config, offerer: bool) -> Result<NewPeer, Error> {
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
            .with_sctp_max_mtu(config.sctp_max_mtu)
            .with_sctp_max_receive_buffer_size(config.sctp_receive_window)
            .with_sctp_max_chunk_retransmissions(config.sctp_max_retransmissions as usize)
            .with_ice_connection_attempts(
                Some(config.ice_check_interval),
                Some(config.ice_max_binding_requests),
            )
            .with_ice_timeouts(
                Some(config.ice_disconnected_timeout),
                Some(config.ice_failed_timeout),
                Some(config.ice_keepalive_interval),
            )
            // Workaround 6: nominate the first working direct pair at once.
            .with_host_acceptance_min_wait(Some(Duration::ZERO))
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
            .with_relay_acceptance_min_wait(Some(config.ice_relay_acceptance_wait))
            .build();
        let early_dtls = Arc::new(EarlyDtls::new(config.early_dtls_records));
        let runtime = BufferedRuntime::tokio(config.udp_socket_buffer, early_dtls.clone())
            .ok_or_else(|| Error::InvalidConfig(Cause::new("no async runtime available")))?;
        let (tx, events) = mpsc::unbounded();
        let observers = Observers::default();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(rtc_config)
            .with_setting_engine(settings)
            .with_runtime(runtime)
            .with_handler(Arc::new(Callbacks {
                tx,
                observers: observers.clone(),
                early_dtls,
            }))
            .with_udp_addrs(bind_addrs(&config.udp_bind_addrs, &local_ips()))
            .with_data_channel_send_buffer_limit(config.stream_send_buffer)
            .build()
            .await?;
        let peer = Self {
            owner: Arc::new(Owner {
                pc: Arc::new(pc),
                observers,
            }),
        };
        let init = if offerer {
            match peer
                .pc()
                .create_data_channel(INIT_CHANNEL_LABEL, None)
                .await
            {
                Ok(dc) => Some(Channel::new(dc)),
                // Dropping `peer` closes the peer connection.
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        Ok((peer, events, init))
    }

    /// A handle that does not keep the peer connection open.
    pub(crate) fn downgrade(&self) -> WeakPeer {
        WeakPeer(Arc::downgrade(&self.owner))
    }

    /// From now on, a copy of every driver event but the remote's data channels also goes to
    /// the returned receiver (the main channel still gets them all). Dropping the receiver
    /// ends it.
    pub(crate) fn observe(&self) -> mpsc::UnboundedReceiver<PeerEvent> {
        let (tx, rx) = mpsc::unbounded();
        if let Ok(mut observers) = self.owner.observers.lock() {
            observers.push(tx);
        }
        rx
    }

    /// Asks for an ICE restart: the next offer carries new ICE credentials, and applying it
    /// gathers candidates anew. DTLS and SCTP carry on over whatever pair ICE selects next.
    pub(crate) async fn restart_ice(&self) -> Result<(), Error> {
        Ok(self.pc().restart_ice().await?)
    }

    /// Creates the offer and applies it locally; returns its SDP.
    pub(crate) async fn create_offer(&self) -> Result<String, Error> {
        let offer = self.pc().create_offer(None).await?;
        let sdp = offer.sdp.clone();
        self.pc().set_local_description(offer).await?;
        Ok(sdp)
    }

    /// Creates the answer to the applied remote offer and applies it locally; returns its SDP.
    pub(crate) async fn create_answer(&self) -> Result<String, Error> {
        let answer = self.pc().create_answer(None).await?;
        let sdp = answer.sdp.clone();
        self.pc().set_local_description(answer).await?;
        Ok(sdp)
    }

    /// Applies the remote description: an offer, or (`offer == false`) an answer.
    pub(crate) async fn set_remote(&self, sdp: &str, offer: bool) -> Result<(), Error> {
        let desc = if offer {
            RTCSessionDescription::offer(sdp.to_owned())
        } else {
            RTCSessionDescription::answer(sdp.to_owned())
        }
        .map_err(|e| Error::InvalidSdp(Cause::new(e)))?;
        self.pc()
            .set_remote_description(desc)
            .await
            .map_err(|e| Error::InvalidSdp(Cause::new(e)))
    }

    /// Adds remote candidates, then wakes the driver (workaround 1 in [`super`]).
    pub(crate) async fn add_candidates(
        &self,
        candidates: impl IntoIterator<Item = CandidateInit>,
    ) -> Result<(), Error> {
        let mut added = false;
        for init in candidates {
            self.pc()
                .add_ice_candidate(init)
                .await
                .map_err(|e| Error::InvalidCandidate(Cause::new(e)))?;
            added = true;
        }
        if added {
            self.wake().await;
        }
        Ok(())
    }

    /// Makes the driver run one loop iteration: it then flushes what its state machines
    /// queued and re-arms its timers. Re-applying the unchanged configuration is the one
    /// public call that does this without side effects (webrtc-rs 0.21.1).
    pub(crate) async fn wake(&self) {
        let configuration = self.pc().get_configuration().await;
        if let Err(e) = self.pc().set_configuration(configuration).await {
            tracing::debug!("could not wake the WebRTC driver: {e}");
        }
    }

    /// Waits until the SCTP association is established, or `deadline` (workarounds 2 and 3
    /// in [`super`]). No event reports the association's state: this polls it, backing off
    /// to 10 ms.
    pub(crate) async fn wait_for_sctp(&self, deadline: tokio::time::Instant) -> Result<(), Error> {
        let sctp = self
            .pc()
            .sctp()
            .await
            .ok_or(Error::InvalidState("no SCTP transport"))?;
        let mut pause = Duration::from_micros(250);
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
                // The SCTP INIT is queued when DTLS completes but sent only on the driver's
                // next wake-up, up to 200 ms later.
                kicked = true;
                self.wake().await;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// The DER certificate the remote presented in the DTLS handshake, if any.
    pub(crate) async fn remote_certificate(&self) -> Result<Option<Vec<u8>>, Error> {
        let sctp = self
            .pc()
            .sctp()
            .await
            .ok_or(Error::InvalidState("no SCTP transport"))?;
        let certs = sctp.transport().get_remote_certificates().await?;
        Ok(certs.into_iter().next())
    }

    /// The candidate pair ICE selected, if it has selected one.
    pub(crate) async fn selected_path(&self) -> Option<DirectPath> {
        let sctp = self.pc().sctp().await?;
        let pair = sctp
            .transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await
            .ok()??;
        let (local, local_kind) = address_and_kind(pair.local())?;
        let (remote, remote_kind) = address_and_kind(pair.remote())?;
        Some(DirectPath {
            local,
            local_kind,
            remote,
            remote_kind,
        })
    }

    /// Creates an in-band data channel; libp2p streams have the label `""`.
    pub(crate) async fn create_channel(&self, label: &str) -> Result<Channel, Error> {
        Ok(Channel::new(
            self.pc().create_data_channel(label, None).await?,
        ))
    }

    /// Closes the peer connection; its driver stops and its sockets are released.
    pub(crate) async fn close(&self) {
        if let Err(e) = self.pc().close().await {
            tracing::debug!("closing the peer connection failed: {e}");
        }
    }
}

/// A candidate's address and kind; `None` for one that names neither.
fn address_and_kind(candidate: &RTCIceCandidate) -> Option<(SocketAddr, CandidateKind)> {
    let ip: IpAddr = candidate.address.parse().ok()?;
    let kind = match candidate.typ {
        RTCIceCandidateType::Host => CandidateKind::Host,
        RTCIceCandidateType::Srflx => CandidateKind::ServerReflexive,
        RTCIceCandidateType::Prflx => CandidateKind::PeerReflexive,
        RTCIceCandidateType::Relay => CandidateKind::Relay,
        _ => return None,
    };
    Some((SocketAddr::new(ip, candidate.port), kind))
}

/// The addresses of this host's interfaces; empty if they cannot be listed.
fn local_ips() -> Vec<IpAddr> {
    match rtc::shared::ifaces::ifaces() {
        Ok(interfaces) => interfaces
            .into_iter()
            .filter_map(|i| i.addr.map(|a| a.ip()))
            .collect(),
        Err(e) => {
            tracing::debug!("cannot list the local interfaces: {e}");
            Vec::new()
        }
    }
}

/// Whether `ip` can be a host candidate another peer reaches: not loopback, unspecified or
/// link-local (`169.254/16`, `fe80::/10`; an IPv6 link-local address needs a scope id no
/// candidate carries). webrtc-rs expands a wildcard into exactly these addresses.
fn usable_interface_address(ip: &IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    !ip.is_loopback() && !ip.is_unspecified() && !link_local
}

/// What to bind of `configured` on a host with these interface addresses (`local`): a
/// wildcard of an address family the host has no usable address of is left out. webrtc-rs
/// would bind it as it is and announce a host candidate on the unspecified address (`::`),
/// so a host without IPv6 would send a useless candidate with every offer. If that leaves
/// nothing, `configured` is returned as it is (the caller asked for exactly that).
fn bind_addrs(configured: &[SocketAddr], local: &[IpAddr]) -> Vec<SocketAddr> {
    let has_family = |v6: bool| {
        local
            .iter()
            .any(|ip| ip.is_ipv6() == v6 && usable_interface_address(ip))
    };
    let kept: Vec<SocketAddr> = configured
        .iter()
        .copied()
        .filter(|addr| !addr.ip().is_unspecified() || has_family(addr.is_ipv6()))
        .collect();
    if kept.is_empty() {
        configured.to_vec()
    } else {
        kept
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    const DUAL: &[&str] = &["0.0.0.0:0", "[::]:0"];

    #[test]
    fn a_host_without_ipv6_binds_ipv4_only() {
        // Loopback and link-local IPv6 do not count: no peer can reach them.
        let local = ips(&["127.0.0.1", "10.0.1.2", "::1", "fe80::1"]);
        assert_eq!(bind_addrs(&addrs(DUAL), &local), addrs(&["0.0.0.0:0"]));
    }

    #[test]
    fn a_dual_stack_host_binds_both() {
        for v6 in ["2001:db8:1::2", "fd00::2"] {
            let local = ips(&["10.0.1.2", v6, "fe80::1"]);
            assert_eq!(bind_addrs(&addrs(DUAL), &local), addrs(DUAL), "{v6}");
        }
    }

    #[test]
    fn an_ipv6_only_host_binds_ipv6_only() {
        let local = ips(&["127.0.0.1", "169.254.3.4", "2001:db8:1::2"]);
        assert_eq!(bind_addrs(&addrs(DUAL), &local), addrs(&["[::]:0"]));
    }

    #[test]
    fn concrete_addresses_are_kept_and_nothing_left_keeps_the_configuration() {
        let local = ips(&["127.0.0.1"]);
        let configured = addrs(&["127.0.0.1:0", "[::]:0"]);
        assert_eq!(bind_addrs(&configured, &local), addrs(&["127.0.0.1:0"]));
        // No interface at all: bind what was asked for, as webrtc-rs would.
        assert_eq!(bind_addrs(&addrs(DUAL), &[]), addrs(DUAL));
    }
}
