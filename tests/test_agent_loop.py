"""The evolution loop with scripted roles (fakes for the LLM, allowed in unit tests) over a
real SQLite archive: fixes are attempts of the same step and count against the budget,
repeats are drawn again and never evaluated, a run whose roles produce nothing stops, a
resumed run continues a step's fixes, predictions are stored against measurements; and
the pieces it stands on (AST hash, configuration, bandit)."""
from __future__ import annotations

import subprocess
import sys
import tomllib

import numpy as np
import pytest

from agents import config as cfg
from agents.loop import NoProgress, evolve
from agents.mixture import Bandit, improvement_per_dollar
from agents.roles import Draft, RoleError, Team, ast_hash
from evaluator.result import EvalResult, EvalStatus
from strategies.archive import Archive, RunConfig
from strategies.families import FAMILIES
from strategies.strategy import ExpectedEffect, Strategy

pytestmark = pytest.mark.unit

CONFIG = RunConfig(task="hgemm", machine="ascend-910a", shape="256x256x256", budget=6, seed=1)
SEED = FAMILIES["hgemm_cube"].strategy()


def kernel(n: int) -> str:
    return f"from hwmodel.dsl import Kernel\nN = {n}\n\ndef kernel(k, a, b, c):\n    pass\n"


class Strategist:
    name = "fake"

    def __init__(self, repeat_every: int = 0, give_up: bool = False):
        self.n, self.repeat_every, self.give_up = 0, repeat_every, give_up

    def initial(self, ctx, size, rng):
        return [SEED]

    def propose(self, ctx, rng):
        if self.give_up:
            raise RoleError("nothing usable")
        self.n += 1
        n = 1 if self.repeat_every and self.n % self.repeat_every == 0 else self.n
        return Strategy(family="hgemm_cube", task="hgemm", plan=f"plan {n}", techniques=(f"t{n}",),
                        parents=(SEED.id,), origin="mutation", author="strategist:fake",
                        expected=ExpectedEffect(bottleneck="MTE2", speedup=2.0))


class Coder:
    name = "fake"

    def implement(self, strategy, parent, ctx, rng):
        n = int(strategy.techniques[0][1:]) if strategy.techniques else 0
        return Draft(kernel(n), role="coder", author="fake", mode="full")


class Fixer:
    name = "fake"

    def __init__(self):
        self.calls = []

    def fix(self, strategy, draft, result, attempt, ctx, rng):
        self.calls.append(attempt)
        return strategy, Draft(draft.source + f"FIX = {attempt}\n", role="fixer", author="fake", mode="full")


def evaluator(fail_first: bool = True, seen: list | None = None):
    """Odd N fail on their first attempt; fixed kernels and even N are ok, faster as N grows."""
    def evaluate(jobs):
        for source, seq in jobs:
            if seen is not None:
                seen.append(source)
            n = int(source.split("N = ")[1].split("\n")[0]) if "N = " in source else 0
            ok = not (fail_first and n % 2 and "FIX" not in source)
            yield EvalResult(status=EvalStatus.ok if ok else EvalStatus.wrong, stage="benchmark",
                             message="" if ok else "wrong", rule="" if ok else "correctness.budget",
                             task=CONFIG.task, machine=CONFIG.machine, shape=CONFIG.shape,
                             source_hash=f"{abs(hash(source)) % 16**32:032x}", time_ns=1000.0 / (1 + n) if ok else
                             float("inf"))
    return evaluate


def test_fixes_are_attempts_of_the_same_step_and_count_against_the_budget(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    run_id = archive.new_run(CONFIG)
    fixer = Fixer()
    team = Team(Strategist(), Coder(), fixer, fix_attempts=1, population=0)
    summary = evolve(archive, run_id, CONFIG, team, evaluator())
    rows = archive.evaluations(run_id)
    steps = [(r.seq, r.attempt) for r in rows]
    assert len(rows) == CONFIG.budget == summary.evaluations
    assert (1, 0) in steps and (1, 1) in steps            # step 1 (N=1) failed, then its fix
    fixed = [r for r in rows if r.attempt == 1]
    assert fixed and all(r.result.ok for r in fixed) and fixer.calls and set(fixer.calls) == {1}
    origins = archive.origins(run_id)
    assert origins[(1, 1)].role == "fixer" and origins[(1, 0)].role == "coder"
    first = next(r for r in rows if (r.seq, r.attempt) == (1, 0))
    assert origins[(1, 1)].parent_kernel == first.kernel_hash          # the failed kernel, as the archive names it
    assert archive.source(origins[(1, 1)].parent_kernel) == kernel(1)


def test_repeated_strategies_and_kernels_are_drawn_again_never_evaluated(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    run_id = archive.new_run(CONFIG)
    sources: list[str] = []
    team = Team(Strategist(repeat_every=2), Coder(), Fixer(), fix_attempts=0, population=0)
    evolve(archive, run_id, CONFIG, team, evaluator(fail_first=False, seen=sources))
    assert len(sources) == CONFIG.budget and len({ast_hash(s) for s in sources}) == len(sources)
    signatures = [r.strategy.signature for r in archive.evaluations(run_id)]
    assert len(set(signatures)) == len(signatures)


def test_roles_that_produce_nothing_stop_the_run_instead_of_spinning(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    run_id = archive.new_run(CONFIG)
    team = Team(Strategist(give_up=True), Coder(), Fixer(), population=0, draws=3)
    with pytest.raises(NoProgress):
        evolve(archive, run_id, CONFIG, team, evaluator())
    assert len(archive.evaluations(run_id)) == 1        # the seed was evaluated, nothing else


def test_predictions_are_stored_against_the_measured_speedup(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    run_id = archive.new_run(CONFIG)
    evolve(archive, run_id, CONFIG, Team(Strategist(), Coder(), Fixer(), fix_attempts=0, population=0),
           evaluator(fail_first=False))
    predictions = archive.predictions(run_id)
    assert len(predictions) == CONFIG.budget - 1
    for p in predictions:
        n = p.seq          # the fake's strategy n is written at step n
        assert p.predicted == 2.0 and p.parent_id == SEED.id
        assert p.measured == pytest.approx((1000.0 / 1) / (1000.0 / (1 + n)))


def test_a_resumed_run_continues_the_fixes_of_its_last_step(tmp_path):
    archive = Archive(tmp_path / "a.sqlite")
    run_id = archive.new_run(CONFIG)

    class Dies(Exception):
        pass

    def dying(jobs):
        for result, (source, seq) in zip(evaluator()(jobs), jobs):
            if "FIX" in source:
                raise Dies
            yield result
    team = Team(Strategist(), Coder(), Fixer(), fix_attempts=1, population=0)
    with pytest.raises(Dies):
        evolve(archive, run_id, CONFIG, team, dying)
    assert [(r.seq, r.attempt) for r in archive.evaluations(run_id)] == [(0, 0), (1, 0)]
    archive.clear_pending(run_id)
    evolve(archive, run_id, CONFIG, Team(Strategist(), Coder(), Fixer(), fix_attempts=1, population=0), evaluator())
    steps = [(r.seq, r.attempt) for r in archive.evaluations(run_id)]
    assert steps[:3] == [(0, 0), (1, 0), (1, 1)] and len(steps) == CONFIG.budget


def test_resuming_after_a_finished_wide_batch_is_not_mistaken_for_no_progress(tmp_path):
    """Resume starts at the batch of the last recorded step; when that batch is finished it
    yields nothing to evaluate, which is not the roles failing."""
    config = CONFIG.model_copy(update={"workers": 6, "budget": 12})
    archive = Archive(tmp_path / "a.sqlite")
    run_id = archive.new_run(config)
    team = Team(Strategist(), Coder(), Fixer(), fix_attempts=0, population=0)
    evolve(archive, run_id, config.model_copy(update={"budget": 6}), team, evaluator(fail_first=False))
    evolve(archive, run_id, config, Team(Strategist(), Coder(), Fixer(), fix_attempts=0, population=0),
           evaluator(fail_first=False))
    assert len(archive.evaluations(run_id)) == 12


# ------------------------------------------------------------------ the pieces


def test_ast_hash_ignores_comments_docstrings_and_layout_and_is_stable_across_hash_seeds():
    a = 'x = 1\nassert x\ndef f():\n    """doc"""\n    return x in {"a", "b"}\n'
    b = '# comment\nx = 1\ndef f():\n    return x in {"b", "a"}\n'
    assert ast_hash(a) == ast_hash(b)
    assert ast_hash("x = 1") != ast_hash("x = 2")
    assert ast_hash("def (").startswith("text:")
    code = f"from agents.roles import ast_hash; print(ast_hash({a!r}))"
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONHASHSEED": str(s), "PYTHONPATH": "."}).stdout for s in (1, 2, 3)}
    assert seeds == {ast_hash(a) + "\n"}


def test_the_config_template_is_valid_and_flags_override_it():
    config = cfg.validate(tomllib.loads(cfg.TEMPLATE), "template")
    assert config.agents.backend == "builtin" and config.models["default"].price_in == 0.4
    local = cfg.override(config, backend="openai", model="qwen", base_url="http://127.0.0.1:8000/v1", no_api_key=True,
                         budget=5, budget_dollars=1.5)
    model = local.models["default"]
    assert (model.model, model.api_key_env, model.price_in) == ("qwen", None, None)   # another model: not its price
    assert local.run.budget == 5 and local.budget.dollars == 1.5
    with pytest.raises(cfg.ConfigError, match="price_in"):
        local.check_llm()
    local.model_copy(update={"agents": local.agents.model_copy(update={"allow_unpriced": True})}).check_llm()
    with pytest.raises(cfg.ConfigError, match=r"roles\] coder uses model 'nope'"):
        cfg.validate({"agents": {"backend": "openai", "allow_unpriced": True},
                      "models": {"a": {"model": "m", "base_url": "http://x/v1"}},
                      "roles": {"coder": [{"model": "nope"}]}}).check_llm()
    with pytest.raises(cfg.ConfigError, match="run.budget"):
        cfg.validate({"run": {"budget": 0}})
    assert "api_key" not in str(local.public()).replace("api_key_env", "")


def test_the_bandit_tries_every_arm_then_prefers_the_one_that_pays():
    saved = {}
    bandit = Bandit("coder", {"cheap": ("cheap", 1.0), "good": ("good", 1.0)}, explore=0.0,
                    save=lambda role, arm, pulls, reward: saved.__setitem__(arm, (pulls, reward)))
    rng = np.random.default_rng(0)
    first = {bandit.choose(rng) for _ in range(1)}
    bandit.reward(first.pop(), 0.0)
    bandit.reward(bandit.choose(rng), 0.0)
    assert set(saved) == {"cheap", "good"}
    for _ in range(30):
        arm = bandit.choose(rng)
        bandit.reward(arm, 10.0 if arm == "good" else 0.1)
    picks = [bandit.choose(rng) for _ in range(20)]
    assert picks.count("good") > 15
    again = Bandit("coder", bandit.arms, explore=0.0, state=dict(bandit.state))      # a resumed run keeps it
    assert again.choose(rng) == "good"
    assert improvement_per_dollar(200.0, 100.0, True, 0.5) == pytest.approx(2.0)
    assert improvement_per_dollar(100.0, 200.0, True, 0.5) == 0.0
    assert improvement_per_dollar(100.0, 50.0, False, 0.5) == 0.0
