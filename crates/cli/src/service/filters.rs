//! What to upload: include/exclude patterns on store path names, paths
//! signed by an upstream cache's key, paths an upstream cache serves.
//!
//! A user's own cache should get their builds, not copies of
//! cache.nixos.org (hydra#1231 re-uploaded 15 GB of substituted paths per
//! stdenv rebuild). The rules apply to every path of a closure, requested
//! outputs included. A referrer is still uploaded when a reference is
//! skipped, as `nix copy` to a cache fronted by upstream does: clients
//! substitute the reference from upstream, so they need it as a
//! substituter too.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use nix_outbox_core::StoreDir;
use nix_outbox_core::keys::{PublicKey, Signature};
use nix_outbox_core::narinfo::fingerprint;
use nix_outbox_store::PathInfo;
use nix_outbox_upload::{BoxFuture, PathSelector, Skip, SkipReason, TargetConfig};

use super::upstream::UpstreamCache;

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
            if targets.iter().any(|t| t.id() == cache.id()) {
                return Err(FilterError::UpstreamIsTarget { url });
            }
            caches.push(cache);
        }
        Ok((filters, caches))
    }
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

    /// The local rules, cheapest first.
    pub fn check(&self, store_dir: &StoreDir, info: &PathInfo) -> Option<Skip> {
        self.by_name(info.path.name())
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
    fn skips<'a>(&'a self, paths: &'a [&'a PathInfo]) -> BoxFuture<'a, Vec<Option<Skip>>> {
        Box::pin(async move {
            let mut skips: Vec<Option<Skip>> = paths
                .iter()
                .map(|info| self.filters.check(&self.store_dir, info))
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
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn filters(include: &[&str], exclude: &[&str]) -> Filters {
        Filters::new(&strings(include), &strings(exclude), Vec::new()).unwrap()
    }

    #[test]
    fn include_and_exclude_semantics() {
        let f = filters(&[], &["*.drv", "*-source", "nixos-system-*"]);
        assert_eq!(f.by_name("hello-2.12"), None);
        let skip = f.by_name("hello-2.12.drv").unwrap();
        assert_eq!(
            (skip.reason, skip.detail.as_str()),
            (SkipReason::Excluded, "*.drv")
        );
        assert_eq!(f.by_name("nixpkgs-source").unwrap().detail, "*-source");
        assert_eq!(
            f.by_name("nixos-system-host-24.05").unwrap().detail,
            "nixos-system-*"
        );
        // Anchored at both ends: `*-source` is no substring search.
        assert_eq!(f.by_name("source-highlight-3.1"), None);

        let f = filters(&["hello-*", "my-{app,lib}-*"], &["*-doc"]);
        assert_eq!(f.by_name("hello-2.12"), None);
        assert_eq!(f.by_name("my-lib-1"), None);
        assert_eq!(
            f.by_name("glibc-2.39").map(|s| s.reason),
            Some(SkipReason::NotIncluded)
        );
        // Exclude wins over include.
        assert_eq!(
            f.by_name("hello-2.12-doc").map(|s| s.reason),
            Some(SkipReason::Excluded)
        );
        // Case-sensitive, like the store.
        assert!(f.by_name("Hello-2.12").is_some());
        // The first matching exclude pattern is the one named.
        let f = filters(&[], &["a*", "ab*"]);
        assert_eq!(f.by_name("abc").unwrap().detail, "a*");
    }

    #[test]
    fn bad_patterns_are_named() {
        for (include, exclude, bad) in [
            (vec!["ok-*", "[oops"], vec![], "[oops"),
            (vec![], vec!["{a,b"], "{a,b"),
            (vec![], vec!["*/bin"], "*/bin"),
        ] {
            let e = Filters::new(&strings(&include), &strings(&exclude), Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            let key = if include.is_empty() {
                "exclude"
            } else {
                "include"
            };
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn only_a_signature_that_verifies_counts_not_its_name() {
        use nix_outbox_core::keys::SecretKey;
        let sd = StoreDir::default();
        let upstream = SecretKey::generate("cache.example.org-1").unwrap();
        // Same name, another key: what anyone can produce.
        let forger = SecretKey::generate("cache.example.org-1").unwrap();
        let f = Filters::new(&[], &[], vec![upstream.public_key()]).unwrap();
        let info = |sigs: Vec<String>| PathInfo {
            path: sd
                .parse_path("/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-gcc-13")
                .unwrap(),
            deriver: None,
            nar_hash: nix_outbox_core::hash::Sha256Hash::digest(b"nar"),
            references: Default::default(),
            registration_time: 0,
            nar_size: 3,
            ultimate: false,
            sigs: sigs.into_iter().collect(),
            ca: None,
        };
        let unsigned = info(Vec::new());
        let fp = fingerprint(
            &sd,
            &unsigned.path,
            &unsigned.nar_hash,
            3,
            &unsigned.references,
        );
        let good = upstream.sign(fp.as_bytes()).to_string();
        let forged = forger.sign(fp.as_bytes()).to_string();
        assert_eq!(f.check(&sd, &unsigned), None);
        assert_eq!(f.check(&sd, &info(vec![forged.clone()])), None);
        assert_eq!(
            f.check(&sd, &info(vec!["cache.example.org-1:garbage".into()])),
            None
        );
        let skip = f.check(&sd, &info(vec![forged, good.clone()])).unwrap();
        assert_eq!(
            (skip.reason, skip.detail.as_str()),
            (SkipReason::UpstreamKey, "cache.example.org-1")
        );
        // A signature over another path's fingerprint does not transfer.
        let mut other = info(vec![good]);
        other.nar_size = 4;
        assert_eq!(f.check(&sd, &other), None);
        // Empty upstream-keys: nothing is skipped for its signatures.
        let none = Filters::new(&[], &[], Vec::new()).unwrap();
        assert_eq!(
            none.check(&sd, &info(vec![upstream.sign(fp.as_bytes()).to_string()])),
            None
        );
    }

    #[test]
    fn config_keys_default_and_validate() {
        let (f, caches) = FilterKeys::default().resolve(&[]).unwrap();
        assert_eq!(f.upstream_keys()[0].to_string(), NIXOS_CACHE_KEY);
        assert!(caches.is_empty());
        let keys = FilterKeys {
            upstream_keys: Some(Vec::new()),
            ..Default::default()
        };
        assert!(keys.resolve(&[]).unwrap().0.upstream_keys().is_empty());
        let e = FilterKeys {
            upstream_keys: Some(vec!["cache.nixos.org-1".into()]),
            ..Default::default()
        }
        .resolve(&[])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("upstream-keys") && e.contains("cache.nixos.org-1"),
            "{e}"
        );
        let target = TargetConfig::parse("file:///srv/cache").unwrap();
        let e = FilterKeys {
            upstream_caches: Some(vec!["file:///srv/cache".into()]),
            ..Default::default()
        }
        .resolve(&[target])
        .unwrap_err()
        .to_string();
        assert!(e.contains("also a target"), "{e}");
    }
}
