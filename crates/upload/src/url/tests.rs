use std::path::PathBuf;

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

#[test]
fn defaults_and_normalisation() {
    let c = ok("file:///var/cache//nix/./x/");
    assert_eq!(
        c.location,
        TargetLocation::File {
            root: PathBuf::from("/var/cache/nix/x")
        }
    );
    assert_eq!(c.compression, Compression::Zstd);
    assert_eq!(c.level(), Some(3));
    assert_eq!(c.parallel_compression, None);
    assert!(!c.write_nar_listing);
    assert_eq!(c.to_string(), "file:///var/cache/nix/x");
    assert_eq!(c.id(), "file:///var/cache/nix/x");
    assert!(c.compression_threads() >= 1);
}

#[test]
fn all_parameters_and_canonical_form() {
    let c = ok(
        "file:///c?write-nar-listing=1&parallel-compression=false&compression-level=9&compression=xz",
    );
    assert_eq!(c.compression, Compression::Xz);
    assert_eq!(c.compression_level, Some(9));
    assert_eq!(c.parallel_compression, Some(false));
    assert!(c.write_nar_listing);
    assert_eq!(c.compression_threads(), 1);
    let canon = c.to_string();
    assert_eq!(
        canon,
        "file:///c?compression=xz&compression-level=9&parallel-compression=false&write-nar-listing=true"
    );
    assert_eq!(ok(&canon), c, "the canonical form parses back");
    assert_eq!(
        c.id(),
        "file:///c",
        "encoding settings are not part of the id"
    );

    // Spelling out a default gives the same canonical form.
    assert_eq!(
        ok("file:///c?compression=zstd&compression-level=3").to_string(),
        "file:///c"
    );
    let none = ok("file:///c?compression=none");
    assert_eq!(none.level(), None);
    assert_eq!(none.to_string(), "file:///c?compression=none");
    assert_eq!(
        ok("file:///c?compression=%78z").compression,
        Compression::Xz,
        "values are percent-decoded like Nix does"
    );
    assert_eq!(ok("file:///c?").to_string(), "file:///c");
    assert_eq!(ok("file:///c?compression-level=3"), ok("file:///c"));
}

#[test]
fn zstd_is_parallel_by_default_xz_is_not() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    assert_eq!(ok("file:///c").compression_threads(), threads.min(64));
    assert_eq!(ok("file:///c?compression=xz").compression_threads(), 1);
    assert_eq!(
        ok("file:///c?compression=xz&parallel-compression=true").compression_threads(),
        threads.min(64)
    );
    assert_eq!(
        ok("file:///c?parallel-compression=no").compression_threads(),
        1
    );
}

#[test]
fn scheme_errors() {
    assert_eq!(err(""), TargetUrlError::Empty);
    let e = err("/var/cache");
    assert!(e.to_string().contains("as file:///var/cache"), "{e}");
    let e = err("cache");
    assert!(e.to_string().contains("as file:///absolute/path"), "{e}");
    let e = err("ssh://host");
    assert!(matches!(e, TargetUrlError::UnknownScheme { .. }), "{e:?}");
    assert!(e.to_string().contains("ssh://"), "{e}");
}

#[test]
fn path_errors() {
    assert!(matches!(
        err("file://relative"),
        TargetUrlError::RelativePath { .. }
    ));
    assert!(matches!(
        err("file://./cache"),
        TargetUrlError::RelativePath { .. }
    ));
    assert!(matches!(
        err("file://"),
        TargetUrlError::RelativePath { .. }
    ));
    let e = err("file://host/cache");
    assert_eq!(
        e,
        TargetUrlError::FileHost {
            url: "file://host/cache".into(),
            host: "host".into()
        }
    );
    assert!(e.to_string().contains("file:///absolute/path"), "{e}");
    assert!(matches!(
        err("file:///a/../b"),
        TargetUrlError::DotDot { .. }
    ));
    assert!(matches!(
        err("file:///"),
        TargetUrlError::FilesystemRoot { .. }
    ));
    assert!(matches!(
        err("file:///./"),
        TargetUrlError::FilesystemRoot { .. }
    ));
}

#[test]
fn parameter_errors_are_precise() {
    let e = err("file:///c?compresion=xz");
    assert_eq!(
        e,
        TargetUrlError::UnknownParam {
            url: "file:///c?compresion=xz".into(),
            param: "compresion".into(),
            scheme: "file",
            accepted: COMMON,
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("\"compresion\"") && msg.contains("compression, compression-level"),
        "{msg}"
    );

    let msg = err("file:///c?secret-key=/etc/nix/key").to_string();
    assert!(msg.contains("secret-key-files"), "{msg}");

    for p in ["region", "endpoint", "profile", "multipart-upload"] {
        let e = err(&format!("file:///c?{p}=x"));
        assert!(
            matches!(&e, TargetUrlError::S3Param { param, .. } if param == p),
            "{e:?}"
        );
        assert!(e.to_string().contains("s3://"), "{e}");
    }

    for name in ["bzip2", "br", "gzip"] {
        let e = err(&format!("file:///c?compression={name}"));
        assert!(
            matches!(&e, TargetUrlError::UnsupportedCompression { name: n, .. } if n == name),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("not supported") && msg.contains("zstd") && msg.contains("xz"),
            "{msg}"
        );
    }

    assert!(matches!(
        err("file:///c?compression"),
        TargetUrlError::MalformedParam { .. }
    ));
    assert!(matches!(
        err("file:///c?compression=xz&compression=zstd"),
        TargetUrlError::DuplicateParam { .. }
    ));
    assert_eq!(
        err("file:///c?parallel-compression=maybe"),
        TargetUrlError::BadValue {
            url: "file:///c?parallel-compression=maybe".into(),
            param: "parallel-compression",
            value: "maybe".into(),
            expected: "true or false"
        }
    );
    assert!(matches!(
        err("file:///c?write-nar-listing=%zz"),
        TargetUrlError::BadValue { .. }
    ));
    assert!(matches!(
        err("file:///c?compression-level=high"),
        TargetUrlError::BadValue { .. }
    ));
}

#[test]
fn level_ranges_follow_the_final_compression() {
    // Order does not matter: the level is checked against xz's range.
    assert_eq!(
        ok("file:///c?compression-level=9&compression=xz").level(),
        Some(9)
    );
    assert_eq!(
        ok("file:///c?compression=xz&compression-level=0").level(),
        Some(0)
    );
    let e = err("file:///c?compression-level=10&compression=xz");
    assert!(
        matches!(
            e,
            TargetUrlError::LevelOutOfRange {
                compression: "xz",
                level: 10,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("0 to 9"), "{e}");
    assert_eq!(ok("file:///c?compression-level=19").level(), Some(19));
    assert!(matches!(
        err("file:///c?compression-level=22"),
        TargetUrlError::LevelOutOfRange { level: 22, .. }
    ));
    assert!(matches!(
        err("file:///c?compression-level=0"),
        TargetUrlError::LevelOutOfRange { level: 0, .. }
    ));
    assert!(matches!(
        err("file:///c?compression=none&compression-level=3"),
        TargetUrlError::LevelWithoutCompression { .. }
    ));
}

#[test]
fn max_connections_is_a_bounded_count_with_a_default_per_kind() {
    for bad in ["0", "-1", "1025", "99999999999999999999", "many", ""] {
        let url = format!("http://cache.example/?max-connections={bad}");
        match err(&url) {
            TargetUrlError::BadValue {
                param, expected, ..
            } => {
                assert_eq!(param, "max-connections");
                assert!(expected.contains("1 to 1024"), "{expected}");
            }
            TargetUrlError::MalformedParam { .. } if bad.is_empty() => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    let c = TargetConfig::parse("s3://bucket?max-connections=7").unwrap();
    assert_eq!((c.max_connections, c.connections()), (Some(7), 7));
    assert_eq!(c.to_string(), "s3://bucket?max-connections=7");
    let http = TargetConfig::parse("https://cache.example").unwrap();
    assert_eq!(http.connections(), crate::DEFAULT_REMOTE_CONNECTIONS);
    let file = TargetConfig::parse("file:///c").unwrap();
    assert_eq!(file.connections(), crate::DEFAULT_FILE_CONNECTIONS);
}
