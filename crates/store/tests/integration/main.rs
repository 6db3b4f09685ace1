//! The store client's integration tests, against a real `nix-daemon`, in
//! one binary; a new subject gets a module here rather than a binary of
//! its own.

mod daemon;
