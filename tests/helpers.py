"""Shared test helpers (imported by test modules; fixtures live in conftest.py).

The synthetic CSC set-up of the fit tests: five mice under trastuzumab, known
parameters (`TRUE`), their noise-free volumes and the user's path into a batch (a tidy
CSV, then `make_batch`), and batches spoilt on purpose (`bad_batches`). The checks of
a job's report.md (`check_report`, `check_fit_report`, `check_sample_report`).
"""

from __future__ import annotations

import csv
import json
import re
import shutil

import equinox as eqx
import jax.numpy as jnp
import matplotlib.image
import numpy as np

import fitcsc
from fitcsc._io.data import make_batch, read_tidy_csv
from fitcsc._jobs.report import SECTIONS, cell, job_kind
from fitcsc._status import FitStatus
from fitcsc.cli import main

MODEL = fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab",), species="mouse")
REF = fitcsc.default_params(MODEL, carrying_capacity_cells=5e9, bulk_death_rate=0.2,
                            initial_csc_fraction=0.1, csc_division_rate=0.4,
                            self_renewal=0.7, her2_efficacy_csc=0.5, her2_efficacy_bulk=0.8)
SPEC = fitcsc.ParamSpec({"csc_division_rate": fitcsc.Positive(),
                         "self_renewal": fitcsc.Interval(0.5, 1.0),
                         "her2_efficacy_csc": fitcsc.Interval(0.0, 1.0)}, REF)
FREE = ("csc_division_rate", "self_renewal", "her2_efficacy_csc", "initial_volume_mm3")
DAYS = np.array([-7.0, -4, 0, 3, 7, 10, 14, 21, 28, 35])  # treatment from day 0
LIMIT = 5.0  # detection limit [mm3]
TRUE = np.array([[0.30, 0.68, 0.30, 80.0], [0.35, 0.72, 0.40, 90.0],
                 [0.40, 0.75, 0.50, 100.0], [0.45, 0.78, 0.60, 110.0],
                 [0.40, 0.55, 0.95, 60.0]])  # the last one: complete response (zeros late)
REGIMEN = fitcsc.Regimen((fitcsc.DoseLine("trastuzumab", 10.0, "mg/kg", n_doses=5,
                                          interval_day=7.0),))
NOISE_SD = 0.05
NUM_STARTS = 4


def true_volumes():
    sched = REGIMEN.to_schedule(MODEL.drugs, species="mouse")
    out = []
    for row in TRUE:
        p = eqx.tree_at(lambda q: [getattr(q, n) for n in FREE], REF,
                        [jnp.asarray(v) for v in row])
        out.append(fitcsc.simulate(MODEL, p, sched, jnp.asarray(DAYS), t0=DAYS[0]).volume_mm3)
    return np.asarray(out)


def write_batch(path, volumes, days, regimens=None, limit=LIMIT):
    """Through the user's path: a tidy CSV (volume 0 below the limit), then make_batch."""
    lines = ["study,arm,subject,day,volume_mm3"]
    arm = "trastuzumab" if regimens else "control"
    for i, (d_row, v_row) in enumerate(zip(days, volumes, strict=True)):
        for d, v in zip(d_row, v_row, strict=True):
            lines.append(f"syn,{arm},m{i},{float(d)},{0.0 if v < limit else float(v)}")
    path.write_text("\n".join(lines) + "\n")
    return make_batch(read_tidy_csv(path), regimens, detection_limit_mm3=limit)



def bad_batches(batch, k):
    """``{expected status: batch with subject k spoilt}``."""
    return {
        # observations 10,000 times later: the solver reaches the predictor's max_steps
        FitStatus.SOLVER_FAILURE: eqx.tree_at(lambda b: b.day, batch,
                                              batch.day.at[k].multiply(1e4)),
        FitStatus.NONFINITE: eqx.tree_at(lambda b: b.volume_mm3, batch,
                                         batch.volume_mm3.at[k, 3].set(jnp.nan)),
    }


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


def csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_fit_report(out, tmp_path) -> str:
    """A `fitcsc fit` folder's report (`check_report`): the data overview counts
    subjects, arms, observations and censored ones as fits.csv and predictions.csv do;
    every estimated parameter is summarised per arm and over all arms, with its unit."""
    text = check_report(out, "fit", tmp_path, figures=(
        "fits_by_arm.png", "fits_subjects.png", "observed_vs_predicted.png",
        "residuals.png", "multistart.png"))
    fits, preds = csv_rows(out / "fits.csv"), csv_rows(out / "predictions.csv")
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
    for r in csv_rows(out / "summary.csv"):  # every population variable, with its mean
        row = [x for x in lines if x.startswith(f"| {cell(r['name'])} |")]
        assert len(row) == 1 and f"| {float(r['mean']):.3g} |" in row[0], r["name"]
    if min(c["ess_bulk_min"], c["ess_tail_min"]) < 400:
        assert "smallest ESS" in text  # few effective draws are flagged
    return text
