//! Password and e-mail verification requests: change, forgotten password, reset, verify.
//! A missing field is reported first, each by name; then the first bad value alone.

use serde::Deserialize;
use utoipa::ToSchema;

use super::{Email, Password};

/// `POST /auth/change-password` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChangePasswordBody {
    #[schema(value_type = String, required = true)]
    current_password: Option<String>,
    /// 12 to 128 characters.
    #[schema(value_type = String, required = true, min_length = 12, max_length = 128)]
    new_password: Option<String>,
}

/// A password change, validated: the current password as presented and the new one.
#[derive(Debug)]
pub struct PasswordChange {
    pub current: Password,
    pub new: Password,
}

impl TryFrom<ChangePasswordBody> for PasswordChange {
    type Error = Vec<String>;

    fn try_from(body: ChangePasswordBody) -> Result<Self, Vec<String>> {
        let [current, new] =
            present([("currentPassword", body.current_password), ("newPassword", body.new_password)])?;
        let current = Password::presented(&current).map_err(|m| vec![m])?;
        Ok(Self { current, new: new_password(&new)? })
    }
}

/// `POST /auth/forgot-password` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForgotPasswordBody {
    #[schema(value_type = String, required = true, max_length = 254, pattern = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")]
    email: Option<String>,
    /// Where the link in the message points: an absolute URL on an allowed origin
    /// (`CORS_ORIGINS`, `FRONTEND_URL`), URL characters only, no credentials or fragment.
    redirect_to: Option<String>,
}

/// A request for a password-reset link. `redirect_to` is checked by the use case against
/// the configured origins.
#[derive(Debug)]
pub struct PasswordResetRequest {
    pub email: Email,
    pub redirect_to: Option<String>,
}

impl TryFrom<ForgotPasswordBody> for PasswordResetRequest {
    type Error = Vec<String>;

    fn try_from(body: ForgotPasswordBody) -> Result<Self, Vec<String>> {
        let [email] = present([("email", body.email)])?;
        let email = Email::parse(&email).map_err(|m| vec![m])?;
        Ok(Self { email, redirect_to: body.redirect_to })
    }
}

/// `POST /auth/reset-password` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResetPasswordBody {
    #[schema(value_type = String, required = true)]
    token: Option<String>,
    /// 12 to 128 characters.
    #[schema(value_type = String, required = true, min_length = 12, max_length = 128)]
    new_password: Option<String>,
}

/// A password reset, validated: the reset token (checked by the use case) and the new
/// password.
#[derive(Debug)]
pub struct PasswordReset {
    pub token: String,
    pub new_password: Password,
}

impl TryFrom<ResetPasswordBody> for PasswordReset {
    type Error = Vec<String>;

    fn try_from(body: ResetPasswordBody) -> Result<Self, Vec<String>> {
        let [token, new] = present([("token", body.token), ("newPassword", body.new_password)])?;
        Ok(Self { token, new_password: new_password(&new)? })
    }
}

/// `POST /auth/verify-email` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailBody {
    #[schema(value_type = String, required = true)]
    token: Option<String>,
}

/// An e-mail verification: the token from the message, checked by the use case.
#[derive(Debug)]
pub struct EmailVerification {
    pub token: String,
}

impl TryFrom<VerifyEmailBody> for EmailVerification {
    type Error = Vec<String>;

    fn try_from(body: VerifyEmailBody) -> Result<Self, Vec<String>> {
        let [token] = present([("token", body.token)])?;
        Ok(Self { token })
    }
}

/// The values of every required field, or a message naming each missing one.
fn present<const N: usize>(fields: [(&str, Option<String>); N]) -> Result<[String; N], Vec<String>> {
    let missing: Vec<String> =
        fields.iter().filter(|(_, v)| v.is_none()).map(|(name, _)| format!("{name} is required")).collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(fields.map(|(_, v)| v.unwrap_or_default()))
}

fn new_password(raw: &str) -> Result<Password, Vec<String>> {
    Password::parse(raw, "newPassword").map_err(|m| vec![m])
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn change(body: Value) -> Result<PasswordChange, Vec<String>> {
        PasswordChange::try_from(serde_json::from_value::<ChangePasswordBody>(body).expect("a body"))
    }

    #[test]
    fn missing_fields_are_named_before_any_value_is_judged() {
        assert_eq!(
            change(json!({})).unwrap_err(),
            ["currentPassword is required", "newPassword is required"]
        );
        assert_eq!(
            change(json!({"currentPassword": "x", "newPassword": "short"})).unwrap_err(),
            ["newPassword must be 12 to 128 characters long"]
        );
        let reset = serde_json::from_value::<ResetPasswordBody>(json!({"newPassword": "long enough pw"}));
        assert_eq!(PasswordReset::try_from(reset.expect("a body")).unwrap_err(), ["token is required"]);
    }

    #[test]
    fn a_reset_link_request_needs_a_valid_address() {
        let body = serde_json::from_value::<ForgotPasswordBody>(json!({"email": "nope"})).expect("a body");
        assert_eq!(
            PasswordResetRequest::try_from(body).unwrap_err(),
            ["email must be a valid e-mail address"]
        );
        let body =
            serde_json::from_value::<ForgotPasswordBody>(json!({"email": "A@b.example", "redirectTo": "x"}));
        let request = PasswordResetRequest::try_from(body.expect("a body")).unwrap();
        assert_eq!((request.email.as_str(), request.redirect_to.as_deref()), ("a@b.example", Some("x")));
    }
}

/// `DELETE /auth/account` body: the caller's password, as proof.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeleteAccountBody {
    #[schema(value_type = String, required = true)]
    password: Option<String>,
}

impl TryFrom<DeleteAccountBody> for Password {
    type Error = Vec<String>;

    fn try_from(body: DeleteAccountBody) -> Result<Self, Vec<String>> {
        let [password] = present([("password", body.password)])?;
        Password::presented(&password).map_err(|m| vec![m])
    }
}
