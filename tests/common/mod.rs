//! Test helpers: two sessions in one process, signaled through in-memory calls, on real UDP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use libp2p_webrtc_signal::{Config, Connection, Error, SdpRole, Session, SessionEvent};
use tokio::net::UdpSocket;

/// A config for loopback tests: one socket on 127.0.0.1, loopback candidates allowed.
pub fn loopback_config() -> Config {
    Config::default()
        .with_udp_bind_addrs(vec!["127.0.0.1:0".parse().unwrap()])
        .with_loopback_candidates(true)
}

/// Rewrites what travels between the two sessions (a man in the middle).
#[derive(Default, Clone)]
pub struct Tamper {
    /// Applied to the answer's SDP.
    pub answer: Option<Arc<dyn Fn(String) -> String + Send + Sync>>,
    /// Applied to the offerer's candidates (JSON) on the way to the answerer.
    pub offerer_candidate: Option<Arc<dyn Fn(String) -> String + Send + Sync>>,
    /// Applied to the answerer's candidates (JSON) on the way to the offerer.
    pub answerer_candidate: Option<Arc<dyn Fn(String) -> String + Send + Sync>>,
}

/// Runs offer/answer and trickle between two sessions until both are connected, then hands
/// out both connections (offerer first).
pub async fn connect(
    a: Config,
    b: Config,
    tamper: Tamper,
) -> Result<(Connection, Connection), Error> {
    let mut offerer = Session::new(&a, SdpRole::Offerer).await?;
    let mut answerer = Session::new(&b, SdpRole::Answerer).await?;
    negotiate(&mut offerer, &mut answerer, &tamper).await?;
    Ok((
        offerer.into_connection().await?,
        answerer.into_connection().await?,
    ))
}

/// Runs offer/answer and trickle between two sessions (new ones, or ICE restarts) until both
/// report `Connected`.
pub async fn negotiate(
    offerer: &mut Session,
    answerer: &mut Session,
    tamper: &Tamper,
) -> Result<(), Error> {
    let offer = offerer.create_offer().await?;
    let mut answer = answerer.accept_offer(&offer).await?;
    if let Some(f) = &tamper.answer {
        answer = f(answer);
    }
    offerer.accept_answer(&answer).await?;
    let (mut a_up, mut b_up) = (false, false);
    while !(a_up && b_up) {
        tokio::select! {
            ev = offerer.next_event(), if !a_up => match ev? {
                SessionEvent::LocalCandidate(c) => {
                    let c = tamper.offerer_candidate.as_ref().map_or(c.clone(), |f| f(c));
                    answerer.add_remote_candidate(Some(&c)).await?;
                }
                SessionEvent::LocalCandidatesComplete => answerer.add_remote_candidate(None).await?,
                SessionEvent::Connected => a_up = true,
            },
            ev = answerer.next_event(), if !b_up => match ev? {
                SessionEvent::LocalCandidate(c) => {
                    let c = tamper.answerer_candidate.as_ref().map_or(c.clone(), |f| f(c));
                    offerer.add_remote_candidate(Some(&c)).await?;
                }
                SessionEvent::LocalCandidatesComplete => offerer.add_remote_candidate(Some("")).await?,
                SessionEvent::Connected => b_up = true,
            },
        }
    }
    Ok(())
}

/// A connected loopback pair with default settings.
pub async fn pair(config: Config) -> (Connection, Connection) {
    tokio::time::timeout(
        Duration::from_secs(30),
        connect(config.clone(), config, Tamper::default()),
    )
    .await
    .expect("connecting timed out")
    .expect("connecting failed")
}

/// Replaces the `ip port` of a candidate line's address.
pub fn rewrite_candidate_addr(json: &str, to: SocketAddr) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let line = v["candidate"].as_str().unwrap();
    let mut fields: Vec<String> = line.split(' ').map(str::to_owned).collect();
    fields[4] = to.ip().to_string();
    fields[5] = to.port().to_string();
    let mut v = v.clone();
    v["candidate"] = serde_json::Value::String(fields.join(" "));
    v.to_string()
}

/// The `ip:port` of a candidate JSON.
pub fn candidate_addr(json: &str) -> SocketAddr {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let fields: Vec<&str> = v["candidate"].as_str().unwrap().split(' ').collect();
    format!("{}:{}", fields[4], fields[5]).parse().unwrap()
}

/// A UDP relay between two peers on loopback: each peer is told the other's address is the
/// proxy's. [`UdpProxy::stop`] makes the remote vanish without a word.
pub struct UdpProxy {
    /// The address shown to the answerer as the offerer's.
    pub for_offerer: SocketAddr,
    /// The address shown to the offerer as the answerer's.
    pub for_answerer: SocketAddr,
    real: Arc<std::sync::Mutex<(Option<SocketAddr>, Option<SocketAddr>)>>,
    /// The largest datagram forwarded, in bytes.
    pub largest: Arc<std::sync::atomic::AtomicUsize>,
    /// Datagrams larger than this are dropped, as by a link of a smaller MTU
    /// (default: none).
    pub max_datagram: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpProxy {
    /// Binds two sockets; the peers' real addresses are learned from their candidates
    /// (see [`UdpProxy::tamper`]).
    pub async fn start() -> Self {
        let pa = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let pb = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (for_offerer, for_answerer) = (pa.local_addr().unwrap(), pb.local_addr().unwrap());
        let real: Arc<std::sync::Mutex<(Option<SocketAddr>, Option<SocketAddr>)>> =
            Default::default();
        let r = real.clone();
        let largest = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let l = largest.clone();
        let max_datagram = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
        let m = max_datagram.clone();
        let task = tokio::spawn(async move {
            let mut ba = vec![0u8; 65536];
            let mut bb = vec![0u8; 65536];
            loop {
                let (offerer, answerer) = *r.lock().unwrap();
                let fits = |n: usize| {
                    let fits = n <= m.load(std::sync::atomic::Ordering::Relaxed);
                    if fits {
                        l.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    fits
                };
                tokio::select! {
                    // From the answerer to the offerer's stand-in: forward to the offerer.
                    Ok((n, _)) = pa.recv_from(&mut ba) => if let Some(to) = offerer.filter(|_| fits(n)) {
                        let _ = pb.send_to(&ba[..n], to).await;
                    },
                    // From the offerer to the answerer's stand-in: forward to the answerer.
                    Ok((n, _)) = pb.recv_from(&mut bb) => if let Some(to) = answerer.filter(|_| fits(n)) {
                        let _ = pa.send_to(&bb[..n], to).await;
                    },
                }
            }
        });
        Self {
            for_offerer,
            for_answerer,
            real,
            largest,
            max_datagram,
            task,
        }
    }

    /// Rewrites both sides' candidates to point at the proxy, learning the real addresses.
    pub fn tamper(&self) -> Tamper {
        let (real_a, real_b) = (self.real.clone(), self.real.clone());
        let (fo, fa) = (self.for_offerer, self.for_answerer);
        Tamper {
            answer: None,
            offerer_candidate: Some(Arc::new(move |c| {
                real_a.lock().unwrap().0 = Some(candidate_addr(&c));
                rewrite_candidate_addr(&c, fo)
            })),
            answerer_candidate: Some(Arc::new(move |c| {
                real_b.lock().unwrap().1 = Some(candidate_addr(&c));
                rewrite_candidate_addr(&c, fa)
            })),
        }
    }

    /// Stops forwarding: both peers see silence.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Initializes tracing once, from `RUST_LOG`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Drives a [`Connection`] on its own task, as a Swarm would, and hands out streams.
pub struct Driver {
    open: tokio::sync::mpsc::UnboundedSender<
        tokio::sync::oneshot::Sender<Result<libp2p_webrtc_signal::Stream, Error>>,
    >,
    inbound: tokio::sync::mpsc::UnboundedReceiver<libp2p_webrtc_signal::Stream>,
    /// Resolves with the error that ended the connection.
    pub ended: Option<tokio::sync::oneshot::Receiver<Error>>,
    close: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Driver {
    /// Starts driving `conn`.
    pub fn new(mut conn: Connection) -> Self {
        use libp2p_core::muxing::StreamMuxerExt;
        use std::task::Poll;
        let (open, mut open_rx) = tokio::sync::mpsc::unbounded_channel::<
            tokio::sync::oneshot::Sender<Result<libp2p_webrtc_signal::Stream, Error>>,
        >();
        let (inbound_tx, inbound) = tokio::sync::mpsc::unbounded_channel();
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let (close, mut close_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut pending: Option<tokio::sync::oneshot::Sender<_>> = None;
            let mut closing = false;
            let result = futures::future::poll_fn(|cx| loop {
                if !closing && std::pin::Pin::new(&mut close_rx).poll(cx).is_ready() {
                    closing = true;
                }
                if closing {
                    return match conn.poll_close_unpin(cx) {
                        Poll::Ready(_) => Poll::Ready(Error::Closed),
                        Poll::Pending => Poll::Pending,
                    };
                }
                if let Poll::Ready(Err(e)) = conn.poll_unpin(cx) {
                    return Poll::Ready(e);
                }
                let mut progress = false;
                match conn.poll_inbound_unpin(cx) {
                    Poll::Ready(Ok(s)) => {
                        let _ = inbound_tx.send(s);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(e),
                    Poll::Pending => {}
                }
                if pending.is_none() {
                    if let Poll::Ready(Some(tx)) = open_rx.poll_recv(cx) {
                        pending = Some(tx);
                    }
                }
                if pending.is_some() {
                    if let Poll::Ready(r) = conn.poll_outbound_unpin(cx) {
                        let failed = r.is_err();
                        let _ = pending.take().unwrap().send(r);
                        if failed {
                            return Poll::Ready(Error::Closed);
                        }
                        progress = true;
                    }
                }
                if !progress {
                    return Poll::Pending;
                }
            })
            .await;
            let _ = ended_tx.send(result);
        });
        Self {
            open,
            inbound,
            ended: Some(ended),
            close: Some(close),
            task,
        }
    }

    /// Opens an outbound stream.
    pub async fn open(&self) -> libp2p_webrtc_signal::Stream {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.open.send(tx).unwrap();
        rx.await.unwrap().unwrap()
    }

    /// The next inbound stream.
    pub async fn accept(&mut self) -> libp2p_webrtc_signal::Stream {
        self.inbound.recv().await.unwrap()
    }

    /// Closes the connection (`StreamMuxer::poll_close`).
    pub fn close(&mut self) {
        if let Some(tx) = self.close.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

use std::future::Future as _;

/// Two drivers over a connected loopback pair (offerer first).
pub async fn driven_pair(config: Config) -> (Driver, Driver) {
    let (a, b) = pair(config).await;
    (Driver::new(a), Driver::new(b))
}

#[path = "../../examples/support/payload.rs"]
mod payload_gen;
#[allow(unused_imports)] // Not every includer uses it.
pub use payload_gen::payload;
