//! Rules of the keyring aggregate, given/when/then.

use cqrs_es::test::TestFramework;

use super::*;

const INTERVAL: Duration = Duration::days(30);
const AHEAD: Duration = Duration::minutes(10);
const LIFETIME: Duration = Duration::minutes(15);

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z").expect("time").with_timezone(&Utc)
}

fn key(kid: &str) -> NewKey {
    NewKey { kid: kid.into(), public_key: format!("x-{kid}") }
}

fn bootstrap(kid: &str, at: DateTime<Utc>) -> KeyringCommand {
    KeyringCommand::Bootstrap { key: key(kid), at }
}

fn rotate(kid: &str, at: DateTime<Utc>) -> KeyringCommand {
    KeyringCommand::PrepareRotation { key: key(kid), interval: INTERVAL, publish_ahead: AHEAD, at }
}

fn advance(at: DateTime<Utc>) -> KeyringCommand {
    KeyringCommand::Advance { retired_for: Some(LIFETIME), at }
}

fn created(kid: &str, at: DateTime<Utc>, activates_at: DateTime<Utc>) -> KeyringEvent {
    KeyringEvent::SigningKeyCreated {
        kid: kid.into(),
        public_key: format!("x-{kid}"),
        created_at: at,
        activates_at,
    }
}

fn activated(kid: &str, previous: Option<&str>, at: DateTime<Utc>) -> KeyringEvent {
    KeyringEvent::SigningKeyActivated {
        kid: kid.into(),
        previous_kid: previous.map(Into::into),
        activated_at: at,
    }
}

fn retired(kid: &str, at: DateTime<Utc>) -> KeyringEvent {
    KeyringEvent::SigningKeyRetired { kid: kid.into(), retired_at: at, unpublish_after: at + LIFETIME }
}

fn removed(kid: &str, at: DateTime<Utc>) -> KeyringEvent {
    KeyringEvent::SigningKeyRemoved { kid: kid.into(), removed_at: at }
}

/// The first key `a`, created and activated at `t0`.
fn bootstrapped() -> Vec<KeyringEvent> {
    vec![created("a", t0(), t0()), activated("a", None, t0())]
}

/// When the next key `b` was published (`a` being due) and when it starts signing.
fn published_at() -> DateTime<Utc> {
    t0() + INTERVAL
}

fn b_activates_at() -> DateTime<Utc> {
    published_at() + AHEAD
}

/// `a` active, `b` published and waiting for its activation time.
fn rotation_prepared() -> Vec<KeyringEvent> {
    let mut events = bootstrapped();
    events.push(created("b", published_at(), b_activates_at()));
    events
}

/// `b` active since `b_activates_at`, `a` retired then.
fn rotated() -> Vec<KeyringEvent> {
    let mut events = rotation_prepared();
    events.push(activated("b", Some("a"), b_activates_at()));
    events.push(retired("a", b_activates_at()));
    events
}

/// `a` removed once every token it signed had expired.
fn a_removed() -> Vec<KeyringEvent> {
    let mut events = rotated();
    events.push(removed("a", b_activates_at() + LIFETIME));
    events
}

fn state_after(events: Vec<KeyringEvent>) -> Keyring {
    let mut ring = Keyring::default();
    for event in events {
        ring.apply(event);
    }
    ring
}

fn kids<'a>(keys: impl Iterator<Item = &'a KeyEntry>) -> Vec<&'a str> {
    keys.map(|k| k.kid.as_str()).collect()
}

// Bootstrap

#[test]
fn bootstrapping_an_empty_keyring_publishes_the_first_key_and_activates_it_at_once() {
    TestFramework::<Keyring>::with(())
        .given_no_previous_events()
        .when(bootstrap("a", t0()))
        .then_expect_events(bootstrapped());
}

#[test]
fn bootstrapping_a_keyring_that_already_has_a_key_changes_nothing() {
    TestFramework::<Keyring>::with(())
        .given(bootstrapped())
        .when(bootstrap("z", t0() + Duration::seconds(1)))
        .then_expect_events(vec![]);
}

// PrepareRotation

#[test]
fn a_rotation_publishes_the_next_key_once_the_active_key_is_as_old_as_the_interval() {
    TestFramework::<Keyring>::with(())
        .given(bootstrapped())
        .when(rotate("b", published_at()))
        .then_expect_events(vec![created("b", published_at(), published_at() + AHEAD)]);
}

#[test]
fn a_rotation_before_the_active_key_is_as_old_as_the_interval_changes_nothing() {
    TestFramework::<Keyring>::with(())
        .given(bootstrapped())
        .when(rotate("b", published_at() - Duration::seconds(1)))
        .then_expect_events(vec![]);
}

#[test]
fn a_rotation_while_a_key_is_pending_changes_nothing() {
    TestFramework::<Keyring>::with(())
        .given(rotation_prepared())
        .when(rotate("c", t0() + INTERVAL * 2))
        .then_expect_events(vec![]);
}

#[test]
fn a_rotation_on_a_keyring_without_an_active_key_changes_nothing() {
    TestFramework::<Keyring>::with(())
        .given_no_previous_events()
        .when(rotate("b", published_at()))
        .then_expect_events(vec![]);
}

#[test]
fn a_rotation_offering_the_kid_of_a_removed_key_is_refused() {
    TestFramework::<Keyring>::with(())
        .given(a_removed())
        .when(rotate("a", b_activates_at() + INTERVAL))
        .then_expect_error(KeyringError::DuplicateKid("a".into()));
}

#[test]
fn a_rotation_offering_a_known_kid_is_refused_even_when_no_rotation_is_due() {
    TestFramework::<Keyring>::with(())
        .given(bootstrapped())
        .when(rotate("a", t0() + Duration::seconds(1)))
        .then_expect_error(KeyringError::DuplicateKid("a".into()));
}

// Advance

#[test]
fn advancing_at_a_pending_keys_activation_time_activates_it_and_retires_the_key_it_replaces() {
    TestFramework::<Keyring>::with(())
        .given(rotation_prepared())
        .when(advance(b_activates_at()))
        .then_expect_events(vec![
            activated("b", Some("a"), b_activates_at()),
            retired("a", b_activates_at()),
        ]);
}

#[test]
fn advancing_before_a_pending_keys_activation_time_changes_nothing() {
    TestFramework::<Keyring>::with(())
        .given(rotation_prepared())
        .when(advance(b_activates_at() - Duration::seconds(1)))
        .then_expect_events(vec![]);
}

#[test]
fn a_pending_key_that_replaces_no_active_key_is_activated_without_a_retirement() {
    TestFramework::<Keyring>::with(())
        .given(vec![created("a", t0(), t0() + AHEAD)])
        .when(advance(t0() + AHEAD))
        .then_expect_events(vec![activated("a", None, t0() + AHEAD)]);
}

#[test]
fn advancing_once_a_retired_key_reaches_its_unpublish_time_removes_it() {
    let at = b_activates_at() + LIFETIME;
    TestFramework::<Keyring>::with(())
        .given(rotated())
        .when(advance(at))
        .then_expect_events(vec![removed("a", at)]);
}

#[test]
fn advancing_before_a_retired_keys_unpublish_time_keeps_it() {
    TestFramework::<Keyring>::with(())
        .given(rotated())
        .when(advance(b_activates_at() + LIFETIME - Duration::seconds(1)))
        .then_expect_events(vec![]);
}

#[test]
fn a_removed_key_is_not_removed_again() {
    TestFramework::<Keyring>::with(())
        .given(a_removed())
        .when(advance(b_activates_at() + LIFETIME * 2))
        .then_expect_events(vec![]);
}

#[test]
fn advancing_a_keyring_with_only_an_active_key_changes_nothing() {
    TestFramework::<Keyring>::with(())
        .given(bootstrapped())
        .when(advance(t0() + INTERVAL * 2))
        .then_expect_events(vec![]);
}

#[test]
fn one_advance_activates_the_next_key_and_removes_an_older_retired_key() {
    let mut events = rotated();
    let c_published = b_activates_at() + INTERVAL;
    let c_activates = c_published + AHEAD;
    events.push(created("c", c_published, c_activates));
    TestFramework::<Keyring>::with(()).given(events).when(advance(c_activates)).then_expect_events(vec![
        activated("c", Some("b"), c_activates),
        retired("b", c_activates),
        removed("a", c_activates),
    ]);
}

#[test]
fn a_key_retired_by_an_advance_is_removed_by_a_later_advance_even_with_no_token_lifetime() {
    let at = b_activates_at();
    let no_lifetime = |at| KeyringCommand::Advance { retired_for: Some(Duration::zero()), at };
    let retired_now =
        KeyringEvent::SigningKeyRetired { kid: "a".into(), retired_at: at, unpublish_after: at };
    TestFramework::<Keyring>::with(())
        .given(rotation_prepared())
        .when(no_lifetime(at))
        .then_expect_events(vec![activated("b", Some("a"), at), retired_now.clone()]);
    let mut events = rotation_prepared();
    events.extend([activated("b", Some("a"), at), retired_now]);
    TestFramework::<Keyring>::with(())
        .given(events)
        .when(no_lifetime(at))
        .then_expect_events(vec![removed("a", at)]);
}

// State and the queries readers use

#[test]
fn a_key_is_published_before_it_signs_accepted_while_retired_and_gone_once_removed() {
    let ring = state_after(rotation_prepared());
    assert_eq!(ring.active().map(|k| k.kid.as_str()), Some("a"));
    assert_eq!(kids(ring.published()), ["a", "b"]);
    assert_eq!(kids(ring.accepted()), ["a"], "a pending key signs nothing yet");

    let ring = state_after(rotated());
    assert_eq!(ring.active().map(|k| k.kid.as_str()), Some("b"));
    assert_eq!(kids(ring.published()), ["a", "b"]);
    assert_eq!(kids(ring.accepted()), ["a", "b"], "the retired key still verifies its tokens");
    let a = &ring.keys[0];
    assert_eq!(a.state, KeyState::Retired { unpublish_after: b_activates_at() + LIFETIME });
    assert_eq!(ring.keys[1].activated_at, Some(b_activates_at()));

    let ring = state_after(a_removed());
    assert_eq!(kids(ring.published()), ["b"]);
    assert_eq!(kids(ring.accepted()), ["b"]);
    assert_eq!(ring.keys[0].state, KeyState::Removed, "the record stays, so its kid is never reused");
}

#[test]
fn events_about_an_unknown_kid_leave_the_keyring_unchanged() {
    let before = state_after(bootstrapped());
    let mut after = before.clone();
    after.apply(activated("zz", Some("a"), t0()));
    after.apply(retired("zz", t0()));
    after.apply(removed("zz", t0()));
    assert_eq!(after, before);
}

#[test]
fn the_due_checks_of_the_rotation_job_agree_with_what_the_commands_decide() {
    let histories = [vec![], bootstrapped(), rotation_prepared(), rotated(), a_removed()];
    let second = Duration::seconds(1);
    let times = [
        t0(),
        published_at() - second,
        published_at(),
        b_activates_at() - second,
        b_activates_at(),
        b_activates_at() + LIFETIME - second,
        b_activates_at() + LIFETIME,
        b_activates_at() + INTERVAL,
    ];
    for history in histories {
        let ring = state_after(history.clone());
        for at in times {
            let rotation = ring.decide(rotate("n", at)).expect("a new kid");
            assert_eq!(
                ring.rotation_due(at, INTERVAL),
                !rotation.is_empty(),
                "rotation at {at} after {history:?}"
            );
            let advanced = ring.decide(advance(at)).expect("advance never fails");
            assert_eq!(ring.advance_due(at), !advanced.is_empty(), "advance at {at} after {history:?}");
        }
    }
}

#[test]
fn a_key_retired_without_a_retention_stays_published_however_late_the_keyring_advances() {
    let forever = |at| KeyringCommand::Advance { retired_for: None, at };
    let mut given = rotation_prepared();
    given.extend([
        activated("b", Some("a"), b_activates_at()),
        KeyringEvent::SigningKeyRetired {
            kid: "a".into(),
            retired_at: b_activates_at(),
            unpublish_after: never(),
        },
    ]);
    TestFramework::<Keyring>::with(())
        .given(rotation_prepared())
        .when(forever(b_activates_at()))
        .then_expect_events(vec![
            activated("b", Some("a"), b_activates_at()),
            KeyringEvent::SigningKeyRetired {
                kid: "a".into(),
                retired_at: b_activates_at(),
                unpublish_after: never(),
            },
        ]);
    let later = b_activates_at() + Duration::days(365 * 100);
    TestFramework::<Keyring>::with(()).given(given.clone()).when(forever(later)).then_expect_events(vec![]);
    assert_eq!(kids(state_after(given).published()), ["a", "b"]);
}
