#!/usr/bin/env bash
# Lag of the nix-db source (issue 16): from a build's end (its outputs are
# registered before `nix-build` returns) to its request in our queue.
#
#   N=200 bench/nixdb-lag.sh      # prints p50/p99/max in milliseconds
#
# A release `nix-outbox daemon` with ingest = ["nix-db"] follows the host's
# Nix database; N tiny derivations are built one after another with the
# host's Nix; after each, the queue is polled (every 2 ms, read-only) until
# a request holds the output. The time of the first poll that sees it
# bounds the lag from above (by at most one poll and one sqlite3 start).
source "$(dirname "$0")/lib.sh"

N=${N:-200}
bench_setup
command -v sqlite3 >/dev/null || { apt-get install -y -qq sqlite3 >&2; }
make_key_and_config
mkdir -p "$WORK/cache"
printf 'targets = ["file://%s/cache"]\ningest = ["nix-db"]\nsocket = "%s/hook.sock"\n' "$WORK" "$WORK" >>"$CONFIG"
"$OUTBOX" daemon --config "$CONFIG" >"$WORK/daemon.log" 2>&1 &
BENCH_PIDS+=($!)
for _ in $(seq 300); do [ -S "$WORK/hook.sock" ] && break; sleep 0.05; done
sleep 1
NONCE=$(random_hex 8)
ms() { date +%s%3N; }
lags=()
for i in $(seq "$N"); do
  out=$(nix-build --no-out-link --option substituters "" -E "derivation { name = \"lag-$NONCE-$i\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo $i > \$out\" ]; }" 2>/dev/null)
  BENCH_STORE_PATHS+=("$out")
  t0=$(ms)
  while ! sqlite3 -readonly "$WORK/state/queue.sqlite" "SELECT 1 FROM requests WHERE out_paths = '$out'" 2>/dev/null | grep -q 1; do
    sleep 0.002
    [ $(($(ms) - t0)) -lt 10000 ] || die "$out not queued within 10 s: $(tail -3 "$WORK/daemon.log")"
  done
  lags+=($(($(ms) - t0)))
done
printf '%s\n' "${lags[@]}" | sort -n >"$WORK/lags"
pct() { awk -v p="$1" '{ a[NR] = $1 } END { i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; print a[i] }' "$WORK/lags"; }
print_context
echo "nix-db lag over $N builds (build returned → request in the queue): p50 $(pct 50) ms, p99 $(pct 99) ms, max $(pct 100) ms"
