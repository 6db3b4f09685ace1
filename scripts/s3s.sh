#!/usr/bin/env bash
# Installs s3s-fs, the S3-compatible server the S3 integration tests run
# against, and prints the path of its binary on stdout.
#
#   scripts/s3s.sh            # install if missing, print the binary's path
#
# s3s-fs checks SigV4 signatures and enforces S3's 5 MiB minimum part size,
# and stores objects as plain files, so a bucket directory is itself a
# file:// binary cache that Nix can substitute from. 0.14.1 is the newest
# release that builds with our rustc (1.95); later ones need a newer one.
#
# The binary goes to a tools directory kept between runs, since building it
# takes minutes:
#   NIX_OUTBOX_TOOLS   default /var/cache/nix-outbox/tools (binary in bin/)
set -euo pipefail

VERSION=0.14.1
TOOLS=${NIX_OUTBOX_TOOLS:-/var/cache/nix-outbox/tools}
BIN=$TOOLS/bin/s3s-fs

note() { printf 's3s.sh: %s\n' "$*" >&2; }

# A binary of another version (an older run of this script with a different
# VERSION) is replaced, not reused.
if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -qF "$VERSION"; then
  printf '%s\n' "$BIN"
  exit 0
fi

mkdir -p "$TOOLS"
note "building s3s-fs $VERSION into $TOOLS (a few minutes, once)"
# --locked: the release's own Cargo.lock, which is what builds with 1.95;
# resolving afresh would pull dependencies needing a newer rustc.
cargo install "s3s-fs@$VERSION" --features binary --locked --root "$TOOLS" --quiet --force >&2
[ -x "$BIN" ] || { note "error: cargo install finished but $BIN is missing"; exit 1; }
printf '%s\n' "$BIN"
