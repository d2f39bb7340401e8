//! `mana-core-auth-bench webhooks`: signed Stripe webhooks handled per second, each for a
//! distinct purchase, against the release server binary on a scratch PostgreSQL database.
//!
//! The benchmark starts a small fake of Stripe's `POST /v1/payment_intents` on loopback,
//! spawns `mana-core-auth serve` pointed at it (real projections, default durability),
//! registers users and starts purchases over HTTP (each creating a PaymentIntent at the
//! fake), then delivers one signed `payment_intent.succeeded` per purchase from closed-loop
//! workers, as Stripe would: a fresh `Stripe-Signature` on every request. Consecutive
//! purchases belong to different users, so concurrent webhooks rarely touch one credit
//! account. Before its figure counts it checks that every webhook answered `applied`
//! granted exactly once: `CreditsPurchased` events and completed purchases in the read
//! model both equal the acknowledged webhooks.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hyper::Method;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use tokio::task::JoinSet;

use super::WebhooksArgs;
use super::foundation::{Scratch, healthy, machine};
use super::http::{Routes, register_users};
use super::http_client::{Connection, Outcome, Server, Window, Worker, drive, report};
use mana_core_auth::credits::stripe::sign;
use mana_core_auth::db::Db;

const SECRET_KEY: &str = "sk_test_bench";
const WEBHOOK_SECRET: &str = "whsec_bench_secret";
/// The package every purchase buys (built-in catalogue: 500 credits for 500 cents).
const PACKAGE: &str = "credits-500";
const PRICE_CENTS: i64 = 500;
/// Connections that start purchases in parallel during the setup.
const SETUP_LANES: usize = 16;

/// A purchase started during the setup, waiting for its webhook.
struct Pending {
    purchase_id: String,
    payment_intent_id: String,
    user_id: String,
}

/// Runs `bench webhooks`.
pub(super) async fn webhooks(args: WebhooksArgs) -> anyhow::Result<()> {
    ensure!(args.target.engine == "postgres", "the webhooks benchmark runs on PostgreSQL");
    ensure!(args.concurrency > 0 && args.duration > 0 && args.users > 0, "counts must be at least 1");
    let exe = std::env::current_exe()?.with_file_name("mana-core-auth");
    ensure!(exe.exists(), "{} not found: build it with `cargo build --release --workspace`", exe.display());
    let scratch = Scratch::open(&args.target, 2).await?;
    let url = scratch.url.clone().context("a PostgreSQL scratch database")?;
    let stripe = fake_stripe().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server = spawn_server(&exe, &url, &stripe, port, &args.redis_url)?;
    let result = run(&args, &scratch, port).await;
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let _ = server.wait();
    scratch.close().await?;
    result
}

async fn run(args: &WebhooksArgs, scratch: &Scratch, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(port) {
        ensure!(Instant::now() < deadline, "the server did not answer health within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server = Server::resolve(&format!("http://127.0.0.1:{port}")).await?;
    println!(
        "webhooks: {} workers, {} s measured after {} s warmup, {} users, {} purchases, PostgreSQL, {}",
        args.concurrency,
        args.duration,
        args.warmup,
        args.users,
        args.purchases,
        machine()
    );
    let routes = Routes::new(&server)?;
    let users = register_users(&server, &routes, args.users).await?;
    let pending = start_purchases(&server, &users, args.purchases).await?;

    let pool: Arc<[Pending]> = pending.into();
    let next = Arc::new(AtomicUsize::new(0));
    let applied = Arc::new(AtomicU64::new(0));
    let uri = server.uri("/api/v1/webhooks/stripe")?;
    let workers = (0..args.concurrency).map(|_| Deliver {
        uri: uri.clone(),
        pool: Arc::clone(&pool),
        next: Arc::clone(&next),
        applied: Arc::clone(&applied),
    });
    let window = Window::starting_now(Duration::from_secs(args.warmup), Duration::from_secs(args.duration));
    let tally = drive(&server, workers, window).await?;
    report("webhooks", args.concurrency, &tally, &window);
    let used = next.load(Ordering::Relaxed).min(pool.len());
    if used >= pool.len() {
        println!("warning: every purchase was used before the window ended: raise --purchases");
    }
    check(scratch.store.db(), applied.load(Ordering::Relaxed)).await
}

/// Every acknowledged webhook granted once, and nothing else did.
async fn check(db: &Db, applied: u64) -> anyhow::Result<()> {
    let Db::Postgres(pool) = db else { bail!("PostgreSQL only") };
    let granted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'CreditsPurchased'")
            .fetch_one(pool)
            .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let completed = loop {
        let completed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM read.purchases WHERE status = 'completed'")
                .fetch_one(pool)
                .await?;
        if completed >= granted || Instant::now() > deadline {
            break completed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "webhooks: ledger check: {applied} webhooks answered applied (warm-up included), \
         {granted} CreditsPurchased events, {completed} purchases completed in the read model"
    );
    ensure!(
        u64::try_from(granted)? == applied && completed == granted,
        "the grants do not match the acknowledged webhooks"
    );
    Ok(())
}

/// One worker: takes the next purchase and delivers its signed success.
struct Deliver {
    uri: hyper::Uri,
    pool: Arc<[Pending]>,
    next: Arc<AtomicUsize>,
    applied: Arc<AtomicU64>,
}

impl Worker for Deliver {
    async fn request(&mut self, conn: &mut Connection) -> Outcome {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(purchase) = self.pool.get(index) else { return Outcome::Rejected("no purchase left") };
        let body = succeeded(index, purchase);
        let now = chrono::Utc::now().timestamp();
        let signature = match HeaderValue::from_str(&sign(WEBHOOK_SECRET, now, body.as_bytes())) {
            Ok(value) => value,
            Err(_) => return Outcome::Rejected("unsignable body"),
        };
        let headers = [(HeaderName::from_static("stripe-signature"), signature)];
        let reply = conn.send_with(Method::POST, &self.uri, Some(Bytes::from(body)), &headers).await;
        let outcome =
            Outcome::of(reply, "outcome not applied", |body| memchr_find(body, br#""outcome":"applied""#));
        if matches!(outcome, Outcome::Ok) {
            self.applied.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `payment_intent.succeeded` in Stripe's shape (about the size of a real one's core).
fn succeeded(index: usize, p: &Pending) -> String {
    serde_json::json!({
        "id": format!("evt_bench_{index}_{}", &p.purchase_id[..8]),
        "object": "event",
        "api_version": "2024-06-20",
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "payment_intent.succeeded",
        "data": {"object": {
            "id": p.payment_intent_id,
            "object": "payment_intent",
            "amount": PRICE_CENTS,
            "amount_capturable": 0,
            "amount_received": PRICE_CENTS,
            "capture_method": "automatic",
            "confirmation_method": "automatic",
            "currency": "eur",
            "customer": null,
            "latest_charge": format!("ch_{}", &p.payment_intent_id[3..]),
            "livemode": false,
            "metadata": {"purchase_id": p.purchase_id, "user_id": p.user_id, "package_id": PACKAGE},
            "payment_method": "pm_card_visa",
            "payment_method_types": ["card"],
            "status": "succeeded",
            "shipping": {"name": "Jane Doe", "address": {"line1": "1 Main St", "city": "Berlin", "country": "DE"}},
        }},
    })
    .to_string()
}

/// Starts `count` purchases, consecutive ones by different users, over a few connections.
async fn start_purchases(
    server: &Arc<Server>,
    users: &[super::http::User],
    count: usize,
) -> anyhow::Result<Vec<Pending>> {
    let started = Instant::now();
    let uri = server.uri("/api/v1/credits/purchase")?;
    let mut bearers = Vec::new();
    for user in users {
        let bearer = HeaderValue::from_str(&format!("Bearer {}", user.access_token))?;
        bearers.push((bearer, subject(&user.access_token)?));
    }
    let bearers: Arc<[(HeaderValue, String)]> = bearers.into();
    let body = Bytes::from(format!(r#"{{"packageId":"{PACKAGE}"}}"#));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..SETUP_LANES.min(count.max(1)) {
        let (server, uri, body, next, bearers) =
            (Arc::clone(server), uri.clone(), body.clone(), Arc::clone(&next), Arc::clone(&bearers));
        tasks.spawn(async move {
            let mut conn = Connection::new(server, Instant::now() + Duration::from_secs(3600));
            let mut made = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, anyhow::Error>(made);
                }
                let (bearer, user_id) = &bearers[index % bearers.len()];
                let reply = conn.send(Method::POST, &uri, Some(body.clone()), Some(bearer)).await?;
                if !reply.status.is_success() {
                    bail!(
                        "setup: purchase answered {}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    );
                }
                let answer: serde_json::Value = serde_json::from_slice(&reply.body)?;
                let secret = answer["clientSecret"].as_str().context("a client secret")?;
                let (intent, _) = secret.split_once("_secret_").context("Stripe's client secret format")?;
                made.push((
                    index,
                    Pending {
                        purchase_id: answer["purchaseId"].as_str().context("a purchase id")?.to_owned(),
                        payment_intent_id: intent.to_owned(),
                        user_id: user_id.clone(),
                    },
                ));
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(lane) = tasks.join_next().await {
        all.extend(lane??);
    }
    all.sort_by_key(|(index, _)| *index);
    println!("setup: started {count} purchases in {:.2} s", started.elapsed().as_secs_f64());
    Ok(all.into_iter().map(|(_, p)| p).collect())
}

/// The `sub` claim of an access token (the user id).
fn subject(token: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1).context("a JWT")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    Ok(claims["sub"].as_str().context("a sub claim")?.to_owned())
}

/// A fake of Stripe's `POST /v1/payment_intents` on loopback; answers its base URL.
async fn fake_stripe() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let counter = Arc::new(AtomicU64::new(1));
    let create = move |headers: axum::http::HeaderMap, body: String| {
        let counter = Arc::clone(&counter);
        async move {
            let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {SECRET_KEY}"));
            let fields: Vec<(String, String)> =
                url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
            let amount = fields.iter().find(|(k, _)| k == "amount").map(|(_, v)| v.clone());
            if !authorized || headers.get("idempotency-key").is_none() || amount.is_none() {
                return (axum::http::StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({})));
            }
            let id = format!("pi_bench_{}", counter.fetch_add(1, Ordering::Relaxed));
            let secret = format!("{id}_secret_{}", uuid::Uuid::new_v4().simple());
            let answer = serde_json::json!({"id": id, "object": "payment_intent", "client_secret": secret});
            (axum::http::StatusCode::OK, axum::Json(answer))
        }
    };
    let app = axum::Router::new().route("/v1/payment_intents", axum::routing::post(create));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(base)
}

fn spawn_server(
    exe: &std::path::Path,
    database_url: &str,
    stripe: &str,
    port: u16,
    redis_url: &str,
) -> anyhow::Result<Child> {
    let dir = std::env::temp_dir();
    let child = Command::new(exe)
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("PORT", port.to_string())
        .env("REDIS_URL", redis_url)
        .env("KEY_ENCRYPTION_SECRET", "bench-secret-for-the-webhooks-benchmark-only")
        .env("STRIPE_SECRET_KEY", SECRET_KEY)
        .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("STRIPE_API_BASE", stripe)
        .env("RATE_LIMIT_DEFAULT", "100000000/60")
        .env("RATE_LIMIT_REGISTER", "100000/3600")
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn the server")?;
    Ok(child)
}
