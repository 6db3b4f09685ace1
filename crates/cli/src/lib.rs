//! The daemon's machinery, as a library so tests run it in-process and the
//! `nix-outbox` binary stays a thin dispatcher over `cmd/`.

pub mod config;
pub mod service;
