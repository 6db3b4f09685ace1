//! `nix-outbox keygen NAME --secret-key-file SK --public-key-file PK`

use std::path::PathBuf;

use anyhow::Context as _;
use nix_outbox_core::keys::{self, SecretKey};

#[derive(clap::Args)]
pub struct Args {
    /// Key name, conventionally `<host or cache>-<n>`, e.g. `cache.example.org-1`.
    name: String,
    /// Where to write the secret key (mode 0600).
    #[arg(long)]
    secret_key_file: PathBuf,
    /// Where to write the public key (the value for `trusted-public-keys`).
    #[arg(long)]
    public_key_file: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let key = SecretKey::generate(&args.name).context("cannot generate a key")?;
    keys::write_key_files(
        &key,
        &args.secret_key_file,
        &args.public_key_file,
        args.force,
    )?;
    eprintln!(
        "wrote secret key {} and public key {}",
        args.secret_key_file.display(),
        args.public_key_file.display()
    );
    // The public key on stdout so scripts can capture it for `trusted-public-keys`.
    println!("{}", key.public_key());
    Ok(())
}
