"""The published clinical figures in data/clinical validate, and bad rows are refused."""

import math
import pathlib
import shutil

import pytest
from scipy.stats import beta

from fitcsc._errors import DataError
from fitcsc._io.clinical import read_clinical
from fitcsc._io.data import read_regimen_table
from fitcsc.cli import main

CLINICAL = pathlib.Path(__file__).resolve().parents[1] / "data" / "clinical"


@pytest.mark.parametrize("name,kind,n", [
    ("pcr_arms.csv", "pcr", 69), ("adjuvant_outcomes.csv", "adjuvant", 42),
    ("pcr_outcome_links.csv", "links", 20), ("trastuzumab_pk.csv", "pk", 40),
])
def test_files_validate(name, kind, n, capsys):
    assert len(read_clinical(CLINICAL / name)) == n
    assert main(["data", "validate", str(CLINICAL / name)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {kind}:")


def test_regimen_table_has_every_referenced_arm():
    regimens = read_regimen_table(CLINICAL / "regimens.csv")
    for row in read_clinical(CLINICAL / "pcr_arms.csv"):
        assert row["regimen_id"] in regimens
    assert regimens["HERA-OBS"].lines == ()  # drug 'none': untreated


def test_published_counts_match_clopper_pearson_intervals():
    # README: for NeoSphere, NeoALTTO and MDACC the exact CI of count/n reproduces the
    # published CI to about 0.1 points; check that from the files.
    checked = 0
    for row in read_clinical(CLINICAL / "pcr_arms.csv"):
        if row["count_basis"] != "derived and CI-checked" or row["ci95_lo"] is None:
            continue
        k, n = row["pcr_count"], row["n_patients"]
        lo = 100 * beta.ppf(0.025, k, n - k + 1)
        hi = 100 * beta.ppf(0.975, k + 1, n - k)
        assert abs(lo - row["ci95_lo"]) < 0.6 and abs(hi - row["ci95_hi"]) < 0.6, row["arm_id"]
        checked += 1
    assert checked >= 5


def test_log_hr_se_from_interval():
    for row in read_clinical(CLINICAL / "adjuvant_outcomes.csv"):
        lo, hi = row["hr_ci95_lo"], row["hr_ci95_hi"]
        if lo is None or not row.get("log_hr_se"):
            continue
        se = (math.log(hi) - math.log(lo)) / (2 * 1.959964)
        assert float(row["log_hr_se"]) == pytest.approx(se, rel=1e-4)


def test_b47_null_is_present():
    rows = [r for r in read_clinical(CLINICAL / "adjuvant_outcomes.csv")
            if r["trial"].startswith("NSABP B-47") or "B-47" in r["trial"]]
    assert any(r["hr_vs_control"] == "0.98" for r in rows)


@pytest.mark.parametrize("column,bad,message", [
    ("pcr_pct", "130", "percentage out of range"),
    ("pcr_count", "999", "exceeds the arm size"),
    ("pcr_definition", "ypT1", "unknown pCR definition"),
    ("citation", "", "without citation"),
    ("regimen_id", "NO-SUCH-ARM", "not in regimens.csv"),
    ("verified", "maybe", "verified flag"),
])
def test_bad_rows_refused(tmp_path, column, bad, message):
    shutil.copy(CLINICAL / "regimens.csv", tmp_path / "regimens.csv")
    import csv

    with open(CLINICAL / "pcr_arms.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0][column] = bad  # the first data row (file line 2) has n and a count
    path = tmp_path / "pcr_arms.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=message) as err:
        read_clinical(path)
    assert "line 2" in str(err.value) and f"column '{column}'" in str(err.value)
