//! NAR (Nix ARchive): the canonical serialisation of a file tree that Nix
//! hashes, signs and uploads.
//!
//! A NAR records only what Nix considers part of a path's identity: the tree
//! shape, regular-file contents, the owner-execute bit, and symlink targets.
//! Modes, owners and timestamps are not recorded, and directory entries are
//! sorted by the raw bytes of their names, so the same tree always yields the
//! same bytes.
//!
//! - [`write_nar`] / [`write_nar_with_listing`] serialise a filesystem path,
//!   streaming file contents, into any [`std::io::Write`] (so callers can
//!   hash or compress on the way).
//! - [`parse_nar`], [`copy_nar`], [`read_listing`] and [`parse_complete`]
//!   strictly validate a NAR from any [`std::io::Read`], reading exactly its
//!   bytes and no more.
//! - [`Listing`] is the `.ls` file listing both sides can produce.

mod listing;
mod reader;
mod wire;
mod writer;

pub use listing::{Listing, ListingBuilder, ListingNode};
pub use reader::{
    NarVisitor, ParseError, ParseErrorKind, copy_nar, parse_complete, parse_nar, parse_nar_tee,
    read_listing,
};
pub use writer::{WriteError, write_nar, write_nar_with_listing};

/// Longest directory entry name the parser accepts: Linux's `NAME_MAX`, so
/// anything longer could not be unpacked anyway.
pub const MAX_NAME_LEN: u64 = 255;

/// Longest symlink target the parser accepts: `PATH_MAX` less the NUL.
pub const MAX_TARGET_LEN: u64 = 4095;

/// Deepest directory nesting the parser accepts. Real store paths come
/// nowhere near this; the cap bounds the memory a hostile NAR can make the
/// parser's directory stack (and a recursive consumer of the resulting
/// [`Listing`]) use. The writer does not enforce it.
pub const MAX_DEPTH: usize = 1024;

#[cfg(test)]
mod tests;
