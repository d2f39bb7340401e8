//! HTTP load generator (`mana-core-auth bench http`): closed-loop workers, each with one
//! keep-alive connection, against a running server at `--url` (this service or any with
//! the same routes).
//!
//! A scenario is three parts: a setup that creates what it needs over HTTP (users and
//! their tokens), the per-worker state built from it (a [`Worker`]), and that worker's
//! one-request function. The driver runs every worker for `--warmup` seconds, then for
//! `--duration` measured seconds, and reports the requests *started* in the measured
//! window (in-flight ones finish and count), their throughput, the latency of the
//! successful ones and the failures by kind. To add a scenario: a [`HttpScenario`]
//! variant, a [`Worker`] implementation and an arm in [`run`].
//!
//! Request bodies are serialized once where they do not change; a request costs one
//! small header map, its body and the answer's bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use hyper::body::Bytes;
use hyper::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::http_client::{Connection, Reply, Server};
use super::{HttpArgs, Latencies};

/// The password of every benchmark user (16+ characters, mixed classes).
const PASSWORD: &str = "Bench-Passw0rd-load-2024!";
/// Users the login workers cycle through.
const LOGIN_USERS: usize = 8;
/// Connections used to register setup users in parallel.
const SETUP_LANES: usize = 4;
/// Time allowed to each setup request.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed past the window's end for in-flight requests; later ones fail.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of an access token; the validate token must outlive the run.
const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// `--scenario` of `bench http`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HttpScenario {
    /// Each request registers a new user (bound by password hashing).
    Register,
    /// Each request logs in one of a few users, round robin (bound by password hashing).
    Login,
    /// Each worker refreshes its own session, always with the latest refresh token.
    Refresh,
    /// Each request validates one access token.
    Validate,
    /// Validate workers next to `--login-concurrency` login workers; reported apart.
    Mixed,
}

/// The routes the scenarios use, below the base URL.
struct Routes {
    register: Uri,
    login: Uri,
    refresh: Uri,
    validate: Uri,
}

impl Routes {
    fn new(server: &Server) -> anyhow::Result<Self> {
        Ok(Self {
            register: server.uri("/api/v1/auth/register")?,
            login: server.uri("/api/v1/auth/login")?,
            refresh: server.uri("/api/v1/auth/refresh")?,
            validate: server.uri("/api/v1/auth/validate")?,
        })
    }
}

/// Runs `bench http`.
pub(super) async fn run(args: HttpArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.duration == 0 {
        bail!("--concurrency and --duration must be at least 1");
    }
    let server = Server::resolve(&args.url).await?;
    let routes = Routes::new(&server)?;
    let scenario = args.scenario;
    let name =
        scenario.to_possible_value().map_or_else(|| format!("{scenario:?}"), |v| v.get_name().to_owned());
    let workers = match scenario {
        HttpScenario::Mixed => {
            format!("{} validate + {} login workers", args.concurrency, args.login_concurrency)
        }
        _ => format!("{} workers", args.concurrency),
    };
    println!(
        "http {name}: {workers}, {} s measured after {} s warmup, {}, {}",
        args.duration,
        args.warmup,
        server.base_url(),
        machine()
    );
    let run_time = Duration::from_secs(args.warmup + args.duration);
    if matches!(scenario, HttpScenario::Validate | HttpScenario::Mixed)
        && run_time + Duration::from_secs(60) > ACCESS_TOKEN_LIFETIME
    {
        println!("warning: the access token may expire before the run ends (valid 15 min)");
    }

    let n = args.concurrency;
    match scenario {
        HttpScenario::Register => {
            let workers = (0..n).map(|_| Register { uri: routes.register.clone() });
            let window = Window::after(&args);
            report("register", n, &drive(&server, workers, window).await?, &args);
        }
        HttpScenario::Login => {
            let bodies = login_bodies(&register_users(&server, &routes, LOGIN_USERS).await?)?;
            let workers = (0..n).map(|i| Login::new(&routes, &bodies, i));
            let window = Window::after(&args);
            report("login", n, &drive(&server, workers, window).await?, &args);
        }
        HttpScenario::Refresh => {
            let users = register_users(&server, &routes, n).await?;
            let workers = users
                .into_iter()
                .map(|user| Refresh::new(&routes, user))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let window = Window::after(&args);
            report("refresh", n, &drive(&server, workers, window).await?, &args);
        }
        HttpScenario::Validate => {
            let user = register_users(&server, &routes, 1).await?;
            let body = validate_body(&user)?;
            let workers = (0..n).map(|_| Validate::new(&routes, &body));
            let window = Window::after(&args);
            report("validate", n, &drive(&server, workers, window).await?, &args);
        }
        HttpScenario::Mixed => {
            let mut users = register_users(&server, &routes, 1 + LOGIN_USERS).await?;
            let body = validate_body(&users.split_off(LOGIN_USERS))?;
            let bodies = login_bodies(&users)?;
            let validators = (0..n).map(|_| Validate::new(&routes, &body));
            let logins = (0..args.login_concurrency).map(|i| Login::new(&routes, &bodies, i));
            let window = Window::after(&args);
            let (validated, logged_in) =
                tokio::try_join!(drive(&server, validators, window), drive(&server, logins, window))?;
            report("validate", n, &validated, &args);
            report("login", args.login_concurrency, &logged_in, &args);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Workers: per-worker state and one request.

/// What one request came to.
enum Outcome {
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
    /// Classifies an answer: 2xx and `accept(body)` is `Ok`, else `Rejected(reason)`.
    fn of(result: anyhow::Result<Reply>, reason: &'static str, accept: impl FnOnce(&[u8]) -> bool) -> Self {
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
trait Worker: Send + 'static {
    /// Sends one request; the driver times it.
    fn request(&mut self, conn: &mut Connection) -> impl Future<Output = Outcome> + Send;

    /// Called, untimed, after a request that was not `Ok`: repairs the worker's state
    /// (e.g. starts a new session) so that one failure does not spoil the rest of the run.
    fn recover(&mut self, _conn: &mut Connection) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Registers a new unique user per request.
struct Register {
    uri: Uri,
}

impl Worker for Register {
    async fn request(&mut self, conn: &mut Connection) -> Outcome {
        let body = match credentials(&unique_email(), true) {
            Ok(body) => body,
            Err(error) => return Outcome::Transport(error),
        };
        Outcome::of(conn.post(&self.uri, body).await, "", |_| true)
    }
}

/// Logs in the setup users in turn.
struct Login {
    uri: Uri,
    bodies: Arc<[Bytes]>,
    next: usize,
}

impl Login {
    /// Worker `index` starts at a different user than its neighbours.
    fn new(routes: &Routes, bodies: &Arc<[Bytes]>, index: usize) -> Self {
        Self { uri: routes.login.clone(), bodies: Arc::clone(bodies), next: index }
    }
}

impl Worker for Login {
    async fn request(&mut self, conn: &mut Connection) -> Outcome {
        self.next = (self.next + 1) % self.bodies.len();
        let body = self.bodies[self.next].clone();
        Outcome::of(conn.post(&self.uri, body).await, "", |_| true)
    }
}

/// Refreshes one session, always with the latest refresh token (a spent one would revoke
/// the session). After a failure it logs in again for a new session.
struct Refresh {
    refresh: Uri,
    login: Uri,
    login_body: Bytes,
    token: Option<String>,
}

impl Refresh {
    fn new(routes: &Routes, user: User) -> anyhow::Result<Self> {
        Ok(Self {
            refresh: routes.refresh.clone(),
            login: routes.login.clone(),
            login_body: credentials(&user.email, false)?,
            token: Some(user.refresh_token),
        })
    }
}

impl Worker for Refresh {
    async fn request(&mut self, conn: &mut Connection) -> Outcome {
        // Taken: whatever happens, this token is not sent again.
        let Some(token) = self.token.take() else {
            return Outcome::Rejected("no session (the last re-login failed)");
        };
        let body = match serde_json::to_vec(&RefreshBody { refresh_token: &token }) {
            Ok(body) => Bytes::from(body),
            Err(error) => return Outcome::Transport(error.into()),
        };
        let mut next = None;
        let outcome =
            Outcome::of(conn.post(&self.refresh, body).await, "no refreshToken in the answer", |body| {
                next = serde_json::from_slice::<Tokens>(body).ok().map(|t| t.refresh_token);
                next.is_some()
            });
        self.token = next;
        outcome
    }

    async fn recover(&mut self, conn: &mut Connection) {
        self.token = None;
        if let Ok(reply) = conn.post(&self.login, self.login_body.clone()).await
            && reply.status.is_success()
        {
            self.token = serde_json::from_slice::<Tokens>(&reply.body).ok().map(|t| t.refresh_token);
        }
    }
}

/// Validates one access token.
struct Validate {
    uri: Uri,
    body: Bytes,
}

impl Validate {
    fn new(routes: &Routes, body: &Bytes) -> Self {
        Self { uri: routes.validate.clone(), body: body.clone() }
    }
}

impl Worker for Validate {
    async fn request(&mut self, conn: &mut Connection) -> Outcome {
        let result = conn.post(&self.uri, self.body.clone()).await;
        Outcome::of(result, "valid:false", says_valid)
    }
}

/// Whether a validate answer's `"valid"` member is `true`, without parsing the rest.
fn says_valid(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"valid\"";
    let Some(at) = body.windows(KEY.len()).position(|w| w == KEY) else {
        return false;
    };
    let rest = &body[at + KEY.len()..];
    let value = rest
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))
        .map_or(&[][..], |start| &rest[start..]);
    value.starts_with(b"true")
}

// ---------------------------------------------------------------------------------------
// Setup over HTTP.

/// A registered benchmark user.
struct User {
    email: String,
    access_token: String,
    refresh_token: String,
}

#[derive(Serialize)]
struct Credentials<'a> {
    email: &'a str,
    password: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RefreshBody<'a> {
    refresh_token: &'a str,
}

#[derive(Serialize)]
struct ValidateBody<'a> {
    token: &'a str,
}

/// The tokens of a register, login or refresh answer (other members are ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tokens {
    #[serde(default)]
    access_token: String,
    refresh_token: String,
}

fn unique_email() -> String {
    format!("bench-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// A register body (with a name) or a login body.
fn credentials(email: &str, with_name: bool) -> anyhow::Result<Bytes> {
    let body = Credentials { email, password: PASSWORD, name: with_name.then_some("Bench User") };
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}

fn login_bodies(users: &[User]) -> anyhow::Result<Arc<[Bytes]>> {
    users.iter().map(|user| credentials(&user.email, false)).collect()
}

fn validate_body(users: &[User]) -> anyhow::Result<Bytes> {
    let user = users.first().context("setup registered no user")?;
    let body = ValidateBody { token: &user.access_token };
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}

/// Registers `count` users over a few parallel connections; any failure stops the
/// benchmark, since the timed run would measure nothing useful.
async fn register_users(server: &Arc<Server>, routes: &Routes, count: usize) -> anyhow::Result<Vec<User>> {
    let started = Instant::now();
    let lanes = count.clamp(1, SETUP_LANES);
    let mut tasks = JoinSet::new();
    for lane in 0..lanes {
        let share = count / lanes + usize::from(lane < count % lanes);
        let mut conn = Connection::new(Arc::clone(server), Instant::now() + SETUP_TIMEOUT);
        let uri = routes.register.clone();
        tasks.spawn(async move {
            let mut users = Vec::with_capacity(share);
            for _ in 0..share {
                conn.set_deadline(Instant::now() + SETUP_TIMEOUT);
                users.push(register_one(&mut conn, &uri).await?);
            }
            Ok::<_, anyhow::Error>(users)
        });
    }
    let mut users = Vec::with_capacity(count);
    while let Some(lane) = tasks.join_next().await {
        users.extend(lane??);
    }
    println!("setup: registered {count} users in {:.2} s", started.elapsed().as_secs_f64());
    Ok(users)
}

async fn register_one(conn: &mut Connection, uri: &Uri) -> anyhow::Result<User> {
    let email = unique_email();
    let reply = conn.post(uri, credentials(&email, true)?).await.context("setup: register")?;
    if !reply.status.is_success() {
        bail!("setup: register answered {}: {}", reply.status, String::from_utf8_lossy(&reply.body));
    }
    let tokens: Tokens =
        serde_json::from_slice(&reply.body).context("setup: register answer without tokens")?;
    Ok(User { email, access_token: tokens.access_token, refresh_token: tokens.refresh_token })
}

// ---------------------------------------------------------------------------------------
// Driver and report.

/// The run's time line: warm-up from now, then the measured window.
#[derive(Clone, Copy, Debug)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

impl Window {
    /// The window of a run starting now.
    fn after(args: &HttpArgs) -> Self {
        let measure_from = Instant::now() + Duration::from_secs(args.warmup);
        Self { measure_from, end: measure_from + Duration::from_secs(args.duration) }
    }
}

/// The requests one stream started in the measured window.
#[derive(Default)]
struct Tally {
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
async fn drive<W: Worker>(
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

/// Prints one stream's numbers.
fn report(stream: &str, workers: usize, tally: &Tally, args: &HttpArgs) {
    let seconds = args.duration as f64;
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

fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let build = if cfg!(debug_assertions) { "DEBUG" } else { "release" };
    format!("{cores} cores, {build} build")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_answers_are_read_by_their_valid_member() {
        assert!(says_valid(br#"{"valid":true,"payload":{"sub":"x"}}"#));
        assert!(says_valid(br#"{ "valid" : true }"#));
        assert!(!says_valid(br#"{"valid":false,"error":"expired"}"#));
        assert!(!says_valid(b"Internal Server Error"));
    }
}
