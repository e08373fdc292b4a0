"""`cubepilot run` end to end, as a user runs it: a real subprocess, a real SQLite archive,
a real sandbox per evaluation; killed with SIGKILL mid-run and resumed."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-c", "from agents.cli import main; main()"]
SHAPE = ["--shape", "256x256x256"]


def cubepilot(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, **kw)


def evaluations(archive: Path, run_id: str) -> list[tuple]:
    with sqlite3.connect(archive) as db:
        return db.execute("SELECT seq, strategy_id, kernel_hash, status FROM evaluations WHERE run_id = ? "
                          "ORDER BY seq", (run_id,)).fetchall()


def test_run_json_summary_and_determinism(tmp_path):
    runs = []
    for _ in range(2):
        out = cubepilot("run", "--budget", "10", "--seed", "5", "--json", *SHAPE, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout))
    first = runs[0]
    for key in ("run_id", "best_tflops", "best_pct_of_roofline", "baseline_tflops", "speedup_vs_baseline",
                "evaluations", "failures"):
        assert key in first
    assert first["evaluations"] == 10 and first["speedup_vs_baseline"] >= 1.0
    archive = tmp_path / ".cubepilot" / "archive.sqlite"
    a, b = (evaluations(archive, r["run_id"]) for r in runs)
    assert [row[1:] for row in a] == [row[1:] for row in b]     # same seed, same run


@pytest.mark.parametrize("workers", ["1", "3"])
def test_resume_after_sigkill_loses_and_repeats_nothing(tmp_path, workers):
    """With workers, steps run in batches evaluated side by side; a kill mid-batch loses only
    what was in flight and the resumed run still makes the uninterrupted run's choices."""
    archive = tmp_path / "runs.sqlite"
    proc = subprocess.Popen([*CLI, "run", "--budget", "12", "--seed", "3", "--json", "--archive", str(archive),
                             "--workers", workers, *SHAPE],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.time() + 300
    run_id, done = None, []
    while time.time() < deadline:
        time.sleep(0.5)
        if archive.exists():
            with sqlite3.connect(archive) as db:
                try:
                    row = db.execute("SELECT id FROM runs").fetchone()
                except sqlite3.OperationalError:       # the run is still creating its tables
                    row = None
            if row:
                run_id = row[0]
                done = evaluations(archive, run_id)
                if len(done) >= 4:
                    break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_id and 4 <= len(done) < 12
    before = evaluations(archive, run_id)
    out = cubepilot("run", "--resume", run_id, "--archive", str(archive), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    after = evaluations(archive, run_id)
    assert after[:len(before)] == before                          # nothing recorded was redone or lost
    assert [row[0] for row in after] == list(range(12))           # every step exactly once
    reference = cubepilot("run", "--budget", "12", "--seed", "3", "--json", "--archive", str(tmp_path / "b.sqlite"),
                          "--workers", workers, *SHAPE, cwd=tmp_path)
    ref_rows = evaluations(tmp_path / "b.sqlite", json.loads(reference.stdout)["run_id"])
    assert [r[1:3] for r in after] == [r[1:3] for r in ref_rows]  # as if never interrupted


def test_unknown_resume_id_is_a_clear_error(tmp_path):
    out = cubepilot("run", "--resume", "nope", "--archive", str(tmp_path / "x.sqlite"), cwd=tmp_path)
    assert out.returncode == 2 and "no run 'nope'" in out.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_a_worker_killed_mid_run_is_an_error_that_resume_recovers_from(tmp_path):
    """Failure injection: SIGKILL one evaluation worker. The run stops with an actionable
    error instead of waiting forever, keeps what it recorded, and resumes to completion."""
    archive = tmp_path / "runs.sqlite"
    proc = subprocess.Popen([*CLI, "run", "--budget", "10", "--seed", "4", "--json", "--archive", str(archive),
                             "--workers", "2", *SHAPE], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.time() + 300
    while time.time() < deadline and not (archive.exists() and _count(archive) >= 2):
        time.sleep(0.3)
    workers = [p for p in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert workers, "no worker processes found"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "worker process died" in err and "--resume" in err
    with sqlite3.connect(archive) as db:
        run_id = db.execute("SELECT id FROM runs").fetchone()[0]
    kept = evaluations(archive, run_id)
    out = cubepilot("run", "--resume", run_id, "--archive", str(archive), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    after = evaluations(archive, run_id)
    assert after[:len(kept)] == kept and [row[0] for row in after] == list(range(10))


def _count(archive: Path) -> int:
    with sqlite3.connect(archive) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
        except sqlite3.OperationalError:
            return 0
