"""The image's health check, for whichever role PID 1 is (deploy/container.py).

- web: GET /healthz answers 200. It is sent with a Host from ALLOWED_HOSTS:
  Django refuses any other (400), and the probe connects by address.
- worker: this container's worker has a live heartbeat in Redis and has
  loaded its model (inference/presence.py); until then it is "starting".
- anything else (migrate, manage): healthy while it runs.

Exit 0 healthy, 1 not, with one line saying why.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, "/app")


def role() -> str:
    words = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    if b"/app/deploy/container.py" in words:  # still waiting for the database, before its exec
        after = words[words.index(b"/app/deploy/container.py") + 1 :]
        return {b"": "web", b"web": "web", b"worker": "worker"}.get(after[0] if after else b"", "other")
    if any(word.endswith(b"uvicorn") for word in words):
        return "web"
    if b"celery" in words and b"worker" in words:
        return "worker"
    return "other"


def probe_host() -> str:
    """The first ALLOWED_HOSTS entry a request can carry ("*" and ".example.com" read as names)."""
    for entry in os.environ.get("ALLOWED_HOSTS", "").split(","):
        host = entry.strip().lstrip(".")
        if host and host != "*":
            return host
    return "localhost"


def check_web() -> str | None:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz"
    request = urllib.request.Request(url, headers={"Host": probe_host()})
    try:
        with urllib.request.urlopen(request, timeout=4) as response:  # noqa: S310
            return None if response.status == 200 else f"/healthz answered {response.status}"
    except urllib.error.HTTPError as error:
        return f"/healthz answered {error.code} (Host: {probe_host()})"
    except OSError as error:
        return f"/healthz: {error}"


def check_worker() -> str | None:
    import redis

    from inference import presence

    me = socket.gethostname()
    try:
        workers = presence.live_workers(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    except redis.RedisError as error:
        return f"Redis: {error}"
    mine = [worker for worker in workers if worker.name.endswith(f"@{me}")]
    if not mine:
        return f"no live heartbeat from a worker on {me}"
    loading = [worker for worker in mine if not worker.ready]
    if loading:
        return f"{loading[0].name} is {loading[0].state}: {loading[0].stage} ({loading[0].progress}%)"
    return None


def main() -> int:
    which = role()
    problem = check_web() if which == "web" else check_worker() if which == "worker" else None
    print(f"{which}: {problem or 'healthy'}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
