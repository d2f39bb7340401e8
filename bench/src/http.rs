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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use hyper::Uri;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::HttpArgs;
use super::http_client::{Connection, Outcome, Server, Window, Worker, drive, report};

/// The password of every benchmark user (16+ characters, mixed classes).
const PASSWORD: &str = "Bench-Passw0rd-load-2024!";
/// Users the login workers cycle through.
/// Connections used to register setup users in parallel.
const SETUP_LANES: usize = 4;
/// Time allowed to each setup request.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of an access token; the validate token must outlive the run.
const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// `--scenario` of `bench http`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HttpScenario {
    /// Each request registers a new user (bound by password hashing).
    Register,
    /// Each worker logs in its own user, again and again (bound by password hashing).
    Login,
    /// Each worker refreshes its own session, always with the latest refresh token.
    Refresh,
    /// Each request validates one access token.
    Validate,
    /// Validate workers next to `--login-concurrency` login workers; reported apart.
    Mixed,
    /// `GET /auth/session` with a token: a route under the default rate limit (compare
    /// runs with the limiter on and off to see its cost).
    Limited,
    /// Spends of 1 credit, every worker on one account (the server needs a large
    /// `CREDITS_SIGNUP_BONUS`).
    SpendHot,
    /// Spends of 1 credit, each worker on its own account.
    SpendDistinct,
    /// `GET /credits/balance`, each worker on its own account.
    Balance,
    /// Each request erases one user (`DELETE /auth/account` with the password: one argon2
    /// verification, like a login, plus the erasure); users are registered in setup,
    /// `--erase-per-worker` per worker.
    Erase,
    /// Attackers on `--concurrency` loopback source addresses storm one account with wrong
    /// passwords while its owner signs in from a familiar address every 500 ms (run the
    /// server with rate limits off or raised).
    LoginStorm,
}

/// The routes the scenarios use, below the base URL.
pub(super) struct Routes {
    pub(super) register: Uri,
    login: Uri,
    refresh: Uri,
    validate: Uri,
    session: Uri,
    spend: Uri,
    balance: Uri,
    account: Uri,
}

impl Routes {
    pub(super) fn new(server: &Server) -> anyhow::Result<Self> {
        Ok(Self {
            register: server.uri("/api/v1/auth/register")?,
            login: server.uri("/api/v1/auth/login")?,
            refresh: server.uri("/api/v1/auth/refresh")?,
            validate: server.uri("/api/v1/auth/validate")?,
            session: server.uri("/api/v1/auth/session")?,
            spend: server.uri("/api/v1/credits/use")?,
            balance: server.uri("/api/v1/credits/balance")?,
            account: server.uri("/api/v1/auth/account")?,
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
    // Each run's window starts when its setup is done.
    let window =
        || Window::starting_now(Duration::from_secs(args.warmup), Duration::from_secs(args.duration));
    match scenario {
        HttpScenario::Register => {
            let workers = (0..n).map(|_| Register { uri: routes.register.clone() }).collect();
            measure("register", &server, workers, window()).await
        }
        HttpScenario::Login => {
            let bodies = login_bodies(&register_users(&server, &routes, n).await?)?;
            let workers = bodies.iter().map(|body| Login::new(&routes, body)).collect();
            measure("login", &server, workers, window()).await?;
            print_argon2_ceiling()
        }
        HttpScenario::Refresh => {
            let users = register_users(&server, &routes, n).await?;
            let workers =
                users.into_iter().map(|user| Refresh::new(&routes, user)).collect::<anyhow::Result<_>>()?;
            measure("refresh", &server, workers, window()).await
        }
        HttpScenario::Validate => {
            let body = validate_body(&register_users(&server, &routes, 1).await?)?;
            let workers = (0..n).map(|_| Validate::new(&routes, &body)).collect();
            measure("validate", &server, workers, window()).await?;
            let ceiling = super::ceilings::signature_verifications_per_second()?;
            println!("ceiling: in-process EdDSA JWT verification on every core: {ceiling:.0}/s");
            Ok(())
        }
        HttpScenario::Limited => {
            let users = register_users(&server, &routes, 1).await?;
            let bearer = hyper::header::HeaderValue::from_str(&format!("Bearer {}", users[0].access_token))?;
            let workers =
                (0..n).map(|_| Session { uri: routes.session.clone(), bearer: bearer.clone() }).collect();
            measure("limited", &server, workers, window()).await
        }
        HttpScenario::SpendHot | HttpScenario::SpendDistinct | HttpScenario::Balance => {
            let accounts = if scenario == HttpScenario::SpendHot { 1 } else { n };
            let users = register_users(&server, &routes, accounts).await?;
            let bearers = users
                .iter()
                .map(|u| hyper::header::HeaderValue::from_str(&format!("Bearer {}", u.access_token)))
                .collect::<Result<Vec<_>, _>>()?;
            let spends = scenario != HttpScenario::Balance;
            let body = Bytes::from_static(br#"{"amount":1,"appId":"bench","description":"bench spend"}"#);
            let acknowledged = Arc::new(AtomicU64::new(0));
            let workers = (0..n).map(|i| Authorized {
                method: if spends { hyper::Method::POST } else { hyper::Method::GET },
                uri: if spends { routes.spend.clone() } else { routes.balance.clone() },
                body: spends.then(|| body.clone()),
                bearer: bearers[i % accounts].clone(),
                acknowledged: Arc::clone(&acknowledged),
            });
            let label = scenario.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned());
            let spent_before = total_spent(&server, &routes, &bearers).await?;
            let window = window();
            let tally = drive(&server, workers, window).await?;
            report(&label, n, &tally, &window);
            if spends {
                let spent = total_spent(&server, &routes, &bearers).await? - spent_before;
                let acknowledged = acknowledged.load(Ordering::Relaxed);
                // Every acknowledged spend debited once and nothing debited unacknowledged; a
                // transport error may leave a spend whose answer was lost, so it only reports.
                println!(
                    "{label}: ledger check: {acknowledged} spends acknowledged (warm-up included), \
                     totalSpent rose by {spent}"
                );
                if spent != i64::try_from(acknowledged)? && !tally.has_transport_errors() {
                    bail!("{label}: the ledger does not match the acknowledged spends");
                }
            }
            Ok(())
        }
        HttpScenario::Erase => {
            let users = register_users(&server, &routes, n * args.erase_per_worker).await?;
            let password = Bytes::from(serde_json::to_vec(&serde_json::json!({ "password": PASSWORD }))?);
            let mut queues: Vec<Vec<hyper::header::HeaderValue>> = vec![Vec::new(); n];
            for (i, user) in users.iter().enumerate() {
                queues[i % n]
                    .push(hyper::header::HeaderValue::from_str(&format!("Bearer {}", user.access_token))?);
            }
            let workers = queues
                .into_iter()
                .map(|bearers| Erase { uri: routes.account.clone(), body: password.clone(), bearers })
                .collect();
            measure("erase", &server, workers, window()).await?;
            print_argon2_ceiling()
        }
        HttpScenario::LoginStorm => {
            // Registered from this machine's default address, which the owner keeps using:
            // the owner's client is familiar to the account, the attackers' are not.
            let owner = register_users(&server, &routes, 1).await?;
            let owner = owner.first().context("setup registered no user")?;
            let body = credentials(&owner.email, false)?;
            super::storm::run(&server, &routes.login, body, &owner.email, n, window()).await
        }
        HttpScenario::Mixed => {
            let logins = args.login_concurrency;
            let mut users = register_users(&server, &routes, 1 + logins).await?;
            let body = validate_body(&users.split_off(logins))?;
            let bodies = login_bodies(&users)?;
            let validators = (0..n).map(|_| Validate::new(&routes, &body));
            let logins = bodies.iter().map(|body| Login::new(&routes, body));
            let window = window();
            let (validated, logged_in) =
                tokio::try_join!(drive(&server, validators, window), drive(&server, logins, window))?;
            report("validate", n, &validated, &window);
            report("login", args.login_concurrency, &logged_in, &window);
            print_argon2_ceiling()
        }
    }
}

/// Prints one argon2id verification's time and the machine's login ceiling.
fn print_argon2_ceiling() -> anyhow::Result<()> {
    let (one, ceiling) = super::ceilings::argon2_ceiling()?;
    println!(
        "ceiling: one argon2id verification {:.1} ms; cores / that = {ceiling:.1} logins/s",
        one.as_secs_f64() * 1000.0
    );
    let parallel = super::ceilings::argon2_parallel_per_second()?;
    println!("ceiling: argon2id verifications on every core at once, measured: {parallel:.1}/s");
    Ok(())
}

/// Runs one stream of workers through `window` and prints its report.
async fn measure<W: Worker>(
    stream: &str,
    server: &Arc<Server>,
    workers: Vec<W>,
    window: Window,
) -> anyhow::Result<()> {
    let count = workers.len();
    let tally = drive(server, workers, window).await?;
    report(stream, count, &tally, &window);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Workers: per-worker state and one request.

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
        Outcome::of_status(conn.post(&self.uri, body).await)
    }
}

/// Logs in one setup user, again and again.
///
/// Each worker signs in its own user: the service checks at most one password at a time
/// per address and client class (brute-force protection), so workers sharing an address
/// would measure that queue, not the login path.
struct Login {
    uri: Uri,
    body: Bytes,
}

impl Login {
    fn new(routes: &Routes, body: &Bytes) -> Self {
        Self { uri: routes.login.clone(), body: body.clone() }
    }
}

impl Worker for Login {
    async fn request(&mut self, conn: &mut Connection) -> Outcome {
        Outcome::of_status(conn.post(&self.uri, self.body.clone()).await)
    }
}

/// Erases its users one by one, each with its own token and the password.
struct Erase {
    uri: Uri,
    body: Bytes,
    bearers: Vec<hyper::header::HeaderValue>,
}

impl Worker for Erase {
    async fn request(&mut self, conn: &mut Connection) -> Outcome {
        let Some(bearer) = self.bearers.pop() else {
            // Out of users: count the worker's remaining turns as refusals, without spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Outcome::Rejected("no user left to erase: raise --erase-per-worker");
        };
        Outcome::of_status(
            conn.send(hyper::Method::DELETE, &self.uri, Some(self.body.clone()), Some(&bearer)).await,
        )
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

/// One authorized request, the same every time.
struct Authorized {
    method: hyper::Method,
    uri: Uri,
    body: Option<Bytes>,
    bearer: hyper::header::HeaderValue,
    /// 2xx answers, warm-up included (the spend scenarios check the ledger against it).
    acknowledged: Arc<AtomicU64>,
}

impl Worker for Authorized {
    async fn request(&mut self, conn: &mut Connection) -> Outcome {
        let result = conn.send(self.method.clone(), &self.uri, self.body.clone(), Some(&self.bearer)).await;
        let outcome = Outcome::of_status(result);
        if matches!(outcome, Outcome::Ok) {
            self.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }
}

/// The sum of `totalSpent` over the accounts, read from `GET /credits/balance`.
async fn total_spent(
    server: &Arc<Server>,
    routes: &Routes,
    bearers: &[hyper::header::HeaderValue],
) -> anyhow::Result<i64> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Balance {
        total_spent: i64,
    }
    let mut conn = Connection::new(Arc::clone(server), Instant::now() + SETUP_TIMEOUT);
    let mut sum = 0;
    for bearer in bearers {
        let reply = conn.send(hyper::Method::GET, &routes.balance, None, Some(bearer)).await?;
        if !reply.status.is_success() {
            bail!("balance answered {}", reply.status);
        }
        sum += serde_json::from_slice::<Balance>(&reply.body).context("balance answer")?.total_spent;
    }
    Ok(sum)
}

/// Reads the current session with a bearer token.
struct Session {
    uri: Uri,
    bearer: hyper::header::HeaderValue,
}

impl Worker for Session {
    async fn request(&mut self, conn: &mut Connection) -> Outcome {
        let result = conn.send(hyper::Method::GET, &self.uri, None, Some(&self.bearer)).await;
        Outcome::of(result, "", |_| true)
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
pub(super) struct User {
    email: String,
    pub(super) access_token: String,
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
pub(super) async fn register_users(
    server: &Arc<Server>,
    routes: &Routes,
    count: usize,
) -> anyhow::Result<Vec<User>> {
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
    let plural = if count == 1 { "" } else { "s" };
    let seconds = started.elapsed().as_secs_f64();
    println!("setup: registered {count} user{plural} in {seconds:.2} s");
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
