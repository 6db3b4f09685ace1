//! Helpers for integration tests that drive the real Nix installed on this
//! machine. Nothing here mocks Nix: when `nix-store` is missing the tests
//! fail loudly (the test command installs it), they never skip.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `cmd`, panicking with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e}. Install Nix with `apt-get install nix-bin` (scripts/test.sh does this).",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout_string(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

/// A `nix` command with the experimental CLI enabled (Nix 2.8 needs it) and
/// no substituters, so nothing waits on cache.nixos.org (unreachable here).
pub fn nix() -> Command {
    let mut c = Command::new("nix");
    c.args(["--extra-experimental-features", "nix-command", "--option", "substituters", ""]);
    c
}

/// `nix-store` with the same isolation from remote substituters.
pub fn nix_store() -> Command {
    let mut c = Command::new("nix-store");
    c.args(["--option", "substituters", ""]);
    c
}

/// Builds the derivations that the Nix expression `expr` evaluates to (an
/// attribute set or list of derivations) and returns all their output paths.
pub fn nix_build(expr: &str) -> Vec<String> {
    let out = run(Command::new("nix-build")
        .args(["--no-out-link", "--option", "substituters", "", "--expr", expr])
        .env_remove("NIX_REMOTE"));
    stdout_string(&out).lines().map(str::to_owned).collect()
}

/// A derivation expression with no nixpkgs: `/bin/sh -c script`, with the
/// given outputs.
pub fn sh_derivation(name: &str, outputs: &[&str], script: &str) -> String {
    let outs: Vec<String> = outputs.iter().map(|o| format!("{o:?}")).collect();
    format!(
        r#"derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";
             outputs = [ {} ]; args = [ "-c" ''export PATH=/usr/bin:/bin; {script}'' ]; }}"#,
        outs.join(" ")
    )
}

/// `nix-store -qR`: the closure of `paths`.
pub fn closure(paths: &[String]) -> Vec<String> {
    let out = run(nix_store().arg("-qR").args(paths));
    stdout_string(&out).lines().map(str::to_owned).collect()
}

/// One `nix-store -q --FLAG path` answer, trimmed.
pub fn query(flag: &str, path: &str) -> String {
    let out = run(nix_store().args(["-q", flag, path]));
    stdout_string(&out).trim().to_owned()
}

/// Generates a key pair with Nix's own generator; returns (secret, public) files.
pub fn nix_generate_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = (dir.join(format!("{name}.sk")), dir.join(format!("{name}.pk")));
    run(Command::new("nix-store").arg("--generate-binary-cache-key").arg(name).arg(&sk).arg(&pk));
    (sk, pk)
}

/// `nix copy --to <url> paths…`.
pub fn nix_copy_to(url: &str, paths: &[impl AsRef<OsStr>]) {
    run(nix().args(["copy", "--to", url]).args(paths));
}

/// `nix store verify --store <url> --trusted-public-keys <keys> --all`;
/// returns the raw output so tests can assert either outcome.
pub fn nix_store_verify_all(store_url: &str, trusted_public_keys: &str) -> Output {
    nix()
        .args(["store", "verify", "--store", store_url, "--trusted-public-keys", trusted_public_keys, "--all"])
        .output()
        .expect("run nix store verify")
}
