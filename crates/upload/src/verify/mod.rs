//! What a cache must hold for a path, checked: the pure checks behind
//! `nix-outbox verify` (a narinfo's text, a NAR byte stream, a `.ls`
//! listing in, problems out), and the reference checks across paths.
//! They sit beside the code that writes caches, and in a library so that
//! the fuzz targets reach them; fetching and reporting stay in the CLI.

pub mod check;
pub mod references;
