//! The log-message loop and reply decoders on canned bytes, including
//! truncated and malformed replies.

use super::*;
use crate::ops::read_path_info;

fn msg(parts: &[&dyn Fn(&mut Request)]) -> Vec<u8> {
    let mut r = Request::default();
    for p in parts {
        p(&mut r);
    }
    r.0
}

fn error_frame(text: &str) -> Vec<u8> {
    msg(&[
        &|r| {
            r.u64(STDERR_ERROR);
        },
        &|r| {
            r.bytes(b"Error")
                .u64(0)
                .bytes(b"Error")
                .bytes(text.as_bytes())
                .u64(0)
                .u64(1)
                .u64(0)
                .bytes(b"while doing X");
        },
    ])
}

#[tokio::test]
async fn consumes_logs_and_activities_until_last() {
    let bytes = msg(&[&|r| {
        r.u64(STDERR_NEXT).bytes(b"hello");
        r.u64(STDERR_START_ACTIVITY)
            .u64(7)
            .u64(3)
            .u64(100)
            .bytes(b"copying")
            .u64(2)
            .u64(0)
            .u64(5)
            .u64(1)
            .bytes(b"f")
            .u64(0);
        r.u64(STDERR_RESULT).u64(7).u64(105).u64(1).u64(0).u64(42);
        r.u64(STDERR_STOP_ACTIVITY).u64(7);
        r.u64(STDERR_LAST);
        r.u64(0xdead); // the reply that follows must be left unread
    }]);
    let mut rd = &bytes[..];
    read_stderr(&mut rd, 34).await.unwrap();
    assert_eq!(rd, 0xdeadu64.to_le_bytes());
}

#[tokio::test]
async fn error_becomes_remote_without_ansi_codes() {
    let bytes =
        error_frame("\x1b[31;1merror:\x1b[0m path '\x1b[35;1m/nix/store/x\x1b[0m' is not valid");
    let e = read_stderr(&mut &bytes[..], 34).await.unwrap_err();
    let ProtocolError::Remote(text) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        text,
        "error: path '/nix/store/x' is not valid\n… while doing X"
    );
    assert!(e.connection_usable());
    // Pre-1.26 daemons send a plain message and an exit status.
    let old = msg(&[&|r| {
        r.u64(STDERR_ERROR).bytes(b"old style").u64(1);
    }]);
    assert!(
        matches!(read_stderr(&mut &old[..], 21).await, Err(ProtocolError::Remote(t)) if t == "old style")
    );
}

#[tokio::test]
async fn refuses_read_write_and_unknown_messages() {
    for (code, expect) in [(STDERR_READ, "STDERR_READ"), (STDERR_WRITE, "STDERR_WRITE")] {
        let b = code.to_le_bytes();
        let e = read_stderr(&mut &b[..], 34).await.unwrap_err();
        assert!(e.to_string().contains(expect), "{e}");
        assert!(!e.connection_usable());
    }
    let b = 0x1234u64.to_le_bytes();
    assert!(
        read_stderr(&mut &b[..], 34)
            .await
            .unwrap_err()
            .to_string()
            .contains("unknown message type 0x1234")
    );
    let b = msg(&[&|r| {
        r.u64(STDERR_START_ACTIVITY)
            .u64(1)
            .u64(1)
            .u64(1)
            .bytes(b"t")
            .u64(1)
            .u64(9);
    }]);
    assert!(
        read_stderr(&mut &b[..], 34)
            .await
            .unwrap_err()
            .to_string()
            .contains("unknown field type 9")
    );
}

#[tokio::test]
async fn truncated_replies_are_disconnections_at_every_cut() {
    let mut full = error_frame("boom");
    full.splice(
        0..0,
        msg(&[&|r| {
            r.u64(STDERR_NEXT).bytes(b"log line");
        }]),
    );
    for cut in 0..full.len() {
        let e = read_stderr(&mut &full[..cut], 34).await.unwrap_err();
        assert!(
            matches!(e, ProtocolError::Disconnected { .. }),
            "cut {cut}: {e:?}"
        );
    }
}

fn path_info_reply(valid: u64) -> Vec<u8> {
    msg(&[&|r| {
        r.u64(valid);
        if valid == 1 {
            r.bytes(b"/nix/store/a4fssz26mbrwm2ja8jbxz8hlapi18b05-dep.drv")
                .bytes(b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
                .string_list(&["/nix/store/l1jah9m2y31igs78fbvhh06dxpj2dqib-dep"])
                .u64(1_700_000_000)
                .u64(120)
                .u64(1)
                .string_list(&["k-1:sig"])
                .bytes(b"");
        }
    }])
}

#[tokio::test]
async fn path_info_decodes_and_handles_invalid_and_truncation() {
    let full = path_info_reply(1);
    let info = read_path_info(&mut &full[..], 34).await.unwrap().unwrap();
    assert_eq!(info.nar_size, 120);
    assert_eq!(info.references.len(), 1);
    assert!(info.ultimate);
    assert_eq!(info.sigs, ["k-1:sig"]);
    assert!(
        read_path_info(&mut &path_info_reply(0)[..], 34)
            .await
            .unwrap()
            .is_none()
    );
    for cut in 0..full.len() {
        assert!(
            read_path_info(&mut &full[..cut], 34).await.is_err(),
            "cut {cut}"
        );
    }
    let mut bad = full.clone();
    bad[0] = 2; // a "boolean" that is neither 0 nor 1
    assert!(
        read_path_info(&mut &bad[..], 34)
            .await
            .unwrap_err()
            .to_string()
            .contains("boolean")
    );
}

#[tokio::test]
async fn handshake_against_canned_daemon_replies() {
    // 1.34 (Nix 2.8): version string, no trust flag, no features. 1.38
    // (Nix 2.24–2.34): a feature exchange naming none. 1.38 (Nix 2.35):
    // features, of which we share one.
    let nix_235 = vec![
        "delete-dead-specific-referrers".to_owned(),
        FEATURE_REALISATION_WITH_PATH.to_owned(),
    ];
    for (daemon_minor, with_trust, theirs) in [
        (34u64, false, vec![]),
        (38, true, vec![]),
        (38, true, nix_235),
    ] {
        let (client, mut server) = tokio::io::duplex(4096);
        let (cr, cw) = tokio::io::split(client);
        let offered = theirs.clone();
        let srv = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 8];
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(u64::from_le_bytes(buf), WORKER_MAGIC_1);
            let mut hello = Request::default();
            hello.u64(WORKER_MAGIC_2).u64((1 << 8) | daemon_minor);
            server.write_all(&hello.0).await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(u64::from_le_bytes(buf), CLIENT_VERSION);
            // As the daemon does: our features first, then its own.
            let mut reply = Request::default();
            if daemon_minor >= 38 {
                let ours = wire::read_string_list(&mut server, "features")
                    .await
                    .unwrap();
                assert_eq!(ours, CLIENT_FEATURES);
                reply.string_list(&offered);
            }
            let mut v = [0u8; 16];
            server.read_exact(&mut v).await.unwrap();
            assert_eq!(v, [0u8; 16], "CPU affinity and reserveSpace, both off");
            reply.bytes(b"2.99.0");
            if with_trust {
                reply.u64(1);
            }
            reply.u64(STDERR_LAST);
            server.write_all(&reply.0).await.unwrap();
            server
        });
        let conn = Connection::handshake(Box::new(cr), Box::new(cw), None)
            .await
            .unwrap();
        assert_eq!(conn.protocol_minor(), daemon_minor.min(38));
        assert_eq!(conn.daemon_nix_version(), Some("2.99.0"));
        assert_eq!(conn.trusted, with_trust.then_some(true));
        assert_eq!(
            conn.has_feature(FEATURE_REALISATION_WITH_PATH),
            theirs.len() == 2,
            "{theirs:?}"
        );
        assert!(!conn.has_feature("delete-dead-specific-referrers"));
        assert!(!conn.is_broken());
        drop(srv.await.unwrap());
    }
}

#[tokio::test]
async fn handshake_rejects_wrong_magic_and_old_protocol() {
    for reply in [
        [0x1111u64, 0x122],
        [WORKER_MAGIC_2, 0x109],
        [WORKER_MAGIC_2, 0x222],
    ] {
        let (client, mut server) = tokio::io::duplex(4096);
        let (cr, cw) = tokio::io::split(client);
        let mut r = Request::default();
        r.u64(reply[0]).u64(reply[1]);
        tokio::io::AsyncWriteExt::write_all(&mut server, &r.0)
            .await
            .unwrap();
        let e = Connection::handshake(Box::new(cr), Box::new(cw), None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ProtocolError::Malformed { .. } | ProtocolError::UnsupportedVersion { .. }
            ),
            "{e:?}"
        );
    }
}

#[test]
fn strip_ansi_keeps_text() {
    assert_eq!(strip_ansi("a\x1b[1;31mb\x1b[0mc\x1b"), "abc");
    assert_eq!(strip_ansi("plain ✓"), "plain ✓");
}
