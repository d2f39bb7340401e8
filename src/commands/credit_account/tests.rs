//! Rules of the credit account.

use super::*;

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
}

fn at(d: u32) -> DateTime<Utc> {
    day(d).and_hms_opt(12, 0, 0).unwrap().and_utc()
}

fn daily(d: u32) -> DailyGrant {
    DailyGrant { day: day(d), amount: 5, cap: None, transaction_id: format!("daily-{d}") }
}

/// The events `command` emits on `account`, decided through `handle`.
fn decide(account: &CreditAccount, command: CreditCommand) -> Result<Vec<CreditEvent>, CreditError> {
    let mut copy = account.clone();
    let sink = EventSink::default();
    futures::executor::block_on(async {
        copy.handle(command, &(), &sink).await?;
        Ok(sink.collect().await)
    })
}

fn opened(bonus: i64) -> CreditAccount {
    let mut account = CreditAccount::default();
    let command = CreditCommand::Open {
        user_id: "u".into(),
        signup_bonus: bonus,
        bonus_transaction_id: "b".into(),
        day: day(1),
        at: at(1),
    };
    for event in decide(&account, command).unwrap() {
        account.apply(event);
    }
    account
}

fn run(account: &mut CreditAccount, command: CreditCommand) -> Result<Vec<CreditEvent>, CreditError> {
    let events = decide(account, command)?;
    for event in events.clone() {
        account.apply(event);
    }
    Ok(events)
}

fn spend(id: &str, amount: i64, key: Option<(&str, &str)>, d: u32) -> CreditCommand {
    CreditCommand::Spend {
        transaction_id: id.into(),
        amount,
        app_id: "chat".into(),
        description: "x".into(),
        metadata: None,
        key: key.map(|(k, f)| KeyUse { key: k.into(), fingerprint: f.into() }),
        daily: daily(d),
        at: at(d),
    }
}

/// An operator's grant of `amount` paid credits on day 1.
fn paid_grant(amount: i64) -> CreditCommand {
    CreditCommand::Grant {
        transaction_id: "g".into(),
        pool: Pool::Paid,
        amount,
        actor: "admin".into(),
        reason: "r".into(),
        key: None,
        at: at(1),
    }
}

#[test]
fn the_signup_bonus_is_a_counted_free_grant_and_covers_its_day() {
    let mut account = opened(150);
    assert_eq!((account.balances, account.total_earned), (Balances { free: 150, paid: 0 }, 150));
    assert!(run(&mut account, CreditCommand::Touch { daily: daily(1), at: at(1) }).unwrap().is_empty());
    assert_eq!(run(&mut account, CreditCommand::Touch { daily: daily(2), at: at(2) }).unwrap().len(), 1);
    assert!(
        run(&mut account, CreditCommand::Touch { daily: daily(2), at: at(2) }).unwrap().is_empty(),
        "once a day"
    );
    assert_eq!(account.balances.free, 155);
    assert_eq!(
        run(&mut account, CreditCommand::Touch { daily: daily(9), at: at(9) }).unwrap().len(),
        1,
        "no catch-up"
    );
    assert_eq!(account.balances.free, 160);
}

#[test]
fn free_credits_are_spent_before_paid_ones() {
    let mut account = opened(10);
    run(&mut account, paid_grant(20)).unwrap();
    let events = run(&mut account, spend("s", 15, None, 1)).unwrap();
    let CreditEvent::CreditsSpent { from_free, from_paid, before, after, .. } = &events[0] else { panic!() };
    assert_eq!((*from_free, *from_paid, before.total(), after.total()), (10, 5, 30, 15));
    assert_eq!(
        run(&mut account, spend("t", 16, None, 1)),
        Err(CreditError::InsufficientCredits { available: 15 })
    );
}

#[test]
fn a_user_at_zero_can_spend_the_days_grant_and_a_refusal_grants_nothing() {
    let mut account = opened(0);
    assert_eq!(
        run(&mut account, spend("s", 6, None, 2)),
        Err(CreditError::InsufficientCredits { available: 5 })
    );
    assert_eq!(account.balances.free, 0, "a refused spend writes nothing");
    let events = run(&mut account, spend("s", 5, None, 2)).unwrap();
    assert_eq!(events.len(), 2, "grant, then spend");
    assert_eq!(account.balances.total(), 0);
}

#[test]
fn a_key_replays_its_request_and_refuses_another() {
    let mut account = opened(100);
    run(&mut account, spend("s1", 10, Some(("k", "f1")), 1)).unwrap();
    assert!(run(&mut account, spend("s2", 10, Some(("k", "f1")), 1)).unwrap().is_empty(), "replay");
    assert_eq!(account.balances.free, 90);
    assert_eq!(run(&mut account, spend("s3", 11, Some(("k", "f2")), 1)), Err(CreditError::KeyReused));
    assert!(
        matches!(account.keyed("k"), Some(CreditEvent::CreditsSpent { transaction_id, .. }) if transaction_id == "s1")
    );
    // Keys are forgotten after their retention.
    run(
        &mut account,
        CreditCommand::Touch { daily: daily(30), at: at(1) + KEY_RETENTION + Duration::days(1) },
    )
    .unwrap();
    assert!(account.keyed("k").is_none());
}

#[test]
fn refunds_return_to_the_pools_paid_first_and_never_exceed_the_spend() {
    let mut account = opened(10);
    run(&mut account, paid_grant(10)).unwrap();
    run(&mut account, spend("s", 15, None, 1)).unwrap();
    let refund = |id: &str, amount| CreditCommand::Refund {
        transaction_id: id.into(),
        spend_id: "s".into(),
        amount,
        actor: "svc".into(),
        reason: "failed".into(),
        key: None,
        at: at(1),
    };
    let events = run(&mut account, refund("r1", Some(7))).unwrap();
    let CreditEvent::CreditsRefunded { to_paid, to_free, .. } = &events[0] else { panic!() };
    assert_eq!((*to_paid, *to_free), (5, 2));
    assert_eq!(run(&mut account, refund("r2", Some(9))), Err(CreditError::RefundTooLarge { refundable: 8 }));
    run(&mut account, refund("r3", None)).unwrap();
    assert_eq!(account.balances.total(), 20);
    assert_eq!(account.total_spent, 0);
    assert_eq!(run(&mut account, refund("r4", None)), Err(CreditError::RefundTooLarge { refundable: 0 }));
}

#[test]
fn an_adjustment_cannot_take_a_pool_below_zero() {
    let mut account = opened(10);
    let adjust = |amount| CreditCommand::Adjust {
        transaction_id: "a".into(),
        pool: Pool::Free,
        amount,
        actor: "admin".into(),
        reason: "r".into(),
        key: None,
        at: at(1),
    };
    assert_eq!(run(&mut account, adjust(-11)), Err(CreditError::InsufficientCredits { available: 10 }));
    run(&mut account, adjust(-10)).unwrap();
    assert_eq!(account.balances.free, 0);
}

#[test]
fn a_cap_limits_daily_grants_but_not_the_signup_bonus() {
    let mut account = opened(150);
    let capped = DailyGrant { cap: Some(100), ..daily(2) };
    let events = run(&mut account, CreditCommand::Touch { daily: capped.clone(), at: at(2) }).unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(account.balances.free, 150);
    // A spend on day 1 (already granted by the registration) brings the pool below the cap.
    run(&mut account, spend("s", 60, None, 1)).unwrap();
    let events = run(&mut account, CreditCommand::Touch { daily: capped, at: at(2) }).unwrap();
    assert!(
        matches!(&events[0], CreditEvent::CreditsGranted { amount: 5, .. }),
        "below the cap again: {events:?}"
    );
}
