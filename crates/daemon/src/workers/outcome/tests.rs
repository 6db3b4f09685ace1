use nix_outbox_upload::{Skip, SkipReason};

use super::*;
use crate::test_target::{denied, disk_full};

fn path(name: &str) -> StorePath {
    StorePath::from_base_name(&format!("{}-{name}", "a".repeat(32))).unwrap()
}

fn attempt<'a>(root: &'a StorePath, result: &'a Result<ClosureReport, UploadError>) -> Attempt<'a> {
    Attempt {
        root,
        attempts: 3,
        result,
        extras_failed: None,
        retry_after: None,
        random: 0x1234_5678_9abc_def0,
    }
}

fn decide_default(a: Attempt<'_>) -> Outcome {
    decide(a, &RetryPolicy::default(), &StoreDir::default())
}

#[test]
fn an_upload_that_went_up_is_done() {
    let root = path("out");
    let ok = Ok(ClosureReport {
        uploaded: 3,
        ..Default::default()
    });
    assert_eq!(decide_default(attempt(&root, &ok)), Outcome::Done);
    let present = Ok(ClosureReport {
        already_present: 1,
        ..Default::default()
    });
    assert_eq!(decide_default(attempt(&root, &present)), Outcome::Done);
}

#[test]
fn a_failure_retries_at_the_policy_delay_with_its_pace() {
    let root = path("out");
    let policy = RetryPolicy::default();
    for (err, failure) in [
        (disk_full("file:///c"), Failure::Transient),
        (denied("file:///c"), Failure::Permanent),
    ] {
        let shown = err.to_string();
        let result = Err(err);
        let mut a = attempt(&root, &result);
        a.retry_after = Some(Duration::from_secs(120));
        let random = a.random;
        let Outcome::Retry {
            delay,
            error,
            failure: got,
        } = decide(a, &policy, &StoreDir::default())
        else {
            panic!("not a retry");
        };
        assert_eq!(got, failure);
        assert_eq!(
            delay,
            policy.delay(3, failure, Some(Duration::from_secs(120)), random)
        );
        assert!(error.contains(&shown), "{error}");
        // A permanent failure says that waiting will not help, and that
        // nothing is lost.
        assert_eq!(
            error.starts_with("needs fixing: ") && error.contains("`nix-outbox retry`"),
            failure == Failure::Permanent,
            "{error}"
        );
        assert_eq!(error.contains("5 min"), failure == Failure::Permanent);
    }
}

#[test]
fn a_root_gone_from_the_store_is_skipped_quietly() {
    let root = path("out");
    let gone = Ok(ClosureReport {
        missing: vec![root.clone()],
        ..Default::default()
    });
    let a = attempt(&root, &gone);
    let Outcome::Skip { reason, notable } = decide_default(a) else {
        panic!("not a skip");
    };
    assert!(reason.contains("garbage-collected") && !notable, "{reason}");
}

#[test]
fn a_root_cut_off_by_a_vanished_reference_is_skipped_loudly_naming_it() {
    let (root, dep) = (path("out"), path("dep"));
    let blocked = Ok(ClosureReport {
        missing: vec![dep.clone()],
        blocked: vec![root.clone()],
        ..Default::default()
    });
    let a = attempt(&root, &blocked);
    let Outcome::Skip { reason, notable } = decide_default(a) else {
        panic!("not a skip");
    };
    assert!(notable);
    assert!(
        reason.contains(&StoreDir::default().display(&dep)),
        "{reason}"
    );
}

#[test]
fn a_filtered_root_is_skipped_with_the_filter_named() {
    let root = path("out");
    let filtered = Ok(ClosureReport {
        skipped: vec![(
            root.clone(),
            Skip {
                reason: SkipReason::Excluded,
                detail: "*-out".into(),
            },
        )],
        ..Default::default()
    });
    let Outcome::Skip { reason, notable } = decide_default(attempt(&root, &filtered)) else {
        panic!("not a skip");
    };
    assert_eq!(reason, "not uploaded: excluded by pattern \"*-out\"");
    assert!(!notable);
    // A skipped reference is not the job's business: its referrer is done.
    let other = Ok(ClosureReport {
        skipped: vec![(
            path("dep"),
            Skip {
                reason: SkipReason::UpstreamKey,
                detail: "k".into(),
            },
        )],
        uploaded: 1,
        ..Default::default()
    });
    let a = attempt(&root, &other);
    assert_eq!(decide_default(a), Outcome::Done);
}

#[test]
fn a_failed_extra_keeps_the_job_pending_with_its_error() {
    let root = path("out");
    let ok = Ok(ClosureReport::default());
    let mut a = attempt(&root, &ok);
    a.extras_failed = Some(("build log: 503".into(), Failure::Transient));
    let Outcome::Retry { error, failure, .. } = decide_default(a) else {
        panic!("not a retry");
    };
    assert_eq!(
        (error.as_str(), failure),
        ("build log: 503", Failure::Transient)
    );
}
