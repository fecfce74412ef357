from django.apps import AppConfig


class DjangoTasksSharedConfig(AppConfig):
    name = "django_tasks_shared"
    verbose_name = "Django Tasks (shared in-memory server)"
