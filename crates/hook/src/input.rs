//! Turns what Nix passes a post-build hook (`DRV_PATH`, `OUT_PATHS`) into a
//! [`HookRequest`]. Nothing here fails: anything unusable is dropped with a
//! note, because a hook that errors fails the user's build.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;

use nix_outbox_core::StoreDir;

use crate::protocol::{HookRequest, MAX_OUT_PATHS, MAX_REQUEST_BYTES, truncate};

/// Env values longer than this are ignored whole: no real build has that
/// many outputs, and scanning it would cost the build time.
pub const MAX_ENV_BYTES: usize = 1024 * 1024;
/// Problems noted individually; more are summarised as a count so the
/// hook's one stderr line stays short.
pub const MAX_NOTED_PROBLEMS: usize = 5;
/// Longest single problem text; offending values are cut to fit.
const MAX_PROBLEM_LEN: usize = 200;

/// The request to hand over plus what had to be dropped on the way.
#[derive(Debug, Default)]
pub struct ParsedInput {
    pub request: HookRequest,
    /// Further requests, when the paths do not fit in one and no
    /// derivation names them (see [`fit`]); usually empty.
    pub more: Vec<HookRequest>,
    /// Human-readable, at most [`MAX_NOTED_PROBLEMS`] + 1 entries.
    pub problems: Vec<String>,
    /// How many values (paths or whole variables) were dropped in total.
    pub dropped: usize,
}

impl ParsedInput {
    fn note(&mut self, problem: String) {
        self.dropped += 1;
        if self.problems.len() < MAX_NOTED_PROBLEMS {
            self.problems
                .push(truncate(&problem, MAX_PROBLEM_LEN).to_owned());
        }
    }

    /// Appends "and N more" when notes were left out.
    fn finish(mut self) -> Self {
        let unnoted = self.dropped.saturating_sub(self.problems.len());
        if unnoted > 0 {
            self.problems.push(format!("and {unnoted} more"));
        }
        self
    }
}

/// Parses the raw `DRV_PATH` and `OUT_PATHS` values. `OUT_PATHS` is split on
/// ASCII whitespace; duplicates are dropped silently. Whatever is returned
/// satisfies [`HookRequest::fits`] unless it is empty.
pub fn parse_env(
    drv_path: Option<&OsStr>,
    out_paths: Option<&OsStr>,
    sd: &StoreDir,
) -> ParsedInput {
    let mut parsed = ParsedInput::default();
    parse_drv(&mut parsed, drv_path, sd);
    if let Some(outs) = out_paths {
        parse_outs(&mut parsed, outs.as_bytes(), sd);
    }
    fit(&mut parsed, sd);
    if parsed.request.is_empty() && parsed.dropped == 0 {
        parsed.problems.push(
            "neither DRV_PATH nor OUT_PATHS names a path \
             (this program is meant to run as Nix's post-build-hook)"
                .to_owned(),
        );
    }
    parsed.finish()
}

fn parse_drv(parsed: &mut ParsedInput, value: Option<&OsStr>, sd: &StoreDir) {
    let Some(value) = value else { return };
    let bytes = value.as_bytes().trim_ascii();
    if bytes.is_empty() {
        return;
    }
    if bytes.len() > MAX_ENV_BYTES {
        parsed.note(format!("ignored DRV_PATH: {} bytes long", bytes.len()));
        return;
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        parsed.note(format!("ignored DRV_PATH {}: not UTF-8", lossy(bytes)));
        return;
    };
    match sd.parse_path(text) {
        Ok(p) if p.is_derivation() => parsed.request.drv_path = Some(p),
        Ok(_) => parsed.note(format!("ignored DRV_PATH {text:?}: not a .drv")),
        Err(e) => parsed.note(format!("ignored DRV_PATH: {e}")),
    }
}

fn parse_outs(parsed: &mut ParsedInput, value: &[u8], sd: &StoreDir) {
    if value.len() > MAX_ENV_BYTES {
        // The daemon can still resolve the outputs from DRV_PATH.
        parsed.note(format!(
            "ignored OUT_PATHS: {} bytes long (limit {MAX_ENV_BYTES})",
            value.len()
        ));
        return;
    }
    let mut seen = HashSet::new();
    for token in value
        .split(u8::is_ascii_whitespace)
        .filter(|t| !t.is_empty())
    {
        let Ok(text) = std::str::from_utf8(token) else {
            parsed.note(format!("ignored {}: not UTF-8", lossy(token)));
            continue;
        };
        if text.contains(['*', '[', ']', '{', '}']) {
            parsed.note(format!(
                "ignored {text:?}: a glob pattern, not a store path"
            ));
            continue;
        }
        let p = match sd.parse_path(text) {
            Ok(p) => p,
            Err(e) => {
                parsed.note(format!("ignored {e}"));
                continue;
            }
        };
        if seen.contains(&p) {
            continue;
        }
        seen.insert(p.clone());
        parsed.request.out_paths.push(p);
    }
}

/// Keeps every path within the protocol's limits ([`MAX_OUT_PATHS`] paths,
/// [`MAX_REQUEST_BYTES`] bytes per request) without dropping one. With a
/// derivation (Nix always names it), the request carries the derivation
/// alone and the daemon resolves all its outputs, as it does for Nix
/// 2.8.0's empty `OUT_PATHS`. Without one, the paths are split over as many
/// requests as they need.
fn fit(parsed: &mut ParsedInput, sd: &StoreDir) {
    let req = &mut parsed.request;
    if req.is_empty() || req.fits(sd) {
        return;
    }
    if req.drv_path.is_some() {
        req.out_paths.clear();
        return;
    }
    let mut requests = vec![HookRequest::default()];
    let empty = HookRequest::default().encoded_len(sd);
    let mut size = empty;
    for p in std::mem::take(&mut req.out_paths) {
        let line = "out ".len() + sd.display(&p).len() + 1;
        let last = requests.last_mut().expect("never empty");
        if last.out_paths.len() == MAX_OUT_PATHS || size + line > MAX_REQUEST_BYTES {
            requests.push(HookRequest::default());
            size = empty;
        }
        size += line;
        requests.last_mut().expect("never empty").out_paths.push(p);
    }
    parsed.request = requests.remove(0);
    parsed.more = requests;
}

fn lossy(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(truncate_bytes(bytes, 120)))
}

fn truncate_bytes(b: &[u8], max: usize) -> &[u8] {
    &b[..b.len().min(max)]
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt as _;

    use super::*;
    use crate::protocol::decode;

    const H1: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";
    const H2: &str = "0c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn";

    fn parse(drv: Option<&str>, outs: Option<&str>) -> ParsedInput {
        parse_env(
            drv.map(OsStr::new),
            outs.map(OsStr::new),
            &StoreDir::default(),
        )
    }

    #[test]
    fn normal_hook_environment() {
        let outs = format!("/nix/store/{H1}-hello /nix/store/{H2}-hello-man");
        let p = parse(Some(&format!("/nix/store/{H1}-hello.drv")), Some(&outs));
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(
            p.request.drv_path.unwrap().as_str(),
            format!("{H1}-hello.drv")
        );
        let names: Vec<_> = p
            .request
            .out_paths
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        assert_eq!(names, ["hello", "hello-man"]);
    }

    #[test]
    fn empty_out_paths_keeps_the_drv() {
        // Nix 2.8.0 (nix#6446) passes an empty OUT_PATHS.
        for outs in [Some(""), Some("  \n"), None] {
            let p = parse(Some(&format!("/nix/store/{H1}-x.drv")), outs);
            assert!(p.problems.is_empty());
            assert!(p.request.out_paths.is_empty() && p.request.drv_path.is_some());
            assert!(p.request.fits(&StoreDir::default()));
        }
    }

    #[test]
    fn nothing_at_all_is_explained() {
        let p = parse(None, Some(""));
        assert!(p.request.is_empty());
        assert!(
            p.problems[0].contains("post-build-hook"),
            "{:?}",
            p.problems
        );
    }

    #[test]
    fn bad_entries_are_dropped_with_a_note() {
        let outs = format!(
            "/nix/store/{H1}-ok /nix/store/*-glob /nix/store/../etc/passwd \
             /nix/store/{H2}-x/bin/sh /etc/passwd\t/nix/store/{H1}-ok"
        );
        let p = parse(Some("/nix/store/not-a-drv"), Some(&outs));
        assert_eq!(p.request.out_paths.len(), 1, "duplicates dropped silently");
        assert!(p.request.drv_path.is_none());
        assert_eq!(p.dropped, 5);
        let all = p.problems.join("\n");
        for want in [
            "ignored DRV_PATH: store path \"not-a-drv\"",
            "\"/nix/store/*-glob\": a glob pattern",
            "\"/nix/store/../etc/passwd\" is not directly inside",
            "points inside a store path",
            "\"/etc/passwd\" is not directly inside",
        ] {
            assert!(all.contains(want), "{all}\nlacks {want}");
        }
    }

    #[test]
    fn non_drv_drv_path_is_dropped() {
        let p = parse(Some(&format!("/nix/store/{H1}-x")), None);
        assert!(p.request.is_empty());
        assert!(p.problems[0].contains("not a .drv"));
    }

    #[test]
    fn non_utf8_is_dropped() {
        let mut raw = format!("/nix/store/{H1}-ok ").into_bytes();
        raw.extend_from_slice(b"/nix/store/\xff\xfe-bad");
        let outs = OsString::from_vec(raw);
        let drv = OsString::from_vec(b"/nix/store/\x80.drv".to_vec());
        let p = parse_env(Some(&drv), Some(&outs), &StoreDir::default());
        assert_eq!(p.request.out_paths.len(), 1);
        assert_eq!(p.dropped, 2);
        assert!(
            p.problems.iter().all(|s| s.contains("not UTF-8")),
            "{:?}",
            p.problems
        );
    }

    #[test]
    fn huge_values_are_ignored_whole() {
        let one = format!("/nix/store/{H1}-x ");
        let huge = one.repeat(MAX_ENV_BYTES / one.len() + 1);
        let p = parse(Some(&format!("/nix/store/{H1}-x.drv")), Some(&huge));
        assert!(p.request.out_paths.is_empty() && p.request.drv_path.is_some());
        assert!(p.problems[0].contains("ignored OUT_PATHS"));
        let p = parse(Some(&"a".repeat(MAX_ENV_BYTES + 1)), None);
        assert!(p.problems[0].contains("DRV_PATH") && p.problems[0].len() < 300);
    }

    #[test]
    fn too_many_paths_are_split_into_requests_that_each_decode() {
        let mut outs = String::new();
        for i in 0..1500 {
            // Distinct hashes: vary the first characters.
            let h = format!("{:0>5}{}", i, &H1[5..]);
            outs.push_str(&format!("/nix/store/{h}-x "));
        }
        let sd = StoreDir::default();
        let p = parse_env(None, Some(OsStr::new(&outs)), &sd);
        assert_eq!(p.request.out_paths.len(), MAX_OUT_PATHS);
        assert_eq!(p.more.len(), 1);
        assert_eq!(p.more[0].out_paths.len(), 1500 - MAX_OUT_PATHS);
        assert_eq!((p.dropped, p.problems.len()), (0, 0), "{:?}", p.problems);
        for r in std::iter::once(&p.request).chain(&p.more) {
            assert_eq!(&decode(&r.encode(&sd), &sd).unwrap(), r);
        }
        // Issue 14: with the derivation, it alone is sent, and the daemon
        // resolves every output from it (nothing is dropped).
        let drv = format!("/nix/store/{H1}-x.drv");
        let p = parse_env(Some(OsStr::new(&drv)), Some(OsStr::new(&outs)), &sd);
        assert!(p.request.out_paths.is_empty() && p.more.is_empty());
        assert_eq!(p.request.drv_path.as_ref().unwrap().as_str(), &drv[11..]);
        assert_eq!((p.dropped, p.problems.len()), (0, 0));

        // Long names hit the byte limit before the count limit.
        let name = "n".repeat(200);
        let mut long = String::new();
        for i in 0..400 {
            let h = format!("{:0>5}{}", i, &H2[5..]);
            long.push_str(&format!("/nix/store/{h}-{name} "));
        }
        let p = parse_env(None, Some(OsStr::new(&long)), &sd);
        assert!(p.request.out_paths.len() < 400);
        let all: Vec<_> = std::iter::once(&p.request).chain(&p.more).collect();
        assert!(all.iter().all(|r| r.fits(&sd)));
        assert_eq!(all.iter().map(|r| r.out_paths.len()).sum::<usize>(), 400);
    }

    #[test]
    fn noted_problems_are_bounded() {
        let outs = "/bad ".repeat(1000);
        let p = parse(None, Some(&outs));
        assert_eq!(p.dropped, 1000);
        assert_eq!(p.problems.len(), MAX_NOTED_PROBLEMS + 1);
        assert_eq!(p.problems.last().unwrap(), "and 995 more");
    }
}
