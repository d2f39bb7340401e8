//! The HTTP server edge: the accept loop with its cap on open connections, the
//! per-connection timeouts that keep slow clients from holding connections, and
//! graceful shutdown.
//!
//! `axum::serve` has no such limits: a client that sends half a request head, or nothing,
//! keeps its connection for as long as it likes (the request timeout starts only once the
//! head is complete). Here each connection is served by hyper's HTTP/1 connection with
//! its own timer:
//! - the first request head must be complete within `HTTP_HEADER_READ_TIMEOUT_SECS` of
//!   the accept;
//! - between requests a kept-alive connection may stay silent for `HTTP_IDLE_TIMEOUT_SECS`;
//!   once the next head's first byte arrives, the rest must follow within the header
//!   timeout (hyper alone would count the idle time against the header timeout);
//! - a response write that makes no progress for the idle timeout (a client that never
//!   reads its answers) closes the connection.
//!
//! A semaphore permit is taken *before* each accept, so above `HTTP_MAX_CONNECTIONS` new
//! connections wait in the listen backlog and are served whole once a slot frees; nothing
//! is ever half answered.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use crate::telemetry::Metrics;

/// The limits of the server edge (from `HTTP_HEADER_READ_TIMEOUT_SECS`,
/// `HTTP_IDLE_TIMEOUT_SECS` and `HTTP_MAX_CONNECTIONS`).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may stay silent between requests, and how long a
    /// response write may make no progress.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets
/// every open connection finish its request in flight, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        let connection = serve_connection(stream, peer, router.clone(), limits);
        let connection = graceful.watch(connection);
        let metrics = Arc::clone(&metrics);
        metrics.http_connection_opened();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // Timeouts, resets and malformed heads: the client's doing, not an error of ours.
                tracing::debug!(%error, "connection closed");
            }
            metrics.http_connection_closed();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection; see the module documentation for its timeouts.
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ServerLimits,
) -> http1::Connection<TokioIo<WatchedStream>, RouterService> {
    // Small answers go out at once rather than waiting for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let reads = Arc::new(AtomicU64::new(0));
    let stream = WatchedStream {
        inner: stream,
        reads: Arc::clone(&reads),
        stall_limit: limits.idle_timeout,
        write_stall: None,
    };
    let timer =
        HeadTimer { reads, first_head: Arc::new(AtomicBool::new(true)), idle_timeout: limits.idle_timeout };
    http1::Builder::new()
        .timer(timer)
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), RouterService { router, peer })
}

/// The router as a hyper service of one connection: it puts the client address into
/// every request's extensions, where axum's `ConnectInfo` extractor (and so
/// [`crate::api::extract::Client`], with its `TRUSTED_PROXIES` rule) finds it.
struct RouterService {
    router: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for RouterService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // A router is always ready (`poll_ready` is a no-op), as `axum::serve` relies on too.
        tower::Service::call(&mut self.router.clone(), request)
    }
}

/// Accept errors: a connection that died in the backlog is skipped; anything else (out of
/// file descriptors) is logged and retried a moment later, as `axum::serve` does.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A client connection that counts the bytes it reads (so the head timer can tell an
/// idle connection from a slow head) and fails a write that makes no progress for
/// `stall_limit`.
struct WatchedStream {
    inner: TcpStream,
    reads: Arc<AtomicU64>,
    stall_limit: Duration,
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl WatchedStream {
    /// Passes a write's outcome through; a pending write starts (or checks) the stall clock.
    fn progress<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.write_stall = None;
            return outcome;
        }
        let limit = self.stall_limit;
        let stall = self.write_stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let outcome = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            this.reads.fetch_add(read as u64, Ordering::Relaxed);
        }
        outcome
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(cx, outcome)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(cx, outcome)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(cx, outcome)
    }
}

/// The timer hyper uses for its header read timeout, one per connection. hyper asks for
/// a deadline of "now + header timeout" whenever it starts waiting for a head, also on a
/// kept-alive connection between requests; this timer keeps that deadline for the first
/// head and otherwise gives the connection the idle timeout until the next head's first
/// byte, then the header timeout from that byte. (A partial head that arrived in the
/// same read as the previous request is seen as idle: it gets the idle timeout, which
/// still bounds it.)
#[derive(Clone)]
struct HeadTimer {
    reads: Arc<AtomicU64>,
    first_head: Arc<AtomicBool>,
    idle_timeout: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let header_timeout = deadline.saturating_duration_since(std::time::Instant::now());
        let now = Instant::now();
        let first = self.first_head.swap(false, Ordering::Relaxed);
        let (until, idle) =
            if first { (now + header_timeout, false) } else { (now + self.idle_timeout, true) };
        Box::pin(HeadDeadline {
            sleep: Box::pin(tokio::time::sleep_until(until)),
            reads: Arc::clone(&self.reads),
            reads_at_start: self.reads.load(Ordering::Relaxed),
            header_timeout,
            idle,
        })
    }
}

/// The deadline of one request head (see [`HeadTimer`]). hyper polls it each time a read
/// leaves the head incomplete, so the first byte after an idle wait is seen at once.
struct HeadDeadline {
    sleep: Pin<Box<Sleep>>,
    reads: Arc<AtomicU64>,
    reads_at_start: u64,
    header_timeout: Duration,
    /// Still waiting for the first byte of a head on a kept-alive connection.
    idle: bool,
}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.idle && this.reads.load(Ordering::Relaxed) != this.reads_at_start {
            this.idle = false;
            this.sleep.as_mut().reset(Instant::now() + this.header_timeout);
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadDeadline {}
