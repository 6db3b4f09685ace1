//! Closures in upload order: every path after all of its references, so a
//! cache never holds a narinfo whose references are missing.

use std::collections::{BTreeMap, BTreeSet};

use nix_outbox_core::StorePath;
use tokio::task::JoinSet;

use crate::error::StoreError;
use crate::ops::PathInfo;
use crate::pool::StorePool;

#[derive(Debug, Default)]
pub struct Closure {
    /// Topologically ordered: references before referrers; ties broken by
    /// path so the order is deterministic.
    pub paths: Vec<PathInfo>,
    /// Requested (or referenced) paths that are not valid any more —
    /// garbage-collected, or never built. Not an error: the caller decides.
    pub missing: Vec<StorePath>,
}

/// Computes the closure of `roots`, querying path infos level by level,
/// each level spread over the pool's connections.
pub async fn closure(pool: &StorePool, roots: &[StorePath]) -> Result<Closure, StoreError> {
    let mut infos: BTreeMap<StorePath, PathInfo> = BTreeMap::new();
    let mut missing = BTreeSet::new();
    let mut seen: BTreeSet<StorePath> = roots.iter().cloned().collect();
    let mut frontier: Vec<StorePath> = seen.iter().cloned().collect();
    while !frontier.is_empty() {
        let chunk = frontier.len().div_ceil(pool.max_connections());
        let mut tasks = JoinSet::new();
        for part in frontier.chunks(chunk) {
            let (pool, part) = (pool.clone(), part.to_vec());
            tasks.spawn(async move {
                let mut conn = pool.get().await?;
                let mut out = Vec::with_capacity(part.len());
                for p in part {
                    let info = conn.query_path_info(pool.store_dir(), &p).await?;
                    out.push((p, info));
                }
                Ok::<_, StoreError>(out)
            });
        }
        let mut next = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let batch = joined
                .map_err(|e| StoreError::Internal(format!("closure query task failed: {e}")))??;
            for (p, info) in batch {
                match info {
                    None => {
                        missing.insert(p);
                    }
                    Some(info) => {
                        for r in &info.references {
                            if seen.insert(r.clone()) {
                                next.push(r.clone());
                            }
                        }
                        infos.insert(p, info);
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(Closure {
        paths: topo_order(infos),
        missing: missing.into_iter().collect(),
    })
}

/// Depth-first post-order over references (self-references ignored),
/// iterative so a long dependency chain cannot overflow the stack.
fn topo_order(mut infos: BTreeMap<StorePath, PathInfo>) -> Vec<PathInfo> {
    let mut done: BTreeSet<StorePath> = BTreeSet::new();
    let mut order = Vec::with_capacity(infos.len());
    let keys: Vec<StorePath> = infos.keys().cloned().collect();
    for root in keys {
        if done.contains(&root) {
            continue;
        }
        // (path, whether its references have been pushed)
        let mut stack = vec![(root, false)];
        while let Some((p, expanded)) = stack.pop() {
            if done.contains(&p) {
                continue;
            }
            if expanded {
                done.insert(p.clone());
                order.push(p);
                continue;
            }
            stack.push((p.clone(), true));
            if let Some(info) = infos.get(&p) {
                for r in info.references.iter().rev() {
                    // A reference can only be pending on the stack in a
                    // cycle, which the store forbids apart from self-references.
                    if *r != p && !done.contains(r) && infos.contains_key(r) {
                        stack.push((r.clone(), false));
                    }
                }
            }
        }
    }
    order.into_iter().filter_map(|p| infos.remove(&p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix_outbox_core::Sha256Hash;

    fn p(c: char) -> StorePath {
        StorePath::from_base_name(&format!("{}-{c}", c.to_string().repeat(32))).unwrap()
    }

    fn info(c: char, refs: &[char]) -> (StorePath, PathInfo) {
        let info = PathInfo {
            path: p(c),
            deriver: None,
            nar_hash: Sha256Hash::digest(&[]),
            references: refs.iter().map(|&r| p(r)).collect(),
            registration_time: 0,
            nar_size: 8,
            ultimate: false,
            sigs: Default::default(),
            ca: None,
        };
        (p(c), info)
    }

    #[test]
    fn references_come_first() {
        // a -> b -> c, a -> c, d -> d (self), b -> missing x (not in the map)
        let m: BTreeMap<_, _> = [
            info('a', &['b', 'c']),
            info('b', &['c', 'x']),
            info('c', &[]),
            info('d', &['d']),
        ]
        .into();
        let order: Vec<String> = topo_order(m)
            .iter()
            .map(|i| i.path.name().to_owned())
            .collect();
        assert_eq!(order, ["c", "b", "a", "d"]);
    }

    #[test]
    fn long_chain_does_not_overflow() {
        let chars: Vec<char> = "0123456789abcdfghijklmnpqrsvwxyz".chars().collect();
        let mut m = BTreeMap::new();
        let mut prev: Option<StorePath> = None;
        for i in 0..100_000u32 {
            let h: String = (0..32)
                .map(|k| chars[((i >> (k % 17)) as usize + k as usize) % 32])
                .collect();
            let path = StorePath::from_base_name(&format!("{h}-n{i}")).unwrap();
            let (_, mut inf) = info('a', &[]);
            inf.path = path.clone();
            inf.references = prev.iter().cloned().collect();
            m.insert(path.clone(), inf);
            prev = Some(path);
        }
        let n = m.len();
        let order = topo_order(m);
        assert_eq!(order.len(), n);
        assert_eq!(order[0].path.name(), "n0");
    }
}
