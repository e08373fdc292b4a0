"""The evaluation cascade, cheap to expensive, stopping at the first failure:

policy (AST) -> sandbox (import, signature, trace recording at every shape) -> trace
validation -> small-shape correctness (fresh inputs per trial, every distribution, >= 3
seeds) -> benchmark shape (timing, sampled-core numbers, full output coverage).
Identical (source, task, machine, shape) is evaluated once (EvalCache).
"""
from __future__ import annotations

import json
import re
import time
import traceback
from dataclasses import dataclass, replace

import numpy as np

from evaluator.cache import EvalCache, cache_key
from evaluator.codec import decode
from evaluator.deadline import BudgetExceeded, deadline
from evaluator.policy import check_policy
from evaluator.result import EvalResult, EvalStatus
from evaluator.sandbox import SandboxLimits, SandboxRun
from evaluator.tasks.base import Shape, Task, rel_fro
from hwmodel.errors import HwError
from hwmodel.execute import coverage, replay_validated
from hwmodel.numerics import single_blas
from hwmodel.roofline import report, roofline
from hwmodel.simulate import declare
from hwmodel.slicing import index
from hwmodel.spec import MachineSpec
from hwmodel.timing import simulate_timing
from hwmodel.validate import validate_trace
from hwmodel.views import View

MESSAGE_CHARS = 800   # messages reach people and models: bounded


@dataclass(frozen=True)
class EvalConfig:
    seeds: int = 3                  # trials per distribution on the small shapes
    sample_rows: int = 64           # output rows checked against FP64 at the benchmark shape (at least one per writer core)
    sample_elements: int = 4096     # output elements checked against FP64 at the benchmark shape
    limits: SandboxLimits = SandboxLimits()
    trusted_wall_s: float = 900.0   # the trusted side's budget for one candidate (replay, timing, references)
    seed: int | None = None         # None: fresh entropy per evaluation


def evaluate(source: str, task: Task, machine: MachineSpec, shape: Shape | None = None,
             config: EvalConfig = EvalConfig(), cache: EvalCache | None = None) -> EvalResult:
    """Evaluate one candidate. Never raises for anything the candidate does: every failure,
    including one of the trusted side itself, is a status (see EvalStatus).

    The trusted side computes on one BLAS thread: OpenBLAS's matrix and dot products change
    in their last bits with the thread count, so errors and budgets would otherwise depend
    on the machine's cores (and small products only pay for the threads' wake-ups)."""
    shape = shape or task.bench_shape
    key = evaluation_key(source, task, machine, shape, config)
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    with single_blas():
        result = _Cascade(source, task, machine, shape, config, key).guarded()
    if cache is not None:
        cache.put(key, result)
    return result


def evaluation_key(source: str, task: Task, machine: MachineSpec, shape: Shape,
                   config: EvalConfig = EvalConfig()) -> str:
    """The cache key (and EvalResult.source_hash) of an evaluation: any seed's result will do."""
    return cache_key(source, task, machine, shape, replace(config, seed=None))


class _Cascade:
    def __init__(self, source: str, task: Task, machine: MachineSpec, shape: Shape, config: EvalConfig, key: str):
        self.source, self.task, self.machine, self.shape, self.config = source, task, machine, shape, config
        self.started = time.perf_counter()
        self.seed = config.seed if config.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.base = dict(task=task.name, machine=machine.name, shape=task.format_shape(shape), source_hash=key,
                         seed=self.seed)

    def fail(self, status: EvalStatus, stage: str, message: str, line: int = 0, rule: str = "", **extra) -> EvalResult:
        return EvalResult(status=status, stage=stage, message=_bounded(message), line=line, rule=rule,
                          eval_seconds=time.perf_counter() - self.started, **self.base, **extra)

    def guarded(self) -> EvalResult:
        """run() under the trusted side's wall-clock budget; whatever goes wrong is a status."""
        stage = "trusted"
        try:
            with deadline(self.config.trusted_wall_s):
                return self.run()
        except BudgetExceeded as exc:
            return self.fail(EvalStatus.timeout, stage, f"evaluating this kernel's trace took more than {exc} of the "
                             "evaluator's time (far more ops or data movement than the task needs)", rule="trusted.budget")
        except MemoryError:
            return self.fail(EvalStatus.oom, stage, "evaluating this kernel's trace ran out of memory in the evaluator",
                             rule="trusted.memory")
        except Exception as exc:   # a bug of the trusted side (or a hole in validation): keep it for developers
            return self.fail(EvalStatus.evaluator_error, stage, f"the evaluator failed ({type(exc).__name__}); this is "
                             "not the kernel's fault as far as the evaluator can tell", rule="evaluator",
                             traceback=traceback.format_exc(limit=30)[-20_000:])

    def run(self) -> EvalResult:
        violation = check_policy(self.source)
        if violation:
            return self.fail(EvalStatus.policy_violation, "policy", violation.message, violation.line,
                             rule=violation.rule)
        task = self.task
        bench_key = task.format_shape(self.shape)
        small = {task.format_shape(s): task.args(s) for s in task.small_shapes}
        bench = {bench_key: task.args(self.shape)}
        arg_names = list(task.arg_names)
        # the benchmark shape records in a second sandbox while the small shapes are checked here
        bench_run = None if bench_key in small else SandboxRun(
            self.source, self.machine, arg_names, bench, self.config.limits)
        try:
            traces, failure = self.collect(SandboxRun(self.source, self.machine, arg_names, small, self.config.limits),
                                           small)
            if failure:
                return failure
            failure, errors, budgets, trials = self.correctness(traces)
            if failure:
                return failure
            if bench_run is not None:
                bench_traces, failure = self.collect(bench_run, bench)
                bench_run = None
                if failure:
                    return failure
                traces.update(bench_traces)
        finally:
            if bench_run is not None:
                bench_run.cancel()
        return self.benchmark(traces[bench_key], errors, budgets, trials)

    def collect(self, run: SandboxRun, shapes: dict) -> tuple[dict, EvalResult | None]:
        """Decoded traces of a sandbox run, each validated as a complete program against the
        task's arguments at its shape, or the failure it ended in. Nothing the sandbox sends is
        trusted: a trace that does not decode or validate is `invalid_trace`."""
        outcome = run.result()
        if outcome.status != "ok":
            status = EvalStatus(outcome.status) if outcome.status in EvalStatus.__members__ else EvalStatus.invalid_trace
            return {}, self.fail(status, "sandbox", outcome.message, outcome.line, rule=outcome.rule or "sandbox")
        traces = {}
        if set(outcome.traces) != set(shapes):
            return {}, self.fail(EvalStatus.invalid_trace, "sandbox", "the sandbox returned traces for other shapes "
                                 "than were asked for", rule="trace.shapes")
        for key, blob in outcome.traces.items():
            try:
                trace = decode(blob)
                validate_trace(trace, self.machine, declare(shapes[key]))
            except HwError as exc:
                return {}, self.fail(EvalStatus.invalid_trace, "sandbox", f"the trace at shape {key} is not a legal "
                                     f"program: {exc}", rule=f"trace.{exc.rule}")
            except Exception as exc:   # CodecError, or anything a forged trace provokes
                return {}, self.fail(EvalStatus.invalid_trace, "sandbox", f"the trace at shape {key} is malformed "
                                     f"({type(exc).__name__})", rule="trace.malformed",
                                     traceback=traceback.format_exc(limit=30)[-20_000:])
            traces[key] = trace
        return traces, None

    # ------------------------------------------------------------------ stage 3
    def correctness(self, traces):
        task = self.task
        rng_root = np.random.SeedSequence(self.seed)
        errors: dict[str, float] = {}
        budgets: dict[str, float] = {}
        trials = 0
        for d, dist in enumerate(task.distributions):
            for s in range(self.config.seeds):
                shape = task.small_shapes[(d * self.config.seeds + s) % len(task.small_shapes)]
                rng = np.random.default_rng(rng_root.spawn(1)[0])
                inputs = task.inputs(shape, dist, rng)
                outputs, written = replay_validated(traces[task.format_shape(shape)], self.machine, inputs)
                out = outputs[task.output_name]
                ref = task.reference(inputs)
                budget = task.budget(inputs, ref)
                trials += 1
                where = f"on distribution {dist!r}, shape {task.format_shape(shape)}"
                missing = int((~written[task.output_name]).sum())
                if missing:
                    return self.fail(EvalStatus.wrong, "correctness",
                                     f"{missing:,} of {out.size:,} output elements were never written {where} "
                                     f"(first missing at index {_first(~written[task.output_name])}); every output "
                                     "element must be written by a copy to GM",
                                     rule="correctness.coverage"), errors, budgets, trials
                err = rel_fro(out, ref)
                errors[dist] = max(errors.get(dist, 0.0), err)
                budgets[dist] = max(budgets.get(dist, 0.0), budget)
                if not err <= budget:
                    return self.fail(EvalStatus.wrong, "correctness", _wrong_message(out, ref, err, budget, where),
                                     rule="correctness.error", errors=errors, budgets=budgets,
                                     trials=trials), errors, budgets, trials
        return None, errors, budgets, trials

    # ------------------------------------------------------------------ stage 4
    def benchmark(self, trace, errors, budgets, trials) -> EvalResult:
        """Time the benchmark-shape trace, and check output elements drawn from every core
        that writes the output (a replay of just their backward slice) on the task's hardest
        distribution."""
        task, machine, cfg = self.task, self.machine, self.config
        rng = np.random.default_rng(np.random.SeedSequence(self.seed).spawn(2)[1])
        extra = dict(errors=errors, budgets=budgets, trials=trials, ops=trace.num_ops)
        where = f"at the benchmark shape {task.format_shape(self.shape)}"
        try:
            timing = simulate_timing(trace, machine)
        except HwError as exc:   # e.g. the timing engine's work budget
            return self.fail(EvalStatus.hw_violation, "benchmark", f"{where}: {exc}", rule=exc.rule, **extra)
        roof = roofline(machine, task.flops(self.shape), task.compulsory_bytes(self.shape), task.engine)
        rep = report(roof, timing)
        if rep.attained > 1 + 1e-9:
            return self.fail(EvalStatus.implausible, "benchmark", f"{where} the simulated time {timing.time_ns:,.0f} ns "
                             f"is {100 * rep.attained:.1f}% of the roofline limit ({roof.limit_tflops:.1f} TFLOP/s for "
                             f"{task.engine}): faster than the machine allows, so the result is rejected",
                             rule="roofline", **extra)
        out_id = next(t.id for t in trace.tensors if t.name == task.output_name)
        written = coverage(trace)[out_id]
        missing = int((~written).sum())
        if missing:
            return self.fail(EvalStatus.wrong, "benchmark", f"{missing:,} output elements are never written {where} "
                             f"(first at index {_first(~written)})", rule="benchmark.coverage", **extra)
        targets, owner = check_targets(trace, out_id, rng, cfg.sample_rows, cfg.sample_elements)
        dist = task.hardest_distribution
        inputs = task.inputs(self.shape, dist, rng)
        outputs, _ = replay_validated(trace, machine, inputs, targets={task.output_name: targets})
        coords = np.nonzero(targets)
        got = outputs[task.output_name][coords]
        ref = task.reference(inputs, coords)
        err = rel_fro(got, ref)
        budget = task.budget(inputs, ref, coords)
        if not err <= budget:
            worst = int(np.argmax(np.abs(got.astype(np.float64) - ref))) if np.all(np.isfinite(got)) else \
                int(np.argmin(np.isfinite(got)))
            at = tuple(int(c[worst]) for c in coords)
            return self.fail(EvalStatus.wrong, "benchmark", f"{where}, distribution {dist!r} ({len(got):,} elements "
                             f"from all {len(set(owner.values()))} cores whose writes reach the output checked): "
                             f"relative error {err:.3g} > "
                             f"budget {budget:.3g}; worst at index {at}, in the tile core {owner[at]} wrote (got "
                             f"{float(got[worst]):.6g}, expected {float(ref[worst]):.6g}); small shapes passed, so "
                             "look at what changes with size (K panels, ring reuse, workspaces, core mapping)",
                             rule="benchmark.error", bench_error=err, **extra)
        return EvalResult(status=EvalStatus.ok, stage="benchmark", message="", time_ns=timing.time_ns,
                          tflops=rep.tflops, pct_of_peak=100 * rep.tflops / roof.peak_tflops,
                          pct_of_roofline=100 * rep.attained, bottleneck=f"{rep.busiest_pipe} {rep.busiest_fraction:.0%}",
                          pipe_busy={p: round(f, 4) for p, f in timing.pipe_busy.items()},
                          l2_hit_rate=timing.l2_hit_rate, hbm_bytes=timing.hbm_bytes, roofline=rep.text(),
                          bench_error=err,
                          eval_seconds=time.perf_counter() - self.started, **self.base, **extra)


def check_targets(trace, out_id: int, rng: np.random.Generator, rows: int,
                  elements: int) -> tuple[np.ndarray, dict[tuple[int, ...], int]]:
    """Output elements to check at the benchmark shape: from every core whose writes survive in
    the output (it wrote an element's final value, in replay order), one of its writes drawn
    with weight its surviving elements, and a few rows of surviving elements in it (`rows` in
    all, at least one per core; `elements` in all). Returns the element mask and, per element, the core that wrote its final value.
    Ownership by final value means writes that another core overwrites (decoys) dilute nothing."""
    shape = next(t.shape for t in trace.tensors if t.id == out_id)
    writes = _output_writes(trace, out_id)        # (phase, core, view) of every output write
    writes.sort(key=lambda w: (w[0], w[1]))       # the replay's order; stable within a core
    final = np.full(shape, -1, np.int16)
    for _, core, view in writes:
        final[index(view)] = core
    views: dict[int, dict[int, View]] = {}        # per core, its distinct written views
    for _, core, view in writes:
        views.setdefault(core, {})[id(view)] = view
    owners = [c for c in sorted(views) if any((final[index(v)] == c).any() for v in views[c].values())]
    per_rows = max(1, rows // max(1, len(owners)))
    per_row = max(1, elements // max(1, len(owners)) // per_rows)
    mask = np.zeros(shape, bool)
    owner: dict[tuple[int, ...], int] = {}
    for core in owners:
        owned = [(v, np.flatnonzero(final[index(v)] == core)) for v in views[core].values()]
        owned = [(v, flat) for v, flat in owned if len(flat)]
        weights = np.array([len(flat) for _, flat in owned], np.float64)
        # one write (tile) per core, drawn by the elements it owns (one tile keeps the replayed
        # slice small), then rows through owned elements of it drawn uniformly
        v, flat = owned[rng.choice(len(owned), p=weights / weights.sum())]
        width = v.extent[-1]
        for _ in range(per_rows):
            row = int(flat[rng.integers(len(flat))]) // width
            in_row = flat[(flat >= row * width) & (flat < (row + 1) * width)]
            for f in rng.choice(in_row, min(per_row, len(in_row)), replace=False).tolist():
                at = tuple(int(o + i) for o, i in zip(v.offset, np.unravel_index(f, v.extent)))
                mask[at] = True
                owner[at] = core
    return mask, owner


def _is_output_write(op, out_id: int) -> bool:
    return op.kind == "copy" and op.dst[0].space == "GM" and op.dst[0].base == out_id


def _output_writes(trace, out_id: int) -> list[tuple[int, int, View]]:
    """(phase, core, view) of every copy into the output, each core's in issue order; on the
    op id arrays of a decoded trace, without a pass over its ops."""
    writes = []
    if trace.op_ids is not None:
        table = trace.op_table
        barrier = np.array([op.kind == "barrier" for op in table], bool)
        is_write = np.array([_is_output_write(op, out_id) for op in table], bool)
        for core, ids in enumerate(trace.op_ids):
            phase = np.cumsum(barrier[ids])
            at = np.flatnonzero(is_write[ids])
            writes += [(p, core, table[i].dst[0]) for p, i in zip(phase[at].tolist(), ids[at].tolist())]
        return writes
    for core, ops in enumerate(trace.ops):
        phase = 0
        for op in ops:
            if op.kind == "barrier":
                phase += 1
            elif _is_output_write(op, out_id):
                writes.append((phase, core, op.dst[0]))
    return writes


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _wrong_message(out: np.ndarray, ref: np.ndarray, err: float, budget: float, where: str) -> str:
    bad = ~np.isfinite(out.astype(np.float64))
    if bad.any():
        return (f"{int(bad.sum()):,} output elements are NaN or inf {where} (first at index {_first(bad)}); "
                "check reads of buffers before they are written and accumulate flags")
    diff = np.abs(out.astype(np.float64) - ref)
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
    return (f"relative error {err:.3g} > budget {budget:.3g} {where}; worst element at index {worst} "
            f"(got {float(out[worst]):.6g}, expected {float(ref[worst]):.6g})")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _bounded(message: str) -> str:
    """At most MESSAGE_CHARS characters, no control characters (messages reach models)."""
    message = _CONTROL.sub(" ", message)
    return message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS - 1] + "…"


def describe(result: EvalResult) -> str:
    return json.dumps(result.model_dump(mode="json"), indent=2)
