"""The page in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser), against `manage.py runserver` of the test project and a real `tasks_server`.

One server, one site and one browser for the module (start-up costs seconds); each test opens
its own browser context. Every state a user meets is driven for real and asserted, and its
full-page screenshot taken: healthy with traffic (a progress bar among the running tasks), a
running task's page with its bar, a task that succeeded on its second attempt, a failed task,
the 404 page, the look-up box, empty results, degraded (workers in crash back-off), the server
down under an open page (banner) and a fresh load while it is down. The screenshots go to a
temporary directory, or to TASKS_SCREENSHOT_DIR when it is set (to look at them; that is also
how docs/img/task.png is made). Never into the repository by themselves.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import MANAGE, ServerProcess, temp_dir, wait_until
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
OPTIONS = {"WORKERS": 2}
GRACE = ("--grace", "1")  # a replaced server must not wait 30 s for a task to finish


def new_server(address=None, env=None):
    return ServerProcess(address=address, options=OPTIONS, env=env, args=GRACE).wait_ready()


@pytest.fixture(scope="module")
def live():
    """{"srv", "site", "browser", "shots"}; a test may replace "srv" (the one stopped at the
    end)."""
    state = {"srv": ServerProcess(options=OPTIONS, args=GRACE),
             "shots": os.environ.get("TASKS_SCREENSHOT_DIR") or temp_dir("dts-shots-")}
    playwright = site = None
    try:
        state["srv"].wait_ready()
        state["site"] = site = LiveSite(state["srv"].address).wait_ready()
        playwright = sync_api.sync_playwright().start()
        # Playwright starts chromium on a fresh temporary user-data directory (and removes it).
        state["browser"] = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield state
    finally:
        if playwright is not None:
            if state.get("browser") is not None:
                state["browser"].close()
            playwright.stop()
        if site is not None:
            site.stop()
        state["srv"].stop()


@pytest.fixture
def page(live):
    # A fresh context per test: its own cookies and storage (nothing shared between tests).
    context = live["browser"].new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def serving(live):
    """The module's server, or a new one at its address when a test replaced it: conftest's
    no_leftover_processes stops what a test started when that test ends."""
    srv = live["srv"]
    if srv.popen.poll() is not None:
        live["srv"] = srv = new_server(srv.address)
    return srv


def shoot(live, page, name):
    """A full-page screenshot of what the user sees now (a PNG, asserted)."""
    data = page.screenshot(path=os.path.join(live["shots"], name), full_page=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def log_in(page, url, then="/tasks/"):
    page.goto(f"{url}{then}")
    page.fill("#id_username", "staff")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{url}{then}")


def enqueue_elsewhere(srv, code):
    """Enqueue from another process (a `manage.py shell`); returns the lines it prints."""
    done = subprocess.run([sys.executable, MANAGE, "shell", "-c", code], env=srv.env,
                          capture_output=True, text=True, timeout=60, check=True)
    lines = done.stdout.strip().splitlines()
    return [line for line in lines if re.fullmatch(r"[0-9a-f]{32}", line)]


def footer(page):
    return page.locator("footer.foot").inner_text().strip()


def test_anonymous_user_is_refused(live, page):
    response = page.goto(f"{live['site'].url}/tasks/")
    assert "/admin/login/" in page.url and response.ok
    assert page.locator("#workers").count() == 0
    assert page.goto(f"{live['site'].url}/tasks/metrics").status == 401


def test_healthy_with_traffic_progress_bars_and_cancel(live, page):
    url = live["site"].url
    log_in(page, url)
    page.evaluate("window.notReloaded = true")
    enqueued = int(page.locator('[data-counter="enqueued"]').inner_text())

    crunch_id, sleep_id = enqueue_elsewhere(serving(live), (
        "from testproject import tasks\n"
        "for i in range(30): tasks.add.enqueue(i, i)\n"
        "tasks.fail.enqueue('shown on the page')\n"
        "print(tasks.crunch.enqueue(300, 0.1, 0).id)\n"
        "print(tasks.sleep.enqueue(60).id)"))
    running_link = page.locator(f'#running a[href="/tasks/{sleep_id}/"]')
    running_link.wait_for(timeout=WAIT_MS)  # appeared through the live refresh
    page.wait_for_function(
        f"Number(document.querySelector('[data-counter=\"enqueued\"]').innerText) >= "
        f"{enqueued + 33}", timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded") is True  # updated in place, never reloaded
    page.locator("#results").get_by_text("FAILED").first.wait_for(timeout=WAIT_MS)
    # The running crunch task reports done/total: a bar, with its figures beside it.
    bar = page.locator("#running .bar")
    bar.wait_for(timeout=WAIT_MS)
    assert re.fullmatch(r"\d+ / 300 \(\d+ %\) · phase=slow",
                        page.locator("#running .bar-label").inner_text())
    assert 0 < float(bar.get_attribute("aria-valuenow")) < 100
    page.wait_for_timeout(2500)  # one more refresh: the chart and sparklines have points

    # The chart has one figure for its height (the peak, a dashed line), not "peak" and "top".
    chart_card = page.locator("section.card", has=page.locator("#chart"))
    assert re.search(r"peak \d+(\.\d)?/s", chart_card.inner_text())
    assert "top " not in chart_card.inner_text()
    assert page.locator("#chart line.peak").count() == 1
    # Sparklines: one scale for every worker, from 0, said in the header; each says its range.
    header = page.locator("#workers thead").inner_text()
    assert re.search(r"0–\d+(\.\d+)? MiB", header) and "0–100 %" in header
    for text in page.locator('#workers [data-range="rss"]').all_inner_texts():
        assert re.fullmatch(r"\d+\.\d MiB(–\d+\.\d MiB)?", text), text
    shoot(live, page, "overview.png")

    # A running task's own page: the bar, moving.
    page.goto(f"{url}/tasks/{crunch_id}/")
    progress = page.locator("#task-progress .bar")
    first = float(progress.get_attribute("aria-valuenow"))
    assert "refreshes every 2 s" in footer(page)
    page.wait_for_function(
        f"Number(document.querySelector('#task-progress .bar')"
        f".getAttribute('aria-valuenow')) > {first}", timeout=WAIT_MS)
    shoot(live, page, "task-progress.png")
    page.click("#cancel")
    page.locator("#task-status", has_text="FAILED").wait_for(timeout=WAIT_MS)

    page.goto(f"{url}/tasks/")
    running_link = page.locator(f'#running a[href="/tasks/{sleep_id}/"]')
    running_link.click()
    page.wait_for_url(f"{url}/tasks/{sleep_id}/")
    assert page.locator("#task-status").inner_text() == "RUNNING"
    page.click("#cancel")
    page.locator("#task-status", has_text="FAILED").wait_for(timeout=WAIT_MS)
    assert "django_tasks_shared.exceptions.TaskCancelled" in page.content()
    assert page.locator("#cancel").count() == 0
    shoot(live, page, "task.png")  # docs/img/task.png


def test_a_task_that_succeeded_on_attempt_2_is_not_an_error_and_a_failed_one_is(live, page):
    url = live["site"].url
    ledger = os.path.join(temp_dir(), "flaky.log")
    flaky_id, fail_id = enqueue_elsewhere(serving(live), (
        "from testproject import tasks\n"
        f"print(tasks.flaky.enqueue({ledger!r}, 1).id)\n"
        "print(tasks.fail.enqueue('the disk is full').id)"))
    log_in(page, url)
    row = page.locator("#results tr", has=page.locator(f'a[href="/tasks/{flaky_id}/"]'))
    row.wait_for(timeout=WAIT_MS)
    assert "SUCCESSFUL" in row.inner_text()
    note = row.locator(".note")
    assert note.inner_text() == "succeeded on attempt 2"
    assert "retried" in note.get_attribute("class") and "ConnectionError" not in row.inner_text()
    failed_row = page.locator("#results tr", has=page.locator(f'a[href="/tasks/{fail_id}/"]'))
    assert failed_row.locator(".note.error").inner_text() == "ValueError"

    page.goto(f"{url}/tasks/{flaky_id}/")
    assert page.locator("#task-status").inner_text() == "SUCCESSFUL"
    assert page.locator("#task-outcome").inner_text() == "succeeded on attempt 2"
    errors = page.locator("#errors")
    assert "Errors of the earlier attempts" in errors.inner_text()
    assert "succeeded on attempt 2" in errors.locator(".errors-note").inner_text()
    assert footer(page).endswith("this task has finished: the page no longer refreshes")
    shoot(live, page, "task-retried.png")

    page.goto(f"{url}/tasks/{fail_id}/")
    assert page.locator("#task-status").inner_text() == "FAILED"
    assert page.locator("#errors h2").inner_text().startswith("Errors")
    assert "ValueError: the disk is full" in page.locator("#errors pre").inner_text()
    text = footer(page)
    assert text.endswith("no longer refreshes") and not text.endswith("·")
    shoot(live, page, "task-failed.png")


def test_look_up_box_404_and_empty_results(live, page):
    url = live["site"].url
    [task_id] = enqueue_elsewhere(serving(live), "from testproject import tasks\n"
                                               "print(tasks.add.enqueue(1, 2).id)")
    log_in(page, url)
    page.fill("input[name=id]", f"  {task_id.upper()} ")  # as pasted, in capitals
    page.click(".lookup button")
    page.wait_for_url(f"{url}/tasks/{task_id}/")
    assert page.locator("dd.mono").first.inner_text() == task_id

    unknown = "0" * 32
    response = page.goto(f"{url}/tasks/{unknown}/")
    assert response.status == 404
    assert page.locator("h2").inner_text() == f"No task {unknown}"
    text = footer(page)
    assert "refresh" not in text and not text.endswith("·"), text  # nothing refreshes here
    shoot(live, page, "404.png")

    page.goto(f"{url}/tasks/?task=matches-nothing")
    assert page.locator("#results td.empty").inner_text() == \
        "no finished result matches these filters"
    shoot(live, page, "empty-results.png")


def test_degraded_workers_in_crash_back_off(live, page):
    """A deploy that broke the settings: every new worker dies in django.setup()."""
    address = serving(live).address
    live["srv"].stop()  # the next test that needs a server starts a good one (serving())
    marker = os.path.join(temp_dir(), "break")
    live["srv"] = new_server(address, env={"DJANGO_SETTINGS_MODULE":
                                           "testproject.broken_settings",
                                           "TASKS_BREAK_MARKER": marker})
    client = live["srv"].client()
    wait_until(lambda: len([w for w in client.call("health")["workers"] if w["ready_at"]]) == 2,
               20, message="2 ready workers")
    log_in(page, live["site"].url)
    assert page.locator("#results td.empty").inner_text() == "no finished result"  # a new server
    shoot(live, page, "empty-fresh-server.png")
    open(marker, "w").close()
    pid = client.call("health")["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)  # its replacement fails at start-up, and the next, with back-off
    page.locator("#server-status", has_text="degraded").wait_for(timeout=WAIT_MS)
    page.locator(".reasons li", has_text="back-off").wait_for(timeout=WAIT_MS)
    reasons = page.locator(".reasons").inner_text()
    assert "broken settings for the test" in reasons
    shoot(live, page, "degraded.png")
    os.remove(marker)


def test_server_down_banner_then_fresh_load_then_recovery_without_reload(live, page):
    url = live["site"].url
    serving(live)
    log_in(page, url)
    page.evaluate("window.notReloaded = true")
    banner = page.locator("#banner")
    assert banner.is_hidden(), banner.inner_text()
    assert page.locator("#server-status").inner_text() == "healthy"
    address = live["srv"].address
    started = time.monotonic()
    live["srv"].stop()
    stopped = time.monotonic()
    banner.wait_for(state="visible", timeout=WAIT_MS)
    shown = time.monotonic()
    text = banner.inner_text()
    assert "does not answer" in text and "recovers by itself" in text
    # the server's own words, quotes and all: not HTML entities
    assert "OPTIONS['AUTOSTART']" in text and "&#" not in text and "&amp;" not in text
    assert re.search(r"The figures below are from \d", text)
    # the dimmed figures no longer claim a healthy server
    page.locator("#server-status", has_text="unreachable").wait_for(timeout=WAIT_MS)
    assert "stale" in page.locator("#live").get_attribute("class")
    shoot(live, page, "down-banner.png")

    fresh = page.context.new_page()  # a fresh load while the server is down
    response = fresh.goto(f"{url}/tasks/")
    assert response.status == 503
    assert "OPTIONS['AUTOSTART']" in fresh.locator("#banner").inner_text()
    assert fresh.locator("#server-status").inner_text() == "unreachable"
    assert "does not answer" in fresh.locator("#results-waiting").inner_text()
    assert fresh.locator("#results").count() == 0  # no empty table posing as "no results"
    shoot(live, fresh, "down-fresh-load.png")

    live["srv"] = new_server(address)
    back = time.monotonic()
    banner.wait_for(state="hidden", timeout=WAIT_MS)
    print(f"\n[measure] server stopped in {stopped - started:.1f} s, banner after "
          f"{shown - stopped:.1f} s; server back in {back - shown:.1f} s, banner gone "
          f"{time.monotonic() - back:.1f} s later")
    page.locator("#server-status", has_text="healthy").wait_for(timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded") is True
    # the page loaded while the server was down fills itself in too
    fresh.locator("#server-status", has_text="healthy").wait_for(timeout=WAIT_MS)
    fresh.locator("#results").wait_for(timeout=WAIT_MS)
    assert fresh.locator("#banner").is_hidden()
