"""Who plays the roles of a run: the builtin team, or LLM roles over a shared client, with
a model mixture per role, budgets, accounting in the archive, and offline replay.

`build_team` is the one place that turns a configuration into a Team; the loop, the CLI
and the benchmarks all go through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from agents.config import Config
from agents.mixture import Bandit, improvement_per_dollar
from agents.roles import STEP, Context, Draft, RoleError, Team
from evaluator.result import EvalResult
from hwmodel.spec import MachineSpec
from strategies.archive import Archive
from strategies.strategy import Strategy


LLM_DRAWS = 3     # proposals per step from a model (each may re-ask) before the step is given up


@dataclass(frozen=True)
class Crew:
    """A team and what a run needs to watch it: the ledger of spend (None for builtin)."""
    team: Team
    ledger: object | None = None

    def spent(self) -> str:
        return self.ledger.spent_text() if self.ledger is not None else ""


def build_team(config: Config, machine: MachineSpec, bench_shape, archive: Archive, run_id: str,
               replay_run: str | None = None) -> Crew:
    from agents.builtin import builtin_team

    run = config.run
    if config.agents.backend == "builtin":
        return Crew(builtin_team(config.agents.mode, machine, bench_shape, run.fix_attempts))
    from agents.llm import CallRecord, Ledger, LLMClient, MemoryCache
    from agents.llm.roles import LLMCoder, LLMFixer, LLMStrategist

    config.check_llm()
    ledger = Ledger(config.budget)
    previous = [CallRecord.from_json(c.record) for c in archive.calls(run_id)]
    ledger.restore(previous)                                   # a resumed run keeps counting its spend
    replay = MemoryCache(CallRecord.from_json(c.record) for c in archive.calls(replay_run)) if replay_run else None

    def record(call: CallRecord) -> None:
        seq, attempt = STEP.get()
        archive.record_call(run_id, seq, attempt, call.role, call.model, call.tokens_in, call.tokens_out,
                            call.cost_usd, call.latency_s, call.error, call.cache_key, call.to_json())

    agents = config.agents
    client = LLMClient(ledger, record=record, replay=replay, max_consecutive_failures=agents.max_consecutive_failures,
                       reasks=agents.reasks, max_in_flight=agents.max_in_flight)
    state = archive.bandit_state(run_id)
    bandits = {}
    for role in ("strategist", "coder", "fixer"):
        arms = {arm.model: (config.models[arm.model], arm.weight) for arm in config.arms(role)}
        bandits[role] = _bandit(role, arms, agents.explore, state, archive, run_id)
    modes = _bandit("coder-mode", {m: (m, 1.0) for m in agents.edit_modes}, agents.explore, state, archive, run_id)
    strategist = LLMStrategist(client, bandits["strategist"].pick)
    if not agents.strategy:
        strategist = CodeOnly(strategist)
    if agents.best_of_n:
        strategist = BestOfN(strategist)
    team = Team(Guarded(strategist), Guarded(LLMCoder(client, bandits["coder"].pick, modes.pick)),
                Guarded(LLMFixer(client, bandits["fixer"].pick)), run.fix_attempts,
                learn=Learner(archive, run_id, bandits, modes), population=0, draws=LLM_DRAWS,
                parallel=True)
    return Crew(team, ledger)


def _bandit(role: str, arms: dict, explore: float, state: dict, archive: Archive, run_id: str) -> Bandit:
    return Bandit(role, arms, explore, {arm: v for (r, arm), v in state.items() if r == role},
                  lambda r, arm, pulls, reward: archive.save_bandit(run_id, r, arm, pulls, reward))


@dataclass(frozen=True)
class Learner:
    """Rewards the arms that produced a step with its improvement per dollar."""
    archive: Archive
    run_id: str
    bandits: dict[str, Bandit]
    modes: Bandit

    def __call__(self, seq: int, attempt: int, strategy: Strategy, draft: Draft, result: EvalResult,
                 best_before: float | None) -> None:
        calls = [c for c in self.archive.calls(self.run_id, seq) if c.attempt == attempt]
        reward = improvement_per_dollar(best_before, result.time_ns, result.ok, sum(c.cost_usd for c in calls))
        if draft.role == "fixer":
            self.bandits["fixer"].reward(draft.author, reward)
            return
        if strategy.author.startswith("strategist:"):
            self.bandits["strategist"].reward(strategy.author.split(":", 1)[1], reward)
        if draft.author != "builtin":
            self.bandits["coder"].reward(draft.author, reward)
            self.modes.reward(draft.mode, reward)


class Guarded:
    """A role whose failures to produce anything usable this time (a malformed answer after
    the re-asks, one provider failure) become RoleError, so the loop draws again. A provider
    that stays down, a spent budget or a bad configuration stop the run."""

    def __init__(self, role):
        from agents.llm.errors import MalformedOutput, ProviderError
        self.role, self.name, self._soft = role, role.name, (MalformedOutput, ProviderError)

    def __getattr__(self, attr):
        method = getattr(self.role, attr)
        if not callable(method):
            return method

        def guarded(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except self._soft as exc:
                raise RoleError(str(exc)) from exc
        return guarded


class CodeOnly:
    """--no-strategy: no strategist. Each step picks a parent among the elites and asks the
    coder to improve its kernel directly (code-only evolution, for comparison)."""

    def __init__(self, inner):
        self.inner, self.name = inner, "code-only"

    def initial(self, ctx: Context, size: int, rng: np.random.Generator) -> list[Strategy]:
        return self.inner.initial(ctx, size, rng)

    def propose(self, ctx: Context, rng: np.random.Generator) -> Strategy:
        parent = ctx.elites.select(rng) if ctx.elites.cells else _seed(ctx, rng)
        return _sample(parent, ctx, "Improve this kernel: make it faster while staying correct.", "code-only")


class BestOfN:
    """--best-of-n: independent samples, no evolution. Every step starts from a seed kernel
    of the library, never from what the run has found."""

    def __init__(self, inner):
        self.inner, self.name = inner, "best-of-n"

    def initial(self, ctx: Context, size: int, rng: np.random.Generator) -> list[Strategy]:
        return self.inner.initial(ctx, size, rng)

    def propose(self, ctx: Context, rng: np.random.Generator) -> Strategy:
        return _sample(_seed(ctx, rng), ctx, "Write the fastest correct kernel for the task, starting from this "
                       "seed kernel.", "best-of-n")


def _seed(ctx: Context, rng: np.random.Generator) -> Strategy:
    seeds = [s for s, _ in ctx.history if s.origin == "library"]
    if not seeds:
        from strategies.families import families_for
        seeds = [f.strategy() for f in families_for(ctx.task.name)]
    return seeds[int(rng.integers(0, len(seeds)))]


def _sample(parent: Strategy, ctx: Context, plan: str, how: str) -> Strategy:
    """A strategy record for a sample that has no strategy of its own: numbered, so two
    samples from the same parent are two steps (their kernels are still checked for repeats)."""
    n = len(ctx.history) + len(ctx.tried)
    return Strategy(family=parent.family, task=parent.task, plan=plan, knobs=dict(parent.knobs),
                    parents=(parent.id,), origin="mutation", techniques=(f"{how} sample {n}",),
                    tags={"family": parent.family, "search": how}, author=f"strategist:{how}")
