//! `nix-outbox verify` against caches filled by `nix-outbox copy` from the
//! host's real Nix, on file:// and on a real S3 server (s3s-fs): a good
//! cache passes (and `nix store verify` agrees), and each kind of damage
//! done to it by hand is pinpointed, with the exit status saying which
//! kind of failure it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix_outbox_testkit as tk;

const BUCKET: &str = "nix-cache";

fn outbox(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nix-outbox"))
        .env_remove("NIX_REMOTE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run nix-outbox")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key made by Nix's own generator, a config signing with it, and a
/// freshly built two-path closure (root → dep).
struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
    public_key: String,
    root: String,
    dep: String,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (config, pk) = crate::support::key_and_config(d, "verify-test-1");
        let n = tk::nonce();
        let dep = tk::sh_derivation(
            &format!("verify-{tag}-dep-{n}"),
            &["out"],
            "echo dep > $out",
        );
        let root = tk::sh_derivation(
            &format!("verify-{tag}-root-{n}"),
            &["out"],
            "echo ${dep} > $out; echo root >> $out",
        );
        let root = tk::nix_build(&format!("let dep = {dep}; in {root}")).remove(0);
        let dep = tk::query("--references", &root);
        assert!(
            dep.starts_with("/nix/store/") && !dep.contains('\n'),
            "{dep}"
        );
        Self {
            public_key: std::fs::read_to_string(pk).unwrap().trim().to_owned(),
            dir,
            config,
            root,
            dep,
        }
    }

    fn copy_to(&self, url: &str, env: &[(&str, &str)]) {
        let config = self.config.to_str().unwrap();
        let out = outbox(&["copy", "--config", config, "--to", url, &self.root], env);
        assert!(out.status.success(), "{}", tk::describe(&out));
    }

    fn verify(&self, cache: &str, rest: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args = vec!["verify", "--cache", cache, "--trusted-public-keys"];
        args.push(&self.public_key);
        args.extend_from_slice(rest);
        outbox(&args, env)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for p in [&self.root, &self.dep] {
            let _ = tk::nix_store()
                .env_remove("NIX_REMOTE")
                .args(["--delete", p])
                .output();
        }
    }
}

fn hash_of(path: &str) -> &str {
    &Path::new(path).file_name().unwrap().to_str().unwrap()[..32]
}

/// The NAR file a narinfo in `cache` points at.
fn nar_file(cache: &Path, path: &str) -> PathBuf {
    let narinfo =
        std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(path)))).unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    cache.join(url)
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", tk::describe(out));
}

/// Truncates `file` to half its size; returns the original bytes.
fn truncate_half(file: &Path) -> Vec<u8> {
    let bytes = std::fs::read(file).unwrap();
    std::fs::write(file, &bytes[..bytes.len() / 2]).unwrap();
    bytes
}

#[test]
fn file_cache_good_then_damaged() {
    let f = Fixture::new("file");
    let cache = f.dir.path().join("cache");
    // xz here, zstd on S3 below: both decompressors run.
    f.copy_to(&format!("file://{}?compression=xz", cache.display()), &[]);
    let url = format!("file://{}", cache.display());

    let all = f.verify(&url, &["--all"], &[]);
    assert_exit(&all, 0);
    assert!(
        stdout(&all).ends_with("2 path(s) checked, 0 problem(s)\n"),
        "{}",
        tk::describe(&all)
    );
    let nix = tk::nix_store_verify_all(&url, &f.public_key);
    assert!(nix.status.success(), "nix agrees: {}", tk::describe(&nix));
    // A path, in any spelling, brings its closure.
    let one = f.verify(&url, &[hash_of(&f.root), "--json"], &[]);
    assert_exit(&one, 0);
    let json: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(json["checked"], 2, "{json}");
    assert_eq!(json["problems"], serde_json::json!([]), "{json}");

    // (5) A key that did not sign the cache.
    let (_, other_pk) = tk::nix_generate_key(f.dir.path(), "someone-else-1");
    let other = std::fs::read_to_string(other_pk).unwrap();
    let wrong = outbox(
        &[
            "verify",
            "--cache",
            &url,
            "--trusted-public-keys",
            other.trim(),
            &f.root,
        ],
        &[],
    );
    assert_exit(&wrong, 1);
    let out = stdout(&wrong);
    for p in [&f.root, &f.dep] {
        assert!(
            out.contains(&format!("{p}: signed only by verify-test-1, none of the --trusted-public-keys (someone-else-1)")),
            "{}",
            tk::describe(&wrong)
        );
    }
    assert!(
        out.ends_with("2 path(s) checked, 2 problem(s)\n"),
        "{}",
        tk::describe(&wrong)
    );

    // (2) A narinfo whose NarSize was changed after signing.
    let root_narinfo = cache.join(format!("{}.narinfo", hash_of(&f.root)));
    let original = std::fs::read_to_string(&root_narinfo).unwrap();
    let size: u64 = original
        .lines()
        .find_map(|l| l.strip_prefix("NarSize: "))
        .unwrap()
        .parse()
        .unwrap();
    let tampered = original.replace(
        &format!("NarSize: {size}\n"),
        &format!("NarSize: {}\n", size + 8),
    );
    std::fs::write(&root_narinfo, tampered).unwrap();
    let bad = f.verify(&url, &["--all"], &[]);
    assert_exit(&bad, 1);
    let out = stdout(&bad);
    assert!(
        out.contains(&format!(
            "{}: the signature by verify-test-1 does not verify",
            f.root
        )),
        "{}",
        tk::describe(&bad)
    );
    assert!(
        out.contains(&format!(
            "{}: the NAR is {size} bytes once decompressed, but NarSize says {}",
            f.root,
            size + 8
        )),
        "{}",
        tk::describe(&bad)
    );
    assert!(
        !out.contains(&format!("{}:", f.dep)),
        "dep is fine: {}",
        tk::describe(&bad)
    );
    let nix = tk::nix_store_verify_all(&url, &f.public_key);
    assert!(!nix.status.success(), "nix agrees: {}", tk::describe(&nix));
    std::fs::write(&root_narinfo, &original).unwrap();

    // (3) A truncated NAR file.
    let nar = nar_file(&cache, &f.dep);
    let bytes = truncate_half(&nar);
    let bad = f.verify(&url, &[&f.root], &[]);
    assert_exit(&bad, 1);
    let want = format!(
        "{}: NAR file truncated: {} of {} bytes (FileSize)",
        f.dep,
        bytes.len() / 2,
        bytes.len()
    );
    assert!(
        stdout(&bad).contains(&want),
        "{want}\n{}",
        tk::describe(&bad)
    );
    assert!(
        stdout(&bad).ends_with("2 path(s) checked, 1 problem(s)\n"),
        "{}",
        tk::describe(&bad)
    );
    let nix = tk::nix_store_verify_all(&url, &f.public_key);
    assert!(!nix.status.success(), "nix agrees: {}", tk::describe(&nix));
    std::fs::write(&nar, &bytes).unwrap();

    // (4) A reference without its narinfo.
    let upstream = f.dir.path().join("upstream");
    let upstream_url = format!("file://{}", upstream.display());
    f.copy_to(&upstream_url, &[]);
    let empty = f.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let empty_url = format!("file://{}", empty.display());
    let dep_narinfo = cache.join(format!("{}.narinfo", hash_of(&f.dep)));
    let dep_text = std::fs::read(&dep_narinfo).unwrap();
    std::fs::remove_file(&dep_narinfo).unwrap();
    for args in [vec!["--all"], vec![f.root.as_str()]] {
        let bad = f.verify(&url, &args, &[]);
        assert_exit(&bad, 1);
        let want = format!(
            "{}: references {}, which has no narinfo in the cache",
            f.root, f.dep
        );
        assert!(
            stdout(&bad).contains(&want),
            "{args:?}: {}",
            tk::describe(&bad)
        );
        assert!(
            stdout(&bad).contains("--upstream URL"),
            "{}",
            tk::describe(&bad)
        );
        // Left to an upstream cache on purpose: a note, not a problem.
        let mut up = args.clone();
        up.extend(["--upstream", &empty_url, "--upstream", &upstream_url]);
        let ok = f.verify(&url, &up, &[]);
        assert_exit(&ok, 0);
        let want = format!("note: {} is not in the cache but in {upstream_url}", f.dep);
        assert!(stdout(&ok).contains(&want), "{}", tk::describe(&ok));
        // Not there either: still a problem.
        let mut up = args.clone();
        up.extend(["--upstream", &empty_url]);
        assert_exit(&f.verify(&url, &up, &[]), 1);
    }

    // (6) A narinfo that is a symbolic link is not followed (it could
    // point anywhere, /etc/shadow included): an error, not its contents.
    let elsewhere = f.dir.path().join("elsewhere.narinfo");
    std::fs::write(&elsewhere, "secret: do not print\n").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dep_narinfo).unwrap();
    let bad = f.verify(&url, &[f.root.as_str()], &[]);
    assert_exit(&bad, 2);
    assert!(
        stdout(&bad).contains("is a symbolic link"),
        "{}",
        tk::describe(&bad)
    );
    assert!(
        !tk::describe(&bad).contains("do not print"),
        "{}",
        tk::describe(&bad)
    );
    std::fs::remove_file(&dep_narinfo).unwrap();
    std::fs::write(&dep_narinfo, dep_text).unwrap();
    assert_exit(&f.verify(&url, &["--all"], &[]), 0);

    // Exit status 2: the cache cannot be read, or the command line is wrong.
    let gone = f.verify(&format!("file://{}/nope", cache.display()), &["--all"], &[]);
    assert_exit(&gone, 2);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("does not exist"),
        "{}",
        tk::describe(&gone)
    );
    let http = f.verify("http://127.0.0.1:1/cache", &["--all"], &[]);
    assert_exit(&http, 2);
    assert!(
        String::from_utf8_lossy(&http.stderr).contains("HTTP caches cannot be"),
        "{}",
        tk::describe(&http)
    );
    let bad_key = outbox(
        &[
            "verify",
            "--cache",
            &url,
            "--trusted-public-keys",
            "k:bad",
            "--all",
        ],
        &[],
    );
    assert_exit(&bad_key, 2);
}

#[test]
fn s3_cache_good_then_truncated() {
    let f = Fixture::new("s3");
    let s3 = tk::s3::S3Server::start(BUCKET);
    let url = format!(
        "s3://{BUCKET}?endpoint={}&scheme=http&region=us-east-1",
        s3.endpoint()
    );
    let creds = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
    ];
    f.copy_to(&format!("{url}&compression=zstd"), &creds);

    let good = f.verify(&url, &["--all"], &creds);
    assert_exit(&good, 0);
    assert!(
        stdout(&good).ends_with("2 path(s) checked, 0 problem(s)\n"),
        "{}",
        tk::describe(&good)
    );
    // Nix 2.8 cannot open s3://; the bucket's directory is the same cache.
    let bucket = s3.bucket_dir();
    let nix = tk::nix_store_verify_all(&format!("file://{}", bucket.display()), &f.public_key);
    assert!(nix.status.success(), "nix agrees: {}", tk::describe(&nix));

    let nar = nar_file(&bucket, &f.root);
    let bytes = truncate_half(&nar);
    let bad = f.verify(&url, &[&f.root], &creds);
    assert_exit(&bad, 1);
    let want = format!(
        "{}: NAR file truncated: {} of {} bytes (FileSize)",
        f.root,
        bytes.len() / 2,
        bytes.len()
    );
    assert!(
        stdout(&bad).contains(&want),
        "{want}\n{}",
        tk::describe(&bad)
    );

    // Rejected credentials: the cache cannot be read at all.
    let wrong = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ];
    let denied = f.verify(&url, &["--all"], &wrong);
    assert_exit(&denied, 2);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("cannot read the cache"),
        "{}",
        tk::describe(&denied)
    );
}
