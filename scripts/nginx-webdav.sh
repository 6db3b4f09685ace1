#!/usr/bin/env bash
# A private nginx that accepts WebDAV-style PUTs, for testing http:// targets.
#
#   scripts/nginx-webdav.sh install        # apt-get install nginx if missing
#   scripts/nginx-webdav.sh run DIR PORT   # serve DIR/root on 127.0.0.1:PORT, in the foreground
#
# `run` writes DIR/nginx.conf and execs nginx with it, so the caller's child
# process *is* nginx and can be stopped by its PID. Everything nginx writes
# (pid, logs, request-body temp files) stays in DIR; nothing global is
# touched and no system service is started. Uploads land in DIR/root, which
# is then a file:// binary cache too. `run` installs nginx first if missing.
#
# Debian's `nginx` package has ngx_http_dav_module built in (`nginx -V`
# shows --with-http_dav_module); in bookworm, nginx-light is only a
# transitional package pulling in `nginx`.
set -euo pipefail

NGINX=/usr/sbin/nginx

die() { printf 'nginx-webdav: error: %s\n' "$*" >&2; exit 1; }
note() { printf 'nginx-webdav: %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_nginx() {
  [ -x "$NGINX" ] && return 0
  note "installing nginx (Debian's package)"
  # Debian starts services from maintainer scripts unless policy-rc.d says
  # no; on a machine without one, a system nginx on port 80 may start.
  # `apt-get install` alone fails where package lists were never fetched;
  # update once and retry only then.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null 2>&1 || {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  }
  [ -x "$NGINX" ] || die "nginx was installed but $NGINX is missing"
  "$NGINX" -V 2>&1 | grep -q -- --with-http_dav_module ||
    die "$NGINX lacks the WebDAV module (ngx_http_dav_module)"
}

run() {
  local dir=$1 port=$2
  [[ $port =~ ^[0-9]+$ ]] || die "bad port '$port'"
  [ -d "$dir" ] || die "no directory $dir"
  dir=$(realpath -- "$dir")
  install_nginx
  mkdir -p "$dir/root" "$dir/tmp"
  # master_process off + daemon off: one process, in the foreground, that
  # is the caller's child. client_max_body_size 0: NARs can be large.
  # Every *_temp_path is set so nginx never needs /var/lib/nginx.
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log info;
events { worker_connections 128; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  default_type application/octet-stream;
  client_max_body_size 0;
  server {
    listen 127.0.0.1:$port;
    root $dir/root;
    location / {
      dav_methods PUT DELETE MKCOL;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }
  }
}
EOF
  # -e: the error log before the configuration is read (otherwise nginx
  # opens /var/log/nginx/error.log first).
  exec "$NGINX" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
}

case ${1:-} in
  install) install_nginx; printf '%s\n' "$NGINX" ;;
  run) [ $# = 3 ] || die "usage: $0 run DIR PORT"; run "$2" "$3" ;;
  *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2 ;;
esac
