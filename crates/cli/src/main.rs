//! `nix-outbox`: the daemon and the CLI. Each subcommand lives in its own
//! file under `cmd/` with its own clap `Args` and `run()`; this file only
//! dispatches.

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "nix-outbox",
    version,
    about = "Sign and upload Nix build outputs to binary caches, off the build's critical path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a signing key pair, compatible with `nix-store --generate-binary-cache-key`.
    Keygen(cmd::keygen::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(args) => cmd::keygen::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nix-outbox: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
