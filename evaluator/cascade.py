"""The evaluation cascade, cheap to expensive, stopping at the first failure:

policy (AST) -> sandbox (import, signature, trace recording at every shape) -> trace
validation -> small-shape correctness (fresh inputs per trial, every distribution, >= 3
seeds) -> benchmark shape (timing, sampled-core numbers, full output coverage).
Identical (source, task, machine, shape) is evaluated once (EvalCache).
"""
from __future__ import annotations

import hashlib
import os
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluator.codec import CodecError, decode
from evaluator.policy import check_policy
from evaluator.result import EvalResult, EvalStatus
from evaluator.sandbox import SandboxLimits, SandboxRun
from evaluator.tasks.base import Shape, Task, rel_fro
from hwmodel.errors import HwError
from hwmodel.execute import coverage
from hwmodel.roofline import report, roofline
from hwmodel.simulate import replay
from hwmodel.spec import MachineSpec
from hwmodel.timing import simulate_timing
from hwmodel.validate import validate_trace

EVALUATOR_VERSION = "1"


@dataclass(frozen=True)
class EvalConfig:
    seeds: int = 3                  # trials per distribution on the small shapes
    sample_cores: int = 2           # cores whose numbers are computed at the benchmark shape
    sample_elements: int = 4096     # output elements checked against FP64 at the benchmark shape
    limits: SandboxLimits = SandboxLimits()
    seed: int | None = None         # None: fresh entropy per evaluation


class EvalCache:
    """Results by content hash, in memory and (optionally) as JSON files in a directory."""

    def __init__(self, directory: str | Path | None = None):
        self._memory: dict[str, EvalResult] = {}
        self._dir = Path(directory) if directory else None
        if self._dir:
            self._dir.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> EvalResult | None:
        hit = self._memory.get(key)
        if hit is None and self._dir and (self._dir / f"{key}.json").exists():
            hit = self._memory[key] = EvalResult.model_validate_json((self._dir / f"{key}.json").read_text())
        return hit

    def put(self, key: str, result: EvalResult) -> None:
        self._memory[key] = result
        if self._dir:
            tmp = self._dir / f"{key}.{os.getpid()}.tmp"      # unique: runs may share a cache directory
            tmp.write_text(result.model_dump_json())
            tmp.replace(self._dir / f"{key}.json")


def cache_key(source: str, task: Task, machine: MachineSpec, shape: Shape) -> str:
    h = hashlib.sha256()
    for part in (EVALUATOR_VERSION, source, task.name, machine.model_dump_json(), task.format_shape(shape)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def evaluate(source: str, task: Task, machine: MachineSpec, shape: Shape | None = None,
             config: EvalConfig = EvalConfig(), cache: EvalCache | None = None) -> EvalResult:
    shape = shape or task.bench_shape
    key = cache_key(source, task, machine, shape)
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    result = _Cascade(source, task, machine, shape, config, key).run()
    if cache is not None and result.status is not EvalStatus.timeout:
        cache.put(key, result)
    return result


class _Cascade:
    def __init__(self, source: str, task: Task, machine: MachineSpec, shape: Shape, config: EvalConfig, key: str):
        self.source, self.task, self.machine, self.shape, self.config = source, task, machine, shape, config
        self.started = time.perf_counter()
        self.seed = config.seed if config.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.base = dict(task=task.name, machine=machine.name, shape=task.format_shape(shape), source_hash=key,
                         seed=self.seed)

    def fail(self, status: EvalStatus, stage: str, message: str, line: int = 0, **extra) -> EvalResult:
        return EvalResult(status=status, stage=stage, message=message, line=line,
                          eval_seconds=time.perf_counter() - self.started, **self.base, **extra)

    def run(self) -> EvalResult:
        violation = check_policy(self.source)
        if violation:
            return self.fail(EvalStatus.policy_violation, "policy", violation.message, violation.line)
        task = self.task
        bench_key = task.format_shape(self.shape)
        small = {task.format_shape(s): task.args(s) for s in task.small_shapes}
        arg_names = list(task.arg_names)
        # the benchmark shape records in a second sandbox while the small shapes are checked here
        bench_run = None if bench_key in small else SandboxRun(
            self.source, self.machine, arg_names, {bench_key: task.args(self.shape)}, self.config.limits)
        try:
            traces, failure = self.collect(SandboxRun(self.source, self.machine, arg_names, small, self.config.limits))
            if failure:
                return failure
            failure, errors, budgets, trials = self.correctness(traces)
            if failure:
                return failure
            if bench_run is not None:
                bench_traces, failure = self.collect(bench_run)
                bench_run = None
                if failure:
                    return failure
                traces.update(bench_traces)
        finally:
            if bench_run is not None:
                bench_run.cancel()
        return self.benchmark(traces[bench_key], errors, budgets, trials)

    def collect(self, run: SandboxRun) -> tuple[dict, EvalResult | None]:
        """Decoded, validated traces of a sandbox run, or the failure it ended in."""
        outcome = run.result()
        if outcome.status != "ok":
            return {}, self.fail(EvalStatus(outcome.status), "sandbox", outcome.message, outcome.line)
        traces = {}
        for key, blob in outcome.traces.items():
            try:
                traces[key] = decode(blob)
                validate_trace(traces[key], self.machine)
            except (CodecError, HwError) as exc:
                return {}, self.fail(EvalStatus.hw_violation, "sandbox", f"the trace at shape {key} is invalid: {exc}")
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
                outputs, written, _ = replay(traces[task.format_shape(shape)], self.machine, inputs)
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
                                     "element must be written by a copy to GM"), errors, budgets, trials
                err = rel_fro(out, ref)
                errors[dist] = max(errors.get(dist, 0.0), err)
                budgets[dist] = max(budgets.get(dist, 0.0), budget)
                if not err <= budget:
                    return self.fail(EvalStatus.wrong, "correctness", _wrong_message(out, ref, err, budget, where),
                                     errors=errors, budgets=budgets, trials=trials), errors, budgets, trials
        return None, errors, budgets, trials

    # ------------------------------------------------------------------ stage 4
    def benchmark(self, trace, errors, budgets, trials) -> EvalResult:
        task, machine, cfg = self.task, self.machine, self.config
        rng = np.random.default_rng(np.random.SeedSequence(self.seed).spawn(2)[1])
        timing = simulate_timing(trace, machine)
        extra = dict(errors=errors, budgets=budgets, trials=trials, ops=trace.num_ops)
        all_written = coverage(trace)
        out_id = next(t.id for t in trace.tensors if t.name == task.output_name)
        missing = int((~all_written[out_id]).sum())
        if missing:
            return self.fail(EvalStatus.wrong, "benchmark", f"{missing:,} output elements are never written at the "
                             f"benchmark shape {task.format_shape(self.shape)} (first at index "
                             f"{_first(~all_written[out_id])})", **extra)
        writes_out = {id(op) for op in trace.distinct_ops()
                      if op.kind == "copy" and op.dst[0].space == "GM" and op.dst[0].base == out_id}
        writers = [c for c, ops in enumerate(trace.ops) if any(id(op) in writes_out for op in ops)]
        cores = rng.choice(writers, min(cfg.sample_cores, len(writers)), replace=False).tolist()
        inputs = task.inputs(self.shape, task.distributions[0], rng)
        outputs, _, _ = replay(trace, machine, inputs, sample_cores=cores)
        coords = task.sample_coords(coverage(trace, set(cores))[out_id], rng, cfg.sample_elements)
        if len(coords[0]) == 0:
            return self.fail(EvalStatus.wrong, "benchmark", f"cores {cores} wrote no output element at the "
                             "benchmark shape, so nothing could be checked", **extra)
        got = outputs[task.output_name][coords]
        ref = task.reference(inputs, coords)
        err = rel_fro(got, ref)
        budget = task.budget(inputs, ref, coords)
        if not err <= budget:
            return self.fail(EvalStatus.wrong, "benchmark", f"at the benchmark shape {task.format_shape(self.shape)} "
                             f"(cores {cores} checked, {len(got):,} elements): relative error {err:.3g} > budget "
                             f"{budget:.3g}; small shapes passed, so look at what changes with size (K panels, "
                             "ring reuse, workspaces)", bench_error=err, **extra)
        roof = roofline(machine, task.flops(self.shape), task.compulsory_bytes(self.shape), task.engine)
        rep = report(roof, timing)
        return EvalResult(status=EvalStatus.ok, stage="benchmark", message="", time_ns=timing.time_ns,
                          tflops=rep.tflops, pct_of_peak=100 * rep.tflops / roof.peak_tflops,
                          pct_of_roofline=100 * rep.attained, bottleneck=f"{rep.busiest_pipe} {rep.busiest_fraction:.0%}",
                          pipe_busy={p: round(f, 4) for p, f in timing.pipe_busy.items()},
                          l2_hit_rate=timing.l2_hit_rate, roofline=rep.text(), bench_error=err,
                          eval_seconds=time.perf_counter() - self.started, **self.base, **extra)


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


def describe(result: EvalResult) -> str:
    return json.dumps(result.model_dump(mode="json"), indent=2)
