//! Nix's `hashDerivationModulo` (Nix 2.4 to 2.34, `derivations.cc`), the
//! hash that names a content-addressed derivation's outputs in
//! realisation ids: `sha256:<hex>!<output>`.
//!
//! - A fixed-output derivation hashes, per output,
//!   `fixed:out:<method+algo>:<hex hash>:<output path>`, so two `.drv`s
//!   fetching the same content agree whatever else differs.
//! - Any other derivation hashes its own ATerm with every input `.drv`
//!   path replaced by the base16 hash modulo of that input (the hash of
//!   the input's output it uses, grouped and sorted by hash as Nix's
//!   `std::map` does), and, with `mask_outputs` (the realisation id case,
//!   `staticOutputHashes`), its output paths and the environment variables
//!   named after outputs blanked. Inputs are hashed unmasked, as Nix's
//!   `pathDerivationModulo` does. All outputs share that one hash.
//!
//! Newer Nix (after 2.34) keys realisations by `.drv` path instead and
//! gives floating content-addressed derivations no hash modulo; this
//! module follows the `sha256:…!out` scheme those older versions read.
//!
//! Pure: input `.drv`s come from the caller's `load` callback. The walk
//! keeps its stack on the heap and memoizes each input, so deep or
//! diamond-shaped graphs cost one visit per `.drv`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use thiserror::Error;

use super::{Derivation, PREFIX, escape_string, write_list, write_tuple};
use crate::hash::Sha256Hash;
use crate::store_path::{StoreDir, StorePath};

/// Each output's hash modulo, by output name.
pub type OutputHashes = BTreeMap<String, Sha256Hash>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HashModuloError {
    #[error("cannot read input derivation {path}: {detail}")]
    Load { path: String, detail: String },
    #[error("derivation {drv} uses output {output:?} of {input}, which that derivation lacks")]
    MissingOutput {
        drv: String,
        input: String,
        output: String,
    },
    #[error("fixed output {output:?} of {drv} names no output path")]
    FixedWithoutPath { drv: String, output: String },
    #[error("{drv} has impure outputs, which have no hash modulo")]
    Impure { drv: String },
    #[error("input derivations of {drv} form a cycle")]
    Cycle { drv: String },
}

/// The hash modulo of each output of `drv` (whose path, for messages, is
/// `name`). `load` returns an input `.drv` by path.
pub fn hash_derivation_modulo(
    drv: &Derivation,
    name: &str,
    store_dir: &StoreDir,
    mask_outputs: bool,
    mut load: impl FnMut(&StorePath) -> Result<Derivation, String>,
) -> Result<OutputHashes, HashModuloError> {
    let mut memo: HashMap<StorePath, OutputHashes> = HashMap::new();
    // Post-order walk: (path, drv, index of the next input to visit).
    let mut stack: Vec<(StorePath, Derivation, usize)> = Vec::new();
    let mut on_stack: HashSet<StorePath> = HashSet::new();
    for input in &drv.input_drvs {
        let mut next = Some(input.path.clone());
        loop {
            if let Some(path) = next.take()
                && !memo.contains_key(&path)
            {
                if !on_stack.insert(path.clone()) {
                    return Err(HashModuloError::Cycle {
                        drv: store_dir.display(&path),
                    });
                }
                let loaded = load(&path).map_err(|detail| HashModuloError::Load {
                    path: store_dir.display(&path),
                    detail,
                })?;
                stack.push((path, loaded, 0));
            }
            let Some((_, d, i)) = stack.last_mut() else {
                break;
            };
            if let Some(input) = d.input_drvs.get(*i) {
                *i += 1;
                next = Some(input.path.clone());
                continue;
            }
            let (path, d, _) = stack.pop().expect("stack is not empty");
            on_stack.remove(&path);
            let hashes = hash_one(&d, &store_dir.display(&path), store_dir, false, &memo)?;
            memo.insert(path, hashes);
        }
    }
    hash_one(drv, name, store_dir, mask_outputs, &memo)
}

/// The `sha256:<hex>!<output>` realisation id for each output of `drv`.
pub fn drv_output_ids(hashes: &OutputHashes) -> Vec<(String, String)> {
    hashes
        .iter()
        .map(|(o, h)| (o.clone(), format!("sha256:{}!{o}", h.to_hex())))
        .collect()
}

/// One derivation, all of whose inputs are in `memo`.
fn hash_one(
    drv: &Derivation,
    name: &str,
    store_dir: &StoreDir,
    mask_outputs: bool,
    memo: &HashMap<StorePath, OutputHashes>,
) -> Result<OutputHashes, HashModuloError> {
    if drv.outputs.iter().any(|o| o.hash == "impure") {
        return Err(HashModuloError::Impure {
            drv: name.to_owned(),
        });
    }
    let fixed = !drv.outputs.is_empty() && drv.outputs.iter().all(|o| !o.hash.is_empty());
    if fixed {
        let mut out = OutputHashes::new();
        for o in &drv.outputs {
            let path = o
                .path
                .as_ref()
                .ok_or_else(|| HashModuloError::FixedWithoutPath {
                    drv: name.to_owned(),
                    output: o.name.clone(),
                })?;
            let s = format!(
                "fixed:out:{}:{}:{}",
                o.hash_algo,
                o.hash,
                store_dir.display(path)
            );
            out.insert(o.name.clone(), Sha256Hash::digest(s.as_bytes()));
        }
        return Ok(out);
    }
    let mut inputs: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for input in &drv.input_drvs {
        let hashes = memo
            .get(&input.path)
            .expect("inputs are hashed before their users");
        for output in &input.outputs {
            let h = hashes
                .get(output)
                .ok_or_else(|| HashModuloError::MissingOutput {
                    drv: name.to_owned(),
                    input: store_dir.display(&input.path),
                    output: output.clone(),
                })?;
            inputs.entry(h.to_hex()).or_default().insert(output);
        }
    }
    let hash = Sha256Hash::digest(&unparse_modulo(drv, store_dir, mask_outputs, &inputs));
    Ok(drv.outputs.iter().map(|o| (o.name.clone(), hash)).collect())
}

/// `Derivation::unparse(store, maskOutputs, &actualInputs)` of Nix 2.8:
/// the `.drv` with input derivations replaced by `inputs`.
fn unparse_modulo(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask: bool,
    inputs: &BTreeMap<String, BTreeSet<&str>>,
) -> Vec<u8> {
    let mut s = PREFIX.to_vec();
    write_list(&mut s, &drv.outputs, |s, o| {
        let p = match &o.path {
            Some(p) if !mask => store_dir.display(p).into_bytes(),
            _ => Vec::new(),
        };
        write_tuple(
            s,
            &[
                o.name.as_bytes(),
                &p,
                o.hash_algo.as_bytes(),
                o.hash.as_bytes(),
            ],
        );
    });
    s.push(b',');
    let inputs: Vec<_> = inputs.iter().collect();
    write_list(&mut s, &inputs, |s, (hash, outputs)| {
        s.push(b'(');
        escape_string(hash.as_bytes(), s);
        s.push(b',');
        let outputs: Vec<_> = outputs.iter().collect();
        write_list(s, &outputs, |s, o| escape_string(o.as_bytes(), s));
        s.push(b')');
    });
    s.push(b',');
    write_list(&mut s, &drv.input_srcs, |s, p| {
        escape_string(store_dir.display(p).as_bytes(), s)
    });
    s.push(b',');
    escape_string(&drv.platform, &mut s);
    s.push(b',');
    escape_string(&drv.builder, &mut s);
    s.push(b',');
    write_list(&mut s, &drv.args, |s, a| escape_string(a, s));
    s.push(b',');
    write_list(&mut s, &drv.env, |s, (k, v)| {
        let masked = mask
            && drv
                .outputs
                .iter()
                .any(|o| o.name.as_bytes() == k.as_slice());
        let v: &[u8] = if masked { b"" } else { v };
        write_tuple(s, &[k, v]);
    });
    s.push(b')');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derivation::parse_derivation;

    fn sd() -> StoreDir {
        StoreDir::default()
    }

    const FIXED: &str = r#"Derive([("out","/nix/store/7fh3dk9ks2vr9ryh3bk0al0rrdq5hwlh-src","r:sha256","9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")],[],[],"x86_64-linux","builtin:fetchurl",[],[("out","/nix/store/7fh3dk9ks2vr9ryh3bk0al0rrdq5hwlh-src")])"#;

    #[test]
    fn fixed_output_hashes_its_content_hash_and_path() {
        let d = parse_derivation(FIXED.as_bytes(), &sd()).unwrap();
        let h = hash_derivation_modulo(&d, "f.drv", &sd(), true, |_| unreachable!()).unwrap();
        let want = Sha256Hash::digest(
            b"fixed:out:r:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08:/nix/store/7fh3dk9ks2vr9ryh3bk0al0rrdq5hwlh-src",
        );
        assert_eq!(h["out"], want);
    }

    #[test]
    fn inputs_are_replaced_by_their_hash_and_outputs_masked() {
        let input = "/nix/store/5yqqlzx5dqiw5h7qf1xnfinyn2aa1sdl-src.drv";
        let top = format!(
            r#"Derive([("out","","r:sha256","")],[("{input}",["out"])],[],"x86_64-linux","/bin/sh",["-c","x"],[("out","/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9")])"#
        );
        let d = parse_derivation(top.as_bytes(), &sd()).unwrap();
        let fixed = parse_derivation(FIXED.as_bytes(), &sd()).unwrap();
        let fixed_hash = hash_derivation_modulo(&fixed, "f", &sd(), false, |_| unreachable!())
            .unwrap()["out"]
            .to_hex();
        let mut loads = 0;
        let h = hash_derivation_modulo(&d, "top", &sd(), true, |p| {
            loads += 1;
            assert_eq!(sd().display(p), input);
            Ok(fixed.clone())
        })
        .unwrap();
        assert_eq!(loads, 1);
        let expected = format!(
            r#"Derive([("out","","r:sha256","")],[("{fixed_hash}",["out"])],[],"x86_64-linux","/bin/sh",["-c","x"],[("out","")])"#
        );
        assert_eq!(h["out"], Sha256Hash::digest(expected.as_bytes()));
        let ids = drv_output_ids(&h);
        assert_eq!(ids[0].1, format!("sha256:{}!out", h["out"].to_hex()));
    }

    #[test]
    fn load_failures_and_cycles_are_errors() {
        let a = "/nix/store/5yqqlzx5dqiw5h7qf1xnfinyn2aa1sdl-a.drv";
        let text = format!(
            r#"Derive([("out","","r:sha256","")],[("{a}",["out"])],[],"x","/bin/sh",[],[])"#
        );
        let d = parse_derivation(text.as_bytes(), &sd()).unwrap();
        let err = hash_derivation_modulo(&d, "t", &sd(), true, |_| Err("gone".into()));
        assert!(matches!(err, Err(HashModuloError::Load { .. })), "{err:?}");
        // `a` depending on itself: impossible for real store paths, but a
        // loader is not trusted to know that.
        let err = hash_derivation_modulo(&d, "t", &sd(), true, |_| Ok(d.clone()));
        assert!(matches!(err, Err(HashModuloError::Cycle { .. })), "{err:?}");
    }
}
