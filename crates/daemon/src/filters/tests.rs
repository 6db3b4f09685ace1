//! Unit tests of the name patterns, upstream-key checks and their configuration.

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
fn name_patterns_only_apply_to_the_root() {
    let sd = StoreDir::default();
    let info = PathInfo {
        path: sd
            .parse_path("/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-dep-skipme")
            .unwrap(),
        deriver: None,
        nar_hash: nix_outbox_core::hash::Sha256Hash::digest(b"nar"),
        references: Default::default(),
        registration_time: 0,
        nar_size: 3,
        ultimate: false,
        sigs: Default::default(),
        ca: None,
    };
    for f in [filters(&[], &["*-skipme"]), filters(&["app-*"], &[])] {
        assert!(f.check(&sd, &info, true).is_some());
        // Needed by an uploaded path and served by nobody else.
        assert_eq!(f.check(&sd, &info, false), None);
    }
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
    assert_eq!(f.check(&sd, &unsigned, false), None);
    assert_eq!(f.check(&sd, &info(vec![forged.clone()]), false), None);
    assert_eq!(
        f.check(
            &sd,
            &info(vec!["cache.example.org-1:garbage".into()]),
            false
        ),
        None
    );
    let skip = f
        .check(&sd, &info(vec![forged, good.clone()]), false)
        .unwrap();
    assert_eq!(
        (skip.reason, skip.detail.as_str()),
        (SkipReason::UpstreamKey, "cache.example.org-1")
    );
    // A signature over another path's fingerprint does not transfer.
    let mut other = info(vec![good]);
    other.nar_size = 4;
    assert_eq!(f.check(&sd, &other, false), None);
    // Empty upstream-keys: nothing is skipped for its signatures.
    let none = Filters::new(&[], &[], Vec::new()).unwrap();
    assert_eq!(
        none.check(
            &sd,
            &info(vec![upstream.sign(fp.as_bytes()).to_string()]),
            false,
        ),
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
