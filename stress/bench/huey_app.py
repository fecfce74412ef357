"""The Huey instance and tasks of the benchmark (`python -m stress.bench`, stress/bench/huey.py).

`huey_consumer stress.bench.huey_app.huey -k process -w 2` imports this module in the consumer
and the bench imports it to enqueue, so both find the private redis-server the same way: its
unix socket is BENCH_REDIS_SOCKET (set by the bench before either imports this).

    notify_result=True  a blocking Result.get() waits with BLPOP on a notify key, Huey's fastest
                        way to wait (the default polls with a 50 ms back-off)
    store_none=True     noop() returns None like the Django task; without it no result would be
                        stored and a finished noop could not be told from a pending one
"""

import os

from huey import RedisHuey

from stress.common.tasks import _burn

huey = RedisHuey("dts-bench", url="unix://" + os.environ.get("BENCH_REDIS_SOCKET", "/nonexistent"),
                 results=True, store_none=True, notify_result=True)


@huey.task()
def noop():
    return None


@huey.task()
def burn(n):
    return _burn(n)
