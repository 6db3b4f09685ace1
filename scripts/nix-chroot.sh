#!/usr/bin/env bash
# A Debian chroot with a newer Nix than the host's, for testing nix-outbox
# against the Nix versions users actually run. The host (Debian 12) ships
# Nix 2.8; Debian trixie ships 2.26 and sid 2.34. A chroot made by
# debootstrap gives us those without touching the host's own Nix or /nix.
#
#   scripts/nix-chroot.sh create  SUITE [DIR]           # debootstrap + Nix setup (idempotent)
#   scripts/nix-chroot.sh mount   DIR SHARED_TMP [BIND...] # /proc /sys /dev + shared dirs
#   scripts/nix-chroot.sh umount  DIR                   # every mount under DIR, deepest first
#   scripts/nix-chroot.sh run     DIR CMD [ARG...]      # CMD inside, with a clean environment
#   scripts/nix-chroot.sh version DIR                   # `nix --version` inside
#   scripts/nix-chroot.sh install DIR PKG...            # apt-get install what DIR lacks
#   scripts/nix-chroot.sh path    SUITE                 # prints the default DIR for SUITE
#
# DIR may also be given as a bare suite name (no slash), meaning the default
# location $NIX_OUTBOX_CHROOT_ROOT/SUITE (default /var/cache/nix-outbox/chroots),
# which is kept between runs so only the first one pays for debootstrap.
#
# Environment:
#   NIX_OUTBOX_CHROOT_ROOT  where default chroots live
#   NIX_OUTBOX_MIRROR       Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   NIX_OUTBOX_PASS_ENV     names of variables `run` passes into the chroot
#                           (space- or comma-separated); everything else is dropped
#   NIX_OUTBOX_CHROOT_CWD   directory (inside) that `run` starts CMD in (default /)
#   NIX_OUTBOX_SHARED_TMP   TMPDIR for `run`; default: the SHARED_TMP given to `mount`
#
# Everything here needs root (debootstrap, mount, chroot).
set -euo pipefail

CHROOT_ROOT=${NIX_OUTBOX_CHROOT_ROOT:-/var/cache/nix-outbox/chroots}
MIRROR=${NIX_OUTBOX_MIRROR:-http://deb.debian.org/debian}

# Marker files at the top of a chroot. OWNER is written before debootstrap
# starts: it tells a later `create` that a half-made directory is ours and may
# be deleted. DONE is written last: without it the chroot is unfinished (an
# interrupted debootstrap leaves a tree that looks plausible but is broken,
# and debootstrap cannot resume it), so `create` starts over.
OWNER_MARK=.nix-outbox-chroot
DONE_MARK=.nix-outbox-chroot-complete
# Packages the chroot gets on top of minbase. nix-bin is the point.
# libdbi-perl only because otherwise debootstrap cannot pick a provider for a
# virtual package in nix-bin's dependency tree and gives up. procps for
# /usr/bin/kill, which tests run to kill a nix-daemon worker by PID (minbase
# has only the shell builtin).
PACKAGES=(nix-bin libdbi-perl procps)
# Written by `mount` so that `run` knows which TMPDIR is shared with the host.
SHARED_TMP_RECORD=.nix-outbox-shared-tmp

# The PATH inside: Debian's default for root. The chroot's nix, nix-store and
# nix-daemon live in /usr/bin, so they are what tests find.
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { printf 'nix-chroot: error: %s\n' "$*" >&2; exit 1; }
note() { printf 'nix-chroot: %s\n' "$*" >&2; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mount and chroot need it)"; }

# A suite name for debootstrap and for the default directory: refuse anything
# that could turn into a path component like ".." or an option.
check_suite() {
  [[ $1 =~ ^[a-z][a-z0-9.-]*$ && $1 != *..* ]] || die "bad suite name '$1' (expected e.g. sid, trixie, nix-2.35)"
}

# A "suite" named nix-X.Y is a Debian suite with that Nix built from source
# on top (scripts/nix-source.sh), for releases Debian does not package.
debian_suite() {
  case $1 in
    nix-2.35) echo sid ;;
    *) echo "$1" ;;
  esac
}
source_build() {
  case $1 in
    nix-*) "$(dirname "$0")/nix-source.sh" install "$2" ;;
  esac
}

# DIR argument -> absolute, canonical path. Canonical because the kernel
# reports mount points canonically in /proc/self/mountinfo, and `umount`
# compares against that. A bare word is a suite name under CHROOT_ROOT.
resolve_dir() {
  local d=$1
  [ -n "$d" ] || die "empty DIR"
  if [[ $d != */* ]]; then
    check_suite "$d"
    d=$CHROOT_ROOT/$d
  fi
  d=$(realpath -m -- "$d")
  # Deleting or mounting over / or a top-level system directory would be a
  # disaster; a chroot is always at least two levels deep.
  [[ $d == /*/* ]] || die "refusing to use '$d' as a chroot directory"
  printf '%s\n' "$d"
}

# Mount points at or below $1, one per line, in /proc/self/mountinfo order
# (parents before the mounts stacked on or under them). mountinfo escapes
# space, tab, newline and backslash as \ooo octal; printf %b undoes that.
mounts_under() {
  local dir=$1 mp
  while read -r _ _ _ _ mp _; do
    mp=$(printf '%b' "$mp")
    if [ "$mp" = "$dir" ] || [[ $mp == "$dir"/* ]]; then printf '%s\n' "$mp"; fi
  done </proc/self/mountinfo
}

is_mounted() { mountpoint -q -- "$1" 2>/dev/null; }

# Runs a command inside the chroot with a minimal environment, for setup steps.
in_chroot() { chroot "$1" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root LC_ALL=C "${@:2}"; }

ensure_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return
  note "installing debootstrap"
  # `apt-get install` alone fails on a machine whose package lists were never
  # fetched; update once and retry only then.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
}

# Installs whichever of PACKAGES (or the packages given after DIR) a
# finished chroot lacks: a chroot made when the list was shorter is brought
# up to date instead of rebuilt.
ensure_packages() {
  local dir=$1 p missing=()
  shift
  [ $# -gt 0 ] || set -- "${PACKAGES[@]}"
  for p in "$@"; do
    # shellcheck disable=SC2016 # ${db:Status-Abbrev} is dpkg-query's
    [ "$(in_chroot "$dir" dpkg-query -W -f '${db:Status-Abbrev}' "$p" 2>/dev/null)" = "ii " ] || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  note "$dir: installing ${missing[*]}"
  # Maintainer scripts may want /proc; lend one if the chroot is not mounted.
  local lent=''
  if ! is_mounted "$dir/proc"; then mount -t proc proc "$dir/proc"; lent=1; fi
  # Check-Valid-Until=false: the Debian mirror reachable from here can serve
  # a frozen snapshot whose Release file has passed its Valid-Until date
  # (seen for sid); signatures are still checked. Output goes to a log,
  # shown on failure only: apt's harmless "Is /dev/pts mounted?" is noise.
  local rc=0 log=$dir.apt.log
  { in_chroot "$dir" apt-get -o Acquire::Check-Valid-Until=false update &&
    in_chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 || rc=$?
  if [ -n "$lent" ]; then umount "$dir/proc"; fi
  if [ "$rc" != 0 ]; then
    tail -n 20 "$log" >&2
    die "could not install ${missing[*]} in $dir (log: $log)"
  fi
}

# The build users and nix.conf. Run on every `create`, so a chroot made by an
# older version of this script is brought up to date; each step is a no-op
# when already done.
setup_nix() {
  local dir=$1 i
  # Nix as root without a daemon builds as these users (build-users-group);
  # Debian creates them in nix-setup-systemd, which a minbase chroot lacks.
  in_chroot "$dir" getent group nixbld >/dev/null || in_chroot "$dir" groupadd -r nixbld
  # UIDs of their own, never the host's: Nix kills every process of a build
  # user before and after each build, and the chroot's Nix cannot see the
  # host's build-user locks, so a shared UID (useradd -r gives both 999)
  # lets a build on the host SIGKILL a build in the chroot and vice versa.
  local base uid cur
  base=$((30000 + $(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 500 * 10))
  for i in 1 2 3 4; do
    uid=$((base + i))
    cur=$(in_chroot "$dir" id -u "nixbld$i" 2>/dev/null || true)
    if [ -z "$cur" ]; then
      in_chroot "$dir" useradd -r -u "$uid" -M -N -g nixbld -G nixbld -s /usr/sbin/nologin "nixbld$i"
    elif [ "$cur" != "$uid" ]; then
      in_chroot "$dir" usermod -u "$uid" "nixbld$i"
    fi
  done
  # The store as Nix's installer leaves it. Nix 2.35's client fails with
  # "opening file /nix/store" on a store nothing has created yet (seen on
  # the first test of a new chroot); older versions create it on demand.
  mkdir -p "$dir/nix/store" "$dir/nix/var/nix"
  in_chroot "$dir" chgrp nixbld /nix/store
  chmod 1775 "$dir/nix/store"
  mkdir -p "$dir/etc/nix"
  # sandbox = false: Nix's build sandbox needs namespaces that a chroot on a
  # container host usually cannot create; tests do not depend on it.
  # substituters empty: there is no internet, and cache.nixos.org would only
  # make every build wait for a timeout.
  # nix-command: tests drive `nix copy` and `nix store verify`.
  cat >"$dir/etc/nix/nix.conf.tmp" <<'EOF'
# Written by nix-outbox scripts/nix-chroot.sh; rewritten on every `create`.
build-users-group = nixbld
sandbox = false
substituters =
experimental-features = nix-command
EOF
  mv -f "$dir/etc/nix/nix.conf.tmp" "$dir/etc/nix/nix.conf"
}

cmd_create() {
  if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
  need_root
  local suite=$1 dir
  check_suite "$suite"
  dir=$(resolve_dir "${2:-$suite}")

  if [ -f "$dir/$DONE_MARK" ]; then
    local have
    have=$(sed -n 's/^suite=//p' "$dir/$DONE_MARK")
    [ "$have" = "$suite" ] || die "$dir already holds a '$have' chroot, not '$suite'"
    note "$dir: chroot for $suite already exists, updating its setup"
    ensure_packages "$dir"
    setup_nix "$dir"
    source_build "$suite" "$dir"
    return
  fi

  if [ -e "$dir" ]; then
    # Unfinished chroot from an interrupted run: delete and start over, but
    # only if it is ours, and only once nothing is mounted in it (rm -rf would
    # otherwise walk into the host's /dev, /sys or a bind-mounted checkout).
    # An interrupted debootstrap leaves its own /proc and /sys mounts behind.
    if [ -n "$(ls -A -- "$dir")" ]; then
      [ -e "$dir/$OWNER_MARK" ] || die "$dir exists, is not empty and was not made by this script; remove it yourself"
      if [ -n "$(mounts_under "$dir")" ]; then
        note "$dir: unmounting what an interrupted run left mounted"
        cmd_umount "$dir"
      fi
      note "$dir: removing an unfinished chroot"
      rm -rf --one-file-system -- "$dir"
    fi
  fi

  ensure_debootstrap
  mkdir -p "$dir"
  printf 'suite=%s\n' "$suite" >"$dir/$OWNER_MARK"
  local log=$dir.debootstrap.log start=$SECONDS
  note "debootstrap $suite into $dir (about 300 MB from $MIRROR; log: $log)"
  # minbase keeps it small (about 300 MB with Nix).
  local include
  include=$(IFS=,; echo "${PACKAGES[*]}")
  if ! debootstrap --variant=minbase --include="$include" "$(debian_suite "$suite")" "$dir" "$MIRROR" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "debootstrap failed (see $log; $dir/debootstrap/debootstrap.log may say more)"
  fi
  setup_nix "$dir"
  # The package version, not `nix --version`: Nix wants /proc, which is not
  # mounted yet.
  local version
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's, not the shell's
  version=$(in_chroot "$dir" dpkg-query -W -f '${Version}' nix-bin)
  # The source build comes after the mark: it is idempotent and resumable on
  # its own, and an interrupted build must not cost the debootstrap again.
  printf 'suite=%s\ncreated=%s\nnix-bin=%s\n' "$suite" "$(date -u +%FT%TZ)" "$version" >"$dir/$DONE_MARK"
  source_build "$suite" "$dir"
  note "$dir: nix-bin $version ready after $((SECONDS - start)) s"
}

# mount DIR SHARED_TMP [BIND...]
# SHARED_TMP and every BIND path are bind-mounted at the same absolute path
# inside, so paths computed on one side are valid on the other: SHARED_TMP
# read-write (the tests' TMPDIR), BINDs read-only (e.g. the source checkout,
# whose paths the test binaries have compiled in). A BIND written as
# PATH:rw is mounted read-write. Mounts that are already there are kept, so
# running `mount` twice is harmless.
cmd_mount() {
  [ $# -ge 2 ] || usage
  need_root
  local dir shared
  dir=$(resolve_dir "$1")
  [ -f "$dir/$DONE_MARK" ] || die "$dir is not a finished chroot; run: $0 create SUITE $dir"
  [[ $2 == /* ]] || die "SHARED_TMP must be an absolute path: $2"
  shared=$(realpath -m -- "$2")
  shift 2

  # Nix reads /proc/self/exe to find itself and /proc for much else.
  mkdir -p "$dir/proc" "$dir/sys" "$dir/dev"
  is_mounted "$dir/proc" || mount -t proc proc "$dir/proc"
  # A fresh sysfs is enough; where the kernel refuses a new instance (some
  # containers), borrow the host's.
  if ! is_mounted "$dir/sys"; then
    mount -t sysfs sysfs "$dir/sys" 2>/dev/null || { mount --rbind /sys "$dir/sys" && mount --make-rslave "$dir/sys"; }
  fi
  # /dev with its submounts (pts, shm). rslave: unmounting them later inside
  # the chroot must never propagate back and unmount the host's.
  if ! is_mounted "$dir/dev"; then
    mount --rbind /dev "$dir/dev"
    mount --make-rslave "$dir/dev"
  fi

  mkdir -p "$shared"
  bind_same_path "$dir" "$shared" rw
  printf '%s\n' "$shared" >"$dir/$SHARED_TMP_RECORD"

  local b mode
  for b in "$@"; do
    mode=ro
    if [[ $b == *:rw ]]; then mode=rw; b=${b%:rw}; fi
    [[ $b == /* ]] || die "bind path must be absolute: $b"
    [ -d "$b" ] || die "no such directory: $b"
    bind_same_path "$dir" "$(realpath -- "$b")" "$mode"
  done
}

bind_same_path() {
  local dir=$1 src=$2 mode=$3
  is_mounted "$dir$src" && return
  mkdir -p "$dir$src"
  mount --bind "$src" "$dir$src"
  # A read-only bind needs a second, remount step; a single `mount -o ro
  # --bind` is silently read-write on older util-linux/kernels.
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$dir$src"; fi
}

# Unmounts everything at or below DIR, one mount at a time, always the deepest
# remaining one (the last listed among the longest paths, which is the one on
# top when the same point is mounted twice, as /dev/pts and /dev/shm can be
# after an rbind). mountinfo is re-read after every step because unmounting
# can uncover mounts hidden underneath.
cmd_umount() {
  [ $# -eq 1 ] || usage
  need_root
  local dir
  dir=$(resolve_dir "$1")
  # Only chroots this script made: `umount /var` must not strip the host.
  [ -e "$dir/$OWNER_MARK" ] || die "$dir was not made by this script; not unmounting anything under it"
  warn_processes "$dir"
  local rounds=0 target mp depth best
  while :; do
    target='' best=-1
    while IFS= read -r mp; do
      depth=$(tr -dc / <<<"$mp" | wc -c)
      if [ "$depth" -ge "$best" ]; then best=$depth target=$mp; fi
    done < <(mounts_under "$dir")
    [ -n "$target" ] || break
    rounds=$((rounds + 1))
    [ "$rounds" -le 500 ] || die "still mounts under $dir after 500 unmounts; giving up"
    if ! umount -- "$target" 2>/dev/null; then
      # Busy (a process inside still has it open). A lazy unmount detaches it
      # from the tree right away, so nothing under DIR reaches the host's
      # /dev or /sys any more, which is what makes a later rm -rf safe.
      note "$target is busy; detaching it lazily"
      umount --lazy -- "$target"
    fi
  done
  rm -f "$dir/$SHARED_TMP_RECORD"
  [ -z "$(mounts_under "$dir")" ] || die "mounts remain under $dir"
}

# Processes whose root is the chroot keep its mounts busy. They are listed,
# not killed: this script cannot know who started them.
warn_processes() {
  local dir=$1 p root
  for p in /proc/[0-9]*; do
    root=$(readlink "$p/root" 2>/dev/null) || continue
    if [ "$root" = "$dir" ]; then
      note "process ${p#/proc/} still runs inside $dir: $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)"
    fi
  done
}

cmd_run() {
  [ $# -ge 2 ] || usage
  need_root
  local dir
  dir=$(resolve_dir "$1")
  shift
  [ -f "$dir/$DONE_MARK" ] || die "$dir is not a finished chroot"
  is_mounted "$dir/proc" || die "$dir is not mounted; run: $0 mount $dir SHARED_TMP"

  local tmp=${NIX_OUTBOX_SHARED_TMP:-}
  [ -n "$tmp" ] || tmp=$(cat "$dir/$SHARED_TMP_RECORD" 2>/dev/null) || tmp=/tmp
  local cwd=${NIX_OUTBOX_CHROOT_CWD:-/}

  # env -i: nothing from the host leaks in by accident (the host's PATH would
  # find the host's Nix 2.8 through no fault of the test; NIX_* settings
  # would change behaviour). Only the listed variables are passed.
  local -a envs=(PATH="$CHROOT_PATH" HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TMPDIR="$tmp")
  [ -n "${TERM:-}" ] && envs+=(TERM="$TERM")
  local name pass=${NIX_OUTBOX_PASS_ENV:-}
  for name in ${pass//,/ }; do
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad name in NIX_OUTBOX_PASS_ENV: $name"
    # A nix-daemon that sees NIX_REMOTE would try to talk to a daemon itself
    # instead of serving; never hand it that.
    if [ "$name" = NIX_REMOTE ] && [ "$(basename -- "$1")" = nix-daemon ]; then continue; fi
    if [ -n "${!name+set}" ]; then envs+=("$name=${!name}"); fi
  done
  # exec: the chroot process takes this PID, so signals (Ctrl-C, timeout)
  # reach the command directly.
  exec chroot "$dir" /usr/bin/env -i -C "$cwd" "${envs[@]}" "$@"
}

cmd_version() {
  [ $# -eq 1 ] || usage
  need_root
  local dir
  dir=$(resolve_dir "$1")
  [ -f "$dir/$DONE_MARK" ] || die "$dir is not a finished chroot"
  if is_mounted "$dir/proc"; then
    chroot "$dir" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root nix --version
  else
    # Not mounted: Nix still needs /proc (it finds itself through
    # /proc/self/exe), so lend it one just for this call.
    mount -t proc proc "$dir/proc"
    local rc=0
    chroot "$dir" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root nix --version || rc=$?
    umount "$dir/proc"
    return "$rc"
  fi
}

cmd_install() {
  [ $# -ge 2 ] || usage
  need_root
  local dir
  dir=$(resolve_dir "$1")
  shift
  ensure_packages "$dir" "$@"
}

cmd_path() {
  [ $# -eq 1 ] || usage
  resolve_dir "$1"
}

[ $# -ge 1 ] || usage
sub=$1
shift
case $sub in
  create) cmd_create "$@" ;;
  mount) cmd_mount "$@" ;;
  umount | unmount) cmd_umount "$@" ;;
  run) cmd_run "$@" ;;
  version) cmd_version "$@" ;;
  install) cmd_install "$@" ;;
  path) cmd_path "$@" ;;
  -h | --help | help) usage ;;
  *) die "unknown subcommand '$sub' (create, mount, umount, run, version, install, path)" ;;
esac
