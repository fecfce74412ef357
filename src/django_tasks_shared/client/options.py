"""Backend OPTIONS -> a frozen `Config` (protocol/config.py), validated once per process, with
the address and authkey derivation. Runs where Django settings are: web processes, shells,
commands; the server gets the result as JSON (Config.to_spec()).

    build_config(alias, OPTIONS, ...) -> unknown keys? -> pool size (WORKERS / THREADS /
        MAX_WORKERS) -> authkey (AUTHKEY or derived from SECRET_KEY) -> address (ADDRESS, or
        the embedded socket of this project and alias) -> STATE_DIR / FSYNC -> SCHEDULE ->
        POOLS (each pool's queues, size and limits; pools() below) -> Config
"""

import hashlib
import os

from ..protocol.config import FSYNC_MODES, Config
from ..protocol.paths import UnsafePath, file_in_the_way, runtime_dir
from ..schedules import entries as schedules

DEFAULTS = {
    "WORKERS": None, "THREADS": None, "MAX_WORKERS": None, "MAX_RESULTS": 1000,
    "RESULT_TTL": None, "ADDRESS": None, "AUTOSTART": False, "AUTHKEY": None,
    "TIME_LIMIT": None, "MAX_TASKS_PER_WORKER": None, "MAX_WORKER_MEMORY": None,
    "MAX_QUEUE": None, "CONNECT_TIMEOUT": 5.0, "STATE_DIR": None, "FSYNC": "everysec",
    "MAX_PAYLOAD": 10 * 1024 * 1024, "JOURNAL_LIMIT": 64 * 1024 * 1024,
    "MAX_CONNECTIONS": 4096, "SCHEDULE": None, "RETRY": None, "MAX_TASK_MEMORY": None,
    "POOLS": None, "PREFETCH": 8,
}
# The keys of one OPTIONS["POOLS"] entry: its queues and size, and the limits it may override
# (None: the backend's own option).
POOL_KEYS = {"queues": None, "workers": None, "threads": None, "TIME_LIMIT": "time_limit",
             "MAX_TASK_MEMORY": "max_task_memory", "MAX_WORKER_MEMORY": "max_worker_memory",
             "MAX_TASKS_PER_WORKER": "max_tasks_per_worker"}


class ConfigError(ValueError):
    """An OPTIONS value is wrong; the message names the key and the fix."""


def _number(options, key, kind=int, minimum=1, where="OPTIONS"):
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and int(value) != value) or value < minimum:
        raise ConfigError(f"{where}[{key!r}] must be a {'whole ' if kind is int else ''}number "
                          f">= {minimum}, got {value!r}.")
    return kind(value)


def _time_limit(options, where="OPTIONS"):
    """TIME_LIMIT: seconds > 0, or None. 0 is refused: it would kill every task on the first
    tick, and it reads as "no limit" to someone who meant that (leave it out, or None)."""
    value = options.get("TIME_LIMIT")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{where}['TIME_LIMIT'] must be a number of seconds > 0, got "
                          f"{value!r}{': 0 would end every task at once' if value == 0 else ''}"
                          f". For no limit, leave it out (or None).")
    return float(value)


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
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise ConfigError(f"OPTIONS['ADDRESS'] {path!r}: {blocker} is a file, not a directory, "
                          "so no socket can be made there. Choose a path in a directory, e.g. "
                          "/run/<project>/tasks.sock.")
    return path


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
            f"{alias!r}; valid keys are {', '.join(sorted(DEFAULTS))}.")
    opts = {**DEFAULTS, **options}
    if opts["POOLS"] is not None:
        for key in ("WORKERS", "MAX_WORKERS"):
            if opts[key] is not None:
                raise ConfigError(f"give each entry of OPTIONS['POOLS'] its 'workers', not "
                                  f"OPTIONS[{key!r}] beside POOLS.")
    workers, threads = _pool_size(opts, kind)
    authkey = _authkey(opts, secret_key, alias)
    address, embedded = _address(opts, alias, settings_module, authkey)
    if (embedded or opts["AUTOSTART"]) and not settings_module:
        raise ConfigError("worker processes load Django from DJANGO_SETTINGS_MODULE, which is "
                          "not set; set it (settings.configure() is not enough for workers).")
    try:
        schedule = schedules.validate(opts["SCHEDULE"], queues=tuple(sorted(queues)),
                                      default_timezone=time_zone or "UTC")
    except schedules.ScheduleError as exc:
        raise ConfigError(str(exc)) from None

    limits = {
        "time_limit": _time_limit(opts),
        "max_tasks_per_worker": _number(opts, "MAX_TASKS_PER_WORKER"),
        "max_worker_memory": _number(opts, "MAX_WORKER_MEMORY"),
        "max_task_memory": _number(opts, "MAX_TASK_MEMORY"),
    }
    pool_list = pools(opts["POOLS"], kind=kind, queues=tuple(sorted(queues)), threads=threads,
                      defaults=limits)
    if pool_list:
        workers = sum(p["workers"] for p in pool_list)
    return Config(
        alias=alias, kind=kind, workers=workers, threads=threads, pools=pool_list,
        max_results=_number(opts, "MAX_RESULTS"),
        result_ttl=_number(opts, "RESULT_TTL", float, 0),
        address=address, embedded=embedded, autostart=bool(opts["AUTOSTART"]), authkey=authkey,
        time_limit=_time_limit(opts),
        max_tasks_per_worker=_number(opts, "MAX_TASKS_PER_WORKER"),
        max_worker_memory=_number(opts, "MAX_WORKER_MEMORY"),
        max_queue=_number(opts, "MAX_QUEUE"),
        connect_timeout=_number(opts, "CONNECT_TIMEOUT", float, 0.1),
        retry=_retry(opts["RETRY"]),
        max_task_memory=_number(opts, "MAX_TASK_MEMORY"),
        queues=tuple(sorted(queues)), settings_module=settings_module,
        state_dir=_state_dir(opts), fsync=_fsync(opts),
        max_payload=_number(opts, "MAX_PAYLOAD", minimum=1024),
        journal_limit=_number(opts, "JOURNAL_LIMIT", minimum=4096),
        max_connections=_number(opts, "MAX_CONNECTIONS"), schedules=schedule,
        prefetch=_prefetch(opts),
    )


def _prefetch(opts):
    """OPTIONS["PREFETCH"]: tasks a worker thread may hold at once (the one it runs and the ones
    reserved behind it); 1 turns prefetch off."""
    value = _number(opts, "PREFETCH")
    if value is None:
        raise ConfigError("OPTIONS['PREFETCH'] must be a whole number >= 1 (1: no prefetch), "
                          "got None.")
    if value > 256:
        raise ConfigError(f"OPTIONS['PREFETCH'] must be at most 256, got {value}: a higher "
                          f"priority task may wait behind PREFETCH - 1 reserved ones.")
    return value


def _pool_size(opts, kind):
    """(worker processes, threads each) from WORKERS, THREADS and MAX_WORKERS."""
    workers = _number(opts, "WORKERS")
    threads = _number(opts, "THREADS")
    max_workers = _number(opts, "MAX_WORKERS")
    if kind == "process":
        if workers is not None and max_workers is not None:
            raise ConfigError(
                "give WORKERS or MAX_WORKERS (its django-tasks-local name), not both.")
        return workers or max_workers or os.cpu_count() or 1, threads or 1
    if workers not in (None, 1):
        raise ConfigError("ThreadPoolBackend runs one worker process; set THREADS (or "
                          "MAX_WORKERS) for its thread count, or use ProcessPoolBackend.")
    if threads is not None and max_workers is not None:
        raise ConfigError("give THREADS or MAX_WORKERS (its django-tasks-local name), not both.")
    return 1, threads or max_workers or min(32, (os.cpu_count() or 1) + 4)


def _authkey(opts, secret_key, alias):
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
    return authkey


def _address(opts, alias, settings_module, authkey):
    """(address, embedded): ADDRESS parsed, or the embedded socket of this project and alias."""
    if opts["ADDRESS"] is not None:
        return parse_address(opts["ADDRESS"]), False
    # One embedded server per project and alias: every process of the same project finds it.
    digest = hashlib.sha256(b"%s\0%s\0%s" % (
        (settings_module or "").encode(), alias.encode(), authkey)).hexdigest()[:16]
    try:
        directory = runtime_dir()
    except UnsafePath as exc:
        raise ConfigError(f"{exc} (No OPTIONS['ADDRESS'] is set: the embedded server's socket "
                          f"goes in that directory; an ADDRESS elsewhere avoids it.)") from None
    return os.path.join(directory, f"{digest}.sock"), True


def _state_dir(opts):
    state_dir = opts["STATE_DIR"]
    if state_dir is None:
        return None
    if not isinstance(state_dir, (str, os.PathLike)) or not os.fspath(state_dir):
        raise ConfigError(f"OPTIONS['STATE_DIR'] must be a directory path, got {state_dir!r}.")
    return os.path.abspath(os.fspath(state_dir))


def _fsync(opts):
    if opts["FSYNC"] not in FSYNC_MODES:
        raise ConfigError(f"OPTIONS['FSYNC'] must be one of {', '.join(map(repr, FSYNC_MODES))}"
                          f", got {opts['FSYNC']!r}.")
    return opts["FSYNC"]


def _retry(value):
    """OPTIONS["RETRY"]: a dict with @retry's keys -> the record form (class paths for `on`)."""
    from ..protocol.retry_policy import normalize

    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError("OPTIONS['RETRY'] must be a dict with keys of @retry (max_attempts, "
                          f"delay, factor, max_delay, on), got {value!r}.")
    try:
        return normalize(value, "OPTIONS['RETRY']")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def pools(value, *, kind, queues, threads, defaults):
    """OPTIONS["POOLS"] -> a tuple of normalised pool dicts ({"name", "queues", "workers",
    "threads", "time_limit", "max_task_memory", "max_worker_memory", "max_tasks_per_worker"}),
    or () without POOLS: one pool then serves every queue with WORKERS x THREADS. A queue that
    no pool serves is the system check error E002 (SharedBackend.check), not an error here."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        raise ConfigError("OPTIONS['POOLS'] must be a dict of pool name -> {'queues': [...], "
                          "'workers': n, ...}, e.g. {'web': {'queues': ['default'], "
                          f"'workers': 2}}}}; got {value!r}.")
    out = []
    for name, entry in value.items():
        where = f"OPTIONS['POOLS'][{name!r}]"
        if not isinstance(name, str) or not name or not name.replace("-", "_").isidentifier():
            raise ConfigError(f"OPTIONS['POOLS'] names must be identifiers such as 'reports' "
                              f"(letters, digits, _ and -), got {name!r}.")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a dict with 'queues', got {entry!r}.")
        unknown = sorted(set(entry) - set(POOL_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid "
                              f"keys are {', '.join(POOL_KEYS)}.")
        served = entry.get("queues")
        if isinstance(served, str) or not isinstance(served, (list, tuple)) or not served:
            raise ConfigError(f"{where}: 'queues' must be a non-empty list of queue names, got "
                              f"{served!r}.")
        missing = [q for q in served if q not in queues]
        if missing:
            raise ConfigError(f"{where}: queue(s) {', '.join(map(repr, missing))} not in this "
                              f"backend's QUEUES ({', '.join(map(repr, queues))}); add them "
                              f"there or remove them from the pool.")
        n_workers = _number(entry, "workers", where=where) or 1
        if kind == "thread" and n_workers != 1:
            raise ConfigError(f"{where}: a ThreadPoolBackend pool runs one worker process; set "
                              f"its 'threads', or use ProcessPoolBackend.")
        pool = {"name": name, "queues": sorted(set(served)), "workers": n_workers,
                "threads": _number(entry, "threads", where=where) or threads}
        for key, field_name in POOL_KEYS.items():
            if field_name is None:
                continue
            if key == "TIME_LIMIT" and key in entry:
                pool[field_name] = _time_limit(entry, where=where)
            elif key in entry:
                pool[field_name] = _number(entry, key, int, 1, where=where)
            else:
                pool[field_name] = defaults[field_name]
        out.append(pool)
    return tuple(out)


def unserved_queues(config):
    """The queues of QUEUES that no pool serves (always none without POOLS)."""
    if not config.pools:
        return []
    served = {q for pool in config.pools for q in pool["queues"]}
    return [q for q in config.queues if q not in served]
