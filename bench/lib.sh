# shellcheck shell=bash
# Shared by the benchmark scripts in bench/ (sourced, not run).
#
# Everything a benchmark creates is registered here and removed on exit,
# whatever the exit: its work directory, the processes it started (ended by
# their PID, never by name), and the store paths it added.
set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=$(basename "$0" .sh)
OUTBOX=$BENCH_ROOT/target/release/nix-outbox

note() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; }
die() {
  note "error: $*"
  exit 1
}

# --- cleanup -------------------------------------------------------------

BENCH_PIDS=()
BENCH_STORE_PATHS=()
WORK=$(mktemp -d /tmp/nix-outbox-bench.XXXXXX)

bench_cleanup() {
  local rc=$?
  set +e
  for pid in "${BENCH_PIDS[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  # Only what is still there (a benchmark may have deleted some already),
  # in one call, so Nix orders the deletions (referrers first) itself.
  local p left=()
  for p in "${BENCH_STORE_PATHS[@]}"; do
    [ -e "$p" ] && left+=("$p")
  done
  if [ ${#left[@]} -gt 0 ]; then
    if ! nix-store --delete "${left[@]}" >"$WORK/delete.log" 2>&1; then
      note "warning: could not delete every benchmark store path:"
      tail -5 "$WORK/delete.log" >&2
    fi
  fi
  rm -rf "$WORK"
  if [ -n "${BENCH_CGROUP:-}" ]; then
    echo $$ >/sys/fs/cgroup/cpuacct/cgroup.procs
    rmdir "$BENCH_CGROUP" 2>/dev/null || note "warning: could not remove $BENCH_CGROUP"
  fi
  exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ---------------------------------------------------------------

# Installs what the benchmarks run (GNU time for wall time and peak RSS, Nix)
# and builds the release binary they measure.
bench_setup() {
  local missing=()
  [ -x /usr/bin/time ] || missing+=(time)
  command -v nix-store >/dev/null || missing+=(nix-bin)
  if [ ${#missing[@]} -gt 0 ]; then
    note "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
  note "building the release binary"
  (cd "$BENCH_ROOT" && cargo build --release -q -p nix-outbox >&2)
}

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# Median of the numbers given as arguments.
median() {
  printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

# Total size in bytes of the NAR files in a cache directory.
nar_bytes() {
  find "$1/nar" -type f -name '*.nar*' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'
}

# busy_pct SECONDS: how busy this machine's CPUs were (user, nice, system,
# interrupts; not I/O wait, not time stolen by the hypervisor) over SECONDS.
busy_pct() {
  local a b
  a=$(head -1 /proc/stat)
  sleep "$1"
  b=$(head -1 /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {
    split(a, x); split(b, y)
    for (i = 2; i <= 9; i++) { d[i] = y[i] - x[i]; t += d[i] }
    printf "%.0f", t ? 100 * (d[2] + d[3] + d[4] + d[7] + d[8]) / t : 0 }'
}

# Other work on the machine (builds, test suites) would be measured along
# with ours: before each measured run, wait until the CPUs are idle (below
# QUIET_BUSY percent busy over 3 s), for at most QUIET_MAX seconds. Runs that
# had to start anyway count in NOISY, reported with the results.
QUIET_BUSY=${QUIET_BUSY:-10}
QUIET_MAX=${QUIET_MAX:-900}
NOISY=0
wait_quiet() {
  local waited=0 busy
  while busy=$(busy_pct 3) && [ "$busy" -ge "$QUIET_BUSY" ]; do
    if [ "$waited" -ge "$QUIET_MAX" ]; then
      note "warning: still ${busy}% busy after ${QUIET_MAX}s; measuring anyway"
      NOISY=$((NOISY + 1))
      return
    fi
    [ "$waited" -eq 0 ] && note "waiting for other work on this machine to finish (${busy}% busy)"
    waited=$((waited + 3))
  done
}

# CPU time the whole machine has spent busy so far, in clock ticks (as
# busy_pct counts it).
busy_ticks() { head -1 /proc/stat | awk '{ print $2 + $3 + $4 + $7 + $8 }'; }
HZ=$(getconf CLK_TCK)

# Our own CPU time, to tell it from everybody else's: this shell and every
# process it starts go into a cpuacct cgroup of their own, which also counts
# processes that have already exited — the nix-daemon's workers serving
# nix-outbox (reaped by nobody we could ask) and s3s-fs. Without cgroup v1
# cpuacct, only the measured process counts as ours.
BENCH_CGROUP=/sys/fs/cgroup/cpuacct/nix-outbox-bench-$$
if mkdir "$BENCH_CGROUP" 2>/dev/null && echo $$ >"$BENCH_CGROUP/cgroup.procs" 2>/dev/null; then
  our_cpu_ns() { cat "$BENCH_CGROUP/cpuacct.usage"; }
else
  rmdir "$BENCH_CGROUP" 2>/dev/null || true
  BENCH_CGROUP=
fi

# A run is kept only if everything else on the machine used less than
# QUIET_OTHER percent of the CPUs while it ran; a disturbed run is repeated,
# at most MAX_TRIES times. BEFORE_EACH, if set, is evaluated before every
# attempt (emptying the cache the run uploads to, warming the page cache).
QUIET_OTHER=${QUIET_OTHER:-10}
MAX_TRIES=${MAX_TRIES:-8}
DISCARDED=0
BEFORE_EACH=

# measure LOG CMD...: once the machine is quiet, runs CMD under GNU time
# (stdout and stderr to LOG) and sets WALL (seconds), CPU (user + system
# seconds of CMD's process) and RSS (KiB, its peak resident set size). A
# failing CMD stops the benchmark with the end of its log.
measure() {
  local log=$1 user sys t0 t1 c0=0 c1=0 ours other try
  shift
  for try in $(seq "$MAX_TRIES"); do
    [ -z "$BEFORE_EACH" ] || eval "$BEFORE_EACH"
    wait_quiet
    [ -z "$BENCH_CGROUP" ] || c0=$(our_cpu_ns)
    t0=$(busy_ticks)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$WORK/time.out" "$@" >"$log" 2>&1; then
      tail -20 "$log" >&2
      die "command failed: $*"
    fi
    t1=$(busy_ticks)
    [ -z "$BENCH_CGROUP" ] || c1=$(our_cpu_ns)
    read -r WALL user sys RSS <"$WORK/time.out"
    CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    ours=$(awk -v c="$CPU" -v d="$((c1 - c0))" 'BEGIN { print (d > 0 ? d / 1e9 : c) }')
    other=$(awk -v t="$((t1 - t0))" -v hz="$HZ" -v c="$ours" -v w="$WALL" -v n="$(nproc)" \
      'BEGIN { o = t / hz - c; if (o < 0) o = 0; p = 0; if (w > 0) p = 100 * o / (w * n); printf "%.0f", p }')
    [ "$other" -lt "$QUIET_OTHER" ] && return
    if [ "$try" -lt "$MAX_TRIES" ]; then
      note "discarding a run ($WALL s): other processes used ${other}% of the CPUs meanwhile"
      DISCARDED=$((DISCARDED + 1))
    fi
  done
  note "warning: keeping a disturbed run (${other}% of the CPUs used by others)"
  NOISY=$((NOISY + 1))
}

# Reads the whole path once, so every measured run starts from a warm page
# cache.
warm() { nix-store --dump "$1" >/dev/null; }

# --- a private nix-daemon --------------------------------------------------

# unix_listening PATH: whether a Unix socket at PATH listens, from the
# kernel's table (flag 00010000: listen() was called; the path is the line's
# tail, printed as is). The file appears at bind(), a moment earlier; a
# build started in between would be refused.
unix_listening() {
  P=$1 awk 'NR > 1 && index("13579bdfBDF", substr($4, 4, 1)) && substr($0, length($0) - length(ENVIRON["P"])) == " " ENVIRON["P"] { found = 1 } END { exit !found }' /proc/net/unix
}

# nix-outbox reads the store through a nix-daemon. A private one on its own
# socket (the host runs none) keeps the measured nix-outbox process alone in
# GNU time's peak RSS: with no daemon, it would start `nix-daemon --stdio` as
# its own child, whose memory GNU time would fold in. Its CPU work (reading
# and serialising the NAR) still counts in nix-outbox's wall time. Sets
# STORE_VARS for the commands that should use it.
start_nix_daemon() {
  local d=$WORK/nix-daemon
  mkdir -p "$d/etc"
  printf 'substituters =\nexperimental-features = nix-command\nsandbox = false\nmax-jobs = 2\n' >"$d/etc/nix.conf"
  # Never with NIX_REMOTE in its environment: a daemon whose store is its
  # own socket forks workers without end.
  env -u NIX_REMOTE NIX_CONF_DIR="$d/etc" NIX_DAEMON_SOCKET_PATH="$d/socket" \
    nix-daemon </dev/null >"$d/log" 2>&1 &
  BENCH_PIDS+=($!)
  local i
  for i in $(seq 300); do
    unix_listening "$d/socket" && break
    sleep 0.1
  done
  unix_listening "$d/socket" || die "nix-daemon did not start: $(cat "$d/log")"
  STORE_VARS=("NIX_REMOTE=unix://$d/socket")
}

# --- a private S3 server (s3s-fs) ------------------------------------------

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts s3s-fs (built once by scripts/s3s.sh) on a free 127.0.0.1 port with
# random keys; a subdirectory of S3_DATA is a bucket. Sets S3_ENDPOINT and
# S3_VARS (the credentials, for nix-outbox).
start_s3s() {
  local bin
  bin=$("$BENCH_ROOT/scripts/s3s.sh")
  S3_DATA=$WORK/s3-data
  mkdir -p "$S3_DATA"
  local ak sk port pid i try
  ak=AK$(random_hex 8)
  sk=$(random_hex 20)
  for try in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    port_open "$port" && continue
    "$bin" --host 127.0.0.1 --port "$port" --access-key "$ak" --secret-key "$sk" "$S3_DATA" \
      </dev/null >"$WORK/s3s-fs.log" 2>&1 &
    pid=$!
    for i in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      port_open "$port" && break
      sleep 0.1
    done
    # Ours only if it is still running: a server that lost the port to
    # someone else exits.
    if kill -0 "$pid" 2>/dev/null && port_open "$port"; then
      BENCH_PIDS+=("$pid")
      S3_ENDPOINT=127.0.0.1:$port
      S3_VARS=("AWS_ACCESS_KEY_ID=$ak" "AWS_SECRET_ACCESS_KEY=$sk")
      return
    fi
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  die "s3s-fs did not start: $(cat "$WORK/s3s-fs.log")"
}

# --- keys and configuration --------------------------------------------------

# A signing key made by Nix, used by both sides, and a nix-outbox
# configuration that signs with it. Sets SK, PK, CONFIG.
make_key_and_config() {
  SK=$WORK/bench-1.sk
  PK=$WORK/bench-1.pk
  nix-store --generate-binary-cache-key bench-1 "$SK" "$PK"
  CONFIG=$WORK/config.toml
  printf 'state-dir = "%s"\nsecret-key-files = ["%s"]\n' "$WORK/state" "$SK" >"$CONFIG"
}

# outbox_cmd URL: sets CMD to `nix-outbox copy --to URL` as measured; the
# paths follow. (GNU time runs programs, not shell functions, hence arrays.)
outbox_cmd() {
  CMD=(env "${STORE_VARS[@]}" "${S3_VARS[@]}" "$OUTBOX" copy --config "$CONFIG" --to "$1")
}

# nix_cmd URL: sets CMD to the anchor, `nix copy --to URL` of Nix itself (as
# root with no NIX_REMOTE: straight from the local store, as a post-build
# hook does).
nix_cmd() {
  CMD=(env -u NIX_REMOTE nix --extra-experimental-features nix-command
    --option substituters '' copy --to "$1")
}

S3_VARS=()
STORE_VARS=()

# Facts about this run, printed above each result table.
print_context() {
  local commit dirty=""
  commit=$(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git -C "$BENCH_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] && dirty=" + uncommitted changes"
  echo "# $BENCH_NAME"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
  echo "- nix: $(nix --version), nix-outbox: git $commit$dirty"
  echo "- runs discarded and repeated because other processes used the CPUs meanwhile: $DISCARDED; disturbed runs kept anyway: $NOISY"
  echo
}
