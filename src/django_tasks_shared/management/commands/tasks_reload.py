"""`manage.py tasks_reload`: ask a running task server to replace its workers (a deploy).

    one `reload` round trip -> the supervisor starts new workers with the code now on disk
    --wait: `health` every POLL s until last_reload covers our request (or --timeout)
    exit status: 0 requested (or, with --wait, done), 1 failed or timed out, 2 unreachable

It only ever connects: it never starts a server. `kill -HUP <tasks_server pid>` does the same.
"""

import sys
import time

from django.core.management.base import BaseCommand
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS

from django_tasks_shared.client.connection import StoreClient
from django_tasks_shared.exceptions import ServerUnavailable
from django_tasks_shared.management.commands._backend import shared_backend

POLL = 0.25


class Command(BaseCommand):
    help = ("Reload the django-tasks-shared workers: fresh interpreters import the code now on "
            "disk; pending tasks and results are kept and no task fails. Exit status 0 done, "
            "1 failed or timed out, 2 unreachable. Never starts a server.")
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
                            help="TASKS alias whose server to reload (default: %(default)s)")
        parser.add_argument("--wait", action="store_true",
                            help="wait until the new workers serve and the old ones are gone")
        parser.add_argument("--timeout", type=float, default=300.0,
                            help="seconds --wait waits at most (default %(default)s)")

    def handle(self, *args, backend, wait, timeout, **options):
        config = shared_backend(backend).config
        client = StoreClient(config.address, config.authkey, timeout=config.connect_timeout)
        try:
            try:
                answer = client.call("reload")
            except ServerUnavailable as exc:
                self.stderr.write(f"tasks_reload: {exc}")
                sys.exit(2)
            except RuntimeError as exc:  # the server is stopping
                self.stderr.write(f"tasks_reload: {exc}")
                sys.exit(1)
            request = answer["request"]
            self.stdout.write(f"reload requested (request {request}) on "
                              f"{config.address_text}; generation {answer['generation']} "
                              f"serving" + (", a reload is in progress: this one follows it"
                                            if answer["reloading"] else ""))
            if not wait:
                return
            deadline = time.monotonic() + timeout
            while True:
                try:
                    server = client.call("health")["server"]
                except ServerUnavailable as exc:
                    self.stderr.write(f"tasks_reload: the server went away while reloading: "
                                      f"{exc}")
                    sys.exit(2)
                last = server.get("last_reload") or {}
                if last.get("request", 0) >= request:
                    break
                if time.monotonic() > deadline:
                    self.stderr.write(f"tasks_reload: not done after {timeout:g} s (generation "
                                      f"{server.get('generation')}, still reloading)")
                    sys.exit(1)
                time.sleep(POLL)
            took = last["finished_at"] - last["requested_at"]
            if not last["ok"]:
                self.stderr.write(f"tasks_reload: reload failed after {took:.1f} s: "
                                  f"{last['error']}; generation {server['generation']} keeps "
                                  f"serving")
                sys.exit(1)
            self.stdout.write(f"reload done in {took:.1f} s: generation {last['generation']} "
                              f"serving")
        finally:
            client.close()
