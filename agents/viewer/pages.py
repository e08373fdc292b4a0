"""What each viewer page shows, built from the read model: the run page's charts and tables,
the kernel page's strategy, source, diffs, lineage and results, and the leaderboard. The
HTML templates and the JSON API both take their data from here.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import asdict
from functools import lru_cache

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, PythonLexer

from agents.viewer import charts
from agents.viewer.data import (ArchiveReader, NotFound, Point, RunData, convergence, failures, families, pareto,
                                techniques)
from agents.viewer.llm import MISS_FACTOR, TEXT_LIMIT, Call, Spend, Verdict, calibration, verdicts, worst_misses
from agents.viewer.timeline import Timeline
from strategies.archive import EvalRow, KernelOrigin, Prediction

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
STRATEGY_ID = re.compile(r"^[0-9a-f]{12}$")
DIFF_FORMATTER = HtmlFormatter(cssclass="diff")
PYGMENTS_CSS = HtmlFormatter(cssclass="src").get_style_defs(".src") + "\n" + DIFF_FORMATTER.get_style_defs(".diff")


@lru_cache(maxsize=256)
def highlighted_source(source: str, line: int = 0) -> Markup:
    """A kernel's source as highlighted HTML with line numbers (sources never change: cached)."""
    return Markup(highlight(source, PythonLexer(), HtmlFormatter(
        linenos="table", cssclass="src", anchorlinenos=True, lineanchors="L", hl_lines=[line] if line else [])))


@lru_cache(maxsize=256)
def highlighted_diff(old: str, new: str, old_name: str, new_name: str) -> Markup | None:
    diff = source_diff(old, new, old_name, new_name)
    return Markup(highlight(diff, DiffLexer(), DIFF_FORMATTER)) if diff else None


def check_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise NotFound(f"{run_id[:80]!r} is not a run id; run ids look like 20260101-120000-ab12cd "
                       "(see the runs list).")
    return run_id


def check_strategy_id(strategy_id: str) -> str:
    if not STRATEGY_ID.match(strategy_id):
        raise NotFound(f"{strategy_id[:80]!r} is not a strategy id; strategy ids are 12 hex digits, "
                       "as the run page lists them.")
    return strategy_id


def kernel_url(run_id: str, strategy_id: str) -> str:
    return f"/runs/{run_id}/kernels/{strategy_id}"


def _num(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def written_by(run: RunData, row: EvalRow) -> str:
    """Who planned the strategy and who wrote the kernel: 'strategist M -> coder M2 (diff)', or 'builtin'."""
    planner = row.strategy.author.replace(":", " ", 1)
    origin = run.origin(row)
    if origin is None:
        return planner
    if planner == origin.author == "builtin":
        return "builtin" + (" fixer" if origin.role == "fixer" else "")
    return f"{planner} → {origin.role} {origin.author} ({origin.mode})"


ORIGIN_FIELDS = tuple(KernelOrigin.__dataclass_fields__)
PREDICTION_FIELDS = tuple(Prediction.__dataclass_fields__)
CALL_FIELDS = ("n", "seq", "attempt", "role", "model", "tokens_in", "tokens_out", "cost_usd", "latency_s", "error")
CALL_RECORD_FIELDS = ("served_model", "finish_reason", "structured", "attempts", "replayed", "tokens_estimated",
                      "response", "unreadable")


def written_by_json(run: RunData, row: EvalRow, full: bool = True) -> dict:
    """The strategy's author and the kernel's (role, author, mode; `full` adds the parent kernel,
    AST hash and note): None where the archive does not say."""
    origin = run.origin(row)
    fields = ORIGIN_FIELDS if full else ("role", "author", "mode")
    return dict(strategist=row.strategy.author, kernel={f: getattr(origin, f) for f in fields} if origin else None)


_MODEL_VIEWS: dict[str, tuple[RunData, dict]] = {}     # run id -> (the parsed run they were drawn from, views)


def _models(run: RunData, spend: Spend) -> dict:
    """The run page's model sections: spend, authors, predictions against measurements (none for a
    builtin run). All but the spend change only with the evaluations: drawn once per parsed run."""
    if not (spend.calls or run.by_models or run.llm.predictions):
        return dict(models=False)
    hit = _MODEL_VIEWS.get(run.id)
    if hit is not None and hit[0] is run:
        return dict(hit[1], spend=spend)
    vs = verdicts(run.llm.predictions)
    misses = worst_misses(vs)
    link = lambda sid: kernel_url(run.id, sid) if sid in run.by_id else None     # noqa: E731
    views = dict(models=True, verdicts=vs, calibration=calibration(vs), misses=misses, authors=_authors(run),
                 miss_factor=MISS_FACTOR,
                 plans={sid: run.latest(sid).strategy.plan for v in misses if (sid := v.prediction.strategy_id) in run.by_id},
                 predictions_svg=Markup(charts.predictions_svg(vs, link)) if vs else None)
    if len(_MODEL_VIEWS) > 16:
        _MODEL_VIEWS.pop(next(iter(_MODEL_VIEWS)), None)
    _MODEL_VIEWS[run.id] = (run, views)
    return dict(views, spend=spend)


def _authors(run: RunData) -> list[dict]:
    """Evaluations grouped by who wrote the kernel (role, author, mode): how many, how many ok, the best."""
    groups: dict[tuple[str, str, str], list[EvalRow]] = {}
    for row in run.rows:
        o = run.origin(row)
        groups.setdefault((o.role, o.author, o.mode) if o else ("-", "not recorded", "-"), []).append(row)
    out = []
    for (role, author, mode), rows in groups.items():
        ok = [r for r in rows if r.result.ok]
        best = max(ok, key=lambda r: r.result.tflops) if ok else None
        out.append(dict(role=role, author=author, mode=mode, evaluations=len(rows), ok=len(ok),
                        best_tflops=best.result.tflops if best else None, best=best.strategy.id if best else None))
    return sorted(out, key=lambda a: -(a["best_tflops"] or 0))


def run_page(run: RunData, spend: Spend = Spend()) -> dict:
    """Everything the run page draws: charts as SVG, family and failure tables, the best kernels and,
    for a run with models, their spend and how their predictions fared."""
    link = lambda p: kernel_url(run.id, p.strategy_id)              # noqa: E731
    points = list(run.points)
    front = pareto(points)
    fams = families(points)
    top_fam = max((f.best_tflops or 0 for f in fams), default=0)
    ok = sorted((r for r in run.rows if r.result.ok), key=lambda r: r.result.time_ns)
    return dict(
        run=run, points=points, best=run.best, front=front, families=fams, failures=failures(run),
        techniques=techniques(run),
        ok_count=len(run.ok_points), top=ok[:15],
        convergence_svg=Markup(charts.convergence_svg(points, convergence(points), link)),
        pareto_svg=Markup(charts.pareto_svg(points, front, link)),
        roofline_svg=Markup(charts.roofline_svg(run.roof, points, link, run.config.shape)) if run.roof else None,
        families_svg=Markup(charts.bars_svg(
            [(f.family, f.best_tflops or 0.0, f"best {f.best_tflops or 0:.2f} TFLOP/s, {f.ok}/{f.evaluations} ok",
              kernel_url(run.id, f.best_strategy) if f.best_strategy else None) for f in fams],
            top_fam, "technique families")),
        written_by=lambda r: written_by(run, r), **_models(run, spend),
    )


def _speedup(child: EvalRow, parent: EvalRow) -> str:
    c, p = child.result, parent.result
    if c.ok and p.ok and c.time_ns and p.time_ns:
        ratio = p.time_ns / c.time_ns
        return f"{ratio:.2f}x {'faster' if ratio >= 1 else 'slower'} than its parent"
    return f"{c.status.value} (parent {p.status.value})"


def knob_changes(parent: EvalRow, child: EvalRow) -> list[tuple[str, str, str]]:
    a, b = parent.strategy.knobs, child.strategy.knobs
    rows = [(k, str(a.get(k, "-")), str(b.get(k, "-"))) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if parent.strategy.family != child.strategy.family:
        rows.insert(0, ("family", parent.strategy.family, child.strategy.family))
    return rows


def source_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), old_name, new_name, n=3))


def _verdict(run: RunData, row: EvalRow) -> Verdict | None:
    return next((Verdict.of(p) for p in run.llm.predictions if (p.seq, p.attempt) == (row.seq, row.attempt)), None)


def _parent_kernel(reader: ArchiveReader, run: RunData, row: EvalRow) -> EvalRow | None:
    """The evaluation whose kernel this one's was derived from, if any. Drafts name it by the hash
    of its source (agents.roles.source_hash), the archive by its evaluation key: look among the
    kernels of the strategy's parents and of the step's earlier attempts."""
    from agents.roles import source_hash

    origin = run.origin(row)
    if origin is None or not origin.parent_kernel:
        return None
    digest = origin.parent_kernel
    if (direct := run.kernel_row(digest)) is not None:
        return direct
    candidates = [run.latest(pid) for pid in row.strategy.parents]
    candidates += [r for r in run.rows if r.seq == row.seq and r.attempt < row.attempt]
    return next((c for c in candidates if c is not None and source_hash(reader.source(c.kernel_hash)) == digest), None)


def _authorship(reader: ArchiveReader, run: RunData, row: EvalRow) -> dict:
    """Who wrote the kernel (and from which parent kernel), the prediction's verdict, the step's model calls."""
    origin = run.origin(row)
    parent_kernel = _parent_kernel(reader, run, row)
    calls = reader.calls(run.id, row.seq, full=True)
    return dict(origin=origin, parent_kernel=parent_kernel, verdict=_verdict(run, row), calls=calls,
                written_by=written_by(run, row), text_limit=TEXT_LIMIT, miss_factor=MISS_FACTOR,
                models=bool(calls) or row.strategy.author != "builtin"
                or (origin is not None and origin.author != "builtin"))


def kernel_page(reader: ArchiveReader, run: RunData, strategy_id: str, timeline: Timeline | None,
                timeline_error: str = "", parent_timelines: dict[str, Timeline] | None = None) -> dict:
    row = run.latest(check_strategy_id(strategy_id))
    if row is None:
        raise NotFound(f"Run {run.id} evaluated no strategy {strategy_id}.")
    source = reader.source(row.kernel_hash)
    r = row.result
    parents = []
    for pid in row.strategy.parents:
        prow = run.latest(pid)
        if prow is None:
            parents.append(dict(id=pid, row=None))
            continue
        parents.append(dict(id=pid, row=prow, speedup=_speedup(row, prow), knobs=knob_changes(prow, row),
                            diff=highlighted_diff(reader.source(prow.kernel_hash), source, f"{pid}.py",
                                                  f"{row.strategy.id}.py")))
    children = [dict(row=c, speedup=_speedup(c, row)) for c in run.children(row.strategy.id)]
    worst = max((e / r.budgets[d] for d, e in r.errors.items() if r.budgets.get(d)), default=0.0)
    error_bars = [(d, e / r.budgets[d], f"{e:.2e} of {r.budgets[d]:.1e} ({e / r.budgets[d]:.0%})", None)
                  for d, e in r.errors.items() if r.budgets.get(d)]
    pipes = sorted(r.pipe_busy.items(), key=lambda kv: -kv[1])
    return dict(
        run=run, row=row, result=r, strategy=row.strategy, parents=parents, children=children,
        ancestry=run.ancestry(row.strategy.id),
        source=highlighted_source(source, r.line),
        errors_svg=Markup(charts.bars_svg(error_bars, max(worst, 1.0), "error vs budget", log=True, mark=1.0))
        if error_bars else None,
        pipes_svg=Markup(charts.bars_svg([(p, f, f"{f:.0%}", None) for p, f in pipes], 1.0, "pipe busy"))
        if pipes else None,
        timeline=timeline, timeline_error=timeline_error, **_gantts(timeline, parent_timelines or {}),
        ok_parents=sum(1 for p in parents if p["row"] is not None and p["row"].result.ok),
        **_authorship(reader, run, row),
    )


def _gantts(timeline: Timeline | None, parents: dict[str, Timeline]) -> dict:
    """This kernel's timeline and its parents' (when computed), on one time axis."""
    if timeline is None:
        return dict(gantt_svg=None, parent_gantts=[])
    every = [timeline, *parents.values()]
    span = max(max((op[3] for op in t.ops), default=0.0) / t.clock_ghz / 1e3 for t in every) or None
    draw = lambda t: Markup(charts.gantt_svg(list(t.ops), list(t.pipes), t.clock_ghz, span_us=span))  # noqa: E731
    return dict(gantt_svg=draw(timeline), parent_gantts=[(pid, t, draw(t)) for pid, t in parents.items()])


def leaderboard_groups(rows: list[dict]) -> list[dict]:
    """Runs grouped by (task, machine, shape), each group ranked by its best kernel's time."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        config = json.loads(r["config"] or "{}")
        r = dict(r, mode=config.get("mode", "-"), seed=config.get("seed", "-"), budget=config.get("budget"))
        groups.setdefault((r["task"], r["machine"], r["shape"]), []).append(r)
    return [dict(task=t, machine=m, shape=s, rows=sorted(g, key=lambda r: r["time_ns"]))
            for (t, m, s), g in sorted(groups.items())]


# ---------------------------------------------------------------- JSON API
POINT_FIELDS = tuple(Point.__dataclass_fields__)


def point_json(p: Point) -> dict:
    return {f: getattr(p, f) for f in POINT_FIELDS}


def spend_json(spend: Spend) -> dict:
    return asdict(spend)


def verdict_json(v: Verdict) -> dict:
    return dict({f: getattr(v.prediction, f) for f in PREDICTION_FIELDS}, ratio=v.ratio, miss=v.miss)


def call_json(c: Call, full: bool) -> dict:
    """A call's figures; `full` adds its record: prompt messages, answer and settings."""
    out = {f: getattr(c, f) for f in CALL_FIELDS}
    if full:
        out.update({f: getattr(c, f) for f in CALL_RECORD_FIELDS},
                   messages=[dict(role=m.role, content=m.content) for m in c.messages])
    return out


def run_json(run: RunData, spend: Spend = Spend()) -> dict:
    return dict(id=run.id, status=run.status, created=run.created, config=run.config.model_dump(),
                unreadable_rows=run.unreadable, roofline=asdict(run.roof) if run.roof else None,
                evaluations=[dict(point_json(p), written_by=written_by_json(run, r, full=False))
                             for p, r in zip(run.points, run.rows)],
                spend=spend_json(spend), predictions=[verdict_json(v) for v in verdicts(run.llm.predictions)],
                convergence=convergence(list(run.points)),
                pareto=[[p.seq, p.attempt] for p in pareto(list(run.points))],
                families=[asdict(f) for f in families(list(run.points))],
                techniques=[asdict(t) for t in techniques(run)],
                failures=[asdict(f) for f in failures(run)])


def kernel_json(reader: ArchiveReader, run: RunData, strategy_id: str) -> dict:
    row = run.latest(check_strategy_id(strategy_id))
    if row is None:
        raise NotFound(f"Run {run.id} evaluated no strategy {strategy_id}.")
    result = {k: _num(v) for k, v in row.result.model_dump(mode="json").items()}
    parent = _parent_kernel(reader, run, row)
    return dict(run=run.id, seq=row.seq, attempt=row.attempt, strategy=row.strategy.model_dump(mode="json"),
                strategy_id=row.strategy.id, kernel_hash=row.kernel_hash, source=reader.source(row.kernel_hash),
                result=result, parents=list(row.strategy.parents),
                children=[c.strategy.id for c in run.children(row.strategy.id)],
                ancestry=[a.strategy.id for a in run.ancestry(row.strategy.id)],
                written_by=dict(written_by_json(run, row),
                                parent_kernel_strategy=parent.strategy.id if parent is not None else None),
                prediction=verdict_json(v) if (v := _verdict(run, row)) else None,
                calls=[call_json(c, full=True) for c in reader.calls(run.id, row.seq, full=True)])
