//! What to upload: include/exclude patterns on store path names, paths
//! signed by an upstream cache's key, paths an upstream cache serves.
//!
//! A user's own cache should get their builds, not copies of
//! cache.nixos.org (hydra#1231 re-uploaded 15 GB of substituted paths per
//! stdenv rebuild).
//!
//! Upstream rules (keys, caches) apply to every path of a closure: a
//! referrer is still uploaded when a reference is skipped, as `nix copy`
//! to a cache fronted by upstream does, since clients substitute the
//! reference from upstream (so they need it as a substituter too). Name
//! patterns apply only to a job's root, the requested path: a reference
//! nothing else serves must be uploaded with its referrer, or the cache
//! would publish a narinfo no client can complete.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use nix_outbox_core::keys::{PublicKey, Signature};
use nix_outbox_core::narinfo::fingerprint;
use nix_outbox_core::{StoreDir, StorePath};
use nix_outbox_store::PathInfo;
use nix_outbox_upload::{BoxFuture, PathSelector, Skip, SkipReason, TargetConfig};

use crate::upstream::UpstreamCache;

/// cache.nixos.org's key: the default `upstream-keys`.
pub const NIXOS_CACHE_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(
        "{key} pattern {pattern:?} is not valid: {why}; patterns are globs on the store path name after `<hash>-`, e.g. \"*.drv\", \"*-source\", \"nixos-system-*\""
    )]
    BadPattern {
        key: &'static str,
        pattern: String,
        why: String,
    },
    #[error(
        "upstream-keys entry {key:?} is not a public key: {source}; write it as in nix.conf's trusted-public-keys, e.g. {NIXOS_CACHE_KEY:?}"
    )]
    BadKey {
        key: String,
        source: nix_outbox_core::keys::KeyError,
    },
    #[error("upstream-caches entry {url:?}: {source}")]
    BadUpstream {
        url: String,
        source: nix_outbox_upload::TargetUrlError,
    },
    #[error(
        "upstream-caches entry {url:?} is also a target: every path would count as served upstream and nothing would be uploaded; remove it from one of the lists"
    )]
    UpstreamIsTarget { url: String },
}

/// The configuration keys of this module, as written in the file.
#[derive(Debug, Default)]
pub struct FilterKeys {
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    /// `None`: [`NIXOS_CACHE_KEY`]; empty: no upstream keys.
    pub upstream_keys: Option<Vec<String>>,
    /// `None`: none. Not cache.nixos.org by default: a machine without
    /// internet access (common for builders) would then wait for a
    /// timeout and log an outage at every start, for an answer the
    /// upstream key (a local check) gives for every path fetched from it.
    pub upstream_caches: Option<Vec<String>>,
}

impl FilterKeys {
    /// Validates the keys: compiled patterns, parsed keys and URLs.
    pub fn resolve(
        self,
        targets: &[TargetConfig],
    ) -> Result<(Filters, Vec<TargetConfig>), FilterError> {
        let keys = self
            .upstream_keys
            .unwrap_or_else(|| vec![NIXOS_CACHE_KEY.to_owned()])
            .into_iter()
            .map(|k| PublicKey::parse(&k).map_err(|source| FilterError::BadKey { key: k, source }))
            .collect::<Result<_, _>>()?;
        let filters = Filters::new(
            &self.include.unwrap_or_default(),
            &self.exclude.unwrap_or_default(),
            keys,
        )?;
        let mut caches = Vec::new();
        for url in self.upstream_caches.unwrap_or_default() {
            let cache = TargetConfig::parse(&url).map_err(|source| FilterError::BadUpstream {
                url: url.clone(),
                source,
            })?;
            if upstream_among_targets(std::slice::from_ref(&cache), targets).is_some() {
                return Err(FilterError::UpstreamIsTarget { url });
            }
            caches.push(cache);
        }
        Ok((filters, caches))
    }
}

/// The first of `upstreams` that is also one of `targets` (the same cache,
/// however spelled): with it, every path would count as served upstream
/// and nothing would be uploaded. Checked for the configured targets at
/// load, and for `copy --to`.
pub fn upstream_among_targets<'a>(
    upstreams: &'a [TargetConfig],
    targets: &[TargetConfig],
) -> Option<&'a TargetConfig> {
    upstreams
        .iter()
        .find(|u| targets.iter().any(|t| t.id() == u.id()))
}

/// A list of glob patterns, compiled, remembering their spelling so a skip
/// can say which one matched.
#[derive(Debug, Clone)]
struct Patterns {
    spelled: Vec<String>,
    set: GlobSet,
}

impl Patterns {
    fn new(key: &'static str, patterns: &[String]) -> Result<Self, FilterError> {
        let mut set = GlobSetBuilder::new();
        for p in patterns {
            set.add(glob(p).map_err(|why| FilterError::BadPattern {
                key,
                pattern: p.clone(),
                why,
            })?);
        }
        let set = set.build().map_err(|e| FilterError::BadPattern {
            key,
            pattern: patterns.join(" "),
            why: e.kind().to_string(),
        })?;
        Ok(Self {
            spelled: patterns.to_vec(),
            set,
        })
    }

    /// The first pattern (in configuration order) matching `name`.
    fn first_match(&self, name: &str) -> Option<&str> {
        let first = self.set.matches(name).into_iter().min()?;
        Some(&self.spelled[first])
    }
}

/// Store path names hold no `/`, so a pattern with one could never
/// match: refused rather than silently useless. Matching is on exact bytes
/// (case-sensitive, like the store); `{a,b}` alternatives work.
fn glob(pattern: &str) -> Result<Glob, String> {
    if pattern.contains('/') {
        return Err("a store path name never contains '/'".to_owned());
    }
    if pattern.is_empty() {
        return Err("it is empty".to_owned());
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| e.kind().to_string())
}

/// The local rules: name patterns and upstream keys.
#[derive(Debug, Clone)]
pub struct Filters {
    include: Patterns,
    exclude: Patterns,
    upstream_keys: Vec<PublicKey>,
}

impl Default for Filters {
    /// Uploads everything: no patterns, no upstream keys.
    fn default() -> Self {
        Self::new(&[], &[], Vec::new()).expect("no patterns cannot fail")
    }
}

impl Filters {
    pub fn new(
        include: &[String],
        exclude: &[String],
        upstream_keys: Vec<PublicKey>,
    ) -> Result<Self, FilterError> {
        Ok(Self {
            include: Patterns::new("include", include)?,
            exclude: Patterns::new("exclude", exclude)?,
            upstream_keys,
        })
    }

    pub fn include(&self) -> &[String] {
        &self.include.spelled
    }

    pub fn exclude(&self) -> &[String] {
        &self.exclude.spelled
    }

    pub fn upstream_keys(&self) -> &[PublicKey] {
        &self.upstream_keys
    }

    /// Whether a path named `name` (after `<hash>-`) passes the patterns:
    /// included (no include patterns, or one matches) and not excluded.
    pub fn by_name(&self, name: &str) -> Option<Skip> {
        if !self.include.spelled.is_empty() && self.include.first_match(name).is_none() {
            return Some(Skip {
                reason: SkipReason::NotIncluded,
                detail: String::new(),
            });
        }
        self.exclude.first_match(name).map(|p| Skip {
            reason: SkipReason::Excluded,
            detail: p.to_owned(),
        })
    }

    /// Whether the store's record of the path carries a signature that
    /// *verifies* under an upstream key. A matching name is not enough:
    /// anyone who can add signatures (a trusted user, `nix store sign`
    /// with any key) can write a `Sig` named `cache.nixos.org-1`, and
    /// such a path would then silently never reach our cache while no
    /// client could substitute it from upstream either.
    pub fn by_signature(&self, store_dir: &StoreDir, info: &PathInfo) -> Option<Skip> {
        if self.upstream_keys.is_empty() || info.sigs.is_empty() {
            return None;
        }
        let sigs: Vec<Signature> = info
            .sigs
            .iter()
            .filter_map(|s| Signature::parse(s).ok())
            .collect();
        if sigs.is_empty() {
            return None;
        }
        let fp = fingerprint(
            store_dir,
            &info.path,
            &info.nar_hash,
            info.nar_size,
            &info.references,
        );
        self.upstream_keys
            .iter()
            .find(|k| sigs.iter().any(|s| k.verify(fp.as_bytes(), s)))
            .map(|k| Skip {
                reason: SkipReason::UpstreamKey,
                detail: k.name().to_owned(),
            })
    }

    /// The local rules, cheapest first. Name patterns only when `is_root`:
    /// see the module documentation.
    pub fn check(&self, store_dir: &StoreDir, info: &PathInfo, is_root: bool) -> Option<Skip> {
        is_root
            .then(|| self.by_name(info.path.name()))
            .flatten()
            .or_else(|| self.by_signature(store_dir, info))
    }
}

/// Filters plus upstream caches: what the daemon and `copy` hand to
/// `upload_closure_selected`.
pub struct Selection {
    pub store_dir: StoreDir,
    pub filters: Filters,
    pub upstreams: Vec<UpstreamCache>,
}

impl Selection {
    /// Writes what the upstream caches were seen to hold to the queue.
    pub async fn flush(&self) {
        for u in &self.upstreams {
            u.flush().await;
        }
    }
}

impl PathSelector for Selection {
    fn skips<'a>(
        &'a self,
        root: &'a StorePath,
        paths: &'a [&'a PathInfo],
    ) -> BoxFuture<'a, Vec<Option<Skip>>> {
        Box::pin(async move {
            let mut skips: Vec<Option<Skip>> = paths
                .iter()
                .map(|info| {
                    self.filters
                        .check(&self.store_dir, info, &info.path == root)
                })
                .collect();
            // Only what the local rules keep goes to the network, one batch
            // per upstream, each asked only about what earlier ones lack.
            for upstream in &self.upstreams {
                let (at, hashes): (Vec<usize>, Vec<String>) = skips
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_none())
                    .map(|(i, _)| (i, paths[i].path.hash_part().to_owned()))
                    .unzip();
                if hashes.is_empty() {
                    break;
                }
                for (i, has) in at.into_iter().zip(upstream.has(&hashes).await) {
                    if has {
                        skips[i] = Some(Skip {
                            reason: SkipReason::UpstreamCache,
                            detail: upstream.id().to_owned(),
                        });
                    }
                }
            }
            skips
        })
    }
}

#[cfg(test)]
mod tests;
