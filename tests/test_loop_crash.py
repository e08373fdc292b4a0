"""A candidate that kills the evaluating process cannot stop a run forever: each step is marked
in flight before it is evaluated; a step found in flight twice when the run died is recorded as
an evaluator error on the next resume instead of being evaluated a third time. A run stopped on
purpose forgets its marks. Failure injection: the evaluation of one step raises as a dying
worker would; the archive (SQLite) and the builtin backend are real."""
from __future__ import annotations

import pytest

from agents.builtin import builtin_team
from agents.loop import evolve
from evaluator.result import EvalResult, EvalStatus
from strategies.archive import Archive, RunConfig
from tests.helpers import machine

pytestmark = pytest.mark.unit

CONFIG = RunConfig(task="hgemm", machine="ascend-910a", shape="256x256x256", budget=6, seed=1)


class Died(Exception):
    pass


def evaluator(fatal_seq: int, calls: list[int]):
    def evaluate(jobs):
        for source, seq in jobs:
            calls.append(seq)
            if seq == fatal_seq:
                raise Died(seq)
            yield EvalResult(status=EvalStatus.wrong, stage="correctness", message="wrong", task=CONFIG.task,
                             machine=CONFIG.machine, shape=CONFIG.shape, source_hash=f"{seq:032x}")
    return evaluate


def test_a_step_that_kills_the_evaluator_twice_is_not_evaluated_again(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    run_id = archive.new_run(CONFIG)
    backend = builtin_team(CONFIG.mode, machine("ascend-910a"), (256, 256, 256))
    calls: list[int] = []
    for _ in range(2):   # the run dies at step 3, twice
        with pytest.raises(Died):
            evolve(archive, run_id, CONFIG, backend, evaluator(3, calls))
    summary = evolve(archive, run_id, CONFIG, backend, evaluator(3, calls))
    rows = archive.evaluations(run_id)
    assert summary.completed and [r.seq for r in rows] == list(range(6))
    assert rows[3].result.status is EvalStatus.evaluator_error and rows[3].result.rule == "evaluator.died"
    assert calls.count(3) == 2   # never a third time
    assert calls.count(4) == 1 and calls.count(5) == 1


def test_a_run_stopped_on_purpose_retries_its_step(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    run_id = archive.new_run(CONFIG)
    backend = builtin_team(CONFIG.mode, machine("ascend-910a"), (256, 256, 256))
    calls: list[int] = []
    for _ in range(3):   # stopped by the user at step 2, three times: each time a fresh start
        with pytest.raises(Died):
            evolve(archive, run_id, CONFIG, backend, evaluator(2, calls))
        archive.clear_pending(run_id)
    with pytest.raises(Died):
        evolve(archive, run_id, CONFIG, backend, evaluator(2, calls))
    assert calls.count(2) == 4 and not archive.evaluations(run_id)[2:]
