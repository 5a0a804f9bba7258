"""Reports (`fitcsc._report`): every job writes report.md with its sections and figures,
and `fitcsc report DIR` rebuilds it byte for byte from the folder's files.

The checks run on the quick jobs the job tests already run (no job runs twice in CI):
`check_fit_report` in tests/test_fit_cli.py, `check_sample_report` in
tests/test_sample_cli.py, `check_report` on the run of tests/test_run_cli.py and the
prediction of tests/test_predict.py. Refusals are tested here.
"""

from __future__ import annotations

import csv
import json
import re
import shutil

import matplotlib.image
import pytest

from fitcsc._report import SECTIONS, cell, job_kind
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


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_fit_report(out, tmp_path) -> str:
    """A `fitcsc fit` folder's report (`check_report`): the data overview counts
    subjects, arms, observations and censored ones as fits.csv and predictions.csv do;
    every estimated parameter is summarised per arm and over all arms, with its unit."""
    text = check_report(out, "fit", tmp_path, figures=(
        "fits_by_arm.png", "fits_subjects.png", "observed_vs_predicted.png",
        "residuals.png", "multistart.png"))
    fits, preds = _csv(out / "fits.csv"), _csv(out / "predictions.csv")
    arms = sorted({r["arm"] for r in fits})
    n_cens = sum(p["censored"] == "1" for p in preds)
    assert (f"{len(fits)} subjects in {len(arms)} arms" in text
            and f"{len(preds)} observations, {n_cens} left-censored" in text)
    for a in arms:
        mine = [p for p in preds if p["arm"] == a]
        n_sub = len({r["subject"] for r in fits if r["arm"] == a})
        assert f"| {a} | {n_sub} | {len(mine)} | {sum(p['censored'] == '1' for p in mine)} |" \
            in text, a
    params = [h for h in fits[0] if f"{h}_se" in fits[0]]
    assert params
    for name in params:
        got = {r["arm"] for r in fits if r[name] != "" and r["status"] in (
            "converged", "max_steps")}
        for a in [*got, "all arms"] if len(got) > 1 else got:
            assert re.search(rf"\| {re.escape(name)}( \[[^\]]+\])? \| {a} \| \d+ \|", text), (
                name, a)
    assert "| growth_rate [1/day] |" in text or "growth_rate" not in params
    assert "| initial_volume_mm3 [mm3] |" in text
    summary = json.loads((out / "summary.json").read_text())
    assert ("quick run" in text) == summary["quick"]  # a smoke run says so
    return text


def check_sample_report(out, tmp_path) -> str:
    """A `fitcsc sample` folder's report: per-arm curves, observations and censoring;
    R-hat, ESS and divergences; every row of summary.csv in the parameter table."""
    text = check_report(out, "sample", tmp_path, figures=(
        "trace_rank.png", "pair.png", "forest.png", "ppc.png", "vpc.png"))
    s = json.loads((out / "summary.json").read_text())
    assert sum(v["curves"] for v in s["arms"].values()) == s["n_curves"]
    assert sum(v["censored"] for v in s["arms"].values()) == s["n_censored"]
    for a, v in s["arms"].items():
        assert f"| {a} | {v['curves']} | {v['observations']} | {v['censored']} |" in text
    c = s["convergence"]
    assert "max R-hat" in text and (f"{c['n_divergent']} divergent transitions in "
                                    f"{c['n_draws']} draws") in text
    lines = text.splitlines()
    for r in _csv(out / "summary.csv"):  # every population variable, with its mean
        row = [x for x in lines if x.startswith(f"| {cell(r['name'])} |")]
        assert len(row) == 1 and f"| {float(r['mean']):.3g} |" in row[0], r["name"]
    if min(c["ess_bulk_min"], c["ess_tail_min"]) < 400:
        assert "smallest ESS" in text  # few effective draws are flagged
    return text


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
