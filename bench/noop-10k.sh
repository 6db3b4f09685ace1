#!/usr/bin/env bash
# Copying a closure the cache already has: 10,101 store paths, uploaded once
# to a file:// cache, then copied again (nothing to do), against `nix copy`
# of the same root to the same cache:
#
#   bench/noop-10k.sh            # REPS=3 by default; prints a Markdown table
#
# The closure, in one Nix expression with no nixpkgs: 10,000
# `builtins.toFile` paths, 100 derivations that each reference 100 of them,
# and a root that references the 100. Built against the host store with no
# substituters. Also measured, as information: the first upload of the
# whole closure (nix-outbox and nix copy, one run each, into empty caches),
# and the same no-op against a private s3s-fs, where every existence check
# is an HTTP request.
#
# Goal (issue): the no-op nix-outbox copy takes ≤ 2 s.
source "$(dirname "$0")/lib.sh"

REPS=${REPS:-3}

bench_setup
start_nix_daemon
start_s3s
make_key_and_config

NONCE=$(random_hex 4)
note "building the closure (10,000 files, 101 derivations)"
ROOT=$(env -u NIX_REMOTE nix-build --no-out-link --option substituters '' --max-jobs 2 --expr "
  let
    n = \"$NONCE\";
    file = i: builtins.toFile \"nix-outbox-bench-f\${toString i}-\${n}\" \"file \${toString i} of \${n}\n\";
    group = g: derivation {
      name = \"nix-outbox-bench-g\${toString g}-\${n}\";
      system = builtins.currentSystem;
      builder = \"/bin/sh\";
      files = builtins.genList (j: file (g * 100 + j)) 100;
      args = [ \"-c\" \"echo \$files > \$out\" ];
    };
  in derivation {
    name = \"nix-outbox-bench-noop-root-\${n}\";
    system = builtins.currentSystem;
    builder = \"/bin/sh\";
    groups = builtins.genList group 100;
    args = [ \"-c\" \"echo \$groups > \$out\" ];
  }" 2>"$WORK/build.log") || die "build failed: $(tail -5 "$WORK/build.log")"
# Everything the build added: outputs, derivations, and the files.
mapfile -t BENCH_STORE_PATHS < <(nix-store -qR --include-outputs "$(nix-store -qd "$ROOT")")
CLOSURE=$(nix-store -qR "$ROOT" | wc -l)
note "root $ROOT, closure of $CLOSURE paths"

narinfos() { find "$1" -maxdepth 1 -name '*.narinfo' | wc -l; }
ROWS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 | $(mib "$5") | $6 |"); }

# The first upload of everything, as information.
outbox_cmd "file://$WORK/cache?compression=zstd"
BEFORE_EACH='rm -rf "$WORK/cache"'
# Long runs, and information only: fewer attempts at an undisturbed one.
MAX_TRIES=3 measure "$WORK/first.log" "${CMD[@]}" "$ROOT"
row "first upload, file://" "nix-outbox copy" "$WALL" "$CPU" "$RSS" "$(narinfos "$WORK/cache") narinfos written"
note "first nix-outbox copy: $WALL s"
nix_cmd "file://$WORK/cache-nix?compression=zstd&secret-key=$SK"
BEFORE_EACH='rm -rf "$WORK/cache-nix"'
MAX_TRIES=3 measure "$WORK/first-nix.log" "${CMD[@]}" "$ROOT"
row "first upload, file://" "nix copy" "$WALL" "$CPU" "$RSS" "$(narinfos "$WORK/cache-nix") narinfos written"
note "first nix copy: $WALL s"
rm -rf "$WORK/cache-nix"

# noop LABEL TOOL CACHE-DIR CMD...: REPS runs of a copy that must find
# everything present; checks it wrote nothing.
noop() {
  local label=$1 tool=$2 dir=$3 rep w=() c=() r=() before
  shift 3
  before=$(narinfos "$dir")
  BEFORE_EACH=
  for rep in $(seq "$REPS"); do
    measure "$WORK/noop.log" "$@"
    w+=("$WALL") c+=("$CPU") r+=("$RSS")
    note "$label, $tool, run $rep: $WALL s"
  done
  [ "$(narinfos "$dir")" = "$before" ] || die "$tool wrote to the cache on a no-op copy"
  row "$label" "$tool" "$(median "${w[@]}")" "$(median "${c[@]}")" "$(median "${r[@]}")" "runs: ${w[*]} s"
}

outbox_cmd "file://$WORK/cache?compression=zstd"
noop "no-op, file://" "nix-outbox copy" "$WORK/cache" "${CMD[@]}" "$ROOT"
grep -q "uploaded 0, already present $CLOSURE" "$WORK/noop.log" ||
  die "the no-op copy did not find all $CLOSURE paths present: $(tail -3 "$WORK/noop.log")"
nix_cmd "file://$WORK/cache?compression=zstd&secret-key=$SK"
noop "no-op, file://" "nix copy" "$WORK/cache" "${CMD[@]}" "$ROOT"

# The same against S3, where each existence check is a HEAD request.
S3_URL="s3://noop?endpoint=$S3_ENDPOINT&scheme=http&compression=zstd"
outbox_cmd "$S3_URL"
BEFORE_EACH='rm -rf "$S3_DATA/noop"; mkdir "$S3_DATA/noop"'
MAX_TRIES=3 measure "$WORK/s3-first.log" "${CMD[@]}" "$ROOT"
row "first upload, S3 (s3s-fs)" "nix-outbox copy" "$WALL" "$CPU" "$RSS" "$(narinfos "$S3_DATA/noop") narinfos written"
note "first nix-outbox copy to S3: $WALL s"
noop "no-op, S3 (s3s-fs)" "nix-outbox copy" "$S3_DATA/noop" "${CMD[@]}" "$ROOT"

print_context
echo "Closure of $CLOSURE store paths (10,000 small files, 101 derivation outputs). No-op rows: median of $REPS runs."
echo
echo "| case | tool | wall s | CPU s | peak RSS MiB | notes |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
