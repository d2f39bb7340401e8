//! The double-entry ledger (issue 13) on both engines, after a realistic mix of credit
//! operations: postings follow the chart and sum to zero per transaction; the trial
//! balance is 0 now, at a past time and at a cursor, and its user accounts equal the
//! balances (now) and the history (then); the CLI answers what the route answers; a
//! refund posts to its spend's app whatever the batching; and usage figures per day, app
//! and user add up to the transactions, a service seeing only its own app.

mod common;
#[path = "ledger/world.rs"]
mod world;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use common::api::Api;
use common::{ENGINES, TestApp, TestDb, binary, open_store};
use mana_core_auth::clock::{ManualClock, SystemClock};
use mana_core_auth::events::LogCursor;
use mana_core_auth::events::auth::Role;
use mana_core_auth::events::credits::{CreditEvent, GrantSource, Pool};
use mana_core_auth::projections::ledger_postings::LedgerPostings;
use mana_core_auth::projections::{Projector, ProjectorSettings};
use reqwest::StatusCode;
use serde_json::Value;
use world::{Person, day_one, realistic};

const TRIAL_BALANCE: &str = "/api/v1/admin/ledger/trial-balance";

/// The trial balance as the route answers it (200 asserted).
async fn trial_balance(api: &Api, token: &str, at: Option<&str>) -> Value {
    let query = at.map(|at| format!("?at={}", urlencode(at))).unwrap_or_default();
    let answer = api.get_auth(&format!("{TRIAL_BALANCE}{query}"), token).await;
    assert_eq!(answer.status, StatusCode::OK, "{at:?}: {}", answer.body);
    answer.body
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// account → balance of a trial balance answer, checking that they sum to its total, 0.
fn accounts(answer: &Value) -> BTreeMap<String, i64> {
    let accounts: BTreeMap<String, i64> = answer["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| (a["account"].as_str().expect("name").to_owned(), a["balance"].as_i64().expect("balance")))
        .collect();
    assert_eq!(accounts.values().sum::<i64>(), 0, "the balances sum to zero: {answer}");
    assert_eq!(answer["total"], 0, "{answer}");
    accounts
}

fn pool_name(pool: Pool) -> &'static str {
    match pool {
        Pool::Free => "free",
        Pool::Paid => "paid",
    }
}

/// The postings the chart asks for, worked out here from the event alone.
fn expected_postings(
    user: &str,
    event: &CreditEvent,
    spend_apps: &HashMap<String, String>,
) -> Vec<(String, i64)> {
    let pools = |free: i64, paid: i64| {
        let mut lines = Vec::new();
        if free != 0 {
            lines.push((format!("user:{user}:free"), free));
        }
        if paid != 0 {
            lines.push((format!("user:{user}:paid"), paid));
        }
        lines
    };
    match event {
        CreditEvent::CreditAccountOpened { .. } => Vec::new(),
        CreditEvent::CreditsGranted { source, pool, amount, .. } => {
            let from = match source {
                GrantSource::SignupBonus => "system:signup_bonus",
                GrantSource::Daily { .. } => "system:daily_free",
                GrantSource::Admin { .. } => "system:adjustments",
            };
            vec![
                (from.to_owned(), -amount.get()),
                (format!("user:{user}:{}", pool_name(*pool)), amount.get()),
            ]
        }
        CreditEvent::CreditsSpent { amount, from_free, from_paid, app_id, .. } => {
            let mut lines = vec![(format!("system:usage:{app_id}"), amount.get())];
            lines.extend(pools(-from_free.get(), -from_paid.get()));
            lines
        }
        CreditEvent::CreditsRefunded { refunded_transaction_id, amount, to_free, to_paid, .. } => {
            let app = &spend_apps[refunded_transaction_id];
            let mut lines = vec![(format!("system:usage:{app}"), -amount.get())];
            lines.extend(pools(to_free.get(), to_paid.get()));
            lines
        }
        CreditEvent::CreditsAdjusted { pool, amount, .. } => {
            vec![
                ("system:adjustments".to_owned(), -amount.get()),
                (format!("user:{user}:{}", pool_name(*pool)), amount.get()),
            ]
        }
        CreditEvent::CreditsPurchased { amount, .. } => {
            vec![("system:purchases".to_owned(), -amount.get()), (format!("user:{user}:paid"), amount.get())]
        }
        CreditEvent::PurchaseCreditsReversed { amount, .. } => {
            vec![
                ("system:purchase_refunds".to_owned(), amount.get()),
                (format!("user:{user}:paid"), -amount.get()),
            ]
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credit_event_posts_by_the_chart_and_each_transactions_postings_sum_to_zero() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(day_one());
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        realistic(&app, &api, &clock).await;
        let events = world::log(&app).await;
        let credit = world::credit_events(&events);
        let stored = world::postings(app.state.db()).await;
        let types = world::transaction_types(app.state.db()).await;

        let mut spend_apps = HashMap::new();
        let (mut transactions, mut lines_expected) = (0, 0);
        for (recorded, event) in &credit {
            if let CreditEvent::CreditsSpent { transaction_id, app_id, .. } = event {
                spend_apps.insert(transaction_id.clone(), app_id.clone());
            }
            let Some(id) = world::transaction_id(event) else { continue };
            transactions += 1;
            let mine: Vec<_> = stored.iter().filter(|p| p.transaction_id == id).collect();
            let lines: Vec<(String, i64)> = mine.iter().map(|p| (p.account.clone(), p.amount)).collect();
            let expected = expected_postings(&recorded.aggregate_id, event, &spend_apps);
            lines_expected += expected.len();
            assert_eq!(lines, expected, "{engine:?}: the postings of {} {id}", recorded.event_type);
            assert!(lines.len() >= 2, "{engine:?}: {id}");
            assert_eq!(lines.iter().map(|l| l.1).sum::<i64>(), 0, "{engine:?}: {id} sums to zero");
            let numbers: Vec<i64> = mine.iter().map(|p| p.line).collect();
            assert_eq!(numbers, (1..=mine.len() as i64).collect::<Vec<_>>(), "{engine:?}: lines from 1");
            for posting in &mine {
                assert_eq!(posting.cursor, recorded.cursor, "{engine:?}: a posting keeps its event's cursor");
                assert_eq!(Some(&posting.kind), types.get(id), "{engine:?}: the type of credit_transactions");
                let app = match event {
                    CreditEvent::CreditsSpent { app_id, .. } => Some(app_id.clone()),
                    CreditEvent::CreditsRefunded { refunded_transaction_id, .. } => {
                        Some(spend_apps[refunded_transaction_id].clone())
                    }
                    _ => None,
                };
                assert_eq!(posting.app_id, app, "{engine:?}: {id}");
            }
        }
        assert_eq!(transactions, types.len(), "{engine:?}: one transaction per credit_transactions row");
        assert_eq!(stored.len(), lines_expected, "{engine:?}: no posting outside the transactions");
        assert!(transactions >= 20, "{engine:?}: a realistic mix ({transactions} transactions)");
        for kind in ["bonus", "usage", "refund", "adjustment"] {
            assert!(types.values().any(|t| t == kind), "{engine:?}: the mix has {kind}");
        }
        app.stop().await;
    }
}

/// The balances after a credit event, when it moves credits.
fn after(event: &CreditEvent) -> Option<(i64, i64)> {
    let balances = match event {
        CreditEvent::CreditAccountOpened { .. } => return None,
        CreditEvent::CreditsGranted { after, .. }
        | CreditEvent::CreditsSpent { after, .. }
        | CreditEvent::CreditsRefunded { after, .. }
        | CreditEvent::CreditsAdjusted { after, .. }
        | CreditEvent::CreditsPurchased { after, .. }
        | CreditEvent::PurchaseCreditsReversed { after, .. } => after,
    };
    Some((balances.free.get(), balances.paid.get()))
}

/// Each person's accounts in a trial balance equal what they held at its cursor: the
/// pools after their last credit event up to it, and the history's `balanceAfter` of
/// their last transaction up to it.
async fn users_hold_what_they_held(
    api: &Api,
    answer: &Value,
    people: &[&Person],
    events: &[mana_core_auth::events::RecordedEvent],
) {
    let at: LogCursor = answer["cursor"].as_str().expect("cursor").parse().expect("a cursor");
    let balances = accounts(answer);
    let credit = world::credit_events(events);
    for person in people {
        let mine: Vec<_> =
            credit.iter().filter(|(e, _)| e.aggregate_id == person.id && e.cursor <= at).collect();
        let (free, paid) = mine.iter().rev().find_map(|(_, e)| after(e)).unwrap_or((0, 0));
        let held = |pool: &str| balances.get(&format!("user:{}:{pool}", person.id)).copied().unwrap_or(0);
        assert_eq!((held("free"), held("paid")), (free, paid), "{} at {at}", person.email);

        let history = person.history(api).await;
        let cursors: HashMap<&str, LogCursor> =
            mine.iter().filter_map(|(e, d)| world::transaction_id(d).map(|id| (id, e.cursor))).collect();
        let last = history.iter().find(|t| cursors.contains_key(t["id"].as_str().expect("id")));
        let total = last.map_or(0, |t| t["balanceAfter"].as_i64().expect("balanceAfter"));
        assert_eq!(
            held("free") + held("paid"),
            total,
            "{}: the history's balance after, at {at}",
            person.email
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trial_balance_is_zero_now_at_a_past_time_and_at_a_cursor_and_users_hold_their_balances() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(day_one());
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let story = realistic(&app, &api, &clock).await;
        let token = &story.admin.token;
        let events = world::log(&app).await;
        let mut people: Vec<&Person> = story.people.iter().collect();
        people.push(&story.admin);

        // Now: at the ledger's checkpoint, every user account equals the balances table.
        let now = trial_balance(&api, token, None).await;
        assert_eq!(now["requestedCursor"], Value::Null, "{engine:?}");
        let now_accounts = accounts(&now);
        let balances = world::balances(app.state.db()).await;
        assert_eq!(balances.len(), people.len(), "{engine:?}");
        for (user, (free, paid)) in &balances {
            let held = |pool: &str| now_accounts.get(&format!("user:{user}:{pool}")).copied().unwrap_or(0);
            assert_eq!((held("free"), held("paid")), (*free, *paid), "{engine:?}: {user} equals balances");
        }
        for account in now_accounts.keys().filter(|a| a.starts_with("user:")) {
            let user = account.trim_start_matches("user:").rsplit_once(':').expect("pool").0;
            assert!(balances.contains_key(user), "{engine:?}: {account} is an account of a user");
        }
        assert!(
            now_accounts["system:usage:chat"] > 0 && now_accounts["system:signup_bonus"] == -600,
            "{now}"
        );
        users_hold_what_they_held(&api, &now, &people, &events).await;
        let again = trial_balance(&api, token, now["cursor"].as_str()).await;
        assert_eq!(
            (&again["cursor"], accounts(&again)),
            (&now["cursor"], now_accounts.clone()),
            "{engine:?}"
        );

        // At a past time: the last event recorded by then.
        let mid = events.iter().filter(|e| e.recorded_at <= story.mid_day_one).map(|e| e.cursor).max();
        let mid = mid.expect("events before noon").to_string();
        let then = trial_balance(&api, token, Some(&story.mid_day_one.to_rfc3339())).await;
        assert_eq!((then["cursor"].as_str(), then["requestedCursor"].as_str()), (Some(&*mid), Some(&*mid)));
        assert_ne!(accounts(&then), now_accounts, "{engine:?}: the past differs from now");
        users_hold_what_they_held(&api, &then, &people, &events).await;

        // At a cursor (Bob's refund): the same answer every time.
        let refund = world::credit_events(&events)
            .into_iter()
            .find(|(_, e)| {
                matches!(e, CreditEvent::CreditsRefunded { refunded_transaction_id, .. } if *refunded_transaction_id == story.bob_chat)
            })
            .map(|(e, _)| e.cursor.to_string())
            .expect("bob's refund");
        let at_refund = trial_balance(&api, token, Some(&refund)).await;
        assert_eq!(at_refund["cursor"].as_str(), Some(&*refund), "{engine:?}");
        users_hold_what_they_held(&api, &at_refund, &people, &events).await;
        assert_eq!(trial_balance(&api, token, Some(&refund)).await, at_refund, "{engine:?}: asked again");

        // Before the log: nothing. Beyond it: the ledger's end, saying what was asked.
        let before = trial_balance(&api, token, Some("2000-01-01T00:00:00Z")).await;
        assert_eq!((before["cursor"].as_str(), accounts(&before).len()), (Some("0:0"), 0), "{engine:?}");
        let far = "9000000000000000000:1";
        let beyond = trial_balance(&api, token, Some(far)).await;
        assert_eq!(
            (beyond["requestedCursor"].as_str(), accounts(&beyond)),
            (Some(far), now_accounts),
            "{engine:?}"
        );
        let end: LogCursor = beyond["cursor"].as_str().expect("cursor").parse().expect("cursor");
        assert!(
            end >= now["cursor"].as_str().expect("cursor").parse().expect("cursor"),
            "{engine:?}: {beyond}"
        );

        for bad in ["?at=yesterday", "?at=2026-11-02", "?when=0:1", "?at=1:2&at=1:3"] {
            let refused = api.get_auth(&format!("{TRIAL_BALANCE}{bad}"), token).await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{engine:?} {bad}");
            assert_eq!(refused.body["error"], "VALIDATION_FAILED", "{engine:?} {bad}: {}", refused.body);
        }
        app.stop().await;
    }
}

/// `mana-core-auth ledger trial-balance --json [args]` on the test's database.
fn cli(db: &TestDb, args: &[&str]) -> (Value, String) {
    // The wait leaves this runtime's other tasks (the in-process server) running: a server
    // frozen mid-batch would hold the locks the command's own catch-up waits for.
    tokio::task::block_in_place(|| cli_blocking(db, args))
}

fn cli_blocking(db: &TestDb, args: &[&str]) -> (Value, String) {
    let run = |json: bool| {
        let output = std::process::Command::new(binary())
            .args(["ledger", "trial-balance"])
            .args(json.then_some("--json"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db.url())
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{args:?}: {stderr}");
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let json = serde_json::from_str(&run(true)).expect("the CLI prints JSON");
    (json, run(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_trial_balance_the_route_answers() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(day_one());
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let story = realistic(&app, &api, &clock).await;
        let token = &story.admin.token;

        let (now, table) = cli(&db, &[]);
        let cursor = now["cursor"].as_str().expect("cursor").to_owned();
        let route = trial_balance(&api, token, Some(&cursor)).await;
        assert_eq!((&now["accounts"], &now["total"]), (&route["accounts"], &route["total"]), "{engine:?}");
        assert_eq!(now["requestedCursor"], Value::Null, "{engine:?}");
        assert!(table.contains(&format!("at cursor {cursor}")), "{engine:?}: {table}");
        let total_line = table.lines().find(|l| l.starts_with("total")).expect("a total line");
        assert_eq!(total_line.split_whitespace().collect::<Vec<_>>(), ["total", "0"], "{engine:?}");
        let bonus = table.lines().find(|l| l.starts_with("system:signup_bonus")).expect("the bonus account");
        assert!(bonus.ends_with("-600"), "{engine:?}: {bonus}");

        let mid = story.mid_day_one.to_rfc3339();
        for at in [cursor.as_str(), "0:0", mid.as_str()] {
            let (printed, _) = cli(&db, &["--at", at]);
            assert_eq!(printed, trial_balance(&api, token, Some(at)).await, "{engine:?}: --at {at}");
        }
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_posts_to_its_spends_app_whether_the_spend_came_in_the_same_batch_or_an_earlier_one() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(day_one());
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let story = realistic(&app, &api, &clock).await;
        let live = world::postings(app.state.db()).await;
        app.stop().await;
        drop(story);

        let store = open_store(&db).await;
        let mut rebuilt = Vec::new();
        for batch_size in [1, 10_000] {
            let settings =
                ProjectorSettings { batch_size, poll_interval: std::time::Duration::from_millis(50) };
            let projector = Projector::new(
                store.clone(),
                Arc::new(SystemClock),
                settings,
                vec![Arc::new(LedgerPostings)],
            );
            projector.init().await.expect("init");
            projector.rebuild("ledger_postings").await.expect("rebuild");
            rebuilt.push(world::postings(store.db()).await);
        }
        assert_eq!(rebuilt[0], live, "{engine:?}: one event per batch (spends looked up in the table)");
        assert_eq!(rebuilt[1], live, "{engine:?}: one batch (spends found in the batch)");
        let refunds: Vec<_> = live.iter().filter(|p| p.kind == "refund" && p.line == 1).collect();
        assert_eq!(refunds.len(), 3, "{engine:?}: the story's three refunds");
        for refund in refunds {
            assert_eq!(
                Some(refund.account.clone()),
                refund.app_id.as_ref().map(|a| format!("system:usage:{a}"))
            );
        }
    }
}

/// One spend or refund as the histories tell it.
struct Movement {
    day: String,
    app: String,
    user: String,
    used: i64,
    refunded: i64,
}

/// Every spend and refund of `people`, from their transaction histories (a refund's app
/// is its spend's).
async fn movements(api: &Api, people: &[&Person]) -> Vec<Movement> {
    let mut found = Vec::new();
    for person in people {
        let history = person.history(api).await;
        let app_of = |id: &str| {
            let spend = history.iter().find(|t| t["id"] == id).expect("the refunded spend");
            spend["appId"].as_str().expect("app").to_owned()
        };
        for t in &history {
            let day = t["createdAt"].as_str().expect("time")[..10].to_owned();
            let amount = t["amount"].as_i64().expect("amount");
            let (app, used, refunded) = match t["type"].as_str() {
                Some("usage") => (t["appId"].as_str().expect("app").to_owned(), -amount, 0),
                Some("refund") => {
                    (app_of(t["metadata"]["refundedTransactionId"].as_str().expect("spend")), 0, amount)
                }
                _ => continue,
            };
            found.push(Movement { day, app, user: person.id.clone(), used, refunded });
        }
    }
    found
}

/// key → (used, refunded, spends, refunds).
type Figures = BTreeMap<String, (i64, i64, i64, i64)>;

fn group(movements: &[Movement], key: fn(&Movement) -> &str, keep: impl Fn(&Movement) -> bool) -> Figures {
    let mut figures = Figures::new();
    for m in movements.iter().filter(|m| keep(m)) {
        let entry = figures.entry(key(m).to_owned()).or_default();
        entry.0 += m.used;
        entry.1 += m.refunded;
        entry.2 += i64::from(m.used > 0);
        entry.3 += i64::from(m.refunded > 0);
    }
    figures
}

/// The groups of a usage answer, checking its total and net figures add up.
fn groups(answer: &Value) -> Figures {
    let figures = |v: &Value| {
        let n = |name: &str| v[name].as_i64().unwrap_or_else(|| panic!("{name} in {v}"));
        assert_eq!(n("netCreditsUsed"), n("creditsUsed") - n("creditsRefunded"), "{v}");
        (n("creditsUsed"), n("creditsRefunded"), n("spends"), n("refunds"))
    };
    let groups: Figures = answer["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (g["key"].as_str().expect("key").to_owned(), figures(g)))
        .collect();
    let sum = groups.values().fold((0, 0, 0, 0), |a, g| (a.0 + g.0, a.1 + g.1, a.2 + g.2, a.3 + g.3));
    assert_eq!(figures(&answer["total"]), sum, "the total is the sum of the groups: {answer}");
    groups
}

async fn usage(api: &Api, token: &str, query: &str) -> common::api::Answer {
    api.get_auth(&format!("/api/v1/admin/usage?{query}"), token).await
}

async fn usage_groups(api: &Api, token: &str, query: &str) -> Figures {
    let answer = usage(api, token, query).await;
    assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.body);
    groups(&answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_per_day_app_and_user_adds_up_to_the_transactions_and_a_service_sees_only_its_app() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(day_one());
        // A service is bound to its app by configuration (SERVICE_APPS), by user id.
        let unbound_app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&unbound_app.base);
        let (mut chat_service, mut unbound) =
            (Person::register(&api, "chat-service").await, Person::register(&api, "unbound").await);
        unbound_app.stop().await;
        let mut config = db.app_config();
        config.service_apps.insert(chat_service.id.clone(), "chat".to_owned());
        let app = TestApp::spawn_with_clock(config, clock.clone()).await;
        let api = Api::new(&app.base);
        let story = realistic(&app, &api, &clock).await;
        chat_service.promote(&app, &api, &clock, Role::Service).await;
        unbound.promote(&app, &api, &clock, Role::Service).await;
        let auditor = Person::with_role(&app, &api, &clock, Role::Auditor).await;
        let admin = &story.admin.token;

        let mut people: Vec<&Person> = story.people.iter().collect();
        people.push(&story.admin);
        let moved = movements(&api, &people).await;
        let all = |_: &Movement| true;
        let by_day = group(&moved, |m| &m.day, all);
        assert_eq!(by_day.keys().collect::<Vec<_>>(), ["2026-11-02", "2026-11-03"], "{engine:?}");
        assert!(by_day.values().all(|f| f.1 > 0), "{engine:?}: refunds on both days: {by_day:?}");
        assert_eq!(usage_groups(&api, admin, "groupBy=day").await, by_day, "{engine:?}");
        assert_eq!(usage_groups(&api, admin, "").await, by_day, "{engine:?}: day is the default");
        assert_eq!(
            usage_groups(&api, admin, "groupBy=app").await,
            group(&moved, |m| &m.app, all),
            "{engine:?}"
        );
        assert_eq!(
            usage_groups(&api, admin, "groupBy=user").await,
            group(&moved, |m| &m.user, all),
            "{engine:?}"
        );
        let chat = |m: &Movement| m.app == "chat";
        let chat_users = group(&moved, |m| &m.user, chat);
        assert_eq!(usage_groups(&api, admin, "appId=chat&groupBy=user").await, chat_users, "{engine:?}");
        let day_two = group(&moved, |m| &m.app, |m| m.day == "2026-11-03");
        let period = "from=2026-11-03&to=2026-11-04T00%3A00%3A00Z&groupBy=app";
        assert_eq!(usage_groups(&api, admin, period).await, day_two, "{engine:?}: [from, to)");
        assert_eq!(usage_groups(&api, &auditor.token, "groupBy=app").await.len(), 3, "{engine:?}");

        // A service: its own app whether it names it or not; never another's.
        let own = usage(&api, &chat_service.token, "groupBy=user").await;
        assert_eq!((own.status, own.body["appId"].as_str()), (StatusCode::OK, Some("chat")), "{engine:?}");
        assert_eq!(groups(&own.body), chat_users, "{engine:?}");
        assert_eq!(usage_groups(&api, &chat_service.token, "appId=chat&groupBy=user").await, chat_users);
        for (token, query) in [
            (&chat_service.token, "appId=picture"),
            (&unbound.token, ""),
            (&unbound.token, "appId=chat"),
            (&story.people[0].token, ""),
        ] {
            let refused = usage(&api, token, query).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{engine:?} {query}: {}", refused.body);
            assert_eq!(refused.body["error"], "FORBIDDEN", "{engine:?}: the one error shape");
        }

        for bad in [
            "groupBy=week",
            "groupBy=day&from=soon",
            "from=2026-11-03&to=2026-11-02",
            "appId=a%20b",
            "app=chat",
        ] {
            let refused = usage(&api, admin, bad).await;
            assert_eq!(
                (refused.status, refused.body["error"].as_str(), refused.body["statusCode"].as_i64()),
                (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED"), Some(400)),
                "{engine:?} {bad}: {}",
                refused.body
            );
        }
        let week = usage(&api, admin, "groupBy=week").await;
        assert!(week.body["message"].to_string().contains("groupBy"), "{engine:?}: {}", week.body);
        app.stop().await;
    }
}
