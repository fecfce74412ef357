"""`python -m stress.contract {local,django,monitor,all}`: other projects' code pointed at our
backends, run by hand (each downloads a package from PyPI with pip; nothing here runs in CI).

    local    django-tasks-local 2.0's own test suite (its sdist), unmodified: a stand-in package
             named django_tasks_local (shim/) hands it our ThreadPoolBackend/ProcessPoolBackend
    django   Django's own tests/tasks/test_immediate_backend.py (Django's sdist, the installed
             version), its BACKEND strings pointed at SyncBackend (sync_backend.py: ours, with
             enqueue() returning once a real worker has run the task)
    monitor  django-tasks-monitor 0.1.0 (installed with pip --target into the work directory):
             the six ways the server ends a task, then the monitor's TaskRecord rows

    --src DIR     put DIR's django_tasks_shared first (e.g. another checkout's src: before/after)
    --keep DIR    work in DIR and keep it (default: a temporary directory, removed)

Each prints what it ran and the outcome; docs/migration.md has the figures of the last run.
"""

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHIM = os.path.join(HERE, "shim")
LOCAL_VERSION = "2.0"
MONITOR_VERSION = "0.1.0"


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True)


def download_sdist(requirement, work):
    pip("download", requirement, "--no-deps", "--no-binary", ":all:", "-d", work)
    name = requirement.split("==")[0].replace("-", "_")
    [path] = [p for p in glob.glob(os.path.join(work, "*.tar.gz"))
              if os.path.basename(p).lower().replace("-", "_").startswith(name.lower())]
    with tarfile.open(path) as tar:
        tar.extractall(work, filter="data")
    return path[:-len(".tar.gz")]


def environment(src, *paths, **extra):
    front = [src] if src else []
    return dict(os.environ, DJANGO_SETTINGS_MODULE="stress.contract.settings",
                PYTHONPATH=os.pathsep.join([*front, *paths, ROOT, *sys.path]), **extra)


def run_local(work, src):
    """django-tasks-local's suite (pytest) against our backends, through the shim."""
    tree = download_sdist(f"django-tasks-local=={LOCAL_VERSION}", work)
    # its own package, beside its tests, would be imported before the shim
    shutil.rmtree(os.path.join(tree, "django_tasks_local"))
    print(f"django-tasks-local {LOCAL_VERSION}: {tree}/tests/test_backend.py, unmodified; "
          f"django_tasks_local is {SHIM}/django_tasks_local (our backends)")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line", "-rfE",
         "--timeout", "120", "tests"],
        cwd=tree, env=environment(src, SHIM, tree), capture_output=True, text=True)
    import django_tasks_shared

    print("\n".join(line for line in proc.stdout.splitlines()
                    if "test_backend.py:" in line or line.startswith(("FAILED", "ERROR"))
                    or " passed" in line or " failed" in line))
    assert "django_tasks_local/backend.py" not in proc.stdout, django_tasks_shared  # the shim ran
    return proc.returncode


def run_django(work, src):
    """Django's ImmediateBackend tests against SyncBackend (a real server, real workers)."""
    import django

    tree = download_sdist(f"django=={django.__version__}", work)
    target = os.path.join(work, "djangotests")
    shutil.copytree(os.path.join(tree, "tests", "tasks"), os.path.join(target, "tasks"))
    path = os.path.join(target, "tasks", "test_immediate_backend.py")
    with open(path) as f:
        text = f.read()
    patched = text.replace('"django.tasks.backends.immediate.ImmediateBackend"',
                           '"stress.contract.sync_backend.SyncBackend"')
    with open(path, "w") as f:
        f.write(patched)
    print(f"Django {django.__version__}: tests/tasks/test_immediate_backend.py with its "
          f"{text.count('ImmediateBackend\"')} BACKEND string(s) pointed at "
          f"stress.contract.sync_backend.SyncBackend")
    env = environment(src, target, CONTRACT_BACKEND="stress.contract.sync_backend.SyncBackend",
                      CONTRACT_OPTIONS=json.dumps({"WORKERS": 1}))
    proc = subprocess.run([sys.executable, "-m", "django", "test", "tasks.test_immediate_backend",
                           "-v", "2"], cwd=target, env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stderr.splitlines()
             if line.endswith((" ok", "FAIL", "ERROR", "skipped")) or line.startswith(
                 ("FAIL:", "ERROR:", "AssertionError", "Ran ", "OK", "FAILED"))]
    print("\n".join(lines))
    return proc.returncode


def run_monitor(work, src):
    """django-tasks-monitor records every task from Django's signals: after the six server
    ends, which of its rows still say RUNNING or READY?"""
    site = os.path.join(work, "site")
    pip("install", "--no-deps", "--target", site, f"django-tasks-monitor=={MONITOR_VERSION}")
    socket_path = os.path.join(work, "tasks.sock")
    options = {"ADDRESS": socket_path, "WORKERS": 2, "TIME_LIMIT": 3, "MAX_TASK_MEMORY": 200,
               "STATE_DIR": os.path.join(work, "state")}
    env = environment(src, site, CONTRACT_APPS="tasks_monitor",
                      CONTRACT_DB=os.path.join(work, "monitor.sqlite3"),
                      CONTRACT_BACKEND="django_tasks_shared.ProcessPoolBackend",
                      CONTRACT_OPTIONS=json.dumps(options))
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v", "0"], env=env, check=True)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("CONTRACT_", "DJANGO_"))})
    sys.path[:0] = [p for p in ([src] if src else []) + [site]]

    def server():
        popen = subprocess.Popen([sys.executable, "-m", "django", "tasks_server", "--grace", "1"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # its workers start
        return popen

    import django

    django.setup()
    from datetime import timedelta

    from django.utils import timezone
    from tasks_monitor.models import TaskRecord

    import django_tasks_shared
    from django_tasks_shared import cancel, wait
    from stress.contract import tasks

    print(f"django-tasks-monitor {MONITOR_VERSION} with django_tasks_shared from "
          f"{os.path.dirname(django_tasks_shared.__file__)}")
    popen = server()
    cases = {}
    try:
        cases["worker lost"] = tasks.die.enqueue()
        cases["time limit"] = tasks.sleep.enqueue(30)
        cases["memory limit"] = tasks.grow.enqueue(50, 40)
        cases["cancelled pending"] = tasks.sleep.using(
            run_after=timezone.now() + timedelta(hours=1)).enqueue(1)
        cancel(cases["cancelled pending"])
        cases["succeeded"] = tasks.add.enqueue(1, 2)
        cases["failed"] = tasks.fail.enqueue("no")
        for name in ("worker lost", "time limit", "memory limit", "succeeded", "failed"):
            wait(cases[name], 30)
        cases["cancelled running"] = tasks.sleep.enqueue(30)
        while tasks.sleep.get_result(cases["cancelled running"].id).status != "RUNNING":
            time.sleep(0.05)
        cancel(cases["cancelled running"])
        cases["running at a crash"] = tasks.sleep.enqueue(30)
        while tasks.sleep.get_result(cases["running at a crash"].id).status != "RUNNING":
            time.sleep(0.05)
        popen.send_signal(signal.SIGKILL)
        popen.wait(10)
        time.sleep(1.0)  # its workers notice their parent is gone and exit
        popen = server()
        time.sleep(3.0)  # end notices go out within about a second
        print(f"{'case':<20} {'monitor status':<15} {'exception':<28} backend status")
        stuck = 0
        for name, result in cases.items():
            row = TaskRecord.objects.filter(result_id=result.id).first()
            status = row.status if row else "(no row)"
            stuck += status in ("RUNNING", "READY", "(no row)")
            truth = tasks.add.get_backend().get_result(result.id)
            print(f"{name:<20} {status:<15} "
                  f"{(row.exception_class.rsplit('.', 1)[-1] if row else ''):<28} "
                  f"{truth.status}")
        print(f"{stuck} of {len(cases)} tasks shown as unfinished by the monitor")
        return 1 if stuck else 0
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(15)
        except subprocess.TimeoutExpired:
            popen.kill()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m stress.contract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=["local", "django", "monitor", "all"])
    parser.add_argument("--src", help="a src directory whose django_tasks_shared to test")
    parser.add_argument("--keep", help="work in this directory and keep it")
    args = parser.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="dts-contract-")
    os.makedirs(work, exist_ok=True)
    src = os.path.abspath(args.src) if args.src else None
    try:
        status = 0
        for name in (["local", "django", "monitor"] if args.suite == "all" else [args.suite]):
            print(f"==== {name}")
            directory = os.path.join(work, name)
            os.makedirs(directory, exist_ok=True)
            status |= {"local": run_local, "django": run_django,
                       "monitor": run_monitor}[name](directory, src) or 0
        return status
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
