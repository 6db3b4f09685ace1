#!/usr/bin/env bash
# Nix built from source inside a chroot of scripts/nix-chroot.sh, for the
# releases Debian does not package yet (2.35). `nix-chroot.sh create
# nix-2.35` calls this after debootstrap; it is idempotent.
#
#   scripts/nix-source.sh install DIR     # build (or restore) and install into chroot DIR
#   scripts/nix-source.sh tarball         # prints the source tarball's path, checked
#
# The source is a `git archive` of the release tag, vendored outside this
# repository (it is 1.6 MB and not ours): NIX_OUTBOX_NIX_SOURCE, else
# ../shared/vendor/ next to the checkout, else /work/shared/vendor/.
#
# The installed tree (/opt/nix-2.35 inside the chroot) is cached as a tar
# under $NIX_OUTBOX_CACHE_ROOT/nix-source (default /var/cache/nix-outbox),
# named by the source's sha256, so only the first run pays for the build
# (about 20 minutes on 2 cores); a new chroot restores it in seconds.
#
# Needs root (chroot, mount).
set -euo pipefail

VERSION=2.35.2
SHA256=b2a93b770734b3149ee6005e426feb8c3194b7344d7fd78f03591560e6d794a5
PREFIX=/opt/nix-2.35
CACHE_ROOT=${NIX_OUTBOX_CACHE_ROOT:-/var/cache/nix-outbox}
CACHE=$CACHE_ROOT/nix-source/nix-$VERSION-$SHA256.tar
# Written inside the chroot once the tree is installed and linked.
STAMP=$PREFIX/.nix-outbox-source
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# What Nix's meson build needs on Debian sid (the -dev packages also bring
# the runtime libraries, so a restored tree runs too).
BUILD_DEPS=(
  bison cmake curl flex jq libacl1-dev libarchive-dev libblake3-dev
  libboost-container-dev libboost-context-dev libboost-coroutine-dev
  libboost-iostreams-dev libboost-thread-dev libboost-url-dev libboost-dev
  libbrotli-dev libbsd-dev libbz2-dev libcpuid-dev libcurl4-gnutls-dev
  libgc-dev libgit2-dev libgtest-dev libgmock-dev libidn2-dev liblowdown-dev
  liblzma-dev libreadline-dev libseccomp-dev libsodium-dev libsqlite3-dev
  libssl-dev libtoml11-dev libzstd-dev lowdown meson nlohmann-json3-dev
  pkgconf rsync zlib1g-dev g++ git xz-utils ninja-build
)

die() { printf 'nix-source: error: %s\n' "$*" >&2; exit 1; }
note() { printf 'nix-source: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }

in_chroot() { chroot "$1" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root LC_ALL=C "${@:2}"; }

find_tarball() {
  local here cand
  here=$(cd "$(dirname "$0")/.." && pwd)
  if [ -n "${NIX_OUTBOX_NIX_SOURCE:-}" ] && [ ! -f "$NIX_OUTBOX_NIX_SOURCE" ]; then
    die "NIX_OUTBOX_NIX_SOURCE names $NIX_OUTBOX_NIX_SOURCE, which is not a file"
  fi
  for cand in "${NIX_OUTBOX_NIX_SOURCE:-}" "$here/../shared/vendor/nix-$VERSION.tar.xz" \
    "/work/shared/vendor/nix-$VERSION.tar.xz"; do
    [ -f "$cand" ] || continue
    local got
    got=$(sha256sum -- "$cand" | cut -d' ' -f1)
    [ "$got" = "$SHA256" ] || die "$cand has sha256 $got, expected $SHA256 (a different or damaged tarball)"
    printf '%s\n' "$cand"
    return
  done
  die "the Nix $VERSION source (nix-$VERSION.tar.xz, sha256 $SHA256) is not in ../shared/vendor or /work/shared/vendor; set NIX_OUTBOX_NIX_SOURCE to its path"
}

# Lends the chroot /proc and /dev for the duration of a step, unless they
# are mounted already; prints what it mounted, to be given to unlend. Runs
# in a command substitution, where `set -e` is off: every mount is checked.
lend() {
  local dir=$1 lent=''
  if ! mountpoint -q "$dir/proc"; then
    mount -t proc proc "$dir/proc" || return 1
    lent+=" proc"
  fi
  if ! mountpoint -q "$dir/dev"; then
    mount --rbind /dev "$dir/dev" || { unlend "$dir" "$lent"; return 1; }
    lent+=" dev"
    mount --make-rslave "$dir/dev" || { unlend "$dir" "$lent"; return 1; }
  fi
  printf '%s\n' "$lent"
}
unlend() {
  local dir=$1 what
  for what in $2; do umount -R "$dir/$what" || umount -R --lazy "$dir/$what"; done
}

# The build dependencies, through nix-chroot.sh's package installer.
install_deps() {
  "$(dirname "$0")/nix-chroot.sh" install "$1" "${BUILD_DEPS[@]}"
}

build() {
  local dir=$1 src log=$dir.nix-build.log start=$SECONDS
  src=$(find_tarball)
  note "building Nix $VERSION from $src in $dir (about 20 minutes on 2 cores; log: $log)"
  rm -rf -- "$dir/usr/src/nix-$VERSION" "$dir$PREFIX"
  mkdir -p "$dir/usr/src/nix-$VERSION"
  tar -xJf "$src" -C "$dir/usr/src/nix-$VERSION"
  local rc=0
  # Unit and functional tests, docs and schema checks are Nix's own CI's
  # business; we test Nix's behaviour from the outside.
  in_chroot "$dir" sh -c "cd /usr/src/nix-$VERSION &&
    meson setup build --prefix=$PREFIX --buildtype=release -Dunit-tests=false \
      -Dfunctional-tests=false -Ddoc-gen=false -Djson-schema-checks=false \
      -Dlibcmd:readline-flavor=readline &&
    ninja -C build -j$(nproc) install" >"$log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 40 "$log" >&2
    die "building Nix $VERSION failed (log: $log)"
  fi
  rm -rf -- "$dir/usr/src/nix-$VERSION"
  note "built Nix $VERSION in $((SECONDS - start)) s"
  # Into the cache atomically: a tar that exists is a whole one.
  mkdir -p "$(dirname "$CACHE")"
  local tmp
  tmp=$(mktemp "$CACHE.XXXXXX")
  if ! tar -C "$dir$(dirname "$PREFIX")" -cf "$tmp" "$(basename "$PREFIX")"; then
    rm -f -- "$tmp"
    die "could not write $CACHE"
  fi
  sync -- "$tmp"
  mv -f -- "$tmp" "$CACHE"
  sync -- "$(dirname "$CACHE")"
}

restore() {
  local dir=$1
  note "restoring Nix $VERSION into $dir from $CACHE"
  rm -rf -- "$dir$PREFIX"
  mkdir -p "$dir$(dirname "$PREFIX")"
  tar -C "$dir$(dirname "$PREFIX")" -xf "$CACHE"
}

# The libraries into ld.so's path and the commands ahead of Debian's
# nix-bin in PATH (/usr/local/bin comes first there), so tests that run
# `nix-store` or `nix-daemon` get this version.
link() {
  local dir=$1 b
  printf '%s\n' "$PREFIX/lib64" "$PREFIX/lib" >"$dir/etc/ld.so.conf.d/nix-outbox-nix-source.conf"
  in_chroot "$dir" ldconfig
  mkdir -p "$dir/usr/local/bin"
  for b in "$dir$PREFIX"/bin/*; do
    ln -sfn -- "$PREFIX/bin/$(basename -- "$b")" "$dir/usr/local/bin/$(basename -- "$b")"
  done
}

# Whether the Nix installed in DIR runs and is VERSION (its libraries
# come from the chroot's packages, which a later apt upgrade may change).
runs() {
  local v
  v=$(in_chroot "$1" nix --version 2>/dev/null) && [ "${v##* }" = "$VERSION" ]
}

cmd_install() {
  [ $# -eq 1 ] || usage
  [ "$(id -u)" = 0 ] || die "must run as root (chroot and mount need it)"
  local dir=$1
  [ -d "$dir/etc" ] || die "$dir is not a chroot"
  local lent
  lent=$(lend "$dir") || die "cannot mount /proc and /dev in $dir"
  # shellcheck disable=SC2064 # expand now: the trap must unmount what was lent here
  trap "unlend '$dir' '$lent'" EXIT
  if [ "$(cat "$dir$STAMP" 2>/dev/null)" = "$SHA256" ] && runs "$dir"; then
    return 0
  fi
  install_deps "$dir"
  if [ -f "$CACHE" ]; then
    restore "$dir"
    link "$dir"
    # A tree built against libraries sid has since replaced (a soname
    # bump) does not run: build again, and replace the cache.
    if ! runs "$dir"; then
      note "the cached Nix $VERSION does not run in $dir (its libraries changed?); building it again"
      rm -f -- "$CACHE"
      build "$dir"
    fi
  else
    build "$dir"
  fi
  link "$dir"
  runs "$dir" || die "Nix $VERSION does not run in $dir: $(in_chroot "$dir" nix --version 2>&1 | tail -3)"
  printf '%s\n' "$SHA256" >"$dir$STAMP"
  note "$dir: $(in_chroot "$dir" nix --version)"
}

[ $# -ge 1 ] || usage
sub=$1
shift
case $sub in
  install) cmd_install "$@" ;;
  tarball) find_tarball ;;
  -h | --help | help) usage ;;
  *) die "unknown subcommand '$sub' (install, tarball)" ;;
esac
