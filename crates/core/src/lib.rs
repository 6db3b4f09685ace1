//! Nix's formats, byte-exact, with no I/O beyond reading a filesystem tree
//! for a NAR and reading/writing key files.
//!
//! Nothing here assumes `/nix/store`: the store directory is a [`StoreDir`]
//! value so tests (and unusual installs) can use any store.

pub mod atomic_write;
pub mod derivation;
pub mod hash;
pub mod keys;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod store_path;

pub use hash::Sha256Hash;
pub use store_path::{StoreDir, StorePath};
