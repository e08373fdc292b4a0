"""The attention kernels of the seed library pass the real evaluation cascade (sandbox, small
shapes on every distribution, a ragged benchmark shape); the causal entries are their base
kernels rendered with CAUSAL = True; the XY-Serve kernel re-tiles itself for a smaller machine."""
from __future__ import annotations

import re

import pytest

from evaluator.cascade import EvalConfig, evaluate
from evaluator.tasks import get_task
from hwmodel.spec import load_machine
from strategies.families import FAMILIES
from strategies.library import kernel_path

pytestmark = pytest.mark.integration

BASES = ("attention_flash", "attention_xyserve", "attention_lut")
LIBRARY = [(name, "attention") for name in BASES] + [(f"{name}_causal", "attention-causal") for name in BASES]
SHAPES = ("1x2x200x128", "2x3x333x64")     # ragged: sequence lengths that are no multiple of any tile


@pytest.mark.parametrize("name,task", LIBRARY)
@pytest.mark.parametrize("shape", SHAPES)
def test_attention_kernel_is_accepted(name: str, task: str, shape: str):
    the_task = get_task(task)
    result = evaluate(FAMILIES[name].source, the_task, load_machine("ascend-910a"),
                      the_task.parse_shape(shape), EvalConfig(seed=5))
    assert result.ok, f"{name} on {task} at {shape}: {result.status.value}: {result.message}"
    assert set(result.errors) == set(the_task.distributions)
    assert all(result.errors[d] <= result.budgets[d] for d in result.errors)
    assert result.bench_error <= 3e-3 and 0 < result.pct_of_roofline <= 100


@pytest.mark.parametrize("name", BASES)
def test_causal_entry_is_the_base_kernel_with_causal_set(name: str):
    """The causal families render the base family's source with CAUSAL = True: one source, two entries."""
    base = FAMILIES[name].source
    assert re.search(r"^CAUSAL = False ", base, re.M), f"{name} must default to CAUSAL = False"
    causal = FAMILIES[f"{name}_causal"].source
    assert re.search(r"^CAUSAL = True ", causal, re.M)
    assert FAMILIES[name].fixed or base == kernel_path(name).read_text()
    assert [a for a, b in zip(base.splitlines(), causal.splitlines()) if a != b] == \
        [line for line in base.splitlines() if line.startswith("CAUSAL = ")]


def test_lut_error_is_above_exact_exp_but_within_budget():
    task, machine, shape = get_task("attention"), load_machine("ascend-910a"), (1, 2, 512, 128)
    exact, lut = (evaluate(FAMILIES[name].source, task, machine, shape, EvalConfig(seed=9))
                  for name in ("attention_flash", "attention_lut"))
    assert exact.ok and lut.ok, (exact.message, lut.message)
    assert lut.errors["normal"] > exact.errors["normal"]       # the table's approximation shows
    assert max(lut.errors.values()) < 1.5e-3                   # and leaves half the 3e-3 budget


def test_lut_entry_is_flash_with_the_table_exp():
    """The LUT-exp family renders attention_flash with EXP_LUT = True, not a copy of it."""
    flash, lut = FAMILIES["attention_flash"].source, FAMILIES["attention_lut"].source
    assert FAMILIES["attention_flash"].source == kernel_path("attention_flash").read_text()
    assert re.search(r"^EXP_LUT = False ", flash, re.M) and re.search(r"^EXP_LUT = True ", lut, re.M)
    assert [b for a, b in zip(flash.splitlines(), lut.splitlines()) if a != b] == \
        [line for line in lut.splitlines() if line.startswith("EXP_LUT = ")]


def test_xyserve_retiles_for_a_smaller_unified_buffer():
    """With UB cut to 96 KiB the fixed flash tiles no longer fit; the meta-kernel re-plans."""
    machine = load_machine("ascend-910a")
    small = machine.model_copy(update={"memories": {
        **machine.memories, "UB": machine.memories["UB"].model_copy(update={"capacity_bytes": 96 * 1024})}})
    task, shape = get_task("attention"), (1, 2, 200, 128)
    flash = evaluate(kernel_path("attention_flash").read_text(), task, small, shape, EvalConfig(seed=3))
    xyserve = evaluate(kernel_path("attention_xyserve").read_text(), task, small, shape, EvalConfig(seed=3))
    assert not flash.ok and "UB" in flash.message
    assert xyserve.ok, xyserve.message
