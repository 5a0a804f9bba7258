"""Adjuvant trastuzumab: DFS hazard ratios predicted from the pCR fit, then fitted jointly.

Question: does the CSC model fitted to neoadjuvant pCR alone predict the adjuvant
DFS benefit of trastuzumab (NSABP B-31/NCCTG N9831 joint analysis, HR 0.48; HERA
first interim, HR 0.54)? And can one parameter set fit pCR and both hazard ratios?

A. Out of sample. The drug parameters come from the pCR fit (``--fit``, default
   experiments/results/pcr_fit/fit.json) and are not refitted; that fit (the main
   job's default) also holds the published pCR-vs-no-pCR hazard ratios of treated
   HER2+ patients, which rule out a fit in which pCR means cure. Only each trial's
   median micrometastatic burden after surgery is fitted, to the control arm's
   published DFS landmark (B-31: 3-year DFS 75.4 %, HERA: 2-year 77.4 %): no adjuvant
   hazard ratio enters. Predicted HRs carry 95% intervals from
   the pCR fit's Laplace posterior, predictions linearised at the mode (burden held
   at its fit).
B. Joint. pCR counts, control landmarks, both log hazard ratios and (unless
   ``--no-links``) the published HER2+ hazard ratios of pCR vs no pCR
   (`fitcsc.trials.LINKS_USED`) in one MAP fit (the pCR fit's priors), with a
   posterior of Laplace draws (predictions linearised at the mode) saved for
   `fitcsc predict`. The links enter
   through `TrialModel.pcr_outcome`: a neoadjuvant patient's pCR comes from her primary,
   her recurrence from distant micrometastases (their own burden, a fraction of CSCs out
   of the drugs' reach) treated with the same sensitivity, so pCR and DFS come from one
   residual state per patient.

Endpoints (`fitcsc._trial.model`): cure ``exp(-pi S_res)`` 60 days after the last adjuvant
dose; a non-cured patient recurs when her residual CSC lineages regrow to 1e9 cells;
HR = ratio of cumulative hazards at the trial's median follow-up (with cure
fractions hazards are not proportional, so this is an approximation, stated).
HERA's observation arm had finished chemotherapy before randomisation; the model
starts HERA patients after chemotherapy with their own burden.

Run: ``python experiments/adjuvant_fit.py [--quick] [--fit FIT] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import fitcsc
import fitcsc.summary as fs
from fitcsc.files import csv_text, pyplot, save_figure, write_atomic
from fitcsc.trials import (
    Objective,
    TrialData,
    TrialModel,
    adjuvant_observations,
    draw_values,
    fit_trials,
    load_fit,
    load_links,
    load_neo_landmarks,
    posterior_draws,
    save_fit,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLINICAL = ROOT / "data" / "clinical"
DEFAULT_FIT = ROOT / "experiments" / "results" / "pcr_fit" / "fit.json"


def _pcr_module():
    spec = importlib.util.spec_from_file_location("pcr_fit", ROOT / "experiments" / "pcr_fit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pcr_fit_doc(path, quick):
    """The saved pCR fit; in quick mode a missing one is made by pcr_fit --quick."""
    path = pathlib.Path(path)
    if path.exists() or not quick:
        p = path.resolve()  # shown relative to the repository: results stay portable
        return load_fit(path), str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="fitcsc_pcr_"))
    pcr = _pcr_module()
    pcr.main(pcr.parse_args(["--quick", "--out", str(tmp)]))
    return load_fit(tmp / "fit.json"), f"{tmp / 'fit.json'} (made by pcr_fit.py --quick)"


def main(args) -> dict:
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    doc, fit_source = pcr_fit_doc(args.fit, args.quick)
    regimens = fitcsc.read_regimen_table(CLINICAL / "regimens.csv")
    rows = fitcsc.read_clinical(CLINICAL / "adjuvant_outcomes.csv")
    adj_arms, landmarks, hrs = adjuvant_observations(rows, regimens)
    trials = list(dict.fromkeys(a.trial for a in adj_arms))
    burden = [f"log_micromet_cells#{t}" for t in trials]
    opts = dict(doc["options"])
    fixed = dict(doc["natural"])

    # ---- A. out of sample: drug parameters from the pCR fit, burden from control DFS
    tm_a = TrialModel.build(adj_arms, burden, fixed=fixed, base_kill=doc["base_kill"], **opts)
    fit_a = fit_trials(Objective(tm_a, TrialData(landmarks=landmarks)),
                       n_starts=args.starts, max_steps=args.steps)
    names_full = tuple(doc["names"]) + tuple(burden)
    tm_full = TrialModel.build(adj_arms, names_full, fixed=fixed, base_kill=doc["base_kill"],
                               **opts)
    obj_full = Objective(tm_full, TrialData(landmarks=landmarks, hrs=hrs))
    z_a = jnp.concatenate([jnp.asarray(doc["z"]), jnp.asarray(fit_a.z)])
    pred_a = obj_full.predictions(z_a)
    draws = fs.laplace_draws(np.asarray(doc["z"]), np.asarray(doc["cov"]), n_draws=args.draws,
                             key=jax.random.PRNGKey(args.seed))
    draws_full = np.concatenate([draws, np.broadcast_to(fit_a.z, (len(draws), len(burden)))],
                                axis=1)
    hr_a = _interval(lambda z: jnp.exp(obj_full.predictions(z)["log_hr"]), draws_full, z_a)

    # ---- B. joint: pCR + landmarks + hazard ratios
    pcr = _pcr_module()
    pcr_arms, pcr_obs = pcr.load(pcr.QUICK_TRIALS if args.quick else None)
    pcr_names = tuple(n for n in doc["names"])
    # the pCR fit may carry the links already (the main job's default): then their
    # parameters are among its names and start at its values
    link_names = tuple(n for n in ("log_micromet_cells#neoadjuvant", "logit_protected_fraction")
                       if args.links and n not in pcr_names)
    # with the links, the neoadjuvant arms' EFS/DFS landmarks and whole courses, as the
    # main job fits them
    neo, courses = load_neo_landmarks(pcr_arms, CLINICAL) if args.links else ([], {})
    tm_b = TrialModel.build(pcr_arms + adj_arms, pcr_names + tuple(burden) + link_names,
                            base_kill=doc["base_kill"], courses=courses, **opts)
    links = load_links(pcr_arms, CLINICAL) if args.links else []
    hyper = {k: v for k, v in doc.get("hyper", {}).items()}
    obj_b = Objective(tm_b, TrialData(pcr=pcr_obs, landmarks=landmarks, hrs=hrs, links=links,
                                      neo_landmarks=neo), **hyper)
    start = np.concatenate([np.asarray(doc["z"]), fit_a.z,
                            [{"log_micromet_cells#neoadjuvant": np.log(1e5),
                              "logit_protected_fraction": np.log(1e-6 / (1 - 1e-6))}[n]
                             for n in link_names]])
    fit_b = fit_trials(obj_b, n_starts=args.starts, max_steps=args.steps, start=start)
    pred_b = obj_b.predictions(jnp.asarray(fit_b.z))
    post_b = posterior_draws(obj_b, fit_b, args.draws, jax.random.PRNGKey(args.seed + 1))
    record_b = post_b.record()
    draws_b = post_b.equal_weight(args.seed)  # Laplace draws, predictions linearised
    hr_b = _interval(lambda z: jnp.exp(obj_b.predictions(z)["log_hr"]), draws_b, fit_b.z)
    idata = fs.to_inference_data(draws_b, list(tm_b.names), method="laplace")
    out.mkdir(parents=True, exist_ok=True)
    fs.write_summary_csv(fs.summarize(idata), out / "posterior_joint.csv")
    rates_b, _ = tm_b.pcr_rates(jnp.asarray(fit_b.z))
    inside = 0
    for i, o in enumerate(pcr_obs):
        lo, hi = pcr.ci95(o.count, o.n)
        inside += lo <= float(rates_b[i]) <= hi

    table = []
    for k, h in enumerate(hrs):
        pub_lo, pub_hi = np.exp(h.log_hr - 1.96 * h.se), np.exp(h.log_hr + 1.96 * h.se)
        table.append([h.name, f"{h.years:g}", f"{np.exp(h.log_hr):.3f}", f"{pub_lo:.3f}",
                      f"{pub_hi:.3f}", f"{float(np.exp(pred_a['log_hr'][k])):.3f}",
                      f"{hr_a[1][k]:.3f}", f"{hr_a[2][k]:.3f}",
                      f"{float(np.exp(pred_b['log_hr'][k])):.3f}", f"{hr_b[1][k]:.3f}",
                      f"{hr_b[2][k]:.3f}"])
    header = ["comparison", "horizon_years", "published_hr", "published_lo95",
              "published_hi95", "out_of_sample_hr", "out_of_sample_lo95",
              "out_of_sample_hi95", "joint_hr", "joint_lo95", "joint_hi95"]
    write_atomic(out / "hazard_ratios.csv", csv_text(header, table))
    link_rows = []
    if links:
        lhr = _interval(lambda z: jnp.exp(obj_b.link_log_hr(z)), draws_b, fit_b.z)
        point = np.exp(np.asarray(pred_b["link_log_hr"]))
        link_rows = [{"link": o.name, "years": o.years, "published_hr": float(np.exp(o.log_hr)),
                      "published_lo95": float(np.exp(o.log_hr - 1.96 * o.se)),
                      "published_hi95": float(np.exp(o.log_hr + 1.96 * o.se)),
                      "joint_hr": float(point[k]), "joint_lo95": float(lhr[1][k]),
                      "joint_hi95": float(lhr[2][k])} for k, o in enumerate(links)]
    save_fit(out / "fit.json", tm_b, fit_b,
             extra={"data": "pcr + adjuvant landmarks + HRs"
                    + (" + pCR-outcome links" if links else ""), "quick": bool(args.quick)},
             draws=draws_b, posterior=record_b)
    summary = {
        "question": "adjuvant DFS HR of trastuzumab: out of sample from pCR, then joint",
        "pcr_fit": fit_source, "quick": bool(args.quick),
        "hazard_ratios": [dict(zip(header, r, strict=True)) for r in table],
        "landmarks": [{"arm": o.arm, "years": o.years, "published": o.rate,
                       "out_of_sample_fit": float(pred_a["landmark"][i]),
                       "joint": float(pred_b["landmark"][i])}
                      for i, o in enumerate(landmarks)],
        "micromet_cells_out_of_sample": {
            t: float(np.exp(v)) for t, v in zip(trials, fit_a.z, strict=True)},
        "joint": {"n_pcr_arms": len(pcr_obs), "n_pcr_within_ci95": int(inside),
                  "loss": fit_b.loss, "converged": fit_b.converged,
                  "steps": fit_b.n_steps, "posterior": record_b["method"]},
        "pcr_outcome_links": link_rows,
        "wall_s": round(time.perf_counter() - t_start, 2),
        "precision": "float64" if jax.config.jax_enable_x64 else "float32",
        "device": str(jax.devices()[0]),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _figure(tm_full, z_a, tm_b, jnp.asarray(fit_b.z), adj_arms, landmarks, table,
            out / "adjuvant_fit.png")
    _result_md(summary, out / "RESULT.md")
    return summary


def _interval(fn, draws, z0):
    """Value at ``z0`` and 95% interval of the positive ``fn`` over Laplace ``draws``, by
    the delta method on the log scale (the "linear" posterior of `fitcsc.trials`: the
    one calibrated by simulation in benchmarks/trial_calibration.py), so the interval
    is always around the value at the mode."""
    values = draw_values(fn, draws, batch=100, linearise_at=np.asarray(z0), link="log")
    lo, hi = np.quantile(values, [0.025, 0.975], axis=0)
    return np.asarray(fn(jnp.asarray(z0))), lo, hi


def _figure(tm_a, z_a, tm_b, z_b, adj_arms, landmarks, table, path):
    plt = pyplot()

    years = np.linspace(0.0, 5.0, 61)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    for ax, tm, z, tag in ((axes[0], tm_a, z_a, "out of sample"), (axes[1], tm_b, z_b,
                                                                   "joint")):
        dfs, _, _ = tm.dfs(z, years * 365.25)
        for a in adj_arms:
            i = tm.arm_names.index(a.name)
            ax.plot(years, 100 * np.asarray(dfs[i]), label=a.name)
        for o in landmarks:
            ax.plot(o.years, 100 * o.rate, "ko", ms=5)
        ax.set(xlabel="years from start of adjuvant therapy", ylabel="DFS %", ylim=(40, 101),
               title=f"DFS, {tag} (dots: published control landmarks)")
        ax.legend(fontsize=7)
    ax = axes[2]
    for k, r in enumerate(table):
        y = len(table) - k
        ax.errorbar(float(r[2]), y + 0.2, xerr=[[float(r[2]) - float(r[3])],
                                                [float(r[4]) - float(r[2])]],
                    fmt="ks", capsize=3, label="published" if k == 0 else None)
        ax.errorbar(float(r[5]), y, xerr=[[max(float(r[5]) - float(r[6]), 0)],
                                          [max(float(r[7]) - float(r[5]), 0)]],
                    fmt="C0o", capsize=3, label="out of sample" if k == 0 else None)
        ax.errorbar(float(r[8]), y - 0.2, xerr=[[max(float(r[8]) - float(r[9]), 0)],
                                                [max(float(r[10]) - float(r[8]), 0)]],
                    fmt="C1o", capsize=3, label="joint fit" if k == 0 else None)
    ax.set_yticks([len(table) - k for k in range(len(table))], [r[0] for r in table],
                  fontsize=7)
    ax.axvline(1.0, color="0.5", ls="--", lw=0.8)
    ax.set(xlabel="DFS hazard ratio (95% interval)", title="trastuzumab vs control")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _result_md(summary, path):
    lines = ["# Adjuvant trastuzumab: DFS hazard ratio, out of sample and joint", "",
             f"pCR fit used: {summary['pcr_fit']}" + (" (quick run)" if summary["quick"]
                                                      else ""), "",
             "| comparison | horizon (y) | published HR (95% CI) | out of sample (pCR fit "
             "only) | joint fit |", "|---|---|---|---|---|"]
    for r in summary["hazard_ratios"]:
        lines.append(
            f"| {r['comparison']} | {r['horizon_years']} | {r['published_hr']} "
            f"({r['published_lo95']}-{r['published_hi95']}) | {r['out_of_sample_hr']} "
            f"({r['out_of_sample_lo95']}-{r['out_of_sample_hi95']}) | {r['joint_hr']} "
            f"({r['joint_lo95']}-{r['joint_hi95']}) |")
    j = summary["joint"]
    lines += ["", "Out of sample: every parameter but the adjuvant burdens comes from the "
              "pCR fit (fitted to pCR counts and, when it holds them, the published "
              "pCR-vs-no-pCR hazard ratios of neoadjuvant patients with the 5-yr EFS/DFS "
              "of the neoadjuvant arms that publish it); "
              "only each trial's micrometastatic burden was fitted, to the control arm's DFS "
              "landmark; no adjuvant hazard ratio entered. Joint: pCR counts, landmarks and "
              "both hazard ratios fitted together. Intervals: Laplace draws, each prediction "
              "linearised at the mode on the log scale.", "",
              f"Joint fit: {j['n_pcr_within_ci95']} of {j['n_pcr_arms']} pCR arms inside "
              f"their binomial 95% CI; converged: {j['converged']} ({j['steps']} steps).",
              "", "Control landmarks (published vs model): " + "; ".join(
                  f"{o['arm']} {o['years']:g} y: {100 * o['published']:.1f}% vs "
                  f"{100 * o['out_of_sample_fit']:.1f}% (A) / {100 * o['joint']:.1f}% (B)"
                  for o in summary["landmarks"]) + ".",
              ""] + ([
                  "pCR vs no pCR within treated HER2+ patients (joint fit, 95% interval): "
                  + "; ".join(f"{r['link']}: published {r['published_hr']:.2f} "
                              f"({r['published_lo95']:.2f}-{r['published_hi95']:.2f}), model "
                              f"{r['joint_hr']:.2f} ({r['joint_lo95']:.2f}-"
                              f"{r['joint_hi95']:.2f})" for r in summary["pcr_outcome_links"])
                  + ".", ""] if summary["pcr_outcome_links"] else []) + [
              "HR is the ratio of cumulative hazards at the median follow-up.",
              "", f"Machine: {summary['device']}, {summary['precision']}; "
              f"wall {summary['wall_s']} s."]
    write_atomic(path, "\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="joint fit on NeoSphere pCR only, 1 start, few steps, 100 draws")
    p.add_argument("--fit", default=str(DEFAULT_FIT), help="saved pCR fit (fit.json)")
    p.add_argument("--starts", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-links", dest="links", action="store_false",
                   help="leave the pCR-vs-no-pCR hazard ratios out of the joint fit")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "adjuvant_fit"))
    args = p.parse_args(argv)
    if args.quick:
        args.starts, args.steps, args.draws = 1, 15, 100
    return args


if __name__ == "__main__":
    s = main(parse_args(sys.argv[1:]))
    print(json.dumps({"hazard_ratios": s["hazard_ratios"], "wall_s": s["wall_s"]}, indent=1))
