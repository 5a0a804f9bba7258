"""The Bayesian experiments run with --quick (tiny sampler settings): outputs exist and
hold what RESULT.md reports."""

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    sys.path.insert(0, str(ROOT / "experiments"))  # the experiments import _bayes
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIGURES = ("trace_rank.png", "pair.png", "forest.png", "ppc.png", "vpc.png", "trastuzumab.png")


@pytest.mark.slow
def test_mas98_bayes_quick(tmp_path):
    exp = _load("mas98_bayes")
    s = exp.main(exp.parse_args(["--quick", "--no-progress", "--out", str(tmp_path)]))
    assert s["n_curves"] == 4 and s["arms"] == ["Ctrl", "Trast"]
    assert s["n_censored"] > 0  # pre-treatment zeros enter the M3 likelihood
    for name in (*FIGURES, "posterior.nc", "summary.csv", "loo.csv", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert [r["model"] for r in s["loo"]] != [] and {r["model"] for r in s["loo"]} == {
        "csc", "exponential"}
    h = s["trastuzumab"]
    assert 0 <= h["csc_term"]["q025"] <= h["csc_term"]["mean"] <= h["csc_term"]["q975"] <= 1
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["convergence"]["n_draws"] == 120


@pytest.mark.slow
def test_pdxe_bayes_quick(tmp_path):
    exp = _load("pdxe_bayes")
    s = exp.main(exp.parse_args(["--quick", "--no-progress", "--out", str(tmp_path)]))
    assert s["n_lines"] == 3 and s["n_curves"] == 9
    for name in (*FIGURES, "lines.png", "lines.csv", "posterior.nc", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = (tmp_path / "lines.csv").read_text().splitlines()
    assert rows[0].startswith("line,arm,parameter") and len(rows) > 3
    assert set(s["line_sd_z_scale"]) >= {"her2_efficacy_csc", "her2_efficacy_bulk"}
