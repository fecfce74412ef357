"""Backend OPTIONS -> a frozen `Config`, validated once, plus the address and authkey derivation.

`Config.to_spec()` is the JSON the launching process hands to the server process (on its stdin),
so the server never needs Django settings of its own.
"""

import hashlib
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field

from . import schedules
from .client import describe

DEFAULTS = {
    "WORKERS": None, "THREADS": None, "MAX_WORKERS": None, "MAX_RESULTS": 1000,
    "RESULT_TTL": None, "ADDRESS": None, "AUTOSTART": False, "AUTHKEY": None,
    "TIME_LIMIT": None, "MAX_TASKS_PER_WORKER": None, "MAX_WORKER_MEMORY": None,
    "MAX_QUEUE": None, "CONNECT_TIMEOUT": 5.0, "STATE_DIR": None, "FSYNC": "everysec",
    "MAX_PAYLOAD": 10 * 1024 * 1024, "JOURNAL_LIMIT": 64 * 1024 * 1024,
    "MAX_CONNECTIONS": 4096, "SCHEDULE": None,
}
FSYNC_MODES = ("always", "everysec", "never")


class ConfigError(ValueError):
    """An OPTIONS value is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class Config:
    alias: str
    kind: str                     # "process" or "thread"
    workers: int
    threads: int
    max_results: int
    result_ttl: float | None
    address: str | tuple          # unix socket path, or (host, port)
    embedded: bool                # no ADDRESS: started by (and dies with) the first user
    autostart: bool
    authkey: bytes = field(repr=False)
    time_limit: float | None
    max_tasks_per_worker: int | None
    max_worker_memory: int | None  # MiB of RSS
    max_queue: int | None
    connect_timeout: float
    queues: tuple = ("default",)
    settings_module: str | None = None
    state_dir: str | None = None   # None: in memory only
    fsync: str = "everysec"
    max_payload: int = 10 * 1024 * 1024
    journal_limit: int = 64 * 1024 * 1024
    max_connections: int | None = 4096
    schedules: tuple = ()         # normalised OPTIONS["SCHEDULE"] entries (see schedules.py)

    @property
    def address_text(self):
        return describe(self.address)

    @property
    def can_start(self):
        return self.embedded or self.autostart

    def to_spec(self):
        spec = asdict(self)
        spec["authkey"] = self.authkey.hex()
        spec["address"] = self.address if isinstance(self.address, str) else list(self.address)
        spec["queues"] = list(self.queues)
        spec["schedules"] = [dict(entry) for entry in self.schedules]
        return spec

    @classmethod
    def from_spec(cls, spec):
        spec = dict(spec, authkey=bytes.fromhex(spec["authkey"]), queues=tuple(spec["queues"]),
                    schedules=tuple(spec.get("schedules") or ()))
        if not isinstance(spec["address"], str):
            spec["address"] = tuple(spec["address"])
        return cls(**spec)


def _number(options, key, kind=int, minimum=1):
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and int(value) != value) or value < minimum:
        raise ConfigError(f"OPTIONS[{key!r}] must be a {'whole ' if kind is int else ''}number "
                          f">= {minimum}, got {value!r}.")
    return kind(value)


def parse_address(value):
    """'host:port' -> (host, port); anything containing '/' -> an absolute socket path."""
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"OPTIONS['ADDRESS'] must be a socket path or 'host:port', got {value!r}.")
    if "/" not in value and ":" in value:
        host, _, port = value.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"OPTIONS['ADDRESS'] {value!r}: the port must be a number.")
        if ":" in host:
            raise ConfigError(f"OPTIONS['ADDRESS'] {value!r}: IPv6 is not supported (the "
                              "multiprocessing listener binds IPv4); use 127.0.0.1 or a path.")
        return (host.strip("[]") or "127.0.0.1", int(port))
    path = os.path.abspath(value)
    if len(path.encode()) > 107:
        raise ConfigError(f"OPTIONS['ADDRESS'] {path!r} is longer than the 107 bytes a unix "
                          "socket path may have; choose a shorter path.")
    return path


def runtime_dir():
    """A private (0700) per-user directory for embedded sockets and lock files."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.path.join(base, f"django-tasks-shared-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def side_file(address, suffix):
    """<socket>.lock / .start.lock / .log beside a unix socket; in runtime_dir() for TCP."""
    if isinstance(address, str):
        return address + suffix
    return os.path.join(runtime_dir(), "tcp-%s-%d%s" % (*address, suffix))


def derive_authkey(secret_key, alias):
    from django.utils.crypto import salted_hmac

    return salted_hmac("django_tasks_shared.authkey", alias, secret=secret_key,
                       algorithm="sha256").digest()


def build_config(alias, options, *, kind, queues, secret_key, settings_module,
                 time_zone="UTC"):
    """OPTIONS -> Config. `time_zone` (Django's TIME_ZONE) is the default for cron schedules."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown OPTIONS key(s) {', '.join(map(repr, unknown))} for task backend "
            f"{alias!r}; "
            f"valid keys are {', '.join(sorted(DEFAULTS))}.")
    opts = {**DEFAULTS, **options}
    workers = _number(opts, "WORKERS")
    threads = _number(opts, "THREADS")
    max_workers = _number(opts, "MAX_WORKERS")
    if kind == "process":
        if workers is not None and max_workers is not None:
            raise ConfigError(
                "give WORKERS or MAX_WORKERS (its django-tasks-local name), not both.")
        workers = workers or max_workers or os.cpu_count() or 1
        threads = threads or 1
    else:
        if workers not in (None, 1):
            raise ConfigError("ThreadPoolBackend runs one worker process; set THREADS (or "
                              "MAX_WORKERS) for its thread count, or use ProcessPoolBackend.")
        if threads is not None and max_workers is not None:
            raise ConfigError(
                "give THREADS or MAX_WORKERS (its django-tasks-local name), not both.")
        workers = 1
        threads = threads or max_workers or min(32, (os.cpu_count() or 1) + 4)

    authkey = opts["AUTHKEY"]
    if authkey is None:
        if not secret_key:
            raise ConfigError("set SECRET_KEY or OPTIONS['AUTHKEY']: the server's authkey is "
                              "derived from SECRET_KEY by default.")
        authkey = derive_authkey(secret_key, alias)
    elif isinstance(authkey, str):
        authkey = authkey.encode()
    if not isinstance(authkey, bytes) or len(authkey) < 16:
        raise ConfigError("OPTIONS['AUTHKEY'] must be at least 16 bytes (or characters); "
                          "treat it as a secret: it grants code execution in the server.")

    if opts["ADDRESS"] is None:
        # One embedded server per project and alias: every process of the same project finds it.
        digest = hashlib.sha256(b"%s\0%s\0%s" % (
            (settings_module or "").encode(), alias.encode(), authkey)).hexdigest()[:16]
        address, embedded = os.path.join(runtime_dir(), f"{digest}.sock"), True
    else:
        address, embedded = parse_address(opts["ADDRESS"]), False
    if (embedded or opts["AUTOSTART"]) and not settings_module:
        raise ConfigError("worker processes load Django from DJANGO_SETTINGS_MODULE, which is "
                          "not set; set it (settings.configure() is not enough for workers).")

    state_dir = opts["STATE_DIR"]
    if state_dir is not None:
        if not isinstance(state_dir, (str, os.PathLike)) or not os.fspath(state_dir):
            raise ConfigError(f"OPTIONS['STATE_DIR'] must be a directory path, got "
                              f"{state_dir!r}.")
        state_dir = os.path.abspath(os.fspath(state_dir))
    if opts["FSYNC"] not in FSYNC_MODES:
        raise ConfigError(f"OPTIONS['FSYNC'] must be one of {', '.join(map(repr, FSYNC_MODES))}"
                          f", got {opts['FSYNC']!r}.")

    try:
        schedule = schedules.validate(opts["SCHEDULE"], queues=tuple(sorted(queues)),
                                      default_timezone=time_zone or "UTC")
    except schedules.ScheduleError as exc:
        raise ConfigError(str(exc)) from None

    return Config(
        alias=alias, kind=kind, workers=workers, threads=threads,
        max_results=_number(opts, "MAX_RESULTS"),
        result_ttl=_number(opts, "RESULT_TTL", float, 0),
        address=address, embedded=embedded, autostart=bool(opts["AUTOSTART"]), authkey=authkey,
        time_limit=_number(opts, "TIME_LIMIT", float, 0),
        max_tasks_per_worker=_number(opts, "MAX_TASKS_PER_WORKER"),
        max_worker_memory=_number(opts, "MAX_WORKER_MEMORY"),
        max_queue=_number(opts, "MAX_QUEUE"),
        connect_timeout=_number(opts, "CONNECT_TIMEOUT", float, 0.1),
        queues=tuple(sorted(queues)), settings_module=settings_module,
        state_dir=state_dir, fsync=opts["FSYNC"],
        max_payload=_number(opts, "MAX_PAYLOAD", minimum=1024),
        journal_limit=_number(opts, "JOURNAL_LIMIT", minimum=4096),
        max_connections=_number(opts, "MAX_CONNECTIONS"), schedules=schedule,
    )


def python_path():
    """sys.path of this process as absolute entries, so workers import what we import."""
    return os.pathsep.join(os.path.abspath(p or ".") for p in sys.path if p is not None)
