//! Admin credit requests: grants, adjustments and refunds by admin and service tokens.
//! Each needs a reason and an idempotency key, which is scoped to the calling operator
//! (see `commands::operator_key`).

use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{fingerprint, parse_amount, parse_key, parse_signed_amount};
use crate::domain::Credits;
use crate::events::credits::Pool;

/// `POST /admin/credits/grant` body.
// Also the adjustment's body as the server reads it; the document shows that one as
// `AdjustBody`, whose amount is signed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrantBody {
    #[schema(value_type = String, required = true, min_length = 1)]
    user_id: Option<String>,
    /// 1 to 1,000,000.
    #[schema(value_type = i64, required = true, minimum = 1, maximum = 1_000_000)]
    amount: Option<Value>,
    #[schema(value_type = Pool, required = true)]
    pool: Option<Pool>,
    /// 1 to 500 characters, not only spaces.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 500, pattern = "\\S")]
    reason: Option<String>,
    /// 1 to 255 printable ASCII characters; scoped to the calling operator, whichever
    /// account the request targets.
    #[schema(value_type = String, required = true, pattern = "^[!-~]{1,255}$")]
    idempotency_key: Option<String>,
}

/// `POST /admin/credits/adjust` body: a grant's fields with a signed amount.
// Only the OpenAPI document's: the server reads this body as a `GrantBody`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[expect(dead_code, reason = "documents the adjustment's body; GrantBody reads it")]
pub struct AdjustBody {
    #[schema(min_length = 1)]
    user_id: String,
    /// Non-zero, −1,000,000 to 1,000,000; the pool may not go below zero.
    #[schema(minimum = -1_000_000, maximum = 1_000_000)]
    amount: i64,
    pool: Pool,
    /// 1 to 500 characters, not only spaces.
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    reason: String,
    /// 1 to 255 printable ASCII characters; scoped to the calling operator, whichever
    /// account the request targets.
    #[schema(pattern = "^[!-~]{1,255}$")]
    idempotency_key: String,
}

/// `POST /admin/credits/refund` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RefundBody {
    #[schema(value_type = String, required = true, min_length = 1)]
    transaction_id: Option<String>,
    /// 1 to 1,000,000 and at most what is left of the spend; all of it when absent.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000)]
    amount: Option<Value>,
    /// 1 to 500 characters, not only spaces.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 500, pattern = "\\S")]
    reason: Option<String>,
    /// 1 to 255 printable ASCII characters; scoped to the calling operator, whichever
    /// account the request targets.
    #[schema(value_type = String, required = true, pattern = "^[!-~]{1,255}$")]
    idempotency_key: Option<String>,
}

/// A validated `POST /admin/credits/grant`: adds `amount` (1 to 1,000,000) to a pool.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminGrant {
    pub user_id: String,
    pub pool: Pool,
    pub amount: Credits,
    pub reason: String,
    pub idempotency_key: String,
}

/// A validated `POST /admin/credits/adjust`: moves a pool by a signed, non-zero amount.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminAdjust {
    pub user_id: String,
    pub pool: Pool,
    pub amount: Credits,
    pub reason: String,
    pub idempotency_key: String,
}

/// A validated `POST /admin/credits/refund`: gives back (part of) a spend.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminRefund {
    pub transaction_id: String,
    /// All that is left of the spend when absent.
    pub amount: Option<Credits>,
    pub reason: String,
    pub idempotency_key: String,
}

/// The fields a grant and an adjustment share, validated; only the amount's range differs.
fn pool_change(
    body: GrantBody,
    signed: bool,
) -> Result<(String, Pool, Credits, String, String), Vec<String>> {
    let mut problems = Vec::new();
    let amount = if signed {
        parse_signed_amount(body.amount.as_ref(), &mut problems)
    } else {
        parse_amount(body.amount.as_ref(), "amount", &mut problems)
    };
    let user_id = body.user_id.filter(|u| !u.is_empty());
    if user_id.is_none() {
        problems.push("userId is required".into());
    }
    if body.pool.is_none() {
        problems.push("pool is required (free or paid)".into());
    }
    let reason = reason_of(body.reason.as_deref(), &mut problems);
    let key = key_of(body.idempotency_key.as_deref(), &mut problems);
    match (user_id, body.pool, amount, key) {
        (Some(user_id), Some(pool), Some(amount), Some(key)) if problems.is_empty() => {
            Ok((user_id, pool, amount, reason, key))
        }
        _ => Err(problems),
    }
}

impl TryFrom<GrantBody> for AdminGrant {
    type Error = Vec<String>;

    fn try_from(body: GrantBody) -> Result<Self, Vec<String>> {
        let (user_id, pool, amount, reason, idempotency_key) = pool_change(body, false)?;
        Ok(Self { user_id, pool, amount, reason, idempotency_key })
    }
}

impl TryFrom<GrantBody> for AdminAdjust {
    type Error = Vec<String>;

    fn try_from(body: GrantBody) -> Result<Self, Vec<String>> {
        let (user_id, pool, amount, reason, idempotency_key) = pool_change(body, true)?;
        Ok(Self { user_id, pool, amount, reason, idempotency_key })
    }
}

impl TryFrom<RefundBody> for AdminRefund {
    type Error = Vec<String>;

    fn try_from(body: RefundBody) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let amount = body.amount.as_ref().and_then(|a| parse_amount(Some(a), "amount", &mut problems));
        let transaction_id = body.transaction_id.filter(|t| !t.is_empty());
        if transaction_id.is_none() {
            problems.push("transactionId is required".into());
        }
        let reason = reason_of(body.reason.as_deref(), &mut problems);
        let key = key_of(body.idempotency_key.as_deref(), &mut problems);
        match (transaction_id, key) {
            (Some(transaction_id), Some(idempotency_key)) if problems.is_empty() => {
                Ok(Self { transaction_id, amount, reason, idempotency_key })
            }
            _ => Err(problems),
        }
    }
}

fn reason_of(reason: Option<&str>, problems: &mut Vec<String>) -> String {
    match reason.map(str::trim) {
        Some(r) if !r.is_empty() && r.chars().count() <= 500 => r.to_owned(),
        _ => {
            problems.push("reason is required (at most 500 characters)".into());
            String::new()
        }
    }
}

fn key_of(key: Option<&str>, problems: &mut Vec<String>) -> Option<String> {
    match key.map(parse_key) {
        Some(Ok(key)) => Some(key),
        Some(Err(message)) => {
            problems.push(message);
            None
        }
        None => {
            problems.push("idempotencyKey is required".into());
            None
        }
    }
}

/// An admin operation on an account.
#[derive(Clone, Debug, PartialEq)]
pub enum AdminOperation {
    Grant { user_id: String, pool: Pool, amount: Credits },
    Adjust { user_id: String, pool: Pool, amount: Credits },
    Refund { transaction_id: String, amount: Option<Credits> },
}

impl AdminOperation {
    /// The operation's name, part of its operator key's fingerprint (a grant and an
    /// adjustment with the same body are different requests).
    fn name(&self) -> &'static str {
        match self {
            Self::Grant { .. } => "grant",
            Self::Adjust { .. } => "adjust",
            Self::Refund { .. } => "refund",
        }
    }

    /// How many credits it asks to move, for error messages.
    pub fn requested(&self) -> Credits {
        match self {
            Self::Grant { amount, .. } => *amount,
            Self::Adjust { amount, .. } => amount.abs(),
            Self::Refund { amount, .. } => amount.unwrap_or(Credits::ZERO),
        }
    }
}

/// Any admin operation with its reason and its operator's idempotency key: what the
/// credit service runs.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminRequest {
    pub operation: AdminOperation,
    pub reason: String,
    /// The key as the operator sent it.
    pub key: String,
}

impl AdminRequest {
    /// The fingerprint the account keeps with the key: the body's fields, the target
    /// included, compared as JSON values.
    pub fn fingerprint(&self) -> String {
        let fields = match &self.operation {
            AdminOperation::Grant { user_id, pool, amount }
            | AdminOperation::Adjust { user_id, pool, amount } => {
                json!({"userId": user_id, "amount": amount, "pool": pool, "reason": self.reason})
            }
            AdminOperation::Refund { transaction_id, amount } => {
                json!({"transactionId": transaction_id, "amount": amount, "reason": self.reason})
            }
        };
        fingerprint(&fields)
    }

    /// The fingerprint the operator's key holds: the operation's name and the body's
    /// fingerprint, so one key cannot serve a grant and then an adjustment.
    pub fn operator_fingerprint(&self) -> String {
        fingerprint(&json!({"operation": self.operation.name(), "request": self.fingerprint()}))
    }
}

impl From<AdminGrant> for AdminRequest {
    fn from(grant: AdminGrant) -> Self {
        let AdminGrant { user_id, pool, amount, reason, idempotency_key: key } = grant;
        Self { operation: AdminOperation::Grant { user_id, pool, amount }, reason, key }
    }
}

impl From<AdminAdjust> for AdminRequest {
    fn from(adjust: AdminAdjust) -> Self {
        let AdminAdjust { user_id, pool, amount, reason, idempotency_key: key } = adjust;
        Self { operation: AdminOperation::Adjust { user_id, pool, amount }, reason, key }
    }
}

impl From<AdminRefund> for AdminRequest {
    fn from(refund: AdminRefund) -> Self {
        let AdminRefund { transaction_id, amount, reason, idempotency_key: key } = refund;
        Self { operation: AdminOperation::Refund { transaction_id, amount }, reason, key }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn grant(body: Value) -> Result<AdminGrant, Vec<String>> {
        AdminGrant::try_from(serde_json::from_value::<GrantBody>(body).expect("a grant body"))
    }

    fn adjust(body: Value) -> Result<AdminAdjust, Vec<String>> {
        AdminAdjust::try_from(serde_json::from_value::<GrantBody>(body).expect("a grant body"))
    }

    fn refund(body: Value) -> Result<AdminRefund, Vec<String>> {
        AdminRefund::try_from(serde_json::from_value::<RefundBody>(body).expect("a refund body"))
    }

    #[test]
    fn an_empty_grant_names_every_missing_field_in_order() {
        assert_eq!(
            grant(json!({})).unwrap_err(),
            [
                "amount is required",
                "userId is required",
                "pool is required (free or paid)",
                "reason is required (at most 500 characters)",
                "idempotencyKey is required",
            ]
        );
    }

    #[test]
    fn grants_take_positive_amounts_and_adjustments_signed_ones() {
        let body =
            json!({"userId": "u", "amount": -5, "pool": "paid", "reason": " fix ", "idempotencyKey": "k"});
        assert_eq!(grant(body.clone()).unwrap_err(), ["amount must be an integer from 1 to 1000000"]);
        let adjusted = adjust(body).unwrap();
        assert_eq!((adjusted.amount, adjusted.reason.as_str()), (Credits::new(-5), "fix"));
        let zero = json!({"userId": "u", "amount": 0, "pool": "paid", "reason": "r", "idempotencyKey": "k"});
        assert_eq!(adjust(zero).unwrap_err(), ["amount must be a non-zero integer from -1000000 to 1000000"]);
    }

    #[test]
    fn a_refund_needs_its_transaction_reason_and_key_but_not_an_amount() {
        assert_eq!(
            refund(json!({"amount": 0, "transactionId": ""})).unwrap_err(),
            [
                "amount must be an integer from 1 to 1000000",
                "transactionId is required",
                "reason is required (at most 500 characters)",
                "idempotencyKey is required",
            ]
        );
        let whole = refund(json!({"transactionId": "t", "reason": "r", "idempotencyKey": "k"})).unwrap();
        assert_eq!(whole.amount, None);
    }

    #[test]
    fn admin_fingerprints_stay_what_the_log_already_holds() {
        // Fingerprints are stored with their keys: these values were computed before the
        // admin inputs moved here, and a retry after an upgrade must still match them.
        let body =
            json!({"userId": "u-1", "amount": 7, "pool": "free", "reason": "why", "idempotencyKey": "k"});
        let granted = AdminRequest::from(grant(body).unwrap());
        assert_eq!(granted.fingerprint(), "0bba303af790ff54c561a501fc76ea59cdbbbbc26a79f0f6730add4a25092c11");
        assert_eq!(
            granted.operator_fingerprint(),
            "d117f373d48bd94d9f447c84cc3dc0f358b1290b426a3c2841b35b834893f1f6"
        );
        let body =
            json!({"userId": "u-1", "amount": -7, "pool": "paid", "reason": "why", "idempotencyKey": "k"});
        let adjusted = AdminRequest::from(adjust(body).unwrap());
        assert_eq!(
            adjusted.fingerprint(),
            "f40e16e8a4937e150044e48cf9c93639930e5595baba3ff9bd4da4d4ec02677f"
        );
        assert_eq!(
            adjusted.operator_fingerprint(),
            "06bcf3fecac2631ab5c99b1407e744f36950273a8544ece1dbf133bfd24b9469"
        );
        let refunded = AdminRequest::from(
            refund(json!({"transactionId": "t-1", "reason": "why", "idempotencyKey": "k"})).unwrap(),
        );
        assert_eq!(
            refunded.fingerprint(),
            "d3ff1c3b6581693175dd91613f628488c5d3898382088e09516beda510ab0a46"
        );
        assert_eq!(
            refunded.operator_fingerprint(),
            "6d0d4fa3c0d2f41b07f5e9f199060de681518ff4ceb3579cbac6bda828ec40c2"
        );
        let partial = AdminRequest::from(
            refund(json!({"transactionId": "t-1", "amount": 3, "reason": "why", "idempotencyKey": "k"}))
                .unwrap(),
        );
        assert_eq!(partial.fingerprint(), "d634bc6d6a64f6a606a0c7f943e2ce13ede3928d998c87a71a8ec76298af9c1f");
    }

    #[test]
    fn the_same_body_as_grant_and_as_adjustment_differs_only_for_the_operator() {
        let body = json!({"userId": "u", "amount": 3, "pool": "free", "reason": "r", "idempotencyKey": "k"});
        let granted = AdminRequest::from(grant(body.clone()).unwrap());
        let adjusted = AdminRequest::from(adjust(body).unwrap());
        assert_eq!(granted.fingerprint(), adjusted.fingerprint());
        assert_ne!(granted.operator_fingerprint(), adjusted.operator_fingerprint());
    }
}
