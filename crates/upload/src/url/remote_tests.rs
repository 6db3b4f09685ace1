//! `s3://` and `http(s)://` target URLs.

use super::*;

fn ok(url: &str) -> TargetConfig {
    TargetConfig::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn err(url: &str) -> TargetUrlError {
    match TargetConfig::parse(url) {
        Ok(c) => panic!("{url} parsed as {c:?}"),
        Err(e) => e,
    }
}

fn s3(bucket: &str, region: &str, endpoint: Option<&str>, scheme: &str) -> TargetLocation {
    TargetLocation::S3 {
        bucket: bucket.into(),
        region: region.into(),
        endpoint: endpoint.map(Into::into),
        scheme: scheme.into(),
        profile: None,
    }
}

#[test]
fn s3_defaults_and_canonical_form() {
    let c = ok("s3://my-cache");
    assert_eq!(c.location, s3("my-cache", "us-east-1", None, "https"));
    assert!(c.multipart_upload);
    assert_eq!(c.multipart_chunk_size, None);
    assert_eq!(c.to_string(), "s3://my-cache");
    assert_eq!(c.id(), "s3://my-cache");

    let url = "s3://nix.cache-1?profile=ci&compression=xz&scheme=http&endpoint=127.0.0.1:9000\
               &multipart-chunk-size=5242880&region=eu-west-1&write-nar-listing=true";
    let c = ok(url);
    assert_eq!(
        c.location,
        TargetLocation::S3 {
            bucket: "nix.cache-1".into(),
            region: "eu-west-1".into(),
            endpoint: Some("127.0.0.1:9000".into()),
            scheme: "http".into(),
            profile: Some("ci".into()),
        }
    );
    assert_eq!(c.multipart_chunk_size, Some(5 * 1024 * 1024));
    let canon = c.to_string();
    assert_eq!(
        canon,
        "s3://nix.cache-1?region=eu-west-1&endpoint=127.0.0.1:9000&scheme=http&profile=ci\
         &compression=xz&write-nar-listing=true&multipart-chunk-size=5242880"
    );
    assert_eq!(ok(&canon), c, "the canonical form parses back");
    // The id names the bucket and its server, nothing about how to reach
    // or sign for it, nor how NARs are encoded.
    assert_eq!(c.id(), "s3://nix.cache-1?endpoint=127.0.0.1:9000");
    assert_eq!(
        ok("s3://nix.cache-1?endpoint=127.0.0.1:9000&region=x&profile=p").id(),
        c.id()
    );

    // Spelled-out defaults are no settings.
    assert_eq!(
        ok("s3://b12?region=us-east-1&scheme=https&multipart-upload=true&multipart-chunk-size=8388608")
            .to_string(),
        "s3://b12"
    );
    let spool = ok("s3://b12?multipart-upload=false");
    assert!(!spool.multipart_upload);
    assert_eq!(spool.to_string(), "s3://b12?multipart-upload=false");
    assert_eq!(ok(&spool.to_string()), spool);
}

#[test]
fn s3_endpoint_spellings() {
    // A URL-shaped endpoint (the AWS SDK's spelling) sets the scheme.
    let c = ok("s3://bkt?endpoint=http://Minio.local:9000/");
    assert_eq!(
        c.location,
        s3("bkt", "us-east-1", Some("minio.local:9000"), "http")
    );
    assert_eq!(
        ok("s3://bkt?endpoint=http://h:1&scheme=http"),
        ok("s3://bkt?endpoint=h:1&scheme=http")
    );
    assert!(matches!(
        err("s3://bkt?endpoint=https://h:1&scheme=http"),
        TargetUrlError::SchemeConflict { .. }
    ));
    assert_eq!(
        ok("s3://bkt?endpoint=[::1]:9000").location,
        s3("bkt", "us-east-1", Some("[::1]:9000"), "https")
    );
    for (bad, why) in [
        ("h:99999", "port"),
        ("h:", "port"),
        ("user:pw@h", "credentials"),
        ("h/sub", "path-style"),
        ("ftp://h", "http"),
        ("", "host"),
        ("[zz]:1", "IPv6"),
    ] {
        let e = err(&format!("s3://bkt?endpoint={bad}"));
        assert!(
            matches!(&e, TargetUrlError::BadEndpoint { .. }),
            "{bad}: {e:?}"
        );
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
}

#[test]
fn s3_bucket_names() {
    for good in ["abc", "a.b-c", "0123456789", &"x".repeat(63)] {
        ok(&format!("s3://{good}"));
    }
    for (bad, why) in [
        ("", "empty"),
        ("ab", "3 to 63"),
        (&"x".repeat(64), "3 to 63"),
        ("My_Bucket", "lowercase"),
        ("-abc", "starts and ends"),
        ("abc.", "starts and ends"),
        ("a..b", "adjacent dots"),
        ("192.168.1.1", "IP address"),
    ] {
        let e = err(&format!("s3://{bad}"));
        assert!(
            matches!(&e, TargetUrlError::BadBucket { .. }),
            "{bad}: {e:?}"
        );
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
    let e = err("s3://bucket/prefix");
    assert!(
        matches!(&e, TargetUrlError::S3Path { path, .. } if path == "prefix"),
        "{e:?}"
    );
}

#[test]
fn s3_parameter_errors_are_precise() {
    let e = err("s3://bkt?regoin=eu-west-1");
    let msg = e.to_string();
    assert!(
        matches!(&e, TargetUrlError::UnknownParam { param, scheme: "s3", .. } if param == "regoin"),
        "{e:?}"
    );
    assert!(
        msg.contains("\"regoin\"") && msg.contains("region, endpoint, scheme, profile"),
        "{msg}"
    );
    // Nix's other S3 settings are refused rather than silently ignored.
    for p in ["narinfo-compression", "log-compression", "index-debug-info"] {
        assert!(matches!(
            err(&format!("s3://bkt?{p}=1")),
            TargetUrlError::UnknownParam { .. }
        ));
    }
    let e = err("s3://bkt?multipart-chunk-size=5242879");
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            TargetUrlError::BadValue {
                param: "multipart-chunk-size",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("5242880") && msg.contains("5 MiB"), "{msg}");
    for bad in ["5368709121", "8MB", "1.5M", "-1", "6G"] {
        assert!(matches!(
            err(&format!("s3://bkt?multipart-chunk-size={bad}")),
            TargetUrlError::BadValue { .. }
        ));
    }
    assert!(matches!(
        err("s3://bkt?multipart-upload=false&multipart-chunk-size=6000000"),
        TargetUrlError::ChunkSizeWithoutMultipart { .. }
    ));
    for (p, v) in [
        ("scheme", "ftp"),
        ("region", ""),
        ("region", "eu west"),
        ("profile", ""),
    ] {
        assert!(matches!(
            err(&format!("s3://bkt?{p}={v}")),
            TargetUrlError::BadValue { .. }
        ));
    }
    let msg = err("s3://bkt?secret-key=/k").to_string();
    assert!(msg.contains("secret-key-files"), "{msg}");
}

#[test]
fn http_urls() {
    let c = ok("https://Cache.Example:8443//nix/./cache/?compression=xz");
    assert_eq!(
        c.location,
        TargetLocation::Http {
            url: "https://cache.example:8443/nix/cache".into()
        }
    );
    assert_eq!(
        c.to_string(),
        "https://cache.example:8443/nix/cache?compression=xz"
    );
    assert_eq!(c.id(), "https://cache.example:8443/nix/cache");
    assert_eq!(ok(&c.to_string()), c);
    assert_eq!(ok("http://127.0.0.1:8080/").id(), "http://127.0.0.1:8080");

    for p in [
        "region",
        "endpoint",
        "multipart-upload",
        "multipart-chunk-size",
    ] {
        let e = err(&format!("http://h/c?{p}=1"));
        assert!(
            matches!(&e, TargetUrlError::S3Param { param, scheme: "http", .. } if param == p),
            "{e:?}"
        );
        assert!(e.to_string().contains("s3://"), "{e}");
    }
    for (bad, why) in [
        ("http://u:pw@h/c", "credentials"),
        ("http://h/c#x", "fragment"),
        ("http://h/a/../b", ".."),
        ("http:///c", "host"),
        ("https://h:http/c", "port"),
    ] {
        let e = err(bad);
        assert!(
            matches!(&e, TargetUrlError::BadHttpUrl { .. }),
            "{bad}: {e:?}"
        );
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
}

#[test]
fn part_sizes_keep_any_nar_within_10000_parts() {
    const MIB: u64 = 1024 * 1024;
    let c = ok("s3://bkt");
    assert_eq!(c.part_size(0), 8 * MIB, "unknown size: the default");
    assert_eq!(c.part_size(40 * 1024 * MIB), 8 * MIB);
    let huge = 200 * 1024 * MIB;
    let part = c.part_size(huge);
    assert!(part > 8 * MIB && part.is_multiple_of(MIB), "{part}");
    assert!(part * 10_000 >= huge + huge / 64, "{part}");
    let small = ok("s3://bkt?multipart-chunk-size=5242880");
    assert_eq!(small.part_size(12 * MIB), 5 * MIB);
    assert_eq!(c.part_size(u64::MAX), MAX_PART);
}

/// Nix 2.35's S3 parameters, and URLs from its documentation.
#[test]
fn s3_parameters_of_nix_2_35() {
    // From Nix 2.35's s3-binary-cache-store.md and copy.md.
    for url in [
        "s3://example-nix-cache?profile=cache-upload&region=eu-west-2",
        "s3://example-nix-cache?profile=cache-upload&scheme=https&endpoint=minio.example.com",
        "s3://my-bucket?region=eu-west-1&endpoint=example.com",
    ] {
        ok(url);
    }
    let c = ok(
        "s3://bkt?endpoint=http://127.0.0.1:9000&addressing-style=path\
                &storage-class=REDUCED_REDUNDANCY&multipart-threshold=64M&buffer-size=16M",
    );
    assert_eq!(c.addressing, Addressing::Path);
    assert_eq!(c.storage_class.as_deref(), Some("REDUCED_REDUNDANCY"));
    assert_eq!(c.multipart_threshold, Some(64 << 20));
    assert_eq!(
        c.multipart_chunk_size,
        Some(16 << 20),
        "buffer-size is an alias"
    );
    let canon = c.to_string();
    assert_eq!(
        canon,
        "s3://bkt?endpoint=127.0.0.1:9000&scheme=http&multipart-chunk-size=16777216\
         &addressing-style=path&storage-class=REDUCED_REDUNDANCY&multipart-threshold=67108864"
    );
    assert_eq!(ok(&canon), c, "the canonical form parses back");
    assert_eq!(c.id(), ok("s3://bkt?endpoint=http://127.0.0.1:9000").id());
    assert_eq!(ok("s3://bkt?addressing-style=auto").to_string(), "s3://bkt");
    assert_eq!(
        ok("s3://a.b?addressing-style=path").addressing,
        Addressing::Path
    );

    // Both names of one setting.
    assert!(matches!(
        err("s3://bkt?buffer-size=8M&multipart-chunk-size=8M"),
        TargetUrlError::DuplicateParam { .. }
    ));
    let e = err("s3://my.bucket?addressing-style=virtual");
    assert!(e.to_string().contains("addressing-style=path"), "{e}");
    for (p, v, says) in [
        ("addressing-style", "vhost", "auto, path or virtual"),
        ("storage-class", "GLACIER", "restore"),
        ("storage-class", "DEEP_ARCHIVE", "restore"),
        ("storage-class", "standard", "STANDARD_IA"),
        ("storage-class", "", "STANDARD_IA"),
        ("multipart-threshold", "97M", "96 MiB"),
        ("multipart-threshold", "lots", "96 MiB"),
    ] {
        let e = err(&format!("s3://bkt?{p}={v}"));
        assert!(
            matches!(&e, TargetUrlError::BadValue { param, .. } if *param == p)
                && e.to_string().contains(says),
            "{p}={v}: {e}"
        );
    }
    assert!(matches!(
        err("s3://bkt?multipart-upload=false&multipart-threshold=1M"),
        TargetUrlError::ChunkSizeWithoutMultipart { .. }
    ));
    // S3's, not HTTP's or file's.
    for p in [
        "addressing-style=path",
        "storage-class=STANDARD",
        "multipart-threshold=1M",
    ] {
        assert!(matches!(
            err(&format!("https://cache.example/nix?{p}")),
            TargetUrlError::S3Param { .. }
        ));
    }
}
