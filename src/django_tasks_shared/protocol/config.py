"""`Config`: one backend's validated OPTIONS, as every process of the deployment sees them.

    client (client/options.py): TASKS[alias]["OPTIONS"] -> build_config() -> Config
    launcher / tasks_server:    Config.to_spec() ── JSON on the server's stdin ──> from_spec()
    server:                     serves, supervises and journals as the Config says

The server never reads Django settings: the spec is all it knows of the project.
"""

from dataclasses import asdict, dataclass, field

FSYNC_MODES = ("always", "everysec", "never")


def describe(address):
    """A socket path as it is, a TCP address as host:port."""
    return address if isinstance(address, str) else "%s:%d" % tuple(address)


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
    retry: dict | None = None              # OPTIONS["RETRY"] in record form (retry_policy.py)
    max_task_memory: int | None = None     # MiB of RSS while a task runs: killed past it
    queues: tuple = ("default",)
    settings_module: str | None = None
    state_dir: str | None = None   # None: in memory only
    fsync: str = "everysec"
    max_payload: int = 10 * 1024 * 1024
    journal_limit: int = 64 * 1024 * 1024
    max_connections: int | None = 4096
    schedules: tuple = ()         # normalised OPTIONS["SCHEDULE"] entries (schedules/entries.py)
    # normalised OPTIONS["POOLS"] entries (client/options.py pools()); (): one pool serves every
    # queue with `workers` x `threads` (supervision/pools.py)
    pools: tuple = ()

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
        spec["pools"] = [dict(pool) for pool in self.pools]
        return spec

    @classmethod
    def from_spec(cls, spec):
        spec = dict(spec, authkey=bytes.fromhex(spec["authkey"]), queues=tuple(spec["queues"]),
                    schedules=tuple(spec.get("schedules") or ()),
                    pools=tuple(spec.get("pools") or ()))
        if not isinstance(spec["address"], str):
            spec["address"] = tuple(spec["address"])
        return cls(**spec)
