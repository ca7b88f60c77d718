"""Settings, all from the environment (12-factor), with embedded defaults for a first run.

With nothing set, the site uses SQLite and kombu's filesystem transport under ``var/`` so that
the first run needs no server. ``DATABASE_URL`` (PostgreSQL through psycopg2) and
``CELERY_BROKER_URL`` (Redis or RabbitMQ) switch to the production parts.

``ARENA_PRODUCTION=1`` is the switch for a public deployment behind HTTPS: it refuses to start
without an explicit ``SECRET_KEY`` and ``ALLOWED_HOSTS`` or with ``DEBUG`` on, and turns on the
HTTPS-only settings (redirect, HSTS, secure cookies) that ``manage.py check --deploy`` asks for.
"""

from __future__ import annotations

import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:  # the evaluator package lives at the project root
    sys.path.append(str(PROJECT_ROOT))

VAR_DIR = Path(os.environ.get("ARENA_VAR_DIR", PROJECT_ROOT / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    """A comma-separated variable; blanks around items and empty items dropped."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


#: A public deployment: strict HTTPS settings, and no silent development defaults.
PRODUCTION = env_bool("ARENA_PRODUCTION")


def _secret_key() -> str:
    """Use SECRET_KEY when set; else keep one generated key in var/ so sessions survive restarts.

    In production the key must come from the environment: a key generated per machine would make
    every web server sign sessions and tokens differently.
    """
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    if PRODUCTION:
        raise ImproperlyConfigured("ARENA_PRODUCTION=1 needs SECRET_KEY (50+ random characters) in the environment.")
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG")
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG=1 shows settings and source code on errors: never with ARENA_PRODUCTION=1.")
# Production has no default host: a forgotten ALLOWED_HOSTS fails `check --deploy` instead of guessing.
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc served from static files: the docs work offline
    "axes",  # failed-login lockout (see AXES_* below)
    "csp",
    "accounts",
    "benchmarks",
    "submissions",
    "adversaries",
    "leaderboards",
    "bundles",
    "builders",
]

MIDDLEWARE = [
    # First: a request's read-memo scope (accounts.read_memo), closed when its response leaves the stack.
    "accounts.read_memo.RequestScopeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Added with leaderboards/cache.py: anonymous leaderboard pages and exports from the cache; a hit
    # skips the rest of the stack (what it stores is that stack's own response, headers included).
    "leaderboards.cache.LeaderboardCacheMiddleware",
    # 413 for oversized uploads before their body is read or stored (see submissions/uploads.py).
    "submissions.uploads.UploadSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out login into the lockout page
]

# django-axes' backend goes first: it refuses a locked-out username/address pair before any
# password is checked, so the right password does not get through during the lockout either.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Django's ModelBackend, its get_user reading through accounts.read_memo (a signed-in request's user query).
    "accounts.backends.ModelBackend",
]

ROOT_URLCONF = "arena.urls"
WSGI_APPLICATION = "arena.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [PROJECT_ROOT / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            "builtins": ["leaderboards.templatetags.arena_tags"],
        },
    },
]

# --- Database: SQLite as the embedded default, PostgreSQL (psycopg2) from DATABASE_URL. ---
_default_db = f"sqlite:///{VAR_DIR / 'arena.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL", _default_db), conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write concurrently: WAL and immediate transactions avoid
    # "database is locked" errors on the embedded default.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Connections are kept (as on PostgreSQL): opening one (the pragmas above, Django's SQL functions) cost
    # 0.57 ms, as much as a whole cached leaderboard request (issue 19's load test). An idle connection in
    # autocommit holds no snapshot or lock, so it does not keep WAL checkpoints or writers waiting.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-arena.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [PROJECT_ROOT / "platform" / "arena" / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "leaderboards.staticfinders.PlotlyJsFinder",  # plotly.js from the plotly package: no CDN
]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)


def media_storage() -> dict:
    """Where uploaded artifacts live: the local disk (one machine, or a shared volume) or an S3 bucket.

    With many workers on many nodes a shared volume is a burden; an S3-compatible object store
    (AWS, MinIO, Ceph) lets every node read the same artifacts. Workers copy an artifact to their
    own scratch disk for the sandbox and check its sha256 on the way (submissions/artifacts.py).
    Objects stay private: no public ACL, and links, if ever made, are signed and short-lived.
    """
    backend = os.environ.get("ARENA_MEDIA_STORAGE", "filesystem")
    if backend in ("filesystem", "django.core.files.storage.FileSystemStorage"):
        return {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    if backend not in ("s3", "storages.backends.s3.S3Storage"):
        raise ImproperlyConfigured(f"ARENA_MEDIA_STORAGE must be 'filesystem' or 's3', not {backend!r}")
    bucket = os.environ.get("ARENA_S3_BUCKET", "")
    if not bucket:
        raise ImproperlyConfigured("ARENA_MEDIA_STORAGE=s3 needs ARENA_S3_BUCKET")
    options = {
        "bucket_name": bucket,
        "location": os.environ.get("ARENA_S3_PREFIX", "artifacts"),
        "default_acl": None,  # the bucket's own policy (private); never public-read
        "querystring_auth": True,
        "querystring_expire": 300,
        "file_overwrite": False,  # a generated name never replaces another artifact
        "object_parameters": {"ServerSideEncryption": "AES256"} if env_bool("ARENA_S3_ENCRYPT") else {},
    }
    # Credentials may also come from boto3's own chain (AWS_ACCESS_KEY_ID, an instance role, ...).
    given = {
        "endpoint_url": os.environ.get("ARENA_S3_ENDPOINT_URL"),  # MinIO, Ceph, ...; unset for AWS
        "region_name": os.environ.get("ARENA_S3_REGION"),
        "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
    }
    options.update({option: value for option, value in given.items() if value})
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


STORAGES = {
    "default": media_storage(),
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "media/"  # never routed: uploaded artifacts are private
# Workers copy artifacts from an object store here (one private folder per job, removed after it).
ARENA_SCRATCH_DIR = Path(os.environ.get("ARENA_SCRATCH_DIR", VAR_DIR / "scratch"))

# --- Uploads: stream to a temporary file, never read whole into memory. ---
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.TemporaryFileUploadHandler"]
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024**2
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024**2
FILE_UPLOAD_TEMP_DIR = os.environ.get("FILE_UPLOAD_TEMP_DIR") or None
ARENA_MAX_UPLOAD_BYTES = int(os.environ.get("ARENA_MAX_UPLOAD_BYTES", 512 * 1024**2))
# Benchmark bundles (zips) uploaded by staff on the admin's import page (bundles/admin.py): much larger
# than a model; streamed to disk like every upload, refused past this size.
ARENA_BUNDLE_MAX_UPLOAD_BYTES = int(os.environ.get("ARENA_BUNDLE_MAX_UPLOAD_BYTES", 8 * 1024**3))

# --- Hidden evaluation data and the evaluator. ---
ARENA_DATA_DIR = Path(os.environ.get("ARENA_DATA_DIR", VAR_DIR / "data"))
ARENA_DATA_MIRROR = os.environ.get("ARENA_DATA_MIRROR", str(PROJECT_ROOT.parent / "shared" / "data"))
ARENA_MODEL_MIRROR = os.environ.get("ARENA_MODEL_MIRROR", str(PROJECT_ROOT.parent / "shared" / "models"))
ARENA_ALLOW_UNSANDBOXED = env_bool("ARENA_ALLOW_UNSANDBOXED")
ARENA_EVAL_DEVICE = os.environ.get("ARENA_EVAL_DEVICE", "cpu")
ARENA_EVAL_WALL_SECONDS = float(os.environ.get("ARENA_EVAL_WALL_SECONDS", 3600))
ARENA_EVAL_MEMORY_BYTES = int(os.environ.get("ARENA_EVAL_MEMORY_BYTES", 8 * 1024**3))
#: CPU threads of one evaluation (torch, OpenMP, MKL); 0: every core of the machine. With several workers
#: on one machine, give each its share (cores / workers): threads beyond the cores only contend.
ARENA_EVAL_THREADS = int(os.environ.get("ARENA_EVAL_THREADS", 0))
#: CPU priority given up by an evaluation's processes (nice, 0-19): where the web server, the database and a worker
#: share a machine (the demo, one systemd host), pages stay fast while a job runs. 0 on a machine that only evaluates.
ARENA_EVAL_NICE = int(os.environ.get("ARENA_EVAL_NICE", 10))
# The installation's secret that seeds the demo's hidden data (benchmarks.hidden_seeds): created by
# build_demo on first use, mode 0600, never in the repository. Empty: ARENA_DATA_DIR/secrets/hidden-seeds.json.
ARENA_HIDDEN_SEED_FILE = os.environ.get("ARENA_HIDDEN_SEED_FILE", "")

# --- Submission quotas (per user and track; staff and the robots group are exempt). ---
ARENA_DEFAULT_DAILY_LIMIT = int(os.environ.get("ARENA_DEFAULT_DAILY_LIMIT", 10))
ARENA_DEFAULT_TOTAL_LIMIT = int(os.environ.get("ARENA_DEFAULT_TOTAL_LIMIT", 100))
ARENA_QUOTA_EXEMPT_GROUP = os.environ.get("ARENA_QUOTA_EXEMPT_GROUP", "robots")

# --- Sign-up (accounts.views.SignupView): quotas are per account, so accounts must not be free for the taking.
# "open": an account at once; "approval": created inactive until a staff member activates it in the admin
# (no outgoing mail server needed); "closed": no sign-up, staff create accounts. A public site defaults to approval.
ARENA_SIGNUP_MODE = os.environ.get("ARENA_SIGNUP_MODE", "approval" if PRODUCTION else "open").strip().lower()
if ARENA_SIGNUP_MODE not in {"open", "approval", "closed"}:
    raise ImproperlyConfigured(f"ARENA_SIGNUP_MODE must be open, approval or closed, not {ARENA_SIGNUP_MODE!r}")

# --- Cache: API throttling counters. Per process by default; CACHE_URL (redis://...) shares them. ---
if os.environ.get("CACHE_URL"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": os.environ["CACHE_URL"]}}
# --- Leaderboard cache (added with leaderboards/cache.py): anonymous leaderboard pages, exports and API
# tables, signed-in readers' page bodies and API list pages (submissions/list_cache.py) live in the cache
# above, keyed by what they show. Seconds an entry may live at most; 0 turns the cache off
# (measurements/load_test.py --cache-seconds 0).
ARENA_LEADERBOARD_CACHE_SECONDS = int(os.environ.get("ARENA_LEADERBOARD_CACHE_SECONDS", 600))
#: Reverse proxies in front of the web server that append to X-Forwarded-For. 0: none, use REMOTE_ADDR
#: (never None: DRF would then key its throttles on the whole header, which a client can forge).
PROXY_COUNT = int(os.environ.get("ARENA_PROXY_COUNT", 0))

# --- Celery: kombu's filesystem transport as the embedded broker. ---
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (_queue_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir / "queue"),
        "data_folder_out": str(_queue_dir / "queue"),
        "processed_folder": str(_queue_dir / "processed"),
        "control_folder": str(_queue_dir / "control"),
        "store_processed": False,
    }
def _default_result_backend(broker: str) -> str:
    """Results matter only for diagnostics (evaluations write to the database): reuse the broker."""
    if broker.startswith(("redis://", "rediss://")):
        return broker
    if broker.startswith(("amqp://", "pyamqp://")):
        return "rpc://"
    (VAR_DIR / "celery-results").mkdir(parents=True, exist_ok=True)
    return f"file://{VAR_DIR / 'celery-results'}"


CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or _default_result_backend(CELERY_BROKER_URL)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER")
CELERY_TASK_ACKS_LATE = True  # a job whose worker dies is delivered again
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("ARENA_EVAL_QUEUE", "evaluations")
# The queue of the admin page's bundle checks and imports (bundles/dispatch.py): consumed by a worker that may
# write ARENA_DATA_DIR and the media, which the evaluation workers of the shipped deployments may not.
ARENA_BUNDLE_QUEUE = os.environ.get("ARENA_BUNDLE_QUEUE") or "bundles"
# --- Attack submissions (added with adversaries/, issue 20): their runs wait on a queue of their own and step
# aside while model evaluations wait; the budget and the limits of each run; the daily limit per user and track.
ARENA_ATTACK_QUEUE = os.environ.get("ARENA_ATTACK_QUEUE") or "attacks"
ARENA_ATTACK_PASSES_PER_POINT = int(os.environ.get("ARENA_ATTACK_PASSES_PER_POINT", 10_000))
ARENA_ATTACK_SECONDS_PER_THREAT = float(os.environ.get("ARENA_ATTACK_SECONDS_PER_THREAT", 1800))
ARENA_ATTACK_MAX_SOURCE_BYTES = int(os.environ.get("ARENA_ATTACK_MAX_SOURCE_BYTES", 256 * 1024))
ARENA_ATTACK_DAILY_LIMIT = int(os.environ.get("ARENA_ATTACK_DAILY_LIMIT", 3))
# Attacks one user may ever submit to one track, withdrawn ones included (each run's number is a channel).
ARENA_ATTACK_TOTAL_LIMIT = int(os.environ.get("ARENA_ATTACK_TOTAL_LIMIT", 30))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.backends.TokenAuthentication",  # DRF's, reading the token and user through accounts.read_memo
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    # Per client address (anonymous) or per user; the counters live in the default cache, so several
    # web processes need a shared CACHE_URL (Redis) for the limits to hold across them.
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("ARENA_API_ANON_RATE", "120/minute"),
        "user": os.environ.get("ARENA_API_USER_RATE", "1200/minute"),
        "login": os.environ.get("ARENA_API_LOGIN_RATE", "20/minute"),  # per address on the token endpoint
        "signup": os.environ.get("ARENA_SIGNUP_RATE", "10/hour"),  # per address, every sign-up form POST
    },
    "NUM_PROXIES": PROXY_COUNT,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Robustness Arena API",
    "DESCRIPTION": "Submit classifiers and synthetic-image detectors; read their robustness scores.",
    "VERSION": "1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

# --- Browser-side protections, on everywhere (development included, so that tests see them). ---
SESSION_COOKIE_HTTPONLY = True
# With a shared cache (CACHE_URL), sessions are read from it and written through to the database: a signed-in
# request costs no session query once its session is cached, and the database row stays the record. Without
# one, each process has a cache of its own, and a session that logging out deletes in one process would live
# on in the others' caches: sessions then stay in the database, read through accounts.read_memo (asked again
# whenever the database has changed, so a log-out anywhere is seen by the next request everywhere).
SESSION_ENGINE = ("django.contrib.sessions.backends.cached_db" if os.environ.get("CACHE_URL")
                  else "accounts.backends")
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"  # model pages' URLs (private ids) never leak to paper/code links
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        # No inline scripts anywhere: page scripts are static files, and figures travel as
        # <script type="application/json"> data blocks, which CSP does not execute.
        "script-src": [SELF],
        # plotly.js, Swagger UI and Redoc write style attributes and <style> elements at run time.
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],  # Swagger UI's and plotly's icons are data: URIs
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- Failed logins (django-axes): a username is locked from one address after repeated failures.
# Keyed on the (username, address) pair, so that nobody can lock someone else out from elsewhere and
# a shared address (a lab behind NAT) keeps working for everyone else.
AXES_FAILURE_LIMIT = int(os.environ.get("ARENA_LOGIN_FAILURE_LIMIT", 5))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("ARENA_LOGIN_COOLOFF_MINUTES", 15)))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no start-up banner on every command; lockouts are still logged
AXES_LOCKOUT_CALLABLE = "accounts.lockout.lockout_response"  # 429 with Retry-After; JSON on the API
AXES_CLIENT_IP_CALLABLE = "accounts.lockout.client_address"  # the same address the API throttles use

# --- Production: HTTPS only. ---
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # gunicorn already trusts X-Forwarded-Proto from FORWARDED_ALLOW_IPS; another server or a remote
    # proxy can name the header that carries "https" instead (only if the proxy always sets it).
    if os.environ.get("ARENA_PROXY_SSL_HEADER"):
        _header = os.environ["ARENA_PROXY_SSL_HEADER"].upper().replace("-", "_")
        SECURE_PROXY_SSL_HEADER = (f"HTTP_{_header}", "https")
    SECURE_HSTS_SECONDS = int(os.environ.get("ARENA_HSTS_SECONDS", 365 * 24 * 3600))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("ARENA_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("ARENA_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
