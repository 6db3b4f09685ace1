use std::io::{Cursor, Read};

use proptest::prelude::*;

use super::*;

const H1: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";
const H2: &str = "0c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn";

fn sd() -> StoreDir {
    StoreDir::default()
}

fn sp(base: &str) -> StorePath {
    StorePath::from_base_name(base).unwrap()
}

fn sample() -> HookRequest {
    HookRequest {
        drv_path: Some(sp(&format!("{H1}-hello-2.12.drv"))),
        out_paths: vec![
            sp(&format!("{H2}-hello-2.12")),
            sp(&format!("{H1}-hello-man")),
        ],
    }
}

fn frame(body: &str) -> Vec<u8> {
    format!("{HEADER}\n{body}").into_bytes()
}

/// Decodes and returns the error's text, which the tests check names the line.
fn reject(bytes: &[u8]) -> String {
    decode(bytes, &sd()).unwrap_err().to_string()
}

#[test]
fn encodes_the_documented_format() {
    let got = String::from_utf8(sample().encode(&sd())).unwrap();
    let want = format!(
        "nix-outbox-hook 1\ndrv /nix/store/{H1}-hello-2.12.drv\n\
         out /nix/store/{H2}-hello-2.12\nout /nix/store/{H1}-hello-man\nend\n"
    );
    assert_eq!(got, want);
    assert_eq!(sample().encoded_len(&sd()), want.len());
    assert_eq!(decode(want.as_bytes(), &sd()).unwrap(), sample());
}

#[test]
fn drv_only_and_out_only_requests_decode() {
    let drv_only = frame(&format!("drv /nix/store/{H1}-x.drv\nend\n"));
    let r = decode(&drv_only, &sd()).unwrap();
    assert!(r.out_paths.is_empty() && r.drv_path.is_some());
    let out_only = frame(&format!("out /nix/store/{H1}-x\nend\n"));
    assert_eq!(decode(&out_only, &sd()).unwrap().out_paths.len(), 1);
}

#[test]
fn decode_rejections_name_the_line() {
    let out = format!("out /nix/store/{H1}-x\n");
    let drv = format!("drv /nix/store/{H1}-x.drv\n");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"nix-outbox-hook 2\nend\n".to_vec(),
            "line 1: unsupported protocol version \"2\"",
        ),
        (b"hello\nend\n".to_vec(), "line 1: expected the header"),
        (
            frame(&format!("{out}bogus /x\nend\n")),
            "line 3: unknown line kind \"bogus\"",
        ),
        (
            frame(&format!("{out}out\nend\n")),
            "line 3: \"out\" needs exactly one argument",
        ),
        (
            frame(&format!("{out}out \nend\n")),
            "line 3: \"out\" needs exactly one argument",
        ),
        (
            frame(&format!("{out}end now\n")),
            "line 3: \"end\" takes no argument",
        ),
        (
            frame("out /etc/passwd\nend\n"),
            "line 2: \"/etc/passwd\" is not directly inside",
        ),
        (
            frame("out /nix/store/../etc/passwd\nend\n"),
            "line 2: \"/nix/store/../etc/passwd\" is not",
        ),
        (
            frame(&format!("out /nix/store/{H1}-x/bin/sh\nend\n")),
            "line 2: \"/nix/store/",
        ),
        (
            frame(&format!("out /nix/store/{H1}-x/\nend\n")),
            "line 2: path \"/nix/store/",
        ),
        (
            frame(&format!("out /nix/store/{H1}-*\nend\n")),
            "line 2: store path",
        ),
        (
            frame(&format!("drv /nix/store/{H1}-x\nend\n")),
            "line 2: drv path \"/nix/store/",
        ),
        (
            frame(&format!("{drv}{drv}end\n")),
            "line 3: a second drv line",
        ),
        (
            frame(&format!("{out}{drv}end\n")),
            "line 3: the drv line must come before",
        ),
        (frame("end\n"), "line 2: request names no store path"),
        (
            frame(&format!("{out}end\nend\n")),
            "line 4: data after the \"end\" line",
        ),
        (frame(&format!("{out}end\nx")), "line 4: data after"),
        (
            frame(&out),
            "request ends after line 2 without an \"end\" line",
        ),
        (
            frame(&format!("{out}end")),
            "line 3: not terminated by a newline",
        ),
        (
            frame(&format!("{out}\tend\n")),
            "line 3: byte 0x09 is not printable ASCII",
        ),
        (frame(&format!("{out}end\r\n")), "line 3: byte 0x0d"),
        (frame("out /nix/store/\u{e9}\nend\n"), "line 2: byte 0xc3"),
        (b"\xff".to_vec(), "line 1: byte 0xff"),
        (Vec::new(), "empty request"),
    ];
    for (bytes, want) in cases {
        let got = reject(&bytes);
        assert!(
            got.contains(want),
            "{:?}: error {got:?} lacks {want:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[test]
fn decode_enforces_size_and_count_limits() {
    let mut body = String::new();
    for _ in 0..=MAX_OUT_PATHS {
        body.push_str(&format!("out /nix/store/{H1}-x\n"));
    }
    body.push_str("end\n");
    let got = reject(&frame(&body));
    assert!(
        got.contains(&format!("line {}: more than 1024", MAX_OUT_PATHS + 2)),
        "{got}"
    );

    let big = vec![b'a'; MAX_REQUEST_BYTES + 1];
    assert!(reject(&big).contains("limit"));
}

#[test]
fn the_largest_allowed_request_fits() {
    let req = HookRequest {
        drv_path: None,
        out_paths: vec![sp(&format!("{H1}-x")); MAX_OUT_PATHS],
    };
    assert!(req.fits(&sd()));
    assert_eq!(decode(&req.encode(&sd()), &sd()).unwrap(), req);
    assert!(!HookRequest::default().fits(&sd()));
}

#[test]
fn decode_respects_the_store_dir() {
    let other = StoreDir::new("/opt/store").unwrap();
    let bytes = sample().encode(&other);
    assert_eq!(decode(&bytes, &other).unwrap(), sample());
    assert!(reject(&bytes).contains("line 2: \"/opt/store/"));
}

#[test]
fn reply_round_trips_and_rejects() {
    for r in [
        Reply::Ok(0),
        Reply::Ok(u64::MAX),
        Reply::error("disk full: /var"),
    ] {
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
    }
    assert_eq!(Reply::Ok(7).encode(), b"ok 7\n");
    assert_eq!(Reply::error("a\nb").encode(), b"error a b\n");
    let bad: [(&[u8], &str); 9] = [
        (b"ok 7", "not terminated"),
        (b"ok 7\nok 8\n", "data after"),
        (b"ok 07\n", "bad request id \"07\""),
        (b"ok -1\n", "bad request id"),
        (b"ok 18446744073709551616\n", "bad request id"),
        (b"ok\n", "unknown reply \"ok\""),
        (b"error \n", "without a message"),
        (b"error \x1b[31m\n", "byte 0x1b"),
        (b"yes\n", "unknown reply"),
    ];
    for (bytes, want) in bad {
        let got = Reply::decode(bytes).unwrap_err().to_string();
        assert!(got.contains(want), "{bytes:?}: {got:?} lacks {want:?}");
    }
    let long = vec![b'x'; MAX_REPLY_BYTES + 1];
    assert_eq!(Reply::decode(&long), Err(ReplyError::TooLong));
}

#[test]
fn error_text_is_sanitised_to_one_bounded_line() {
    let s = sanitize_error_text(&format!("caf\u{e9}\r\n{}", "y".repeat(5000)));
    assert_eq!(s.len(), MAX_ERROR_TEXT);
    assert!(s.starts_with("caf?  yyy") && s.ends_with("..."));
    assert_eq!(sanitize_error_text(""), "unspecified error");
    let exact = "z".repeat(MAX_ERROR_TEXT);
    assert_eq!(sanitize_error_text(&exact), exact);
    let r = Reply::Error(exact);
    assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
}

/// Hands out at most `step` bytes per read, like a slow socket.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn read_request_frame_stops_at_end_and_at_the_limit() {
    let bytes = sample().encode(&sd());
    for step in [1, 3, 4096] {
        let mut r = Trickle { data: &bytes, step };
        let got = read_request_frame(&mut r, MAX_REQUEST_BYTES).unwrap();
        assert_eq!(got, bytes, "step {step}");
        assert!(r.data.is_empty());
    }
    // A frame followed by a second one: the first read stops at `end`.
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    let mut r = Trickle {
        data: &two,
        step: 1,
    };
    assert_eq!(
        read_request_frame(&mut r, MAX_REQUEST_BYTES).unwrap(),
        bytes
    );
    // EOF before `end`: the partial bytes come back for decode to reject.
    let mut c = Cursor::new(&bytes[..bytes.len() - 2]);
    let partial = read_request_frame(&mut c, MAX_REQUEST_BYTES).unwrap();
    assert!(decode(&partial, &sd()).is_err());
    // A peer that never sends `end` cannot make us read past the limit.
    let mut endless = std::io::repeat(b'a');
    assert!(matches!(
        read_request_frame(&mut endless, 100),
        Err(ReadError::TooLarge(100))
    ));
}

#[test]
fn read_reply_is_bounded() {
    let mut r = Trickle {
        data: b"ok 12\n",
        step: 1,
    };
    assert_eq!(read_reply(&mut r).unwrap(), b"ok 12\n");
    let mut endless = std::io::repeat(b'e');
    assert!(matches!(
        read_reply(&mut endless),
        Err(ReadError::TooLarge(_))
    ));
}

const NIX32: &str = "0123456789abcdfghijklmnpqrsvwxyz";

fn store_path(drv: bool) -> impl Strategy<Value = StorePath> {
    let hash = proptest::collection::vec(0..32usize, 32).prop_map(|ix| {
        ix.iter()
            .map(|&i| NIX32.as_bytes()[i] as char)
            .collect::<String>()
    });
    (hash, "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,60}").prop_map(move |(h, name)| {
        let suffix = if drv { ".drv" } else { "" };
        sp(&format!("{h}-{name}{suffix}"))
    })
}

fn request() -> impl Strategy<Value = HookRequest> {
    (
        proptest::option::of(store_path(true)),
        proptest::collection::vec(store_path(false), 0..40),
    )
        .prop_map(|(drv_path, out_paths)| HookRequest {
            drv_path,
            out_paths,
        })
        .prop_filter("empty requests are not sent", |r| !r.is_empty())
}

proptest! {
    #[test]
    fn requests_round_trip(req in request(), dir in "/[a-z]{1,12}(/[a-z]{1,8}){0,2}") {
        let sd = StoreDir::new(&dir).unwrap();
        prop_assert!(req.fits(&sd));
        let bytes = req.encode(&sd);
        prop_assert_eq!(bytes.len(), req.encoded_len(&sd));
        prop_assert_eq!(decode(&bytes, &sd).unwrap(), req);
        let mut r = Cursor::new(&bytes);
        prop_assert_eq!(read_request_frame(&mut r, MAX_REQUEST_BYTES).unwrap(), bytes);
    }

    #[test]
    fn replies_round_trip(id in any::<u64>(), msg in "\\PC{0,1200}") {
        prop_assert_eq!(Reply::decode(&Reply::Ok(id).encode()).unwrap(), Reply::Ok(id));
        let clean = sanitize_error_text(&msg);
        prop_assert!(clean.len() <= MAX_ERROR_TEXT);
        prop_assert_eq!(Reply::decode(&Reply::error(&msg).encode()).unwrap(), Reply::Error(clean));
    }

    #[test]
    fn decode_never_panics_and_accepts_only_canonical_frames(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok(req) = decode(&bytes, &sd()) {
            prop_assert_eq!(&req.encode(&sd()), &bytes);
        }
        if let Ok(reply) = Reply::decode(&bytes) {
            prop_assert_eq!(&reply.encode(), &bytes);
        }
    }
}
