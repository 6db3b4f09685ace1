//! The compression methods we offer, and streaming NAR compression into
//! any `Write` in the formats Nix reads: a single zstd frame, or an xz
//! stream with CRC64 checks (what Nix itself writes, including from its
//! multithreaded xz encoder).

use std::io::{self, Write};

use liblzma::stream::{Check, Filters, LzmaOptions, MtStreamBuilder, Stream};
use liblzma::write::XzEncoder;
use zstd::stream::raw::CParameter;

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
            Self::Xz => Some(XZ_DEFAULT_PRESET),
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

/// zstd's parallel encoder splits the input into jobs, and holds several
/// jobs' input and output at once (about 7 per 2 workers). Its default job
/// at level 3 is 8 MiB, which made a 238 MB upload peak at 65 MiB RSS; at
/// 6 MiB it peaks near 50 MiB, with the same speed and a file no larger
/// (measured with `zstd -3 -T2 -B6M` on that NAR: 89.41 MB against 89.54
/// MB at the default; 4 MiB jobs made it 90.52 MB, larger than Nix's).
const ZSTD_JOB_SIZE: u32 = 6 * 1024 * 1024;

/// xz's default, which Nix uses too.
const XZ_DEFAULT_PRESET: i32 = 6;

/// The dictionary of the parallel xz encoder at the default level. At
/// preset 6 (8 MiB dictionary, 24 MiB blocks) each thread needs ~140 MiB,
/// so 2 threads peaked at 277 MiB RSS (Nix's own parallel xz: 291–296 MiB).
/// With a 3 MiB dictionary (and so 9 MiB blocks) each thread needs ~58
/// MiB: on the 238 MB benchmark NAR, `xz -T2` peaked at 117 MiB instead of
/// 271, used 18 % less CPU, and the file grew by 1.05 % (2 MiB: 78 MiB,
/// +3 %; 3 MiB with 6 MiB blocks: 105 MiB, +2.5 %). An explicit `compression-level` gets the preset unchanged,
/// and `parallel-compression=false` is exactly Nix's single-threaded xz.
const XZ_PARALLEL_DICT: u32 = 3 * 1024 * 1024;

pub(crate) enum Compressor<W: Write> {
    None(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(XzEncoder<W>),
}

impl<W: Write> Compressor<W> {
    /// A compressor writing into `out`. `level` is the level asked for
    /// (ignored for `None`); without one, the default level with memory
    /// bounds of our own for the parallel encoders (see [`ZSTD_JOB_SIZE`]
    /// and [`XZ_PARALLEL_DICT`]). `threads > 1` compresses blocks in
    /// parallel. Nix reads the output the same either way.
    pub(crate) fn new(
        out: W,
        compression: Compression,
        level: Option<i32>,
        threads: u32,
    ) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Self::None(out),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(
                    out,
                    level.unwrap_or(zstd::DEFAULT_COMPRESSION_LEVEL),
                )?;
                if threads > 1 {
                    enc.multithread(threads)?;
                    if level.is_none() {
                        enc.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
                    }
                }
                Self::Zstd(enc)
            }
            Compression::Xz => {
                let preset = u32::try_from(level.unwrap_or(XZ_DEFAULT_PRESET)).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "negative xz level")
                })?;
                let stream = if threads > 1 {
                    let mut mt = MtStreamBuilder::new();
                    mt.preset(preset).check(Check::Crc64).threads(threads);
                    if level.is_none() {
                        let mut opts = LzmaOptions::new_preset(preset).map_err(io::Error::from)?;
                        opts.dict_size(XZ_PARALLEL_DICT);
                        let mut filters = Filters::new();
                        filters.lzma2(&opts);
                        // The block size follows: 3 × the dictionary.
                        mt.filters(filters);
                    }
                    mt.encoder()
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
