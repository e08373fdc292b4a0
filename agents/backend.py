"""The narrow protocol every proposer implements (builtin, OpenAI-compatible LLMs, fakes).

A backend proposes a strategy from the elites, implements a strategy as kernel source,
and may repair a strategy whose kernel failed, given the evaluator's message.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from evaluator.result import EvalResult
from strategies.evolution import Elites
from strategies.strategy import Strategy


class Backend(Protocol):
    name: str

    def initial(self, task: str, size: int, rng: np.random.Generator) -> list[Strategy]:
        """A diverse first population, drawn at the strategy level."""

    def propose(self, elites: Elites, rng: np.random.Generator, tried: frozenset[str] = frozenset()) -> Strategy:
        """The next strategy to try; `tried` holds the ids already evaluated (or taken by the
        batch being proposed): propose something else."""

    def implement(self, strategy: Strategy) -> str:
        """Kernel source for a strategy."""

    def repair(self, strategy: Strategy, result: EvalResult, rng: np.random.Generator) -> Strategy | None:
        """A fixed strategy after a failure, or None when the backend has no fix."""
