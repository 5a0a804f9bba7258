"""Data intake: tidy CSV, regimen tables, NONMEM event data, padded batches, data_dir.

Every refusal is checked for its one-line message naming file, line, column and value.
"""

from __future__ import annotations

import pathlib

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from fitcsc._errors import DataError, DataWarning, RegimenError
from fitcsc._io.data import (
    SubjectBatch,
    data_dir,
    detect_kind,
    make_batch,
    read_regimen_table,
    read_tidy_csv,
    read_volumes,
)
from fitcsc._io.nonmem import read_nonmem

HEADER = "study,arm,subject,day,volume_mm3,weight_g\n"
GOOD = HEADER + (
    "S1,ctrl,m1,0,100.5,20\n"
    "S1,ctrl,m1,-3,50,19.5\n"  # pre-treatment, out of order: sorted by day
    "S1,trast,m2,0,80,21\n"
    "S1,ctrl,m1,4,0,20\n"  # complete response: kept
    "S1,trast,m2,7,0.4,21\n"  # below the detection limit
    "S1,trast,m2,3,90,21\n"
)
REG_HEADER = "arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours,citation\n"
REG_GOOD = REG_HEADER + (
    "ctrl,none,,,,,,,untreated\n"
    "trast,Herceptin,10,mg/kg,0,7,3,0,Gao 2015\n"
    "trast,trastuzumab,20,mg/kg,-1,,1,,loading dose\n"
    "combo,paclitaxel,15,mg/kg,0,7,2,1.5,\n"
    "combo,trastuzumab,10,mg/kg,0,7,2,0,\n"
)


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.setenv("FITCSC_DATA_DIR", "")
    monkeypatch.delenv("FITCSC_DATA_DIR")  # restored to "unset" after the test


def write(tmp_path, text, name="data.csv") -> pathlib.Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def refusal(reader, path, error=DataError):
    with pytest.raises(error) as info:
        reader(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return info.value, message


def check(err, message, *, line=None, column=None, value=None):
    if line is not None:
        assert err.row == line and f"line {line}" in message
    if column is not None:
        assert err.column == column and f"column '{column}'" in message
    if value is not None:
        assert f"got {value!r}" in message
    assert err.expected and "; expected " in message


# ------------------------------------------------------------------ tidy reader


def test_tidy_round_trip(tmp_path):
    t = read_tidy_csv(write(tmp_path, GOOD))
    assert t.subject.tolist() == ["m1", "m1", "m1", "m2", "m2", "m2"]
    assert t.day.tolist() == [-3.0, 0.0, 4.0, 0.0, 3.0, 7.0]
    assert t.volume_mm3.tolist() == [50.0, 100.5, 0.0, 80.0, 90.0, 0.4]
    assert t.arm.tolist() == ["ctrl"] * 3 + ["trast"] * 3
    assert t.study.tolist() == ["S1"] * 6
    assert t.line.tolist() == [3, 2, 5, 4, 7, 6]
    assert list(t.extra) == ["weight_g"] and t.extra["weight_g"][0] == "19.5"
    assert t.day.dtype == np.float64 and t.subject.dtype.kind == "U"
    assert t.subjects == ("m1", "m2") and t.arms == ("ctrl", "trast") and t.n_rows == 6
    assert t.censored(1.0).tolist() == [False, False, True, False, False, True]
    assert t.path == str(tmp_path / "data.csv")


def test_tidy_columns_any_order_bom_blank_lines_and_crlf(tmp_path):
    text = "\ufeffsubject,day,volume_mm3,arm,study\r\n\r\nm1,1,5,a,s\r\nm1,2,6,a,s\r\n\r\n"
    t = read_tidy_csv(write(tmp_path, text))
    assert t.day.tolist() == [1.0, 2.0] and t.line.tolist() == [3, 4] and t.extra == {}


def test_tidy_missing_file(tmp_path):
    err, msg = refusal(read_tidy_csv, tmp_path / "absent.csv")
    assert "file not found" in msg and err.expected


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_tidy_empty_file(tmp_path, text):
    err, msg = refusal(read_tidy_csv, write(tmp_path, text))
    assert "file is empty" in msg
    check(err, msg, line=1)


def test_tidy_header_without_rows(tmp_path):
    err, msg = refusal(read_tidy_csv, write(tmp_path, HEADER))
    assert "no data rows" in msg
    check(err, msg, line=2)


def test_tidy_binary_file(tmp_path):
    err, msg = refusal(read_tidy_csv, write(tmp_path, b"PK\x03\x04\x00\x00binary", "x.xlsx"))
    assert "not a text file" in msg
    check(err, msg, line=1, value=b"PK\x03\x04\x00\x00bi")


def test_tidy_not_utf8(tmp_path):
    data = (HEADER + "S1,ctrl,m1,0,1,2\nS1,ctrl,Souris_").encode() + b"\xe9" + b",1,2,3\n"
    err, msg = refusal(read_tidy_csv, write(tmp_path, data))
    assert "not UTF-8" in msg
    check(err, msg, line=3)
    assert "\\xe9" in msg


def test_tidy_missing_column(tmp_path):
    err, msg = refusal(read_tidy_csv, write(tmp_path, "study,arm,subject,day,vol\ns,a,m,0,1\n"))
    assert "missing required column" in msg
    check(err, msg, line=1, column="volume_mm3", value="study,arm,subject,day,vol")


@pytest.mark.parametrize("sep", [";", "\t"])
def test_tidy_semicolon_or_tab_separated_read_with_a_warning(tmp_path, sep):
    rows = ["study", "arm", "subject", "day", "volume_mm3"], ["s", "a", "m", "0", "12,5"], [
        "s", "a", "m", "3", "20"], ["s", "a", "m", "6", "1.5e2"]
    path = write(tmp_path, "\n".join(sep.join(r) for r in rows) + "\n")
    with pytest.warns(DataWarning, match=r"data.csv: read as (semicolon|tab)-separated"):
        t = read_tidy_csv(path)
    assert t.volume_mm3.tolist() == [12.5, 20.0, 150.0]  # decimal comma read as a point


def test_tidy_pipe_header_hint_and_decimal_comma_in_a_comma_file(tmp_path):
    err, msg = refusal(
        read_tidy_csv, write(tmp_path, "study|arm|subject|day|volume_mm3\ns|a|m|0|1\n")
    )
    assert "not comma-separated" in msg
    check(err, msg, line=1, column="study")
    err, msg = refusal(read_tidy_csv, write(tmp_path, HEADER + 'S1,ctrl,m1,0,"12,5",20\n'))
    assert "decimal comma in a comma-separated file" in msg
    check(err, msg, line=2, column="volume_mm3", value="12,5")


def test_tidy_header_any_case_and_lookalike_hint(tmp_path):
    t = read_tidy_csv(write(tmp_path, "Study,ARM,Subject,Day,Volume_mm3,Cage\n"
                                      "s,a,m,0,1,A\ns,a,m,1,2,A\ns,a,m,2,3,A\n"))
    assert t.day.tolist() == [0.0, 1.0, 2.0] and list(t.extra) == ["Cage"]
    err, msg = refusal(read_tidy_csv, write(tmp_path, "study,arm,subject,day,Day,volume_mm3\n"
                                                      "s,a,m,0,0,1\n"))
    assert "two columns differ only in case" in msg
    check(err, msg, line=1, column="Day", value="columns 4 and 5")
    err, msg = refusal(read_tidy_csv, write(tmp_path, "study,arm,subject,day,volume_cm3\n"
                                                      "s,a,m,0,1\n"))
    assert "is 'volume_cm3' it? rename it 'volume_mm3' after checking its unit" in msg
    check(err, msg, line=1, column="volume_mm3")


def test_tidy_utf16_with_bom_read_with_a_warning(tmp_path):
    text = "study\tarm\tsubject\tday\tvolume_mm3\r\ns\ta\tSouris_é\t0\t5\r\n"
    path = write(tmp_path, text.encode("utf-16"))  # Excel's "Unicode text"
    with pytest.warns(DataWarning) as record:
        t = read_tidy_csv(path)
    assert t.subject.tolist() == ["Souris_é"]
    text = " | ".join(str(w.message) for w in record)
    assert "read as UTF-16" in text and "tab-separated" in text and "fewer than 3" in text


def test_tidy_ragged_row(tmp_path):
    err, msg = refusal(read_tidy_csv, write(tmp_path, HEADER + "S1,ctrl,m1,0,1,20\nS1,ctrl,m1,1\n"))
    assert "row has 4 fields but the header has 6" in msg
    check(err, msg, line=3, value="S1,ctrl,m1,1")


def test_tidy_malformed_quotes(tmp_path):
    err, msg = refusal(read_tidy_csv, write(tmp_path, HEADER + 'S1,ctrl,m1,0,1,20\nS1,"ctrl\n'))
    assert "malformed CSV" in msg
    check(err, msg, line=3)


def test_tidy_duplicate_column(tmp_path):
    err, msg = refusal(
        read_tidy_csv, write(tmp_path, "study,arm,subject,day,volume_mm3,day\ns,a,m,0,1,0\n")
    )
    assert "duplicate column name" in msg
    check(err, msg, line=1, column="day", value="columns 4 and 6")


@pytest.mark.parametrize(
    "column,row,value",
    [
        ("day", "S1,ctrl,m1,day3,1,20", "day3"),
        ("day", "S1,ctrl,m1,,1,20", ""),
        ("volume_mm3", "S1,ctrl,m1,3,12.5mm3,20", "12.5mm3"),
        ("volume_mm3", "S1,ctrl,m1,3,NA,20", "NA"),
    ],
)
def test_tidy_non_numeric(tmp_path, column, row, value):
    err, msg = refusal(read_tidy_csv, write(tmp_path, HEADER + "S1,ctrl,m1,0,1,20\n" + row + "\n"))
    assert "not a number" in msg or "missing value" in msg
    check(err, msg, line=3, column=column, value=value)


@pytest.mark.parametrize(
    "column,row,value",
    [
        ("day", "S1,ctrl,m1,inf,1,20", "inf"),
        ("volume_mm3", "S1,ctrl,m1,3,nan,20", "nan"),
        ("volume_mm3", "S1,ctrl,m1,3,-Infinity,20", "-Infinity"),
    ],
)
def test_tidy_non_finite(tmp_path, column, row, value):
    err, msg = refusal(read_tidy_csv, write(tmp_path, HEADER + row + "\n"))
    assert "not a finite number" in msg
    check(err, msg, line=2, column=column, value=value)


def test_tidy_negative_volume(tmp_path):
    err, msg = refusal(read_tidy_csv, write(tmp_path, HEADER + "S1,ctrl,m1,0,-5,20\n"))
    assert "negative volume" in msg
    check(err, msg, line=2, column="volume_mm3", value="-5")


def test_tidy_duplicate_subject_day(tmp_path):
    text = HEADER + "S1,ctrl,m1,0,1,20\nS1,ctrl,m1,1,2,20\nS1,ctrl,m1,1.0,3,20\n"
    err, msg = refusal(read_tidy_csv, write(tmp_path, text))
    assert "duplicate measurement of subject 'm1' on day 1 (lines 3 and 4)" in msg
    assert "or resolve them with --duplicates mean|first|drop-subject" in msg
    check(err, msg, line=4, column="day", value=1.0)


# 5 mice, 4 of them with (subject, day) twins, as in a public PDX export
TWINS = HEADER + "".join(
    f"S,arm{m % 2},m{m},{d},{v},20\n" for m in range(5) for d, v in
    [(0, 100 + m), (3, 120 + m), (7, 150 + m)]) + (
    "S,arm1,m1,3,180,20\n"  # line 17: m1 day 3 again, another volume
    "S,arm0,m2,0,102,20\n"  # m2 day 0 again, the same volume
    "S,arm1,m3,7,90,20\nS,arm1,m3,7,30,20\n"  # m3 day 7 three times
    "S,arm0,m4,0,300,20\n")


def test_duplicates_refused_in_one_line_with_count_first_few_and_option(tmp_path):
    err, msg = refusal(read_tidy_csv, write(tmp_path, TWINS))
    assert ("duplicate measurements: 4 (subject, day) pairs measured more than once (9 rows, "
            "4 subjects): subject 'm1' on day 3 (lines 6 and 17: 121, 180 mm3); subject 'm2' "
            "on day 0 (lines 8 and 18: 102, 102 mm3); subject 'm3' on day 7 (lines 13, 19 "
            "and 20: 153, 90, 30 mm3); and 1 more (subjects with duplicates: 'm1', 'm2', "
            "'m3', 'm4')") in msg
    assert "--duplicates mean|first|drop-subject" in msg
    check(err, msg, line=17, column="day", value=3.0)


def test_duplicates_refusal_names_every_subject_up_to_50(tmp_path):
    """Issue 15: a public file with twins in many mice; the one line shows the first
    pairs and names every subject that has one (the first 50 of more)."""
    text = HEADER + "".join(f"S,ctrl,m{m:02d},{d},{100 + d},20\nS,ctrl,m{m:02d},3,90,20\n"
                            for m in range(60) for d in (0, 3, 7))
    err, msg = refusal(read_tidy_csv, write(tmp_path, text))
    assert "duplicate measurements: 60 (subject, day) pairs measured more than once" in msg
    named = ", ".join(f"'m{m:02d}'" for m in range(50))
    assert f"; and 57 more (subjects with duplicates: {named} and 10 more);" in msg
    assert "'m50'" not in msg and len(msg.splitlines()) == 1


@pytest.mark.parametrize("how,subjects,m3_day7,words", [
    ("mean", ["m0", "m1", "m2", "m3", "m4"], (153 + 90 + 30) / 3, "volumes averaged"),
    ("first", ["m0", "m1", "m2", "m3", "m4"], 153.0, "first row in the file kept"),
    ("drop-subject", ["m0"], None, "their 4 subject(s) dropped: 'm1', 'm2', 'm3', 'm4'"),
])
def test_duplicates_resolved_with_a_warning(tmp_path, how, subjects, m3_day7, words):
    with pytest.warns(DataWarning, match=f"4 \\(subject, day\\) pairs .*resolved by "
                      f"--duplicates {how}") as record:
        t = read_tidy_csv(write(tmp_path, TWINS), duplicates=how)
    assert words in str(record[0].message) and str(tmp_path) in str(record[0].message)
    assert list(t.subjects) == subjects and t.n_rows == 3 * len(subjects)
    for s in subjects:  # one row per day, sorted
        assert t.day[t.subject == s].tolist() == [0.0, 3.0, 7.0]
    if m3_day7 is not None:
        assert t.volume_mm3[(t.subject == "m3") & (t.day == 7)] == pytest.approx(m3_day7)
        assert t.line[(t.subject == "m3") & (t.day == 7)].tolist() == [13]
    with pytest.raises(DataError, match="unknown duplicates option"):
        read_tidy_csv(write(tmp_path, GOOD), duplicates="last")


def test_duplicates_drop_every_subject_refused(tmp_path):
    text = HEADER + "S1,ctrl,m1,0,1,20\nS1,ctrl,m1,0,2,20\n"
    err, msg = refusal(lambda p: read_tidy_csv(p, duplicates="drop-subject"),
                       write(tmp_path, text))
    assert "every subject has duplicate measurements" in msg
    check(err, msg, column="day", value="drop-subject")


@pytest.mark.parametrize("row,column,value,words", [
    ("S1,ctrl,m1,1e23,5,20", "day", 1e23, "day beyond the plausible horizon"),
    ("S1,ctrl,m1,-3654,5,20", "day", -3654.0, "day beyond the plausible horizon"),
    ("S1,ctrl,m1,45000,5,20", "day", 45000.0, "(hours, seconds or a date given as days?)"),
    ("S1,ctrl,m1,3,2e6,20", "volume_mm3", 2e6, "volume above the plausible maximum"),
])
def test_implausible_values_refused_with_their_reason(tmp_path, row, column, value, words):
    err, msg = refusal(read_tidy_csv, write(tmp_path, HEADER + "S1,ctrl,m1,0,1,20\n" + row + "\n"))
    assert words in msg
    check(err, msg, line=3, column=column, value=value)
    # the limits themselves pass
    ok = HEADER + "S1,ctrl,m1,-3653,1,20\nS1,ctrl,m1,3653,1e6,20\nS1,ctrl,m1,0,0,20\n"
    assert read_tidy_csv(write(tmp_path, ok, "ok.csv")).day.tolist() == [-3653, 0, 3653]


def test_subjects_with_too_few_points_warned(tmp_path):
    text = GOOD + "S1,ctrl,m3,2,30,20\nS1,trast,m4,0,5,20\nS1,trast,m4,9,5,20\n"
    with pytest.warns(DataWarning, match=r"column 'subject': 2 subject\(s\) with fewer than 3 "
                      r"measurements, too few to fit a growth curve .*: 'm3' \(1, line 8\), "
                      r"'m4' \(2, line 9\); kept") as record:
        t = read_tidy_csv(write(tmp_path, text))
    assert len(record) == 1 and len(t.subjects) == 4


def test_tidy_subject_in_two_arms(tmp_path):
    text = HEADER + "S1,ctrl,m1,0,1,20\nS1,ctrl,m2,0,1,20\nS1,trast,m1,1,2,20\n"
    err, msg = refusal(read_tidy_csv, write(tmp_path, text))
    assert "subject 'm1' is in two arms: 'ctrl' (line 2) and 'trast' (line 4)" in msg
    check(err, msg, line=4, column="arm", value="trast")


def test_tidy_subject_in_two_studies(tmp_path):
    text = HEADER + "S1,ctrl,m1,0,1,20\nS2,ctrl,m1,1,2,20\n"
    err, msg = refusal(read_tidy_csv, write(tmp_path, text))
    assert "two studies: 'S1' (line 2) and 'S2' (line 3)" in msg
    check(err, msg, line=3, column="study", value="S2")


@pytest.mark.parametrize(
    "column,row",
    [("subject", "S1,ctrl,  ,0,1,20"), ("arm", "S1,,m1,0,1,20"), ("study", ",ctrl,m1,0,1,20")],
)
def test_tidy_empty_id(tmp_path, column, row):
    err, msg = refusal(read_tidy_csv, write(tmp_path, HEADER + "S1,ctrl,m0,0,1,20\n" + row + "\n"))
    assert f"empty {column} id" in msg
    check(err, msg, line=3, column=column, value="")


def test_tidy_directory_refused(tmp_path):
    err, msg = refusal(read_tidy_csv, tmp_path)
    assert "is a directory" in msg


# --------------------------------------------------------------- regimen reader


def test_regimen_round_trip(tmp_path):
    regs = read_regimen_table(write(tmp_path, REG_GOOD))
    assert list(regs) == ["ctrl", "trast", "combo"]
    assert regs["ctrl"].lines == () and regs["ctrl"].name == "ctrl"
    trast = regs["trast"]
    assert trast.name == "trast" and trast.drugs == ("trastuzumab",)
    assert [ln.dose for ln in trast.lines] == [10.0, 20.0]
    assert trast.lines[0].n_doses == 3 and trast.lines[0].interval_day == 7.0
    assert trast.lines[1].interval_day == 0.0 and trast.lines[1].infusion_hours == 0.0
    assert trast.lines[1].start_day == -1.0
    combo = regs["combo"]
    assert combo.drugs == ("paclitaxel", "trastuzumab") and combo.lines[0].infusion_hours == 1.5
    assert combo.n_doses == 4
    times = [e[0] for e in trast.events(species="mouse")]
    assert times == [-1.0, 0.0, 7.0, 14.0]


def test_regimen_none_case_insensitive_with_zero_dose(tmp_path):
    regs = read_regimen_table(write(tmp_path, REG_HEADER + "ctrl,NONE,0,mg,0,0,1,0,\n"))
    assert regs["ctrl"].lines == ()


@pytest.mark.parametrize(
    "row,column,value,words",
    [
        ("trast,aspirin,10,mg/kg,0,7,3,0,", "drug", "aspirin", "unknown drug"),
        ("trast,,10,mg/kg,0,7,3,0,", "drug", "", "unknown drug"),
        ("trast,trastuzumab,10,mg/g,0,7,3,0,", "dose_unit", "mg/g", "unknown dose unit"),
        ("trast,trastuzumab,ten,mg/kg,0,7,3,0,", "dose", "ten", "not a number"),
        ("trast,trastuzumab,10,mg/kg,nan,7,3,0,", "start_day", "nan", "not a finite number"),
        ("trast,trastuzumab,10,mg/kg,0,7,2.5,0,", "n_doses", "2.5", "not an integer"),
        ("trast,trastuzumab,10,mg/kg,0,7,,0,", "n_doses", "", "missing value"),
        ("trast,trastuzumab,10,mg/kg,0,7,3,2h,", "infusion_hours", "2h", "not a number"),
        ("ctrl,none,5,mg,0,0,1,0,", "dose", "5", "an arm without drug has a dose"),
        (" ,trastuzumab,10,mg/kg,0,7,3,0,", "arm", "", "empty arm id"),
    ],
)
def test_regimen_bad_values(tmp_path, row, column, value, words):
    path = write(tmp_path, REG_HEADER + "ok,trastuzumab,1,mg,0,0,1,0,\n" + row + "\n")
    err, msg = refusal(read_regimen_table, path, RegimenError)
    assert words in msg
    check(err, msg, line=3, column=column, value=value)


@pytest.mark.parametrize(
    "row,column,value,words",
    [
        ("trast,trastuzumab,-1,mg/kg,0,7,3,0,", "dose", -1.0, "bad value"),
        ("trast,trastuzumab,1,mg/kg,0,0,3,0,", "interval_day", 0.0, "need an interval"),
        ("trast,trastuzumab,1,mg/kg,0,7,0,0,", "n_doses", 0, "bad value"),
        ("trast,trastuzumab,1,mg/kg,0,7,1,-2,", "infusion_hours", -2.0, "bad value"),
    ],
)
def test_regimen_doseline_errors_get_file_and_line(tmp_path, row, column, value, words):
    err, msg = refusal(read_regimen_table, write(tmp_path, REG_HEADER + row + "\n"), RegimenError)
    assert words in msg and msg.count(str(tmp_path)) == 1 and msg.count("expected") == 1
    check(err, msg, line=2, column=column, value=value)


@pytest.mark.parametrize(
    "row,column,value,words",
    [
        ("trast,paclitaxol,10,mg/kg,0,7,3,0,", "drug", "paclitaxol",
         "unknown drug (did you mean 'paclitaxel'?)"),
        ("trast,trastuzumab,10,mg/kg,1e5,7,3,0,", "start_day", "1e5",
         "first dose beyond the plausible horizon"),
        ("trast,trastuzumab,10,mg/kg,0,7,20000,0,", "n_doses", "20000",
         "too many doses in one line"),
        ("trast,trastuzumab,10,mg/kg,0,7,600,0,", "interval_day", "7",
         "last dose on day 4193, beyond the plausible horizon"),
        ("trast,paclitaxel,10,mg/kg,0,1,3,36,", "infusion_hours", "36",
         "infusions overlap: each lasts longer than the interval between doses"),
        ("trast,paclitaxel,10,mg/kg,0,,1,1e6,", "infusion_hours", "1e6",
         "infusion beyond the plausible horizon"),
    ],
)
def test_regimen_unknown_drug_hint_and_impossible_schedules(tmp_path, row, column, value, words):
    err, msg = refusal(read_regimen_table, write(tmp_path, REG_HEADER + row + "\n"),
                       RegimenError)
    assert words in msg
    check(err, msg, line=2, column=column, value=value)
    if column == "drug":
        assert "add others with a drug catalogue file (--drug-catalogue FILE)" in msg


def test_regimen_new_agents_header_case_and_adc_payload(tmp_path):
    text = ("ARM,Drug,Dose,Dose_Unit,Start_Day,Interval_Day,N_Doses,Infusion_Hours\n"
            "gc,Cisplatin,75,mg/m²,0,21,4,1\ngc,gemcitabine,1250,mg/m2,0,21,4,0.5\n"
            "parp,Lynparza,300,mg,0,0.5,56,0\nadc,T-DXd,5.4,mg/kg,0,21,3,1.5\n"
            "adc2,kadcyla,3.6,mg/kg,0,21,2,1.5\n")
    regs = read_regimen_table(write(tmp_path, text))
    assert regs["gc"].drugs == ("cisplatin", "gemcitabine")
    assert regs["gc"].lines[0].dose_unit == "mg/m2"
    assert regs["parp"].drugs == ("olaparib",)
    adc, payload = regs["adc"].lines
    assert (adc.drug, payload.drug) == ("trastuzumab_deruxtecan", "dxd")
    assert payload.dose == pytest.approx(5.4 * 8 * 493.5 / 156_000)  # DAR 8, DXd 493.5 g/mol
    assert (payload.start_day, payload.interval_day, payload.n_doses, payload.infusion_hours) \
        == (0.0, 21.0, 3, 1.5)
    assert regs["adc2"].drugs == ("trastuzumab_emtansine", "dm1")
    assert regs["adc2"].lines[1].dose == pytest.approx(3.6 * 3.5 * 738.3 / 148_500)


def test_regimen_none_and_drug_in_one_arm(tmp_path):
    text = REG_HEADER + "ctrl,none,,,,,,,\nctrl,paclitaxel,10,mg/kg,0,7,2,0,\n"
    err, msg = refusal(read_regimen_table, write(tmp_path, text), RegimenError)
    assert "arm 'ctrl' has drug 'none' and a drug (lines 2 and 3)" in msg
    check(err, msg, line=3, column="drug", value="paclitaxel")


def test_regimen_file_checks(tmp_path):
    for text, words in [
        ("", "file is empty"),
        (REG_HEADER, "no data rows"),
        (b"\x00\x01", "not a text file"),
        ("arm,drug,dose\nx,none,0\n", "missing required column"),
        (REG_HEADER + "ctrl,none,,\n", "row has 4 fields"),
    ]:
        err, msg = refusal(read_regimen_table, write(tmp_path, text), RegimenError)
        assert words in msg
    err, msg = refusal(read_regimen_table, tmp_path / "absent.csv", RegimenError)
    assert "file not found" in msg


def test_detect_kind(tmp_path):
    assert detect_kind(write(tmp_path, GOOD, "a.csv")) == "tidy"
    assert detect_kind(write(tmp_path, REG_GOOD, "b.csv")) == "regimen"
    assert detect_kind(write(tmp_path, "#id,time,dv,amt,evid\n1,0,1,.,0\n", "c.csv")) == "nonmem"


# ------------------------------------------------------------------ make_batch


def test_make_batch_padding_mask_censoring(tmp_path):
    table = read_tidy_csv(write(tmp_path, GOOD + "S1,ctrl,m3,2,30,20\n"))
    batch = make_batch(table, detection_limit_mm3=1.0)
    assert isinstance(batch, SubjectBatch)
    assert (batch.n_subjects, batch.n_obs) == (3, 3)
    assert batch.subject == ("m1", "m2", "m3") and batch.arm == ("ctrl", "trast", "ctrl")
    assert batch.study == ("S1",) * 3 and batch.drugs == ()
    np.testing.assert_array_equal(batch.day, [[-3, 0, 4], [0, 3, 7], [2, 2, 2]])
    np.testing.assert_array_equal(batch.mask, [[1, 1, 1], [1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(batch.censored, [[0, 0, 1], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(batch.volume_mm3, [[50, 100.5, 1], [80, 90, 1], [30, 1, 1]])
    np.testing.assert_array_equal(batch.t0_day, [-3, 0, 2])
    assert batch.day.dtype == jnp.float64 and batch.mask.dtype == jnp.bool_
    # untreated: one padding dose each
    assert batch.schedule.time_day.shape == (3, 1) and not batch.schedule.mask.any()
    # a higher limit censors more and censored entries hold the limit; padding stays 1.0
    high = make_batch(table, detection_limit_mm3=60.0, max_obs=5)
    assert high.n_obs == 5
    np.testing.assert_array_equal(high.censored[0], [1, 0, 1, 0, 0])
    np.testing.assert_array_equal(high.volume_mm3[0], [60, 100.5, 60, 1, 1])
    np.testing.assert_array_equal(high.day[2], [2] * 5)


def test_make_batch_with_regimens(tmp_path):
    table = read_tidy_csv(write(tmp_path, GOOD))
    regs = read_regimen_table(write(tmp_path, REG_GOOD, "reg.csv"))
    batch = make_batch(table, regs, body_weight_kg={"m2": 0.025})
    assert batch.drugs == ("trastuzumab",)
    s = batch.schedule
    assert s.time_day.shape == (2, 4)  # trast has 4 doses, ctrl none
    assert not s.mask[0].any() and s.mask[1].all()
    np.testing.assert_allclose(s.time_day[1], [-1, 0, 7, 14])
    np.testing.assert_allclose(s.amount_mg[1], [20 * 0.025, 10 * 0.025, 10 * 0.025, 10 * 0.025])
    # default mouse weight 0.020 kg when not given; explicit slots and dose padding
    batch = make_batch(table, regs, drugs=("paclitaxel", "Herceptin"), max_doses=6)
    assert batch.drugs == ("paclitaxel", "trastuzumab")
    np.testing.assert_allclose(batch.schedule.amount_mg[1, :4], [0.4, 0.2, 0.2, 0.2])
    np.testing.assert_array_equal(batch.schedule.drug[1, :4], [1, 1, 1, 1])
    assert batch.schedule.time_day.shape == (2, 6) and not batch.schedule.mask[1, 4:].any()
    with pytest.raises(RegimenError, match="at most 2"):
        make_batch(table, regs, max_doses=2)
    with pytest.raises(RegimenError, match="does not include"):
        make_batch(table, regs, drugs=("paclitaxel",))


def test_make_batch_missing_arm_names_it(tmp_path):
    table = read_tidy_csv(write(tmp_path, GOOD))
    regs = read_regimen_table(write(tmp_path, REG_HEADER + "ctrl,none,,,,,,,\n", "reg.csv"))
    with pytest.raises(DataError) as info:
        make_batch(table, regs)
    msg = str(info.value)
    assert "arm 'trast' of subject 'm2' has no regimen" in msg
    assert str(tmp_path / "data.csv") in msg and "line 4" in msg and "got 'trast'" in msg


def test_make_batch_regimens_keyed_by_subject_first(tmp_path):
    table = read_tidy_csv(write(tmp_path, GOOD))
    regs = read_regimen_table(write(tmp_path, REG_GOOD, "reg.csv"))
    regs["m1"] = regs["combo"]  # subject id wins over its arm 'ctrl'
    batch = make_batch(table, regs)
    assert batch.drugs == ("paclitaxel", "trastuzumab")
    np.testing.assert_array_equal(batch.schedule.mask.sum(axis=1), [4, 4])


def test_make_batch_bad_options(tmp_path):
    table = read_tidy_csv(write(tmp_path, GOOD))
    with pytest.raises(DataError, match="has 3 observations; expected at most max_obs=2"):
        make_batch(table, max_obs=2)
    with pytest.raises(DataError, match="detection limit"):
        make_batch(table, detection_limit_mm3=0.0)
    with pytest.raises(DataError, match="species"):
        make_batch(table, species="rat")
    with pytest.raises(DataError, match="body weight"):
        make_batch(table, body_weight_kg=-1.0)


def test_subset_and_jit(tmp_path):
    table = read_tidy_csv(write(tmp_path, GOOD + "S1,ctrl,m3,2,30,20\n"))
    regs = read_regimen_table(write(tmp_path, REG_GOOD, "reg.csv"))
    batch = make_batch(table, regs)
    sub = batch.subset([2, 0])
    assert sub.subject == ("m3", "m1") and sub.arm == ("ctrl", "ctrl") and sub.n_subjects == 2
    np.testing.assert_array_equal(sub.day, batch.day[np.array([2, 0])])
    assert sub.schedule.time_day.shape == (2, batch.schedule.n) and sub.drugs == batch.drugs
    by_mask = batch.subset(np.array([False, True, False]))
    assert by_mask.subject == ("m2",) and by_mask.schedule.mask.all()
    assert batch.subset([-1]).subject == ("m3",)
    with pytest.raises(IndexError):
        batch.subset([3])
    with pytest.raises(IndexError):
        batch.subset(np.array([True, False]))
    total = eqx.filter_jit(lambda b: jnp.sum(jnp.where(b.mask, b.volume_mm3, 0.0)))(batch)
    assert float(total) == pytest.approx(50 + 100.5 + 1 + 80 + 90 + 1 + 30)


# ----------------------------------------------------------------------- NONMEM

NM_HEADER = "ID,TIME,DV,AMT,EVID,CMT,MDV,RATE,ARM,STUDY,WT\n"
NM_GOOD = NM_HEADER + (
    "1,-2,40,.,0,.,0,.,trast,S,20\n"
    "1,0,.,0.2,1,1,1,0,trast,S,20\n"
    "1,0,55,.,0,.,0,.,trast,S,20\n"
    "1,7,.,0.3,1,2,1,0.6,trast,S,20\n"  # paclitaxel infusion 0.5 day = 12 h
    "1,8,.,.,2,.,1,.,trast,S,20\n"  # other event: ignored
    "1,9,999,.,0,.,1,.,trast,S,20\n"  # MDV 1: skipped
    "1,10,0,.,0,.,0,.,trast,S,20\n"  # below detection: kept
    "2,0,70,.,0,.,0,.,ctrl,S,21\n"
    "2,5,90,.,0,.,0,.,ctrl,S,21\n"
)
CMTS = {1: "trastuzumab", 2: "paclitaxel"}


def test_nonmem_round_trip(tmp_path):
    table, regs = read_nonmem(write(tmp_path, NM_GOOD, "nm.csv"), cmt_drugs=CMTS)
    assert table.subject.tolist() == ["1", "1", "1", "2", "2"]
    assert table.day.tolist() == [-2, 0, 10, 0, 5]
    assert table.volume_mm3.tolist() == [40, 55, 0, 70, 90]
    assert table.arm.tolist() == ["trast"] * 3 + ["ctrl"] * 2
    assert table.study.tolist() == ["S"] * 5 and table.extra["WT"].tolist()[-1] == "21"
    assert table.line.tolist() == [2, 4, 8, 9, 10]
    assert list(regs) == ["1", "2"] and regs["2"].lines == () and regs["1"].name == "1"
    l0, l1 = regs["1"].lines
    assert (l0.drug, l0.dose, l0.dose_unit, l0.start_day, l0.infusion_hours) == (
        "trastuzumab",
        0.2,
        "mg",
        0.0,
        0.0,
    )
    assert (l1.drug, l1.dose, l1.start_day) == ("paclitaxel", 0.3, 7.0)
    assert l1.infusion_hours == pytest.approx(12.0)
    batch = make_batch(table, regs)
    assert batch.drugs == ("trastuzumab", "paclitaxel")
    np.testing.assert_allclose(batch.schedule.duration_day[0], [0.0, 0.5])
    np.testing.assert_allclose(batch.schedule.amount_mg[0], [0.2, 0.3])
    assert not batch.schedule.mask[1].any()
    np.testing.assert_array_equal(batch.censored[0], [False, False, True])


def test_nonmem_hours_addl_defaults_and_comments(tmp_path):
    text = (
        "#ID,TIME,DV,AMT,EVID,RATE,ADDL,II\n"
        "# a comment row\n"
        "a,0,10,.,0,.,.,.\n"
        "a,24,.,4,1,2,2,168\n"  # 3 doses weekly, 2 h infusions (4 mg at 2 mg/h)
        "a,48,12,,0,,,\n"
    )
    table, regs = read_nonmem(
        write(tmp_path, text, "hours.csv"), time_unit="hour", amount_unit="mg/kg"
    )
    assert table.day.tolist() == [0.0, 2.0] and table.arm.tolist() == ["nonmem"] * 2
    assert table.study.tolist() == ["hours"] * 2
    (line,) = regs["a"].lines
    assert (line.drug, line.dose_unit, line.start_day, line.interval_day, line.n_doses) == (
        "trastuzumab",
        "mg/kg",
        1.0,
        7.0,
        3,
    )
    assert line.infusion_hours == pytest.approx(2.0)


@pytest.mark.parametrize(
    "row,column,value,words",
    [
        ("1,3,.,.,3,.,0,.,trast,S,20", "EVID", 3, "EVID 3 (reset) is not supported"),
        ("1,3,.,5,4,1,0,.,trast,S,20", "EVID", 4, "EVID 4 (reset) is not supported"),
        ("1,3,.,.,7,.,0,.,trast,S,20", "EVID", 7, "unknown EVID"),
        ("1,3,.,5,1,3,1,.,trast,S,20", "CMT", 3, "no drug for this dose compartment"),
        ("1,3,.,5,1,1,1,-2,trast,S,20", "RATE", -2.0, "(RATE -1/-2) is not supported"),
        ("1,3,.,-5,1,1,1,.,trast,S,20", "AMT", -5.0, "negative dose amount"),
        ("1,3,.,x,1,1,1,.,trast,S,20", "AMT", "x", "not a number"),
        ("1,3,big,.,0,.,0,.,trast,S,20", "DV", "big", "not a number"),
        ("1,3,.,.,0,.,0,.,trast,S,20", "DV", ".", "not a number"),
        ("1,3,-1,.,0,.,0,.,trast,S,20", "DV", "-1", "negative volume"),
        ("1,inf,1,.,0,.,0,.,trast,S,20", "TIME", "inf", "not a finite number"),
        (",3,1,.,0,.,0,.,trast,S,20", "ID", "", "empty ID"),
        ("1,3,.,5,1,1,1,.,ctrl,S,20", "ARM", "ctrl", "subject '1' is in two arms: 'trast'"),
        ("1,3,1,.,0,.,0,.,trast,T,20", "STUDY", "T", "subject '1' is in two studies: 'S'"),
        ("1,0,56,.,0,.,0,.,trast,S,20", "TIME", 0.0, "(lines 4 and 11)"),
    ],
)
def test_nonmem_refusals(tmp_path, row, column, value, words):
    path = write(tmp_path, NM_GOOD + row + "\n", "nm.csv")
    err, msg = refusal(lambda p: read_nonmem(p, cmt_drugs=CMTS), path)
    assert words in msg
    check(err, msg, line=11, column=column, value=value)


@pytest.mark.parametrize(
    "row,column,value,words",
    [
        ("1,1e9,5,.,0,.,0,.,trast,S,20", "TIME", 1e9, "day beyond the plausible horizon"),
        ("1,3,5e7,.,0,.,0,.,trast,S,20", "DV", 5e7, "volume above the plausible maximum"),
        ("1,5000,.,1,1,1,1,.,trast,S,20", "TIME", "5000", "first dose beyond the plausible"),
        ("1,3,.,5,1,1,1,0.1,trast,S,20", "RATE", "0.1", "infusions overlap"),
    ],
)
def test_nonmem_implausible_values_and_overlapping_infusions(tmp_path, row, column, value, words):
    header, body = NM_GOOD.split("\n", 1)
    text = header + ",ADDL,II\n" + "".join(r + ",.,.\n" for r in body.splitlines())
    row = row + (",2,1" if column == "RATE" else ",.,.")  # RATE 0.1: a 50-day infusion
    err, msg = refusal(lambda p: read_nonmem(p, cmt_drugs=CMTS), write(tmp_path, text + row
                                                                       + "\n", "nm.csv"))
    assert words in msg
    check(err, msg, line=11, column=column, value=value)


def test_nonmem_hours_duplicates_and_adc_payload(tmp_path):
    text = ("ID,TIME,DV,AMT,EVID,CMT\n1,0,50,.,0,.\n1,0,.,360,1,1\n1,24,60,.,0,.\n"
            "1,24,64,.,0,.\n1,48,70,.,0,.\n")
    path = write(tmp_path, text, "nm.csv")
    err, msg = refusal(lambda p: read_nonmem(p, time_unit="hour"), path)
    assert "duplicate measurement of subject '1' on day 1 (lines 4 and 5)" in msg
    check(err, msg, line=5, column="TIME", value=1.0)
    with pytest.warns(DataWarning, match="resolved by --duplicates mean"):
        table, regs = read_nonmem(path, time_unit="hour", duplicates="mean",
                                  cmt_drugs={1: "T-DM1"})
    assert table.day.tolist() == [0.0, 1.0, 2.0] and table.volume_mm3.tolist() == [50, 62, 70]
    assert regs["1"].drugs == ("trastuzumab_emtansine", "dm1")


def test_nonmem_addl_without_ii_is_relocated(tmp_path):
    text = "ID,TIME,DV,AMT,EVID,ADDL\n1,0,5,.,0,.\n1,0,.,2,1,3\n"
    err, msg = refusal(read_nonmem, write(tmp_path, text))
    assert "repeated doses need an interval" in msg
    check(err, msg, line=3, column="II", value=0.0)


def test_nonmem_file_checks_and_options(tmp_path):
    for text, words in [
        ("", "file is empty"),
        ("ID,TIME,DV,AMT,EVID\n", "no data rows"),
        (b"\x89PNG\x00", "not a text file"),
        ("ID,TIME,DV,EVID\n1,0,1,0\n", "missing required column"),
        ("ID,TIME,DV,AMT,EVID\n1,0,1,.\n", "row has 4 fields"),
        ("ID,TIME,DV,AMT,EVID\n1,0,.,5,1\n", "no observation rows"),
        ("ID,TIME,DV,AMT,EVID,SS\n1,0,.,5,1,1\n", "steady-state doses (SS)"),
    ]:
        err, msg = refusal(read_nonmem, write(tmp_path, text))
        assert words in msg
    good = write(tmp_path, NM_GOOD)
    with pytest.raises(DataError, match="unknown time unit"):
        read_nonmem(good, time_unit="week")
    with pytest.raises(DataError, match="unknown amount unit"):
        read_nonmem(good, amount_unit="ug")
    with pytest.raises(RegimenError, match="unknown drug for compartment 2"):
        read_nonmem(good, cmt_drugs={1: "trastuzumab", 2: "snake oil"})


def test_read_volumes_one_reader_with_its_options(tmp_path):
    nm = write(tmp_path, NM_GOOD.replace("1,7,.,0.3,1,2,1,0.6", "1,168,.,0.3,1,2,1,0.025")
               .replace("1,10,0", "1,240,0").replace("2,5,90", "2,120,90"), "nm.csv")
    got = read_volumes(nm, cmt_drugs=CMTS, time_unit="hour")
    assert got.kind == "nonmem" and got.regimen_source == "NONMEM dose records"
    assert got.table.day.tolist() == [-2 / 24, 0.0, 10.0, 0.0, 5.0]  # hours -> days
    (_, line), = [ln for ln in enumerate(got.regimens["1"].lines) if ln[1].drug == "paclitaxel"]
    assert line.start_day == 7.0 and line.infusion_hours == pytest.approx(12.0)
    with pytest.raises(DataError, match="carry their own doses"):
        read_volumes(nm, nm)
    tidy = write(tmp_path, GOOD, "tidy.csv")
    got = read_volumes(tidy, write(tmp_path, REG_GOOD, "reg.csv"))
    assert got.kind == "tidy" and got.regimen_source.startswith("regimen table ")
    assert set(got.regimens) == {"ctrl", "trast", "combo"}
    assert read_volumes(tidy).regimens is None
    for option in (dict(time_unit="hour"), dict(amount_unit="mg/kg"),
                   dict(cmt_drugs={1: "paclitaxel"})):
        with pytest.raises(DataError, match="applies to NONMEM event data only") as info:
            read_volumes(tidy, **option)
        assert info.value.file == str(tidy) and info.value.column.startswith("--")
    assert read_volumes(tidy, time_unit="day").table.n_rows == 6  # the tidy unit: harmless
    with pytest.raises(DataError, match="not a tumour-volume file"):
        read_volumes(write(tmp_path, REG_GOOD, "r.csv"))


# --------------------------------------------------------------------- data_dir


def test_data_dir_resolution(tmp_path, monkeypatch):
    default = data_dir()
    assert default == pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
    monkeypatch.setenv("FITCSC_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert data_dir(other) == other  # explicit override beats the environment
    monkeypatch.setenv("FITCSC_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"\$FITCSC_DATA_DIR does not exist"):
        data_dir()
    with pytest.raises(DataError, match="data directory does not exist"):
        data_dir(tmp_path / "nowhere")


# ------------------------------------------------------------- public datasets


def test_pdxe_brca_public_dataset():
    table = read_tidy_csv(data_dir() / "pdxe_brca" / "pdxe_brca_tumor_volume.csv")
    assert table.n_rows == 12717 and len(table.subjects) == 849 and len(table.arms) == 22
    assert len(set(table.extra["pdx_line"].tolist())) == 43
    assert "trastuzumab" in table.arms and "untreated" in table.arms
    batch = make_batch(table)
    assert batch.n_subjects == 849 and int(batch.mask.sum()) == 12717
    assert int(batch.censored.sum()) == int(table.censored().sum()) > 0
    assert np.all(np.diff(np.asarray(batch.day), axis=1) >= 0)  # sorted, padding repeats


def test_mas98_06_public_dataset():
    table = read_tidy_csv(data_dir() / "mas98_06_pdx" / "mas98_06_tumor_volume.csv")
    # The README says "52 mice in all", but its own per-arm counts sum to 57: so does the file.
    assert len(table.subjects) == 57 and len(table.arms) == 10 and table.n_rows == 882
    assert table.day.min() == -125 and (table.day < 0).sum() == 441
    zeros = table.volume_mm3 == 0
    assert zeros.sum() == 180
    batch = make_batch(table)
    assert int(batch.censored.sum()) == int(table.censored().sum()) >= 180
    assert float(batch.t0_day.min()) == -125.0
    assert np.all(np.asarray(batch.volume_mm3)[np.asarray(batch.censored)] == 1.0)
    # the treatment window (day >= 0): TidyTable.select keeps every column aligned
    window = table.select(table.day >= 0)
    assert window.n_rows == 441 and len(window.subjects) == 57 and window.day.min() == 0
    for name, col in window.extra.items():
        assert col.shape == (441,), name
    keep = np.nonzero(table.day >= 0)[0]
    assert np.array_equal(window.line, table.line[keep])
    assert np.array_equal(window.extra["trastuzumab"], table.extra["trastuzumab"][keep])
    with pytest.raises(ValueError, match="mask of shape"):
        table.select(np.ones(3, bool))


def test_vaghi2020_public_dataset():
    table = read_tidy_csv(data_dir() / "vaghi2020_untreated" / "vaghi2020_tumor_volume.csv")
    assert len(table.subjects) == 86 and table.arms == ("control",) and table.n_rows == 771
    assert make_batch(table).n_subjects == 86
