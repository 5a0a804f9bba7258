"""Reading and validating the data users bring: tidy tumour volumes and regimen tables.

Two CSV formats (comma-separated, UTF-8, one header line):

- a *tidy* table, one row per measurement, columns ``study, arm, subject, day,
  volume_mm3`` (extra columns are kept as strings). Negative days are pre-treatment
  measurements; a volume of 0 means "nothing measurable" and is kept (it becomes a
  left-censored observation in `make_batch`);
- a *regimen* table, one row per `DoseLine`, columns ``arm, drug, dose, dose_unit,
  start_day, interval_day, n_doses, infusion_hours`` (extra columns such as ``citation``
  are allowed). Drug ``none`` marks an untreated arm.

Column names match in any case. Every refusal is a `DataError` / `RegimenError` whose
one-line message names the file, the line as an editor numbers it (header = line 1), the
column, what was expected and what came; legitimate oddities are read with a
`DataWarning` (see `csvfile` for encodings and delimiters). Plausibility limits
(`fitcsc._io.limits`, documented in data/README.md): days within `MAX_ABS_DAY` of day 0,
volumes up to `MAX_VOLUME_MM3`, at most `MAX_DOSES_PER_LINE` doses per regimen line,
infusions of one line that do not overlap; a subject with fewer than `MIN_POINTS_TO_FIT`
measurements is kept with a warning. Duplicated (subject, day) measurements are refused,
listed, unless ``duplicates`` resolves them (`DUPLICATES`).

`read_volumes` is the one entry point for a tumour-volume file with its options (used
by ``fitcsc data validate|show`` and ``fitcsc fit``). Public datasets stay outside the
repository and are found by `data_dir`. `fitcsc._io.batch.make_batch` turns a table and
its regimens into a `SubjectBatch`; the regimen reader lives in `fitcsc._io.regimen_table`
(all re-exported here).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings

import numpy as np

from .._errors import DataError, DataWarning, FitcscInputError
from .._model.regimen import Regimen
from .batch import SubjectBatch as SubjectBatch  # re-exported
from .batch import make_batch as make_batch  # re-exported
from .csvfile import read_csv_rows
from .limits import DAY_EXPECTED, DUPLICATES, DUPLICATES_HINT, HORIZON_EXPECTED
from .limits import MAX_ABS_DAY as MAX_ABS_DAY  # re-exported
from .limits import MAX_DOSES_PER_LINE as MAX_DOSES_PER_LINE  # re-exported
from .limits import MAX_VOLUME_MM3 as MAX_VOLUME_MM3  # re-exported
from .limits import MIN_POINTS_TO_FIT as MIN_POINTS_TO_FIT  # re-exported
from .regimen_table import REGIMEN_COLUMNS as REGIMEN_COLUMNS  # re-exported
from .regimen_table import check_schedule as check_schedule  # re-exported
from .regimen_table import payload_lines as payload_lines  # re-exported
from .regimen_table import read_regimen_table as read_regimen_table  # re-exported

TIDY_COLUMNS = ("study", "arm", "subject", "day", "volume_mm3")
NONMEM_KEY_COLUMNS = ("ID", "TIME", "DV", "EVID")
DATA_DIR_ENV = "FITCSC_DATA_DIR"

_SHOWN = 3  # duplicates, subjects, ... listed in one message
_NAMED = 50  # subjects with duplicates named in one message
_DAY = DAY_EXPECTED
_VOLUME = "a finite volume >= 0 in mm3 (0 = below detection)"
_HORIZON = HORIZON_EXPECTED


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
        path = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data
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
    a clinical kind (``"pcr"``, ``"adjuvant"``, ``"links"``, ``"pk"``, see `fitcsc._io.clinical`).

    Columns arm and drug (any case; a regimen table's, even with others missing) ->
    ``"regimen"``; ID, TIME, DV and EVID (any case) -> ``"nonmem"``; anything else ->
    ``"tidy"``.

    **Raises:** `DataError` for files that cannot be read as CSV at all.
    """
    header = read_csv_rows(path, DataError).header
    names = {h.lstrip("#").strip().lower() for h in header}
    from .clinical import clinical_kind

    clinical = clinical_kind(header)
    if clinical is not None and "volume_mm3" not in names:
        return clinical
    if {"arm", "drug"} <= names:
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


def build_table(path, records, error, extra_names=(), columns=None,
                 duplicates="refuse") -> TidyTable:
    """Check cross-row rules, resolve duplicates and sort. ``records``: (line, study,
    arm, subject, day, volume_mm3, extras) in file order, each already checked on its
    own. ``columns`` renames the columns named in errors (e.g. ``{"day": "TIME"}``)."""
    col = {k: k for k in TIDY_COLUMNS} | (columns or {})
    if duplicates not in DUPLICATES:
        raise error("unknown duplicates option", column="--duplicates",
                    expected="one of " + ", ".join(DUPLICATES), value=duplicates)
    first: dict[str, tuple[int, str, str]] = {}  # subject -> (line, arm, study)
    groups: dict[tuple[str, float], list[int]] = {}
    for k, (line, study, arm, subject, day, volume, _) in enumerate(records):
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
        if abs(day) > MAX_ABS_DAY:
            raise error("day beyond the plausible horizon (hours, seconds or a date given "
                        "as days?)", file=str(path), row=line, column=col["day"],
                        expected=_HORIZON, value=day)
        if volume > MAX_VOLUME_MM3:
            raise error("volume above the plausible maximum (um3 or a cell count given as "
                        "mm3?)", file=str(path), row=line, column=col["volume_mm3"],
                        expected=f"a volume <= {MAX_VOLUME_MM3:g} mm3 (1 litre)", value=volume)
        groups.setdefault((subject, day), []).append(k)
    twins = [(key, ks) for key, ks in groups.items() if len(ks) > 1]
    if twins:
        records = _resolve_duplicates(str(path), records, twins, error, col, duplicates)
    _warn_few_points(str(path), records, col)
    rank = {s: i for i, s in enumerate(dict.fromkeys(r[3] for r in records))}
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


def _and(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _resolve_duplicates(path, records, twins, error, col, how):
    """Refuse the (subject, day) pairs measured more than once (one line: count, first
    few, the option), or resolve them as ``how`` says, with a `DataWarning`."""
    n_rows = sum(len(ks) for _, ks in twins)
    subjects = tuple(dict.fromkeys(key[0] for key, _ in twins))

    def pair(key, ks):
        vols = ", ".join(f"{records[k][5]:g}" for k in ks)
        return (f"subject {key[0]!r} on day {key[1]:g} (lines {_and(records[k][0] for k in ks)}"
                f": {vols} mm3)")

    shown = "; ".join(pair(key, ks) for key, ks in twins[:_SHOWN])
    more = ""
    if len(twins) > _SHOWN:  # the pairs not shown: every subject they concern, named
        named = ", ".join(map(repr, subjects[:_NAMED]))
        rest = f" and {len(subjects) - _NAMED} more" if len(subjects) > _NAMED else ""
        more = (f"; and {len(twins) - _SHOWN} more (subjects with duplicates: "
                f"{named}{rest})")
    what = (f"{len(twins)} (subject, day) pairs measured more than once ({n_rows} rows, "
            f"{len(subjects)} subject{'s' * (len(subjects) > 1)}): {shown}{more}")
    if how == "refuse":
        (s, d), ks = twins[0]
        message = (f"duplicate measurement of subject {s!r} on day {d:g} (lines "
                   f"{_and(records[k][0] for k in ks)})" if len(twins) == 1 else
                   f"duplicate measurements: {what}")
        raise error(message, file=path, row=records[ks[1]][0], column=col["day"],
                    expected=f"one volume per subject and day, or resolve them with "
                    f"{DUPLICATES_HINT}", value=d)
    drop = {k for _, ks in twins for k in ks[1:]}
    if how == "mean":
        mean = {ks[0]: float(np.mean([records[k][5] for k in ks])) for _, ks in twins}
        records = [r if k not in mean else (*r[:5], mean[k], r[6])
                   for k, r in enumerate(records)]
        done = "volumes averaged (arithmetic mean), first row's line kept"
    elif how == "first":
        done = "first row in the file kept"
    else:
        drop = {k for k, r in enumerate(records) if r[3] in set(subjects)}
        done = f"their {len(subjects)} subject(s) dropped: " + ", ".join(map(repr, subjects))
    kept = [r for k, r in enumerate(records) if k not in drop]
    if not kept:
        raise error("every subject has duplicate measurements: none left to fit",
                    file=path, column=col["day"],
                    expected="--duplicates mean or first (or one volume per subject and day)",
                    value=how)
    warnings.warn(f"{path}, column '{col['day']}': {what}; resolved by --duplicates {how}: "
                  f"{done}", DataWarning, stacklevel=4)
    return kept


def _warn_few_points(path, records, col):
    """One `DataWarning` listing subjects with fewer than `MIN_POINTS_TO_FIT` rows."""
    counts: dict[str, list[int]] = {}
    for r in records:
        counts.setdefault(r[3], []).append(r[0])
    few = [(s, lines) for s, lines in counts.items() if len(lines) < MIN_POINTS_TO_FIT]
    if not few:
        return
    listed = ", ".join(f"{s!r} ({len(ls)}, line {ls[0]})" for s, ls in few[:_SHOWN])
    more = f" and {len(few) - _SHOWN} more" if len(few) > _SHOWN else ""
    warnings.warn(f"{path}, column '{col['subject']}': {len(few)} subject(s) with fewer than "
                  f"{MIN_POINTS_TO_FIT} measurements, too few to fit a growth curve (initial "
                  f"volume, a rate and the error SD): {listed}{more}; kept, but their "
                  "parameters are not identified", DataWarning, stacklevel=4)


def read_tidy_csv(path, *, duplicates: str = "refuse") -> TidyTable:
    """Read and validate a tidy tumour-volume CSV.

    **Arguments:**
    - `path`: a UTF-8 CSV with columns ``study, arm, subject, day, volume_mm3`` (any
      order, any case; extra columns are kept as strings in ``TidyTable.extra``).
    - `duplicates`: what to do with a (subject, day) measured more than once:
      ``"refuse"`` (default: one line with their count and the first few), ``"mean"``
      (average the volumes), ``"first"`` (keep the first row) or ``"drop-subject"``
      (drop every subject that has one); resolving warns (`DataWarning`).

    **Returns:** a `TidyTable` sorted by subject (order of first appearance) and day.

    **Raises:** `DataError` (one line: file, line, column, expectation, value) for a
    missing, empty or non-text file, a missing column, a ragged row, an empty id, a
    non-numeric or non-finite day or volume, a negative volume, a day beyond
    `MAX_ABS_DAY` or a volume above `MAX_VOLUME_MM3`, duplicates (unless resolved), or
    a subject listed in two arms or studies. Warns (`DataWarning`) for subjects with
    fewer than `MIN_POINTS_TO_FIT` measurements.

    Example::

        table = read_tidy_csv(data_dir() / "vaghi2020_untreated/vaghi2020_tumor_volume.csv")
        table.subjects[:2], table.day[:3]
    """
    c = read_csv_rows(path, DataError)
    idx = c.columns(TIDY_COLUMNS, fold_case=True)
    name = {k: c.header[idx[k]] for k in TIDY_COLUMNS}  # as spelled in the file
    extra_names = tuple(h for h in c.header if h.lower() not in TIDY_COLUMNS)
    extra_idx = [c.header.index(h) for h in extra_names]
    records = []
    for line, f in c.rows:
        ids = []
        for col in ("study", "arm", "subject"):
            value = f[idx[col]].strip()
            if not value:
                raise c.fail(f"empty {col} id", line, name[col], f"a non-empty {col} id", value)
            ids.append(value)
        day = c.number(line, name["day"], f[idx["day"]], _DAY)
        volume = c.number(line, name["volume_mm3"], f[idx["volume_mm3"]], _VOLUME)
        if volume < 0:
            raise c.fail("negative volume", line, name["volume_mm3"], _VOLUME,
                         f[idx["volume_mm3"]])
        records.append((line, *ids, day, volume, tuple(f[j] for j in extra_idx)))
    return build_table(c.path, records, DataError, extra_names, columns=name,
                        duplicates=duplicates)


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeData:
    """A tumour-volume file as `read_volumes` read it.

    ``table`` holds the observations (days, mm3); ``regimens`` the doses that came
    with it (NONMEM dose records, or the regimen table given), None when there are none
    (then `fitcsc._io.arms.default_arm_regimens` applies); ``regimen_source`` says which.
    ``kind`` is ``"tidy"`` or ``"nonmem"``.
    """

    table: TidyTable
    regimens: dict[str, Regimen] | None
    kind: str
    regimen_source: str | None


def read_volumes(
    path,
    regimens_file=None,
    *,
    kind: str = "auto",
    duplicates: str = "refuse",
    time_unit: str | None = None,
    amount_unit: str | None = None,
    cmt_drugs: dict[int, str] | None = None,
) -> VolumeData:
    """Read a tumour-volume file (tidy CSV or NONMEM event data) with its options.

    The one reader of ``fitcsc data validate``, ``data show`` and ``fit``, so an option
    that one accepts the others apply in the same way.

    **Arguments:**
    - `path`: the file; `kind`: ``"auto"`` (from the header, `detect_kind`), ``"tidy"``
      or ``"nonmem"``.
    - `regimens_file`: a regimen table for a tidy file (refused with NONMEM data, which
      carry their own doses).
    - `duplicates`: see `read_tidy_csv`.
    - `time_unit`, `amount_unit`, `cmt_drugs`: NONMEM only (see `read_nonmem`): TIME
      is converted to days at load; refused for a tidy file, whose ``day`` column is in
      days and which has no doses.

    **Returns:** a `VolumeData`.

    **Raises:** `DataError` / `RegimenError` (one line) for refused input or options.
    """
    from .nonmem import read_nonmem

    path = pathlib.Path(path)
    kind = detect_kind(path) if kind == "auto" else kind
    if kind == "nonmem":
        if regimens_file is not None:
            raise DataError("NONMEM event data carry their own doses", file=str(path),
                            expected="no regimen table with NONMEM data",
                            value=str(regimens_file))
        table, regimens = read_nonmem(path, cmt_drugs=cmt_drugs, duplicates=duplicates,
                                      amount_unit=amount_unit or "mg",
                                      time_unit=time_unit or "day")
        return VolumeData(table, regimens, kind, "NONMEM dose records")
    if kind != "tidy":
        raise DataError("not a tumour-volume file", file=str(path),
                        expected="a tidy CSV (study, arm, subject, day, volume_mm3) or "
                        "NONMEM event data (ID, TIME, DV, EVID)", value=kind)
    for option, value, default in (("--time-unit", time_unit, "day"),
                                   ("--amount-unit", amount_unit, None),
                                   ("--cmt-drug", cmt_drugs, None)):
        if value is not None and value != default:
            raise DataError(f"{option} applies to NONMEM event data only", file=str(path),
                            column=option, expected="no such option with a tidy file (its "
                            "day column is in days; doses come from a regimen table)",
                            value=value)
    table = read_tidy_csv(path, duplicates=duplicates)
    if regimens_file is None:
        return VolumeData(table, None, kind, None)
    return VolumeData(table, read_regimen_table(regimens_file), kind,
                      f"regimen table {regimens_file}")


def resolve_input(name: str) -> pathlib.Path:
    """``name`` as given if it exists (or is absolute), else relative to `data_dir`."""
    path = pathlib.Path(name)
    if path.exists() or path.is_absolute():
        return path
    try:
        base = data_dir()
    except FitcscInputError:
        return path  # the reader reports "file not found"
    if (base / path).exists():
        return base / path
    raise DataError(
        "file not found",
        file=name,
        expected=f"a file in the current directory or in the data directory {base}",
    )
