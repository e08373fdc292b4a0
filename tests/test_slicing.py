"""The backward slice is exact: replaying only the ops chosen output elements depend on
gives those elements bit for bit the values of a full replay, for every library kernel
and for random choices of elements; and it replays fewer ops."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from evaluator.tasks import get_task
from hwmodel.loader import load_kernel_source
from hwmodel.simulate import declare, replay
from hwmodel.dsl import record_trace
from hwmodel import slicing
from hwmodel.slicing import backward_slice
from strategies.families import FAMILIES
from tests.helpers import machine

pytestmark = pytest.mark.sim

SMALL = {"sgemm": (256, 192, 160), "hgemm": (256, 192, 160), "qgemm": (256, 256, 256), "qgemm-int8": (256, 256, 256),
         "attention": (1, 2, 256, 64), "attention-causal": (1, 2, 256, 64)}
CASES = sorted(FAMILIES)


def _setup(name: str, seed: int):
    family = FAMILIES[name]
    task = get_task(family.task)
    shape = SMALL[family.task]
    args = task.args(shape)
    m = machine("ascend-910a")
    trace = record_trace(load_kernel_source(family.source), m, declare(args))
    inputs = task.inputs(shape, task.distributions[0], np.random.default_rng(seed))
    return task, m, trace, inputs


@pytest.mark.parametrize("name", CASES)
def test_slice_equals_full_replay(name: str):
    task, m, trace, inputs = _setup(name, 1)
    full, _, _ = replay(trace, m, inputs)
    out = full[task.output_name]
    rng = np.random.default_rng(2)
    targets = rng.random(out.shape) < 0.01
    targets.flat[rng.integers(out.size)] = True
    sliced, _, _ = replay(trace, m, inputs, targets={task.output_name: targets})
    got = sliced[task.output_name][targets]
    assert np.array_equal(got, out[targets], equal_nan=True)
    keep = backward_slice(trace, {next(t.id for t in trace.tensors if t.name == task.output_name): targets})
    kept = sum(bool(k) for phase in keep for core in phase for k in core)
    assert 0 < kept <= trace.num_ops - sum(op.kind == "barrier" for ops in trace.ops for op in ops)


@pytest.mark.parametrize("name", ["sgemm_cube", "attention_flash", "qgemm_int8_sparse"])
@pytest.mark.parametrize("min_saving", [0, slicing.MIN_ROW_SAVING])
def test_checked_rows_replay_rows_not_tiles(name: str, min_saving: int, monkeypatch):
    """A few checked rows keep the cube products (and the copies feeding them) for those rows
    only: the slice holds runs of rows, and the replayed values are still exact (with every
    row-separable op kept by rows, and with only the large ones)."""
    monkeypatch.setattr(slicing, "MIN_ROW_SAVING", min_saving)
    task, m, trace, inputs = _setup(name, 4)
    full, _, _ = replay(trace, m, inputs)
    out = full[task.output_name]
    targets = np.zeros(out.shape, bool)
    flat = targets.reshape(-1, out.shape[-1])
    flat[[3, 77], 5:40] = True
    out_id = next(t.id for t in trace.tensors if t.name == task.output_name)
    keep = backward_slice(trace, {out_id: targets})
    partial = [k for phase in keep for core in phase for k in core if k and k is not True]
    if not min_saving:   # two checked rows: runs of one row each (merged runs stay short)
        assert partial and all(r1 - r0 < 8 for k in partial for r0, r1 in k)
    sliced, _, _ = replay(trace, m, inputs, targets={task.output_name: targets})
    assert np.array_equal(sliced[task.output_name][targets], out[targets], equal_nan=True)


@settings(max_examples=15)
@given(st.integers(0, 2**16), st.sampled_from(["sgemm_cube", "hgemm_cube", "qgemm_int8", "attention_flash"]))
def test_slice_of_random_elements_is_exact(seed: int, name: str):
    task, m, trace, inputs = _CACHE.get(name) or _CACHE.setdefault(name, _setup(name, 3))
    full = _FULL.get(name)
    if full is None:
        full = _FULL[name] = replay(trace, m, inputs)[0][task.output_name]
    rng = np.random.default_rng(seed)
    targets = np.zeros(full.shape, bool)
    targets[tuple(rng.integers(0, s) for s in full.shape)] = True
    sliced = replay(trace, m, inputs, targets={task.output_name: targets})[0][task.output_name]
    assert np.array_equal(sliced[targets], full[targets], equal_nan=True)


_CACHE: dict = {}
_FULL: dict = {}
