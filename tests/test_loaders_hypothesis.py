"""Property tests of every loader: any file, however malformed, gives either a valid result
or the project's validation error (a `FitcscInputError`, a `ValueError` subclass whose one
line names the file), never another exception. Valid results are checked for their
invariants and go on through `make_batch` under the same rule.

Generated files mix raw bytes with near-miss tables: required and extra columns in any
order and case, delimiters, line ends, byte-order marks and encodings, and fields drawn
from the values users send (empty, ``.``, ``NA``, ``nan``, ``inf``, ``1e308``, decimal
commas, quotes, NUL, huge days, drug names real and not). Runs are derandomized (the same
examples on every machine); ``FITCSC_HYPOTHESIS=dev`` explores 20x more at random.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fitcsc._errors import DataWarning, FitcscInputError
from fitcsc._io.batch import make_batch
from fitcsc._io.clinical import read_clinical
from fitcsc._io.data import (
    DUPLICATES,
    MAX_ABS_DAY,
    MAX_VOLUME_MM3,
    detect_kind,
    read_regimen_table,
    read_tidy_csv,
    read_volumes,
)
from fitcsc._io.drug_catalogue import read_drug_catalogue
from fitcsc._io.nonmem import read_nonmem

settings.register_profile("ci", max_examples=120, deadline=None, derandomize=True,
                          database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=2400, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FITCSC_HYPOTHESIS", "ci"))

NUMBERS = st.one_of(
    st.sampled_from(["", " ", ".", "NA", "nan", "NaN", "inf", "-Infinity", "1e308", "1e309",
                     "1e-320", "-0", "0", "1", "2.5", "12,5", "1e23", "45000", "-3", "3653",
                     "3654", "1e6", "1000001", "7", "21", "0.5", "abc", "1_000", "0x10", "é"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**7, 10**7).map(str),
)
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
IDS = st.one_of(st.sampled_from(["m1", "m2", "m3", "S", "ctrl", "trast", "none", "1", " "]),
                TEXT)
DRUGS = st.one_of(st.sampled_from(["none", "NONE", "paclitaxel", "Herceptin", "T-DXd",
                                   "cisplatin", "olaparib", "aspirin", "paclitaxol", ""]), TEXT)
UNITS = st.sampled_from(["mg", "mg/kg", "mg/m2", "mg/m²", "MG/KG", "ug", "mg/day", ""])
FIELD = {
    "study": IDS, "arm": IDS, "subject": IDS, "day": NUMBERS, "volume_mm3": NUMBERS,
    "drug": DRUGS, "dose": NUMBERS, "dose_unit": UNITS, "start_day": NUMBERS,
    "interval_day": NUMBERS, "n_doses": NUMBERS, "infusion_hours": NUMBERS,
    "ID": IDS, "TIME": NUMBERS, "DV": NUMBERS, "AMT": NUMBERS,
    "EVID": st.sampled_from(["0", "0", "1", "2", "3", "4", "7", "", ".", "x", "1.5"]),
    "CMT": st.sampled_from(["1", "2", "3", ".", "", "0", "-1"]),
    "MDV": st.sampled_from(["0", "1", ".", "", "2"]), "RATE": NUMBERS, "ADDL": NUMBERS,
    "II": NUMBERS, "SS": st.sampled_from(["0", "1", ".", ""]), "ARM": IDS, "STUDY": IDS,
}
TIDY = ("study", "arm", "subject", "day", "volume_mm3")
REGIMEN = ("arm", "drug", "dose", "dose_unit", "start_day", "interval_day", "n_doses",
           "infusion_hours")
NONMEM = ("ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "ADDL", "II", "SS", "ARM",
          "STUDY")


def _valid_rows(draw, columns):
    """Rows that a reader accepts (before any mutation), as ``{column: text}``."""
    rows = []
    if columns is TIDY:
        for subject in draw(st.lists(st.sampled_from(["m1", "m2", "m3", "m4"]), min_size=1,
                                     max_size=3, unique=True)):
            days = draw(st.lists(st.integers(-30, 200), min_size=1, max_size=5, unique=True))
            for day in days:
                vol = draw(st.floats(0, 5e4, allow_nan=False))
                rows.append(dict(study="S", arm="ctrl" if subject < "m3" else "trast",
                                 subject=subject, day=str(day), volume_mm3=repr(vol)))
    elif columns is REGIMEN:
        for arm in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3,
                                 unique=True)):
            for _ in range(draw(st.integers(1, 2))):
                n = draw(st.integers(1, 8))
                interval = draw(st.sampled_from([1, 7, 21])) if n > 1 else 0
                rows.append(dict(arm=arm, drug=draw(st.sampled_from(
                    ["paclitaxel", "Herceptin", "T-DXd", "cisplatin", "olaparib"])),
                    dose=str(draw(st.integers(0, 500))), dose_unit=draw(st.sampled_from(
                        ["mg", "mg/kg", "mg/m2"])), start_day=str(draw(st.integers(-7, 60))),
                    interval_day=str(interval), n_doses=str(n),
                    infusion_hours=str(draw(st.sampled_from([0, 0.5, 3])))))
    else:
        for subject in draw(st.lists(st.sampled_from(["1", "2", "3"]), min_size=1,
                                     max_size=3, unique=True)):
            arm = "T" if subject != "3" else "C"
            for t in draw(st.lists(st.integers(0, 500), min_size=1, max_size=4, unique=True)):
                rows.append(dict(ID=subject, TIME=str(t), DV=str(draw(st.integers(0, 900))),
                                 AMT=".", EVID="0", CMT=".", MDV="0", RATE=".", ADDL=".",
                                 II=".", SS="0", ARM=arm, STUDY="S"))
            if draw(st.booleans()):
                rows.append(dict(ID=subject, TIME="0", DV=".", AMT="2", EVID="1",
                                 CMT=draw(st.sampled_from(["1", "2"])), MDV="1",
                                 RATE=draw(st.sampled_from([".", "0", "48"])),
                                 ADDL=draw(st.sampled_from([".", "0", "3"])), II="7", SS="0",
                                 ARM=arm, STUDY="S"))
    return rows


@st.composite
def tables(draw, columns):
    """A table near a valid one: 3 times in 4 valid rows with at most one mutated cell,
    else near-miss columns (a missing one, any case, extras, a duplicate) and fields from
    plausible to absurd; then a delimiter, line ends, quoting, BOM and encoding."""
    if draw(st.integers(0, 3)) < 3:  # the simplest draws: valid rows
        names = list(draw(st.permutations(list(columns))))
        rows = [[r[n] for n in names] for r in _valid_rows(draw, columns)]
        if draw(st.booleans()):
            i, j = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(names) - 1))
            rows[i][j] = draw(FIELD[names[j]])
    else:
        names = list(draw(st.lists(st.sampled_from(columns), min_size=len(columns) - 1,
                                   max_size=len(columns) + 1)))
        names += draw(st.lists(st.sampled_from(["extra", "weight_g", "Notes", "day", "#c"]),
                               max_size=2))
        names = [n.upper() if draw(st.integers(0, 9)) == 0 else n for n in names]
        rows = []
        for _ in range(draw(st.integers(0, 7))):
            row = [draw(FIELD.get(n, FIELD.get(n.lower(), FIELD.get(n.upper(), TEXT))))
                   for n in names]
            if draw(st.integers(0, 15)) == 0:
                row = row[:-1]  # ragged
            rows.append(row)
    if rows and draw(st.integers(0, 5)) == 0:
        rows.append(list(rows[0]))  # a duplicate row
    sep = draw(st.sampled_from([",", ",", ",", ";", "\t", "|"]))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))

    def cell(x):
        return f'"{x}"' if draw(st.integers(0, 12)) == 0 else x

    text = end.join(sep.join(cell(x) for x in r) for r in [names, *rows]) + end
    text = ("\ufeff" if draw(st.integers(0, 6)) == 0 else "") + text
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


@st.composite
def catalogue_files(draw):
    """A drug catalogue file: TOML-ish or CSV-ish, ``(suffix, bytes)``; half of them a
    valid one with at most one changed value."""
    if not draw(st.booleans()):  # the simplest draw (False): the valid template
        values = {"CLASS": '"chemo"', "SOURCE": '"label"', "MODEL": '"oral"', "T": "8.9",
                  "V": "114", "TMAX": "3", "ALIAS": '["dd"]', "MT": "2", "MV": "1.5"}
        key = draw(st.sampled_from(list(values))) if draw(st.booleans()) else None
        if key is not None:
            values[key] = draw(st.sampled_from(["0", "-1", "nan", "inf", "true", '"x"', "[]",
                                                '"one_compartment"', '"two_compartment"']))
        text = ("[drug.d]\nclass = CLASS\nsource = SOURCE\naliases = ALIAS\n"
                "[drug.d.human]\npk_model = MODEL\nhalf_life_h = T\nvolume_L = V\n"
                "tmax_h = TMAX\n[drug.d.mouse]\npk_model = \"one_compartment\"\n"
                "half_life_h = MT\nvolume_L_per_kg = MV\n")
        for k in sorted(values, key=len, reverse=True):
            text = text.replace(f" {k}\n", f" {values[k]}\n")
        return ".toml", text.encode()
    if draw(st.booleans()):
        keys = ["class", "source", "aliases", "payload", "payload_mass_fraction", "colour"]
        body = "".join(f"{k} = {draw(st.sampled_from(['1', 'true', '[1]', chr(34) + 'x' + chr(34), chr(34) + 'chemo' + chr(34), '-2', '{}']))}\n"  # noqa: E501
                       for k in draw(st.lists(st.sampled_from(keys), max_size=4)))
        species = draw(st.lists(st.sampled_from(["human", "mouse", "rat"]), max_size=2))
        for s in species:
            body += f"[drug.d.{s}]\n" + "".join(
                f"{k} = {draw(st.sampled_from(['1', '0', '-1', 'nan', chr(34) + 'oral' + chr(34), chr(34) + 'one_compartment' + chr(34), 'true', '1e309']))}\n"  # noqa: E501
                for k in draw(st.lists(st.sampled_from(
                    ["pk_model", "half_life_h", "half_life_day", "volume_L", "volume_L_per_kg",
                     "tmax_h", "bioavailability", "clearance_L_per_day", "central_volume_L",
                     "k12_per_day", "k21_per_day", "x"]), max_size=6)))
        head = draw(st.sampled_from(["[drug.d]\n", "[drug.D]\n", "[drugs.d]\n", "[drug]\n",
                                     "", "x = 1\n"]))
        return ".toml", (head + body + draw(st.sampled_from(["", "[[", "= ="]))).encode()
    cols = ["drug", "class", "species", "pk_model", "half_life_h", "volume_L", "tmax_h",
            "aliases", "payload", "payload_mass_fraction", "source"]
    pool = {"drug": st.sampled_from(["d", "D", "none", "arm:x", "paclitaxel", ""]),
            "class": st.sampled_from(["chemo", "her2", "kinase", ""]),
            "species": st.sampled_from(["human", "mouse", "rat", ""]),
            "pk_model": st.sampled_from(["oral", "one_compartment", "two_compartment", "x"]),
            "aliases": st.sampled_from(["", "h", "x;y", ";", "taxol"]),
            "payload": st.sampled_from(["", "dm1", "zz"]),
            "source": st.sampled_from(["", "label"])}
    names = draw(st.lists(st.sampled_from(cols), min_size=4, max_size=11, unique=True))
    rows = [[draw(pool.get(n, NUMBERS)) for n in names] for _ in range(draw(st.integers(0, 3)))]
    return ".csv", "\n".join(",".join(r) for r in [names, *rows]).encode()


def _write(data: bytes, suffix=".csv") -> pathlib.Path:
    fd, name = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return pathlib.Path(name)


def _refused_properly(err: FitcscInputError, path):
    assert isinstance(err, ValueError)
    message = str(err)
    assert "\n" not in message and message
    if err.file is not None:
        assert message.startswith(str(path)) or message.startswith(err.file)


def _load(loader, data, suffix=".csv"):
    """``loader(path)``: its result, or None if it refused with the project's error."""
    path = _write(data, suffix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            got = loader(path)
        event("read")
        return got
    except FitcscInputError as err:
        _refused_properly(err, path)
        event(f"refused: {type(err).__name__}")
        return None
    finally:
        path.unlink()


def _check_table(table):
    """Invariants of a `TidyTable` that a reader returned."""
    assert table.n_rows > 0
    assert np.all(np.isfinite(table.day)) and np.all(np.abs(table.day) <= MAX_ABS_DAY)
    assert np.all(np.isfinite(table.volume_mm3)) and np.all(table.volume_mm3 >= 0)
    assert np.all(table.volume_mm3 <= MAX_VOLUME_MM3)
    pairs = list(zip(table.subject.tolist(), table.day.tolist(), strict=True))
    assert len(set(pairs)) == len(pairs)  # no (subject, day) twice
    for s in table.subjects:
        d = table.day[table.subject == s]
        assert np.all(np.diff(d) > 0)
        assert len(set(table.arm[table.subject == s].tolist())) == 1
    assert all(x.strip() for x in (*table.study, *table.arm, *table.subject))


def _batch(table, regimens):
    """`make_batch` of a valid read: a batch, or the project's error (never another)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            batch = make_batch(table, regimens)
    except FitcscInputError as err:
        _refused_properly(err, table.path)
        event("batch refused")
        return
    event("batch made")
    assert batch.n_subjects == len(table.subjects)
    assert int(np.asarray(batch.mask).sum()) == table.n_rows


@given(st.one_of(st.binary(max_size=200), tables(TIDY)), st.sampled_from(DUPLICATES))
def test_tidy_reader(data, duplicates):
    table = _load(lambda p: read_tidy_csv(p, duplicates=duplicates), data)
    if table is not None:
        _check_table(table)
        _batch(table, None)


@given(st.one_of(st.binary(max_size=200), tables(REGIMEN)))
def test_regimen_reader(data):
    regimens = _load(read_regimen_table, data)
    if regimens is not None:
        assert regimens and all(isinstance(k, str) and k.strip() for k in regimens)
        for reg in regimens.values():
            for line in reg.lines:
                assert line.n_doses >= 1 and line.dose >= 0
                assert abs(line.start_day) <= MAX_ABS_DAY
            reg.events("mouse")


@given(st.one_of(st.binary(max_size=200), tables(NONMEM)),
       st.sampled_from(["day", "hour"]), st.sampled_from(["mg", "mg/kg", "mg/m2"]),
       st.sampled_from(DUPLICATES))
def test_nonmem_reader(data, time_unit, amount_unit, duplicates):
    got = _load(lambda p: read_nonmem(p, time_unit=time_unit, amount_unit=amount_unit,
                                      duplicates=duplicates,
                                      cmt_drugs={1: "trastuzumab", 2: "T-DM1"}), data)
    if got is not None:
        table, regimens = got
        _check_table(table)
        assert set(table.subjects) <= set(regimens)
        _batch(table, regimens)


@given(st.one_of(tables(TIDY), tables(NONMEM), tables(REGIMEN), st.binary(max_size=100)),
       st.sampled_from([None, "hour"]))
def test_detect_kind_and_read_volumes(data, time_unit):
    kind = _load(detect_kind, data)
    assert kind in (None, "tidy", "regimen", "nonmem", "pcr", "adjuvant", "links", "pk")
    got = _load(lambda p: read_volumes(p, time_unit=time_unit), data)
    if got is not None:
        assert got.kind in ("tidy", "nonmem")
        _check_table(got.table)
        _batch(got.table, got.regimens)


@given(catalogue_files())
def test_drug_catalogue_reader(suffix_data):
    suffix, data = suffix_data
    infos = _load(read_drug_catalogue, data, suffix)
    if infos is not None:
        for info in infos:
            assert info.source and (info.pk_human is not None or info.pk_mouse is not None)
            for pk in (info.pk_human, info.pk_mouse):
                if pk is not None:
                    coefs, rates = (np.asarray(x) for x in pk.exponentials())
                    assert np.all(np.isfinite(coefs)) and np.all(rates > 0)


@pytest.mark.parametrize("kind", ["pcr", "adjuvant", "links", "pk"])
@settings(max_examples=30)
@given(data=st.one_of(st.binary(max_size=200), tables(TIDY), tables(REGIMEN)))
def test_clinical_reader(kind, data):
    _load(lambda p: read_clinical(p, kind), data)
