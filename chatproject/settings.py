"""Settings, all read from the environment in this one place.

With no environment set the service runs embedded: SQLite file, in-process channel
layer, limits and cache, and the offline ``demo`` LLM provider. Setting
``DATABASE_URL`` and ``REDIS_URL`` switches to PostgreSQL and Redis.
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "chatproject.admin_site.ChatAdminConfig",  # django.contrib.admin, with our site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "billing",
    "governor",
    "chats",
    "knowledge",
    "playground",
    "tools",
]

# Every middleware here supports async and makes no thread hand-off, so streaming views
# stay fully asynchronous. Django's security middleware run inline (they only set
# headers); the browser middleware wrap every page but the API's (chatproject.api_paths).
MIDDLEWARE = [
    "chatproject.request_id.RequestIdMiddleware",
    "chatproject.api_paths.ApiPathMiddleware",
    "chatproject.middleware.SecurityMiddleware",
    "chatproject.api_paths.BrowserMiddleware",
    "chatproject.middleware.CommonMiddleware",
    "chatproject.middleware.XFrameOptionsMiddleware",
]
BROWSER_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
# Django's checks look for its middleware by name in MIDDLEWARE; chatproject.checks runs
# the checks they guard against the middleware above instead.
SILENCED_SYSTEM_CHECKS = [
    "admin.E408",
    "admin.E409",
    "admin.E410",
    "security.W001",
    "security.W002",
    "security.W003",
]

ROOT_URLCONF = "chatproject.urls"
ASGI_APPLICATION = "chatproject.asgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASE_POOL_MAX = env.int("DATABASE_POOL_MAX", default=20)  # also the ORM thread count
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A psycopg 3 pool: async views reach the ORM from worker threads, and opening a
    # connection per request would cost more than the request itself.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN", default=2),
        "max_size": DATABASE_POOL_MAX,
        # How long a request waits for a free connection (or, while the database is
        # down, for one to open) before it is answered 503 SERVICE_UNAVAILABLE.
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=10.0),
    }
    # Parameters travel apart from the SQL (the server binds them), and a statement run
    # a few times on a connection is prepared, so the server stops re-planning it: quoting
    # every value into the SQL in Python, and planning each time, cost more than running
    # the hot statements. Behind a pooler that cannot keep prepared statements (PgBouncer
    # in transaction mode without max_prepared_statements), set the threshold to 0.
    options["server_side_binding"] = env.bool("DATABASE_SERVER_SIDE_BINDING", default=True)
    prepare_threshold = env.int("DATABASE_PREPARE_THRESHOLD", default=5)
    options["prepare_threshold"] = prepare_threshold if prepare_threshold > 0 else None
else:
    # Tests run a live server in another process, so the test database is a file (one per
    # test run, so concurrent runs in one checkout do not share it).
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f"test_db_{os.getpid()}.sqlite3")}
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
# The engine's own pool for its hot statements, from the event loop (chatproject.async_db):
# admission and finalisation of every request, with no worker thread.
ASYNC_DATABASE_POOL = env.bool("ASYNC_DATABASE_POOL", default=True)
ASYNC_DATABASE_POOL_MAX = env.int("ASYNC_DATABASE_POOL_MAX", default=10)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, shared limits and cache ------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
REDIS_MAX_CONNECTIONS = env.int("REDIS_MAX_CONNECTIONS", default=100)  # per process
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chatproject.channel_layer.BlockingRedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # redis-py 8 times idle reads out after 5 s unless told otherwise.
                        "socket_timeout": None,
                        # Every socket's group messages arrive through this pool: under
                        # overload, waiting for a connection beats failing the socket.
                        "max_connections": env.int("CHANNEL_LAYER_MAX_CONNECTIONS", 1000),
                        "timeout": None,
                    }
                ]
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Product settings -------------------------------------------------------------------
API_KEY_ENV = env.str("API_KEY_ENV", default="live")  # the <env> in sk_<env>_<random>
CHAT_MAX_MESSAGE_LENGTH = env.int("CHAT_MAX_MESSAGE_LENGTH", default=20000)
CHAT_MAX_HISTORY_MESSAGES = env.int("CHAT_MAX_HISTORY_MESSAGES", default=100)
KNOWLEDGE_MAX_DOCUMENT_BYTES = env.int("KNOWLEDGE_MAX_DOCUMENT_BYTES", default=1024 * 1024)
# The largest request body accepted (a 1 MiB document grows when escaped into JSON).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BYTES", default=4 * 1024 * 1024)

# --- Billing: rate limits, credit holds, response cache (owned by billing/) -------------
RESPONSE_CACHE_TTL_SECONDS = env.int("RESPONSE_CACHE_TTL_SECONDS", default=3600)  # 0: off
# A credit hold is leased to the process serving it, which renews the lease (and
# checkpoints the running answer) every STREAM_CHECKPOINT_SECONDS while it streams; the
# sweeper closes holds whose lease lapsed more than HOLD_STALE_AFTER_SECONDS ago.
HOLD_LEASE_SECONDS = env.float("HOLD_LEASE_SECONDS", default=30.0)
STREAM_CHECKPOINT_SECONDS = env.float("STREAM_CHECKPOINT_SECONDS", default=3.0)
HOLD_STALE_AFTER_SECONDS = env.float("HOLD_STALE_AFTER_SECONDS", default=60.0)
if not 0 < STREAM_CHECKPOINT_SECONDS < HOLD_LEASE_SECONDS:
    raise ImproperlyConfigured(
        "STREAM_CHECKPOINT_SECONDS must be above 0 and below HOLD_LEASE_SECONDS, "
        "or live credit holds lapse between renewals."
    )
# The stream log of running generations (chats.stream_log): tokens go out in batches,
# every STREAM_LOG_FLUSH_MS or STREAM_LOG_BATCH tokens; a log expires
# STREAM_LOG_TTL_SECONDS after its last write.
STREAM_LOG_FLUSH_MS = env.float("STREAM_LOG_FLUSH_MS", default=20.0)
STREAM_LOG_BATCH = env.int("STREAM_LOG_BATCH", default=32)
STREAM_LOG_TTL_SECONDS = env.float("STREAM_LOG_TTL_SECONDS", default=300.0)
# Streams a client can resume (their chunks kept in the stream log), which therefore run
# to the end when the client leaves; false: a client that leaves cancels its answer.
STREAM_RESUME = env.bool("STREAM_RESUME", default=True)
# How long an answer is kept for retries that send the same Idempotency-Key.
IDEMPOTENCY_TTL_SECONDS = env.int("IDEMPOTENCY_TTL_SECONDS", default=86400)
# A WebSocket connection slot lapses unless refreshed within this time (crashed processes).
WS_CONNECTION_SLOT_TTL_SECONDS = env.float("WS_CONNECTION_SLOT_TTL_SECONDS", default=90.0)
# --- End of billing block -----------------------------------------------------------------

# Bearer token required by /metrics; empty: open (keep it on an internal network then).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# The error format of each API prefix (longest match wins): what Django answers on its own
# there (an unknown URL, a NUL in the URL, an unexpected error) is encoded by this.
API_ERROR_FORMATS = {
    "/api/": "chatproject.errors.error_response",
    "/api/v1/chat/": "chats.transports.docgen.http_error",
    "/v1/": "chats.transports.openai_api.openai_error_response",
}

# --- Auth, i18n, static -----------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
SERVE_STATIC = env.bool("SERVE_STATIC", default=True)

# --- REST framework and OpenAPI ---------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["billing.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["billing.authentication.IsTenant"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["chatproject.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "chatproject.errors.drf_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["billing.throttling.PlanRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AI chat backend API",
    "DESCRIPTION": "Multi-tenant chat management, streaming and OpenAI-compatible endpoints.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "chatproject.openapi.path_spelling",
        "chatproject.openapi.plain_view_paths",
        "chatproject.openapi.rest_error_responses",
    ],
}

# --- Security (production) --------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Logging: one line per event, tagged with the request id, secrets redacted ------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "chatproject.request_id.RequestIdLogFilter"}},
    "formatters": {
        "plain": {
            # API keys are redacted from every line (chatproject.redaction).
            "()": "chatproject.redaction.RedactingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # Django's default logging gives "django" a plain console handler under DEBUG: every
    # line goes through the root's (formatted, redacted) handler instead.
    "loggers": {"django": {"handlers": [], "propagate": True}},
}

# --- LLM providers ----------------------------------------------------------------------
LLM_TIMEOUT_SECONDS = env.float("LLM_TIMEOUT_SECONDS", default=60.0)  # no byte from upstream
DEMO_TOKEN_DELAY_MS = env.float("DEMO_TOKEN_DELAY_MS", default=15.0)  # so demo replies stream
# The model catalog is cached per process; admin edits take effect within this many seconds.
MODEL_CATALOG_TTL_SECONDS = env.float("MODEL_CATALOG_TTL_SECONDS", default=10.0)
# Failing before the first token: how many deployments a request may try (the first
# included), and the cool-down of a deployment that failed this often within this long.
MODEL_FALLBACK_ATTEMPTS = env.int("MODEL_FALLBACK_ATTEMPTS", default=3)
MODEL_COOLDOWN_FAILURES = env.int("MODEL_COOLDOWN_FAILURES", default=3)
MODEL_COOLDOWN_SECONDS = env.float("MODEL_COOLDOWN_SECONDS", default=30.0)
# A key read (with its tenant and plan) is reused this long per process (billing.key_cache);
# a revoked key, a deactivated tenant, a changed plan reach every process within it.
API_KEY_CACHE_SECONDS = env.float("API_KEY_CACHE_SECONDS", default=1.0)

# --- Tools ------------------------------------------------------------------------------
# Most model calls in one request when the server runs tools (the credit hold covers them).
TOOL_MAX_STEPS = env.int("TOOL_MAX_STEPS", default=5)
# Longest tool result handed back to the model, in characters, over one step's calls.
TOOL_RESULT_MAX_CHARS = env.int("TOOL_RESULT_MAX_CHARS", default=16000)
# Tenant HTTP tools may call loopback, private and link-local addresses (tests, private
# networks the operator trusts); off, they reach public addresses only.
TOOLS_ALLOW_PRIVATE_URLS = env.bool("TOOLS_ALLOW_PRIVATE_URLS", default=False)

# --- HTTP streaming transports (chats/transports) ---------------------------------------
# An SSE comment is sent when no event has gone out for this long, so proxies and clients
# do not drop a connection that waits on a slow model.
SSE_KEEPALIVE_SECONDS = env.float("SSE_KEEPALIVE_SECONDS", default=15.0)
# How long a stream's end waits for the database (storing and settling the answer) before
# the client is told SERVICE_UNAVAILABLE; the answer is saved once the database is back.
STREAM_END_WAIT_SECONDS = env.float("STREAM_END_WAIT_SECONDS", default=5.0)
# A client that reads nothing of a stream for this long is disconnected (the answer ends
# as cancelled); meanwhile the stream waits for it (chatproject/backpressure.py). 0: never.
CLIENT_STALL_TIMEOUT_SECONDS = env.float("CLIENT_STALL_TIMEOUT_SECONDS", default=60.0)
# Origins allowed to call POST /api/chat (the AI SDK's) from a browser; "*" allows any (keys
# travel in a header, never in cookies, so a wildcard exposes nothing to other sites).
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=["*"])
