"""`cubepilot report`, `archive diff` and `archive leaderboard` as a user runs them (real
subprocesses over a real archive): PNG charts that decode, a summary with the best kernel's
figures from the archive, a strategy and source diff, a ranking, clear errors for bad ids."""
from __future__ import annotations

import json
import sqlite3

import pytest

from test_viewer_archive import build_archive, cubepilot

pytestmark = pytest.mark.integration
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("report"))


def best(archive, run_id) -> tuple:
    with sqlite3.connect(archive) as db:
        return db.execute("SELECT strategy_id, tflops FROM evaluations WHERE run_id = ? AND status = 'ok' "
                          "ORDER BY time_ns LIMIT 1", (run_id,)).fetchone()


def test_report_writes_charts_and_summary(built, tmp_path):
    archive, run_id = built
    out = tmp_path / "report"
    done = cubepilot("report", run_id, "--out", str(out), "--archive", str(archive), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("convergence", "pareto", "roofline", "families"):
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
        from matplotlib.image import imread
        assert imread(out / f"{name}.png").shape[1] > 600
    summary = (out / "summary.md").read_text()
    sid, tflops = best(archive, run_id)
    assert f"`{sid}`" in summary and f"{tflops:.2f} TFLOP/s" in summary
    assert "| policy_violation |" in summary and "![roofline](roofline.png)" in summary


def test_report_errors(built, tmp_path):
    archive, _ = built
    done = cubepilot("report", "20990101-000000-abcdef", "--out", str(tmp_path), "--archive", str(archive), cwd=tmp_path)
    assert done.returncode == 2 and "There is no run" in done.stderr and "Traceback" not in done.stderr
    done = cubepilot("report", "x", "--out", str(tmp_path), "--archive", str(tmp_path / "none.sqlite"), cwd=tmp_path)
    assert done.returncode == 2 and "no archive" in done.stderr


def test_archive_diff_shows_strategy_and_source(built, tmp_path):
    archive, run_id = built
    with sqlite3.connect(archive) as db:
        child, parent = db.execute("SELECT e.strategy_id, l.parent FROM evaluations e JOIN lineage l ON "
                                   "l.child = e.strategy_id WHERE e.status != 'ok'").fetchone()
    done = cubepilot("archive", "diff", parent, f"{run_id}:{child}", "--archive", str(archive), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "knob DRAIN_ROWS" in done.stdout and "+import os" in done.stdout and "policy_violation" in done.stdout
    done = cubepilot("archive", "diff", "0123456789ab", child, "--archive", str(archive), cwd=tmp_path)
    assert done.returncode == 2 and "no strategy '0123456789ab'" in done.stderr


def test_archive_leaderboard(built, tmp_path):
    archive, run_id = built
    done = cubepilot("archive", "leaderboard", "--task", "hgemm", "--json", "--archive", str(archive), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    group = json.loads(done.stdout)["groups"][0]
    sid, tflops = best(archive, run_id)
    assert (group["task"], group["machine"]) == ("hgemm", "ascend-910a")
    assert group["runs"][0]["strategy_id"] == sid and group["runs"][0]["tflops"] == pytest.approx(tflops)
    done = cubepilot("archive", "leaderboard", "--task", "sgemm", "--archive", str(archive), cwd=tmp_path)
    assert done.returncode == 0 and "no run of task sgemm" in done.stdout
