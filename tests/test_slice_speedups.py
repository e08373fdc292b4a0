"""The shortcuts of the sliced replay say what the plain passes say: phases and GM writes
found on a decoded trace's op id arrays, the slice walked on them, and ops kept for several
runs of rows replayed once on the rows gathered."""
from __future__ import annotations

import numpy as np
import pytest

from evaluator.codec import decode, encode
from evaluator.tasks import get_task
from hwmodel.dsl import record_trace
from hwmodel.loader import load_kernel_source
from hwmodel.simulate import declare, replay
from hwmodel import execute
from hwmodel.slicing import backward_slice, phase_bounds, phases, row_op
from strategies.families import FAMILIES
from tests.helpers import machine

SMALL = {"sgemm": (256, 192, 160), "attention": (1, 2, 256, 64), "qgemm-int8": (256, 256, 256)}
NAMES = ["sgemm_cube", "attention_flash", "qgemm_int8_sparse"]


def _traces(name: str):
    family = FAMILIES[name]
    task = get_task(family.task)
    shape = SMALL[family.task]
    m = machine("ascend-910a")
    recorded = record_trace(load_kernel_source(family.source), m, declare(task.args(shape)))
    return task, shape, m, recorded, decode(encode(recorded))


@pytest.mark.parametrize("name", NAMES)
def test_phase_bounds_are_the_phases(name: str):
    _, _, _, recorded, decoded = _traces(name)
    for trace in (recorded, decoded):
        bounds = phase_bounds(trace)
        for core, ops in enumerate(trace.ops):
            assert [list(ops[a:b]) for a, b in bounds[core]] == phases(ops)


@pytest.mark.parametrize("name", NAMES)
def test_slice_on_op_arrays_is_the_slice_on_ops(name: str):
    """The decoded trace (phases and GM writes found on its arrays) gives the same slice as
    the recorded one, and its sliced replay the full replay's values."""
    task, shape, m, recorded, decoded = _traces(name)
    out = next(t for t in recorded.tensors if t.name == task.output_name)
    rng = np.random.default_rng(7)
    targets = rng.random(out.shape) < 0.003
    targets.flat[rng.integers(targets.size)] = True
    assert backward_slice(decoded, {out.id: targets}) == backward_slice(recorded, {out.id: targets})
    inputs = task.inputs(shape, task.distributions[0], rng)
    full = replay(recorded, m, inputs)[0][task.output_name]
    sliced = replay(decoded, m, inputs, targets={task.output_name: targets})[0][task.output_name]
    assert np.array_equal(sliced[targets], full[targets], equal_nan=True)


class _RunByRun:
    """The replay of an op kept for several runs of rows before gathering: one row op per run."""

    def __init__(self, op, runs):
        self.ops = [row_op(op, r0, r1) for r0, r1 in runs]

    def replay(self, mem, machine):
        for op in self.ops:
            execute._HANDLERS[op.kind](op, mem, machine)


@pytest.mark.parametrize("name", NAMES)
def test_gathered_rows_replay_as_run_by_run(name: str, monkeypatch):
    """Ops kept for several runs of rows give, replayed once on the gathered rows, the bits
    that one replay per run gives."""
    task, shape, m, _, decoded = _traces(name)
    out = next(t for t in decoded.tensors if t.name == task.output_name)
    targets = np.zeros(out.shape, bool)
    targets.reshape(-1, out.shape[-1])[[3, 9, 77, 140], 5:40] = True
    inputs = task.inputs(shape, task.distributions[0], np.random.default_rng(11))
    keep = backward_slice(decoded, {out.id: targets})
    assert any(k not in (True, False) and len(k) > 1 for phase in keep for core in phase for k in core)
    gathered = replay(decoded, m, inputs, targets={task.output_name: targets})[0][task.output_name]
    monkeypatch.setattr(execute, "_GatheredRows", _RunByRun)
    run_by_run = replay(decoded, m, inputs, targets={task.output_name: targets})[0][task.output_name]
    assert gathered[targets].tobytes() == run_by_run[targets].tobytes()
