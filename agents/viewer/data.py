"""The viewer's read model: what the pages, the JSON API and `cubepilot report` show, read
from a read-only archive into frozen records (one evaluation as a chart point, a run with
its derived series, a kernel with its lineage). Parsed runs are cached by fingerprint, so
a reload re-reads only when a writer has committed something new.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache

from pydantic import ValidationError

from agents.viewer.llm import Call, LLMRecord, Spend, calls_key, read_calls, read_record, read_spend, spend_per_run
from evaluator.result import EvalResult
from strategies.archive import Archive, EvalRow, KernelOrigin, RunConfig
from strategies.strategy import Strategy


class NotFound(LookupError):
    """A run, kernel or archive the request names does not exist; the message says which."""


@dataclass(frozen=True)
class Point:
    """One evaluation as a chart and a table see it (time_ns and error are None when unknown)."""

    seq: int
    attempt: int
    strategy_id: str
    family: str
    origin: str
    status: str
    rule: str
    time_ns: float | None
    tflops: float
    pct_roofline: float
    error: float | None
    bottleneck: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Roof:
    """The run's roofline: the task's intensity at its shape and the machine's engine roofs."""

    engine: str
    intensity: float          # FLOP per compulsory byte
    peak_tflops: float
    hbm_gbps: float
    limit_tflops: float
    ridge: float
    other_peaks: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FamilyRow:
    family: str
    evaluations: int
    ok: int
    best_tflops: float | None
    best_strategy: str | None


@dataclass(frozen=True)
class FailureRow:
    status: str
    rule: str
    count: int
    example_strategy: str
    example_message: str


@dataclass(frozen=True)
class RunData:
    id: str
    status: str
    created: float
    config: RunConfig
    rows: tuple[EvalRow, ...]
    unreadable: int                 # rows this cubepilot cannot parse (written by another version)
    points: tuple[Point, ...]
    roof: Roof | None
    roof_note: str                  # why there is no roofline, when there is none
    by_id: dict[str, int] = field(default_factory=dict)              # strategy id -> its last row
    kids: dict[str, tuple[int, ...]] = field(default_factory=dict)   # strategy id -> rows of its children
    by_kernel: dict[str, int] = field(default_factory=dict)          # kernel hash -> its last row
    llm: LLMRecord = field(default_factory=LLMRecord)                # who wrote what, predictions

    @property
    def by_models(self) -> bool:
        """Did a model plan or write any of its kernels? (A builtin run shows no model sections.)"""
        return any(o.author != "builtin" for o in self.llm.origins.values()) or \
            any(r.strategy.author != "builtin" for r in self.rows)

    def origin(self, row: EvalRow) -> KernelOrigin | None:
        return self.llm.origins.get((row.seq, row.attempt))

    def kernel_row(self, kernel_hash: str) -> EvalRow | None:
        i = self.by_kernel.get(kernel_hash)
        return None if i is None else self.rows[i]

    @property
    def ok_points(self) -> list[Point]:
        return [p for p in self.points if p.ok]

    @property
    def best(self) -> Point | None:
        ok = [p for p in self.points if p.ok and p.time_ns]
        return min(ok, key=lambda p: p.time_ns) if ok else None

    def latest(self, strategy_id: str) -> EvalRow | None:
        """The last evaluation of a strategy in this run (a strategy is evaluated once, barring reruns)."""
        i = self.by_id.get(strategy_id)
        return None if i is None else self.rows[i]

    def children(self, strategy_id: str) -> list[EvalRow]:
        return [self.rows[i] for i in self.kids.get(strategy_id, ())]

    def ancestry(self, strategy_id: str) -> list[EvalRow]:
        """Follow first parents back to a strategy without parents (a library or random seed)."""
        chain, seen, sid = [], set(), strategy_id
        while sid is not None and sid not in seen and (row := self.latest(sid)) is not None:
            chain.append(row)
            seen.add(sid)
            sid = row.strategy.parents[0] if row.strategy.parents else None
        return chain


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def point(row: EvalRow, strategy_id: str | None = None) -> Point:
    """`strategy_id` saves hashing the strategy again when the archive row already names it."""
    r = row.result
    err = max(r.errors.values()) if r.errors else None
    return Point(row.seq, row.attempt, strategy_id or row.strategy.id, row.strategy.family, row.strategy.origin,
                 r.status.value, r.rule, _finite(r.time_ns), r.tflops, r.pct_of_roofline, _finite(err), r.bottleneck)


@lru_cache(maxsize=64)
def run_roof(task_name: str, machine_name: str, shape_text: str) -> tuple[Roof | None, str]:
    """The roofline of a run; (None, why) when its task or machine is not known here."""
    from evaluator.errors import EvalError
    from evaluator.tasks import get_task
    from hwmodel.errors import HwError
    from hwmodel.roofline import ENGINES, engine_peak_tflops, roofline
    from hwmodel.spec import load_machine

    try:
        task = get_task(task_name)
        shape = task.parse_shape(shape_text)
        machine = load_machine(machine_name)
        roof = roofline(machine, task.flops(shape), task.compulsory_bytes(shape), task.engine)
    except (EvalError, HwError, ValueError, KeyError, OSError) as exc:
        return None, f"no roofline: {exc}"
    others = {}
    for engine in ENGINES:
        try:
            if engine != task.engine:
                others[engine] = engine_peak_tflops(machine, engine)
        except ValueError:
            continue
    return Roof(task.engine, roof.intensity, roof.peak_tflops, roof.hbm_gbps, roof.limit_tflops, roof.ridge,
                others), ""


def convergence(points: list[Point]) -> list[tuple[int, float]]:
    """(evaluation number, best TFLOP/s so far) after each evaluation, failures included."""
    best, out = 0.0, []
    for i, p in enumerate(points):
        if p.ok:
            best = max(best, p.tflops)
        out.append((i, best))
    return out


def pareto(points: list[Point]) -> list[Point]:
    """Ok points no other ok point beats on both time and error, by increasing time."""
    pts = sorted((p for p in points if p.ok and p.time_ns and p.error is not None),
                 key=lambda p: (p.time_ns, p.error))
    front, best_err = [], math.inf
    for p in pts:
        if p.error < best_err:
            front.append(p)
            best_err = p.error
    return front


def families(points: list[Point]) -> list[FamilyRow]:
    out = []
    for fam in sorted({p.family for p in points}):
        mine = [p for p in points if p.family == fam]
        ok = [p for p in mine if p.ok]
        best = max(ok, key=lambda p: p.tflops) if ok else None
        out.append(FamilyRow(fam, len(mine), len(ok), best.tflops if best else None,
                             best.strategy_id if best else None))
    return sorted(out, key=lambda f: -(f.best_tflops or 0))


@dataclass(frozen=True)
class TechniqueRow:
    tag: str
    value: str
    evaluations: int
    ok: int
    best_tflops: float | None
    median_tflops: float | None


def techniques(run: RunData) -> list[TechniqueRow]:
    """Per technique tag (buffering, tiling, core mapping, ...) and value: how its kernels fared."""
    groups: dict[tuple[str, str], list[Point]] = {}
    for row, p in zip(run.rows, run.points):
        for tag, value in row.strategy.tags.items():
            if tag != "family":
                groups.setdefault((tag, value), []).append(p)
    out = []
    for (tag, value), pts in sorted(groups.items()):
        ok = sorted(p.tflops for p in pts if p.ok)
        out.append(TechniqueRow(tag, value, len(pts), len(ok), ok[-1] if ok else None,
                                ok[len(ok) // 2] if ok else None))
    return out


def failures(run: RunData) -> list[FailureRow]:
    groups: dict[tuple[str, str], list[EvalRow]] = {}
    for row in run.rows:
        if not row.result.ok:
            groups.setdefault((row.result.status.value, row.result.rule), []).append(row)
    return sorted((FailureRow(s, rule, len(rows), rows[0].strategy.id, rows[0].result.message[:300])
                   for (s, rule), rows in groups.items()), key=lambda f: -f.count)


class ArchiveReader:
    """Opens the archive read-only for each request (so each sees the latest commits) and
    keeps parsed runs while their fingerprint is unchanged."""

    def __init__(self, path):
        self.path = path
        self._cache: dict[str, tuple[tuple, RunData]] = {}
        self._memos: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    def open(self) -> Archive:
        try:
            return Archive.open_readonly(self.path)
        except FileNotFoundError:
            raise NotFound(f"There is no archive at {self.path} yet. Start a run with "
                           f"`cubepilot run --archive {self.path}`; this page shows it once it exists.") from None

    def runs(self) -> list[dict]:
        store = self.open()
        try:
            if not _has_schema(store):
                return []
            best = {b["id"]: b for b in store.best_per_run()}
            ok = dict(store.db.execute("SELECT run_id, COUNT(*) FROM evaluations WHERE status = 'ok' GROUP BY run_id"))
            spend = self._memo(("spend per run",), calls_key(store.db), lambda: spend_per_run(store.db))
            return [dict(r, ok=ok.get(r["id"], 0), best_pct_roofline=best.get(r["id"], {}).get("pct_roofline"),
                         best_strategy=best.get(r["id"], {}).get("strategy_id"),
                         model_calls=spend.get(r["id"], (0, 0.0))[0], cost_usd=spend.get(r["id"], (0, 0.0))[1])
                    for r in store.runs()]
        finally:
            store.close()

    def spend(self, run_id: str) -> Spend:
        """The run's model spend as of this request (calls are committed before their step's
        evaluation), kept while no call is added."""
        store = self.open()
        try:
            return self._memo(("spend", run_id), calls_key(store.db, run_id), lambda: read_spend(store.db, run_id))
        finally:
            store.close()

    def calls(self, run_id: str, seq: int | None = None, full: bool = False) -> list[Call]:
        """A run's model calls in order, only step `seq`'s when given; `full` adds prompts and answers."""
        store = self.open()
        try:
            return read_calls(store.db, run_id, seq, full)
        finally:
            store.close()

    def _memo(self, name: tuple, key, compute):
        """compute(), or the value it gave last time `name` had this key (None: never cached)."""
        with self._lock:
            hit = self._memos.get(name)
        if key is not None and hit and hit[0] == key:
            return hit[1]
        value = compute()
        with self._lock:
            self._memos[name] = (key, value)
            if len(self._memos) > 64:
                self._memos.pop(next(iter(self._memos)))
        return value

    def leaderboard(self, task: str | None = None, machine: str | None = None) -> list[dict]:
        store = self.open()
        try:
            return store.best_per_run(task, machine) if _has_schema(store) else []
        finally:
            store.close()

    def source(self, kernel_hash: str) -> str:
        store = self.open()
        try:
            return store.source(kernel_hash)
        except KeyError:
            raise NotFound(f"The archive holds no source for kernel {kernel_hash}.") from None
        finally:
            store.close()

    def run(self, run_id: str) -> RunData:
        store = self.open()
        try:
            if not _has_schema(store):
                raise NotFound(f"The archive at {self.path} holds no runs yet, so there is no run {run_id}.")
            head = store.db.execute("SELECT created, status, config FROM runs WHERE id = ?", (run_id,)).fetchone()
            if head is None:
                raise NotFound(f"There is no run {run_id} in {self.path}.")
            key = store.fingerprint(run_id)
            with self._lock:
                hit = self._cache.get(run_id)
            if hit and hit[0] == key:
                return hit[1]
            data = _load_run(store, run_id, *head)
        finally:
            store.close()
        with self._lock:
            if len(self._cache) > 16:
                self._cache.pop(next(iter(self._cache)))
            self._cache[run_id] = (key, data)
        return data


def _has_schema(store: Archive) -> bool:
    return store.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'evaluations'").fetchone() \
        is not None


def _load_run(store: Archive, run_id: str, created: float, status: str, config_json: str) -> RunData:
    try:
        config = RunConfig.model_validate_json(config_json)
    except ValidationError:          # a config written by another version: show what it says
        config = RunConfig.model_construct(**json.loads(config_json))
    rows, ids, unreadable = [], [], 0
    for seq, attempt, strategy_id, body, kernel_hash, result in store.raw_evaluations(run_id):
        try:
            rows.append(EvalRow(seq, attempt, Strategy.model_validate_json(body), kernel_hash,
                                EvalResult.model_validate_json(result)))
            ids.append(strategy_id)
        except ValidationError:
            unreadable += 1
    roof, note = run_roof(config.task, config.machine, config.shape)
    points = tuple(point(r, sid) for r, sid in zip(rows, ids))
    by_id = {p.strategy_id: i for i, p in enumerate(points)}          # Strategy.id hashes: look it up once
    kids: dict[str, list[int]] = {}
    for sid, i in by_id.items():
        for parent in rows[i].strategy.parents:
            kids.setdefault(parent, []).append(i)
    return RunData(run_id, status, created, config, tuple(rows), unreadable, points, roof, note, by_id,
                   {k: tuple(sorted(v)) for k, v in kids.items()}, {r.kernel_hash: i for i, r in enumerate(rows)},
                   read_record(store.db, run_id))
