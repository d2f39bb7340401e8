//! The `mana-core-auth` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the service allocates many small short-lived buffers (JSON, SQL rows);
/// glibc's allocator spent about 15 % of the CPU on them under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use mana_core_auth::cli::{Cli, run};

fn main() -> ExitCode {
    // A `.env` file in the working directory is read if present; the real environment wins.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mana-core-auth: {}", one_line(&error));
            match error.downcast_ref::<mana_core_auth::cli::Exit>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// The error and its causes on one line, each cause once (some libraries repeat their
/// source in their own message).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}
