//! `node --metrics`: serves a Prometheus registry at `/metrics` over HTTP/1.1 (hyper).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;

/// The OpenMetrics text format, which Prometheus asks for and reads.
const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint holds for its clients at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once (default 64). A new one past it closes the oldest that has
    /// not sent a request yet (idle or slow), or else the oldest, so a flood of idle or slow
    /// connections cannot keep a scrape out.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (default 5 s).
    pub header_read_timeout: Duration,
    /// How long a connection may stay open at all (default 30 s).
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

/// Binds `addr` and serves `registry` there in the background with the default
/// [`Limits`]; returns the bound address.
pub async fn serve(addr: SocketAddr, registry: Registry) -> anyhow::Result<SocketAddr> {
    serve_with(addr, registry, Limits::default()).await
}

/// [`serve`] with these limits.
pub async fn serve_with(
    addr: SocketAddr,
    registry: Registry,
    limits: Limits,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}"))?;
    let bound = listener.local_addr()?;
    let registry = Arc::new(registry);
    tokio::spawn(accept_loop(listener, registry, limits));
    Ok(bound)
}

/// One open connection: its task, and whether it has sent a request.
struct Open {
    task: tokio::task::AbortHandle,
    requested: Arc<AtomicBool>,
}

async fn accept_loop(listener: tokio::net::TcpListener, registry: Arc<Registry>, limits: Limits) {
    let max = limits.max_connections.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    // In the order they were accepted: the oldest first.
    let mut open: VecDeque<Open> = VecDeque::new();
    loop {
        let stream = tokio::select! {
            Some(done) = tasks.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                open.retain(|o| o.task.id() != id);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if open.len() >= max {
            let idle = open
                .iter()
                .position(|o| !o.requested.load(Ordering::Relaxed))
                .unwrap_or(0);
            if let Some(evicted) = open.remove(idle) {
                evicted.task.abort();
            }
        }
        let requested = Arc::new(AtomicBool::new(false));
        let task = tasks.spawn(connection(
            stream,
            registry.clone(),
            limits,
            requested.clone(),
        ));
        open.push_back(Open { task, requested });
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    registry: Arc<Registry>,
    limits: Limits,
    requested: Arc<AtomicBool>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        requested.store(true, Ordering::Relaxed);
        let response = respond(&req, &registry);
        async move { Ok::<_, Infallible>(response) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service);
    match tokio::time::timeout(limits.connection_timeout, serving).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("metrics: connection ended: {e}"),
        Err(_) => tracing::debug!("metrics: connection open too long, closed"),
    }
}

fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if req.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".to_string(),
        )
    } else {
        let mut body = String::new();
        match prometheus_client::encoding::text::encode(&mut body, registry) {
            Ok(()) => (StatusCode::OK, CONTENT, body),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("encoding failed: {e}\n"),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
    }

    async fn scrape(addr: SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// 500 idle connections: the endpoint holds at most `max_connections` of them (before,
    /// one descriptor each for as long as the client liked), and a scrape still succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_idle_connections_is_bounded_and_a_scrape_gets_through() {
        let limits = Limits {
            max_connections: 8,
            ..Limits::default()
        };
        let addr = serve_with("127.0.0.1:0".parse().unwrap(), Registry::default(), limits)
            .await
            .unwrap();
        let before = fds();
        let mut idle = Vec::new();
        for _ in 0..500 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // The server side has accepted them all by now, or soon: give it a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Other tests of this process open a few descriptors meanwhile: a margin of 16.
        let held = fds().saturating_sub(before + idle.len());
        assert!(
            held <= 8 + 16,
            "the server holds {held} descriptors for 500 idle clients"
        );
        let response = tokio::time::timeout(Duration::from_secs(5), scrape(addr))
            .await
            .expect("the scrape hung");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("# EOF"), "{response}");
    }

    /// A client that sends its headers a byte at a time is cut off after the header
    /// timeout; one that sends nothing at all after it too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_and_silent_clients_are_cut_off() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let addr = serve_with("127.0.0.1:0".parse().unwrap(), Registry::default(), limits)
            .await
            .unwrap();
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let trickle = async {
            for b in b"GET /metrics HTTP/1.1\r\nhost: x\r\n".iter().cycle() {
                if slow.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if started.elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), trickle)
            .await
            .expect("the slow client was never cut off");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("the silent client was never cut off");
        // Closed, perhaps after a 408 response.
        assert!(n.map_or(true, |n| n == 0 || buf.starts_with(b"HTTP/1.1 408")));
    }
}
