//! Verification of the log: every event's hash against its content and its stream's
//! previous event, and every seal's count, root and signature against the events before
//! it. The same checks run on the live database and, offline, on an export and the
//! published audit keys (docs/AUDIT.md says what each check detects).

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::record::ExportRecord;
use crate::events::audit::{AuditEvent, SEALS_TYPE, seal_message};
use crate::events::chain::{self, Commitments, Digest32, EventParts, Secrets, ZERO};
use crate::events::{EventStore, LogCursor, RecordedEvent};

/// How many recent (count, cursor, root) steps are kept to check a seal that lands
/// after later events. A seal is appended right after its horizon, so the events between
/// are few; the window bounds memory.
const SEAL_WINDOW: usize = 262_144;

/// The first place the log fails verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub position: i64,
    pub cursor: String,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "position {} (cursor {}): {}", self.position, self.cursor, self.reason)
    }
}

/// What a verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Events checked (up to the failure, if any).
    pub events: u64,
    /// Seals checked.
    pub seals: u64,
    /// The cursor the last good seal covers.
    pub sealed_through: Option<String>,
    /// Events after the last seal: only their streams' chains protect them.
    pub unsealed: u64,
    /// Personal values checked against their commitments (live only).
    pub personal_checked: u64,
    /// Personal values whose key is gone (erased): their commitments still chain.
    pub personal_without_key: u64,
    /// Events of legacy e-mail claim and login-protection streams that an erasure renamed
    /// (`erased:<user id>`): their stated hashes chain and are sealed, their content is
    /// no longer checked against them (docs/PRIVACY.md).
    pub redacted: u64,
    pub failure: Option<Failure>,
}

/// The audit public keys a seal may be signed with, by kid.
#[derive(Clone, Debug, Default)]
pub struct AuditKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl AuditKeys {
    /// Reads a JWKS document (`{"keys": [{"kty": "OKP", "crv": "Ed25519", "x", "kid"}]}`);
    /// keys of other types are ignored.
    pub fn from_jwks(jwks: &Value) -> Result<Self, String> {
        let list = jwks.get("keys").and_then(Value::as_array).ok_or("a JWKS needs a `keys` array")?;
        let mut keys = HashMap::new();
        for key in list {
            if key.get("kty").and_then(Value::as_str) != Some("OKP")
                || key.get("crv").and_then(Value::as_str) != Some("Ed25519")
            {
                continue;
            }
            let kid = key.get("kid").and_then(Value::as_str).ok_or("a JWKS key has no `kid`")?;
            let x = key.get("x").and_then(Value::as_str).ok_or("a JWKS key has no `x`")?;
            let bytes = URL_SAFE_NO_PAD.decode(x).map_err(|_| format!("key {kid}: `x` is not base64url"))?;
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| format!("key {kid}: `x` is not 32 bytes"))?;
            let key =
                VerifyingKey::from_bytes(&bytes).map_err(|_| format!("key {kid}: not an Ed25519 key"))?;
            keys.insert(kid.to_owned(), key);
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One event as the verifier sees it.
pub struct Item<'a> {
    pub cursor: LogCursor,
    pub parts: EventParts<'a>,
    pub hash: Option<&'a str>,
    pub commitments: Option<&'a Commitments>,
    pub secrets: Secrets,
}

/// The streaming verifier: feed events in global order, then [`finish`](Self::finish).
/// Memory grows with the number of streams (about 70 bytes each), not with the events.
pub struct Verifier {
    keys: AuditKeys,
    streams: HashMap<u128, (i64, Digest32)>,
    root: Digest32,
    count: u64,
    recent: VecDeque<(LogCursor, Digest32)>,
    /// Users whose renamed legacy streams were seen, with the first such event, until a
    /// `UserErased` event that renamed them is seen.
    redacted_without_erasure: HashMap<String, Failure>,
    /// Users whose erasure renamed legacy streams.
    erased_legacy: std::collections::HashSet<String>,
    report: Report,
}

impl Verifier {
    pub fn new(keys: AuditKeys) -> Self {
        Self {
            keys,
            streams: HashMap::new(),
            root: ZERO,
            count: 0,
            recent: VecDeque::with_capacity(1024),
            redacted_without_erasure: HashMap::new(),
            erased_legacy: std::collections::HashSet::new(),
            report: Report::default(),
        }
    }

    /// Checks one event; the first failure stops verification.
    pub fn check(&mut self, item: &Item<'_>) -> Result<(), Failure> {
        let fail = |reason: String| Failure {
            position: item.cursor.position,
            cursor: item.cursor.to_string(),
            reason,
        };
        let parts = &item.parts;
        let stated = item.hash.ok_or_else(|| fail("the event has no hash".into()))?;
        let stated = chain::parse_hex(stated).map_err(|e| fail(e.to_string()))?;
        let canonical =
            chain::canonical(parts, item.commitments, item.secrets).map_err(|e| fail(e.to_string()))?;
        let stream = stream_key(parts.aggregate_type, parts.aggregate_id);
        let previous = match (parts.sequence, self.streams.get(&stream)) {
            (1, None) => ZERO,
            (sequence, Some((last, digest))) if *last + 1 == sequence => *digest,
            (sequence, Some((last, _))) if sequence <= *last => {
                return Err(fail(format!(
                    "{}/{} sequence {sequence} comes after {last}: an event was inserted or reordered",
                    parts.aggregate_type, parts.aggregate_id
                )));
            }
            (sequence, last) => {
                let last = last.map_or(0, |(last, _)| *last);
                return Err(fail(format!(
                    "{}/{} jumps from sequence {last} to {sequence}: an event before it was deleted or moved",
                    parts.aggregate_type, parts.aggregate_id
                )));
            }
        };
        let redacted = redacted_user(parts);
        if let Some(user) = redacted {
            // Renamed by an erasure: the stated hash stands for the withheld content.
            self.report.redacted += 1;
            if !self.erased_legacy.contains(user) {
                self.redacted_without_erasure.entry(user.to_owned()).or_insert_with(|| {
                    fail(format!(
                        "{}/{} is a renamed stream but no UserErased event of that user renamed it",
                        parts.aggregate_type, parts.aggregate_id
                    ))
                });
            }
        } else if chain::event_hash(&previous, &canonical) != stated {
            return Err(fail(
                "the hash does not match the event's content and its stream's previous event: the event was changed"
                    .into(),
            ));
        }
        if parts.aggregate_type == SEALS_TYPE {
            self.check_seal(parts.payload).map_err(fail)?;
        }
        if parts.aggregate_type == "user"
            && parts.event_type == "UserErased"
            && parts.payload.pointer("/UserErased/legacy_claim").and_then(Value::as_bool) == Some(true)
        {
            self.redacted_without_erasure.remove(parts.aggregate_id);
            self.erased_legacy.insert(parts.aggregate_id.to_owned());
        }
        self.streams.insert(stream, (parts.sequence, stated));
        self.root = chain::fold_root(&self.root, &stated);
        self.count += 1;
        if self.recent.len() == SEAL_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((item.cursor, self.root));
        self.report.events += 1;
        self.report.unsealed += 1;
        Ok(())
    }

    fn check_seal(&mut self, payload: &Value) -> Result<(), String> {
        let AuditEvent::LogSealed { through, count, root, kid, signature, sealed_at } =
            AuditEvent::deserialize_payload(payload)?;
        let key =
            self.keys.keys.get(&kid).ok_or_else(|| {
                format!("the seal is signed with key {kid}, which is not among the audit keys")
            })?;
        let signature = URL_SAFE_NO_PAD
            .decode(&signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or("the seal's signature is malformed")?;
        key.verify(seal_message(&through, count, &root, &kid, sealed_at).as_bytes(), &signature)
            .map_err(|_| "the seal's signature does not verify: the seal was changed".to_owned())?;
        if count > self.count {
            return Err(format!("the seal covers {count} events but only {} precede it", self.count));
        }
        let back = usize::try_from(self.count - count).unwrap_or(usize::MAX);
        let found = match back.checked_add(1).and_then(|b| self.recent.len().checked_sub(b)) {
            Some(index) => self.recent[index],
            None if count == 0 => (LogCursor::START, ZERO),
            None => return Err(format!("the seal covers {count} events, too far back to check")),
        };
        let (at, expected) = found;
        if count > 0 && at.to_string() != through {
            return Err(format!(
                "the seal covers {count} events through {through}, but the {count}th event is at {at}: \
                 events before it were deleted or inserted"
            ));
        }
        if chain::hex(&expected) != root {
            return Err(format!(
                "the events through {through} do not fold to the sealed root: an event before it was changed, \
                 deleted, inserted or reordered"
            ));
        }
        self.report.seals += 1;
        self.report.sealed_through = Some(through);
        // The events after `through` (including this seal) stay unsealed until the next.
        self.report.unsealed = back as u64;
        Ok(())
    }

    /// The report of a verification that stopped here (`failure` set when one was found).
    pub fn finish(mut self, failure: Option<Failure>) -> Report {
        let unexplained = self.redacted_without_erasure.into_values().min_by_key(|f| f.position);
        self.report.failure = failure.or(unexplained);
        self.report
    }

    fn note_personal(&mut self, checked: u64, without_key: u64) {
        self.report.personal_checked += checked;
        self.report.personal_without_key += without_key;
    }
}

impl AuditEvent {
    fn deserialize_payload(payload: &Value) -> Result<Self, String> {
        Self::deserialize(payload).map_err(|e| format!("the seal is unreadable: {e}"))
    }
}

/// The user whose erasure renamed this legacy claim or login-protection stream.
fn redacted_user<'a>(parts: &EventParts<'a>) -> Option<&'a str> {
    match parts.aggregate_type {
        "email_claim" | "login_attempts" => parts.aggregate_id.strip_prefix("erased:"),
        _ => None,
    }
}

fn stream_key(aggregate_type: &str, aggregate_id: &str) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update(aggregate_type.as_bytes());
    hasher.update([0]);
    hasher.update(aggregate_id.as_bytes());
    let digest = hasher.finalize();
    u128::from_be_bytes(digest[..16].try_into().unwrap_or([0; 16]))
}

/// Verifies an export read line by line (an export of the whole log, from its start).
pub fn verify_export(reader: impl BufRead, keys: AuditKeys) -> std::io::Result<Report> {
    let mut verifier = Verifier::new(keys);
    let mut line_number = 0u64;
    for line in reader.lines() {
        let line = line?;
        line_number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: ExportRecord = match serde_json::from_str(&line) {
            Ok(record) => record,
            Err(e) => {
                let failure = Failure {
                    position: -1,
                    cursor: String::new(),
                    reason: format!("line {line_number} is not an exported event: {e}"),
                };
                return Ok(verifier.finish(Some(failure)));
            }
        };
        let cursor =
            record.cursor.parse::<LogCursor>().unwrap_or(LogCursor { txid: 0, position: record.position });
        let parts = match record.parts() {
            Ok(parts) => parts,
            Err(reason) => {
                let failure = Failure { position: record.position, cursor: record.cursor.clone(), reason };
                return Ok(verifier.finish(Some(failure)));
            }
        };
        let item = Item {
            cursor,
            parts,
            hash: record.hash.as_deref(),
            commitments: record.commitments.as_ref(),
            secrets: Secrets::Committed,
        };
        if let Err(failure) = verifier.check(&item) {
            return Ok(verifier.finish(Some(failure)));
        }
    }
    Ok(verifier.finish(None))
}

/// Verifies the live log, and every readable personal value against its commitment
/// while its key exists.
pub async fn verify_live(store: &EventStore, keys: AuditKeys, page: usize) -> anyhow::Result<Report> {
    let mut verifier = Verifier::new(keys);
    let mut after = LogCursor::ORIGIN;
    let mut personal_keys: HashMap<String, Option<crate::events::personal::PersonalKey>> = HashMap::new();
    loop {
        let events = store.read_after(after, page).await?;
        let Some(last) = events.last() else { break };
        after = last.cursor;
        for event in &events {
            let commitments =
                match event.commitments.as_ref().map(|c| serde_json::from_value::<Commitments>(c.clone())) {
                    Some(Ok(c)) => Some(c),
                    Some(Err(_)) => {
                        let failure = failure_at(event, "the stored commitments are unreadable".into());
                        return Ok(verifier.finish(Some(failure)));
                    }
                    None => None,
                };
            let item = Item {
                cursor: event.cursor,
                parts: event.parts(),
                hash: event.hash.as_deref(),
                commitments: commitments.as_ref(),
                secrets: Secrets::Stored,
            };
            if let Err(failure) = verifier.check(&item) {
                return Ok(verifier.finish(Some(failure)));
            }
            if let Some(commitments) = &commitments {
                if !personal_keys.contains_key(&commitments.key) {
                    let key = store.personal_keys().existing(&commitments.key).await?;
                    personal_keys.insert(commitments.key.clone(), key);
                }
                match personal_keys.get(&commitments.key).and_then(Option::as_ref) {
                    Some(key) => {
                        if let Err(e) = chain::check_personal(
                            key.as_slice(),
                            &event.event_type,
                            &event.payload,
                            &event.metadata,
                            commitments,
                        ) {
                            return Ok(verifier.finish(Some(failure_at(event, e.to_string()))));
                        }
                        verifier.note_personal(commitments.fields.len() as u64, 0);
                    }
                    None => verifier.note_personal(0, commitments.fields.len() as u64),
                }
                if personal_keys.len() > 100_000 {
                    personal_keys.clear();
                }
            }
        }
    }
    Ok(verifier.finish(None))
}

fn failure_at(event: &RecordedEvent, reason: String) -> Failure {
    Failure { position: event.cursor.position, cursor: event.cursor.to_string(), reason }
}
