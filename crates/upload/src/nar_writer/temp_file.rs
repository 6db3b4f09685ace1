//! NARs for servers that take each object in one `PUT` (HTTP, and S3 with
//! `multipart-upload=false`): the compressed NAR is buffered in an unnamed
//! temporary file, then sent from a memory map of it.
//!
//! object_store needs a request's whole body as one in-memory payload (it
//! resends it on retries); mapping the file gives it that without copying
//! the NAR onto the heap, so the heap stays small whatever the NAR's size
//! (the mapped pages count in RSS while the `PUT` runs, but they are page
//! cache the kernel can drop under pressure).
//! The temporary file lives in `$TMPDIR` (else `/tmp`) and needs room for
//! the compressed NAR.
//!
//! The name is chosen at the end, so it is Nix's: the hash of the
//! compressed bytes.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use object_store::PutPayload;

use crate::error::UploadError;
use crate::remote::{self, Remote};
use crate::target::{BoxFuture, NarWriter, check_nar_name};

const WRITE_BUFFER: usize = 256 * 1024;

pub(crate) struct TempFileNarWriter {
    remote: Remote,
    file: BufWriter<File>,
}

impl TempFileNarWriter {
    pub(crate) fn create(remote: Remote) -> Result<Self, UploadError> {
        // Unnamed (O_TMPFILE or unlinked at once): nobody else can open or
        // change it, which is what makes mapping it sound, and it vanishes
        // with the writer whatever happens.
        let file = tempfile::tempfile().map_err(|e| temp_file_err(&remote.id, "create", e))?;
        Ok(Self {
            remote,
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
        })
    }
}

fn temp_file_err(id: &str, op: &'static str, e: io::Error) -> UploadError {
    UploadError::TargetIo {
        target: id.to_owned(),
        op,
        path: format!(
            "a temporary file in {} (NARs for this target are buffered there before being sent)",
            std::env::temp_dir().display()
        ),
        source: e,
    }
}

impl Write for TempFileNarWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file
            .write(buf)
            .map_err(|e| temp_file_err(&self.remote.id, "write", e).into_io())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file
            .flush()
            .map_err(|e| temp_file_err(&self.remote.id, "write", e).into_io())
    }
}

/// The buffered bytes as a payload, without reading them onto the heap.
fn map(file: &File, len: u64) -> io::Result<PutPayload> {
    if len == 0 {
        // mmap refuses empty mappings.
        return Ok(PutPayload::new());
    }
    // SAFETY: the file is unnamed and only we hold it, and it is no longer
    // written, so the mapped bytes cannot change or be truncated under us.
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(PutPayload::from(bytes::Bytes::from_owner(map)))
}

impl NarWriter for TempFileNarWriter {
    /// Sends the buffered NAR as `nar/<file_name>` (the compressed bytes'
    /// hash, so replacing an existing NAR of that name changes nothing).
    fn finish(
        self: Box<Self>,
        file_name: String,
    ) -> BoxFuture<'static, Result<String, UploadError>> {
        Box::pin(async move {
            check_nar_name(&file_name)?;
            let Self { remote, file } = *self;
            let id: Arc<str> = remote.id.clone();
            let file = file
                .into_inner()
                .map_err(|e| temp_file_err(&id, "write", e.into_error()))?;
            let len = file
                .metadata()
                .map_err(|e| temp_file_err(&id, "read", e))?
                .len();
            let payload = map(&file, len).map_err(|e| temp_file_err(&id, "map", e))?;
            remote
                .put(&format!("nar/{file_name}"), payload, remote::NAR_TYPE)
                .await?;
            Ok(file_name)
        })
    }

    /// Nothing was sent yet; dropping the unnamed file frees its space.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || drop(self)).await;
        })
    }
}
