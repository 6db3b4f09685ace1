//! The `nix-db` cursor moves with the requests it yields, in one
//! transaction, and only from where the caller saw it.

use nix_outbox_queue::{QueueError, Source};

use crate::support::*;

const DB: &str = "/nix/var/nix/db/db.sqlite";

#[test]
fn the_cursor_moves_with_its_requests_and_only_from_where_it_was() {
    let (_dir, _path, mut q) = queue();
    assert_eq!(q.nix_db_cursor().unwrap(), None);
    let reqs = vec![
        (
            Some("/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-a.drv".to_owned()),
            strings(&["/nix/store/0c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-a"]),
        ),
        // Refused (no path at all), yet passed: reading it again would
        // refuse it again.
        (None, vec![]),
    ];
    let ids = q.add_nix_db_requests(DB, None, 40, &reqs, 100).unwrap();
    let id = *ids[0].as_ref().unwrap();
    assert!(ids[1].is_err());
    let r = q.request(id).unwrap().unwrap();
    assert_eq!(r.source, Source::NixDb);
    assert_eq!(r.drv_path.as_deref(), reqs[0].0.as_deref());
    let c = q.nix_db_cursor().unwrap().unwrap();
    assert_eq!((c.db_path.as_str(), c.last_id, c.moved_at), (DB, 40, 100));

    // A caller that saw an older cursor (a second daemon) queues nothing.
    let more = vec![(
        None,
        strings(&["/nix/store/1c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-b"]),
    )];
    let e = q
        .add_nix_db_requests(DB, Some((DB, 12)), 50, &more, 101)
        .unwrap_err();
    assert!(
        matches!(
            e,
            QueueError::CursorMoved {
                expected: Some(12),
                found: Some(40)
            }
        ),
        "{e}"
    );
    assert!(q.request(id + 1).unwrap().is_none());
    assert_eq!(q.nix_db_cursor().unwrap().unwrap().last_id, 40);

    // From where it is, it moves (also with nothing to queue).
    q.add_nix_db_requests(DB, Some((DB, 40)), 55, &more, 102)
        .unwrap();
    q.add_nix_db_requests(DB, Some((DB, 55)), 60, &[], 103)
        .unwrap();
    assert_eq!(q.nix_db_cursor().unwrap().unwrap().last_id, 60);
    assert_eq!(q.request(id + 1).unwrap().unwrap().source, Source::NixDb);
    // Another of Nix's databases: the cursor is replaced, from where the
    // old one was.
    let other = "/other/db/db.sqlite";
    assert!(
        q.add_nix_db_requests(other, Some((other, 60)), 3, &[], 104)
            .is_err()
    );
    q.add_nix_db_requests(other, Some((DB, 60)), 3, &[], 104)
        .unwrap();
    let c = q.nix_db_cursor().unwrap().unwrap();
    assert_eq!((c.db_path.as_str(), c.last_id), (other, 3));
}

#[test]
fn recent_requests_are_counted_by_source() {
    let (_dir, _path, mut q) = queue();
    add(
        &mut q,
        &["/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-old"],
        10,
    );
    add(
        &mut q,
        &["/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-a"],
        100,
    );
    let reqs = vec![(
        None,
        strings(&["/nix/store/0c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-b"]),
    )];
    q.add_nix_db_requests(DB, None, 5, &reqs, 100).unwrap();
    q.add_nix_db_requests(DB, Some((DB, 5)), 6, &reqs, 101)
        .unwrap();
    let counts = q.requests_by_source(50).unwrap();
    let hook = counts
        .iter()
        .find(|(s, _)| *s == Source::NixDb)
        .map(|(_, n)| *n);
    assert_eq!(hook, Some(2), "{counts:?}");
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 3, "{counts:?}");
}
