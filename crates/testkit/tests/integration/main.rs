//! The testkit's integration tests, in one binary; a new subject gets a
//! module here rather than a binary of its own.

mod fault_proxy;
