"""The trusted side never trusts the sandbox's reply: random, truncated and forged traces (a
kernel that escaped Python's walls could send any bytes) always end as a status, never as
an exception, and within the trusted side's budget. Failure injection: the sandbox's reply
is replaced by forged bytes; everything after it (decode, validation, replay, timing,
references) is the real evaluator."""
from __future__ import annotations

import json
import struct
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import evaluator.cascade as cascade
from evaluator.cascade import EvalConfig, evaluate
from evaluator.codec import CodecError, decode, encode
from evaluator.result import EvalStatus
from evaluator.sandbox import SandboxOutcome
from evaluator.tasks import get_task
from hwmodel.dsl import record_trace
from hwmodel.loader import load_kernel_source
from hwmodel.simulate import declare
from strategies.families import FAMILIES
from tests.helpers import machine

pytestmark = pytest.mark.sim

TASK = get_task("hgemm")
SHAPE = (256, 256, 256)   # one of the task's small shapes: one sandbox run serves every stage
INTERESTING = st.sampled_from([-2**63, -2**40, -1, 0, 1, 2, 3, 7, 16, 64, 255, 256, 4095, 4096, 2**20, 2**31, 2**40,
                               2**62])


@lru_cache(maxsize=None)
def honest_blobs() -> dict[str, bytes]:
    kernel = load_kernel_source(FAMILIES["hgemm_cube"].source)
    return {TASK.format_shape(s): encode(record_trace(kernel, machine("ascend-910a"), declare(TASK.args(s))))
            for s in TASK.small_shapes}


def split(blob: bytes) -> tuple[dict, list[np.ndarray]]:
    n, n_tables = struct.unpack_from("<QQ", blob, 0)
    header = json.loads(blob[16:16 + n])
    pos, tables = 16 + n, []
    for _ in range(n_tables):
        (size,) = struct.unpack_from("<Q", blob, pos)
        tables.append(np.frombuffer(blob[pos + 8:pos + 8 + size], np.int64).copy())
        pos += 8 + size
    return header, tables


def join(header: dict, tables: list[np.ndarray]) -> bytes:
    head = json.dumps(header).encode()
    parts = [struct.pack("<QQ", len(head), len(tables)), head]
    for t in tables:
        parts += [struct.pack("<Q", t.nbytes), t.tobytes()]
    return b"".join(parts)


def forged_evaluation(monkeypatch, blobs: dict[str, bytes], status: str = "ok"):
    class ForgedSandbox:
        def __init__(self, source, machine, arg_names, shapes, limits):
            self.keys = list(shapes)

        def result(self):
            return SandboxOutcome(status, "forged", 0, {k: blobs.get(k, b"") for k in self.keys})

        def cancel(self):
            pass

    monkeypatch.setattr(cascade, "SandboxRun", ForgedSandbox)
    return evaluate("def kernel(k, a, b, c):\n    pass\n", TASK, machine("ascend-910a"), SHAPE,
                    EvalConfig(seed=5, seeds=1, trusted_wall_s=60))


def test_honest_reply_is_ok(monkeypatch):
    """The harness itself: the honest traces through the forged channel evaluate as ok."""
    result = forged_evaluation(monkeypatch, honest_blobs())
    assert result.ok, result.message


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_forged_tables_end_in_a_status(monkeypatch, data):
    blobs, key, header, tables = _pick(data)
    for _ in range(data.draw(st.integers(1, 4))):
        t = data.draw(st.integers(0, len(tables) - 1))
        if tables[t].size:
            tables[t][data.draw(st.integers(0, tables[t].size - 1))] = data.draw(INTERESTING)
    _assert_a_status(forged_evaluation(monkeypatch, {**blobs, key: join(header, tables)}))


def _pick(data) -> tuple[dict[str, bytes], str, dict, list[np.ndarray]]:
    """The honest replies, the shape whose trace is forged, and that trace split apart."""
    blobs = honest_blobs()
    key = data.draw(st.sampled_from(sorted(blobs)))
    return blobs, key, *split(blobs[key])


def _assert_a_status(result) -> None:
    assert isinstance(result.status, EvalStatus)
    assert result.status is not EvalStatus.evaluator_error, result.traceback
    assert result.eval_seconds < 60


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=12)


def _paths(x, path=()):
    yield path
    if isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, path + (i,))
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, path + (k,))


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_forged_headers_end_in_a_status(monkeypatch, data):
    blobs, key, header, tables = _pick(data)
    paths = [p for p in _paths(header) if p]
    path = data.draw(st.sampled_from(paths))
    node = header
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = data.draw(JSON)
    _assert_a_status(forged_evaluation(monkeypatch, {**blobs, key: join(header, tables)}))


@settings(max_examples=80)
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6))
def test_truncated_and_flipped_bytes_decode_or_raise_codec_error(cut, flips):
    blob = bytearray(honest_blobs()[TASK.format_shape(SHAPE)])
    for pos, value in flips:
        blob[pos % len(blob)] = value
    blob = bytes(blob[:cut % (len(blob) + 1)])
    try:
        decode(blob)
    except CodecError:
        pass


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=256), status=st.sampled_from(["ok", "wrong", "banana", "evaluator_error"]))
def test_random_replies_end_in_a_status(monkeypatch, junk, status):
    result = forged_evaluation(monkeypatch, {k: junk for k in honest_blobs()}, status)
    assert isinstance(result.status, EvalStatus) and not result.ok


def test_a_trace_for_other_arguments_is_invalid(monkeypatch):
    """A trace that declares a 16x16 output (it would be timed as tiny work) is not the task's."""
    kernel = load_kernel_source(FAMILIES["hgemm_cube"].source)
    small = {TASK.format_shape(s): encode(record_trace(kernel, machine("ascend-910a"), declare(TASK.args((16, 16, 16)))))
             for s in TASK.small_shapes}
    result = forged_evaluation(monkeypatch, small)
    assert result.status is EvalStatus.invalid_trace and result.rule.startswith("trace"), result.message


def test_timing_faster_than_the_roofline_is_implausible(monkeypatch):
    """Failure injection: a timing engine that reports a thousandth of the time."""
    real = cascade.simulate_timing

    def fast(trace, m):
        t = real(trace, m)
        return type(t)(**{**t.__dict__, "cycles": t.cycles / 1000, "time_ns": t.time_ns / 1000})

    monkeypatch.setattr(cascade, "simulate_timing", fast)
    result = forged_evaluation(monkeypatch, honest_blobs())
    assert result.status is EvalStatus.implausible and result.rule == "roofline", result.message
    assert result.time_ns == float("inf")


def test_an_evaluator_bug_is_a_status_with_its_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(cascade, "replay_validated", broken)
    result = forged_evaluation(monkeypatch, honest_blobs())
    assert result.status is EvalStatus.evaluator_error
    assert "ZeroDivisionError" in result.traceback and "injected" not in result.message
