"""`fitcsc predict`: a hand-written regimen file, predicted from a saved trial fit;
every refusal of what the fit cannot support, and arm independence."""

import csv
import json
import pathlib

import numpy as np
import pytest
from helpers import check_report

import fitcsc
from fitcsc import FitStatus, cli
from fitcsc._errors import FitcscInputError
from fitcsc._jobs.predict import parse_contrast
from fitcsc._trial.fit import TrialFit, save_fit
from fitcsc._trial.model import Arm, TrialModel

CLINICAL = pathlib.Path(__file__).resolve().parents[1] / "data" / "clinical"

# Written by hand from the regimen format in data/README.md (not a trial in data/).
MY_TRIAL = """arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours
TC,docetaxel,75,mg/m2,0,21,6,1
TC,carboplatin,600,mg,0,21,6,0.5
TCH,docetaxel,75,mg/m2,0,21,6,1
TCH,carboplatin,600,mg,0,21,6,0.5
TCH,trastuzumab,8,mg/kg,0,,1,1.5
TCH,trastuzumab,6,mg/kg,21,21,16,0.5
"""
# the same TCH arm beside a second one with half the carboplatin dose
TWO_TCH = MY_TRIAL + """TCH300,docetaxel,75,mg/m2,0,21,6,1
TCH300,carboplatin,300,mg,0,21,6,0.5
TCH300,trastuzumab,8,mg/kg,0,,1,1.5
TCH300,trastuzumab,6,mg/kg,21,21,16,0.5
"""
NERATINIB = """arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours
TN,docetaxel,75,mg/m2,0,21,6,1
TN,neratinib,240,mg,0,1,126,0
"""
PERTUZUMAB = """arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours
TP,docetaxel,75,mg/m2,0,21,4,1
TP,pertuzumab,840,mg,0,,1,1
TP,pertuzumab,420,mg,21,21,3,0.5
"""


def _save(d, arms, names, *, sd=0.2):
    tm = TrialModel.build(arms, names)
    z = np.array(tm.z0())
    if "log_micromet_cells#HERA" in names:  # chemotherapy that leaves recurrences
        z[names.index("log_micromet_cells#HERA")] = np.log(1e11)
        z[names.index("log_kill_scale")] = np.log(4.0)
    fit = TrialFit(names=names, z=z, cov=np.diag(np.full(len(names), sd**2)), loss=0.0,
                   status=FitStatus.CONVERGED, n_steps=1, start_losses=np.zeros(1),
                   hyper={"her2_drug_sd": 1.0, "chemo_drug_sd": 0.5, "trial_sd": 0.5})
    save_fit(d / "fit.json", tm, fit)
    return d


@pytest.fixture(scope="module")
def regimens():
    return fitcsc.read_regimen_table(CLINICAL / "regimens.csv")


@pytest.fixture(scope="module")
def fit_dir(tmp_path_factory, regimens):
    """pCR and adjuvant parameters: every definition and DFS are supported."""
    arms = [Arm("NEOSPHERE-TH", regimens["NEOSPHERE-TH"]),
            Arm("HERA-OBS", regimens["HERA-OBS"], setting="adjuvant", trial="HERA")]
    names = ("log_kill_scale", "logit_her2_independent", "logit_breast_factor",
             "logit_no_dcis", "log_her2_potency#trastuzumab", "log_her2_potency",
             "log_micromet_cells#HERA")
    return _save(tmp_path_factory.mktemp("fit"), arms, names)


@pytest.fixture(scope="module")
def pcr_only_dir(tmp_path_factory, regimens):
    """A pCR-only fit with no breast or in-situ factor: total pCR only, no DFS."""
    arms = [Arm("NEOSPHERE-TH", regimens["NEOSPHERE-TH"])]
    names = ("log_kill_scale", "log_her2_potency#trastuzumab")
    return _save(tmp_path_factory.mktemp("pcronly"), arms, names)


def _write(tmp_path, text, name="my_trial.csv"):
    reg = tmp_path / name
    reg.write_text(text)
    return reg


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _predict(fit, reg, out, *extra):
    return cli.main(["predict", "--fit", str(fit), "--regimens", str(reg), "--out", str(out),
                     "--draws", "64", *extra])


def _predict_quiet(fit, reg, out, capsys):
    """`predict --quiet` on a fit: what it printed on stderr, its summary and its report."""
    capsys.readouterr()
    assert _predict(fit, reg, out, "--quiet") == 0
    err = capsys.readouterr().err
    return err, json.loads((out / "summary.json").read_text()), (out / "report.md").read_text()


def _one_line_refusal(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


def test_predict_hand_written_trial(fit_dir, tmp_path, capsys):
    reg = _write(tmp_path, MY_TRIAL)
    out = tmp_path / "out"
    code = _predict(fit_dir, reg, out, "--assume", "carboplatin=docetaxel", "--comparator",
                    "TC", "--years", "3", "--years", "5", "--contrast", "TCH-TC",
                    "--n-patients", "80")
    assert code == 0
    rows = _rows(out / "predictions.csv")
    assert {(r["arm"], r["pcr_definition"]) for r in rows} == {
        (a, d) for a in ("TC", "TCH") for d in ("ypT0/is ypN0", "ypT0/is", "ypT0", "ypT0 ypN0")}
    by = {(r["arm"], r["pcr_definition"]): r for r in rows}
    for r in rows:
        lo, mean, hi = float(r["pcr_lo"]), float(r["pcr_mean"]), float(r["pcr_hi"])
        assert 0.0 <= lo <= mean <= hi <= 1.0 and r["status"] == "ok"
        assert "carboplatin: assumed as docetaxel" in r["assumptions"]  # flagged prior-only
    # a trial arm's observed rate (binomial on top) varies more than the rate itself
    width = np.mean([float(r["pcr_hi"]) - float(r["pcr_lo"]) for r in rows])
    pred = np.mean([float(r["pcr_pred_hi"]) - float(r["pcr_pred_lo"]) for r in rows])
    assert pred > width
    for a in ("TC", "TCH"):  # breast-only >= total; no in-situ residual is stricter
        t, b = float(by[(a, "ypT0/is ypN0")]["pcr_map"]), float(by[(a, "ypT0/is")]["pcr_map"])
        assert b >= t and float(by[(a, "ypT0")]["pcr_map"]) <= b
        assert float(by[(a, "ypT0 ypN0")]["pcr_map"]) <= t
    t = float(by[("TCH", "ypT0/is ypN0")]["pcr_map"])
    assert 0.0 < t < 1.0 and float(by[("TCH", "ypT0 ypN0")]["pcr_map"]) < t
    # adding trastuzumab raises pCR and lowers the hazard
    assert float(by[("TCH", "ypT0/is ypN0")]["pcr_map"]) > float(by[("TC", "ypT0/is ypN0")]
                                                                  ["pcr_map"])
    dfs = _rows(out / "dfs.csv")
    assert {(r["arm"], r["years"]) for r in dfs} == {(a, y) for a in ("TC", "TCH")
                                                     for y in ("3", "5")}
    for r in dfs:
        assert 0.0 <= float(r["dfs_lo"]) <= float(r["dfs_hi"]) <= 1.0
        if r["arm"] == "TC":
            assert float(r["dfs_hr_geomean"]) == pytest.approx(1.0)  # itself
        else:
            assert float(r["dfs_hr_geomean"]) < 1.0
    con = _rows(out / "contrasts.csv")
    assert len(con) == 4 and all(r["contrast"] == "TCH-TC" for r in con)
    draws = _rows(out / "pcr_draws.csv")  # paired draws: the contrast is their difference
    tot = [r for r in draws if r["pcr_definition"] == "ypT0/is ypN0"]
    assert len(tot) == 64
    diff = np.array([float(r["TCH"]) - float(r["TC"]) for r in tot])
    c = next(r for r in con if r["pcr_definition"] == "ypT0/is ypN0")
    assert float(c["diff_mean"]) == pytest.approx(diff.mean(), abs=1e-4)
    assert float(c["prob_a_better"]) == pytest.approx(np.mean(diff > 0), abs=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_arms"] == 2 and summary["burden_trial"] == "HERA"
    assert summary["n_patients"] == 80
    for name in ("dfs_curves.csv", "predictions.png"):
        assert (out / name).stat().st_size > 0
    assert "prior-only" in capsys.readouterr().err  # the assumption shows on screen
    text = check_report(out, "predict", tmp_path, figures=("predictions.png",))
    for r in rows:  # every arm and definition with its interval; the assumption warned
        assert (f"| {r['arm']} | {r['pcr_definition']} | {100 * float(r['pcr_map']):.1f} | "
                f"{100 * float(r['pcr_mean']):.1f} ({100 * float(r['pcr_lo']):.1f}-") in text
    assert "prior-only assumption: carboplatin: assumed as docetaxel" in text
    assert "| TCH-TC |" in text and "| TCH | 3 |" in text  # contrast, DFS


def test_fourteen_arms_every_definition_in_one_call(fit_dir, tmp_path):
    """A 14-arm file (docetaxel for 1-7 cycles, alone and with trastuzumab) is answered in
    one call for all four pCR definitions; at the MAP, pCR never falls with an added
    cycle (with trastuzumab it rises) and trastuzumab adds to each, under every
    definition."""
    lines = ["arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours"]
    for k in range(1, 8):
        lines.append(f"D{k},docetaxel,75,mg/m2,0,21,{k},1")
        lines += [f"DH{k},docetaxel,75,mg/m2,0,21,{k},1", f"DH{k},trastuzumab,8,mg/kg,0,,1,1.5",
                  f"DH{k},trastuzumab,6,mg/kg,21,21,{k},0.5"]
    reg = _write(tmp_path, "\n".join(lines) + "\n")
    out = tmp_path / "out14"
    assert _predict(fit_dir, reg, out) == 0
    rows = _rows(out / "predictions.csv")
    definitions = ("ypT0/is ypN0", "ypT0/is", "ypT0", "ypT0 ypN0")
    arms = [f"{a}{k}" for k in range(1, 8) for a in ("D", "DH")]
    assert sorted((r["arm"], r["pcr_definition"]) for r in rows) == sorted(
        (a, d) for a in arms for d in definitions)
    pcr = {(r["arm"], r["pcr_definition"]): float(r["pcr_map"]) for r in rows}
    for d in definitions:  # (docetaxel alone is near 0 under this fixture's parameters)
        assert all(pcr[(f"D{k}", d)] <= pcr[(f"D{k + 1}", d)] for k in range(1, 7)), d
        assert all(pcr[(f"DH{k}", d)] < pcr[(f"DH{k + 1}", d)] for k in range(1, 7)), d
        assert all(pcr[(f"D{k}", d)] < pcr[(f"DH{k}", d)] for k in range(1, 8)), d


def test_arm_alone_equals_arm_beside_others(fit_dir, tmp_path):
    """No arm's prediction depends on the other arms of its file."""
    outs = []
    for name, text in (("one.csv", MY_TRIAL), ("two.csv", TWO_TCH)):
        reg = _write(tmp_path, text, name)
        out = tmp_path / name.replace(".csv", "")
        assert _predict(fit_dir, reg, out, "--assume", "carboplatin=docetaxel", "--comparator",
                        "TC") == 0
        outs.append(out)
    for f, key in (("predictions.csv", ("arm", "pcr_definition")), ("dfs.csv", ("arm", "years"))):
        a = {tuple(r[k] for k in key): r for r in _rows(outs[0] / f)}
        b = {tuple(r[k] for k in key): r for r in _rows(outs[1] / f)}
        for k, r in a.items():
            assert r == b[k], (f, k)


def test_predict_quiet_prints_flags_only(fit_dir, tmp_path, capsys):
    """--quiet silences the summary line, never a flag (the prior-only assumption)."""
    reg = _write(tmp_path, MY_TRIAL, "quiet.csv")
    capsys.readouterr()
    assert _predict(fit_dir, reg, tmp_path / "quiet", "--quiet", "--assume",
                    "carboplatin=docetaxel") == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "prior-only" in cap.err


def test_predict_refuses_unfitted_drug(fit_dir, tmp_path, capsys):
    reg = _write(tmp_path, MY_TRIAL)
    assert _predict(fit_dir, reg, tmp_path / "o") == 2
    _one_line_refusal(capsys, "'carboplatin'", "no fitted effect", "--assume carboplatin=")
    reg = _write(tmp_path, NERATINIB, "ner.csv")
    assert _predict(fit_dir, reg, tmp_path / "o") == 2
    _one_line_refusal(capsys, "'neratinib'", "--assume neratinib=trastuzumab")
    # an assumption must name a fitted drug of the same class
    assert _predict(fit_dir, reg, tmp_path / "o", "--assume", "neratinib=docetaxel") == 2
    _one_line_refusal(capsys, "not a fitted her2 drug")
    # the class prior of a HER2 blocker: flagged, and wider than an assumed twin
    reg = _write(tmp_path, PERTUZUMAB, "tp.csv")
    args = ("--pcr-definition", "ypT0/is ypN0")
    assert _predict(fit_dir, reg, tmp_path / "cls", "--assume", "pertuzumab=class", *args) == 0
    r = _rows(tmp_path / "cls" / "predictions.csv")[0]
    assert "class prior" in r["assumptions"]
    assert _predict(fit_dir, reg, tmp_path / "twin", "--assume", "pertuzumab=trastuzumab",
                    *args) == 0
    t = _rows(tmp_path / "twin" / "predictions.csv")[0]
    assert "assumed as trastuzumab" in t["assumptions"]
    assert (float(r["pcr_hi"]) - float(r["pcr_lo"])) > (float(t["pcr_hi"]) - float(t["pcr_lo"]))


def test_predict_without_dfs_data_refuses_dfs(pcr_only_dir, tmp_path, capsys):
    reg = _write(tmp_path, MY_TRIAL)
    args = ("--assume", "carboplatin=docetaxel")
    for extra in (("--comparator", "TC"), ("--years", "3")):
        assert _predict(pcr_only_dir, reg, tmp_path / "o", *args, *extra) == 2
        _one_line_refusal(capsys, "no adjuvant data", "DFS")
    # without asking for DFS: pCR only, under the definitions the fit supports
    out = tmp_path / "pcr"
    assert _predict(pcr_only_dir, reg, out, *args) == 0
    assert {r["pcr_definition"] for r in _rows(out / "predictions.csv")} == {"ypT0/is ypN0"}
    assert not (out / "dfs.csv").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pcr_definitions_refused"]) == {"ypT0/is", "ypT0", "ypT0 ypN0"}


def test_predict_refuses_unsupported_definition(pcr_only_dir, tmp_path, capsys):
    reg = _write(tmp_path, MY_TRIAL)
    for d, need in (("ypT0/is", "logit_breast_factor"), ("ypT0 ypN0", "logit_no_dcis")):
        assert _predict(pcr_only_dir, reg, tmp_path / "o", "--assume",
                        "carboplatin=docetaxel", "--pcr-definition", d) == 2
        _one_line_refusal(capsys, repr(d), need)


def test_predict_refuses_bad_options(fit_dir, tmp_path, capsys):
    reg = _write(tmp_path, MY_TRIAL)
    cases = [(("--comparator", "XYZ"), ("comparator", "'XYZ'")),
             (("--contrast", "TC-TC"), ("--contrast", "'TC-TC'")),
             (("--contrast", "TC+TCH"), ("--contrast",)),
             (("--n-patients", "0"), ("--n-patients",)),
             (("--her2-dependence", "2,0"), ("--her2-dependence",)),
             (("--burden-trial", "B-99"), ("--burden-trial", "'B-99'")),
             (("--assume", "carboplatin"), ("--assume",))]
    for extra, words in cases:
        assert _predict(fit_dir, reg, tmp_path / "o", "--assume", "carboplatin=docetaxel",
                        *extra) == 2
        _one_line_refusal(capsys, *words)


def test_contrast_names_arms_that_contain_dashes():
    arms = ["NEOSPHERE-TH", "NEOSPHERE-THP", "TC", "A", "B-C", "A-B", "C"]
    assert parse_contrast("NEOSPHERE-TH-NEOSPHERE-THP", arms) == ("NEOSPHERE-TH",
                                                                  "NEOSPHERE-THP")
    assert parse_contrast("TC-NEOSPHERE-TH", arms) == ("TC", "NEOSPHERE-TH")
    with pytest.raises(FitcscInputError, match="unambiguous.*'A' - 'B-C' or 'A-B' - 'C'"):
        parse_contrast("A-B-C", arms)
    for bad in ("TC-TC", "TC+TH", "TC-", "-TC", "NEOSPHERE-TH-XX"):
        with pytest.raises(FitcscInputError, match="two different arms"):
            parse_contrast(bad, arms)


def test_predict_refuses_missing_fit(tmp_path, capsys):
    reg = _write(tmp_path, MY_TRIAL)
    assert _predict(tmp_path / "nofit", reg, tmp_path / "o") == 2
    assert "no fit.json" in capsys.readouterr().err


def test_her2_low_population_is_flagged_and_weaker(fit_dir, tmp_path):
    reg = _write(tmp_path, MY_TRIAL)
    args = ("--assume", "carboplatin=docetaxel", "--pcr-definition", "ypT0/is ypN0")
    assert _predict(fit_dir, reg, tmp_path / "hi", *args) == 0
    assert _predict(fit_dir, reg, tmp_path / "lo", *args, "--her2-dependence", "0.2,0") == 0
    hi = {r["arm"]: r for r in _rows(tmp_path / "hi" / "predictions.csv")}
    lo = {r["arm"]: r for r in _rows(tmp_path / "lo" / "predictions.csv")}
    assert float(lo["TCH"]["pcr_map"]) < float(hi["TCH"]["pcr_map"])
    assert lo["TC"]["pcr_map"] == hi["TC"]["pcr_map"]  # no HER2 drug: unchanged
    assert "HER2 dependence" in lo["TCH"]["assumptions"]


def _saved_draws_setup(tmp_path, regimens):
    """A two-parameter trastuzumab fit with 50 draws around its start, and a regimen file
    of one trastuzumab arm: ``(model, fit, draws, regimen path)``."""
    arms = [Arm("NEOSPHERE-TH", regimens["NEOSPHERE-TH"])]
    names = ("log_kill_scale", "log_her2_potency#trastuzumab")
    tm = TrialModel.build(arms, names)
    z = np.array(tm.z0())
    fit = TrialFit(names=names, z=z, cov=np.diag([0.04, 0.04]), loss=0.0,
                   status=FitStatus.CONVERGED, n_steps=1, start_losses=np.zeros(1), hyper={})
    draws = z[None, :] + 0.1 * np.random.default_rng(0).standard_normal((50, 2))
    reg = _write(tmp_path, PERTUZUMAB.replace("pertuzumab", "trastuzumab"))
    return tm, fit, draws, reg


def test_unreliable_posterior_is_flagged(tmp_path, regimens, capsys):
    """Saved draws whose PSIS k_hat exceeds 0.7 (the Laplace proposal far from the
    posterior) give a warning on screen and a flag in summary.json; k_hat below it none."""
    tm, fit, draws, reg = _saved_draws_setup(tmp_path, regimens)
    for k_hat, flagged in ((1.2, True), (0.4, False)):
        d = tmp_path / f"fit{k_hat}"
        d.mkdir()
        save_fit(d / "fit.json", tm, fit, draws=draws, posterior={"k_hat": k_hat})
        capsys.readouterr()
        assert _predict(d, reg, tmp_path / f"out{k_hat}") == 0
        err = capsys.readouterr().err
        summary = json.loads((tmp_path / f"out{k_hat}" / "summary.json").read_text())
        assert ("k_hat 1.20 > 0.7" in err) == flagged
        assert ("flag" in summary["posterior"]) == flagged


def test_trials_spread_beyond_their_prior_are_flagged(tmp_path, regimens, capsys):
    """A fit whose trial effects spread far beyond the between-trial prior (from which a
    new trial's effect is drawn) gets a warning on screen, in summary.json and in the
    report; effects inside it none."""
    arms = [Arm("NEOSPHERE-TH", regimens["NEOSPHERE-TH"], trial="NeoSphere"),
            Arm("NEOALTTO-T", regimens["NEOALTTO-T"], trial="NeoALTTO")]
    names = ("log_kill_scale", "log_her2_potency#trastuzumab", "trial_effect#NeoSphere",
             "trial_effect#NeoALTTO")
    reg = _write(tmp_path, PERTUZUMAB.replace("pertuzumab", "trastuzumab"))
    for tag, effects, flagged in (("wide", (-2.0, 2.5), True), ("inside", (-0.2, 0.3), False)):
        d = tmp_path / f"fit_{tag}"
        d.mkdir()
        _save(d, arms, names)  # trial_sd 0.5
        doc = json.loads((d / "fit.json").read_text())
        doc["z"][2:4] = list(effects)
        (d / "fit.json").write_text(json.dumps(doc))
        err, summary, report = _predict_quiet(d, reg, tmp_path / f"out_{tag}", capsys)
        assert ("differ more than the between-trial prior" in err) == flagged, err
        assert (summary["trial_spread_flag"] is not None) == flagged
        assert summary["trial_spread_check"]["trial_sd"] == 0.5
        assert ("NeoALTTO +2.50" in report) == flagged


def test_unconverged_chains_are_flagged(tmp_path, regimens, capsys):
    """Saved MCMC draws whose R-hat exceeds 1.01 or that had divergences (`fitcsc run
    --posterior nuts`) are flagged on screen, in summary.json and in the report; the flag
    is computed again from the diagnostics, not taken from the file; clean chains give
    none."""
    tm, fit, draws, reg = _saved_draws_setup(tmp_path, regimens)
    for tag, rhat, n_div, flagged in (("bad", 1.05, 2, True), ("good", 1.003, 0, False)):
        d = tmp_path / f"fit_{tag}"
        d.mkdir()
        save_fit(d / "fit.json", tm, fit, draws=draws, posterior={
            "sampler": "nuts", "method": "NUTS", "rhat_max": rhat, "ess_bulk_min": 400.0,
            "n_divergent": n_div, "flag": None})
        capsys.readouterr()
        out = tmp_path / f"out_{tag}"
        assert _predict(d, reg, out, "--quiet") == 0
        err = capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        report = (out / "report.md").read_text()
        assert ("R-hat 1.050 > 1.01" in err and "2 divergent" in err) == flagged, err
        assert ("flag" in summary["posterior"]) == flagged
        assert ("**Flag: posterior: R-hat 1.050" in report) == flagged
        assert "R-hat max" in report  # the diagnostics are stated either way


def test_out_of_sample_records_match_their_runs():
    """Every leave-one-trial-out record that `predict` reports is its run's summary.json:
    the configuration it is matched on and the numbers it prints."""
    from fitcsc._jobs.predict import OUT_OF_SAMPLE, VALIDATED_TRIALS, VALIDATION_DIR

    root = pathlib.Path(__file__).resolve().parents[1] / VALIDATION_DIR
    assert len({r["run"] for r in OUT_OF_SAMPLE}) == len(OUT_OF_SAMPLE)
    for r in OUT_OF_SAMPLE:
        s = json.loads((root / r["run"] / "summary.json").read_text())
        assert tuple(sorted({a["trial"] for a in _rows(root / r["run"] / "arms.csv")})) == (
            VALIDATED_TRIALS), r["run"]
        st, pcr = s["settings"], s["pcr"]
        assert (s["structure"], st["hyper"], st["links"]) == (
            r["structure"], r["hyper"], r["links"]), r["run"]
        assert r["hyper"] == "auto" or st["trial_sd"] == r["trial_sd"], r["run"]
        assert (pcr["n_arms"], pcr["n_inside_95"]) == (r["n_arms"], r["n_inside"]), r["run"]
        assert round(pcr["mean_signed_error_points"], 1) == r["mean_signed_error_points"]
        assert round(pcr["mean_width_95_points"], 1) == r["mean_width_points"], r["run"]


def test_predict_reports_its_fits_out_of_sample_record(fit_dir, tmp_path, capsys):
    """`predict` says how intervals of its fit's configuration held on held-out trials
    (on screen whatever --quiet says, in summary.json and in the report), and says so
    when there is no record: a fit without a run summary, or another configuration."""
    reg = _write(tmp_path, PERTUZUMAB.replace("pertuzumab", "trastuzumab"))
    from fitcsc._jobs.predict import VALIDATED_TRIALS

    run = {"n_arms": 23, "quick": False,
           "data": {"pcr_outcome_links": "data/clinical/pcr_outcome_links.csv",
                    "trials": list(VALIDATED_TRIALS)},
           "model": {"structure": "continuous_kill_alpha", "trial_sd": 1.0,
                     "hyper_choice": "given"}}
    cases = (("none", None, None, "has no configuration record"),
             ("main", run, "continuous_kill_alpha_links_10trials", "held 16 of 23"),
             # --fit names the fit.json: the summary beside it
             ("file", run, "continuous_kill_alpha_links_10trials", "held 16 of 23"),
             ("sd2", run | {"model": run["model"] | {"trial_sd": 2.0}}, None,
              "between-trial sd 2, links on, 23 arms of 9 trials"),
             # the same configuration on other trials
             ("data", run | {"data": run["data"] | {"trials": ["NeoSphere", "Mine"]}}, None,
              "no leave-one-trial-out record"),
             ("quick", run | {"quick": True}, None, "has no configuration record"))
    for tag, summary, record, words in cases:
        d = tmp_path / f"fit_{tag}"
        d.mkdir()
        (d / "fit.json").write_text((fit_dir / "fit.json").read_text())
        if summary is not None:
            (d / "summary.json").write_text(json.dumps(summary))
        fit = d / "fit.json" if tag == "file" else d
        err, got, report = _predict_quiet(fit, reg, tmp_path / f"out_{tag}", capsys)
        assert (got["out_of_sample"] or {}).get("run") == record, tag
        assert words in got["out_of_sample_flag"] and words in err, (tag, err)
        assert words in report, tag
        if tag == "main":  # 16 of 23 (70%): fewer than a 95% interval claims
            assert "fewer than their nominal 95%" in err
