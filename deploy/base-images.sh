#!/usr/bin/env bash
# The base images compose.yaml and the Dockerfile name, where no registry can be
# reached. For each one, in turn: already in local storage -> nothing to do;
# `podman pull` works -> the official image; otherwise a local stand-in built
# from Debian bookworm's own packages with mmdebstrap, tagged with the
# official name so that an unchanged FROM / image: line finds it.
#   deploy/base-images.sh [python] [postgres] [redis] [nginx]   (default: all four;
#   nginx is for compose.replicas.yaml only)
# The stand-ins keep the official images' interface that compose.yaml uses
# (each deploy/local/*.Dockerfile says which); they are for machines like this project's, never
# to push anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BASE_WORK_DIR:-/var/tmp/sanjai-base-images}
MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
  /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
POSTGRES_IMAGE=docker.io/library/postgres:15-bookworm
REDIS_IMAGE=docker.io/library/redis:7-bookworm
NGINX_IMAGE=docker.io/library/nginx:stable-bookworm

need() {
  command -v "$1" >/dev/null || { echo "$1 is missing: apt-get install podman mmdebstrap podman-compose runc" >&2; exit 1; }
}
need podman

# rootfs NAME PACKAGES: a minbase Debian bookworm tarball with PACKAGES, made once.
rootfs() {
  need mmdebstrap
  mkdir -p "$WORK"
  local tar="$WORK/$1-rootfs.tar"
  if [ ! -s "$tar" ]; then
    echo "mmdebstrap: Debian bookworm with $2 from $MIRROR" >&2
    mmdebstrap --quiet --format=tar --variant=minbase --include="$2" bookworm "$tar.part" "$MIRROR"
    mv "$tar.part" "$tar"
  fi
  echo "$tar"
}

# ensure IMAGE BUILD: IMAGE present, pulled, or built by the function BUILD.
ensure() {
  if podman image exists "$1"; then
    echo "$1: present"
  elif timeout 60 podman pull --quiet "$1" >/dev/null 2>&1; then
    echo "$1: pulled"
  else
    echo "$1: no registry answered; building a local stand-in from Debian packages"
    "$2"
  fi
}

build_python() {
  # Debian's Python 3.11 with venv; pip then comes from the venv's ensurepip.
  local tar
  tar=$(rootfs python python3,python3-venv,ca-certificates | tail -1)
  podman import --quiet --change 'CMD ["python3"]' "$tar" "$PYTHON_IMAGE" >/dev/null
}

build_postgres() {
  local tar
  tar=$(rootfs postgres postgresql-15,ca-certificates | tail -1)
  podman import --quiet "$tar" localhost/sanjai-local/postgres-rootfs:15 >/dev/null
  podman build --quiet --format docker -t "$POSTGRES_IMAGE" -f deploy/local/postgres.Dockerfile deploy/local >/dev/null
}

build_redis() {
  local tar
  tar=$(rootfs redis redis-server | tail -1)
  podman import --quiet "$tar" localhost/sanjai-local/redis-rootfs:7 >/dev/null
  podman build --quiet --format docker -t "$REDIS_IMAGE" -f deploy/local/redis.Dockerfile deploy/local >/dev/null
}

build_nginx() {
  local tar
  tar=$(rootfs nginx nginx-light | tail -1)
  podman import --quiet "$tar" localhost/sanjai-local/nginx-rootfs:bookworm >/dev/null
  podman build --quiet --format docker -t "$NGINX_IMAGE" -f deploy/local/nginx.Dockerfile deploy/local >/dev/null
}

for which in "${@:-python postgres redis nginx}"; do
  for name in $which; do
    case $name in
      python) ensure "$PYTHON_IMAGE" build_python ;;
      postgres) ensure "$POSTGRES_IMAGE" build_postgres ;;
      redis) ensure "$REDIS_IMAGE" build_redis ;;
      nginx) ensure "$NGINX_IMAGE" build_nginx ;;
      *) echo "unknown base image: $name (python, postgres, redis or nginx)" >&2; exit 2 ;;
    esac
  done
done
