"""Health and metrics: /healthz, /readyz and /metrics, in-process and on the real stack.

In-process: the probes' answers with Redis and workers up and down, who may
read /metrics, and the generation metrics a worker's engine counts, publishes
to a real embedded Redis and the web serves, labelled by worker and model.

On the real stack (uvicorn, a Celery worker, an embedded Redis this module
stops and starts on the same port): /readyz turns red when the worker stops
answering or Redis goes away, and green again when they come back; /metrics
after a reply has the request metrics, and the worker's generation metrics
once the worker publishes them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inference import presence
from inference.metrics import (
    KEY_PREFIX,
    InstrumentedBackend,
    Snapshot,
    WorkerMetrics,
    merge_snapshots,
    start_publisher,
)
from inference.params import GenerationParams
from inference.types import Completion, GenerationRequest, Turn
from sanjai_site.health import declared_models
from tests.stack import Stack, database_url, running_stack

ROOT = Path(__file__).resolve().parent.parent
HELLO = [Turn("user", "Hello! What is the capital of France?")]
# Generous slack for a busy two-core machine on top of each stated bound.
MARGIN_S = 25


def greedy(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0, repetition_penalty=1.0)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of an exposition by its name: [(labels, value)]."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matching = [v for sample_labels, v in found.get(name, []) if labels.items() <= sample_labels.items()]
    assert len(matching) == 1, f"{name}{labels}: {found.get(name)}"
    return matching[0]


def declared_once(text: str) -> None:
    """Prometheus rejects an exposition that declares a family twice."""
    for kind in ("# HELP ", "# TYPE "):
        names = [line.split()[2] for line in text.splitlines() if line.startswith(kind)]
        assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.fixture
def own_redis(redis_url: str) -> Iterator[str]:
    """The session's embedded Redis, at a database of its own: no other test's heartbeats."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/9"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


# --- /healthz ---------------------------------------------------------------------


def test_healthz_answers_without_the_database_or_redis(
    client: Any, settings: Any, dead_redis_url: str
) -> None:
    # No django_db mark: any database access would fail the test.
    settings.REDIS_URL = dead_redis_url
    response = client.get("/healthz", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


# --- /readyz in-process -------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_needs_a_live_worker_for_the_declared_model(
    client: Any, settings: Any, own_redis: str
) -> None:
    settings.REDIS_URL = own_redis
    model = declared_models()[0]
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "fail",
        "checks": {
            "database": {"ok": True},
            "redis": {"ok": True},
            "workers": {"ok": False, "models": {model: 0}},
        },
    }

    # A worker of another model does not count, but shows.
    stray = presence.Heartbeat(
        own_redis, presence.WorkerInfo("stray/1", "stray", "other-model", "cpu", time.time()), ttl_s=30
    )
    stray.start()
    try:
        workers = client.get("/readyz").json()["checks"]["workers"]
        assert workers == {"ok": False, "models": {model: 0, "other-model": 1}}
        beat = presence.Heartbeat(
            own_redis, presence.WorkerInfo("w/1", "w", model, "cpu", time.time()), ttl_s=30
        )
        beat.start()
        try:
            response = client.get("/readyz")
            assert response.status_code == 200, response.content
            assert response.json()["status"] == "ok"
            assert response.json()["checks"]["workers"] == {
                "ok": True,
                "models": {model: 1, "other-model": 1},
            }
        finally:
            beat.stop()
    finally:
        stray.stop()
    assert client.get("/readyz").status_code == 503


@pytest.mark.django_db
def test_a_worker_still_loading_its_model_is_not_ready(client: Any, settings: Any, own_redis: str) -> None:
    if "state" not in presence.WorkerInfo.__dataclass_fields__:
        pytest.skip("heartbeats carry no loading state")
    settings.REDIS_URL = own_redis
    model = declared_models()[0]
    info = presence.WorkerInfo("w/2", "w", model, "cpu", time.time(), state="loading", progress=40)
    beat = presence.Heartbeat(own_redis, info, ttl_s=30)
    beat.start()
    try:
        response = client.get("/readyz")
    finally:
        beat.stop()
    assert response.status_code == 503
    assert response.json()["checks"]["workers"] == {"ok": False, "models": {model: 0}, "loading": {model: 1}}


@pytest.mark.django_db
def test_readyz_reports_redis_down_without_its_password(
    client: Any, settings: Any, dead_redis_url: str
) -> None:
    settings.REDIS_URL = dead_redis_url.replace("redis://", "redis://:hunter2-secret@")
    started = time.monotonic()
    response = client.get("/readyz", REMOTE_ADDR="203.0.113.9")  # no auth, from anywhere
    assert time.monotonic() - started < 5  # no retries with backoff
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["redis"]["ok"] is False and "Connection refused" in body["checks"]["redis"]["error"]
    assert body["checks"]["workers"]["ok"] is False
    assert body["checks"]["workers"]["models"] == {declared_models()[0]: 0}
    assert "hunter2" not in response.content.decode()


@pytest.mark.django_db
def test_readyz_reports_the_database_down(
    client: Any, settings: Any, own_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    from sanjai_site import health

    class Unreachable:
        def cursor(self) -> Any:
            raise OperationalError("connection refused")

    settings.REDIS_URL = own_redis
    monkeypatch.setattr(health, "connection", Unreachable())
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == {
        "ok": False,
        "error": "OperationalError: connection refused",
    }


# --- Who may read /metrics ----------------------------------------------------------


def test_metrics_are_refused_to_an_unlisted_client(client: Any, settings: Any, dead_redis_url: str) -> None:
    settings.REDIS_URL = dead_redis_url
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403
    assert "error" in response.json()
    # No token configured: no bearer token opens it.
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_metrics_are_served_to_localhost_and_listed_networks(
    client: Any, settings: Any, dead_redis_url: str
) -> None:
    settings.REDIS_URL = dead_redis_url
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert client.get("/metrics", REMOTE_ADDR=address).status_code == 200, address
    settings.METRICS_ALLOWED_NETWORKS = ["203.0.113.0/24"]
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


def test_metrics_behind_the_tls_proxy_judge_the_forwarded_client(
    client: Any, settings: Any, dead_redis_url: str
) -> None:
    # The nginx recipe in docs/operating/tls-proxy.md: the proxy is on 127.0.0.1 and appends the
    # client's address to X-Forwarded-For.
    settings.REDIS_URL = dead_redis_url
    settings.TLS_PROXY = True
    through_proxy = {"REMOTE_ADDR": "127.0.0.1"}
    assert client.get("/metrics", **through_proxy, HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403
    # What the client wrote is left of the proxy's own entry, and is not believed.
    forged = "127.0.0.1, 203.0.113.9"
    assert client.get("/metrics", **through_proxy, HTTP_X_FORWARDED_FOR=forged).status_code == 403
    # A scraper on this machine that talks to the server directly is still let in.
    assert client.get("/metrics", **through_proxy).status_code == 200
    settings.METRICS_TOKEN = "scrape-me-please"
    outside = {**through_proxy, "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    assert client.get("/metrics", **outside, HTTP_AUTHORIZATION="Bearer scrape-me-please").status_code == 200


def test_metrics_are_served_with_the_token(client: Any, settings: Any, dead_redis_url: str) -> None:
    settings.REDIS_URL = dead_redis_url
    settings.METRICS_TOKEN = "scrape-me-please"
    outside = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get("/metrics", **outside, HTTP_AUTHORIZATION="Bearer scrape-me-please").status_code == 200
    assert client.get("/metrics", **outside, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", **outside, HTTP_AUTHORIZATION="Basic scrape-me-please").status_code == 403
    assert client.get("/metrics", **outside).status_code == 403


def test_metrics_still_answer_with_redis_down(client: Any, settings: Any, dead_redis_url: str) -> None:
    settings.REDIS_URL = dead_redis_url
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(response.content.decode())
    assert value(found, "sanjai_worker_metrics_readable") == 0
    assert value(found, "sanjai_worker_metrics_snapshots") == 0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("METRICS_ALLOWED_NETWORKS", "10.0.0.0/8,intranet", "METRICS_ALLOWED_NETWORKS: 'intranet' is not"),
        ("WORKER_METRICS_INTERVAL_S", "0", "WORKER_METRICS_INTERVAL_S=0: must be above 0"),
    ],
)
def test_the_site_refuses_to_start_with_a_bad_metrics_setting(
    name: str, value: str, message: str, tmp_path: Path
) -> None:
    env = {**os.environ, "SANJAI_DATA_DIR": str(tmp_path), name: value}
    result = subprocess.run(
        [sys.executable, "-c", "import sanjai_site.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr


# --- Generation metrics: engine -> Redis -> /metrics ---------------------------------


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from inference.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


def test_the_engines_metrics_reach_the_web_labelled_by_worker(
    tiny_loaded: Any, client: Any, settings: Any, own_redis: str
) -> None:
    from inference.engine.config import EngineConfig
    from inference.engine.core import Engine

    settings.REDIS_URL = own_redis
    metrics = WorkerMetrics()
    engine = Engine(
        tiny_loaded,
        EngineConfig(max_batch=2, stream_interval_s=0.0, stream_pieces_per_s=0, prefix_block_tokens=4),
        metrics=metrics,
    )
    engine.stop_token_ids = []  # every reply runs to its max_new_tokens
    try:
        first = engine.generate(GenerationRequest(turns=HELLO, params=greedy(6)))
        follow_up = [*HELLO, Turn("assistant", first.text), Turn("user", "And of Italy?")]
        second = engine.generate(GenerationRequest(turns=follow_up, params=greedy(5)))
    finally:
        engine.close()
    assert (first.completion_tokens, second.completion_tokens) == (6, 5)

    worker = "gen@test/1234/abcd"
    publisher = start_publisher(own_redis, worker, tiny_loaded.name, interval_s=0.5, metrics=metrics)
    # A second worker, of another model, publishing nothing generated yet.
    other = start_publisher(
        own_redis, "gen@other/1/ef", "other-model", interval_s=0.5, metrics=WorkerMetrics()
    )
    try:
        client.get("/healthz")  # a request the exposition then counts, whatever ran before
        response = client.get("/metrics")
        assert response.status_code == 200
        text = response.content.decode()
        declared_once(text)
        found = samples(text)
        mine = {"worker": worker, "model": tiny_loaded.name}
        assert value(found, "sanjai_generated_tokens_total", **mine) == 11
        assert value(found, "sanjai_time_to_first_token_seconds_count", **mine) == 2
        assert 0 < value(found, "sanjai_time_to_first_token_seconds_sum", **mine) < 60
        assert value(found, "sanjai_time_to_first_token_seconds_bucket", le="+Inf", **mine) == 2
        assert value(found, "sanjai_inter_token_latency_seconds_count", **mine) == 11 - 2
        assert value(found, "sanjai_prefix_cache_lookups_total", **mine) == 2
        assert value(found, "sanjai_prefix_cache_hits_total", **mine) == 1
        assert value(found, "sanjai_prefix_reused_tokens_total", **mine) > 0
        assert value(found, "sanjai_prefill_tokens_total", **mine) == (
            first.prompt_tokens
            + second.prompt_tokens
            - value(found, "sanjai_prefix_reused_tokens_total", **mine)
        )
        assert value(found, "sanjai_replies_total", finish_reason="length", **mine) == 2
        assert value(found, "sanjai_queue_depth", **mine) == 0
        assert value(found, "sanjai_batch_size", **mine) == 0
        # KV follows the tokens held: with no reply running the batch holds none;
        # the finished conversations' caches are the prefix kind.
        assert value(found, "sanjai_kv_cache_bytes", kind="batch", **mine) == 0
        assert value(found, "sanjai_kv_cache_bytes", kind="prefix", **mine) > 0
        # Both workers under one declaration of each family.
        assert (
            value(found, "sanjai_generated_tokens_total", worker="gen@other/1/ef", model="other-model") == 0
        )
        assert value(found, "sanjai_worker_metrics_snapshots") == 2
        assert value(found, "sanjai_worker_metrics_readable") == 1
        assert not any(name.startswith("sanjai_") and name.endswith("_created") for name in found)
        # And the web's own request metrics (django-prometheus), in the same exposition.
        assert value(found, "django_http_requests_total_by_method_total", method="GET") >= 1
        assert "django_http_requests_latency_seconds_by_view_method_bucket" in found
    finally:
        other.stop()
        publisher.stop()
    # A worker that stops cleanly is gone from the next scrape.
    found = samples(client.get("/metrics").content.decode())
    assert "sanjai_generated_tokens_total" not in found
    assert value(found, "sanjai_worker_metrics_snapshots") == 0


def test_a_snapshot_expires_when_its_worker_stops_publishing(own_redis: str) -> None:
    import redis

    publisher = start_publisher(own_redis, "gen@hung/1/aa", "m", interval_s=0.5, metrics=WorkerMetrics())
    client = redis.Redis.from_url(own_redis)
    try:
        ttl_ms = client.pttl(KEY_PREFIX + "gen@hung/1/aa")
        assert 0 < ttl_ms <= 1500  # three intervals
        snapshot = json.loads(client.get(KEY_PREFIX + "gen@hung/1/aa") or b"{}")
        assert snapshot["worker"] == "gen@hung/1/aa" and snapshot["model"] == "m"
        assert "sanjai_generated_tokens_total 0.0" in snapshot["exposition"]
    finally:
        publisher.stop()
        client.close()


def test_merging_skips_a_family_whose_type_differs() -> None:
    counter = "# HELP sanjai_x_total Things.\n# TYPE sanjai_x_total counter\nsanjai_x_total 3.0\n"
    gauge = "# HELP sanjai_x Things.\n# TYPE sanjai_x gauge\nsanjai_x 4.0\n"
    merged = merge_snapshots(
        [
            Snapshot(worker="a", model="m", time=0, exposition=counter),
            Snapshot(worker="b", model="m", time=0, exposition=gauge),
            Snapshot(worker="c", model="m", time=0, exposition="not { an exposition"),
        ]
    )
    assert [(family.name, family.type) for family in merged] == [("sanjai_x", "counter")]
    assert [(s.labels, s.value) for s in merged[0].samples] == [({"worker": "a", "model": "m"}, 3.0)]


class _Streaming:
    """A one-at-a-time backend that streams three pieces, a little apart."""

    model_name = "fake"

    def generate(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> Completion:
        for piece in ("Paris", " is", " it."):
            time.sleep(0.01)
            if on_text is not None:
                on_text(piece)
        return Completion(
            text="Paris is it.", prompt_tokens=7, completion_tokens=4, finish_reason="stop", dropped_turns=0
        )


def test_the_one_at_a_time_fallback_counts_too() -> None:
    metrics = WorkerMetrics()
    backend = InstrumentedBackend(_Streaming(), metrics)
    pieces: list[str] = []
    completion = backend.generate(GenerationRequest(turns=HELLO, params=greedy(4)), pieces.append)
    assert completion.text == "Paris is it." and pieces == ["Paris", " is", " it."]
    found = samples(metrics.exposition().decode())
    assert value(found, "sanjai_generated_tokens_total") == 4
    assert value(found, "sanjai_prefill_tokens_total") == 7
    assert value(found, "sanjai_time_to_first_token_seconds_count") == 1
    assert value(found, "sanjai_inter_token_latency_seconds_count") == 3
    assert value(found, "sanjai_replies_total", finish_reason="stop") == 1
    assert value(found, "sanjai_batch_size") == 0 and value(found, "sanjai_queue_depth") == 0


def test_inference_metrics_is_free_of_django_torch_and_chat() -> None:
    tree = ast.parse((ROOT / "inference" / "metrics.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"django", "torch", "transformers", "chat", "sanjai_site"}


# --- The real stack -------------------------------------------------------------------

HEARTBEAT_TTL_S = 3


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tiny_model_dir: Path, redis_server: Any) -> Iterator[Stack]:
    from django.conf import settings
    from django.db import connection

    env = {
        "MODEL_PATH": str(tiny_model_dir),
        "WORKER_HEARTBEAT_TTL_S": str(HEARTBEAT_TTL_S),
        "WORKER_METRICS_INTERVAL_S": "1",
        "CHAT_REPLY_TIMEOUT_S": "60",
    }
    with running_stack(
        name="health",
        database=database_url(connection.settings_dict),
        redis_url=f"{redis_server.connection_url}/0",
        secret_key=settings.SECRET_KEY,
        env=env,
    ) as running:
        yield running


def readyz(stack: Stack) -> httpx.Response:
    return httpx.get(f"{stack.base_url}/readyz", timeout=10)


def wait_for_readyz(stack: Stack, status: int, timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = readyz(stack)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.3)


def worker_publishes_metrics() -> bool:
    """Whether the worker's start() starts the metrics publisher (wired in inference/worker.py)."""
    return "start_publisher" in (ROOT / "inference" / "worker.py").read_text()


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_metrics_after_a_reply_on_the_stack(
    stack: Stack, owner: Any, owner_key: str, tiny_model_dir: Path
) -> None:
    assert wait_for_readyz(stack, 200, MARGIN_S).status_code == 200
    reply = httpx.post(
        f"{stack.base_url}/chat",
        json={"message": "What is the capital of France?", "temperature": 0, "max_new_tokens": 8},
        headers={"Authorization": f"Bearer {owner_key}"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    tokens = reply.json()["usage"]["completion_tokens"]

    response = httpx.get(f"{stack.base_url}/metrics", timeout=10)  # from 127.0.0.1: allowed
    assert response.status_code == 200
    text = response.text
    declared_once(text)
    found = samples(text)
    assert value(found, "django_http_requests_total_by_method_total", method="POST") >= 1
    assert value(found, "django_http_responses_total_by_status_total", status="200") >= 1
    assert "django_http_requests_latency_seconds_by_view_method_bucket" in found
    assert value(found, "sanjai_worker_metrics_readable") == 1
    if not worker_publishes_metrics():
        pytest.skip("inference/worker.py does not start the metrics publisher yet: worker metrics unchecked")

    deadline = time.monotonic() + MARGIN_S
    while True:  # the worker publishes every second
        found = samples(httpx.get(f"{stack.base_url}/metrics", timeout=10).text)
        generated = [
            v for labels, v in found.get("sanjai_generated_tokens_total", []) if labels.get("worker")
        ]
        if (generated and sum(generated) >= tokens) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (labels, count), *_ = found["sanjai_generated_tokens_total"]
    assert count >= tokens
    assert labels["worker"] in presence.live_worker_ids(stack.redis_url)
    assert labels["model"] == tiny_model_dir.resolve().name
    assert value(found, "sanjai_time_to_first_token_seconds_count", worker=labels["worker"]) >= 1
    assert value(found, "sanjai_inter_token_latency_seconds_count", worker=labels["worker"]) >= 1
    assert value(found, "sanjai_worker_metrics_snapshots") == 1


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_readyz_turns_red_while_the_worker_is_stopped(stack: Stack) -> None:
    assert httpx.get(f"{stack.base_url}/healthz", timeout=10).json() == {"status": "ok"}
    assert wait_for_readyz(stack, 200, MARGIN_S).status_code == 200
    stack.pause_worker()  # its heartbeat stops too, and expires after WORKER_HEARTBEAT_TTL_S
    try:
        red = wait_for_readyz(stack, 503, HEARTBEAT_TTL_S + MARGIN_S)
    finally:
        stack.resume_worker()
    assert red.status_code == 503, red.text
    checks = red.json()["checks"]
    assert checks["database"] == {"ok": True} and checks["redis"] == {"ok": True}
    assert checks["workers"]["ok"] is False and set(checks["workers"]["models"].values()) == {0}
    green = wait_for_readyz(stack, 200, MARGIN_S)
    assert green.status_code == 200, green.text
    assert green.json()["status"] == "ok"


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_readyz_turns_red_while_redis_is_down(stack: Stack, redis_server: Any) -> None:
    assert wait_for_readyz(stack, 200, MARGIN_S).status_code == 200
    redis_server.stop()
    try:
        red = readyz(stack)
        healthy = httpx.get(f"{stack.base_url}/healthz", timeout=10)
    finally:
        redis_server.start()
    assert red.status_code == 503, red.text
    checks = red.json()["checks"]
    assert checks["database"] == {"ok": True}
    assert checks["redis"]["ok"] is False and checks["redis"]["error"]
    assert checks["workers"]["ok"] is False
    assert healthy.status_code == 200  # the web process itself is fine
    # The worker's heartbeat comes back within a beat of Redis.
    green = wait_for_readyz(stack, 200, MARGIN_S)
    assert green.status_code == 200, green.text
