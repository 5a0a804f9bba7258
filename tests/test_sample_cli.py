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


@pytest.mark.slow
def test_sample_in_processes_joins_their_chains(volumes, tmp_path, capsys):
    """``--processes 2``: two ``fitcsc sample`` processes of two chains each (seeds 0 and
    1) whose chains make the four of the joined posterior, value for value; the summary
    and the report list the processes; R-hat and ESS are those of the four chains. A
    number of processes that does not divide the chains is refused in one line, before
    any process starts."""
    out = tmp_path / "par"
    code = main(["sample", "--data", str(volumes), "--out", str(out), "--model", "exponential",
                 "--quick", "--processes", "2"])
    assert code == 0, (out / "processes" / "1.log").read_text()
    summary, groups = _check_outputs(out)
    assert summary["sampler"]["num_chains"] == 4 and summary["sampler"]["seed"] == [0, 1]
    assert [p["seed"] for p in summary["processes"]] == [0, 1]
    assert summary["convergence"]["n_draws"] == 160 and groups["posterior"].sizes["chain"] == 4
    for i in (0, 1):
        part = json.loads((out / "processes" / str(i) / "summary.json").read_text())
        assert part["sampler"]["num_chains"] == 2 and part["sampler"]["seed"] == i
        # the processes run with --no-plots: no figures, no report, the PPC coverage still
        assert not list((out / "processes" / str(i)).glob("*.png"))
        assert not (out / "processes" / str(i) / "report.md").exists()
        assert 0 < part["convergence"]["ppc_coverage90"] <= 1
        with xr.open_dataset(out / "processes" / str(i) / "posterior.nc", group="posterior",
                             engine="h5netcdf") as own:
            for v in ("beta", "sigma", "eta_animal"):
                np.testing.assert_array_equal(groups["posterior"][v].values[2 * i:2 * i + 2],
                                              own[v].values, err_msg=v)
    import fitcsc.summary as fs

    again = fs.convergence(fs.az.from_netcdf(str(out / "posterior.nc")))
    assert again["rhat_max"] == summary["convergence"]["rhat_max"]
    assert "Chains run as 2 processes side by side (seeds 0, 1" in (out / "report.md").read_text()
    assert "fitcsc sample: 6 curves" in capsys.readouterr().out
    check_sample_report(out, tmp_path)

    # --resume keeps the finished processes (no process runs again) and joins them again
    logs = {i: (out / "processes" / f"{i}.log").stat().st_mtime_ns for i in (0, 1)}
    assert main(["sample", "--data", str(volumes), "--out", str(out), "--model",
                 "exponential", "--quick", "--processes", "2", "--resume", "--quiet"]) == 0
    assert {i: (out / "processes" / f"{i}.log").stat().st_mtime_ns for i in (0, 1)} == logs
    with xr.open_dataset(out / "posterior.nc", group="posterior", engine="h5netcdf") as new:
        np.testing.assert_array_equal(new["beta"].values, groups["posterior"]["beta"].values)

    # a finished process cannot be extended (its checkpoint is gone): another --samples
    # with --resume is refused in one line, before anything runs
    capsys.readouterr()
    code = main(["sample", "--data", str(volumes), "--out", str(out), "--model",
                 "exponential", "--quick", "--processes", "2", "--resume", "--samples", "80"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "finished with 40 draws" in err[0], err
    assert {i: (out / "processes" / f"{i}.log").stat().st_mtime_ns for i in (0, 1)} == logs

    code = main(["sample", "--data", str(volumes), "--out", str(tmp_path / "x"), "--quick",
                 "--processes", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--processes 3" in err[0] and "--chains 4" in err[0]
    assert not (tmp_path / "x" / "processes").exists()
