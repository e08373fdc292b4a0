"""The archive: one SQLite file (WAL) holding runs, strategies, kernels, evaluations and
lineage. Every evaluation is committed as it finishes, so a killed run loses at most the
one in flight and `cubepilot run --resume` continues from what is recorded."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evaluator.result import EvalResult
from strategies.strategy import Strategy

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created REAL, task TEXT, machine TEXT, shape TEXT, seed INTEGER,
    backend TEXT, config TEXT, status TEXT);
CREATE TABLE IF NOT EXISTS strategies (
    id TEXT, run_id TEXT, family TEXT, origin TEXT, body TEXT, PRIMARY KEY (id, run_id));
CREATE TABLE IF NOT EXISTS kernels (hash TEXT PRIMARY KEY, source TEXT);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT, seq INTEGER, attempt INTEGER, strategy_id TEXT, kernel_hash TEXT, status TEXT,
    time_ns REAL, tflops REAL, pct_roofline REAL, error REAL, result TEXT, created REAL,
    PRIMARY KEY (run_id, seq, attempt));
CREATE TABLE IF NOT EXISTS lineage (run_id TEXT, child TEXT, parent TEXT, PRIMARY KEY (run_id, child, parent));
CREATE TABLE IF NOT EXISTS pending (run_id TEXT, seq INTEGER, kernel TEXT, tries INTEGER, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS drafts (
    run_id TEXT, seq INTEGER, attempt INTEGER, kernel_hash TEXT, role TEXT, author TEXT, mode TEXT,
    parent_kernel TEXT, ast_hash TEXT, note TEXT, PRIMARY KEY (run_id, seq, attempt));
CREATE TABLE IF NOT EXISTS predictions (
    run_id TEXT, seq INTEGER, attempt INTEGER, strategy_id TEXT, parent_id TEXT, bottleneck TEXT,
    predicted REAL, measured REAL, PRIMARY KEY (run_id, seq, attempt));
CREATE TABLE IF NOT EXISTS llm_calls (
    run_id TEXT, n INTEGER, seq INTEGER, attempt INTEGER, role TEXT, model TEXT, tokens_in INTEGER,
    tokens_out INTEGER, cost_usd REAL, latency_s REAL, error TEXT, cache_key TEXT, record TEXT, created REAL,
    PRIMARY KEY (run_id, n));
CREATE TABLE IF NOT EXISTS bandit (run_id TEXT, role TEXT, arm TEXT, pulls INTEGER, reward REAL,
    PRIMARY KEY (run_id, role, arm));
"""


@dataclass(frozen=True)
class KernelOrigin:
    """Who wrote a kernel and from what: the role, its author (builtin or a model alias), the
    way it was written (template, full source, diff against its parent) and the parent kernel."""
    role: str
    author: str
    mode: str
    parent_kernel: str = ""       # the kernel hash (in this archive) of the kernel it was derived from
    ast_hash: str = ""
    note: str = ""


@dataclass(frozen=True)
class Prediction:
    seq: int
    attempt: int
    strategy_id: str
    parent_id: str
    bottleneck: str
    predicted: float
    measured: float | None        # parent time / this time; None when this kernel failed


@dataclass(frozen=True)
class CallRow:
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
    record: str                   # the full call (prompt, response, settings) as JSON


class RunConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    machine: str
    shape: str
    budget: int
    seed: int
    backend: str = "builtin"
    mode: str = "strategy"          # strategy (default), random, mutation-only: for ablations
    workers: int = Field(1, ge=1)   # steps proposed together and evaluated side by side
    fix_attempts: int = Field(1, ge=0)   # fixes tried per failed step, each an evaluation of the same step
    agents: dict[str, Any] = Field(default_factory=dict)   # the LLM roles' settings (agents.config), never a key


@dataclass(frozen=True)
class EvalRow:
    seq: int
    attempt: int
    strategy: Strategy
    kernel_hash: str
    result: EvalResult


class Archive:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)   # model calls record from threads
        self.lock = threading.Lock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.commit()

    @classmethod
    def open_readonly(cls, path: str | Path) -> "Archive":
        """A read-only view for readers such as the web viewer: never creates the file or the
        schema, never writes, and sees each evaluation a running writer commits (WAL)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no archive at {path}")
        self = cls.__new__(cls)
        self.path = path
        self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                  check_same_thread=False)
        return self

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------- runs
    def new_run(self, config: RunConfig) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self.db:
            self.db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?)",
                            (run_id, time.time(), config.task, config.machine, config.shape, config.seed,
                             config.backend, config.model_dump_json(), "running"))
        return run_id

    def run_config(self, run_id: str) -> RunConfig:
        row = self.db.execute("SELECT config FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            known = [r[0] for r in self.db.execute("SELECT id FROM runs ORDER BY created DESC LIMIT 5")]
            raise KeyError(f"no run {run_id!r} in {self.path}; recent runs: {', '.join(known) or 'none'}")
        return RunConfig.model_validate_json(row[0])

    def set_status(self, run_id: str, status: str) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))

    def runs(self) -> list[dict]:
        cur = self.db.execute("""SELECT r.id, r.created, r.task, r.machine, r.shape, r.backend, r.status,
                                 COUNT(e.seq), MAX(CASE WHEN e.status = 'ok' THEN e.tflops END)
                                 FROM runs r LEFT JOIN evaluations e ON e.run_id = r.id
                                 GROUP BY r.id ORDER BY r.created DESC""")
        cols = ("id", "created", "task", "machine", "shape", "backend", "status", "evaluations", "best_tflops")
        return [dict(zip(cols, row)) for row in cur]

    # ---------------------------------------------------------------- evaluations
    def record(self, run_id: str, seq: int, attempt: int, strategy: Strategy, source: str,
               result: EvalResult, origin: KernelOrigin | None = None, prediction: Prediction | None = None) -> None:
        """One evaluation, its strategy, kernel, who wrote it, lineage and the strategy's
        prediction against the measurement, in one transaction."""
        err = max(result.errors.values()) if result.errors else None
        with self.lock, self.db:
            if origin is not None:
                self.db.execute("INSERT OR REPLACE INTO drafts VALUES (?,?,?,?,?,?,?,?,?,?)",
                                (run_id, seq, attempt, result.source_hash, origin.role, origin.author, origin.mode,
                                 origin.parent_kernel, origin.ast_hash, origin.note))
            if prediction is not None:
                p = prediction
                self.db.execute("INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?,?)",
                                (run_id, p.seq, p.attempt, p.strategy_id, p.parent_id, p.bottleneck, p.predicted,
                                 p.measured))
            self.db.execute("INSERT OR IGNORE INTO strategies VALUES (?,?,?,?,?)",
                            (strategy.id, run_id, strategy.family, strategy.origin, strategy.model_dump_json()))
            self.db.execute("INSERT OR IGNORE INTO kernels VALUES (?,?)", (result.source_hash, source))
            self.db.executemany("INSERT OR IGNORE INTO lineage VALUES (?,?,?)",
                                [(run_id, strategy.id, p) for p in strategy.parents])
            self.db.execute("DELETE FROM pending WHERE run_id = ? AND seq = ?", (run_id, seq))
            self.db.execute("INSERT OR REPLACE INTO evaluations VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (run_id, seq, attempt, strategy.id, result.source_hash, result.status.value,
                             None if result.time_ns == float("inf") else result.time_ns, result.tflops,
                             result.pct_of_roofline, err, result.model_dump_json(), time.time()))

    def begin(self, run_id: str, steps: list[tuple[int, str]]) -> dict[int, int]:
        """Mark steps (seq, kernel source) as in flight, committed before they are evaluated, and
        return how many times each has been started with the same kernel, this time included.
        `record` clears the mark; one left behind means the evaluating process died (killed, out
        of memory, crashed), so a resumed run can tell a candidate that keeps killing it."""
        tries = {}
        with self.lock, self.db:
            for seq, source in steps:
                kernel = hashlib.sha256(source.encode()).hexdigest()[:32]
                row = self.db.execute("SELECT kernel, tries FROM pending WHERE run_id = ? AND seq = ?",
                                      (run_id, seq)).fetchone()
                tries[seq] = row[1] + 1 if row and row[0] == kernel else 1
                self.db.execute("INSERT OR REPLACE INTO pending VALUES (?,?,?,?)", (run_id, seq, kernel, tries[seq]))
        return tries

    def origins(self, run_id: str) -> dict[tuple[int, int], KernelOrigin]:
        """(seq, attempt) -> who wrote the kernel evaluated there (rows from before drafts were kept: none)."""
        cur = self.db.execute("SELECT seq, attempt, role, author, mode, parent_kernel, ast_hash, note FROM drafts "
                              "WHERE run_id = ?", (run_id,))
        return {(seq, attempt): KernelOrigin(*rest) for seq, attempt, *rest in cur}

    def predictions(self, run_id: str) -> list[Prediction]:
        cur = self.db.execute("SELECT seq, attempt, strategy_id, parent_id, bottleneck, predicted, measured "
                              "FROM predictions WHERE run_id = ? ORDER BY seq, attempt", (run_id,))
        return [Prediction(*row) for row in cur]

    # ---------------------------------------------------------------- model calls
    def record_call(self, run_id: str, seq: int, attempt: int, role: str, model: str, tokens_in: int,
                    tokens_out: int, cost_usd: float, latency_s: float, error: str, cache_key: str,
                    record: str) -> None:
        """One request to a model, committed at once (a crash loses no spend); any thread may call it."""
        with self.lock, self.db:
            n = self.db.execute("SELECT COALESCE(MAX(n), -1) + 1 FROM llm_calls WHERE run_id = ?", (run_id,)).fetchone()[0]
            self.db.execute("INSERT INTO llm_calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            (run_id, n, seq, attempt, role, model, tokens_in, tokens_out, cost_usd, latency_s, error,
                             cache_key, record, time.time()))

    def calls(self, run_id: str, seq: int | None = None) -> list[CallRow]:
        cur = self.db.execute("SELECT n, seq, attempt, role, model, tokens_in, tokens_out, cost_usd, latency_s, error, "
                              "record FROM llm_calls WHERE run_id = ? AND (? IS NULL OR seq = ?) ORDER BY n",
                              (run_id, seq, seq))
        return [CallRow(*row) for row in cur]

    def spend(self, run_id: str) -> dict:
        """Tokens and dollars of a run's model calls, in total and per role and model."""
        cur = self.db.execute("SELECT role, model, COUNT(*), SUM(tokens_in), SUM(tokens_out), SUM(cost_usd) "
                              "FROM llm_calls WHERE run_id = ? GROUP BY role, model ORDER BY role, model", (run_id,))
        rows = [dict(zip(("role", "model", "calls", "tokens_in", "tokens_out", "cost_usd"), r)) for r in cur]
        total = {k: sum(r[k] or 0 for r in rows) for k in ("calls", "tokens_in", "tokens_out", "cost_usd")}
        return {**total, "by": rows}

    def bandit_state(self, run_id: str) -> dict[tuple[str, str], tuple[int, float]]:
        return {(role, arm): (pulls, reward) for role, arm, pulls, reward in
                self.db.execute("SELECT role, arm, pulls, reward FROM bandit WHERE run_id = ?", (run_id,))}

    def save_bandit(self, run_id: str, role: str, arm: str, pulls: int, reward: float) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO bandit VALUES (?,?,?,?,?)", (run_id, role, arm, pulls, reward))

    def clear_pending(self, run_id: str) -> None:
        """Forget in-flight marks: the run was stopped on purpose (Ctrl-C, SIGTERM), not by a candidate."""
        with self.db:
            self.db.execute("DELETE FROM pending WHERE run_id = ?", (run_id,))

    def evaluations(self, run_id: str) -> list[EvalRow]:
        cur = self.db.execute("""SELECT e.seq, e.attempt, s.body, e.kernel_hash, e.result FROM evaluations e
                                 JOIN strategies s ON s.id = e.strategy_id AND s.run_id = e.run_id
                                 WHERE e.run_id = ? ORDER BY e.seq, e.attempt""", (run_id,))
        return [EvalRow(seq, attempt, Strategy.model_validate_json(body), h, EvalResult.model_validate_json(res))
                for seq, attempt, body, h, res in cur]

    def raw_evaluations(self, run_id: str) -> list[tuple]:
        """(seq, attempt, strategy id, strategy JSON, kernel hash, result JSON) rows, unparsed: a reader
        that must survive rows written by an older or newer cubepilot parses them one by one."""
        return self.db.execute("""SELECT e.seq, e.attempt, e.strategy_id, s.body, e.kernel_hash, e.result FROM evaluations e
                                  JOIN strategies s ON s.id = e.strategy_id AND s.run_id = e.run_id
                                  WHERE e.run_id = ? ORDER BY e.seq, e.attempt""", (run_id,)).fetchall()

    def find_strategy(self, strategy_id: str, run_id: str | None = None) -> tuple[str, Strategy, EvalResult | None, str | None]:
        """(run id, strategy, its latest result and kernel hash, or None if never evaluated) of a strategy
        id, in the given run or the newest run that holds it; KeyError if no run does."""
        row = self.db.execute("""SELECT s.run_id, s.body FROM strategies s JOIN runs r ON r.id = s.run_id
                                 WHERE s.id = ? AND (? IS NULL OR s.run_id = ?) ORDER BY r.created DESC LIMIT 1""",
                              (strategy_id, run_id, run_id)).fetchone()
        if row is None:
            where = f"run {run_id}" if run_id else self.path
            raise KeyError(f"no strategy {strategy_id!r} in {where} (strategy ids are listed by `cubepilot archive show RUN`)")
        ev = self.db.execute("""SELECT kernel_hash, result FROM evaluations WHERE run_id = ? AND strategy_id = ?
                                ORDER BY seq DESC, attempt DESC LIMIT 1""", (row[0], strategy_id)).fetchone()
        result = EvalResult.model_validate_json(ev[1]) if ev else None
        return row[0], Strategy.model_validate_json(row[1]), result, ev[0] if ev else None

    def source(self, kernel_hash: str) -> str:
        row = self.db.execute("SELECT source FROM kernels WHERE hash = ?", (kernel_hash,)).fetchone()
        if row is None:
            raise KeyError(f"no kernel {kernel_hash!r} in {self.path}")
        return row[0]

    def fingerprint(self, run_id: str) -> tuple:
        """Changes whenever a run gains, replaces or finishes evaluations: a cache key for readers."""
        return self.db.execute("SELECT COUNT(*), MAX(created), (SELECT status FROM runs WHERE id = ?) "
                               "FROM evaluations WHERE run_id = ?", (run_id, run_id)).fetchone()

    def best_per_run(self, task: str | None = None, machine: str | None = None) -> list[dict]:
        """Each run's fastest ok evaluation (runs with none are left out), fastest first."""
        cur = self.db.execute("""SELECT r.id, r.task, r.machine, r.shape, r.backend, r.config, r.status,
                                 (SELECT COUNT(*) FROM evaluations c WHERE c.run_id = r.id), e.seq, e.strategy_id,
                                 e.tflops, e.pct_roofline, MIN(e.time_ns), e.error
                                 FROM runs r JOIN evaluations e ON e.run_id = r.id
                                 WHERE e.status = 'ok' AND e.time_ns IS NOT NULL
                                 AND (? IS NULL OR r.task = ?) AND (? IS NULL OR r.machine = ?)
                                 GROUP BY r.id ORDER BY r.task, r.machine, r.shape, MIN(e.time_ns)""",
                              (task, task, machine, machine))   # SQLite: bare columns come from the MIN row
        cols = ("id", "task", "machine", "shape", "backend", "config", "status", "evaluations", "seq",
                "strategy_id", "tflops", "pct_roofline", "time_ns", "error")
        return [dict(zip(cols, row)) for row in cur]

    def lineage(self, run_id: str, strategy_id: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT parent FROM lineage WHERE run_id = ? AND child = ?",
                                              (run_id, strategy_id))]


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
