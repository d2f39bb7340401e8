//! In-process ceilings printed next to the HTTP numbers: how many EdDSA verifications and
//! argon2id verifications this machine can do at most, measured in the same run.

use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Argon2, PasswordHash};
use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// JWT verifications per second on every core (jsonwebtoken, EdDSA, the server's path).
pub fn signature_verifications_per_second() -> anyhow::Result<f64> {
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let der = KeypairBytes { secret_key: signing.to_bytes(), public_key: None }.to_pkcs8_der()?;
    let claims = serde_json::json!({"sub": "u", "sid": "s", "email": "a@example.com", "role": "user",
        "iss": "manacore", "aud": "manacore", "iat": 1, "exp": i64::MAX / 2, "jti": "j"});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_der(der.as_bytes()),
    )?;
    let x = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        signing.verifying_key().as_bytes(),
    );
    let key = DecodingKey::from_ed_components(&x)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["manacore"]);
    Ok(on_every_core(|| jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).is_ok()))
}

/// Successful runs of `once` per second with every core running it for 2 s.
fn on_every_core(once: impl Fn() -> bool + Sync) -> f64 {
    let run = Duration::from_secs(2);
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cores())
            .map(|_| {
                scope.spawn(|| {
                    let started = Instant::now();
                    let mut n = 0u64;
                    while started.elapsed() < run {
                        n += u64::from(once());
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / run.as_secs_f64()
}

/// One argon2id verification's time (median of 9, OWASP parameters) and the machine's
/// ceiling: cores ÷ that time.
pub fn argon2_ceiling() -> anyhow::Result<(Duration, f64)> {
    let argon = Argon2::default();
    let phc = argon.hash_password(b"a benchmark password").map_err(|e| anyhow::anyhow!("{e}"))?.to_string();
    let parsed = PasswordHash::new(&phc).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut times: Vec<Duration> = (0..9)
        .map(|_| {
            let started = Instant::now();
            let _ = argon.verify_password(b"a benchmark password", &parsed);
            started.elapsed()
        })
        .collect();
    times.sort();
    let one = times[times.len() / 2];
    Ok((one, cores() as f64 / one.as_secs_f64()))
}

/// argon2id verifications per second with every core verifying at once for 2 s: what the
/// machine really sustains (memory bandwidth and shared caches may keep it below the
/// cores ÷ one-verify ceiling).
pub fn argon2_parallel_per_second() -> anyhow::Result<f64> {
    let argon = Argon2::default();
    let phc = argon.hash_password(b"a benchmark password").map_err(|e| anyhow::anyhow!("{e}"))?.to_string();
    let parsed = PasswordHash::new(&phc).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(on_every_core(|| argon.verify_password(b"a benchmark password", &parsed).is_ok()))
}
