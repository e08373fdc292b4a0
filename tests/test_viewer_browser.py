"""The web viewer end to end in a real headless Chromium (Debian's, driven by Playwright) against
a real uvicorn server on loopback over a real archive: every page renders, links walk run ->
kernel -> parent -> child, charts hold one mark per evaluation, the timeline is computed
through the sandbox, and bad ids, missing or empty archives give clear pages. Screenshots
are kept under $CUBEPILOT_ARTEFACTS (default: a temporary directory) for people to look at."""
from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from agents.viewer.app import create_app
from test_viewer_archive import build_archive

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTEFACTS = Path(os.environ.get("CUBEPILOT_ARTEFACTS", Path(tempfile.gettempdir()) / "cubepilot-viewer-artefacts"))


class LiveServer:
    """The viewer app under a real uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the viewer did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve(archive: Path, token: str | None = None, cache: Path | None = None) -> LiveServer:
    return LiveServer(create_app(archive, token, cache or Path(tempfile.mkdtemp(prefix="cubepilot-tl-"))))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("viewer-browser"))


@pytest.fixture(scope="module")
def live(built, tmp_path_factory):
    server = serve(built[0], cache=tmp_path_factory.mktemp("timelines"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    yield context.new_page()
    context.close()


def shot(page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def assert_clean(page) -> None:
    text = page.inner_text("body")
    assert "Traceback" not in text and "File \"" not in text and "most recent call" not in page.content()


def db_rows(archive: Path, run_id: str) -> list[tuple]:
    with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as db:
        return db.execute("SELECT seq, strategy_id, status, tflops FROM evaluations WHERE run_id = ? ORDER BY seq",
                          (run_id,)).fetchall()


def test_pages_render_and_links_walk_run_kernel_parent_child(live, built, page):
    archive, run_id = built
    rows = db_rows(archive, run_id)
    ok = [r for r in rows if r[2] == "ok"]
    response = page.goto(live.url + "/")
    assert response.status == 200
    assert page.locator("#runs a.run-link").count() == 1
    shot(page, "runs")
    page.click(f"text={run_id}")
    assert page.url.endswith(f"/runs/{run_id}")
    # the charts are drawn from the archive: one mark per evaluation
    assert page.locator("#pareto circle.pt").count() == len(ok)
    assert page.locator("#convergence circle.conv-pt").count() == len(ok)
    assert page.locator("#convergence path.conv-fail").count() == len(rows) - len(ok)
    assert page.locator("#roofline circle.roof-pt").count() == len(ok)
    assert page.locator("#pareto circle.pt.front").count() >= 1
    assert "policy_violation" in page.locator("#failures").inner_text()
    assert "buffering" in page.locator("#techniques").inner_text()
    shot(page, "run")
    best_sid = max(ok, key=lambda r: r[3])[1]
    page.click("#best-link")
    assert page.url.endswith(f"/kernels/{best_sid}")
    assert "ok" in page.locator("#status").inner_text()
    assert page.locator("#source .src").count() == 1 and page.locator("#results svg").count() == 2
    shot(page, "kernel-best")
    # from the fastest kernel that has parents, walk first parents back to a strategy with none,
    # then come back down through "children"
    with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as db:
        children = {c for (c,) in db.execute("SELECT child FROM lineage WHERE run_id = ?", (run_id,))}
    start = max((r for r in ok if r[1] in children), key=lambda r: r[3])[1]
    page.go_back()
    page.locator("a.kernel-link", has_text=start).click()
    visited = [start]
    while page.locator("a.parent-link").count():
        page.locator("a.parent-link").first.click()
        sid = page.url.rsplit("/", 1)[1]
        assert page.locator("a.child-link", has_text=visited[-1]).count() == 1
        visited.append(sid)
        assert len(visited) < 20
    assert page.locator("#parents").inner_text().count("None") == 1
    assert len(visited) >= 2, "the best kernel of this run descends from another"
    page.locator("a.child-link", has_text=visited[-2]).click()
    assert page.url.rsplit("/", 1)[1] == visited[-2]
    assert_clean(page)


def test_failed_kernel_page_shows_the_rule_and_its_parent(live, built, page):
    archive, run_id = built
    failed = next(r for r in db_rows(archive, run_id) if r[2] != "ok")
    page.goto(f"{live.url}/runs/{run_id}/kernels/{failed[1]}")
    assert "policy_violation" in page.locator("#status").inner_text()
    assert "import" in page.locator("#failure").inner_text()
    assert page.locator(".parent-diff").count() == 1 and "+import os" in page.locator(".parent-diff").inner_text()
    shot(page, "kernel-failed")


def test_timeline_is_computed_through_the_sandbox(live, built, page):
    """The per-pipe timeline of a kernel with parents, then its parents' on the same time axis."""
    archive, run_id = built
    with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as db:
        sid, n_parents = db.execute("""SELECT e.strategy_id, COUNT(*) FROM evaluations e JOIN lineage l
                                       ON l.run_id = e.run_id AND l.child = e.strategy_id WHERE e.status = 'ok'
                                       GROUP BY e.strategy_id ORDER BY e.time_ns LIMIT 1""").fetchone()
    page.goto(f"{live.url}/runs/{run_id}/kernels/{sid}")
    page.click("#timeline-link", timeout=120_000)
    page.wait_for_selector("#gantt svg", timeout=120_000)
    assert page.locator("#gantt rect.op").count() > 4
    pipes = page.locator("#gantt svg text").all_text_contents()
    assert "MTE2" in pipes and "M" in pipes
    page.click("#parent-timelines-link", timeout=240_000)
    page.wait_for_selector(".parent-gantt svg", timeout=240_000)
    assert page.locator(".parent-gantt svg").count() == n_parents
    assert page.locator("#parent-timelines-link").count() == 0
    shot(page, "kernel-timeline")


def test_leaderboard_and_api(live, built, page):
    archive, run_id = built
    page.goto(live.url + "/leaderboard")
    assert page.locator("table.leaderboard tr").count() == 2
    page.locator("table.leaderboard a", has_text=run_id).click()
    assert page.url.endswith(f"/runs/{run_id}")
    api = page.request.get(f"{live.url}/api/runs/{run_id}").json()
    assert len(api["evaluations"]) == len(db_rows(archive, run_id))
    sid = api["evaluations"][-1]["strategy_id"]
    kernel = page.request.get(f"{live.url}/api/runs/{run_id}/kernels/{sid}").json()
    assert kernel["source"].startswith("import os") and kernel["result"]["time_ns"] is None
    assert page.request.get(f"{live.url}/api/leaderboard?task=hgemm").json()["groups"][0]["rows"][0]["id"] == run_id


def test_model_run_pages_show_spend_misses_and_calls_as_text(tmp_path, page):
    """A run written by hostile models: spend and misses on the run page; on a kernel page the calls
    open as plain text (no element, no script, no dialog comes from them) and the parent kernel links."""
    from test_viewer_pages import BREAKOUT, EVIL, llm_archive
    store, run_id, s = llm_archive(tmp_path / "llm.sqlite")
    server = serve(store.path)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(f"{server.url}/runs/{run_id}")
        assert page.locator("#spend-by tr").count() == 1 + 4 and "$0.0079" in page.locator("#spend-total").inner_text()
        assert page.locator("#misses tr.miss").count() == 3
        assert page.locator("#predictions circle.pred-pt").count() == 2
        assert page.locator("#predictions circle.pred-pt.miss").count() == 1
        shot(page, "run-models")
        page.goto(f"{server.url}/runs/{run_id}/kernels/{s['met'].id}")
        assert page.locator("#call-table tr").count() == 1 + 2
        call = page.locator("details.call").nth(1)
        assert not call.evaluate("e => e.open") and not call.locator("pre.text").first.is_visible()
        call.locator("summary").first.click()
        assert call.locator("details.answer pre.text").inner_text().startswith("<think>" + BREAKOUT)
        prompt = call.locator("details.prompt").nth(1)
        prompt.locator("summary").click()
        assert prompt.locator("pre.text").inner_text() == "write " + EVIL
        assert EVIL in page.locator("#techniques").inner_text() and page.locator("#measured").count() == 1
        assert page.locator("main script, main img, main svg[onload]").count() == 0 and dialogs == []
        shot(page, "kernel-models")
        page.click("#parent-kernel-link")
        assert page.url.endswith(f"/kernels/{s['seed'].id}")
        assert_clean(page)
    finally:
        server.stop()
        store.close()


@pytest.mark.parametrize("path, status, words", [
    ("/runs/not%20a%20run!", 404, "is not a run id"),
    ("/runs/20990101-000000-abcdef", 404, "There is no run"),
    ("/runs/{run}/kernels/xyz", 404, "is not a strategy id"),
    ("/runs/{run}/kernels/0123456789ab", 404, "evaluated no strategy"),
    ("/runs/{run}/kernels/{sid}?core=abc", 400, "Bad request parameter"),
    ("/no/such/page", 404, "There is no page"),
    ("/api/runs/20990101-000000-abcdef", 404, "There is no run"),
])
def test_bad_requests_are_clear_pages(live, built, page, path, status, words):
    archive, run_id = built
    sid = db_rows(archive, run_id)[0][1]
    response = page.goto(live.url + path.format(run=run_id, sid=sid))
    assert response.status == status
    assert words in page.content()
    assert_clean(page)


def test_missing_empty_and_foreign_archives(tmp_path, page):
    archive = tmp_path / "later.sqlite"
    server = serve(archive)
    try:
        response = page.goto(server.url + "/")
        assert response.status == 404 and "There is no archive at" in page.locator("#error-message").inner_text()
        shot(page, "missing-archive")
        from strategies.archive import Archive
        Archive(archive).close()                     # a run creates it: the same server now shows it, empty
        assert page.goto(server.url + "/").status == 200
        assert "holds no runs yet" in page.locator("#empty").inner_text()
        assert page.goto(server.url + "/leaderboard").status == 200
        archive.unlink()
        archive.write_text("this is not a database\n" * 50)
        response = page.goto(server.url + "/")
        assert response.status == 500 and "cannot be read" in page.content()
        assert_clean(page)
    finally:
        server.stop()


def test_pages_follow_an_archive_being_written(tmp_path, built, page):
    """A writer commits evaluations (and holds a write transaction open) while pages reload."""
    from strategies.archive import Archive
    source, run_id = built
    rows = Archive.open_readonly(source).evaluations(run_id)
    target = Archive(tmp_path / "live.sqlite")
    new_id = target.new_run(Archive.open_readonly(source).run_config(run_id))
    server = serve(target.path)
    try:
        for n, row in enumerate(rows, 1):
            target.record(new_id, row.seq, row.attempt, row.strategy, Archive.open_readonly(source).source(row.kernel_hash),
                          row.result)
            assert page.goto(f"{server.url}/runs/{new_id}").status == 200
            assert f"{n}/" in page.locator(".sub").first.inner_text()
            assert page.locator("#convergence circle.conv-pt").count() == sum(r.result.ok for r in rows[:n])
        target.db.execute("BEGIN IMMEDIATE")            # a writer in the middle of a transaction
        target.db.execute("UPDATE runs SET status = 'half-written' WHERE id = ?", (new_id,))
        assert page.goto(f"{server.url}/runs/{new_id}").status == 200
        assert page.locator("#run-status").inner_text() == "running"
        target.db.commit()
        page.reload()
        assert page.locator("#run-status").inner_text() == "half-written"
    finally:
        server.stop()
        target.close()


def test_pages_follow_a_real_run_writing(tmp_path, built, page):
    """`cubepilot run` writes a new run into the served archive; every reload is a full page and
    the evaluation count only grows until the run's last one shows."""
    import json
    import subprocess
    import sys
    from test_viewer_archive import ROOT
    archive = tmp_path / "archive.sqlite"
    archive.write_bytes(built[0].read_bytes())
    server = serve(archive)
    proc = subprocess.Popen([sys.executable, "-c", "from agents.cli import main; main()", "run", "--budget", "3",
                             "--task", "hgemm", "--shape", "256x256x256", "--seed", "5", "--json", "--archive",
                             str(archive)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = []
    try:
        while proc.poll() is None:
            response = page.goto(server.url + "/")
            assert response.status == 200
            counts = [int(c) for c in page.locator("#runs tr td:nth-child(8)").all_inner_texts()]
            seen.append(counts[0] if len(counts) == 2 else 0)     # newest first: the run being written
            time.sleep(0.2)
        out, err = proc.communicate()
        assert proc.returncode == 0, err[-2000:]
        run_id = json.loads(out)["run_id"]
        rows = db_rows(archive, run_id)
        assert len(rows) == 3, rows
        assert page.goto(f"{server.url}/runs/{run_id}").status == 200
        marks = page.locator("#convergence circle.conv-pt, #convergence path.conv-fail").count()
        assert marks == len(rows), (marks, rows, page.locator(".sub").first.inner_text())
        assert seen == sorted(seen) and len(set(seen)) >= 2, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
