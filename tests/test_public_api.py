"""Every import path the README and docs/ show users still imports (scanned from the docs, so a
new page is covered too), the dotted BACKEND paths and `include("django_tasks_shared.urls")`,
the management commands, and the `python -m` tools."""

import glob
import importlib
import importlib.util
import os
import re

import pytest

from helpers import TESTS_DIR

ROOT = os.path.dirname(TESTS_DIR)
IMPORT = re.compile(r"from (django_tasks_shared(?:\.[a-z_]+)*) import ([A-Za-z_][A-Za-z_, ]*)")
DOTTED = re.compile(r"\"(django_tasks_shared(?:\.[A-Za-z_]+)+)\"")
NOT_PATHS = {"django_tasks_shared.authkey"}  # the authkey's HMAC salt, quoted in the docs


def _doc_texts():
    for path in [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))]:
        with open(path) as f:
            yield os.path.relpath(path, ROOT), f.read()


@pytest.mark.timeout(30)
def test_every_import_the_docs_show_works():
    seen = 0
    for where, text in _doc_texts():
        for module, names in IMPORT.findall(text):
            imported = importlib.import_module(module)
            for name in filter(None, (n.strip() for n in names.split(","))):
                assert hasattr(imported, name), f"{where}: from {module} import {name}"
                seen += 1
    assert seen >= 10  # the scan found the docs' imports


@pytest.mark.timeout(30)
def test_dotted_paths_in_settings_examples_resolve():
    from django.utils.module_loading import import_string

    seen = set()
    for _where, text in _doc_texts():
        seen.update(DOTTED.findall(text))
    for path in sorted(seen - NOT_PATHS):
        try:
            importlib.import_module(path)  # a module (urls, a logger's module)
        except ImportError:
            import_string(path)  # a class or function
    assert {"django_tasks_shared.ProcessPoolBackend", "django_tasks_shared.urls"} <= seen


@pytest.mark.timeout(30)
def test_commands_and_tools_exist():
    from django.core.management import get_commands

    commands = get_commands()
    for name in ("tasks_server", "tasks_health", "tasks_reload"):
        assert commands.get(name) == "django_tasks_shared", name
    for module in ("stress", "stress.bench", "stress.storm", "stress.demo",
                   "stress.profile_server", "stress.profile_worker"):
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        if spec.submodule_search_locations:  # a package: `python -m` runs its __main__
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module
