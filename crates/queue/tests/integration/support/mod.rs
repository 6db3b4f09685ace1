//! Helpers shared by the integration tests.

use std::path::PathBuf;

use nix_outbox_queue::{Queue, Source};
use tempfile::TempDir;

/// A queue in a fresh temporary directory; keep the `TempDir` alive.
pub fn queue() -> (TempDir, PathBuf, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let queue = Queue::open(&path).unwrap();
    (dir, path, queue)
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Adds a hook request for `outs` (full paths under /nix/store) at `now`.
pub fn add(queue: &mut Queue, outs: &[&str], now: i64) -> i64 {
    let outs: Vec<String> = outs.iter().map(|o| format!("/nix/store/{o}")).collect();
    queue.add_request(Source::Hook, None, &outs, now).unwrap()
}

/// Adds a request and expands it at once into `paths` x `targets`.
pub fn add_expanded(queue: &mut Queue, paths: &[&str], targets: &[&str], now: i64) -> i64 {
    let id = add(queue, paths, now);
    queue
        .expand_request(id, &strings(paths), &strings(targets), now)
        .unwrap();
    id
}
