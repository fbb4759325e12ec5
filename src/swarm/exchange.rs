//! One upgrade attempt: the signaling exchange as a plain state machine ([`Exchange`],
//! testable without sockets) and the task that drives it with a [`Session`] and the stream.

use std::sync::Arc;

use futures::future::{select, Either};
use futures::{SinkExt, StreamExt};
use libp2p_swarm::Stream;

use super::protocol::{framed, Signal, SignalingStream};
use crate::error::ProtocolViolation;
use crate::rtc::Peer;
use crate::{Config, Connection, Error, SdpRole, Session, SessionEvent};

/// Where the exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Answerer: nothing received yet; the first message must be the offer.
    AwaitingOffer,
    /// Offerer: the offer is out; candidates may arrive before the answer.
    AwaitingAnswer,
    /// Both descriptions are set; candidates trickle until ICE connects.
    Checking,
}

/// What the driver does with a received signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Apply the offer and send back the answer.
    AcceptOffer(String),
    /// Apply the answer.
    AcceptAnswer(String),
    /// Add a remote candidate (`None`: end of candidates).
    AddCandidate(Option<String>),
}

/// The signaling exchange of one attempt, without I/O.
#[derive(Debug, Clone)]
pub(crate) struct Exchange {
    phase: Phase,
}

impl Exchange {
    /// A new exchange; the offerer has sent its offer by the time a message can arrive.
    pub(crate) fn new(role: SdpRole) -> Self {
        let phase = match role {
            SdpRole::Offerer => Phase::AwaitingAnswer,
            SdpRole::Answerer => Phase::AwaitingOffer,
        };
        Self { phase }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Checks a received signal against the protocol; says what to do with it.
    pub(crate) fn on_signal(&mut self, signal: Signal) -> Result<Step, Error> {
        match (self.phase, signal) {
            (Phase::AwaitingOffer, Signal::Offer(sdp)) => {
                self.phase = Phase::Checking;
                Ok(Step::AcceptOffer(sdp))
            }
            (Phase::AwaitingAnswer, Signal::Answer(sdp)) => {
                self.phase = Phase::Checking;
                Ok(Step::AcceptAnswer(sdp))
            }
            (Phase::AwaitingAnswer | Phase::Checking, Signal::Candidate(c)) => {
                Ok(Step::AddCandidate(c))
            }
            (Phase::AwaitingOffer, Signal::Candidate(_)) => Err(Error::Protocol(
                ProtocolViolation::Unexpected("candidate before the offer"),
            )),
            (_, Signal::Offer(_)) => Err(Error::Protocol(ProtocolViolation::Unexpected("offer"))),
            (_, Signal::Answer(_)) => Err(Error::Protocol(ProtocolViolation::Unexpected("answer"))),
        }
    }
}

/// Where the time of a successful upgrade went, and what its signaling cost.
///
/// Each phase is measured from the end of the previous one, on the side that reports it;
/// their sum is [`Event::Upgraded`](crate::Event::Upgraded)'s `took`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timings {
    /// Opening and negotiating the signaling stream on the relayed connection (the offering
    /// side; zero on the answering side, whose attempt starts with the negotiated stream).
    pub stream: std::time::Duration,
    /// Until both descriptions were set: offer out and answer in, or offer in and answer out.
    pub descriptions: std::time::Duration,
    /// Until ICE found a working candidate pair.
    pub ice: std::time::Duration,
    /// Until the DTLS handshake completed.
    pub dtls: std::time::Duration,
    /// Until the SCTP association was up and the remote certificate verified: streams can
    /// be opened from here on.
    pub sctp: std::time::Duration,
    /// Until the Swarm established the direct connection.
    pub handoff: std::time::Duration,
    /// Signaling bytes this side sent over the relayed connection (framing included,
    /// multistream-select negotiation not).
    pub signaling_bytes_sent: u64,
    /// Signaling bytes this side received.
    pub signaling_bytes_received: u64,
}

impl Timings {
    /// The sum of the phases.
    pub fn total(&self) -> std::time::Duration {
        self.stream + self.descriptions + self.ice + self.dtls + self.sctp + self.handoff
    }
}

/// Byte counts of one attempt's signaling.
#[derive(Debug, Default)]
struct Counters {
    sent: u64,
    received: u64,
}

/// The length of a message on the wire: varint length prefix plus body.
fn wire_len(msg: &crate::generated::signaling_pb::Message) -> u64 {
    let body = prost::Message::encoded_len(msg);
    (prost::length_delimiter_len(body) + body) as u64
}

/// An offerer's session and offer, prepared while its signaling stream is being negotiated:
/// the peer connection exists and gathers, so the offer goes out with its reflexive and relay
/// candidates right behind it when the stream is ready. Dropping it stops the preparation
/// and closes the peer connection.
pub(crate) struct PreparedOffer(tokio::task::JoinHandle<Result<(Session, String), Error>>);

impl PreparedOffer {
    /// Starts preparing an offer with `config`; `None` outside a tokio runtime.
    pub(crate) fn start(config: Arc<Config>) -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        Some(Self(handle.spawn(async move {
            let mut session = Session::new(&config, SdpRole::Offerer).await?;
            match session.create_offer().await {
                Ok(offer) => Ok((session, offer)),
                Err(e) => {
                    session.close().await;
                    Err(e)
                }
            }
        })))
    }

    async fn ready(mut self) -> Result<(Session, String), Error> {
        (&mut self.0).await.unwrap_or(Err(Error::Closed))
    }
}

impl Drop for PreparedOffer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one attempt on a negotiated signaling stream: sets up a [`Session`] in `role`,
/// exchanges descriptions and candidates until ICE and DTLS connect, verifies the remote
/// certificate, and returns the direct connection with the attempt's [`Timings`] (all but
/// `stream` and `handoff`, which the caller knows). Bounded by [`Config::upgrade_timeout`].
/// An offerer uses `prepared` if given (see [`PreparedOffer`]).
pub(crate) async fn run(
    stream: Stream,
    role: SdpRole,
    config: Arc<Config>,
    prepared: Option<PreparedOffer>,
) -> Result<(Connection, Timings), Error> {
    bounded(
        config.upgrade_timeout,
        run_inner(stream, role, config, prepared),
    )
    .await
}

/// `fut`, failing with [`Error::Timeout`] after `timeout`.
async fn bounded<T>(
    timeout: std::time::Duration,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(Error::Timeout))
}

async fn run_inner(
    stream: Stream,
    role: SdpRole,
    config: Arc<Config>,
    prepared: Option<PreparedOffer>,
) -> Result<(Connection, Timings), Error> {
    let started = std::time::Instant::now();
    let mut framed = framed(stream, config.max_signaling_message_size);
    let (mut session, offer) = match prepared.filter(|_| role == SdpRole::Offerer) {
        Some(prepared) => {
            let (session, offer) = prepared.ready().await?;
            (session, Some(offer))
        }
        None => (Session::new(&config, role).await?, None),
    };
    if let Err(e) = session.gather_early().await {
        session.close().await;
        return Err(e);
    }
    let mut counters = Counters::default();
    let exchanged = exchange(&mut framed, &mut session, role, offer, &mut counters).await;
    let described = match exchanged {
        Ok(at) => at,
        Err(e) => {
            session.close().await;
            return Err(e);
        }
    };
    let connected = std::time::Instant::now();
    // ICE connects before DTLS; without the report, count it all as ICE.
    let ice_at = session
        .ice_connected_at()
        .unwrap_or(connected)
        .clamp(described, connected);
    // Connected. The signaling stream has done its job; the remote tolerates its end once
    // it has our description.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), framed.close()).await;
    let connection = session.into_connection().await?;
    let timings = Timings {
        descriptions: described.saturating_duration_since(started),
        ice: ice_at.saturating_duration_since(described),
        dtls: connected.saturating_duration_since(ice_at),
        sctp: connected.elapsed(),
        signaling_bytes_sent: counters.sent,
        signaling_bytes_received: counters.received,
        ..Timings::default()
    };
    Ok((connection, timings))
}

/// Runs an ICE restart of `peer`, a connected direct connection, on a negotiated restart
/// stream: the same exchange as an upgrade, with [`Session::restart`]. Returns how long it
/// took until ICE had a working pair again. Bounded by [`Config::upgrade_timeout`].
pub(crate) async fn restart(
    stream: Stream,
    role: SdpRole,
    peer: Peer,
    config: Arc<Config>,
) -> Result<std::time::Duration, Error> {
    let started = std::time::Instant::now();
    let run = async {
        let mut framed = framed(stream, config.max_signaling_message_size);
        let mut session = Session::restart(peer, role, &config);
        exchange(
            &mut framed,
            &mut session,
            role,
            None,
            &mut Counters::default(),
        )
        .await?;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), framed.close()).await;
        Ok(started.elapsed())
    };
    bounded(config.upgrade_timeout, run).await
}

async fn send(
    framed: &mut SignalingStream,
    signal: Signal,
    counters: &mut Counters,
) -> Result<(), Error> {
    let msg = signal.into_message();
    counters.sent += wire_len(&msg);
    framed
        .send(msg)
        .await
        .map_err(|e| Error::Signaling(e.into()))
}

/// Exchanges descriptions and candidates until connected; returns when both descriptions
/// were set. An offerer sends `offer` if it was made already.
async fn exchange(
    framed: &mut SignalingStream,
    session: &mut Session,
    role: SdpRole,
    offer: Option<String>,
    counters: &mut Counters,
) -> Result<std::time::Instant, Error> {
    let mut exchange = Exchange::new(role);
    let mut described = None;
    if role == SdpRole::Offerer {
        let offer = match offer {
            Some(offer) => offer,
            None => session.create_offer().await?,
        };
        send(framed, Signal::Offer(offer), counters).await?;
    }
    // Once both descriptions are set, a broken signaling stream no longer fails the attempt:
    // the remote may have connected and closed it, and ICE may still succeed without more
    // candidates (peer-reflexive).
    let mut stream_open = true;
    loop {
        // An answerer reports nothing before its answer: candidates gathered early go after
        // it (and carry its ufrag and mid).
        let answer_pending = role == SdpRole::Answerer && described.is_none();
        let step = {
            let event = session.next_event();
            futures::pin_mut!(event);
            if answer_pending {
                Either::Left(framed.next().await)
            } else if stream_open {
                match select(framed.next(), event).await {
                    Either::Left((msg, _)) => Either::Left(msg),
                    Either::Right((event, _)) => Either::Right(event),
                }
            } else {
                Either::Right(event.await)
            }
        };
        match step {
            Either::Left(Some(Ok(msg))) => {
                counters.received += wire_len(&msg);
                let signal = Signal::from_message(msg)?;
                match exchange.on_signal(signal)? {
                    Step::AcceptOffer(sdp) => {
                        let answer = session.accept_offer(&sdp).await?;
                        send(framed, Signal::Answer(answer), counters).await?;
                        described = Some(std::time::Instant::now());
                    }
                    Step::AcceptAnswer(sdp) => {
                        session.accept_answer(&sdp).await?;
                        described = Some(std::time::Instant::now());
                    }
                    Step::AddCandidate(c) => session.add_remote_candidate(c.as_deref()).await?,
                }
            }
            Either::Left(Some(Err(e))) => {
                // Oversized or undecodable input is the remote's fault: a protocol error.
                let e = std::io::Error::from(e);
                let kind = e.kind();
                let err = if kind == std::io::ErrorKind::InvalidData {
                    Error::Protocol(ProtocolViolation::Undecodable(e))
                } else {
                    Error::Signaling(e)
                };
                if exchange.phase() != Phase::Checking || matches!(err, Error::Protocol(_)) {
                    return Err(err);
                }
                stream_open = false;
            }
            Either::Left(None) => {
                if exchange.phase() != Phase::Checking {
                    return Err(Error::Signaling(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stream closed before the exchange",
                    )));
                }
                stream_open = false;
            }
            Either::Right(event) => match event? {
                SessionEvent::LocalCandidate(json) => {
                    let signal = Signal::Candidate(Some(json));
                    if stream_open && send(framed, signal, counters).await.is_err() {
                        stream_open = false;
                    }
                }
                SessionEvent::LocalCandidatesComplete => {
                    if stream_open
                        && send(framed, Signal::Candidate(None), counters)
                            .await
                            .is_err()
                    {
                        stream_open = false;
                    }
                }
                SessionEvent::Connected => {
                    return Ok(described.unwrap_or_else(std::time::Instant::now))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offerer_takes_candidates_before_and_after_the_answer() {
        let mut x = Exchange::new(SdpRole::Offerer);
        assert_eq!(
            x.on_signal(Signal::Candidate(Some("c".into()))).unwrap(),
            Step::AddCandidate(Some("c".into()))
        );
        assert_eq!(
            x.on_signal(Signal::Answer("a".into())).unwrap(),
            Step::AcceptAnswer("a".into())
        );
        assert_eq!(x.phase(), Phase::Checking);
        assert_eq!(
            x.on_signal(Signal::Candidate(None)).unwrap(),
            Step::AddCandidate(None)
        );
    }

    #[test]
    fn answerer_needs_the_offer_first() {
        let mut x = Exchange::new(SdpRole::Answerer);
        assert!(matches!(
            x.on_signal(Signal::Candidate(Some("c".into()))),
            Err(Error::Protocol(_))
        ));
        let mut x = Exchange::new(SdpRole::Answerer);
        assert!(matches!(
            x.on_signal(Signal::Answer("a".into())),
            Err(Error::Protocol(_))
        ));
        let mut x = Exchange::new(SdpRole::Answerer);
        assert_eq!(
            x.on_signal(Signal::Offer("o".into())).unwrap(),
            Step::AcceptOffer("o".into())
        );
        assert!(matches!(
            x.on_signal(Signal::Offer("o".into())),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn offerer_refuses_offers_and_second_answers() {
        let mut x = Exchange::new(SdpRole::Offerer);
        assert!(matches!(
            x.on_signal(Signal::Offer("o".into())),
            Err(Error::Protocol(_))
        ));
        let mut x = Exchange::new(SdpRole::Offerer);
        x.on_signal(Signal::Answer("a".into())).unwrap();
        assert!(matches!(
            x.on_signal(Signal::Answer("a".into())),
            Err(Error::Protocol(_))
        ));
    }
}
