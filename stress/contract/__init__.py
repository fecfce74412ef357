"""Other projects' code pointed at our backends, by hand: django-tasks-local's test suite,
Django's ImmediateBackend tests, django-tasks-monitor (`python -m stress.contract --help`)."""
