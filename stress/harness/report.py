"""The report table of a stress run (what `python -m stress` prints), from check()'s report.

    check.check() -> report dict -> render() -> text (config, tasks, figures, invariants)
"""

from . import durable as harness_durable
from . import stall as harness_stall


def render(report):
    c, t, f = report["config"], report["tasks"], report["faults"]
    lines = ["", "django-tasks-shared stress report", "=" * 33]

    def row(name, value):
        lines.append(f"  {name:<22} {value}")

    row("server", f"{c['address']} ({'existing' if c['external'] else 'started, AUTOSTART'}), "
        f"{c['workers']} workers x {c['threads']} thread(s)")
    row("limits", f"TIME_LIMIT={c['time_limit']} s, MAX_WORKER_MEMORY={c['max_worker_memory']} "
        f"MiB, MAX_RESULTS={c['max_results']}")
    row("run", f"{c['clients']} clients, {c['tasks']} tasks, mix {c['mix']}, seed {c['seed']}")
    if c.get("flows"):
        row("workflows", f"{c['flows']} per client: @unique (3 shared keys), "
            f"@limit(concurrency=2), @limit(rate='8/s'), after() chains (flows.py)")
    row("faults requested", f"{', '.join(c['faults']) or 'none'} (kill every {c['kill_every']} "
        f"s, {c['restarts']} restart(s), {c['restart_signal']}"
        + (f"; stall every ~{c['stall_every']:g} s for {c['stall_seconds'][0]:g}-"
           f"{c['stall_seconds'][1]:g} s, CONNECT_TIMEOUT {c['connect_timeout']:g} s"
           if "stall" in c["faults"] else "") + ")")
    row("tasks", f"{t['enqueued']} enqueued, {t['terminal']} terminal ({t['successful']} "
        f"SUCCESSFUL, {t['failed']} FAILED), {t['lost_with_server']} lost with the server, "
        f"{t['missing'] + t['unfinished']} lost otherwise")
    row("retries", f"{t['retried']} retried attempt(s) in the results (flaky tasks); the last "
        f"server counted {t['retried_server_counter']}")
    row("wall time", f"{report['run_seconds']:.1f} s (clients start-up included); first "
        f"enqueue to last result {report['load_seconds']:.1f} s")
    row("throughput", f"{report['throughput_per_s']} tasks/s (first enqueue to last result, all "
        "workloads, faults included)")
    for name, lat in report["latency_ms"].items():
        if lat["n"]:
            row(f"latency {name}", f"p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  "
                f"p99 {lat['p99']:.1f} ms  (enqueue -> finished, n={lat['n']})")
    row("worker kills", f"{f['worker_kills']} injected, {f['tasks_lost_to_kills']} task(s) "
        f"WorkerLost with them, workers replaced")
    row("server restarts", f"{f['server_restarts']} injected, {f['server_restarts_recovered']} "
        f"recovered (AUTOSTART, {', '.join(f'{x:.2f} s' for x in f['recovery_seconds']) or '-'})"
        f", ServerUnavailable seen {f['client_saw_server_unavailable']}x")
    harness_stall.row(report, row)
    row("cross-client lookups", f"{report['lookups']['cross_client']}")
    r = report["results"]
    row("results stored", f"max {r['max_stored']} / {r['max_results']} "
        f"({r['evicted']} evicted, LRU, all servers)")
    for pid, s in report["server_rss"].items():
        row(f"server RSS pid {pid}", f"{s['first_third_mib']} -> {s['last_third_mib']} MiB "
            f"(peak {s['peak_mib']})")
    if report.get("durability"):
        harness_durable.render(report["durability"], row, lines)
    d = report.get("disk")
    if d:
        row("disk full (enospc)", f"{d['fills']} fill(s), {d['seconds_full']} s full, "
            f"{d['enqueues_refused']} enqueue(s) refused (StorageUnavailable), resumed "
            f"{d['resume_seconds_max']} s at most after the space came back")
    lines.append("  outcomes by workload:")
    for w, counts in sorted(report["tasks"]["outcomes_by_workload"].items()):
        lines.append(f"    {w:<6} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines.append("")
    lines.append("invariants:")
    for i in report["invariants"]:
        lines.append(f"  {'PASS' if i['ok'] else 'FAIL'}  {i['name']}: {i['detail']}")
        for failure in i["failures"][:10]:
            lines.append(f"          - {failure}")
    lines.append("")
    lines.append("RESULT: " + ("PASS" if report["passed"] else "FAIL"))
    return "\n".join(lines)
