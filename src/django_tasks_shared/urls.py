"""Mount the web page: `path("tasks/", include("django_tasks_shared.urls"))` (see docs/web.md)."""

from django.urls import path

from .web import views

app_name = "django_tasks_shared"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("metrics", views.metrics, name="metrics"),
    path("lookup", views.lookup, name="lookup"),
    path("assets/<str:name>", views.asset, name="asset"),
    path("<str:task_id>/", views.task, name="task"),
    path("<str:task_id>/cancel", views.cancel, name="cancel"),
    path("<str:task_id>/enqueue", views.enqueue_again, name="enqueue"),
]
