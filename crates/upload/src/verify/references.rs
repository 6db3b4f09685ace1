//! The checks `nix-outbox verify` makes across files and paths: a `.ls`
//! listing against its NAR, and references against what the cache (and
//! the `--upstream` caches) hold. Pure, like `check`.

use std::collections::{BTreeMap, BTreeSet};

use nix_outbox_core::nar::Listing;
use nix_outbox_core::{StoreDir, StorePath};

use super::check::{Found, Problem};

/// Bytes a `.ls` may exceed twice our own listing by (other writers' spacing).
const LISTING_SLACK: usize = 64 * 1024;

/// Compares a cache's `.ls` file with the listing of the NAR it describes,
/// as JSON values (key order and spacing vary between writers).
pub fn listing_problem(ls: &[u8], nar: &Listing) -> Option<String> {
    let ours = nar.to_json();
    if ls == ours.as_bytes() {
        return None;
    }
    // A listing of the same tree differs from ours only in key order and
    // spacing. One far larger cannot match, and parsing it into a tree
    // would cost many times its bytes (a 64 MiB `.ls` took 1–2 GiB): the
    // parse is bounded by what the NAR's own listing needs.
    let budget = ours.len().saturating_mul(2).saturating_add(LISTING_SLACK);
    if ls.len() > budget {
        return Some(format!(
            "the .ls listing is {} bytes, far more than the NAR's files need ({} bytes): it does \
             not match the NAR's files (`nix store ls` and cache browsers show the wrong tree)",
            ls.len(),
            ours.len()
        ));
    }
    let theirs: serde_json::Value = match serde_json::from_slice(ls) {
        Ok(v) => v,
        Err(e) => return Some(format!("the .ls listing is not valid JSON ({e})")),
    };
    let ours: serde_json::Value = serde_json::from_str(&ours).expect("our listing JSON parses");
    (theirs != ours).then(|| {
        "the .ls listing does not match the NAR's files (`nix store ls` and cache browsers \
         show the wrong tree)"
            .to_owned()
    })
}

/// Whether an `--upstream` cache has a reference the cache lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// This upstream cache (as given) has a narinfo for it.
    Has(String),
    /// Asking failed (reported as a read error of the run).
    Unknown,
}

/// The hash parts of references that have no narinfo in the cache.
pub fn missing_references(found: &BTreeMap<String, Found>) -> BTreeSet<String> {
    let mut missing = BTreeSet::new();
    for f in found.values() {
        if let Found::Present { references, .. } = f {
            for r in references {
                if matches!(found.get(r.hash_part()), None | Some(Found::Missing)) {
                    missing.insert(r.hash_part().to_owned());
                }
            }
        }
    }
    missing
}

/// Problems with references: each must have a narinfo in the cache for
/// exactly that path, or Nix refuses to substitute the referrer. A
/// reference an `--upstream` cache has is a note instead (one per
/// reference): clients substitute it from there.
pub fn reference_problems(
    store_dir: &StoreDir,
    cache: &str,
    found: &BTreeMap<String, Found>,
    upstream: &BTreeMap<String, Upstream>,
) -> (Vec<Problem>, Vec<String>) {
    let mut problems = Vec::new();
    let mut from_upstream: BTreeMap<&StorePath, (&str, Vec<String>)> = BTreeMap::new();
    for f in found.values() {
        let Found::Present {
            store_path,
            references,
        } = f
        else {
            continue;
        };
        let path = store_dir.display(store_path);
        for r in references.iter().filter(|r| *r != store_path) {
            let shown = store_dir.display(r);
            let message = match found.get(r.hash_part()) {
                None | Some(Found::Missing) => match upstream.get(r.hash_part()) {
                    Some(Upstream::Has(url)) => {
                        let e = from_upstream.entry(r).or_insert((url, Vec::new()));
                        e.1.push(path.clone());
                        continue;
                    }
                    Some(Upstream::Unknown) => continue,
                    None => format!(
                        "references {shown}, which has no narinfo in the cache: Nix refuses to \
                         substitute {path} without its whole closure. Upload the missing \
                         reference with `nix-outbox copy --to {cache} {path}` (it uploads what \
                         is missing). If an upstream cache serves it (nix-outbox skips paths \
                         signed by `upstream-keys`, cache.nixos.org's by default), pass that \
                         cache with `--upstream URL`, or upload it anyway with \
                         `nix-outbox copy --no-filters`"
                    ),
                },
                Some(Found::Present {
                    store_path: other, ..
                }) if other != r => format!(
                    "references {shown}, but {}.narinfo in the cache is for {}",
                    r.hash_part(),
                    store_dir.display(other)
                ),
                Some(_) => continue,
            };
            let kind = if matches!(found.get(r.hash_part()), Some(Found::Present { .. })) {
                "reference-mismatch"
            } else {
                "reference-missing"
            };
            problems.push(Problem {
                path: path.clone(),
                kind,
                message,
            });
        }
    }
    let notes = from_upstream
        .into_iter()
        .map(|(r, (url, referrers))| {
            format!(
                "{} is not in the cache but in {url} (--upstream), referenced by {} path(s) \
                 such as {}: clients need {url} among their substituters",
                store_dir.display(r),
                referrers.len(),
                referrers[0]
            )
        })
        .collect();
    (problems, notes)
}
