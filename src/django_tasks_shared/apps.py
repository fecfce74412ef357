from django.apps import AppConfig


class DjangoTasksSharedConfig(AppConfig):
    name = "django_tasks_shared"
    verbose_name = "Django Tasks (shared in-memory server)"

    def ready(self):
        # Django registers its task backend checks (which call our backend's check(): the
        # SCHEDULE task paths, E001) when django.tasks is first imported; a project whose apps
        # do not import it at start-up would otherwise skip them in `manage.py check`.
        import django.tasks  # noqa: F401
