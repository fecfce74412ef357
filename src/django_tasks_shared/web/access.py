"""Who may see the page, act on tasks, and scrape metrics (Django settings, read per request).

    TASKS_SHARED_WEB_PERMISSION = "app_label.codename"  -> user.has_perm(...)
    TASKS_SHARED_WEB_ACCESS     = callable or "dotted.path" -> f(user) is True
    neither                                              -> user.is_active and user.is_staff
    TASKS_SHARED_METRICS_TOKEN  = "secret"  -> metrics also for `Authorization: Bearer secret`
"""

import hmac

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string


def _test_function():
    test = getattr(settings, "TASKS_SHARED_WEB_ACCESS", None)
    if isinstance(test, str):
        try:
            test = import_string(test)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"TASKS_SHARED_WEB_ACCESS = {test!r} cannot be imported ({exc}): name a "
                f"function that takes a user and returns True or False.") from None
    if test is not None and not callable(test):
        raise ImproperlyConfigured(
            f"TASKS_SHARED_WEB_ACCESS must be a callable or its dotted path, not {test!r}")
    return test


def user_allowed(user):
    """Staff by default; or the permission / test function the settings name."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    permission = getattr(settings, "TASKS_SHARED_WEB_PERMISSION", None)
    if permission:
        return user.has_perm(permission)
    test = _test_function()
    if test is not None:
        return bool(test(user))
    return bool(user.is_staff)


def bearer_allowed(request):
    """True when TASKS_SHARED_METRICS_TOKEN is set and the request carries it as a bearer."""
    token = getattr(settings, "TASKS_SHARED_METRICS_TOKEN", None)
    header = request.headers.get("Authorization", "")
    if not token or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), str(token).encode())
