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
#   MIXED="50 100 200"   MB of the big NARs (random, so incompressible) of
#                        the mixed closure, among 300 small paths, measured
#                        at 40 ms (nix-outbox, and Nix 2.34 if in ANCHORS);
#                        "" skips it
#   REPS=1               runs per cell (median reported)
#
# The caches: a private nginx accepting PUT (scripts/nginx-webdav.sh) and a
# private s3s-fs, each behind the testkit's fault proxy with latency=RTT
# (this kernel has no netem): a new connection waits one RTT, every request
# half an RTT each way. Both tools upload zstd. Every run starts from an
# empty cache of its own (a new directory, URL prefix or bucket: deleting
# thousands of files just before a run makes ext4's inode allocation slow
# for a minute, which once tripled a run's time). The closures are made with builtins.toFile (no builds), the
# same expression in the chroot, so both stores hold the same paths.
source "$(dirname "$0")/lib.sh"

RTTS=${RTTS:-0 10 40 100}
ANCHOR_RTTS=${ANCHOR_RTTS:-40}
ANCHORS=${ANCHORS:-2.8 2.34}
SMALL=${SMALL:-500}
TINY=${TINY:-10000}
MIXED=${MIXED-50 100 200}
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

# The mixed closure: the big files go into the store with builtins.path
# (so the root's text refers to them), next to 300 small leaves. The files
# live in a directory the chroot sees too, so its store gets the same paths.
BIG_DIR=$WORK/big
mkdir -p "$BIG_DIR"
BIG_ITEMS=""
for mb in $MIXED; do
  head -c "$((mb * 1000 * 1000))" /dev/urandom >"$BIG_DIR/big-$mb"
  BIG_ITEMS+=" (builtins.path { path = $BIG_DIR/big-$mb; name = \"lat-big-$mb-$NONCE\"; })"
done
mixed_expr() {
  printf 'let leaf = i: builtins.toFile "lat-mixed-${toString i}" ("%s-${toString i}" + builtins.concatStringsSep "" (builtins.genList (j: builtins.hashString "sha256" "m-%s-${toString i}-${toString j}") 128)); in builtins.toFile "lat-mixed-root" (builtins.concatStringsSep "\\n" ((builtins.genList leaf 300) ++ [%s ]))' \
    "$NONCE" "$NONCE" "$BIG_ITEMS"
}
MIXED_ROOT=
if [ -n "$MIXED" ]; then
  MIXED_ROOT=$(env -u NIX_REMOTE nix-instantiate --eval --read-write-mode --json -E "$(mixed_expr)" | tr -d '"')
  mapfile -t -O "${#BENCH_STORE_PATHS[@]}" BENCH_STORE_PATHS < <(nix-store -qR "$MIXED_ROOT")
fi

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

# new_caches: a fresh, empty cache on each server for the next run: URL
# prefix HTTP_PREFIX on nginx, bucket BUCKET on s3s-fs, directory FILE_DIR.
RUN_N=0
new_caches() {
  RUN_N=$((RUN_N + 1))
  HTTP_PREFIX=run-$RUN_N
  mkdir -p "$HTTP_DIR/root/$HTTP_PREFIX"
  BUCKET=bench-$RUN_N
  mkdir -p "$S3_DATA/$BUCKET"
  FILE_DIR=$WORK/file-$RUN_N
  mkdir -p "$FILE_DIR"
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
    mountpoint -q "$CHROOT$BIG_DIR" && umount "$CHROOT$BIG_DIR"
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
  if [ -n "$MIXED" ]; then
    # The chroot sees the big files where the host has them.
    mkdir -p "$CHROOT$BIG_DIR"
    mount --bind "$BIG_DIR" "$CHROOT$BIG_DIR"
    "$CHROOT_SH" run "$CHROOT" nix-instantiate --eval --read-write-mode --json -E "$(mixed_expr)" >/dev/null
    umount "$CHROOT$BIG_DIR"
    rmdir "$CHROOT$BIG_DIR" 2>/dev/null || true
  fi
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
  /usr/bin/time -f '%e %M' -o "$WORK/time.out" "$@" >"$log" 2>&1 || {
    tail -20 "$log" >&2
    die "failed: $*"
  }
  read -r WALL RSS <"$WORK/time.out"
}

ROWS=()
# run_reps LABEL CMD-MAKER...: REPS runs, each on fresh caches, of the
# command CMD-MAKER puts in CMD; the median wall time in CELL, the highest
# peak RSS (MiB) in CELL_RSS.
run_reps() {
  local label=$1 walls=() i max=0
  shift
  for i in $(seq "$REPS"); do
    new_caches
    "$@"
    timed "$WORK/run.log" "${CMD[@]}"
    walls+=("$WALL")
    [ "$RSS" -gt "$max" ] && max=$RSS
    note "$label: ${WALL}s (peak RSS $(mib "$RSS") MiB)"
  done
  CELL=$(median "${walls[@]}")
  CELL_RSS=$(mib "$max")
}

# push_cmd URL: CMD is a script that starts `nix-outbox daemon` for URL
# (its own state dir, socket and config, through the private nix-daemon),
# then runs `push --wait` of the closure given after it, then stops the
# daemon: the daemon's path, hook socket and queue included, timed from
# the push to the last upload (the script takes the time once the socket
# exists, so the daemon's start-up is left out).
push_cmd() {
  local d=$WORK/push-$RUN_N
  mkdir -p "$d"
  printf 'state-dir = "%s"\nsocket = "%s"\nsecret-key-files = ["%s"]\ntargets = ["%s"]\n' \
    "$d/state" "$d/hook.sock" "$SK" "$1" >"$d/config.toml"
  CMD=(env "${STORE_VARS[@]}" "${S3_VARS[@]}" bash -c '
    "$1" daemon --config "$2" >"$3/daemon.log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do [ -S "$3/hook.sock" ] && break; sleep 0.02; done
    s=$(date +%s.%N)
    "$1" push --config "$2" --wait "$4" >"$3/push.log" 2>&1 || { cat "$3/push.log" "$3/daemon.log" >&2; kill $pid; exit 1; }
    e=$(date +%s.%N)
    kill $pid; wait $pid
    echo "$s $e" >"$3/push.time"' _ "$OUTBOX" "$d/config.toml" "$d")
  PUSH_DIR=$d
}

# The URLs of this run's caches (after new_caches) behind the proxies.
http_url() { echo "http://$1/$HTTP_PREFIX?compression=zstd"; }
s3_url() { echo "s3://$BUCKET?endpoint=$1&scheme=http&compression=zstd"; }

for rtt in $RTTS; do
  start_proxy "127.0.0.1:$HTTP_PORT" "$rtt"
  http=$PROXY
  start_proxy "$S3_ENDPOINT" "$rtt"
  s3=$PROXY
  run_reps "outbox http $rtt ms" eval 'outbox_cmd "$(http_url "$http")"; CMD+=("$SMALL_ROOT")'
  o_http=$CELL o_rss=$CELL_RSS
  run_reps "outbox s3 $rtt ms" eval 'outbox_cmd "$(s3_url "$s3")"; CMD+=("$SMALL_ROOT")'
  o_s3=$CELL
  [ "$(awk -v r="$CELL_RSS" -v o="$o_rss" 'BEGIN { print (r > o) }')" = 1 ] && o_rss=$CELL_RSS
  anchors=""
  if [[ " $ANCHOR_RTTS " == *" $rtt "* ]]; then
    for v in $ANCHORS; do
      run_reps "nix copy $v http $rtt ms" eval 'nix_copy "$v" "$(http_url "$http")" "$SMALL_ROOT"'
      anchors+="$v: $CELL s (×$(awk -v a="$CELL" -v b="$o_http" 'BEGIN { printf "%.1f", a / b }')); "
    done
  fi
  push_cell="–"
  if [ "$rtt" = 40 ]; then
    # Timed from the push to its last upload (the daemon's start-up left
    # out), from the times the script wrote.
    new_caches
    push_cmd "$(http_url "$http")"
    timed "$WORK/run.log" "${CMD[@]}" "$SMALL_ROOT"
    read -r ps pe <"$PUSH_DIR/push.time"
    push_cell=$(awk -v s="$ps" -v e="$pe" 'BEGIN { printf "%.2f", e - s }')
    note "outbox push --wait http $rtt ms: ${push_cell}s"
  fi
  ROWS+=("| $((SMALL + 1)) × 8 KiB | $rtt | $o_http | $o_s3 | $push_cell | $o_rss | ${anchors:-–} |")
  if [ "$rtt" = 40 ] && [ -n "$MIXED_ROOT" ]; then
    run_reps "outbox http mixed $rtt ms" eval 'outbox_cmd "$(http_url "$http")"; CMD+=("$MIXED_ROOT")'
    m_http=$CELL m_rss=$CELL_RSS
    run_reps "outbox s3 mixed $rtt ms" eval 'outbox_cmd "$(s3_url "$s3")"; CMD+=("$MIXED_ROOT")'
    m_s3=$CELL
    [ "$(awk -v r="$CELL_RSS" -v o="$m_rss" 'BEGIN { print (r > o) }')" = 1 ] && m_rss=$CELL_RSS
    anchors=""
    if [[ " $ANCHORS " == *" 2.34 "* ]]; then
      run_reps "nix copy 2.34 http mixed $rtt ms" eval 'nix_copy 2.34 "$(http_url "$http")" "$MIXED_ROOT"'
      anchors="2.34: $CELL s (×$(awk -v a="$CELL" -v b="$m_http" 'BEGIN { printf "%.1f", a / b }'))"
    fi
    ROWS+=("| mixed: 301 small + ${MIXED// /, } MB | $rtt | $m_http | $m_s3 | – | $m_rss | ${anchors:-–} |")
  fi
done

# 10,000 tiny paths to file:// (no latency): nix-outbox against nix copy.
run_reps "outbox file tiny" eval 'outbox_cmd "file://$FILE_DIR?compression=zstd"; CMD+=("$TINY_ROOT")'
t_outbox=$CELL t_rss=$CELL_RSS
tiny_anchor=""
for v in $ANCHORS; do
  if [ "$v" = 2.34 ]; then
    run_reps "nix copy $v file tiny" eval 'mkdir -p "$CHROOT_TMP/file-$RUN_N"; CMD=("$CHROOT_SH" run "$CHROOT" nix --extra-experimental-features nix-command --option substituters "" copy --to "file://$CHROOT_TMP/file-$RUN_N?compression=zstd" "$TINY_ROOT")'
  else
    run_reps "nix copy $v file tiny" eval 'nix_cmd "file://$FILE_DIR?compression=zstd"; CMD+=("$TINY_ROOT")'
  fi
  tiny_anchor+="$v: $CELL s (nix-outbox ×$(awk -v a="$t_outbox" -v b="$CELL" 'BEGIN { printf "%.2f", a / b }')); "
done

{
  print_context
  echo "Reproduce: \`RTTS=\"$RTTS\" ANCHOR_RTTS=\"$ANCHOR_RTTS\" ANCHORS=\"$ANCHORS\" SMALL=$SMALL TINY=$TINY MIXED=\"$MIXED\" REPS=$REPS bench/latency.sh\`"
  echo
  echo "| closure | RTT ms | nix-outbox copy, HTTP (s) | nix-outbox copy, S3 (s) | nix-outbox push --wait, HTTP (s) | nix-outbox copy peak RSS (MiB) | nix copy, HTTP (s, its × of nix-outbox copy's time) |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "$((TINY + 1)) tiny paths to file:// (no proxy): nix-outbox copy $t_outbox s (peak RSS $t_rss MiB); nix copy $tiny_anchor"
} | tee "$WORK/result.md"
