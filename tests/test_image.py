"""The container image (Dockerfile): it builds, and a container of it answers /healthz.

Needs podman (apt-get install podman mmdebstrap podman-compose runc, and the
/etc/containers/containers.conf that docs/operating/containers.md shows);
without it on PATH the test is skipped at once, with that reason. The build
is `make image`, which does nothing when the image already holds the current
inputs (its org.sanjai.inputs label), so a second run costs the container's
start only. A first build on 2 cores takes a few minutes.

A test, not a Makefile step: it runs inside `make test`'s pytest run, shows
up in its summary (passed, or skipped with the reason), and is left out of
`make test-fast` with the other real-process tests (the stack marker).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/sanjai:latest"
BUILD_TIMEOUT_S = 1800  # a cold build here: ~3 minutes; the wheelhouse download more where it is not cached
START_TIMEOUT_S = 90

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        shutil.which("podman") is None,
        reason="podman is not on PATH: the image check needs it (docs/operating/containers.md)",
    ),
]


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", "image", f"IMAGE={IMAGE}", "CONTAINER=podman"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert result.returncode == 0, f"make image failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return IMAGE


@pytest.fixture
def web_container(image: str) -> Iterator[str]:
    """A web container on its own SQLite database (migrated first), on a free port of 127.0.0.1."""
    name = f"sanjai-test-{uuid.uuid4().hex[:8]}"
    try:
        started = podman(
            "run", "-d", "--name", name, "-p", "127.0.0.1::8000",
            "-e", "SECRET_KEY=test-only-not-a-secret",
            image, "sh", "-c",
            "python /app/deploy/container.py migrate >/dev/null && exec python /app/deploy/container.py web",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        yield name
    finally:
        podman("rm", "-f", "-t", "2", name)


def host_port(name: str) -> int:
    mapped = podman("port", name, "8000/tcp").stdout.strip().splitlines()
    assert mapped, f"{name} publishes no port"
    return int(mapped[0].rsplit(":", 1)[1])


def get_healthz(port: int) -> tuple[int, dict[str, object]] | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"Host": "localhost"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (an http URL made here)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}
    except OSError:
        return None  # not listening yet


def test_a_container_of_the_image_answers_healthz_as_a_user_that_is_not_root(web_container: str) -> None:
    port = host_port(web_container)
    deadline = time.monotonic() + START_TIMEOUT_S
    answer = None
    while answer is None and time.monotonic() < deadline:
        if podman("inspect", "--format", "{{.State.Running}}", web_container).stdout.strip() != "true":
            break
        answer = get_healthz(port)
        if answer is None:
            time.sleep(1)
    logs = podman("logs", web_container).stdout[-3000:]
    assert answer == (200, {"status": "ok"}), f"/healthz: {answer}; the container's log:\n{logs}"

    # The image's own health check agrees, and the server runs as the image's user.
    check = podman("exec", web_container, "python", "/app/deploy/healthcheck.py")
    assert (check.returncode, check.stdout.strip()) == (0, "web: healthy")
    assert podman("exec", web_container, "id", "-un").stdout.strip() == "sanjai"


def test_the_image_holds_no_secret_key_and_a_health_check(image: str) -> None:
    listing = podman("run", "--rm", image, "ls", "-A", "/data")
    assert listing.returncode == 0, listing.stderr
    assert "secret_key" not in listing.stdout.split()
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "python", "/app/deploy/healthcheck.py"]
    assert inspected["Config"]["User"] == "sanjai"


def test_the_web_role_refuses_to_start_without_a_secret_key(image: str) -> None:
    result = podman("run", "--rm", image, "web")
    assert result.returncode == 1
    assert "SECRET_KEY is not set" in result.stderr
