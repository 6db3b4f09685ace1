//! `nix-outbox keygen` against the real Nix: its keys work in `nix copy`
//! and `nix store verify`, and Nix's keys work in ours.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use nix_outbox_core::StoreDir;
use nix_outbox_core::keys::{PublicKey, read_public_key_file, read_secret_key_file};
use nix_outbox_core::narinfo::NarInfo;
use nix_outbox_testkit as tk;

fn keygen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nix-outbox"))
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn writes_nix_compatible_files_and_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let (sk, pk) = (d.path().join("k.sk"), d.path().join("k.pk"));
    let out = tk::run(
        keygen()
            .args(["keygen", "host-1", "--secret-key-file"])
            .arg(&sk)
            .arg("--public-key-file")
            .arg(&pk),
    );
    let sk_text = std::fs::read_to_string(&sk).unwrap();
    let pk_text = std::fs::read_to_string(&pk).unwrap();
    assert_eq!(mode(&sk), 0o600);
    assert_eq!(mode(&pk), 0o644);
    // Same shape as nix-store --generate-binary-cache-key: no trailing newline.
    assert!(sk_text.starts_with("host-1:") && !sk_text.ends_with('\n'));
    assert!(pk_text.starts_with("host-1:") && !pk_text.ends_with('\n'));
    assert_eq!(tk::stdout_string(&out).trim(), pk_text);
    assert_eq!(
        read_secret_key_file(&sk).unwrap().key.public_key(),
        PublicKey::parse(&pk_text).unwrap()
    );

    let again = keygen()
        .args(["keygen", "host-2", "--secret-key-file"])
        .arg(&sk)
        .arg("--public-key-file")
        .arg(&pk)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let msg = String::from_utf8_lossy(&again.stderr);
    assert!(
        msg.contains("already exists") && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&sk).unwrap(),
        sk_text,
        "refusal must leave the key untouched"
    );

    tk::run(
        keygen()
            .args(["keygen", "host-2", "--force", "--secret-key-file"])
            .arg(&sk)
            .arg("--public-key-file")
            .arg(&pk),
    );
    assert!(std::fs::read_to_string(&sk).unwrap().starts_with("host-2:"));
    assert_eq!(mode(&sk), 0o600);

    let bad = keygen()
        .args(["keygen", "bad name", "--secret-key-file"])
        .arg(d.path().join("x"))
        .arg("--public-key-file")
        .arg(d.path().join("y"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("key name"));
}

#[test]
fn nix_signs_with_our_key_and_verifies_with_our_public_key() {
    let d = tempfile::tempdir().unwrap();
    let (sk, pk) = (d.path().join("ours.sk"), d.path().join("ours.pk"));
    tk::run(
        keygen()
            .args(["keygen", "ours-1", "--secret-key-file"])
            .arg(&sk)
            .arg("--public-key-file")
            .arg(&pk),
    );
    let paths = tk::nix_build(&tk::sh_derivation(
        "keygen-compat",
        &["out"],
        "echo keygen-compat > $out",
    ));
    let cache = d.path().join("cache");
    tk::nix_copy_to(
        &format!(
            "file://{}?compression=none&secret-key={}",
            cache.display(),
            sk.display()
        ),
        &paths,
    );

    let pk_text = std::fs::read_to_string(&pk).unwrap();
    let ok = tk::nix_store_verify_all(&format!("file://{}", cache.display()), &pk_text);
    assert!(
        ok.status.success(),
        "nix store verify: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Our verifier accepts the signature Nix made with our key.
    let sd = StoreDir::default();
    let path = sd.parse_path(&paths[0]).unwrap();
    let text = std::fs::read(cache.join(format!("{}.narinfo", path.hash_part()))).unwrap();
    let ni = NarInfo::parse(&sd, &text).unwrap();
    let ours = read_public_key_file(&pk).unwrap();
    assert_eq!(ni.valid_signers(&sd, &[ours]), vec!["ours-1"]);

    // And a key that did not sign is refused by Nix too: the check can fail.
    let (_, other_pk) = tk::nix_generate_key(d.path(), "other-1");
    let bad = tk::nix_store_verify_all(
        &format!("file://{}", cache.display()),
        &std::fs::read_to_string(other_pk).unwrap(),
    );
    assert!(
        !bad.status.success(),
        "verify with an unrelated key must fail"
    );
}
