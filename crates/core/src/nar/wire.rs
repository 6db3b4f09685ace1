//! The NAR wire encoding shared by the writer and the reader: every element
//! of a NAR, token or file contents alike, is a "string" — a little-endian
//! u64 length, the bytes, then zero padding up to a multiple of 8.

use std::io::{self, Read, Write};

pub(crate) const MAGIC: &str = "nix-archive-1";

/// Bytes of zero padding that follow a string of `len` bytes.
pub(crate) fn padding_len(len: u64) -> usize {
    // `len % 8` cannot overflow even for u64::MAX, unlike rounding `len` up.
    ((8 - len % 8) % 8) as usize
}

/// Writes one NAR string and returns how many bytes that took, so callers can
/// keep an exact NAR offset without wrapping the writer in a counter.
pub(crate) fn write_string<W: Write + ?Sized>(out: &mut W, s: &[u8]) -> io::Result<u64> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s)?;
    let pad = padding_len(s.len() as u64);
    out.write_all(&[0u8; 8][..pad])?;
    Ok(8 + s.len() as u64 + pad as u64)
}

/// Why an [`Input`] read came up short.
pub(crate) enum InputError {
    /// The reader hit end of file; `offset` is where the input stopped.
    Eof,
    Read(io::Error),
    Write(io::Error),
}

/// The byte source of the parser: reads exactly the bytes asked for (never a
/// byte more, so an unframed NAR embedded in a longer stream can be consumed
/// without eating what follows it), keeps the NAR offset, and copies every
/// byte it reads to `tee`.
pub(crate) struct Input<R, W> {
    reader: R,
    tee: W,
    offset: u64,
}

impl<R: Read, W: Write> Input<R, W> {
    pub(crate) fn new(reader: R, tee: W) -> Self {
        Self {
            reader,
            tee,
            offset: 0,
        }
    }

    /// Bytes consumed so far, which is also the NAR offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    pub(crate) fn flush_tee(&mut self) -> io::Result<()> {
        self.tee.flush()
    }

    /// Fills `buf` completely. On end of file the bytes that did arrive have
    /// still been counted and teed, so [`Self::offset`] is exactly where the
    /// input ended — which is what a truncation error should report.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) -> Result<(), InputError> {
        let mut done = 0;
        while done < buf.len() {
            match self.reader.read(&mut buf[done..]) {
                Ok(0) => return Err(InputError::Eof),
                Ok(n) => {
                    // A misbehaving reader could claim more than it was
                    // given; clamp rather than index out of bounds.
                    let n = n.min(buf.len() - done);
                    self.tee
                        .write_all(&buf[done..done + n])
                        .map_err(InputError::Write)?;
                    done += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(InputError::Read(e)),
            }
        }
        Ok(())
    }

    pub(crate) fn u64(&mut self) -> Result<u64, InputError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Concatenates NAR strings: hand-built NARs for tests.
#[cfg(test)]
pub(crate) fn strings(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        write_string(&mut v, p).expect("writing to a Vec");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rounds_to_eight() {
        assert_eq!(padding_len(0), 0);
        assert_eq!(padding_len(1), 7);
        assert_eq!(padding_len(7), 1);
        assert_eq!(padding_len(8), 0);
        assert_eq!(padding_len(13), 3);
        assert_eq!(padding_len(u64::MAX), 1);
    }

    #[test]
    fn string_encoding() {
        let mut v = Vec::new();
        assert_eq!(write_string(&mut v, b"type").unwrap(), 16);
        assert_eq!(v, b"\x04\0\0\0\0\0\0\0type\0\0\0\0");
        v.clear();
        assert_eq!(write_string(&mut v, b"").unwrap(), 8);
        assert_eq!(v, [0u8; 8]);
    }

    #[test]
    fn input_reads_exactly_and_tees() {
        let data = b"0123456789";
        let mut src = &data[..];
        let mut copy = Vec::new();
        {
            let mut input = Input::new(&mut src, &mut copy);
            let mut buf = [0u8; 4];
            assert!(input.fill(&mut buf).is_ok());
            assert_eq!(&buf, b"0123");
            assert_eq!(input.offset(), 4);
        }
        assert_eq!(src, b"456789");
        assert_eq!(copy, b"0123");

        let mut input = Input::new(&mut src, io::sink());
        let mut big = [0u8; 8];
        assert!(matches!(input.fill(&mut big), Err(InputError::Eof)));
        assert_eq!(input.offset(), 6);
    }
}
