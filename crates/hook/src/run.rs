//! What the hook binary does, as a function returning the one line (if any)
//! it prints, so the whole flow is testable without spawning it.

use std::ffi::OsStr;
use std::time::SystemTime;

use nix_outbox_core::StoreDir;

use crate::client::{SendError, send_watched};
use crate::config::HookConfig;
use crate::input::parse_env;
use crate::liveness::{self, Liveness};
use crate::protocol::{HookRequest, truncate};
use crate::spool::write_spool;
use crate::unresponsive::{MARKER_TTL, mark_unresponsive, recently_unresponsive};

/// Longest line the hook prints; Nix shows it to whoever ran the build.
const MAX_LINE: usize = 2000;
/// Path lists longer than this are summarised instead of printed.
const MAX_LISTED: usize = 600;

/// Runs the hook for the current process's config and environment.
pub fn run_from_env() -> Option<String> {
    // Debug builds only: lets the tests check that a panic still exits 0
    // with one line (a release hook has no such switch).
    if cfg!(debug_assertions) && std::env::var_os("NIX_OUTBOX_HOOK_TEST_PANIC").is_some() {
        panic!("panic asked for by NIX_OUTBOX_HOOK_TEST_PANIC");
    }
    let (config, problems) = HookConfig::load();
    let drv = std::env::var_os("DRV_PATH");
    let outs = std::env::var_os("OUT_PATHS");
    run(&config, problems, drv.as_deref(), outs.as_deref())
}

/// Hands the build's paths to the daemon, or spools them. Returns the line
/// to print: `None` when all went well, which is the normal case.
pub fn run(
    config: &HookConfig,
    mut problems: Vec<String>,
    drv_path: Option<&OsStr>,
    out_paths: Option<&OsStr>,
) -> Option<String> {
    let sd = &config.store_dir;
    let parsed = parse_env(drv_path, out_paths, sd);
    problems.extend(parsed.problems);
    let also = if problems.is_empty() {
        String::new()
    } else {
        format!("; also: {}", problems.join("; "))
    };
    if parsed.request.is_empty() {
        return Some(format!(
            "nix-outbox-hook: nothing to queue: {}",
            problems.join("; ")
        ));
    }
    // Usually one request; several only for more paths than one may hold.
    let requests: Vec<HookRequest> = std::iter::once(parsed.request).chain(parsed.more).collect();
    let socket = config.socket.display();
    let spool = config.spool_dir();
    let mut ids = Vec::new();
    let mut why = None;
    let mut timed_out = false;
    let now = SystemTime::now();
    if let Some(at) = recently_unresponsive(&spool, now) {
        // A hung daemon would make every build wait the whole timeout.
        let ago = now.duration_since(at).unwrap_or_default().as_secs();
        why = Some(format!(
            "daemon at {socket} did not answer a hook {ago}s ago, so this one does not wait for \
             it (hooks try again {}s after that, or as soon as it answers)",
            MARKER_TTL.as_secs()
        ));
    } else if let Liveness::Hung(how) = liveness::check(&spool, now) {
        // Known hung before connecting: not a millisecond of waiting.
        timed_out = true;
        why = Some(format!(
            "daemon at {socket} is hung ({how}), so this hook does not wait for it"
        ));
    } else {
        let mut hung = || match liveness::check(&spool, SystemTime::now()) {
            Liveness::Hung(how) => Some(how),
            _ => None,
        };
        for req in &requests {
            match send_watched(&config.socket, req, sd, config.hook_timeout, &mut hung) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    timed_out = matches!(e, SendError::TimedOut(_) | SendError::Hung(_));
                    why = Some(match &e {
                        SendError::Connect(_) => format!("daemon unavailable at {socket} ({e})"),
                        _ => format!("daemon at {socket} did not take the request ({e})"),
                    });
                    break;
                }
            }
        }
    }
    let Some(why) = why else {
        if problems.is_empty() {
            return None;
        }
        let what = describe(&requests, sd);
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        return Some(format!(
            "nix-outbox-hook: queued {what} (request {}), but: {}",
            ids.join(", "),
            problems.join("; ")
        ));
    };
    // What the daemon did not take is spooled, every request of it.
    let rest = &requests[ids.len()..];
    let what = describe(rest, sd);
    let spooled = spool_all(&spool, rest, sd);
    if timed_out {
        mark_unresponsive(&spool);
    }
    match spooled {
        Ok(()) => Some(format!(
            "nix-outbox-hook: {why}; queued {what} in {}{also}",
            spool.display()
        )),
        Err((unqueued, e)) => Some(format!(
            "nix-outbox-hook: {why}, and queueing failed ({e}): {} NOT queued; \
             once fixed, run: nix-outbox push {}{also}",
            describe(unqueued, sd),
            push_args(unqueued, sd)
        )),
    }
}

/// Spools every request, or returns those not spooled and why.
fn spool_all<'a>(
    spool: &std::path::Path,
    requests: &'a [HookRequest],
    sd: &StoreDir,
) -> Result<(), (&'a [HookRequest], crate::spool::SpoolError)> {
    for (i, req) in requests.iter().enumerate() {
        write_spool(spool, req, sd).map_err(|e| (&requests[i..], e))?;
    }
    Ok(())
}

/// "1 path", "3 paths", or for a drv-only request (Nix 2.8.0 leaves
/// OUT_PATHS empty; or the outputs were too many to list)
/// "the outputs of /nix/store/…drv".
fn describe(requests: &[HookRequest], sd: &StoreDir) -> String {
    let paths: usize = requests.iter().map(|r| r.out_paths.len()).sum();
    match (paths, requests.first().and_then(|r| r.drv_path.as_ref())) {
        (0, Some(drv)) => format!("the outputs of {}", sd.display(drv)),
        (1, _) => "1 path".to_owned(),
        (n, _) => format!("{n} paths"),
    }
}

/// What to pass `nix-outbox push` by hand: the paths if they are few,
/// else a command that lists the derivation's outputs.
fn push_args(requests: &[HookRequest], sd: &StoreDir) -> String {
    let listed = requests
        .iter()
        .flat_map(|r| &r.out_paths)
        .map(|p| sd.display(p))
        .collect::<Vec<_>>()
        .join(" ");
    let drv = requests.first().and_then(|r| r.drv_path.as_ref());
    match drv {
        Some(drv) if listed.is_empty() || listed.len() > MAX_LISTED => {
            format!("$(nix-store -q --outputs {})", sd.display(drv))
        }
        _ if listed.len() > MAX_LISTED => format!("{} ...", truncate(&listed, MAX_LISTED)),
        _ => listed,
    }
}

/// Makes `s` one bounded line of text: Nix prints each line of hook output
/// separately, and config values or panic messages may contain newlines.
pub fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_LINE {
        out = format!("{}...", truncate(&out, MAX_LINE - 3));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::Environment;
    use crate::spool::{list_spool, read_spool_file};

    const H1: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";

    fn config(state: &Path) -> HookConfig {
        HookConfig {
            state_dir: state.to_owned(),
            socket: state.join("hook.sock"),
            hook_timeout: Duration::from_millis(200),
            ..HookConfig::defaults(&Environment::default())
        }
    }

    #[test]
    fn spools_when_no_daemon() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let outs = format!("/nix/store/{H1}-a /nix/store/{H1}-b /etc/passwd");
        let line = run(&cfg, vec![], None, Some(OsStr::new(&outs))).unwrap();
        assert!(
            line.starts_with("nix-outbox-hook: daemon unavailable at "),
            "{line}"
        );
        assert!(
            line.contains("(no such socket); queued 2 paths in "),
            "{line}"
        );
        assert!(line.contains("; also: ignored \"/etc/passwd\""), "{line}");
        let files = list_spool(&cfg.spool_dir()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            read_spool_file(&files[0], &cfg.store_dir)
                .unwrap()
                .out_paths
                .len(),
            2
        );
    }

    #[test]
    fn failed_spool_says_not_queued_and_what_to_run() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        let cfg = config(&file.join("state"));
        let drv = format!("/nix/store/{H1}-a.drv");
        let line = run(&cfg, vec![], Some(OsStr::new(&drv)), Some(OsStr::new(""))).unwrap();
        assert!(line.contains("NOT queued"), "{line}");
        assert!(
            line.contains(&format!("nix-outbox push $(nix-store -q --outputs {drv})")),
            "{line}"
        );
        let outs = format!("/nix/store/{H1}-a");
        let line = run(&cfg, vec![], None, Some(OsStr::new(&outs))).unwrap();
        assert!(line.ends_with(&format!("nix-outbox push {outs}")), "{line}");
    }

    #[test]
    fn nothing_valid_means_nothing_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let line = run(
            &cfg,
            vec!["config x: broken".into()],
            None,
            Some(OsStr::new("/tmp/x")),
        )
        .unwrap();
        assert!(
            line.starts_with("nix-outbox-hook: nothing to queue: config x: broken; ignored"),
            "{line}"
        );
        assert!(!cfg.spool_dir().exists());
    }

    #[test]
    fn one_line_is_one_bounded_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
        let long = one_line(&"\u{e9}".repeat(5000));
        assert!(long.len() <= MAX_LINE && long.ends_with("..."));
    }
}
