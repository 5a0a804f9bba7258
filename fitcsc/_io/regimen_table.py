"""Regimen tables: one row per `DoseLine`, grouped into one `Regimen` per arm.

Also the schedule rules every reader of doses applies (`check_schedule`: no dose beyond
10 years, at most `MAX_DOSES_PER_LINE` doses per line, no overlapping infusions) and the
payload line of an antibody-drug conjugate (`payload_lines`), shared with the NONMEM
reader. `fitcsc._io.data` re-exports `read_regimen_table`.
"""

from __future__ import annotations

import dataclasses
import difflib

from .._errors import RegimenError
from .._model.drugs import CATALOGUE, DOSE_UNITS, canonical_drug
from .._model.regimen import DoseLine, Regimen
from .csvfile import read_csv_rows, relocate_error
from .limits import DAY_EXPECTED as _DAY
from .limits import HORIZON_EXPECTED as _HORIZON
from .limits import MAX_ABS_DAY, MAX_DOSES_PER_LINE

REGIMEN_COLUMNS = ("arm", "drug", "dose", "dose_unit", "start_day", "interval_day", "n_doses",
                   "infusion_hours")


def read_regimen_table(path) -> dict[str, Regimen]:
    """Read a regimen table: one row per `DoseLine`, grouped into one `Regimen` per arm.

    Required columns (any case): ``arm, drug, dose, dose_unit, start_day, interval_day,
    n_doses, infusion_hours``; others (``study``, ``citation``, ``notes``, ...) are
    allowed and ignored. Empty ``interval_day`` means 0 (single dose) and empty
    ``infusion_hours`` means 0 (bolus). Drug ``none`` (any case) marks an arm without
    drug: its dose must be 0 or empty and it may have no other rows. A line of an
    antibody-drug conjugate (T-DM1, T-DXd) also doses its payload (`payload_lines`).

    **Returns:** ``{arm: Regimen}`` in order of first appearance, ``Regimen.name == arm``.

    **Raises:** `RegimenError` naming file, line, column, expectation and value for an
    unknown drug (add it with a drug catalogue file) or dose unit, a bad number, any
    rule of `DoseLine`, or an impossible schedule (`check_schedule`); plus the file
    checks of `read_tidy_csv`.

    Example::

        regimens = read_regimen_table("data/clinical/regimens.csv")
        regimens["NOAH-H"].lines[0].dose_unit   # "mg/m2"
    """
    c = read_csv_rows(path, RegimenError)
    idx = c.columns(REGIMEN_COLUMNS, fold_case=True)
    name = {k: c.header[idx[k]] for k in REGIMEN_COLUMNS}  # as spelled in the file
    lines: dict[str, list[DoseLine]] = {}
    kind: dict[str, tuple[str, int]] = {}  # arm -> ("none" | "drug", first line)
    for line, f in c.rows:
        arm = f[idx["arm"]].strip()
        if not arm:
            raise c.fail("empty arm id", line, name["arm"], "a non-empty arm id", arm)
        drug_text = f[idx["drug"]].strip()
        is_none = drug_text.lower() == "none"
        this = "none" if is_none else "drug"
        prev, prev_line = kind.setdefault(arm, (this, line))
        if prev != this:
            raise c.fail(
                f"arm {arm!r} has drug 'none' and a drug (lines {prev_line} and {line})",
                line,
                name["drug"],
                "either one 'none' row or drug rows per arm",
                drug_text,
            )
        lines.setdefault(arm, [])
        if is_none:
            dose = c.number(line, name["dose"], f[idx["dose"]], "0 or empty", default=0.0)
            if dose != 0:
                raise c.fail(
                    "an arm without drug has a dose",
                    line,
                    name["dose"],
                    "0 or empty when drug is 'none'",
                    f[idx["dose"]],
                )
            continue
        drug = canonical_drug(drug_text)
        if drug is None:
            raise c.fail("unknown drug" + _drug_hint(drug_text), line, name["drug"],
                         unknown_drug_expectation(), drug_text)
        unit = f[idx["dose_unit"]].strip()
        if unit.lower().replace("²", "2") not in DOSE_UNITS:
            raise c.fail("unknown dose unit", line, name["dose_unit"],
                         "one of " + ", ".join(DOSE_UNITS), unit)
        text = {k: f[idx[k]] for k in REGIMEN_COLUMNS}
        fields = (("dose", f"a dose >= 0 in {unit}", None), ("start_day", _DAY, None),
                  ("interval_day", "days between doses >= 0 (empty = 0)", 0.0),
                  ("n_doses", "an integer >= 1", None),
                  ("infusion_hours", "hours >= 0 (0 or empty = bolus)", 0.0))
        values = {k: (c.integer if k == "n_doses" else c.number)(line, name[k], text[k], what,
                                                                 default=default)
                  for k, what, default in fields}
        try:
            dose_line = DoseLine(drug, dose_unit=unit.lower().replace("²", "2"), **values)
        except RegimenError as err:
            raise relocate_error(err, c.path, line, columns=name) from None
        check_schedule(c, line, dose_line, columns=name, shown=text)
        lines[arm].extend(payload_lines(dose_line))
    return {arm: Regimen(tuple(ls), name=arm) for arm, ls in lines.items()}


def unknown_drug_expectation() -> str:
    """What an unknown drug name is refused with: the catalogue and how to extend it."""
    return ("'none' or a catalogue drug (" + ", ".join(sorted(CATALOGUE)) + "); add others "
            "with a drug catalogue file (--drug-catalogue FILE)")


def _drug_hint(text: str) -> str:
    """`` (did you mean 'paclitaxel'?)`` for a near miss of a catalogue name, else ""."""
    from .._model.drugs import ALIASES

    close = difflib.get_close_matches(text.strip().lower(), list(ALIASES), n=1, cutoff=0.8)
    return f" (did you mean {ALIASES[close[0]]!r}?)" if close else ""


def check_schedule(c, line, dose_line: DoseLine, *, columns=None, shown=None) -> None:
    """Refuse an impossible schedule on line ``line`` of the file read by ``c``: a dose
    beyond `MAX_ABS_DAY`, more than `MAX_DOSES_PER_LINE` doses, or infusions that
    overlap (longer than the interval between doses).

    ``columns`` maps `DoseLine` fields to the file's column names, ``shown`` fields to
    the text as written (for the error's value).
    """
    col = (columns or {}).get
    shown = shown or {}
    d = dose_line
    last = d.start_day + d.interval_day * (d.n_doses - 1)
    checks = [
        (abs(d.start_day) > MAX_ABS_DAY, "first dose beyond the plausible horizon",
         "start_day", _HORIZON),
        (d.n_doses > MAX_DOSES_PER_LINE, "too many doses in one line", "n_doses",
         f"at most {MAX_DOSES_PER_LINE} doses"),
        (abs(last) > MAX_ABS_DAY, f"last dose on day {last:g}, beyond the plausible horizon",
         "interval_day", f"doses within {MAX_ABS_DAY:g} days (10 years) of day 0"),
        (d.n_doses > 1 and d.infusion_hours > 24.0 * d.interval_day,
         "infusions overlap: each lasts longer than the interval between doses",
         "infusion_hours", f"<= 24 x interval_day = {24.0 * d.interval_day:g} hours"),
        (d.infusion_hours > 24.0 * MAX_ABS_DAY, "infusion beyond the plausible horizon",
         "infusion_hours", f"<= {24.0 * MAX_ABS_DAY:g} hours"),
    ]
    for bad, message, field, expected in checks:
        if bad:
            raise c.fail(message, line, col(field, field), expected,
                         shown.get(field, getattr(d, field)))


def payload_lines(dose_line: DoseLine) -> list[DoseLine]:
    """``[dose_line]``, plus, for an antibody-drug conjugate, the same schedule of its
    payload (a chemotherapy-class catalogue drug with the ADC's PK) at the payload's
    mass fraction of the dose (`fitcsc._model.drugs.DrugInfo.payload`)."""
    info = CATALOGUE[dose_line.drug]
    if info.payload is None:
        return [dose_line]
    payload = dataclasses.replace(dose_line, drug=info.payload,
                                  dose=dose_line.dose * info.payload_mass_fraction)
    return [dose_line, payload]
