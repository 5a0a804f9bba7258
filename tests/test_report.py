"""Reports (`fitcsc._jobs.report`): every job writes report.md with its sections and figures,
and `fitcsc report DIR` rebuilds it byte for byte from the folder's files.

The checks run on the quick jobs the job tests already run (no job runs twice in CI):
`check_fit_report` in tests/test_fit_cli.py, `check_sample_report` in
tests/test_sample_cli.py, `check_report` on the run of tests/test_run_cli.py and the
prediction of tests/test_predict.py. Refusals are tested here.
"""

from __future__ import annotations

import json

import pytest

from fitcsc.cli import main


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")  # keep the test session's JAX config


def test_report_refuses_other_folders(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps(
        {"job": "simulation of the published regimens (illustrative parameters, not fitted)"}))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "summary.json" in err and "'job'" in err
    (tmp_path / "summary.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such file" in err
    # a fit folder that lost a file its report needs: that file named, exit 2
    (tmp_path / "summary.json").write_text(json.dumps(
        {"job": "per-subject maximum-likelihood fits (exponential)"}))
    assert main(["report", str(tmp_path)]) == 2
    assert "fits.csv: no such file" in capsys.readouterr().err
