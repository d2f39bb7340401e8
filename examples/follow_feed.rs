//! Follows the change feed (docs/FEED.md) from a cursor: prints `<cursor> <subject>` for
//! every event after it, in global order, and goes on as new events arrive.
//!
//! ```sh
//! cargo run --example follow_feed -- [NATS_URL] [STREAM] [CURSOR]
//! cargo run --example follow_feed -- nats://127.0.0.1:4222 MANA_EVENTS 0:0
//! ```
//!
//! The cursor is the `cursor` of an exported event (or of a message's `Mana-Cursor`
//! header); `0:0` follows from the start. A job that keeps its own cursor (in its own
//! database, in the same transaction as its work) resumes exactly where it stopped.

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures::StreamExt;
use mana_core_auth::events::LogCursor;
use mana_core_auth::feed::CURSOR_HEADER;
use mana_core_auth::feed::follow::sequence_after;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let name = args.next().unwrap_or_else(|| "MANA_EVENTS".to_owned());
    let after: LogCursor = args.next().as_deref().unwrap_or("0:0").parse().map_err(anyhow::Error::msg)?;

    let js = jetstream::new(async_nats::connect(&url).await?);
    let mut stream = js.get_stream(&name).await?;
    let start_sequence = sequence_after(&mut stream, after).await?;
    // An ordered consumer: in stream order, no gaps, recreated by the client if needed.
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let cursor = message.headers.as_ref().and_then(|h| h.get(CURSOR_HEADER)).map(|v| v.to_string());
        println!("{} {}", cursor.unwrap_or_default(), message.subject);
    }
    Ok(())
}
