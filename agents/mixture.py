"""Model mixtures: which model plays a role at each call, and how the coder writes.

Each role has arms (models, with the weights the config gives them; for the coder also the
edit modes, full source or diff). A bandit learns which arm brings the most improvement per
dollar: an arm not pulled yet is tried first (heaviest weight first), then with probability
`explore` an arm is drawn by weight, else the arm with the best upper confidence bound on
its mean reward. The state lives in the archive, so a resumed run keeps what it learned.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

import numpy as np

T = TypeVar("T")
MIN_COST_USD = 1e-4      # an unpriced (local) step counts as this much: improvement per call


@dataclass
class Bandit(Generic[T]):
    role: str
    arms: dict[str, tuple[T, float]]                      # arm name -> (value, weight)
    explore: float = 0.2
    state: dict[str, tuple[int, float]] = field(default_factory=dict)   # arm -> (pulls, reward sum)
    save: Callable[[str, str, int, float], None] | None = None          # (role, arm, pulls, reward)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pick(self, rng: np.random.Generator) -> T:
        return self.arms[self.choose(rng)][0]

    def choose(self, rng: np.random.Generator) -> str:
        names = list(self.arms)
        if len(names) == 1:
            return names[0]
        with self.lock:
            fresh = [n for n in names if self.state.get(n, (0, 0.0))[0] == 0]
            if fresh:
                return max(fresh, key=lambda n: self.arms[n][1])
            if rng.random() < self.explore:
                weights = np.array([self.arms[n][1] for n in names])
                return names[int(rng.choice(len(names), p=weights / weights.sum()))]
            total = sum(self.state[n][0] for n in names)
            means = {n: self.state[n][1] / self.state[n][0] for n in names}
            scale = max(max(means.values()), 1e-9)
            return max(names, key=lambda n: means[n] / scale + math.sqrt(2 * math.log(total) / self.state[n][0]))

    def reward(self, arm: str, value: float) -> None:
        if arm not in self.arms:
            return
        with self.lock:
            pulls, total = self.state.get(arm, (0, 0.0))
            self.state[arm] = (pulls + 1, total + value)
            if self.save:
                self.save(self.role, arm, *self.state[arm])


def improvement_per_dollar(best_before_ns: float | None, time_ns: float, ok: bool, cost_usd: float) -> float:
    """log2 of the speed-up over the best kernel before this step (0 when no better), per dollar."""
    if not ok or not math.isfinite(time_ns) or time_ns <= 0:
        return 0.0
    gain = max(0.0, math.log2(best_before_ns / time_ns)) if best_before_ns else 1.0
    return gain / max(cost_usd, MIN_COST_USD)
