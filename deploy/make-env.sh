#!/usr/bin/env bash
# deploy/sanjai.env.example with every CHANGE-ME replaced by a fresh secret, on stdout:
#   deploy/make-env.sh > deploy/sanjai.env    (what `make compose-env` does)
# Each secret is its own; the passwords in DATABASE_URL and REDIS_URL match
# POSTGRES_PASSWORD and REDIS_PASSWORD.
set -euo pipefail
cd "$(dirname "$0")"
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
key=$(secret) db=$(secret) redis=$(secret)
sed -e "s|^SECRET_KEY=CHANGE-ME|SECRET_KEY=$key|" \
    -e "s|CHANGE-ME@postgres|$db@postgres|; s|^POSTGRES_PASSWORD=CHANGE-ME|POSTGRES_PASSWORD=$db|" \
    -e "s|CHANGE-ME@redis|$redis@redis|; s|^REDIS_PASSWORD=CHANGE-ME|REDIS_PASSWORD=$redis|" \
    sanjai.env.example
