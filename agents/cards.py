"""What the strategist reads about the machine, the technique library and each parent.

`bottleneck_card` turns an evaluation into a structured card (per-pipe busy fractions, bound,
attained vs roofline, L2 hit rate, HBM bytes, worst error vs budget per distribution, time
relative to its parent); `render_card` prints it in a few compact lines. `machine_brief`
and `technique_library` are the fixed parts of a strategist prompt, built from the preset
and the seed families so they never disagree with the simulator.
"""
from __future__ import annotations

import math
from typing import Any

from evaluator.errors import EvalError
from evaluator.result import EvalResult
from evaluator.tasks import TASKS
from evaluator.tasks.base import Task
from hwmodel.roofline import ENGINES, engine_peak_tflops, roofline
from hwmodel.spec import MachineSpec
from strategies.families import FAMILIES
from strategies.strategy import Strategy


def bottleneck_card(strategy: Strategy, result: EvalResult, parent_result: EvalResult | None,
                    machine: MachineSpec) -> dict[str, Any]:
    """The card of one evaluated strategy (JSON-ready: numbers rounded, no inf)."""
    card: dict[str, Any] = {"strategy": strategy.id, "family": strategy.family, "status": result.status.value}
    if not result.ok:
        card.update(rule=result.rule, line=result.line, failure=result.feedback(300))
        return card
    workload = _workload_bound(result, machine)
    card.update(
        time_us=round(result.time_ns / 1e3, 1),
        tflops=round(result.tflops, 1),
        pct_of_roofline=round(result.pct_of_roofline, 1),
        pct_of_peak=round(result.pct_of_peak, 1),
        bound=workload,
        bottleneck=result.bottleneck,
        pipe_busy={pipe: round(f, 2) for pipe, f in sorted(result.pipe_busy.items(), key=lambda kv: -kv[1])},
        l2_hit_rate=round(result.l2_hit_rate, 2),
        hbm_mib=round(result.hbm_bytes / 2**20, 1),
        errors={d: {"error": float(f"{e:.2e}"), "budget": float(f"{result.budgets.get(d, 0.0):.2e}"),
                    "of_budget": round(e / result.budgets[d], 2) if result.budgets.get(d) else None}
                for d, e in result.errors.items()},
    )
    if parent_result is not None and parent_result.ok and math.isfinite(parent_result.time_ns) \
            and parent_result.time_ns > 0:
        card["time_vs_parent"] = round(result.time_ns / parent_result.time_ns, 3)
    return card


def _workload_bound(result: EvalResult, machine: MachineSpec) -> str:
    """'compute' or 'memory' for the task's engine at the evaluated shape ('' if unknown)."""
    task = TASKS.get(result.task)
    if task is None:
        return ""
    try:
        shape = task.parse_shape(result.shape)
        return roofline(machine, task.flops(shape), task.compulsory_bytes(shape), task.engine).bound
    except (EvalError, ValueError, KeyError):
        return ""


def render_card(card: dict[str, Any]) -> str:
    """A few lines: status or speed, what limits it, pipes, memory, errors, vs parent."""
    head = f"[{card['strategy']}] {card['family']}"
    if card["status"] != "ok":
        where = f" line {card['line']}" if card.get("line") else ""
        rule = f" [{card['rule']}]" if card.get("rule") else ""
        return f"{head}: FAILED {card['status']}{rule}{where}: {card['failure']}"
    pipes = " ".join(f"{p} {f:.0%}" for p, f in card["pipe_busy"].items() if f >= 0.005)
    errors = ", ".join(f"{d} {e['error']:.1e}" + (f" ({e['of_budget']:.2f})" if e["of_budget"] is not None else "")
                       for d, e in card["errors"].items())
    vs = f", time x{card['time_vs_parent']:.3f} of its parent" if "time_vs_parent" in card else ""
    bound = f"{card['bound']}-bound workload, " if card["bound"] else ""
    return (f"{head}: {card['time_us']} us, {card['tflops']} TFLOP/s = {card['pct_of_roofline']}% of roofline "
            f"({card['pct_of_peak']}% of peak){vs}\n"
            f"  {bound}bottleneck {card['bottleneck']}; pipes busy: {pipes}\n"
            f"  L2 hit {card['l2_hit_rate']:.0%}, HBM traffic {card['hbm_mib']} MiB; error (of budget): {errors or 'none'}")


def machine_brief(machine: MachineSpec, task: Task | str) -> str:
    """Peaks per engine with ridge points, per-core memories, GM, data paths with bandwidths."""
    task = TASKS[task] if isinstance(task, str) else task
    hbm = machine.gm.hbm_gbps
    lines = [f"{machine.description}.",
             f"{machine.name}: {machine.num_cores} cores at {machine.clock_ghz:.2f} GHz; "
             f"pipes {', '.join(machine.pipes)}; issue cost {machine.issue_cycles} cycles/op on S."]
    peaks = []
    for engine in ENGINES:
        try:
            peak = engine_peak_tflops(machine, engine)
        except ValueError:
            continue
        mark = " <- this task" if engine == task.engine else ""
        peaks.append(f"{engine} {peak:.1f} TFLOP/s (ridge {peak * 1e3 / hbm:.0f} FLOP/B){mark}")
    lines.append("Peaks: " + "; ".join(peaks) + ".")
    mems = ", ".join(f"{name} {m.capacity_bytes // 1024} KiB" for name, m in machine.memories.items())
    lines.append(f"Per core: {mems}. GM: HBM {hbm / 1e3:.2f} TB/s shared, L2 {machine.gm.l2_bytes // 2**20} MiB "
                 f"{machine.gm.l2_gbps / 1e3:.1f} TB/s; per-core link {machine.gm.core_hbm_bytes_per_cycle:g} B/cycle "
                 f"on a miss, {machine.gm.core_l2_bytes_per_cycle:g} on an L2 hit.")
    paths = "; ".join(f"{p.src}->{p.dst} {p.pipe} {p.bytes_per_cycle:g} B/cycle" for p in machine.paths)
    lines.append(f"Data paths (per core): {paths}.")
    cube = ", ".join(f"{dtype} {m.m}x{m.n}x{m.k}->{m.acc_dtype}" for dtype, m in machine.cube.modes.items())
    lines.append(f"Cube fractals: {cube}. Vector: {machine.vector.bytes_per_cycle} B/cycle; slower ops "
                 + ", ".join(f"{op} x{n:g}" for op, n in machine.vector.op_passes.items()) + ".")
    return "\n".join(lines)


def technique_library(task: Task | str) -> str:
    """The seed families of the task, one line each: name, recipe, knob space."""
    name = task if isinstance(task, str) else task.name
    lines = []
    for family in FAMILIES.values():
        if family.task != name or not family.path.exists():
            continue
        space = " ".join(f"{k}{{{','.join(_short(v) for v in values)}}}" for k, values in family.space.items())
        lines.append(f"- {family.name}: {family.summary}. Knobs: {space}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
