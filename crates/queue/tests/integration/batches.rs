//! Claiming and expanding requests in batches, as the expander does during
//! a burst of builds.

use nix_outbox_queue::{JobState, QueueError, RequestState};

use crate::support::{add, queue, strings};

#[test]
fn claim_requests_takes_the_oldest_due_ones_up_to_the_limit() {
    let (_dir, _path, mut q) = queue();
    assert!(q.claim_requests(0, 10).unwrap().is_empty());
    let ids: Vec<i64> = (0..5).map(|i| add(&mut q, &["aaaa-a"], 10 + i)).collect();

    // Only those received by `now`, oldest first.
    let got: Vec<i64> = q
        .claim_requests(12, 10)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, ids[..3]);
    // The limit holds, and every claim counts as an attempt.
    let got = q.claim_requests(100, 2).unwrap();
    assert_eq!(
        got.iter().map(|r| (r.id, r.attempts)).collect::<Vec<_>>(),
        vec![(ids[0], 2), (ids[1], 2)]
    );
    let all = q.claim_requests(100, 100).unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        all.iter().map(|r| r.attempts).collect::<Vec<_>>(),
        vec![3, 3, 2, 1, 1]
    );
    // Deferred and expanded requests are not claimed.
    q.defer_request(ids[0], "store away", 1000).unwrap();
    q.expand_request(ids[1], &strings(&["aaaa-a"]), &strings(&["t"]), 100)
        .unwrap();
    let got: Vec<i64> = q
        .claim_requests(100, 100)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, ids[2..]);
}

#[test]
fn expand_requests_writes_every_request_in_one_go() {
    let (_dir, _path, mut q) = queue();
    let a = add(&mut q, &["aaaa-a"], 1);
    let b = add(&mut q, &["bbbb-b"], 1);
    let targets = strings(&["t1", "t2"]);
    let created = q
        .expand_requests(
            &[
                (a, strings(&["cccc-dep", "aaaa-a"])),
                // The shared dependency is one job per target, kept under
                // the older request.
                (b, strings(&["cccc-dep", "bbbb-b"])),
            ],
            &targets,
            2,
        )
        .unwrap();
    assert_eq!(created, 6);
    for id in [a, b] {
        assert_eq!(
            q.request(id).unwrap().unwrap().state,
            RequestState::Expanded
        );
    }
    let dep = q.job("cccc-dep", "t1").unwrap().unwrap();
    assert_eq!((dep.request_id, dep.state), (a, JobState::Pending));
    // Claimed in request order, references first within each.
    let order: Vec<String> = std::iter::from_fn(|| q.claim_job(3).unwrap())
        .map(|j| format!("{}@{}", j.path, j.target))
        .collect();
    assert_eq!(
        order,
        strings(&[
            "cccc-dep@t1",
            "cccc-dep@t2",
            "aaaa-a@t1",
            "aaaa-a@t2",
            "bbbb-b@t1",
            "bbbb-b@t2"
        ])
    );
}

#[test]
fn expand_requests_is_all_or_nothing() {
    let (_dir, _path, mut q) = queue();
    let a = add(&mut q, &["aaaa-a"], 1);
    let err = q
        .expand_requests(
            &[(a, strings(&["aaaa-a"])), (a + 100, strings(&["bbbb-b"]))],
            &strings(&["t"]),
            2,
        )
        .unwrap_err();
    assert!(
        matches!(err, QueueError::NoSuchRequest(id) if id == a + 100),
        "{err}"
    );
    // The first request's jobs were rolled back with the rest.
    assert_eq!(q.request(a).unwrap().unwrap().state, RequestState::New);
    assert_eq!(q.job("aaaa-a", "t").unwrap(), None);
    assert!(q.jobs().unwrap().is_empty());
}
