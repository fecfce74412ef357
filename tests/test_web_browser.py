"""The page in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser), against `manage.py runserver` of the test project and a real `tasks_server`.

One server, one site and one browser for the module (start-up costs seconds); each test opens
its own browser context. Set TASKS_SCREENSHOT_DIR to also write the overview screenshot there
(that is how docs/img/overview.png is made).
"""

import os
import shutil
import subprocess
import sys
import time

import pytest

from helpers import MANAGE, ServerProcess, temp_dir
from live_site import PASSWORD, LiveSite

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium is missing on CI: scripts/bootstrap.sh installs it as root "
                           "with apt-get; see its output")
    pytest.skip("Debian's chromium is not installed (scripts/bootstrap.sh installs it when run "
                "as root)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def live():
    """{"srv", "site", "browser"}; a test may replace "srv" (it is the one stopped at the end)."""
    state = {"srv": ServerProcess(options={"WORKERS": 2})}
    playwright = site = None
    try:
        state["srv"].wait_ready()
        state["site"] = site = LiveSite(state["srv"].address).wait_ready()
        playwright = sync_api.sync_playwright().start()
        state["browser"] = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield state
    finally:
        if playwright is not None:
            if "browser" in state:
                state["browser"].close()
            playwright.stop()
        if site is not None:
            site.stop()
        state["srv"].stop()


@pytest.fixture
def page(live):
    # A fresh context per test: its own cookies and storage (a fresh profile, nothing shared).
    context = live["browser"].new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def log_in(page, url):
    page.goto(f"{url}/tasks/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{url}/tasks/")


def enqueue_elsewhere(srv, code):
    """Enqueue from another process (a `manage.py shell`); returns what it prints."""
    done = subprocess.run([sys.executable, MANAGE, "shell", "-c", code], env=srv.env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1]  # after Django's "N objects imported" line


def test_anonymous_user_is_refused(live, page):
    response = page.goto(f"{live['site'].url}/tasks/")
    assert "/admin/login/" in page.url and response.ok
    assert page.locator("#workers").count() == 0
    assert page.goto(f"{live['site'].url}/tasks/metrics").status == 401


def test_staff_sees_task_from_another_process_live_and_cancels_it(live, page):
    url = live["site"].url
    log_in(page, url)
    page.evaluate("window.notReloaded = true")
    enqueued = int(page.locator('[data-counter="enqueued"]').inner_text())

    task_id = enqueue_elsewhere(live["srv"], "from testproject import tasks\n"
                                "for i in range(30): tasks.add.enqueue(i, i)\n"
                                "tasks.fail.enqueue('shown on the page')\n"
                                "print(tasks.sleep.enqueue(60).id)")
    running_link = page.locator(f'#running a[href="/tasks/{task_id}/"]')
    running_link.wait_for(timeout=WAIT_MS)  # appeared through the live refresh
    page.wait_for_function(
        f"Number(document.querySelector('[data-counter=\"enqueued\"]').innerText) >= "
        f"{enqueued + 32}", timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded") is True  # updated in place, never reloaded
    page.locator("#results").get_by_text("FAILED").first.wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(2500)  # one more refresh: the chart and sparklines have points
    shot = page.screenshot(path=os.path.join(temp_dir(), "overview.png"), full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("TASKS_SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["TASKS_SCREENSHOT_DIR"], "overview.png"),
                        full_page=True)

    running_link.click()
    page.wait_for_url(f"{url}/tasks/{task_id}/")
    assert page.locator("#task-status").inner_text() == "RUNNING"
    page.click("#cancel")
    page.locator("#task-status", has_text="FAILED").wait_for(timeout=WAIT_MS)
    assert "django_tasks_shared.exceptions.TaskCancelled" in page.content()
    assert page.locator("#cancel").count() == 0
    if os.environ.get("TASKS_SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["TASKS_SCREENSHOT_DIR"], "task.png"),
                        full_page=True)


def test_banner_while_the_server_is_down_and_recovery_without_reload(live, page):
    log_in(page, live["site"].url)
    page.evaluate("window.notReloaded = true")
    banner = page.locator("#banner")
    assert banner.is_hidden()
    address = live["srv"].address
    started = time.monotonic()
    live["srv"].stop()
    stopped = time.monotonic()
    banner.wait_for(state="visible", timeout=WAIT_MS)
    shown = time.monotonic()
    assert "does not answer" in banner.inner_text()
    live["srv"] = ServerProcess(address=address, options={"WORKERS": 2}).wait_ready()
    back = time.monotonic()
    banner.wait_for(state="hidden", timeout=WAIT_MS)
    print(f"\n[measure] server stopped in {stopped - started:.1f} s, banner after "
          f"{shown - stopped:.1f} s; server back in {back - shown:.1f} s, banner gone "
          f"{time.monotonic() - back:.1f} s later")
    page.locator("#server-status", has_text="healthy").wait_for(timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded") is True
