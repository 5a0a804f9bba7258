"""Reading and validating the data users bring: tidy tumour volumes and regimen tables.

Two CSV formats (comma-separated, UTF-8, one header line):

- a *tidy* table, one row per measurement, columns ``study, arm, subject, day,
  volume_mm3`` (extra columns are kept as strings). Negative days are pre-treatment
  measurements; a volume of 0 means "nothing measurable" and is kept (it becomes a
  left-censored observation in `make_batch`);
- a *regimen* table, one row per `DoseLine`, columns ``arm, drug, dose, dose_unit,
  start_day, interval_day, n_doses, infusion_hours`` (extra columns such as ``citation``
  are allowed). Drug ``none`` marks an untreated arm.

Every refusal is a `DataError` / `RegimenError` whose one-line message names the file,
the line as an editor numbers it (header = line 1), the column, what was expected and
what came. Public datasets stay outside the repository and are found by `data_dir`.
`fitcsc._batch.make_batch` turns a table and its regimens into a `SubjectBatch` (both
re-exported here).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from ._batch import SubjectBatch as SubjectBatch  # re-exported
from ._batch import make_batch as make_batch  # re-exported
from ._csv import read_csv_rows, relocate_error
from ._drugs import CATALOGUE, DOSE_UNITS, canonical_drug
from ._errors import DataError, RegimenError
from ._regimen import DoseLine, Regimen

TIDY_COLUMNS = ("study", "arm", "subject", "day", "volume_mm3")
REGIMEN_COLUMNS = (
    "arm",
    "drug",
    "dose",
    "dose_unit",
    "start_day",
    "interval_day",
    "n_doses",
    "infusion_hours",
)
NONMEM_KEY_COLUMNS = ("ID", "TIME", "DV", "EVID")
DATA_DIR_ENV = "FITCSC_DATA_DIR"

_DAY = "a finite number of days (negative = before treatment)"
_VOLUME = "a finite volume >= 0 in mm3 (0 = below detection)"


def data_dir(override: str | os.PathLike | None = None) -> pathlib.Path:
    """The directory that holds the public datasets kept outside the repository.

    Looked up in this order: ``override``; the environment variable ``FITCSC_DATA_DIR``
    (set by ``fitcsc --data-dir``); ``<repository root>/../shared/data`` if it exists.

    **Returns:** the directory as a `pathlib.Path`.

    **Raises:** `DataError` if the chosen directory does not exist, or none is set.

    Example: ``data_dir() / "pdxe_brca" / "pdxe_brca_tumor_volume.csv"``.
    """
    if override is not None and str(override) != "":
        where, path = "data directory", pathlib.Path(override)
    elif os.environ.get(DATA_DIR_ENV):
        where, path = f"${DATA_DIR_ENV}", pathlib.Path(os.environ[DATA_DIR_ENV])
    else:
        path = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"
        if path.is_dir():
            return path
        raise DataError(
            "no data directory: set the environment variable FITCSC_DATA_DIR or pass --data-dir",
            expected="a directory holding the public datasets",
            value=str(path),
        )
    if not path.is_dir():
        raise DataError(
            f"{where} does not exist", expected="an existing directory", value=str(path)
        )
    return path


def detect_kind(path) -> str:
    """Guess a file's kind from its header: ``"regimen"``, ``"nonmem"``, ``"tidy"``, or
    a clinical kind (``"pcr"``, ``"adjuvant"``, ``"links"``, ``"pk"``, see `_clinical`).

    Regimen columns (arm, drug, dose, dose_unit) -> ``"regimen"``; ID, TIME, DV and EVID
    (any case) -> ``"nonmem"``; anything else -> ``"tidy"``.

    **Raises:** `DataError` for files that cannot be read as CSV at all.
    """
    header = read_csv_rows(path, DataError).header
    names = {h.lstrip("#").strip().lower() for h in header}
    from ._clinical import clinical_kind

    clinical = clinical_kind(header)
    if clinical is not None and "volume_mm3" not in names:
        return clinical
    if {"arm", "drug", "dose", "dose_unit"} <= names:
        return "regimen"
    if {c.lower() for c in NONMEM_KEY_COLUMNS} <= names:
        return "nonmem"
    return "tidy"


# ----------------------------------------------------------------------------------
# Tidy tumour-volume tables.


@dataclasses.dataclass(frozen=True, eq=False)
class TidyTable:
    """Tumour volumes, one row per measurement, sorted by subject (first appearance) and day.

    Columns are numpy arrays of shape ``(n_rows,)``: ``study``, ``arm``, ``subject``
    (str), ``day`` [day], ``volume_mm3`` [mm3] (float64). ``extra`` maps each extra
    column name to its values (str). ``path`` is the source file, ``line`` the 1-based
    line of each row in it (or None for tables built in code).
    """

    study: np.ndarray
    arm: np.ndarray
    subject: np.ndarray
    day: np.ndarray
    volume_mm3: np.ndarray
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    path: str = ""
    line: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.day.shape[0])

    @property
    def subjects(self) -> tuple[str, ...]:
        """Distinct subjects in table order."""
        return tuple(dict.fromkeys(self.subject.tolist()))

    @property
    def arms(self) -> tuple[str, ...]:
        """Distinct arms in table order."""
        return tuple(dict.fromkeys(self.arm.tolist()))

    def censored(self, detection_limit_mm3: float = 1.0) -> np.ndarray:
        """Bool ``(n_rows,)``: volume 0 or below ``detection_limit_mm3`` (left-censored)."""
        return (self.volume_mm3 < detection_limit_mm3) | (self.volume_mm3 == 0)

    def select(self, keep) -> TidyTable:
        """The rows where the bool ``(n_rows,)`` mask ``keep`` is true (order kept)."""
        keep = np.asarray(keep, bool)
        if keep.shape != (self.n_rows,):
            raise ValueError(f"select: mask of shape {keep.shape}, expected ({self.n_rows},)")
        return dataclasses.replace(
            self, study=self.study[keep], arm=self.arm[keep], subject=self.subject[keep],
            day=self.day[keep], volume_mm3=self.volume_mm3[keep],
            extra={k: v[keep] for k, v in self.extra.items()},
            line=None if self.line is None else self.line[keep])


def _build_table(path, records, error, extra_names=(), columns=None) -> TidyTable:
    """Check cross-row rules and sort. ``records``: (line, study, arm, subject, day,
    volume_mm3, extras) in file order, each already checked on its own. ``columns``
    renames the columns named in errors (e.g. ``{"day": "TIME"}``)."""
    col = {"arm": "arm", "study": "study", "day": "day", **(columns or {})}
    first: dict[str, tuple[int, str, str]] = {}  # subject -> (line, arm, study)
    seen: dict[tuple[str, float], int] = {}
    for line, study, arm, subject, day, _, _ in records:
        line0, arm0, study0 = first.setdefault(subject, (line, arm, study))
        if arm != arm0:
            raise error(
                f"subject {subject!r} is in two arms: {arm0!r} (line {line0}) and {arm!r} "
                f"(line {line})",
                file=str(path),
                row=line,
                column=col["arm"],
                expected="one arm per subject (give each animal its own subject id)",
                value=arm,
            )
        if study != study0:
            raise error(
                f"subject {subject!r} is in two studies: {study0!r} (line {line0}) and "
                f"{study!r} (line {line})",
                file=str(path),
                row=line,
                column=col["study"],
                expected="one study per subject",
                value=study,
            )
        other = seen.setdefault((subject, day), line)
        if other != line:
            raise error(
                f"duplicate measurement of subject {subject!r} on day {day:g} "
                f"(lines {other} and {line})",
                file=str(path),
                row=line,
                column=col["day"],
                expected="one volume per subject and day",
                value=day,
            )
    rank = {s: i for i, s in enumerate(first)}
    cols = list(zip(*records, strict=True))
    day = np.asarray(cols[4], dtype=np.float64)
    order = np.lexsort((day, np.asarray([rank[s] for s in cols[3]])))
    extras = np.asarray(cols[6], dtype=str).reshape(len(records), len(extra_names))
    return TidyTable(
        study=np.asarray(cols[1], dtype=str)[order],
        arm=np.asarray(cols[2], dtype=str)[order],
        subject=np.asarray(cols[3], dtype=str)[order],
        day=day[order],
        volume_mm3=np.asarray(cols[5], dtype=np.float64)[order],
        extra={name: extras[order, j] for j, name in enumerate(extra_names)},
        path=str(path),
        line=np.asarray(cols[0], dtype=np.int64)[order],
    )


def read_tidy_csv(path) -> TidyTable:
    """Read and validate a tidy tumour-volume CSV.

    **Arguments:** ``path`` to a UTF-8 CSV with columns ``study, arm, subject, day,
    volume_mm3`` (any order; extra columns are kept as strings in ``TidyTable.extra``).

    **Returns:** a `TidyTable` sorted by subject (order of first appearance) and day.

    **Raises:** `DataError` (one line: file, line, column, expectation, value) for a
    missing, empty or non-text file, a missing column, a ragged row, an empty id, a
    non-numeric or non-finite day or volume, a negative volume, a duplicate
    (subject, day), or a subject listed in two arms or studies.

    Example::

        table = read_tidy_csv(data_dir() / "vaghi2020_untreated/vaghi2020_tumor_volume.csv")
        table.subjects[:2], table.day[:3]
    """
    c = read_csv_rows(path, DataError)
    idx = c.columns(TIDY_COLUMNS)
    extra_names = tuple(h for h in c.header if h not in TIDY_COLUMNS)
    extra_idx = [idx[h] for h in extra_names]
    records = []
    for line, f in c.rows:
        ids = []
        for col in ("study", "arm", "subject"):
            value = f[idx[col]].strip()
            if not value:
                raise c.fail(f"empty {col} id", line, col, f"a non-empty {col} id", value)
            ids.append(value)
        day = c.number(line, "day", f[idx["day"]], _DAY)
        volume = c.number(line, "volume_mm3", f[idx["volume_mm3"]], _VOLUME)
        if volume < 0:
            raise c.fail("negative volume", line, "volume_mm3", _VOLUME, f[idx["volume_mm3"]])
        records.append((line, *ids, day, volume, tuple(f[j] for j in extra_idx)))
    return _build_table(c.path, records, DataError, extra_names)


# ----------------------------------------------------------------------------------
# Regimen tables.


def read_regimen_table(path) -> dict[str, Regimen]:
    """Read a regimen table: one row per `DoseLine`, grouped into one `Regimen` per arm.

    Required columns: ``arm, drug, dose, dose_unit, start_day, interval_day, n_doses,
    infusion_hours``; others (``study``, ``citation``, ``notes``, ...) are allowed and
    ignored. Empty ``interval_day`` means 0 (single dose) and empty ``infusion_hours``
    means 0 (bolus). Drug ``none`` (any case) marks an arm without drug: its dose must
    be 0 or empty and it may have no other rows.

    **Returns:** ``{arm: Regimen}`` in order of first appearance, ``Regimen.name == arm``.

    **Raises:** `RegimenError` naming file, line, column, expectation and value for an
    unknown drug or dose unit, a bad number, or any rule of `DoseLine`; plus the file
    checks of `read_tidy_csv`.

    Example::

        regimens = read_regimen_table("data/regimens/pdxe.csv")
        regimens["trastuzumab"].lines[0].dose_unit   # "mg/kg"
    """
    c = read_csv_rows(path, RegimenError)
    idx = c.columns(REGIMEN_COLUMNS)
    known = ", ".join(CATALOGUE)
    lines: dict[str, list[DoseLine]] = {}
    kind: dict[str, tuple[str, int]] = {}  # arm -> ("none" | "drug", first line)
    for line, f in c.rows:
        arm = f[idx["arm"]].strip()
        if not arm:
            raise c.fail("empty arm id", line, "arm", "a non-empty arm id", arm)
        drug_text = f[idx["drug"]].strip()
        is_none = drug_text.lower() == "none"
        this = "none" if is_none else "drug"
        prev, prev_line = kind.setdefault(arm, (this, line))
        if prev != this:
            raise c.fail(
                f"arm {arm!r} has drug 'none' and a drug (lines {prev_line} and {line})",
                line,
                "drug",
                "either one 'none' row or drug rows per arm",
                drug_text,
            )
        lines.setdefault(arm, [])
        if is_none:
            dose = c.number(line, "dose", f[idx["dose"]], "0 or empty", default=0.0)
            if dose != 0:
                raise c.fail(
                    "an arm without drug has a dose",
                    line,
                    "dose",
                    "0 or empty when drug is 'none'",
                    f[idx["dose"]],
                )
            continue
        drug = canonical_drug(drug_text)
        if drug is None:
            raise c.fail("unknown drug", line, "drug", f"'none' or one of {known}", drug_text)
        unit = f[idx["dose_unit"]].strip()
        if unit.lower() not in DOSE_UNITS:
            raise c.fail(
                "unknown dose unit", line, "dose_unit", "one of " + ", ".join(DOSE_UNITS), unit
            )
        values = dict(
            dose=c.number(line, "dose", f[idx["dose"]], f"a dose >= 0 in {unit}"),
            start_day=c.number(line, "start_day", f[idx["start_day"]], _DAY),
            interval_day=c.number(
                line,
                "interval_day",
                f[idx["interval_day"]],
                "days between doses >= 0 (empty = 0)",
                default=0.0,
            ),
            n_doses=c.integer(line, "n_doses", f[idx["n_doses"]], "an integer >= 1"),
            infusion_hours=c.number(
                line,
                "infusion_hours",
                f[idx["infusion_hours"]],
                "hours >= 0 (0 or empty = bolus)",
                default=0.0,
            ),
        )
        try:
            lines[arm].append(DoseLine(drug, dose_unit=unit.lower(), **values))
        except RegimenError as err:
            raise relocate_error(err, c.path, line) from None
    return {arm: Regimen(tuple(ls), name=arm) for arm, ls in lines.items()}
