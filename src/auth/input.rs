//! Validated inputs. The value types (an e-mail address, a password, a display name)
//! each return a message naming the field, so a request can report every bad field at
//! once. The request bodies as clients send them (with their OpenAPI schemas) turn into
//! the typed inputs of the use cases by `TryFrom`, whose error lists those messages.

mod passwords;
mod sign_in;

use unicode_normalization::UnicodeNormalization;

pub use passwords::{
    ChangePasswordBody, DeleteAccountBody, EmailVerification, ForgotPasswordBody, PasswordChange,
    PasswordReset, PasswordResetRequest, ResetPasswordBody, VerifyEmailBody,
};
pub use sign_in::{
    LoginBody, LoginInput, RefreshBody, RefreshRequest, RegisterBody, Registration, ValidateBody,
};

/// A normalised e-mail address: trimmed, lower-cased, syntactically valid, ≤ 254 chars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses an address as typed by a user.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err("email must not be empty".into());
        }
        if email.chars().count() > 254 {
            return Err("email must be at most 254 characters".into());
        }
        if !valid_address(&email) {
            return Err("email must be a valid e-mail address".into());
        }
        Ok(Self(email))
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A local part of letters, digits and `.!#$%&'*+/=?^_`{|}~-` (no leading, trailing or
/// double dot, ≤ 64 chars) and a domain of at least two DNS labels.
fn valid_address(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else { return false };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels.last().is_some_and(|tld| tld.chars().any(|c| c.is_ascii_alphabetic()));
    local_ok && domain_ok
}

/// A password: NFC-normalised, 12 to 128 Unicode scalar values.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

impl Password {
    /// The shortest password accepted.
    pub const MIN: usize = 12;
    /// The longest password accepted.
    pub const MAX: usize = 128;

    /// Parses a new password (`field` names it in the message).
    pub fn parse(raw: &str, field: &str) -> Result<Self, String> {
        let normalised: String = raw.nfc().collect();
        let length = normalised.chars().count();
        if !(Self::MIN..=Self::MAX).contains(&length) {
            return Err(format!("{field} must be {} to {} characters long", Self::MIN, Self::MAX));
        }
        Ok(Self(normalised))
    }

    /// A password presented at login: normalised the same way, only bounded in size (a
    /// wrong length is simply a wrong password).
    pub fn presented(raw: &str) -> Result<Self, String> {
        let normalised: String = raw.nfc().collect();
        if normalised.chars().count() > Self::MAX * 4 {
            return Err("password is too long".into());
        }
        Ok(Self(normalised))
    }

    /// The normalised password, for hashing.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// An optional display name: trimmed, at most 255 characters; empty means none.
pub fn parse_name(raw: Option<&str>) -> Result<Option<String>, String> {
    let Some(name) = raw.map(str::trim).filter(|n| !n.is_empty()) else { return Ok(None) };
    if name.chars().count() > 255 {
        return Err("name must be at most 255 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(Some(name.to_owned()))
}

/// An optional short text (device id, device name): at most `max` characters.
pub fn parse_short(raw: Option<&str>, field: &str, max: usize) -> Result<Option<String>, String> {
    let Some(text) = raw.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
    if text.chars().count() > max || text.chars().any(char::is_control) {
        return Err(format!("{field} must be at most {max} printable characters"));
    }
    Ok(Some(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_lower_cased() {
        assert_eq!(Email::parse("  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a..b@example.com",
            "a@-x.com",
            "a b@example.com",
            "a@example.123",
            "ä@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn password_length_counts_scalar_values_after_nfc() {
        // "é" as e + combining acute is two scalars before NFC, one after.
        let decomposed = "e\u{301}".repeat(12);
        assert_eq!(Password::parse(&decomposed, "password").unwrap().into_inner().chars().count(), 12);
        assert!(Password::parse(&"ü".repeat(11), "password").is_err(), "11 scalars, 22 bytes");
        assert!(Password::parse(&"ü".repeat(128), "password").is_ok());
        assert!(Password::parse(&"x".repeat(129), "password").is_err());
    }

    #[test]
    fn names_are_optional_and_bounded() {
        assert_eq!(parse_name(Some("  ")).unwrap(), None);
        assert_eq!(parse_name(Some(" Ada ")).unwrap().as_deref(), Some("Ada"));
        assert!(parse_name(Some(&"n".repeat(256))).is_err());
    }
}
