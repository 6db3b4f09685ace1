//! The chain a NAR streams through on its way to the target, in one pass:
//!
//! ```text
//! NAR bytes ─┬─ hash + count ──────────────── NarHash, NarSize
//!            ├─ listing parser (optional) ─── .ls
//!            └─ compressor ─ hash + count ─── FileHash, FileSize
//!                                   └──────── target's NarWriter
//! ```
//!
//! It is a synchronous `Write`, driven by the store client on a blocking
//! thread, so nothing here may touch the async runtime.

use std::io::{self, Write};

use nix_outbox_core::hash::HashingCounter;
use nix_outbox_core::nar::Listing;

use super::listing_tee::ListingTee;
use crate::compress::Compressor;
use crate::error::{NarDigest, UploadError};
use crate::target::NarWriter;
use crate::url::TargetConfig;

pub(crate) struct NarSink {
    nar: HashingCounter,
    listing: Option<ListingTee>,
    out: Compressor<FileCounter>,
}

/// What a completed stream produced.
pub(crate) struct Streamed {
    pub nar: NarDigest,
    pub file: NarDigest,
    pub writer: Box<dyn NarWriter>,
    /// `Some` when a listing was asked for.
    pub listing: Option<Result<Listing, String>>,
}

impl NarSink {
    /// `nar_size` is the store's record of the NAR's size (0: unknown); it
    /// only chooses how many compressor threads are worth starting.
    pub(crate) fn new(
        writer: Box<dyn NarWriter>,
        target_id: &str,
        cfg: &TargetConfig,
        nar_size: u64,
    ) -> io::Result<Self> {
        let counter = FileCounter {
            hash: HashingCounter::new(),
            writer,
            target_id: target_id.to_owned(),
        };
        let out = Compressor::new(
            counter,
            cfg.compression,
            cfg.compression_level,
            threads_for(cfg.compression_threads(), nar_size),
        )?;
        let listing = if cfg.write_nar_listing {
            Some(ListingTee::start()?)
        } else {
            None
        };
        Ok(Self {
            nar: HashingCounter::new(),
            listing,
            out,
        })
    }

    /// Ends compression and hands back the digests and the writer, ready
    /// to be finished or aborted. Blocks (compressor threads finish here).
    pub(crate) fn finish(self) -> io::Result<Streamed> {
        let (nar_hash, nar_size) = self.nar.finish();
        let mut counter = self.out.finish()?;
        counter.flush()?;
        let (file_hash, file_size) = counter.hash.finish();
        Ok(Streamed {
            nar: NarDigest {
                hash: nar_hash,
                size: nar_size,
            },
            file: NarDigest {
                hash: file_hash,
                size: file_size,
            },
            writer: counter.writer,
            listing: self.listing.map(ListingTee::finish),
        })
    }
}

impl Write for NarSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Everything hashed must also reach the compressor, so take the
        // whole buffer or fail.
        self.out.write_all(buf)?;
        self.nar.update(buf);
        if let Some(l) = &mut self.listing {
            l.feed(buf);
        }
        Ok(buf.len())
    }

    /// A no-op: data reaches the target in `finish`. Flushing the
    /// compressor at the parser's request would only end a block early and
    /// cost compression ratio.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Below this NAR size one compressor thread does the job: a parallel
/// encoder splits its input into blocks of several MiB, so a smaller NAR is
/// one block anyway, and starting and stopping the encoder's threads costs
/// more than it saves (for closures of many tiny paths, about a sixth of
/// the upload time was thread creation).
const PARALLEL_FROM: u64 = 1024 * 1024;

fn threads_for(configured: u32, nar_size: u64) -> u32 {
    if nar_size != 0 && nar_size < PARALLEL_FROM {
        1
    } else {
        configured
    }
}

/// Hashes the compressed bytes on their way into the target's writer.
struct FileCounter {
    hash: HashingCounter,
    writer: Box<dyn NarWriter>,
    target_id: String,
}

impl FileCounter {
    /// Marks an error as the target's, so it is not mistaken for a
    /// compressor failure (both arrive through the compressor's `Write`).
    fn target_err(&self, e: io::Error) -> io::Error {
        match UploadError::from_io(e) {
            Ok(u) => u.into_io(),
            Err(e) => UploadError::TargetIo {
                target: self.target_id.clone(),
                op: "write",
                path: "a NAR".to_owned(),
                source: e,
            }
            .into_io(),
        }
    }
}

impl Write for FileCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.writer.write(buf) {
            Ok(n) => {
                self.hash.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => Err(self.target_err(e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().map_err(|e| self.target_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_nars_get_one_compressor_thread() {
        assert_eq!(threads_for(4, 1), 1);
        assert_eq!(threads_for(4, PARALLEL_FROM - 1), 1);
        assert_eq!(threads_for(4, PARALLEL_FROM), 4);
        // Unknown size (a Nix too old to record it): as configured.
        assert_eq!(threads_for(4, 0), 4);
        assert_eq!(threads_for(1, 10 * PARALLEL_FROM), 1);
    }
}
