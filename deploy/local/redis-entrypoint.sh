#!/bin/sh
# The stand-in's entry point (redis.Dockerfile). Like the official image's:
# redis-server runs as redis in /data, which it owns, and protected mode is off
# (the official build turns it off: the container's network is the boundary;
# compose.yaml sets a password).
set -eu
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  chown -R redis:redis /data
  exec runuser -u redis -- "$0" "$@"
fi
if [ "$1" = redis-server ]; then
  shift
  exec redis-server --protected-mode no --dir /data "$@"
fi
exec "$@"
