//! Serialising a filesystem path as a NAR, byte-identical to
//! `nix-store --dump`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::listing::{Listing, ListingNode};
use super::wire::{MAGIC, padding_len, write_string};

/// File contents are copied through a buffer of this size, so memory use
/// does not depend on file size.
const READ_BUF: usize = 256 * 1024;

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing NAR output: {0}")]
    Output(#[source] io::Error),
    #[error(
        "{}: is a {kind}; a NAR can only hold regular files, symlinks and directories",
        path.display()
    )]
    Unsupported { path: PathBuf, kind: &'static str },
    /// Archiving the file as found would produce a NAR whose declared
    /// contents length does not match its contents, i.e. a corrupt NAR.
    #[error("{}: changed while being archived: {detail}", path.display())]
    Changed { path: PathBuf, detail: String },
}

/// Writes the NAR of `path` (not following a symlink at `path` itself) to
/// `out`, and returns the NAR's size in bytes. `out` is flushed at the end.
/// On error, part of a NAR may already have been written to `out`.
pub fn write_nar<W: Write>(path: &Path, out: W) -> Result<u64, WriteError> {
    let mut d = Dumper::new(out, false);
    d.root(path)?;
    Ok(d.offset)
}

/// Like [`write_nar`], and also returns the `.ls` [`Listing`] of the NAR,
/// built in the same pass.
pub fn write_nar_with_listing<W: Write>(path: &Path, out: W) -> Result<(u64, Listing), WriteError> {
    let mut d = Dumper::new(out, true);
    let root = d.root(path)?;
    // `listing: true` makes every node return Some.
    let root = root.unwrap_or(ListingNode::Directory {
        entries: BTreeMap::new(),
    });
    Ok((d.offset, Listing { root }))
}

struct Dumper<W: Write> {
    // Tokens are a few bytes each; buffering turns them into few big writes
    // whatever `out` is. Chunks of file contents bypass the buffer.
    out: BufWriter<W>,
    /// Bytes written so far: the NAR offset of the next byte.
    offset: u64,
    buf: Vec<u8>,
    listing: bool,
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> WriteError {
    let path = path.to_owned();
    move |source| WriteError::Io { path, op, source }
}

impl<W: Write> Dumper<W> {
    fn new(out: W, listing: bool) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, out),
            offset: 0,
            buf: vec![0u8; READ_BUF],
            listing,
        }
    }

    fn root(&mut self, path: &Path) -> Result<Option<ListingNode>, WriteError> {
        self.string(MAGIC.as_bytes())?;
        let node = self.node(path)?;
        self.out.flush().map_err(WriteError::Output)?;
        Ok(node)
    }

    fn string(&mut self, s: &[u8]) -> Result<(), WriteError> {
        self.offset += write_string(&mut self.out, s).map_err(WriteError::Output)?;
        Ok(())
    }

    fn raw(&mut self, b: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(b).map_err(WriteError::Output)?;
        self.offset += b.len() as u64;
        Ok(())
    }

    /// Writes one node. Recursion depth is the directory depth of the tree.
    fn node(&mut self, path: &Path) -> Result<Option<ListingNode>, WriteError> {
        // lstat: symlinks are archived as symlinks, never followed.
        let meta = fs::symlink_metadata(path).map_err(io_err(path, "lstat"))?;
        let ft = meta.file_type();
        let unsupported = |kind| WriteError::Unsupported {
            path: path.to_owned(),
            kind,
        };
        if ft.is_socket() {
            return Err(unsupported("socket"));
        } else if ft.is_fifo() {
            return Err(unsupported("FIFO"));
        } else if ft.is_block_device() {
            return Err(unsupported("block device"));
        } else if ft.is_char_device() {
            return Err(unsupported("character device"));
        }
        self.string(b"(")?;
        self.string(b"type")?;
        let node = if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_err(path, "readlink"))?;
            let target = target.as_os_str().as_bytes();
            self.string(b"symlink")?;
            self.string(b"target")?;
            self.string(target)?;
            ListingNode::Symlink {
                target: if self.listing {
                    target.to_vec()
                } else {
                    Vec::new()
                },
            }
        } else if ft.is_dir() {
            self.directory(path)?
        } else if ft.is_file() {
            self.regular(path)?
        } else {
            return Err(unsupported("file of unknown type"));
        };
        self.string(b")")?;
        Ok(self.listing.then_some(node))
    }

    fn directory(&mut self, path: &Path) -> Result<ListingNode, WriteError> {
        self.string(b"directory")?;
        let mut names: Vec<OsString> = fs::read_dir(path)
            .and_then(|it| it.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(io_err(path, "reading directory"))?;
        // NAR order is memcmp order of the raw name bytes, whatever the
        // locale or encoding.
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut entries = BTreeMap::new();
        for name in names {
            self.string(b"entry")?;
            self.string(b"(")?;
            self.string(b"name")?;
            self.string(name.as_bytes())?;
            self.string(b"node")?;
            let child = self.node(&path.join(&name))?;
            self.string(b")")?;
            if let Some(child) = child {
                entries.insert(name.into_vec(), child);
            }
        }
        Ok(ListingNode::Directory { entries })
    }

    fn regular(&mut self, path: &Path) -> Result<ListingNode, WriteError> {
        let mut file = File::open(path).map_err(io_err(path, "open"))?;
        // fstat what was actually opened, so the size and mode written match
        // the bytes we are about to stream even if `path` was swapped since
        // the lstat.
        let meta = file.metadata().map_err(io_err(path, "fstat"))?;
        let changed = |detail: String| WriteError::Changed {
            path: path.to_owned(),
            detail,
        };
        if !meta.is_file() {
            return Err(changed("no longer a regular file".into()));
        }
        // Nix looks only at the owner's execute bit.
        let executable = meta.permissions().mode() & 0o100 != 0;
        let size = meta.len();

        self.string(b"regular")?;
        if executable {
            self.string(b"executable")?;
            self.string(b"")?;
        }
        self.string(b"contents")?;
        // The length goes out before the data, so it has to come from
        // metadata; the checks below catch a file that disagrees with it.
        self.raw(&size.to_le_bytes())?;
        let nar_offset = self.offset;

        let mut left = size;
        while left > 0 {
            // Bounded by READ_BUF, so the cast cannot truncate.
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match file.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(changed(format!(
                        "size was {size} bytes but it ended after {}",
                        size - left
                    )));
                }
                Ok(n) => n.min(want),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(path, "read")(e)),
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(WriteError::Output)?;
            self.offset += n as u64;
            left -= n as u64;
        }
        // Must be at end of file now, or the NAR would silently lose data.
        loop {
            match file.read(&mut self.buf[..1]) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(changed(format!(
                        "size was {size} bytes but there is more data"
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(path, "read")(e)),
            }
        }
        self.raw(&[0u8; 8][..padding_len(size)])?;
        Ok(ListingNode::Regular {
            size,
            executable,
            nar_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::strings;
    use super::*;
    use std::ffi::OsStr;

    fn nar_of(path: &Path) -> Result<Vec<u8>, WriteError> {
        let mut v = Vec::new();
        let n = write_nar(path, &mut v)?;
        assert_eq!(n, v.len() as u64);
        Ok(v)
    }

    #[rustfmt::skip]
    #[test]
    fn single_files_and_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"hello").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let want = strings(&[
            b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"hello", b")",
        ]);
        assert_eq!(nar_of(&f).unwrap(), want);

        // Group/other execute bits do not count; the owner's does.
        fs::set_permissions(&f, fs::Permissions::from_mode(0o655)).unwrap();
        assert_eq!(nar_of(&f).unwrap(), want);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o700)).unwrap();
        let want = strings(&[
            b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"", b"contents",
            b"hello", b")",
        ]);
        assert_eq!(nar_of(&f).unwrap(), want);

        let l = dir.path().join("l");
        std::os::unix::fs::symlink(OsStr::from_bytes(b"/does/not\xffexist"), &l).unwrap();
        let want = strings(&[
            b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"/does/not\xffexist", b")",
        ]);
        assert_eq!(nar_of(&l).unwrap(), want);
    }

    #[rustfmt::skip]
    #[test]
    fn directory_sorted_by_bytes_with_listing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        // Byte order: "B" < "a" < "\xff"; a locale-aware sort would differ.
        let odd = OsStr::from_bytes(b"\xff");
        fs::write(root.join(odd), b"").unwrap();
        fs::write(root.join("a"), b"x").unwrap();
        fs::create_dir(root.join("B")).unwrap();
        let mut v = Vec::new();
        let (n, listing) = write_nar_with_listing(&root, &mut v).unwrap();
        assert_eq!(n, v.len() as u64);
        let want = strings(&[
            b"nix-archive-1", b"(", b"type", b"directory",
            b"entry", b"(", b"name", b"B", b"node", b"(", b"type", b"directory", b")", b")",
            b"entry", b"(", b"name", b"a", b"node",
            b"(", b"type", b"regular", b"contents", b"x", b")", b")",
            b"entry", b"(", b"name", b"\xff", b"node",
            b"(", b"type", b"regular", b"contents", b"", b")", b")",
            b")",
        ]);
        assert_eq!(v, want);
        let ListingNode::Directory { entries } = &listing.root else {
            panic!("{listing:?}")
        };
        let Some(ListingNode::Regular { nar_offset, size: 1, .. }) = entries.get(&b"a"[..]) else {
            panic!("{listing:?}")
        };
        assert_eq!(&v[*nar_offset as usize..][..1], b"x");
    }

    #[test]
    fn special_files_rejected_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = nar_of(dir.path()).unwrap_err();
        assert!(
            matches!(err, WriteError::Unsupported { kind: "socket", .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&*sock.to_string_lossy()), "{msg}");

        let err = nar_of(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, WriteError::Unsupported { .. }), "{err:?}");
    }

    #[test]
    fn missing_path_names_path() {
        let err = nar_of(Path::new("/nonexistent/nar-test")).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/nar-test: lstat"),
            "{err}"
        );
    }

    #[test]
    fn size_mismatch_is_an_error() {
        // procfs files report size 0 but have contents: exactly the
        // metadata-vs-data disagreement that must not become a corrupt NAR.
        let err = nar_of(Path::new("/proc/self/status")).unwrap_err();
        assert!(matches!(err, WriteError::Changed { .. }), "{err:?}");
        assert!(err.to_string().contains("more data"), "{err}");
    }
}
