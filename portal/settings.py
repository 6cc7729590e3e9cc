"""Tollgate settings, read once from the environment through django-environ.

Every setting but DATABASE_URL has a local default, and `make run` / `make
test` start an embedded PostgreSQL and set that one, so the first run needs no
configuration; production values come from the environment (see README,
"Configuration").
"""

import json
import logging
import os
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def secret(name: str, default: str | None = "") -> str | None:
    """A secret exactly as set. django-environ reads a value starting with `$` as the name of
    another variable to take instead; a random secret may well start with one."""
    return os.environ.get(name) or default


def secrets_list(name: str) -> list[str]:
    """Earlier secrets: a JSON array of strings, each taken exactly as written (a secret may
    hold a comma or spaces), or comma-separated with the spaces around each removed."""
    value = os.environ.get(name, "")
    if value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(p, str) and p for p in parsed):
            raise environ.ImproperlyConfigured(
                f'{name} starts with "[" but is not a JSON array of strings, e.g. ["old secret"].'
            )
        return parsed
    return [part.strip() for part in value.split(",") if part.strip()]


# --- Core -----------------------------------------------------------------

DEBUG = env.bool("DEBUG", default=True)
_DEV_SECRET = "dev-only-secret-key-do-not-use-in-production-0123456789abcdef"
SECRET_KEY = secret("SECRET_KEY", default=_DEV_SECRET if DEBUG else None)
# Django's own bar for a production key (check --deploy's security.W009): 50 characters or
# more, 5 or more different ones, not one of its generated "django-insecure-" keys.
if not DEBUG and (
    not SECRET_KEY
    or SECRET_KEY == _DEV_SECRET
    or len(SECRET_KEY) < 50
    or len(set(SECRET_KEY)) < 5
    or SECRET_KEY.startswith("django-insecure-")
):
    raise environ.ImproperlyConfigured(
        "With DEBUG off, SECRET_KEY must be set to a secret of your own of 50 characters or more "
        "(not the development value), e.g. python -c 'import secrets; "
        "print(secrets.token_urlsafe(50))'."
    )
# Earlier SECRET_KEYs still accepted for sessions and password-reset links while they
# expire, so SECRET_KEY can be rotated without signing everyone out (Django's own setting).
SECRET_KEY_FALLBACKS = secrets_list("SECRET_KEY_FALLBACKS")
# API-key hashes are HMAC-SHA256 keyed by this pepper, kept apart from SECRET_KEY so
# either can be rotated on its own. Unset, SECRET_KEY itself keys them (how keys were
# hashed before the pepper existed, so they keep working). FALLBACKS are earlier peppers
# (comma-separated), still accepted. With REHASH on, a key one of them matches is re-hashed
# under the current pepper on its next use; turn it on only once every process runs the new
# pepper (a process still on the old one would refuse a re-hashed key), so a rolling
# restart never breaks a key.
TOLLGATE_KEY_PEPPER = secret("TOLLGATE_KEY_PEPPER")
TOLLGATE_KEY_PEPPER_FALLBACKS = secrets_list("TOLLGATE_KEY_PEPPER_FALLBACKS")
TOLLGATE_KEY_PEPPER_REHASH = env.bool("TOLLGATE_KEY_PEPPER_REHASH", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# TLS: production sits behind a TLS-terminating proxy that says so in X-Forwarded-Proto.
# With DEBUG off, HTTPS is enforced (redirect, HSTS, Secure cookies) unless
# TOLLGATE_PLAIN_HTTP=1 says this instance serves plain HTTP on purpose (loopback, tests).
TOLLGATE_PLAIN_HTTP = env.bool("TOLLGATE_PLAIN_HTTP", default=DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
_TLS = not TOLLGATE_PLAIN_HTTP
SECURE_SSL_REDIRECT = _TLS
# Health checks and scrapers talk to a process directly, over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000) if _TLS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = _TLS
SECURE_HSTS_PRELOAD = _TLS
SESSION_COOKIE_SECURE = _TLS
CSRF_COOKIE_SECURE = _TLS
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "axes",
    "accounts",
    "routing",
    "usage",
    "ops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from the app itself, so DEBUG off needs no web server in front for them.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "portal.middleware.request_id",
    "portal.unavailable.DatabaseUnavailableMiddleware",
    "portal.middleware.refuse_nul_bytes",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out sign-in.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

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
                "accounts.navigation.team_navigation",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------

# PostgreSQL is the only database. `make run` and `make test` start an embedded
# one (devservices.py) and set DATABASE_URL; anything else must set it.
if not env("DATABASE_URL", default=""):
    raise environ.ImproperlyConfigured(
        "DATABASE_URL is not set. Use `make run` or `make test`, which start an embedded "
        "PostgreSQL, or set DATABASE_URL to a PostgreSQL database (postgres://USER@HOST:PORT/NAME)."
    )
DATABASES = {"default": env.db("DATABASE_URL")}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise environ.ImproperlyConfigured(
        f"DATABASE_URL must name a PostgreSQL database (postgres://…), the only one Tollgate "
        f"supports; it selects {DATABASES['default']['ENGINE']}."
    )
# Pooled connections: every proxied call touches the database, and a
# fresh connection costs several milliseconds.
# A request waits at most DB_POOL_TIMEOUT_S for a connection, and a new connection is given
# up after 2 s (libpq's least): with the database unreachable, callers get a 503 within
# about 2 s (portal.unavailable) rather than hanging on it.
DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
    "min_size": env.int("DB_POOL_MIN", default=2),
    "max_size": env.int("DB_POOL_MAX", default=20),
    "timeout": env.float("DB_POOL_TIMEOUT_S", default=1.5),
}
DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 2)
DATABASES["default"]["CONN_MAX_AGE"] = 0
# Optional: a read replica for the reports (portal.replica); tests read the primary for it.
if env("DATABASE_REPLICA_URL", default=""):
    DATABASES["replica"] = env.db("DATABASE_REPLICA_URL")
    DATABASES["replica"].setdefault("OPTIONS", {})["pool"] = dict(
        DATABASES["default"]["OPTIONS"]["pool"]
    )
    DATABASES["replica"]["OPTIONS"].setdefault("connect_timeout", 2)
    DATABASES["replica"]["CONN_MAX_AGE"] = 0
    DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["portal.replica.ReportsRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and Redis ------------------------------------------------------

REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="tollgate"),
            # A Redis outage degrades to database reads (keys, catalog), never to 500s.
            "OPTIONS": {
                "IGNORE_EXCEPTIONS": True,
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 1,
            },
        }
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery ---------------------------------------------------------------

CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=REDIS_URL or None)
CELERY_RESULT_EXPIRES = 3600
# A broker that does not answer is given up on quickly: tasks are queued from the request
# path (alerts), which must not wait on it.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 2}
# Without a broker, tasks run in-process so the first run needs nothing else.
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
# Worker and beat log through LOGGING (JSON lines in production) instead of Celery's format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = "UTC"
# Usage-event deliveries wait on tenants' webhooks: their own queue and worker process (the
# Procfile's `events`), so a slow webhook never holds up sweeps, alerts or invoices.
CELERY_TASK_ROUTES = {"usage.tasks.usage_events_deliver": {"queue": "usage-events"}}
# Every periodic job, in one place. Each is idempotent: safe to run twice.
CELERY_BEAT_SCHEDULE = {
    # Record the calls of dead workers and release their budget reservations
    # (web processes do it too, on their heartbeat; see TOLLGATE_LEASE_S).
    "inflight-sweep": {"task": "usage.tasks.inflight_sweep", "schedule": 20.0},
    # Forget closed calls older than TOLLGATE_CALL_JOURNAL_DAYS.
    "journal-prune": {"task": "usage.tasks.journal_prune", "schedule": 3600.0},
    # Safety net for threshold alerts (normally enqueued when a call crosses one).
    "budget-alerts": {"task": "usage.tasks.budget_alerts_check_all", "schedule": 300.0},
    # Once a day: project month-end spend and warn budgets heading over.
    "budget-forecast": {"task": "usage.tasks.budget_forecast_all", "schedule": 86400.0},
    # Fold new ledger rows into the daily rollups: one statement a run (a minute of calls at
    # 1,000 calls/s folds in well under a second, bench/ledger_scale.py), so a row is in the
    # reports' rollups within about a minute of being recorded.
    "rollup-advance": {"task": "usage.tasks.rollup_advance", "schedule": 30.0},
    # Hand newly recorded ledger rows to the teams' usage webhooks.
    "usage-events": {"task": "usage.tasks.usage_events_dispatch", "schedule": 15.0},
    # Create the ledger's monthly partitions ahead (usage.partitions); a no-op once they exist.
    "ledger-partitions": {"task": "usage.tasks.ledger_partitions_ensure", "schedule": 86400.0},
    # Close last month's invoices once the grace period after month end has passed.
    "invoices-close": {"task": "usage.tasks.invoices_close_due", "schedule": 3600.0},
}

# --- Auth, i18n, static ---------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # Refuses a sign-in while its account or address is locked out.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Sign-in throttling: after AXES_FAILURE_LIMIT wrong passwords for one account, or from one
# address, that account or address may not sign in for AXES_COOLOFF_MINUTES.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
# A success forgets that account's failures only, not every failure from its address.
AXES_HANDLER = "accounts.throttling.AccountResetHandler"
AXES_LOCKOUT_TEMPLATE = "accounts/locked.html"
# Whose address a sign-in comes from: the socket's peer, unless TOLLGATE_PROXY_COUNT says how
# many reverse proxies of ours stand in front, whose X-Forwarded-For is then believed that
# far back (a client's own X-Forwarded-For is never trusted, or anyone could pick the
# address they are throttled as, and lock out someone else's).
TOLLGATE_PROXY_COUNT = env.int("TOLLGATE_PROXY_COUNT", default=0)
AXES_IPWARE_PROXY_COUNT = TOLLGATE_PROXY_COUNT or None
AXES_IPWARE_META_PRECEDENCE_ORDER = (
    ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"] if TOLLGATE_PROXY_COUNT else ["REMOTE_ADDR"]
)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# A URL typed without a scheme means https (Django 6's default; webhooks must be https).
FORMS_URLFIELD_ASSUME_HTTPS = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# whitenoise serves straight from the app and package static folders, so neither `make run`
# nor a production process needs `collectstatic` first.
WHITENOISE_USE_FINDERS = True

# Mail: printed to the console in development; in production sent by SMTP (EMAIL_URL, e.g.
# smtp+tls://user:password@mail.example.com:587, default a local relay on port 25), never
# printed: the mail holds password-reset and invitation links.
if DEBUG:
    EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
else:
    _mail = env.email_url("EMAIL_URL", default="smtp://localhost:25")
    EMAIL_HOST, EMAIL_PORT = _mail["EMAIL_HOST"], _mail["EMAIL_PORT"]
    EMAIL_HOST_USER = _mail["EMAIL_HOST_USER"] or ""
    EMAIL_HOST_PASSWORD = _mail["EMAIL_HOST_PASSWORD"] or ""
    EMAIL_USE_TLS = bool(_mail.get("EMAIL_USE_TLS"))
    EMAIL_USE_SSL = bool(_mail.get("EMAIL_USE_SSL"))
    EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
    if EMAIL_BACKEND == "django.core.mail.backends.console.EmailBackend":
        raise environ.ImproperlyConfigured(
            "With DEBUG off, EMAIL_BACKEND may not be the console backend: it would print "
            "password-reset links into the log. Set EMAIL_URL to your SMTP server instead."
        )
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="tollgate@localhost")

# --- REST framework -------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ManagementKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "portal.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "COERCE_DECIMAL_TO_STRING": True,
    # `?format=` belongs to the invoice downloads (csv, json, pdf), not to DRF.
    "URL_FORMAT_OVERRIDE": None,
    # A database that does not answer is a 503, not a 500 (portal.unavailable).
    "EXCEPTION_HANDLER": "portal.unavailable.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate API",
    "DESCRIPTION": (
        "The management API under /api (teams, keys, usage, routes, budgets, invoices; a "
        "management key or a signed-in session) and the OpenAI-compatible gateway under /v1 "
        "(an inference key)."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/docs/ serves Swagger UI from drf-spectacular-sidecar's static files, never a CDN;
    # no validatorUrl, so the page never sends the schema to swagger.io's validator.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # /v1's OpenAI shapes are JSON Schema components of their own (routing/openapi.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "routing.openapi.v1_components",
        "accounts.openapi.api_error_responses",
    ],
}

# --- Tollgate -------------------------------------------------------------

# At shutdown (SIGTERM), how long calls still running may take to finish and be recorded;
# give the server the same (the Procfile's --timeout-graceful-shutdown).
TOLLGATE_SHUTDOWN_GRACE_S = env.float("TOLLGATE_SHUTDOWN_GRACE_S", default=30)

# Browser origins allowed to call /v1 directly (CORS), comma-separated, or "*"; empty: none.
TOLLGATE_CORS_ORIGINS = env.list("TOLLGATE_CORS_ORIGINS", default=[])

# Largest request body /v1 accepts, in bytes; larger bodies get a 413.
TOLLGATE_MAX_BODY_BYTES = env.int("TOLLGATE_MAX_BODY_BYTES", default=4 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = TOLLGATE_MAX_BODY_BYTES + 1024
# How long a call may run, in seconds, before the proxy ends it (a route's
# deadline_s may only be shorter); an in-flight record older than this plus a
# margin belongs to a dead worker.
TOLLGATE_CALL_DEADLINE_S = env.int("TOLLGATE_CALL_DEADLINE_S", default=600)
# Each gateway process renews a lease every HEARTBEAT_S seconds; the calls of
# a process whose lease is LEASE_S seconds old are swept as interrupted, so a
# killed worker's calls are recorded and their reservations released within
# a minute. Web processes sweep on their heartbeat unless WEB_SWEEPS is off
# (Celery beat sweeps too).
TOLLGATE_LEASE_S = env.int("TOLLGATE_LEASE_S", default=30)
TOLLGATE_HEARTBEAT_S = env.int("TOLLGATE_HEARTBEAT_S", default=10)
TOLLGATE_WEB_SWEEPS = env.bool("TOLLGATE_WEB_SWEEPS", default=True)
# Seconds the gateway keeps reading a stream whose client left, for the usage
# the upstream reports at its end (bounded by the call's deadline).
TOLLGATE_DRAIN_S = env.int("TOLLGATE_DRAIN_S", default=30)
# Days a closed call's journal entry (MeteredCall) is kept for `reconcile`.
TOLLGATE_CALL_JOURNAL_DAYS = env.int("TOLLGATE_CALL_JOURNAL_DAYS", default=100)
# How long an authenticated key stays cached, in seconds; revocation clears it.
TOLLGATE_KEY_CACHE_S = env.int("TOLLGATE_KEY_CACHE_S", default=60)
# Each process also keeps the keys it met this long (no round trip to check them); a key
# revoked in another process stops working here within it. 0: always ask the cache.
TOLLGATE_KEY_LOCAL_CACHE_S = env.float("TOLLGATE_KEY_LOCAL_CACHE_S", default=2.0)
# The /v1 hot path's own connections (portal.aio), per web process: PostgreSQL (async
# pool, waits DB_POOL_TIMEOUT_S for a free one) and Redis. A Redis command waits up to
# TOLLGATE_REDIS_TIMEOUT_S for a free connection and for its answer before the rate limits
# fall back to per-process counts: a busy worker (a burst of calls) must not pass for a
# Redis outage, or its limits would fail open under the very load they exist for. A Redis
# that refuses connections is detected at once (1 s to connect).
TOLLGATE_ASYNC_DB_POOL_MAX = env.int("TOLLGATE_ASYNC_DB_POOL_MAX", default=20)
TOLLGATE_REDIS_POOL_MAX = env.int("TOLLGATE_REDIS_POOL_MAX", default=50)
TOLLGATE_REDIS_TIMEOUT_S = env.float("TOLLGATE_REDIS_TIMEOUT_S", default=5.0)
# Seconds a finished call's ledger write waits for a free connection of that pool before
# it is retried (a new call waits DB_POOL_TIMEOUT_S, then gets a 503).
TOLLGATE_LEDGER_WAIT_S = env.float("TOLLGATE_LEDGER_WAIT_S", default=30.0)

# Budget-alert webhooks may be plain http and point at private addresses (loopback, LAN):
# for local runs and tests only; in production a webhook must be https and public.
TOLLGATE_WEBHOOK_ALLOW_PRIVATE = env.bool("TOLLGATE_WEBHOOK_ALLOW_PRIVATE", default=False)

# Output tokens a call's budget reservation assumes when neither the request
# (max_tokens) nor the catalog (max_output_tokens) caps them.
TOLLGATE_RESERVE_OUTPUT_TOKENS = env.int("TOLLGATE_RESERVE_OUTPUT_TOKENS", default=4096)

# The seller block printed on invoices.
TOLLGATE_SELLER = {
    "name": env("TOLLGATE_SELLER_NAME", default="Tollgate"),
    "address": env("TOLLGATE_SELLER_ADDRESS", default=""),
    "email": env("TOLLGATE_SELLER_EMAIL", default="billing@localhost"),
    "tax_id": env("TOLLGATE_SELLER_TAX_ID", default=""),
}
# Hours after a month ends before beat closes it, so late calls land in it.
TOLLGATE_INVOICE_GRACE_HOURS = env.int("TOLLGATE_INVOICE_GRACE_HOURS", default=6)

# Cooldowns: this many retryable failures of a model within the window
# (seconds) make routes skip it for TOLLGATE_COOLDOWN_S seconds.
TOLLGATE_COOLDOWN_FAILURES = env.int("TOLLGATE_COOLDOWN_FAILURES", default=3)
TOLLGATE_COOLDOWN_WINDOW_S = env.int("TOLLGATE_COOLDOWN_WINDOW_S", default=60)
TOLLGATE_COOLDOWN_S = env.int("TOLLGATE_COOLDOWN_S", default=30)

# JSON lines in production (DEBUG off), readable lines in `make run`.
LOG_FORMAT = env("LOG_FORMAT", default="plain" if DEBUG else "json")
if LOG_FORMAT not in ("plain", "json"):
    raise environ.ImproperlyConfigured("LOG_FORMAT is plain or json.")

# When set, /metrics answers only `Authorization: Bearer <token>`; unset, it is open
# (keep it on a private network then). PROMETHEUS_MULTIPROC_DIR, read by
# prometheus-client itself, makes /metrics sum every worker process (ops.metrics).
TOLLGATE_METRICS_TOKEN = secret("TOLLGATE_METRICS_TOKEN")
if env("PROMETHEUS_MULTIPROC_DIR", default=""):
    # prometheus-client opens its files there as soon as a metric is defined: a directory
    # that does not exist yet would stop every process (manage.py included) at import.
    Path(env("PROMETHEUS_MULTIPROC_DIR")).mkdir(parents=True, exist_ok=True)

# Python's warnings (a library's, the Celery worker's start-up checks) become log lines
# (logger py.warnings) in the same format, not free text on stderr.
logging.captureWarnings(True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        # One JSON object per line; a call's line carries its fields (request_id, team_id,
        # key_prefix, model, status, tokens, cost_usd, latency_ms) as keys. Defined in the
        # file uvicorn's supervisor process reads too (the Procfile's --log-config), so its
        # own lines are the same JSON.
        "json": json.loads((BASE_DIR / "portal" / "uvicorn-logging.json").read_text())[
            "formatters"
        ]["json"],
    },
    # Each line written while a request is served names its request id (portal.logs).
    "filters": {
        "request_id": {"()": "portal.logs.RequestIdFilter"},
        "once_a_minute": {"()": "portal.logs.AtMostEveryMinute"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's own console handler (DEBUG only) would print each 4xx a second time.
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django.db.backends": {"level": "WARNING"},
        # django-redis logs every cache call that fails while Redis is down: one a minute.
        "django_redis.cache": {"filters": ["once_a_minute"]},
        # The server's own lines (started, stopping) in the same format as the rest.
        "uvicorn": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # Off, as the server's --no-access-log asks (configuring "uvicorn" above would turn
        # it back on): each /v1 call has its own line, each page and /api error Django's.
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        # django-axes logs every start and sign-in at INFO; lockouts are WARNING.
        "axes": {"level": "WARNING"},
        # One line per upstream request is noise on the hot path.
        "httpx2": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}
