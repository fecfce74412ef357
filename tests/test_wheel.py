"""What users install: the wheel built from this tree holds every module, template and static
file of the source tree (the subpackages included), and passes `twine check`."""

import os
import subprocess
import sys
import zipfile

import pytest

from helpers import TESTS_DIR, temp_dir

ROOT = os.path.dirname(TESTS_DIR)
PACKAGE = os.path.join(ROOT, "src", "django_tasks_shared")
SHIPPED = (".py", ".html", ".css", ".js", ".typed")


@pytest.fixture(scope="module")
def wheel():
    out = temp_dir("dts-wheel-")
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", out, ROOT],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (name,) = [n for n in os.listdir(out) if n.endswith(".whl")]
    return os.path.join(out, name)


def _source_files():
    found = set()
    for directory, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(SHIPPED):
                path = os.path.relpath(os.path.join(directory, name), os.path.dirname(PACKAGE))
                found.add(path.replace(os.sep, "/"))
    return found


@pytest.mark.timeout(300)
def test_the_wheel_holds_every_module_template_and_static_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    source = _source_files()
    assert {p for p in source if p.endswith("/__init__.py")} >= {
        f"django_tasks_shared/{sub}/__init__.py" for sub in (
            "protocol", "client", "server", "store", "durable", "supervision", "worker",
            "schedules", "health", "web", "management", "management/commands")}
    assert any(p.endswith(".html") for p in source) and any(p.endswith(".js") for p in source)
    missing = sorted(source - names)
    assert not missing, f"not in {os.path.basename(wheel)}: {missing}"


@pytest.mark.timeout(120)
def test_twine_check_passes(wheel):
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", wheel],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
