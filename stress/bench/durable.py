"""W1 with a STATE_DIR: what the journal costs, per FSYNC mode (in `python -m stress.bench`).

    prepare(): BENCH_STATE_ROOT = a new directory (before django.setup(); settings.py then
               defines the aliases state_everysec, state_always, state_never, each an embedded
               server with 2 workers and STATE_DIR = BENCH_STATE_ROOT/<mode>)
    per repeat, in rotating order:  in memory (alias default) | everysec | always | never
        W1 each: enqueue 2,000 no-op tasks, then wait_all -> tasks/s, server CPU per task
    ratio = W1 with STATE_DIR / in-memory W1 of the SAME repeat (paired, so that the machine's
            noise moves both); summary: median ratio per mode, and how many repeats met the
            target of issue 7 (FSYNC="everysec" >= 0.85x in-memory)

The in-memory figure here is its own W1 run, next to the durable ones, not the one of the main
table (which runs minutes apart).
"""

import os
import statistics
import tempfile

MODES = ("memory", "everysec", "always", "never")
TARGET = 0.85


def prepare():
    root = tempfile.mkdtemp(prefix="dts-bench-state-")
    os.environ["BENCH_STATE_ROOT"] = root
    return root


def make_systems(shared_cls, args, counts):
    """One system per mode, built on the main benchmark's Shared system (same W1 code)."""

    class StateW1(shared_cls):
        def __init__(self, mode):
            super().__init__(args, counts)
            from django.tasks import task_backends

            self.mode = mode
            self.name = f"w1-{mode}"
            alias = "default" if mode == "memory" else f"state_{mode}"
            self.backend = task_backends[alias]
            self.noop = self.tasks.noop.using(backend=alias)
            self.label = ("in memory" if mode == "memory" else
                          f'STATE_DIR, FSYNC="{mode}"')

        def enqueue_noop(self):
            return self.noop.enqueue()

        def start(self):
            self.wait_all([self.noop.enqueue() for _ in range(20)])
            health = self.workers_ready()
            state = health.get("state") or {}
            want = None if self.mode == "memory" else (
                os.path.join(os.environ["BENCH_STATE_ROOT"], self.mode), self.mode)
            have = (state.get("dir"), state.get("fsync")) if state else None
            if have != want:  # e.g. a server of another run answers on the embedded socket
                raise RuntimeError(f"W1 {self.mode}: the server (pid {self.server_pid}) has "
                                   f"STATE_DIR/FSYNC {have}, expected {want}; stop it first")

    return [StateW1(mode) for mode in MODES]


def repeat(systems, rep, n, w1_fn, samples):
    """One paired round: W1 of every mode, the order rotated by `rep`."""
    k = rep % len(systems)
    for system in systems[k:] + systems[:k]:
        figures = w1_fn(system, n, system.wait_all)
        samples.setdefault(system.mode, []).append(
            {"tps": figures["w1_tps"], "server_cpu_us": figures["w1_server_cpu_us"]})


def summarize(samples):
    memory = [s["tps"] for s in samples["memory"]]
    out = {}
    for mode in MODES:
        tps = [s["tps"] for s in samples[mode]]
        ratios = [t / m for t, m in zip(tps, memory, strict=True)]
        cpu = [s["server_cpu_us"] for s in samples[mode]
               if isinstance(s["server_cpu_us"], (int, float))]
        out[mode] = {"tps": tps, "tps_median": statistics.median(tps), "ratios": ratios,
                     "ratio_median": statistics.median(ratios),
                     "server_cpu_us_median": statistics.median(cpu) if cpu else None}
    everysec = out["everysec"]["ratios"]
    out["target"] = {"what": f'W1 FSYNC="everysec" >= {TARGET}x in-memory',
                     "median": out["everysec"]["ratio_median"],
                     "met": sum(r >= TARGET for r in everysec), "repeats": len(everysec),
                     "pass": out["everysec"]["ratio_median"] >= TARGET}
    return out


def report_lines(summary, n):
    lines = ["", f"W1 with a STATE_DIR (issue 7): {n:,} no-op tasks, enqueue all then wait_all; "
             f"each ratio against the in-memory W1 of the same repeat (median of repeats)"]
    head = (f"{'mode':<26} {'tasks/s':>9} {'ratio':>7} {'server CPU/task us':>19}  "
            f"ratio per repeat")
    lines += [head, "-" * len(head)]
    for mode in MODES:
        s = summary[mode]
        name = "in memory" if mode == "memory" else f'STATE_DIR, FSYNC="{mode}"'
        cpu = s["server_cpu_us_median"]
        lines.append(f"{name:<26} {s['tps_median']:>9,.0f} {s['ratio_median']:>6.2f}x "
                     f"{(f'{cpu:,.0f}' if cpu is not None else '-'):>19}  "
                     + " ".join(f"{r:.2f}" for r in s["ratios"]))
    t = summary["target"]
    lines.append(f"  {'PASS' if t['pass'] else 'MISS'}  {t['what']:<40} median "
                 f"{t['median']:.2f}x, met in {t['met']} of {t['repeats']} repeat(s)")
    return lines
