//! Sign-in requests: registration, login, refresh and token validation.

use serde::Deserialize;
use utoipa::ToSchema;

use super::{Email, Password, parse_name, parse_short};
use crate::security::refresh::RefreshToken;

/// `POST /auth/register` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Trimmed and lower-cased; at most 254 characters.
    #[schema(value_type = String, required = true, max_length = 254, pattern = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")]
    email: Option<String>,
    /// 12 to 128 characters (after NFC normalisation).
    #[schema(value_type = String, required = true, min_length = 12, max_length = 128)]
    password: Option<String>,
    /// Optional display name, at most 255 characters, no control characters.
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    name: Option<String>,
}

/// A registration request, validated.
#[derive(Debug)]
pub struct Registration {
    pub email: Email,
    pub password: Password,
    pub name: Option<String>,
}

impl TryFrom<RegisterBody> for Registration {
    type Error = Vec<String>;

    fn try_from(body: RegisterBody) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let email = required(body.email, "email", &mut problems)
            .and_then(|e| Email::parse(&e).map_err(|m| problems.push(m)).ok());
        let password = required(body.password, "password", &mut problems)
            .and_then(|p| Password::parse(&p, "password").map_err(|m| problems.push(m)).ok());
        let name = parse_name(body.name.as_deref()).map_err(|m| problems.push(m)).ok().flatten();
        match (email, password) {
            (Some(email), Some(password)) if problems.is_empty() => Ok(Self { email, password, name }),
            _ => Err(problems),
        }
    }
}

/// `POST /auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoginBody {
    #[schema(value_type = String, required = true, max_length = 254, pattern = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")]
    email: Option<String>,
    /// At most 512 characters.
    #[schema(value_type = String, required = true, max_length = 512)]
    password: Option<String>,
    /// At most 255 characters, no control characters.
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    device_id: Option<String>,
    /// At most 255 characters, no control characters.
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    device_name: Option<String>,
    /// The refresh token lasts 30 days instead of 7.
    remember_me: Option<bool>,
    /// Accepted for compatibility and ignored (the server sees the client's address).
    #[schema(value_type = Option<String>)]
    #[expect(dead_code, reason = "accepted for compatibility, never used")]
    ip_address: Option<serde::de::IgnoredAny>,
    /// Accepted for compatibility and ignored (the server reads the header).
    #[schema(value_type = Option<String>)]
    #[expect(dead_code, reason = "accepted for compatibility, never used")]
    user_agent: Option<serde::de::IgnoredAny>,
}

/// A login request, validated.
#[derive(Debug)]
pub struct LoginInput {
    pub email: Email,
    pub password: Password,
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    pub remember_me: bool,
}

impl TryFrom<LoginBody> for LoginInput {
    type Error = Vec<String>;

    fn try_from(body: LoginBody) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let email = required(body.email, "email", &mut problems)
            .and_then(|e| Email::parse(&e).map_err(|m| problems.push(m)).ok());
        let password = required(body.password, "password", &mut problems)
            .and_then(|p| Password::presented(&p).map_err(|m| problems.push(m)).ok());
        let device_id = parse_short(body.device_id.as_deref(), "deviceId", 255)
            .map_err(|m| problems.push(m))
            .ok()
            .flatten();
        let device_name = parse_short(body.device_name.as_deref(), "deviceName", 255)
            .map_err(|m| problems.push(m))
            .ok()
            .flatten();
        match (email, password) {
            (Some(email), Some(password)) if problems.is_empty() => Ok(Self {
                email,
                password,
                device_id,
                device_name,
                remember_me: body.remember_me.unwrap_or(false),
            }),
            _ => Err(problems),
        }
    }
}

/// `POST /auth/refresh` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RefreshBody {
    #[schema(value_type = String, required = true)]
    refresh_token: Option<String>,
}

/// A refresh request: the presented refresh token, checked by the use case.
#[derive(Debug)]
pub struct RefreshRequest {
    pub token: String,
}

impl RefreshRequest {
    /// The session the token names, if it is well formed (what refreshes are rate
    /// limited by).
    pub fn session_id(&self) -> Option<String> {
        RefreshToken::parse(&self.token).map(|t| t.session_id().to_string())
    }
}

impl TryFrom<RefreshBody> for RefreshRequest {
    type Error = Vec<String>;

    fn try_from(body: RefreshBody) -> Result<Self, Vec<String>> {
        let token = body.refresh_token.ok_or_else(|| vec!["refreshToken is required".to_owned()])?;
        Ok(Self { token })
    }
}

/// `POST /auth/validate` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    token: Option<String>,
}

impl ValidateBody {
    /// The token to check; none when it is missing or empty (an answer, not an error).
    pub fn into_token(self) -> Option<String> {
        self.token.filter(|t| !t.is_empty())
    }
}

/// The value of a field that must be present; its absence is noted in `problems`.
fn required(value: Option<String>, field: &str, problems: &mut Vec<String>) -> Option<String> {
    if value.is_none() {
        problems.push(format!("{field} is required"));
    }
    value
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn register(body: Value) -> Result<Registration, Vec<String>> {
        Registration::try_from(serde_json::from_value::<RegisterBody>(body).expect("a register body"))
    }

    fn login(body: Value) -> Result<LoginInput, Vec<String>> {
        LoginInput::try_from(serde_json::from_value::<LoginBody>(body).expect("a login body"))
    }

    #[test]
    fn a_registration_names_every_bad_field() {
        assert_eq!(register(json!({})).unwrap_err(), ["email is required", "password is required"]);
        assert_eq!(
            register(json!({"email": "nope", "password": "short", "name": "n".repeat(256)})).unwrap_err(),
            [
                "email must be a valid e-mail address",
                "password must be 12 to 128 characters long",
                "name must be at most 255 characters",
            ]
        );
        let ok =
            register(json!({"email": " A@Example.com", "password": "correct horse battery", "name": " "}));
        let ok = ok.unwrap();
        assert_eq!((ok.email.as_str(), ok.name), ("a@example.com", None));
    }

    #[test]
    fn a_login_takes_any_password_length_and_bounds_the_device() {
        let input = login(json!({"email": "a@example.com", "password": "x", "deviceId": " d1 "})).unwrap();
        assert_eq!((input.device_id.as_deref(), input.remember_me), (Some("d1"), false));
        assert_eq!(
            login(json!({"password": "x", "deviceName": "n".repeat(256)})).unwrap_err(),
            ["email is required", "deviceName must be at most 255 printable characters"]
        );
    }

    #[test]
    fn a_refresh_needs_its_token_and_validation_ignores_an_empty_one() {
        let missing = serde_json::from_value::<RefreshBody>(json!({})).expect("a refresh body");
        assert_eq!(RefreshRequest::try_from(missing).unwrap_err(), ["refreshToken is required"]);
        let garbled = serde_json::from_value::<RefreshBody>(json!({"refreshToken": "x"})).expect("a body");
        assert_eq!(RefreshRequest::try_from(garbled).unwrap().session_id(), None);
        let empty = serde_json::from_value::<ValidateBody>(json!({"token": ""})).expect("a validate body");
        assert_eq!(empty.into_token(), None);
    }
}
