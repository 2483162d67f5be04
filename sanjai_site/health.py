"""Probes for a process supervisor or a load balancer: /healthz and /readyz.

- /healthz: the web process is up and answering. Touches neither the
  database nor Redis, so a database or broker outage never gets a healthy
  web process restarted.
- /readyz: this deployment can answer a chat now. The database answers a
  trivial query, Redis answers PING, and every declared model has at least
  one worker whose heartbeat is live and that has finished loading (workers
  still loading are listed apart). 200 when all pass, 503 otherwise, with
  each check's result either way. With single sign-on on, `sso` says
  whether the provider's discovery document could be fetched: reported, never
  a reason to fail (administrators still sign in with a password).

Neither needs a login. The output names no host, URL or password: errors are
the exception's class and message, with the configured passwords masked.

Like every view, these answer only requests whose Host header is in
ALLOWED_HOSTS; a probe that connects by IP address must send an allowed Host.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from redis.backoff import NoBackoff
from redis.retry import Retry

from chat import sso
from inference import presence

logger = logging.getLogger(__name__)

# Seconds. A readiness probe must answer well within a typical probe timeout
# (often 1-5 s), so a Redis that does not answer PING within this is not ready.
REDIS_TIMEOUT_S = 2.0
ERROR_CHARS = 300

Check = dict[str, Any]


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, Check] = {"database": _check_database(), "redis": _check_redis()}
    checks["workers"] = _check_workers(redis_ok=checks["redis"]["ok"])
    ready = all(check["ok"] for check in checks.values())
    answer: dict[str, Any] = {"status": "ok" if ready else "fail", "checks": checks}
    if settings.OIDC_ISSUER:  # reported, never a reason to take the site out of rotation
        answer["sso"] = sso.discovery_state()
    return JsonResponse(answer, status=200 if ready else 503)


def declared_models() -> list[str]:
    """The models this deployment serves (settings.MODEL_REGISTRY)."""
    return list(settings.MODEL_REGISTRY.names)


def _check_database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        logger.warning("readiness: the database check failed: %s", exc)
        return {"ok": False, "error": _describe(exc)}
    return {"ok": True}


def _check_redis() -> Check:
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),  # redis-py retries 10 times by default: no answer now is the answer
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        logger.warning("readiness: the Redis check failed: %s", exc)
        return {"ok": False, "error": _describe(exc)}
    finally:
        client.close()
    return {"ok": True}


def _check_workers(*, redis_ok: bool) -> Check:
    """At least one live, ready worker (its heartbeat in Redis) for every declared model."""
    declared = declared_models()
    if not redis_ok:
        # Heartbeats live in Redis: without it no worker can be seen, nor take a job.
        return {"ok": False, "models": dict.fromkeys(declared, 0), "error": "Redis is unreachable"}
    try:
        workers = presence.live_workers(settings.REDIS_URL)
    except redis.RedisError as exc:
        return {"ok": False, "models": dict.fromkeys(declared, 0), "error": _describe(exc)}
    ready = dict.fromkeys(declared, 0)
    loading: dict[str, int] = {}
    for worker in workers:
        # A worker still loading its model announces itself, but takes no job yet.
        counts = ready if getattr(worker, "ready", True) else loading
        counts[worker.model] = counts.get(worker.model, 0) + 1
    # Workers serving something else are listed too, so a misconfigured one shows.
    check: Check = {"ok": all(ready[name] > 0 for name in declared), "models": ready}
    if loading:
        check["loading"] = loading
    return check


def _describe(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text[:ERROR_CHARS]


def _secrets() -> list[str]:
    candidates = [urlsplit(settings.REDIS_URL).password, settings.DATABASES["default"].get("PASSWORD")]
    found = set()
    for secret in candidates:
        if secret:
            found.update({str(secret), unquote(str(secret))})
    return sorted(found, key=len, reverse=True)
