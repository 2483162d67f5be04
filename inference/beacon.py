"""A Redis key a worker keeps fresh from a daemon thread: its heartbeat, its metrics.

The key is written when the beacon starts (so it is there before the first
job can come), again every `interval_s` with an expiry, at once on
`write_now()`, and deleted on `stop()` so that readers stop listing it at
once; a process that dies leaves it to expire. Redis being away is never an
error here: the next write tries again. Torch-free.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import suppress

import redis

logger = logging.getLogger(__name__)

STOP_JOIN_S = 5


class Beacon:
    """Subclasses say what the key holds (`payload`)."""

    def __init__(
        self,
        redis_url: str,
        *,
        interval_s: float,
        expiry_ms: int,
        client: Callable[[str], redis.Redis],
        thread_name: str,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s!r}: must be positive")
        self._url = redis_url
        self.interval_s = interval_s
        self._expiry_ms = expiry_ms
        self._client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    @property
    def key(self) -> str:
        raise NotImplementedError

    def payload(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        try:
            self.write_now()
        except redis.RedisError as exc:  # never keeps a worker from starting: the thread writes it later
            logger.warning("could not write %s yet: %s", self.key, exc)
        self._thread.start()

    def write_now(self, client: redis.Redis | None = None) -> None:
        """Write the key now. Raises redis.RedisError if Redis is unreachable."""
        own = client is None
        client = client if client is not None else self._client(self._url)
        try:
            self._write(client)
        finally:
            if own:
                client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_JOIN_S)
        client = self._client(self._url)
        try:
            client.delete(self.key)
        except redis.RedisError:
            pass  # Redis is going away too; the key expires by itself.
        finally:
            client.close()

    def _write(self, client: redis.Redis) -> None:
        client.set(self.key, self.payload(), px=self._expiry_ms)

    def _run(self) -> None:
        client = self._client(self._url)
        try:
            while not self._stop.wait(self.interval_s):
                # Redis restarting: the next write, one interval on, puts the key back.
                with suppress(redis.RedisError):
                    self._write(client)
        finally:
            client.close()
