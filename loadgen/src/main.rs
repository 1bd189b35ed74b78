//! `tickrelay-loadgen`: parses the command line, sets up logging, runs.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = tickrelay_loadgen::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match tickrelay_loadgen::main_with(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tickrelay-loadgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}
