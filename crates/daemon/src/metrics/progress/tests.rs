//! The in-flight counters stay truthful with many NARs of one job going up
//! at once: each NAR counts from `prepare` until it is finished, aborted or
//! dropped, and a path counts as published once its narinfo is written.

use std::io::Write as _;

use nix_outbox_core::Sha256Hash;
use nix_outbox_upload::{Compression, FileTarget, NarDigest, Target as _};

use super::*;

fn digest(size: u64) -> NarDigest {
    NarDigest {
        hash: Sha256Hash([0; 32]),
        size,
    }
}

fn job(in_flight: &InFlight) -> InFlightJob {
    let (mut jobs, _) = in_flight.snapshot(&[]);
    assert_eq!(jobs.len(), 1);
    jobs.remove(0)
}

#[tokio::test]
async fn concurrent_nars_are_counted_while_in_flight_and_paths_once_published() {
    let dir = tempfile::tempdir().unwrap();
    let target = FileTarget::new(dir.path().to_owned());
    target
        .ensure_cache_info(&nix_outbox_core::StoreDir::default())
        .await
        .unwrap();
    let in_flight = InFlight::default();
    let guard = in_flight.start("file:///c", "aaaa-foo", 0);
    let tracked = guard.track(&target);

    let mut a = tracked.begin_nar().await.unwrap();
    let mut b = tracked.begin_nar().await.unwrap();
    let c = tracked.begin_nar().await.unwrap();
    a.prepare(&digest(100), Compression::None).unwrap();
    b.prepare(&digest(50), Compression::None).unwrap();
    a.write_all(b"nar a").unwrap();
    let j = job(&in_flight);
    assert_eq!((j.nars_in_flight, j.in_flight_nar_bytes), (2, 150));
    assert_eq!((j.nars_started, j.written, j.published), (2, 5, 0));

    // Never prepared: never counted, and dropping it changes nothing.
    drop(c);
    a.finish(format!("{}.nar", "0".repeat(52))).await.unwrap();
    assert_eq!(job(&in_flight).nars_in_flight, 1);
    b.abort().await;
    let j = job(&in_flight);
    assert_eq!((j.nars_in_flight, j.in_flight_nar_bytes), (0, 0));

    let hash = "7rjj86a15146cq1d3qy068lml7n8ykzm";
    tracked.put_narinfo(hash, "StorePath: x\n").await.unwrap();
    assert_eq!(job(&in_flight).published, 1);
}
