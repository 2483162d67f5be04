"""compose.replicas.yaml and deploy/nginx.conf agree with compose.yaml and with each other.

compose.replicas.yaml repeats compose.yaml's services (an override could not
take web's published port away): these checks keep the copies equal, and the
proxy's upstreams the replicas' names, so a change made to one file only fails
here rather than in a deployment. No containers are started (the drill does
that: `make drill-compose`); nginx checks the configuration's syntax where it
is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = "${SANJAI_ENV_FILE:-deploy/sanjai.env}"  # the drill gives its own


def services(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    found: dict[str, Any] = loaded["services"]
    for service in found.values():
        if service.get("env_file") == ENV_FILE:
            service["env_file"] = "deploy/sanjai.env"
    return found


def test_the_services_both_files_have_are_the_same() -> None:
    single, replicas = services("compose.yaml"), services("compose.replicas.yaml")
    assert set(replicas) == set(single) - {"web"} | {"web-a", "web-b", "proxy"}
    for name in set(single) - {"web"}:
        assert replicas[name] == single[name], f"{name} differs in compose.yaml and compose.replicas.yaml"


def test_each_replica_is_compose_yamls_web_without_its_port_and_behind_the_proxy() -> None:
    single, replicas = services("compose.yaml"), services("compose.replicas.yaml")
    web = {key: value for key, value in single["web"].items() if key != "ports"}
    for name in ("web-a", "web-b"):
        replica = dict(replicas[name])
        assert "ports" not in replica  # reached only through the proxy
        assert replica.pop("environment") == {"BEHIND_PROXY": "true"}
        assert replica == web
    # The proxy takes web's place: the same address and port on this machine.
    [published] = replicas["proxy"]["ports"]
    [was] = single["web"]["ports"]
    assert published.rsplit(":", 1)[0] == was.rsplit(":", 1)[0]


def nginx_conf() -> str:
    return (ROOT / "deploy" / "nginx.conf").read_text()


def directives() -> str:
    """The configuration without its comments."""
    return "\n".join(line.split("#", 1)[0] for line in nginx_conf().splitlines())


def test_the_proxy_sends_to_both_replicas_and_listens_where_compose_points() -> None:
    replicas = services("compose.replicas.yaml")
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", nginx_conf(), re.M)
    assert sorted(upstreams) == [("web-a", "8000"), ("web-b", "8000")]
    [listen] = re.findall(r"^\s*listen\s+(\d+);", nginx_conf(), re.M)
    assert [port.rsplit(":", 1)[1] for port in replicas["proxy"]["ports"]] == [listen]
    # Any replica for any request: no affinity of a client to one.
    assert not re.search(r"\b(ip_hash|hash|sticky)\b", directives())
    # Websockets upgraded, streams and bodies passed through as they come.
    for directive in (
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_buffering off;",
        "proxy_request_buffering off;",
    ):
        assert directive in directives()


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.mark.skipif(NGINX is None, reason="Debian's nginx is not installed (apt-get install nginx-light)")
def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    # The replicas' names resolve only inside the compose network: checked with addresses here.
    conf = nginx_conf().replace("web-a:8000", "127.0.0.1:1").replace("web-b:8000", "127.0.0.1:2")
    conf = conf.replace("/tmp/nginx", str(tmp_path / "nginx"))  # noqa: S108 (the text replaced)
    (tmp_path / "nginx.conf").write_text(conf)
    assert NGINX is not None
    checked = subprocess.run(
        [NGINX, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    broken = conf.replace("proxy_pass http://sanjai_web;", "proxy_pass http://sanjai_web")
    (tmp_path / "nginx.conf").write_text(broken)
    refused = subprocess.run(
        [NGINX, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0  # the check can fail
