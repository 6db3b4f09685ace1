//! The known-present cache: freshness, batching, forgetting, pruning.

use std::collections::HashSet;

use nix_outbox_queue::{PRESENT_CHUNK, Queue, QueueError};

use crate::support::{queue, strings};

const T: &str = "file:///cache";

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}

fn set(items: &[String]) -> HashSet<String> {
    items.iter().cloned().collect()
}

#[test]
fn entries_are_trusted_for_the_ttl_only() {
    let (_dir, _path, mut q) = queue();
    q.mark_present(T, &strings(&["aaaa", "bbbb"]), 100).unwrap();
    q.mark_present(T, &strings(&["cccc"]), 130).unwrap();
    let all = strings(&["aaaa", "bbbb", "cccc", "dddd"]);

    assert_eq!(
        q.known_present(T, &all, 100, 60).unwrap(),
        set(&strings(&["aaaa", "bbbb"])),
        "cccc is from the future at 100: not trusted"
    );
    assert_eq!(q.known_present(T, &all, 159, 60).unwrap().len(), 3);
    // Age 60 is expired with a TTL of 60; cccc (age 30) is still fresh.
    assert_eq!(
        q.known_present(T, &all, 160, 60).unwrap(),
        set(&strings(&["cccc"]))
    );
    assert!(q.known_present(T, &all, 190, 60).unwrap().is_empty());
    assert!(q.known_present(T, &all, 130, 0).unwrap().is_empty());
    // A huge TTL means forever, without overflowing.
    assert_eq!(q.known_present(T, &all, 200, i64::MAX).unwrap().len(), 3);

    // Checking again refreshes; a late batch with an older time does not
    // make an entry look older.
    q.mark_present(T, &strings(&["aaaa"]), 170).unwrap();
    q.mark_present(T, &strings(&["aaaa"]), 120).unwrap();
    assert_eq!(
        q.known_present(T, &all, 200, 60).unwrap(),
        set(&strings(&["aaaa"]))
    );
    let entries = q.present_entries(T, 200, 60).unwrap();
    assert_eq!(entries, [("aaaa".to_owned(), 170)]);
}

#[test]
fn targets_are_kept_apart() {
    let (_dir, _path, mut q) = queue();
    q.mark_present(T, &strings(&["aaaa"]), 10).unwrap();
    q.mark_present("s3://bucket", &strings(&["bbbb"]), 10)
        .unwrap();
    let both = strings(&["aaaa", "bbbb"]);
    assert_eq!(
        q.known_present(T, &both, 10, 60).unwrap(),
        set(&strings(&["aaaa"]))
    );
    assert_eq!(q.forget_present(T).unwrap(), 1);
    assert!(q.known_present(T, &both, 10, 60).unwrap().is_empty());
    assert_eq!(
        q.known_present("s3://bucket", &both, 10, 60).unwrap(),
        set(&strings(&["bbbb"]))
    );
}

#[test]
fn lookups_span_chunk_boundaries() {
    let (_dir, _path, mut q) = queue();
    let present = names("p", 3 * PRESENT_CHUNK + 17);
    q.mark_present(T, &present, 1000).unwrap();
    // Every size around the chunk boundaries, with absent paths mixed in.
    for n in [
        1,
        PRESENT_CHUNK - 1,
        PRESENT_CHUNK,
        PRESENT_CHUNK + 1,
        2 * PRESENT_CHUNK,
        present.len(),
    ] {
        let mut asked: Vec<String> = present[..n].to_vec();
        asked.extend(names("absent", n / 3 + 1));
        asked.rotate_left(n / 2);
        let found = q.known_present(T, &asked, 1000, 60).unwrap();
        assert_eq!(found, set(&present[..n]), "asking {} paths", asked.len());
    }
    // Duplicates in the question are harmless.
    let dup = vec![present[0].clone(); PRESENT_CHUNK + 3];
    assert_eq!(q.known_present(T, &dup, 1000, 60).unwrap().len(), 1);
    assert!(q.known_present(T, &[], 1000, 60).unwrap().is_empty());
    assert_eq!(q.present_entries(T, 1000, 60).unwrap().len(), present.len());
}

#[test]
fn a_bad_path_records_nothing_of_its_batch() {
    let (_dir, _path, mut q) = queue();
    let batch = strings(&["aaaa", "bb/bb", "cccc"]);
    let err = q.mark_present(T, &batch, 10).unwrap_err();
    assert!(
        matches!(&err, QueueError::InvalidPresent { path, .. } if path == "bb/bb"),
        "{err:?}"
    );
    assert!(err.to_string().contains("nothing from this batch"), "{err}");
    assert!(q.present_entries(T, 10, 60).unwrap().is_empty());
    assert!(q.mark_present("", &strings(&["aaaa"]), 10).is_err());
    assert!(q.mark_present(T, &strings(&[""]), 10).is_err());
    // An empty batch is nothing to do.
    q.mark_present(T, &[], 10).unwrap();
}

#[test]
fn pruning_deletes_what_is_no_longer_fresh() {
    let (_dir, path, mut q) = queue();
    q.mark_present(T, &names("old", 5), 100).unwrap();
    q.mark_present(T, &names("new", 3), 150).unwrap();
    q.mark_present(T, &names("future", 2), 500).unwrap();
    q.mark_present("other", &names("old", 4), 100).unwrap();
    assert_eq!(q.prune_present(T, 200, 60).unwrap(), 7);
    assert_eq!(q.present_entries(T, 200, 60).unwrap().len(), 3);
    // Other targets are left alone, and the deletion is committed.
    let reader = Queue::open(&path).unwrap();
    assert_eq!(reader.present_entries("other", 100, 60).unwrap().len(), 4);
    assert_eq!(reader.present_entries(T, 200, 60).unwrap().len(), 3);
}
