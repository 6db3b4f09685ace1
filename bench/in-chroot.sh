#!/usr/bin/env bash
# Runs a benchmark of bench/ against a newer Nix than the host's: inside a
# chroot of scripts/nix-chroot.sh (sid: Nix 2.34, nix-2.35: Nix 2.35 built
# from source), with the release binaries built here on the host (the
# chroot has no Rust toolchain; they link only libc).
#
#   bench/in-chroot.sh SUITE SCRIPT [VAR=VALUE...]
#   bench/in-chroot.sh nix-2.35 build-loop.sh N=60 MODES=batch CONFIGS="none true"
#
# The checkout is mounted read-only at its own path, so results are
# printed, never recorded (RECORD=0 is passed). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ $# -ge 2 ] || { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }
suite=$1 script=$2
shift 2
[ -f "bench/$script" ] || { echo "in-chroot: no bench/$script" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "in-chroot: run as root" >&2; exit 1; }

echo "in-chroot: building the release binaries and the fault proxy" >&2
cargo build --release -q -p nix-outbox -p nix-outbox-hook --bins
cargo build --release -q -p nix-outbox-testkit --example fault_proxy

dir=$(scripts/nix-chroot.sh path "$suite")
mkdir -p "$(dirname "$dir")"
# One user of a chroot at a time (the test scripts take the same lock):
# the cleanup below unmounts everything under it.
exec {lockfd}>"$dir.lock"
flock -w 1800 "$lockfd" || { echo "in-chroot: $dir is busy (lock $dir.lock)" >&2; exit 1; }
scripts/nix-chroot.sh create "$suite"
shared=$(mktemp -d /tmp/nix-outbox-bench-chroot.XXXXXX)
chmod 1777 "$shared"
cleanup() {
  scripts/nix-chroot.sh umount "$dir" || echo "in-chroot: unmounting $dir failed; see findmnt" >&2
  rm -rf --one-file-system -- "$shared"
}
trap cleanup EXIT
scripts/nix-chroot.sh mount "$dir" "$shared" "$ROOT"
# The benchmark wants GNU time and shuf (coreutils has it); minbase lacks
# the first.
if ! scripts/nix-chroot.sh run "$dir" test -x /usr/bin/time; then
  scripts/nix-chroot.sh run "$dir" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o Acquire::Check-Valid-Until=false install -y -qq time >/dev/null 2>&1 || {
    scripts/nix-chroot.sh run "$dir" apt-get -o Acquire::Check-Valid-Until=false update -qq >/dev/null
    scripts/nix-chroot.sh run "$dir" env DEBIAN_FRONTEND=noninteractive \
      apt-get -o Acquire::Check-Valid-Until=false install -y -qq time >/dev/null
  }
fi
names=(PREBUILT RECORD)
export PREBUILT=1 RECORD=0
for kv in "$@"; do
  [[ $kv == *=* ]] || { echo "in-chroot: expected VAR=VALUE, got $kv" >&2; exit 2; }
  export "${kv?}"
  names+=("${kv%%=*}")
done
NIX_OUTBOX_PASS_ENV="${names[*]}" scripts/nix-chroot.sh run "$dir" bash "$ROOT/bench/$script"
