//! The story the fixture log tells, driven through the real API and the library paths
//! the CLI uses, on a manual clock: seven users over three days, and every event type of
//! the release that wrote it. Each step asserts its answer, so the log holds what this
//! file says.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::Duration;
use mana_core_auth::auth::UserChange;
use mana_core_auth::clock::ManualClock;
use mana_core_auth::commands::email_claim::legacy_claim_id;
use mana_core_auth::commands::login_attempts::{
    Admission, AttemptPolicy, LockoutPolicy, LoginAttemptCommand,
};
use mana_core_auth::commands::{Aggregates, CommandContext};
use mana_core_auth::domain::ClientInfo;
use mana_core_auth::events::auth::{Role, SessionPersonal};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::api::{Answer, Api};
use crate::common::{TestApp, mail_to, token_in};
use crate::legacy::{legacy_attempts_on_franks_address, legacy_logins_of_olga};
use crate::{END, START};

/// A fixture user: where they sign in from, and their passwords (the replay signs in
/// with `password`, the one they end with).
pub struct Person {
    pub email: &'static str,
    pub name: Option<&'static str>,
    /// The password they registered with.
    pub first_password: &'static str,
    /// The password they have at the end (changed by carol, reset by dave).
    pub password: &'static str,
    /// Their own client address is 127.0.1.`ip`.
    pub ip: u8,
}

pub const ALICE: Person = Person {
    email: "alice@example.com",
    name: Some("Alice Archer"),
    first_password: "alice: staple battery horse",
    password: "alice: staple battery horse",
    ip: 1,
};
pub const BOB: Person = Person {
    email: "bob@example.com",
    name: Some("Bob Baker"),
    first_password: "bob's long fixture passphrase",
    password: "bob's long fixture passphrase",
    ip: 2,
};
pub const CAROL: Person = Person {
    email: "carol@example.com",
    name: Some("Carol Cook"),
    first_password: "carol's first passphrase",
    password: "carol's second passphrase",
    ip: 3,
};
pub const DAVE: Person = Person {
    email: "dave@example.com",
    name: None,
    first_password: "dave's forgotten passphrase",
    password: "dave's reset passphrase",
    ip: 4,
};
pub const ERIN: Person = Person {
    email: "erin.service@example.com",
    name: Some("Erin (billing service)"),
    first_password: "erin's service credential",
    password: "erin's service credential",
    ip: 5,
};
pub const OLGA: Person = Person {
    email: "olga@example.com",
    name: Some("Olga Olsen"),
    first_password: "olga's fixture passphrase",
    password: "olga's fixture passphrase",
    ip: 6,
};
pub const FRANK: Person = Person {
    email: "Frank.Fisher@Example.com",
    name: Some("Frank Fisher"),
    first_password: "frank's fixture passphrase",
    password: "frank's fixture passphrase",
    ip: 7,
};

/// Every fixture user.
pub const PEOPLE: [&Person; 7] = [&ALICE, &BOB, &CAROL, &DAVE, &ERIN, &OLGA, &FRANK];

/// What the replay needs that only the run knows.
pub struct Outcome {
    /// The refresh token of bob's phone session (remember-me, live at the end).
    pub bob_refresh_token: String,
}

/// The application under the story and its clock.
pub struct World<'a> {
    pub app: &'a TestApp,
    clock: &'a ManualClock,
}

impl World<'_> {
    /// Moves the clock forward.
    pub fn tick(&self, seconds: i64) {
        self.clock.advance(Duration::seconds(seconds));
    }

    fn client(&self, ip: [u8; 4], agent: &str) -> Api {
        let http = reqwest::Client::builder()
            .local_address(IpAddr::from(ip))
            .user_agent(agent)
            .build()
            .expect("client");
        Api { base: self.app.base.clone(), http }
    }

    /// `person` on their own device.
    fn home(&self, person: &Person) -> Api {
        self.client(
            [127, 0, 1, person.ip],
            &format!("FixtureApp/1.0 ({})", person.name.unwrap_or("anonymous")),
        )
    }

    /// A guesser from 127.0.2.`n`.
    fn stranger(&self, n: u8) -> Api {
        self.client([127, 0, 2, n], "python-requests/2.31.0")
    }
}

fn expect(answer: &Answer, status: StatusCode, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
}

fn expect_error(answer: &Answer, status: StatusCode, code: &str, what: &str) {
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (status, Some(code)),
        "{what}: {}",
        answer.body
    );
}

async fn login(api: &Api, person: &Person, password: &str, extra: Value) -> Answer {
    let mut body = json!({"email": person.email, "password": password});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    api.post("/api/v1/auth/login", body).await
}

/// Signs `person` in with their final password; returns the access token.
async fn sign_in(w: &World<'_>, person: &Person) -> String {
    let answer = login(&w.home(person), person, person.password, json!({})).await;
    expect(&answer, StatusCode::OK, person.email);
    answer.text("accessToken")
}

/// A registration's answer.
struct Registered {
    user_id: String,
    access_token: String,
    refresh_token: String,
}

/// Registers `person`.
async fn register(w: &World<'_>, person: &Person) -> Registered {
    let mut body = json!({"email": person.email, "password": person.first_password});
    if let Some(name) = person.name {
        body["name"] = json!(name);
    }
    let answer = w.home(person).post("/api/v1/auth/register", body).await;
    expect(&answer, StatusCode::CREATED, person.email);
    Registered {
        user_id: answer.body["user"]["id"].as_str().expect("user id").to_owned(),
        access_token: answer.text("accessToken"),
        refresh_token: answer.text("refreshToken"),
    }
}

async fn verify_email(w: &World<'_>, person: &Person, earlier_mails: usize) {
    let recipient = person.email.to_lowercase();
    let body = mail_to(w.app.state.db(), &recipient, "email_verification", earlier_mails).await;
    let answer = w.home(person).post("/api/v1/auth/verify-email", json!({"token": token_in(&body)})).await;
    expect(&answer, StatusCode::OK, "verify e-mail");
}

async fn change_user(w: &World<'_>, person: &Person, change: UserChange) {
    let changed = w.app.state.auth().change_user(person.email, change).await.expect("user change");
    assert!(changed, "{}: {change:?} changed nothing", person.email);
}

async fn spend(api: &Api, token: &str, body: Value) -> Answer {
    api.post_auth("/api/v1/credits/use", token, body).await
}

/// Runs the whole story; the clock ends at [`END`].
pub async fn run(app: &TestApp, clock: &ManualClock) -> Outcome {
    let w = World { app, clock };
    let mut users = BTreeMap::new();
    for person in [&ALICE, &BOB, &CAROL, &DAVE, &ERIN, &OLGA] {
        users.insert(person.email, register(&w, person).await);
        w.tick(90);
    }
    verify_emails(&w, &users[BOB.email].access_token).await;
    legacy_logins_of_olga(&w, &users[OLGA.email].user_id).await;
    legacy_attempts_on_franks_address(&w).await;
    let bob_phone = day_zero(&w, &users).await;
    clock.set(START + Duration::days(1));
    let bob_phone = day_one(&w, bob_phone).await;
    clock.set(START + Duration::days(2) + Duration::hours(1));
    let bob_phone = day_two(&w, bob_phone).await;
    clock.set(END);
    // The last event, at END: every projection's checkpoint was last moved at END.
    let refreshed = w.home(&BOB).refresh(&bob_phone).await;
    expect(&refreshed, StatusCode::OK, "bob's phone refreshes at the end");
    Outcome { bob_refresh_token: refreshed.text("refreshToken") }
}

/// Four users verify their address, bob after asking for a new link.
async fn verify_emails(w: &World<'_>, bob_registration_token: &str) {
    verify_email(w, &ALICE, 0).await;
    let resent =
        w.home(&BOB).post_auth("/api/v1/auth/resend-verification", bob_registration_token, json!({})).await;
    expect(&resent, StatusCode::OK, "resend verification");
    verify_email(w, &BOB, 1).await;
    verify_email(w, &CAROL, 0).await;
    verify_email(w, &OLGA, 0).await;
    w.tick(300);
}

/// Roles, sessions, failed and throttled logins, a lockout and a reset,
/// disable and enable, spends and the operators' grants, adjustment and refund.
async fn day_zero(w: &World<'_>, users: &BTreeMap<&str, Registered>) -> String {
    // Operators: roles are given with the library path of `mana-core-auth user set-role`.
    change_user(w, &ALICE, UserChange::SetRole(Role::Admin)).await;
    change_user(w, &ERIN, UserChange::SetRole(Role::Service)).await;
    w.tick(5);

    // Bob: a remember-me phone session, refreshed; logout of the registration session;
    // a mistyped password, a too-quick retry, then the right one.
    let bob = w.home(&BOB);
    let phone = json!({"deviceId": "bob-phone-7f3a", "deviceName": "Bob's phone", "rememberMe": true});
    let signed = login(&bob, &BOB, BOB.password, phone).await;
    expect(&signed, StatusCode::OK, "bob's phone");
    w.tick(600);
    let refreshed = bob.refresh(&signed.text("refreshToken")).await;
    expect(&refreshed, StatusCode::OK, "bob's phone refreshes");
    let bob_phone = refreshed.text("refreshToken");
    let registration = bob.refresh(&users[BOB.email].refresh_token).await;
    expect(&registration, StatusCode::OK, "bob's registration session refreshes");
    let logout = bob.post_auth("/api/v1/auth/logout", &registration.text("accessToken"), json!({})).await;
    expect(&logout, StatusCode::OK, "bob logs out of the registration session");
    w.tick(60);
    expect_error(
        &login(&bob, &BOB, "bob's long fixture passfrase", json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
        "bob's typo",
    );
    expect_error(
        &login(&bob, &BOB, BOB.password, json!({})).await,
        StatusCode::TOO_MANY_REQUESTS,
        "LOGIN_THROTTLED",
        "bob retries too soon",
    );
    w.tick(2);
    sign_in(w, &BOB).await;

    carols_sessions(w).await;
    daves_lockout_and_reset(w).await;
    strangers_and_olga(w).await;
    credits_of_day_zero(w, users).await;
    abandoned_attempt(w, &users[BOB.email].user_id).await;
    bob_phone
}

/// Carol: two devices, revoke the others, delete one session, change her password.
async fn carols_sessions(w: &World<'_>) {
    let carol = w.home(&CAROL);
    let tablet = json!({"deviceId": "carol-tablet-01", "deviceName": "Carol's tablet"});
    expect(&login(&carol, &CAROL, CAROL.first_password, tablet).await, StatusCode::OK, "carol's tablet");
    w.tick(30);
    let desk = login(&carol, &CAROL, CAROL.first_password, json!({})).await;
    expect(&desk, StatusCode::OK, "carol's desk");
    let desk = desk.text("accessToken");
    let revoked = carol.post_auth("/api/v1/auth/sessions/revoke-others", &desk, json!({})).await;
    expect(&revoked, StatusCode::OK, "revoke others");
    assert_eq!(revoked.body["revoked"], 2, "the registration and the tablet session");
    w.tick(30);
    let extra = login(&carol, &CAROL, CAROL.first_password, json!({})).await;
    expect(&extra, StatusCode::OK, "carol's third session");
    let session = carol.get_auth("/api/v1/auth/session", &extra.text("accessToken")).await;
    let session_id = session.body["session"]["id"].as_str().expect("session id").to_owned();
    let deleted = carol.delete_auth(&format!("/api/v1/auth/sessions/{session_id}"), &desk).await;
    expect(&deleted, StatusCode::OK, "delete one session");
    w.tick(120);
    let wrong = json!({"currentPassword": "carol's frist passphrase", "newPassword": CAROL.password});
    expect_error(
        &carol.post_auth("/api/v1/auth/change-password", &desk, wrong).await,
        StatusCode::BAD_REQUEST,
        "INVALID_CURRENT_PASSWORD",
        "carol's wrong current password",
    );
    w.tick(10);
    let right = json!({"currentPassword": CAROL.first_password, "newPassword": CAROL.password});
    expect(
        &carol.post_auth("/api/v1/auth/change-password", &desk, right).await,
        StatusCode::OK,
        "change password",
    );
}

/// Dave: strangers lock his unfamiliar class (threshold 5), he still signs in at home,
/// then forgets his password and resets it (which unlocks every class).
async fn daves_lockout_and_reset(w: &World<'_>) {
    w.tick(600);
    for n in 1..=5 {
        expect_error(
            &login(&w.stranger(n), &DAVE, "Summer2026!", json!({})).await,
            StatusCode::UNAUTHORIZED,
            "INVALID_CREDENTIALS",
            "a guess at dave's password",
        );
        w.tick(11);
    }
    expect_error(
        &login(&w.stranger(6), &DAVE, "Winter2026!", json!({})).await,
        StatusCode::TOO_MANY_REQUESTS,
        "LOGIN_THROTTLED",
        "dave's unfamiliar class is locked",
    );
    let dave = w.home(&DAVE);
    expect(&login(&dave, &DAVE, DAVE.first_password, json!({})).await, StatusCode::OK, "dave at home");
    w.tick(3600);
    let asked = dave.post("/api/v1/auth/forgot-password", json!({"email": DAVE.email})).await;
    expect(&asked, StatusCode::OK, "dave forgot his password");
    let mail = mail_to(w.app.state.db(), DAVE.email, "password_reset", 0).await;
    w.tick(240);
    let reset = json!({"token": token_in(&mail), "newPassword": DAVE.password});
    expect(&dave.post("/api/v1/auth/reset-password", reset).await, StatusCode::OK, "dave resets");
    w.tick(30);
    sign_in(w, &DAVE).await;
}

/// An unknown address tried and reset; olga disabled, refused, enabled.
async fn strangers_and_olga(w: &World<'_>) {
    let nobody = "nobody@example.com";
    let guess = json!({"email": nobody, "password": "password123456"});
    expect_error(
        &w.stranger(30).post("/api/v1/auth/login", guess).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
        "an unknown address",
    );
    let asked = w.stranger(30).post("/api/v1/auth/forgot-password", json!({"email": nobody})).await;
    expect(&asked, StatusCode::OK, "reset for an unknown address");
    w.tick(900);
    change_user(w, &OLGA, UserChange::Disable).await;
    w.tick(60);
    expect_error(
        &login(&w.home(&OLGA), &OLGA, OLGA.password, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
        "olga is disabled",
    );
    w.tick(1800);
    change_user(w, &OLGA, UserChange::Enable).await;
    w.tick(60);
    sign_in(w, &OLGA).await;
}

/// Spends (one replayed, one refused), an admin's grants and adjustment (one replayed),
/// a service's refund and grant.
async fn credits_of_day_zero(w: &World<'_>, users: &BTreeMap<&str, Registered>) {
    let bob = w.home(&BOB);
    let bob_token = &sign_in(w, &BOB).await;
    let first = json!({"amount": 30, "appId": "chat", "description": "A reply about sourdough",
        "idempotencyKey": "bob-chat-0001", "metadata": {"model": "m-large", "tokens": 812}});
    let spent = spend(&bob, bob_token, first.clone()).await;
    expect(&spent, StatusCode::CREATED, "bob spends");
    let spend_id = spent.body["transaction"]["id"].as_str().expect("transaction id").to_owned();
    let again = spend(&bob, bob_token, first).await;
    expect(&again, StatusCode::CREATED, "bob's spend replayed");
    assert_eq!(again.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    w.tick(45);
    let picture = json!({"amount": 50, "appId": "picture", "description": "A fox in the snow"});
    expect(&spend(&bob, bob_token, picture).await, StatusCode::CREATED, "bob's picture");
    let too_much = json!({"amount": 1_000_000, "appId": "picture", "description": "A poster"});
    expect_error(
        &spend(&bob, bob_token, too_much).await,
        StatusCode::BAD_REQUEST,
        "INSUFFICIENT_CREDITS",
        "too much",
    );
    w.tick(300);

    let alice = w.home(&ALICE);
    let admin = &sign_in(w, &ALICE).await;
    let bob_id = &users[BOB.email].user_id;
    let grant = json!({"userId": bob_id, "amount": 500, "pool": "paid",
        "reason": "Goodwill after the outage of 1 November", "idempotencyKey": "alice-grant-0001"});
    expect(
        &alice.post_auth("/api/v1/admin/credits/grant", admin, grant.clone()).await,
        StatusCode::CREATED,
        "grant",
    );
    let replayed = alice.post_auth("/api/v1/admin/credits/grant", admin, grant).await;
    expect(&replayed, StatusCode::CREATED, "grant replayed");
    assert_eq!(replayed.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    w.tick(20);
    let free = json!({"userId": &users[CAROL.email].user_id, "amount": 25, "pool": "free",
        "reason": "Beta tester thanks", "idempotencyKey": "alice-grant-0002"});
    expect(
        &alice.post_auth("/api/v1/admin/credits/grant", admin, free).await,
        StatusCode::CREATED,
        "free grant",
    );
    w.tick(20);
    let adjust = json!({"userId": bob_id, "amount": -40, "pool": "paid",
        "reason": "Goodwill grant was 40 too high", "idempotencyKey": "alice-adjust-0001"});
    expect(
        &alice.post_auth("/api/v1/admin/credits/adjust", admin, adjust).await,
        StatusCode::CREATED,
        "adjust",
    );
    w.tick(600);

    let erin = w.home(&ERIN);
    let service = &sign_in(w, &ERIN).await;
    let refund = json!({"transactionId": spend_id, "amount": 10, "reason": "The reply was cut off",
        "idempotencyKey": "billing-refund-0001"});
    expect(
        &erin.post_auth("/api/v1/admin/credits/refund", service, refund).await,
        StatusCode::CREATED,
        "refund",
    );
    w.tick(20);
    let dave_grant = json!({"userId": &users[DAVE.email].user_id, "amount": 5, "pool": "free",
        "reason": "Sorry about the lockout", "idempotencyKey": "billing-grant-0001"});
    expect(
        &erin.post_auth("/api/v1/admin/credits/grant", service, dave_grant).await,
        StatusCode::CREATED,
        "grant",
    );
}

/// The client went away while its password was being checked: the command the login
/// path's guard sends when an attempt is dropped unfinished (begin, then finish without
/// a verdict), through the command layer.
async fn abandoned_attempt(w: &World<'_>, bob_id: &str) {
    w.tick(3600);
    let attempts = Aggregates::new(w.app.state.store()).attempts;
    let stream = legacy_claim_id(BOB.email);
    let personal = SessionPersonal {
        ip_address: Some("127.0.1.2".into()),
        user_agent: Some("FixtureApp/1.0 (Bob Baker)".into()),
        ..Default::default()
    };
    let client = ClientInfo {
        request_id: Some(uuid::Uuid::new_v4().to_string()),
        ip: personal.ip_address.clone(),
        user_agent: personal.user_agent.clone(),
    };
    let now = w.app.state.now();
    let ctx = CommandContext::for_client(&client, bob_id, now);
    let policy = AttemptPolicy::login(LockoutPolicy { threshold: 5, lock_for: Duration::minutes(15) });
    let attempt_id = mana_core_auth::domain::uuid_at(now).to_string();
    let begin = LoginAttemptCommand::Begin {
        attempt_id: attempt_id.clone(),
        user_id: Some(bob_id.to_owned()),
        personal: personal.clone(),
        policy,
        may_wait: false,
        at: now,
    };
    let (id, who) = (attempt_id.clone(), personal.clone());
    let begun = attempts
        .execute_with(&stream, begin, &ctx, move |a| a.admission(&id, &who, policy, now))
        .await
        .expect("begin");
    assert_eq!(begun.reply, Admission::Started);
    let finish = LoginAttemptCommand::Finish {
        attempt_id,
        outcome: None,
        user_id: Some(bob_id.to_owned()),
        personal,
        policy,
        at: now,
    };
    attempts.execute(&stream, finish, &ctx).await.expect("abandon");
}

/// Daily grants and spends, frank's registration (his address has attempts from before
/// he registered), refresh-token reuse on carol's session, bob's phone refreshing.
async fn day_one(w: &World<'_>, bob_phone: String) -> String {
    let bob = w.home(&BOB);
    let bob_token = sign_in(w, &BOB).await;
    let balance = bob.get_auth("/api/v1/credits/balance", &bob_token).await;
    expect(&balance, StatusCode::OK, "bob's balance (the day's grant)");
    w.tick(120);
    let chat = json!({"amount": 25, "appId": "chat", "description": "Trip planning", "idempotencyKey": "bob-chat-0002"});
    expect(&spend(&bob, &bob_token, chat).await, StatusCode::CREATED, "bob's day-one spend");
    let carol_token = sign_in(w, &CAROL).await;
    let draw =
        json!({"amount": 5, "appId": "picture", "description": "A lighthouse", "metadata": {"size": "1024"}});
    expect(&spend(&w.home(&CAROL), &carol_token, draw).await, StatusCode::CREATED, "carol's spend");
    w.tick(3600);

    register(w, &FRANK).await;
    w.tick(60);
    let laptop = json!({"deviceId": "frank-laptop", "deviceName": "Frank's laptop"});
    expect(&login(&w.home(&FRANK), &FRANK, FRANK.password, laptop).await, StatusCode::OK, "frank");

    w.tick(1800);
    let carol = w.home(&CAROL);
    let signed = login(&carol, &CAROL, CAROL.password, json!({})).await;
    expect(&signed, StatusCode::OK, "carol signs in");
    let stolen = signed.text("refreshToken");
    w.tick(300);
    expect(&carol.refresh(&stolen).await, StatusCode::OK, "carol refreshes");
    w.tick(11);
    let thief = w.stranger(66);
    expect_error(&thief.refresh(&stolen).await, StatusCode::UNAUTHORIZED, "INVALID_REFRESH_TOKEN", "reuse");
    w.tick(3600);
    let refreshed = bob.refresh(&bob_phone).await;
    expect(&refreshed, StatusCode::OK, "bob's phone, a day later");
    refreshed.text("refreshToken")
}

/// Signing-key rotation (published ahead, activated, the old key retired and removed),
/// sign-ins under the new key, and the rate limits: a guesser and a runaway service.
async fn day_two(w: &World<'_>, bob_phone: String) -> String {
    let keys = w.app.state.auth().tokens().keys().clone();
    keys.rotate().await.expect("publish the next key");
    w.tick(11 * 60);
    keys.rotate().await.expect("activate it");
    let bob_token = sign_in(w, &BOB).await;
    assert_eq!(w.home(&BOB).validate(&bob_token).await["valid"], true);
    w.tick(60);
    let spend_body = json!({"amount": 3, "appId": "chat", "description": "Quick question"});
    expect(&spend(&w.home(&BOB), &bob_token, spend_body).await, StatusCode::CREATED, "bob, day two");
    w.tick(16 * 60);
    keys.rotate().await.expect("remove the old key");
    w.tick(300);

    let guesser = w.stranger(20);
    let mut limited = false;
    for _ in 0..40 {
        let answer = login(&guesser, &ERIN, "erin123456789", json!({})).await;
        if answer.body["error"] == "RATE_LIMITED" {
            limited = true;
            break;
        }
    }
    assert!(limited, "the login limit per address and e-mail trips");
    w.tick(60);
    let service = sign_in(w, &ERIN).await;
    let erin = w.home(&ERIN);
    let mut limited = false;
    for _ in 0..400 {
        let answer = erin.get_auth("/api/v1/credits/balance", &service).await;
        if answer.body["error"] == "RATE_LIMITED" {
            limited = true;
            break;
        }
    }
    assert!(limited, "the default limit per user trips");
    bob_phone
}
