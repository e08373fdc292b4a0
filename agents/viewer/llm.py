"""The viewer's read model of a run's model side: who wrote each kernel, what each strategy
predicted against what was measured, the model calls with their prompts and answers, and the
spend. Read with plain SQL that tolerates archives from before these tables existed (no rows)
and rows written by another version (odd types, unknown record fields) without failing.
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import dataclass, field, replace

from strategies.archive import KernelOrigin, Prediction

MISS_FACTOR = 1.5        # agents.runstate's rule: off by more than this factor either way, or failed, is a miss
TEXT_LIMIT = 200_000     # characters of one prompt message or answer shown on a page (the JSON API has all)


@dataclass(frozen=True)
class SpendRow:
    role: str
    model: str
    calls: int
    failed: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_s: float          # summed over the calls


@dataclass(frozen=True)
class Spend:
    """A run's model calls in total and per (role, model)."""
    calls: int = 0
    failed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    by: tuple[SpendRow, ...] = ()


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Call:
    """One request to a model as recorded; the prompt and answer only when read in full."""
    n: int
    seq: int
    attempt: int
    role: str
    model: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_s: float
    error: str
    served_model: str = ""
    finish_reason: str = ""
    structured: str = ""
    attempts: int = 1
    replayed: bool = False
    tokens_estimated: bool = False
    messages: tuple[Message, ...] = ()
    response: str = ""
    unreadable: str = ""      # why the record could not be read, when it could not

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def outcome(self) -> str:
        if self.error:
            return self.error
        return "ok, cut at max tokens" if self.finish_reason == "length" else "ok"


@dataclass(frozen=True)
class Verdict:
    """One prediction with its judgement: measured / predicted, and whether it is a miss."""
    prediction: Prediction
    ratio: float | None       # measured / predicted; None when the kernel failed
    miss: bool

    @classmethod
    def of(cls, p: Prediction) -> "Verdict":
        if p.measured is None or not p.predicted:
            return cls(p, None, True)
        ratio = p.measured / p.predicted
        return cls(p, ratio, abs(math.log(ratio)) > math.log(MISS_FACTOR))


@dataclass(frozen=True)
class Calibration:
    """How well the strategies that attacked one bottleneck predicted."""
    bottleneck: str
    predictions: int
    misses: int
    failed: int
    median_predicted: float
    median_measured: float | None


@dataclass(frozen=True)
class LLMRecord:
    """What a run's evaluations record about their authors (written with them: cached with the run)."""
    origins: dict[tuple[int, int], KernelOrigin] = field(default_factory=dict)
    predictions: tuple[Prediction, ...] = ()


# ---------------------------------------------------------------- tolerant reading
# Columns are named with their type: SQLite casts each value (NULL, text where a number belongs,
# a number where text belongs: rows another version wrote), faster than Python would.
CASTS = {"t": "COALESCE(CAST({} AS TEXT), '')", "i": "COALESCE(CAST({} AS INTEGER), 0)", "r": "CAST({} AS REAL)"}


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}     # table: a constant of this module


def _select(db: sqlite3.Connection, table: str, columns: str, where: str, args: tuple, group: str = "") -> list[tuple]:
    """Rows of `columns` ("name:type" with type t, i or r, or an aggregate "SUM(name):r"), each
    value cast to its type; none when the table or a column is missing (an archive from before it)."""
    exprs, names = [], set()
    for spec in columns.split():
        expr, kind = spec.rsplit(":", 1)
        names.update(re.findall(r"\b[a-z_]+\b", expr))          # column names are lower case, SQL words upper
        exprs.append(CASTS[kind].format(expr))
    if not names <= _columns(db, table):
        return []
    return db.execute(f"SELECT {', '.join(exprs)} FROM {table} WHERE {where} {group}", args).fetchall()


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def read_record(db: sqlite3.Connection, run_id: str) -> LLMRecord:
    drafts = _select(db, "drafts", "seq:i attempt:i role:t author:t mode:t parent_kernel:t ast_hash:t note:t",
                     "run_id = ?", (run_id,))
    origins = {(seq, attempt): KernelOrigin(*rest) for seq, attempt, *rest in drafts}
    rows = _select(db, "predictions", "seq:i attempt:i strategy_id:t parent_id:t bottleneck:t predicted:r measured:r",
                   "run_id = ? ORDER BY seq, attempt", (run_id,))
    predictions = tuple(Prediction(seq, attempt, sid, parent, bottleneck, predicted,
                                   measured if measured and math.isfinite(measured) and measured > 0 else None)
                        for seq, attempt, sid, parent, bottleneck, predicted, measured in rows
                        if predicted and math.isfinite(predicted) and predicted > 0)
    return LLMRecord(origins, predictions)


def calls_key(db: sqlite3.Connection, run_id: str | None = None) -> tuple | None:
    """Changes whenever calls are added (they are only ever appended): a cache key, read from the
    primary key's index; None when the archive has no calls table."""
    if not {"run_id", "n"} <= _columns(db, "llm_calls"):
        return None
    if run_id is None:
        return db.execute("SELECT COUNT(*), MAX(rowid) FROM llm_calls").fetchone()
    return db.execute("SELECT COUNT(*), MAX(n) FROM llm_calls WHERE run_id = ?", (run_id,)).fetchone()


def read_spend(db: sqlite3.Connection, run_id: str) -> Spend:
    """Tokens, dollars and time of a run's calls, in total and per (role, model)."""
    rows = _select(db, "llm_calls", "role:t model:t COUNT(*):i SUM(error!=''):i SUM(tokens_in):i SUM(tokens_out):i "
                   "SUM(cost_usd):r SUM(latency_s):r", "run_id = ?", (run_id,), "GROUP BY 1, 2 ORDER BY 1, 2")
    by = tuple(SpendRow(role, model, n, failed, tin, tout, _finite(cost) or 0.0, _finite(latency) or 0.0)
               for role, model, n, failed, tin, tout, cost, latency in rows)
    return Spend(sum(r.calls for r in by), sum(r.failed for r in by), sum(r.tokens_in for r in by),
                 sum(r.tokens_out for r in by), sum(r.cost_usd for r in by), sum(r.latency_s for r in by), by)


def spend_per_run(db: sqlite3.Connection) -> dict[str, tuple[int, float]]:
    """run id -> (model calls, dollars), for the runs list (empty for an archive without calls)."""
    rows = _select(db, "llm_calls", "run_id:t COUNT(*):i SUM(cost_usd):r", "1", (), "GROUP BY 1")
    return {run_id: (n, _finite(cost) or 0.0) for run_id, n, cost in rows}


CALL_COLUMNS = "n:i seq:i attempt:i role:t model:t tokens_in:i tokens_out:i cost_usd:r latency_s:r error:t"


def read_calls(db: sqlite3.Connection, run_id: str, seq: int | None = None, full: bool = False) -> list[Call]:
    """A run's calls in order (only those made for step `seq` when given); `full` reads each
    call's record too: its prompt, answer and settings."""
    rows = _select(db, "llm_calls", CALL_COLUMNS + (" record:t" if full else ""),
                   "run_id = ? AND (? IS NULL OR seq = ?) ORDER BY n", (run_id, seq, seq))
    calls = []
    for n, seq_, attempt, role, model, tin, tout, cost, latency, error, *record in rows:
        call = Call(n, seq_, attempt, role, model, tin, tout, _finite(cost) or 0.0, _finite(latency) or 0.0, error)
        calls.append(_with_record(call, record[0]) if full else call)
    return calls


def _text(v) -> str:
    return "" if v is None else str(v)


def _count(v) -> int:
    return v if isinstance(v, int) and v > 0 else 1


def _with_record(call: Call, text) -> Call:
    """The call with its record's prompt and answer; a record this version cannot read is shown as such."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        messages = tuple(Message(_text(m.get("role")), _text(m.get("content")) if isinstance(m.get("content"), str)
                                 else json.dumps(m.get("content"), ensure_ascii=False))
                         for m in data.get("messages") or () if isinstance(m, dict))
    except (TypeError, ValueError) as exc:
        return replace(call, unreadable=f"the recorded call cannot be read ({str(exc)[:120]})")
    return replace(call, served_model=_text(data.get("served_model")), finish_reason=_text(data.get("finish_reason")),
                    structured=_text(data.get("structured")), attempts=_count(data.get("attempts")),
                    replayed=bool(data.get("replayed")), tokens_estimated=bool(data.get("tokens_estimated")),
                    messages=messages, response=_text(data.get("response")))


# ---------------------------------------------------------------- derived views
def verdicts(predictions: tuple[Prediction, ...] | list[Prediction]) -> list[Verdict]:
    return [Verdict.of(p) for p in predictions]


def calibration(vs: list[Verdict]) -> list[Calibration]:
    groups: dict[str, list[Verdict]] = {}
    for v in vs:
        groups.setdefault(v.prediction.bottleneck, []).append(v)
    out = []
    for bottleneck, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        predicted = sorted(v.prediction.predicted for v in group)
        measured = sorted(v.prediction.measured for v in group if v.prediction.measured is not None)
        out.append(Calibration(bottleneck, len(group), sum(v.miss for v in group),
                               sum(v.prediction.measured is None for v in group), _median(predicted),
                               _median(measured) if measured else None))
    return out


def _median(xs: list[float]) -> float:
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def worst_misses(vs: list[Verdict], limit: int = 20) -> list[Verdict]:
    """Misses by how far off they were (either way), then the failed kernels; at most `limit`."""
    misses = [v for v in vs if v.miss]
    return sorted(misses, key=lambda v: (v.ratio is None, -abs(math.log(v.ratio)) if v.ratio else 0.0))[:limit]
