"""Page load times of the archive web viewer on a 1,000-evaluation archive.

    python benchmarks/viewer_speed.py [--json] [--repeats 7] [--evaluations 1000] [--source ARCHIVE] [--builtin]

The archive is synthetic but real: the EvalResult records of a short builtin run (or of
--source) are recorded again through strategies.archive.Archive with varied knobs, times,
errors, lineage and failures, each with its own kernel source. Unless --builtin, the big run
is a model run: after 8 seeds every step has a strategist's plan with a prediction, a kernel
written by a coder (full or diff) and its model calls with prompts and answers of realistic
size (a failed step also a fixer's call). Each page is fetched from a real uvicorn server on
loopback (warmed on another run): the first request (parsing the 1,000-evaluation run) and the
median of the repeats after it. Target: every page under 300 ms.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from agents.llm.records import CallRecord  # noqa: E402
from evaluator.result import EvalStatus  # noqa: E402
from strategies.archive import Archive, KernelOrigin, Prediction  # noqa: E402
from strategies.strategy import ExpectedEffect  # noqa: E402

TARGET_MS = 300.0
FAILURES = [(EvalStatus.wrong, "correctness.budget"), (EvalStatus.hw_violation, "capacity"),
            (EvalStatus.timeout, "sandbox.wall"), (EvalStatus.policy_violation, "policy.import")]


def source_rows(source: Path | None, workdir: Path) -> tuple[list, Archive]:
    """The evaluations of the newest run of `source`, or of a fresh 10-evaluation builtin run."""
    if source is None:
        source = workdir / "seed.sqlite"
        subprocess.run([sys.executable, "-c", "from agents.cli import main; main()", "run", "--budget", "10",
                        "--task", "hgemm", "--shape", "256x256x256", "--json", "--archive", str(source)],
                       check=True, capture_output=True, cwd=workdir)
    store = Archive.open_readonly(source)
    run_id = store.runs()[0]["id"]
    return store.evaluations(run_id), store


SEEDS = 8
PROMPT_CHARS = {"strategist": 6_000, "coder": 14_000, "fixer": 12_000}     # about what agents/prompts renders


def record_calls(archive: Archive, run_id: str, seq: int, source: str, failed: bool, rng) -> None:
    """The model calls of one step: strategist and coder, and a fixer when the kernel failed."""
    for role in ("strategist", "coder") + (("fixer",) if failed else ()):
        prompt = (f"You are the {role} of an evolutionary kernel search. " * 40)[:PROMPT_CHARS[role]]
        answer = '{"plan": "tile 128x256, double buffer"}' if role == "strategist" else f"```python\n{source}```"
        tokens_in, tokens_out = PROMPT_CHARS[role] // 4, len(answer) // 4
        cost = tokens_in * 1e-6 + tokens_out * 2e-6
        call = CallRecord(role=role, model="bench-model", served_model="bench-model-2025", response=answer,
                          messages=({"role": "system", "content": prompt[:400]}, {"role": "user", "content": prompt}),
                          tokens_in=tokens_in, tokens_out=tokens_out, tokens_estimated=False,
                          latency_s=float(rng.uniform(0.5, 20)), cost_usd=cost, cache_key=f"{seq}-{role}",
                          structured="json_schema", error="", replayed=False, finish_reason="stop")
        archive.record_call(run_id, seq, int(role == "fixer"), role, call.model, tokens_in, tokens_out, cost,
                            call.latency_s, "", call.cache_key, call.to_json())


def build(path: Path, rows: list, seed_store: Archive, n: int, runs: int = 2,
          models: bool = True) -> tuple[str, list[str]]:
    """`runs` runs; the first holds n evaluations (a model run unless `models` is False). Returns
    (first run id, its strategy ids)."""
    rng = np.random.default_rng(7)
    archive = Archive(path)
    ok_rows = [r for r in rows if r.result.ok]
    config = seed_store.run_config(seed_store.runs()[0]["id"])
    first, ids = None, []
    for k in range(runs):
        run_id = archive.new_run(config.model_copy(update={"budget": n, "seed": k}))
        first = first or run_id
        made: list[str] = []
        by_id: dict = {}
        for seq in range(n if k == 0 else n // 10):
            base = ok_rows[seq % len(ok_rows)]
            parents = tuple(sorted(set(rng.choice(made, size=min(len(made), 1 + seq % 2), replace=False)))) \
                if made and seq >= 8 else ()
            strategy = base.strategy.model_copy(update={
                "knobs": {**base.strategy.knobs, "GROUP": int(rng.integers(1, 9)), "VARIANT": seq},
                "parents": parents, "origin": ("mutation", "crossover")[len(parents) - 1] if parents else "random"})
            source = seed_store.source(base.kernel_hash) + f"\n# variant {seq} of run {k}\n"
            digest = hashlib.sha256(source.encode()).hexdigest()[:32]
            speed = float(rng.lognormal(0.0, 0.35)) * (1 + seq / n)
            r = base.result
            if rng.random() < 0.1:
                status, rule = FAILURES[seq % len(FAILURES)]
                result = r.model_copy(update={"status": status, "rule": rule, "message": f"synthetic {status.value}",
                                              "time_ns": math.inf, "tflops": 0.0, "pct_of_roofline": 0.0,
                                              "source_hash": digest})
            else:
                result = r.model_copy(update={
                    "time_ns": r.time_ns / speed, "tflops": r.tflops * speed, "pct_of_roofline": r.pct_of_roofline * speed,
                    "errors": {d: e * float(rng.lognormal(0, 0.3)) for d, e in r.errors.items()},
                    "source_hash": digest})
            by_model = models and k == 0 and seq >= SEEDS and parents
            if not by_model:
                archive.record(run_id, seq, 0, strategy, source, result, KernelOrigin("coder", "builtin", "template"))
            else:
                strategy = strategy.model_copy(update={
                    "origin": "llm", "author": "strategist:bench-model",
                    "techniques": ("double buffering", f"swizzle {seq % 8}"),
                    "expected": ExpectedEffect(bottleneck="MTE2", speedup=round(float(rng.uniform(1.0, 1.6)), 2),
                                               rationale="hide the loads behind the cube")})
                parent_row = by_id[parents[0]]
                measured = parent_row.time_ns / result.time_ns if result.ok and parent_row.ok else None
                archive.record(run_id, seq, 0, strategy, source, result,
                               KernelOrigin("coder", "bench-model", ("full", "diff")[seq % 2],
                                            hashlib.sha256(source.encode()).hexdigest()[:32], note="retiled"),
                               Prediction(seq, 0, strategy.id, parents[0], "MTE2", strategy.expected.speedup, measured))
                record_calls(archive, run_id, seq, source, not result.ok, rng)
            by_id[strategy.id] = result
            made.append(strategy.id)
        if k == 0:
            ids = made
    archive.close()
    return first, ids


def fetch_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
        assert r.status == 200, url
    return (time.perf_counter() - started) * 1e3


def measure(archive: Path, run_id: str, ids: list[str], repeats: int) -> dict:
    """Per page: the first request for the big run (the server parses the run then) and the median
    of the repeats. The server process is warmed on the other run first (imports, templates), so
    'first' measures the archive, not Python's start-up."""
    from test_viewer_browser import serve     # a real uvicorn server on a free loopback port

    server = serve(archive)
    store = Archive.open_readonly(archive)
    best = min((r for r in store.evaluations(run_id) if r.result.ok), key=lambda r: r.result.time_ns).strategy.id
    other = next(r["id"] for r in store.runs() if r["id"] != run_id)
    other_sid = store.evaluations(other)[-1].strategy.id
    store.close()
    for path in (f"/runs/{other}", f"/runs/{other}/kernels/{other_sid}", f"/api/runs/{other}",
                 f"/api/runs/{other}/kernels/{other_sid}"):
        fetch_ms(server.url + path)
    pages = {"runs list": "/", "run page": f"/runs/{run_id}", "kernel page (best)": f"/runs/{run_id}/kernels/{best}",
             "kernel page (last)": f"/runs/{run_id}/kernels/{ids[-1]}", "leaderboard": "/leaderboard",
             "api run": f"/api/runs/{run_id}", "api kernel": f"/api/runs/{run_id}/kernels/{best}",
             "api calls": f"/api/runs/{run_id}/calls"}
    out = {}
    try:
        for name, path in pages.items():
            first = fetch_ms(server.url + path)
            times = [fetch_ms(server.url + path) for _ in range(repeats)]
            out[name] = {"path": path, "first_ms": round(first, 1), "median_ms": round(statistics.median(times), 1)}
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--source", type=Path, help="archive whose newest run supplies the records")
    parser.add_argument("--builtin", action="store_true", help="no model data: the big run is a builtin run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cubepilot-viewer-speed-") as tmp:
        rows, seed_store = source_rows(args.source, Path(tmp))
        archive = Path(tmp) / "archive.sqlite"
        started = time.perf_counter()
        run_id, ids = build(archive, rows, seed_store, args.evaluations, models=not args.builtin)
        build_s = time.perf_counter() - started
        pages = measure(archive, run_id, ids, args.repeats)
    worst = max(max(p["first_ms"], p["median_ms"]) for p in pages.values())
    result = {"evaluations": args.evaluations, "models": not args.builtin, "build_s": round(build_s, 2), "target_ms": TARGET_MS,
              "pages": pages, "worst_ms": worst, "all_under_target": worst < TARGET_MS}
    if args.json:
        print(json.dumps(result))
        return
    print(f"viewer on a {args.evaluations}-evaluation {'builtin' if args.builtin else 'model'} run "
          f"(archive built in {build_s:.1f} s); "
          f"first request and median of {args.repeats}, target < {TARGET_MS:.0f} ms")
    print(f"{'page':<22}{'first ms':>10}{'median ms':>11}  path")
    for name, p in pages.items():
        print(f"{name:<22}{p['first_ms']:>10.1f}{p['median_ms']:>11.1f}  {p['path']}")
    print(f"worst {worst:.1f} ms: {'all pages under' if worst < TARGET_MS else 'OVER'} the target")


if __name__ == "__main__":
    main()
