"""``fitcsc data validate``: summaries, exit codes and one-line refusals."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from fitcsc.cli import main

REPO = pathlib.Path(__file__).resolve().parents[1]
TIDY = (
    "study,arm,subject,day,volume_mm3\n"
    "S,ctrl,m1,-2,0\nS,ctrl,m1,3,50\nS,trast,m2,0,40\nS,trast,m2,7,0.5\n"
)
REGIMEN = (
    "arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours,notes\n"
    "ctrl,none,,,,,,,\ntrast,trastuzumab,10,mg/kg,0,7,3,0,weekly\n"
    "trast,paclitaxel,15,mg/kg,0,7,2,1,\n"
)
NONMEM = "ID,TIME,DV,AMT,EVID,CMT,MDV\n1,0,10,.,0,.,0\n1,0,.,2,1,1,1\n1,24,20,.,0,.,0\n"


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.setenv("FITCSC_DATA_DIR", "")
    monkeypatch.delenv("FITCSC_DATA_DIR")  # restored to "unset": main() may set it


def write(tmp_path, text, name) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_tidy(tmp_path, capsys):
    code, out, err = run(capsys, "data", "validate", str(write(tmp_path, TIDY, "v.csv")))
    assert code == 0 and err == ""
    assert out == "OK tidy: 2 subjects, 2 arms, 4 observations (2 censored), days -2..7\n"
    code, out, _ = run(
        capsys, "data", "validate", "--detection-limit-mm3", "0.1", str(tmp_path / "v.csv")
    )
    assert code == 0 and "(1 censored)" in out


def test_validate_regimen_and_nonmem(tmp_path, capsys):
    code, out, _ = run(capsys, "data", "validate", str(write(tmp_path, REGIMEN, "r.csv")))
    assert code == 0
    assert out == (
        "OK regimen: 2 arms, 2 dose lines, 5 doses of 2 drugs (trastuzumab, paclitaxel)\n"
    )
    path = write(tmp_path, NONMEM, "n.csv")
    code, out, _ = run(
        capsys, "data", "validate", str(path), "--time-unit", "hour", "--cmt-drug", "1=paclitaxel"
    )
    assert code == 0
    assert out == (
        "OK nonmem: 1 subject, 1 arm, 2 observations (0 censored), days 0..1, "
        "1 dose line, 1 dose of 1 drug (paclitaxel)\n"
    )


@pytest.mark.parametrize(
    "text,kind,words",
    [
        (
            TIDY.replace("S,trast,m2,0,40", "S,trast,m2,0,-40"),
            "auto",
            "line 4, column 'volume_mm3': negative volume",
        ),
        (
            REGIMEN.replace("mg/kg,0,7,3", "mg/kg,0,0,3"),
            "auto",
            "line 3, column 'interval_day': repeated doses need an interval",
        ),
        (
            NONMEM.replace("1,0,.,2,1,1,1", "1,0,.,2,3,1,1"),
            "auto",
            "line 3, column 'EVID': EVID 3 (reset) is not supported",
        ),
        (TIDY, "regimen", "line 1, column 'drug': missing required column"),
    ],
)
def test_validate_refusals_are_one_line(tmp_path, capsys, text, kind, words):
    path = write(tmp_path, text, "bad.csv")
    code, out, err = run(capsys, "data", "validate", "--kind", kind, str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"fitcsc: error: {path}, ")
    assert words in err and "Traceback" not in err


def test_validate_missing_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "--data-dir", str(tmp_path), "data", "validate", "nope.csv")
    assert code == 2
    assert err == (
        f"fitcsc: error: nope.csv: file not found; expected a file in the current "
        f"directory or in the data directory {tmp_path}\n"
    )


def test_relative_file_found_in_data_dir(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write(data / "sub", TIDY, "v.csv")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, _ = run(capsys, "--data-dir", str(data), "data", "validate", "sub/v.csv")
    assert code == 0 and out.startswith("OK tidy: 2 subjects")
    assert os.environ["FITCSC_DATA_DIR"] == str(data)
    os.environ["FITCSC_DATA_DIR"] = ""
    # the option is accepted after the subcommand too, and FITCSC_DATA_DIR alone works
    code, out, _ = run(capsys, "data", "validate", "sub/v.csv", "--data-dir", str(data))
    assert code == 0 and os.environ["FITCSC_DATA_DIR"] == str(data)
    code, out, _ = run(capsys, "data", "validate", "sub/v.csv")
    assert code == 0


def test_public_dataset_by_relative_path(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # found through the default data directory
    code, out, _ = run(capsys, "data", "validate", "pdxe_brca/pdxe_brca_tumor_volume.csv")
    assert code == 0
    assert out == (
        "OK tidy: 849 subjects, 22 arms, 12717 observations (133 censored), days 0..181\n"
    )


def test_usage_errors(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "required" in err
    code, _, err = run(capsys, "data", "validate", "x.csv", "--kind", "excel")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys, "data", "validate", "x.csv", "--cmt-drug", "trastuzumab")
    assert code == 2 and "CMT=DRUG" in err
    code, out, _ = run(capsys, "data", "validate", "--help")
    assert code == 0 and "--kind" in out


def test_subprocess_exit_codes(tmp_path):
    good = write(tmp_path, TIDY, "good.csv")
    bad = write(tmp_path, TIDY + "S,ctrl,m1,3,60\n", "bad.csv")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FITCSC_DATA_DIR", None)
    cmd = [sys.executable, "-m", "fitcsc.cli", "data", "validate"]
    ok = subprocess.run(
        [*cmd, str(good)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert ok.returncode == 0 and ok.stdout.startswith("OK tidy: 2 subjects"), ok.stderr
    no = subprocess.run(
        [*cmd, str(bad)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert no.returncode == 2 and no.stdout == ""
    assert no.stderr.count("\n") == 1 and "Traceback" not in no.stderr
    assert no.stderr.startswith(f"fitcsc: error: {bad}, line 6, column 'day': duplicate")
