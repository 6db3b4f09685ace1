//! `nix-outbox verify --cache URL --trusted-public-keys KEYS [--all | PATH...]`:
//! checks a binary cache the way a paranoid client would, and says what is
//! wrong with which path and what to do about it.
//!
//! For each narinfo: it parses, its StorePath matches its file name, a
//! trusted key signed it, its NAR exists and matches FileSize/FileHash,
//! decompresses to NarSize bytes hashing to NarHash, parses as a NAR, every
//! reference has a narinfo for exactly that path, and an `.ls` listing (if
//! present) matches the NAR. NARs are streamed, a few paths at a time.
//!
//! With PATHs, their closures as the cache records them (References) are
//! checked: that is what a client substituting them would fetch. Exit
//! status: 0 clean, 1 problems found, 2 usage errors or a cache that could
//! not be (fully) read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write as _;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use nix_outbox_core::StoreDir;
use nix_outbox_core::keys::PublicKey;
use nix_outbox_upload::{CacheReader, MAX_LISTING, MAX_NARINFO, TargetConfig, TargetLocation};

mod report;

use check::{Found, Problem};
use nix_outbox_upload::verify::references::Upstream;
use nix_outbox_upload::verify::{check, references};
use report::{ReadError, Report};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["all", "paths"])))]
pub struct Args {
    /// The cache, in `nix copy --to` syntax (file://, s3://…?endpoint=…, http(s)://).
    /// S3 credentials are found as for targets.
    #[arg(long, value_name = "URL")]
    cache: String,
    /// Public keys to trust, `name:base64` as in nix.conf; several separated
    /// by spaces or by repeating the option. A file holding keys works too.
    #[arg(long = "trusted-public-keys", value_name = "KEYS", required = true)]
    trusted_public_keys: Vec<String>,
    /// Check every narinfo in the cache (file:// and s3:// only: HTTP
    /// caches cannot be listed).
    #[arg(long)]
    all: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Caches that serve paths this cache leaves out on purpose (as
    /// nix-outbox's `upstream-keys` does for cache.nixos.org's): a reference
    /// missing here but present there is a note, not a problem. Repeat the
    /// option or separate URLs by spaces.
    #[arg(long, value_name = "URL")]
    upstream: Vec<String>,
    /// Paths checked at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Store paths to check with their closures: /nix/store/<hash>-<name>,
    /// <hash>-<name> or <hash>.
    paths: Vec<String>,
}

/// What every check needs.
struct Ctx {
    reader: CacheReader,
    store_dir: StoreDir,
    keys: Vec<PublicKey>,
    /// The URL as given, for advice that names it.
    cache: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let code = match prepare(&args) {
        Err(e) => {
            eprintln!("nix-outbox verify: usage error: {e:#}");
            2
        }
        Ok((cfg, keys, upstream)) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            match rt.block_on(verify(&args, &cfg, keys, upstream)) {
                Ok(report) => {
                    let mut out = std::io::stdout().lock();
                    if args.json {
                        report.write_json(&mut out)?;
                    } else {
                        report.write_text(&mut out)?;
                    }
                    out.flush()?;
                    report.exit_code()
                }
                Err(e) => {
                    eprintln!("nix-outbox verify: cannot read the cache: {e:#}");
                    2
                }
            }
        }
    };
    if code == 0 {
        return Ok(());
    }
    // The exit status is the interface here (0/1/2), not an error message.
    std::process::exit(i32::from(code));
}

/// Everything that can be wrong with the command line, before any I/O on
/// the cache.
fn prepare(args: &Args) -> anyhow::Result<(TargetConfig, Vec<PublicKey>, Vec<TargetConfig>)> {
    let cfg =
        TargetConfig::parse(&args.cache).with_context(|| format!("--cache {:?}", args.cache))?;
    if args.all && matches!(cfg.location, TargetLocation::Http { .. }) {
        bail!(
            "--all needs a cache that can be listed, and HTTP caches cannot be (there is no \
             listing request they answer); name the store paths to check instead, or verify \
             the storage behind the server (file:// or s3://)"
        );
    }
    let mut keys = Vec::new();
    for arg in &args.trusted_public_keys {
        for word in arg.split_whitespace() {
            keys.extend(parse_keys(word)?);
        }
    }
    if keys.is_empty() {
        bail!("--trusted-public-keys holds no key");
    }
    let mut upstream = Vec::new();
    for url in args.upstream.iter().flat_map(|a| a.split_whitespace()) {
        upstream.push(TargetConfig::parse(url).with_context(|| format!("--upstream {url:?}"))?);
    }
    Ok((cfg, keys, upstream))
}

/// One key, or a file of keys (as `nix-store --generate-binary-cache-key`
/// writes a public key file).
fn parse_keys(word: &str) -> anyhow::Result<Vec<PublicKey>> {
    match PublicKey::parse(word) {
        Ok(k) => Ok(vec![k]),
        Err(_) if std::path::Path::new(word).is_file() => {
            let text = std::fs::read_to_string(word)
                .with_context(|| format!("reading public keys from {word}"))?;
            text.split_whitespace()
                .map(|k| PublicKey::parse(k).with_context(|| format!("a key in {word}")))
                .collect()
        }
        Err(e) => Err(anyhow!(e).context(format!(
            "--trusted-public-keys {word:?}: neither a public key (name:base64) nor a file"
        ))),
    }
}

async fn verify(
    args: &Args,
    cfg: &TargetConfig,
    keys: Vec<PublicKey>,
    upstream: Vec<TargetConfig>,
) -> anyhow::Result<Report> {
    if let TargetLocation::File { root } = &cfg.location
        && !root.is_dir()
    {
        bail!("the cache directory {} does not exist", root.display());
    }
    let reader = CacheReader::open(cfg)?;
    let mut notes = Vec::new();
    // Read first: it also tells whether the cache is reachable at all.
    let store_dir = match reader.get("nix-cache-info", MAX_NARINFO).await? {
        Some(text) => {
            let text = String::from_utf8_lossy(&text);
            match text.lines().find_map(|l| l.strip_prefix("StoreDir:")) {
                Some(d) => StoreDir::new(d.trim())
                    .with_context(|| format!("nix-cache-info names StoreDir {:?}", d.trim()))?,
                None => StoreDir::default(),
            }
        }
        None => {
            notes.push(
                "the cache has no nix-cache-info; assuming store directory /nix/store (Nix \
                 writes that file when it first uploads; a read-only cache without it is \
                 refused by Nix)"
                    .to_owned(),
            );
            StoreDir::default()
        }
    };
    let ctx = Arc::new(Ctx {
        reader,
        store_dir,
        keys,
        cache: args.cache.clone(),
    });

    let mut problems = Vec::new();
    let (start, follow_refs): (Vec<String>, bool) = if args.all {
        let (hashes, odd) = ctx.reader.list_narinfos().await?;
        for name in odd {
            notes.push(format!(
                "{name} is not named after a store path's hash; no client reads it"
            ));
        }
        (hashes, false)
    } else {
        let mut hashes = Vec::new();
        for p in &args.paths {
            hashes.push(check::hash_of_arg(&ctx.store_dir, p).map_err(|e| anyhow!(e))?);
        }
        (hashes, true)
    };
    let requested: BTreeSet<String> = start.iter().cloned().collect();
    let (found, mut errors) =
        check_all(&ctx, start, follow_refs, args.jobs.into(), &mut problems).await;
    for hash in &requested {
        if found.get(hash) == Some(&Found::Missing) {
            problems.push(Problem {
                path: hash.clone(),
                kind: "narinfo-missing",
                message: format!(
                    "not in the cache (no {hash}.narinfo). Upload it with `nix-outbox copy --to {} PATH`",
                    ctx.cache
                ),
            });
        }
    }
    let missing = references::missing_references(&found);
    let upstream = ask_upstream(&upstream, missing, args.jobs.into(), &mut errors).await?;
    let (ref_problems, ref_notes) =
        references::reference_problems(&ctx.store_dir, &ctx.cache, &found, &upstream);
    problems.extend(ref_problems);
    notes.extend(ref_notes);
    let mut report = Report {
        cache: ctx.reader.id().to_owned(),
        store_dir: ctx.store_dir.to_string(),
        checked: found.len(),
        problems,
        errors,
        notes,
    };
    report.sort();
    Ok(report)
}

/// Checks `start` (and, with `follow_refs`, every reference found) with
/// at most `jobs` paths at once; returns what was found per hash part.
async fn check_all(
    ctx: &Arc<Ctx>,
    start: Vec<String>,
    follow_refs: bool,
    jobs: usize,
    problems: &mut Vec<Problem>,
) -> (BTreeMap<String, Found>, Vec<ReadError>) {
    let mut seen: BTreeSet<String> = start.iter().cloned().collect();
    let mut queue: VecDeque<String> = start.into();
    let mut found = BTreeMap::new();
    let mut errors = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    // Which path each task checks, to name it if the task panics.
    let mut hash_of = std::collections::HashMap::new();
    loop {
        while running.len() < jobs
            && let Some(hash) = queue.pop_front()
        {
            let ctx = ctx.clone();
            let task = running.spawn({
                let hash = hash.clone();
                async move { check_one(&ctx, hash).await }
            });
            hash_of.insert(task.id(), hash);
        }
        let Some(done) = running.join_next_with_id().await else {
            break;
        };
        let outcome = match done {
            Ok((id, o)) => {
                hash_of.remove(&id);
                o
            }
            Err(e) => {
                let hash = hash_of.remove(&e.id()).unwrap_or_default();
                errors.push(ReadError {
                    path: hash.clone(),
                    message: format!("internal error: checking {hash} failed: {e}"),
                });
                found.insert(hash, Found::Unusable);
                continue;
            }
        };
        if follow_refs && let Found::Present { references, .. } = &outcome.found {
            for r in references {
                if seen.insert(r.hash_part().to_owned()) {
                    queue.push_back(r.hash_part().to_owned());
                }
            }
        }
        problems.extend(outcome.problems);
        errors.extend(outcome.error);
        found.insert(outcome.hash, outcome.found);
    }
    (found, errors)
}

struct Outcome {
    hash: String,
    found: Found,
    problems: Vec<Problem>,
    error: Option<ReadError>,
}

async fn check_one(ctx: &Ctx, hash: String) -> Outcome {
    let mut out = Outcome {
        hash: hash.clone(),
        found: Found::Unusable,
        problems: Vec::new(),
        error: None,
    };
    let read_error = |path: &str, e: &dyn std::fmt::Display| ReadError {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let text = match ctx
        .reader
        .get(&format!("{hash}.narinfo"), MAX_NARINFO)
        .await
    {
        Ok(Some(t)) => t,
        Ok(None) => {
            out.found = Found::Missing;
            return out;
        }
        Err(e) => {
            out.error = Some(read_error(&hash, &e));
            return out;
        }
    };
    let (info, problems) =
        match check::check_narinfo(&ctx.store_dir, &ctx.keys, &ctx.cache, &hash, &text) {
            Ok(r) => r,
            Err(p) => {
                out.problems.push(p);
                return out;
            }
        };
    let path = ctx.store_dir.display(&info.store_path);
    let url_ok = !problems.iter().any(|p| p.kind == "url");
    // A narinfo no trusted key vouches for is still checked against its
    // NAR: that tells a tampered field (NarSize, NarHash) from a wrong key.
    // But its FileSize may be a hostile cache's lie to keep us reading, so
    // its check gets a short deadline of its own (`nar_deadline`).
    let trusted = !problems.iter().any(|p| p.kind == "signature");
    out.problems = problems;
    out.found = Found::Present {
        store_path: info.store_path.clone(),
        references: info.references.clone(),
    };
    if !url_ok {
        return out;
    }
    let ls = match ctx.reader.get(&format!("{hash}.ls"), MAX_LISTING).await {
        Ok(ls) => ls,
        Err(e) => {
            out.error = Some(read_error(&path, &e));
            return out;
        }
    };
    let advice = check::reupload_advice(&ctx.cache, &hash, &path);
    let blob = match ctx.reader.open_blob(&info.url).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            out.problems.push(Problem {
                path,
                kind: "nar-missing",
                message: format!(
                    "its NAR {} is missing: clients find the path but cannot download it. {advice}",
                    info.url
                ),
            });
            return out;
        }
        Err(e) => {
            out.error = Some(read_error(&path, &e));
            return out;
        }
    };
    let want_listing = ls.is_some();
    let checked = {
        let info = info.clone();
        let deadline = check::nar_deadline(&info, trusted, std::time::Instant::now());
        tokio::task::spawn_blocking(move || check::check_nar(blob, &info, want_listing, deadline))
            .await
    };
    let checked = match checked {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(read_error(&path, &format!("internal error: {e}")));
            return out;
        }
    };
    if let Some(e) = checked.read_error {
        out.error = Some(read_error(&path, &format!("reading {}: {e}", info.url)));
        return out;
    }
    for (kind, m) in checked.problems {
        out.problems.push(Problem {
            path: path.clone(),
            kind,
            message: format!("{m}; file {}. Clients refuse this path; {advice}", info.url),
        });
    }
    if let (Some(ls), Some(listing)) = (ls, checked.listing)
        && let Some(m) = references::listing_problem(&ls, &listing)
    {
        out.problems.push(Problem {
            path,
            kind: "listing",
            message: format!(
                "{m}; delete {hash}.ls (substitution does not need it) or re-upload the path"
            ),
        });
    }
    out
}

/// Asks the `--upstream` caches, in order, for each reference missing from
/// the cache. A failed request is an error of the run (the answer is
/// unknown), not a problem of the path.
async fn ask_upstream(
    upstream: &[TargetConfig],
    missing: BTreeSet<String>,
    jobs: usize,
    errors: &mut Vec<ReadError>,
) -> anyhow::Result<BTreeMap<String, Upstream>> {
    let mut out = BTreeMap::new();
    if upstream.is_empty() {
        return Ok(out);
    }
    let readers = upstream
        .iter()
        .map(|c| Ok((c.id(), CacheReader::open(c)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let readers = Arc::new(readers);
    let mut queue: VecDeque<String> = missing.into_iter().collect();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < jobs
            && let Some(hash) = queue.pop_front()
        {
            let readers = readers.clone();
            running.spawn(async move {
                for (id, r) in readers.iter() {
                    match r.get(&format!("{hash}.narinfo"), MAX_NARINFO).await {
                        Ok(Some(_)) => return (hash, Ok(Some(id.clone()))),
                        Ok(None) => {}
                        Err(e) => return (hash, Err(format!("asking --upstream {id}: {e}"))),
                    }
                }
                (hash, Ok(None))
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (hash, answer) = done.map_err(|e| anyhow!("internal error: an upstream query: {e}"))?;
        match answer {
            Ok(Some(id)) => {
                out.insert(hash, Upstream::Has(id));
            }
            // Nowhere upstream: stays a problem.
            Ok(None) => {}
            Err(message) => {
                errors.push(ReadError {
                    path: hash.clone(),
                    message,
                });
                out.insert(hash, Upstream::Unknown);
            }
        }
    }
    Ok(out)
}
