"""Reports (`fitcsc._report`): every job writes report.md with its sections and figures,
and `fitcsc report DIR` rebuilds it byte for byte from the folder's files.

The fit and sample jobs run here (baseline models, quick settings: seconds); the run and
predict reports are checked on the quick runs of tests/test_run_cli.py and
tests/test_predict.py (`check_report`), so no job runs twice.
"""

from __future__ import annotations

import json
import re
import shutil

import matplotlib.image
import pytest

from fitcsc._report import SECTIONS, job_kind
from fitcsc.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")  # keep the test session's JAX config


def check_report(out, kind, tmp_path, *, figures=()) -> str:
    """report.md of ``out``: every section, every linked image a PNG beside it (and
    ``figures`` among them), a summary.json of ``kind``; `fitcsc report` on a copy
    without report.md and the report's own figures gives the same text. **Returns:**
    the report."""
    text = (out / "report.md").read_text()
    at = [text.index(s + "\n") for s in SECTIONS]  # each section once, in order
    assert at == sorted(at), at
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(figures) <= set(links), (figures, links)
    for name in links:
        assert "/" not in name, name  # relative, beside report.md
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert matplotlib.image.imread(out / name).shape[0] > 100, name
    assert "not written by the job" not in text
    assert job_kind(json.loads((out / "summary.json").read_text())) == kind
    copy = tmp_path / f"rebuilt_{kind}"
    shutil.copytree(out, copy)
    (copy / "report.md").unlink()
    for name in ("pcr_fit.png", "fits_by_arm.png"):  # drawn by the report itself
        if (copy / name).exists():
            (copy / name).unlink()
    assert main(["--quiet", "report", str(copy)]) == 0
    assert (copy / "report.md").read_text() == text
    for name in links:
        assert (copy / name).is_file(), name
    return text


def _volumes(tmp_path):
    """Two arms of three mice, one regressing below the detection limit (censored)."""
    lines = ["study,arm,subject,day,volume_mm3"]
    for i in range(6):
        arm, rate = ("control", 0.06) if i < 3 else ("paclitaxel", -0.03 - 0.17 * (i == 5))
        for d in range(0, 29, 4):
            v = 100 * 2.718281828 ** (rate * d + 0.05 * ((i * 7 + d) % 5 - 2))
            lines.append(f"syn,{arm},m{i},{d},{0.0 if v < 1 else v:.3f}")
    path = tmp_path / "volumes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fit_report(tmp_path):
    out = tmp_path / "fit"
    assert main(["--quiet", "fit", "--data", str(_volumes(tmp_path)), "--out", str(out),
                 "--model", "exponential", "--quick", "--no-progress"]) == 0
    text = check_report(out, "fit", tmp_path, figures=(
        "fits_by_arm.png", "fits_subjects.png", "observed_vs_predicted.png",
        "residuals.png", "multistart.png"))
    # data overview: both arms, the censored observation counted
    assert "6 subjects in 2 arms" in text and "48 observations, 2 left-censored" in text
    # parameters summarised per arm and over all arms, with units
    for arm in ("control", "paclitaxel", "all arms"):
        assert f"| growth_rate [1/day] | {arm} |" in text, arm
    assert "| initial_volume_mm3 [mm3] | control | 3 |" in text
    assert "quick run" in text  # a smoke run says so


def test_sample_report(tmp_path):
    out = tmp_path / "sample"
    assert main(["--quiet", "sample", "--data", str(_volumes(tmp_path)), "--out", str(out),
                 "--model", "exponential", "--quick"]) == 0
    text = check_report(out, "sample", tmp_path, figures=(
        "trace_rank.png", "pair.png", "forest.png", "ppc.png", "vpc.png"))
    assert "| control | 3 | 24 | 0 |" in text and "| paclitaxel | 3 | 24 | 2 |" in text
    assert "max R-hat" in text and "divergent transitions in 160 draws" in text
    rows = (out / "summary.csv").read_text().splitlines()[1:]
    for r in rows:  # every population variable in the parameter table
        assert f"| {r.split(',')[0]} |" in text
    assert "smallest ESS" in text  # 160 draws: fewer than 400 effective ones, flagged


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
