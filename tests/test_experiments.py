"""Every experiment runs with --quick (main(args) + argparse, as NumPyro examples)."""

import csv
import dataclasses
import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest
import scipy.stats

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_fit(tmp_path_factory):
    """One quick pCR fit, shared by the experiments that build on a saved fit."""
    out = tmp_path_factory.mktemp("pcr_fit_quick")
    exp = _load("pcr_fit")
    return out, exp.main(exp.parse_args(["--quick", "--out", str(out)]))


def test_pcr_fit_quick(quick_fit):
    tmp_path, summary = quick_fit
    assert summary["n_arms"] == 4
    for name in ("fit.json", "arms.csv", "pcr_fit.png", "RESULT.md", "posterior.csv"):
        assert (tmp_path / name).stat().st_size > 0
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["format"] == "fitcsc.trial_fit/1"
    assert 0 <= fit["n_within_binomial_ci95"] <= 4
    assert fit["optimiser"]["lm_steps"] >= 2  # the LM tried a step from its start
    # the fit improves on its start: loss below the loss at the documented defaults
    assert fit["optimiser"]["start_losses"][0] == fit["loss"] or fit["loss"] > 0
    for line in (tmp_path / "arms.csv").read_text().splitlines()[1:]:
        f = line.split(",")
        assert float(f[10]) <= float(f[9]) + 1e-6 and float(f[9]) <= float(f[11]) + 1e-6
    post = (tmp_path / "posterior.csv").read_text()
    assert "log_kill_scale" in post and "r_hat" in post.splitlines()[0]


def test_pdxe_response_quick(tmp_path):
    exp = _load("pdxe_response")
    summary = exp.main(exp.parse_args(["--quick", "--no-progress", "--out", str(tmp_path)]))
    assert summary["n_curves"] == 12 and summary["n_lines"] == 3  # 3 lines x 4 arms
    assert summary["n_failed"] == 0 and summary["precision"] == "float64"
    for name in ("line_arm.csv", "correlations.csv", "summary.json", "RESULT.md",
                 "her2_vs_erbb2.png", "paclitaxel.png", "fit/fits.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    with open(tmp_path / "line_arm.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and {r["line"] for r in rows} == {"X-3873", "X-4567", "X-1004"}
    for line in ("X-3873", "X-4567", "X-1004"):  # growth shared within the line
        assert len({r["csc_division_rate"] for r in rows if r["line"] == line}) == 1
    tras = [r for r in rows if r["arm"] == "trastuzumab"]
    assert all(0.0 <= float(r["her2_efficacy_csc"]) <= 1.0 for r in tras)
    assert all(r["her2_route"] in {"CSC", "bulk", "both", "none", "not_identified"}
               for r in tras)
    pac = [r for r in rows if r["arm"] == "paclitaxel"]
    assert all(float(r["kill_rate"]) > 0 and r["her2_efficacy_csc"] == "" for r in pac)
    # ERBB2 copy number from the marker file, next to the fitted effects
    assert {r["ERBB2_cnv"] for r in rows if r["line"] == "X-3873"} == {"17.88"}
    assert json.loads((tmp_path / "summary.json").read_text())["quick"] is True


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_her2_low_quick(quick_fit, tmp_path):
    exp = _load("her2_low")
    fit = str(quick_fit[0] / "fit.json")
    s = exp.main(exp.parse_args(["--quick", "--fit", fit, "--out", str(tmp_path)]))
    for name in ("grid.csv", "summary.json", "her2_low.png", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "summary.json").read_text())["quick"] is True
    assert s["status_max"] == 0
    assert s["calibration"]["b47_control_idfs5_reached"] == pytest.approx(0.892, abs=1e-3)
    rows = _rows(tmp_path / "grid.csv")
    assert len(rows) == 36  # 6 x 6 grid
    for r in rows:
        for k in ("idfs5_c", "idfs5_h", "cure_c", "cure_h", "pcr_tc", "pcr_tch"):
            assert 0.0 <= float(r[k]) <= 1.0, (k, r[k])
        hr = float(r["hr_b47_tc"])
        assert (r["hr_in_b47_ci"] == "True") == (0.76 <= hr <= 1.25)
        assert float(r["adj_h_cure_gain"]) >= -1e-9  # adjuvant H never lowers cure
        assert float(r["est_h_volume_ratio"]) <= 1.0 + 1e-9  # nor grows the tumour
    # no HER2 dependence, no effect: HR 1 exactly (both arms evaluated on one day)
    at0 = [r for r in rows if float(r["h_S"]) == 0.0 and float(r["h_D"]) == 0.0][0]
    assert float(at0["hr_b47_tc"]) == pytest.approx(1.0, abs=1e-9)
    assert float(at0["adj_h_cure_gain"]) == pytest.approx(0.0, abs=1e-12)
    assert float(at0["pcr_tch"]) == pytest.approx(float(at0["pcr_tc"]), abs=1e-12)
    # HR -> 1 as the CSC dependence -> 0: monotone in h_S at every h_D
    for hd in {r["h_D"] for r in rows}:
        line = sorted((float(r["h_S"]), float(r["hr_b47_tc"])) for r in rows if r["h_D"] == hd)
        hrs = [h for _, h in line]
        assert all(b <= a + 1e-9 for a, b in zip(hrs, hrs[1:], strict=False)), line
        assert hrs[0] == pytest.approx(1.0, abs=1e-9)
    thr = s["b47_max_h_S_at_ci_lower"]
    assert 0.0 <= thr["lo95"] <= thr["hi95"] <= 1.0 and 0.0 <= thr["map"] <= 1.0


def test_csc_enrichment_quick(quick_fit, tmp_path):
    exp = _load("csc_enrichment")
    fit = str(quick_fit[0] / "fit.json")
    s = exp.main(exp.parse_args(["--quick", "--fit", fit, "--pdx", str(tmp_path / "no_pdx"),
                                 "--out", str(tmp_path)]))
    for name in ("arms.csv", "trajectories.csv", "summary.json", "csc_enrichment.png",
                 "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    arms = {a: v for a, v in s["arms"].items()}
    assert set(arms) == {"T", "H", "T+H", "HP", "L"}
    for v in arms.values():
        assert 0.0 < v["csc_fraction_typical"] < 1.0 and 0.0 < v["untreated_fraction_typical"] < 1.0
        assert 0.0 <= v["pcr_rate"] <= 1.0
        assert v["log_enrichment_lo95"] <= v["log_enrichment_hi95"]
    # chemotherapy alone: the CSC fraction moves in the direction of the CSC sparing
    sigma = s["fitted_effects"]["csc_sparing_sigma_S"]
    assert 0.0 < sigma < 1.0
    assert math.copysign(1.0, arms["T"]["log_enrichment_typical"]) == math.copysign(1.0, 1 - sigma)
    assert s["chemo_sign_matches_sparing"] is True
    # the HER2 population is described in the fit's own structure, from its fitted values
    fe = s["fitted_effects"]
    text = (tmp_path / "RESULT.md").read_text()
    if fe["her2_heterogeneity"] == "continuous":
        m, sd = fe["her2_dependence_logit_mean"], fe["her2_dependence_logit_sd"]
        xi = np.random.default_rng(0).standard_normal(400_000)
        h = 1.0 / (1.0 + np.exp(-(m + sd * xi)))
        assert fe["her2_dependence_share_below_0.1"] == pytest.approx(np.mean(h < 0.1),
                                                                       abs=5e-3)
        assert "phi" not in text and f"s = {sd:.3g}" in text
    else:
        assert f"phi = {fe['her2_independent_fraction_phi']:.2f}" in text
    # the independent ODE solve agrees with the exact solution at surgery, its blockade
    # integrated on a fine grid, for every arm (lapatinib's daily peaks included); the
    # model's own half-day grid's error is reported (a quick fit's lapatinib arm: 23%)
    err = s["simulate_vs_exact_rel_err"]
    assert set(err) == {"T", "H", "T+H", "HP", "L"}
    assert max(err.values()) < 1e-2, err
    grid = s["exact_grid_rel_err"]
    assert set(grid) == set(err) and all(np.isfinite(v) for v in grid.values())
    assert "half-day grid" in text
    assert s["pdx"] is None and "absent" in (tmp_path / "RESULT.md").read_text()
    traj = _rows(tmp_path / "trajectories.csv")
    assert {r["arm"] for r in traj} >= {"T", "H", "T|untreated"}
    assert all(0.0 < float(r["csc_fraction"]) < 1.0 for r in traj)


def test_csc_enrichment_reads_pdx_table(tmp_path):
    exp = _load("csc_enrichment")
    header = ("line,arm,status,her2_route,her2_efficacy_csc,her2_efficacy_csc_flag,"
              "her2_efficacy_bulk,her2_efficacy_bulk_flag,csc_sparing,csc_sparing_flag\n")
    (tmp_path / "line_arm.csv").write_text(
        header + "X-1,trastuzumab,converged,CSC,0.8,,0.1,,,\n"
        "X-2,trastuzumab,converged,not_identified,0.5,wide,0.5,wide,,\n"
        "X-1,paclitaxel,converged,,,,,,0.2,\n"
        "X-2,paclitaxel,failed,,,,,,0.9,\n")
    pdx = exp.read_pdx(tmp_path)
    assert pdx["n_usable"] == 3
    assert pdx["arms"]["trastuzumab"]["her2_routes"] == {"CSC": 1, "not_identified": 1}
    assert pdx["arms"]["trastuzumab"]["her2_efficacy_csc_unflagged_median"] == 0.8
    assert pdx["arms"]["paclitaxel"]["csc_sparing_unflagged_median"] == 0.2
    assert exp.read_pdx(tmp_path / "absent") is None


def test_pcr_cure_quick(quick_fit, tmp_path):
    exp = _load("pcr_cure")
    fit = str(quick_fit[0] / "fit.json")
    s = exp.main(exp.parse_args(["--quick", "--fit", fit, "--out", str(tmp_path)]))
    for name in ("arms.csv", "links.csv", "summary.json", "pcr_cure.png", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    # the joint integrals' marginals are TrialModel's own pCR, cure and DFS
    assert max(s["marginals_match_trialmodel_max_abs"].values()) < 1e-9
    for r in _rows(tmp_path / "arms.csv"):
        p, cure = float(r["pcr_total_model"]), float(r["cure_model"])
        never, cured = float(r["pcr_never_cured_total"]), float(r["no_pcr_cured_total"])
        for v in (p, cure, never, cured, float(r["pcr_breast_model"]), float(r["dfs5_model"])):
            assert 0.0 <= v <= 1.0
        assert p * never <= p + 1e-12  # P(pCR and not cured) <= P(pCR)
        # total probability: cure = P(pCR) P(cure | pCR) + P(no pCR) P(cure | no pCR)
        assert cure == pytest.approx(p * (1 - never) + (1 - p) * cured, abs=1e-5)
        assert float(r["pcr_breast_model"]) >= p - 1e-12  # breast-only pCR is looser
        assert float(r["dfs5_model"]) >= cure - 1e-9  # the cured never recur
    for k, v in s["headline"].items():
        if k != "noah_hr":
            assert v["lo95"] <= v["hi95"], k
    for r in _rows(tmp_path / "links.csv"):
        assert float(r["model_hr"]) >= 0.0 and float(r["hr_published"]) > 0.0


def test_untreated_growth_quick(tmp_path):
    exp = _load("untreated_growth")
    summary = exp.main(exp.parse_args(["--quick", "--no-progress", "--out", str(tmp_path)]))
    assert summary["n_curves"] == 6 and set(summary["by_cell_line"]) == {"MDA-MB-231", "LLC"}
    assert all(n == 0 for n in summary["n_failed"].values())
    # logistic nests the exponential law (K -> infinity): never a worse loss
    assert summary["nesting_violations"] == []
    rows = _rows(tmp_path / "per_curve.csv")
    for r in rows:
        for m in exp.MODELS:  # AIC = 2 k + 2 loss, with k counting sigma
            assert float(r[f"{m}_aic"]) > 2 * float(r[f"{m}_loss"])
        best = min(exp.MODELS, key=lambda m: float(r[f"{m}_aic"]))
        assert r["best_aic"] == best and best in r["aic_supported"].split(";")
    for name in ("summary.json", "RESULT.md", "aic.png", "fit_gompertz/fits.csv"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_mas98_response_quick(tmp_path):
    exp = _load("mas98_response")
    summary = exp.main(exp.parse_args(["--quick", "--no-progress", "--out", str(tmp_path)]))
    assert summary["n_curves"] == 9 and summary["n_failed"] == 0  # 3 arms x 3 mice
    arms = {r["arm"]: r for r in summary["arms"]}
    assert set(arms) == {"Ctrl", "Fulv", "Trast"}
    assert math.isnan(arms["Ctrl"]["cytostatic_efficacy"])  # the control has no effect
    assert 0 <= arms["Fulv"]["cytostatic_efficacy"] <= 1
    assert 0 <= arms["Trast"]["her2_efficacy_bulk"] <= 1
    # the fitted slopes follow the data: per arm within 0.03/day of the observed median
    for r in arms.values():
        assert abs(r["model_slope_median"] - r["observed_slope_median"]) < 0.03, r["arm"]
    for name in ("arms.csv", "summary.json", "RESULT.md", "effects.png",
                 "fit/predictions.csv", "fit/fits.csv"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_hr_subgroups_quick(quick_fit, tmp_path):
    exp = _load("hr_subgroups")
    fit = str(quick_fit[0] / "fit.json")
    s = exp.main(exp.parse_args(["--quick", "--fit", fit,
                                 "--out", str(tmp_path)]))
    for name in ("subgroups.csv", "summary.json", "hr_subgroups.png", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert s["n_subgroup_rows"] == 8  # NeoSphere: 4 arms x (HR+, HR-)
    assert s["hr_positive_share_derived"]["NeoSphere"] == pytest.approx(0.473, abs=0.01)
    m = s["models"]
    # nested models from the same start: a free shift never fits worse than none
    for k in ("response", "her2_independence", "both"):
        assert m[k]["neg_log_posterior"] <= m["none"]["neg_log_posterior"] + 1e-6, k
        assert 0.0 <= m[k]["p_vs_none"] <= 1.0
    rows = _rows(tmp_path / "subgroups.csv")
    by = {(r["arm"], r["subgroup"]): r for r in rows}
    for arm in ("NS-A", "NS-B", "NS-C", "NS-D"):  # no covariate: one rate for both
        assert by[(arm, "HR+")]["pred_none_pct"] == by[(arm, "HR-")]["pred_none_pct"]
        n = int(by[(arm, "HR+")]["derived_n"]) + int(by[(arm, "HR-")]["derived_n"])
        assert n in (96, 107)


def test_csc_heterogeneity_quick(quick_fit, tmp_path):
    exp = _load("csc_heterogeneity")
    fit = str(quick_fit[0] / "fit.json")
    s = exp.main(exp.parse_args(["--quick", "--fit", fit, "--out", str(tmp_path)]))
    for name in ("profile.csv", "summary.json", "profile.png", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    prof = s["profile"]
    assert [r["csc_fraction_sd"] for r in prof] == list(exp.QUICK_PROFILE)
    assert prof[0]["lr_vs_sd0"] == 0.0 and s["nodes"] == 7
    best = min(prof, key=lambda r: r["neg_log_posterior"])
    f = s["free_fit"]  # LM from the best profile point only accepts decreases
    prior = 0.5 * (best["csc_fraction_sd"] / 2.0) ** 2  # the sd's own prior term
    assert f["neg_log_posterior"] <= best["neg_log_posterior"] + prior + 1e-9
    assert 0.0 <= f["p_boundary"] <= 0.5
    for r in prof:
        assert 0 <= r["n_arms_inside_ci95"] <= 4 and math.isfinite(r["residual_csc_log10_median"])


def test_trial_spread_quick(quick_fit, tmp_path):
    exp = _load("trial_spread")
    fit = str(quick_fit[0] / "fit.json")
    s = exp.main(exp.parse_args(["--quick", "--fit", fit, "--out", str(tmp_path)]))
    for name in ("widths.csv", "summary.json", "trial_spread.png", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    c = s["trial_spread_check"]
    eff = np.asarray(list(c["effects"].values()))
    assert c["rms"] == pytest.approx(float(np.sqrt(np.mean(eff**2))))
    # a larger shift sd moves every arm's rate further (pCR is monotone in log burden and
    # the draws u are shared), so the rate-only width grows with tau
    taus = sorted(s["rate_width_by_tau"], key=float)
    w = [s["rate_width_by_tau"][t] for t in taus]
    assert len(w) >= 2 and all(a < b for a, b in zip(w, w[1:], strict=False)), w
    assert all(0.0 < v <= 100.0 for v in s["mean_width_by_tau"].values())


def test_clinical_validation_quick(tmp_path, monkeypatch):
    """Leave-one-trial-out harness: each left-out arm's published count, its predictive
    interval, the inside flag and the summary metrics agree with each other."""
    exp = _load("clinical_validation")
    # the two folds run apart (as on two cores): the first saves its rows and writes no
    # table; the second reads them back and writes every output
    first = ["--quick", "--checkpoint", "--out", str(tmp_path), "--folds"]
    assert exp.main(exp.parse_args([*first, "MDACC"])) == {}
    assert not (tmp_path / "arms.csv").exists()
    ckpt_dir = tmp_path / ".checkpoint"
    with np.load(ckpt_dir / "pcr_00.npz") as f:
        saved = json.loads(str(f["rows"]))
    # a race: MDACC's fold is saved by the other process only while this one runs its
    # own, after it has looked for it; it still writes the tables (it looks again)
    (ckpt_dir / "pcr_00.npz").rename(tmp_path / "pcr_00.npz")
    run_fold = exp._pcr_fold

    def fold_while_the_other_saves(*a, **k):
        (tmp_path / "pcr_00.npz").rename(ckpt_dir / "pcr_00.npz")
        return run_fold(*a, **k)

    monkeypatch.setattr(exp, "_pcr_fold", fold_while_the_other_saves)
    s = exp.main(exp.parse_args([*first, "NeoSphere"]))
    assert not (tmp_path / ".checkpoint").exists()  # removed once the tables are written
    for name in ("arms.csv", "hazard_ratios.csv", "summary.json", "calibration.png",
                 "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    with open(tmp_path / "arms.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["arm"] for r in saved] == ["BUZ-C", "BUZ-H", "BUZ-H2"]
    for r in rows:  # the fold's loss by kind of data adds up to its loss
        parts = [float(v) for k, v in r.items() if k.startswith("fit_loss_")]
        assert len(parts) >= 2 and sum(parts) == pytest.approx(float(r["fit_loss"]), rel=1e-4)
    for held in ("MDACC", "NeoSphere"):  # one spread of the training trials' effects a fold
        rms = {float(r["trial_effect_rms"]) for r in rows if r["held_out"] == held}
        assert len(rms) == 1 and 0.0 < rms.pop() < 10.0
    for r in saved:  # the saved fold is the one in the table
        row = next(x for x in rows if x["arm"] == r["arm"])
        for k in ("pred_lo_pct", "pred_hi_pct", "mean_pct", "pit"):
            assert float(row[k]) == pytest.approx(r[k], rel=1e-5), k
    published = {"NS-A": (107, 31), "NS-B": (107, 49), "NS-C": (107, 18), "NS-D": (96, 23),
                 "BUZ-C": (19, 5), "BUZ-H": (23, 15), "BUZ-H2": (22, 12)}
    assert {r["arm"]: (int(r["n"]), int(r["count"])) for r in rows} == published
    for r in rows:
        lo, hi, obs = float(r["pred_lo_pct"]), float(r["pred_hi_pct"]), float(r["observed_pct"])
        assert 0.0 <= lo <= hi <= 100.0 and 0.0 <= float(r["pit"]) <= 1.0
        assert (r["inside"] == "True") == (lo - 1e-9 <= obs <= hi + 1e-9)
        assert float(r["rate_lo_pct"]) <= float(r["mean_pct"]) <= float(r["rate_hi_pct"])
    # pertuzumab is fitted in TRYPHAENA too, so no NeoSphere arm falls back on the class
    # prior; every MDACC drug is in other trials
    assert all(r["drugs_prior_only"] == "" for r in rows)
    m = s["pcr"]
    assert m["n_arms"] == 7 and m["n_inside_95"] == sum(r["inside"] == "True" for r in rows)
    err = [float(r["mean_pct"]) - float(r["observed_pct"]) for r in rows]
    assert m["mean_signed_error_points"] == pytest.approx(sum(err) / 7, abs=1e-3)
    # the oracle floor: scipy's binomial quantiles at the published rate
    for r in rows:
        n, k = int(r["n"]), int(r["count"])
        lo, hi = scipy.stats.binom.ppf([0.025, 0.975], n, k / n)
        # arms.csv holds 6 significant digits
        assert float(r["floor_lo_pct"]) == pytest.approx(100 * lo / n, rel=1e-5)
        assert float(r["floor_hi_pct"]) == pytest.approx(100 * hi / n, rel=1e-5)
        assert 0.0 <= float(r["map_trial_lo_pct"]) <= float(r["map_trial_hi_pct"]) <= 100.0
    floor = [float(r["floor_hi_pct"]) - float(r["floor_lo_pct"]) for r in rows]
    assert m["mean_width_95_floor_points"] == pytest.approx(sum(floor) / 7, abs=1e-3)
    assert m["mean_width_95_map_trial_points"] > 0


def test_hr_predictive_interval_adds_the_estimate_sampling_error():
    """Posterior log HR draws N(m, s) and a published estimate with standard error se:
    the predictive interval is m +- z sqrt(s^2 + se^2) (closed form, normal), wider than
    the parameters' own interval, and equal to it when se is 0."""
    exp = _load("clinical_validation")
    m, s, se = np.log(0.6), 0.15, 0.11
    draws = m + s * np.random.default_rng(3).standard_normal(400_000)
    z = scipy.stats.norm.ppf(0.975)
    lo, hi = exp.hr_predictive_interval(draws, se, seed=1)
    half = z * np.hypot(s, se)
    assert np.log(lo) == pytest.approx(m - half, abs=5e-3)
    assert np.log(hi) == pytest.approx(m + half, abs=5e-3)
    lo0, hi0 = exp.hr_predictive_interval(draws, 0.0, seed=1)
    assert np.log(lo0) == pytest.approx(m - z * s, abs=5e-3)
    assert np.log(hi0) == pytest.approx(m + z * s, abs=5e-3)


def test_meta_regression_matches_the_balanced_closed_form():
    """One arm per trial, equal within-trial variance v, intercept only: REML gives
    tau^2 = max(0, S^2 - v) (S^2 the sample variance), b = the mean and var(b) = (v +
    tau^2) / k; arms of one trial share its effect (tau fixed: var(b) of two arms of one
    trial is (v / 2 + tau^2), not (v + tau^2) / 2)."""
    exp = _load("clinical_validation")
    y = np.asarray([-1.2, -0.3, 0.4, 1.1, 0.2])
    v, x = 0.1, np.ones((5, 1))
    b, cov, t2 = exp._meta_regression(y, np.full(5, v), x, np.arange(5))
    s2 = float(np.var(y, ddof=1))
    assert t2 == pytest.approx(s2 - v, rel=1e-5)
    assert b[0] == pytest.approx(float(np.mean(y)), rel=1e-10)
    assert cov[0, 0] == pytest.approx((v + t2) / 5, rel=1e-5)
    b, cov, t2 = exp._meta_regression(y * 0.05, np.full(5, v), x, np.arange(5))
    assert t2 == 0.0 and cov[0, 0] == pytest.approx(v / 5, rel=1e-10)  # homogeneous
    b, cov, t2 = exp._meta_regression([0.1, 0.3], [v, v], np.ones((2, 1)), [0, 0], tau=0.5)
    assert t2 == 0.25 and cov[0, 0] == pytest.approx(v / 2 + 0.25, rel=1e-10)


def test_meta_reference_predicts_each_arm_from_other_trials_only():
    """The model-free yardstick: an arm's prediction never uses its own trial, and moving
    the held-out trial's count moves neither its prediction nor its interval."""
    exp = _load("clinical_validation")
    arms, obs, _ = exp.load()
    base = {r["arm"]: r for r in exp.meta_reference(arms, obs, seed=1)}
    i = next(i for i, o in enumerate(obs) if o.arm == "NS-B")
    moved = list(obs)
    moved[i] = dataclasses.replace(obs[i], count=1)
    again = {r["arm"]: r for r in exp.meta_reference(arms, moved, seed=1)}
    for k in ("mean_pct", "pred_lo_pct", "pred_hi_pct"):
        assert again["NS-B"][k] == base["NS-B"][k]
    assert again["NS-B"]["observed_pct"] != base["NS-B"]["observed_pct"]
    # ... but it does move the arms of other trials that learn from it
    assert again["NA-T"]["mean_pct"] != base["NA-T"]["mean_pct"]
    for r in base.values():
        assert 0 <= r["pred_lo_pct"] <= r["mean_pct"] <= r["pred_hi_pct"] <= 100
    # with the regimen and definition as covariates: the same independence
    cov = {r["arm"]: r for r in exp.meta_reference(arms, obs, seed=1, covariates="regimen")}
    cov2 = {r["arm"]: r for r in exp.meta_reference(arms, moved, seed=1,
                                                      covariates="regimen")}
    for k in ("mean_pct", "pred_lo_pct", "pred_hi_pct"):
        assert cov2["NS-B"][k] == cov["NS-B"][k]
    by_arm = {o.arm: (a, o) for a, o in zip(arms, obs, strict=False)}
    # intercept, HER2, two blockers, anthracycline, carboplatin, breast-only, no /is
    a, o = by_arm["TRY-C"]  # TCH + pertuzumab, ypT0/is
    assert exp._meta_features(a, o.definition, "regimen") == [1, 1, 1, 0, 1, 1, 0]
    a, o = by_arm["NOAH-H"]  # AT-T-CMF + trastuzumab, ypT0/is ypN0
    assert exp._meta_features(a, o.definition, "regimen") == [1, 1, 0, 1, 0, 0, 0]
    a, o = by_arm["GQ5-L"]  # EC-docetaxel + lapatinib, ypT0 ypN0
    assert exp._meta_features(a, o.definition, "regimen") == [1, 1, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="covariates must be"):
        exp._meta_features(a, o.definition, "stage")


def test_adjuvant_fit_quick(quick_fit, tmp_path):
    """Out-of-sample and joint adjuvant hazard ratios from a saved pCR fit: every interval
    holds its own point (the delta method around the mode; Laplace draws pushed through
    the saturating map once gave a pCR-vs-no-pCR HR of 0.29 with interval 0.39-3.78)."""
    fit_dir, _ = quick_fit
    exp = _load("adjuvant_fit")
    s = exp.main(exp.parse_args(["--quick", "--fit", str(fit_dir / "fit.json"),
                                 "--out", str(tmp_path)]))
    for name in ("hazard_ratios.csv", "summary.json", "RESULT.md", "fit.json",
                 "adjuvant_fit.png", "posterior_joint.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert [r["comparison"] for r in s["hazard_ratios"]] == [
        "B-31/N9831 JA-H vs JA-C", "HERA HERA-H1 vs HERA-OBS"]
    for r in s["hazard_ratios"]:
        for tag in ("out_of_sample", "joint"):
            lo, hr, hi = (float(r[f"{tag}_lo95"]), float(r[f"{tag}_hr"]),
                          float(r[f"{tag}_hi95"]))
            assert 0 <= lo <= hr * (1 + 1e-6) + 1e-3 and hr <= hi * (1 + 1e-6) + 1e-3, (tag, r)
    assert s["pcr_outcome_links"]
    for r in s["pcr_outcome_links"]:
        assert r["joint_lo95"] <= r["joint_hr"] * (1 + 1e-6) <= r["joint_hi95"] * (1 + 2e-6)
    # the pCR fit carried the links: their parameters are not added a second time
    names = json.loads((tmp_path / "fit.json").read_text())["names"]
    assert names.count("logit_protected_fraction") == 1


@pytest.mark.slow
def test_basin_starts_reproduce_each_nested_structure():
    """`--basin-starts`: the nesting structure started at a nested structure's MAP is
    that structure. From the micrometastatic MAP (protected fraction 1e-15) the nesting
    objective's pCR, link and landmark terms equal the micrometastatic one's; from
    the reservoir MAP (rho 0.99 for its 1) every pCR rate equals the reservoir model's
    (rho acts on micrometastases only) and so does the pCR loss."""
    import jax.numpy as jnp

    exp = _load("clinical_validation")
    arms, obs, _ = exp.load()
    args = exp.parse_args(["--quick", "--links"])
    nest = "continuous_kill_alpha_micromet_protected"
    train = list(exp.QUICK_FOLDS)
    tm_n, obj_n = exp._objective(arms, obs, train, nest, args)
    rng = np.random.default_rng(5)
    for basin, sub, fills in exp.BASINS[nest]:
        tm_s, obj_s = exp._objective(arms, obs, train, sub, args)
        z_s = np.asarray(obj_s.z_prior) + 0.3 * rng.standard_normal(len(tm_s.names))
        fit = type("Fit", (), {"names": tm_s.names, "z": z_s})()
        z_n = exp.basin_start(obj_n, fit, fills)
        names = list(tm_n.names)
        for n, v in zip(tm_s.names, z_s, strict=True):
            assert z_n[names.index(n)] == v
        extra = set(names) - set(tm_s.names)
        assert len(extra) == 1  # each nested structure lacks one parameter of the nest
        (e,) = extra
        p = fills[e]
        assert z_n[names.index(e)] == pytest.approx(np.log(p / (1.0 - p)), rel=1e-12)
        r_n = np.asarray(tm_n.pcr_rates(jnp.asarray(z_n))[0])
        r_s = np.asarray(tm_s.pcr_rates(jnp.asarray(z_s))[0])
        np.testing.assert_allclose(r_n, r_s, rtol=1e-9, atol=1e-12)
        p_n, p_s = obj_n.loss_parts(jnp.asarray(z_n)), obj_s.loss_parts(jnp.asarray(z_s))
        assert p_n["pcr"] == pytest.approx(p_s["pcr"], rel=1e-9)
        if basin == "micromet":  # a protected fraction of 1e-15 leaves no trace
            for part in ("links", "neo_landmarks"):
                assert p_n[part] == pytest.approx(p_s[part], rel=1e-4), part
    with pytest.raises(SystemExit):  # only for a structure that nests others, with links
        exp.parse_args(["--basin-starts", "--links"])


def test_only_hr_runs_the_chosen_hazard_ratio_folds_alone(tmp_path, monkeypatch):
    """``--only-hr`` in a folder without a pCR run writes the hazard-ratio tables alone
    (no arms.csv, no pCR figure); ``--hr-folds`` runs only the folds it names, and an
    unknown trial is refused in one line."""
    exp = _load("clinical_validation")
    ran = []

    def fold(arms, obs, adj, j, structure, args, log):
        held = exp._held_hr(adj)[j]
        ran.append(held)
        return [{"held_out": held, "comparison": f"{held} H vs C", "years": 2.0,
                 "published_hr": 0.5, "published_lo": 0.4, "published_hi": 0.62,
                 "map_hr": 0.6, "mean_hr": 0.6, "pred_lo": 0.45, "pred_hi": 0.8,
                 "inside": True, "excludes_1": True, "se_log_hr": 0.1, "fit_loss": 1.0,
                 "trial_sd": 1.0, "her2_drug_sd": 1.0, "chemo_drug_sd": 0.5,
                 "psis_k_hat": float("nan"), "fold_s": 0.1}]

    monkeypatch.setattr(exp, "_hr_fold", fold)
    s = exp.main(exp.parse_args(["--only-hr", "--hr-folds", "HERA", "--out", str(tmp_path)]))
    assert ran == ["HERA"] and s["hr"]["n"] == 1 and s["pcr"]["n_arms"] == 0
    assert not (tmp_path / "arms.csv").exists() and not (tmp_path / "calibration.png").exists()
    with open(tmp_path / "hazard_ratios.csv", newline="") as fh:
        assert [r["held_out"] for r in csv.DictReader(fh)] == ["HERA"]
    text = (tmp_path / "RESULT.md").read_text()
    assert "pCR: no folds in this run" in text and "| HERA |" in text
    with pytest.raises(SystemExit, match="--hr-folds names from"):
        exp.main(exp.parse_args(["--only-hr", "--hr-folds", "NOAH", "--out", str(tmp_path)]))
