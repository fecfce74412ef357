"""`manage.py tasks_health`: the state of a task server, for a terminal or a health probe.

    one `health` round trip (no psutil work: the supervisor's cached figures) -> health.report()
      -> human report (default) | one JSON object (--json) ; again every N s with --watch N
    exit status: 0 healthy, 1 degraded, 2 unreachable (answered within UNREACHABLE_AFTER s)

It only ever connects: it never starts a server, not even in embedded or AUTOSTART mode.
"""

import json
import sys
import time

from django.core.management.base import BaseCommand, CommandError
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS

from django_tasks_shared import health
from django_tasks_shared.client.connection import StoreClient
from django_tasks_shared.management.commands._backend import shared_backend

# Socket timeout of the probe: with Django's start-up, `unreachable` is reported within 5 s.
PROBE_TIMEOUT = 2.5


class Command(BaseCommand):
    help = ("Show the django-tasks-shared server's health: server, queues, results, counters and "
            "workers. Exit status 0 healthy, 1 degraded, 2 unreachable (a container health "
            "check). Never starts a server.")
    requires_system_checks = []  # a probe: fast, and no opinion on the project's checks

    def add_arguments(self, parser):
        parser.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
                            help="TASKS alias to inspect (default: %(default)s)")
        parser.add_argument("--json", action="store_true",
                            help="print one JSON object instead of the report")
        parser.add_argument("--watch", type=float, metavar="SECONDS",
                            help="refresh every SECONDS until interrupted (like top)")

    def handle(self, *args, backend, watch, **options):
        as_json = options["json"]
        if watch is not None and watch <= 0:
            raise CommandError("--watch takes a number of seconds > 0")
        config = shared_backend(backend).config
        # Our own client, never the backend's `call` (which may start a server).
        client = StoreClient(config.address, config.authkey,  # one try: a probe answers fast
                             timeout=min(config.connect_timeout, PROBE_TIMEOUT), patience=0)
        code = 2
        try:
            while True:
                doc = self.probe(client, config, backend)
                code = health.EXIT_CODES[doc["status"]]
                self.show(doc, as_json=as_json, watching=watch is not None)
                if watch is None:
                    break
                time.sleep(watch)
        except KeyboardInterrupt:
            pass
        finally:
            client.close()
        if code:
            sys.exit(code)

    def probe(self, client, config, alias):
        try:
            snapshot = client.call("health")
        except Exception as exc:  # ServerUnavailable, authentication, a server-side error
            client.close()
            reason = str(exc) or type(exc).__name__
            prefix = f"task server at {config.address_text} is unavailable: "
            if reason.startswith(prefix):
                reason = reason[len(prefix):]
            return health.unreachable_report(config.address_text, reason, alias)
        return health.report(snapshot, alias)

    def show(self, doc, *, as_json, watching):
        if as_json:
            text = json.dumps(doc, separators=(",", ":") if watching else None,
                              indent=None if watching else 2, sort_keys=False)
            self.stdout.write(text)
            if doc["status"] == health.UNREACHABLE and not watching:
                self.stderr.write(doc["reasons"][0])
        else:
            text = health.render(doc)
            if watching and self.stdout.isatty():
                self.stdout.write("\033[H\033[2J", ending="")
            elif watching:
                text = f"--- {time.strftime('%H:%M:%S')}\n{text}"
            self.stdout.write(text, ending="")
        self.stdout.flush()
