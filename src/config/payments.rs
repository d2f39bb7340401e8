//! Payments settings: Stripe's keys and base URL, and the catalogue of credit packages
//! (`STRIPE_SECRET_KEY`, `STRIPE_WEBHOOK_SECRET`, `STRIPE_API_BASE`,
//! `CREDIT_PACKAGES_FILE`).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Env, Secret};
use crate::domain::{CreditPackage, Credits};

/// Stripe's API when `STRIPE_API_BASE` is unset.
pub const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";

/// How the service talks to Stripe and what it sells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentsConfig {
    /// Bearer key for Stripe's API; without it a purchase answers 503.
    pub stripe_secret_key: Option<Secret>,
    /// The webhook endpoint's signing secret (`whsec_...`); without it the webhook answers 503.
    pub stripe_webhook_secret: Option<Secret>,
    /// Stripe's base URL, without a trailing slash (tests point it at a fake).
    pub stripe_api_base: String,
    /// Every package, active or not (the built-in catalogue unless a file replaces it).
    pub packages: Vec<CreditPackage>,
    /// How long a call to Stripe may take before the purchase fails (10 s; tests shorten it).
    pub stripe_timeout: Duration,
}

/// A package as `CREDIT_PACKAGES_FILE` writes it: the API's field names.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PackageEntry {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    credits: i64,
    price_euro_cents: i64,
    #[serde(default = "eur")]
    currency: String,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    sort_order: i64,
}

fn eur() -> String {
    "eur".to_owned()
}

fn yes() -> bool {
    true
}

pub(super) fn parse_payments(env: &Env<'_>) -> Result<PaymentsConfig, ConfigError> {
    let base = env.get("STRIPE_API_BASE").unwrap_or(DEFAULT_STRIPE_API_BASE).trim_end_matches('/');
    let parsed = url::Url::parse(base).map_err(|e| env.bad("STRIPE_API_BASE", base, &e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(env.bad("STRIPE_API_BASE", base, "expected an http(s) URL"));
    }
    let webhook_secret = env.get("STRIPE_WEBHOOK_SECRET");
    if let Some(secret) = webhook_secret
        && !secret.starts_with("whsec_")
    {
        return Err(ConfigError {
            variable: "STRIPE_WEBHOOK_SECRET",
            reason: "expected the endpoint's signing secret, starting with whsec_".to_owned(),
        });
    }
    let packages = match env.get("CREDIT_PACKAGES_FILE") {
        None => CreditPackage::built_in(),
        Some(path) => {
            read_packages(path).map_err(|reason| ConfigError { variable: "CREDIT_PACKAGES_FILE", reason })?
        }
    };
    Ok(PaymentsConfig {
        stripe_secret_key: env.get("STRIPE_SECRET_KEY").map(Secret::new),
        stripe_webhook_secret: webhook_secret.map(Secret::new),
        stripe_api_base: base.to_owned(),
        packages,
        stripe_timeout: Duration::from_secs(10),
    })
}

fn read_packages(path: &str) -> Result<Vec<CreditPackage>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_packages(&text)
}

/// Parses and checks a JSON array of packages.
pub fn parse_packages(text: &str) -> Result<Vec<CreditPackage>, String> {
    let entries: Vec<PackageEntry> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of packages: {e}"))?;
    let mut packages: Vec<CreditPackage> = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.id.is_empty() || entry.id.len() > 64 || packages.iter().any(|p| p.id == entry.id) {
            return Err(format!("package id {:?} is empty, too long or repeated", entry.id));
        }
        if entry.credits < 1 || entry.price_euro_cents < 1 {
            return Err(format!("package {:?} needs positive credits and priceEuroCents", entry.id));
        }
        if entry.currency != "eur" {
            return Err(format!("package {:?}: only the currency \"eur\" is sold", entry.id));
        }
        packages.push(CreditPackage {
            id: entry.id,
            name: entry.name,
            description: entry.description,
            credits: Credits::new(entry.credits),
            price_euro_cents: entry.price_euro_cents,
            currency: entry.currency,
            active: entry.active,
            sort_order: entry.sort_order,
        });
    }
    Ok(packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packages_file_uses_the_api_field_names_and_is_checked() {
        let packages =
            parse_packages(r#"[{"id":"p","name":"P","credits":250,"priceEuroCents":200,"sortOrder":4}]"#)
                .expect("valid");
        assert_eq!((packages[0].credits, packages[0].price_euro_cents), (Credits::new(250), 200));
        assert!(parse_packages(r#"[{"id":"p","name":"P","credits":0,"priceEuroCents":200}]"#).is_err());
        assert!(parse_packages(r#"{"id":"p"}"#).is_err());
    }
}
