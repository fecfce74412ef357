"""Worker pools (`OPTIONS["POOLS"]`): each pool its own workers, threads, queues and limits.

    Config.pools (normalised by client/options.py pools(); () without POOLS)
      -> pools_of(config): [Pool] (without POOLS: one pool "default" serving every queue with
         WORKERS x THREADS and the backend's limits, exactly as before pools existed)
    Supervisor.spawn(pool) -> store.register_worker(id, pid, pool=..., queues=..., max_tasks=...)
      the worker's id is all the wire carries: TaskStore.claim(worker id) pops only from the
      queues of that worker's pool (store/queue.py), and retires it at its pool's
      MAX_TASKS_PER_WORKER; the supervisor applies the pool's TIME_LIMIT and MAX_WORKER_MEMORY,
      the memory watcher its MAX_TASK_MEMORY; respawns and reloads keep each pool's count
    health: server.supervisor.pools = [{name, queues, workers_expected, workers_alive, ...}]
"""

from dataclasses import asdict, dataclass

DEFAULT_POOL = "default"


@dataclass(frozen=True)
class Pool:
    name: str
    queues: tuple | None          # None: every queue
    workers: int
    threads: int
    time_limit: float | None = None
    max_task_memory: int | None = None
    max_worker_memory: int | None = None
    max_tasks_per_worker: int | None = None

    def view(self, alive):
        """For health."""
        view = asdict(self)
        view["queues"] = None if self.queues is None else list(self.queues)
        view["workers_expected"] = view.pop("workers")
        view["workers_alive"] = alive
        return view


def pools_of(config):
    """The pools the supervisor runs for `config`."""
    if not config.pools:
        return [Pool(DEFAULT_POOL, None, config.workers, config.threads, config.time_limit,
                     config.max_task_memory, config.max_worker_memory,
                     config.max_tasks_per_worker)]
    return [Pool(p["name"], tuple(p["queues"]), p["workers"], p["threads"], p.get("time_limit"),
                 p.get("max_task_memory"), p.get("max_worker_memory"),
                 p.get("max_tasks_per_worker")) for p in config.pools]


def register_info(pool):
    """The fields the store keeps for a worker of `pool` (TaskStore.register_worker)."""
    info = {"pool": pool.name, "queues": None if pool.queues is None else list(pool.queues)}
    if pool.max_tasks_per_worker is not None:
        info["max_tasks"] = pool.max_tasks_per_worker
    return info
