use chrono::{DateTime, NaiveDate, Utc};

use super::*;
use crate::events::credits::Balances;
use crate::projections::ledger::transaction_of;

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_793_606_400, 0).expect("a time")
}

fn grant(source: GrantSource, pool: Pool, amount: i64) -> CreditEvent {
    CreditEvent::CreditsGranted {
        transaction_id: "t".into(),
        source,
        pool,
        amount: Credits::new(amount),
        before: Balances::default(),
        after: Balances::default(),
        description: "d".into(),
        key: None,
        granted_at: at(),
    }
}

fn spend(free: i64, paid: i64) -> CreditEvent {
    CreditEvent::CreditsSpent {
        transaction_id: "t".into(),
        amount: Credits::new(free + paid),
        from_free: Credits::new(free),
        from_paid: Credits::new(paid),
        before: Balances::default(),
        after: Balances::default(),
        total_spent_after: Credits::ZERO,
        app_id: "chat".into(),
        description: "d".into(),
        metadata: None,
        key: None,
        spent_at: at(),
    }
}

fn refund(free: i64, paid: i64) -> CreditEvent {
    CreditEvent::CreditsRefunded {
        transaction_id: "t".into(),
        refunded_transaction_id: "s".into(),
        amount: Credits::new(free + paid),
        to_free: Credits::new(free),
        to_paid: Credits::new(paid),
        before: Balances::default(),
        after: Balances::default(),
        actor: "a".into(),
        reason: "r".into(),
        key: None,
        refunded_at: at(),
    }
}

fn adjust(pool: Pool, amount: i64) -> CreditEvent {
    CreditEvent::CreditsAdjusted {
        transaction_id: "t".into(),
        pool,
        amount: Credits::new(amount),
        before: Balances::default(),
        after: Balances::default(),
        actor: "a".into(),
        reason: "r".into(),
        key: None,
        adjusted_at: at(),
    }
}

fn admin() -> GrantSource {
    GrantSource::Admin { actor: "a".into(), reason: "r".into() }
}

/// The examples of docs/PROJECTIONS.md: (label, event, the refunded spend's app).
fn examples() -> Vec<(&'static str, CreditEvent, Option<&'static str>)> {
    let day = NaiveDate::from_ymd_opt(2026, 11, 3).expect("a day");
    vec![
        ("Signup bonus of 150", grant(GrantSource::SignupBonus, Pool::Free, 150), None),
        ("Daily free credits of 5", grant(GrantSource::Daily { day }, Pool::Free, 5), None),
        ("Operator's free grant of 100", grant(admin(), Pool::Free, 100), None),
        ("Operator's paid grant of 500", grant(admin(), Pool::Paid, 500), None),
        ("Spend of 30 in `chat`, all free", spend(30, 0), None),
        ("Spend of 160 in `chat`: 150 free, 10 paid", spend(150, 10), None),
        ("Refund of 12 of that spend: 10 paid, 2 free", refund(2, 10), Some("chat")),
        ("Refund of a spend the ledger does not know", refund(3, 0), None),
        ("Adjustment of +20 paid", adjust(Pool::Paid, 20), None),
        ("Adjustment of -5 free", adjust(Pool::Free, -5), None),
    ]
}

/// A table row as docs/PROJECTIONS.md writes it.
fn row(label: &str, event: &CreditEvent, refunded_app: Option<&str>) -> String {
    let kind = transaction_of("<id>", event).map_or("-", |t| t.kind.as_str());
    let lines: Vec<String> = postings_of("<id>", event, refunded_app)
        .iter()
        .map(|p| format!("`{}` {:+}", p.account, p.amount.get()))
        .collect();
    format!("| {label} | `{kind}` | {} |", lines.join(", "))
}

#[test]
fn every_example_of_docs_projections_md_is_what_the_rules_post() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROJECTIONS.md");
    let doc = std::fs::read_to_string(path).expect("docs/PROJECTIONS.md");
    let start = doc.find("<!-- postings:begin -->").expect("a postings:begin marker");
    let end = doc.find("<!-- postings:end -->").expect("a postings:end marker");
    let documented: Vec<&str> = doc[start..end]
        .lines()
        .filter(|line| line.starts_with('|'))
        .skip(2) // the header and its rule
        .collect();
    let expected: Vec<String> = examples().iter().map(|(label, e, app)| row(label, e, *app)).collect();
    assert_eq!(
        documented, expected,
        "docs/PROJECTIONS.md's postings examples and chart::postings_of disagree"
    );
}

#[test]
fn the_postings_of_every_example_sum_to_zero_and_there_are_at_least_two() {
    for (label, event, app) in examples() {
        let lines = postings_of("u", &event, app);
        assert!(lines.len() >= 2, "{label}: {lines:?}");
        assert_eq!(lines.iter().map(|p| p.amount).sum::<Credits>(), Credits::ZERO, "{label}");
    }
}

#[test]
fn every_account_reads_back_from_its_text() {
    let mut accounts = SYSTEM_ACCOUNTS.to_vec();
    accounts.extend([
        Account::user("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", Pool::Free),
        Account::user("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", Pool::Paid),
        Account::usage("chat"),
        Account::usage("picture.v2"),
    ]);
    for account in accounts {
        let text = account.to_string();
        assert_eq!(text.parse::<Account>(), Ok(account), "{text}");
    }
    assert_eq!(Account::DailyFree.to_string(), "system:daily_free");
    assert_eq!(Account::user("u-1", Pool::Paid).to_string(), "user:u-1:paid");
}

#[test]
fn text_outside_the_chart_is_refused() {
    for bad in
        ["", "system", "system:", "system:usage:", "system:bonus", "user:u-1", "user::free", "user:u-1:gold"]
    {
        assert!(bad.parse::<Account>().is_err(), "{bad:?} was accepted");
    }
}
