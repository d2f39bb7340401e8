//! The credit account aggregate (one per user, id = user id).

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::events::credits::{Balances, CreditEvent, GrantSource, Pool};

/// A credit account as the write model sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreditAccount {
    pub user_id: Option<String>,
    pub balances: Balances,
    pub total_earned: i64,
    pub total_spent: i64,
    pub last_grant_day: Option<NaiveDate>,
}

#[derive(Clone, Debug)]
pub enum CreditCommand {
    /// Opens the account with the signup bonus (0 allowed) as a free grant.
    Open {
        user_id: String,
        signup_bonus: i64,
        bonus_transaction_id: String,
        day: NaiveDate,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CreditError {
    #[error("the credit account already exists")]
    AlreadyOpen,
}

impl Aggregate for CreditAccount {
    const TYPE: &'static str = "credit_account";
    type Command = CreditCommand;
    type Event = CreditEvent;
    type Error = CreditError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CreditCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CreditError> {
        let CreditCommand::Open { user_id, signup_bonus, bonus_transaction_id, day, at } = command;
        if self.user_id.is_some() {
            return Err(CreditError::AlreadyOpen);
        }
        sink.write(CreditEvent::CreditAccountOpened { user_id, granted_day: day, opened_at: at }, self).await;
        if signup_bonus > 0 {
            let before = self.balances;
            let after = Balances { free: before.free + signup_bonus, ..before };
            let grant = CreditEvent::CreditsGranted {
                transaction_id: bonus_transaction_id,
                source: GrantSource::SignupBonus,
                pool: Pool::Free,
                amount: signup_bonus,
                before,
                after,
                description: "Signup bonus".to_owned(),
                granted_at: at,
            };
            sink.write(grant, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: CreditEvent) {
        match event {
            CreditEvent::CreditAccountOpened { user_id, granted_day, .. } => {
                self.user_id = Some(user_id);
                self.last_grant_day = Some(granted_day);
            }
            CreditEvent::CreditsGranted { amount, after, .. } => {
                self.balances = after;
                self.total_earned += amount;
            }
        }
    }
}
