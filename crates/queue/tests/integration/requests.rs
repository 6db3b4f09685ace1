//! Requests: adding, claiming, expanding into jobs, deferring.

use nix_outbox_queue::{JobState, Queue, QueueError, RequestState, Source};

use crate::support::{add, add_expanded, queue, strings};

#[test]
fn added_request_reads_back_unchanged() {
    let (_dir, _path, mut q) = queue();
    let outs = strings(&["/nix/store/aaaa-hello", "/nix/store/bbbb-hello-man"]);
    let id = q
        .add_request(Source::Hook, Some("/nix/store/cccc-hello.drv"), &outs, 100)
        .unwrap();
    let r = q.request(id).unwrap().unwrap();
    assert_eq!(r.id, id);
    assert_eq!(r.received_at, 100);
    assert_eq!(r.source, Source::Hook);
    assert_eq!(r.drv_path.as_deref(), Some("/nix/store/cccc-hello.drv"));
    assert_eq!(r.out_paths, outs);
    assert_eq!(r.state, RequestState::New);
    assert_eq!(r.attempts, 0);
    assert_eq!(r.last_error, None);
    assert_eq!(r.next_attempt_at, 100);

    // Nix 2.8.0 passes no output paths: a derivation alone is a request.
    let id = q
        .add_request(Source::Spool, Some("/nix/store/dddd-x.drv"), &[], 101)
        .unwrap();
    let r = q.request(id).unwrap().unwrap();
    assert_eq!(r.out_paths, Vec::<String>::new());
    assert_eq!(r.source, Source::Spool);
}

#[test]
fn request_ids_increase_and_max_request_id_follows() {
    let (_dir, _path, mut q) = queue();
    assert_eq!(q.max_request_id().unwrap(), 0);
    let a = add(&mut q, &["aaaa-a"], 1);
    let b = add(&mut q, &["bbbb-b"], 1);
    assert!(b > a);
    assert_eq!(q.max_request_id().unwrap(), b);
}

#[test]
fn invalid_requests_are_refused_with_the_reason() {
    let (_dir, _path, mut q) = queue();
    let err = q.add_request(Source::Push, None, &[], 1).unwrap_err();
    assert!(matches!(err, QueueError::InvalidRequest(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("neither a derivation nor any output path")
    );
    let err = q
        .add_request(Source::Push, None, &strings(&["/nix/store/a b"]), 1)
        .unwrap_err();
    assert!(err.to_string().contains("whitespace"), "{err}");
    assert_eq!(q.max_request_id().unwrap(), 0, "nothing was stored");
}

#[test]
fn acknowledged_request_survives_drop_and_reopen() {
    let (_dir, path, mut q) = queue();
    let id = add(&mut q, &["aaaa-a"], 5);
    drop(q);
    let q = Queue::open(&path).unwrap();
    assert_eq!(
        q.request(id).unwrap().unwrap().out_paths,
        ["/nix/store/aaaa-a"]
    );
}

#[test]
fn claim_request_takes_the_oldest_due_one_and_counts_attempts() {
    let (_dir, _path, mut q) = queue();
    assert_eq!(q.claim_request(0).unwrap(), None);
    let first = add(&mut q, &["aaaa-a"], 10);
    let second = add(&mut q, &["bbbb-b"], 10);

    // Not due before it was received.
    assert_eq!(q.claim_request(9).unwrap(), None);
    let r = q.claim_request(10).unwrap().unwrap();
    assert_eq!((r.id, r.attempts), (first, 1));
    // Still `new`: claimed again until expanded or deferred.
    let r = q.claim_request(10).unwrap().unwrap();
    assert_eq!((r.id, r.attempts), (first, 2));

    // Deferred: the next one comes first until the deferral ends.
    q.defer_request(first, "store unreachable", 50).unwrap();
    let r = q.claim_request(20).unwrap().unwrap();
    assert_eq!(r.id, second);
    q.expand_request(second, &strings(&["bbbb-b"]), &strings(&["t"]), 20)
        .unwrap();
    assert_eq!(q.claim_request(49).unwrap(), None);
    let r = q.claim_request(50).unwrap().unwrap();
    assert_eq!(r.id, first);
    assert_eq!(r.attempts, 3);
    assert_eq!(r.last_error.as_deref(), Some("store unreachable"));
    assert_eq!(r.state, RequestState::New);
}

#[test]
fn defer_refuses_missing_and_expanded_requests() {
    let (_dir, _path, mut q) = queue();
    let err = q.defer_request(42, "x", 1).unwrap_err();
    assert!(matches!(err, QueueError::NoSuchRequest(42)), "{err:?}");
    assert!(err.to_string().contains("no request 42"));
    let id = add_expanded(&mut q, &["aaaa-a"], &["t"], 1);
    let err = q.defer_request(id, "x", 1).unwrap_err();
    assert!(
        matches!(err, QueueError::RequestAlreadyExpanded(i) if i == id),
        "{err:?}"
    );
}

#[test]
fn expand_creates_one_pending_job_per_path_and_target() {
    let (_dir, _path, mut q) = queue();
    let id = add(&mut q, &["aaaa-a", "bbbb-b"], 7);
    let created = q
        .expand_request(
            id,
            &strings(&["aaaa-a", "bbbb-b"]),
            &strings(&["s3://c", "file:///d"]),
            8,
        )
        .unwrap();
    assert_eq!(created, 4);
    assert_eq!(
        q.request(id).unwrap().unwrap().state,
        RequestState::Expanded
    );
    assert_eq!(
        q.claim_request(100).unwrap(),
        None,
        "expanded is never claimed"
    );

    let jobs = q.jobs().unwrap();
    let pairs: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| (j.path.as_str(), j.target.as_str()))
        .collect();
    // Path-major, in the order given: references first stays references first.
    assert_eq!(
        pairs,
        [
            ("aaaa-a", "s3://c"),
            ("aaaa-a", "file:///d"),
            ("bbbb-b", "s3://c"),
            ("bbbb-b", "file:///d")
        ]
    );
    for job in &jobs {
        assert_eq!(job.state, JobState::Pending);
        assert_eq!((job.attempts, job.request_id), (0, id));
        assert_eq!(
            (job.enqueued_at, job.updated_at, job.next_attempt_at),
            (8, 8, 8)
        );
        assert_eq!(job.last_error, None);
    }
}

#[test]
fn expand_leaves_existing_jobs_as_they_are() {
    let (_dir, _path, mut q) = queue();
    let first = add_expanded(&mut q, &["aaaa-a", "bbbb-b"], &["t"], 1);
    let claimed = q.claim_job(1).unwrap().unwrap();
    assert_eq!(claimed.path, "aaaa-a");
    q.retry_job("aaaa-a", "t", "HTTP 503", 30, 2).unwrap();
    let b = q.claim_job(2).unwrap().unwrap();
    q.finish_job(&b.path, "t", 3).unwrap();
    let before = q.jobs().unwrap();

    // A later build produces the same paths plus one more.
    let second = add(&mut q, &["aaaa-a", "bbbb-b", "cccc-c"], 4);
    let created = q
        .expand_request(
            second,
            &strings(&["aaaa-a", "bbbb-b", "cccc-c"]),
            &strings(&["t"]),
            4,
        )
        .unwrap();
    assert_eq!(created, 1);
    let after = q.jobs().unwrap();
    assert_eq!(&after[..2], &before[..], "existing jobs untouched");
    assert_eq!(
        (after[2].path.as_str(), after[2].request_id),
        ("cccc-c", second)
    );
    assert!(first < second);

    // Expanding the same request again creates nothing and changes nothing.
    let created = q
        .expand_request(second, &strings(&["aaaa-a", "cccc-c"]), &strings(&["t"]), 5)
        .unwrap();
    assert_eq!(created, 0);
    assert_eq!(q.jobs().unwrap(), after);
}

#[test]
fn expand_moves_a_job_to_an_older_request_that_needs_it() {
    let (_dir, _path, mut q) = queue();
    // Request `old` is deferred (its store query failed), so the newer one
    // is expanded first and enqueues the path they share.
    let old = add(&mut q, &["aaaa-a"], 1);
    let new = add(&mut q, &["aaaa-a", "bbbb-b"], 2);
    q.defer_request(old, "store unreachable", 10).unwrap();
    q.expand_request(new, &strings(&["bbbb-b", "aaaa-a"]), &strings(&["t"]), 3)
        .unwrap();
    assert_eq!(q.job("aaaa-a", "t").unwrap().unwrap().request_id, new);
    assert_eq!(
        q.expand_request(old, &strings(&["aaaa-a"]), &strings(&["t"]), 10)
            .unwrap(),
        0
    );

    // `wait` for `old` must still see the shared path.
    let job = q.job("aaaa-a", "t").unwrap().unwrap();
    assert_eq!(
        (job.request_id, job.state, job.enqueued_at),
        (old, JobState::Pending, 3)
    );
    let outstanding = q.outstanding(old, 10).unwrap();
    assert_eq!(outstanding.pending_jobs, 1);
    assert_eq!(outstanding.jobs[0].path, "aaaa-a");
    // And it is now claimed first, as the older request's.
    assert_eq!(q.claim_job(10).unwrap().unwrap().path, "aaaa-a");
}

#[test]
fn expand_is_all_or_nothing() {
    let (_dir, _path, mut q) = queue();
    let id = add(&mut q, &["aaaa-a"], 1);
    // The third path violates the jobs table's CHECK (a basename has no '/'),
    // after two jobs were already inserted in the transaction.
    let paths = strings(&["aaaa-a", "bbbb-b", "/nix/store/cccc-c", "dddd-d"]);
    let err = q
        .expand_request(id, &paths, &strings(&["t"]), 2)
        .unwrap_err();
    match &err {
        QueueError::InvalidJob {
            path,
            target,
            reason,
        } => {
            assert_eq!((path.as_str(), target.as_str()), ("/nix/store/cccc-c", "t"));
            assert!(reason.contains("path_is_a_basename"), "{reason}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("nothing from this expansion was queued")
    );
    assert_eq!(q.jobs().unwrap(), vec![]);
    let r = q.request(id).unwrap().unwrap();
    assert_eq!(
        r.state,
        RequestState::New,
        "the request is still to be expanded"
    );

    // An empty target is refused the same way.
    let err = q
        .expand_request(id, &strings(&["aaaa-a"]), &strings(&["t", ""]), 2)
        .unwrap_err();
    assert!(matches!(err, QueueError::InvalidJob { .. }), "{err:?}");
    assert_eq!(q.jobs().unwrap(), vec![]);

    // The handle is still usable and the retry succeeds.
    assert_eq!(
        q.expand_request(id, &strings(&["aaaa-a"]), &strings(&["t"]), 3)
            .unwrap(),
        1
    );
}

#[test]
fn expand_of_an_unknown_request_is_refused() {
    let (_dir, _path, mut q) = queue();
    let err = q
        .expand_request(9, &strings(&["aaaa-a"]), &strings(&["t"]), 1)
        .unwrap_err();
    assert!(matches!(err, QueueError::NoSuchRequest(9)), "{err:?}");
    assert_eq!(q.jobs().unwrap(), vec![]);
}

#[test]
fn expand_with_nothing_to_upload_still_completes_the_request() {
    // All outputs garbage-collected before expansion, say.
    let (_dir, _path, mut q) = queue();
    let id = add(&mut q, &["aaaa-a"], 1);
    assert_eq!(q.expand_request(id, &[], &strings(&["t"]), 2).unwrap(), 0);
    assert_eq!(
        q.request(id).unwrap().unwrap().state,
        RequestState::Expanded
    );
    assert!(q.outstanding(id, 10).unwrap().is_empty());
}

#[test]
fn a_batch_of_requests_is_recorded_in_one_go_and_bad_ones_are_refused_alone() {
    let (_dir, path, mut q) = queue();
    let batch = vec![
        (
            Some("/nix/store/cccc-a.drv".to_owned()),
            strings(&["/nix/store/aaaa-a"]),
        ),
        // Invalid: names nothing.
        (None, Vec::new()),
        (
            None,
            strings(&["/nix/store/bbbb-b", "/nix/store/dddd-b-doc"]),
        ),
        // Invalid: whitespace in a path.
        (None, strings(&["/nix/store/a b"])),
    ];
    let results = q.add_requests(Source::Hook, &batch, 7).unwrap();
    assert_eq!(results.len(), 4);
    let a = *results[0].as_ref().unwrap();
    let b = *results[2].as_ref().unwrap();
    assert!(b > a);
    assert!(matches!(results[1], Err(QueueError::InvalidRequest(_))));
    assert!(
        results[3]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("whitespace"),
        "{:?}",
        results[3]
    );
    // Committed: a new handle on the same file sees both, unchanged.
    drop(q);
    let q = Queue::open(&path).unwrap();
    let ra = q.request(a).unwrap().unwrap();
    assert_eq!(ra.drv_path.as_deref(), Some("/nix/store/cccc-a.drv"));
    assert_eq!(ra.out_paths, batch[0].1);
    assert_eq!(ra.received_at, 7);
    let rb = q.request(b).unwrap().unwrap();
    assert_eq!(rb.out_paths, batch[2].1);
    assert_eq!(rb.source, Source::Hook);
    assert_eq!(q.max_request_id().unwrap(), b, "nothing else was stored");
}

#[test]
fn a_batch_of_only_bad_requests_stores_nothing() {
    let (_dir, _path, mut q) = queue();
    let results = q
        .add_requests(Source::Hook, &[(None, Vec::new())], 1)
        .unwrap();
    assert!(matches!(results[..], [Err(QueueError::InvalidRequest(_))]));
    assert_eq!(q.max_request_id().unwrap(), 0);
}
