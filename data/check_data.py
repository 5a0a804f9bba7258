"""Consistency check of data/clinical/*.csv (standard library only).

    python data/check_data.py [DIR]    # DIR defaults to data/clinical; exit status 1 on error

Checks: required columns; every regimen_id (and comparator_regimen_id) exists in
regimens.csv; every drug is a catalogue name (cross-checked against fitcsc/_model/drugs.py when
it is there); units and numeric fields parse; vocabularies; every row has a citation;
pCR counts agree with n and percentage (|100 count/n - pct| < 1 point); CIs bracket the
estimate; log_hr and log_hr_se agree with hr and its CI; keys are unique.
"""

from __future__ import annotations

import csv
import math
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
CLIN = HERE / "clinical"
Z = 1.959964

CATALOGUE = {
    "trastuzumab",
    "pertuzumab",
    "ljm716",
    "lapatinib",
    "neratinib",
    "trastuzumab_emtansine",
    "paclitaxel",
    "docetaxel",
    "doxorubicin",
    "epirubicin",
    "cyclophosphamide",
    "fluorouracil",
    "methotrexate",
    "carboplatin",
    "gamma_secretase_inhibitor",
    "reparixin",
    "metformin",
    "tamoxifen",
    "fulvestrant",
    "trastuzumab_deruxtecan",
    "dm1",
    "dxd",
    "cisplatin",
    "gemcitabine",
    "eribulin",
    "vinorelbine",
    "capecitabine",
    "olaparib",
    "talazoparib",
    "palbociclib",
    "ribociclib",
    "abemaciclib",
}
NO_DRUG = "none"  # an arm without drug: dose 0, mg, one dose
DOSE_UNITS = {"mg", "mg/kg", "mg/m2"}
PCR_DEFS = {"ypT0/is", "ypT0/is ypN0", "ypT0", "ypT0 ypN0", "unclear"}
LINK_DEFS = PCR_DEFS - {"unclear"} | {"mixed", "as trial", ""}
VERIFIED = {"yes", "partial", "unverified"}
COUNT_BASIS = {"published", "derived rate×n", "derived and CI-checked"}

REQUIRED = {
    "regimens.csv": [
        "arm",
        "drug",
        "dose",
        "dose_unit",
        "start_day",
        "interval_day",
        "n_doses",
        "infusion_hours",
    ],
    "pcr_arms.csv": [
        "trial",
        "arm_id",
        "arm",
        "population",
        "hr_subgroup",
        "pcr_definition",
        "is_primary_definition",
        "n_patients",
        "pcr_pct",
        "pcr_count",
        "count_basis",
        "ci95_lo",
        "ci95_hi",
        "regimen_id",
        "weeks_to_surgery_assumed",
        "verified",
        "citation",
        "source",
        "notes",
    ],
    "adjuvant_outcomes.csv": [
        "trial",
        "analysis",
        "arm_id",
        "arm",
        "role",
        "her2_status",
        "n_randomized",
        "regimen_id",
        "median_followup_years",
        "endpoint",
        "events_n",
        "hr_vs_control",
        "hr_ci95_lo",
        "hr_ci95_hi",
        "log_hr",
        "log_hr_se",
        "landmark_years",
        "landmark_rate_pct",
        "verified",
        "citation",
        "source",
        "notes",
    ],
    "pcr_outcome_links.csv": [
        "study",
        "type",
        "population",
        "n_patients",
        "comparison",
        "endpoint",
        "pcr_definition",
        "hr",
        "ci95_lo",
        "ci95_hi",
        "verified",
        "citation",
        "source",
        "notes",
    ],
    "trastuzumab_pk.csv": [
        "drug",
        "parameter",
        "value",
        "unit",
        "population",
        "model",
        "verified",
        "citation",
        "source",
        "notes",
    ],
}

errors: list[str] = []
warnings: list[str] = []


def err(fname, i, msg):
    errors.append(f"{fname} line {i + 2}: {msg}")  # i = data row index; line 1 = header


def read(fname):
    with open(CLIN / fname, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED[fname] if c not in (reader.fieldnames or [])]
        if missing:
            errors.append(f"{fname}: missing columns {missing}")
        return list(reader)


def num(fname, i, row, col, *, required=False, integer=False, lo=None):
    """The float (or int) in row[col]; None if empty and allowed."""
    v = row[col].strip()
    if v == "":
        if required:
            err(fname, i, f"{col} is empty, expected a number")
        return None
    try:
        x = int(v) if integer else float(v)
    except ValueError:
        err(fname, i, f"{col}={v!r} is not {'an integer' if integer else 'a number'}")
        return None
    if not math.isfinite(x) or (lo is not None and x < lo):
        err(fname, i, f"{col}={v!r} out of range (expected >= {lo})")
    return x


def close(a, b, rel=2e-5):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def check_catalogue_file():
    src = HERE.parent / "fitcsc" / "_model" / "drugs.py"
    if not src.exists():
        return
    names = set(re.findall(r'DrugInfo\(\s*"([^"]+)"', src.read_text()))
    if names and names != CATALOGUE:
        warnings.append(
            f"catalogue in fitcsc/_model/drugs.py differs from this checker: "
            f"only there {sorted(names - CATALOGUE)}, only here "
            f"{sorted(CATALOGUE - names)}"
        )
    for d in names:
        CATALOGUE.add(d)


def check_regimens():
    f = "regimens.csv"
    rows = read(f)
    ids = set()
    for i, r in enumerate(rows):
        ids.add(r["arm"].strip())
        if not r["arm"].strip():
            err(f, i, "empty arm (regimen id)")
        drug = r["drug"].strip()
        if drug not in CATALOGUE and drug != NO_DRUG:
            err(f, i, f"drug {drug!r} is not a catalogue name")
        if r["dose_unit"] not in DOSE_UNITS:
            err(f, i, f"dose_unit {r['dose_unit']!r} not in {sorted(DOSE_UNITS)}")
        dose = num(f, i, r, "dose", required=True, lo=0)
        num(f, i, r, "start_day", required=True)
        interval = num(f, i, r, "interval_day", required=True, lo=0)
        n = num(f, i, r, "n_doses", required=True, integer=True, lo=1)
        num(f, i, r, "infusion_hours", required=True, lo=0)
        if n is not None and n > 1 and interval is not None and interval <= 0:
            err(f, i, "n_doses > 1 needs interval_day > 0")
        if drug == NO_DRUG and (dose != 0 or n != 1):
            err(f, i, "drug 'none' needs dose 0 and n_doses 1")
        if drug != NO_DRUG and dose == 0:
            warnings.append(f"{f} line {i + 2}: dose 0 for {drug}")
        if "citation" in r and not r["citation"].strip():
            err(f, i, "empty citation")
    return ids, len(rows)


def check_ci(f, i, est, lo, hi, label):
    if lo is not None and hi is not None and est is not None and not lo <= est <= hi:
        err(f, i, f"{label} {est} outside its CI {lo}-{hi}")


def check_pcr(regimens):
    f = "pcr_arms.csv"
    rows = read(f)
    keys, used = set(), set()
    for i, r in enumerate(rows):
        key = (r["arm_id"], r["hr_subgroup"], r["pcr_definition"])
        if key in keys:
            err(f, i, f"duplicate (arm_id, hr_subgroup, pcr_definition) {key}")
        keys.add(key)
        if r["hr_subgroup"] not in {"all", "HR+", "HR-"}:
            err(f, i, f"hr_subgroup {r['hr_subgroup']!r}")
        if r["pcr_definition"] not in PCR_DEFS:
            err(f, i, f"pcr_definition {r['pcr_definition']!r} not in {sorted(PCR_DEFS)}")
        if r["is_primary_definition"] not in {"yes", "no"}:
            err(f, i, "is_primary_definition must be yes/no")
        if r["verified"] not in VERIFIED:
            err(f, i, f"verified {r['verified']!r}")
        if not r["citation"].strip() or not r["source"].strip():
            err(f, i, "empty citation or source")
        reg = r["regimen_id"].strip()
        used.add(reg)
        if reg not in regimens:
            err(f, i, f"regimen_id {reg!r} not in regimens.csv")
        n = num(f, i, r, "n_patients", integer=True, lo=1)
        pct = num(f, i, r, "pcr_pct", required=True, lo=0)
        c = num(f, i, r, "pcr_count", integer=True, lo=0)
        lo = num(f, i, r, "ci95_lo", lo=0)
        hi = num(f, i, r, "ci95_hi", lo=0)
        num(f, i, r, "weeks_to_surgery_assumed", required=True, lo=0)
        if pct is not None and pct > 100:
            err(f, i, f"pcr_pct {pct} > 100")
        if c is not None:
            if n is None:
                err(f, i, "pcr_count without n_patients")
            elif c > n:
                err(f, i, f"pcr_count {c} > n_patients {n}")
            elif pct is not None and abs(100 * c / n - pct) >= 1:
                err(f, i, f"100*{c}/{n} = {100 * c / n:.2f} differs from pcr_pct {pct} by >= 1")
            if r["count_basis"] not in COUNT_BASIS:
                err(f, i, f"count_basis {r['count_basis']!r} not in {sorted(COUNT_BASIS)}")
        elif r["count_basis"]:
            err(f, i, "count_basis given without pcr_count")
        if r["hr_subgroup"] != "all" and n is not None:
            warnings.append(f"{f} line {i + 2}: subgroup n given; make sure it was published")
        check_ci(f, i, pct, lo, hi, "pcr_pct")
    return used, len(rows)


def check_loghr(f, i, r, hr_col, lo_col, hi_col):
    hr = num(f, i, r, hr_col, lo=0)
    lo = num(f, i, r, lo_col, lo=0)
    hi = num(f, i, r, hi_col, lo=0)
    if (lo is None) != (hi is None):
        err(f, i, "only one CI bound given")
    check_ci(f, i, hr, lo, hi, hr_col)
    lh = num(f, i, r, "log_hr") if "log_hr" in r else None
    se = num(f, i, r, "log_hr_se") if "log_hr_se" in r else None
    if "log_hr" in r:
        if (hr is None) != (lh is None):
            err(f, i, "log_hr must be given exactly when the HR is")
        elif hr is not None and not close(lh, math.log(hr)):
            err(f, i, f"log_hr {lh} != ln({hr})")
        want = (math.log(hi) - math.log(lo)) / (2 * Z) if lo and hi else None
        if (want is None) != (se is None):
            err(f, i, "log_hr_se must be given exactly when both CI bounds are")
        elif want is not None and not close(se, want):
            err(f, i, f"log_hr_se {se} != {want:.6g}")


def check_adjuvant(regimens):
    f = "adjuvant_outcomes.csv"
    rows = read(f)
    keys, used = set(), set()
    for i, r in enumerate(rows):
        key = (r["trial"], r["analysis"], r["arm_id"])
        if key in keys:
            err(f, i, f"duplicate (trial, analysis, arm_id) {key}")
        keys.add(key)
        if r["verified"] not in VERIFIED:
            err(f, i, f"verified {r['verified']!r}")
        if not r["citation"].strip() or not r["source"].strip():
            err(f, i, "empty citation or source")
        if r["role"] not in {"control", "experimental", "subset", "pooled"}:
            err(f, i, f"role {r['role']!r}")
        for col in ("regimen_id", "comparator_regimen_id"):
            reg = r.get(col, "").strip()
            if reg:
                used.add(reg)
                if reg not in regimens:
                    err(f, i, f"{col} {reg!r} not in regimens.csv")
            elif col == "regimen_id" and r["role"] != "pooled":
                err(f, i, "empty regimen_id (allowed only for pooled rows)")
        num(f, i, r, "n_randomized", integer=True, lo=1)
        num(f, i, r, "median_followup_years", lo=0)
        num(f, i, r, "events_n", integer=True, lo=0)
        ly = num(f, i, r, "landmark_years", lo=0)
        lr = num(f, i, r, "landmark_rate_pct", lo=0)
        if lr is not None and (lr > 100 or ly is None):
            err(f, i, "landmark_rate_pct needs landmark_years and must be <= 100")
        if r["role"] == "control" and r["hr_vs_control"]:
            err(f, i, "control rows carry no HR")
        check_loghr(f, i, r, "hr_vs_control", "hr_ci95_lo", "hr_ci95_hi")
    return used, len(rows)


def check_links():
    f = "pcr_outcome_links.csv"
    rows = read(f)
    for i, r in enumerate(rows):
        if r["verified"] not in VERIFIED:
            err(f, i, f"verified {r['verified']!r}")
        if not r["citation"].strip() or not r["source"].strip():
            err(f, i, "empty citation or source")
        if r["pcr_definition"] not in LINK_DEFS:
            err(f, i, f"pcr_definition {r['pcr_definition']!r}")
        num(f, i, r, "n_patients", integer=True, lo=1)
        check_loghr(f, i, r, "hr", "ci95_lo", "ci95_hi")
    return len(rows)


def check_pk():
    f = "trastuzumab_pk.csv"
    rows = read(f)
    for i, r in enumerate(rows):
        if r["verified"] not in VERIFIED:
            err(f, i, f"verified {r['verified']!r}")
        if not r["citation"].strip() or not r["source"].strip():
            err(f, i, "empty citation or source")
        v = num(f, i, r, "value", required=True, lo=0)
        lo = num(f, i, r, "value_lo", lo=0) if "value_lo" in r else None
        hi = num(f, i, r, "value_hi", lo=0) if "value_hi" in r else None
        check_ci(f, i, v, lo, hi, "value")
    return len(rows)


def main() -> int:
    global CLIN
    if len(sys.argv) > 1:
        CLIN = pathlib.Path(sys.argv[1])
    check_catalogue_file()
    regimens, n_reg = check_regimens()
    used_p, n_p = check_pcr(regimens)
    used_a, n_a = check_adjuvant(regimens)
    n_l = check_links()
    n_k = check_pk()
    unused = sorted(regimens - used_p - used_a)
    if unused:
        warnings.append(f"regimens not referenced (variants for sensitivity runs): {unused}")
    print(
        f"regimens.csv {n_reg} rows ({len(regimens)} regimens); pcr_arms.csv {n_p}; "
        f"adjuvant_outcomes.csv {n_a}; pcr_outcome_links.csv {n_l}; trastuzumab_pk.csv {n_k}"
    )
    for w in warnings:
        print("warning:", w)
    for e in errors:
        print("ERROR:", e)
    print("OK" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
