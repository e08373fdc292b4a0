"""Every red-team kernel is rejected with the status its header names; every library
kernel is accepted (no false positives). Each evaluation runs the real sandbox."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from evaluator.cascade import EvalConfig, evaluate
from evaluator.sandbox import SandboxLimits
from evaluator.tasks import get_task
from hwmodel.spec import load_machine
from strategies.families import FAMILIES
from strategies.library import kernel_path

pytestmark = pytest.mark.integration

REDTEAM = sorted((Path(__file__).parent / "redteam").glob("*.py"))
LIMITS = SandboxLimits(wall_s=20, cpu_s=20, memory_bytes=1 * 2**30)


def header(path: Path, field: str, default: str | None = None) -> str | None:
    match = re.search(rf"^# {field}: (\S+)", path.read_text(), re.M)
    return match.group(1) if match else default


def test_redteam_has_every_class():
    assert len(REDTEAM) >= 20
    statuses = {header(p, "expect") for p in REDTEAM}
    assert {"policy_violation", "runtime_error", "hw_violation", "wrong", "timeout", "oom"} <= statuses


@pytest.mark.parametrize("path", REDTEAM, ids=[p.stem for p in REDTEAM])
def test_redteam_kernel_is_rejected(path: Path):
    task = get_task(header(path, "task", "sgemm"))
    shape = task.parse_shape(header(path, "shape", "512x512x512"))
    result = evaluate(kernel_source(path), task, load_machine("ascend-910a"), shape,
                      EvalConfig(seed=7, limits=LIMITS))
    assert result.status.value == header(path, "expect"), result.message
    if result.ok:   # a correct kernel that games the timing model: it must gain nothing by the trick
        assert 0 < result.pct_of_roofline <= 100, result.pct_of_roofline
        if header_line(path, "library") and not header_line(path, "baseline"):
            return      # a library kernel the model once let beat the machine: within the roofline is the check
        baseline = kernel_source(path).replace(*_knob_line(path))
        plain = evaluate(baseline, task, load_machine("ascend-910a"), shape, EvalConfig(seed=7, limits=LIMITS))
        assert plain.ok and result.time_ns >= plain.time_ns, (result.time_ns, plain.time_ns)
        assert result.hbm_bytes >= plain.hbm_bytes, (result.hbm_bytes, plain.hbm_bytes)   # no fill for free
        return
    assert result.message, "a rejection must say why"
    assert result.time_ns == float("inf")


def kernel_source(path: Path) -> str:
    """The file's kernel, or a library family with knobs when it says '# library: FAMILY K=V ...'."""
    line = header_line(path, "library")
    if not line:
        return path.read_text()
    name, *knobs = line.split()
    family = FAMILIES[name]
    return family.implement(family.strategy({k: int(v) for k, v in (kv.split("=") for kv in knobs)}))


def _knob_line(path: Path) -> tuple[str, str]:
    """('KNOB = value' in the kernel, '# baseline: KNOB = other' from its header)."""
    line = header_line(path, "baseline")
    assert line, f"{path.name} expects ok, so it must name its baseline: '# baseline: KNOB = VALUE'"
    knob = line.split("=")[0].strip()
    current = re.search(rf"^{knob} = .*$", path.read_text(), re.M).group(0)
    return current, line


def header_line(path: Path, field: str) -> str | None:
    match = re.search(rf"^# {field}: (.+)$", path.read_text(), re.M)
    return match.group(1).strip() if match else None


LIBRARY = [(f.name, f.task) for f in FAMILIES.values() if f.task in ("sgemm", "hgemm")]   # qgemm, attention: own tests


@pytest.mark.parametrize("name,task", LIBRARY)
def test_library_kernel_is_accepted(name: str, task: str):
    result = evaluate(FAMILIES[name].source, get_task(task), load_machine("ascend-910a"),
                      get_task(task).parse_shape("512x512x512"), EvalConfig(seed=3))
    assert result.ok, result.message
    assert result.tflops > 0 and 0 < result.pct_of_roofline <= 100
    assert all(result.errors[d] <= result.budgets[d] for d in result.errors)


def test_sandbox_survives_and_parent_stays_healthy():
    """After an infinite loop and a memory bomb, the same process evaluates a good kernel."""
    machine, task = load_machine("ascend-910a"), get_task("hgemm")
    for bad in ("infinite_loop", "memory_bomb"):
        source = (Path(__file__).parent / "redteam" / f"{bad}.py").read_text()
        assert not evaluate(source, task, machine, (256, 256, 256), EvalConfig(limits=LIMITS)).ok
    good = evaluate(kernel_path("hgemm_cube").read_text(), task, machine, (256, 256, 256))
    assert good.ok, good.message


def test_qgemm_budget_separates_int8_from_fp16():
    """The qgemm task is built so that plain INT8 fails on LLM-like inputs and plain FP16 passes."""
    machine, task = load_machine("ascend-910a"), get_task("qgemm")
    int8 = evaluate(kernel_path("qgemm_int8").read_text(), task, machine, (512, 512, 512), EvalConfig(seed=2))
    assert int8.status.value == "wrong" and int8.errors["llm"] > 5 * 2e-3
    fp16 = (Path(__file__).parent / "redteam" / "fp16_downgrade.py").read_text()
    ok = evaluate(fp16, task, machine, (512, 512, 512), EvalConfig(seed=2))
    assert ok.ok, ok.message
