"""Printing `python -m stress.bench`: the table, the ratios, the targets, the JSON file.

    samples {system: [figures per repeat]} -> picked {system: {metric: best|median of repeats}}
      -> table: one row per metric, one column per system (shared, local, raw, huey), then
         ours/local, ours/raw, ours/huey of the picked figures
      -> targets of issue 2 (on the picked figures, as before)
      -> targets of issue 9 (stress/bench/targets.py: paired per repeat, median, met k/N)
      -> W1 with a STATE_DIR (stress/bench/durable.py), when it ran
"""

import json
import os
import platform
import statistics

from . import targets as bench_targets

COLUMNS = ("shared", "local", "raw", "huey")


def pick(values, better, how):
    numbers = [v for v in values if isinstance(v, (int, float))]
    if not numbers:
        return values[0]
    if how == "median" or better is None:
        return statistics.median(numbers)
    return max(numbers) if better == "high" else min(numbers)


def fmt(value, spec):
    if isinstance(value, (int, float)):
        return spec.format(value)
    return "n/a" if str(value).startswith("n/a") else str(value)  # the legend says why


def ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return f"{a / b:.2f}x"
    return "-"


def header(args):
    return (f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
            f"{args.load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; OTHER "
            f"processes used {args.others_cpu_pct:.0f} % of the machine's CPU during the run "
            f"(noise: compare the ratios)")


def report(args, metrics, systems, samples, iterations, counts, state_samples):
    state = state_lines = None
    if state_samples:
        from . import durable as bench_durable

        state = bench_durable.summarize(state_samples)
        state_lines = bench_durable.report_lines(state, counts["w1"])
    if not systems:  # --state-only
        print(header(args))
        print("\n".join(state_lines))
        if args.json:
            write_json(args, {"counts": counts, "state": state})
        return
    how = args.pick
    names = [s.name for s in systems]
    picked = {s.name: {key: pick([f.get(key, "-") for f in samples[s.name]], better, how)
                       for key, _, _, better in metrics} for s in systems}
    for s in systems:  # W3 wall and ideal from the repeat whose "over ideal" is shown
        for sample in samples[s.name]:
            if sample["w3_over_pct"] == picked[s.name]["w3_over_pct"]:
                for key in ("w3_wall_s", "w3_ideal_s", "w3_others_cores", "w3_over_left_pct"):
                    picked[s.name][key] = sample[key]
    lines = []
    p = lines.append
    p("")
    p(f"django-tasks-shared benchmark: {header(args)}")
    p(f"counts: W1 {counts['w1']} tasks, W2 {counts['w2']} tasks per mode, W3 {counts['w3']} "
      f"tasks x {iterations:,} iterations (~50 ms), W4 {counts['w4']} lookups of "
      f"{counts['w4_ids']} ids, W5 {counts['w5']} tasks by 1 and by 64 clients; "
      f"{args.repeat} repeat(s), {how} of repeats per figure (best = highest throughput / "
      f"lowest time); W2 polling sleeps {args.poll * 1e6:.0f} us between polls, W1 portable "
      f"1 ms between passes")
    for s in systems:
        p(f"  {s.name:<6} = {s.label}")
    for name, why in getattr(args, "skipped", {}).items():
        p(f"  {name:<6} = skipped: {why}")
    p("  n/a: django-tasks-local has no blocking wait and can't see another process's results; "
      "the raw executor has no results to look up. W5 is ours alone")
    p("")
    head = (f"{'metric':<44} " + " ".join(f"{n:>12}" for n in COLUMNS)
            + f" {'ours/local':>10} {'ours/raw':>9} {'ours/huey':>9}")
    p(head)
    p("-" * len(head))
    for key, label, spec, _ in metrics:
        row = {n: picked[n][key] if n in names else "-" for n in COLUMNS}
        if all(not isinstance(v, (int, float)) for v in row.values()):
            continue  # a metric no system measured this run (e.g. Huey skipped)
        cells = " ".join(f"{fmt(row[n], spec):>12}" for n in COLUMNS)
        p(f"{label:<44} {cells} {ratio(row['shared'], row['local']):>10} "
          f"{ratio(row['shared'], row['raw']):>9} {ratio(row['shared'], row['huey']):>9}")
    ours, local, raw = picked["shared"], picked["local"], picked["raw"]
    old = [
        ("W1 >= 1.2x django-tasks-local", ours["w1_tps"] / local["w1_tps"], ">=", 1.2, "x"),
        ("W1 >= 0.6x raw executor", ours["w1_tps"] / raw["w1_tps"], ">=", 0.6, "x"),
        ("W2 p50 polled < 1.5 ms", ours["w2_poll_p50_ms"], "<", 1.5, " ms"),
        ("W2 p50 blocking wait < 1 ms", ours["w2_wait_p50_ms"], "<", 1.0, " ms"),
        ("W3 within 15 % of ideal", ours["w3_over_pct"], "<=", 15.0, " %"),
        ("W4 p50 < 120 us", ours["w4_p50_us"], "<", 120.0, " us"),
    ]
    p("")
    p(f"targets (issue 2), on the {how} figures above")
    verdicts = []
    for label, value, op, limit, unit in old:
        ok = value >= limit if op == ">=" else value < limit if op == "<" else value <= limit
        verdicts.append({"target": label, "value": value, "pass": ok})
        p(f"  {'PASS' if ok else 'MISS'}  {label:<32} measured {value:.2f}{unit}")
    issue9 = bench_targets.judge(samples)
    lines += bench_targets.report_lines(issue9)
    if state_lines:
        lines += state_lines
    print("\n".join(lines))
    if args.json:
        write_json(args, {"cpus": os.cpu_count(), "counts": counts,
                          "burn_iterations": iterations, "pick": how,
                          "poll_interval_s": args.poll,
                          "mode": "tasks_server" if args.server else "embedded",
                          "load_before": args.load_before, "load_after": os.getloadavg(),
                          "systems": {s.name: s.label for s in systems},
                          "skipped": getattr(args, "skipped", {}),
                          "samples": samples, "picked": picked, "targets": verdicts,
                          "targets_issue9": issue9, "state": state})


def write_json(args, data):
    data = {"python": platform.python_version(), "repeat": args.repeat,
            "others_cpu_pct": args.others_cpu_pct, **data}
    with open(args.json, "w") as f:
        json.dump(data, f, indent=2)
    print(f"\nwrote {args.json}")
