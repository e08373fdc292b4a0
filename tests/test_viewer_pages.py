"""Viewer pieces without a browser: chart scales and marks, SVG and HTML escaping of whatever
an archive holds (a plan, a message or a kernel that carries markup is shown, never run),
the Gantt's bounded size, and the JSON API's types, over a real server on loopback."""
from __future__ import annotations

import json
import math
import urllib.request

import pytest

from agents.viewer import charts
from agents.viewer.data import Point, pareto
from evaluator.result import EvalResult, EvalStatus
from strategies.archive import Archive, RunConfig
from strategies.strategy import Strategy

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def pt(seq: int, time_ns: float | None, error: float | None, status: str = "ok", sid: str = "0123456789ab") -> Point:
    return Point(seq, 0, sid, "fam", "random", status, "", time_ns, 1.0 if time_ns else 0.0, 10.0, error, "MTE2 40%")


@pytest.mark.unit
@pytest.mark.parametrize("lo, hi, log", [(1e-8, 3e-6, True), (10, 35, True), (0.5, 2000, True), (0, 37.2, False),
                                         (0, 1, False), (5, 5, False)])
def test_scale_ticks_are_inside_and_ordered(lo, hi, log):
    s = charts.Scale(lo, hi, 100, 500, log=log)
    ticks = s.ticks()
    assert ticks == sorted(ticks) and len(ticks) >= 2
    assert all(s.lo - 1e-12 <= t <= s.hi * (1 + 1e-12) for t in ticks)
    assert s(s.lo) == pytest.approx(100) and s(s.hi) == pytest.approx(500)


@pytest.mark.unit
def test_pareto_keeps_exactly_the_undominated():
    points = [pt(0, 10, 1e-3), pt(1, 5, 2e-3), pt(2, 20, 5e-4), pt(3, 12, 1e-3), pt(4, 5, 3e-3),
              pt(5, None, None, "wrong"), pt(6, 30, 5e-4)]
    assert [p.seq for p in pareto(points)] == [1, 0, 2]


@pytest.mark.unit
def test_chart_marks_and_escaping():
    points = [pt(i, 1000.0 * (i + 1), 1e-6 * (i + 1), sid=f"{i:012x}") for i in range(7)] + [pt(7, None, None, "timeout")]
    link = lambda p: f"/runs/r/kernels/{p.strategy_id}?x={EVIL}"   # noqa: E731
    svg = charts.pareto_svg(points, pareto(points), link)
    assert svg.count('class="pt') == 7 and "<script" not in svg and "&lt;script&gt;" in svg
    conv = charts.convergence_svg(points, [(i, 1.0) for i in range(8)], link)
    assert conv.count('class="conv-pt"') == 7 and conv.count('class="conv-fail"') == 1
    bars = charts.bars_svg([(EVIL, 1.0, EVIL, None)], 1.0, EVIL)
    assert "<script" not in bars and "<img" not in bars and "&lt;img" in bars


@pytest.mark.unit
def test_gantt_stays_small_for_long_timelines():
    ops = [(i, ("MTE2", "M", "MTE3")[i % 3], i * 10.0, i * 10.0 + 7.0) for i in range(30_000)]
    svg = charts.gantt_svg(ops, ["S", "V", "M", "MTE1", "MTE2", "MTE3"], 1.0)
    assert svg.count("<rect") <= 3 * 1100
    assert ">MTE2<" in svg and ">V<" not in svg          # only pipes the core used get a row


def _result(status: EvalStatus, message: str, source_hash: str, time_ns: float = math.inf) -> EvalResult:
    ok = status is EvalStatus.ok
    return EvalResult(status=status, message=message, stage="benchmark" if ok else "correctness", task="hgemm",
                      machine="ascend-910a", shape="256x256x256", source_hash=source_hash, time_ns=time_ns,
                      tflops=2 * 256**3 / time_ns / 1e3 if ok else 0.0, errors={"uniform": 1e-7},
                      budgets={"uniform": 1e-6}, pipe_busy={"MTE2": 0.5} if ok else {}, rule="" if ok else EVIL)


@pytest.mark.integration
def test_archive_markup_is_shown_not_run(tmp_path):
    from test_viewer_browser import serve
    store = Archive(tmp_path / "a.sqlite")
    run_id = store.new_run(RunConfig(task="hgemm", machine="ascend-910a", shape="256x256x256", budget=2, seed=0))
    parent = Strategy(family="hgemm_cube", task="hgemm", plan=EVIL, tags={"buffering": EVIL}, knobs={"BM": 64})
    child = Strategy(family="hgemm_cube", task="hgemm", plan="child " + EVIL, knobs={"BM": 128},
                     parents=(parent.id,), origin="mutation")
    store.record(run_id, 0, 0, parent, f"# {EVIL}\ndef kernel(k, a, b, c):\n    pass\n",
                 _result(EvalStatus.ok, "", "a" * 32, 5000.0))
    store.record(run_id, 1, 0, child, f"# </pre>{EVIL}\ndef kernel(k, a, b, c):\n    return 1\n",
                 _result(EvalStatus.wrong, EVIL, "b" * 32))
    server = serve(store.path)
    try:
        for path in ("/", f"/runs/{run_id}", f"/runs/{run_id}/kernels/{parent.id}", f"/runs/{run_id}/kernels/{child.id}",
                     "/leaderboard"):
            with urllib.request.urlopen(server.url + path, timeout=30) as r:
                html = r.read().decode()
                assert r.status == 200 and "<script" not in html and "<img" not in html, path
                assert "default-src 'none'" in r.headers["content-security-policy"]
        assert "&lt;script&gt;" in html or path == "/leaderboard"
        with urllib.request.urlopen(f"{server.url}/api/runs/{run_id}", timeout=30) as r:
            data = json.loads(r.read())
        assert [e["status"] for e in data["evaluations"]] == ["ok", "wrong"]
        assert data["evaluations"][1]["time_ns"] is None and data["failures"][0]["rule"] == EVIL
    finally:
        server.stop()
        store.close()


@pytest.mark.integration
def test_timeline_is_recorded_in_the_sandbox_once_and_cached(tmp_path, monkeypatch):
    import threading

    import agents.viewer.timeline as timeline
    from strategies.library import kernel_path
    source = kernel_path("hgemm_cube").read_text()
    calls = []
    compute = timeline.compute
    monkeypatch.setattr(timeline, "compute", lambda *a, **k: (calls.append(a), compute(*a, **k))[1])
    store = timeline.TimelineStore(tmp_path)
    args = (source, "hgemm", "ascend-910a", "256x256x256", 0)
    threads = [threading.Thread(target=store.get, args=args) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1                                   # concurrent requests share one sandbox recording
    again = timeline.TimelineStore(tmp_path).get(*args)      # a new server reads the file
    assert len(calls) == 1 and again.core == 0 and again.ops and {"M", "MTE2"} <= {op[1] for op in again.ops}
    assert all(start <= end for _, _, start, end in again.ops)
    with pytest.raises(timeline.TimelineError, match="does not exist"):
        store.get(source, "hgemm", "ascend-910a", "256x256x256", 4000)
    with pytest.raises(timeline.TimelineError, match="did not record"):
        store.get("import os\n" + source, "hgemm", "ascend-910a", "256x256x256", 0)
