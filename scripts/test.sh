#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests
# need (Nix from Debian, cargo-fuzz), then runs formatting and lint checks,
# every unit and integration test (against the real Nix), and short fuzz runs.
#
#   scripts/test.sh            # everything
#   FUZZ_SECONDS=0 scripts/test.sh   # skip the fuzz smoke runs
#   MATRIX=0 scripts/test.sh         # skip the Nix 2.26/2.34 chroot matrix
set -euo pipefail
cd "$(dirname "$0")/.."

export FUZZ_SECONDS=${FUZZ_SECONDS:-20}

log() { printf '\n== %s\n' "$*"; }

# Every stage runs under its own time limit, so a hang ends that stage
# (and the run) with its name and the last lines it printed, not as CI's
# 90-minute kill with nothing said. The limits are several times a cold
# run's (README: "How long the tests take").
stage_logs=$(mktemp -d /tmp/nix-outbox-test-stages.XXXXXX)
trap 'rm -rf -- "$stage_logs"' EXIT
stage() {
  local name=$1 limit=$2 rc t0=$SECONDS
  shift 2
  local out=$stage_logs/$(printf '%s' "$name" | tr -c 'A-Za-z0-9' '_').log
  log "$name (time limit ${limit}s)"
  # A function of this script runs in a fresh bash that is given them all.
  if declare -F "$1" >/dev/null; then
    set -- bash -c "set -euo pipefail; $(declare -f); $*"
  fi
  set +e
  timeout -k 30 "$limit" "$@" > >(tee "$out") 2>&1
  rc=$?
  set -e
  wait # for tee
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    printf '\n== stage "%s" ran out of time (%ss); its last lines:\n' "$name" "$limit" >&2
    tail -n 60 "$out" >&2
    exit 1
  fi
  [ "$rc" = 0 ] || { printf '\n== stage "%s" failed (exit %s)\n' "$name" "$rc" >&2; exit "$rc"; }
  printf '== stage "%s" took %ss\n' "$name" $((SECONDS - t0))
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_nix() {
  if ! command -v nix-store >/dev/null 2>&1; then
    log "installing Nix (Debian's nix-bin)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin >/dev/null
  fi
  # Building as root in single-user mode needs the build users; Debian's
  # nix-setup-systemd normally creates them, but it is only a Recommends.
  if ! getent group nixbld >/dev/null; then as_root groupadd -r nixbld; fi
  for i in 1 2 3 4; do
    if ! getent passwd "nixbld$i" >/dev/null; then
      as_root useradd -r -M -N -g nixbld -G nixbld -s /usr/sbin/nologin "nixbld$i"
    fi
  done
  nix-store --version
}

# The systemd tests (crates/cli/tests/integration/systemd.rs) run `systemd-analyze
# verify` on the installed units and `systemd-socket-activate`; neither
# needs systemd running as PID 1.
ensure_systemd_tools() {
  if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v systemd-socket-activate >/dev/null 2>&1; then
    log "installing systemd (systemd-analyze, systemd-socket-activate)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  fi
}

ensure_cargo_fuzz() {
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
  fi
}

# A one-shot run gains nothing from incremental caches, which were some
# 20 GiB of the target dir; CI's disk is shared and has run out before.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
log "disk space (a full disk fails tests with ENOSPC, not with our bugs)"
df -h . /tmp

install_tools() {
  ensure_nix
  ensure_systemd_tools
  # The S3 and HTTP target tests run against a real s3s-fs and a real nginx;
  # the tests find them where these scripts put them.
  log "installing the test servers (s3s-fs, nginx)"
  scripts/s3s.sh >/dev/null
  scripts/nginx-webdav.sh install >/dev/null
  # The metrics test parses /metrics with the official Prometheus client's parsers.
  if ! /usr/bin/python3 -c 'import prometheus_client' 2>/dev/null; then
    log "installing python3-prometheus-client"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-prometheus-client >/dev/null
  fi
}

fuzz_all() {
  ensure_cargo_fuzz
  # Seeded with real Nix output; a failing target prints its whole log.
  scripts/fuzz.sh "$FUZZ_SECONDS"
}

stage "install Nix, systemd tools, s3s-fs, nginx" 1200 install_tools
stage "cargo fmt --check" 300 cargo fmt --all -- --check
stage "cargo clippy" 2400 cargo clippy --workspace --all-targets --locked -- -D warnings
stage "cargo test" 3000 cargo test --workspace --locked

if [ "${MATRIX:-1}" != 0 ]; then
  # Nix 2.35 has no Debian package: it is built from source in a sid chroot
  # (about 25 minutes on 2 cores the first time; the installed tree is
  # cached under /var/cache/nix-outbox, so later runs take seconds).
  stage "Nix 2.35.2 from source (scripts/nix-source.sh)" 3600 scripts/nix-chroot.sh create nix-2.35
  # Nix 2.26, 2.34 and 2.35 in debootstrap chroots, next to the host's 2.8.
  stage "Nix version matrix (scripts/matrix.sh)" 2400 scripts/matrix.sh trixie sid nix-2.35
fi

if [ "$FUZZ_SECONDS" != 0 ]; then
  stage "fuzz smoke runs" 1800 fuzz_all
fi

log "all tests passed"
