//! The reader against a database shaped like Nix's (its `ValidPaths` DDL),
//! and the errors for what is not one.

use super::*;

fn fake_state(schema: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("db")).unwrap();
    std::fs::write(dir.path().join("db/schema"), schema).unwrap();
    let conn = Connection::open(dir.path().join("db/db.sqlite")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE ValidPaths (
             id               integer primary key autoincrement not null,
             path             text unique not null,
             hash             text not null,
             registrationTime integer not null,
             deriver          text,
             narSize          integer,
             ultimate         integer,
             sigs             text,
             ca               text);
         INSERT INTO ValidPaths (path, hash, registrationTime, deriver, ultimate) VALUES
           ('/nix/store/aaaa-built', 'h', 100, '/nix/store/dddd-built.drv', 1),
           ('/nix/store/bbbb-substituted', 'h', 200, '/nix/store/eeee-s.drv', NULL),
           ('/nix/store/cccc-added', 'h', 300, NULL, NULL),
           ('/nix/store/ffff-copied', 'h', 400, '', 0);",
    )
    .unwrap();
    dir
}

#[test]
fn rows_come_in_id_order_from_a_cursor_and_since_a_time() {
    let state = fake_state("10\n");
    let db = NixDb::open(state.path()).unwrap();
    assert_eq!(db.last_id().unwrap(), 4);
    let rows = db.rows_after(1, 2).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        [2, 3],
        "{rows:?}"
    );
    let all = db.rows_after(0, 100).unwrap();
    let built: Vec<&str> = all
        .iter()
        .filter(|r| r.built_here())
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(built, ["/nix/store/aaaa-built"]);
    // An empty deriver is no deriver.
    assert_eq!(all[3].deriver, None);
    let since: Vec<i64> = db
        .rows_since(250, 0, 100)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(since, [3, 4]);
    assert_eq!(
        db.row_of("/nix/store/aaaa-built")
            .unwrap()
            .unwrap()
            .deriver
            .as_deref(),
        Some("/nix/store/dddd-built.drv")
    );
    assert_eq!(db.row_of("/nix/store/zzzz-none").unwrap(), None);
}

#[test]
fn an_unknown_schema_or_a_missing_database_is_refused_with_advice() {
    let state = fake_state("11\n");
    let e = NixDb::open(state.path()).err().expect("refused");
    assert!(matches!(e, NixDbError::UnknownSchema { .. }), "{e}");
    assert!(
        e.to_string().contains("\"11\"") && e.to_string().contains("hook"),
        "{e}"
    );

    let empty = tempfile::tempdir().unwrap();
    let e = NixDb::open(empty.path()).err().expect("refused");
    assert!(e.to_string().contains("NIX_STATE_DIR"), "{e}");

    let state = fake_state("10");
    std::fs::remove_file(state.path().join("db/db.sqlite")).unwrap();
    let e = NixDb::open(state.path()).err().expect("refused");
    assert!(matches!(e, NixDbError::Open { .. }), "{e}");
    // Nothing was created in Nix's state directory.
    assert!(!state.path().join("db/db.sqlite").exists());
}

#[test]
fn reading_never_writes() {
    let state = fake_state("10");
    let db = NixDb::open(state.path()).unwrap();
    let e = db.conn.execute("DELETE FROM ValidPaths", []).unwrap_err();
    assert!(e.to_string().contains("readonly"), "{e}");
}
