"""`cubepilot run --backend openai` end to end, as a user runs it: the real CLI in a
subprocess, the real openai SDK, a scripted OpenAI-compatible server on loopback, the real
sandbox and a real SQLite archive. Replay with the server gone, a hostile model, a provider
that goes away mid-run, a dollar budget, and the API key kept off disk."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.fakellm import FakeLLM, Reply
from tests.llm_author import Author

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]
CLI = [sys.executable, "-c", "from agents.cli import main; main()"]
SEEDS = 1          # hgemm's published strategy, evaluated before the model is asked


def cubepilot(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def llm_run(fake: FakeLLM, tmp_path: Path, *extra: str, budget: int = SEEDS + 3, env: dict | None = None):
    if "--api-key-env" not in extra:
        extra = (*extra, "--no-api-key")
    return cubepilot("run", "--backend", "openai", "--model", "fake-model", "--base-url", fake.base_url,
                     "--price-in", "1.0", "--price-out", "2.0", "--budget", str(budget), "--task", "hgemm", "--shape", "256x256x256",
                     "--seed", "2", "--json", *extra, cwd=tmp_path, env=env)


def rows(archive: Path, run_id: str, sql: str) -> list[tuple]:
    with sqlite3.connect(archive) as db:
        return db.execute(sql, (run_id,)).fetchall()


def test_a_run_records_every_call_and_replays_offline_step_for_step(tmp_path):
    key = f"sk-test-{uuid.uuid4().hex}"
    author = Author(think=True)
    with FakeLLM(author) as fake:
        out = llm_run(fake, tmp_path, "--api-key-env", "CUBEPILOT_TEST_KEY", env={"CUBEPILOT_TEST_KEY": key})
        served = len(fake.requests)
        prompts = ["\n".join(m["content"] for m in body["messages"]) for body in fake.requests]
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    archive = tmp_path / ".cubepilot" / "archive.sqlite"
    run_id = summary["run_id"]
    assert summary["evaluations"] == SEEDS + 3
    assert any("## Bottleneck cards" in p for p in prompts)     # the strategist sees its parents' cards
    calls = rows(archive, run_id, "SELECT role, model, tokens_in, tokens_out, cost_usd, error, record FROM llm_calls "
                                  "WHERE run_id = ? ORDER BY n")
    assert len(calls) == served and {"strategist", "coder"} <= {c[0] for c in calls}
    for role, model, tin, tout, cost, error, record in calls:
        assert model == "default" and tin > 0 and tout > 0 and error == ""
        assert cost == pytest.approx(tin * 1.0 / 1e6 + tout * 2.0 / 1e6)
        body = json.loads(record)
        assert body["messages"] and "<think>" in body["response"]           # raw answer kept, as received
    assert summary["spend"]["cost_usd"] == pytest.approx(sum(c[4] for c in calls))
    # lineage: each model-written kernel -> its strategy (written by the strategist) -> the role and model
    written = rows(archive, run_id, "SELECT d.role, d.author, d.mode, s.body FROM drafts d JOIN evaluations e USING "
                                    "(run_id, seq, attempt) JOIN strategies s ON s.id = e.strategy_id AND "
                                    "s.run_id = e.run_id WHERE d.run_id = ? AND d.author != 'builtin'")
    assert len(written) == 3
    for role, model, mode, body in written:
        strategy = json.loads(body)
        assert role == "coder" and model == "default" and mode in ("full", "diff")
        assert strategy["author"] == "strategist:default" and strategy["expected"]["speedup"] == 1.1
    assert len(rows(archive, run_id, "SELECT * FROM predictions WHERE run_id = ?")) == 3
    parents = rows(archive, run_id, "SELECT COUNT(*) FROM drafts d JOIN kernels k ON k.hash = d.parent_kernel "
                                    "WHERE d.run_id = ? AND d.author != 'builtin'")
    assert parents == [(3,)]                          # each names the archived kernel it was derived from
    # the key never reaches disk: not in the database, its WAL, or anything else written
    for path in (tmp_path / ".cubepilot").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    show = cubepilot("archive", "show", run_id, "--calls", cwd=tmp_path, env={"COLUMNS": "250"})
    assert show.returncode == 0 and "model calls" in show.stdout and "default -> coder default" in show.stdout

    replay = cubepilot("run", "--replay", run_id, "--json", cwd=tmp_path)      # the server is gone
    assert replay.returncode == 0, replay.stderr
    again = json.loads(replay.stdout)["run_id"]
    sql = "SELECT seq, attempt, strategy_id, kernel_hash, status, time_ns FROM evaluations WHERE run_id = ? ORDER BY seq, attempt"
    assert rows(archive, again, sql) == rows(archive, run_id, sql)


def test_a_hostile_model_never_runs_outside_the_sandbox_and_the_run_goes_on(tmp_path):
    marker = Path("/tmp/cubepilot-pwned")
    marker.unlink(missing_ok=True)
    with FakeLLM(Author(hostile=True)) as fake:
        out = llm_run(fake, tmp_path, "--allow-unpriced", "--fix-attempts", "0")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    archive = tmp_path / ".cubepilot" / "archive.sqlite"
    statuses = rows(archive, summary["run_id"], "SELECT e.status FROM evaluations e JOIN drafts d USING (run_id, seq, "
                                                "attempt) WHERE e.run_id = ? AND d.author != 'builtin'")
    assert statuses and {s for (s,) in statuses} == {"policy_violation"}
    assert not marker.exists()


def test_a_provider_that_goes_away_stops_the_run_and_resume_finishes_it(tmp_path):
    (tmp_path / "cubepilot.toml").write_text(
        '[agents]\nmax_consecutive_failures = 2\n[models.default]\nmodel = "fake-model"\n'
        'base_url = "http://127.0.0.1:1/v1"\napi_key_env = "none"\nmax_retries = 0\ntimeout_s = 20\n'
        'price_in = 1.0\nprice_out = 2.0\n')
    author = Author()
    fake = FakeLLM()

    def script(body: dict) -> Reply:
        if len(author.roles) == 2:             # after one strategist and one coder answer: gone
            threading.Thread(target=fake.stop).start()
            return Reply(drop=True)
        return author(body)
    fake._script = script
    with fake:
        out = llm_run(fake, tmp_path)
        assert out.returncode == 3, out.stderr
        assert "--resume" in out.stderr and "2 " in out.stderr
        run_id = json.loads(out.stdout)["run_id"]
        fake._script = author
        fake.start()                            # back on the same port
        again = cubepilot("run", "--resume", run_id, "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    archive = tmp_path / ".cubepilot" / "archive.sqlite"
    seqs = rows(archive, run_id, "SELECT seq, attempt FROM evaluations WHERE run_id = ? ORDER BY seq, attempt")
    assert len(seqs) == SEEDS + 3 and len(set(seqs)) == len(seqs)
    failed = rows(archive, run_id, "SELECT error FROM llm_calls WHERE run_id = ? AND error != ''")
    assert len(failed) >= 2


def test_a_dollar_budget_ends_the_run_cleanly_before_it_is_overspent(tmp_path):
    with FakeLLM(Author()) as fake:
        out = llm_run(fake, tmp_path, "--max-dollars", "0.05", "--price-in", "3.0", "--price-out", "3.0", budget=20)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["stopped_by"] == "dollars budget spent"
    assert SEEDS <= summary["evaluations"] < 20, summary
    assert 0 < summary["spend"]["cost_usd"] <= 0.05


def test_a_run_survives_a_model_and_server_that_misbehave_in_every_way(tmp_path):
    """Malformed JSON, a truncated kernel, edits that do not apply, reasoning blocks, a 429
    with retry-after, a 500, an answer slower than the deadline, an answer longer than
    the context: each costs a re-ask, a redraw or an SDK retry, never the run. Two steps
    are drafted side by side (--workers 2)."""
    (tmp_path / "cubepilot.toml").write_text(
        '[agents]\nedit_modes = ["diff"]\n[models.default]\nmodel = "fake-model"\nbase_url = "http://127.0.0.1:1/v1"\n'
        'api_key_env = "none"\nmax_retries = 1\ntimeout_s = 4\nprice_in = 1.0\nprice_out = 2.0\n')
    author = Author(think=True)
    faults = {2: Reply("{not json", usage=None), 4: Reply("slow down", status=429, headers={"retry-after": "0.2"}),
              6: Reply("boom", status=500), 8: Reply("```python\nimport ma", truncated=True),
              10: Reply("late", delay_s=6.0)}
    lock, count = threading.Lock(), [0]

    def script(body: dict) -> Reply:
        with lock:
            count[0] += 1
            n = count[0]
        if n in faults:
            return faults[n]
        reply = author(body)
        if author.roles[-1] == "coder" and n in (14, 15, 16):       # an edit that does not apply
            return Reply("Change it.\n<<<<<<< SEARCH\nthis line is not in the kernel\n=======\nX = 1\n>>>>>>> REPLACE")
        return reply
    with FakeLLM(script) as fake:
        out = llm_run(fake, tmp_path, "--workers", "2", budget=SEEDS + 6)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["evaluations"] == SEEDS + 6
    archive = tmp_path / ".cubepilot" / "archive.sqlite"
    calls = rows(archive, summary["run_id"], "SELECT role, error FROM llm_calls WHERE run_id = ?")
    assert any(error for _, error in calls)                       # the failures are recorded, not hidden
    assert summary["spend"]["calls"] == len(calls)


@pytest.mark.parametrize("flag, roles", [("--no-strategy", {"coder"}), ("--best-of-n", {"coder"}),
                                         ("--no-roofline", {"strategist", "coder"})])
def test_the_comparison_flags_run_without_the_piece_they_leave_out(tmp_path, flag, roles):
    author = Author()
    with FakeLLM(author) as fake:
        out = llm_run(fake, tmp_path, flag, "--allow-unpriced", "--fix-attempts", "0")
        prompts = ["\n".join(m["content"] for m in body["messages"]) for body in fake.requests]
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["evaluations"] == SEEDS + 3
    assert set(author.roles) == roles
    assert not any("## Bottleneck cards" in p for p in prompts)      # no strategist, or told to leave them out
    if flag == "--best-of-n":      # every sample starts from a seed kernel, never from what the run found
        run_id, archive = json.loads(out.stdout)["run_id"], tmp_path / ".cubepilot" / "archive.sqlite"
        library = {r[0] for r in rows(archive, run_id, "SELECT id FROM strategies WHERE run_id = ? AND origin = 'library'")}
        samples = [json.loads(b) for (b,) in rows(archive, run_id, "SELECT body FROM strategies WHERE run_id = ? "
                                                                  "AND origin != 'library'")]
        assert samples and all(s["parents"][0] in library for s in samples)
