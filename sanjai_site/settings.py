"""Django settings for SanjAI.

Everything is read from the environment, with defaults that run on a laptop:
SQLite in WAL mode, the embedded Redis-compatible server started by `make run`,
and the packaged default model. Nothing lives only in a production file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from inference import registry as model_registry
from inference.engine.config import EngineConfig
from sanjai_site.env import ConfigError, envbool, envchoice, envfloat, envint, envlist, envstr

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(envstr("SANJAI_DATA_DIR", str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)
# Conversations and the secret key live here: no other local user reads them.
# (A directory this process does not own keeps the mode its owner chose.)
with contextlib.suppress(PermissionError):
    DATA_DIR.chmod(0o700)


def _secret_key() -> str:
    # A laptop install should be safe without any setup: generate a key once
    # and keep it next to the database instead of shipping a known default.
    from_env = envstr("SECRET_KEY", "")
    if from_env:
        return from_env
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        # Created private, never readable by others even for a moment.
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(50))
    key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

# Behind a TLS proxy (docs/operating/tls-proxy.md): TLS_PROXY=true trusts the
# proxy's X-Forwarded-Proto, makes the session and CSRF cookies Secure and
# sends HSTS (a year unless SECURE_HSTS_SECONDS says otherwise). Each can
# also be set on its own. Only set it when the proxy is the only way in: the
# header is trusted from whoever sends it.
TLS_PROXY = envbool("TLS_PROXY", False)
# Reached only through a reverse proxy that appends the client's address to
# X-Forwarded-For (deploy/nginx.conf in front of web replicas), TLS or not: that
# address, not the proxy's, is the one login lockouts, /metrics and the audit
# log judge. TLS_PROXY implies it. Same caveat: only when the proxy is the only way in.
BEHIND_PROXY = envbool("BEHIND_PROXY", TLS_PROXY)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TLS_PROXY else None
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", TLS_PROXY)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", TLS_PROXY)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31_536_000 if TLS_PROXY else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "corsheaders",
    "ninja",  # the API docs' Swagger UI from this server's static files, not a CDN the CSP blocks
    "axes",  # login throttling on every login form, the admin's included
    "chat",  # inference/ is a plain package: no models, templates or commands of its own
]

MIDDLEWARE = [
    # Request counts and latencies for /metrics (django-prometheus): first and
    # last, so the latency covers the whole chain.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The page's language from Accept-Language (after sessions, before CommonMiddleware, as Django asks).
    "django.middleware.locale.LocaleMiddleware",
    "corsheaders.middleware.CorsMiddleware",  # before CommonMiddleware, as its docs ask
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "chat.i18n.ProfileLanguageMiddleware",  # the profile's language, where one is chosen, over the browser's
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "sanjai_site.middleware.ContentSecurityPolicyMiddleware",
    "axes.middleware.AxesMiddleware",  # last but one, as django-axes asks: turns a lockout into its page
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "sanjai_site.urls"
ASGI_APPLICATION = "sanjai_site.asgi.application"
WSGI_APPLICATION = "sanjai_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.context_processors.site",
            ],
        },
    },
]


# A connection per request by default (0 s), with any number of web replicas:
# under ASGI each request's sync code runs in a thread of its own, so a
# persistent connection is held by a thread no later request reuses and they
# pile up to PostgreSQL's max_connections (Django ticket #33497). And none is
# one a PostgreSQL restart cut. The price: a connection set up per request
# (47 ms median with authentication, measured under `make drill-compose`'s load
# on 2 cores; a query on an open one 0.08 ms). Django's psycopg pool (OPTIONS
# "pool", the psycopg-pool package) would remove it; not used yet.
# DATABASE_CONN_MAX_AGE_S > 0 keeps connections that long (a WSGI server), then
# checked before reuse (CONN_HEALTH_CHECKS).
DATABASE_CONN_MAX_AGE_S = envint("DATABASE_CONN_MAX_AGE_S", 0, minimum=0)


def _database(url: str) -> dict[str, object]:
    config: dict[str, object] = dict(
        dj_database_url.parse(
            url, conn_max_age=DATABASE_CONN_MAX_AGE_S, conn_health_checks=DATABASE_CONN_MAX_AGE_S > 0
        )
    )
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # The web process and the worker write to the same file. Without WAL,
        # IMMEDIATE transactions and a busy timeout, concurrent writers get
        # "database is locked" (measured: see SPEC).
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
        # A file, not :memory:, so that worker processes started by the tests
        # see the same test database.
        config["TEST"] = {"NAME": str(Path(str(config["NAME"])).with_suffix(".test.sqlite3"))}
    return config


DATABASES = {
    "default": _database(envstr("DATABASE_URL", f"sqlite:///{DATA_DIR / 'sanjai.sqlite3'}")),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- Accounts: sign-up, login throttling, email ---------------------------------
# Who may create an account: "open" (anyone who reaches the server), "invite"
# (only with an invite made in the admin) or "closed" (only the admin makes accounts).
SIGNUP = envchoice("SIGNUP", "open", ("open", "invite", "closed"))
# An invite link works this many days after it is made.
INVITE_VALID_DAYS = envint("INVITE_VALID_DAYS", 14, minimum=1)

# django-axes: after LOGIN_FAILURE_LIMIT failed logins for one username from
# one address, that pair is refused (429) for LOGIN_LOCKOUT_MINUTES, on the
# site's login and the admin's. Keyed on the pair, so a stranger guessing at
# your username from elsewhere cannot lock you out. A success clears the count.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_LOCKOUT_MINUTES = envint("LOGIN_LOCKOUT_MINUTES", 15, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "chat.account_views.locked_out"
AXES_VERBOSE = False  # its start-up banner; lockouts are still logged
# Behind a proxy every request comes from the proxy's address: count failures
# against the client's address that the proxy forwards instead.
AXES_CLIENT_IP_CALLABLE = "chat.auth.client_ip_behind_proxy" if BEHIND_PROXY else None

# --- Single sign-on: OpenID Connect (chat/sso.py, docs/operating/shared-server.md) ---
# Off while OIDC_ISSUER is empty: then nothing else here has any effect. The
# provider's endpoints come from <issuer>/.well-known/openid-configuration,
# fetched on the first sign-in (not at start-up, so a provider that is down
# does not stop the site) and kept for the process's life.
OIDC_ISSUER = envstr("OIDC_ISSUER", "").rstrip("/")
OIDC_CLIENT_ID = envstr("OIDC_CLIENT_ID", "")
# The secret, or the name of the variable that holds it (a file-mounted secret's env).
OIDC_CLIENT_SECRET = envstr(envstr("OIDC_CLIENT_SECRET_ENV", "") or "OIDC_CLIENT_SECRET", "")
OIDC_SCOPES = envstr("OIDC_SCOPES", "openid email profile")
OIDC_USERNAME_CLAIM = envstr("OIDC_USERNAME_CLAIM", "preferred_username")
OIDC_GROUPS_CLAIM = envstr("OIDC_GROUPS_CLAIM", "groups")
OIDC_PROVIDER_NAME = envstr("OIDC_PROVIDER_NAME", "single sign-on")  # "Sign in with <this>"
OIDC_TIMEOUT_S = envfloat("OIDC_TIMEOUT_S", 10.0)  # each request to the provider
if OIDC_ISSUER:
    if not OIDC_CLIENT_ID:
        raise ConfigError(
            "OIDC_ISSUER is set but OIDC_CLIENT_ID is empty: set the client id the provider gave."
        )
    AUTHENTICATION_BACKENDS.append("chat.sso.SsoBackend")
# LOCAL_LOGIN=superusers turns password sign-in off for everyone but the
# superusers (the break-glass administrators, for when the provider is down):
# the others sign in through the provider, and programs keep their API keys.
LOCAL_LOGIN = envchoice("LOCAL_LOGIN", "all", ("all", "superusers"))
if LOCAL_LOGIN == "superusers":
    if not OIDC_ISSUER:
        raise ConfigError(
            "LOCAL_LOGIN=superusers needs single sign-on (OIDC_ISSUER): nobody else could sign in."
        )
    AUTHENTICATION_BACKENDS[AUTHENTICATION_BACKENDS.index("django.contrib.auth.backends.ModelBackend")] = (
        "chat.auth.BreakGlassBackend"
    )
# mozilla-django-oidc's own names, from the ones above (the endpoints: chat.sso).
OIDC_RP_CLIENT_ID = OIDC_CLIENT_ID
OIDC_RP_CLIENT_SECRET = OIDC_CLIENT_SECRET
OIDC_RP_SCOPES = OIDC_SCOPES
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_USE_PKCE = True
OIDC_TIMEOUT = OIDC_TIMEOUT_S
OIDC_STORE_ID_TOKEN = True  # in the server-side session only: the id_token_hint of the provider's logout
OIDC_OP_LOGOUT_URL_METHOD = "chat.sso.provider_logout_url"
OIDC_AUTHENTICATE_CLASS = "chat.sso.SsoAuthenticateView"
OIDC_CALLBACK_CLASS = "chat.sso.SsoCallbackView"
LOGIN_REDIRECT_URL_FAILURE = "login"

# Password reset mails go through this. The default prints them on the web
# process's console (docs/operating/shared-server.md); set EMAIL_HOST
# and friends to send real mail.
EMAIL_BACKEND = envstr(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if envstr("EMAIL_HOST", "")
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "SanjAI <sanjai@localhost>")
PASSWORD_RESET_TIMEOUT = envint("PASSWORD_RESET_TIMEOUT_S", 3 * 3600, minimum=60)

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("TIME_ZONE", "UTC")  # the day and month token budgets follow it
USE_I18N = True
# The interface's languages (locale/, chat/i18n.py): the browser's Accept-Language picks
# one unless the profile names one. API answers and logs stay in English.
LANGUAGES = [("en", "English"), ("de", "Deutsch"), ("fr", "Français"), ("es", "Español")]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns on every request otherwise
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Not the Manifest variant: pages must render in tests and in a bare
    # `manage.py` run before collectstatic has ever run.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- Redis: Celery broker and the Channels layer ------------------------------
# `make run` starts an embedded Redis-compatible server and sets REDIS_URL for
# the processes it starts; point it at a real Redis for anything bigger.
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")

# Timeouts, chosen so that a slow machine never reads as a dead broker:
# - A receive blocks in BZPOPMIN for channels_redis' 5 s. A read timeout equal to
#   that (redis-py's asyncio default here) fires whenever the empty answer comes
#   a moment late, as it does while a long prefill holds every core, and crashed
#   the page's socket. REDIS_READ_TIMEOUT_S is far above it.
# - A refused or unreachable server fails at connect, within REDIS_CONNECT_TIMEOUT_S:
#   that is the outage answered with 503.
REDIS_CONNECT_TIMEOUT_S = envfloat("REDIS_CONNECT_TIMEOUT_S", 5.0)
REDIS_READ_TIMEOUT_S = envfloat("REDIS_READ_TIMEOUT_S", 30.0)

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
                    "socket_timeout": REDIS_READ_TIMEOUT_S,
                    "health_check_interval": 30,  # ping a pooled connection idle this long before use
                    # The first command on a pooled connection after Redis restarted fails;
                    # try a connection error again at once. A timeout is not retried.
                    "retry": AsyncRetry(
                        ExponentialWithJitterBackoff(base=0.05, cap=0.5),
                        retries=2,
                        supported_errors=(RedisConnectionError,),
                    ),
                }
            ],
            "capacity": 1000,
            "expiry": 60,
        },
    },
}

CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # kombu passes no timeouts by default: a publish to a hung broker blocked for
    # minutes. The worker's own BRPOP waits 1 s, so a quiet queue never trips these.
    "socket_timeout": 10,
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
    "socket_keepalive": True,  # kombu passes None, which turns redis-py's default off
    # A publish to a broker that is down fails within about a second (6 s with
    # the defaults) and the reply is failed with 503. The few quick retries
    # carry a publish over a Redis restart: the first attempt on a pooled
    # connection to the old process always fails (measured in `make drill`).
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
    # A job a killed worker had reserved comes back after this, and is then a
    # no-op: the sweeper will have failed its reply (REPLY_QUEUE_LIMIT_S, or the
    # worker's lost heartbeat). Kept explicit: it must exceed the longest queue
    # wait plus a reply's time limit, or a running job would be delivered twice.
    "visibility_timeout": 3600,
}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True  # results travel through the database and events
CELERY_TASK_ACKS_LATE = True  # safe: generate_reply claims its message first
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "generation"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- The model and generation limits ------------------------------------------
MODEL_PATH = envstr("MODEL_PATH", "")  # empty: the packaged SmolLM2-135M-Instruct
DEVICE = envstr("DEVICE", "auto")  # auto | cuda | mps | cpu
MODEL_CACHE_DIR = Path(envstr("MODEL_CACHE_DIR", str(DATA_DIR / "models")))
# 0 = the model's own context window (config.max_position_embeddings).
MODEL_CONTEXT_TOKENS = envint("MODEL_CONTEXT_TOKENS", 0, minimum=0)
# Several models, local and remote: a TOML file declaring them (format in
# inference/registry.py and docs/models/index.md). Without it, the one model above.
MODELS_FILE = envstr("MODELS_FILE", "")
if MODELS_FILE and envstr("MODEL_PATH", ""):
    raise ConfigError(
        "Set MODEL_PATH or MODELS_FILE, not both: with a models file, each model names its own path"
    )
try:
    MODEL_REGISTRY = (
        model_registry.load(Path(MODELS_FILE))
        if MODELS_FILE
        else model_registry.single(MODEL_PATH, DEVICE, MODEL_CONTEXT_TOKENS)
    )
except model_registry.RegistryError as exc:
    raise ConfigError(str(exc)) from None
# The model a generation worker serves (`make worker MODEL=<name>`); empty: the default one.
WORKER_MODEL = envstr("WORKER_MODEL", "")
if WORKER_MODEL and MODEL_REGISTRY.get(WORKER_MODEL) is None:
    raise ConfigError(
        f"WORKER_MODEL={WORKER_MODEL!r} is not a declared model; declared: {', '.join(MODEL_REGISTRY.names)}"
    )

GENERATION_DEFAULT_MAX_NEW_TOKENS = envint("GENERATION_DEFAULT_MAX_NEW_TOKENS", 200, minimum=1)
GENERATION_MAX_NEW_TOKENS = envint("GENERATION_MAX_NEW_TOKENS", 1024, minimum=1)
GENERATION_TIME_LIMIT_S = envfloat("GENERATION_TIME_LIMIT_S", 120.0)
CHAT_MAX_MESSAGE_CHARS = envint("CHAT_MAX_MESSAGE_CHARS", 16000, minimum=1)
# The most earlier turns one request may bring (a /v1 exchange's messages, each stored as a row).
CHAT_MAX_HISTORY_TURNS = envint("CHAT_MAX_HISTORY_TURNS", 500, minimum=1)
# The largest file the page's import takes (an export of one conversation).
# Other request bodies are held to Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB).
# Both are refused before the body is read (sanjai_site/uploads.py).
IMPORT_MAX_BYTES = envint("IMPORT_MAX_BYTES", 20_000_000, minimum=1)
# The longest a request's body may take to arrive, from its head to its last
# byte (20 MB at 1 MB/s takes 20 s); a slower body is cut off with 408.
REQUEST_BODY_TIMEOUT_S = envfloat("REQUEST_BODY_TIMEOUT_S", 60.0)
if REQUEST_BODY_TIMEOUT_S <= 0:
    raise ConfigError(f"REQUEST_BODY_TIMEOUT_S={REQUEST_BODY_TIMEOUT_S:g}: must be above 0")
# --- Documents a user uploads to chat with (chat/documents/, chat/services/documents.py) ---
# One file may weigh DOCUMENT_MAX_BYTES (refused from the request's head,
# sanjai_site/uploads.py); all of one user's files together DOCUMENT_STORAGE_BYTES_PER_USER.
# Each is read in a child process held to DOCUMENT_PARSE_TIME_LIMIT_S and
# DOCUMENT_PARSE_MEMORY_BYTES, on the "documents" queue's worker. One still
# processing after DOCUMENT_INGEST_STALE_S is queued again once by the sweeper,
# then failed. The files live under DATA_DIR / "documents".
DOCUMENT_MAX_BYTES = envint("DOCUMENT_MAX_BYTES", 20_000_000, minimum=1)
DOCUMENT_STORAGE_BYTES_PER_USER = envint("DOCUMENT_STORAGE_BYTES_PER_USER", 200_000_000, minimum=1)
DOCUMENT_PARSE_TIME_LIMIT_S = envfloat("DOCUMENT_PARSE_TIME_LIMIT_S", 60.0)
if DOCUMENT_PARSE_TIME_LIMIT_S <= 0:
    raise ConfigError(f"DOCUMENT_PARSE_TIME_LIMIT_S={DOCUMENT_PARSE_TIME_LIMIT_S:g}: must be above 0")
DOCUMENT_PARSE_MEMORY_BYTES = envint(
    "DOCUMENT_PARSE_MEMORY_BYTES", 1024 * 1024 * 1024, minimum=64 * 1024 * 1024
)
DOCUMENT_INGEST_STALE_S = envfloat("DOCUMENT_INGEST_STALE_S", 2 * DOCUMENT_PARSE_TIME_LIMIT_S + 60)
DOCUMENT_DIR = DATA_DIR / "documents"
DOCUMENT_QUEUE = "documents"
CELERY_TASK_ROUTES = {"chat.ingest_document": {"queue": DOCUMENT_QUEUE}}
# `make run` starts one worker for that queue (sanjai_site/launcher.py): it
# loads no model, and reads this many documents at once, each in its own child.
DOCUMENTS_WORKER = envbool("DOCUMENTS_WORKER", False)  # set by the launcher for that worker only
DOCUMENT_WORKER_CONCURRENCY = envint("DOCUMENT_WORKER_CONCURRENCY", 2, minimum=1)
# A conversation may have DOCUMENTS_PER_CONVERSATION documents attached. A
# reply is given the DOCUMENT_PASSAGES best passages of the ready ones
# (chat/documents/retrieval.py), or all of their text when it fits, within
# DOCUMENT_CONTEXT_TOKENS (counted as characters / 4): the model's context
# must hold that, the conversation and the answer.
DOCUMENTS_PER_CONVERSATION = envint("DOCUMENTS_PER_CONVERSATION", 20, minimum=1)
DOCUMENT_PASSAGES = envint("DOCUMENT_PASSAGES", 4, minimum=1)
DOCUMENT_CONTEXT_TOKENS = envint("DOCUMENT_CONTEXT_TOKENS", 2000, minimum=100)
# Dense (embedding) search beside the lexical one (chat/documents/dense.py), off
# unless one embedder is named: EMBEDDING_MODEL, a local sentence-transformers or
# Hugging Face folder (never downloaded; on DEVICE), or EMBEDDING_URL, an
# OpenAI-compatible base URL (its /embeddings) asked for EMBEDDING_REMOTE_MODEL
# with the key in the variable EMBEDDING_API_KEY_ENV names. Chunks are embedded
# EMBEDDING_BATCH_SIZE at a time. /v1/embeddings, served only then, takes at
# most EMBEDDING_MAX_INPUTS texts of EMBEDDING_MAX_CHARS characters in all, and
# each web process embeds or queues EMBEDDING_MAX_WAITING requests (503 beyond),
# each within EMBEDDING_TIMEOUT_S.
EMBEDDING_MODEL = envstr("EMBEDDING_MODEL", "")
EMBEDDING_URL = envstr("EMBEDDING_URL", "")
EMBEDDING_REMOTE_MODEL = envstr("EMBEDDING_REMOTE_MODEL", "")
EMBEDDING_API_KEY_ENV = envstr("EMBEDDING_API_KEY_ENV", "")
if EMBEDDING_MODEL and EMBEDDING_URL:
    raise ConfigError("EMBEDDING_MODEL and EMBEDDING_URL are both set: name one embedder, local or remote")
if EMBEDDING_MODEL and not Path(EMBEDDING_MODEL).is_dir():
    raise ConfigError(f"EMBEDDING_MODEL={EMBEDDING_MODEL!r}: not a folder (nothing is downloaded)")
if EMBEDDING_URL and not EMBEDDING_REMOTE_MODEL:
    raise ConfigError("EMBEDDING_URL is set without EMBEDDING_REMOTE_MODEL, the model to ask it for")
EMBEDDING_BATCH_SIZE = envint("EMBEDDING_BATCH_SIZE", 32, minimum=1)
EMBEDDING_TIMEOUT_S = envfloat("EMBEDDING_TIMEOUT_S", 60.0)
if EMBEDDING_TIMEOUT_S <= 0:
    raise ConfigError(f"EMBEDDING_TIMEOUT_S={EMBEDDING_TIMEOUT_S:g}: must be above 0")
EMBEDDING_MAX_INPUTS = envint("EMBEDDING_MAX_INPUTS", 256, minimum=1)
EMBEDDING_MAX_CHARS = envint("EMBEDDING_MAX_CHARS", 200_000, minimum=1)
EMBEDDING_MAX_WAITING = envint("EMBEDDING_MAX_WAITING", 8, minimum=1)
# Voice (inference/speech.py): a dictated recording may last this long and
# weigh this much (the page sends 16 kHz mono WAV: 32 kB a second); a reply
# read aloud by the server may be this long.
VOICE_MAX_SECONDS = envint("VOICE_MAX_SECONDS", 60, minimum=1)
VOICE_MAX_BYTES = envint("VOICE_MAX_BYTES", 4_000_000, minimum=1000)
VOICE_MAX_READ_CHARS = envint("VOICE_MAX_READ_CHARS", 5000, minimum=1)
# Both run in VOICE_WORKERS processes of their own per web process
# (inference/speech_pool.py); VOICE_BACKLOG more jobs may wait, and the next
# is refused with 503. A job past VOICE_JOB_TIMEOUT_S is stopped and its
# process replaced (504): 60 s of noise, the slowest legal recording, took
# 32-58 s to decode. Each user runs one job at a time and starts at most
# VOICE_JOBS_PER_MINUTE (0: no limit), counted in Redis (429 beyond).
VOICE_WORKERS = envint("VOICE_WORKERS", 2, minimum=1)
VOICE_BACKLOG = envint("VOICE_BACKLOG", 4, minimum=0)
VOICE_JOB_TIMEOUT_S = envfloat("VOICE_JOB_TIMEOUT_S", 120.0)
if VOICE_JOB_TIMEOUT_S <= 0:
    raise ConfigError(f"VOICE_JOB_TIMEOUT_S={VOICE_JOB_TIMEOUT_S:g}: must be above 0")
VOICE_JOBS_PER_MINUTE = envint("VOICE_JOBS_PER_MINUTE", 12, minimum=0)
# Share by link (chat/services/sharing.py): on, anyone a user gives a link to
# reads that snapshot without logging in; off, no share can be made and every
# link answers 404.
SHARING = envbool("SHARING", True)
# Audit notice (chat/services/audit.py): every view or export of someone else's
# conversation in the admin is logged whatever this says; on, the owner's profile
# also lists the latest of them (who, what, when); off, only the admin's log shows them.
AUDIT_NOTICE = envbool("AUDIT_NOTICE", True)
# Memory: facts a user asks the assistant to keep (chat/services/memory.py).
# At most MEMORY_MAX_FACTS each, and the newest of them that fit in
# MEMORY_PROMPT_CHARS (about a quarter as many tokens) join the system prompt
# of every reply in a conversation that uses memory.
MEMORY_MAX_FACTS = envint("MEMORY_MAX_FACTS", 50, minimum=0)
MEMORY_PROMPT_CHARS = envint("MEMORY_PROMPT_CHARS", 1500, minimum=0)
# How long POST /chat waits for the worker before answering 504.
CHAT_REPLY_TIMEOUT_S = envfloat("CHAT_REPLY_TIMEOUT_S", GENERATION_TIME_LIMIT_S + 30)
# A worker counts as alive while its heartbeat is younger than this.
WORKER_HEARTBEAT_TTL_S = envint("WORKER_HEARTBEAT_TTL_S", 15, minimum=2)

# --- Remote models (inference/remote.py) ------------------------------------------
# A worker for a remote model streams up to REMOTE_MAX_CONCURRENT replies at
# once from its OpenAI-compatible upstream. Before the first token, passing
# trouble (429, 5xx, no connection, a timeout) is retried REMOTE_RETRIES times
# with doubling backoff; after it, never.
REMOTE_CONNECT_TIMEOUT_S = envfloat("REMOTE_CONNECT_TIMEOUT_S", 10.0)
REMOTE_READ_TIMEOUT_S = envfloat("REMOTE_READ_TIMEOUT_S", 60.0)
REMOTE_RETRIES = envint("REMOTE_RETRIES", 3, minimum=0)
REMOTE_MAX_CONCURRENT = envint("REMOTE_MAX_CONCURRENT", 64, minimum=1)

# --- The generation engine (inference/engine/) ----------------------------------
# Each ENGINE_* setting is a field of inference.engine.config.EngineConfig,
# where its meaning and its default are written: one model copy per worker
# serves up to ENGINE_MAX_BATCH replies at once; more wait in the engine's
# queue (their page hears the position). ENGINE_ENABLED off: one reply at a
# time through model.generate().
ENGINE_ENABLED = envbool("ENGINE_ENABLED", True)
_engine = EngineConfig()
_per_owner = os.environ.get("ENGINE_MAX_PER_OWNER", "").strip()
try:
    ENGINE = EngineConfig(
        max_batch=envint("ENGINE_MAX_BATCH", _engine.max_batch, minimum=1),
        max_per_owner=envint("ENGINE_MAX_PER_OWNER", 0, minimum=0) if _per_owner else None,
        prefix_cache_mb=envint("ENGINE_PREFIX_CACHE_MB", _engine.prefix_cache_mb, minimum=0),
        prefix_block_tokens=envint("ENGINE_PREFIX_BLOCK_TOKENS", _engine.prefix_block_tokens, minimum=1),
        weights=envchoice("ENGINE_WEIGHTS", _engine.weights, model_registry.WEIGHT_CHOICES),
        threads=envint("ENGINE_THREADS", _engine.threads, minimum=0),
        prefill_threads=envint("ENGINE_PREFILL_THREADS", _engine.prefill_threads, minimum=0),
        gap_ratio=envfloat("ENGINE_GAP_RATIO", _engine.gap_ratio),
        prefill_pass_s=envfloat("ENGINE_PREFILL_PASS_S", _engine.prefill_pass_s),
        burst_pass_s=envfloat("ENGINE_BURST_PASS_S", _engine.burst_pass_s),
        max_pass_tokens=envint("ENGINE_MAX_PASS_TOKENS", _engine.max_pass_tokens, minimum=1),
        short_first_ratio=envfloat("ENGINE_SHORT_FIRST_RATIO", _engine.short_first_ratio),
    )
except ValueError as exc:
    raise ConfigError(f"ENGINE_*: {exc}") from exc
if envstr("ENGINE_PREFILL_CHUNK_TOKENS", ""):
    raise ConfigError(
        "ENGINE_PREFILL_CHUNK_TOKENS is gone: each pass's prompt tokens follow ENGINE_GAP_RATIO "
        "(a pass beside running replies takes at most that many times their own pass)"
    )
if envstr("QUANTIZE", ""):
    raise ConfigError(
        f"QUANTIZE is gone: set ENGINE_WEIGHTS ({', '.join(model_registry.WEIGHT_CHOICES)}) instead"
    )
# With several workers for one model, a conversation's next turn goes to the
# worker that wrote its last reply (it holds the conversation's KV cache) while
# that worker is alive and has a free slot; off: to whichever worker is free.
CACHE_AFFINITY = envbool("CACHE_AFFINITY", True)
# Job threads per worker: a batch's worth running plus as many waiting in the
# engine's queue, where they can be told their position.
CELERY_WORKER_POOL = "threads"
CELERY_WORKER_CONCURRENCY = envint("WORKER_CONCURRENCY", 2 * ENGINE.max_batch, minimum=1)

# --- Replies: the limits every surface shares, and the bounds on stuck replies --
# Replies one user may have queued or generating at once, on every surface (the
# page, /chat, /v1, /api/v1); one more is refused (429). 0 = no limit.
# API_MAX_CONCURRENT_REPLIES is the old name, from when only the APIs had it.
MAX_CONCURRENT_REPLIES = envint(
    "MAX_CONCURRENT_REPLIES", envint("API_MAX_CONCURRENT_REPLIES", 4, minimum=0), minimum=0
)
# Replies one user may start per minute (a token bucket: bursts of this many,
# refilled evenly over the minute). 0 = no limit.
MAX_REPLIES_PER_MINUTE = envint("MAX_REPLIES_PER_MINUTE", 30, minimum=0)
# Token budgets per user (prompt + completion tokens of their replies), per
# calendar day and per calendar month in TIME_ZONE; 0 = no limit. An admin can
# set another budget for one user on their profile. A user over budget is
# refused (429) until the day or month turns.
QUOTA_DAILY_TOKENS = envint("QUOTA_DAILY_TOKENS", 0, minimum=0)
QUOTA_MONTHLY_TOKENS = envint("QUOTA_MONTHLY_TOKENS", 0, minimum=0)
# How often the sweeper (in the web process) looks for
# replies nobody is working on. See chat/lifecycle/sweep.py for the bounds.
REPLY_SWEEP_INTERVAL_S = envfloat("REPLY_SWEEP_INTERVAL_S", 5.0)
# A pending reply whose job has not reached the queue after this long (the web
# process died between commit and publish) is queued again by the sweeper.
REPLY_ENQUEUE_GRACE_S = envfloat("REPLY_ENQUEUE_GRACE_S", 10.0)
# A queued reply no worker has started after this long is failed: its job was
# lost (a broker that restarted without its data) or no worker came back.
REPLY_QUEUE_LIMIT_S = envfloat("REPLY_QUEUE_LIMIT_S", CHAT_REPLY_TIMEOUT_S + GENERATION_TIME_LIMIT_S)

# --- MCP tools in the chat (chat/tools/, docs/user-guide/tools.md) -------------
# Each call runs on the "tools" queue's worker (`make run` starts one; it loads
# no model), held to MCP_TOOL_TIMEOUT_S; a result is cut at
# MCP_TOOL_OUTPUT_MAX_CHARS. A reply makes at most MCP_MAX_STEPS_PER_REPLY calls
# and spends at most MCP_TOOL_TIME_PER_REPLY_S on them; past either, its next
# calls are refused and it answers with what it has. A call marked "ask" waits
# MCP_APPROVAL_TIMEOUT_S for its owner's approval, then counts as refused.
# A server's tool list (tools/list) is kept MCP_TOOLS_CACHE_S, at most
# MCP_MAX_TOOLS_PER_SERVER tools. See chat/lifecycle/sweep.py for the bounds.
MCP_TOOL_TIMEOUT_S = envfloat("MCP_TOOL_TIMEOUT_S", 30.0)
if MCP_TOOL_TIMEOUT_S <= 0:
    raise ConfigError(f"MCP_TOOL_TIMEOUT_S={MCP_TOOL_TIMEOUT_S:g}: must be above 0")
MCP_TOOL_OUTPUT_MAX_CHARS = envint("MCP_TOOL_OUTPUT_MAX_CHARS", 8000, minimum=100)
MCP_MAX_STEPS_PER_REPLY = envint("MCP_MAX_STEPS_PER_REPLY", 8, minimum=1)
MCP_TOOL_TIME_PER_REPLY_S = envfloat("MCP_TOOL_TIME_PER_REPLY_S", 120.0)
MCP_APPROVAL_TIMEOUT_S = envfloat("MCP_APPROVAL_TIMEOUT_S", 600.0)
MCP_TOOLS_CACHE_S = envfloat("MCP_TOOLS_CACHE_S", 300.0)
MCP_MAX_TOOLS_PER_SERVER = envint("MCP_MAX_TOOLS_PER_SERVER", 64, minimum=1)
TOOL_QUEUE = "tools"
CELERY_TASK_ROUTES = {
    **CELERY_TASK_ROUTES,
    "chat.run_tool_step": {"queue": TOOL_QUEUE},
    "chat.refresh_mcp_tools": {"queue": TOOL_QUEUE},
}
TOOLS_WORKER = envbool("TOOLS_WORKER", False)  # set by the launcher for that worker only
TOOL_WORKER_CONCURRENCY = envint("TOOL_WORKER_CONCURRENCY", 4, minimum=1)

# --- CORS for the OpenAI-compatible API (/v1/) and the REST API (/api/v1/) -----
# For those two prefixes only. Browsers on other origins may call them
# only from the listed origins ("https://app.example.com,http://localhost:3000");
# credentials (the session cookie) are allowed for those origins and no others.
# A page on another origin that uses the session must also be in CSRF_TRUSTED_ORIGINS.
CORS_ALLOWED_ORIGINS = envlist("CORS_ALLOWED_ORIGINS", [])
CORS_URLS_REGEX = r"^/(v1|api/v1)/.*$"
CORS_ALLOW_CREDENTIALS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"quiet_websockets": {"()": "sanjai_site.log.QuietWebsockets"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {
        # The web server's own lines: start-up, shutdown and errors, not one per websocket.
        "uvicorn.error": {"handlers": ["console"], "filters": ["quiet_websockets"], "propagate": False},
    },
}

# --- Health and metrics: /healthz, /readyz (sanjai_site/health.py), /metrics (sanjai_site/metrics.py) ---
# /metrics is not public: it answers clients whose address is in one of these
# networks (comma-separated CIDRs), or that send `Authorization: Bearer
# <METRICS_TOKEN>` (empty: no token access); anyone else gets 403. The address
# is the direct peer (REMOTE_ADDR), or under TLS_PROXY the client address the
# proxy appended to X-Forwarded-For (so the proxy's own 127.0.0.1 opens nothing).


def _networks(name: str, default: list[str]) -> list[str]:
    import ipaddress

    cidrs = envlist(name, default)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"{name}: {cidr!r} is not an address or network (e.g. 10.0.0.0/8)") from None
    return cidrs


METRICS_ALLOWED_NETWORKS = _networks("METRICS_ALLOWED_NETWORKS", ["127.0.0.1/32", "::1/128"])
METRICS_TOKEN = envstr("METRICS_TOKEN", "")
# How often each worker publishes its generation metrics to Redis for /metrics
# (inference/metrics.py); a worker's snapshot expires after three intervals.
WORKER_METRICS_INTERVAL_S = envfloat("WORKER_METRICS_INTERVAL_S", 5.0)
if WORKER_METRICS_INTERVAL_S <= 0:
    raise ConfigError(f"WORKER_METRICS_INTERVAL_S={WORKER_METRICS_INTERVAL_S:g}: must be above 0")
