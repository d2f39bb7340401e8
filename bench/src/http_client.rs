//! The scenario-independent half of the load generator: a minimal HTTP/1.1 client, the
//! [`Worker`] trait scenarios implement, the closed-loop driver and the report.
//!
//! Each worker has one keep-alive connection, driven inside the worker's own task: hyper's
//! connection future is polled next to the request instead of in a spawned task, so a
//! request costs no cross-task wake-ups (the generator shares a small machine with the
//! server it measures). A connection that fails is dropped and re-opened on the next
//! request. Only `http://` base URLs are supported.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::Latencies;

/// How long a failed connect waits before reporting, so a worker facing a stopped server
/// does not spin.
const CONNECT_BACKOFF: Duration = Duration::from_millis(20);
/// Time allowed past the window's end for in-flight requests; later ones fail.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The server under test: its address, `Host` header and path prefix, from a base URL
/// such as `http://127.0.0.1:3001` or `http://gateway:8080/auth`.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    host: HeaderValue,
    prefix: String,
    base_url: String,
}

impl Server {
    /// Parses the base URL and resolves its host once.
    pub async fn resolve(base_url: &str) -> anyhow::Result<Arc<Self>> {
        let uri: Uri = base_url.parse().with_context(|| format!("invalid --url {base_url:?}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("--url scheme {other:?} is not supported: use http://"),
            None => bail!("--url needs a scheme: http://host:port"),
        }
        let authority = uri.authority().context("--url needs a host")?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .next()
            .with_context(|| format!("{} resolves to no address", authority.host()))?;
        Ok(Arc::new(Self {
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
        }))
    }

    /// The request target for a route such as `/api/v1/auth/login`, below the URL's path.
    pub fn uri(&self, route: &str) -> anyhow::Result<Uri> {
        let path = format!("{}{route}", self.prefix);
        path.parse().with_context(|| format!("invalid route {path:?}"))
    }

    /// The base URL as given, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

/// A complete HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// An open HTTP/1.1 connection: the request handle and the connection future to drive.
struct Live {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
}

/// One worker's connection to the server, opened on first use and re-opened after an
/// error. Every request and connect also stops at the connection's deadline, so a hung
/// server cannot hold a benchmark past its end.
pub struct Connection {
    server: Arc<Server>,
    live: Option<Live>,
    deadline: std::pin::Pin<Box<Sleep>>,
    /// The local address to connect from (a loopback alias such as `127.0.9.1`).
    source: Option<IpAddr>,
}

impl Connection {
    /// A connection (not yet opened) whose requests fail once `deadline` has passed.
    pub fn new(server: Arc<Server>, deadline: Instant) -> Self {
        Self {
            server,
            live: None,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            source: None,
        }
    }

    /// The same connection, opened from `source` (the server sees that client address).
    pub fn with_source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Moves the deadline (for setup requests, which each get their own).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline.as_mut().reset(deadline.into());
    }

    /// Opens the connection now if it is not open, so that the first request's latency
    /// does not include the TCP handshake.
    pub async fn open(&mut self) -> anyhow::Result<()> {
        if self.live.is_none() {
            self.live = Some(self.connect().await?);
        }
        Ok(())
    }

    /// `POST`s a JSON body and reads the whole answer. Any error drops the connection;
    /// one whose server side has closed between requests is re-opened transparently,
    /// since nothing was sent on it.
    pub async fn post(&mut self, uri: &Uri, body: Bytes) -> anyhow::Result<Reply> {
        self.send(Method::POST, uri, Some(body), None).await
    }

    /// Sends a request with an optional JSON body and an optional `Authorization` value
    /// (e.g. `Bearer <token>`), and reads the whole answer (see [`post`](Self::post)).
    pub async fn send(
        &mut self,
        method: Method,
        uri: &Uri,
        body: Option<Bytes>,
        authorization: Option<&HeaderValue>,
    ) -> anyhow::Result<Reply> {
        let headers: Vec<_> =
            authorization.map(|value| (hyper::header::AUTHORIZATION, value.clone())).into_iter().collect();
        self.send_with(method, uri, body, &headers).await
    }

    /// Sends a request with an optional JSON body and extra headers (e.g. a signature),
    /// and reads the whole answer (see [`post`](Self::post)).
    pub async fn send_with(
        &mut self,
        method: Method,
        uri: &Uri,
        body: Option<Bytes>,
        extra: &[(hyper::header::HeaderName, HeaderValue)],
    ) -> anyhow::Result<Reply> {
        let has_body = body.is_some();
        let mut request = Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = method;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.server.host.clone());
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in extra {
            headers.insert(name, value.clone());
        }

        self.ready().await?;
        let Some(Live { sender, driver }) = self.live.as_mut() else {
            bail!("no connection after it was made ready");
        };
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Reply { status, body })
        };
        let result = tokio::select! {
            biased;
            reply = exchange => reply.map_err(anyhow::Error::from),
            closed = driver => Err(closed_error(closed)),
            () = self.deadline.as_mut() => Err(anyhow!("request still open at the deadline")),
        };
        if result.is_err() {
            self.live = None;
        }
        result
    }

    /// Waits until the connection can take a request, re-opening it once if the server
    /// closed it while idle.
    async fn ready(&mut self) -> anyhow::Result<()> {
        let mut reopened = false;
        loop {
            self.open().await?;
            let Some(Live { sender, driver }) = self.live.as_mut() else {
                bail!("no connection after opening one");
            };
            let (error, retry) = tokio::select! {
                biased;
                ready = sender.ready() => match ready {
                    Ok(()) => return Ok(()),
                    Err(error) => (error.into(), true),
                },
                closed = driver => (closed_error(closed), true),
                () = self.deadline.as_mut() => (anyhow!("no connection ready at the deadline"), false),
            };
            self.live = None;
            if !retry || reopened {
                return Err(error);
            }
            reopened = true;
        }
    }

    async fn connect(&mut self) -> anyhow::Result<Live> {
        let (server, source) = (self.server.addr, self.source);
        let connect = async move {
            let Some(source) = source else { return TcpStream::connect(server).await };
            let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(server).await
        };
        let stream = tokio::select! {
            stream = connect => stream,
            () = self.deadline.as_mut() => bail!("connect still pending at the deadline"),
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tokio::time::sleep(CONNECT_BACKOFF).await;
                return Err(anyhow::Error::from(error).context("connect"));
            }
        };
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Live { sender, driver })
    }
}

fn closed_error(closed: hyper::Result<()>) -> anyhow::Error {
    match closed {
        Ok(()) => anyhow!("connection closed by the server"),
        Err(error) => error.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Workers, driver and report.

/// What one request came to.
pub enum Outcome {
    /// A 2xx answer that says what the scenario expects.
    Ok,
    /// An answer outside 2xx.
    Status(StatusCode),
    /// A 2xx answer that says the operation failed, or cannot be read; the reason.
    Rejected(&'static str),
    /// No answer: connect, I/O, protocol or timeout error.
    Transport(anyhow::Error),
}

impl Outcome {
    /// Classifies an answer by its status alone: 2xx is `Ok`.
    pub fn of_status(result: anyhow::Result<Reply>) -> Self {
        Self::of(result, "unexpected body", |_| true)
    }

    /// Classifies an answer: 2xx and `accept(body)` is `Ok`, else `Rejected(reason)`.
    pub fn of(
        result: anyhow::Result<Reply>,
        reason: &'static str,
        accept: impl FnOnce(&[u8]) -> bool,
    ) -> Self {
        match result {
            Err(error) => Self::Transport(error),
            Ok(reply) if !reply.status.is_success() => Self::Status(reply.status),
            Ok(reply) if accept(&reply.body) => Self::Ok,
            Ok(_) => Self::Rejected(reason),
        }
    }
}

/// One worker of a scenario: its own state (tokens, bodies, counters) and the request it
/// repeats on its own connection.
pub trait Worker: Send + 'static {
    /// Sends one request; the driver times it.
    fn request(&mut self, conn: &mut Connection) -> impl Future<Output = Outcome> + Send;

    /// Called, untimed, after a request that was not `Ok`: repairs the worker's state
    /// (e.g. starts a new session) so that one failure does not spoil the rest of the run.
    fn recover(&mut self, _conn: &mut Connection) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A run's time line: warm-up from its start, then the measured window. Streams that run
/// side by side share one.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    measure_from: Instant,
    end: Instant,
    measured: Duration,
}

impl Window {
    /// A run starting now: `warmup`, then `measured`.
    pub fn starting_now(warmup: Duration, measured: Duration) -> Self {
        let measure_from = Instant::now() + warmup;
        Self { measure_from, end: measure_from + measured, measured }
    }

    /// When the measured window starts.
    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }

    /// When the run ends.
    pub fn end(&self) -> Instant {
        self.end
    }

    /// The measured window's length.
    pub fn measured(&self) -> Duration {
        self.measured
    }
}

/// The requests one stream started in the measured window.
#[derive(Default)]
pub struct Tally {
    requests: u64,
    ok: Latencies,
    statuses: BTreeMap<u16, u64>,
    rejected: BTreeMap<&'static str, u64>,
    transport: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, latency: Duration) {
        self.requests += 1;
        match outcome {
            Outcome::Ok => self.ok.record(latency),
            Outcome::Status(status) => *self.statuses.entry(status.as_u16()).or_default() += 1,
            Outcome::Rejected(reason) => *self.rejected.entry(reason).or_default() += 1,
            Outcome::Transport(error) => *self.transport.entry(format!("{error:#}")).or_default() += 1,
        }
    }

    /// Whether some requests got no answer (their effect on the server is unknown).
    pub fn has_transport_errors(&self) -> bool {
        !self.transport.is_empty()
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.ok.merge(other.ok);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
        for (error, n) in other.transport {
            *self.transport.entry(error).or_default() += n;
        }
    }
}

/// Runs the workers, each on its own task and connection, through the window.
pub async fn drive<W: Worker>(
    server: &Arc<Server>,
    workers: impl IntoIterator<Item = W>,
    window: Window,
) -> anyhow::Result<Tally> {
    let mut tasks = JoinSet::new();
    for worker in workers {
        let conn = Connection::new(Arc::clone(server), window.end + DRAIN_TIMEOUT);
        tasks.spawn(work(worker, conn, window));
    }
    let mut tally = Tally::default();
    while let Some(worker) = tasks.join_next().await {
        tally.merge(worker?);
    }
    Ok(tally)
}

/// One worker's closed loop: request, record if started in the window, repeat.
async fn work<W: Worker>(mut worker: W, mut conn: Connection, window: Window) -> Tally {
    let mut tally = Tally::default();
    // A failed open is retried by the first request, which then reports it.
    let _ = conn.open().await;
    loop {
        let started = Instant::now();
        if started >= window.end {
            return tally;
        }
        let outcome = worker.request(&mut conn).await;
        let failed = !matches!(outcome, Outcome::Ok);
        if started >= window.measure_from {
            tally.record(outcome, started.elapsed());
        }
        if failed {
            worker.recover(&mut conn).await;
        }
    }
}

/// Prints one stream's numbers: requests, throughput, latency and failures by kind.
pub fn report(stream: &str, workers: usize, tally: &Tally, window: &Window) {
    let seconds = window.measured.as_secs_f64();
    let ok = tally.ok.count();
    println!(
        "{stream}: {workers} workers, {} requests in {seconds:.0} s = {:.1} req/s, {ok} ok = {:.1} req/s",
        tally.requests,
        tally.requests as f64 / seconds,
        ok as f64 / seconds,
    );
    println!("{stream}: latency of ok requests {}", tally.ok.summary());
    let mut failures = Vec::new();
    for (status, n) in &tally.statuses {
        failures.push(format!("HTTP {status} x{n}"));
    }
    for (reason, n) in &tally.rejected {
        failures.push(format!("2xx but {reason} x{n}"));
    }
    for (error, n) in &tally.transport {
        failures.push(format!("transport error \"{error}\" x{n}"));
    }
    if failures.is_empty() {
        println!("{stream}: failures: none");
    } else {
        println!("{stream}: failures: {}", failures.join(", "));
    }
}
