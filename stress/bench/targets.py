"""The speed targets of issue 9, judged per repeat and summed up over the repeats.

    samples: {system name: [figures of repeat 1, figures of repeat 2, ...]}  (runner.py)
    per repeat r: value = TARGET.value({name: samples[name][r]}) -- a ratio of two systems of
                  the SAME repeat (paired: the machine's noise moves both), or a figure of ours
    summary per target: the values, their median, how many repeats met it ("met 7/10"), and
                  PASS when the median meets it

A value that can't be had (a system skipped, a figure "n/a") is None: it counts as not met and
is left out of the median; with no value at all the target shows as skipped.
"""

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    label: str
    num: tuple  # (system, figure)
    den: tuple | None  # (system, figure) for a ratio, None for a figure of ours alone
    op: str  # ">=" or "<="
    limit: float
    unit: str

    def value(self, rep):
        a = _figure(rep, *self.num)
        if self.den is None:
            return a
        b = _figure(rep, *self.den)
        return a / b if a is not None and b else None

    def met(self, value):
        if value is None:
            return False
        return value >= self.limit if self.op == ">=" else value <= self.limit


def _figure(rep, system, key):
    value = rep.get(system, {}).get(key)
    return value if isinstance(value, (int, float)) else None


TARGETS = [
    Target("W1 portable (refresh() every 1 ms) >= 1.0x local", ("shared", "w1_portable_tps"),
           ("local", "w1_portable_tps"), ">=", 1.0, "x"),
    Target("W1 wait_all >= 1.6x local", ("shared", "w1_tps"), ("local", "w1_tps"), ">=", 1.6,
           "x"),
    Target("W1 wait_all >= 0.7x raw executor", ("shared", "w1_tps"), ("raw", "w1_tps"), ">=",
           0.7, "x"),
    Target("W1 server CPU/task <= 70 us", ("shared", "w1_server_cpu_us"), None, "<=", 70.0,
           " us"),
    Target("W1 worker CPU/task <= 70 us", ("shared", "w1_worker_cpu_us"), None, "<=", 70.0,
           " us"),
    Target("W2 blocking wait() p50 <= 0.45 ms", ("shared", "w2_wait_p50_ms"), None, "<=", 0.45,
           " ms"),
    Target("W4 p50 <= 110 us", ("shared", "w4_p50_us"), None, "<=", 110.0, " us"),
    Target("W5 64 clients >= 0.9x one client", ("shared", "w5_ratio"), None, ">=", 0.9, "x"),
    Target("W1 wait_all >= 3x Huey+Redis", ("shared", "w1_tps"), ("huey", "w1_tps"), ">=", 3.0,
           "x"),
]


def judge(samples, targets=TARGETS):
    """[{target, values, median, met, repeats, pass}] over every repeat in `samples`."""
    repeats = max((len(v) for v in samples.values()), default=0)
    out = []
    for t in targets:
        values = [t.value({name: figures[r] for name, figures in samples.items()
                           if r < len(figures)}) for r in range(repeats)]
        known = [v for v in values if v is not None]
        median = statistics.median(known) if known else None
        out.append({"target": t.label, "values": values, "median": median,
                    "met": sum(t.met(v) for v in values), "repeats": repeats,
                    "pass": t.met(median) if known else None, "unit": t.unit})
    return out


def report_lines(verdicts):
    lines = ["", "targets (issue 9): median of the per-repeat values (each a ratio within one "
             "repeat), met in how many repeats"]
    for v in verdicts:
        if v["median"] is None:
            lines.append(f"  SKIP  {v['target']:<50} (no figure: system skipped or n/a)")
            continue
        each = " ".join("-" if x is None else f"{x:.2f}" for x in v["values"])
        lines.append(f"  {'PASS' if v['pass'] else 'MISS'}  {v['target']:<50} median "
                     f"{v['median']:.2f}{v['unit']}, met {v['met']}/{v['repeats']}  [{each}]")
    return lines
