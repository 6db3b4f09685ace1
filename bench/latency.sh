#!/usr/bin/env bash
# Closures over a slow network (issue 15): how long a first push takes when
# the cache is RTT away, nix-outbox against `nix copy` in the same run.
#
#   bench/latency.sh                # prints Markdown; RECORD=1 also writes
#                                   # the "## Closures over a slow network"
#                                   # section of BENCHMARKS.md
#
#   RTTS="0 10 40 100"   round-trip times (ms) nix-outbox is measured at
#   ANCHOR_RTTS="40"     ... and `nix copy` (Nix 2.8 takes ~100 s at 40 ms)
#   ANCHORS="2.8 2.34"   which `nix copy`: the host's Nix 2.8, and Nix 2.34
#                        from the sid chroot of scripts/nix-chroot.sh
#                        (created if missing; "2.8" alone skips it)
#   SMALL=500            leaves of the wide closure (8 KiB each, + 1 root)
#   TINY=10000           tiny paths (`builtins.toFile`) for the file:// row
#   REPS=1               runs per cell (median reported)
#
# The caches: a private nginx accepting PUT (scripts/nginx-webdav.sh) and a
# private s3s-fs, each behind the testkit's fault proxy with latency=RTT
# (this kernel has no netem): a new connection waits one RTT, every request
# half an RTT each way. Both tools upload zstd. Every run starts from an
# empty cache. The closures are made with builtins.toFile (no builds), the
# same expression in the chroot, so both stores hold the same paths.
source "$(dirname "$0")/lib.sh"

RTTS=${RTTS:-0 10 40 100}
ANCHOR_RTTS=${ANCHOR_RTTS:-40}
ANCHORS=${ANCHORS:-2.8 2.34}
SMALL=${SMALL:-500}
TINY=${TINY:-10000}
REPS=${REPS:-1}
RECORD=${RECORD:-0}
NOISY=0
HZ=$(getconf CLK_TCK)
BENCH_CGROUP=
PROXY_BIN=$BENCH_ROOT/target/release/examples/fault_proxy
CHROOT_SH=$BENCH_ROOT/scripts/nix-chroot.sh

bench_setup
(cd "$BENCH_ROOT" && cargo build --release -q -p nix-outbox-testkit --example fault_proxy >&2)
bash "$BENCH_ROOT/scripts/nginx-webdav.sh" install >/dev/null
start_nix_daemon
start_s3s
make_key_and_config
NONCE=$(random_hex 8)

# closure_expr TAG N BLOCKS: N leaves of BLOCKS × 64 hex characters (at
# least their own name) and a root referencing them all.
closure_expr() {
  printf 'let leaf = i: builtins.toFile "%s-${toString i}" ("%s-${toString i}" + builtins.concatStringsSep "" (builtins.genList (j: builtins.hashString "sha256" "%s-${toString i}-${toString j}") %s)); in builtins.toFile "%s-root" (builtins.concatStringsSep "\\n" (builtins.genList leaf %s))' \
    "$1" "$NONCE" "$NONCE" "$3" "$1" "$2"
}
make_closure() {
  local root
  root=$(env -u NIX_REMOTE nix-instantiate --eval --read-write-mode --json -E "$(closure_expr "$@")" | tr -d '"')
  mapfile -t -O "${#BENCH_STORE_PATHS[@]}" BENCH_STORE_PATHS < <(nix-store -qR "$root")
  echo "$root"
}
note "making the closures (builtins.toFile)"
SMALL_ROOT=$(make_closure "lat-small" "$SMALL" 128)
TINY_ROOT=$(make_closure "lat-tiny" "$TINY" 0)

# --- the caches, behind proxies ------------------------------------------------

HTTP_DIR=$WORK/nginx
mkdir -p "$HTTP_DIR"
HTTP_PORT=$((20000 + RANDOM % 40000))
bash "$BENCH_ROOT/scripts/nginx-webdav.sh" run "$HTTP_DIR" "$HTTP_PORT" </dev/null >"$HTTP_DIR/run.log" 2>&1 &
BENCH_PIDS+=($!)
for _ in $(seq 300); do port_open "$HTTP_PORT" && break; sleep 0.1; done
port_open "$HTTP_PORT" || die "nginx did not start: $(cat "$HTTP_DIR/run.log")"

# start_proxy UPSTREAM RTT: sets PROXY (host:port); the proxy ends with the
# benchmark (its stdin is a pipe we hold).
start_proxy() {
  local out=$WORK/proxy.$RANDOM
  mkfifo "$out.in"
  "$PROXY_BIN" "$1" "latency=$2" <"$out.in" >"$out" 2>"$out.err" &
  BENCH_PIDS+=($!)
  exec {fd}>"$out.in"
  for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.05; done
  PROXY=$(head -1 "$out")
  [ -n "$PROXY" ] || die "fault proxy did not start: $(cat "$out.err")"
}

reset_caches() {
  rm -rf "$HTTP_DIR/root" && mkdir -p "$HTTP_DIR/root"
  rm -rf "$S3_DATA/bench" && mkdir -p "$S3_DATA/bench"
}

# --- the chroot's Nix 2.34 ----------------------------------------------------------

CHROOT=
if [[ " $ANCHORS " == *" 2.34 "* ]]; then
  CHROOT=$("$CHROOT_SH" path sid)
  "$CHROOT_SH" create sid "$CHROOT" >&2
  CHROOT_TMP=$(mktemp -d /tmp/nix-outbox-lat-chroot.XXXXXX)
  chmod 1777 "$CHROOT_TMP"
  "$CHROOT_SH" mount "$CHROOT" "$CHROOT_TMP"
  chroot_cleanup() {
    local rc=$?
    "$CHROOT_SH" umount "$CHROOT" || true
    rm -rf "$CHROOT_TMP"
    (exit "$rc")
    bench_cleanup
  }
  trap chroot_cleanup EXIT
  CHROOT_VERSION=$("$CHROOT_SH" version "$CHROOT")
  note "chroot: $CHROOT_VERSION; making the same closures there"
  for spec in "lat-small $SMALL 128" "lat-tiny $TINY 0"; do
    # shellcheck disable=SC2086
    "$CHROOT_SH" run "$CHROOT" nix-instantiate --eval --read-write-mode --json -E "$(closure_expr $spec)" >/dev/null
  done
fi

# nix_copy VERSION URL ROOT: the anchor's command in CMD.
nix_copy() {
  case $1 in
    2.8) nix_cmd "$2"; CMD+=("$3") ;;
    2.34) CMD=("$CHROOT_SH" run "$CHROOT" nix --extra-experimental-features nix-command
      --option substituters '' copy --to "$2" "$3") ;;
  esac
}

# timed LOG CMD...: wall seconds in WALL, peak RSS KiB in RSS.
timed() {
  local log=$1
  shift
  reset_caches
  /usr/bin/time -f '%e %M' -o "$WORK/time.out" "$@" >"$log" 2>&1 || {
    tail -20 "$log" >&2
    die "failed: $*"
  }
  read -r WALL RSS <"$WORK/time.out"
}

ROWS=()
# run_reps LABEL CMD-MAKER...: REPS runs of the command CMD-MAKER puts in
# CMD; the median wall time in CELL.
run_reps() {
  local label=$1 walls=() i
  shift
  for i in $(seq "$REPS"); do
    "$@"
    timed "$WORK/run.log" "${CMD[@]}"
    walls+=("$WALL")
    note "$label: ${WALL}s (peak RSS $(mib "$RSS") MiB)"
  done
  CELL=$(median "${walls[@]}")
}

for rtt in $RTTS; do
  start_proxy "127.0.0.1:$HTTP_PORT" "$rtt"
  http=$PROXY
  start_proxy "$S3_ENDPOINT" "$rtt"
  s3=$PROXY
  run_reps "outbox http $rtt ms" eval 'outbox_cmd "http://'"$http"'?compression=zstd"; CMD+=("$SMALL_ROOT")'
  o_http=$CELL
  run_reps "outbox s3 $rtt ms" eval 'outbox_cmd "s3://bench?endpoint='"$s3"'&scheme=http&compression=zstd"; CMD+=("$SMALL_ROOT")'
  o_s3=$CELL
  anchors=""
  if [[ " $ANCHOR_RTTS " == *" $rtt "* ]]; then
    for v in $ANCHORS; do
      run_reps "nix copy $v http $rtt ms" nix_copy "$v" "http://$http?compression=zstd" "$SMALL_ROOT"
      anchors+="| $v: $CELL s (×$(awk -v a="$CELL" -v b="$o_http" 'BEGIN { printf "%.1f", a / b }')) "
    done
  fi
  ROWS+=("| $((SMALL + 1)) × 8 KiB | $rtt | $o_http | $o_s3 ${anchors}|")
done

# 10,000 tiny paths to file:// (no latency): nix-outbox against nix copy.
FILE_DIR=$WORK/file-cache
run_reps "outbox file tiny" eval 'outbox_cmd "file://'"$FILE_DIR"'?compression=zstd"; CMD=(bash -c "rm -rf '"$FILE_DIR"' && mkdir -p '"$FILE_DIR"' && exec \"\$@\"" _ "${CMD[@]}" "$TINY_ROOT")'
t_outbox=$CELL
tiny_anchor=""
for v in $ANCHORS; do
  if [ "$v" = 2.34 ]; then
    mkdir -p "$CHROOT_TMP/cache"
    run_reps "nix copy $v file tiny" eval 'CMD=(bash -c "rm -rf '"$CHROOT_TMP"'/cache && exec \"\$@\"" _ "$CHROOT_SH" run "$CHROOT" nix --extra-experimental-features nix-command --option substituters "" copy --to "file://'"$CHROOT_TMP"'/cache?compression=zstd" "$TINY_ROOT")'
  else
    run_reps "nix copy $v file tiny" eval 'nix_cmd "file://'"$FILE_DIR"'?compression=zstd"; CMD=(bash -c "rm -rf '"$FILE_DIR"' && mkdir -p '"$FILE_DIR"' && exec \"\$@\"" _ "${CMD[@]}" "$TINY_ROOT")'
  fi
  tiny_anchor+="| $v: $CELL s (nix-outbox ×$(awk -v a="$t_outbox" -v b="$CELL" 'BEGIN { printf "%.2f", a / b }')) "
done

{
  print_context
  echo "Reproduce: \`RTTS=\"$RTTS\" ANCHOR_RTTS=\"$ANCHOR_RTTS\" ANCHORS=\"$ANCHORS\" SMALL=$SMALL TINY=$TINY REPS=$REPS bench/latency.sh\`"
  echo
  echo "| closure | RTT ms | nix-outbox copy, HTTP (s) | nix-outbox copy, S3 (s) | nix copy, HTTP (s, × nix-outbox) |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "| $((TINY + 1)) tiny paths to file:// | nix-outbox copy: $t_outbox s $tiny_anchor|"
} | tee "$WORK/result.md"
