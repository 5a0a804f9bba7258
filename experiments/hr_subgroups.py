"""Hormone-receptor status as a covariate: why do HR+ tumours reach pCR less often?

Question: in every neoadjuvant HER2+ trial in data/clinical that reports pCR by
hormone-receptor subgroup (MDACC, NeoSphere, NeoALTTO), HR+ tumours reach pCR less
often, most of all under HER2 blockade (NeoSphere dual blockade: 26 % vs 63 %). Can one
covariate of the virtual-patient population explain all the subgroup rates at once, and
which one: HR+ tumours that respond less to every drug (a shift of the log
responsiveness, ``hr_response_shift``, in units of its sd), or more HR+ tumours that do
not depend on HER2 (a logit shift of the HER2-independent fraction,
``hr_her2_independent_shift``: oestrogen-receptor signalling as an escape route)?

Method: the saved all-patient pCR fit (experiments/pcr_fit.py) is the start. The trials
publish subgroup percentages without subgroup sizes, so sizes and counts are derived
(`fitcsc.trials.hr_pcr_observations`: each trial's HR+ share from the mixture
identity, counts that add up to the arm's published count). Each arm's population is its
trial's HR+ share of HR+ tumours and the rest HR-. Three MAP fits of every parameter on
the same data (subgroup counts where published, all-patient counts elsewhere): no
covariate (both shifts 0), each shift alone, and both. Likelihood-ratio tests against
the no-covariate fit (chi-square); subgroup rates against the derived counts' exact 95 %
binomial intervals.

Run: ``python experiments/hr_subgroups.py [--quick] [--fit PATH] [--out DIR]``. Writes
``subgroups.csv``, ``summary.json``, ``hr_subgroups.png`` and ``RESULT.md`` to ``--out``
(default experiments/results/hr_subgroups).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import chi2

import fitcsc
from fitcsc.files import csv_text, pyplot, save_figure, write_atomic
from fitcsc.trials import Objective, TrialData, fit_trials, hr_pcr_observations, to_natural

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _fitted  # noqa: E402

ROOT = _fitted.ROOT
SHIFTS = ("hr_response_shift", "hr_her2_independent_shift")
MODELS = {"none": (), "response": SHIFTS[:1], "her2_independence": SHIFTS[1:],
          "both": SHIFTS}


def main(args) -> dict:
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    doc, source = _fitted.resolve_fit(args.fit, quick=args.quick, out=out)
    pcr_fit = _fitted.load_module("pcr_fit")
    trials = pcr_fit.QUICK_TRIALS if args.quick else None
    arms, obs = pcr_fit.load(trials)
    rows = fitcsc.read_clinical(_fitted.CLINICAL / "pcr_arms.csv")
    hobs, share = hr_pcr_observations(rows, obs)
    if not hobs:
        raise SystemExit("hr_subgroups: no arm with published HR+ and HR- pCR")
    data = TrialData(pcr=obs, hr_pcr=hobs)
    tm_all, z_all = _fitted.build(doc, arms, extra={n: 0.0 for n in SHIFTS})
    base = [n for n in tm_all.names if n not in SHIFTS]

    fits, objectives = {}, {}
    for label, free in MODELS.items():
        names = tuple(base) + free
        tm = dataclasses.replace(tm_all, names=names)
        start = jnp.asarray([z_all[list(tm_all.names).index(n)] for n in names])
        obj = Objective(tm, data)
        t0 = time.perf_counter()
        fit = fit_trials(obj, n_starts=1, start=start, max_steps=args.steps)
        fits[label] = (fit, round(time.perf_counter() - t0, 2))
        objectives[label] = obj

    pred, all_inside = {}, {}
    ix = {a: i for i, a in enumerate(tm_all.arm_names)}
    for label, (fit, _) in fits.items():
        pr = objectives[label].predictions(jnp.asarray(fit.z))
        pred[label] = {g: np.asarray(pr[f"pcr_{g}"]) for g in ("HR+", "HR-")}
        own = np.where(np.asarray(tm_all.breast_only), np.asarray(pr["pcr_breast"]),
                       np.asarray(pr["pcr_total"]))  # the arm's population, own definition
        all_inside[label] = _fitted.arms_inside(own, tm_all.arm_names, obs, pcr_fit.ci95)
    table, inside = [], {m: 0 for m in MODELS}
    for o in hobs:
        lo, hi = pcr_fit.ci95(o.count, o.n)
        row = {"trial": o.trial, "arm": o.arm, "subgroup": o.subgroup,
               "published_pct": o.published_pct, "derived_n": o.n, "derived_count": o.count,
               "ci95_lo_pct": 100 * lo, "ci95_hi_pct": 100 * hi}
        for m in MODELS:
            v = float(pred[m][o.subgroup][ix[o.arm]])
            row[f"pred_{m}_pct"] = 100 * v
            row[f"inside_{m}"] = bool(lo <= v <= hi)
            inside[m] += row[f"inside_{m}"]
        table.append(row)
    header = list(table[0])
    write_atomic(out / "subgroups.csv", csv_text(header, [[
        f"{r[h]:.2f}" if isinstance(r[h], float) else str(r[h]) for h in header]
        for r in table]))
    figure(table, out)

    loss0 = fits["none"][0].loss
    models = {}
    for m, (fit, secs) in fits.items():
        est = {n: {"z": float(fit.z[i]), "se": float(fit.se[i]),
                   "natural": float(to_natural(n, fit.z[i]))}
               for i, n in enumerate(fit.names) if n in SHIFTS or n in (
                   "logit_her2_independent", "log_response_sd")}
        lr = 2.0 * (loss0 - fit.loss)
        df = len(MODELS[m])
        models[m] = {"free_shifts": list(MODELS[m]), "neg_log_posterior": fit.loss,
                     "lr_vs_none": lr if df else None,
                     "p_vs_none": float(chi2.sf(max(lr, 0.0), df)) if df else None,
                     "n_subgroups_inside_ci95": inside[m],
                     "n_arms_inside_ci95": len(all_inside[m]),
                     "arms_outside_ci95": [o.arm for o in obs if o.arm not in all_inside[m]],
                     "converged": fit.converged,
                     "steps": fit.n_steps, "fit_s": secs, "estimates": est}
    summary = {
        "question": "hormone-receptor covariate: responsiveness shift vs HER2-independence",
        "quick": bool(args.quick), "fit_source": source,
        "n_subgroup_rows": len(hobs), "n_arms": len(obs),
        "hr_positive_share_derived": share,
        "models": models,
        "wall_s": round(time.perf_counter() - t_start, 2),
        "precision": "float64" if jax.config.jax_enable_x64 else "float32",
        "device": str(jax.devices()[0]),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _result_md(summary, table, out / "RESULT.md")
    return summary


def figure(table, out):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True, sharey=True)
    for ax, m in zip(axes, ("none", "both"), strict=True):
        for k, g in enumerate(("HR+", "HR-")):
            sel = [r for r in table if r["subgroup"] == g]
            x = np.asarray([r["published_pct"] for r in sel])
            y = np.asarray([r[f"pred_{m}_pct"] for r in sel])
            err = np.asarray([[r["published_pct"] - r["ci95_lo_pct"] for r in sel],
                              [r["ci95_hi_pct"] - r["published_pct"] for r in sel]])
            ax.errorbar(x, y, xerr=np.clip(err, 0, None), fmt="o" if k == 0 else "s",
                        color=f"C{k}", capsize=2, lw=0.8, label=g)
            for r, xi, yi in zip(sel, x, y, strict=True):
                ax.annotate(r["arm"], (xi, yi), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
        ax.plot([0, 80], [0, 80], color="0.6", lw=0.8)
        ax.set(xlabel="published subgroup pCR % (derived-count 95% CI)",
               ylabel="model pCR %", title=f"covariate: {m}")
        ax.legend(fontsize=8)
    fig.suptitle("pCR by hormone-receptor subgroup: no covariate vs both shifts", fontsize=10)
    save_figure(fig, out / "hr_subgroups.png")


def _result_md(s, table, path):
    lines = ["# Hormone-receptor status as a covariate of the virtual-patient population", "",
             ("Quick run (NeoSphere only, few optimiser steps): a smoke test, not a result."
              if s["quick"] else "Full run: every arm with published HR+ and HR- pCR."), "",
             f"- Start: {s['fit_source']}.",
             f"- {s['n_subgroup_rows']} subgroup rates; sizes and counts derived, HR+ share "
             "per trial from the mixture identity: "
             + ", ".join(f"{t} {100 * v:.0f} %" for t, v in
                         s["hr_positive_share_derived"].items()) + ".",
             f"- Wall time {s['wall_s']:.0f} s ({s['device']}, {s['precision']}).", "",
             "| covariate | -log posterior | LR vs none (p) | subgroups inside 95% CI | "
             "all-patient arms inside 95% CI (outside) | "
             "HR+ responsiveness shift (sd units) | HR+ logit shift of HER2-independence |",
             "|---|---|---|---|---|---|---|"]
    for m, d in s["models"].items():
        e = d["estimates"]

        def est(n, e=e):
            return f"{e[n]['natural']:.2f} ± {e[n]['se']:.2f}" if n in e else "0 (fixed)"

        lr = "" if d["lr_vs_none"] is None else f"{d['lr_vs_none']:.1f} ({d['p_vs_none']:.2g})"
        lines.append(f"| {m} | {d['neg_log_posterior']:.2f} | {lr} | "
                     f"{d['n_subgroups_inside_ci95']} of {s['n_subgroup_rows']} | "
                     f"{d['n_arms_inside_ci95']} of {s['n_arms']} "
                     f"({', '.join(d['arms_outside_ci95']) or 'none'}) | "
                     f"{est(SHIFTS[0])} | {est(SHIFTS[1])} |")
    lines += ["", "| arm | subgroup | published % | derived CI | none | response | "
              "HER2-indep. | both |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['arm']} | {r['subgroup']} | {r['published_pct']:.1f} | "
                     f"{r['ci95_lo_pct']:.0f}-{r['ci95_hi_pct']:.0f} | "
                     + " | ".join(f"{r[f'pred_{m}_pct']:.1f}" for m in MODELS) + " |")
    lines += ["", "Caveats: subgroup sizes are derived, not published (the identity is "
              "exact up to the rounding of the published percentages); the covariate "
              "acts on pCR only (the DFS model has none yet); SEs are Gauss-Newton "
              "(Laplace) on the unconstrained scale."]
    write_atomic(path, "\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="NeoSphere only, 6 optimiser steps")
    p.add_argument("--fit", default=str(_fitted.DEFAULT_FIT),
                   help="saved pCR fit (fit.json or its directory)")
    p.add_argument("--steps", type=int, default=None, help="LM steps per fit (60; quick 6)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "hr_subgroups"))
    a = p.parse_args(argv)
    if a.steps is None:
        a.steps = 6 if a.quick else 60
    return a


if __name__ == "__main__":
    s = main(parse_args(sys.argv[1:]))
    print(json.dumps({m: {k: d[k] for k in ("neg_log_posterior", "lr_vs_none",
                                             "n_subgroups_inside_ci95")}
                      for m, d in s["models"].items()}, indent=1))
