//! The nix-outbox post-build hook and its wire format.
//!
//! The hook runs inside Nix's build loop, serially and as root: it must
//! return in milliseconds, never fail, and never lose a path Nix handed it.
//! So it only hands the request to the daemon over a Unix socket
//! ([`client`]), and when the daemon does not acknowledge in time it writes
//! the request durably to a spool directory ([`spool`]) that the daemon
//! ingests later. No async runtime, no logger: the daemon links this crate
//! for [`protocol`], [`spool`] and the [`config`] defaults.

pub mod client;
pub mod config;
pub mod input;
pub mod liveness;
pub mod protocol;
pub mod run;
pub mod spool;
pub mod unresponsive;

pub use protocol::{FrameError, HookRequest, Reply};
