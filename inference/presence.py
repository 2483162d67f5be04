"""Which generation workers are alive, through heartbeats in Redis.

Each worker refreshes a key with a short expiry; the web process reads them to
answer 503 at once when no worker would pick a job up, instead of letting the
job sit in the queue until the request times out. Torch-free.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import asdict, dataclass, replace

import redis

from inference.beacon import Beacon

KEY_PREFIX = "sanjai:worker:"


@dataclass(frozen=True)
class WorkerInfo:
    id: str  # unique per worker process start; replies record who claimed them
    name: str  # the Celery hostname, e.g. generation@laptop
    model: str
    device: str
    since: float
    # "loading" from the moment the worker starts (with `progress` 0-100 and
    # the `stage` it is in), then "ready" once it takes jobs.
    state: str = "ready"
    progress: int = 100
    stage: str = ""
    # The queue only this worker takes jobs from: a conversation's next turn is
    # sent there while this worker holds its KV cache ("" for none).
    queue: str = ""
    capacity: int = 1  # replies it generates at once
    pid: int = 0  # its process, by which the launcher that started it knows it has announced itself

    @property
    def ready(self) -> bool:
        return self.state == "ready"


def _client(url: str) -> redis.Redis:
    # A short connect timeout: a refused or unreachable server is an outage
    # to report at once. A longer read timeout: a server slowed by a saturated
    # machine still answers these small commands, and must not read as down.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def live_workers(redis_url: str) -> list[WorkerInfo]:
    """Workers with a fresh heartbeat. Raises redis.ConnectionError if Redis is down."""
    client = _client(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{KEY_PREFIX}*", count=100))
        values = client.mget(keys) if keys else []
    finally:
        client.close()
    known = WorkerInfo.__dataclass_fields__
    return [
        WorkerInfo(**{key: value for key, value in json.loads(raw).items() if key in known})
        for raw in values
        if raw
    ]


def live_worker_ids(redis_url: str) -> set[str]:
    """Every live worker, loading or ready: the ones that may hold a reply."""
    return {worker.id for worker in live_workers(redis_url)}


def ready_worker_ids(redis_url: str) -> set[str]:
    """The live workers that have loaded their model and take jobs."""
    return {worker.id for worker in live_workers(redis_url) if worker.ready}


def redis_uptime_s(redis_url: str) -> float:
    """How long the Redis server has been up: right after a restart, heartbeats are not all back yet."""
    client = _client(redis_url)
    try:
        return float(client.info("server")["uptime_in_seconds"])
    finally:
        client.close()


class Heartbeat(Beacon):
    """Announces a worker until stopped: its WorkerInfo under its key, refreshed three
    times a TTL from a daemon thread, and at once on each `update()`."""

    def __init__(self, redis_url: str, info: WorkerInfo, ttl_s: int) -> None:
        super().__init__(
            redis_url,
            interval_s=max(ttl_s / 3, 0.5),
            expiry_ms=ttl_s * 1000,
            client=_client,
            thread_name="sanjai-heartbeat",
        )
        self._info = info

    @property
    def key(self) -> str:
        return KEY_PREFIX + self._info.id

    def payload(self) -> str:
        return json.dumps(asdict(self._info))

    def update(self, **changes: object) -> None:
        """Announce a change (loading progress, ready) now rather than at the next beat."""
        self._info = replace(self._info, **changes)  # type: ignore[arg-type]
        with suppress(redis.RedisError):  # the next beat carries it
            self.write_now()
