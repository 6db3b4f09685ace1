//! Read-only views: next_wakeup, status, outstanding.

use nix_outbox_queue::{JobState, TargetStatus};

use crate::support::{add, add_expanded, queue, strings};

#[test]
fn next_wakeup_is_the_earliest_due_time_of_waiting_work() {
    let (_dir, _path, mut q) = queue();
    assert_eq!(
        q.next_wakeup().unwrap(),
        None,
        "empty queue: sleep until woken"
    );

    let r = add(&mut q, &["aaaa-a"], 40);
    assert_eq!(q.next_wakeup().unwrap(), Some(40));
    q.defer_request(r, "store unreachable", 90).unwrap();
    assert_eq!(q.next_wakeup().unwrap(), Some(90));

    add_expanded(&mut q, &["bbbb-b", "cccc-c"], &["t"], 50);
    assert_eq!(q.next_wakeup().unwrap(), Some(50));
    q.claim_job(50).unwrap().unwrap();
    q.retry_job("bbbb-b", "t", "x", 70, 51).unwrap();
    // cccc-c is still due at 50: in the past now, meaning "work now".
    assert_eq!(q.next_wakeup().unwrap(), Some(50));
    q.claim_job(51).unwrap().unwrap();
    // In-flight jobs do not wake the daemon; the retry and the request do.
    assert_eq!(q.next_wakeup().unwrap(), Some(70));
    q.finish_job("cccc-c", "t", 52).unwrap();
    q.claim_job(70).unwrap().unwrap();
    q.finish_job("bbbb-b", "t", 71).unwrap();
    assert_eq!(q.next_wakeup().unwrap(), Some(90));
    q.expand_request(r, &[], &strings(&["t"]), 90).unwrap();
    assert_eq!(q.next_wakeup().unwrap(), None);
}

fn counts(t: &TargetStatus) -> [u64; 5] {
    [t.never_tried, t.failing, t.in_flight, t.done, t.skipped]
}

#[test]
fn status_counts_every_state_per_target() {
    let (_dir, _path, mut q) = queue();
    let empty = q.status(5).unwrap();
    assert_eq!(empty.targets, vec![]);
    assert_eq!((empty.new_requests, empty.oldest_new_request_at), (0, None));
    assert_eq!(empty.failing_request, None);

    let paths = ["p0-a", "p1-b", "p2-c", "p3-d", "p4-e", "p5-f"];
    add_expanded(&mut q, &paths, &["s3://one", "file:///two"], 1);
    // s3://one: p0 done, p1 skipped, p2 and p3 failing, p4 in flight, p5 untried.
    let mut settle = |now: i64, f: &mut dyn FnMut(&mut nix_outbox_queue::Queue, &str)| {
        let job = q.claim_job(now).unwrap().unwrap();
        assert_eq!(
            job.target, "s3://one",
            "claims alternate per path, s3 first"
        );
        f(&mut q, &job.path);
        // Leave the same path's file:// job pending (claim and put back).
        let other = q.claim_job(now).unwrap().unwrap();
        assert_eq!(other.target, "file:///two");
        q.retry_job(&other.path, &other.target, "disk full", 1000, now)
            .unwrap();
    };
    settle(2, &mut |q, p| q.finish_job(p, "s3://one", 2).unwrap());
    settle(3, &mut |q, p| q.skip_job(p, "s3://one", "gone", 3).unwrap());
    settle(4, &mut |q, p| {
        q.retry_job(p, "s3://one", "HTTP 403 on p2", 99, 4).unwrap()
    });
    settle(5, &mut |q, p| {
        q.retry_job(p, "s3://one", "HTTP 403 on p3", 99, 5).unwrap()
    });
    let p4 = q.claim_job(6).unwrap().unwrap();
    assert_eq!((p4.path.as_str(), p4.target.as_str()), ("p4-e", "s3://one"));

    let pending_request = add(&mut q, &["zzzz-z"], 7);
    q.defer_request(pending_request, "cannot reach nix-daemon", 100)
        .unwrap();
    add(&mut q, &["yyyy-y"], 8);

    let s = q.status(1).unwrap();
    let names: Vec<&str> = s.targets.iter().map(|t| t.target.as_str()).collect();
    assert_eq!(names, ["file:///two", "s3://one"], "sorted by target");
    let [two, one] = &s.targets[..] else {
        unreachable!()
    };
    assert_eq!(counts(one), [1, 2, 1, 1, 1]);
    assert_eq!(one.outstanding(), 4);
    // file:///two: p0..p3 failed once ("disk full"), p4 and p5 untried.
    assert_eq!(counts(two), [2, 4, 0, 0, 0]);

    // Most recent failure first, limited to what was asked for.
    assert_eq!(one.recent_failures.len(), 1);
    let latest = &one.recent_failures[0];
    assert_eq!(latest.path, "p3-d");
    assert_eq!((latest.attempts, latest.next_attempt_at), (1, 99));
    assert_eq!(latest.last_error.as_deref(), Some("HTTP 403 on p3"));
    assert_eq!(latest.state, JobState::Pending);

    assert_eq!(q.status(10).unwrap().targets[1].recent_failures.len(), 2);
    assert!(q.status(0).unwrap().targets[1].recent_failures.is_empty());

    assert_eq!((s.new_requests, s.oldest_new_request_at), (2, Some(7)));
    let failing = s.failing_request.unwrap();
    assert_eq!(failing.id, pending_request);
    assert_eq!(
        failing.last_error.as_deref(),
        Some("cannot reach nix-daemon")
    );
}

#[test]
fn outstanding_follows_requests_up_to_an_id() {
    let (_dir, _path, mut q) = queue();
    let empty = q.outstanding(0, 10).unwrap();
    assert!(empty.is_empty());

    let r1 = add_expanded(&mut q, &["aaaa-a", "bbbb-b"], &["t"], 1);
    let r2 = add(&mut q, &["cccc-c"], 2);
    let upto = q.max_request_id().unwrap();
    assert_eq!(upto, r2);
    // Accepted after the wait started: not waited for.
    let r3 = add_expanded(&mut q, &["dddd-d"], &["t"], 3);

    let o = q.outstanding(upto, 10).unwrap();
    assert_eq!(o.upto_request_id, upto);
    assert_eq!(
        (
            o.new_requests,
            o.pending_jobs,
            o.failing_jobs,
            o.in_flight_jobs
        ),
        (1, 2, 0, 0)
    );
    assert_eq!(o.requests.iter().map(|r| r.id).collect::<Vec<_>>(), [r2]);
    let paths: Vec<&str> = o.jobs.iter().map(|j| j.path.as_str()).collect();
    assert_eq!(paths, ["aaaa-a", "bbbb-b"]);
    assert!(!o.is_empty());

    // The lists are capped, the counts are not.
    let capped = q.outstanding(upto, 1).unwrap();
    assert_eq!((capped.jobs.len(), capped.pending_jobs), (1, 2));
    assert_eq!(q.outstanding(upto, 0).unwrap().jobs, vec![]);

    // Progress: one in flight, one failing, the request expanded.
    q.claim_job(4).unwrap().unwrap();
    q.retry_job("aaaa-a", "t", "HTTP 500", 9, 4).unwrap();
    q.claim_job(4).unwrap().unwrap();
    q.expand_request(r2, &strings(&["cccc-c"]), &strings(&["t"]), 4)
        .unwrap();
    let o = q.outstanding(upto, 10).unwrap();
    assert_eq!(
        (
            o.new_requests,
            o.pending_jobs,
            o.failing_jobs,
            o.in_flight_jobs
        ),
        (0, 2, 1, 1)
    );
    let states: Vec<(&str, JobState, Option<&str>)> = o
        .jobs
        .iter()
        .map(|j| (j.path.as_str(), j.state, j.last_error.as_deref()))
        .collect();
    assert_eq!(
        states,
        [
            ("aaaa-a", JobState::Pending, Some("HTTP 500")),
            ("bbbb-b", JobState::InFlight, None),
            ("cccc-c", JobState::Pending, None),
        ]
    );

    // Done and skipped both end the wait.
    q.finish_job("bbbb-b", "t", 5).unwrap();
    let a = q.claim_job(9).unwrap().unwrap();
    q.skip_job(&a.path, "t", "gone", 9).unwrap();
    let c = q.claim_job(9).unwrap().unwrap();
    assert_eq!(c.path, "cccc-c");
    q.finish_job("cccc-c", "t", 10).unwrap();
    assert!(q.outstanding(upto, 10).unwrap().is_empty());
    assert!(r1 < r3);
    assert_eq!(q.outstanding(r3, 10).unwrap().pending_jobs, 1, "dddd-d");

    // A skipped job ends the wait, but is reported as such, never as
    // uploaded: counted and listed with its reason, under the same bound.
    let o = q.outstanding(upto, 10).unwrap();
    let skipped: Vec<(&str, Option<&str>)> = o
        .skipped
        .iter()
        .map(|j| (j.path.as_str(), j.last_error.as_deref()))
        .collect();
    assert_eq!(
        (o.skipped_jobs, skipped),
        (1, vec![("aaaa-a", Some("gone"))])
    );
    let d = q.claim_job(10).unwrap().unwrap();
    assert_eq!(d.path, "dddd-d");
    q.skip_job("dddd-d", "t", "excluded", 10).unwrap();
    assert_eq!(q.outstanding(upto, 10).unwrap().skipped_jobs, 1);
    let all = q.outstanding(r3, 1).unwrap();
    assert!(all.is_empty());
    assert_eq!((all.skipped_jobs, all.skipped.len()), (2, 1));
    // Settled jobs are no queue depth: the gauge reads no skipped history.
    assert_eq!(q.depth().unwrap(), vec![]);
}
