"""Command line of `python -m stress` (see stress/harness/run.py for what runs).

    argv -> parse_args() -> args with defaults filled in (--quick ones where it says so),
            args.fault_set, args.mix_weights; bad flags end with a usage error naming the fix
"""

import argparse
import os
import random

from django_tasks_shared.protocol.config import FSYNC_MODES

QUICK = {"tasks": 400, "clients": 3, "workers": 3, "kill_every": 1.0, "restarts": 2,
         "time_limit": 2.0, "window": 30, "max_results": 150, "restart_signal": "both",
         "flows": 16}
DEFAULT_MIX = "noop=68,cpu=10,sleep=10,fail=5,flaky=2,crash=3,hang=1,hog=1"
WORKLOADS = ("noop", "cpu", "sleep", "fail", "flaky", "crash", "hang", "hog")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m stress",
        description="Stress django-tasks-shared with many clients and injected faults, then "
                    "check that nothing was lost, run twice or misreported.")
    p.add_argument("--quick", action="store_true",
                   help="a short run for the test suite (%s unless given)" % ", ".join(
                       f"{k.replace('_', '-')}={v}" for k, v in QUICK.items()))
    p.add_argument("--tasks", type=int, help="tasks enqueued in total (default 2000)")
    p.add_argument("--clients", type=int, help="client processes (default 4)")
    p.add_argument("--mix", default=DEFAULT_MIX,
                   help="workload weights, from %s (default %%(default)s)" % ", ".join(WORKLOADS))
    p.add_argument("--faults", default="kill,restart-server",
                   help="comma-separated: kill, restart-server, stall, enospc (the STATE_DIR on a "
                        "tmpfs the harness fills and frees; root only), or none (default "
                        "%(default)s)")
    p.add_argument("--enospc-every", type=float, default=5.0, metavar="SECONDS",
                   help="with enospc: mean seconds between two fills of the disk (each lasts "
                        "0.5-3 s; default %(default)s)")
    p.add_argument("--enospc-size", default="64m",
                   help="with enospc: size of the tmpfs (mount's size=, default %(default)s)")
    p.add_argument("--kill-every", type=float, help="seconds between worker SIGKILLs (default 1)")
    p.add_argument("--restarts", type=int,
                   help="server restarts, evenly spaced over the run (default 1)")
    p.add_argument("--restart-signal", choices=("kill", "term", "both"),
                   help="how the server is stopped for restart-server: SIGKILL (a crash), "
                        "SIGTERM (a graceful drain, then exit), or both in turn starting with "
                        "SIGKILL (default kill; --quick: both)")
    p.add_argument("--stall-every", type=float,
                   help="stall: seconds between two SIGSTOPs of the server, x 0.5..1.5 "
                        "(default 10; --quick: 4)")
    p.add_argument("--stall-seconds", metavar="MIN-MAX",
                   help="stall: how long the server stays stopped, drawn from MIN-MAX seconds "
                        "(default 1.5-4 x CONNECT_TIMEOUT: some stalls end within the 3 x "
                        "CONNECT_TIMEOUT that a call keeps trying, some past it)")
    p.add_argument("--connect-timeout", type=float,
                   help="OPTIONS['CONNECT_TIMEOUT'] of the server and the clients (default 5; "
                        "1 with the stall fault, to keep the stalls short)")
    p.add_argument("--address", help="use the server at this socket path or host:port (start "
                   "it with DJANGO_SETTINGS_MODULE=stress.harness.settings); default: a private "
                   "one")
    p.add_argument("--workers", type=int, help="WORKERS of the server the harness starts "
                   "(default: CPU count)")
    p.add_argument("--time-limit", type=float,
                   help="TIME_LIMIT seconds > 0 (default 4; --quick: 2); keep it well above the "
                        "longest legitimate task on a saturated machine")
    p.add_argument("--max-worker-memory", type=int, default=100, help="MAX_WORKER_MEMORY MiB")
    p.add_argument("--max-results", type=int, help="MAX_RESULTS (default 1000)")
    p.add_argument("--window", type=int, help="tasks in flight per client (default 100)")
    p.add_argument("--deferred", type=float, default=3.0, help="%% of tasks with a run_after")
    p.add_argument("--flows", type=int,
                   help="workflow tasks per client, beside --tasks: @unique over 3 shared keys, "
                        "@limit(concurrency=2), @limit(rate='8/s') and after() chains, checked "
                        "by their own invariants (default 40; --quick: 16; 0: none)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--max-wait", type=float, default=90.0,
                   help="seconds without progress (no task finished server-wide) after which "
                        "a client calls its unfinished tasks lost")
    p.add_argument("--state-dir", metavar="DIR",
                   help="OPTIONS['STATE_DIR'] of the server the harness starts (an empty or new "
                        "directory; kept after the run). Then a server restart must lose "
                        "nothing: only tasks RUNNING at a server SIGKILL may end WorkerLost")
    p.add_argument("--fsync", choices=FSYNC_MODES,
                   help="OPTIONS['FSYNC'] with --state-dir (default everysec)")
    p.add_argument("--journal-limit", type=int, metavar="BYTES",
                   help="OPTIONS['JOURNAL_LIMIT'] with --state-dir: a small one makes the server "
                        "compact (new journal + snapshot) many times during the run")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--keep", action="store_true", help="keep the work directory (ledger etc.)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = p.parse_args(argv)
    defaults = {"tasks": 2000, "clients": 4, "workers": os.cpu_count() or 2,
                "kill_every": 1.0, "restarts": 1, "time_limit": 4.0, "window": 100,
                "max_results": 1000, "restart_signal": "kill", "flows": 40}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick and key in QUICK else value)
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    faults = {f.strip() for f in args.faults.split(",") if f.strip() and f.strip() != "none"}
    unknown = faults - {"kill", "restart-server", "stall", "enospc"}
    if unknown:
        p.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    args.fault_set = faults
    if args.connect_timeout is None:
        args.connect_timeout = 1.0 if "stall" in faults else 5.0
    if args.stall_every is None:
        args.stall_every = 4.0 if args.quick else 10.0
    if args.stall_seconds is None:
        args.stall_seconds = (1.5 * args.connect_timeout, 4.0 * args.connect_timeout)
    else:
        try:
            low, _, high = args.stall_seconds.partition("-")
            args.stall_seconds = (float(low), float(high or low))
            if not 0 < args.stall_seconds[0] <= args.stall_seconds[1]:
                raise ValueError
        except ValueError:
            p.error(f"--stall-seconds takes MIN-MAX seconds, e.g. 1.5-4, got "
                    f"{args.stall_seconds!r}")
    if "stall" in faults and args.address:
        p.error("the stall fault SIGSTOPs the server the harness starts: drop --address")
    try:
        mix = {}
        for part in args.mix.split(","):
            name, _, weight = part.partition("=")
            if name.strip() not in WORKLOADS:
                raise ValueError(f"unknown workload {name.strip()!r}")
            mix[name.strip()] = float(weight)
        if not any(mix.values()):
            raise ValueError("all weights are zero")
    except ValueError as exc:
        p.error(f"--mix: {exc}")
    args.mix_weights = mix
    if "enospc" in faults and args.state_dir:
        p.error("--faults enospc puts the STATE_DIR on a tmpfs of its own: drop --state-dir")
    if "enospc" in faults and args.address:
        p.error("--faults enospc needs the server the harness starts: drop --address")
    if (args.fsync or args.journal_limit) and not args.state_dir and "enospc" not in faults:
        p.error("--fsync and --journal-limit need --state-dir (they tune the state "
                "directory's journal)")
    if args.state_dir:
        if args.address:
            p.error("--state-dir configures the server the harness starts; with --address, "
                    "start that server with OPTIONS['STATE_DIR'] yourself and drop --state-dir")
        args.state_dir = os.path.abspath(args.state_dir)
        if os.path.exists(args.state_dir) and not os.path.isdir(args.state_dir):
            p.error(f"--state-dir {args.state_dir} is a file, not a directory")
        leftovers = [n for n in os.listdir(args.state_dir)
                     if n.startswith(("snapshot-", "journal-"))] if os.path.isdir(
                         args.state_dir) else []
        if leftovers:
            p.error(f"--state-dir {args.state_dir} holds the state of an earlier run "
                    f"({', '.join(sorted(leftovers)[:3])}...): its tasks would run again and "
                    f"confuse the checker. Give an empty or new directory")
        args.fsync = args.fsync or "everysec"
    if args.tasks < 1 or args.clients < 1:
        p.error("--tasks and --clients must be at least 1")
    return args


