#!/usr/bin/env bash
# Hook ingestion: N concurrent `nix-outbox-hook` invocations against a
# running `nix-outbox daemon`, timed from spawn to exit as Nix sees them,
# at several concurrency levels; the same with the daemon stopped (the hook
# spools), and the bare hook process (no paths: config load and exit) as a
# baseline. After each run every acknowledged path must be in the queue, and
# with the daemon down there must be one spool file per invocation.
#
#   bench/hook-ingest.sh     # prints a Markdown table
#
#   N=1000                   invocations per run
#   CONCURRENCY=1000,64,8,1  hooks running at once, one run per level
#   TMPFS=1                  also run with the state dir on /dev/shm (no
#                            fsync cost), to show what the disk costs; 0: skip
#
# Each run waits for the machine to be quiet and is repeated when other
# processes used the CPUs meanwhile (lib.sh: QUIET_BUSY, QUIET_MAX,
# QUIET_OTHER, MAX_TRIES). The program is
# crates/cli/examples/hook_ingest.rs (--help for its options).
# Goal (issue 6): p99 ≤ 10 ms with the daemon up.
source "$(dirname "$0")/lib.sh"

N=${N:-1000}
CONCURRENCY=${CONCURRENCY:-1000,64,8,1}
TMPFS=${TMPFS:-1}

# GNU time and Nix (the daemon's expander asks the store about the paths),
# then the hook binary and the benchmark program besides nix-outbox.
bench_setup
(cd "$BENCH_ROOT" && cargo build --release -q -p nix-outbox -p nix-outbox-hook --bins --example hook_ingest >&2)
BENCH=$BENCH_ROOT/target/release/examples/hook_ingest

# Our own directories, apart from lib.sh's $WORK: the runs' temp dirs (state
# dir, queue, spool, socket) go there, and on tmpfs for the comparison.
DISK=$(mktemp -d /tmp/nix-outbox-hook-ingest.XXXXXX)
SHM=
if [ "$TMPFS" = 1 ] && [ -d /dev/shm ]; then
  SHM=$(mktemp -d /dev/shm/nix-outbox-hook-ingest.XXXXXX)
fi
# lib.sh's cleanup removes $WORK and ends what it started; this one also
# removes our directories, keeping the exit status for it.
cleanup_dirs() {
  local rc=$?
  rm -rf "$DISK" ${SHM:+"$SHM"}
  (exit "$rc")
  bench_cleanup
}
trap cleanup_dirs EXIT

fs_of() { df --output=fstype "$1" | tail -1 | tr -d ' '; }

# run SCENARIOS CONCURRENCY DIR LABEL: one run of the benchmark program,
# kept like lib.sh's `measure` keeps a run: started once the machine is
# quiet, and repeated (at most MAX_TRIES times) when other processes used
# QUIET_OTHER percent of the CPUs or more meanwhile (everything the program
# starts, hooks and daemon included, is its own CPU time). Its table rows
# are appended to $TABLE (the header only once). A run whose checks fail
# still reports its rows (marked FAILED) and makes the script fail at the end.
TABLE=$DISK/table.md
FAILED=0
run() {
  local out rc try t0 t1 user sys wall other
  for try in $(seq "$MAX_TRIES"); do
    wait_quiet
    note "daemon $1, concurrency $2, state dir on $4"
    t0=$(busy_ticks)
    rc=0
    out=$(/usr/bin/time -f '%e %U %S' -o "$DISK/time.out" \
      "$BENCH" --invocations "$N" --scenarios "$1" --concurrency "$2" --tmp "$3" --label "$4") || rc=$?
    t1=$(busy_ticks)
    read -r wall user sys <"$DISK/time.out"
    other=$(awk -v t="$((t1 - t0))" -v hz="$HZ" -v u="$user" -v s="$sys" -v w="$wall" -v n="$(nproc)" \
      'BEGIN { o = t / hz - u - s; if (o < 0) o = 0; p = 0; if (w > 0) p = 100 * o / (w * n); printf "%.0f", p }')
    [ "$rc" -ne 0 ] || [ "$other" -lt "$QUIET_OTHER" ] && break
    if [ "$try" -lt "$MAX_TRIES" ]; then
      note "discarding a run: other processes used ${other}% of the CPUs meanwhile"
      DISCARDED=$((DISCARDED + 1))
    else
      note "warning: keeping a disturbed run (${other}% of the CPUs used by others)"
      NOISY=$((NOISY + 1))
    fi
  done
  if [ "$rc" -ne 0 ]; then
    FAILED=1
    note "that run failed (exit status $rc)"
  fi
  [ -n "$out" ] || return 0
  if [ -s "$TABLE" ]; then
    tail -n +3 <<<"$out" >>"$TABLE"
  else
    printf '%s\n' "$out" >"$TABLE"
  fi
}

DISK_FS=$(fs_of "$DISK")
IFS=, read -r -a LEVELS <<<"$CONCURRENCY"
for c in "${LEVELS[@]}"; do
  for s in up down noop; do
    run "$s" "$c" "$DISK" "$DISK_FS"
  done
done
if [ -n "$SHM" ]; then
  for c in "${LEVELS[@]}"; do
    for s in up down; do
      run "$s" "$c" "$SHM" tmpfs
    done
  done
fi

print_context
echo "- hook invocations per run: $N, each with DRV_PATH and 3 OUT_PATHS (well-formed, not in the store)"
echo "- default hook-timeout-ms (2000); daemon with RUST_LOG=info, one file:// target"
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
cat "$TABLE"
[ "$FAILED" -eq 0 ] || die "a run failed or one of its checks did not pass (see above)"
