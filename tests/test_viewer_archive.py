"""The viewer's read model over a real archive: a short builtin run (a real subprocess, real
sandboxed evaluations) plus one real failing child, shared by the viewer and report tests;
read-only opening, Pareto front and convergence against brute force, unreadable rows."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agents.viewer.data import ArchiveReader, NotFound, convergence, pareto
from strategies.archive import Archive

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]
CLI = [sys.executable, "-c", "from agents.cli import main; main()"]
RUN_ARGS = ["run", "--budget", "10", "--task", "hgemm", "--shape", "256x256x256", "--seed", "0", "--json"]
_BUILT: dict[str, tuple[Path, str]] = {}


def cubepilot(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _add_failing_child(archive: Path, run_id: str) -> None:
    """Record one real failure: the best kernel with an import added, through the real cascade."""
    from evaluator.cascade import EvalConfig, evaluate
    from evaluator.tasks import get_task
    from hwmodel.spec import load_machine

    store = Archive(archive)
    rows = store.evaluations(run_id)
    best = min((r for r in rows if r.result.ok), key=lambda r: r.result.time_ns)
    source = "import os\n" + store.source(best.kernel_hash)
    task = get_task("hgemm")
    result = evaluate(source, task, load_machine("ascend-910a"), task.parse_shape("256x256x256"), EvalConfig(seed=1))
    assert not result.ok
    child = best.strategy.model_copy(update={"knobs": {**best.strategy.knobs, "DRAIN_ROWS": 8},
                                             "parents": (best.strategy.id,), "origin": "mutation",
                                             "plan": best.strategy.plan + " (with an import the policy forbids)"})
    store.record(run_id, max(r.seq for r in rows) + 1, 0, child, source, result)
    store.close()


def build_archive(directory: Path) -> tuple[Path, str]:
    """archive.sqlite in `directory` with one run (10 builtin evaluations + 1 failure); built once
    per session and copied after that."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "archive.sqlite"
    if "run" not in _BUILT:
        src = directory / "built" / "archive.sqlite"
        src.parent.mkdir()
        done = cubepilot(*RUN_ARGS, "--archive", str(src), cwd=directory)
        assert done.returncode == 0, done.stderr[-2000:]
        run_id = json.loads(done.stdout)["run_id"]
        _add_failing_child(src, run_id)
        with sqlite3.connect(src) as db:     # fold the WAL in, so one file copies whole
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _BUILT["run"] = (src, run_id)
    src, run_id = _BUILT["run"]
    shutil.copyfile(src, target)
    return target, run_id


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    return build_archive(tmp_path_factory.mktemp("viewer-archive"))


def test_reader_is_read_only_and_sees_every_evaluation(built):
    archive, run_id = built
    store = Archive.open_readonly(archive)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.db.execute("DELETE FROM evaluations")
    store.close()
    run = ArchiveReader(archive).run(run_id)
    with sqlite3.connect(archive) as db:
        statuses = [s for (s,) in db.execute("SELECT status FROM evaluations WHERE run_id = ? ORDER BY seq", (run_id,))]
    assert [p.status for p in run.points] == statuses
    assert statuses.count("ok") == 10 and len(statuses) == 11
    assert run.roof is not None and run.roof.engine == "fp16" and run.roof.limit_tflops > 0


def test_pareto_front_and_convergence_match_brute_force(built):
    archive, run_id = built
    points = list(ArchiveReader(archive).run(run_id).points)
    ok = [p for p in points if p.ok]
    dominated = {(p.seq, p.attempt) for p in ok for q in ok
                 if q is not p and q.time_ns <= p.time_ns and q.error <= p.error and (q.time_ns, q.error) != (p.time_ns, p.error)}
    assert {(p.seq, p.attempt) for p in pareto(points)} == {(p.seq, p.attempt) for p in ok} - dominated
    series = convergence(points)
    assert [b for _, b in series] == [max([p.tflops for p in points[:i + 1] if p.ok], default=0.0)
                                     for i in range(len(points))]


def test_lineage_children_and_ancestry(built):
    archive, run_id = built
    run = ArchiveReader(archive).run(run_id)
    failed = next(r for r in run.rows if not r.result.ok)
    parent = run.latest(failed.strategy.parents[0])
    assert failed.strategy.id in [c.strategy.id for c in run.children(parent.strategy.id)]
    chain = run.ancestry(failed.strategy.id)
    assert chain[0] is failed and not chain[-1].strategy.parents


def test_missing_empty_and_foreign_rows(tmp_path, built):
    with pytest.raises(NotFound, match="no archive"):
        ArchiveReader(tmp_path / "none.sqlite").runs()
    (tmp_path / "empty.sqlite").write_bytes(b"")
    assert ArchiveReader(tmp_path / "empty.sqlite").runs() == []
    with pytest.raises(NotFound, match="no runs yet"):
        ArchiveReader(tmp_path / "empty.sqlite").run("20260101-000000-abcdef")
    archive, run_id = built
    copy = tmp_path / "copy.sqlite"
    shutil.copyfile(archive, copy)
    with sqlite3.connect(copy) as db:       # a row written by a newer cubepilot, with a field we do not know
        body = json.loads(db.execute("SELECT result FROM evaluations WHERE run_id = ? AND seq = 0", (run_id,)).fetchone()[0])
        db.execute("UPDATE evaluations SET result = ? WHERE run_id = ? AND seq = 0",
                   (json.dumps({**body, "future_field": 1}), run_id))
    run = ArchiveReader(copy).run(run_id)
    assert run.unreadable == 1 and len(run.points) == 10


def test_a_builtin_run_shows_no_model_sections(built):
    """A run without models: no spend, predictions, written-by or calls on its pages; empty in the API."""
    import urllib.request

    from test_viewer_browser import serve
    archive, run_id = built
    run = ArchiveReader(archive).run(run_id)
    assert not run.by_models and run.llm.origins and not run.llm.predictions    # drafts say "builtin template"
    server = serve(archive)
    try:
        def get(path: str) -> str:
            with urllib.request.urlopen(server.url + path, timeout=60) as r:
                return r.read().decode()
        assert "model calls" not in get("/")
        html = get(f"/runs/{run_id}")
        assert 'id="models"' not in html and "written by" not in html and "Model spend" not in html
        html = get(f"/runs/{run_id}/kernels/{run.best.strategy_id}")
        for marker in ('id="written-by"', 'id="calls"', 'id="expected"', "Planned by"):
            assert marker not in html, marker
        data = json.loads(get(f"/api/runs/{run_id}"))
        assert data["spend"]["calls"] == 0 and data["predictions"] == []
        assert data["evaluations"][0]["written_by"]["kernel"]["author"] == "builtin"
        assert json.loads(get(f"/api/runs/{run_id}/calls"))["calls"] == []
    finally:
        server.stop()
