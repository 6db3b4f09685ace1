//! The `nix-outbox` binary end to end, against the real Nix on this
//! machine (and, through `scripts/test-modern-nix.sh`, the Nix of the
//! chroots), a real S3 server (s3s-fs) and a real HTTP cache (nginx). One
//! test binary: it links once and fills the target dir once. No test here
//! changes process-wide state (environment, umask); each starts its own
//! daemons in a temp dir.

mod support;

mod cache_extras;
mod concurrent;
mod copy;
mod crash_loop;
mod e2e;
mod e2e_remote;
mod faults;
mod filters;
mod full_disk;
mod keygen;
mod matrix;
mod nix_db;
mod observability;
mod realisations;
mod s3_params;
mod security;
mod spool;
mod systemd;
mod verify;
