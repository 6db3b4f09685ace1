//! The nix-outbox daemon, as a library: the `nix-outbox daemon` command is
//! [`serve`] with a loaded [`Config`], and tests run [`run`] in-process on
//! a temp dir with the listener, queue and targets they choose.
//!
//! How a path travels (see `docs/design.md`):
//! - the hook socket ([`listener`], bound by [`socket`]) and the spool
//!   ([`spool`]) commit *requests* to the queue;
//! - the [`expander`] resolves each request's outputs and creates one job
//!   per (path, target);
//! - the [`workers`] upload each job's closure, decide its outcome
//!   ([`workers::outcome`]) and record it ([`workers::record`]);
//!   build logs and realisations follow ([`workers::extras`]).
//!
//! Around them: what not to upload ([`filters`], [`upstream`]), what a
//! target already has ([`present`]), the retry pace ([`retry`]) on an
//! injected [`Clock`], [`metrics`] and the progress file that `status`
//! reads, signing [`keys`], and systemd's readiness and socket hand-over
//! ([`systemd`]).

mod clock;
pub mod config;
mod expander;
pub mod filters;
pub mod keys;
mod listener;
pub mod metrics;
pub mod nix_db;
mod present;
mod priority;
mod retry;
mod run;
mod serve;
mod service;
pub mod socket;
pub mod spool;
pub mod systemd;
pub mod upstream;
pub mod wait;
mod workers;

#[cfg(test)]
mod test_target;

pub use clock::{Clock, now};
pub use config::{CacheExtras, Config};
pub use filters::{Filters, Selection};
pub use metrics::{Metrics, Observability};
pub use present::{KnownPresent, RELOAD_EVERY};
pub use retry::{Failure, Jitter, RetryPolicy};
pub use run::run;
pub use serve::serve;
pub use service::{DEFAULT_PRESENT_TTL, Options, Service, TargetEntry};
pub use upstream::UpstreamCache;
