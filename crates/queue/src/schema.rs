//! Opening the database: connection settings and schema migrations.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::{BUSY_TIMEOUT, Queue, QueueError};

/// The schema version this code writes and understands (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 4;

/// `PRAGMA application_id` of a queue database ("NXOB"), so that a stray
/// SQLite file from another program is recognised instead of being altered.
const APPLICATION_ID: i64 = 0x4e58_4f42;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`. Append only:
/// a released migration never changes, since databases in the field ran it.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the initial schema. STRICT makes SQLite reject a value of the
    // wrong type instead of storing it; the CHECKs keep states and paths
    // within what the code can read back.
    r#"
    CREATE TABLE requests (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at     INTEGER NOT NULL,
        source          TEXT    NOT NULL CHECK (source IN ('hook', 'spool', 'push')),
        drv_path        TEXT             CHECK (drv_path <> ''),
        out_paths       TEXT    NOT NULL,
        state           TEXT    NOT NULL CHECK (state IN ('new', 'expanded')),
        attempts        INTEGER NOT NULL CHECK (attempts >= 0),
        last_error      TEXT,
        next_attempt_at INTEGER NOT NULL,
        CONSTRAINT request_names_a_path CHECK (drv_path IS NOT NULL OR out_paths <> '')
    ) STRICT;

    CREATE INDEX requests_claim ON requests (state, next_attempt_at);

    CREATE TABLE jobs (
        path            TEXT    NOT NULL
            CONSTRAINT path_is_a_basename CHECK (path <> '' AND instr(path, '/') = 0),
        target          TEXT    NOT NULL
            CONSTRAINT target_is_not_empty CHECK (target <> ''),
        state           TEXT    NOT NULL
            CHECK (state IN ('pending', 'in_flight', 'done', 'skipped')),
        attempts        INTEGER NOT NULL CHECK (attempts >= 0),
        last_error      TEXT,
        next_attempt_at INTEGER NOT NULL,
        -- The oldest request known to need the job; `wait` follows it.
        request_id      INTEGER NOT NULL REFERENCES requests (id),
        -- Position within that request's expansion (paths in upload order,
        -- references first): jobs are claimed in (request_id, seq) order.
        seq             INTEGER NOT NULL,
        enqueued_at     INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        PRIMARY KEY (path, target)
    ) STRICT;

    -- next_wakeup: the earliest due time of pending jobs.
    CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
    -- claim_job walks pending jobs in claim order and takes the first that is
    -- due, without touching the table; outstanding() lists unfinished jobs
    -- in that order.
    CREATE INDEX jobs_claim ON jobs (state, request_id, seq, next_attempt_at);
    -- expand_request: where a request's jobs continue (MAX(seq)).
    CREATE INDEX jobs_request ON jobs (request_id, seq);
    "#,
    // 1 -> 2: the known-present cache (src/present.rs). A cache of what the
    // targets hold, not a record of accepted work: losing rows only costs
    // extra existence checks. WITHOUT ROWID because every access is by the
    // primary key (or its target prefix) and the rows are tiny.
    r#"
    CREATE TABLE present (
        target     TEXT    NOT NULL
            CONSTRAINT present_target_is_not_empty CHECK (target <> ''),
        -- What the target is asked about: the daemon stores hash parts.
        path       TEXT    NOT NULL
            CONSTRAINT present_path_is_a_name CHECK (path <> '' AND instr(path, '/') = 0),
        checked_at INTEGER NOT NULL,
        PRIMARY KEY (target, path)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 2 -> 3: paths of uploaded closures that the daemon left out on
    // purpose (src/skipped.rs): served by an upstream cache, or filtered
    // out. For `status` only; `reason` and `detail` come from the code and
    // the configuration, so grouping by them gives bounded labels.
    r#"
    CREATE TABLE skipped (
        target     TEXT    NOT NULL
            CONSTRAINT skipped_target_is_not_empty CHECK (target <> ''),
        -- The hash part, as in `present`, which clears an entry once the
        -- target holds the path after all.
        hash_part  TEXT    NOT NULL
            CONSTRAINT skipped_hash_is_a_name CHECK (hash_part <> '' AND instr(hash_part, '/') = 0),
        path       TEXT    NOT NULL
            CONSTRAINT skipped_path_is_a_basename CHECK (path <> '' AND instr(path, '/') = 0),
        reason     TEXT    NOT NULL
            CHECK (reason IN ('upstream-key', 'upstream-cache', 'excluded', 'not-included')),
        detail     TEXT    NOT NULL,
        skipped_at INTEGER NOT NULL,
        PRIMARY KEY (target, hash_part)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 3 -> 4: requests read from Nix's own database (the `nix-db` source),
    // and the cursor over it, which is committed in the same transaction
    // as the requests it yields. SQLite cannot alter a CHECK; widening one
    // by editing the stored schema is the procedure its documentation
    // gives for changes that leave the stored rows valid ("Making Other
    // Kinds Of Table Schema Changes"); the CREATE TABLE after it changes
    // the schema cookie, so other connections reload the schema, and
    // `Queue::open` reopens its own connection after migrating.
    r#"
    PRAGMA writable_schema = ON;
    UPDATE sqlite_schema
       SET sql = replace(sql, 'CHECK (source IN (''hook'', ''spool'', ''push''))',
                              'CHECK (source IN (''hook'', ''spool'', ''push'', ''nix-db''))')
     WHERE type = 'table' AND name = 'requests';
    PRAGMA writable_schema = OFF;

    CREATE TABLE nix_db_cursor (
        only_row INTEGER PRIMARY KEY CHECK (only_row = 0),
        -- Nix's database the cursor belongs to: another one (a new store,
        -- another NIX_STATE_DIR) starts again at its end.
        db_path  TEXT    NOT NULL CHECK (db_path <> ''),
        -- The highest ValidPaths.id looked at (and queued, if picked).
        last_id  INTEGER NOT NULL CHECK (last_id >= 0),
        moved_at INTEGER NOT NULL
    ) STRICT;
    "#,
];

impl Queue {
    /// Opens (creating if needed) the queue database at `path` and brings its
    /// schema up to [`SCHEMA_VERSION`]. The directory must already exist: it
    /// is the daemon's state directory, whose owner and mode the caller
    /// decides.
    ///
    /// Refuses a database written by a newer nix-outbox (a higher schema
    /// version) rather than misreading it.
    pub fn open(path: &Path) -> Result<Queue, QueueError> {
        let open_err = |source| QueueError::Open {
            path: path.to_owned(),
            source,
        };
        // No SQLITE_OPEN_URI: the path is a file name, never a `file:` URI.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|source| match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                    QueueError::MissingDirectory {
                        path: path.to_owned(),
                        dir: dir.to_owned(),
                    }
                }
                _ => open_err(source),
            })?;
        // Before anything that locks: switching to WAL and migrating both need
        // the lock another handle may hold for a moment.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;

        // WAL: the CLI can read while the daemon writes, and a commit is one
        // append to the log. The mode is stored in the file, so this is a
        // no-op after the first open; SQLite reports the mode it ended up in
        // rather than failing, hence the check.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(QueueError::NoWal {
                path: path.to_owned(),
                mode,
            });
        }
        // FULL: in WAL mode, NORMAL may lose the last commits on power loss.
        // A request is acknowledged to the hook after its commit returns, so
        // that commit must already be on disk.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        // Per connection, off by default; jobs.request_id relies on it.
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;

        let mut queue = Queue {
            conn,
            path: path.to_owned(),
        };
        if queue.migrate()? {
            // A fresh connection parses the migrated schema (a CHECK
            // widened by editing the stored schema is not re-read by the
            // connection that edited it).
            drop(queue);
            return Queue::open(path);
        }
        Ok(queue)
    }

    /// Brings the schema to [`SCHEMA_VERSION`], or refuses the file.
    /// Returns whether it migrated.
    fn migrate(&mut self) -> Result<bool, QueueError> {
        let path = self.path.clone();
        let open_err = |source| QueueError::Open {
            path: path.clone(),
            source,
        };
        // The common case, an up-to-date file, takes no lock: the CLI opening
        // the queue must not wait for the daemon's write transactions.
        if check_version(&self.conn, &path)? == SCHEMA_VERSION {
            return Ok(false);
        }
        // IMMEDIATE, and the version read again inside: when the daemon and
        // the CLI open a new file at the same moment, one migrates and the
        // other then sees the new version instead of creating the tables a
        // second time.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_err)?;
        let version = check_version(&tx, &path)?;
        if version == SCHEMA_VERSION {
            return Ok(false);
        }
        // `check_version` refused anything above SCHEMA_VERSION or negative.
        let done = usize::try_from(version).unwrap_or(0);
        for migration in &MIGRATIONS[done..] {
            tx.execute_batch(migration).map_err(open_err)?;
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(open_err)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
        tx.commit().map_err(open_err)?;
        Ok(true)
    }
}

/// Returns the schema version of the database if this code can use or
/// migrate it, and refuses it otherwise.
fn check_version(conn: &Connection, path: &Path) -> Result<i64, QueueError> {
    let open_err = |source| QueueError::Open {
        path: path.to_owned(),
        source,
    };
    let not_a_queue = |why: String| QueueError::NotAQueue {
        path: path.to_owned(),
        why,
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_err)?;
    let app_id: i64 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(open_err)?;

    if app_id != APPLICATION_ID && app_id != 0 {
        return Err(not_a_queue(format!(
            "its SQLite application id is {app_id:#x}"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(QueueError::TooNew {
            path: path.to_owned(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    if version < 0 {
        return Err(not_a_queue(format!("its schema version is {version}")));
    }
    if version == 0 {
        // A new file is empty; tables without our version mean the file
        // belongs to something else.
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
            .map_err(open_err)?;
        if objects != 0 {
            return Err(not_a_queue(format!(
                "it has {objects} schema objects but no schema version"
            )));
        }
    } else if app_id != APPLICATION_ID {
        return Err(not_a_queue(format!(
            "it has schema version {version} but no nix-outbox application id"
        )));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_cover_every_version() {
        assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    }

    /// A file exactly as the version 1 code left it: the first migration,
    /// its pragmas, and some work in every state.
    fn v1_file(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO requests (received_at, source, drv_path, out_paths, state,
                                   attempts, last_error, next_attempt_at)
             VALUES (10, 'hook', '/nix/store/dddd-d.drv', '', 'expanded', 1, NULL, 10),
                    (11, 'spool', NULL, '/nix/store/eeee-e', 'new', 2, 'store down', 99);
             INSERT INTO jobs (path, target, state, attempts, last_error, next_attempt_at,
                               request_id, seq, enqueued_at, updated_at)
             VALUES ('aaaa-a', 'file:///c', 'done', 1, NULL, 10, 1, 0, 10, 12),
                    ('bbbb-b', 'file:///c', 'pending', 3, 'disk full', 50, 1, 1, 10, 20);",
        )
        .unwrap();
    }

    #[test]
    fn version_1_is_migrated_keeping_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        v1_file(&path);

        let mut q = Queue::open(&path).unwrap();
        let version: i64 = q
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);

        let jobs = q.jobs().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].path, "bbbb-b");
        assert_eq!(jobs[1].attempts, 3);
        assert_eq!(jobs[1].last_error.as_deref(), Some("disk full"));
        let new = q.request(2).unwrap().unwrap();
        assert_eq!(new.out_paths, ["/nix/store/eeee-e"]);
        assert_eq!(new.last_error.as_deref(), Some("store down"));
        // Work goes on where it stopped, and the new table is there.
        assert_eq!(q.claim_job(50).unwrap().unwrap().path, "bbbb-b");
        q.mark_present("file:///c", &["aaaa".into()], 60).unwrap();
        assert_eq!(q.present_entries("file:///c", 60, 10).unwrap().len(), 1);
        // Version 4: the widened source CHECK holds in this very
        // connection (reopened after the migration), and the cursor table
        // is there.
        let ids = q
            .add_nix_db_requests(
                "/nix/var/nix/db/db.sqlite",
                None,
                7,
                &[(None, vec!["/nix/store/ffff-f".into()])],
                70,
            )
            .unwrap();
        let id = *ids[0].as_ref().unwrap();
        assert_eq!(q.request(id).unwrap().unwrap().source, crate::Source::NixDb);
        assert_eq!(q.nix_db_cursor().unwrap().unwrap().last_id, 7);
        // The old CHECK still refuses what it refused.
        assert!(
            q.conn
                .execute(
                    "INSERT INTO requests (received_at, source, out_paths, state, attempts, next_attempt_at)
                     VALUES (1, 'bogus', '/nix/store/gggg-g', 'new', 0, 1)",
                    [],
                )
                .is_err()
        );
        drop(q);

        // Reopening finds the current version and migrates nothing twice.
        let q = Queue::open(&path).unwrap();
        assert_eq!(q.jobs().unwrap().len(), 2);
        assert_eq!(q.present_entries("file:///c", 60, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_failed_migration_leaves_version_1_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        v1_file(&path);
        // Something already named like the new table makes migration 2 fail.
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE present (x)")
            .unwrap();
        let err = Queue::open(&path).err().expect("migration must fail");
        assert!(err.to_string().contains("already exists"), "{err}");

        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, 1, "the transaction rolled back");
        let jobs: i64 = conn
            .query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))
            .unwrap();
        assert_eq!(jobs, 2);
    }

    #[test]
    fn garbage_file_is_reported_as_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let err = Queue::open(&path).err().expect("garbage must not open");
        assert!(
            matches!(&err, QueueError::Open { source, .. }
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase)),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("move it aside"), "{msg}");
    }

    /// Issue 14: an acknowledgement is a promise that the request survives
    /// a power cut, which holds only with WAL and `synchronous=FULL` on the
    /// very connection that commits (SQLite's default in WAL mode is
    /// NORMAL, which may lose the last commits).
    #[test]
    fn the_queue_connection_commits_with_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let q = crate::Queue::open(&dir.path().join("q.sqlite")).unwrap();
        let mode: String = q
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode.to_ascii_lowercase(), "wal");
        // 2 is FULL (0 OFF, 1 NORMAL, 3 EXTRA).
        let sync: i64 = q
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous must be FULL");
        let fk: i64 = q
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }
}
