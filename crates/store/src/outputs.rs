//! The outputs a finished build produced, from what the post-build-hook
//! was given: `DRV_PATH` and `OUT_PATHS`. Nix 2.8.0 passes an empty
//! `OUT_PATHS` (NixOS/nix#6446, fixed in 2.8.1), as did `--check` builds in
//! about 2.30–2.32.2 (nix#14287), so an empty list is resolved from the
//! derivation: daemon op 41 first, parsing the `.drv` file as the fallback.

use std::collections::BTreeSet;

use nix_outbox_core::derivation;
use nix_outbox_core::{StoreDir, StorePath};

use crate::error::StoreError;
use crate::pool::StorePool;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct BuildOutputs {
    /// Outputs that are valid in the store now.
    pub valid: Vec<StorePath>,
    /// Outputs named but not valid (e.g. collected since, or unbuilt outputs
    /// of a partially built derivation).
    pub invalid: Vec<StorePath>,
}

pub async fn build_outputs(
    pool: &StorePool,
    drv: &StorePath,
    out_paths: &[StorePath],
) -> Result<BuildOutputs, StoreError> {
    let candidates: BTreeSet<StorePath> = if !out_paths.is_empty() {
        out_paths.iter().cloned().collect()
    } else {
        outputs_of(pool, drv).await?
    };
    let candidates: Vec<StorePath> = candidates.into_iter().collect();
    let valid = pool
        .get()
        .await?
        .query_valid_paths(pool.store_dir(), &candidates)
        .await?;
    let (valid, invalid) = candidates.into_iter().partition(|p| valid.contains(p));
    Ok(BuildOutputs { valid, invalid })
}

/// The output paths of `drv`: from the daemon's output map, or from the
/// `.drv` file when the daemon cannot tell (an old daemon, or an error).
pub async fn outputs_of(
    pool: &StorePool,
    drv: &StorePath,
) -> Result<BTreeSet<StorePath>, StoreError> {
    let from_daemon = async {
        pool.get()
            .await?
            .query_derivation_output_map(pool.store_dir(), drv)
            .await
    };
    match from_daemon.await {
        Ok(map) if map.values().all(Option::is_some) => {
            return Ok(map.into_values().flatten().collect());
        }
        Ok(_) => {
            tracing::debug!("daemon does not know every output path of {drv}; reading the .drv")
        }
        Err(e) => tracing::debug!("daemon output map of {drv} failed ({e}); reading the .drv"),
    }
    outputs_from_drv_file(pool.store_dir(), drv).await
}

/// The output paths listed in the `.drv` file itself (input-addressed
/// outputs; floating content-addressed ones have no path there).
pub async fn outputs_from_drv_file(
    sd: &StoreDir,
    drv: &StorePath,
) -> Result<BTreeSet<StorePath>, StoreError> {
    let full = sd.display(drv);
    let bytes = read_capped(&full, derivation::MAX_DRV_SIZE)
        .await
        .map_err(|e| StoreError::Derivation {
            path: full.clone(),
            detail: e.to_string(),
        })?;
    let outs = derivation::parse_outputs(&bytes, sd).map_err(|e| StoreError::Derivation {
        path: full.clone(),
        detail: e.to_string(),
    })?;
    Ok(outs.into_iter().filter_map(|o| o.path).collect())
}

/// Reads at most `max + 1` bytes of `path`: a file over `max` is then
/// refused by the parser's own limit without being read whole first (a
/// `.drv` named by a request could be any size).
async fn read_capped(path: &str, max: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

#[cfg(test)]
mod capped_tests {
    use super::*;

    /// Issue 14: the whole file used to be read before the 64 MiB limit.
    #[tokio::test]
    async fn an_oversized_file_is_read_only_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.drv");
        // Sparse: a terabyte-sized file costs nothing on disk.
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(1 << 40).unwrap();
        let bytes = read_capped(path.to_str().unwrap(), 1000).await.unwrap();
        assert_eq!(bytes.len(), 1001);
        let small = dir.path().join("small.drv");
        std::fs::write(&small, "Derive(").unwrap();
        assert_eq!(
            read_capped(small.to_str().unwrap(), 1000).await.unwrap(),
            b"Derive("
        );
    }
}
