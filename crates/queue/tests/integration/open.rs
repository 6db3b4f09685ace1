//! Opening: settings, schema versions, refusals, several handles at once.

use std::time::{Duration, Instant};

use nix_outbox_queue::{Queue, QueueError, SCHEMA_VERSION};
use rusqlite::Connection;

use crate::support::{add, add_expanded, queue};

#[test]
fn new_database_is_wal_and_versioned() {
    let (_dir, path, q) = queue();
    drop(q);
    let raw = Connection::open(&path).unwrap();
    let mode: String = raw
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let app: i64 = raw
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_ne!(app, 0);
    // Reopening an up-to-date database changes nothing.
    let q = Queue::open(&path).unwrap();
    assert_eq!(q.path(), path);
    assert_eq!(q.max_request_id().unwrap(), 0);
}

#[test]
fn newer_schema_is_refused_and_left_alone() {
    let (_dir, path, mut q) = queue();
    let id = add(&mut q, &["aaaa-a"], 1);
    drop(q);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();

    let err = Queue::open(&path)
        .err()
        .expect("a newer schema must be refused");
    assert!(
        matches!(err, QueueError::TooNew { found, known, .. }
            if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("created by a newer nix-outbox; upgrade"),
        "{msg}"
    );

    // Downgrading the version by hand (what a newer release would never do)
    // shows the data was not touched by the refusal.
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION)
        .unwrap();
    assert!(Queue::open(&path).unwrap().request(id).unwrap().is_some());
}

#[test]
fn missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-state-dir").join("queue.sqlite");
    let err = Queue::open(&path).err().expect("must fail");
    assert!(
        matches!(err, QueueError::MissingDirectory { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("create the state directory first"), "{msg}");
    assert!(
        !path.parent().unwrap().exists(),
        "open must not create directories"
    );
}

#[test]
fn other_sqlite_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();

    let tables = dir.path().join("tables.sqlite");
    Connection::open(&tables)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let err = Queue::open(&tables).err().expect("must refuse");
    assert!(matches!(err, QueueError::NotAQueue { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not a nix-outbox queue database"),
        "{err}"
    );
    // Untouched: still the other program's single table.
    let count: i64 = Connection::open(&tables)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);

    let other_app = dir.path().join("app.sqlite");
    Connection::open(&other_app)
        .unwrap()
        .pragma_update(None, "application_id", 1234)
        .unwrap();
    let err = Queue::open(&other_app).err().expect("must refuse");
    assert!(err.to_string().contains("application id is 0x4d2"), "{err}");
}

#[test]
fn handles_opening_a_new_file_together_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut q = Queue::open(&path).unwrap();
                add(&mut q, &["aaaa-a"], i)
            })
        })
        .collect();
    let mut ids: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4]);
}

#[test]
fn readers_are_not_blocked_by_a_writer() {
    let (_dir, path, mut q) = queue();
    add_expanded(&mut q, &["aaaa-a"], &["t"], 1);
    // Another handle (the daemon) in the middle of a write transaction.
    let raw = Connection::open(&path).unwrap();
    raw.execute_batch("BEGIN IMMEDIATE; UPDATE jobs SET state = 'in_flight';")
        .unwrap();

    let reader = Queue::open(&path).unwrap();
    let started = Instant::now();
    let status = reader.status(5).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        status.targets[0].never_tried, 1,
        "sees the last commit only"
    );
    assert_eq!(reader.outstanding(1, 5).unwrap().pending_jobs, 1);
    raw.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn writers_wait_for_each_other_instead_of_failing() {
    let (_dir, path, mut q) = queue();
    let raw = Connection::open(&path).unwrap();
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        raw.execute_batch("COMMIT").unwrap();
    });
    let started = Instant::now();
    let id = add(&mut q, &["aaaa-a"], 1);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it waited for the lock"
    );
    assert_eq!(id, 1);
    holder.join().unwrap();
}
