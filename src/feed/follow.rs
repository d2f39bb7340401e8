//! For consumers of the feed: where in the stream to start to follow it from a cursor.

use async_nats::jetstream::stream::Stream;

use super::CURSOR_HEADER;
use crate::events::LogCursor;

/// The first stream sequence whose event comes after `after` in global order (the
/// sequence after the last one when none does yet): start a consumer there to follow the
/// feed from a cursor. A binary search over the stream, which holds the log in cursor
/// order, reading the `Mana-Cursor` header of about log2(messages) messages.
pub async fn sequence_after(stream: &mut Stream, after: LogCursor) -> anyhow::Result<u64> {
    let state = stream.info().await?.state.clone();
    if state.messages == 0 {
        return Ok(state.last_sequence + 1);
    }
    let (mut low, mut high) = (state.first_sequence, state.last_sequence + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        let message = stream.get_raw_message(middle).await?;
        let cursor = message
            .headers
            .get(CURSOR_HEADER)
            .and_then(|v| v.as_str().parse::<LogCursor>().ok())
            .ok_or_else(|| anyhow::anyhow!("stream message {middle} carries no {CURSOR_HEADER}"))?;
        if cursor <= after {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}
