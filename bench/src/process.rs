//! The service's commands run as measured subprocesses: wall time, peak RSS (`VmHWM`,
//! sampled from /proc while the process runs), and what it printed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;

/// One subprocess run.
pub(super) struct Measured {
    pub(super) seconds: f64,
    pub(super) peak_rss_kib: u64,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// Runs the service binary with only `env` set, in `dir` (no `.env`), and samples its
/// peak RSS every 5 ms until it exits; fails unless it exits 0.
pub(super) fn measure(
    exe: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> anyhow::Result<Measured> {
    let stdout_path = dir.join("stdout.txt");
    let stderr_path = dir.join("stderr.txt");
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()?;
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(hwm) = vm_hwm_kib(pid) {
            peak = peak.max(hwm);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let seconds = started.elapsed().as_secs_f64();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    ensure!(status.success(), "`mana-core-auth {}` exited with {status}: {stderr}{stdout}", args.join(" "));
    Ok(Measured { seconds, peak_rss_kib: peak, stdout, stderr })
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())?
        .parse()
        .ok()
}
