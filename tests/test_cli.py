"""The command line as a user meets it: exit codes, one-paragraph errors, and that
`import agents` is this project's package (not the openai-agents distribution)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import agents
from agents.cli import app
from strategies.library import kernel_path

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_agents_is_ours():
    assert Path(agents.__file__).resolve().parent == Path(__file__).resolve().parents[1] / "agents"


@pytest.mark.parametrize("args", [["machines"], ["machines", "show", "ascend-910b"], ["tasks"], ["strategies"]])
def test_listing_commands(args):
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert out.output.strip()


def test_eval_ok_json_and_exit_zero():
    out = runner.invoke(app, ["eval", str(kernel_path("hgemm_cube")), "--task", "hgemm", "--shape", "256x256x256",
                              "--json", "--seed", "1"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["status"] == "ok" and result["tflops"] > 0 and set(result["errors"]) == {"uniform", "normal", "wide", "llm"}


@pytest.mark.parametrize("args,needle", [
    (["eval", "/nonexistent.py"], "does not exist"),
    (["eval", "KERNEL", "--task", "nope"], "unknown task 'nope'"),
    (["eval", "KERNEL", "--machine", "nope"], "unknown machine 'nope'"),
    (["eval", "KERNEL", "--shape", "12x12"], "MxNxK"),
    (["machines", "show", "nope"], "presets:"),
])
def test_bad_input_exits_2_with_a_message(args, needle):
    args = [str(kernel_path("hgemm_cube")) if a == "KERNEL" else a for a in args]
    out = runner.invoke(app, args)
    assert out.exit_code == 2
    assert needle in out.output


def test_syntax_error_and_wrong_signature_exit_2(tmp_path):
    for text in ("def kernel(k, a, b, c)\n    pass\n", "def kernel(k, a):\n    pass\n"):
        path = tmp_path / "k.py"
        path.write_text(text)
        out = runner.invoke(app, ["eval", str(path), "--shape", "256x256x256"])
        assert out.exit_code == 2, out.output
        assert "compile_error" in out.output


def test_failing_kernel_exits_1_with_the_rule():
    redteam = Path(__file__).parent / "redteam" / "write_input.py"
    out = runner.invoke(app, ["eval", str(redteam), "--shape", "256x256x256"])
    assert out.exit_code == 1
    assert "hw_violation" in out.output and "read-only" in out.output
