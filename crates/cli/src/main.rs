//! `nix-outbox`: the daemon and the CLI. Each subcommand lives in its own
//! file under `cmd/` with its own clap `Args` and `run()`; this file only
//! dispatches.

use clap::{Parser, Subcommand};

mod cmd;
mod format;

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
    /// Run the daemon in the foreground.
    Daemon(cmd::daemon::Args),
    /// Enqueue store paths (and their closures) by hand.
    Push(cmd::push::Args),
    /// Upload the closures of store paths now, in the foreground, without the queue.
    Copy(cmd::copy::Args),
    /// Show the queue per target: pending, in flight, failing with their last error.
    Status(cmd::status::Args),
    /// Wait until everything accepted so far is uploaded.
    Wait(cmd::wait::Args),
    /// Queue the paths Nix registered since a date (or ever), as the nix-db source picks them.
    Backfill(cmd::backfill::Args),
    /// Retry waiting uploads now instead of after their backoff (after a fix).
    Retry(cmd::retry::Args),
    /// Generate a signing key pair, compatible with `nix-store --generate-binary-cache-key`.
    Keygen(cmd::keygen::Args),
    /// Validate and explain the effective configuration.
    CheckConfig(cmd::check_config::Args),
    /// Check a binary cache like a paranoid client: signatures, NAR hashes and sizes, references.
    Verify(cmd::verify::Args),
    /// Install the systemd units (nix-outbox.socket, nix-outbox.service) for this binary.
    InstallSystemd(cmd::install_systemd::Args),
}

fn main() -> std::process::ExitCode {
    // Logs go to stderr; RUST_LOG overrides the default level (info).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon(a) => cmd::daemon::run(a),
        Command::Push(a) => cmd::push::run(a),
        Command::Backfill(a) => cmd::backfill::run(a),
        Command::Copy(a) => cmd::copy::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Wait(a) => cmd::wait::run(a),
        Command::Retry(a) => cmd::retry::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::CheckConfig(a) => cmd::check_config::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::InstallSystemd(a) => cmd::install_systemd::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nix-outbox: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
