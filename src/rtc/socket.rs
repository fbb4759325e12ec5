//! A webrtc-rs [`Runtime`] that sizes UDP socket buffers before handing sockets to the driver,
//! and holds back DTLS records that arrive before ICE has selected a candidate pair.
//!
//! webrtc-rs binds its own sockets and offers no buffer setting; the kernel default
//! (~208 KiB) drops bursts and collapses data channel throughput.
//!
//! webrtc-rs 0.21.1 drops every non-STUN datagram that arrives before its ICE agent has
//! selected a pair (`rtc::peer_connection::handler::ice`, "drop message ... before ICE
//! connection is connected"). A controlled peer that considers ICE done first (libjuice in
//! js-libp2p's Node.js transport does) sends its DTLS ClientHello at once; webrtc-rs drops it,
//! and the handshake waits for the client's retransmission: one second. [`EarlyDtls`] keeps
//! such records (bounded) and hands them to the driver once ICE is connected
//! ([`crate::Config::early_dtls_records`]).
//!
//! Everything else is delegated to the stock tokio runtime.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    Transmit,
};

pub(crate) struct BufferedRuntime {
    inner: Arc<dyn Runtime>,
    buffer: usize,
    early_dtls: Arc<EarlyDtls>,
}

impl fmt::Debug for BufferedRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedRuntime")
            .field("buffer", &self.buffer)
            .finish()
    }
}

impl BufferedRuntime {
    /// The tokio runtime, with UDP socket buffers of `buffer` bytes and DTLS records held
    /// back until `early_dtls` opens.
    pub(crate) fn tokio(buffer: usize, early_dtls: Arc<EarlyDtls>) -> Option<Arc<dyn Runtime>> {
        let inner = webrtc::runtime::default_runtime()?;
        Some(Arc::new(Self {
            inner,
            buffer,
            early_dtls,
        }))
    }
}

/// Whether one peer connection's ICE is connected yet, shared by its sockets.
#[derive(Debug)]
pub(crate) struct EarlyDtls {
    /// Records held per socket at most ([`crate::Config::early_dtls_records`]).
    limit: usize,
    open: AtomicBool,
    /// Receivers of sockets that hold records, woken when the gate opens.
    wakers: Mutex<Vec<Waker>>,
}

impl EarlyDtls {
    /// A closed gate holding up to `limit` records per socket.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            open: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// ICE is connected: release what was held, hold nothing more.
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

/// RFC 7983 demultiplexing: a first byte of 20..=63 is DTLS.
fn is_dtls(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(20..=63))
}

/// A UDP socket that holds back DTLS records until its [`EarlyDtls`] opens.
struct GatedUdpSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    gate: Arc<EarlyDtls>,
    held: Mutex<VecDeque<(Vec<u8>, RecvMeta)>>,
    /// `held` may be non-empty: lets the receive path skip the lock once all is released.
    holding: AtomicBool,
}

impl fmt::Debug for GatedUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatedUdpSocket")
            .field("inner", &self.inner)
            .field("open", &self.gate.is_open())
            .finish()
    }
}

impl GatedUdpSocket {
    fn held(&self) -> std::sync::MutexGuard<'_, VecDeque<(Vec<u8>, RecvMeta)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Once open: the held records first, as messages of their own.
    fn release(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut held = self.held();
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((datagram, m)) = held.pop_front() else {
                break;
            };
            let Some(buf) = bufs.get_mut(n) else { break };
            let len = datagram.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram[..len]);
            meta[n] = m;
            meta[n].len = len;
            meta[n].stride = len.max(1);
            n += 1;
        }
        if held.is_empty() {
            self.holding.store(false, Ordering::Release);
        }
        n
    }

    /// Before open: takes the single-datagram DTLS messages out of the `n` received ones
    /// (webrtc-rs would drop them) and compacts the rest; returns how many remain.
    fn hold_dtls(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let mut kept = 0;
        for i in 0..n.min(bufs.len()).min(meta.len()) {
            let len = meta[i].len.min(bufs[i].len());
            let single = meta[i].stride >= len;
            if single && is_dtls(&bufs[i][..len]) {
                let mut held = self.held();
                if held.len() < self.gate.limit {
                    tracing::trace!(from = %meta[i].addr, len, "holding a DTLS record until ICE is connected");
                    held.push_back((bufs[i][..len].to_vec(), meta[i]));
                    self.holding.store(true, Ordering::Release);
                }
                continue;
            }
            if kept != i {
                let (to, from) = bufs.split_at_mut(i);
                to[kept][..len].copy_from_slice(&from[0][..len]);
                meta[kept] = meta[i];
            }
            kept += 1;
        }
        kept
    }
}

impl AsyncUdpSocket for GatedUdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.gate.is_open() || self.gate.limit == 0 {
                if self.holding.load(Ordering::Acquire) {
                    let n = self.release(bufs, meta);
                    if n > 0 {
                        return Poll::Ready(Ok(n));
                    }
                }
                return self.inner.poll_recv(cx, bufs, meta);
            }
            // Wake this receiver when the gate opens, even if nothing else arrives (and look
            // again in case it opened just now, before the registration).
            self.gate.register(cx.waker());
            if self.gate.is_open() {
                continue;
            }
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let kept = self.hold_dtls(bufs, meta, n);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything received was held: poll again (registers the waker if nothing is
            // ready).
        }
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }

    fn set_may_fragment(&self, may_fragment: bool) -> io::Result<()> {
        self.inner.set_may_fragment(may_fragment)
    }
}

impl Runtime for BufferedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let sock = socket2::SockRef::from(&socket);
        // Best effort: the kernel caps the value at net.core.{r,w}mem_max.
        if let Err(e) = sock.set_recv_buffer_size(self.buffer) {
            tracing::debug!("SO_RCVBUF {}: {e}", self.buffer);
        }
        if let Err(e) = sock.set_send_buffer_size(self.buffer) {
            tracing::debug!("SO_SNDBUF {}: {e}", self.buffer);
        }
        if let Ok(actual) = sock.recv_buffer_size() {
            // Linux reports twice the requested value (bookkeeping overhead).
            if actual < self.buffer {
                tracing::debug!(
                    requested = self.buffer,
                    actual,
                    "UDP receive buffer capped by the kernel (net.core.rmem_max)"
                );
            }
        }
        let inner = self.inner.wrap_udp_socket(socket)?;
        Ok(Arc::new(GatedUdpSocket {
            inner,
            gate: self.early_dtls.clone(),
            held: Mutex::new(VecDeque::new()),
            holding: AtomicBool::new(false),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio+udp-buffers"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// Hands out queued datagrams, one per call.
    #[derive(Debug, Default)]
    struct FakeUdp {
        to_recv: Mutex<VecDeque<Vec<u8>>>,
    }

    impl AsyncUdpSocket for FakeUdp {
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
        }

        fn poll_send(&self, _: &mut Context<'_>, t: &Transmit<'_>) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(t.contents.len()))
        }

        fn poll_recv(
            &self,
            _: &mut Context<'_>,
            bufs: &mut [IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            let Some(d) = self.to_recv.lock().unwrap().pop_front() else {
                return Poll::Pending;
            };
            bufs[0][..d.len()].copy_from_slice(&d);
            meta[0] = RecvMeta::default();
            meta[0].len = d.len();
            meta[0].stride = d.len();
            meta[0].addr = SocketAddr::from(([127, 0, 0, 1], 2));
            Poll::Ready(Ok(1))
        }
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn gated(datagrams: &[&[u8]], limit: usize) -> (GatedUdpSocket, Arc<EarlyDtls>, Arc<FakeUdp>) {
        let inner = Arc::new(FakeUdp::default());
        inner.push(datagrams);
        let gate = Arc::new(EarlyDtls::new(limit));
        let socket = GatedUdpSocket {
            inner: inner.clone(),
            gate: gate.clone(),
            held: Mutex::new(VecDeque::new()),
            holding: AtomicBool::new(false),
        };
        (socket, gate, inner)
    }

    impl FakeUdp {
        fn push(&self, datagrams: &[&[u8]]) {
            let mut q = self.to_recv.lock().unwrap();
            q.extend(datagrams.iter().map(|d| d.to_vec()));
        }
    }

    /// One poll with two buffers; the first byte of each message received.
    fn recv(socket: &GatedUdpSocket, cx: &mut Context<'_>) -> Poll<Vec<u8>> {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        let mut bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
        let mut meta = [RecvMeta::default(); 2];
        match socket.poll_recv(cx, &mut bufs, &mut meta) {
            Poll::Ready(Ok(n)) => Poll::Ready((0..n).map(|i| bufs[i][0]).collect()),
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => Poll::Pending,
        }
    }

    /// `Config::early_dtls_records` in these tests.
    const LIMIT: usize = 4;
    const STUN: &[u8] = &[0x00, 0x01, 0, 0];
    const DTLS: &[u8] = &[22, 0xfe, 0xfd, 0];

    #[test]
    fn dtls_before_ice_is_held_and_released_once_connected() {
        let (socket, gate, _) = gated(&[STUN, DTLS, STUN], LIMIT);
        let woken = Arc::new(CountingWaker::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(recv(&socket, &mut cx), Poll::Ready(vec![0x00]));
        // The DTLS record is held; the STUN message behind it comes through.
        assert_eq!(recv(&socket, &mut cx), Poll::Ready(vec![0x00]));
        assert_eq!(recv(&socket, &mut cx), Poll::Pending);
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        gate.open();
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "opening wakes the receiver"
        );
        assert_eq!(recv(&socket, &mut cx), Poll::Ready(vec![22]));
        assert_eq!(recv(&socket, &mut cx), Poll::Pending);
    }

    #[test]
    fn after_ice_dtls_passes_and_what_is_held_is_bounded() {
        let many: Vec<&[u8]> = vec![DTLS; LIMIT + 5];
        let (socket, gate, inner) = gated(&many, LIMIT);
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(recv(&socket, &mut cx), Poll::Pending);
        assert_eq!(socket.held().len(), LIMIT);
        gate.open();
        let mut released = 0;
        while let Poll::Ready(got) = recv(&socket, &mut cx) {
            assert!(got.iter().all(|b| *b == 22));
            released += got.len();
        }
        assert_eq!(released, LIMIT);
        inner.push(&[DTLS]);
        assert_eq!(
            recv(&socket, &mut cx),
            Poll::Ready(vec![22]),
            "open: no holding"
        );
    }

    /// `set_may_fragment` reaches the kernel socket through this wrapper and webrtc's
    /// tokio socket: "don't fragment" off (`IP_PMTUDISC_DONT`) and on again
    /// (`IP_PMTUDISC_PROBE`, quinn-udp's), IPv4 and IPv6.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn may_fragment_reaches_the_socket() {
        use rustix::net::sockopt::{
            ip_mtu_discover, ipv6_mtu_discover, Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery,
        };
        let runtime = BufferedRuntime::tokio(1 << 16, Arc::new(EarlyDtls::new(LIMIT)))
            .expect("the tokio runtime");
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let fd = v4.try_clone().expect("clone");
        let socket = runtime.wrap_udp_socket(v4).expect("wrap");
        assert_eq!(ip_mtu_discover(&fd).ok(), Some(Ipv4PathMtuDiscovery::PROBE));
        socket.set_may_fragment(true).expect("set");
        assert_eq!(ip_mtu_discover(&fd).ok(), Some(Ipv4PathMtuDiscovery::DONT));
        socket.set_may_fragment(false).expect("set");
        assert_eq!(ip_mtu_discover(&fd).ok(), Some(Ipv4PathMtuDiscovery::PROBE));

        let Ok(v6) = std::net::UdpSocket::bind("[::1]:0") else {
            return; // no IPv6 here
        };
        let fd = v6.try_clone().expect("clone");
        let socket = runtime.wrap_udp_socket(v6).expect("wrap");
        socket.set_may_fragment(true).expect("set");
        assert_eq!(
            ipv6_mtu_discover(&fd).ok(),
            Some(Ipv6PathMtuDiscovery::DONT)
        );
        socket.set_may_fragment(false).expect("set");
        assert_eq!(
            ipv6_mtu_discover(&fd).ok(),
            Some(Ipv6PathMtuDiscovery::PROBE)
        );
    }

    #[test]
    fn a_limit_of_zero_holds_nothing() {
        let (socket, _gate, _) = gated(&[DTLS, STUN], 0);
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(recv(&socket, &mut cx), Poll::Ready(vec![22]));
        assert_eq!(recv(&socket, &mut cx), Poll::Ready(vec![0x00]));
    }
}
