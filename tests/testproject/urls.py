import json
import os

from django.apps import apps
from django.http import JsonResponse
from django.tasks.exceptions import TaskResultDoesNotExist
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from . import tasks


@csrf_exempt
def enqueue(request):
    body = json.loads(request.body or b"{}")
    result = tasks.add.enqueue(body["a"], body["b"])
    return JsonResponse({"id": result.id, "pid": os.getpid()})


def result(request, result_id):
    try:
        res = tasks.add.get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": "unknown", "pid": os.getpid()}, status=404)
    return JsonResponse({
        "id": res.id, "status": res.status, "pid": os.getpid(),
        "return_value": res.return_value if res.status == "SUCCESSFUL" else None,
        "worker_ids": res.worker_ids,
    })


urlpatterns = [
    path("enqueue", enqueue),
    path("result/<str:result_id>", result),
    path("tasks/", include("django_tasks_shared.urls")),
]
if apps.is_installed("django.contrib.admin"):  # not in db_settings (test_scaling.py)
    from django.contrib import admin

    urlpatterns.append(path("admin/", admin.site.urls))  # its log-in page, for the task page
