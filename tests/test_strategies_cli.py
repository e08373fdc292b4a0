"""`cubepilot strategies`: measured figures of the seed library, recorded by --measure into a
figures file, listed with their status, shown as stale once the kernel or machine changes,
and one-paragraph errors (exit 2) for bad input."""
from __future__ import annotations

import dataclasses

import json

import pytest
from typer.testing import CliRunner

from agents.cli import app
from evaluator.tasks import get_task
from hwmodel.spec import load_machine
from strategies.families import FAMILIES
from strategies.figures import FigureStore, measure

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """hgemm's families measured once at a small shape: (figures file, the JSON --measure printed)."""
    figures = tmp_path_factory.mktemp("figures") / "library-figures.json"
    out = runner.invoke(app, ["strategies", "--measure", "--task", "hgemm", "--shape", "256x256x256",
                              "--seed", "1", "--figures", str(figures), "--json"])
    assert out.exit_code == 0, out.output
    return figures, json.loads(out.output)


def _hgemm_cube(report: dict) -> dict:
    return next(f for f in report["families"] if f["family"] == "hgemm_cube")


def test_measure_records_real_figures(measured):
    figures, report = measured
    assert report["figures_file"] == str(figures) and figures.exists()
    assert {f["task"] for f in report["families"]} == {"hgemm"}
    (figure,) = _hgemm_cube(report)["figures"]
    assert figure["status"] == "ok" and figure["current"] and figure["tflops"] > 0
    assert 0 < figure["pct_of_roofline"] <= 100
    assert (figure["machine"], figure["shape"], figure["seed"]) == ("ascend-910a", "256x256x256", 1)
    worst = figure["worst_error"]
    assert worst["distribution"] in ("uniform", "normal", "wide", "llm") and 0 < worst["error"] <= worst["budget"]


def test_listing_shows_the_recorded_figure(measured):
    figures, report = measured
    tflops = _hgemm_cube(report)["figures"][0]["tflops"]
    out = runner.invoke(app, ["strategies", "--task", "hgemm", "--figures", str(figures)])
    assert out.exit_code == 0, out.output
    assert "hgemm_cube" in out.output and " ok " in out.output and f"{tflops:.1f}" in out.output
    assert "ascend-910a at 256x256x256" in out.output and "knobs BM" in out.output
    out = runner.invoke(app, ["strategies", "--task", "hgemm", "--figures", str(figures), "--machine", "ascend-910b"])
    assert out.exit_code == 0 and f"{tflops:.1f}" not in out.output
    assert "no figures recorded on ascend-910b" in out.output and "--machine ascend-910b" in out.output


@pytest.mark.parametrize("field,reason", [("source_hash", "reference kernel has changed"),
                                          ("result_key", "machine spec or the evaluator has changed")])
def test_a_stale_figure_is_not_shown_as_current(measured, tmp_path, field, reason):
    figures, report = measured
    tflops = _hgemm_cube(report)["figures"][0]["tflops"]
    data = json.loads(figures.read_text())
    for f in data["figures"]:
        if field == "source_hash":
            f["source_hash"] = "0" * 16
        else:
            f["result"]["source_hash"] = "0" * 32
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(data))
    out = runner.invoke(app, ["strategies", "--task", "hgemm", "--figures", str(stale), "--json"])
    (figure,) = _hgemm_cube(json.loads(out.output))["figures"]
    assert not figure["current"] and reason in figure["stale_reason"] and "tflops" not in figure
    out = runner.invoke(app, ["strategies", "--task", "hgemm", "--figures", str(stale)])
    assert out.exit_code == 0 and "stale" in out.output and f"{tflops:.1f}" not in out.output


def test_a_failing_reference_kernel_shows_status_and_why(tmp_path, monkeypatch):
    """INT8 direct filed under qgemm (2e-3 on LLM-like inputs), where it cannot pass."""
    monkeypatch.setitem(FAMILIES, "qgemm_int8", dataclasses.replace(FAMILIES["qgemm_int8"], task="qgemm"))
    store = FigureStore(tmp_path / "figures.json")
    store.record(measure(FAMILIES["qgemm_int8"], get_task("qgemm"), load_machine("ascend-910a"), (256, 256, 256), 1))
    out = runner.invoke(app, ["strategies", "--task", "qgemm", "--figures", str(store.path), "--json"])
    figure = next(f for f in json.loads(out.output)["families"] if f["family"] == "qgemm_int8")["figures"][0]
    assert figure["status"] == "wrong" and figure["tflops"] is None and "> budget" in figure["message"]
    out = runner.invoke(app, ["strategies", "--task", "qgemm", "--figures", str(store.path)])
    assert "wrong" in out.output and "relative error" in out.output and "not measured" in out.output


@pytest.mark.parametrize("args,needle", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--measure", "--machine", "nope"], "unknown machine 'nope'"),
    (["--machine", "nope"], "unknown machine 'nope'"),
    (["--measure", "--task", "hgemm", "--shape", "12x12"], "MxNxK"),
    (["--measure", "--shape", "512x512x512"], "needs --task"),
    (["--seed", "3"], "only applies with --measure"),
    (["--figures", "CORRUPT"], "cannot read the figures file"),
    (["--measure", "--task", "hgemm", "--shape", "256x256x256", "--figures", "/proc/no/figures.json"],
     "cannot write the figures file"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, args, needle):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    out = runner.invoke(app, ["strategies", *[str(corrupt) if a == "CORRUPT" else a for a in args]])
    assert out.exit_code == 2, out.output
    assert needle in out.output


def test_re_measuring_replaces_the_figure_of_the_same_family_machine_and_shape(measured, tmp_path):
    figures, _ = measured
    (figure,) = [f for f in FigureStore(figures).load() if f.family == "hgemm_cube"]
    store = FigureStore(tmp_path / "sub" / "figures.json")
    store.record(figure)
    store.record(figure.model_copy(update={"measured_at": figure.measured_at + 60}))
    assert [f.measured_at for f in store.load()] == [figure.measured_at + 60]
    assert [p.name for p in store.path.parent.iterdir()] == ["figures.json"]      # no temporary file left behind
