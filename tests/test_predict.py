"""`fitcsc predict`: a hand-written regimen file, predicted from a saved trial fit."""

import csv
import json
import pathlib

import numpy as np
import pytest

import fitcsc
from fitcsc import cli
from fitcsc._trial_fit import TrialFit, save_fit
from fitcsc._trials import Arm, TrialModel

CLINICAL = pathlib.Path(__file__).resolve().parents[1] / "data" / "clinical"

# Written by hand from the regimen format in data/README.md (not a trial in data/).
MY_TRIAL = """arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours
TC,docetaxel,75,mg/m2,0,21,6,1
TC,carboplatin,600,mg,0,21,6,0.5
TCH,docetaxel,75,mg/m2,0,21,6,1
TCH,carboplatin,600,mg,0,21,6,0.5
TCH,trastuzumab,8,mg/kg,0,,1,1.5
TCH,trastuzumab,6,mg/kg,21,21,16,0.5
"""


@pytest.fixture(scope="module")
def fit_dir(tmp_path_factory):
    regimens = fitcsc.read_regimen_table(CLINICAL / "regimens.csv")
    arms = [Arm("NEOSPHERE-TH", regimens["NEOSPHERE-TH"]),
            Arm("HERA-OBS", regimens["HERA-OBS"], setting="adjuvant", trial="HERA")]
    names = ("log_kill_scale", "logit_her2_independent", "log_micromet_cells#HERA")
    tm = TrialModel.build(arms, names)
    z = np.asarray(tm.z0())
    fit = TrialFit(names=names, z=z, cov=np.diag([0.04, 0.04, 0.01]), loss=0.0,
                   converged=True, n_steps=1, start_losses=np.zeros(1))
    d = tmp_path_factory.mktemp("fit")
    save_fit(d / "fit.json", tm, fit)
    return d


def test_predict_hand_written_trial(fit_dir, tmp_path):
    reg = tmp_path / "my_trial.csv"
    reg.write_text(MY_TRIAL)
    out = tmp_path / "out"
    code = cli.main(["predict", "--fit", str(fit_dir), "--regimens", str(reg), "--out",
                     str(out), "--comparator", "TC", "--draws", "64", "--years", "3"])
    assert code == 0
    with open(out / "predictions.csv", newline="") as fh:
        rows = {r["arm"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"TC", "TCH"}
    for r in rows.values():
        lo, mean, hi = float(r["pcr_lo"]), float(r["pcr_mean"]), float(r["pcr_hi"])
        assert 0.0 <= lo <= mean <= hi <= 1.0 and r["status"] == "ok"
        assert 0.0 <= float(r["dfs_lo"]) <= float(r["dfs_hi"]) <= 1.0
    assert float(rows["TC"]["dfs_hr_mean"]) == pytest.approx(1.0)  # itself
    # adding trastuzumab raises pCR and lowers the hazard
    assert float(rows["TCH"]["pcr_map"]) > float(rows["TC"]["pcr_map"])
    assert float(rows["TCH"]["dfs_hr_mean"]) < 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_arms"] == 2 and summary["burden_trial"] == "HERA"
    for name in ("dfs_curves.csv", "predictions.png"):
        assert (out / name).stat().st_size > 0


def test_predict_refuses_unknown_comparator(fit_dir, tmp_path, capsys):
    reg = tmp_path / "my_trial.csv"
    reg.write_text(MY_TRIAL)
    code = cli.main(["predict", "--fit", str(fit_dir), "--regimens", str(reg), "--out",
                     str(tmp_path / "o"), "--comparator", "XYZ"])
    assert code == 2
    err = capsys.readouterr().err
    assert "comparator" in err and "'XYZ'" in err and len(err.strip().splitlines()) == 1


def test_predict_refuses_missing_fit(tmp_path, capsys):
    reg = tmp_path / "my_trial.csv"
    reg.write_text(MY_TRIAL)
    code = cli.main(["predict", "--fit", str(tmp_path / "nofit"), "--regimens", str(reg),
                     "--out", str(tmp_path / "o")])
    assert code == 2 and "no fit.json" in capsys.readouterr().err
