"""Strategy records, knob rendering, evolution operators, the elites archive, the SQLite archive."""
from __future__ import annotations

import numpy as np
import pytest

from evaluator.result import EvalResult, EvalStatus
from hwmodel.loader import knob_names
from strategies.archive import Archive, RunConfig
from strategies.evolution import Elites, cell_of, crossover, local_step, mutate, random_strategy
from strategies.families import FAMILIES, families_for
from strategies.render import render

pytestmark = pytest.mark.unit


def result(time_ns: float, status=EvalStatus.ok, err: float = 1e-7) -> EvalResult:
    return EvalResult(status=status, message="" if status is EvalStatus.ok else "bad", stage="benchmark",
                      task="sgemm", machine="ascend-910a", shape="512x512x512", source_hash=f"h{time_ns}",
                      errors={"uniform": err}, time_ns=time_ns if status is EvalStatus.ok else float("inf"),
                      tflops=1e3 / time_ns)


def test_render_changes_only_the_named_knobs():
    family = FAMILIES["sgemm_cube"]
    source = render(family.source, {"BM": 64, "GROUP": 4})
    assert knob_names(source) == {**knob_names(family.source), "BM": 64, "GROUP": 4}
    changed = [a for a, b in zip(family.source.splitlines(), source.splitlines()) if a != b]
    assert len(changed) == 2 and all("#" in line for line in changed)   # comments survive
    with pytest.raises(KeyError):
        render(family.source, {"NOPE": 1})


def test_operators_stay_inside_the_knob_space():
    rng = np.random.default_rng(0)
    for family in FAMILIES.values():
        parent = family.strategy()
        for _ in range(50):
            for child in (mutate(parent, rng), random_strategy(family, rng)):
                assert all(child.knobs[k] in family.space[k] for k in family.space)
                assert child.family == family.name
        assert mutate(parent, rng).parents == (parent.id,)


def test_crossover_mixes_two_parents_and_records_both():
    rng = np.random.default_rng(1)
    fam = FAMILIES["sgemm_cube"]
    a, b = fam.strategy({"BM": 64, "GROUP": 1}), fam.strategy({"BM": 256, "GROUP": 8})
    children = [crossover(a, b, rng) for _ in range(40)]
    assert {c.knobs["BM"] for c in children} == {64, 256}
    assert all(c.parents == (a.id, b.id) and c.origin == "crossover" for c in children)


def test_strategy_id_is_content_addressed():
    fam = FAMILIES["hgemm_cube"]
    assert fam.strategy({"BM": 64}).id == fam.strategy({"BM": 64}).id != fam.strategy({"BM": 128}).id


def test_elites_keep_the_fastest_per_cell_and_a_pareto_front():
    fam = FAMILIES["sgemm_cube"]
    elites = Elites()
    slow, fast = fam.strategy({"BM": 64}), fam.strategy({"BM": 128})
    assert cell_of(slow) == cell_of(fast)
    assert elites.add(slow, result(200.0))
    assert elites.add(fast, result(100.0))
    assert not elites.add(fam.strategy({"BM": 256}), result(150.0))
    assert not elites.add(fam.strategy({"BK": 32}), result(1.0, EvalStatus.wrong))
    assert elites.best()[0].id == fast.id
    other = fam.strategy({"SLOTS": 1})
    elites.add(other, result(300.0, err=1e-9))          # slower but more accurate: on the front
    assert {s.id for s, _ in elites.front} == {fast.id, other.id}


def test_families_for_unknown_task_is_a_clear_error():
    with pytest.raises(KeyError, match="no strategy family"):
        families_for("nope")


def test_archive_round_trip_and_resume_state(tmp_path):
    path = tmp_path / "a.sqlite"
    archive = Archive(path)
    config = RunConfig(task="sgemm", machine="ascend-910a", shape="512x512x512", budget=3, seed=0)
    run_id = archive.new_run(config)
    strategy = FAMILIES["sgemm_cube"].strategy()
    archive.record(run_id, 0, 0, strategy, "source text", result(123.0))
    archive.record(run_id, 1, 0, strategy, "source text", result(1.0, EvalStatus.wrong))
    archive.close()
    again = Archive(path)                                   # a new connection sees committed rows
    rows = again.evaluations(run_id)
    assert [r.seq for r in rows] == [0, 1] and rows[0].strategy == strategy
    assert rows[1].result.time_ns == float("inf")
    assert again.run_config(run_id) == config
    assert again.source(rows[0].kernel_hash) == "source text"
    with pytest.raises(KeyError, match="no run"):
        again.run_config("missing")


def test_local_step_moves_exactly_one_knob_to_an_adjacent_value():
    family = FAMILIES["sgemm_cube"]
    parent = family.strategy()
    rng = np.random.default_rng(5)
    for _ in range(50):
        child = local_step(parent, rng)
        changed = [k for k in family.space if child.knobs[k] != parent.knobs[k]]
        assert len(changed) == 1, changed
        values = family.space[changed[0]]
        assert abs(values.index(child.knobs[changed[0]]) - values.index(parent.knobs[changed[0]])) == 1
        assert child.parents == (parent.id,)


@pytest.mark.parametrize("mode", ["strategy", "mutation-only", "random"])
def test_builtin_never_proposes_a_tried_strategy_when_the_neighbourhood_runs_out(mode):
    """The elites' neighbourhood is small (one family, one cell); once it is used up the
    strategist explores at random instead of proposing a tried strategy again."""
    from agents.builtin import BuiltinStrategist
    from agents.runstate import default_context
    from strategies.archive import RunConfig

    backend = BuiltinStrategist(mode)
    backend.initial("sgemm", 1, np.random.default_rng(0))
    make = default_context(RunConfig(task="sgemm", machine="ascend-910a", shape="256x256x256", budget=1, seed=0))
    elites = Elites()
    elites.add(FAMILIES["sgemm_cube"].strategy(), result(100.0))
    tried: set[str] = {FAMILIES["sgemm_cube"].strategy().signature}
    for step in range(120):
        proposal = backend.propose(make(elites=elites, tried=frozenset(tried)), np.random.default_rng([1, step]))
        assert proposal.signature not in tried and proposal.task == "sgemm"
        tried.add(proposal.signature)
