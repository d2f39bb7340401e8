//! The e-mail claim: one aggregate per normalised address, so that two registrations of
//! one address conflict on the same aggregate and at most one succeeds.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::auth::EmailClaimEvent;

/// The aggregate id for an address: a SHA-256 of the normalised address, so the log's
/// ids carry no address in clear (a known address can still be hashed and looked up).
pub fn claim_id(normalised_email: &str) -> String {
    let digest =
        Sha256::new().chain_update(b"mana-core-auth/email/").chain_update(normalised_email).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who holds an address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmailClaim {
    pub user_id: Option<String>,
}

#[derive(Clone, Debug)]
pub enum EmailClaimCommand {
    Claim { user_id: String, at: DateTime<Utc> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailClaimError {
    #[error("the e-mail address is already registered")]
    Taken,
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
        let EmailClaimCommand::Claim { user_id, at } = command;
        if self.user_id.is_some() {
            return Err(EmailClaimError::Taken);
        }
        sink.write(EmailClaimEvent::EmailClaimed { user_id, claimed_at: at }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: EmailClaimEvent) {
        let EmailClaimEvent::EmailClaimed { user_id, .. } = event;
        self.user_id = Some(user_id);
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
    fn claim_ids_are_stable_and_hide_the_address() {
        assert_eq!(claim_id("a@example.com"), claim_id("a@example.com"));
        assert_ne!(claim_id("a@example.com"), claim_id("b@example.com"));
        assert!(!claim_id("a@example.com").contains("example"));
    }
}
