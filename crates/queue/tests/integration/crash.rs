//! A real crash: a child process adds requests, printing each id once
//! `add_request` has returned (the moment the hook would be acknowledged),
//! and is killed with SIGKILL at a random moment. Every printed id must be in
//! the database afterwards.
//!
//! The child is this test binary run again, selecting `crash_child` by name
//! and told what to do through the environment.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix_outbox_queue::{Queue, RequestState, Source};

/// Set in the child's environment to the database path.
const CHILD_DB: &str = "NIX_OUTBOX_QUEUE_CRASH_CHILD_DB";
/// Printed before each acknowledged id, to tell it from the harness's output.
const ACK: &str = "ACK ";

/// The child's work; a no-op in an ordinary test run.
#[test]
fn crash_child() {
    let Some(db) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let mut queue = Queue::open(Path::new(&db)).unwrap();
    let mut stdout = std::io::stdout().lock();
    for i in 0.. {
        let outs = vec![
            format!("/nix/store/{i:032}-out"),
            format!("/nix/store/{i:032}-dev"),
        ];
        let id = queue.add_request(Source::Hook, None, &outs, i).unwrap();
        writeln!(stdout, "{ACK}{id}").unwrap();
        stdout.flush().unwrap();
    }
}

/// A random number below `bound`, without a dependency: std seeds every
/// `RandomState` from the OS.
fn random_below(bound: u64) -> u64 {
    RandomState::new().hash_one(0u8) % bound
}

/// `crash_child`'s name as the test harness knows it: its module path in
/// this binary, which shares the process with other test modules.
fn child_test_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::crash_child")
}

/// Runs a child against `db`, kills it after a random number of
/// acknowledgements plus a random delay, and returns every id it printed.
fn run_and_kill(db: &Path) -> Vec<i64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &child_test_name(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let parse = |line: String| line.strip_prefix(ACK).map(|id| id.parse::<i64>().unwrap());
    let mut acked = Vec::new();

    let kill_after = 1 + random_below(200);
    while (acked.len() as u64) < kill_after {
        let line = lines.next().expect("the child exited on its own").unwrap();
        acked.extend(parse(line));
    }
    // The child keeps committing meanwhile; the kill lands at some point of
    // a later commit: before, during or after its fsync.
    std::thread::sleep(Duration::from_micros(random_below(20_000)));
    child.kill().unwrap(); // SIGKILL on Unix: no destructor, no cleanup.
    child.wait().unwrap();
    // Ids printed before the kill are still in the pipe.
    for line in lines {
        acked.extend(parse(line.unwrap()));
    }
    acked
}

#[test]
fn acknowledged_requests_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite");
    let mut acked = Vec::new();
    for round in 0..5 {
        let ids = run_and_kill(&db);
        assert!(
            !ids.is_empty(),
            "round {round}: the child acknowledged nothing"
        );
        eprintln!(
            "round {round}: {} requests acknowledged before SIGKILL",
            ids.len()
        );
        acked.extend(ids);

        // Reopen as the restarted daemon would, and find every id.
        let queue = Queue::open(&db).unwrap();
        for &id in &acked {
            let request = queue
                .request(id)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged request {id} was lost"));
            assert_eq!(request.state, RequestState::New);
            assert_eq!(request.out_paths.len(), 2);
        }
        // Nothing half-written: every row present is whole, and ids stay
        // unique across crashes (AUTOINCREMENT never reuses one).
        let max = queue.max_request_id().unwrap();
        for id in 1..=max {
            if let Some(request) = queue.request(id).unwrap() {
                assert_eq!(request.out_paths.len(), 2, "{request:?}");
            }
        }
    }
    let unique: HashSet<i64> = acked.iter().copied().collect();
    assert_eq!(unique.len(), acked.len(), "an id was handed out twice");
}
