"""The benchmark's Huey system (stress/bench/huey.py): skipped with a how-to-install line when
redis-server is missing; when present, it starts its private redis-server and huey_consumer and
stops both by pid, leaving no process and no temp dir behind (real processes, a few seconds)."""

import os
import types

import psutil
import pytest

from stress.bench import huey as bench_huey

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_without_redis_server_the_reason_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    why = bench_huey.available()
    assert "redis-server" in why and "apt-get install redis-server" in why


@pytest.mark.skipif(bench_huey.available() is not None,
                    reason=f"Huey bench system unavailable: {bench_huey.available()}")
def test_huey_system_runs_tasks_and_stops_everything_it_started():
    system = bench_huey.Huey(types.SimpleNamespace(poll=0.0001), {}, ROOT)
    try:
        system.start()
        procs = [psutil.Process(p) for p in system.pids() + system.worker_pids]
        redis_pid, = system.other_pids()[0]
        assert redis_pid == system.redis.pid
        assert len(system.worker_pids) >= 2  # the consumer's 2 workers (and its scheduler)
        results = [system.enqueue_noop() for _ in range(5)]
        system.wait_all(results)
        assert [system.status(r) for r in results] == ["SUCCESSFUL"] * 5
        assert system.value(system.enqueue_burn(1000))["cpu"] >= 0
    finally:
        system.stop()
    _, alive = psutil.wait_procs(procs, timeout=5)
    assert not alive, f"left running: {alive}"
    assert not os.path.exists(system.tmp)
