"""`cubepilot report RUN_ID --out DIR`: the run page's charts as PNG files (matplotlib, Agg)
and a short Markdown summary that links them, for papers and chats. The figures come from
the same read model as the web viewer (agents.viewer.data), so both show the same numbers.
"""
from __future__ import annotations

from pathlib import Path

from agents.viewer.data import ArchiveReader, NotFound, RunData, convergence, failures, families, pareto


class ReportError(Exception):
    """The report cannot be written (no archive, no such run, unwritable directory)."""


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    _pyplot().close(fig)
    return path


def plot_convergence(run: RunData, path: Path) -> Path:
    plt = _pyplot()
    points = list(run.points)
    series = convergence(points)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.step([i for i, _ in series], [b for _, b in series], where="post", color="#d62728", label="best so far")
    ok = [(i, p.tflops) for i, p in enumerate(points) if p.ok]
    bad = [i for i, p in enumerate(points) if not p.ok]
    if ok:
        ax.scatter(*zip(*ok), s=12, color="#1f77b4", alpha=0.6, label="ok kernel")
    if bad:
        ax.scatter(bad, [0] * len(bad), marker="x", s=14, color="#d62728", label="failed")
    ax.set(xlabel="evaluation", ylabel="TFLOP/s", title=f"{run.config.task} on {run.config.machine}: convergence")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_pareto(run: RunData, path: Path) -> Path:
    plt = _pyplot()
    pts = [p for p in run.points if p.ok and p.time_ns and p.error is not None]
    front = pareto(list(run.points))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if pts:
        ax.scatter([p.time_ns / 1e3 for p in pts], [p.error for p in pts], s=12, alpha=0.6, color="#1f77b4",
                   label="ok kernel")
        ax.step([p.time_ns / 1e3 for p in front], [p.error for p in front], where="post", color="#d62728",
                marker="o", markersize=4, label="Pareto front")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set(xlabel="time (us)", ylabel="worst relative error", title="error vs time")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_roofline(run: RunData, path: Path) -> Path | None:
    if run.roof is None:
        return None
    plt = _pyplot()
    roof = run.roof
    lo, hi = min(roof.intensity, roof.ridge) / 10, max(roof.intensity, roof.ridge) * 10
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot([lo, roof.ridge, hi], [lo * roof.hbm_gbps / 1e3, roof.peak_tflops, roof.peak_tflops], color="#1d2330",
            lw=2, label=f"{roof.engine} roof")
    for engine, peak in roof.other_peaks.items():
        ax.plot([max(lo, peak * 1e3 / roof.hbm_gbps), hi], [peak, peak], ls="--", lw=0.8, color="#99a")
        ax.annotate(f"{engine} {peak:.0f}", (hi, peak), fontsize=7, ha="right", va="bottom", color="#556")
    ok = [p.tflops for p in run.points if p.ok and p.tflops > 0]
    ax.scatter([roof.intensity] * len(ok), ok, s=14, color="#2ca02c", alpha=0.7, label="kernels", zorder=3)
    ax.axvline(roof.intensity, ls=":", color="#aab")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="arithmetic intensity (FLOP per compulsory byte)", ylabel="TFLOP/s",
           title=f"roofline at {run.config.shape}: limit {roof.limit_tflops:.1f} TFLOP/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_families(run: RunData, path: Path) -> Path:
    plt = _pyplot()
    fams = families(list(run.points))
    fig, ax = plt.subplots(figsize=(6.4, 1.6 + 0.35 * len(fams)))
    ax.barh([f.family for f in fams], [f.best_tflops or 0 for f in fams], color="#4c7fc0")
    for i, f in enumerate(fams):
        ax.annotate(f" {f.ok}/{f.evaluations} ok", (f.best_tflops or 0, i), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="best TFLOP/s", title="technique families")
    return _save(fig, path)


def summary_markdown(run: RunData, images: list[Path]) -> str:
    c = run.config
    ok = run.ok_points
    best = run.best
    lines = [f"# Run {run.id}", "",
             f"{c.task} on {c.machine} at {c.shape}; backend {c.backend}, mode {c.mode}, seed {c.seed}; "
             f"{len(run.points)}/{c.budget} evaluations, {len(ok)} ok; status {run.status}.", ""]
    if best:
        seeds = [p for p in run.points if p.ok and p.origin == "library"]
        base = max(seeds, key=lambda p: p.tflops) if seeds else None
        lines += [f"**Best kernel**: {best.family} `{best.strategy_id}` (evaluation {best.seq}): "
                  f"{best.tflops:.2f} TFLOP/s in {best.time_ns / 1e3:.2f} us, {best.pct_roofline:.1f}% of the "
                  f"roofline limit, bottleneck {best.bottleneck}, worst error {best.error:.2e}."]
        if base and base.tflops:
            lines += [f"That is {best.tflops / base.tflops:.2f}x the best library strategy of the run "
                      f"({base.family} `{base.strategy_id}`, {base.tflops:.2f} TFLOP/s)."]
        lines += [""]
    else:
        lines += ["No evaluation is ok.", ""]
    fails = failures(run)
    if fails:
        lines += ["| status | rule | count |", "| --- | --- | ---: |"]
        lines += [f"| {f.status} | {f.rule or '-'} | {f.count} |" for f in fails] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def write_report(archive: Path, run_id: str, out: Path) -> list[Path]:
    """Write the PNG charts and summary.md of a run into `out`; returns the files written."""
    from agents.viewer.pages import check_run_id

    try:
        run = ArchiveReader(Path(archive)).run(check_run_id(run_id))
    except NotFound as exc:
        raise ReportError(str(exc)) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        images = [plot_convergence(run, out / "convergence.png"), plot_pareto(run, out / "pareto.png"),
                  plot_roofline(run, out / "roofline.png"), plot_families(run, out / "families.png")]
        images = [p for p in images if p is not None]
        summary = out / "summary.md"
        summary.write_text(summary_markdown(run, images))
    except OSError as exc:
        raise ReportError(f"cannot write the report into {out}: {exc}") from None
    return [*images, summary]
