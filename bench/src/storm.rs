//! `bench http --scenario login-storm`: attackers on many loopback source addresses storm
//! one account with wrong passwords while its owner signs in with the right one from a
//! familiar address every 500 ms.
//!
//! It reports the owner's success rate (target 100 %) and login latency, and how many
//! password checks the attackers got: each attacker answer `401 INVALID_CREDENTIALS` is one
//! checked password, each `429 LOGIN_THROTTLED` a refusal without a check. The smallest
//! gap between two attacker checks shows whether two were ever in flight at once (a gap
//! shorter than one password check would mean they overlapped). Run the server with rate
//! limits off or raised, or most attacker answers are `RATE_LIMITED` instead.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hyper::Uri;
use hyper::body::Bytes;
use serde::Deserialize;
use tokio::task::JoinSet;

use super::Latencies;
use super::http_client::{Connection, Server, Window};

/// How often the owner signs in.
const OWNER_EVERY: Duration = Duration::from_millis(500);
/// Time allowed past the window's end for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// The wrong password the attackers send.
const WRONG: &str = "Not-the-passw0rd-at-all!";

/// What the attackers got.
#[derive(Default)]
struct Attack {
    requests: u64,
    /// Answers `401`: each one password check.
    checked: Vec<Instant>,
    throttled: u64,
    rate_limited: u64,
    other: u64,
    transport: u64,
}

/// What the owner got.
#[derive(Default)]
struct Owner {
    attempts: u64,
    ok: Latencies,
    failures: Vec<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
}

/// The `n`th attacker's source address: 127.0.x.y, never 127.0.0.1 (the owner's).
fn attacker_source(n: usize) -> IpAddr {
    let n = u32::try_from(n).unwrap_or(u32::MAX) % (250 * 250);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        u8::try_from(10 + n / 250).unwrap_or(255),
        u8::try_from(1 + n % 250).unwrap_or(1),
    ))
}

/// Runs the storm: `attackers` workers, plus the owner, through `window`.
pub(super) async fn run(
    server: &Arc<Server>,
    login: &Uri,
    owner_body: Bytes,
    email: &str,
    attackers: usize,
    window: Window,
) -> anyhow::Result<()> {
    let wrong = Bytes::from(serde_json::to_vec(&serde_json::json!({"email": email, "password": WRONG}))?);
    let mut tasks = JoinSet::new();
    for n in 0..attackers {
        let conn = Connection::new(Arc::clone(server), window.end() + DRAIN).with_source(attacker_source(n));
        tasks.spawn(attack(conn, login.clone(), wrong.clone(), window));
    }
    let owner_conn = Connection::new(Arc::clone(server), window.end() + DRAIN);
    let owner = tokio::spawn(sign_in_regularly(owner_conn, login.clone(), owner_body, window));
    let mut attack_total = Attack::default();
    while let Some(one) = tasks.join_next().await {
        let one = one?;
        attack_total.requests += one.requests;
        attack_total.checked.extend(one.checked);
        attack_total.throttled += one.throttled;
        attack_total.rate_limited += one.rate_limited;
        attack_total.other += one.other;
        attack_total.transport += one.transport;
    }
    let owner = owner.await?;
    report(&attack_total, &owner, attackers, window);
    if attack_total.checked.is_empty() && attack_total.throttled == 0 {
        bail!("login-storm: the attackers got no 401 or 429 LOGIN_THROTTLED at all (rate limits on?)");
    }
    Ok(())
}

async fn attack(mut conn: Connection, login: Uri, body: Bytes, window: Window) -> Attack {
    let mut attack = Attack::default();
    let _ = conn.open().await;
    loop {
        let started = Instant::now();
        if started >= window.end() {
            return attack;
        }
        let reply = conn.post(&login, body.clone()).await;
        if started < window.measure_from() {
            continue;
        }
        attack.requests += 1;
        match reply {
            Err(_) => attack.transport += 1,
            Ok(reply) => match reply.status.as_u16() {
                401 => attack.checked.push(Instant::now()),
                429 => match serde_json::from_slice::<ErrorBody>(&reply.body).map(|b| b.error) {
                    Ok(code) if code == "LOGIN_THROTTLED" => attack.throttled += 1,
                    _ => attack.rate_limited += 1,
                },
                _ => attack.other += 1,
            },
        }
    }
}

async fn sign_in_regularly(mut conn: Connection, login: Uri, body: Bytes, window: Window) -> Owner {
    let mut owner = Owner::default();
    let _ = conn.open().await;
    let mut next = window.measure_from();
    while next < window.end() {
        tokio::time::sleep_until(next.into()).await;
        next += OWNER_EVERY;
        let started = Instant::now();
        owner.attempts += 1;
        match conn.post(&login, body.clone()).await {
            Ok(reply) if reply.status.is_success() => owner.ok.record(started.elapsed()),
            Ok(reply) => {
                let code =
                    serde_json::from_slice::<ErrorBody>(&reply.body).map(|b| b.error).unwrap_or_default();
                owner.failures.push(format!("HTTP {} {code}", reply.status.as_u16()));
            }
            Err(error) => owner.failures.push(format!("transport: {error:#}")),
        }
    }
    owner
}

fn report(attack: &Attack, owner: &Owner, attackers: usize, window: Window) {
    let seconds = window.measured().as_secs_f64();
    let mut checks = attack.checked.clone();
    checks.sort();
    let min_gap = checks.windows(2).map(|w| w[1] - w[0]).min();
    println!(
        "login-storm: attackers: {attackers} workers on {attackers} source addresses, {} requests in {seconds:.0} s",
        attack.requests
    );
    println!(
        "login-storm: attackers: {} password checks (401) = {:.2} checks/s; {} refused without a check (429 \
         LOGIN_THROTTLED); {} rate-limited; {} other; {} transport errors",
        checks.len(),
        checks.len() as f64 / seconds,
        attack.throttled,
        attack.rate_limited,
        attack.other,
        attack.transport
    );
    match min_gap {
        Some(gap) => println!(
            "login-storm: attackers: smallest gap between two checks {:.1} ms (one check in flight at a time \
             if it exceeds one password check)",
            gap.as_secs_f64() * 1000.0
        ),
        None => println!("login-storm: attackers: fewer than two checks, no gap to measure"),
    }
    let ok = owner.ok.count();
    let rate = if owner.attempts == 0 { 0.0 } else { ok as f64 * 100.0 / owner.attempts as f64 };
    println!(
        "login-storm: owner: {ok} of {} logins every {} ms succeeded = {rate:.1} % (target 100 %)",
        owner.attempts,
        OWNER_EVERY.as_millis()
    );
    println!("login-storm: owner: latency of ok logins {}", owner.ok.summary());
    if !owner.failures.is_empty() {
        println!("login-storm: owner: failures: {}", owner.failures.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacker_addresses_are_distinct_loopback_addresses_other_than_the_owners() {
        let addresses: std::collections::HashSet<IpAddr> = (0..1000).map(attacker_source).collect();
        assert_eq!(addresses.len(), 1000);
        assert!(addresses.iter().all(|a| a.is_loopback() && *a != IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
