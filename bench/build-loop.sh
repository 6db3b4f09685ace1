#!/usr/bin/env bash
# Build loop (issue 6, item 1): how much a post-build-hook slows a loop of
# small builds, and whether it makes builds fail, with the cache up, slow
# and down.
#
#   bench/build-loop.sh          # prints Markdown; appends "## Build loop"
#                                # to BENCHMARKS.md (replacing an older one)
#
#   N=40            builds per loop, each a new derivation (fresh nonce per run)
#   REPS=3          rounds; each runs every configuration once, in a random
#                   order (medians reported, and each run's ratio to the
#                   no-hook run of its round)
#   MODES="seq batch"
#                   seq:   N `nix-build` invocations one after another, one
#                          derivation each (a loop in a script or CI job;
#                          every build's success is visible on its own)
#                   batch: one `nix-build --max-jobs 2 --keep-going` of all N
#                          (a package set built at once)
#   SIZE_KIB=64     random (incompressible) KiB in each output besides its
#                   nonce line, so that a slow cache is slow at all; 0: just
#                   the `echo <nonce> <i> > $out` line
#   THROTTLE=262144 bytes/s of the "slow" cache (fault proxy, throttle mode)
#   CONFIGS=...     SETUP:TARGET:CONDITION words (see DEFAULT_CONFIGS below)
#   RECORD=1        write the section to BENCHMARKS.md; 0: print only
#   KEEP_LOGS=DIR   keep each run's directory (logs, configs, caches) in DIR
#   SETTLE=2        seconds between starting the daemons and the loop (every
#                   configuration), so start-up work is not measured
#   OUTBOX_PREFIX=  a command prefix for `nix-outbox daemon` (say,
#                   "nice -n 10"), for experiments; empty in recorded runs
#   PREBUILT=1      use the release binaries in target/ as they are (for
#                   bench/in-chroot.sh, which builds them on the host)
#   MAX_LOAD=1.5 LOAD_WAIT=1200
#                   before measuring, wait (polling every 60 s, at most
#                   LOAD_WAIT s) for the 1-minute load to fall to MAX_LOAD
#
# Every build goes through a private nix-daemon (its own NIX_CONF_DIR with or
# without `post-build-hook`, no substituters, max-jobs 2), started fresh for
# each run. Hook setups:
#   none             no post-build-hook
#   true             post-build-hook = /bin/true: what running any hook
#                    costs Nix itself (the floor for every hook)
#   manual-verbatim  the Nix manual's upload-to-cache.sh, as it is
#   manual           the same script, run by a wrapper that fills in
#                    OUT_PATHS from DRV_PATH when Nix 2.8.0 leaves it empty
#                    (NixOS/nix#6446); the script itself is unchanged
#   outbox           nix-outbox-hook + `nix-outbox daemon` (release build)
#   outbox-spool     nix-outbox with its daemon stopped during the loop:
#                    every hook spools its request (one fsynced file); the
#                    daemon starts after the loop and must upload it all
#   outbox-hung      nix-outbox with its daemon hung (SIGSTOP) during the
#                    loop: it accepts connections into the kernel's backlog
#                    but answers none; SIGCONT after the loop, then it must
#                    upload everything (the daemon's heartbeat names a
#                    stopped process, so every hook spools at once: should
#                    cost as outbox-spool)
#   outbox-nixdb     nix-outbox with no hook: its daemon follows Nix's
#                    database (ingest = ["nix-db"])
#   outbox-both      the hook and the database (ingest = ["hook", "nix-db"])
#   outbox-nixdb-tmpfs
#                    outbox-nixdb with its queue on /dev/shm (a diagnostic)
#   outbox-tmpfs     the same with its state dir (queue) on /dev/shm: what
#                    the fsyncs of the queue cost (a diagnostic; no goal)
# Targets (the same URL for the manual hook and nix-outbox, zstd):
#   file  file://DIR; "down" = DIR is a read-only tmpfs (remounted
#         read-write to recover); there is no "slow" file://
#   http  a private nginx accepting PUT (scripts/nginx-webdav.sh); "slow" =
#         the testkit's fault proxy in front of it, throttled to THROTTLE;
#         "down" = nothing listens on the URL's port (nginx is started on it
#         to recover). Nix 2.8 cannot write s3://, so HTTP is the remote
#         target both hooks can use.
# For nix-outbox, after the loop (and after the cache is back for "down",
# with no `nix-outbox retry`: the daemon's own retry pace), `nix-outbox
# wait` is timed, then every one of the N outputs must have a narinfo in the
# cache and `nix store verify --all` must accept the cache.
#
# Goals (issue 6): nix-outbox within 1.05 × the no-hook wall time in every
# condition, no failed build, everything in the cache after recovery.
# Needs root (mounts a tmpfs), Nix, nginx (installed if missing), cargo.
# Everything is removed at the end: processes (by PID), mounts, temp dirs,
# the store paths and build logs of the builds.
source "$(dirname "$0")/lib.sh"

N=${N:-40}
REPS=${REPS:-3}
MODES=${MODES:-seq batch}
SIZE_KIB=${SIZE_KIB:-64}
THROTTLE=${THROTTLE:-262144}
RECORD=${RECORD:-1}
MAX_LOAD=${MAX_LOAD:-1.5}
LOAD_WAIT=${LOAD_WAIT:-1200}
RECOVERY_TIMEOUT=${RECOVERY_TIMEOUT:-900}
SETTLE=${SETTLE:-2}
DEFAULT_CONFIGS="none true
  manual-verbatim:file:up
  manual:file:up manual:file:down manual:http:up manual:http:slow manual:http:down
  outbox:file:up outbox:file:down outbox:http:up outbox:http:slow outbox:http:down
  outbox-tmpfs:http:up"
CONFIGS=${CONFIGS:-$DEFAULT_CONFIGS}

HOOK_BIN=$BENCH_ROOT/target/release/nix-outbox-hook
PROXY_BIN=$BENCH_ROOT/target/release/examples/fault_proxy
RESULTS=$WORK/results.tsv
MOUNTS=()
SHM_DIRS=()

# lib.sh's cleanup removes $WORK: unmount our tmpfs mounts first, and
# remove what is outside $WORK.
build_loop_cleanup() {
  local rc=$? m
  for m in "${MOUNTS[@]}"; do
    umount "$m" 2>/dev/null
  done
  for m in "${SHM_DIRS[@]}"; do
    rm -rf "$m"
  done
  (exit "$rc")
  bench_cleanup
}
trap build_loop_cleanup EXIT
# Output piped into `head` or a closed terminal: clean up all the same.
trap 'exit 141' PIPE
trap 'exit 129' HUP

# --- processes -------------------------------------------------------------

# stop PID: ends a process this script started, and forgets it (so that
# the final cleanup never signals a PID that has been reused since).
stop() {
  local pid=$1 p keep=()
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${BENCH_PIDS[@]}"; do
    [ "$p" = "$pid" ] || keep+=("$p")
  done
  BENCH_PIDS=("${keep[@]}")
}

USED_PORTS=" "
pick_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    [[ $USED_PORTS == *" $p "* ]] && continue
    port_open "$p" && continue
    USED_PORTS+="$p "
    echo "$p"
    return
  done
}

# start_nixd DIR HOOK [VAR=VALUE...]: a private nix-daemon whose builds run
# HOOK (none if empty), with VAR=VALUE in its (and so the hook's)
# environment. Sets NIXD_PID, NIXD_SOCK.
start_nixd() {
  local d=$1 hook=$2 i
  shift 2
  mkdir -p "$d/etc"
  {
    printf 'substituters =\nexperimental-features = nix-command\nsandbox = false\nmax-jobs = 2\n'
    [ -z "$hook" ] || printf 'post-build-hook = %s\n' "$hook"
  } >"$d/etc/nix.conf"
  NIXD_SOCK=$d/nixd.sock
  # Never with NIX_REMOTE in its environment: a daemon whose store is its
  # own socket forks workers without end.
  env -u NIX_REMOTE NIX_CONF_DIR="$d/etc" NIX_DAEMON_SOCKET_PATH="$NIXD_SOCK" "$@" \
    nix-daemon </dev/null >"$d/nixd.log" 2>&1 &
  NIXD_PID=$!
  BENCH_PIDS+=("$NIXD_PID")
  for i in $(seq 300); do
    unix_listening "$NIXD_SOCK" && return
    sleep 0.1
  done
  die "nix-daemon did not start: $(cat "$d/nixd.log")"
}

# start_nginx DIR PORT: nginx serving DIR/root on 127.0.0.1:PORT, accepting
# PUT. Sets NGINX_PID.
start_nginx() {
  local d=$1 port=$2 i
  mkdir -p "$d"
  bash "$BENCH_ROOT/scripts/nginx-webdav.sh" run "$d" "$port" </dev/null >"$d/run.log" 2>&1 &
  NGINX_PID=$!
  BENCH_PIDS+=("$NGINX_PID")
  for i in $(seq 300); do
    kill -0 "$NGINX_PID" 2>/dev/null || break
    port_open "$port" && return
    sleep 0.1
  done
  die "nginx did not start on port $port: $(cat "$d/run.log" "$d/error.log" 2>/dev/null | tail -5)"
}

# start_proxy DIR UPSTREAM_PORT: the fault proxy, throttled to THROTTLE
# bytes/s, in front of 127.0.0.1:UPSTREAM_PORT. It serves until its stdin
# (a FIFO we hold open) is closed. Sets PROXY_PID, PROXY_ADDR, PROXY_FD.
start_proxy() {
  local d=$1 up=$2 i
  mkfifo "$d/proxy.in"
  "$PROXY_BIN" "127.0.0.1:$up" "throttle=$THROTTLE" <"$d/proxy.in" >"$d/proxy.addr" 2>"$d/proxy.log" &
  PROXY_PID=$!
  BENCH_PIDS+=("$PROXY_PID")
  exec {PROXY_FD}>"$d/proxy.in"
  for i in $(seq 300); do
    PROXY_ADDR=$(head -1 "$d/proxy.addr")
    [ -n "$PROXY_ADDR" ] && return
    kill -0 "$PROXY_PID" 2>/dev/null || break
    sleep 0.1
  done
  die "the fault proxy did not start: $(cat "$d/proxy.log")"
}

# stop_proxy: closes its stdin, so it prints what it did and exits.
stop_proxy() {
  exec {PROXY_FD}>&-
  local i
  for i in $(seq 50); do
    kill -0 "$PROXY_PID" 2>/dev/null || break
    sleep 0.1
  done
  stop "$PROXY_PID"
}

# write_outbox_config DIR URL STATE: DIR/config.toml, uploading to URL,
# with the queue (state dir) and the hook's socket in STATE.
write_outbox_config() {
  local d=$1 url=$2 state=$3 ingest=${4:-'"hook"'}
  mkdir -p "$d"
  printf 'state-dir = "%s"\nsocket = "%s"\nsecret-key-files = ["%s"]\ntargets = ["%s"]\ningest = [%s]\n' \
    "$state/state" "$state/hook.sock" "$SK" "$url" "$ingest" >"$d/config.toml"
}

# nixdb_caught_up CONFIG: waits (at most 30 s) until the nix-db source has
# read up to Nix's last row, so that `wait` afterwards covers every build.
nixdb_caught_up() {
  local i json cursor last
  for i in $(seq 300); do
    json=$("$OUTBOX" status --config "$1" --json 2>/dev/null || true)
    cursor=$(sed -n 's/.*"cursor": \([0-9]*\).*/\1/p' <<<"$json" | head -1)
    last=$(sed -n 's/.*"nix_last_row": \([0-9]*\).*/\1/p' <<<"$json" | head -1)
    [ -n "$cursor" ] && [ -n "$last" ] && [ "$cursor" -ge "$last" ] && return
    sleep 0.1
  done
  note "warning: the nix-db source did not catch up within 30 s"
}
# start_outbox DIR STATE: `nix-outbox daemon` with DIR/config.toml, reading
# the store through the private nix-daemon. Sets OUTBOX_PID.
start_outbox() {
  local d=$1 state=$2 i
  env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE \
    NIX_REMOTE="unix://$NIXD_SOCK" ${OUTBOX_PREFIX:-} "$OUTBOX" daemon --config "$d/config.toml" \
    </dev/null >"$d/outbox.log" 2>&1 &
  OUTBOX_PID=$!
  BENCH_PIDS+=("$OUTBOX_PID")
  for i in $(seq 300); do
    unix_listening "$state/hook.sock" && return
    kill -0 "$OUTBOX_PID" 2>/dev/null || break
    sleep 0.1
  done
  die "nix-outbox daemon did not start: $(tail -5 "$d/outbox.log")"
}

# The Nix manual's post-build-hook example (upload-to-cache.sh), with its
# key file and cache URL filled in; nothing else changed.
write_manual_hook() {
  local f=$1 key=$2 url=$3
  cat >"$f" <<EOF
#!/bin/sh

set -eu
set -f # disable globbing
export IFS=' '

echo "Signing paths" \$OUT_PATHS
nix store sign --key-file $key \$OUT_PATHS
echo "Uploading paths" \$OUT_PATHS
exec nix copy --to '$url' \$OUT_PATHS
EOF
  chmod +x "$f"
}

# Nix 2.8.0 runs the hook with an empty OUT_PATHS (NixOS/nix#6446), which
# makes the manual's script fail every build (`nix store sign` with no paths
# looks for a flake in /). This wrapper supplies the outputs, then runs the
# manual's script unchanged; on other Nix versions it only adds an exec.
write_manual_wrapper() {
  local f=$1 script=$2
  cat >"$f" <<EOF
#!/bin/sh
if [ -z "\${OUT_PATHS:-}" ]; then
  OUT_PATHS=\$(nix-store -q --outputs "\$DRV_PATH" | tr '\n' ' ')
  export OUT_PATHS
fi
exec $script
EOF
  chmod +x "$f"
}

# --- the builds ---------------------------------------------------------------

# The Nix function from i to the i-th derivation of a run; the same
# derivations whether built one by one or as a list.
drv_fun() {
  local f='i: derivation { name = "nix-outbox-bl-@N@-${toString i}"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = [ "-c" "export PATH=/usr/bin:/bin; { echo @N@ ${toString i}; head -c @S@ /dev/urandom; } > $out" ]; }'
  f=${f//@N@/$1}
  printf '%s' "${f//@S@/$((SIZE_KIB * 1024))}"
}

now_ms() { date +%s%3N; }
# The host's store, directly (as root), whatever NIX_REMOTE the caller has.
local_store() { env -u NIX_REMOTE "$@"; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }

# build_loop MODE NONCE DIR: builds the N derivations through the private
# nix-daemon; sets WALL (s), and FAILED (builds that did not succeed) for
# seq; for batch, BATCH_RC (see count_batch_failures).
build_loop() {
  local mode=$1 nonce=$2 d=$3 fun i t0 t1
  fun=$(drv_fun "$nonce")
  FAILED=0 BATCH_RC=0
  t0=$(now_ms)
  if [ "$mode" = seq ]; then
    for i in $(seq 0 $((N - 1))); do
      NIX_REMOTE="unix://$NIXD_SOCK" nix-build --no-out-link --option substituters '' \
        --expr "($fun) $i" >>"$d/build.out" 2>>"$d/build.err" || FAILED=$((FAILED + 1))
      now_ms >>"$d/build.times"
    done
  else
    NIX_REMOTE="unix://$NIXD_SOCK" nix-build --no-out-link --option substituters '' \
      --max-jobs 2 --keep-going --expr "builtins.genList ($fun) $N" \
      >"$d/build.out" 2>"$d/build.err" || BATCH_RC=$?
  fi
  t1=$(now_ms)
  WALL=$(secs $((t1 - t0)))
}

# After a failed batch nix-build: a failing hook fails its build (whose
# output is registered nonetheless) and, on Nix 2.8, ends the whole
# nix-build, so builds never started count as failed too. Needs OUTS.
count_batch_failures() {
  local d=$1 invalid hookfail
  invalid=$(local_store nix-store --check-validity --print-invalid "${OUTS[@]}" 2>/dev/null | wc -l)
  hookfail=$(grep -c "^error: program '.*' failed with exit code" "$d/build.err" || true)
  FAILED=$((invalid + hookfail))
  # A failure of a kind not understood here: count every build.
  [ "$FAILED" -gt 0 ] || FAILED=$N
}

# run_outputs NONCE: sets DRVS and OUTS, the derivations and outputs of a
# run (instantiating them adds nothing the loop does not add anyway).
run_outputs() {
  mapfile -t DRVS < <(local_store nix-instantiate --option substituters '' \
    --expr "builtins.genList ($(drv_fun "$1")) $N" 2>/dev/null)
  [ ${#DRVS[@]} = "$N" ] || die "could not instantiate the $N derivations"
  mapfile -t OUTS < <(local_store nix-store -q --outputs "${DRVS[@]}")
}

# in_cache DIR: how many of OUTS have a narinfo in the cache directory DIR.
in_cache() {
  local p n=0
  for p in "${OUTS[@]}"; do
    p=${p#/nix/store/}
    [ -e "$1/${p:0:32}.narinfo" ] && n=$((n + 1))
  done
  echo "$n"
}

verify_cache() {
  [ -e "$1/nix-cache-info" ] || {
    echo "-"
    return
  }
  if local_store nix --extra-experimental-features nix-command --option substituters '' \
    store verify --store "file://$1" --trusted-public-keys "$(cat "$PK")" --all \
    >"$2" 2>&1; then echo ok; else echo FAIL; fi
}

# delete_run_paths LOG NONCE: removes a run's store paths, their build logs
# and the `<output>.lock` files Nix 2.8 leaves in the store when a
# post-build-hook fails (nothing holds any of them: --no-out-link, and the
# daemons are stopped).
delete_run_paths() {
  local d b
  BENCH_STORE_PATHS+=("${OUTS[@]}" "${DRVS[@]}")
  local_store nix-store --delete "${OUTS[@]}" "${DRVS[@]}" >"$1" 2>&1 ||
    note "warning: could not delete this run's store paths: $(tail -2 "$1")"
  for d in "${DRVS[@]}"; do
    b=${d#/nix/store/}
    rm -f "/nix/var/log/nix/drvs/${b:0:2}/${b:2}.bz2"
  done
  rm -f /nix/store/*-nix-outbox-bl-"$2"-*.lock
}

# run_one MODE SETUP TARGET COND REP: one measured run; appends a line to
# $RESULTS.
run_one() {
  local mode=$1 setup=$2 target=$3 cond=$4 rep=$5
  local d=$WORK/run/$mode-$setup-$target-$cond-$rep nonce url cache port="" srv
  local load drain=- incache=- verify=- spooled=- throttled=- ob_state=""
  mkdir -p "$d"
  nonce=$(random_hex 6)
  NGINX_PID="" PROXY_PID="" OUTBOX_PID=""

  # The cache.
  case $target in
    file)
      cache=$d/cache
      mkdir -p "$cache"
      url="file://$cache?compression=zstd"
      if [ "$cond" = down ]; then
        mount -t tmpfs -o ro,size=512m nix-outbox-bench "$cache"
        MOUNTS+=("$cache")
      fi
      ;;
    http)
      srv=$d/nginx
      cache=$srv/root/cache
      port=$(pick_port)
      url="http://127.0.0.1:$port/cache?compression=zstd"
      if [ "$cond" != down ]; then start_nginx "$srv" "$port"; fi
      if [ "$cond" = slow ]; then
        start_proxy "$d" "$port"
        url="http://$PROXY_ADDR/cache?compression=zstd"
      fi
      ;;
    -) cache="" ;;
  esac

  # The hook.
  case $setup in
    none) start_nixd "$d" "" ;;
    true) start_nixd "$d" /bin/true ;;
    manual-verbatim)
      write_manual_hook "$d/upload-to-cache.sh" "$SK" "$url"
      start_nixd "$d" "$d/upload-to-cache.sh"
      ;;
    manual)
      write_manual_hook "$d/upload-to-cache.sh" "$SK" "$url"
      write_manual_wrapper "$d/hook-2.8.0.sh" "$d/upload-to-cache.sh"
      start_nixd "$d" "$d/hook-2.8.0.sh"
      ;;
    outbox-spool)
      ob_state=$d/outbox
      write_outbox_config "$d/outbox" "$url" "$ob_state"
      start_nixd "$d" "$HOOK_BIN" "NIX_OUTBOX_CONFIG=$d/outbox/config.toml"
      ;;
    outbox-nixdb | outbox-nixdb-tmpfs | outbox-both)
      # nix-db: no hook at all; both: the hook and the database.
      ob_state=$d/outbox
      if [ "$setup" = outbox-nixdb-tmpfs ]; then
        ob_state=$(mktemp -d /dev/shm/nix-outbox-bench-bl.XXXXXX)
        SHM_DIRS+=("$ob_state")
      fi
      if [ "$setup" != outbox-both ]; then
        write_outbox_config "$d/outbox" "$url" "$ob_state" '"nix-db"'
        start_nixd "$d" ""
      else
        write_outbox_config "$d/outbox" "$url" "$ob_state" '"hook", "nix-db"'
        start_nixd "$d" "$HOOK_BIN" "NIX_OUTBOX_CONFIG=$d/outbox/config.toml"
      fi
      start_outbox "$d/outbox" "$ob_state"
      ;;
    outbox | outbox-tmpfs | outbox-hung)
      ob_state=$d/outbox
      if [ "$setup" = outbox-tmpfs ]; then
        ob_state=$(mktemp -d /dev/shm/nix-outbox-bench-bl.XXXXXX)
        SHM_DIRS+=("$ob_state")
      fi
      write_outbox_config "$d/outbox" "$url" "$ob_state"
      start_nixd "$d" "$HOOK_BIN" "NIX_OUTBOX_CONFIG=$d/outbox/config.toml"
      start_outbox "$d/outbox" "$ob_state"
      [ "$setup" != outbox-hung ] || kill -STOP "$OUTBOX_PID"
      ;;
  esac

  # As on a machine where the daemons were started long before the builds:
  # their start-up work (nix-outbox probes its target, retrying for about a
  # second when it is down) is not part of the loop.
  sleep "$SETTLE"
  load=$(cut -d' ' -f1 /proc/loadavg)
  build_loop "$mode" "$nonce" "$d"
  run_outputs "$nonce"
  [ "$BATCH_RC" = 0 ] || count_batch_failures "$d"

  if [[ $setup == outbox* ]]; then
    spooled=$(find "$ob_state/state/spool" -maxdepth 1 -name '*.req' 2>/dev/null | wc -l)
    # The cache comes back.
    if [ "$cond" = down ]; then
      case $target in
        file) mount -o remount,rw "$cache" ;;
        http) start_nginx "$srv" "$port" ;;
      esac
    fi
    local t0 t1
    t0=$(now_ms)
    # The stopped daemon comes back, and finds the spool.
    [ "$setup" != outbox-spool ] || start_outbox "$d/outbox" "$ob_state"
    [ "$setup" != outbox-hung ] || kill -CONT "$OUTBOX_PID"
    case $setup in outbox-nixdb | outbox-nixdb-tmpfs | outbox-both) nixdb_caught_up "$d/outbox/config.toml" ;; esac
    if "$OUTBOX" wait --config "$d/outbox/config.toml" --timeout "$RECOVERY_TIMEOUT" >"$d/wait.log" 2>&1; then
      t1=$(now_ms)
      drain=$(secs $((t1 - t0)))
    else
      drain=timeout
      note "warning: nix-outbox wait timed out: $(tail -3 "$d/wait.log")"
    fi
    stop "$OUTBOX_PID"
  fi
  if [ -n "$cache" ]; then
    incache=$(in_cache "$cache")
    verify=$(verify_cache "$cache" "$d/verify.log")
  fi
  stop "$NIXD_PID"
  if [ -n "$PROXY_PID" ]; then
    stop_proxy
    throttled=$(grep -o 'throttled: [0-9]*' "$d/proxy.log" | grep -o '[0-9]*' || echo "?")
  fi
  stop "$NGINX_PID"
  if [ "$target" = file ] && [ "$cond" = down ]; then
    umount "$cache"
    MOUNTS=()
  fi
  delete_run_paths "$d/delete.log" "$nonce"
  if [ "$setup" = outbox-tmpfs ] || [ "$setup" = outbox-nixdb-tmpfs ]; then
    rm -rf "$ob_state"
    SHM_DIRS=()
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$setup" "$target" "$cond" \
    "$rep" "$WALL" "$FAILED" "$incache" "$verify" "$drain" "$load" "$spooled" "$throttled" >>"$RESULTS"
  note "$mode $setup $target $cond #$rep: ${WALL}s, failed $FAILED, in cache $incache, verify $verify, upload done after ${drain}s (load $load)"
  # KEEP_LOGS=DIR: keep every run's directory (logs, configs, caches) there.
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS"
    cp -r "$d" "$KEEP_LOGS/"
    cp "$RESULTS" "$KEEP_LOGS/"
  fi
  rm -rf "$d"
}


# --- load ------------------------------------------------------------------

load1() { cut -d' ' -f1 /proc/loadavg; }
over_max_load() { awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; }

# Other heavy work (a CI run, other benchmarks) would be measured along with
# ours: wait for the 1-minute load to fall to MAX_LOAD, at most LOAD_WAIT s.
wait_for_load() {
  local waited=0
  while over_max_load; do
    if [ "$waited" -ge "$LOAD_WAIT" ]; then
      note "warning: load still $(load1) after ${LOAD_WAIT}s; measuring anyway"
      LOAD_WAITED="$waited s, gave up at load $(load1)"
      return
    fi
    [ "$waited" -eq 0 ] && note "waiting for the 1-minute load ($(load1)) to fall to $MAX_LOAD"
    sleep 60
    waited=$((waited + 60))
  done
  LOAD_WAITED="$waited s"
}

# --- the report ---------------------------------------------------------------

label_setup() {
  case $1 in
    none) echo "no hook" ;;
    true) echo "\`/bin/true\` as the hook" ;;
    manual-verbatim) echo "manual's hook, verbatim" ;;
    manual) echo "manual's hook (+ OUT_PATHS fix)" ;;
    outbox) echo "**nix-outbox**" ;;
    outbox-tmpfs) echo "nix-outbox, queue on tmpfs (diagnostic)" ;;
    outbox-nixdb) echo "nix-outbox, no hook: ingest = [\"nix-db\"]" ;;
    outbox-nixdb-tmpfs) echo "nix-outbox, nix-db, queue on tmpfs (diagnostic)" ;;
    outbox-both) echo "nix-outbox, hook and nix-db" ;;
    outbox-spool) echo "nix-outbox, its daemon stopped (hooks spool)" ;;
    outbox-hung) echo "nix-outbox, its daemon hung (SIGSTOP)" ;;
  esac
}
label_target() {
  case $1 in
    file) echo "file://" ;;
    http) echo "http:// (nginx)" ;;
    *) echo "–" ;;
  esac
}
label_cond() {
  case $1 in
    up) echo "up" ;;
    slow) echo "slow ($((THROTTLE / 1024)) KiB/s)" ;;
    down) echo "down" ;;
    *) echo "–" ;;
  esac
}

# column MODE SETUP TARGET COND FIELD: that field of the matching runs, one
# per line, in run order.
column() {
  awk -F'\t' -v m="$1" -v s="$2" -v t="$3" -v c="$4" -v f="$5" \
    '$1 == m && $2 == s && $3 == t && $4 == c { print $f }' "$RESULTS"
}
joined() { paste -sd/ -; }
all_equal() { [ "$(sort -u | wc -l)" -le 1 ]; }

GOALS=()
# paired MODE SETUP TARGET COND: per run, its wall time over that of the
# no-hook run of the same round (rounds are interleaved, so a pair saw
# about the same load from the rest of the machine), one per line.
paired() {
  awk -F'\t' -v m="$1" -v s="$2" -v t="$3" -v c="$4" '
    $1 == m && $2 == "none" { base[$5] = $6 }
    $1 == m && $2 == s && $3 == t && $4 == c { wall[$5] = $6; order[++n] = $5 }
    END { for (i = 1; i <= n; i++) printf "%.2f\n", wall[order[i]] / base[order[i]] }' "$RESULTS"
}

# table MODE: the Markdown table of one mode; adds to GOALS.
table() {
  local mode=$1 cfg setup target cond base walls med ratio pairs failed incache verify drains drain v what figures
  mapfile -t walls < <(column "$mode" none - - 6)
  base=$(median "${walls[@]}")
  # How far the no-hook runs alone scatter (max − min, over their median).
  local spread floor=""
  spread=$(printf '%s\n' "${walls[@]}" | sort -g |
    awk -v m="$base" 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f", 100 * (hi - lo) / m }')
  [ -z "$(column "$mode" true - - 6)" ] ||
    floor="; \`/bin/true\` as the hook, per round: $(paired "$mode" true - - | joined)"
  echo "The no-hook runs spread by ${spread}% (max − min, over their median): other work on"
  echo "the machine moves every run. The per-round ratios pair each run with the no-hook run"
  echo "of the same round (rounds are interleaved), which cancels slow drifts of that load."
  echo
  echo "| hook | cache | cache state | wall s (median) | runs, s | × no hook (medians) | × no hook, per round | failed builds (per run) | outputs in cache (per run) | \`nix store verify\` | uploads done, s after the loop or recovery |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for cfg in $CONFIGS; do
    IFS=: read -r setup target cond _ <<<"$cfg:-:-"
    mapfile -t walls < <(column "$mode" "$setup" "$target" "$cond" 6)
    med=$(median "${walls[@]}")
    ratio=$(awk -v a="$med" -v b="$base" 'BEGIN { printf "%.2f", a / b }')
    pairs=$(paired "$mode" "$setup" "$target" "$cond")
    failed=$(column "$mode" "$setup" "$target" "$cond" 7 | joined)
    incache=$(column "$mode" "$setup" "$target" "$cond" 8 | joined)
    if [ "$target" = - ]; then incache="–"; else incache="$incache of $N"; fi
    v=$(column "$mode" "$setup" "$target" "$cond" 9)
    if all_equal <<<"$v"; then verify=$(head -1 <<<"$v"); else verify=$(joined <<<"$v"); fi
    [ "$verify" = - ] && verify="–"
    mapfile -t drains < <(column "$mode" "$setup" "$target" "$cond" 10)
    if [ "${drains[0]}" = - ]; then
      drain="–"
    elif printf '%s\n' "${drains[@]}" | grep -q timeout; then
      drain="$(printf '%s\n' "${drains[@]}" | joined)"
    else
      drain="$(median "${drains[@]}") ($(printf '%s\n' "${drains[@]}" | joined))"
    fi
    echo "| $(label_setup "$setup") | $(label_target "$target") | $(label_cond "$cond") | $med | $(printf '%s\n' "${walls[@]}" | joined) | $ratio | $(joined <<<"$pairs") | $failed | $incache | $verify | $drain |"
    case $setup in outbox | outbox-spool) ;; *) continue ;; esac
    what="$mode, $(label_target "$target") $cond"
    [ "$setup" = outbox ] || what="$what, daemon stopped"
    figures="medians ${ratio}× ($med s vs $base s), per round $(joined <<<"$pairs")"
    # Decided only when every round agrees; otherwise the load from the rest
    # of the machine is larger than what is being measured.
    if awk '$1 > 1.05 { exit 1 }' <<<"$pairs"; then
      GOALS+=("met: nix-outbox ≤ 1.05 × no hook ($what): $figures")
    elif awk '$1 <= 1.05 { exit 1 }' <<<"$pairs"; then
      GOALS+=("**MISSED**: nix-outbox ≤ 1.05 × no hook ($what): $figures$floor")
    else
      GOALS+=("**not resolved** (the rounds disagree): nix-outbox ≤ 1.05 × no hook ($what): $figures$floor")
    fi
    if [ "$(column "$mode" "$setup" "$target" "$cond" 7 | sort -u)" = 0 ]; then
      GOALS+=("met: 0 failed builds ($what)")
    else
      GOALS+=("**MISSED**: 0 failed builds ($what): $failed")
    fi
    if [ "$(column "$mode" "$setup" "$target" "$cond" 8 | sort -u)" = "$N" ] &&
      [ "$(column "$mode" "$setup" "$target" "$cond" 9 | sort -u)" = ok ]; then
      GOALS+=("met: all $N outputs in the cache after recovery, verified ($what)")
    else
      GOALS+=("**MISSED**: all $N outputs in the cache after recovery, verified ($what): $incache, verify $verify")
    fi
  done
}

report() {
  local commit dirty="" loads
  commit=$(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git -C "$BENCH_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] &&
    dirty=" + uncommitted changes"
  loads=$(cut -f11 "$RESULTS" | sort -g | sed -n '1p;$p' | paste -sd' ' - | sed 's/ / to /')
  echo "## Build loop"
  echo
  echo "How much a post-build-hook slows a loop of $N small builds, and whether it fails"
  echo "builds, with the cache up, slow and down (issue 6, item 1). Each build is a new"
  echo "derivation (\`echo <nonce> <i>\` plus $SIZE_KIB KiB of random bytes into \`\$out\`), built"
  echo "through a private nix-daemon (no substituters, max-jobs 2) started for each run"
  echo "with or without \`post-build-hook\`. Wall time of the whole loop; median of $REPS"
  echo "runs, in $REPS rounds that each run every configuration once in a random order."
  echo "\"manual's hook\" is the Nix"
  echo "manual's \`upload-to-cache.sh\` (\`nix store sign\` + \`nix copy\`); on Nix 2.8.0 it"
  echo "fails every build as it is, since OUT_PATHS is empty (NixOS/nix#6446), so the"
  echo "comparison runs it through a wrapper that fills OUT_PATHS in from DRV_PATH."
  echo "Both hooks upload to the same URL with zstd. file:// down = a read-only"
  echo "filesystem; http:// = nginx accepting PUT, slow = a throttling proxy in front,"
  echo "down = nothing listening. For nix-outbox, after the loop (and after the cache"
  echo "is back, with no \`nix-outbox retry\`) \`nix-outbox wait\` is timed, then every"
  echo "output must have a narinfo and \`nix store verify --all\` must pass. The"
  echo "daemons are started $SETTLE s before each loop, as on a machine where they"
  echo "already run, so their start-up work is not measured. \`/bin/true\` as the"
  echo "hook shows what running any hook costs Nix 2.8 itself, which runs hooks in"
  echo "its build loop, one at a time; the tmpfs row shows what the queue's fsyncs"
  echo "cost the hook; with the daemon stopped, each hook spools its request and"
  echo "the daemon, started after the loop, must upload everything."
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
  echo "- load average: $LOAD_BEFORE before (waited $LOAD_WAITED for ≤ $MAX_LOAD), $LOAD_AFTER after; 1-minute load at the start of each run: $loads"
  echo "- $(nix --version), nix-outbox git $commit$dirty"
  echo "- reproduce: \`N=$N REPS=$REPS MODES=\"$MODES\" SIZE_KIB=$SIZE_KIB THROTTLE=$THROTTLE SETTLE=$SETTLE bench/build-loop.sh\`"
  local mode
  for mode in $MODES; do
    echo
    case $mode in
      seq) echo "### $N \`nix-build\` invocations one after another, one derivation each" ;;
      batch) echo "### One \`nix-build --max-jobs 2 --keep-going\` of all $N derivations" ;;
    esac
    echo
    table "$mode"
  done
  echo
  echo "Checks on the runs themselves:"
  echo
  local sp th
  sp=$(awk -F'\t' '$2 ~ /^outbox/ && $2 != "outbox-spool" && $2 != "outbox-hung" { s += $12 } END { print s + 0 }' "$RESULTS")
  echo "- nix-outbox-hook requests spooled instead of acknowledged by the daemon: $sp in all runs together (its daemon running)"
  sp=$(awk -F'\t' '$2 == "outbox-spool" { printf "%s%s", (n++ ? "/" : ""), $12 }' "$RESULTS")
  [ -z "$sp" ] || echo "- spool files written while the daemon was stopped, per run: $sp (one per build expected; the daemon then uploaded them all, see the table)"
  sp=$(awk -F'\t' '$2 == "outbox-hung" { printf "%s%s", (n++ ? "/" : ""), $12 }' "$RESULTS")
  [ -z "$sp" ] || echo "- spool files written while the daemon was hung, per run: $sp (one per build expected)"
  th=$(awk -F'\t' '$4 == "slow" {
      k = $1 " " $2 " " $3; if (!(k in v)) order[++n] = k; v[k] = v[k] (k in v && v[k] != "" ? "/" : "") $13 }
    END { for (i = 1; i <= n; i++) printf "%s%s: %s", (i > 1 ? "; " : ""), order[i], v[order[i]] }' "$RESULTS")
  [ -z "$th" ] || echo "- requests the fault proxy throttled, per slow run: $th"
  echo
  echo "### Goals"
  echo
  printf -- '- %s\n' "${GOALS[@]}"
}

# --- main ----------------------------------------------------------------------

[ "$(id -u)" = 0 ] || die "run as root (the builds' store paths are deleted afterwards; file:// down mounts a tmpfs)"
command -v nix-build >/dev/null || die "Nix is missing: apt-get install nix-bin"
# PREBUILT=1: the binaries were built outside (bench/in-chroot.sh runs this
# script in a chroot that has no Rust toolchain).
if [ -z "${PREBUILT:-}" ]; then
  note "building the release binaries and the fault proxy"
  (cd "$BENCH_ROOT" && cargo build --release -q -p nix-outbox -p nix-outbox-hook --bins >&2 &&
    cargo build --release -q -p nix-outbox-testkit --example fault_proxy >&2)
fi
for b in "$OUTBOX" "$HOOK_BIN" "$PROXY_BIN"; do
  [ -x "$b" ] || die "$b is missing (build it, or run without PREBUILT)"
done
if [[ $CONFIGS == *http* ]]; then
  bash "$BENCH_ROOT/scripts/nginx-webdav.sh" install >/dev/null
fi
SK=$WORK/bench-build-loop-1.sk
PK=$WORK/bench-build-loop-1.pk
local_store nix-store --generate-binary-cache-key bench-build-loop-1 "$SK" "$PK"

wait_for_load
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# Each round runs every configuration once, in a new random order, so that
# neither a slow drift of the machine's load nor a position in the round
# (such as running first) favours one configuration.
for rep in $(seq "$REPS"); do
  for mode in $MODES; do
    # shellcheck disable=SC2086 # one word per configuration
    for cfg in $(shuf -e $CONFIGS); do
      IFS=: read -r setup target cond _ <<<"$cfg:-:-"
      run_one "$mode" "$setup" "$target" "$cond" "$rep"
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

report >"$WORK/section.md"
cat "$WORK/section.md"
if [ "$RECORD" = 1 ]; then
  md=$BENCH_ROOT/BENCHMARKS.md
  [ -e "$md" ] || printf '# Benchmarks\n\nResults of the scripts in `bench/`.\n' >"$md"
  # Our section only: an older "## Build loop" is dropped, the new one goes
  # at the end; every other section is kept as it is.
  awk '/^## / { skip = ($0 == "## Build loop") } !skip' "$md" >"$WORK/benchmarks.md"
  sed -i -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$WORK/benchmarks.md"
  { cat "$WORK/benchmarks.md"; echo; cat "$WORK/section.md"; } >"$md.tmp.$$"
  mv "$md.tmp.$$" "$md"
  note "wrote the \"## Build loop\" section of $md"
fi
