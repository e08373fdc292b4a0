"""Input distributions: the attention distribution with large logits is what it claims (logits
in the hundreds on some rows, fp16-representable inputs), and every task checks its benchmark
shape on its hardest distribution."""
from __future__ import annotations

import numpy as np
import pytest

from evaluator.tasks import TASKS, get_task
from evaluator.tasks.distributions import draw, draw_attention

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("shape", [(1, 2, 256, 64), (1, 1, 512, 128), (2, 1, 200, 64), (1, 4, 1024, 128)])
def test_qk_outliers_puts_logits_in_the_hundreds_on_some_rows(shape):
    inputs = get_task("attention").inputs(shape, "qk_outliers", np.random.default_rng(1))
    q, k = (inputs[n].astype(np.float64) for n in ("q", "key"))
    assert all(np.abs(x).max() < 65504 and np.isfinite(x).all() for x in inputs.values())
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(shape[-1])
    row_max = np.abs(logits).max(axis=-1)
    big = row_max > 50
    assert 0.05 < big.mean() < 0.25                           # about one row in eight
    assert 100 < np.median(row_max[big]) < 400 and row_max.max() > 150
    assert row_max[~big].max() < 30                           # the other rows stay near N(0, 1) logits
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(logits.max(axis=-1).astype(np.float32))).any()   # unshifted exp overflows fp32


def test_draw_attention_is_reproducible_and_keeps_single_tensor_draws():
    shape = (1, 2, 64, 64)
    a = draw_attention("qk_outliers", shape, np.random.default_rng(3))
    b = draw_attention("qk_outliers", shape, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    rng1, rng2 = np.random.default_rng(4), np.random.default_rng(4)
    joint = draw_attention("normal", shape, rng1)
    single = [draw("normal", shape, rng2, "weight") for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(joint, single))
    with pytest.raises(ValueError, match="draw_attention"):
        draw("qk_outliers", shape, np.random.default_rng(0))


@pytest.mark.parametrize("name,hardest", [("sgemm", "wide"), ("hgemm", "wide"), ("qgemm", "llm"),
                                          ("qgemm-int8", "llm"), ("attention", "qk_outliers"),
                                          ("attention-causal", "qk_outliers")])
def test_benchmark_shape_is_checked_on_the_hardest_distribution(name, hardest):
    task = TASKS[name]
    assert task.hardest_distribution == hardest and hardest in task.distributions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_precision_wide_draw_is_the_masked_negation(seed):
    """The float32 'wide' draw flips signs with copysign; the values are those of the plain
    formula (a masked negative) bit for bit, so frozen evaluation errors stay put."""
    got = draw("wide", (64, 96), np.random.default_rng(seed), single=True)
    rng = np.random.default_rng(seed)
    x = rng.random((64, 96), dtype=np.float32)
    x = np.exp2(x * np.float32(16) - np.float32(8)) * (rng.random((64, 96), dtype=np.float32) + np.float32(1))
    flip = rng.random((64, 96), dtype=np.float32) < 0.5
    assert np.array_equal(got.view(np.int32), np.where(flip, -x, x).view(np.int32))
