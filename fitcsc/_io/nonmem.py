"""NONMEM-style event data: what pharmacometricians already have.

One comma-separated file, one record per row, the usual columns (any case; a leading
``#`` on the header is ignored, as are data rows starting with ``#``):

- ``ID`` subject, ``TIME`` time since the reference (``time_unit``), ``EVID`` event
  (0 observation, 1 dose, 2 other; 3 and 4, resets, are refused), ``DV`` the tumour
  volume [mm3] on observations, ``AMT`` the dose amount (``amount_unit``) on doses;
- optional: ``MDV`` (1 skips an observation; default 0), ``CMT`` (compartment of a dose,
  mapped to a drug by ``cmt_drugs``; default 1), ``RATE`` (zero-order infusion rate,
  amount per time unit: duration = AMT / RATE; 0 or empty = bolus), ``ADDL`` and ``II``
  (additional doses every II time units), ``SS`` (must be 0), ``ARM`` and ``STUDY``.

``.`` and empty fields mean "missing", as in NONMEM. Doses become one `DoseLine` each
(``ADDL + 1`` doses), grouped into one `Regimen` per subject; a dose of an antibody-drug
conjugate also doses its payload (`fitcsc._io.regimen_table.payload_lines`). Units are converted at
load: TIME, II and RATE's time to days and hours as `DoseLine` wants them, so what
`read_nonmem` returns (and every fit of it) is in days whatever ``time_unit`` was. The
plausibility checks and the ``duplicates`` option are those of the tidy reader.
"""

from __future__ import annotations

import dataclasses
import pathlib

from .._errors import DataError, RegimenError
from .._model.drugs import DOSE_UNITS, canonical_drug
from .._model.regimen import DoseLine, Regimen
from .csvfile import read_csv_rows, relocate_error
from .data import TidyTable, build_table
from .regimen_table import check_schedule, payload_lines

NONMEM_REQUIRED = ("ID", "TIME", "DV", "AMT", "EVID")
NONMEM_OPTIONAL = ("MDV", "CMT", "RATE", "ADDL", "II", "SS", "STUDY")
TIME_UNITS = {"day": 1.0, "hour": 1.0 / 24.0}  # days per time unit
_DOSELINE_COLUMNS = {
    "dose": "AMT",
    "start_day": "TIME",
    "interval_day": "II",
    "n_doses": "ADDL",
    "infusion_hours": "RATE",
}


def _cmt_map(cmt_drugs):
    out = {}
    for cmt, drug in ({1: "trastuzumab"} if cmt_drugs is None else cmt_drugs).items():
        name = canonical_drug(str(drug))
        if name is None:
            raise RegimenError(
                f"unknown drug for compartment {cmt}",
                column="cmt_drugs",
                expected="a drug in fitcsc.CATALOGUE",
                value=drug,
            )
        out[int(cmt)] = name
    return out


def read_nonmem(
    path,
    *,
    cmt_drugs: dict[int, str] | None = None,
    amount_unit: str = "mg",
    time_unit: str = "day",
    arm_column: str = "ARM",
    duplicates: str = "refuse",
) -> tuple[TidyTable, dict[str, Regimen]]:
    """Read NONMEM-style event data into observations and per-subject regimens.

    **Arguments:**
    - `path`: the CSV file (columns ID, TIME, DV, AMT, EVID; optional MDV, CMT, RATE,
      ADDL, II, SS, STUDY and the arm column).
    - `cmt_drugs`: ``{CMT: drug}`` for dose records; default ``{1: "trastuzumab"}``.
    - `amount_unit`: unit of AMT, one of ``"mg"``, ``"mg/kg"``, ``"mg/m2"``.
    - `time_unit`: unit of TIME, II and of RATE's denominator, ``"day"`` or ``"hour"``.
    - `arm_column`: column naming each subject's arm (default ``"ARM"``; arm ``"nonmem"``
      when absent). Study = the STUDY column, else the file's stem.
    - `duplicates`: observations of one ID at one TIME, as in `read_tidy_csv`.

    **Returns:** ``(table, regimens)``: a `TidyTable` of the observations (EVID 0, MDV 0;
    DV in mm3, TIME in days) and ``{subject id: Regimen}`` for every subject in the
    file (empty if it has no doses). `make_batch` looks regimens up by subject first.

    **Raises:** `DataError` naming file, line, column, expectation and value for the file
    checks of `read_tidy_csv`, an unsupported EVID (3, 4), RATE < 0 or SS != 0, a CMT
    without drug, a negative AMT or DV, ADDL without II, a subject in two arms, or the
    plausibility limits of `fitcsc._io.limits` (TIME and doses within 10 years of 0, DV up
    to 1e6 mm3, no overlapping infusions).

    Example::

        table, regimens = read_nonmem("pk_pd.csv", cmt_drugs={1: "trastuzumab"},
                                      amount_unit="mg/kg", time_unit="hour")
        batch = make_batch(table, regimens)
    """
    if time_unit not in TIME_UNITS:
        raise DataError(
            "unknown time unit",
            column="TIME",
            expected="one of " + ", ".join(TIME_UNITS),
            value=time_unit,
        )
    if amount_unit not in DOSE_UNITS:
        raise DataError(
            "unknown amount unit",
            column="AMT",
            expected="one of " + ", ".join(DOSE_UNITS),
            value=amount_unit,
        )
    cmts = _cmt_map(cmt_drugs)
    to_day = TIME_UNITS[time_unit]
    c = read_csv_rows(path, DataError, comment_prefix="#")
    c = dataclasses.replace(c, header=(c.header[0].lstrip("#").strip(), *c.header[1:]))
    arm_key = arm_column.upper()
    idx = c.columns(NONMEM_REQUIRED, fold_case=True)
    name = {key: c.header[j] for key, j in idx.items()}  # column names as in the file
    known = set(NONMEM_REQUIRED) | set(NONMEM_OPTIONAL) | {arm_key}
    extra_names = tuple(h for h in c.header if h.upper() not in known)
    extra_idx = [c.header.index(h) for h in extra_names]
    study_default = pathlib.Path(c.path).stem

    def get(f, key, default=""):
        t = f[idx[key]].strip() if key in idx else ""
        return default if t in ("", ".") else t

    records = []
    regimen_lines: dict[str, list[DoseLine]] = {}
    for line, f in c.rows:
        subject = get(f, "ID")
        if not subject:
            raise c.fail("empty ID", line, name["ID"], "a non-empty subject id", subject)
        regimen_lines.setdefault(subject, [])
        arm = get(f, arm_key, "nonmem" if arm_key not in idx else "")
        if not arm:
            raise c.fail("empty arm id", line, name[arm_key], "a non-empty arm id", arm)
        evid = c.integer(line, name["EVID"], get(f, "EVID"), "0, 1 or 2")
        if evid in (3, 4):
            raise c.fail(
                f"EVID {evid} (reset) is not supported",
                line,
                name["EVID"],
                "0 (observation), 1 (dose) or 2 (other event)",
                evid,
            )
        if evid not in (0, 1, 2):
            raise c.fail(
                "unknown EVID",
                line,
                name["EVID"],
                "0 (observation), 1 (dose) or 2 (other event)",
                evid,
            )
        time_day = to_day * c.number(
            line, name["TIME"], get(f, "TIME"), f"a finite time in {time_unit}s"
        )
        if evid == 2:
            continue
        if evid == 0:
            mdv_col = name.get("MDV", "MDV")
            if c.integer(line, mdv_col, get(f, "MDV", "0"), "0 or 1") != 0:
                continue
            dv_text = f[idx["DV"]]
            dv = c.number(line, name["DV"], dv_text, "a finite tumour volume >= 0 in mm3")
            if dv < 0:
                raise c.fail(
                    "negative volume",
                    line,
                    name["DV"],
                    "a finite tumour volume >= 0 in mm3",
                    dv_text,
                )
            study = get(f, "STUDY", study_default)
            extras = tuple(f[j] for j in extra_idx)
            records.append((line, study, arm, subject, time_day, dv, extras))
            continue
        regimen_lines[subject].extend(payload_lines(
            _dose_line(c, line, f, get, name, cmts, amount_unit, time_unit, time_day)
        ))
    if not records:
        raise DataError(
            "no observation rows",
            file=c.path,
            column=name["EVID"],
            expected="rows with EVID 0 and MDV 0 holding tumour volumes (DV)",
        )
    _check_one_arm(c, name, arm_key, get)
    renamed = {"arm": name.get(arm_key, arm_column), "study": name.get("STUDY", "STUDY")}
    columns = {**renamed, "day": name["TIME"], "volume_mm3": name["DV"], "subject": name["ID"]}
    table = build_table(c.path, records, DataError, extra_names, columns=columns,
                         duplicates=duplicates)
    regimens = {s: Regimen(tuple(ls), name=s) for s, ls in regimen_lines.items()}
    return table, regimens


def _dose_line(c, line, f, get, name, cmts, amount_unit, time_unit, time_day):
    """One EVID 1 record as a `DoseLine` (ADDL + 1 doses every II)."""
    col = lambda key: name.get(key, key)  # noqa: E731
    amt = c.number(line, col("AMT"), get(f, "AMT"), f"a dose amount >= 0 in {amount_unit}")
    if amt < 0:
        raise c.fail(
            "negative dose amount", line, col("AMT"), f"a dose amount >= 0 in {amount_unit}", amt
        )
    cmt = c.integer(line, col("CMT"), get(f, "CMT", "1"), "an integer compartment")
    if cmt not in cmts:
        raise c.fail(
            "no drug for this dose compartment",
            line,
            col("CMT"),
            f"a compartment of cmt_drugs {cmts}",
            cmt,
        )
    rate = c.number(
        line,
        col("RATE"),
        get(f, "RATE", "0"),
        f"an infusion rate >= 0 in {amount_unit} per {time_unit}",
    )
    if rate < 0:
        raise c.fail(
            "modelled infusion rate/duration (RATE -1/-2) is not supported",
            line,
            col("RATE"),
            f"an infusion rate >= 0 in {amount_unit} per {time_unit}",
            rate,
        )
    if c.integer(line, col("SS"), get(f, "SS", "0"), "0") != 0:
        raise c.fail(
            "steady-state doses (SS) are not supported", line, col("SS"), "0", get(f, "SS")
        )
    addl = c.integer(line, col("ADDL"), get(f, "ADDL", "0"), "an integer >= 0")
    ii = c.number(line, col("II"), get(f, "II", "0"), f"an interval >= 0 in {time_unit}s")
    if addl < 0:
        raise c.fail("negative ADDL", line, col("ADDL"), "an integer >= 0", addl)
    duration = amt / rate if rate > 0 else 0.0  # in time units
    hours_per_unit = 24.0 * TIME_UNITS[time_unit]
    columns = {k: col(v) for k, v in _DOSELINE_COLUMNS.items()}
    try:
        dose_line = DoseLine(
            cmts[cmt],
            amt,
            amount_unit,
            start_day=time_day,
            interval_day=ii * TIME_UNITS[time_unit],
            n_doses=addl + 1,
            infusion_hours=duration * hours_per_unit,
        )
    except RegimenError as err:
        raise relocate_error(err, c.path, line, DataError, columns) from None
    shown = {"start_day": get(f, "TIME"), "interval_day": get(f, "II"),
             "n_doses": get(f, "ADDL"), "infusion_hours": get(f, "RATE")}
    check_schedule(c, line, dose_line, columns=columns, shown=shown)
    return dose_line


def _check_one_arm(c, name, arm_key, get):
    """Every record of a subject (doses included) names the same arm."""
    if arm_key not in name:
        return
    first: dict[str, tuple[str, int]] = {}
    for line, f in c.rows:
        subject, arm = get(f, "ID"), get(f, arm_key)
        arm0, line0 = first.setdefault(subject, (arm, line))
        if arm != arm0:
            raise c.fail(
                f"subject {subject!r} is in two arms: {arm0!r} (line {line0}) and "
                f"{arm!r} (line {line})",
                line,
                name[arm_key],
                "one arm per subject",
                arm,
            )
