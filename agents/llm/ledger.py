"""Token and dollar accounting with budgets. Every request reserves its worst case
(prompt estimate + max_tokens, priced) before it is sent and settles to the actual
figures after, so concurrent requests cannot overshoot a budget. Thread-safe."""
from __future__ import annotations

import itertools
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agents.llm.errors import BudgetExhausted
from agents.llm.records import CallRecord
from agents.llm.settings import Budgets, ModelSettings

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4  # role markers of a chat template, per message


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: one token per 4 characters, rounded up (English prose
    and code average 3.5-4.5 characters a token on BPE vocabularies). Used for budget
    reservations and when a server reports no usage."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: Iterable[dict]) -> int:
    """Estimated prompt tokens of chat messages: their text plus a small per-message
    overhead for the chat template."""
    total = 0
    for message in messages:
        content = message.get("content") or ""
        if not isinstance(content, str):  # content parts: count their text
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        total += estimate_tokens(content) + MESSAGE_OVERHEAD_TOKENS
    return total


def cost_usd(settings: ModelSettings, tokens_in: int, tokens_out: int) -> float:
    """Dollars for a call at the model's prices (USD per million tokens); 0 when unpriced."""
    price_in = settings.price_in or 0.0
    price_out = settings.price_out or 0.0
    return tokens_in * price_in / 1e6 + tokens_out * price_out / 1e6


@dataclass(frozen=True)
class Reservation:
    id: int
    model: str
    tokens: int
    dollars: float


def _new_bucket() -> dict:
    return {"tokens_in": 0, "tokens_out": 0, "dollars": 0.0, "calls": 0, "failed": 0}


def _human_tokens(tokens: int) -> str:
    if tokens >= 1_000_000:
        return f"{tokens / 1e6:.1f}M"
    if tokens >= 1_000:
        return f"{tokens / 1e3:.1f}k"
    return str(tokens)


class Ledger:
    def __init__(self, budgets: Budgets, clock: Callable[[], float] = time.monotonic) -> None:
        self.budgets = budgets
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._outstanding: dict[int, Reservation] = {}
        self._all = _new_bucket()
        self._replayed = 0
        self._by_role: dict[str, dict] = defaultdict(_new_bucket)
        self._by_model: dict[str, dict] = defaultdict(_new_bucket)

    # -- budget checks ---------------------------------------------------------------

    def reserve(self, settings: ModelSettings, prompt_tokens_estimate: int) -> Reservation:
        """Hold the worst case of one request; raises BudgetExhausted (nothing held) when
        spent + held + this would pass a budget, or the wall-time budget is over."""
        tokens = prompt_tokens_estimate + settings.max_tokens
        dollars = cost_usd(settings, prompt_tokens_estimate, settings.max_tokens)
        with self._lock:
            self._check_wall()
            held_tokens = sum(r.tokens for r in self._outstanding.values())
            held_dollars = sum(r.dollars for r in self._outstanding.values())
            spent_tokens = self._all["tokens_in"] + self._all["tokens_out"]
            limit = self.budgets.tokens
            if limit is not None and spent_tokens + held_tokens + tokens > limit:
                raise BudgetExhausted("tokens", spent_tokens + held_tokens, limit, tokens)
            limit_usd = self.budgets.dollars
            if limit_usd is not None and self._all["dollars"] + held_dollars + dollars > limit_usd:
                raise BudgetExhausted("dollars", round(self._all["dollars"] + held_dollars, 6), limit_usd,
                                      round(dollars, 6))
            reservation = Reservation(next(self._ids), settings.name, tokens, dollars)
            self._outstanding[reservation.id] = reservation
            return reservation

    def _check_wall(self) -> None:
        if self.budgets.wall_s is not None:
            elapsed = self._clock() - self._start
            if elapsed >= self.budgets.wall_s:
                raise BudgetExhausted("wall time (s)", round(elapsed, 1), self.budgets.wall_s)

    # -- settling --------------------------------------------------------------------

    def settle(self, reservation: Reservation, record: CallRecord) -> None:
        """Replace a reservation by the call's actual tokens and cost."""
        with self._lock:
            self._outstanding.pop(reservation.id, None)
            self._add(record)

    def release(self, reservation: Reservation, record: CallRecord | None = None) -> None:
        """Drop a reservation whose request used nothing (failed with no usage); the
        record, when given, is counted as a failed call."""
        with self._lock:
            self._outstanding.pop(reservation.id, None)
            if record is not None:
                self._add(record)

    def restore(self, records: Iterable[CallRecord]) -> None:
        """Count calls of an earlier session (a resumed run) as spent."""
        with self._lock:
            for record in records:
                self._add(record)

    def _add(self, record: CallRecord) -> None:
        for bucket in (self._all, self._by_role[record.role], self._by_model[record.model]):
            bucket["tokens_in"] += record.tokens_in
            bucket["tokens_out"] += record.tokens_out
            bucket["dollars"] += record.cost_usd
            bucket["calls"] += 1
            bucket["failed"] += 0 if record.ok else 1
        self._replayed += 1 if record.replayed else 0

    # -- reports ---------------------------------------------------------------------

    def totals(self) -> dict:
        with self._lock:
            return {
                **self._all,
                "replayed": self._replayed,
                "elapsed_s": self._clock() - self._start,
                "reserved_tokens": sum(r.tokens for r in self._outstanding.values()),
                "reserved_dollars": sum(r.dollars for r in self._outstanding.values()),
                "by_role": {k: dict(v) for k, v in self._by_role.items()},
                "by_model": {k: dict(v) for k, v in self._by_model.items()},
            }

    def spent_text(self) -> str:
        """Short spend for a progress bar, e.g. "$0.0123, 4.2k tok"."""
        with self._lock:
            tokens = self._all["tokens_in"] + self._all["tokens_out"]
            return f"${self._all['dollars']:.4f}, {_human_tokens(tokens)} tok"

    def remaining_fraction(self) -> float:
        """The smallest remaining share over the set budgets (1.0 when none is set)."""
        with self._lock:
            shares = [1.0]
            if self.budgets.tokens is not None:
                used = self._all["tokens_in"] + self._all["tokens_out"]
                shares.append(1.0 - used / self.budgets.tokens)
            if self.budgets.dollars is not None:
                shares.append(1.0 - self._all["dollars"] / self.budgets.dollars)
            if self.budgets.wall_s is not None:
                shares.append(1.0 - (self._clock() - self._start) / self.budgets.wall_s)
            return max(0.0, min(shares))
