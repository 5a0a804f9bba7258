"""The bad-input corpus (tests/bad_inputs/): every malformed file is refused by
``fitcsc data validate`` (a run configuration: by ``fitcsc fit --config``) with exit
code 2 and one line naming file, line, column (or TOML key), expectation and value; a
legitimate oddity is accepted, with a warning line where it is worth a look.
``expected.csv`` says which, file by file; README.md says why."""

from __future__ import annotations

import csv
import pathlib
import shlex

import pytest

from fitcsc.cli import main

ROOT = pathlib.Path(__file__).resolve().parent / "bad_inputs"
with open(ROOT / "expected.csv", newline="", encoding="utf-8") as _fh:
    CASES = list(csv.DictReader(_fh))
GOOD_REGIMEN = ("arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours\n"
                "x,paclitaxel,10,mg/kg,0,7,2,1\n")


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.setenv("FITCSC_DATA_DIR", "")
    monkeypatch.delenv("FITCSC_DATA_DIR")


def test_corpus_has_40_files_each_documented():
    files = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                   and p.name not in ("README.md", "expected.csv", ".gitattributes"))
    assert len(files) >= 40
    assert files == sorted({c["file"] for c in CASES})  # every file has its expectation
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in files:
        assert f"`{name}`" in readme, name
    kinds = {f.split("/")[0] for f in files}
    assert kinds == {"tidy", "regimen", "nonmem", "catalogue", "config"}
    assert sum(k.startswith("config/") for k in files) >= 5


@pytest.mark.parametrize("case", CASES, ids=[f"{c['file']} {c['args']}".strip() for c in CASES])
def test_corpus_file(case, tmp_path, capsys):
    path = ROOT / case["file"]
    args = shlex.split(case["args"])
    if args[:1] == ["catalogue"]:  # a drug catalogue: loaded before validating a regimen
        regimen = tmp_path / "regimen.csv"
        regimen.write_text(GOOD_REGIMEN, encoding="utf-8")
        code = main(["--drug-catalogue", str(path), "data", "validate", str(regimen)])
    elif args[:1] == ["config"]:  # a TOML run configuration of the command args[1]
        code = main([args[1], "--config", str(path)])
    else:
        code = main(["data", "validate", str(path), *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if case["outcome"] == "refused":
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith(f"fitcsc: error: {path}")
        if case["line"]:
            assert f", line {case['line']}" in err
        if case["column"]:
            where = "key" if args[:1] == ["config"] else "column"
            assert f"{where} '{case['column']}': " in err
        assert "; expected " in err
        if case["value"]:
            assert err.rstrip("\n").endswith(f", got {case['value']}")
    else:
        assert code == 0 and out.startswith("OK ")
        lines = err.splitlines()
        assert all(ln.startswith("fitcsc: warning: ") for ln in lines)
        assert bool(lines) == (case["outcome"] == "warned")
        assert all(str(path) in ln for ln in lines)
    assert case["words"] in err
