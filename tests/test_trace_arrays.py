"""A decoded trace carries its program as arrays too (op table + per-core op ids); the
passes that use them (validation, coverage, the benchmark check's output writes) say
exactly what the per-op passes say on the same trace."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from evaluator.cascade import _output_writes
from evaluator.codec import decode, encode
from evaluator.tasks import get_task
from hwmodel.dsl import record_trace
from hwmodel.errors import HwError
from hwmodel.execute import coverage
from hwmodel.loader import load_kernel_source
from hwmodel.simulate import declare
from hwmodel.validate import validate_trace
from strategies.families import FAMILIES
from tests.helpers import machine

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("name,shape", [("sgemm_cube", (256, 192, 160)), ("attention_flash", (1, 2, 256, 64)),
                                        ("qgemm_int8_sparse", (256, 256, 256))])
def test_array_passes_match_object_passes(name, shape):
    family = FAMILIES[name]
    task, m = get_task(family.task), machine("ascend-910a")
    args = declare(task.args(shape))
    decoded = decode(encode(record_trace(load_kernel_source(family.source), m, args)))
    plain = replace(decoded, op_table=None, op_ids=None)
    assert decoded.op_ids is not None and plain.op_ids is None
    validate_trace(decoded, m, args)
    assert [id(op) for op in decoded.distinct_ops()] == [id(op) for op in plain.distinct_ops()]
    for (a, b) in zip(coverage(decoded).values(), coverage(plain).values()):
        assert np.array_equal(a, b)
    out_id = next(t.id for t in decoded.tensors if t.role == "output")
    assert _output_writes(decoded, out_id) == _output_writes(plain, out_id)


def test_array_validation_still_counts_barriers_per_core():
    family = FAMILIES["sgemm_cube"]
    task, m = get_task(family.task), machine("ascend-910a")
    args = declare(task.args((256, 192, 160)))
    decoded = decode(encode(record_trace(load_kernel_source(family.source), m, args)))
    barrier = next(i for i, op in enumerate(decoded.op_table) if op.kind == "barrier")
    ids = list(decoded.op_ids)
    ids[3] = np.append(ids[3], barrier)
    ops = list(decoded.ops)
    ops[3] = tuple(ops[3]) + (decoded.op_table[barrier],)
    forged = replace(decoded, ops=tuple(ops), op_ids=tuple(ids))
    with pytest.raises(HwError, match="different numbers of barriers"):
        validate_trace(forged, m, args)
