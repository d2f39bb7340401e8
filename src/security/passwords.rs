//! Password hashing off the async runtime: argon2id on a small pool of dedicated threads
//! with a bounded queue.
//!
//! A login flood queues here instead of stalling token validation: the async workers
//! never hash. When the queue is full the caller gets [`PoolError::Busy`] (the API
//! answers 503 with `Retry-After`). A job whose caller has gone away (client disconnect)
//! is skipped before it starts. Unknown e-mails are verified against a dummy hash so they
//! cost the same time as a wrong password.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Argon2, PasswordHash};
use tokio::sync::oneshot;

/// Why the pool did not answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every thread is busy and the queue is full.
    #[error("the password hashing queue is full")]
    Busy,
    /// Hashing failed (a corrupt stored hash).
    #[error("password hashing failed: {0}")]
    Failed(String),
}

enum Job {
    Hash { password: String, reply: oneshot::Sender<Result<String, PoolError>> },
    Verify { password: String, phc: Arc<str>, reply: oneshot::Sender<Result<bool, PoolError>> },
}

/// The hashing pool. Cheap to clone.
#[derive(Clone)]
pub struct PasswordPool {
    queue: std::sync::mpsc::SyncSender<Job>,
    dummy: Arc<str>,
    started: Arc<AtomicU64>,
    threads: usize,
}

impl PasswordPool {
    /// Starts `threads` hashing threads with room for `queue` waiting jobs, and makes the
    /// dummy hash.
    pub fn new(threads: usize, queue: usize) -> Self {
        let threads = threads.max(1);
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(queue.max(1));
        let receiver = Arc::new(parking_lot::Mutex::new(receiver));
        let started = Arc::new(AtomicU64::new(0));
        for index in 0..threads {
            let receiver = Arc::clone(&receiver);
            let started = Arc::clone(&started);
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || work(&receiver, &started))
                .expect("spawn a hashing thread");
        }
        Self { queue: sender, dummy: Arc::from(dummy_phc()), started, threads }
    }

    /// How many hashing threads run.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// How many jobs have started (tests check that abandoned jobs do not).
    pub fn jobs_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Hashes a password into an argon2id PHC string.
    pub async fn hash(&self, password: String) -> Result<String, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        answer.await.unwrap_or(Err(PoolError::Failed("hashing thread stopped".into())))
    }

    /// Checks a password against a stored PHC string.
    pub async fn verify(&self, password: String, phc: &str) -> Result<bool, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify { password, phc: Arc::from(phc), reply })?;
        answer.await.unwrap_or(Err(PoolError::Failed("hashing thread stopped".into())))
    }

    /// Spends the time of a verification without a real hash (unknown e-mail); false.
    pub async fn verify_dummy(&self, password: String) -> Result<bool, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify { password, phc: Arc::clone(&self.dummy), reply })?;
        answer.await.unwrap_or(Err(PoolError::Failed("hashing thread stopped".into())))?;
        Ok(false)
    }

    fn submit(&self, job: Job) -> Result<(), PoolError> {
        self.queue.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => PoolError::Busy,
            std::sync::mpsc::TrySendError::Disconnected(_) => PoolError::Failed("pool stopped".into()),
        })
    }
}

fn work(receiver: &parking_lot::Mutex<std::sync::mpsc::Receiver<Job>>, started: &AtomicU64) {
    loop {
        let job = match receiver.lock().recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        match job {
            Job::Hash { password, reply } => {
                if reply.is_closed() {
                    continue;
                }
                started.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(hash(&password));
            }
            Job::Verify { password, phc, reply } => {
                if reply.is_closed() {
                    continue;
                }
                started.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(verify(&password, &phc));
            }
        }
    }
}

/// argon2id with the OWASP parameters (m=19456 KiB, t=2, p=1), a fresh random salt.
fn hash(password: &str) -> Result<String, PoolError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PoolError::Failed(e.to_string()))
}

/// The dummy hash for unknown e-mails: the parameters [`hash`] uses, a random salt and a
/// random output. Verifying against it costs exactly a real verification, and no password
/// is known to match it (the output was never derived from one). It is built without
/// hashing, so start-up pays neither an argon2 run (≈20 ms) nor its 19 MiB working memory,
/// which the allocator would otherwise keep for the life of an idle process.
fn dummy_phc() -> String {
    use base64::Engine;
    let params = Argon2::default().params().clone();
    let salt: [u8; 16] = rand::random();
    let output: [u8; argon2::Params::DEFAULT_OUTPUT_LEN] = rand::random();
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        b64.encode(salt),
        b64.encode(output)
    )
}

fn verify(password: &str, phc: &str) -> Result<bool, PoolError> {
    let parsed = PasswordHash::new(phc).map_err(|e| PoolError::Failed(e.to_string()))?;
    // The comparison inside is constant-time.
    Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let pool = PasswordPool::new(1, 4);
        let phc = pool.hash("correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(pool.verify("correct horse battery".into(), &phc).await.unwrap());
        assert!(!pool.verify("wrong horse battery".into(), &phc).await.unwrap());
        assert!(!pool.verify_dummy("anything".into()).await.unwrap());
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs() {
        let real = hash("some password").unwrap();
        let dummy = dummy_phc();
        let (real, dummy) = (PasswordHash::new(&real).unwrap(), PasswordHash::new(&dummy).unwrap());
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params, "same memory, iterations and lanes");
        assert_eq!(dummy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
        assert_ne!(dummy_phc(), dummy_phc(), "a fresh salt and output per process");
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once() {
        let pool = PasswordPool::new(1, 1);
        let mut pending = Vec::new();
        let mut busy = 0;
        for _ in 0..6 {
            let pool = pool.clone();
            let (tx, rx) = oneshot::channel();
            match pool.submit(Job::Hash { password: "x".repeat(12), reply: tx }) {
                Ok(()) => pending.push(rx),
                Err(PoolError::Busy) => busy += 1,
                Err(other) => panic!("{other}"),
            }
        }
        assert!(busy >= 4, "one running and one queued at most, got {} accepted", pending.len());
        for rx in pending {
            rx.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn an_abandoned_job_never_starts() {
        let pool = PasswordPool::new(1, 8);
        let before = pool.jobs_started();
        // Occupy the thread, then queue jobs whose callers give up at once.
        let busy = pool.clone();
        let running = tokio::spawn(async move { busy.hash("x".repeat(12)).await });
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel();
            pool.submit(Job::Hash { password: "y".repeat(12), reply: tx }).unwrap();
            drop(rx);
        }
        running.await.unwrap().unwrap();
        pool.hash("z".repeat(12)).await.unwrap();
        assert_eq!(pool.jobs_started() - before, 2, "only the two awaited jobs ran");
    }
}
