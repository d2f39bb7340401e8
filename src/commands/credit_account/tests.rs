//! Rules of the credit account, given/when/then: one test per rule, at fixed instants.

use cqrs_es::Aggregate;

use super::*;

mod fixtures;
mod properties;

use fixtures::*;

// Opening.

#[test]
fn opening_an_account_grants_the_signup_bonus_as_free_credits() {
    Account::with(())
        .given_no_previous_events()
        .when(open(150))
        .then_expect_events(vec![opened(), signup_bonus(150)]);
}

#[test]
fn opening_without_a_signup_bonus_records_only_the_opening() {
    Account::with(()).given_no_previous_events().when(open(0)).then_expect_events(vec![opened()]);
}

#[test]
fn an_account_opens_only_once() {
    Account::with(()).given(vec![opened()]).when(open(150)).then_expect_error(CreditError::AlreadyOpen);
}

#[test]
fn an_account_never_opened_refuses_every_other_command() {
    for command in [
        touch(1),
        spend("s1", 1, 0),
        grant(Pool::Paid, 1),
        adjust(Pool::Free, 1),
        refund("r1", "s1", None, 0),
    ] {
        Account::with(()).given_no_previous_events().when(command).then_expect_error(CreditError::NotOpen);
    }
}

// The day's free credits.

#[test]
fn the_first_balance_read_of_a_new_day_grants_the_days_free_credits() {
    Account::with(())
        .given(vec![opened(), signup_bonus(150)])
        .when(touch(1))
        .then_expect_events(vec![daily_granted(1, 5, b(150, 0))]);
}

#[test]
fn the_registration_day_counts_as_granted() {
    Account::with(()).given(vec![opened(), signup_bonus(150)]).when(touch(0)).then_expect_events(vec![]);
}

#[test]
fn a_day_is_granted_once_and_a_read_dated_before_it_grants_nothing() {
    for d in [2, 1] {
        Account::with(())
            .given(vec![opened(), daily_granted(2, 5, b(0, 0))])
            .when(touch(d))
            .then_expect_events(vec![]);
    }
}

#[test]
fn missed_days_are_not_caught_up() {
    Account::with(()).given(vec![opened()]).when(touch(9)).then_expect_events(vec![daily_granted(
        9,
        5,
        b(0, 0),
    )]);
}

#[test]
fn a_cap_limits_the_days_grant_to_the_room_below_it() {
    for (free, granted) in [(98, 2), (10, 5)] {
        let capped = DailyGrant { cap: Some(c(100)), ..daily(1) };
        Account::with(())
            .given(vec![opened(), signup_bonus(free)])
            .when(CreditCommand::Touch { daily: capped, at: at(1) })
            .then_expect_events(vec![daily_granted(1, granted, b(free, 0))]);
    }
}

#[test]
fn a_reached_cap_or_no_daily_credits_grant_nothing_rather_than_zero() {
    for grant in [DailyGrant { cap: Some(c(100)), ..daily(1) }, DailyGrant { amount: c(0), ..daily(1) }] {
        Account::with(())
            .given(vec![opened(), signup_bonus(150)])
            .when(CreditCommand::Touch { daily: grant, at: at(1) })
            .then_expect_events(vec![]);
    }
}

// Spends.

#[test]
fn a_spend_takes_free_credits_before_paid_ones() {
    Account::with(())
        .given(vec![opened(), signup_bonus(10), granted(Pool::Paid, 20, b(10, 0))])
        .when(spend("s1", 15, 0))
        .then_expect_events(vec![spent("s1", (10, 5), b(10, 20), 15, 0)]);
}

#[test]
fn a_spend_carries_the_total_spent_including_earlier_spends() {
    Account::with(())
        .given(vec![opened(), signup_bonus(100), spent("s1", (10, 0), b(100, 0), 10, 0)])
        .when(spend("s2", 5, 0))
        .then_expect_events(vec![spent("s2", (5, 0), b(90, 0), 15, 0)]);
}

#[test]
fn a_spend_above_the_balance_is_refused_with_what_is_available() {
    Account::with(())
        .given(vec![opened(), signup_bonus(10), granted(Pool::Paid, 5, b(10, 0))])
        .when(spend("s1", 16, 0))
        .then_expect_error(CreditError::InsufficientCredits { available: c(15) });
}

#[test]
fn the_first_spend_of_a_new_day_is_preceded_by_the_days_grant_and_may_use_it() {
    Account::with(())
        .given(vec![opened()])
        .when(spend("s1", 5, 2))
        .then_expect_events(vec![daily_granted(2, 5, b(0, 0)), spent("s1", (5, 0), b(5, 0), 5, 2)]);
}

#[test]
fn a_refused_spend_counts_the_days_grant_as_available_and_grants_nothing() {
    Account::with(())
        .given(vec![opened()])
        .when(spend("s1", 6, 2))
        .then_expect_error(CreditError::InsufficientCredits { available: c(5) });
}

#[test]
fn a_retried_spend_under_its_key_emits_nothing_not_even_a_new_days_grant() {
    for d in [0, 3] {
        Account::with(())
            .given(vec![
                opened(),
                signup_bonus(100),
                keyed_event(spent("s1", (10, 0), b(100, 0), 10, 0), "k", "f1"),
            ])
            .when(keyed(spend("s2", 10, d), "k", "f1"))
            .then_expect_events(vec![]);
    }
}

#[test]
fn a_different_spend_under_a_used_key_is_refused() {
    Account::with(())
        .given(vec![
            opened(),
            signup_bonus(100),
            keyed_event(spent("s1", (10, 0), b(100, 0), 10, 0), "k", "f1"),
        ])
        .when(keyed(spend("s2", 11, 0), "k", "f2"))
        .then_expect_error(CreditError::KeyReused);
}

#[test]
fn a_key_is_forgotten_once_the_accounts_own_time_passes_its_retention() {
    Account::with(())
        .given(vec![
            opened(),
            signup_bonus(100),
            keyed_event(spent("s1", (10, 0), b(100, 0), 10, 0), "k", "f1"),
            daily_granted(31, 5, b(90, 0)),
        ])
        .when(keyed(spend("s2", 10, 31), "k", "f2"))
        .then_expect_events(vec![keyed_event(spent("s2", (10, 0), b(95, 0), 20, 31), "k", "f2")]);
}

// Operator grants and adjustments.

#[test]
fn an_operators_grant_credits_the_chosen_pool_with_the_reason_as_description() {
    for pool in [Pool::Free, Pool::Paid] {
        Account::with(())
            .given(vec![opened(), signup_bonus(10)])
            .when(grant(pool, 20))
            .then_expect_events(vec![granted(pool, 20, b(10, 0))]);
    }
}

#[test]
fn an_adjustment_corrects_one_pool_by_a_signed_amount_down_to_zero() {
    for amount in [7, -10] {
        Account::with(())
            .given(vec![opened(), signup_bonus(10)])
            .when(adjust(Pool::Free, amount))
            .then_expect_events(vec![adjusted(Pool::Free, amount, b(10, 0))]);
    }
}

#[test]
fn an_adjustment_below_zero_is_refused_with_that_pools_balance() {
    for (pool, amount, available) in [(Pool::Free, -11, 10), (Pool::Paid, -21, 20)] {
        Account::with(())
            .given(vec![opened(), signup_bonus(10), granted(Pool::Paid, 20, b(10, 0))])
            .when(adjust(pool, amount))
            .then_expect_error(CreditError::InsufficientCredits { available: c(available) });
    }
}

// Refunds.

/// 10 free and 10 paid credits, then a spend `s1` of 15 (10 free, 5 paid).
fn spent_15() -> Vec<CreditEvent> {
    vec![
        opened(),
        signup_bonus(10),
        granted(Pool::Paid, 10, b(10, 0)),
        spent("s1", (10, 5), b(10, 10), 15, 0),
    ]
}

/// [`spent_15`] with 7 of it refunded (5 paid, 2 free).
fn partly_refunded() -> Vec<CreditEvent> {
    [spent_15(), vec![refunded("r1", "s1", (2, 5), b(0, 5), 0)]].concat()
}

#[test]
fn a_refund_goes_back_to_the_paid_pool_first() {
    Account::with(())
        .given(spent_15())
        .when(refund("r1", "s1", Some(7), 0))
        .then_expect_events(vec![refunded("r1", "s1", (2, 5), b(0, 5), 0)]);
}

#[test]
fn a_refund_without_an_amount_gives_back_all_that_is_left_of_the_spend() {
    Account::with(())
        .given(partly_refunded())
        .when(refund("r2", "s1", None, 0))
        .then_expect_events(vec![refunded("r2", "s1", (8, 0), b(2, 10), 0)]);
}

#[test]
fn a_refund_above_what_is_left_of_the_spend_is_refused() {
    Account::with(())
        .given(partly_refunded())
        .when(refund("r2", "s1", Some(9), 0))
        .then_expect_error(CreditError::RefundTooLarge { refundable: c(8) });
}

#[test]
fn a_refund_of_zero_or_less_is_refused() {
    for amount in [0, -1] {
        Account::with(())
            .given(spent_15())
            .when(refund("r1", "s1", Some(amount), 0))
            .then_expect_error(CreditError::RefundTooLarge { refundable: c(15) });
    }
}

#[test]
fn a_fully_refunded_spend_refuses_another_refund() {
    Account::with(())
        .given(partly_refunded())
        .and(vec![refunded("r2", "s1", (8, 0), b(2, 10), 0)])
        .when(refund("r3", "s1", None, 0))
        .then_expect_error(CreditError::RefundTooLarge { refundable: c(0) });
}

#[test]
fn only_a_spend_of_the_account_can_be_refunded() {
    for spend_id in ["unknown", "g", "bonus"] {
        Account::with(())
            .given(spent_15())
            .when(refund("r1", spend_id, None, 0))
            .then_expect_error(CreditError::UnknownTransaction);
    }
}

#[test]
fn a_spend_past_the_refund_window_in_the_accounts_own_time_cannot_be_refunded() {
    Account::with(())
        .given(vec![
            opened(),
            signup_bonus(100),
            spent("s1", (10, 0), b(100, 0), 10, 0),
            daily_granted(91, 5, b(90, 0)),
        ])
        .when(refund("r1", "s1", None, 91))
        .then_expect_error(CreditError::UnknownTransaction);
}

#[test]
fn a_spend_past_the_refund_window_cannot_be_refunded_even_when_the_account_was_quiet_since() {
    Account::with(())
        .given(vec![opened(), signup_bonus(100), spent("s1", (10, 0), b(100, 0), 10, 0)])
        .when(refund("r1", "s1", None, 91))
        .then_expect_error(CreditError::UnknownTransaction);
}

#[test]
fn a_spend_exactly_at_the_end_of_the_refund_window_can_still_be_refunded() {
    Account::with(())
        .given(vec![opened(), signup_bonus(100), spent("s1", (10, 0), b(100, 0), 10, 0)])
        .when(refund("r1", "s1", None, 90))
        .then_expect_events(vec![refunded("r1", "s1", (10, 0), b(90, 0), 90)]);
}

// Idempotency keys of operator commands.

/// For each operator command: the history with its keyed first request, and that request
/// sent again (under fingerprint `f1`) or changed (`f2`).
fn keyed_operator_commands(fingerprint: &str) -> Vec<(Vec<CreditEvent>, CreditCommand)> {
    let first_refund = keyed_event(refunded("r1", "s1", (10, 5), b(0, 5), 0), "k", "f1");
    vec![
        (
            vec![opened(), signup_bonus(10), keyed_event(granted(Pool::Paid, 20, b(10, 0)), "k", "f1")],
            keyed(grant(Pool::Paid, 20), "k", fingerprint),
        ),
        (
            vec![opened(), signup_bonus(10), keyed_event(adjusted(Pool::Free, -5, b(10, 0)), "k", "f1")],
            keyed(adjust(Pool::Free, -5), "k", fingerprint),
        ),
        ([spent_15(), vec![first_refund]].concat(), keyed(refund("r2", "s1", None, 0), "k", fingerprint)),
    ]
}

#[test]
fn a_retried_operator_command_under_its_key_emits_nothing() {
    for (history, retry) in keyed_operator_commands("f1") {
        Account::with(()).given(history).when(retry).then_expect_events(vec![]);
    }
}

#[test]
fn a_different_operator_command_under_a_used_key_is_refused() {
    for (history, other) in keyed_operator_commands("f2") {
        Account::with(()).given(history).when(other).then_expect_error(CreditError::KeyReused);
    }
}

// The state that balance reads and replies are made from.

fn replayed(events: Vec<CreditEvent>) -> CreditAccount {
    let mut account = CreditAccount::default();
    for event in events {
        account.apply(event);
    }
    account
}

#[test]
fn earned_counts_grants_and_positive_adjustments_and_spent_counts_spends_less_refunds() {
    let account = replayed(vec![
        opened(),
        signup_bonus(10),
        granted(Pool::Paid, 10, b(10, 0)),
        adjusted(Pool::Free, 5, b(10, 10)),
        adjusted(Pool::Free, -3, b(15, 10)),
        spent("s1", (12, 3), b(12, 10), 15, 0),
        refunded("r1", "s1", (0, 3), b(0, 7), 0),
    ]);
    assert_eq!((account.balances, account.total_earned, account.total_spent), (b(0, 10), c(25), c(12)));
}

#[test]
fn a_key_answers_the_event_it_made_until_its_retention_ends() {
    let first = keyed_event(spent("s1", (10, 0), b(100, 0), 10, 0), "k", "f1");
    let mut account = replayed(vec![opened(), signup_bonus(100), first.clone()]);
    assert_eq!(account.keyed("k"), Some(&first));
    assert_eq!(account.keyed("other"), None);
    account.apply(daily_granted(31, 5, b(90, 0)));
    assert_eq!(account.keyed("k"), None);
}
