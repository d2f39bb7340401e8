//! The `mana-core-auth` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use clap::Parser;
use mana_core_auth::cli::{Cli, run};

fn main() -> ExitCode {
    // A `.env` file in the working directory is read if present; the real environment wins.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One clear line; the cause chain follows on the same line.
            eprintln!("mana-core-auth: {error:#}");
            ExitCode::FAILURE
        }
    }
}
