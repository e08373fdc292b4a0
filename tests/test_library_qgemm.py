"""Quantized-GEMM library kernels on `qgemm`: each passes the cascade at a small shape, and
the compensation schemes beat INT8 direct on LLM-like inputs (errors computed here
against FP64, not read from the kernels)."""
from __future__ import annotations

import numpy as np
import pytest

from evaluator.cascade import EvalConfig, evaluate
from evaluator.result import EvalStatus
from evaluator.tasks import get_task
from helpers import library_kernel, machine, rel_fro_error
from hwmodel.simulate import simulate
from strategies.families import FAMILIES

SHAPE = (256, 256, 256)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["qgemm_fp16", "qgemm_int8_dense", "qgemm_int8_lowrank"])
def test_qgemm_kernel_is_accepted(name):
    result = evaluate(FAMILIES[name].source, get_task("qgemm"), machine("ascend-910a"), SHAPE, EvalConfig(seed=5))
    assert result.status is EvalStatus.ok, result.message
    assert result.errors["llm"] <= 2e-3 and result.time_ns > 0


def llm_error(name: str, shape=(256, 192, 320), seed: int = 0, **knobs) -> float:
    task = get_task("qgemm")
    inputs = task.inputs(shape, "llm", np.random.default_rng(seed))
    run = simulate(library_kernel(name, **knobs), machine("ascend-910a"), task.args(shape), inputs)
    return rel_fro_error(run.outputs["c"], task.reference(inputs))


@pytest.mark.sim
def test_low_rank_and_dense_compensation_beat_int8_direct_on_llm_inputs():
    direct = llm_error("qgemm_int8")
    assert direct > 2e-3                                         # the reason compensation exists
    assert llm_error("qgemm_int8_lowrank", RANK=16) < direct / 10
    assert llm_error("qgemm_int8_dense") < direct / 100


@pytest.mark.sim
def test_dense_needs_the_weight_residual_on_outlier_inputs():
    """Outlier channels of A amplify B's quantization residual: R_A·B alone stays over budget."""
    assert llm_error("qgemm_int8_dense", COMPENSATE_B=False) > 2e-3 > llm_error("qgemm_int8_dense")


@pytest.mark.sim
def test_low_rank_error_falls_with_rank_and_does_not_depend_on_tiling():
    e8, e16 = llm_error("qgemm_int8_lowrank", RANK=8), llm_error("qgemm_int8_lowrank", RANK=16)
    assert e16 < e8
    assert llm_error("qgemm_int8_lowrank", RANK=16, BM=64, BN=64) == pytest.approx(e16, rel=0.05)


@pytest.mark.sim
def test_apsq_low_precision_partial_sums_add_error_to_int8():
    direct = llm_error("qgemm_int8")
    psum16 = llm_error("qgemm_apsq", KPASS=128)                 # three passes over K = 320
    psum8 = llm_error("qgemm_apsq", KPASS=128, PSUM_DTYPE="int8")
    assert psum16 == pytest.approx(direct, rel=0.02)            # int16 partial sums cost almost nothing
    assert psum8 > psum16                                        # int8 ones add to it
