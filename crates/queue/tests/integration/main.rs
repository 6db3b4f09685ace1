//! The queue's integration tests, one module per subject, in one binary so
//! they are built and linked once. `support` holds the shared helpers.

mod support;

mod batches;
mod crash;
mod jobs;
mod nix_db;
mod open;
mod present;
mod requests;
mod status;
