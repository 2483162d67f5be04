#!/usr/bin/env bash
# A private PostgreSQL cluster for the test suite, on 127.0.0.1 only.
#   scripts/postgres.sh start DIR PORT   (initialises DIR on first use)
#   scripts/postgres.sh stop DIR
# Uses Debian's postgresql package (installed when missing). As root, the
# server runs as the postgres user: PostgreSQL refuses to run as root.
set -euo pipefail
action=$1
dir=$2
port=${3:-54329}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# pgvector for dense search (chat/documents/dense.py), where apt has it (Debian from
# trixie, PostgreSQL's own apt repository); without it dense search compares in numpy.
major=$(basename "$(dirname "$bin")")
if [ ! -f "/usr/share/postgresql/$major/extension/vector.control" ] &&
  apt-cache show "postgresql-$major-pgvector" >/dev/null 2>&1; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$major-pgvector" >/dev/null || true
fi
as_server() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}

case $action in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    if [ ! -f "$dir/PG_VERSION" ]; then
      as_server "$bin/initdb -D '$dir' -U postgres --auth=trust -E UTF8 >/dev/null"
    fi
    as_server "$bin/pg_ctl -D '$dir' -l '$dir/server.log' -w \
      -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1\" start >/dev/null"
    ;;
  stop)
    as_server "$bin/pg_ctl -D '$dir' -m fast -w stop >/dev/null" || true
    ;;
  *)
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
