"""The views of `django_tasks_shared.urls`. Each page view is ONE round trip to the server.

    overview   GET  ""             overview(filters) -> full page, or its live part (?fragment=1)
    task       GET  "<id>/"        get(id)            -> the task page, or its live part
    cancel     POST "<id>/cancel"  cancel(id)         -> back to the task page
    enqueue    POST "<id>/enqueue" get(id) + enqueue  -> the new task's page
    lookup     GET  "lookup?id="   redirect to "<id>/"
    metrics    GET  "metrics"      health()           -> Prometheus text (staff or bearer token)
    asset      GET  "assets/<f>"   the page's script and stylesheet, from the package

An unreachable server is a banner (HTTP 503 with the page around it, its cards saying so), never
a 500; the live part's 503 is the banner's text as text/plain. The script keeps polling and the
page recovers by itself when the server is back.
"""

import functools
import mimetypes
import os
from urllib.parse import urlencode

from django.conf import settings
from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    HttpResponseForbidden,
    HttpResponseRedirect,
)
from django.shortcuts import render
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTask
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_POST

from ..client.backend import SharedBackend
from ..exceptions import QueueFull, ServerUnavailable
from ..protocol.config import describe
from ..protocol.status import FAILED, SUCCESSFUL
from . import access, present
from . import metrics as prom

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static",
                          "django_tasks_shared")
ASSETS = ("dashboard.js", "dashboard.css")
STATUSES = (SUCCESSFUL, FAILED)  # the filter buttons, in this order
PAGE = 25
REFRESH_MS = 2000


def backend():
    alias = getattr(settings, "TASKS_SHARED_WEB_BACKEND", "default")
    instance = task_backends[alias]
    if not isinstance(instance, SharedBackend):
        raise TypeError(f"TASKS_SHARED_WEB_BACKEND names TASKS[{alias!r}], a "
                        f"{type(instance).__name__}: the page needs a django-tasks-shared backend")
    return instance


def staff_only(view):
    """Log-in redirect for anonymous users, 403 for users the access settings refuse."""
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        user = getattr(request, "user", None)
        if user is None:
            return HttpResponseForbidden(
                "django_tasks_shared pages need django.contrib.auth's AuthenticationMiddleware "
                "(request.user) to check who may see them.", content_type="text/plain")
        if not user.is_authenticated:
            # Imported here: importing django.contrib.auth.views needs contrib.auth installed,
            # and a project without it must still load its URLconf.
            from django.contrib.auth.views import redirect_to_login

            return redirect_to_login(request.get_full_path())
        if not access.user_allowed(user):
            return HttpResponseForbidden(
                "You may not see the task server's page: it is for staff users, or for those "
                "that TASKS_SHARED_WEB_PERMISSION / TASKS_SHARED_WEB_ACCESS allow.",
                content_type="text/plain")
        return view(request, *args, **kwargs)
    return wrapper


REFRESHES = f"refreshes every {REFRESH_MS / 1000:g} s without reloading"
FINAL = "this task has finished: the page no longer refreshes"


def _common(shared, **extra):
    return {"alias": shared.alias, "address": shared.config.address_text,
            "refresh_ms": REFRESH_MS, "refresh_note": REFRESHES,
            "time_zone": timezone.get_current_timezone_name(), **extra}


def _filters(request):
    get = request.GET
    status = get.get("status") or None
    return {"status": status if status in STATUSES else None,
            "task": (get.get("task") or "").strip()[:200] or None,
            "queue": (get.get("queue") or "").strip()[:100] or None,
            "offset": _int(get.get("offset"), 0)}


def _int(text, default):
    try:
        return max(0, int(text))
    except (TypeError, ValueError):
        return default


def _unavailable(shared, exc):
    reason = str(exc) or f"task server at {describe(shared.client.address)} is unavailable."
    return (f"The task server does not answer. {reason[:1].upper()}{reason[1:]} "
            f"This page retries every {REFRESH_MS / 1000:g} s and recovers by itself.")


def _unavailable_fragment(message):
    """The live refresh's answer while the server is down: the banner's text as plain text (the
    script puts it in with textContent, so it must not be HTML-escaped first)."""
    return HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")


@never_cache
@require_GET
@staff_only
def overview(request):
    shared = backend()
    filters = _filters(request)
    fragment = request.GET.get("fragment") == "1"
    query = {k: v for k, v in filters.items() if v}
    live_url = "?" + urlencode({**query, "fragment": "1"})
    context = _common(shared, filters=filters, statuses=STATUSES, live_url=live_url,
                      query=urlencode({k: v for k, v in query.items() if k != "offset"}))
    try:
        snapshot = shared.client.call("overview", filters["status"], filters["task"],
                                      filters["queue"], filters["offset"], PAGE)
    except ServerUnavailable as exc:
        context["unavailable"] = _unavailable(shared, exc)
        if fragment:
            return _unavailable_fragment(context["unavailable"])
        return render(request, "django_tasks_shared/overview.html", context, status=503)
    context.update(present.overview_context(snapshot, timezone.get_current_timezone()))
    template = "_overview_live.html" if fragment else "overview.html"
    return render(request, f"django_tasks_shared/{template}", context)


@never_cache
@require_GET
@staff_only
def task(request, task_id):
    if task_id != task_id.lower():  # ids are lowercase hex; one pasted in capitals still finds it
        return HttpResponseRedirect(reverse("django_tasks_shared:task", args=[task_id.lower()]))
    shared = backend()
    fragment = request.GET.get("fragment") == "1"
    context = _common(shared, task_id=task_id, live_url="?fragment=1",
                      notice=request.GET.get("notice", "")[:200])
    try:
        record = shared.client.call("get", task_id)
    except ServerUnavailable as exc:
        context["unavailable"] = _unavailable(shared, exc)
        if fragment:
            return _unavailable_fragment(context["unavailable"])
        return render(request, "django_tasks_shared/task.html", context, status=503)
    if record is None:
        context.update(missing=True, refresh_note=None)  # nothing to refresh
        return render(request, "django_tasks_shared/task.html", context, status=404)
    context.update(present.task_context(record, timezone.get_current_timezone()))
    if context["finished"]:
        context["refresh_note"] = FINAL
    template = "_task_live.html" if fragment else "task.html"
    return render(request, f"django_tasks_shared/{template}", context)


def _back_to(task_id, notice):
    url = reverse("django_tasks_shared:task", args=[task_id])
    return HttpResponseRedirect(f"{url}?{urlencode({'notice': notice})}")


@require_POST
@csrf_protect
@staff_only
def cancel(request, task_id):
    shared = backend()
    try:
        cancelled = shared.client.call("cancel", task_id)
    except ServerUnavailable as exc:
        return _back_to(task_id, f"Not cancelled: {exc}")
    return _back_to(task_id, "Cancelled." if cancelled else
                    "Nothing to cancel: the task had already finished.")


@require_POST
@csrf_protect
@staff_only
def enqueue_again(request, task_id):
    """A copy of the task with the same arguments, queue and priority, due now."""
    shared = backend()
    try:
        record = shared.client.call("get", task_id)
        if record is None:
            raise Http404(f"no task {task_id}: unknown, evicted or expired")
        base = import_string(record["task"])
        copy = base.using(priority=record["priority"], queue_name=record["queue"],
                          backend=shared.alias)
        result = copy.enqueue(*record["args"], **record["kwargs"])
    except ServerUnavailable as exc:
        return _back_to(task_id, f"Not enqueued: {exc}")
    except (ImportError, AttributeError) as exc:
        return _back_to(task_id, f"Not enqueued: {record['task']} cannot be imported as a task "
                                 f"in the web process ({exc}).")
    except (InvalidTask, QueueFull, TypeError) as exc:  # e.g. its queue left QUEUES
        return _back_to(task_id, f"Not enqueued: {type(exc).__name__}: {exc}")
    return _back_to(result.id, f"Enqueued again as a copy of {task_id}.")


@require_GET
@staff_only
def lookup(request):
    # As pasted from a log, an e-mail or a spreadsheet: spaces, quotes, capitals.
    task_id = (request.GET.get("id") or "").strip().strip("'\"` ").lower()
    if not task_id or "/" in task_id:  # ids never hold a slash: no such task, show the overview
        return HttpResponseRedirect(reverse("django_tasks_shared:overview"))
    return HttpResponseRedirect(reverse("django_tasks_shared:task", args=[task_id]))


@never_cache
@require_GET
def metrics(request):
    """Prometheus text; staff users, or `Authorization: Bearer <TASKS_SHARED_METRICS_TOKEN>`."""
    if not access.bearer_allowed(request):
        user = getattr(request, "user", None)
        if user is None or not access.user_allowed(user):
            response = HttpResponse(
                "metrics need a staff session or the bearer token of "
                "TASKS_SHARED_METRICS_TOKEN (Authorization: Bearer ...)\n",
                status=401 if user is None or not user.is_authenticated else 403,
                content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="django-tasks-shared metrics"'
            return response
    if not prom.available():
        return HttpResponse(prom.INSTALL_HINT + "\n", status=501, content_type="text/plain")
    try:
        snapshot = backend().client.call("health")
    except ServerUnavailable:
        snapshot = None
    body, content_type = prom.render(snapshot)
    return HttpResponse(body, content_type=content_type)


@require_GET
def asset(request, name):
    """The page's own script and stylesheet (public, like any static file; no user data)."""
    if name not in ASSETS:
        raise Http404(name)
    response = FileResponse(open(os.path.join(STATIC_DIR, name), "rb"),
                            content_type=mimetypes.guess_type(name)[0])
    response["Cache-Control"] = "max-age=300"
    return response
