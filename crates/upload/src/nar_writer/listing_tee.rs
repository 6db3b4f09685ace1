//! Builds a NAR's `.ls` listing from the same bytes that are being
//! uploaded, without a second read of the store path.
//!
//! The NAR parser pulls from a `Read`, but the upload pipeline is pushed
//! bytes through a `Write`; so a helper thread runs the parser over a
//! bounded channel of chunks. The bound keeps memory small and makes the
//! upload wait if the parser ever falls behind.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use nix_outbox_core::nar::{Listing, ParseError, read_listing};

/// Chunks are gathered to this size before crossing threads: the NAR
/// parser writes many 8-byte tokens, and one channel message each would cost
/// more than the parsing.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the upload and the parser thread.
const DEPTH: usize = 4;

pub(crate) struct ListingTee {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<Result<(Listing, u64), ParseError>>>,
}

impl ListingTee {
    pub(crate) fn start() -> io::Result<Self> {
        let (tx, rx) = sync_channel(DEPTH);
        let worker = std::thread::Builder::new()
            .name("nar-listing".into())
            .spawn(move || {
                read_listing(ChannelReader {
                    rx,
                    cur: Vec::new(),
                    pos: 0,
                })
            })?;
        Ok(Self {
            buf: Vec::with_capacity(CHUNK),
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send();
        }
    }

    fn send(&mut self) {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        // A send fails only when the parser has stopped on an error, which
        // `finish` reports; the upload itself must not fail for it here.
        if let Some(tx) = &self.tx
            && tx.send(chunk).is_err()
        {
            self.tx = None;
        }
    }

    /// Ends the input and returns the listing of the NAR fed in.
    pub(crate) fn finish(mut self) -> Result<Listing, String> {
        if !self.buf.is_empty() {
            self.send();
        }
        self.tx = None;
        let worker = self.worker.take().expect("finish is called once");
        match worker.join() {
            Ok(Ok((listing, _))) => Ok(listing),
            Ok(Err(e)) => Err(format!("building the NAR listing: {e}")),
            Err(_) => Err("the NAR listing thread panicked".to_owned()),
        }
    }
}

/// A `Read` over the chunks sent by [`ListingTee`]; end of input when the
/// sender is gone.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix_outbox_core::nar::{ListingNode, write_nar_with_listing};

    #[test]
    fn listing_matches_the_writers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("big"), vec![7u8; 300_000]).unwrap();
        std::fs::write(root.join("sub/empty"), b"").unwrap();
        std::os::unix::fs::symlink("../big", root.join("sub/link")).unwrap();
        let mut nar = Vec::new();
        let (_, expected) = write_nar_with_listing(&root, &mut nar).unwrap();
        let mut tee = ListingTee::start().unwrap();
        for chunk in nar.chunks(8) {
            tee.feed(chunk);
        }
        let got = tee.finish().unwrap();
        assert_eq!(got, expected);
        assert!(matches!(got.root, ListingNode::Directory { .. }));
    }

    #[test]
    fn truncated_input_is_an_error_and_dropping_is_fine() {
        let mut tee = ListingTee::start().unwrap();
        tee.feed(b"\x0d\0\0\0\0\0\0\0nix-arch");
        assert!(tee.finish().unwrap_err().contains("listing"));
        let mut tee = ListingTee::start().unwrap();
        tee.feed(&[0u8; 100_000]);
        drop(tee);
    }
}
