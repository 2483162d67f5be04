from django.contrib import admin
from django.urls import include, path
from django.views.i18n import JavaScriptCatalog

from chat import pwa_views
from chat.api import api as chat_api
from chat.openai.router import api as openai_api
from chat.rest_api import api as rest_api
from sanjai_site import health, metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    # Probes and metrics, no login: see sanjai_site/health.py and sanjai_site/metrics.py.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("v1/", openai_api.urls),  # OpenAI-compatible: /v1/models, /v1/chat/completions
    path("api/v1/", rest_api.urls),  # REST API; schema at /api/v1/openapi.json, docs at /api/v1/docs
    # The installable app (chat/pwa_views.py): the worker at the root, so its scope is the whole site.
    path("sw.js", pwa_views.service_worker, name="service_worker"),
    path("manifest.webmanifest", pwa_views.web_manifest, name="web_manifest"),
    path("offline/", pwa_views.offline, name="offline"),
    # The page scripts' translations (locale/*/LC_MESSAGES/djangojs.po) in the request's language.
    path("jsi18n/", JavaScriptCatalog.as_view(packages=["chat"]), name="javascript-catalog"),
    # Single sign-on (chat/sso.py): sign-in answers 404 while OIDC_ISSUER is empty.
    path("oidc/", include("mozilla_django_oidc.urls")),
    # Pages first: a ninja API mounted at "" also claims "/".
    path("", include("chat.urls")),
    path("", chat_api.urls),  # POST /chat, POST /reset
]
