"""Published clinical figures in the project's schema (data/clinical/), validated.

Four kinds of file, each with its own required columns; every row must carry a
citation and a verified flag. Numbers are parsed and checked at the boundary; a
refusal is one line naming file, line, column, expectation and value (`DataError`).

- ``pcr``: ``pcr_arms.csv``, one row per trial arm x pCR definition x HR subgroup.
- ``adjuvant``: ``adjuvant_outcomes.csv``, DFS/IDFS/OS events, hazard ratios, landmarks.
- ``links``: ``pcr_outcome_links.csv``, pCR vs outcome hazard ratios.
- ``pk``: ``trastuzumab_pk.csv``, published PK parameters and exposures.

```python
arms = fitcsc.read_clinical("data/clinical/pcr_arms.csv")        # kind detected
primary = [a for a in arms if a["is_primary_definition"] == "yes"]
```
"""

from __future__ import annotations

import pathlib

from .._errors import DataError
from .csvfile import read_csv_rows

PCR_DEFINITIONS = ("ypT0/is", "ypT0/is ypN0", "ypT0", "ypT0 ypN0", "unclear")
VERIFIED = ("yes", "partial", "unverified")

# kind -> (required columns, {column: (type, expectation, required?)}, key columns)
_NUM, _INT, _PCT = "number", "integer", "percent"
SCHEMAS = {
    "pcr": (
        ("trial", "arm_id", "arm", "hr_subgroup", "pcr_definition", "is_primary_definition",
         "n_patients", "pcr_pct", "pcr_count", "ci95_lo", "ci95_hi", "regimen_id",
         "weeks_to_surgery_assumed", "verified", "citation"),
        {"n_patients": (_INT, "a patient count >= 1 or empty", False),
         "pcr_pct": (_PCT, "a pCR rate in percent (0-100)", True),
         "pcr_count": (_INT, "a count of pCR patients (<= n_patients) or empty", False),
         "ci95_lo": (_PCT, "a percentage or empty", False),
         "ci95_hi": (_PCT, "a percentage or empty", False),
         "weeks_to_surgery_assumed": (_NUM, "weeks >= 0", True)},
    ),
    "adjuvant": (
        ("trial", "analysis", "arm_id", "role", "n_randomized", "regimen_id", "endpoint",
         "hr_vs_control", "hr_ci95_lo", "hr_ci95_hi", "landmark_years", "landmark_rate_pct",
         "verified", "citation"),
        {"n_randomized": (_INT, "a patient count >= 1 or empty", False),
         "median_followup_years": (_NUM, "years >= 0 or empty", False),
         "events_n": (_INT, "an event count or empty", False),
         "hr_ci95_lo": (_NUM, "a hazard ratio > 0 or empty", False),
         "hr_ci95_hi": (_NUM, "a hazard ratio > 0 or empty", False),
         "landmark_years": (_NUM, "years > 0 or empty", False),
         "landmark_rate_pct": (_PCT, "a percentage or empty", False)},
    ),
    "links": (
        ("study", "type", "comparison", "endpoint", "hr", "ci95_lo", "ci95_hi", "verified",
         "citation"),
        {"n_patients": (_INT, "a patient count or empty", False),
         "ci95_lo": (_NUM, "a number or empty", False),
         "ci95_hi": (_NUM, "a number or empty", False)},
    ),
    "pk": (
        ("drug", "parameter", "value", "unit", "verified", "citation"),
        {"value": (_NUM, "a number", True),
         "value_lo": (_NUM, "a number or empty", False),
         "value_hi": (_NUM, "a number or empty", False)},
    ),
}
_SIGNATURE = {  # columns that identify a kind
    "pcr": {"pcr_pct", "pcr_definition"},
    "adjuvant": {"hr_vs_control", "analysis"},
    "links": {"comparison", "hr", "study"},
    "pk": {"parameter", "value", "unit", "drug"},
}


def clinical_kind(header) -> str | None:
    """The clinical kind whose signature columns ``header`` has, else None."""
    names = {h.strip() for h in header}
    for kind, sig in _SIGNATURE.items():
        if sig <= names:
            return kind
    return None


def read_clinical(path, kind: str | None = None) -> list[dict]:
    """Read and validate one clinical file; rows as dicts with numbers parsed.

    Empty optional numbers become None. ``pcr_count`` is checked against
    ``n_patients``; confidence limits must bracket their estimate; a ``regimen_id`` must
    exist in ``regimens.csv`` beside the file (when that file exists).

    **Raises:** `DataError` (one line) for any violation.
    """
    c = read_csv_rows(path, DataError)
    kind = kind or clinical_kind(c.header)
    if kind not in SCHEMAS:
        raise DataError("not a clinical figures file", file=c.path, row=1,
                        expected="a pcr, adjuvant, links or pk header", value=",".join(c.header))
    required, numeric = SCHEMAS[kind]
    idx = c.columns(required)
    regimen_ids = _regimen_ids(pathlib.Path(c.path).parent / "regimens.csv")
    out = []
    for line, f in c.rows:
        row = {name: f[j].strip() for name, j in idx.items()}
        for col, (typ, expected, needed) in numeric.items():
            if col not in idx:
                continue
            text = row[col]
            if text == "" and not needed:
                row[col] = None
                continue
            value = (c.integer if typ == _INT else c.number)(line, col, text, expected)
            if typ == _PCT and not 0.0 <= value <= 100.0:
                raise c.fail("percentage out of range", line, col, expected, text)
            row[col] = value
        _check_row(c, kind, line, row, regimen_ids)
        out.append(row)
    return out


def _regimen_ids(path: pathlib.Path) -> set[str] | None:
    if not path.exists():
        return None
    rows = read_csv_rows(path, DataError)
    j = rows.columns(("arm",))["arm"]
    return {f[j].strip() for _, f in rows.rows}


def _check_row(c, kind, line, row, regimen_ids):
    if not row["citation"]:
        raise c.fail("row without citation", line, "citation", "the publication", "")
    if row["verified"] not in VERIFIED:
        raise c.fail("bad verified flag", line, "verified", f"one of {VERIFIED}",
                     row["verified"])
    if kind == "pcr":
        if row["pcr_definition"] not in PCR_DEFINITIONS:
            raise c.fail("unknown pCR definition", line, "pcr_definition",
                         f"one of {PCR_DEFINITIONS}", row["pcr_definition"])
        n, k = row["n_patients"], row["pcr_count"]
        if n is not None and k is not None and not 0 <= k <= n:
            raise c.fail("pCR count exceeds the arm size", line, "pcr_count",
                         f"0..{n} (n_patients)", k)
        lo, hi, est = row["ci95_lo"], row["ci95_hi"], row["pcr_pct"]
        if lo is not None and hi is not None and not lo <= est <= hi:
            raise c.fail("confidence interval does not bracket the rate", line, "ci95_lo",
                         f"ci95_lo <= {est} <= ci95_hi", f"{lo}-{hi}")
    if kind == "adjuvant":
        lo, hi = row["hr_ci95_lo"], row["hr_ci95_hi"]
        hr = row["hr_vs_control"]
        if hr not in ("", "ref"):
            try:
                hr_value = float(hr)
            except ValueError:
                raise c.fail("not a hazard ratio", line, "hr_vs_control",
                             "a hazard ratio > 0, 'ref' or empty", hr) from None
            if lo is not None and hi is not None and not 0 < lo <= hr_value <= hi:
                raise c.fail("confidence interval does not bracket the hazard ratio", line,
                             "hr_ci95_lo", f"0 < lo <= {hr_value} <= hi", f"{lo}-{hi}")
    if kind in ("pcr", "adjuvant") and regimen_ids is not None:
        rid = row["regimen_id"]
        if rid and rid not in regimen_ids:
            raise c.fail("regimen_id not in regimens.csv", line, "regimen_id",
                         "an arm of the regimen table beside this file", rid)
