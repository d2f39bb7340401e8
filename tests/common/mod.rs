//! Shared test support: a fresh database per test on each engine, the application in
//! process (with a controllable clock), and spawned server binaries for multi-process
//! tests. PostgreSQL and Redis must be reachable; a test fails loudly when they are not.
#![allow(dead_code)]

pub mod api;
pub mod counter;
pub mod stripe;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mana_core_auth::clock::{ManualClock, SharedClock, SystemClock};
use mana_core_auth::config::{Config, DatabaseConfig, Secret};
use mana_core_auth::{AppState, Application};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

/// The maintenance database tests create their own databases from.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Which engine a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

pub const ENGINES: [Engine; 2] = [Engine::Postgres, Engine::Sqlite];

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub engine: Engine,
    pub config: DatabaseConfig,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(engine: Engine) -> Self {
        match engine {
            Engine::Postgres => Self::postgres().await,
            Engine::Sqlite => Self::sqlite(),
        }
    }

    /// A fresh PostgreSQL database.
    pub async fn postgres() -> Self {
        let admin = admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin} ({e}). The tests need it: start it, or \
                 point TEST_DATABASE_URL at one."
            )
        });
        let name = format!("mca_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("TEST_DATABASE_URL needs a database name"),
        };
        Self {
            engine: Engine::Postgres,
            config: DatabaseConfig::Postgres { url: Secret::new(url) },
            pg_name: Some(name),
            _dir: None,
        }
    }

    /// A fresh SQLite file in a temporary folder.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("data").join("test.db");
        Self {
            engine: Engine::Sqlite,
            config: DatabaseConfig::Sqlite { path },
            pg_name: None,
            _dir: Some(dir),
        }
    }

    /// The `DATABASE_URL` for a spawned server.
    pub fn url(&self) -> String {
        match &self.config {
            DatabaseConfig::Postgres { url } => url.expose().to_owned(),
            DatabaseConfig::Sqlite { path } => format!("sqlite://{}", path.display()),
        }
    }

    /// A configuration on this database, everything else at its defaults, port 0, and
    /// this database's own server secret (shared by every app on it).
    pub fn app_config(&self) -> Config {
        let mut config = Config::for_database(self.config.clone());
        config.database_max_connections = 5;
        config.key_encryption_secret = Some(Secret::new(self.secret()));
        // Tests of other features register and sign in far more than the limits allow
        // from one address; the rate-limit tests turn them back on.
        config.rate_limits.enabled = false;
        // Seals would add events to logs other tests count; the seal tests turn them on.
        config.audit_seal_interval = std::time::Duration::ZERO;
        config
    }

    /// The `KEY_ENCRYPTION_SECRET` of every server on this database.
    pub fn secret(&self) -> String {
        format!("test-secret-{}-for-this-database-only", self.url().len())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = admin_url();
        // Drop runs outside async context: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                        let _ = sqlx::query(&sql).execute(&mut conn).await;
                    }
                });
            }
        })
        .join();
    }
}

/// The application running in this test process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub state: AppState,
    pub client: reqwest::Client,
    pub clock: Option<ManualClock>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts the application with the system clock.
    pub async fn spawn(config: Config) -> Self {
        Self::start(config, Arc::new(SystemClock), None).await
    }

    /// Starts the application with a manual clock the test moves.
    pub async fn spawn_with_clock(config: Config, clock: ManualClock) -> Self {
        Self::start(config, Arc::new(clock.clone()), Some(clock)).await
    }

    async fn start(config: Config, clock: SharedClock, manual: Option<ManualClock>) -> Self {
        let app = Application::build_with_clock(config, clock).await.expect("application builds");
        let addr = app.local_addr();
        let state = app.state().clone();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let handle = tokio::spawn(app.run_until(async move { stop.cancelled().await }));
        Self {
            addr,
            base: format!("http://{addr}"),
            state,
            client: reqwest::Client::new(),
            clock: manual,
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server stopped cleanly");
        }
    }
}

/// A server binary running in its own process.
pub struct ServerProcess {
    pub addr: SocketAddr,
    pub base: String,
    child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    _cwd: tempfile::TempDir,
}

impl ServerProcess {
    /// Spawns `mana-core-auth serve` with `env` (on top of an empty environment) and
    /// waits until it says where it listens.
    pub fn spawn(env: &HashMap<String, String>) -> Self {
        let cwd = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(binary())
            .arg("serve")
            .env_clear()
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env)
            .current_dir(cwd.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && value["message"] == "listening"
                {
                    let _ = tx.send(value["address"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().expect("logs").push(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("logs").push(line);
            }
        });
        let addr: SocketAddr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; logs:\n{}", logs.lock().expect("logs").join("\n"));
            }
        };
        Self { addr, base: format!("http://{addr}"), child, logs, _cwd: cwd }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL: no shutdown, no cleanup) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server binary cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mana-core-auth"))
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens (and migrates) a test database and returns the event store over it.
pub async fn open_store(db: &TestDb) -> mana_core_auth::events::EventStore {
    let handle = mana_core_auth::db::Db::connect(&db.config, 8).await.expect("connect");
    handle.migrate().await.expect("migrate");
    mana_core_auth::events::EventStore::new(
        handle,
        mana_core_auth::events::LogSignal::new(),
        Arc::new(mana_core_auth::telemetry::Metrics::new()),
        mana_core_auth::security::secrets::ServerSecret::from_text(&db.secret()).key_wrap(),
    )
}

/// A command context stamped now, acting as `system`.
pub fn ctx() -> mana_core_auth::commands::CommandContext {
    mana_core_auth::commands::CommandContext::system(chrono::Utc::now())
}

/// Everything readable in the log once at least `count` events are. On PostgreSQL an
/// event is readable only when every transaction that began before it has ended, which
/// other tests' transactions on the same server can delay for a moment.
pub async fn read_all(
    store: &mana_core_auth::events::EventStore,
    count: usize,
) -> Vec<mana_core_auth::events::RecordedEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events =
            store.read_after(mana_core_auth::events::LogCursor::START, 100_000).await.expect("read the log");
        if events.len() >= count || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the projector until every projection has applied the event at `cursor`.
pub async fn catch_up_to(
    projector: &mana_core_auth::projections::Projector,
    cursor: mana_core_auth::events::LogCursor,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        projector.catch_up().await.expect("catch up");
        let mut done = true;
        for projection in projector.projections() {
            done &= projector.checkpoint(projection.name()).await.expect("checkpoint") >= cursor;
        }
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "projections did not reach {cursor}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `SELECT count(*) ...` on either engine.
pub async fn count(db: &mana_core_auth::db::Db, sql: &str) -> i64 {
    match db {
        mana_core_auth::db::Db::Postgres(pool) => {
            sqlx::query_scalar(sql).fetch_one(pool).await.expect("count")
        }
        mana_core_auth::db::Db::Sqlite { reader, .. } => {
            sqlx::query_scalar(sql).fetch_one(reader).await.expect("count")
        }
    }
}

/// A Redis key prefix of one test; its keys are deleted when it is dropped.
pub struct RedisPrefix {
    pub prefix: String,
    url: String,
}

impl RedisPrefix {
    pub fn new(url: &str) -> Self {
        Self { prefix: format!("mca-test:{}:", uuid::Uuid::new_v4().simple()), url: url.to_owned() }
    }

    /// Fails loudly when the shared Redis is not reachable.
    pub async fn ensure_reachable(&self) {
        let client = deadpool_redis::redis::Client::open(self.url.as_str()).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.unwrap_or_else(|e| {
            panic!("Redis is not reachable at {} ({e}). The tests need it: start it, or point TEST_REDIS_URL at one.", self.url)
        });
        let _: String = deadpool_redis::redis::cmd("PING").query_async(&mut conn).await.expect("ping");
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let (url, pattern) = (self.url.clone(), format!("{}*", self.prefix));
        let _ = std::thread::spawn(move || {
            let Ok(client) = deadpool_redis::redis::Client::open(url.as_str()) else { return };
            let Ok(mut conn) = client.get_connection() else { return };
            let keys: Vec<String> =
                deadpool_redis::redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = deadpool_redis::redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        })
        .join();
    }
}

/// A Redis server of one test, on its own port (for outage tests).
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    pub fn start() -> Self {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let dir = tempfile::tempdir().expect("dir");
        let mut redis = Self { port, child: None, dir };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An API client whose requests come from one loopback address (127.0.0.0/8), so that
/// tests can play distinct clients.
pub fn api_from(base: &str, source: std::net::IpAddr) -> api::Api {
    let http = reqwest::Client::builder().local_address(source).build().expect("client");
    api::Api { base: base.trim_end_matches('/').to_owned(), http }
}

/// The newest message to `recipient` in the development mailbox, waiting for delivery.
pub async fn mail_to(db: &mana_core_auth::db::Db, recipient: &str, kind: &str, newer_than: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let sql = "SELECT body FROM dev_mailbox WHERE recipient = $1 AND kind = $2 ORDER BY seq";
    loop {
        let bodies: Vec<String> = match db {
            mana_core_auth::db::Db::Postgres(pool) => {
                sqlx::query_scalar(sql).bind(recipient).bind(kind).fetch_all(pool).await.expect("mailbox")
            }
            mana_core_auth::db::Db::Sqlite { reader, .. } => {
                sqlx::query_scalar(sql).bind(recipient).bind(kind).fetch_all(reader).await.expect("mailbox")
            }
        };
        if bodies.len() > newer_than {
            return bodies.last().cloned().unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "no {kind} mail to {recipient} was delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `token=` value of a link in a message body.
pub fn token_in(body: &str) -> String {
    let start = body.find("token=").expect("a token link") + "token=".len();
    body[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect()
}

/// `mana-core-auth <args>` as an operator runs it against `db` (its `DATABASE_URL` and
/// server secret, nothing else): exit code, standard output and standard error. Blocks the
/// calling thread; beside an in-process server, call it through `block_in_place` on a
/// multi-thread runtime, or the server freezes with whatever locks it holds.
pub fn run_cli(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("KEY_ENCRYPTION_SECRET", db.secret())
        .output()
        .expect("the binary runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// Runs SQL as the tables' owner with the log's append-only triggers out of the way (what
/// an attacker with the database could do).
pub async fn tamper(db: &TestDb, statements: &[String]) {
    match db.engine {
        Engine::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url()).await.expect("connect");
            sqlx::query("SET session_replication_role = replica")
                .execute(&mut conn)
                .await
                .expect("no triggers");
            for sql in statements {
                sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
        Engine::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url()).await.expect("connect");
            for sql in ["DROP TRIGGER IF EXISTS events_no_update", "DROP TRIGGER IF EXISTS events_no_delete"]
            {
                sqlx::query(sql).execute(&mut conn).await.expect("drop trigger");
            }
            for sql in statements {
                sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }
}

/// Everything the database holds, as text: a `pg_dump`, or the bytes of the SQLite files
/// (database, write-ahead log, shared memory), to search for what must not be there.
pub fn whole_database(db: &TestDb) -> String {
    match db.engine {
        Engine::Postgres => {
            let output =
                Command::new("pg_dump").arg("--no-owner").arg(db.url()).output().expect("pg_dump runs");
            assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
        Engine::Sqlite => {
            // Read by another process: closing a file descriptor of the database in this
            // one would drop SQLite's POSIX locks held here by an in-process server, and
            // the next process to open the file would think itself alone and reset the
            // shared-memory index under the server's feet (SIGBUS).
            let path = db.url().trim_start_matches("sqlite://").to_owned();
            let files: Vec<String> = ["", "-wal", "-shm"]
                .iter()
                .map(|suffix| format!("{path}{suffix}"))
                .filter(|file| std::path::Path::new(file).exists())
                .collect();
            let output = Command::new("cat").args(&files).output().expect("cat runs");
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    }
}
