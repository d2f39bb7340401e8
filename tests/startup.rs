//! Start-up and shutdown of the real binary.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ServerProcess, TestDb, binary};

/// Runs the binary with only `env` and waits for it to exit; returns (status, stderr).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let cwd = tempfile::tempdir().expect("temp dir");
    let output = Command::new(binary())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run binary");
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_bad_database_url_stops_start_up_with_one_clear_line() {
    let (status, stderr) =
        run_to_exit(&["serve"], &[("DATABASE_URL", "mysql://root@localhost/db"), ("PORT", "0")]);
    assert!(!status.success());
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn an_unreachable_database_stops_start_up_with_a_clear_message() {
    let (status, stderr) =
        run_to_exit(&["serve"], &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/db"), ("PORT", "0")]);
    assert!(!status.success());
    assert!(stderr.contains("cannot connect to the database"), "{stderr}");
    assert!(!stderr.contains("nobody@"), "the URL may carry a password: {stderr}");
}

#[test]
fn malformed_values_name_their_variable() {
    for (name, value) in
        [("PORT", "http"), ("LOG_FORMAT", "xml"), ("RUST_LOG", "[[["), ("CORS_ORIGINS", "nope")]
    {
        let (status, stderr) = run_to_exit(&["serve"], &[(name, value)]);
        assert!(!status.success(), "{name}");
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

#[test]
fn a_database_with_an_unknown_migration_is_refused() {
    let db = TestDb::sqlite();
    let url = db.url();
    let (status, stderr) = run_to_exit(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(status.success(), "{stderr}");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.expect("open");
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99999999, 'from the future', 1, x'00', 0)",
        )
        .execute(&pool)
        .await
        .expect("insert");
        pool.close().await;
    });
    let (status, stderr) = run_to_exit(&["serve"], &[("DATABASE_URL", &url), ("PORT", "0")]);
    assert!(!status.success());
    assert!(stderr.contains("99999999") && stderr.contains("does not know"), "{stderr}");
}

#[test]
fn with_no_environment_at_all_it_serves_health_on_sqlite_and_stops_cleanly() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(binary())
        .env_clear()
        .current_dir(cwd.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let healthy = runtime.block_on(async {
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(response) = client.get("http://127.0.0.1:3001/api/v1/health").send().await {
                return response.status() == 200;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the server exited ({status}); is port 3001 taken?");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    assert!(healthy, "no health answer on 127.0.0.1:3001");
    assert!(cwd.path().join("data/mana-core-auth.db").exists(), "the default SQLite file is created");
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "SIGTERM must end in exit 0, got {status}");
}

#[test]
fn sigterm_stops_a_postgres_server_with_exit_code_zero() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDb::postgres());
    let mut server = ServerProcess::spawn(&HashMap::from([("DATABASE_URL".to_owned(), db.url())]));
    let health =
        runtime.block_on(async { reqwest::get(server.url("/api/v1/health")).await.map(|r| r.status()) });
    assert_eq!(health.expect("health").as_u16(), 200);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}; logs:\n{}", server.log_text());
    assert!(server.log_text().contains("\"stopped\""), "{}", server.log_text());
}

#[test]
fn production_without_a_key_encryption_secret_does_not_start() {
    let (status, stderr) = run_to_exit(&["serve"], &[("APP_ENV", "production"), ("PORT", "0")]);
    assert!(!status.success());
    assert!(stderr.contains("KEY_ENCRYPTION_SECRET"), "{stderr}");
}
