//! Fixtures are real Nix 2.8 output; see tests/data/drv/README.md.

use proptest::prelude::*;

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../tests/data/drv/", $name, ".drv")).as_slice()
    };
}

const FIXTURES: [&[u8]; 6] = [
    fixture!("multi"),
    fixture!("dep"),
    fixture!("with-deps"),
    fixture!("fixed"),
    fixture!("flat"),
    fixture!("floating"),
];

fn parse(b: &[u8]) -> Result<Derivation, DrvError> {
    parse_derivation(b, &StoreDir::default())
}

fn sp(s: &str) -> StorePath {
    StoreDir::default().parse_path(s).unwrap()
}

/// (name, path or "", hash_algo, hash) for compact expectations.
fn outs(b: &[u8]) -> Vec<(String, String, String, String)> {
    let sd = StoreDir::default();
    let o = parse_outputs(b, &sd).unwrap();
    o.into_iter()
        .map(|o| {
            (
                o.name,
                o.path.map(|p| sd.display(&p)).unwrap_or_default(),
                o.hash_algo,
                o.hash,
            )
        })
        .collect()
}

fn o(name: &str, path: &str, algo: &str, hash: &str) -> (String, String, String, String) {
    (name.into(), path.into(), algo.into(), hash.into())
}

#[test]
fn outputs_match_nix_store_query() {
    // Paths as printed by `nix-store -q --outputs` for each fixture.
    assert_eq!(
        outs(fixture!("multi")),
        [
            o(
                "dev",
                "/nix/store/c0mb2wz147irhjy64f2vvw4jiqrbylj2-multi-dev",
                "",
                ""
            ),
            o(
                "doc",
                "/nix/store/0pq8mil7cqmbg95wg6wc81z150r8m2xp-multi-doc",
                "",
                ""
            ),
            o(
                "out",
                "/nix/store/05mhmgmwxg4n9rrcllwi9ggqldy40bks-multi",
                "",
                ""
            ),
        ]
    );
    assert_eq!(
        outs(fixture!("dep")),
        [
            o(
                "dev",
                "/nix/store/r5mw5w5sprfk1n1lk4167p9frmnzzkih-dep-dev",
                "",
                ""
            ),
            o(
                "out",
                "/nix/store/jvwlcfnxarm4fwxarfbd5mcxvj3a95cg-dep",
                "",
                ""
            ),
        ]
    );
    assert_eq!(
        outs(fixture!("with-deps")),
        [o(
            "out",
            "/nix/store/mss33ccayl93bw7ns1hy7vpwfchylbpm-with-deps",
            "",
            ""
        )]
    );
    let sha = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    let fixed = "/nix/store/sfp96vqvf87dgri1jwpz9f1yfih8avbv-fixed";
    assert_eq!(outs(fixture!("fixed")), [o("out", fixed, "r:sha256", sha)]);
    let sha = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
    let flat = "/nix/store/f8sqnmfz24rajdf76k2q64hfpsaxwsyl-flat";
    assert_eq!(outs(fixture!("flat")), [o("out", flat, "sha256", sha)]);
    // nix-store refuses to name these before they are built.
    assert_eq!(
        outs(fixture!("floating")),
        [o("lib", "", "r:sha256", ""), o("out", "", "r:sha256", "")]
    );
}

#[test]
fn other_fields_and_escapes() {
    let d = parse(fixture!("with-deps")).unwrap();
    let dep = sp("/nix/store/yygfhhibadn2dvgkjdbzchj0q9f8y97a-dep.drv");
    assert_eq!(
        d.input_drvs,
        [InputDrv {
            path: dep,
            outputs: vec!["dev".into(), "out".into()]
        }]
    );
    assert_eq!(
        d.input_srcs,
        [sp("/nix/store/igyqgjr9qf4b57k33k7js2m3dbmmj2na-src.txt")]
    );
    assert_eq!(
        (d.platform.as_slice(), d.builder.as_slice()),
        (&b"x86_64-linux"[..], &b"/bin/sh"[..])
    );

    let d = parse(fixture!("multi")).unwrap();
    assert_eq!(
        d.args[1],
        b"echo \"quoted\\\\ \n tab\t cr\r\" > $out; touch $dev $doc"
    );
    let weird = "back\\slash \"q\" nl\n tab\t cr\r dollar${x} utf8 é ∀";
    assert_eq!(d.env_var(b"weird"), Some(weird.as_bytes()));
    assert_eq!(d.env_var(b"outputs"), Some(&b"out dev doc"[..]));
    assert_eq!(
        d.output("doc").unwrap().path.as_ref().unwrap().name(),
        "multi-doc"
    );
    assert!(d.output("bin").is_none());
}

#[test]
fn fixtures_round_trip_byte_exact() {
    for f in FIXTURES {
        assert_eq!(parse(f).unwrap().to_aterm(&StoreDir::default()), f);
    }
}

#[test]
fn other_store_dir() {
    let sd = StoreDir::new("/tmp/s").unwrap();
    let drv = String::from_utf8(fixture!("fixed").to_vec())
        .unwrap()
        .replace("/nix/store/", "/tmp/s/");
    let d = parse_derivation(drv.as_bytes(), &sd).unwrap();
    assert_eq!(
        sd.display(d.outputs[0].path.as_ref().unwrap()),
        "/tmp/s/sfp96vqvf87dgri1jwpz9f1yfih8avbv-fixed"
    );
    // The same file is wrong for /nix/store.
    assert!(matches!(
        parse(drv.as_bytes()),
        Err(DrvError::BadStorePath { offset: 15, .. })
    ));
}

const H: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";

fn with_outputs(outputs: &str) -> String {
    format!(r#"Derive([{outputs}],[],[],"x","y",[],[])"#)
}

#[test]
fn error_messages() {
    let msg = |b: &[u8]| parse(b).unwrap_err().to_string();
    assert_eq!(
        msg(br#"Derive(["out"])"#),
        "expected '(' opening an output at byte 8, found '\"'"
    );
    assert_eq!(
        msg(b"Deri"),
        "expected 'Derive(' at byte 4, found end of input"
    );
    assert_eq!(msg(b""), "expected 'Derive(' at byte 0, found end of input");
    assert!(
        msg(br#"DrvWithVersion("xp-dyn-drv",[])"#).starts_with("unsupported derivation format")
    );
    assert!(msg(b" Derive(").starts_with("unsupported derivation format"));
    assert_eq!(
        msg(b"Derive([],[],[],\"x\",\"y\",[],[])\n"),
        "expected end of input at byte 30, found byte 0x0a"
    );
    assert_eq!(
        msg(b"Derive([],[],[],\"x\\"),
        "string starting at byte 16 is not terminated before the end of input"
    );
    assert_eq!(
        msg(b"Derive([],[],[],\"x"),
        "string starting at byte 16 is not terminated before the end of input"
    );
    assert_eq!(
        msg(b"Derive([],[],[] ,"),
        "expected ',' at byte 15, found ' '"
    );
    assert_eq!(
        msg(b"Derive([],[],[],\"x\",\"y\",[\"a\"\"b\"]"),
        "expected ',' or ']' at byte 28, found '\"'"
    );
    let e = msg(with_outputs(&format!(r#"("out","/nix/store/{H}-x/bin","","")"#)).as_bytes());
    assert!(
        e.starts_with("output path at byte 15: ") && e.contains("top-level"),
        "{e}"
    );
    let e = parse(with_outputs(r#"("out","/etc/passwd","","")"#).as_bytes()).unwrap_err();
    assert!(matches!(
        e,
        DrvError::BadStorePath {
            source: StorePathError::NotInStore { .. },
            ..
        }
    ));
}

#[test]
fn rejects_bad_output_names_and_fields() {
    let err = |outputs: &str| parse(with_outputs(outputs).as_bytes()).unwrap_err();
    for bad in ["", "o ut", "out/x", "é", "\\n"] {
        let e = err(&format!(r#"("{bad}","","","")"#));
        assert!(
            matches!(e, DrvError::BadOutputName { offset: 9, .. }),
            "{bad:?}: {e:?}"
        );
    }
    let e = err(&format!(r#"("{}","","","")"#, "a".repeat(212)));
    assert!(matches!(e, DrvError::BadOutputName { .. }));
    let e = err(r#"("out","","",""),("out","","","")"#);
    assert_eq!(
        e,
        DrvError::DuplicateOutput {
            offset: 26,
            name: "out".into()
        }
    );
    let e = parse(b"Derive([(\"out\",\"\",\"\xff\",\"\")],[],[],\"x\",\"y\",[],[])").unwrap_err();
    assert_eq!(
        e,
        DrvError::NotUtf8 {
            offset: 18,
            what: "hash algorithm"
        }
    );
    // Inputs are checked too, though only outputs are needed.
    let bad_input = format!(r#"Derive([],[("/nix/store/{H}-d.drv",["o u"])],[],"x","y",[],[])"#);
    assert!(matches!(
        parse(bad_input.as_bytes()),
        Err(DrvError::BadOutputName { .. })
    ));
    // The nested dynamic-derivation form only belongs in DrvWithVersion.
    let nested = format!(r#"Derive([],[("/nix/store/{H}-d.drv",(["out"],[]))],[],"x","y",[],[])"#);
    assert!(matches!(
        parse(nested.as_bytes()),
        Err(DrvError::Unexpected {
            expected: "'['",
            ..
        })
    ));
    assert!(matches!(
        parse(br#"Derive([],[],["relative"],"x","y",[],[])"#),
        Err(DrvError::BadStorePath { .. })
    ));
}

#[test]
fn every_truncation_and_deep_nesting_fail_cleanly() {
    for f in FIXTURES {
        for len in 0..f.len() {
            assert!(parse(&f[..len]).is_err(), "prefix of {len} bytes parsed");
        }
    }
    let deep = [b"Derive(".as_slice(), &[b'['; 1 << 20]].concat();
    assert_eq!(
        parse(&deep).unwrap_err().to_string(),
        "expected '(' opening an output at byte 8, found '['"
    );
    let deep = [
        b"Derive([],[],[],\"x\",\"y\",[],[(".as_slice(),
        &[b'('; 1 << 20],
    ]
    .concat();
    assert!(matches!(
        parse(&deep),
        Err(DrvError::Unexpected { offset: 29, .. })
    ));
}

#[test]
fn size_cap() {
    let big = vec![b'D'; MAX_DRV_SIZE + 1];
    assert_eq!(
        parse(&big),
        Err(DrvError::TooLarge {
            len: MAX_DRV_SIZE + 1
        })
    );
}

fn unescape(quoted: &[u8]) -> Result<Vec<u8>, DrvError> {
    let sd = StoreDir::default();
    let mut p = Parser {
        b: quoted,
        pos: 0,
        store_dir: &sd,
    };
    let s = p.string()?;
    assert_eq!(p.pos, quoted.len());
    Ok(s)
}

proptest! {
    #[test]
    fn escape_round_trips(s in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut q = Vec::new();
        escape_string(&s, &mut q);
        prop_assert_eq!(unescape(&q).unwrap(), s);
    }

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse(&b);
        let _ = parse(&[b"Derive(".as_slice(), &b].concat());
    }

    /// Mutated real derivations: either an error, or a faithful parse.
    #[test]
    fn mutations_parse_or_fail_cleanly(
        which in 0..FIXTURES.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = FIXTURES[which].to_vec();
        for (at, byte) in edits {
            let i = at.index(b.len());
            b[i] = byte;
        }
        b.truncate(cut.index(b.len()) + 1);
        if let Ok(d) = parse(&b) {
            prop_assert_eq!(parse(&d.to_aterm(&StoreDir::default())).unwrap(), d);
        }
    }

    #[test]
    fn arbitrary_strings_survive_a_derivation(
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..4),
        env in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..8), proptest::collection::vec(any::<u8>(), 0..16)), 0..4),
    ) {
        let d = Derivation {
            outputs: vec![DerivationOutput { name: "out".into(), path: None, hash_algo: String::new(), hash: String::new() }],
            input_drvs: vec![],
            input_srcs: vec![],
            platform: b"x".to_vec(),
            builder: b"\\\"".to_vec(),
            args,
            env,
        };
        prop_assert_eq!(parse(&d.to_aterm(&StoreDir::default())).unwrap(), d);
    }
}
