#!/usr/bin/env bash
# Throughput of one mixed ~240 MB NAR through the upload pipeline, against
# `nix copy` in the same run:
#
#   bench/pipeline.sh        # REPS=3 by default; prints a Markdown table
#   MODES="zstd floor xz s3" # the rows to measure (default: all); floor:
#                            # `nix-store --dump | zstd -3 -T2`, the physical floor
#
# The store path is a copy of /usr/lib/gcc and /usr/share/doc added with
# `nix-store --add`. Each repetition uploads it to a fresh, empty file://
# cache, first with nix-outbox, then with nix copy (same URL parameters, same
# key), from a warm page cache; the table gives the median of REPS runs:
#
#   zstd: nix-outbox copy --to 'file://…?compression=zstd'
#         nix copy        --to 'file://…?compression=zstd&secret-key=…'
#   xz:   both with '?compression=xz&parallel-compression=true'
#   S3:   nix-outbox copy --to 's3://bucket?endpoint=…&scheme=http&compression=zstd'
#         to a private s3s-fs (extra information, no anchor)
#
# Goals (issue): zstd ≥ 2× faster than nix copy, NAR files no larger than
# Nix's, peak RSS ≤ 64 MiB; xz no slower than nix copy, peak RSS ≤ 128 MiB.
# Needs root, Nix, and about 1 GB in /tmp. Removes everything it created.
source "$(dirname "$0")/lib.sh"

REPS=${REPS:-3}
# Which rows to measure (xz takes ~10 min at REPS=3).
MODES=${MODES:-zstd floor xz s3}

bench_setup
start_nix_daemon
start_s3s
make_key_and_config

note "building the test tree (/usr/lib/gcc + /usr/share/doc)"
TREE=$WORK/nix-outbox-bench-tree
mkdir -p "$TREE"
cp -a /usr/lib/gcc "$TREE/gcc"
cp -a /usr/share/doc "$TREE/doc"
P=$(nix-store --add "$TREE")
BENCH_STORE_PATHS+=("$P")
rm -rf "$TREE"
NAR_SIZE=$(nix-store -q --size "$P")
note "store path $P, NAR $NAR_SIZE bytes"

# run_pair MODE PARAMS: REPS repetitions of nix-outbox then nix copy into
# fresh caches; appends the medians to the table.
ROWS=()
run_pair() {
  local mode=$1 params=$2 rep
  local ow=() oc=() or=() os=() nw=() nc=() nr=() ns=()
  for rep in $(seq "$REPS"); do
    outbox_cmd "file://$WORK/cache-outbox?$params"
    BEFORE_EACH='rm -rf "$WORK/cache-outbox"; warm "$P"'
    measure "$WORK/outbox.log" "${CMD[@]}" "$P"
    ow+=("$WALL") oc+=("$CPU") or+=("$RSS") os+=("$(nar_bytes "$WORK/cache-outbox")")
    note "$mode rep $rep: nix-outbox $WALL s, $(mib "$RSS") MiB"
    nix_cmd "file://$WORK/cache-nix?$params&secret-key=$SK"
    BEFORE_EACH='rm -rf "$WORK/cache-nix"; warm "$P"'
    measure "$WORK/nix.log" "${CMD[@]}" "$P"
    nw+=("$WALL") nc+=("$CPU") nr+=("$RSS") ns+=("$(nar_bytes "$WORK/cache-nix")")
    note "$mode rep $rep: nix copy   $WALL s, $(mib "$RSS") MiB"
  done
  # Both caches must be complete and signed, or the comparison means nothing.
  for c in cache-outbox cache-nix; do
    nix --extra-experimental-features nix-command store verify --store "file://$WORK/$c" \
      --trusted-public-keys "$(cat "$PK")" --all >/dev/null 2>&1 ||
      die "$mode: nix store verify failed for $c"
  done
  local o n
  o=$(median "${ow[@]}")
  n=$(median "${nw[@]}")
  [ "$mode" != zstd ] || ZSTD_OUTBOX=$o
  ROWS+=("| $mode | nix-outbox copy | $o | $(awk -v o="$o" -v n="$n" 'BEGIN { printf "%.2f×", n / o }') | $(median "${oc[@]}") | $(mib "$(median "${or[@]}")") | $(mb "$(median "${os[@]}")") | ${ow[*]} |")
  ROWS+=("| $mode | nix copy | $n | 1× | $(median "${nc[@]}") | $(mib "$(median "${nr[@]}")") | $(mb "$(median "${ns[@]}")") | ${nw[*]} |")
}

run_s3() {
  local rep w=() c=() r=() s=()
  for rep in $(seq "$REPS"); do
    outbox_cmd "s3://bench?endpoint=$S3_ENDPOINT&scheme=http&compression=zstd"
    BEFORE_EACH='rm -rf "$S3_DATA/bench"; mkdir "$S3_DATA/bench"; warm "$P"'
    measure "$WORK/s3.log" "${CMD[@]}" "$P"
    w+=("$WALL") c+=("$CPU") r+=("$RSS") s+=("$(nar_bytes "$S3_DATA/bench")")
    note "s3 rep $rep: nix-outbox $WALL s, $(mib "$RSS") MiB"
  done
  ROWS+=("| zstd, S3 (s3s-fs) | nix-outbox copy | $(median "${w[@]}") | | $(median "${c[@]}") | $(mib "$(median "${r[@]}")") | $(mb "$(median "${s[@]}")") | ${w[*]} |")
}

# The physical floor of the zstd row: reading the NAR and compressing it
# with both cores, to a file, nothing else (no hashing, no signing, no
# sync): `nix-store --dump P | zstd -3 -T2`.
run_floor() {
  local rep w=()
  command -v zstd >/dev/null || { apt-get install -y -qq zstd >&2; }
  for rep in $(seq "$REPS"); do
    BEFORE_EACH='rm -f "$WORK/floor.zst"; warm "$P"'
    measure "$WORK/floor.log" bash -c 'nix-store --dump "$1" | zstd -q -3 -T2 -o "$2"' _ "$P" "$WORK/floor.zst"
    w+=("$WALL")
    note "floor rep $rep: $WALL s"
  done
  FLOOR=$(median "${w[@]}")
  ROWS+=("| zstd | floor: \`nix-store --dump \| zstd -3 -T2\` | $FLOOR | | | | $(mb "$(stat -c %s "$WORK/floor.zst")") | ${w[*]} |")
}

case " $MODES " in *" zstd "*) run_pair zstd "compression=zstd" ;; esac
case " $MODES " in *" floor "*) run_floor ;; esac
# A minute per run: a disturbed one is repeated less often.
case " $MODES " in *" xz "*) MAX_TRIES=4 run_pair xz "compression=xz&parallel-compression=true" ;; esac
case " $MODES " in *" s3 "*) run_s3 ;; esac

print_context
echo "NAR: $(mb "$NAR_SIZE") MB ($P); median of $REPS runs, each into an empty cache, warm page cache."
echo "CPU s is user + system time of the measured process: for nix-outbox it leaves out the nix-daemon"
echo "that serialises the NAR for it; nix copy reads the store itself."
echo
echo "| compression | tool | wall s | speed-up | CPU s | peak RSS MiB | NAR files MB | all runs, wall s |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
if [ -n "${FLOOR:-}" ] && [ -n "${ZSTD_OUTBOX:-}" ]; then
  echo
  echo "nix-outbox copy (zstd) against the floor: $(awk -v o="$ZSTD_OUTBOX" -v f="$FLOOR" 'BEGIN { printf "%.2f×", o / f }')"
fi
