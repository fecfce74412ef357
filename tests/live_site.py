"""A live Django site for browser tests: `runserver` of the test project against a real server.

    LiveSite(server) -> migrate a fresh SQLite file, create users "staff" and "plain"
                     -> `manage.py runserver --noreload 127.0.0.1:<free port>` (subprocess)
                     -> stop(): SIGTERM by pid (helpers.stop_process)
"""

import socket
import subprocess
import sys
import urllib.error
import urllib.request

from helpers import MANAGE, child_env, stop_process, temp_dir, wait_until

PASSWORD = "pw-for-tests-only"
USERS = (
    "from django.contrib.auth.models import User\n"
    f"User.objects.create_user('staff', password={PASSWORD!r}, is_staff=True)\n"
    f"User.objects.create_user('plain', password={PASSWORD!r})\n"
)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveSite:
    def __init__(self, address, **env):
        self.env = child_env(address, TASKS_TEST_DB=f"{temp_dir()}/site.sqlite3", **env)
        for args, stdin in ((["migrate", "--noinput"], None), (["shell"], USERS)):
            subprocess.run([sys.executable, MANAGE, *args], env=self.env, input=stdin, text=True,
                           check=True, capture_output=True, timeout=60)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.popen = subprocess.Popen(
            [sys.executable, MANAGE, "runserver", "--noreload", f"127.0.0.1:{self.port}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _answers(self):
        try:
            urllib.request.urlopen(f"{self.url}/admin/login/", timeout=1)
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return self.popen.poll() is not None

    def wait_ready(self, timeout=20.0):
        wait_until(self._answers, timeout, message=f"runserver on {self.url}")
        if self.popen.poll() is not None:
            raise AssertionError(f"runserver exited with {self.popen.returncode}")
        return self

    def stop(self):
        return stop_process(self.popen)
