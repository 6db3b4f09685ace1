//! Jobs: claim order, settling, recovery after a crash, concurrent claimers.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use nix_outbox_queue::{JobState, Queue, QueueError};

use crate::support::{add, add_expanded, queue, strings};

#[test]
fn claim_order_is_oldest_request_first_then_enqueue_order() {
    let (_dir, _path, mut q) = queue();
    let first = add(&mut q, &["x"], 1);
    let second = add(&mut q, &["y"], 1);
    // The newer request is expanded first; its jobs still come second.
    q.expand_request(second, &strings(&["zzzz-z", "yyyy-y"]), &strings(&["t"]), 2)
        .unwrap();
    q.expand_request(
        first,
        &strings(&["cccc-c", "aaaa-a", "bbbb-b"]),
        &strings(&["t"]),
        3,
    )
    .unwrap();

    let mut order = Vec::new();
    while let Some(job) = q.claim_job(10).unwrap() {
        assert_eq!(job.state, JobState::InFlight);
        assert_eq!((job.attempts, job.updated_at), (1, 10));
        order.push(job.path);
    }
    assert_eq!(order, ["cccc-c", "aaaa-a", "bbbb-b", "zzzz-z", "yyyy-y"]);
}

#[test]
fn claim_skips_jobs_that_are_not_due() {
    let (_dir, _path, mut q) = queue();
    add_expanded(&mut q, &["aaaa-a", "bbbb-b"], &["t"], 1);
    assert_eq!(q.claim_job(0).unwrap(), None, "not due before enqueued");
    q.claim_job(1).unwrap().unwrap();
    q.retry_job("aaaa-a", "t", "timeout", 100, 2).unwrap();
    // The backed-off first job lets the second one through.
    assert_eq!(q.claim_job(2).unwrap().unwrap().path, "bbbb-b");
    assert_eq!(q.claim_job(99).unwrap(), None);
    let again = q.claim_job(100).unwrap().unwrap();
    assert_eq!((again.path.as_str(), again.attempts), ("aaaa-a", 2));
    assert_eq!(
        again.last_error.as_deref(),
        Some("timeout"),
        "kept while retrying"
    );
}

#[test]
fn finish_skip_and_retry_set_state_and_error() {
    let (_dir, _path, mut q) = queue();
    add_expanded(&mut q, &["aaaa-a", "bbbb-b", "cccc-c"], &["t"], 1);

    q.claim_job(1).unwrap().unwrap();
    q.retry_job("aaaa-a", "t", "HTTP 500", 20, 2).unwrap();
    let a = q.job("aaaa-a", "t").unwrap().unwrap();
    assert_eq!(a.state, JobState::Pending);
    assert_eq!((a.attempts, a.next_attempt_at, a.updated_at), (1, 20, 2));
    assert_eq!(a.last_error.as_deref(), Some("HTTP 500"));

    q.claim_job(3).unwrap().unwrap();
    q.skip_job("bbbb-b", "t", "garbage-collected before upload", 4)
        .unwrap();
    let b = q.job("bbbb-b", "t").unwrap().unwrap();
    assert_eq!((b.state, b.updated_at), (JobState::Skipped, 4));
    assert_eq!(
        b.last_error.as_deref(),
        Some("garbage-collected before upload")
    );

    q.claim_job(5).unwrap().unwrap();
    q.finish_job("cccc-c", "t", 6).unwrap();
    let c = q.job("cccc-c", "t").unwrap().unwrap();
    assert_eq!(
        (c.state, c.updated_at, c.last_error),
        (JobState::Done, 6, None)
    );

    // A success after failures clears the error.
    let a = q.claim_job(20).unwrap().unwrap();
    assert_eq!(a.path, "aaaa-a");
    q.finish_job("aaaa-a", "t", 21).unwrap();
    assert_eq!(q.job("aaaa-a", "t").unwrap().unwrap().last_error, None);
    assert_eq!(
        q.claim_job(i64::MAX).unwrap(),
        None,
        "done and skipped stay put"
    );
}

#[test]
fn only_in_flight_jobs_can_be_settled() {
    let (_dir, _path, mut q) = queue();
    add_expanded(&mut q, &["aaaa-a"], &["t"], 1);

    let err = q.finish_job("aaaa-a", "t", 2).unwrap_err();
    assert!(
        matches!(
            &err,
            QueueError::JobNotInFlight {
                state: JobState::Pending,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is pending, not in_flight"),
        "{err}"
    );

    q.claim_job(2).unwrap().unwrap();
    q.finish_job("aaaa-a", "t", 3).unwrap();
    let err = q.finish_job("aaaa-a", "t", 4).unwrap_err();
    assert!(
        matches!(
            &err,
            QueueError::JobNotInFlight {
                state: JobState::Done,
                ..
            }
        ),
        "finishing twice is a bug: {err:?}"
    );
    let err = q.retry_job("aaaa-a", "t", "x", 5, 4).unwrap_err();
    assert!(matches!(&err, QueueError::JobNotInFlight { .. }), "{err:?}");

    let err = q.skip_job("nope", "t", "x", 4).unwrap_err();
    assert!(matches!(&err, QueueError::NoSuchJob { .. }), "{err:?}");
    assert!(err.to_string().contains("\"nope\""), "{err}");
    assert_eq!(q.job("aaaa-a", "t").unwrap().unwrap().updated_at, 3);
}

#[test]
fn in_flight_jobs_are_pending_again_after_a_crash_and_recover() {
    let (_dir, path, mut q) = queue();
    add_expanded(&mut q, &["aaaa-a", "bbbb-b", "cccc-c"], &["t"], 1);
    // aaaa-a: failed once, then claimed again; bbbb-b: claimed once;
    // cccc-c: never claimed.
    q.claim_job(1).unwrap().unwrap();
    q.retry_job("aaaa-a", "t", "HTTP 502", 2, 1).unwrap();
    assert_eq!(q.claim_job(2).unwrap().unwrap().path, "aaaa-a");
    assert_eq!(q.claim_job(2).unwrap().unwrap().path, "bbbb-b");

    // The daemon dies: nothing but the handle going away.
    drop(q);
    let mut q = Queue::open(&path).unwrap();
    assert_eq!(q.recover(50).unwrap(), 2);

    let a = q.job("aaaa-a", "t").unwrap().unwrap();
    assert_eq!(
        (a.state, a.attempts, a.updated_at),
        (JobState::Pending, 2, 50)
    );
    assert_eq!(
        a.last_error.as_deref(),
        Some("HTTP 502"),
        "a real error is kept"
    );
    let b = q.job("bbbb-b", "t").unwrap().unwrap();
    assert_eq!((b.state, b.attempts), (JobState::Pending, 1));
    let note = b.last_error.unwrap();
    assert!(note.contains("attempt 1 was interrupted"), "{note}");
    let c = q.job("cccc-c", "t").unwrap().unwrap();
    assert_eq!(
        (c.state, c.attempts, c.last_error),
        (JobState::Pending, 0, None)
    );

    assert_eq!(q.recover(51).unwrap(), 0, "nothing left in flight");
    // They are claimable at once, in the original order.
    let order: Vec<String> = std::iter::from_fn(|| q.claim_job(51).unwrap())
        .map(|j| j.path)
        .collect();
    assert_eq!(order, ["aaaa-a", "bbbb-b", "cccc-c"]);
}

#[test]
fn concurrent_claimers_never_get_the_same_job() {
    const THREADS: usize = 4;
    let (_dir, path, mut q) = queue();
    let paths: Vec<String> = (0..150).map(|i| format!("{i:032}-p")).collect();
    let id = add(&mut q, &["x"], 1);
    let targets = strings(&["a", "b"]);
    assert_eq!(q.expand_request(id, &paths, &targets, 1).unwrap(), 300);
    drop(q);

    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let path = path.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut q = Queue::open(&path).unwrap();
                barrier.wait();
                let mut claimed = Vec::new();
                while let Some(job) = q.claim_job(5).unwrap() {
                    // Settle some jobs, as workers do, so claims interleave
                    // with other writes.
                    if claimed.len() % 2 == 0 {
                        q.finish_job(&job.path, &job.target, 6).unwrap();
                    }
                    claimed.push((job.path, job.target));
                }
                claimed
            })
        })
        .collect();

    let mut seen = HashSet::new();
    let mut total = 0;
    for worker in workers {
        for claim in worker.join().unwrap() {
            total += 1;
            assert!(seen.insert(claim.clone()), "{claim:?} was claimed twice");
        }
    }
    assert_eq!(total, 300);
    let q = Queue::open(&path).unwrap();
    for job in q.jobs().unwrap() {
        assert_eq!(job.attempts, 1, "{job:?}");
        assert!(
            matches!(job.state, JobState::Done | JobState::InFlight),
            "{job:?}"
        );
    }
}

#[test]
fn a_skipped_path_built_again_is_uploaded_after_all() {
    let (_dir, _path, mut q) = queue();
    add_expanded(&mut q, &["aaaa-a", "bbbb-b"], &["t"], 1);
    q.claim_job(1).unwrap().unwrap();
    q.skip_job("aaaa-a", "t", "garbage-collected before upload", 2)
        .unwrap();
    q.claim_job(3).unwrap().unwrap();
    q.finish_job("bbbb-b", "t", 4).unwrap();

    // Both built again by a later build.
    let second = add(&mut q, &["x"], 5);
    let created = q
        .expand_request(second, &strings(&["aaaa-a", "bbbb-b"]), &strings(&["t"]), 6)
        .unwrap();
    assert_eq!(created, 0, "no new rows: the skipped one is revived");
    let a = q.job("aaaa-a", "t").unwrap().unwrap();
    assert_eq!(a.state, JobState::Pending);
    assert_eq!(
        (a.attempts, a.next_attempt_at, a.request_id),
        (0, 6, second)
    );
    assert_eq!(a.last_error, None);
    // The uploaded one stays done.
    assert_eq!(q.job("bbbb-b", "t").unwrap().unwrap().state, JobState::Done);
    let again = q.claim_job(6).unwrap().unwrap();
    assert_eq!(again.path, "aaaa-a");
    assert_eq!(q.claim_job(i64::MAX).unwrap(), None);
}

#[test]
fn retry_now_makes_waiting_jobs_due() {
    let (_dir, _path, mut q) = queue();
    add_expanded(&mut q, &["aaaa-a", "bbbb-b", "cccc-c"], &["t", "u"], 1);
    // Every job fails once and waits an hour.
    while let Some(job) = q.claim_job(2).unwrap() {
        q.retry_job(&job.path, &job.target, "denied", 3600, 2)
            .unwrap();
    }
    assert_eq!(q.claim_job(10).unwrap(), None);

    // One path on one target.
    assert_eq!(
        q.retry_now(Some("t"), &strings(&["bbbb-b"]), 10).unwrap(),
        1
    );
    let job = q.claim_job(10).unwrap().unwrap();
    assert_eq!((job.path.as_str(), job.target.as_str()), ("bbbb-b", "t"));
    assert_eq!(q.claim_job(10).unwrap(), None);
    // One target.
    assert_eq!(q.retry_now(Some("u"), &[], 11).unwrap(), 3);
    // Everything else; the in-flight job and those already due are left.
    assert_eq!(q.retry_now(None, &[], 12).unwrap(), 2);
    let mut due = 0;
    while q.claim_job(12).unwrap().is_some() {
        due += 1;
    }
    assert_eq!(due, 5);
    // The error stays until an attempt succeeds.
    let a = q.job("aaaa-a", "t").unwrap().unwrap();
    assert_eq!(a.last_error.as_deref(), Some("denied"));
}
