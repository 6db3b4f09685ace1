//! What a job publishes besides its closure, once the closure's narinfos
//! are in: the build log of the derivation its request named, and the
//! signed realisations of content-addressed outputs. Each returns a
//! failure a retry can fix (the job then stays pending, and its outputs
//! are found present at once next time), or `None`: done, or nothing to
//! do, or a failure no retry can fix (logged).

use std::collections::HashSet;

use nix_outbox_core::StorePath;
use nix_outbox_store::StoreError;
use nix_outbox_upload::{
    BuildLogOutcome, BuildTraceEntry, RealisationOutcome, upload_build_log, upload_build_trace,
    upload_realisation,
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

/// Publishes the signed realisation of the output `root` of the request's
/// derivation, when that derivation is content-addressed (floating) and
/// `upload-realisations` is on, in both layouts: `realisations/<id>.doi`
/// for Nix ≤ 2.34 and `build-trace-v2/<drv>/<output>.doi` for Nix 2.35,
/// which reads only its own. Only `root`'s own realisation: the job of
/// each other output publishes its own once its narinfo is in, so a
/// realisation never names a path the cache lacks. Returns a failure a
/// retry can fix, like [`build_log`].
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
    let drv = match svc.with_queue(move |q| q.request(request_id)).await {
        Ok(req) => req?.drv_path?,
        Err(e) => return retry("reading the request".into(), &e, true),
    };
    let drv = svc.store_dir.parse_path(&drv).ok()?;
    let shown = svc.store_dir.display(&drv);
    let by_path = match svc.pool.get().await {
        Ok(conn) => conn.keys_realisations_by_path(),
        Err(e) => return retry("connecting to the store".into(), &e, true),
    };
    // Gone (collected) or not something we can parse or hash: nothing a
    // retry would change.
    let lasting = |e: &StoreError| {
        matches!(
            e,
            StoreError::NotValid { .. } | StoreError::Derivation { .. }
        )
    };
    let ctx = Ctx {
        d,
        entry,
        drv: &drv,
        shown: &shown,
        root,
    };
    if by_path {
        // Nix 2.35: the build trace needs only the `.drv` itself. The old
        // layout's ids need its whole input graph hashed; if that cannot
        // be done, the trace still goes up.
        let top = match nix_outbox_store::read_derivation(&svc.pool, &drv).await {
            Ok(d) => d,
            Err(e) if lasting(&e) => {
                tracing::warn!("not uploading realisations of {shown}: {e}");
                return None;
            }
            Err(e) => return retry(format!("reading {shown}"), &e, true),
        };
        let outputs = nix_outbox_store::floating_outputs(&top);
        if outputs.is_empty() {
            return None;
        }
        let ids = match nix_outbox_store::ca_realisation_ids_of(&svc.pool, &drv, &top).await {
            Ok(ids) => ids,
            Err(e) if lasting(&e) => {
                tracing::warn!(
                    "uploading only the Nix 2.35 build trace of {shown}, not the realisation \
                     older Nix reads: {e}"
                );
                Vec::new()
            }
            Err(e) => return retry(format!("hashing {shown}"), &e, true),
        };
        ctx.publish_via_build_traces(&outputs, &ids).await
    } else {
        let ids = match nix_outbox_store::ca_realisation_ids(&svc.pool, &drv).await {
            Ok(ids) => ids,
            Err(e) if lasting(&e) => {
                tracing::warn!("not uploading realisations of {shown}: {e}");
                return None;
            }
            Err(e) => return retry(format!("hashing {shown}"), &e, true),
        };
        ctx.publish_via_hashes(ids).await
    }
}

fn retry(what: String, e: &dyn std::fmt::Display, transient: bool) -> Option<(String, Failure)> {
    let failure = if transient {
        Failure::Transient
    } else {
        Failure::Permanent
    };
    Some((
        format!("outputs uploaded, but not the realisation yet: {what}: {e}"),
        failure,
    ))
}

struct Ctx<'a> {
    d: &'a Daemon,
    entry: &'a TargetEntry,
    drv: &'a StorePath,
    shown: &'a str,
    root: &'a StorePath,
}

impl Ctx<'_> {
    /// A Nix ≤ 2.34 daemon keys realisations by hash: ask for each, then
    /// publish them, the ones they depend on, and the build trace of
    /// `root` (signed by us alone: the daemon's signatures are over the
    /// old fingerprint).
    async fn publish_via_hashes(&self, ids: Vec<(String, String)>) -> Option<(String, Failure)> {
        let svc = &self.d.svc;
        // The realisations the uploaded one depends on (inputs' outputs
        // its output references) come along: their paths are in `root`'s
        // closure, uploaded already, and a substituter needs them all (Nix
        // 2.8's `DrvOutputSubstitutionGoal`), including those of
        // input-addressed or fixed-output inputs, whose jobs upload none.
        let mut todo: Vec<(String, Option<String>)> =
            ids.into_iter().map(|(out, id)| (id, Some(out))).collect();
        let mut seen: HashSet<String> = todo.iter().map(|(id, _)| id.clone()).collect();
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
            if own.is_some() && parsed["outPath"].as_str() != Some(self.root.as_str()) {
                continue;
            }
            if let Some(deps) = parsed["dependentRealisations"].as_object() {
                for dep in deps.keys() {
                    if nix_outbox_store::is_valid_drv_output_id(dep) && seen.insert(dep.clone()) {
                        todo.push((dep.clone(), None));
                    }
                }
            }
            if let Some(r) = self.publish_hashed(&id, &json).await {
                return Some(r);
            }
            if let Some(output) = own
                && let Some(r) = self.publish_trace(&output, &[]).await
            {
                return Some(r);
            }
        }
        None
    }

    /// A Nix 2.35 daemon keys them by derivation path: ask for `root`'s,
    /// publish it with the daemon's signatures, and in the old layout
    /// (with no dependencies: Nix 2.35 records none) signed by us.
    async fn publish_via_build_traces(
        &self,
        outputs: &[String],
        ids: &[(String, String)],
    ) -> Option<(String, Failure)> {
        let svc = &self.d.svc;
        for output in outputs {
            let trace = match svc.pool.get().await {
                Ok(mut conn) => {
                    conn.query_build_trace(&svc.store_dir, self.drv, output)
                        .await
                }
                Err(e) => Err(e),
            };
            let trace = match trace {
                Ok(Some(t)) if &t.out_path == self.root => t,
                Ok(_) => continue,
                Err(e) => {
                    return retry(format!("querying {}^{output}", self.shown), &e, true);
                }
            };
            if let Some(r) = self.publish_trace(output, &trace.signatures).await {
                return Some(r);
            }
            let Some((_, id)) = ids.iter().find(|(o, _)| o == output) else {
                continue;
            };
            let json = format!(
                r#"{{"dependentRealisations":{{}},"id":"{id}","outPath":"{}","signatures":[]}}"#,
                self.root.as_str()
            );
            if let Some(r) = self.publish_hashed(id, &json).await {
                return Some(r);
            }
        }
        None
    }

    async fn publish_hashed(&self, id: &str, json: &str) -> Option<(String, Failure)> {
        let (svc, entry) = (&self.d.svc, self.entry);
        match upload_realisation(entry.target.as_ref(), id, json, &svc.keys).await {
            Ok(RealisationOutcome::Uploaded) => {
                tracing::info!("realisation {id} of {} → {}", self.shown, entry.id)
            }
            Ok(RealisationOutcome::AlreadyPresent) => {}
            Err(e) if e.is_retriable() => return retry(id.to_owned(), &e, e.is_transient()),
            Err(e) => tracing::warn!("not uploading realisation {id} of {}: {e}", self.shown),
        }
        None
    }

    async fn publish_trace(&self, output: &str, sigs: &[String]) -> Option<(String, Failure)> {
        let (svc, entry) = (&self.d.svc, self.entry);
        let trace = match BuildTraceEntry::new(self.drv.clone(), output, self.root.clone()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("not uploading the build trace of {}: {e}", self.shown);
                return None;
            }
        };
        match upload_build_trace(entry.target.as_ref(), &trace, sigs, &svc.keys).await {
            Ok(RealisationOutcome::Uploaded) => {
                tracing::info!("build trace {} → {}", trace.cache_key(), entry.id)
            }
            Ok(RealisationOutcome::AlreadyPresent) => {}
            Err(e) if e.is_retriable() => {
                return retry(trace.label(), &e, e.is_transient());
            }
            Err(e) => tracing::warn!("not uploading build trace {}: {e}", trace.label()),
        }
        None
    }
}
