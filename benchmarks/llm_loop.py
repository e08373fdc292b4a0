"""The LLM layer's own cost per evolution step, and the tokens it spends.

    python benchmarks/llm_loop.py [--json] [--steps 40] [--task sgemm] [--machine ascend-910a]

Runs the real loop (agents.loop.evolve) with the real LLM roles, prompts, client (openai SDK)
and archive against a scripted OpenAI-compatible server on loopback that answers at once
(tests/llm_author.py), with an instant stand-in for the evaluator, so what is timed is the
LLM layer alone: building prompts, parsing answers, novelty checks, bookkeeping and the
archive. The HTTP round trips to the loopback server are measured per call and reported
apart (model latency excluded). Target: <= 50 ms of the layer's own time per step.

Also: tokens per call and per step for each role at default settings, and each role's
prompt fitted to the smallest supported context (4,096 tokens): its size and what it left out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.config import validate  # noqa: E402
from agents.llm.records import CallRecord  # noqa: E402
from agents.loop import evolve  # noqa: E402
from agents.runstate import default_context  # noqa: E402
from agents.team import build_team  # noqa: E402
from evaluator.result import EvalResult, EvalStatus  # noqa: E402
from evaluator.tasks import get_task  # noqa: E402
from hwmodel.spec import load_machine  # noqa: E402
from strategies.archive import Archive, RunConfig  # noqa: E402
from strategies.families import families_for  # noqa: E402
from tests.fakellm import FakeLLM  # noqa: E402
from tests.llm_author import Author  # noqa: E402

TARGET_MS = 50.0
SMALLEST_CONTEXT = 4096


def instant_evaluate(config: RunConfig):
    """Ok results with a time drawn from the kernel's hash: the evaluator is not what is timed."""
    def evaluate(jobs):
        for source, seq in jobs:
            digest = hashlib.sha256(source.encode()).digest()
            time_ns = 1e6 * (1 + digest[0] / 255)
            yield EvalResult(status=EvalStatus.ok, message="", stage="benchmark", task=config.task,
                             machine=config.machine, shape=config.shape, source_hash=digest.hex()[:32],
                             time_ns=time_ns, tflops=1e3 / time_ns * 1e3, pct_of_roofline=50.0,
                             bottleneck="MTE2 60%", pipe_busy={"M": 0.4, "MTE2": 0.6}, errors={"wide": 1e-7},
                             budgets={"wide": 1e-5}, roofline="memory-bound")
    return evaluate


def measure(steps: int, task_name: str, machine_name: str, workdir: Path) -> dict:
    task, machine = get_task(task_name), load_machine(machine_name)
    with FakeLLM(Author()) as fake:
        agents = validate({"agents": {"backend": "openai", "allow_unpriced": True},
                           "models": {"default": {"model": "fake-model", "base_url": fake.base_url,
                                                  "api_key_env": None, "price_in": 1.0, "price_out": 4.0}}})
        seeds = len(families_for(task.name))
        config = RunConfig(task=task.name, machine=machine.name, shape=task.format_shape(task.bench_shape),
                           budget=seeds + steps, seed=1, backend="openai", agents=agents.public())
        archive = Archive(workdir / "bench.sqlite")
        run_id = archive.new_run(config)
        crew = build_team(agents, machine, task.bench_shape, archive, run_id)
        started = time.perf_counter()
        evolve(archive, run_id, config, crew.team, instant_evaluate(config), None, default_context(config, machine))
        wall = time.perf_counter() - started
    calls = [CallRecord.from_json(c.record) for c in archive.calls(run_id)]
    http = sum(c.latency_s for c in calls)
    roles = {}
    for role in ("strategist", "coder", "fixer"):
        mine = [c for c in calls if c.role == role]
        if mine:
            roles[role] = {"calls": len(mine), "tokens_in_per_call": round(statistics.mean(c.tokens_in for c in mine)),
                           "tokens_out_per_call": round(statistics.mean(c.tokens_out for c in mine)),
                           "tokens_per_step": round(sum(c.tokens_in + c.tokens_out for c in mine) / steps)}
    own = wall - http           # the seed steps make no model call; their bookkeeping counts too
    return {"steps": steps, "calls": len(calls), "wall_s": round(wall, 3), "http_s": round(http, 3),
            "own_ms_per_step": round(1e3 * own / steps, 2), "http_ms_per_step": round(1e3 * http / steps, 2),
            "target_ms": TARGET_MS, "roles": roles, "small_context": small_context(task, machine)}


def small_context(task, machine) -> dict:
    """Each role's prompt for a model with a 4,096-token context (and 1,024 answer tokens)."""
    from agents.llm.roles import first_prompt
    from agents.llm.settings import ModelSettings
    from strategies.evolution import Elites

    settings = ModelSettings(name="small", model="small", base_url="http://127.0.0.1:1/v1", api_key_env=None,
                             context_tokens=SMALLEST_CONTEXT, max_tokens=1024)
    config = RunConfig(task=task.name, machine=machine.name, shape=task.format_shape(task.bench_shape), budget=1, seed=0)
    ctx = default_context(config, machine)(elites=Elites())
    prompts = {role: first_prompt(role, ctx, settings) for role in ("strategist", "coder", "fixer")}
    return {role: {"prompt_tokens": p.prompt_tokens, "max_tokens": p.max_tokens, "dropped": list(p.dropped),
                   "shrunk": list(p.shrunk)} for role, p in prompts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--steps", type=int, default=40, help="model-written steps to run")
    parser.add_argument("--task", default="sgemm")
    parser.add_argument("--machine", default="ascend-910a")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = measure(args.steps, args.task, args.machine, Path(tmp))
    if args.json:
        print(json.dumps(out))
        return
    print(f"LLM layer, {out['steps']} steps of {args.task} on {args.machine} ({out['calls']} model calls):")
    print(f"  own time per step   {out['own_ms_per_step']:8.2f} ms   (target <= {TARGET_MS:.0f} ms)")
    print(f"  loopback HTTP/step  {out['http_ms_per_step']:8.2f} ms   (excluded: stands for model latency)")
    print(f"\n  {'role':<11}{'calls':>6}{'tok in/call':>13}{'tok out/call':>14}{'tok/step':>10}")
    for role, r in out["roles"].items():
        print(f"  {role:<11}{r['calls']:>6}{r['tokens_in_per_call']:>13}{r['tokens_out_per_call']:>14}"
              f"{r['tokens_per_step']:>10}")
    print(f"\n  prompts at a {SMALLEST_CONTEXT}-token context:")
    for role, r in out["small_context"].items():
        print(f"  {role:<11}{r['prompt_tokens']:>6} tokens, answer <= {r['max_tokens']}, left out: "
              f"{', '.join(r['dropped']) or '-'}; shrunk: {', '.join(r['shrunk']) or '-'}")


if __name__ == "__main__":
    main()
