"""Generation metrics: counted in each worker, published through Redis, served by the web.

A worker's engine (or the one-at-a-time fallback, through `InstrumentedBackend`)
counts into a `WorkerMetrics`: prometheus_client metrics in a registry of
their own, so nothing else the process registers mixes in. A `Publisher`
thread writes that registry's text exposition to Redis every few seconds
under `sanjai:metrics:<worker id>`, with an expiry of three intervals: a
worker that dies or hangs drops out by itself, and one that stops cleanly
deletes its key.

The web's /metrics reads every key still there through `WorkerSnapshots`, a
prometheus_client collector that parses each worker's text and emits each
metric family once, every sample labelled with its `worker` and `model`.
Workers may run on other machines: Redis is all they share with the web.

Torch-free and Django-free: the web process imports this module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from inference.beacon import Beacon
from inference.types import Backend, Completion, GenerationRequest

logger = logging.getLogger(__name__)

KEY_PREFIX = "sanjai:metrics:"
# A snapshot outlives this many publishing intervals, so one late write never drops a worker.
EXPIRY_INTERVALS = 3

# Seconds. Time to first token spans a short prompt on a GPU to a long one
# queued behind a full batch on a CPU; a decode step, a few ms to a stalled second.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, float("inf"))


class WorkerMetrics:
    """One worker's generation metrics, in a registry of their own.

    Carries no worker or model label: the web adds both when it reads the
    published snapshot (see `WorkerSnapshots`).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.generated_tokens = Counter(
            "sanjai_generated_tokens", "Tokens generated, all replies together.", registry=registry
        )
        self.prefill_tokens = Counter(
            "sanjai_prefill_tokens",
            "Prompt tokens run through prefill (a reused cached prefix is not counted).",
            registry=registry,
        )
        self.prefix_reused_tokens = Counter(
            "sanjai_prefix_reused_tokens",
            "Prompt tokens taken from the prefix cache instead of being prefilled.",
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "sanjai_time_to_first_token_seconds",
            "From the request reaching the worker's backend (queue wait included) to its first token.",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "sanjai_inter_token_latency_seconds",
            "Between consecutive tokens of one reply.",
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "sanjai_queue_depth", "Requests waiting for a free batch slot.", registry=registry
        )
        self.batch_size = Gauge("sanjai_batch_size", "Requests being decoded together.", registry=registry)
        self.prefix_cache_lookups = Counter(
            "sanjai_prefix_cache_lookups",
            "Requests that named a conversation whose cached prefix could be reused.",
            registry=registry,
        )
        self.prefix_cache_hits = Counter(
            "sanjai_prefix_cache_hits",
            "Lookups that reused at least one cached token (hit rate: hits / lookups).",
            registry=registry,
        )
        self.kv_cache_bytes = Gauge(
            "sanjai_kv_cache_bytes",
            "Bytes of KV cache held: kind=batch for the running batch's buffer, "
            "kind=prefix for finished conversations kept for reuse.",
            ["kind"],
            registry=registry,
        )
        self.kv_batch_bytes = self.kv_cache_bytes.labels(kind="batch")
        self.kv_prefix_bytes = self.kv_cache_bytes.labels(kind="prefix")
        self.replies = Counter(
            "sanjai_replies",
            "Generations ended, by finish reason (error: the backend raised).",
            ["finish_reason"],
            registry=registry,
        )

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format, as published."""
        return generate_latest(self.registry)


_default: WorkerMetrics | None = None
_default_lock = threading.Lock()


def worker_metrics() -> WorkerMetrics:
    """This process's WorkerMetrics: what an engine counts into and `start_publisher`
    publishes unless they are given another one."""
    global _default
    with _default_lock:
        if _default is None:
            _default = WorkerMetrics()
        return _default


# --- The one-at-a-time fallback -------------------------------------------------------


class InstrumentedBackend:
    """Counts a backend that serves one reply at a time (the worker's fallback
    without the engine) into WorkerMetrics.

    Wrap the serialising backend (the worker's `_OneAtATime`): requests
    waiting for its lock are the queue. It sees text pieces rather than
    tokens, so time to first token is to the first streamed text, and each
    reply's inter-token latency is its mean, recorded once per token.
    """

    def __init__(self, backend: Backend, metrics: WorkerMetrics | None = None) -> None:
        self._backend = backend
        self._metrics = metrics if metrics is not None else worker_metrics()
        self._lock = threading.Lock()
        self._in_flight = 0
        self.model_name = backend.model_name
        self.loaded = getattr(backend, "loaded", None)

    def _count_in_flight(self, change: int) -> None:
        with self._lock:
            self._in_flight += change
            self._metrics.batch_size.set(min(self._in_flight, 1))
            self._metrics.queue_depth.set(max(self._in_flight - 1, 0))

    def generate(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> Completion:
        metrics = self._metrics
        started = time.monotonic()
        first_text_at: list[float] = []

        def relay(text: str) -> None:
            if not first_text_at:
                first_text_at.append(time.monotonic())
                metrics.time_to_first_token.observe(first_text_at[0] - started)
            if on_text is not None:
                on_text(text)

        self._count_in_flight(+1)
        try:
            completion = self._backend.generate(request, relay)
        except Exception:
            metrics.replies.labels(finish_reason="error").inc()
            raise
        finally:
            self._count_in_flight(-1)
        ended = time.monotonic()
        tokens = completion.completion_tokens
        metrics.generated_tokens.inc(tokens)
        metrics.prefill_tokens.inc(completion.prompt_tokens)
        metrics.replies.labels(finish_reason=completion.finish_reason).inc()
        if first_text_at and tokens > 1:
            mean = (ended - first_text_at[0]) / (tokens - 1)
            for _ in range(tokens - 1):
                metrics.inter_token_latency.observe(mean)
        return completion


# --- Publishing (worker side) ---------------------------------------------------------


def _client(redis_url: str) -> redis.Redis:
    # Short timeouts and no retries: a snapshot that cannot be written or read
    # now is skipped, never waited for.
    return redis.Redis.from_url(
        redis_url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )


class Publisher(Beacon):
    """Writes a worker's metrics to Redis every `interval_s` until stopped; a daemon thread."""

    def __init__(
        self, redis_url: str, worker_id: str, model: str, interval_s: float, metrics: WorkerMetrics
    ) -> None:
        super().__init__(
            redis_url,
            interval_s=interval_s,
            expiry_ms=max(1000, int(interval_s * EXPIRY_INTERVALS * 1000)),
            client=_client,
            thread_name="sanjai-metrics",
        )
        self.worker_id = worker_id
        self.model = model
        self.metrics = metrics

    @property
    def key(self) -> str:
        return KEY_PREFIX + self.worker_id

    def payload(self) -> str:
        return json.dumps(
            {
                "worker": self.worker_id,
                "model": self.model,
                "time": time.time(),
                "exposition": self.metrics.exposition().decode(),
            }
        )

    def publish(self, client: redis.Redis | None = None) -> None:
        """Write one snapshot now. Raises redis.RedisError if Redis is unreachable."""
        self.write_now(client)


def start_publisher(
    redis_url: str,
    worker_id: str,
    model: str,
    interval_s: float = 5.0,
    *,
    metrics: WorkerMetrics | None = None,
) -> Publisher:
    """Publish `metrics` (this process's `worker_metrics()` by default) as `worker_id`
    serving `model` every `interval_s` seconds, starting now; `stop()` the result."""
    publisher = Publisher(
        redis_url, worker_id, model, interval_s, metrics if metrics is not None else worker_metrics()
    )
    publisher.start()
    return publisher


# --- Reading (web side) ---------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    worker: str
    model: str
    time: float  # when the worker wrote it (its clock)
    exposition: str


def read_snapshots(redis_url: str) -> list[Snapshot]:
    """Every snapshot not yet expired, by worker id. Raises redis.RedisError if Redis is down."""
    client = _client(redis_url)
    try:
        keys = sorted(client.scan_iter(match=f"{KEY_PREFIX}*", count=100))
        values = client.mget(keys) if keys else []
    finally:
        client.close()
    snapshots = []
    for key, raw in zip(keys, values, strict=True):
        if not raw:
            continue  # expired between SCAN and MGET
        try:
            data = json.loads(raw)
            snapshots.append(
                Snapshot(
                    worker=str(data["worker"]),
                    model=str(data["model"]),
                    time=float(data["time"]),
                    exposition=str(data["exposition"]),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring an unreadable metrics snapshot %r: %s", key, exc)
    return snapshots


def merge_snapshots(snapshots: Iterable[Snapshot]) -> list[Metric]:
    """The workers' metric families, each once, every sample labelled with its worker and model.

    Prometheus rejects a family declared twice, so samples of the same
    family from different workers go into one family. The `_created`
    series prometheus_client adds to counters and histograms are dropped.
    A family whose type differs from the one already seen (workers of
    different versions) is skipped for that worker.
    """
    merged: dict[str, Metric] = {}
    for snapshot in snapshots:
        try:
            families = list(text_string_to_metric_families(snapshot.exposition))
        except ValueError as exc:
            logger.warning("ignoring the unparsable metrics of worker %s: %s", snapshot.worker, exc)
            continue
        names = {family.name for family in families}
        extra = {"worker": snapshot.worker, "model": snapshot.model}
        for family in families:
            if family.name.endswith("_created") and family.name[: -len("_created")] in names:
                continue
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type)
            elif target.type != family.type:
                logger.warning(
                    "worker %s reports %s as a %s, not a %s; skipped",
                    snapshot.worker,
                    family.name,
                    family.type,
                    target.type,
                )
                continue
            for sample in family.samples:
                target.add_sample(sample.name, {**sample.labels, **extra}, sample.value)
    return list(merged.values())


class WorkerSnapshots:
    """A prometheus_client collector of every live worker's published metrics.

    Pass it to `generate_latest()`; it reads Redis on every collection. Also
    reports how many snapshots it read and whether Redis answered.
    """

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def collect(self) -> Iterator[Metric]:
        try:
            snapshots = read_snapshots(self.redis_url)
            readable = 1.0
        except redis.RedisError as exc:
            logger.warning("could not read worker metrics: %s", exc)
            snapshots, readable = [], 0.0
        yield from merge_snapshots(snapshots)
        yield GaugeMetricFamily(
            "sanjai_worker_metrics_snapshots",
            "Workers whose published metrics were read for this scrape.",
            value=len(snapshots),
        )
        yield GaugeMetricFamily(
            "sanjai_worker_metrics_readable",
            "1 if Redis answered when reading the workers' metrics, else 0.",
            value=readable,
        )

    def describe(self) -> list[Any]:
        return []  # no Redis read when registered anywhere
