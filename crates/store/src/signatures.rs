//! Recording our signatures in the local store, as the Nix manual's
//! post-build-hook does with `nix store sign`: `nix path-info --sigs` then
//! shows them, and a `nix copy` from this machine carries them.

use nix_outbox_core::StorePath;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_core::narinfo::fingerprint;

use crate::error::StoreError;
use crate::pool::StorePool;

/// Adds a signature by each of `keys` to the record of each valid path in
/// `paths` that lacks it (op 37, AddSignatures; the daemon accepts it from
/// trusted clients only, and does not check it). Paths that are not valid
/// are passed over. Returns how many records were changed.
pub async fn sign_local_paths(
    pool: &StorePool,
    paths: &[StorePath],
    keys: &[SecretKey],
) -> Result<usize, StoreError> {
    let sd = pool.store_dir();
    let mut changed = 0;
    let mut conn = pool.get().await?;
    for path in paths {
        let Some(info) = conn.query_path_info(sd, path).await? else {
            continue;
        };
        let fp = fingerprint(
            sd,
            &info.path,
            &info.nar_hash,
            info.nar_size,
            &info.references,
        );
        // Ed25519 signatures are deterministic: an identical string means
        // the record already has ours.
        let missing: Vec<String> = keys
            .iter()
            .map(|k| k.sign(fp.as_bytes()).to_string())
            .filter(|s| !info.sigs.contains(s))
            .collect();
        if missing.is_empty() {
            continue;
        }
        conn.add_signatures(sd, path, &missing).await?;
        changed += 1;
    }
    Ok(changed)
}
