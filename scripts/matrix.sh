#!/usr/bin/env bash
# The Nix version matrix: the end-to-end tests against the host's Nix (2.8)
# and the Nix of Debian trixie (2.26) and sid (2.34), and Nix 2.35 built
# from source on sid, in debootstrap chroots (scripts/nix-chroot.sh), then a cross-version round: every version
# uploads through the hook and the daemon (zstd and xz caches), and every
# version substitutes and verifies what each of the others uploaded.
#
#   scripts/matrix.sh                 # host + trixie + sid + nix-2.35
#   scripts/matrix.sh trixie          # host + trixie only
#
# Needs root. The chroots are kept in /var/cache/nix-outbox/chroots, so
# only the first run pays for debootstrap (about a minute each).
set -euo pipefail
cd "$(dirname "$0")/.."

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(trixie sid nix-2.35)

log() { printf '\n== matrix: %s\n' "$*" >&2; }

target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# Under target/tmp: scripts/test-modern-nix.sh mounts it read-write at the
# same path inside the chroots, so every version sees the same caches.
export NIX_OUTBOX_MATRIX_DIR=$target_dir/tmp/matrix
export NIX_OUTBOX_MATRIX_VERSIONS=$((1 + ${#suites[@]}))
export NIX_OUTBOX_PASS_ENV="NIX_OUTBOX_MATRIX_DIR NIX_OUTBOX_MATRIX_VERSIONS"
rm -rf -- "$NIX_OUTBOX_MATRIX_DIR"
mkdir -p "$NIX_OUTBOX_MATRIX_DIR"

modern() { TEST_PACKAGES=nix-outbox scripts/test-modern-nix.sh "$@"; }

# An --exact filter that matches nothing passes with 0 tests (a renamed
# test would silently drop out of the matrix): require exactly one.
exactly_one() {
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out"; return 1; }
  printf '%s\n' "$out"
  grep -q '^test result: ok\. 1 passed' <<<"$out" || {
    echo "matrix: expected exactly 1 test to run and pass" >&2
    return 1
  }
}

# One test at a time inside the chroots: several Nix instances building on
# one store at once got builders killed on Nix 2.34 (seen in session 1),
# which is about the test harness, not about nix-outbox.
log "end-to-end and nix-db tests on ${suites[*]}"
modern -f '^nix-outbox::integration$' "${suites[@]}" -- e2e:: nix_db:: --test-threads=1

# The protocol client against each version's daemon and `nix-daemon
# --stdio`: the negotiated version and features, and realisations read
# the way each version keys them.
log "store protocol tests on ${suites[*]}"
TEST_PACKAGES=nix-outbox-store scripts/test-modern-nix.sh -f '^nix-outbox-store::integration$' "${suites[@]}" -- --test-threads=1

log "upload phase: host"
exactly_one cargo test -p nix-outbox --test integration --locked -- --ignored --exact matrix::matrix_upload
log "upload phase: ${suites[*]}"
modern -f '^nix-outbox::integration$' "${suites[@]}" -- --ignored --exact matrix::matrix_upload

log "read phase: host"
exactly_one cargo test -p nix-outbox --test integration --locked -- --ignored --exact matrix::matrix_read_others
log "read phase: ${suites[*]}"
modern -f '^nix-outbox::integration$' "${suites[@]}" -- --ignored --exact matrix::matrix_read_others

log "every version uploaded, and read and verified every other's caches"
rm -rf -- "$NIX_OUTBOX_MATRIX_DIR"
