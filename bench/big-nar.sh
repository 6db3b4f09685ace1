#!/usr/bin/env bash
# Memory stays flat whatever the NAR's size: one 4 GiB NAR and, in the same
# run, one 256 MiB NAR, each uploaded with zstd by `nix-outbox copy` to an
# empty file:// cache and to a private s3s-fs (an S3 multipart upload):
#
#   bench/big-nar.sh               # prints a Markdown table
#   SIZES_MIB="256 4096" bench/big-nar.sh
#
# Each store path is one file of random bytes (incompressible: the worst
# case, since every byte read is also a byte written), built by a
# derivation. One run per size and target. Needs root, Nix, and about
# 3 × the largest size free under /nix and /tmp; everything is removed
# again (store paths, caches, bucket, processes).
source "$(dirname "$0")/lib.sh"

SIZES_MIB=${SIZES_MIB:-256 4096}

bench_setup
start_nix_daemon
start_s3s
make_key_and_config

NONCE=$(random_hex 4)
ROWS=()
for size in $SIZES_MIB; do
  note "building a ${size} MiB store path"
  P=$(env -u NIX_REMOTE nix-build --no-out-link --option substituters '' --expr "
    derivation {
      name = \"nix-outbox-bench-big-${size}m-$NONCE\";
      system = builtins.currentSystem;
      builder = \"/bin/sh\";
      args = [ \"-c\" \"/usr/bin/head -c $((size * 1024 * 1024)) /dev/urandom > \$out\" ];
    }" 2>"$WORK/build.log") || die "build failed: $(tail -5 "$WORK/build.log")"
  DRV=$(nix-store -qd "$P")
  BENCH_STORE_PATHS+=("$P" "$DRV")
  NAR=$(nix-store -q --size "$P")

  outbox_cmd "file://$WORK/cache?compression=zstd"
  BEFORE_EACH='rm -rf "$WORK/cache"; warm "$P"'
  measure "$WORK/file.log" "${CMD[@]}" "$P"
  ROWS+=("| $size MiB | file:// | $WALL | $(awk -v b="$NAR" -v s="$WALL" 'BEGIN { printf "%.0f", b / 1048576 / s }') | $CPU | $(mib "$RSS") | $(mb "$(nar_bytes "$WORK/cache")") |")
  note "$size MiB → file://: $WALL s, $(mib "$RSS") MiB"
  rm -rf "$WORK/cache"

  outbox_cmd "s3://big?endpoint=$S3_ENDPOINT&scheme=http&compression=zstd"
  BEFORE_EACH='rm -rf "$S3_DATA/big"; mkdir "$S3_DATA/big"; warm "$P"'
  measure "$WORK/s3.log" "${CMD[@]}" "$P"
  ROWS+=("| $size MiB | S3 multipart (s3s-fs) | $WALL | $(awk -v b="$NAR" -v s="$WALL" 'BEGIN { printf "%.0f", b / 1048576 / s }') | $CPU | $(mib "$RSS") | $(mb "$(nar_bytes "$S3_DATA/big")") |")
  note "$size MiB → s3: $WALL s, $(mib "$RSS") MiB"
  rm -rf "${S3_DATA:?}/big"

  # Free the disk before the next size.
  nix-store --delete "$P" "$DRV" >/dev/null 2>&1 || note "warning: could not delete $P"
done

print_context
echo "Random (incompressible) single-file NARs, zstd, one run each into an empty cache."
echo
echo "| NAR | target | wall s | MiB/s | CPU s | peak RSS MiB | NAR files MB |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
