//! Operator idempotency keys: one aggregate per (operator, key), appended in the same
//! unit of work as the credit command it guards. Admin keys are scoped to the operator,
//! not to the target account: the same key sent again with the same request is a retry,
//! with another request (another operation, target or body) it is refused, and another
//! operator's identical key is unrelated. Kept as long as the account keeps its keys
//! ([`KEY_RETENTION`]).

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::credit_account::KEY_RETENTION;
use crate::events::credits::OperatorKeyEvent;

/// The aggregate id of an operator's key: a SHA-256 of both, length-prefixed so that no
/// two pairs share an id, and of fixed length whatever the key.
pub fn operator_key_id(operator: &str, key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"mana-core-auth/operator-key/")
        .chain_update(operator.len().to_be_bytes())
        .chain_update(operator)
        .chain_update(key)
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An operator's key as the write model sees it: the request it was last used for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OperatorKey {
    fingerprint: Option<String>,
    used_at: Option<DateTime<Utc>>,
}

/// What can be asked of an operator's key.
#[derive(Clone, Debug)]
pub enum OperatorKeyCommand {
    /// Uses the key for the request with `fingerprint` on the account `user_id`. A retry
    /// of the request the key holds writes nothing.
    Use { operator: String, key: String, fingerprint: String, user_id: String, at: DateTime<Utc> },
}

/// Refusals.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperatorKeyError {
    #[error("the idempotency key was used for a different request")]
    Reused,
}

impl OperatorKey {
    /// The fingerprint the key holds at `at`, if it is still remembered then.
    fn held(&self, at: DateTime<Utc>) -> Option<&str> {
        let used_at = self.used_at?;
        (used_at >= at - KEY_RETENTION).then_some(self.fingerprint.as_deref()).flatten()
    }
}

impl Aggregate for OperatorKey {
    const TYPE: &'static str = "operator_key";
    type Command = OperatorKeyCommand;
    type Event = OperatorKeyEvent;
    type Error = OperatorKeyError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OperatorKeyCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), OperatorKeyError> {
        let OperatorKeyCommand::Use { operator, key, fingerprint, user_id, at } = command;
        match self.held(at) {
            Some(held) if held == fingerprint => Ok(()),
            Some(_) => Err(OperatorKeyError::Reused),
            None => {
                let used =
                    OperatorKeyEvent::OperatorKeyUsed { operator, key, fingerprint, user_id, used_at: at };
                sink.write(used, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: OperatorKeyEvent) {
        let OperatorKeyEvent::OperatorKeyUsed { fingerprint, used_at, .. } = event;
        self.fingerprint = Some(fingerprint);
        self.used_at = Some(used_at);
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z").expect("time").with_timezone(&Utc)
    }

    fn used(fingerprint: &str) -> OperatorKeyEvent {
        OperatorKeyEvent::OperatorKeyUsed {
            operator: "op".into(),
            key: "k".into(),
            fingerprint: fingerprint.into(),
            user_id: "u".into(),
            used_at: at(),
        }
    }

    fn use_key(fingerprint: &str, at: DateTime<Utc>) -> OperatorKeyCommand {
        OperatorKeyCommand::Use {
            operator: "op".into(),
            key: "k".into(),
            fingerprint: fingerprint.into(),
            user_id: "u".into(),
            at,
        }
    }

    #[test]
    fn a_new_key_records_its_request() {
        TestFramework::<OperatorKey>::with(())
            .given_no_previous_events()
            .when(use_key("f", at()))
            .then_expect_events(vec![used("f")]);
    }

    #[test]
    fn the_same_request_again_writes_nothing() {
        TestFramework::<OperatorKey>::with(())
            .given(vec![used("f")])
            .when(use_key("f", at() + Duration::days(29)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn another_request_under_a_held_key_is_refused() {
        TestFramework::<OperatorKey>::with(())
            .given(vec![used("f")])
            .when(use_key("g", at() + Duration::seconds(1)))
            .then_expect_error(OperatorKeyError::Reused);
    }

    #[test]
    fn a_key_is_free_again_after_its_retention() {
        let later = at() + KEY_RETENTION + Duration::seconds(1);
        let again = OperatorKeyEvent::OperatorKeyUsed {
            operator: "op".into(),
            key: "k".into(),
            fingerprint: "g".into(),
            user_id: "u".into(),
            used_at: later,
        };
        TestFramework::<OperatorKey>::with(())
            .given(vec![used("f")])
            .when(use_key("g", later))
            .then_expect_events(vec![again]);
    }

    #[test]
    fn key_ids_separate_operators_and_keys() {
        assert_eq!(operator_key_id("a", "k"), operator_key_id("a", "k"));
        assert_ne!(operator_key_id("a", "k"), operator_key_id("b", "k"));
        assert_ne!(operator_key_id("ab", "c"), operator_key_id("a", "bc"));
    }
}
