//! Opening a file of a `file://` cache without trusting the cache's
//! contents: verify may run as root, and whoever can write the cache could
//! otherwise point `<hash>.narinfo` at `/etc/shadow` (whose text then ends
//! up quoted in a parse error) or at a FIFO or `/dev/zero` (a hang).
//!
//! So the key is walked one component at a time with `openat`, never
//! following a symbolic link (not even for directories such as `nar/`), and
//! only a regular file is returned. The cache root itself is what the user
//! named and is followed as given.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// Why a key could not be opened.
#[derive(Debug)]
pub(super) enum OpenError {
    /// A component of the key is a symbolic link (`at` is the prefix).
    Symlink {
        at: String,
    },
    /// The key names something other than a regular file.
    NotAFile {
        what: &'static str,
    },
    Io(io::Error),
}

/// Opens `key` (already checked by `is_cache_key`) under `root`; `None` if
/// it does not exist (or a directory on its way is a plain file).
pub(super) fn open_beneath(root: &Path, key: &str) -> Result<Option<File>, OpenError> {
    let mut dir: OwnedFd = File::open(root).map_err(OpenError::Io)?.into();
    let comps: Vec<&str> = key.split('/').collect();
    let (last, parents) = comps.split_last().expect("split yields at least one item");
    for (i, c) in parents.iter().enumerate() {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        dir = match openat(&dir, c, flags) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // Linux says ENOTDIR for a symlink opened with O_DIRECTORY and
            // O_NOFOLLOW: tell a link apart from a plain file.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                let at = comps[..=i].join("/");
                return match std::fs::symlink_metadata(root.join(&at)) {
                    Ok(m) if m.file_type().is_symlink() => Err(OpenError::Symlink { at }),
                    _ => Ok(None),
                };
            }
            Err(e) => return Err(OpenError::Io(e)),
        };
    }
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer. It has no effect on regular files, the only thing kept.
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let file = match openat(&dir, last, flags) {
        Ok(fd) => File::from(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(OpenError::Symlink { at: key.to_owned() });
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
        Err(e) => return Err(OpenError::Io(e)),
    };
    let ft = file.metadata().map_err(OpenError::Io)?.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(OpenError::NotAFile { what });
    }
    Ok(Some(file))
}

fn openat(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let name = CString::new(std::ffi::OsStr::new(name).as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated
    // string, both alive for the call; a non-negative result is a new
    // descriptor that nothing else owns.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above; ownership of `fd` passes to the OwnedFd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
