//! A NAR's one pass from the store to a target.
//!
//! The store client pushes the NAR's bytes into a [`sink::NarSink`], which
//! hashes them, builds the `.ls` listing on the side ([`listing_tee`]) and
//! compresses them into the target's [`NarWriter`](crate::NarWriter). The
//! writers of object stores are here:
//!
//! - [`multipart`]: S3 (the default), streaming parts while compression
//!   runs, with memory bounded by a few parts.
//! - [`temp_file`]: HTTP, and S3 with `multipart-upload=false`; the
//!   compressed NAR is buffered in an unnamed temporary file and sent in
//!   one `PUT`.
//!
//! The `file://` writer stays with its target ([`crate::target::file`]),
//! whose temporary names and directory syncing it shares.

mod listing_tee;
pub(crate) mod multipart;
pub(crate) mod sink;
pub(crate) mod temp_file;
