#!/usr/bin/env bash
# Runs the workspace's integration tests against newer Nix releases than the
# host's Nix 2.8: each test binary is built here, on the host, then run inside
# a Debian chroot (scripts/nix-chroot.sh) whose nix, nix-store and nix-daemon
# are the suite's (sid: 2.34.x, trixie: 2.26.x).
#
#   scripts/test-modern-nix.sh                      # sid
#   scripts/test-modern-nix.sh sid trixie           # one suite after another
#   TEST_FILTER=narinfo scripts/test-modern-nix.sh  # only binaries whose name matches
#   scripts/test-modern-nix.sh -f keygen sid -- --nocapture   # args after -- go to every binary
#
# Options (before --): -f/--filter REGEX (same as TEST_FILTER), -h/--help.
# Environment:
#   TEST_FILTER              bash regex matched against "package::target" (default: all)
#   TEST_PACKAGES            space-separated packages to build and test instead of the
#                            whole workspace (e.g. "nix-outbox nix-outbox-core")
#   TEST_KINDS               comma-separated cargo target kinds to run (default "test":
#                            integration tests; "test,lib,bin" adds unit tests)
#   NIX_OUTBOX_TEST_TIMEOUT  seconds per test binary before it is killed (default 900)
#   NIX_OUTBOX_PASS_ENV      extra variable names to pass into the chroot
#   NIX_OUTBOX_CHROOT_ROOT   where chroots are kept (default /var/cache/nix-outbox/chroots)
#
# Each binary sees NIX_OUTBOX_TEST_NIX_VERSION (e.g. 2.34.8), CARGO_MANIFEST_DIR
# and runs in its package directory, as under `cargo test`. Logs go to
# <target dir>/modern-nix/<suite>/<binary>.log. Exit status: 0 only if every
# selected binary passed on every suite. Needs root (chroot, mount).
set -euo pipefail

cd "$(dirname "$0")/.."
CHROOT_SH=$PWD/scripts/nix-chroot.sh

die() { printf 'test-modern-nix: error: %s\n' "$*" >&2; exit 1; }
log() { printf '\n== %s\n' "$*" >&2; }

suites=() test_args=()
filter=${TEST_FILTER:-}
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; test_args=("$@"); break ;;
    -f | --filter) [ $# -ge 2 ] || die "$1 needs a REGEX"; filter=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) suites+=("$1"); shift ;;
  esac
done
[ ${#suites[@]} -gt 0 ] || suites=(sid)
kinds=${TEST_KINDS:-test}
timeout_s=${NIX_OUTBOX_TEST_TIMEOUT:-900}
[[ $timeout_s =~ ^[0-9]+$ ]] || die "NIX_OUTBOX_TEST_TIMEOUT must be a number of seconds"
[ "$(id -u)" = 0 ] || die "must run as root (chroot and mount need it)"

# jq reads cargo's JSON; it is one apt package, unlike a Python dependency.
if ! command -v jq >/dev/null 2>&1; then
  log "installing jq"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
  }
fi

# --- State for the exit trap. Set while a chroot is mounted / a temp dir exists.
cur_dir='' cur_shared='' work=''

# Processes still running inside the chroot keep its mounts busy (a test that
# started a nix-daemon and panicked before stopping it, say). While this
# script holds the chroot's lock, everything rooted there was started by this
# run, so it is ours to end, by PID.
end_chroot_processes() {
  local dir=$1 p pids=() i
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$dir" ] && pids+=("${p#/proc/}")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  printf 'test-modern-nix: ending leftover processes in %s: %s\n' "$dir" "${pids[*]}" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for i in 1 2 3 4 5 6 7 8 9 10; do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

# Unmount before anything is deleted: the shared temp dir and the checkout
# are bind-mounted inside, and the chroot must never be left holding the
# host's /dev, /sys or checkout after this script is gone.
release_suite() {
  local rc=0
  if [ -n "$cur_dir" ]; then
    end_chroot_processes "$cur_dir"
    "$CHROOT_SH" umount "$cur_dir" || rc=1
    cur_dir=''
  fi
  if [ -n "$cur_shared" ]; then
    # Test temp dirs can hold read-only copies of store paths; root's rm -rf
    # removes them. --one-file-system: never follow into anything mounted.
    rm -rf --one-file-system -- "$cur_shared" || rc=1
    cur_shared=''
  fi
  return "$rc"
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM HUP
  release_suite || { echo "test-modern-nix: cleanup failed; check: findmnt | grep chroots" >&2; rc=1; }
  [ -z "$work" ] || rm -rf -- "$work"
  exit "$rc"
}
trap on_exit EXIT
# Ctrl-C / kill: exit with the usual status; the EXIT trap then cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

work=$(mktemp -d /tmp/nix-outbox-modern-nix-build.XXXXXX)

# --- Build on the host. The chroot has no Rust toolchain, and does not need
# one: the binaries link only libc and libgcc_s, and sid's glibc is newer.
pkg_args=(--workspace)
if [ -n "${TEST_PACKAGES:-}" ]; then
  pkg_args=()
  for p in $TEST_PACKAGES; do pkg_args+=(-p "$p"); done
fi
log "building test binaries (cargo test ${pkg_args[*]} --no-run)"
cargo metadata --format-version 1 --no-deps --locked >"$work/metadata.json"
workspace_root=$(jq -r .workspace_root "$work/metadata.json")
target_dir=$(jq -r .target_directory "$work/metadata.json")
# --locked: never rewrite Cargo.lock from here. json-render-diagnostics:
# compiler errors still print readably on stderr; stdout is pure JSON.
cargo test "${pkg_args[@]}" --locked --no-run --message-format=json-render-diagnostics >"$work/build.json"

# One line per test executable: package, target, executable, package dir.
jq -r --slurpfile meta "$work/metadata.json" --arg kinds "$kinds" '
  ($meta[0].packages | map({key: .manifest_path, value: .name}) | from_entries) as $names
  | select(.reason == "compiler-artifact" and .profile.test and .executable != null)
  | select(any(.target.kind[]; . as $k | $kinds | split(",") | index($k)))
  | [($names[.manifest_path] // "?"), .target.name, .executable, (.manifest_path | rtrimstr("/Cargo.toml"))]
  | @tsv' "$work/build.json" | sort >"$work/all.tsv"

names=() exes=() dirs=()
while IFS=$'\t' read -r pkg tgt exe mdir; do
  name="$pkg::$tgt"
  if [ -n "$filter" ] && ! [[ $name =~ $filter ]]; then continue; fi
  names+=("$name") exes+=("$exe") dirs+=("$mdir")
done <"$work/all.tsv"
if [ ${#names[@]} -eq 0 ]; then
  echo "available: $(cut -f1,2 "$work/all.tsv" | tr '\t' ':' | sed 's/:/::/' | tr '\n' ' ')" >&2
  die "no test binary of kind '$kinds' matches filter '${filter}'"
fi
printf 'test binaries: %s\n' "${names[*]}" >&2

# The checkout is bind-mounted read-only at its own path: binaries find
# fixtures through CARGO_MANIFEST_DIR and the CLI through CARGO_BIN_EXE_*,
# both absolute host paths compiled in. CARGO_TARGET_TMPDIR (target/tmp) is
# the one place under it that tests may write, so it is mounted read-write.
binds=("$workspace_root")
case $target_dir/ in "$workspace_root"/*) ;; *) binds+=("$target_dir") ;; esac
mkdir -p "$target_dir/tmp"
binds+=("$target_dir/tmp:rw")

summary=()
failed=0

run_suite() {
  local suite=$1 dir lockfd
  dir=$("$CHROOT_SH" path "$suite")
  mkdir -p "$(dirname "$dir")"
  # One run per chroot at a time: a second run's cleanup would unmount the
  # first's /proc and checkout mid-test.
  exec {lockfd}>"$dir.lock"
  if ! flock -n "$lockfd"; then
    echo "test-modern-nix: waiting for another run using $dir" >&2
    flock -w 1800 "$lockfd" || die "another run kept $dir for 30 minutes; is one stuck? (see its lock, $dir.lock)"
  fi

  log "$suite: chroot $dir"
  local t0=$SECONDS
  "$CHROOT_SH" create "$suite" "$dir"

  cur_shared=$(mktemp -d /tmp/nix-outbox-modern-nix.XXXXXX)
  # World-writable like /tmp: Nix creates build directories under TMPDIR and
  # hands them to the nixbld users, who must be able to reach them.
  chmod 1777 "$cur_shared"
  cur_dir=$dir
  "$CHROOT_SH" mount "$dir" "$cur_shared" "${binds[@]}"

  local version_line version
  version_line=$("$CHROOT_SH" version "$dir")
  version=${version_line##* }
  echo "$suite: $version_line (chroot ready in $((SECONDS - t0)) s)" >&2

  local logdir=$target_dir/modern-nix/$suite i
  mkdir -p "$logdir" "$cur_shared/bin"
  for i in "${!names[@]}"; do
    local name=${names[$i]} exe=${exes[$i]} mdir=${dirs[$i]}
    local bin
    bin=$cur_shared/bin/$(basename -- "$exe")
    # A copy, so a concurrent `cargo build` on the host cannot swap the
    # binary out from under the run.
    cp -- "$exe" "$bin"
    local logf=$logdir/${name//::/__}.log
    log "$suite: $name (Nix $version)"
    local start end rc
    start=$(date +%s%N)
    set +e
    # --foreground: the binary stays in our process group, so Ctrl-C reaches
    # it; the timeout still ends it if it hangs.
    NIX_OUTBOX_TEST_NIX_VERSION=$version \
      CARGO_MANIFEST_DIR=$mdir \
      RUST_BACKTRACE=${RUST_BACKTRACE:-1} \
      NIX_OUTBOX_PASS_ENV="NIX_OUTBOX_TEST_NIX_VERSION CARGO_MANIFEST_DIR RUST_BACKTRACE RUST_LOG RUST_TEST_THREADS RUST_MIN_STACK ${NIX_OUTBOX_PASS_ENV:-}" \
      NIX_OUTBOX_CHROOT_CWD=$mdir \
      NIX_OUTBOX_SHARED_TMP=$cur_shared \
      timeout --foreground --kill-after=30 "$timeout_s" \
      "$CHROOT_SH" run "$dir" "$bin" "${test_args[@]}" 2>&1 | tee "$logf"
    rc=${PIPESTATUS[0]}
    set -e
    end=$(date +%s%N)
    local secs
    secs=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.1f", ns / 1e9 }')
    local verdict=PASS
    # A name filter that matches no test passes with 0 tests (a renamed
    # test would silently drop out): a run that ran none fails.
    if [ "$rc" -eq 0 ] && ! grep -qE '^test result: ok\. [1-9][0-9]* passed' "$logf"; then
      rc=1
      echo "test-modern-nix: $name ran no test (${test_args[*]})" >&2
    fi
    if [ "$rc" -ne 0 ]; then
      verdict=FAIL failed=$((failed + 1))
      [ "$rc" -ne 124 ] || verdict="FAIL (timed out after ${timeout_s}s)"
      # A test killed by Ctrl-C: stop the whole run, not just this binary.
      [ "$rc" -ne 130 ] || exit 130
    fi
    summary+=("$(printf '%-7s %-40s %-8s %6ss  exit %-3s %s' "$suite" "$name" "$version" "$secs" "$rc" "$verdict")")
  done

  release_suite
  exec {lockfd}>&-
}

for suite in "${suites[@]}"; do
  run_suite "$suite"
done

log "summary"
printf '%-7s %-40s %-8s %7s  %-8s %s\n' suite binary nix time status verdict
printf '%s\n' "${summary[@]}"
if [ "$failed" -gt 0 ]; then
  echo "$failed test binary run(s) failed; logs in $target_dir/modern-nix/" >&2
  exit 1
fi
echo "all passed" >&2
