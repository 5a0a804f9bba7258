"""`fitcsc simulate`'s chemotherapy calibration: one reference dose per drug (the trial
model's), so an arm's trajectory never depends on the other arms in the table."""

import csv

from fitcsc._jobs.simulate_job import run_default

HEADER = "arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours\n"
TCH = ("TCH,docetaxel,75,mg/m2,0,21,6,1\nTCH,carboplatin,600,mg,0,21,6,0.5\n"
       "TCH,trastuzumab,6,mg/kg,0,21,6,0.5\n")
OTHER = "TCH-300,docetaxel,75,mg/m2,0,21,6,1\nTCH-300,carboplatin,300,mg,0,21,6,0.5\n"


def _arm_row(tmp_path, name, text):
    f = tmp_path / f"{name}.csv"
    f.write_text(HEADER + text)
    run_default(f, tmp_path / name, quick=True)
    with open(tmp_path / name / "arms.csv", newline="") as fh:
        return {r["arm"]: r for r in csv.DictReader(fh)}["TCH"]


def test_an_arm_alone_and_beside_another_give_the_same_trajectory(tmp_path):
    alone = _arm_row(tmp_path, "alone", TCH)
    beside = _arm_row(tmp_path, "beside", TCH + OTHER)
    assert float(alone["residual_invasive_cells"]) > 0
    for col in ("residual_invasive_cells", "p_pcr_typical_patient", "csc_fraction_at_surgery"):
        assert alone[col] == beside[col], col
