"""GET /metrics: Prometheus' text format, for the web process and every live worker.

Two parts, one exposition:
- the web process's own registry (prometheus_client's default): request
  counts and latencies from django-prometheus' middleware, and the process
  and Python collectors;
- the generation metrics each worker publishes to Redis
  (inference/metrics.py), every sample labelled with its `worker` and `model`.

Not public. Served to clients whose address is in METRICS_ALLOWED_NETWORKS,
or that send `Authorization: Bearer <METRICS_TOKEN>` when a token is set;
anyone else gets 403. The address is the direct peer of the ASGI server, or
behind TLS_PROXY the client address the proxy appended to X-Forwarded-For, as
the login throttle counts it: the proxy itself is on 127.0.0.1, so judging
its address would open /metrics to everyone who reaches the proxy.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Sequence

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, generate_latest

from chat.auth import client_ip
from inference.metrics import WorkerSnapshots

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    if not metrics_allowed(request):
        return JsonResponse(
            {"error": "Metrics are served only to allowed networks, or with the metrics token."}, status=403
        )
    body = generate_latest(REGISTRY) + generate_latest(WorkerSnapshots(settings.REDIS_URL))
    return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)


def metrics_allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    try:
        peer = client_ip(request)
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return any(address in network for network in allowed_networks(tuple(settings.METRICS_ALLOWED_NETWORKS)))


@functools.cache
def allowed_networks(cidrs: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
