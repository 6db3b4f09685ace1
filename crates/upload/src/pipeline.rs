//! Uploading one store path: stream its NAR from the daemon through hashing
//! and compression into the target, check it against the store's record,
//! then publish NAR, listing and signed narinfo — in that order, so the
//! narinfo (which is what makes a path exist in a cache) comes last.
//!
//! The only input is the daemon's `NarFromPath` stream: nothing is read
//! from the store's filesystem, so what we sign is exactly what the daemon
//! vouched for, and a path whose contents no longer match its record is
//! refused instead of being signed.

use std::time::Instant;

use nix_outbox_core::keys::SecretKey;
use nix_outbox_core::nar::{ParseError, ParseErrorKind};
use nix_outbox_core::narinfo::NarInfo;
use nix_outbox_core::{StoreDir, nixbase32};
use nix_outbox_store::{PathInfo, StoreError, StorePool};

use crate::error::{NarDigest, UploadError};
use crate::nar_writer::sink::NarSink;
use crate::target::Target;
use crate::url::TargetConfig;

/// NARs up to this size finish their compression on the calling thread.
const INLINE_FINISH: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathOutcome {
    /// NAR and narinfo are in the cache. Sizes in bytes.
    Uploaded { nar_size: u64, file_size: u64 },
    /// The path is not valid in the store (any more): garbage-collected, or
    /// never finished. Nothing was uploaded; not an error.
    NotValid,
}

/// A NAR in the cache, durable, and the narinfo (unsigned) and listing
/// that will publish it: what [`upload_nar`] leaves for [`publish`].
pub(crate) struct StagedNar {
    narinfo: NarInfo,
    listing: Option<String>,
}

impl StagedNar {
    pub(crate) fn sizes(&self) -> (u64, u64) {
        (self.narinfo.nar_size, self.narinfo.file_size.unwrap_or(0))
    }
}

/// What [`upload_nar`] did.
pub(crate) enum NarOutcome {
    Staged(Box<StagedNar>),
    /// See [`PathOutcome::NotValid`].
    NotValid,
}

/// Uploads `info.path` to `target`, signed with every key in `keys` (and
/// keeping the signatures the store already has, as `nix copy` does).
///
/// Does not check whether the cache already has the path, nor upload its
/// references: that is [`upload_closure`](crate::upload_closure)'s job.
/// Call [`Target::ensure_cache_info`] once before the first upload.
pub async fn upload_path(
    pool: &StorePool,
    target: &dyn Target,
    cfg: &TargetConfig,
    keys: &[SecretKey],
    info: &PathInfo,
) -> Result<PathOutcome, UploadError> {
    match upload_nar(pool, target, cfg, info).await? {
        NarOutcome::NotValid => Ok(PathOutcome::NotValid),
        NarOutcome::Staged(staged) => {
            let (nar_size, file_size) = staged.sizes();
            publish(target, pool.store_dir(), keys, *staged).await?;
            Ok(PathOutcome::Uploaded {
                nar_size,
                file_size,
            })
        }
    }
}

/// The first half of an upload: streams the NAR into the cache and checks
/// it against the store's record. Once this returns, the NAR is durable
/// in the cache but nothing points to it yet.
pub(crate) async fn upload_nar(
    pool: &StorePool,
    target: &dyn Target,
    cfg: &TargetConfig,
    info: &PathInfo,
) -> Result<NarOutcome, UploadError> {
    let started = Instant::now();
    let sd = pool.store_dir();
    let full = sd.display(&info.path);
    let compression = cfg.compression.nix_name();
    let write_error = |e: std::io::Error| match UploadError::from_io(e) {
        Ok(target_err) => target_err,
        Err(source) => UploadError::Compression {
            path: full.clone(),
            compression,
            source,
        },
    };

    // A record with NarSize 0 comes from a Nix too old to record sizes; the
    // hash alone then decides, and the narinfo gets the real size.
    let expected = NarDigest {
        hash: info.nar_hash,
        size: info.nar_size,
    };
    let mut writer = target.begin_nar().await?;
    writer.prepare(&expected, cfg.compression)?;
    let sink = NarSink::new(writer, target.id(), cfg, info.nar_size).map_err(write_error)?;
    let res = {
        let mut conn = pool.get().await?;
        conn.nar_from_path(sd, &info.path, sink).await
    };
    // On error the sink, and with it the target's writer, has been dropped,
    // which abandons the partial NAR.
    let sink = match res {
        Ok((sink, _)) => sink,
        Err(StoreError::NotValid { .. }) => return Ok(NarOutcome::NotValid),
        Err(StoreError::Nar {
            source:
                ParseError {
                    kind: ParseErrorKind::Write(e),
                    ..
                },
            ..
        }) => return Err(write_error(e)),
        Err(e) => return Err(e.into()),
    };
    // Ending the compression of a small NAR takes microseconds: a hop to a
    // blocking thread and back would cost more (closures of thousands of
    // tiny paths spent their time switching threads).
    let streamed = if info.nar_size != 0 && info.nar_size <= INLINE_FINISH {
        sink.finish()
    } else {
        tokio::task::spawn_blocking(move || sink.finish())
            .await
            .map_err(|e| UploadError::Internal(format!("compression task failed: {e}")))?
    }
    .map_err(write_error)?;

    let actual = streamed.nar;
    if actual.hash != expected.hash || (expected.size != 0 && actual.size != expected.size) {
        streamed.writer.abort().await;
        return Err(UploadError::HashMismatch {
            path: full,
            expected,
            actual,
        });
    }
    let listing = match streamed.listing.transpose() {
        Ok(l) => l,
        Err(e) => {
            streamed.writer.abort().await;
            return Err(UploadError::Internal(format!("{full}: {e}")));
        }
    };

    let file_name = format!(
        "{}.nar{}",
        nixbase32::encode(&streamed.file.hash.0),
        cfg.compression.extension()
    );
    let nar_name = streamed.writer.finish(file_name).await?;
    let narinfo = NarInfo {
        store_path: info.path.clone(),
        url: format!("nar/{nar_name}"),
        compression: compression.to_owned(),
        file_hash: Some(streamed.file.hash),
        file_size: Some(streamed.file.size),
        nar_hash: actual.hash,
        nar_size: actual.size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        system: None,
        sigs: info.sigs.clone(),
        ca: info.ca.clone(),
    };
    tracing::debug!(
        path = %full,
        target = target.id(),
        nar_size = actual.size,
        file_size = streamed.file.size,
        ms = started.elapsed().as_millis() as u64,
        "NAR uploaded"
    );
    Ok(NarOutcome::Staged(Box::new(StagedNar {
        narinfo,
        listing: listing.map(|l| l.to_json()),
    })))
}

/// The second half: the listing, then the signed narinfo, which makes the
/// path exist in the cache. Call it only once every reference of the path
/// is published (or served by an upstream).
pub(crate) async fn publish(
    target: &dyn Target,
    sd: &StoreDir,
    keys: &[SecretKey],
    staged: StagedNar,
) -> Result<(), UploadError> {
    let StagedNar {
        mut narinfo,
        listing,
    } = staged;
    let hash_part = narinfo.store_path.hash_part().to_owned();
    if let Some(listing) = listing {
        target.put_listing(&hash_part, &listing).await?;
    }
    for key in keys {
        narinfo.sign(sd, key);
    }
    target.put_narinfo(&hash_part, &narinfo.render(sd)).await?;
    tracing::info!(
        path = %sd.display(&narinfo.store_path),
        target = target.id(),
        nar_size = narinfo.nar_size,
        file_size = narinfo.file_size.unwrap_or(0),
        "uploaded"
    );
    Ok(())
}
