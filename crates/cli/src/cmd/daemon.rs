//! `nix-outbox daemon [--config FILE]`: runs the daemon in the foreground.

use std::path::PathBuf;

use nix_outbox_daemon::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Configuration file (default: $NIX_OUTBOX_CONFIG, then /etc/nix-outbox/config.toml, then built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    nix_outbox_daemon::serve(Config::load(args.config.as_deref())?)
}
