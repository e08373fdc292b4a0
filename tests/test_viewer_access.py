"""Who may read the viewer: `cubepilot serve --token` as a real subprocess (401 without the token,
200 with it as a header, once as ?token= then as a cookie, in a real Chromium too), loopback-only
Host checking without a token, and a generated token for any other bind address."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agents.viewer import app as viewer_app
from agents.viewer.access import _host_name, is_loopback
from test_viewer_browser import CHROMIUM, CHROMIUM_ARGS, serve, shot
from test_viewer_archive import ROOT, build_archive

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-for-tests-0123456789"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get(url: str, headers: dict | None = None) -> tuple[int, dict, str]:
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`cubepilot serve --token` over a real archive, as a subprocess on a free loopback port."""
    archive, run_id = build_archive(tmp_path_factory.mktemp("viewer-access"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "from agents.cli import main; main()", "serve", "--archive",
                             str(archive), "--port", str(port), "--token", TOKEN],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "cubepilot serve did not start"
            time.sleep(0.1)
    yield url, run_id, proc
    proc.terminate()
    proc.wait(10)


def test_every_path_needs_the_token(served):
    url, run_id, _ = served
    for path in ("/", f"/runs/{run_id}", "/leaderboard", f"/api/runs/{run_id}", "/api/runs", "/no/such/page"):
        status, headers, body = get(url + path)
        assert status == 401, path
        assert "access token" in body and run_id not in body
        assert get(url + path, {"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
    assert get(f"{url}/?token=wrong")[0] == 401


def test_token_as_header_query_and_cookie(served):
    url, run_id, _ = served
    status, headers, body = get(f"{url}/api/runs", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and run_id in body
    assert headers["x-content-type-options"] == "nosniff" and "default-src 'none'" in headers["content-security-policy"]
    status, headers, _ = get(f"{url}/runs/{run_id}?token={TOKEN}")
    assert status == 303 and headers["location"] == f"/runs/{run_id}"
    cookie = headers["set-cookie"].split(";")[0]
    assert "httponly" in headers["set-cookie"].lower() and "samesite=strict" in headers["set-cookie"].lower()
    status, _, body = get(f"{url}/runs/{run_id}", {"Cookie": cookie})
    assert status == 200 and "Convergence" in body


def test_token_in_a_real_browser(served):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright
    url, run_id, _ = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        assert page.goto(url + "/").status == 401
        shot(page, "token-refused")
        assert page.goto(f"{url}/?token={TOKEN}").status == 200
        assert "token=" not in page.url                   # the token left the address bar for a cookie
        page.click(f"text={run_id}")
        assert page.url.endswith(f"/runs/{run_id}") and page.locator("#pareto svg").count() == 1
        browser.close()


def test_loopback_without_token_answers_only_loopback_names(tmp_path):
    server = serve(tmp_path / "a.sqlite")
    try:
        assert get(server.url + "/")[0] == 404                        # no archive yet, but reachable
        assert get(server.url + "/", {"Host": f"localhost:{server.port}"})[0] == 404
        status, _, body = get(server.url + "/", {"Host": f"evil.example:{server.port}"})
        assert status == 403 and "loopback" in body
    finally:
        server.stop()


def test_host_names():
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.2", "example.com", ""]))
    assert [_host_name(h) for h in ("localhost:8000", "[::1]:8000", "example.com", "[::1]")] == \
        ["localhost", "::1", "example.com", "::1"]


def test_serve_on_another_host_generates_a_token(monkeypatch, tmp_path):
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.update(app=app, **kw))
    said = []
    viewer_app.serve(tmp_path / "a.sqlite", "0.0.0.0", 0, None, say=said.append)   # port 0: any free one
    line = said[-1]
    assert started["host"] == "0.0.0.0" and "?token=" in line
    token = line.split("?token=")[1].split()[0]
    assert len(token) >= 24
    said.clear()
    viewer_app.serve(tmp_path / "a.sqlite", "127.0.0.1", 0, None, say=said.append)
    assert "token" not in said[-1]


def test_a_taken_port_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-c", "from agents.cli import main; main()", "serve", "--archive",
                               str(tmp_path / "a.sqlite"), "--port", str(port)], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "cannot serve on 127.0.0.1" in done.stderr and "Traceback" not in done.stderr
