//! The change feed on NATS JetStream (docs/FEED.md): every committed event reaches the
//! stream exactly once, in global order, as the export record, across a NATS restart, a
//! `kill -9` of the publishing process and two processes.
//!
//! Tests use the machine's JetStream at 127.0.0.1:4222 (`TEST_NATS_URL`) with a stream and
//! subject prefix of their own, deleted afterwards; outage tests start a private
//! `nats-server -js` on another port.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::api::{Api, unique_email};
use common::{ENGINES, Engine, ServerProcess, TestApp, TestDb, eventually, open_store};
use mana_core_auth::audit::record::ExportRecord;
use mana_core_auth::config::{EventStreamConfig, Secret};
use mana_core_auth::events::{LogCursor, RecordedEvent, mix};
use mana_core_auth::feed::follow::sequence_after;
use mana_core_auth::feed::{CURSOR_HEADER, subject_of};
use reqwest::StatusCode;
use serde_json::json;

fn shared_nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A stream name and subject prefix of one test; the stream is deleted when dropped.
struct TestStream {
    name: String,
    prefix: String,
    url: String,
}

impl TestStream {
    fn on(url: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self { name: format!("MCA_TEST_{id}"), prefix: format!("mca-test.{id}"), url: url.to_owned() }
    }

    fn settings(&self) -> EventStreamConfig {
        EventStreamConfig {
            url: Secret::new(self.url.clone()),
            name: self.name.clone(),
            subject_prefix: self.prefix.clone(),
            required: false,
            duplicate_window: Duration::from_secs(120),
            lease: Duration::from_secs(2),
            batch_size: 500,
        }
    }

    /// The environment of a spawned server publishing to this stream.
    fn env(&self, db: &TestDb) -> HashMap<String, String> {
        HashMap::from([
            ("DATABASE_URL".to_owned(), db.url()),
            ("KEY_ENCRYPTION_SECRET".to_owned(), db.secret()),
            ("RATE_LIMITS".to_owned(), "off".to_owned()),
            ("AUDIT_SEAL_INTERVAL_SECS".to_owned(), "0".to_owned()),
            ("EVENT_STREAM_URL".to_owned(), self.url.clone()),
            ("EVENT_STREAM_NAME".to_owned(), self.name.clone()),
            ("EVENT_STREAM_SUBJECT_PREFIX".to_owned(), self.prefix.clone()),
            ("EVENT_STREAM_LEASE_SECS".to_owned(), "1".to_owned()),
            ("EVENT_STREAM_BATCH_SIZE".to_owned(), "200".to_owned()),
        ])
    }

    /// Every message in the stream, in stream order.
    async fn messages(&self) -> Vec<jetstream::message::StreamMessage> {
        let client = async_nats::connect(&self.url).await.expect("connect to NATS");
        let js = jetstream::new(client);
        let Ok(mut stream) = js.get_stream(&self.name).await else { return Vec::new() };
        let info = stream.info().await.expect("stream info");
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut messages = Vec::new();
        for sequence in first.max(1)..=last {
            messages.push(stream.get_raw_message(sequence).await.expect("a stored message"));
        }
        messages
    }

    /// How many messages the stream holds (0 while it does not exist).
    async fn count(&self) -> u64 {
        let Ok(client) = async_nats::connect(&self.url).await else { return 0 };
        let js = jetstream::new(client);
        match js.get_stream(&self.name).await {
            Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(client) = async_nats::connect(&url).await {
                    let _ = jetstream::new(client).delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}

/// A private `nats-server -js` on its own port and store folder, for outage tests.
struct OwnNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnNats {
    fn start() -> Self {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let mut nats = Self { port, dir: tempfile::tempdir().expect("dir"), child: None };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and store, and waits until it accepts connections.
    fn restart(&mut self) {
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed for this test");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Registers, signs in, refreshes and signs out one user: events of several aggregates.
async fn activity(api: &Api) {
    let email = unique_email("feed");
    let registered = api.register(&email).await;
    let login = api.login(&email, common::api::PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let refreshed = api.refresh(&registered.text("refreshToken")).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let logout = api.post_auth("/api/v1/auth/logout", &login.text("accessToken"), json!({})).await;
    assert_eq!(logout.status, StatusCode::OK, "{}", logout.body);
}

/// The whole readable log, in global order.
async fn log_of(db: &TestDb) -> Vec<RecordedEvent> {
    let store = open_store(db).await;
    let mut events = Vec::new();
    let mut after = LogCursor::START;
    loop {
        let page = store.read_after(after, 10_000).await.expect("read the log");
        let Some(last) = page.last() else { break };
        after = last.cursor;
        events.extend(page);
    }
    store.db().close().await;
    events
}

/// Waits until the stream holds as many messages as the log has events, then checks
/// that it holds each event exactly once, in global order, as its export record.
async fn assert_stream_is_the_log(stream: &TestStream, db: &TestDb, within: Duration) {
    let log = log_of(db).await;
    assert!(!log.is_empty(), "the test wrote no events");
    let reached = eventually(within, || async { stream.count().await >= log.len() as u64 }).await;
    let messages = stream.messages().await;
    assert!(reached, "the stream holds {} of {} events", messages.len(), log.len());
    let cursors: Vec<String> = messages
        .iter()
        .map(|m| m.headers.get(CURSOR_HEADER).map(|v| v.to_string()).unwrap_or_default())
        .collect();
    let expected: Vec<String> = log.iter().map(|e| e.cursor.to_string()).collect();
    assert_eq!(cursors, expected, "the stream is not the log, once each, in global order");
    for (message, event) in messages.iter().zip(&log) {
        assert_eq!(
            message.subject.as_str(),
            subject_of(&stream.prefix, &event.aggregate_type, &event.event_type)
        );
        let id = message.headers.get("Nats-Msg-Id").map(|v| v.to_string());
        assert_eq!(id, Some(event.cursor.position.to_string()));
        let body: ExportRecord = serde_json::from_slice(&message.payload).expect("an export record");
        // The export record with every personal value replaced by its commitment: a broker
        // keeps messages beyond the reach of erasure (docs/PRIVACY.md).
        assert_eq!(body, ExportRecord::of(event).without_personal());
        if let Some(ip) = event.metadata.get("client_ip").and_then(|v| v.as_str()) {
            assert!(
                !String::from_utf8_lossy(&message.payload).contains(ip),
                "the feed carries a client address"
            );
        }
    }
    let sequences: Vec<u64> = messages.iter().map(|m| m.sequence).collect();
    assert_eq!(sequences, (1..=log.len() as u64).collect::<Vec<_>>(), "gaps in the stream");
}

/// `feed::follow::sequence_after` finds where to start after any cursor, and an ordered
/// consumer started there (as examples/follow_feed.rs does) gets exactly the later events.
async fn a_consumer_follows_from_any_cursor(stream: &TestStream, log: &[RecordedEvent]) {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use futures::StreamExt;
    let js = jetstream::new(async_nats::connect(&stream.url).await.expect("connect"));
    let mut nats_stream = js.get_stream(&stream.name).await.expect("the stream");
    let n = log.len();
    let cases = [(LogCursor::START, 1), (log[n / 2].cursor, n / 2 + 2), (log[n - 1].cursor, n + 1)];
    for (after, expected) in cases {
        let start_sequence = sequence_after(&mut nats_stream, after).await.expect("sequence after");
        assert_eq!(start_sequence, expected as u64, "after {after}");
    }
    let after = log[n / 2].cursor;
    let start_sequence = sequence_after(&mut nats_stream, after).await.expect("sequence after");
    let config = OrderedConfig {
        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
        ..Default::default()
    };
    let consumer = nats_stream.create_consumer(config).await.expect("a consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut followed = Vec::new();
    while followed.len() < n - (n / 2 + 1) {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let message = next.expect("a message in time").expect("a message").expect("no error");
        let headers = message.headers.as_ref().expect("headers");
        followed.push(headers.get(CURSOR_HEADER).map(|v| v.to_string()).unwrap_or_default());
    }
    let expected: Vec<String> = log[n / 2 + 1..].iter().map(|e| e.cursor.to_string()).collect();
    assert_eq!(followed, expected);
}

async fn ready(app: &TestApp) -> (StatusCode, serde_json::Value) {
    let answer = Api::new(&app.base).get("/api/v1/ready").await;
    (answer.status, answer.body)
}

#[tokio::test]
async fn every_committed_event_reaches_the_stream_once_in_global_order_as_its_export_record() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stream = TestStream::on(&shared_nats_url());
        let mut config = db.app_config();
        config.event_stream = Some(stream.settings());
        let app = TestApp::spawn(config).await;
        let api = Api::new(&app.base);
        for _ in 0..3 {
            activity(&api).await;
        }
        assert_stream_is_the_log(&stream, &db, Duration::from_secs(20)).await;
        a_consumer_follows_from_any_cursor(&stream, &log_of(&db).await).await;

        // Readiness and the metrics show the feed caught up.
        let caught_up = eventually(Duration::from_secs(5), || async {
            let (status, body) = ready(&app).await;
            status == StatusCode::OK
                && body["eventStream"]["state"] == "publishing"
                && body["eventStream"]["lagEvents"] == 0
        })
        .await;
        assert!(caught_up, "{engine:?}: readiness: {}", ready(&app).await.1);
        let metrics = reqwest::get(app.url("/metrics")).await.expect("metrics").text().await.expect("text");
        let published = metrics
            .lines()
            .find(|l| l.starts_with("mana_core_auth_event_stream_published_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        assert_eq!(published, Some(stream.count().await), "{engine:?}: {metrics}");
        let openapi = Api::new(&app.base).get("/api/v1/openapi.json").await.body;
        let schema = &openapi["components"]["schemas"]["EventStreamStatus"]["properties"];
        assert!(schema["lagSeconds"].is_object(), "readiness's eventStream is in the OpenAPI document");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_nats_restart_only_delays_the_feed_and_readiness_stays_ok() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let mut nats = OwnNats::start();
        let stream = TestStream::on(&nats.url());
        let mut config = db.app_config();
        config.event_stream = Some(stream.settings());
        let app = TestApp::spawn(config).await;
        let api = Api::new(&app.base);
        activity(&api).await;
        assert_stream_is_the_log(&stream, &db, Duration::from_secs(20)).await;

        nats.kill();
        for _ in 0..2 {
            activity(&api).await;
        }
        let down = eventually(Duration::from_secs(10), || async {
            let (status, body) = ready(&app).await;
            status == StatusCode::OK && body["eventStream"]["state"] == "down"
        })
        .await;
        assert!(down, "{engine:?}: readiness while NATS is down: {}", ready(&app).await.1);

        nats.restart();
        activity(&api).await;
        assert_stream_is_the_log(&stream, &db, Duration::from_secs(30)).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_required_feed_makes_readiness_fail_while_nats_is_down() {
    let db = TestDb::new(Engine::Sqlite).await;
    let mut nats = OwnNats::start();
    nats.kill();
    let stream = TestStream::on(&nats.url());
    let mut config = db.app_config();
    config.event_stream = Some(EventStreamConfig { required: true, ..stream.settings() });
    let app = TestApp::spawn(config).await;
    let (status, body) = ready(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["message"].to_string().contains("event stream is down"), "{body}");

    nats.restart();
    let up = eventually(Duration::from_secs(15), || async { ready(&app).await.0 == StatusCode::OK }).await;
    assert!(up, "readiness after NATS came back: {}", ready(&app).await.1);
    app.stop().await;
}

/// Appends `users` users' worth of the realistic mix (24 events each) directly.
async fn fill(db: &TestDb, users: usize) {
    let store = open_store(db).await;
    let t0 = chrono::Utc::now();
    for chunk in (0..users).collect::<Vec<_>>().chunks(40) {
        let events: Vec<_> = chunk.iter().flat_map(|n| mix::user_events(*n, t0)).collect();
        store.append(&events).await.expect("append");
    }
    store.db().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_mid_catch_up_is_replaced_and_the_stream_holds_every_event_once() {
    let db = TestDb::postgres().await;
    let stream = TestStream::on(&shared_nats_url());
    fill(&db, 400).await; // 9,600 events to catch up with
    let mut first = ServerProcess::spawn(&stream.env(&db));
    let started = eventually(Duration::from_secs(30), || async { stream.count().await >= 1_000 }).await;
    assert!(started, "the first process published too little; logs:\n{}", first.log_text());
    first.kill();
    let published = stream.count().await;
    assert!(published < 9_600, "the first process finished before it was killed; enlarge the log");
    // The worst moment to die: JetStream acknowledged, the checkpoint did not move. Put it
    // back to the start, as if no acknowledgement had ever been recorded.
    let store = open_store(&db).await;
    let sql = "UPDATE event_feed SET txid = 0, position = 0, stream_sequence = 0";
    assert_eq!(
        common::count(store.db(), &format!("WITH moved AS ({sql} RETURNING 1) SELECT count(*) FROM moved"))
            .await,
        1
    );
    store.db().close().await;

    let second = ServerProcess::spawn(&stream.env(&db));
    activity(&Api::new(&second.base)).await;
    assert_stream_is_the_log(&stream, &db, Duration::from_secs(60)).await;
    let resynced = second.log_text().lines().any(|l| l.contains("event stream in step"));
    assert!(resynced, "the second process did not continue from the stream:\n{}", second.log_text());
    eprintln!("killed the first publisher after {published} of 9,600 events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_publish_each_event_once_and_one_of_them_at_a_time() {
    let db = TestDb::postgres().await;
    let stream = TestStream::on(&shared_nats_url());
    let servers = [ServerProcess::spawn(&stream.env(&db)), ServerProcess::spawn(&stream.env(&db))];
    let apis = [Api::new(&servers[0].base), Api::new(&servers[1].base)];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6 {
        let api = apis[i % 2].clone();
        tasks.spawn(async move { activity(&api).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("activity");
    }
    assert_stream_is_the_log(&stream, &db, Duration::from_secs(30)).await;

    let mut states = Vec::new();
    for api in &apis {
        let answer = api.get("/api/v1/ready").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        states.push(answer.body["eventStream"]["state"].as_str().unwrap_or_default().to_owned());
    }
    states.sort();
    assert_eq!(states, ["publishing", "standby"]);
}

#[tokio::test]
async fn a_deleted_stream_gets_the_whole_log_again_and_a_purged_one_goes_on_after_its_checkpoint() {
    let db = TestDb::new(Engine::Sqlite).await;
    let stream = TestStream::on(&shared_nats_url());
    let mut config = db.app_config();
    config.event_stream = Some(stream.settings());
    let app = TestApp::spawn(config).await;
    let api = Api::new(&app.base);
    activity(&api).await;
    assert_stream_is_the_log(&stream, &db, Duration::from_secs(20)).await;

    let js = jetstream::new(async_nats::connect(&stream.url).await.expect("connect"));
    js.delete_stream(&stream.name).await.expect("delete the stream");
    activity(&api).await;
    assert_stream_is_the_log(&stream, &db, Duration::from_secs(20)).await;

    let before = log_of(&db).await.len();
    js.get_stream(&stream.name).await.expect("the stream").purge().await.expect("purge");
    activity(&api).await;
    let log = log_of(&db).await;
    let later = log.len() - before;
    let published =
        eventually(Duration::from_secs(20), || async { stream.count().await >= later as u64 }).await;
    assert!(published, "the purged stream holds {} of {later} new events", stream.count().await);
    let messages = stream.messages().await;
    let cursors: Vec<String> = messages
        .iter()
        .map(|m| m.headers.get(CURSOR_HEADER).map(|v| v.to_string()).unwrap_or_default())
        .collect();
    let expected: Vec<String> = log[before..].iter().map(|e| e.cursor.to_string()).collect();
    assert_eq!(cursors, expected, "after a purge, only the events after the checkpoint, once each");
    assert_eq!(messages.first().map(|m| m.sequence), Some(before as u64 + 1), "the sequence goes on");
    app.stop().await;
}
