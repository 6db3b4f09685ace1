#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 20),
# seeded with real Nix output: the golden narinfos and .drv files of
# crates/core/tests/data (made by real Nix; see the READMEs there), a NAR
# that `nix-store --dump` makes of that directory, and hook frames.
#
#   scripts/fuzz.sh            # 20 s per target (what scripts/test.sh runs)
#   scripts/fuzz.sh 600        # the longer run recorded in BENCHMARKS.md
#
# Each target's whole output goes to fuzz/artifacts/<target>.log; a target
# that fails prints all of it (the crash, the input, the stack), one that
# passes prints libFuzzer's final statistics (executions, coverage).
# cargo-fuzz needs nightly-only sanitizer flags; this machine has only
# stable Rust, whose compiler accepts them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-20}
[[ $SECONDS_EACH =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS must be a number" >&2; exit 2; }
mkdir -p fuzz/artifacts

# seed TARGET FILE...: copies real inputs into the target's corpus
# (fuzz/corpus/<target>, which libFuzzer also grows; not in git).
seed() {
  local t=$1
  shift
  mkdir -p "fuzz/corpus/$t"
  for f in "$@"; do
    [ -f "$f" ] && cp -- "$f" "fuzz/corpus/$t/seed-$(basename -- "$f")"
  done
  return 0
}
seed narinfo_parse crates/core/tests/data/narinfo/*.narinfo
seed drv_parse crates/core/tests/data/drv/*.drv
if command -v nix-store >/dev/null 2>&1; then
  mkdir -p fuzz/corpus/nar_read
  nix-store --dump crates/core/tests/data >fuzz/corpus/nar_read/seed-testdata.nar
fi
mkdir -p fuzz/corpus/hook_input
printf 'nix-outbox-hook 1\ndrv /nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12.drv\nout /nix/store/0c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-hello-2.12\nend\n' \
  >fuzz/corpus/hook_input/seed-frame
mkdir -p fuzz/corpus/spool_file
cp fuzz/corpus/hook_input/seed-frame fuzz/corpus/spool_file/seed-frame

# be16 N: N as two big-endian bytes (the length prefix of the pair targets).
be16() { printf "\\x$(printf %02x $(($1 >> 8)))\\x$(printf %02x $(($1 & 255)))"; }

# verify_pair and ls_listing take a length-prefixed first part, then a NAR:
# a narinfo that describes that NAR exactly (uncompressed, so FileHash is
# NarHash), and a .ls shaped like Nix's (its entries need not match).
if command -v nix-store >/dev/null 2>&1 && command -v nix-hash >/dev/null 2>&1; then
  mkdir -p fuzz/corpus/verify_pair fuzz/corpus/ls_listing
  nar=$(mktemp)
  nix-store --dump crates/core/tests/data/narinfo >"$nar"
  b32=$(nix-hash --type sha256 --to-base32 "$(sha256sum "$nar" | cut -d' ' -f1)")
  size=$(stat -c %s "$nar")
  narinfo="StorePath: /nix/store/l1jah9m2y31igs78fbvhh06dxpj2dqib-seed
URL: nar/$b32.nar
Compression: none
FileHash: sha256:$b32
FileSize: $size
NarHash: sha256:$b32
NarSize: $size
References: 
"
  { be16 "${#narinfo}"; printf '%s' "$narinfo"; cat "$nar"; } >fuzz/corpus/verify_pair/seed-pair
  ls='{"version":1,"root":{"type":"directory","entries":{"README.md":{"type":"regular","size":1,"narOffset":1}}}}'
  { be16 "${#ls}"; printf '%s' "$ls"; cat "$nar"; } >fuzz/corpus/ls_listing/seed-pair
  rm -f "$nar"
fi
mkdir -p fuzz/corpus/retry_after fuzz/corpus/realisation_json
printf '120' >fuzz/corpus/retry_after/seed-seconds
printf 'Wed, 21 Oct 2015 07:28:00 GMT' >fuzz/corpus/retry_after/seed-date
id='sha256:3aa6ff2dd8a22f72f6fb355512e8f2a3215ea5c8c89c482ed27025b878a1dbfd!out'
printf '%s\n{"dependentRealisations":{},"id":"%s","outPath":"0c5f0m2wv8a0w2rf8yk2xkz4rpsj3xkf-ca","signatures":[]}' \
  "$id" "$id" >fuzz/corpus/realisation_json/seed-realisation

failed=0
for target in $(cd fuzz && ls fuzz_targets | sed 's/\.rs$//'); do
  log=fuzz/artifacts/$target.log
  printf '\n== fuzz %s for %ss (log: %s)\n' "$target" "$SECONDS_EACH" "$log"
  if RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz "$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+[[:space:]]+DONE' "$log" || tail -n 4 "$log"
  else
    failed=1
    echo "== fuzz $target FAILED; its whole output:"
    cat "$log"
  fi
done
exit "$failed"
