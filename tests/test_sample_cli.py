"""``fitcsc sample``: the population job end to end (in process), its outputs and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from helpers import check_sample_report

from fitcsc.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("posterior.nc", "summary.csv", "summary.json", "trace_rank.png", "pair.png",
           "forest.png", "ppc.png", "vpc.png")


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")  # keep the test session's JAX config


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """6 mice, control and a treated arm, exponential-ish growth, one zero volume."""
    rng = np.random.default_rng(7)
    lines = ["study,arm,subject,day,volume_mm3"]
    for i in range(6):
        arm = "control" if i < 3 else "paclitaxel"
        rate = 0.06 if arm == "control" else -0.02
        for d in range(0, 25, 4):
            v = 0.0 if (i == 5 and d == 24) else 100 * np.exp(rate * d + 0.1 * rng.normal())
            lines.append(f"syn,{arm},m{i},{d},{v:.3f}")
    path = tmp_path_factory.mktemp("data") / "volumes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _check_outputs(out):
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    for name in OUTPUTS[3:]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    groups = {g: xr.open_dataset(out / "posterior.nc", group=g, engine="h5netcdf")
              for g in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive",
                        "observed_data")}
    assert groups["log_likelihood"]["volume_mm3"].dims == ("chain", "draw", "obs")
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    for col in ("mean", "sd", "hdi_lo", "hdi_hi", "mcse_mean", "ess_bulk", "ess_tail", "r_hat"):
        assert col in header
    return json.loads((out / "summary.json").read_text()), groups


def test_sample_baseline_quick(volumes, tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["sample", "--data", str(volumes), "--out", str(out), "--model", "exponential",
                 "--quick"])
    assert code == 0
    summary, groups = _check_outputs(out)
    assert summary["n_curves"] == 6 and summary["n_censored"] == 1
    assert summary["sampler"]["method"] == "chees" and summary["convergence"]["n_draws"] == 160
    assert groups["observed_data"].sizes["obs"] == 42
    assert "fitcsc sample: 6 curves" in capsys.readouterr().out
    check_sample_report(out, tmp_path)  # report.md, rebuilt identically by fitcsc report


@pytest.mark.slow
def test_sample_csc_quick_nuts(volumes, tmp_path):
    out = tmp_path / "csc"
    code = main(["sample", "--data", str(volumes), "--out", str(out), "--quick", "--quiet",
                 "--method", "nuts", "--dense-mass", "--chains", "2"])
    assert code == 0
    summary, groups = _check_outputs(out)
    assert "her2_efficacy_csc" not in " ".join(summary["fixed_effects"])
    assert any(f.startswith("kill_rate") for f in summary["fixed_effects"])
    assert summary["random_effects"] == {"animal": ["csc_division_rate", "initial_volume_mm3"]}
    assert groups["posterior"].sizes["chain"] == 2


@pytest.mark.parametrize("text,message", [
    ("study,arm,subject,day\ns,a,m,0\n", "volume_mm3"),
    ("study,arm,subject,day,volume_mm3\ns,a,m,0,-5\n", "volume_mm3"),
])
def test_refused_input(tmp_path, capsys, text, message):
    data = tmp_path / "bad.csv"
    data.write_text(text)
    code = main(["sample", "--data", str(data), "--out", str(tmp_path / "o"), "--quick"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "bad.csv" in err[0]
