//! A webrtc-rs [`Runtime`] that sizes UDP socket buffers before handing sockets to the driver.
//!
//! webrtc-rs binds its own sockets and offers no buffer setting; the kernel default
//! (~208 KiB) drops bursts and collapses data channel throughput. Everything except
//! `wrap_udp_socket` is delegated to the stock tokio runtime.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
};

pub(crate) struct BufferedRuntime {
    inner: Arc<dyn Runtime>,
    buffer: usize,
}

impl fmt::Debug for BufferedRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedRuntime")
            .field("buffer", &self.buffer)
            .finish()
    }
}

impl BufferedRuntime {
    pub(crate) fn tokio(buffer: usize) -> Option<Arc<dyn Runtime>> {
        let inner = webrtc::runtime::default_runtime()?;
        Some(Arc::new(Self { inner, buffer }))
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
        self.inner.wrap_udp_socket(socket)
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
