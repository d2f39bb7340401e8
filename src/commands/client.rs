//! Who is asking: the client of a request, as commands record it.

use chrono::{DateTime, Utc};

use super::CommandContext;
use crate::events::auth::SessionPersonal;

/// Who is asking: the request's id and the client's address and agent.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The command context for this client, acting as `actor`, at `now`.
    pub fn context(&self, actor: &str, now: DateTime<Utc>) -> CommandContext {
        CommandContext {
            now,
            request_id: self.request_id.clone(),
            actor: actor.to_owned(),
            client_ip: self.ip.clone(),
        }
    }

    /// The client as recorded in events (personal data).
    pub fn personal(&self) -> SessionPersonal {
        SessionPersonal {
            ip_address: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            ..Default::default()
        }
    }
}
