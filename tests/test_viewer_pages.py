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


# ---------------------------------------------------------------- runs written by models
SHORT_EVIL = "<script>alert(1)</script>"          # fits ExpectedEffect.bottleneck's 40 characters
BREAKOUT = "</pre></details></main><script>alert(2)</script><svg onload=alert(3)>"
SEED_SOURCE = "def kernel(k, a, b, c):\n    pass\n"


def _call(role: str, model: str, messages: list[tuple[str, str]], response: str, error: str = "",
          tokens: tuple[int, int] = (1000, 200), cost: float = 0.0014, latency: float = 1.5) -> dict:
    from agents.llm.records import CallRecord
    record = CallRecord(role=role, model=model, served_model=model + "-served", response=response,
                        messages=tuple({"role": r, "content": c} for r, c in messages), tokens_in=tokens[0],
                        tokens_out=tokens[1], tokens_estimated=False, latency_s=latency, cost_usd=cost,
                        cache_key="k", structured="json_schema", error=error, replayed=False,
                        finish_reason="" if error else "stop")
    return dict(role=role, model=model, tokens_in=tokens[0], tokens_out=tokens[1], cost_usd=cost, latency_s=latency,
                error=error, cache_key="k", record=record.to_json())


def llm_archive(path) -> tuple[Archive, str, dict[str, Strategy]]:
    """A run planned and written by models whose every text is hostile: a builtin seed (step 0);
    a model's kernel that met its prediction (1), one that missed it (2), one that failed and was
    fixed into another failure (3, attempts 0 and 1); model calls for each, one with an unreadable record."""
    from agents.roles import source_hash
    from strategies.archive import KernelOrigin, Prediction
    from strategies.strategy import ExpectedEffect

    store = Archive(path)
    run_id = store.new_run(RunConfig(task="hgemm", machine="ascend-910a", shape="256x256x256", budget=5, seed=0,
                                     backend="openai"))
    seed = Strategy(family="hgemm_cube", task="hgemm", plan="library seed", knobs={"BM": 64})
    store.record(run_id, 0, 0, seed, SEED_SOURCE, _result(EvalStatus.ok, "", "a" * 32, 8000.0),
                 origin=KernelOrigin("coder", "builtin", "template"))

    def child(seq: int, speedup: float, plan: str) -> Strategy:
        return Strategy(family="hgemm_cube", task="hgemm", plan=plan, knobs={"BM": 64 + seq}, parents=(seed.id,),
                        origin="llm", techniques=(EVIL, "double buffering"), author="strategist:" + EVIL,
                        expected=ExpectedEffect(bottleneck=SHORT_EVIL, speedup=speedup, rationale=BREAKOUT))

    met, missed, failed = child(1, 3.0, "met " + EVIL), child(2, 1.2, "missed " + BREAKOUT), child(3, 2.0, "failed")
    for seq, strategy, time_ns, mode in ((1, met, 3000.0, "diff"), (2, missed, 16000.0, "full")):
        store.record(run_id, seq, 0, strategy, f"# {BREAKOUT}\ndef kernel(k, a, b, c):\n    return {seq}\n",
                     _result(EvalStatus.ok, "", f"{seq}" * 32, time_ns),
                     origin=KernelOrigin("coder", EVIL, mode, source_hash(SEED_SOURCE), "h", note=BREAKOUT),
                     prediction=Prediction(seq, 0, strategy.id, seed.id, SHORT_EVIL, strategy.expected.speedup,
                                           8000.0 / time_ns))
    broken = f"# attempt 0\ndef kernel(k, a, b, c):\n    return {EVIL!r}\n"
    store.record(run_id, 3, 0, failed, broken, _result(EvalStatus.wrong, EVIL, "c" * 32),
                 origin=KernelOrigin("coder", "small-model", "full", source_hash(SEED_SOURCE)),
                 prediction=Prediction(3, 0, failed.id, seed.id, "MTE2", 2.0, None))
    store.record(run_id, 3, 1, failed, broken + "# fixed?\n", _result(EvalStatus.wrong, EVIL, "d" * 32),
                 origin=KernelOrigin("fixer", "small-model", "full", source_hash(broken), note="tried"),
                 prediction=Prediction(3, 1, failed.id, seed.id, "MTE2", 2.0, None))
    calls = [(1, 0, _call("strategist", EVIL, [("system", "You are the strategist " + EVIL), ("user", BREAKOUT)],
                          '{"plan": "' + BREAKOUT + '"}', tokens=(1200, 80), cost=0.0012)),
             (1, 0, _call("coder", EVIL, [("system", "coder"), ("user", "write " + EVIL)],
                          f"<think>{BREAKOUT}</think>\n```python\n# {BREAKOUT}\n```", tokens=(3000, 900), cost=0.0048)),
             (2, 0, _call("coder", EVIL, [("user", "x")], "y")),
             (3, 0, _call("coder", "small-model", [("user", "x")], "y", tokens=(10, 5), cost=0.0)),
             (3, 1, _call("fixer", "small-model", [("user", "fix " + EVIL)], "", error="timeout: " + EVIL,
                          tokens=(500, 0), cost=0.0005))]
    for seq, attempt, c in calls:
        store.record_call(run_id, seq, attempt, **c)
    store.db.execute("UPDATE llm_calls SET record = ? WHERE run_id = ? AND seq = 2", ("{not json " + EVIL, run_id))
    store.db.commit()
    return store, run_id, dict(seed=seed, met=met, missed=missed, failed=failed)


def fetch(url: str) -> tuple[int, str, dict]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read().decode(), r.headers


@pytest.mark.unit
def test_llm_read_model_spend_calls_origins_and_verdicts(tmp_path):
    from agents.runstate import MISS_FACTOR
    from agents.viewer import llm
    from agents.viewer.data import ArchiveReader

    assert llm.MISS_FACTOR == MISS_FACTOR                  # the viewer judges misses as the strategist is told
    store, run_id, s = llm_archive(tmp_path / "a.sqlite")
    store.close()
    reader = ArchiveReader(tmp_path / "a.sqlite")
    spend = reader.spend(run_id)
    assert (spend.calls, spend.failed, spend.tokens_in, spend.tokens_out) == (5, 1, 5710, 1185)
    assert spend.cost_usd == pytest.approx(0.0012 + 0.0048 + 0.0014 + 0.0005)
    assert [(b.role, b.model, b.calls) for b in spend.by] == [("coder", EVIL, 2), ("coder", "small-model", 1),
                                                             ("fixer", "small-model", 1), ("strategist", EVIL, 1)]
    calls = reader.calls(run_id, 1, full=True)
    assert [c.role for c in calls] == ["strategist", "coder"] and calls[0].messages[1].content == BREAKOUT
    assert calls[1].response.startswith("<think>") and calls[1].served_model == EVIL + "-served"
    assert "cannot be read" in reader.calls(run_id, 2, full=True)[0].unreadable
    assert reader.calls(run_id, 3)[1].outcome == "timeout: " + EVIL and not reader.calls(run_id, 3)[1].messages
    run = reader.run(run_id)
    assert run.by_models and run.origin(run.latest(s["failed"].id)).role == "fixer"
    verdicts = llm.verdicts(run.llm.predictions)
    assert [(v.prediction.seq, v.miss) for v in verdicts] == [(1, False), (2, True), (3, True), (3, True)]
    assert verdicts[1].ratio == pytest.approx(0.5 / 1.2) and verdicts[2].ratio is None
    assert [v.prediction.seq for v in llm.worst_misses(verdicts)] == [2, 3, 3]     # measured first, then failures
    by = {c.bottleneck: c for c in llm.calibration(verdicts)}
    assert by[SHORT_EVIL].predictions == 2 and by[SHORT_EVIL].misses == 1 and by["MTE2"].failed == 2


@pytest.mark.integration
def test_a_model_run_shows_spend_predictions_authors_and_calls_as_text(tmp_path):
    from test_viewer_browser import serve
    store, run_id, s = llm_archive(tmp_path / "a.sqlite")
    server = serve(store.path)
    try:
        status, html, _ = fetch(server.url + "/")
        assert ">model calls</th>" in html and '<td class="num">5</td><td class="num">0.0079</td>' in html
        status, html, _ = fetch(f"{server.url}/runs/{run_id}")
        assert status == 200 and "<script" not in html and "<img" not in html and "<svg onload" not in html
        assert 'id="models"' in html and "$0.0079</b> for 5 calls (1 failed)" in html
        assert "5,710 tokens in, 1,185 out" in html and html.count('<tr class="miss">') == 3
        assert "1 within ×1.5" in html and "3 misses" in html
        assert html.count('class="pred-pt miss"') == 1 and html.count('class="pred-fail"') == 2
        assert "strategist strategist:" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
        assert "coder &lt;script&gt;" in html and "(diff)" in html                     # the written-by column

        status, html, _ = fetch(f"{server.url}/runs/{run_id}/kernels/{s['met'].id}")
        assert status == 200 and "<script" not in html and "<svg onload" not in html and "<img" not in html
        assert html.count('<details class="call"') == 2 and '<details class="call" open' not in html
        assert html.count('<pre class="text">') == 2 + 2 + 2          # two calls: two prompts and an answer each
        assert f'href="/runs/{run_id}/kernels/{s["seed"].id}" id="parent-kernel-link"' in html
        assert "&lt;/pre&gt;&lt;/details&gt;&lt;/main&gt;" in html and 'id="expected"' in html
        assert "3.00x</b>" in html and "2.67x</b>" in html and "within ×1.5" in html

        status, html, _ = fetch(f"{server.url}/runs/{run_id}/kernels/{s['failed'].id}")
        assert status == 200 and "<script" not in html and "the kernel failed" in html
        assert "timeout: &lt;script&gt;" in html and "fixer small-model (full)" in html
        assert html.count('<details class="call') == 2 and "attempt 1 of step #3" in html
        status, html, _ = fetch(f"{server.url}/runs/{run_id}/kernels/{s['missed'].id}")
        assert "cannot be read" in html and "a miss" in html
        status, html, _ = fetch(f"{server.url}/runs/{run_id}/kernels/{s['seed'].id}")
        assert 'id="written-by"' not in html and 'id="calls"' not in html and 'id="expected"' not in html

        status, body, headers = fetch(f"{server.url}/api/runs/{run_id}")
        data = json.loads(body)
        assert headers["content-type"] == "application/json"
        assert data["spend"]["calls"] == 5 and len(data["spend"]["by"]) == 4
        assert [p["miss"] for p in data["predictions"]] == [False, True, True, True]
        assert data["evaluations"][1]["written_by"]["kernel"]["author"] == EVIL
        assert data["evaluations"][1]["written_by"]["strategist"] == "strategist:" + EVIL
        data = json.loads(fetch(f"{server.url}/api/runs/{run_id}/calls")[1])
        assert [c["n"] for c in data["calls"]] == [0, 1, 2, 3, 4] and "messages" not in data["calls"][0]
        data = json.loads(fetch(f"{server.url}/api/runs/{run_id}/calls?step=1&full=true")[1])
        assert [m["content"] for m in data["calls"][0]["messages"]] == ["You are the strategist " + EVIL, BREAKOUT]
        data = json.loads(fetch(f"{server.url}/api/runs/{run_id}/kernels/{s['met'].id}")[1])
        assert data["written_by"]["parent_kernel_strategy"] == s["seed"].id and len(data["calls"]) == 2
        assert data["prediction"]["measured"] == pytest.approx(8 / 3)
        assert data["strategy"]["expected"]["rationale"] == BREAKOUT
        with pytest.raises(urllib.error.HTTPError) as bad:
            fetch(f"{server.url}/api/runs/{run_id}/calls?step=-1")
        assert bad.value.code == 400
    finally:
        server.stop()
        store.close()


@pytest.mark.integration
def test_archives_from_before_or_after_the_model_tables_still_render(tmp_path):
    """An archive written before drafts, predictions and calls were kept (no such tables), and one
    from a later version (an extra column, a record with unknown fields, odd values)."""
    from test_viewer_browser import serve
    old, run_id, s = llm_archive(tmp_path / "old.sqlite")
    for table in ("drafts", "predictions", "llm_calls", "bandit"):
        old.db.execute(f"DROP TABLE {table}")
    old.db.commit()
    new, new_id, _ = llm_archive(tmp_path / "new.sqlite")
    new.db.execute("ALTER TABLE llm_calls ADD COLUMN future TEXT")
    new.db.execute("ALTER TABLE drafts ADD COLUMN future TEXT")
    new.db.execute("UPDATE llm_calls SET record = json_set(record, '$.future_field', 1), tokens_in = NULL, "
                   "cost_usd = 'lots' WHERE seq = 1")
    new.db.execute("UPDATE predictions SET predicted = 'n/a' WHERE seq = 2")
    new.db.commit()
    for store, rid in ((old, run_id), (new, new_id)):
        server = serve(store.path)
        try:
            kernels = [f"/runs/{rid}/kernels/{s[k].id}" for k in ("met", "failed")]
            for path in (f"/runs/{rid}", *kernels, f"/api/runs/{rid}", f"/api/runs/{rid}/calls?full=true",
                         f"/api{kernels[0]}"):
                status, body, _ = fetch(server.url + path)
                assert status == 200 and (json.loads(body) if path.startswith("/api/") else "<script" not in body), path
        finally:
            server.stop()
    old_run = json.loads(fetch_once(old.path, f"/api/runs/{run_id}"))
    assert old_run["spend"]["calls"] == 0 and old_run["predictions"] == []
    assert old_run["evaluations"][1]["written_by"] == {"strategist": "strategist:" + EVIL, "kernel": None}
    new_calls = json.loads(fetch_once(new.path, f"/api/runs/{new_id}/calls?step=1&full=true"))["calls"]
    assert new_calls[0]["tokens_in"] == 0 and new_calls[0]["cost_usd"] == 0.0 and new_calls[0]["messages"]
    assert len(json.loads(fetch_once(new.path, f"/api/runs/{new_id}"))["predictions"]) == 3
    old.close()
    new.close()


def fetch_once(archive, path: str) -> str:
    from test_viewer_browser import serve
    server = serve(archive)
    try:
        return fetch(server.url + path)[1]
    finally:
        server.stop()
