//! The e-mail claim: one aggregate per normalised address, so that two registrations of
//! one address conflict on the same aggregate and at most one succeeds.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::auth::EmailClaimEvent;

/// The aggregate id for an address: HMAC-SHA-256 of the normalised address under a key
/// derived from `KEY_ENCRYPTION_SECRET` (`ServerSecret::email_id_key`), so that nobody
/// without the secret can match a list of addresses against the log. The login
/// protection of the address uses the same id.
pub fn claim_id(key: &[u8; 32], normalised_email: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"mana-core-auth/email/");
    mac.update(normalised_email.as_bytes());
    format!("k1-{}", hex(&mac.finalize().into_bytes()))
}

/// The id releases before erasure gave an address: an unkeyed SHA-256. Claims made then
/// keep working under it until their holder is erased, whose erasure renames the stream
/// (docs/PRIVACY.md).
pub fn legacy_claim_id(normalised_email: &str) -> String {
    hex(&Sha256::new().chain_update(b"mana-core-auth/email/").chain_update(normalised_email).finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who holds an address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmailClaim {
    pub user_id: Option<String>,
}

#[derive(Clone, Debug)]
pub enum EmailClaimCommand {
    Claim {
        user_id: String,
        at: DateTime<Utc>,
    },
    /// Releases the address of an erased holder.
    Release {
        user_id: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailClaimError {
    #[error("the e-mail address is already registered")]
    Taken,
    #[error("the address is not held by that user")]
    NotHolder,
}

impl Aggregate for EmailClaim {
    const TYPE: &'static str = "email_claim";
    type Command = EmailClaimCommand;
    type Event = EmailClaimEvent;
    type Error = EmailClaimError;
    type Services = ();

    async fn handle(
        &mut self,
        command: EmailClaimCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), EmailClaimError> {
        let event = match command {
            EmailClaimCommand::Claim { .. } if self.user_id.is_some() => return Err(EmailClaimError::Taken),
            EmailClaimCommand::Claim { user_id, at } => {
                EmailClaimEvent::EmailClaimed { user_id, claimed_at: at }
            }
            EmailClaimCommand::Release { user_id, .. } if self.user_id.as_ref() != Some(&user_id) => {
                return Err(EmailClaimError::NotHolder);
            }
            EmailClaimCommand::Release { user_id, at } => {
                EmailClaimEvent::EmailReleased { user_id, released_at: at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: EmailClaimEvent) {
        self.user_id = match event {
            EmailClaimEvent::EmailClaimed { user_id, .. } => Some(user_id),
            EmailClaimEvent::EmailReleased { .. } => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    #[test]
    fn an_address_is_claimed_once() {
        let at = Utc::now();
        TestFramework::<EmailClaim>::with(())
            .given(vec![EmailClaimEvent::EmailClaimed { user_id: "u1".into(), claimed_at: at }])
            .when(EmailClaimCommand::Claim { user_id: "u2".into(), at })
            .then_expect_error(EmailClaimError::Taken);
    }

    #[test]
    fn a_released_address_can_be_claimed_again_by_someone_else() {
        let at = Utc::now();
        TestFramework::<EmailClaim>::with(())
            .given(vec![
                EmailClaimEvent::EmailClaimed { user_id: "u1".into(), claimed_at: at },
                EmailClaimEvent::EmailReleased { user_id: "u1".into(), released_at: at },
            ])
            .when(EmailClaimCommand::Claim { user_id: "u2".into(), at })
            .then_expect_events(vec![EmailClaimEvent::EmailClaimed { user_id: "u2".into(), claimed_at: at }]);
        TestFramework::<EmailClaim>::with(())
            .given(vec![EmailClaimEvent::EmailClaimed { user_id: "u1".into(), claimed_at: at }])
            .when(EmailClaimCommand::Release { user_id: "u2".into(), at })
            .then_expect_error(EmailClaimError::NotHolder);
    }

    #[test]
    fn claim_ids_are_stable_keyed_and_hide_the_address() {
        let key = [1u8; 32];
        assert_eq!(claim_id(&key, "a@example.com"), claim_id(&key, "a@example.com"));
        assert_ne!(claim_id(&key, "a@example.com"), claim_id(&key, "b@example.com"));
        assert_ne!(claim_id(&key, "a@example.com"), claim_id(&[2u8; 32], "a@example.com"));
        assert!(!claim_id(&key, "a@example.com").contains("example"));
        assert_ne!(claim_id(&key, "a@example.com"), legacy_claim_id("a@example.com"));
    }
}
