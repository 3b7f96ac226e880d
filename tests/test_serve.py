"""``manage.py serve`` (what ``make run`` starts): web and worker up, one Ctrl-C stops both."""

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.conftest import REPO, subprocess_env, wait_for
from tests.ports import free_port


def admin_answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=2)
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def test_serve_starts_web_and_worker_and_stops_both_on_sigint(transactional_db, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, str(REPO / "manage.py"), "serve", "--port", str(port)], cwd=REPO,
                            env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: admin_answers(port), timeout=60, message="the admin to answer")
        wait_for(lambda: "worker started" in (tmp_path / "serve.log").read_text(), message="the worker")
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert time.monotonic() - sent < 20
        output = (tmp_path / "serve.log").read_text()
        assert "Stopped (worker exit 0, web server exit 0)." in output, output
        assert not admin_answers(port)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
