"""The simulator still says what it said: every case of the frozen timing corpus
(tests/data/timing_corpus.json, written by benchmarks/timing_corpus.py --freeze) gives the
same cycles, times, busy fractions, bytes and L2 hits bit for bit, and the corpus's
evaluations the same status, rule, message, errors and time. A change that is meant to move
these figures re-freezes the corpus in the same commit."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import timing_corpus  # noqa: E402

pytestmark = pytest.mark.sim

FROZEN = json.loads(timing_corpus.CORPUS.read_text())
CASES = {case.name: case for case in timing_corpus.cases()}


def test_corpus_covers_every_family_and_the_cases_of_today():
    assert FROZEN["version"] == timing_corpus.VERSION
    assert set(FROZEN["timing"]) == set(CASES)
    assert {c.family for c in CASES.values() if c.machine == "ascend-910a"} == set(timing_corpus.FAMILIES)
    assert {f"{k}/{t}@{s}" for k, t, s in timing_corpus.EVALUATIONS} == set(FROZEN["evaluations"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_timing_is_unchanged(name: str):
    current = json.loads(json.dumps(timing_corpus.timing_figures(CASES[name])))
    assert timing_corpus.differences(FROZEN["timing"][name], current) == []


@pytest.mark.parametrize("kernel,task,shape", timing_corpus.EVALUATIONS,
                         ids=[f"{k}-{t}-{s}" for k, t, s in timing_corpus.EVALUATIONS])
def test_evaluation_is_unchanged(kernel: str, task: str, shape: str):
    current = json.loads(json.dumps(timing_corpus.evaluation_figures(kernel, task, shape)))
    assert timing_corpus.differences(FROZEN["evaluations"][f"{kernel}/{task}@{shape}"], current) == []
