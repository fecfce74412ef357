"""`manage.py tasks_server`: run the task server and its workers in the foreground."""

import dataclasses
import logging
from typing import TextIO, cast

from django.core.management.base import BaseCommand, CommandError
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS

from django_tasks_shared.durable.format import StateError
from django_tasks_shared.durable.statedir import StateDirInUse
from django_tasks_shared.management.commands._backend import shared_backend
from django_tasks_shared.protocol.paths import UnsafePath
from django_tasks_shared.protocol.text import plural
from django_tasks_shared.schedules.entries import ScheduleError
from django_tasks_shared.schedules.resolve import resolve_config
from django_tasks_shared.server.process import AlreadyRunning, serve


class Command(BaseCommand):
    help = ("Run the django-tasks-shared server and its worker processes in the foreground "
            "(systemd, Docker). SIGTERM or Ctrl-C drains: no new tasks, running ones get "
            "--grace seconds, then the rest end FAILED (WorkerLost); with STATE_DIR the queue "
            "and results are saved. SIGHUP reloads the workers (a deploy).")

    def add_arguments(self, parser):
        parser.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
                            help="TASKS alias to serve (default: %(default)s)")
        parser.add_argument("--workers", type=int, help="override OPTIONS['WORKERS']")
        parser.add_argument("--threads", type=int, help="override OPTIONS['THREADS']")
        parser.add_argument("--grace", type=float, default=30.0,
                            help="seconds running tasks may finish after SIGTERM, and old "
                                 "workers after a reload (default 30)")
        parser.add_argument("--discard-state", action="store_true",
                            help="move the files in OPTIONS['STATE_DIR'] aside (into a "
                                 "discarded-<time>/ folder; nothing is deleted) and start empty")

    def handle(self, *args, backend, workers, threads, grace, discard_state, **options):
        config = shared_backend(backend).config
        changes = {k: v for k, v in (("workers", workers), ("threads", threads)) if v}
        if changes and config.pools:
            raise CommandError("--workers and --threads size the one pool of a backend without "
                               "OPTIONS['POOLS']; with POOLS, set each pool's 'workers' and "
                               "'threads' there.")
        if changes:
            config = dataclasses.replace(config, **changes)
        try:  # also with --skip-checks: every SCHEDULE task must import (system check E001)
            config = resolve_config(config)
        except ScheduleError as exc:
            raise CommandError(f"TASKS[{backend!r}]: {exc}")
        if config.embedded:
            self.stderr.write(self.style.WARNING(
                "no OPTIONS['ADDRESS'] is set: serving the embedded address "
                f"{config.address_text}; set ADDRESS so that every process finds this server."))
        logger = logging.getLogger("django_tasks_shared")
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(cast(TextIO, self.stderr._out))
            handler.setFormatter(logging.Formatter("[tasks-server %(process)d] %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        size = (", ".join(f"pool {p['name']} ({', '.join(p['queues'])}): "
                          f"{plural(p['workers'], 'worker')} x {plural(p['threads'], 'thread')} "
                          f"each" for p in config.pools) if config.pools else
                f"{plural(config.workers, 'worker')} x {plural(config.threads, 'thread')} each")
        self.stdout.write(f"django-tasks-shared server for {backend!r} on {config.address_text}: "
                          f"{size}")
        self.stdout.flush()
        if discard_state and config.state_dir is None:
            raise CommandError("--discard-state needs OPTIONS['STATE_DIR']: without it nothing "
                               "is kept on disk.")
        try:
            serve(config, grace=grace, discard_state=discard_state)
        except AlreadyRunning as exc:
            raise CommandError(f"a task server is already running at {config.address_text} "
                               f"({exc}); stop it first, or use tasks_health to inspect it.")
        except StateDirInUse as exc:
            raise CommandError(f"{exc}. Stop that server first, or give this one another "
                               f"STATE_DIR.")
        except UnsafePath as exc:
            raise CommandError(f"TASKS[{backend!r}]: {exc}")
        except StateError as exc:
            raise CommandError(
                f"refusing to start: {exc}. Nothing was changed or deleted. Keep a copy of "
                f"{config.state_dir} for inspection; `manage.py tasks_server --discard-state` "
                f"moves the files aside (it deletes nothing) and starts with an empty queue.")
