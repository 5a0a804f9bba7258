"""The main job (`fitcsc run`: a fit of the embedded published pCR counts, with its report)
and `fitcsc simulate` (the regimens with illustrative parameters), through the CLI."""

import csv
import json
import math

import pytest
from helpers import check_report

from fitcsc import cli


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run_quick")
    code = cli.main(["--quiet", "run", "--quick", "--out", str(out)])
    return code, out


def test_run_fits_the_embedded_data_and_writes_a_report(quick_run):
    code, out = quick_run
    assert code == 0
    for name in ("report.md", "fit.json", "arms.csv", "posterior.csv", "pcr_fit.png",
                 "summary.json"):
        assert (out / name).stat().st_size > 0, name
    s = json.loads((out / "summary.json").read_text())
    assert s["n_arms"] == 4 and s["data"]["n_patients"] == 107 + 107 + 107 + 96  # NeoSphere
    assert s["precision"] == "float64" and "jax" in s["versions"]
    assert any("quick run" in w for w in s["warnings"])  # a smoke run says so
    # the default posterior: Laplace draws with predictions linearised at the MAP (the
    # delta method): no sampler diagnostic, so nothing to flag, and the report says so
    post = json.loads((out / "fit.json").read_text())["posterior"]
    assert s["posterior"]["sampler"] == post["sampler"] == "linear"
    assert s["psis_k_hat"] is None and post["flag"] is None
    report = (out / "report.md").read_text()
    for section in ("## Data", "## Model and settings", "## Fit", "## Parameters",
                    "## Warnings", "pcr_fit.png",
                    "Posterior (linear): no diagnostic (delta method",
                    "between-trial sd of the trial effects (log burden) 1;", "(given)",
                    # a quick run has no leave-one-trial-out record, and says so
                    "Out of sample: this fit has no configuration record"):
        assert section in report, section
    # the parameter table: one row per fitted parameter, on the natural scale
    fit = json.loads((out / "fit.json").read_text())
    for name in fit["names"]:
        assert f"| {name} |" in report, name
    # in sample, the four NeoSphere arms (29.0, 45.8, 16.8, 24.0% published) are fitted
    # within 10 points, and each MAP lies inside its own 95% interval
    with open(out / "arms.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        assert abs(float(r["predicted_pct"]) - float(r["observed_pct"])) < 10.0, r
        assert float(r["predicted_lo95"]) <= float(r["predicted_pct"]) + 1e-6
        assert float(r["predicted_pct"]) <= float(r["predicted_hi95"]) + 1e-6


def test_run_fits_the_pcr_outcome_links_by_default(quick_run):
    """The published HER2+ hazard ratios of pCR vs no pCR enter the main fit (pooled over
    the trastuzumab-treated arms), with the two parameters they inform free; summary and
    report show each one, published beside fitted."""
    from fitcsc.trials import load_links, load_pcr

    _, out = quick_run
    fit = json.loads((out / "fit.json").read_text())
    assert {"log_micromet_cells#neoadjuvant", "logit_protected_fraction"} <= set(fit["names"])
    s = json.loads((out / "summary.json").read_text())
    assert [r["link"] for r in s["pcr_outcome_links"]] == ["Li 2022 meta-analysis (EFS)",
                                                           "CHER-LOB (RFS)"]
    for r in s["pcr_outcome_links"]:
        assert r["published_lo95"] < r["published_hr"] < r["published_hi95"]
        assert r["fitted_lo95"] <= r["fitted_hr"] + 1e-9 <= r["fitted_hi95"] + 2e-9
        # the HR is the ratio of the two groups' cumulative hazards at the horizon, and a
        # link met where the no-pCR patients have (almost) no events is flagged
        efs_p, efs_n = (min(max(r[k], 1e-12), 1 - 1e-12)
                        for k in ("fitted_efs_pcr", "fitted_efs_no_pcr"))
        assert r["fitted_hr"] == pytest.approx(math.log(efs_p) / math.log(efs_n), rel=1e-6)
        assert r["degenerate"] == (1.0 - r["fitted_efs_no_pcr"] < 0.01)
    assert any("link met only where events vanish" in w for w in s["warnings"]) == any(
        r["degenerate"] for r in s["pcr_outcome_links"])
    # the link holds at the event rates the trials saw: NeoSphere's 5-yr DFS in the fit
    assert [(r["arm"], r["course"], r["published"]) for r in s["neoadjuvant_landmarks"]] == [
        ("NS-A", "NEOSPHERE-TH-FULL", 0.81), ("NS-B", "NEOSPHERE-THP-FULL", 0.84),
        ("NS-C", "NEOSPHERE-HP-FULL", 0.80), ("NS-D", "NEOSPHERE-TP-FULL", 0.75)]
    for r in s["neoadjuvant_landmarks"]:
        assert 0 <= r["fitted_lo95"] <= r["fitted"] * (1 + 1e-6) <= r["fitted_hi95"] * (1 + 2e-6)
    report = (out / "report.md").read_text()
    assert "| NS-A | NEOSPHERE-TH-FULL | 5 | 107 | 81.0 |" in report
    assert "pCR vs no pCR among treated patients" in report
    assert "| CHER-LOB (RFS) | 5 | 0.12 (0.03-0.48) |" in report
    arms, _ = load_pcr(trials=("NeoSphere",))
    links = load_links(arms)
    # every NeoSphere arm has a HER2 blocker (NS-D: pertuzumab alone with docetaxel)
    assert all(set(k.arms) == {"NS-A", "NS-B", "NS-C", "NS-D"} for k in links)
    chemo_only, _ = load_pcr(trials=("MDACC",))
    assert [a.name for a in chemo_only if a.name == "BUZ-C"] == ["BUZ-C"]
    assert all("BUZ-C" not in k.arms for k in load_links(chemo_only))
    assert load_links([a for a in chemo_only if a.name == "BUZ-C"]) == []


def test_run_hyper_auto_chooses_the_prior_sds_by_marginal_likelihood(tmp_path):
    """``--hyper auto``: the three prior sds from the grid, the evidence profile in
    summary.json, the fit saved at the chosen values, and the report says how."""
    from fitcsc.trials import HYPER_SD_GRID

    out = tmp_path / "auto"
    assert cli.main(["--quiet", "run", "--quick", "--hyper", "auto", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    m, ev = s["model"], s["model"]["hyper_evidence"]
    assert m["hyper_choice"] == "largest Laplace marginal likelihood"
    assert set(ev["chosen"]) == {"trial_sd", "her2_drug_sd", "chemo_drug_sd"}
    for h, v in ev["chosen"].items():
        assert any(abs(v - g) < 1e-12 for g in HYPER_SD_GRID), (h, v)
        assert m[h] == v
        # the chosen value is where its profile peaks
        best = max(ev["profile"][h], key=lambda row: row[1])
        assert abs(best[0] - v) < 1e-12 and abs(best[1] - ev["log_evidence"]) < 1e-9
    assert json.loads((out / "fit.json").read_text())["hyper"]["trial_sd"] == m["trial_sd"]
    assert "largest Laplace marginal likelihood" in (out / "report.md").read_text()


def test_run_folder_is_a_fit_predict_can_use(quick_run, tmp_path, capsys):
    _, out = quick_run
    reg = tmp_path / "trial.csv"
    reg.write_text("arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours\n"
                   "TH,docetaxel,75,mg/m2,0,21,4,1\n"
                   "TH,trastuzumab,6,mg/kg,0,21,4,1.5\n")
    code = cli.main(["--quiet", "predict", "--fit", str(out), "--regimens", str(reg),
                     "--out", str(tmp_path / "pred"), "--draws", "64"])
    assert code == 0
    with open(tmp_path / "pred" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(0.0 <= float(r["pcr_map"]) <= 1.0 for r in rows)
    # this fit holds no outcome data: DFS is refused, in one line, exit 2
    capsys.readouterr()
    code = cli.main(["--quiet", "predict", "--fit", str(out), "--regimens", str(reg),
                     "--out", str(tmp_path / "pred2"), "--years", "5"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no adjuvant data" in err


def test_simulate_writes_the_regimens(tmp_path):
    out = tmp_path / "sim"
    assert cli.main(["--quiet", "simulate", "--quick", "--out", str(out)]) == 0
    with open(out / "arms.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    s = json.loads((out / "summary.json").read_text())
    assert s["n_failed"] == 0 and s["n_arms"] == len(rows)


def test_report_rebuilds_the_run_report(quick_run, tmp_path):
    _, out = quick_run
    text = check_report(out, "run", tmp_path, figures=("pcr_fit.png",))
    with open(out / "arms.csv", newline="") as fh:  # every arm in the predictive check
        for r in csv.DictReader(fh):
            assert f"| {r['trial']} | {r['arm_id']} | {r['pcr_definition']} |" in text


@pytest.mark.slow
def test_run_with_mcmc_saves_chains_that_predict_uses(tmp_path, capsys):
    """`fitcsc run --posterior chees` (small: 2 chains, 10 warm-up steps, 40 draws): the
    draws, their R-hat, ESS and divergences are saved with the fit and stated in the
    report; `fitcsc predict` from it states them too, and shows the flag when raised."""
    out = tmp_path / "run"
    code = cli.main(["--quiet", "run", "--quick", "--out", str(out), "--posterior", "chees",
                     "--chains", "2", "--warmup", "10", "--draws", "40"])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    fit = json.loads((out / "fit.json").read_text())
    post = fit["posterior"]
    assert post["sampler"] == s["posterior"]["sampler"] == "chees"
    for key in ("rhat_max", "ess_bulk_min", "n_divergent", "flag"):
        assert key in post and key in s["posterior"], key
    assert post["n_draws"] == 40 and post["num_chains"] == 2
    report = (out / "report.md").read_text()
    assert "Posterior (chees): R-hat max" in report
    assert (post["flag"] is not None) == ("**Flag: posterior:" in report)
    reg = tmp_path / "trial.csv"
    reg.write_text("arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours\n"
                   "TH,docetaxel,75,mg/m2,0,21,4,1\n"
                   "TH,trastuzumab,6,mg/kg,0,21,4,1.5\n")
    capsys.readouterr()
    code = cli.main(["--quiet", "predict", "--fit", str(out), "--regimens", str(reg),
                     "--out", str(tmp_path / "pred"), "--draws", "40"])
    assert code == 0
    err = capsys.readouterr().err
    pred = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert pred["posterior"]["sampler"] == "chees"
    assert (post["flag"] is not None) == ("flag" in pred["posterior"]) == ("R-hat" in err
                                                                          or "divergent" in err)
    assert "Posterior diagnostics of the fit: R-hat max" in (
        tmp_path / "pred" / "report.md").read_text()
