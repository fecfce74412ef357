"""The storm's report: percentiles of the probe, PASS/MISS per target of issue 9, the text.

    report dict (run.py) -> verdicts() -> [{target, result, measured}] -> print_report()
"""

import math

BACK_WITHIN = 2.0  # seconds: threads and RSS must be back at the baseline this soon after close
P99_LIMIT_MS = 50.0
IDLE_COST_LIMIT = 64 * 1024  # bytes per idle (authenticated) connection


def percentiles(samples):
    """p50/p99 in ms of [t0, seconds|None, error] samples; a failed sample counts as endless."""
    if not samples:
        return {"n": 0, "failed": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    values = sorted(float("inf") if s[1] is None else s[1] * 1000 for s in samples)

    def at(q):  # nearest rank: the smallest value with at least q of the samples at or below
        return round(values[max(0, math.ceil(q * len(values)) - 1)], 2)

    return {"n": len(values), "failed": sum(s[1] is None for s in samples), "p50_ms": at(0.50),
            "p99_ms": at(0.99), "max_ms": at(1.0)}


def verdicts(report, args):
    """(target, PASS|MISS|n/a, measured) for each target of issue 9. A phase that could not
    run (the server had not recovered from the last one) misses its targets."""
    out = []
    skipped = f"not measured: {report.get('skipped')}"
    during = report["probe"]["during"]
    p99 = during["p99_ms"]
    # A call that failed (ServerUnavailable after the client's timeout) is an outage for that
    # client, not a slow call: none may fail, whatever the p99.
    out.append(("real client p99 < 50 ms during the storms, no call failed",
                p99 is not None and p99 < P99_LIMIT_MS and not during["failed"],
                f"p99 {p99} ms, {during['failed']} of {during['n']} failed"))
    for name in ("raw", "half"):
        if name not in args.phases:
            continue
        phase = report.get(name)
        target = f"{name}: threads and RSS back at baseline within {BACK_WITHIN:g} s"
        if phase is None:
            out.append((target, False, skipped))
            out.append((f"{name}: connections accepted as MAX_CONNECTIONS allows", False, skipped))
            continue
        back = phase["back_after_s"]
        out.append((target, back is not None and back <= BACK_WITHIN,
                    f"back after {back} s" if back is not None else
                    f"not back after {args.settle:g} s (threads {phase['threads_after_2s']}, "
                    f"RSS {phase['rss_after_2s'] / (1 << 20):.1f} MiB at 2 s)"))
        out.append(_counts_verdict(name, phase, args.max_connections))
    idle = report.get("idle")
    target = f"an idle connection costs < {IDLE_COST_LIMIT >> 10} KiB"
    if "idle" not in args.phases:
        pass
    elif idle is None:
        out.append((target, False, skipped))
    elif idle["cost_bytes"] is None:
        out.append((target, False, "no connection could be authenticated"))
    else:
        out.append((target, idle["cost_bytes"] < IDLE_COST_LIMIT,
                    f"{idle['cost_bytes'] / 1024:.1f} KiB ({idle['counts']['handshaken']} idle)"))
    exit_s = report["sigterm_exit_s"]
    if report.get("exited_before_sigterm") is not None:
        out.append(("SIGTERM exits within --grace + 1 s", False,
                    f"the server had exited before (code {report['exited_before_sigterm']})"))
    elif report["args"]["address"]:
        out.append(("SIGTERM exits within --grace + 1 s", None, "not ours (--address)"))
    else:
        out.append(("SIGTERM exits within --grace + 1 s",
                    exit_s is not None and exit_s <= args.grace + 1,
                    f"{exit_s} s" if exit_s is not None else
                    f"still running after {args.sigterm_wait:g} s (then SIGKILLed)"))
    return [{"target": t, "result": "n/a" if ok is None else "PASS" if ok else "MISS",
             "measured": m} for t, ok, m in out]


def _counts_verdict(name, phase, room):
    """Below MAX_CONNECTIONS every connection is accepted; beyond it the surplus is refused,
    with the reason, and a real client is told; none simply fails."""
    counts = phase["counts"]
    measured = (f"{counts['accepted']} accepted, {counts['refused']} refused, "
                f"{counts['failed']} failed")
    if room is None or counts["requested"] < room:
        return (f"{name}: every connection accepted (and authenticated if asked), none failed",
                counts["accepted"] == counts["requested"]
                and counts["handshaken"] == counts["handshakes_requested"],
                f"{measured}, {counts['handshaken']} of {counts['handshakes_requested']} "
                f"authenticated")
    told = phase.get("real_client_refused") or ""
    return (f"{name}: beyond MAX_CONNECTIONS refused with the reason, none failed",
            counts["refused"] >= counts["requested"] - room and not counts["failed"]
            and "MAX_CONNECTIONS" in told
            and all("MAX_CONNECTIONS" in r for r in counts["reasons"]),
            f"{measured}; a real client was told: {told[:100]}")


def _mib(value):
    return "-" if value is None else f"{value / (1 << 20):.1f} MiB"


def print_report(report):
    base = report["baseline"]
    print(f"server pid {report['server_pid']}: baseline {base['threads']} threads, "
          f"RSS {_mib(base['rss'])}")
    for name in ("raw", "half"):
        if name not in report:
            continue
        p, c = report[name], report[name]["counts"]
        print(f"\n{name}: {c['requested']} connections at once ({c['handshakes_requested']} "
              f"to authenticate)")
        print(f"  accepted {c['accepted']}, refused {c['refused']}, failed {c['failed']}, "
              f"authenticated {c['handshaken']}; connect() met a full backlog "
              f"{c['backlog_retries']} times")
        print(f"  open: all connected after {c['connect_s']} s, all greeted after {c['greet_s']} s"
              + (f", all authenticated after {c['handshake_s']} s" if c["handshaken"] else "")
              + (f" (storm CPU {c['cpu_s']} s)" if "cpu_s" in c else "")
              + f"; close: {p['close_s']} s"
              + (f", done at +{p['closed_at_s']} s" if "closed_at_s" in p else ""))
        for reason, count in c["reasons"].items():
            print(f"    {count} x {reason}")
        if p.get("real_client_refused"):
            print(f"  a real client during it: {p['real_client_refused']}")
        print(f"  server threads: peak {p['peak_threads']}, 2 s after close "
              f"{p['threads_after_2s']}; RSS: peak {_mib(p['peak_rss'])}, 2 s after "
              f"{_mib(p['rss_after_2s'])}; " + (
                  f"back at baseline after {p['back_after_s']} s" if p["back_after_s"] is not None
                  else f"not back at baseline within {report['args']['settle']:g} s"))
    if report.get("skipped"):
        print(f"\n{report['skipped']}")
    idle = report.get("idle")
    if idle:
        c = idle["counts"]
        cost = idle["cost_bytes"]
        print(f"\nidle: {c['handshaken']} authenticated connections (of {c['requested']}; "
              f"all authenticated after {c['handshake_s']} s): RSS {_mib(idle['rss_before'])} "
              f"before them, {_mib(idle['rss_held'])} with them: "
              f"{'-' if cost is None else f'{cost / 1024:.1f}'} KiB each over the baseline; "
              f"{idle['threads_held']} threads ({idle['threads_per_connection']} per "
              f"connection)")
    exit_s = report["sigterm_exit_s"]
    print(f"SIGTERM{' with them open' if idle else ''}: " + (
        "not sent (--address)" if report["args"]["address"] else
        f"not sent: the server had exited (code {report['exited_before_sigterm']})"
        if report.get("exited_before_sigterm") is not None else
        f"exited after {exit_s} s" if exit_s is not None else
        f"still running after {report['args']['sigterm_wait']:g} s (SIGKILLed)"))
    probe = report["probe"]
    for when in ("before", "during"):
        q = probe[when]
        print(f"real client enqueue + wait() {when} the storms: {q['n']} samples, p50 "
              f"{q['p50_ms']} ms, p99 {q['p99_ms']} ms, max {q['max_ms']} ms, {q['failed']} failed")
    for name, q in probe.get("phases", {}).items():
        print(f"    {name}: {q['n']} samples, p50 {q['p50_ms']} ms, p99 {q['p99_ms']} ms, "
              f"max {q['max_ms']} ms, {q['failed']} failed; slowest at " + ", ".join(
                  f"+{at} s ({'failed' if ms is None else f'{ms} ms'})"
                  for at, ms in q.get("slowest", [])))
    for error in probe["errors"]:
        print(f"    {error}")
    print()
    for v in report["verdicts"]:
        print(f"{v['result']:>4}  {v['target']}: {v['measured']}")
    print(f"\nRESULT: {'PASS' if report['passed'] else 'MISS'}")
