//! `file://` targets: a binary cache in a directory, laid out exactly as
//! `nix copy --to file://…` lays it out, so any web server (or Nix itself,
//! with `file://`) can serve it.
//!
//! Every file appears atomically: written under a temporary name in the
//! same directory and renamed into place. Durability comes in groups (see
//! [`group_sync`]), one `syncfs` serving every writer that asks meanwhile:
//! a NAR is on disk before it gets its name; a narinfo is renamed into
//! place only after a sync that covers its NAR's name and its listing, and
//! its writer is told "done" only after a sync that covers the narinfo's
//! own name. So a crash never leaves a narinfo whose NAR is not on disk,
//! and a path reported uploaded is on disk. The cache root
//! itself is never created: when it lives on a filesystem that is not
//! mounted it is simply missing, and recreating it would fill the
//! filesystem underneath the mount point.

mod group_sync;
mod sweep;
mod writeback;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix_outbox_core::StoreDir;
use nix_outbox_core::atomic_write::{self, AtomicWriteError};

use crate::error::UploadError;
use crate::target::{
    BoxFuture, NarWriter, Target, check_drv_name, check_hash_part, check_nar_name,
    check_realisation_key,
};
use group_sync::GroupSync;
use writeback::WritebackFile;

/// Cache files are served to others: world-readable, like Nix makes them.
const FILE_MODE: u32 = 0o644;
const CACHE_INFO: &str = "nix-cache-info";
/// Big enough that the write syscalls do not dominate for fast compressors.
const WRITE_BUFFER: usize = 256 * 1024;

pub struct FileTarget {
    root: PathBuf,
    id: String,
    cache_info_ok: AtomicBool,
    /// NARs written at once (`max-connections`).
    nar_slots: tokio::sync::Semaphore,
    sync: std::sync::Arc<GroupSync>,
}

impl FileTarget {
    /// A target for the cache directory `root` (absolute; see
    /// [`TargetConfig`](crate::TargetConfig) for parsing URLs).
    pub fn new(root: PathBuf) -> Self {
        let id = format!("file://{}", root.display());
        Self {
            id,
            cache_info_ok: AtomicBool::new(false),
            nar_slots: tokio::sync::Semaphore::new(crate::DEFAULT_FILE_CONNECTIONS),
            sync: std::sync::Arc::new(GroupSync::new(root.clone())),
            root,
        }
    }

    /// Writes at most `n` NARs at once.
    pub fn with_connections(mut self, n: usize) -> Self {
        self.nar_slots = tokio::sync::Semaphore::new(n);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn io_err(target: &str, op: &'static str, path: &Path, source: io::Error) -> UploadError {
    UploadError::TargetIo {
        target: target.to_owned(),
        op,
        path: path.display().to_string(),
        source,
    }
}

fn from_atomic(target: &str, e: AtomicWriteError) -> UploadError {
    match e {
        AtomicWriteError::Io { path, source } => io_err(target, "write", &path, source),
        // Only asked for when overwriting is refused, which callers handle.
        AtomicWriteError::Exists(path) => io_err(
            target,
            "write",
            &path,
            io::Error::from(io::ErrorKind::AlreadyExists),
        ),
    }
}

/// Files up to this size are written on the calling thread: creating and
/// writing a narinfo takes microseconds, and a hop to a blocking thread
/// and back cost more than that (thousands of small paths spent their
/// time switching threads).
const INLINE_WRITE: usize = 64 * 1024;

/// Runs `f`, writing `len` bytes, inline if small, else off the runtime.
async fn small_io<T: Send + 'static>(
    len: usize,
    f: impl FnOnce() -> Result<T, UploadError> + Send + 'static,
) -> Result<T, UploadError> {
    if len <= INLINE_WRITE {
        f()
    } else {
        blocking(f).await
    }
}

/// Runs filesystem work off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UploadError> + Send + 'static,
) -> Result<T, UploadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UploadError::Internal(format!("file target task failed: {e}")))?
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Target for FileTarget {
    fn id(&self) -> &str {
        &self.id
    }

    fn nar_slots(&self) -> Option<&tokio::sync::Semaphore> {
        Some(&self.nar_slots)
    }

    fn ensure_cache_info<'a>(
        &'a self,
        store_dir: &'a StoreDir,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            if self.cache_info_ok.load(Ordering::Acquire) {
                return Ok(());
            }
            let (root, id, sd) = (self.root.clone(), self.id.clone(), store_dir.to_string());
            blocking(move || prepare(&root, &id, &sd)).await?;
            self.cache_info_ok.store(true, Ordering::Release);
            Ok(())
        })
    }

    fn has_narinfo<'a>(&'a self, hash_part: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        Box::pin(async move {
            check_hash_part(hash_part)?;
            self.has_file(self.root.join(format!("{hash_part}.narinfo")))
                .await
        })
    }

    fn put_narinfo<'a>(
        &'a self,
        hash_part: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            check_hash_part(hash_part)?;
            self.put(format!("{hash_part}.narinfo"), text.as_bytes().to_vec())
                .await
        })
    }

    fn put_listing<'a>(
        &'a self,
        hash_part: &'a str,
        json: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            check_hash_part(hash_part)?;
            // Not synced: the narinfo's first sync covers it.
            self.put_volatile(format!("{hash_part}.ls"), json.as_bytes().to_vec())
                .await
        })
    }

    fn has_build_log<'a>(&'a self, drv: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        Box::pin(async move {
            check_drv_name(drv)?;
            self.has_file(self.root.join("log").join(drv)).await
        })
    }

    fn put_build_log<'a>(
        &'a self,
        drv: &'a str,
        log: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            check_drv_name(drv)?;
            self.put_in_subdir("log", drv.to_owned(), log).await
        })
    }

    fn has_realisation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        Box::pin(async move {
            check_realisation_key(key)?;
            self.has_file(self.root.join(key)).await
        })
    }

    fn put_realisation<'a>(
        &'a self,
        key: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            let (dir, file) = check_realisation_key(key)?;
            self.put_in_subdir(dir, file.to_owned(), json).await
        })
    }

    fn begin_nar(&self) -> BoxFuture<'_, Result<Box<dyn NarWriter>, UploadError>> {
        Box::pin(async move {
            let (dir, id, sync) = (self.root.join("nar"), self.id.clone(), self.sync.clone());
            // Creating a file: one metadata update, no thread hop.
            let w = FileNarWriter::create(dir, id, sync)?;
            Ok(Box::new(w) as Box<dyn NarWriter>)
        })
    }
}

impl FileTarget {
    /// Writes `name` durably: under a temporary name, a sync (which also
    /// makes durable whatever was written before, such as this narinfo's
    /// NAR), the rename, and a sync of the new name.
    async fn put(&self, name: String, data: Vec<u8>) -> Result<(), UploadError> {
        let (path, id) = (self.root.join(name), self.id.clone());
        let tmp = {
            let (path, id) = (path.clone(), id.clone());
            small_io(data.len(), move || {
                write_temp(&path, &data).map_err(|e| io_err(&id, "write", &path, e))
            })
            .await?
        };
        // The temp file's data, and whatever this narinfo's NAR and
        // listing need (named by their writers, or one syncfs).
        let renamed = match self.sync.barrier(&[&tmp]).await {
            // A rename is one metadata update: not worth a thread hop.
            Ok(()) => fs::rename(&tmp, &path),
            Err(e) => Err(e),
        };
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&id, "write", &path, e));
        }
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        self.sync
            .barrier(&[&dir])
            .await
            .map_err(|e| io_err(&id, "sync", &path, e))
    }

    /// Writes `name` atomically but without a sync of its own: the next
    /// sync (the narinfo's) covers it.
    async fn put_volatile(&self, name: String, data: Vec<u8>) -> Result<(), UploadError> {
        let (path, id) = (self.root.join(name), self.id.clone());
        let written = path.clone();
        small_io(data.len(), move || {
            let tmp = write_temp(&path, &data).map_err(|e| io_err(&id, "write", &path, e))?;
            fs::rename(&tmp, &path).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                io_err(&id, "write", &path, e)
            })
        })
        .await?;
        let dir = written.parent().unwrap_or(&self.root).to_owned();
        self.sync.name(&[&written, &dir]);
        Ok(())
    }

    /// Whether a narinfo, build log or realisation file exists (a symlink
    /// counts: it is not followed, and is not ours to replace).
    async fn has_file(&self, path: PathBuf) -> Result<bool, UploadError> {
        let id = self.id.clone();
        blocking(move || match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&id, "look up", &path, e)),
        })
        .await
    }

    /// Writes `<dir>/<name>`. The directory (`log/`, `realisations/`) is
    /// created on demand: a cache without logs or realisations has none,
    /// like one written by `nix copy`.
    async fn put_in_subdir(
        &self,
        dir: &str,
        name: String,
        data: Vec<u8>,
    ) -> Result<(), UploadError> {
        let (path, id) = (self.root.join(dir), self.id.clone());
        blocking(move || fs::create_dir_all(&path).map_err(|e| io_err(&id, "create", &path, e)))
            .await?;
        self.put(format!("{dir}/{name}"), data).await
    }
}

/// Writes `data` to a new temporary file beside `path` (named as
/// `atomic_write` names them, so the stale-temp sweep knows it) and
/// returns its name. No sync.
fn write_temp(path: &Path, data: &[u8]) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.w{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    if let Err(e) = f.write_all(data) {
        drop(f);
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Checks the root, creates `nar/`, and writes or checks `nix-cache-info`.
fn prepare(root: &Path, id: &str, store_dir: &str) -> Result<(), UploadError> {
    let meta = fs::metadata(root).map_err(|e| io_err(id, "use cache directory", root, e))?;
    if !meta.is_dir() {
        return Err(io_err(
            id,
            "use cache directory",
            root,
            io::Error::from(io::ErrorKind::NotADirectory),
        ));
    }
    make_nar_dir(root, id)?;
    sweep::sweep_stale_temps(root);
    let info = root.join(CACHE_INFO);
    let text = match fs::read_to_string(&info) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let content = format!("StoreDir: {store_dir}\n");
            // Refusing to overwrite makes two uploaders racing here safe:
            // the loser reads and checks the winner's file.
            match atomic_write::write(&info, content.as_bytes(), FILE_MODE, false) {
                Ok(()) => return Ok(()),
                Err(AtomicWriteError::Exists(_)) => {
                    fs::read_to_string(&info).map_err(|e| io_err(id, "read", &info, e))?
                }
                Err(e) => return Err(from_atomic(id, e)),
            }
        }
        Err(e) => return Err(io_err(id, "read", &info, e)),
    };
    // Nix refuses a cache made for another store directory; so do we, since
    // its narinfos would name paths our clients cannot use.
    let theirs = text
        .lines()
        .find_map(|l| l.strip_prefix("StoreDir:"))
        .map(str::trim);
    match theirs {
        Some(theirs) if theirs != store_dir => Err(UploadError::StoreDirMismatch {
            target: id.to_owned(),
            cache_store_dir: theirs.to_owned(),
            store_dir: store_dir.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn make_nar_dir(root: &Path, id: &str) -> Result<(), UploadError> {
    let nar = root.join("nar");
    match fs::create_dir(&nar) {
        Ok(()) => sync_dir(root).map_err(|e| io_err(id, "sync", root, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(id, "create", &nar, e)),
    }
}

/// A NAR being written to `nar/.tmp-…`, renamed to its real name on finish.
struct FileNarWriter {
    id: String,
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<WritebackFile>>,
    /// Set once the temporary file has been renamed (or removed).
    done: bool,
    sync: std::sync::Arc<GroupSync>,
}

impl FileNarWriter {
    fn create(
        dir: PathBuf,
        id: String,
        sync: std::sync::Arc<GroupSync>,
    ) -> Result<Self, UploadError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut made_dir = false;
        loop {
            // The dot hides it from anything listing NARs; pid and sequence
            // make it unique among our uploads, and `create_new` refuses to
            // share it with anyone else's.
            let tmp = dir.join(format!(
                ".tmp-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&tmp);
            match opened {
                Ok(f) => {
                    return Ok(Self {
                        id,
                        dir,
                        tmp,
                        file: Some(BufWriter::with_capacity(
                            WRITE_BUFFER,
                            WritebackFile::new(f),
                        )),
                        done: false,
                        sync,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                // `nar/` is gone (or `ensure_cache_info` was skipped): make
                // it, but only inside an existing root, then try again.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !made_dir => {
                    made_dir = true;
                    let root = dir.parent().unwrap_or(&dir).to_owned();
                    make_nar_dir(&root, &id).map_err(|_| io_err(&id, "create", &tmp, e))?;
                }
                Err(e) => return Err(io_err(&id, "create", &tmp, e)),
            }
        }
    }

    fn file(&mut self) -> io::Result<&mut BufWriter<WritebackFile>> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("NAR writer already finished"))
    }

    /// Writes out what is buffered and closes the temporary file.
    fn close(&mut self) -> Result<(), UploadError> {
        let file = self.file.take().expect("finish is called once");
        let file = file
            .into_inner()
            .map_err(|e| io_err(&self.id, "write", &self.tmp, e.into_error()))?;
        drop(file.into_inner());
        Ok(())
    }

    /// Gives the (synced) temporary file its real name. Renaming over an
    /// existing NAR of that name is safe: names are content hashes, and
    /// both files are on disk.
    fn rename(&mut self, name: &str) -> Result<(), UploadError> {
        let dest = self.dir.join(name);
        fs::rename(&self.tmp, &dest).map_err(|e| io_err(&self.id, "rename into", &dest, e))?;
        self.done = true;
        // Its new entry in `nar/` is made durable by the next sync, which
        // the narinfo's writer waits for before publishing.
        self.sync.name(&[&self.dir]);
        Ok(())
    }
}

impl Write for FileNarWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file()?.write(buf) {
            Ok(n) => Ok(n),
            Err(e) => Err(io_err(&self.id, "write", &self.tmp, e).into_io()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file()?.flush() {
            Ok(()) => Ok(()),
            Err(e) => Err(io_err(&self.id, "write", &self.tmp, e).into_io()),
        }
    }
}

impl NarWriter for FileNarWriter {
    fn finish(
        self: Box<Self>,
        file_name: String,
    ) -> BoxFuture<'static, Result<String, UploadError>> {
        Box::pin(async move {
            check_nar_name(&file_name)?;
            // What is left to write of a small NAR fits in the buffer: one
            // write, not worth a thread hop.
            let small = self
                .file
                .as_ref()
                .is_some_and(|f| f.get_ref().written() == 0);
            let mut w = if small {
                let mut w = self;
                w.close().map(|()| w)?
            } else {
                blocking(move || {
                    let mut w = self;
                    w.close().map(|()| w)
                })
                .await?
            };
            // On disk before it has its name: a NAR that two paths share
            // (same contents) may replace a file a published narinfo
            // names, which must never become a torn file after a crash.
            // One sync serves every writer that asks meanwhile.
            let synced = w.sync.barrier(&[&w.tmp]).await;
            synced.map_err(|e| io_err(&w.id, "sync", &w.tmp, e))?;
            w.rename(&file_name).map(|()| file_name)
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || drop(self)).await;
        })
    }
}

impl Drop for FileNarWriter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Discard the buffer instead of flushing it into a file about to go.
        if let Some(w) = self.file.take() {
            drop(w.into_parts());
        }
        if let Err(e) = fs::remove_file(&self.tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(
                "{}: cannot remove abandoned temporary NAR {}: {e}",
                self.id,
                self.tmp.display()
            );
        }
    }
}
