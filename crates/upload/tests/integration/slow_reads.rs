//! Issue 14: a server that sends a file a few bytes at a time restarted the
//! stall limit with every chunk, so reading a narinfo or a `.ls` never
//! ended. A whole-file read now ends by its deadline, whatever the pace.

use std::time::{Duration, Instant};

use nix_outbox_testkit as tk;
use nix_outbox_upload::{CacheReader, TargetConfig};
use tk::fault_proxy::{Fault, FaultProxy, Plan};

#[test]
fn a_trickling_server_cannot_hold_a_read_past_its_deadline() {
    let web = tk::webdav::WebDavServer::start();
    std::fs::create_dir_all(web.root().join("cache")).unwrap();
    // 16 KiB at 200 bytes/s would take some 80 s, each chunk well within
    // the stall limit.
    std::fs::write(web.root().join("cache/slow.ls"), vec![b' '; 16 * 1024]).unwrap();
    let proxy = FaultProxy::start(&web.url("").trim_end_matches('/').replace("http://", ""));
    proxy.set_plan(Plan::Always(Fault::Throttle { bytes_per_sec: 200 }));
    // The proxy has a runtime of its own; the reader gets another.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(read_through(&proxy));
}

async fn read_through(proxy: &FaultProxy) {
    let cfg = TargetConfig::parse(&proxy.url("cache")).unwrap();
    let reader = CacheReader::open(&cfg).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let e = reader
        .get_within("slow.ls", 1 << 20, until)
        .await
        .expect_err("a read that cannot finish in time must fail");
    // The deadline's error, not a stall: every chunk came in time.
    assert!(e.to_string().contains("too slow"), "{e}");
    // A server at full speed still delivers.
    proxy.set_plan(Plan::Pass);
    let got = reader
        .get_within("slow.ls", 1 << 20, Instant::now() + Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 16 * 1024);
}
