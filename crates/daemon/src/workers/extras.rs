//! What a job publishes besides its closure, once the closure's narinfos
//! are in: the build log of the derivation its request named, and the
//! signed realisations of content-addressed outputs. Each returns a
//! failure a retry can fix (the job then stays pending, and its outputs
//! are found present at once next time), or `None`: done, or nothing to
//! do, or a failure no retry can fix (logged).

use nix_outbox_store::StoreError;
use nix_outbox_upload::{
    BuildLogOutcome, RealisationOutcome, upload_build_log, upload_realisation,
};

use crate::Failure;
use crate::service::{Daemon, TargetEntry};

/// Publishes the build log of the derivation the job's request named
/// (hook requests do), if `upload-build-logs` is on. Returns the error and
/// its pace when it failed in a way a retry can fix; a missing log is
/// normal (substituted, `keep-build-log = false`), and a log we refuse to
/// read (corrupt, a symlink) is skipped with a warning.
pub async fn build_log(
    d: &Daemon,
    entry: &TargetEntry,
    request_id: i64,
) -> Option<(String, Failure)> {
    let svc = &d.svc;
    if !svc.extras.upload_build_logs {
        return None;
    }
    let drv = match svc.with_queue(move |q| q.request(request_id)).await {
        Ok(req) => req?.drv_path?,
        Err(e) => {
            return Some((
                format!("build log: reading the request: {e}"),
                Failure::Transient,
            ));
        }
    };
    let drv = svc.store_dir.parse_path(&drv).ok()?;
    let shown = svc.store_dir.display(&drv);
    match upload_build_log(entry.target.as_ref(), &svc.extras.build_log_dir, &drv).await {
        Ok(BuildLogOutcome::Uploaded { bytes }) => {
            tracing::info!("build log of {shown} → {}: {bytes} bytes", entry.id)
        }
        Ok(BuildLogOutcome::AlreadyPresent) => {}
        Ok(BuildLogOutcome::NoLog) => tracing::debug!("no build log kept for {shown}"),
        Err(e) if e.is_retriable() => {
            return Some((
                format!("outputs uploaded, but not the build log yet: {e}"),
                Failure::from_transient(e.is_transient()),
            ));
        }
        Err(e) => tracing::warn!("not uploading the build log of {shown}: {e}"),
    }
    None
}

/// Publishes the signed realisation (`realisations/<id>.doi`) of the
/// output `root` of the request's derivation, when that derivation is
/// content-addressed (floating) and `upload-realisations` is on. Only
/// `root`'s own realisation: the job of each other output publishes its
/// own once its narinfo is in, so a realisation never names a path the
/// cache lacks. Returns a failure a retry can fix, like [`build_log`].
pub async fn realisations(
    d: &Daemon,
    entry: &TargetEntry,
    request_id: i64,
    root: &nix_outbox_core::StorePath,
) -> Option<(String, Failure)> {
    let svc = &d.svc;
    if !svc.extras.upload_realisations {
        return None;
    }
    let retry = |what: String, e: &dyn std::fmt::Display, transient: bool| {
        let failure = if transient {
            Failure::Transient
        } else {
            Failure::Permanent
        };
        Some((
            format!("outputs uploaded, but not the realisation yet: {what}: {e}"),
            failure,
        ))
    };
    let drv = match svc.with_queue(move |q| q.request(request_id)).await {
        Ok(req) => req?.drv_path?,
        Err(e) => return retry("reading the request".into(), &e, true),
    };
    let drv = svc.store_dir.parse_path(&drv).ok()?;
    let shown = svc.store_dir.display(&drv);
    let ids = match nix_outbox_store::ca_realisation_ids(&svc.pool, &drv).await {
        Ok(ids) => ids,
        // Gone (collected) or not something we can hash: nothing to retry.
        Err(e @ (StoreError::NotValid { .. } | StoreError::Derivation { .. })) => {
            tracing::warn!("not uploading realisations of {shown}: {e}");
            return None;
        }
        Err(e) => return retry(format!("hashing {shown}"), &e, true),
    };
    // The realisations the uploaded one depends on (inputs' outputs its
    // output references) come along: their paths are in `root`'s closure,
    // uploaded already, and a substituter needs them all (Nix 2.8's
    // `DrvOutputSubstitutionGoal`), including those of input-addressed or
    // fixed-output inputs, whose jobs upload none.
    let mut todo: Vec<(String, bool)> = ids.into_iter().map(|(_, id)| (id, true)).collect();
    let mut seen: std::collections::HashSet<String> =
        todo.iter().map(|(id, _)| id.clone()).collect();
    while let Some((id, own)) = todo.pop() {
        let json = match svc.pool.get().await {
            Ok(mut conn) => conn.query_realisation(&id).await,
            Err(e) => Err(e),
        };
        let json = match json {
            Ok(Some(json)) => json,
            // Not recorded (e.g. not built here): nothing to publish.
            Ok(None) => continue,
            Err(e) => return retry(format!("querying {id}"), &e, true),
        };
        let parsed = serde_json::from_str::<serde_json::Value>(&json).unwrap_or_default();
        // Of the derivation's own outputs, only the job's (see above).
        if own && parsed["outPath"].as_str() != Some(root.as_str()) {
            continue;
        }
        if let Some(deps) = parsed["dependentRealisations"].as_object() {
            for dep in deps.keys() {
                if nix_outbox_store::is_valid_drv_output_id(dep) && seen.insert(dep.clone()) {
                    todo.push((dep.clone(), false));
                }
            }
        }
        match upload_realisation(entry.target.as_ref(), &id, &json, &svc.keys).await {
            Ok(RealisationOutcome::Uploaded) => {
                tracing::info!("realisation {id} of {shown} → {}", entry.id)
            }
            Ok(RealisationOutcome::AlreadyPresent) => {}
            Err(e) if e.is_retriable() => return retry(id, &e, e.is_transient()),
            Err(e) => tracing::warn!("not uploading realisation {id} of {shown}: {e}"),
        }
    }
    None
}
