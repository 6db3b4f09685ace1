//! The built `nix-outbox-hook` binary, run the way Nix runs it. One test
//! binary per crate, as in the other crates.

mod hook_binary;
