//! The command context of a client's request.

use chrono::{DateTime, Utc};

use super::CommandContext;
pub use crate::domain::ClientInfo;

impl CommandContext {
    /// The context of a command `client` asked for, acting as `actor`, at `now`.
    pub fn for_client(client: &ClientInfo, actor: &str, now: DateTime<Utc>) -> Self {
        Self {
            now,
            request_id: client.request_id.clone(),
            actor: actor.to_owned(),
            client_ip: client.ip.clone(),
        }
    }
}
