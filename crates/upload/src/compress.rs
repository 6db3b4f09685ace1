//! The compression methods we offer, and streaming NAR compression into
//! any `Write` in the formats Nix reads: a single zstd frame, or an xz
//! stream with CRC64 checks (what Nix itself writes, including from its
//! multithreaded xz encoder).

use std::io::{self, Write};

use liblzma::stream::{Check, MtStreamBuilder, Stream};
use liblzma::write::XzEncoder;

/// How NARs are compressed. Only methods that every Nix we support can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    None,
    Xz,
    #[default]
    Zstd,
}

impl Compression {
    /// The narinfo `Compression:` value, exactly as Nix spells it.
    pub fn nix_name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
        }
    }

    /// What follows `.nar` in the NAR's file name (Nix's convention).
    pub fn extension(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Xz => ".xz",
            Self::Zstd => ".zst",
        }
    }

    /// The level used when the URL gives none: the libraries' own defaults,
    /// which are also what Nix uses.
    pub fn default_level(self) -> Option<i32> {
        match self {
            Self::None => None,
            Self::Xz => Some(6),
            Self::Zstd => Some(3),
        }
    }

    /// Accepted levels. zstd stops at 19: 20–22 ("ultra") need far more
    /// memory on both ends for little gain.
    pub(crate) fn level_range(self) -> (i32, i32, &'static str) {
        match self {
            Self::None => (0, 0, "nothing"),
            Self::Xz => (0, 9, "0 to 9"),
            Self::Zstd => (1, 19, "1 to 19"),
        }
    }
}

pub(crate) enum Compressor<W: Write> {
    None(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(XzEncoder<W>),
}

impl<W: Write> Compressor<W> {
    /// A compressor writing into `out`. `level` is ignored for `None`;
    /// `threads > 1` compresses blocks in parallel. The output format is
    /// the same either way.
    pub(crate) fn new(
        out: W,
        compression: Compression,
        level: Option<i32>,
        threads: u32,
    ) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Self::None(out),
            Compression::Zstd => {
                let level = level.unwrap_or(zstd::DEFAULT_COMPRESSION_LEVEL);
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                if threads > 1 {
                    enc.multithread(threads)?;
                }
                Self::Zstd(enc)
            }
            Compression::Xz => {
                let preset = u32::try_from(level.unwrap_or(6)).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "negative xz level")
                })?;
                let stream = if threads > 1 {
                    MtStreamBuilder::new()
                        .preset(preset)
                        .check(Check::Crc64)
                        .threads(threads)
                        .encoder()
                } else {
                    Stream::new_easy_encoder(preset, Check::Crc64)
                };
                Self::Xz(XzEncoder::new_stream(out, stream.map_err(io::Error::from)?))
            }
        })
    }

    /// Ends the compressed stream and returns the writer it went to.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Self::None(w) => Ok(w),
            Self::Zstd(e) => e.finish(),
            Self::Xz(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::None(w) => w.write(buf),
            Self::Zstd(e) => e.write(buf),
            Self::Xz(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::None(w) => w.flush(),
            Self::Zstd(e) => e.flush(),
            Self::Xz(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn sample() -> Vec<u8> {
        // Compressible text plus a pseudo-random tail, a few MiB so the
        // multithreaded encoders really split the work into blocks.
        let mut v = Vec::new();
        for i in 0..60_000u32 {
            v.extend_from_slice(format!("line {i} of a store path's contents\n").as_bytes());
        }
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..(512 * 1024) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
        v
    }

    fn compress(data: &[u8], c: Compression, level: Option<i32>, threads: u32) -> Vec<u8> {
        let mut comp = Compressor::new(Vec::new(), c, level, threads).unwrap();
        // Uneven chunks, like the NAR parser's writes.
        for chunk in data.chunks(7919) {
            comp.write_all(chunk).unwrap();
        }
        comp.finish().unwrap()
    }

    fn decompress(data: &[u8], c: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        match c {
            Compression::None => out.extend_from_slice(data),
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(data)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Xz => {
                liblzma::read::XzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        out
    }

    #[test]
    fn round_trips() {
        let data = sample();
        for c in [Compression::None, Compression::Zstd, Compression::Xz] {
            for threads in [1, 4] {
                for level in [None, c.default_level().map(|_| 1)] {
                    let packed = compress(&data, c, level, threads);
                    assert_eq!(
                        decompress(&packed, c),
                        data,
                        "{c:?} level {level:?} threads {threads}"
                    );
                    if c != Compression::None {
                        assert!(packed.len() < data.len(), "{c:?} compresses");
                    }
                }
            }
        }
    }

    #[test]
    fn empty_input_round_trips() {
        for c in [Compression::None, Compression::Zstd, Compression::Xz] {
            for threads in [1, 3] {
                let packed = compress(&[], c, None, threads);
                assert!(decompress(&packed, c).is_empty(), "{c:?}");
            }
        }
    }

    #[test]
    fn formats_have_the_expected_magic() {
        let z = compress(b"nix-archive-1", Compression::Zstd, None, 2);
        assert_eq!(&z[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        let x = compress(b"nix-archive-1", Compression::Xz, None, 2);
        assert_eq!(&x[..6], b"\xfd7zXZ\0");
    }
}
