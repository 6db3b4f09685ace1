//! The upload crate's integration tests, one module per subject, in one
//! binary so they are built and linked once. `support` holds the shared
//! helpers.
//!
//! The `s3_*.rs` files beside this one are not modules of it: each is a
//! binary of its own, since it sets the process's AWS_* environment
//! variables (see Cargo.toml). They live here to share `support`.

mod support;

mod file_sweep;
mod http_round_trip;
mod refusals;
mod retry_after;
mod round_trip;
mod slow_reads;
