"""Every experiment runs with --quick (main(args) + argparse, as NumPyro examples)."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pcr_fit_quick(tmp_path):
    exp = _load("pcr_fit")
    summary = exp.main(exp.parse_args(["--quick", "--out", str(tmp_path)]))
    assert summary["n_arms"] == 4
    for name in ("fit.json", "arms.csv", "pcr_fit.png", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert 0 <= fit["n_within_binomial_ci95"] <= 4
    assert fit["optimiser"]["accepted_steps"] >= 1  # the fit moved from its start
    first = (tmp_path / "arms.csv").read_text().splitlines()[1].split(",")
    assert 0.0 <= float(first[9]) <= 100.0  # predicted pCR %
