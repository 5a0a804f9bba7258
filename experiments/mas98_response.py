"""MAS98.06 (ER+, HER2 not amplified): does trastuzumab act, and through which term?

Question: in the luminal ER+ MAS98.06 PDX (Romero-Becerra et al. 2025 Nat Commun 16:10151;
52 mice, 10 arms: control, fulvestrant, trastuzumab, heregulin (`Her`), EGF and their
combinations), does trastuzumab slow an established tumour without HER2 amplification,
and if so through the CSC term (fewer symmetric CSC self-renewals) or the bulk term (slower
non-stem division)? How large is fulvestrant's effect beside it, and does the fitted
ranking of the arms agree with the model-free growth slopes? This is the xenograft side of
the HER2-low question (experiments/her2_low.py, NSABP B-47).

Method: the treatment window only (day >= 0; the pre-treatment rows from implantation are
left out, as in the publication's analysis), `fitcsc fit --share-growth-by study`
(`fit_job`): one joint maximum-likelihood fit of all curves, CSC growth (v_S, p) shared and
pinned by the control curves, each arm its own constant effect from day 0 (the files give no
doses): HER2 class (``her2_efficacy_csc``, ``her2_efficacy_bulk``) for arms naming
trastuzumab, a cytostatic efficacy for the others (heregulin and EGF are ligands that may
*stimulate* growth; an efficacy cannot go below 0, so stimulation shows as an efficacy at 0).
Model-free check: per mouse the least-squares slope of log volume over days 0-28, compared
by arm with the control median; Spearman between the arm's fitted growth reduction at day 28
and its observed slope reduction.

Run: ``python experiments/mas98_response.py [--quick] [--out DIR]``. Writes ``arms.csv``,
``summary.json``, ``effects.png``, ``RESULT.md`` and the fit job's outputs in ``fit/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import sys
import time
import warnings

import numpy as np
from scipy import stats

import fitcsc
from fitcsc.files import csv_text, pyplot, save_figure, write_atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = "mas98_06_pdx/mas98_06_tumor_volume.csv"
CONTROL = "Ctrl"
QUICK_ARMS = ("Ctrl", "Fulv", "Trast")
QUICK_MICE = 3  # per arm in --quick
SLOPE_DAYS = (0.0, 28.0)  # window of the model-free slopes (every arm is followed to 28)
EFFECTS = ("her2_efficacy_csc", "her2_efficacy_bulk", "cytostatic_efficacy")
BOUND = 1e-3  # an efficacy this close to 0 or 1 is "at a bound" (no usable SE)


def window(table, quick: bool):
    keep = table.day >= 0
    if quick:
        keep &= np.isin(table.arm, QUICK_ARMS)
        mice = []
        for arm in QUICK_ARMS:
            mice += list(dict.fromkeys(table.subject[keep & (table.arm == arm)].tolist()))[
                :QUICK_MICE]
        keep &= np.isin(table.subject, mice)
    return table.select(keep)


def slopes(table):
    """Per subject: least-squares slope of log volume [1/day] in ``SLOPE_DAYS`` (points with
    a measurable volume; NaN below 3 points)."""
    out = {}
    for s in table.subjects:
        m = ((table.subject == s) & (table.day >= SLOPE_DAYS[0]) & (table.day <= SLOPE_DAYS[1])
             & (table.volume_mm3 > 0))
        if m.sum() >= 3:
            out[s] = float(np.polyfit(table.day[m], np.log(table.volume_mm3[m]), 1)[0])
        else:
            out[s] = math.nan
    return out


def _f(x):
    return math.nan if x in ("", None) else float(x)


def arm_rows(fits_csv, table, pred_csv):
    """One row per arm: fitted effects (shared by the arm's curves) with SEs and flags,
    the model's log-volume change over the slope window, and the observed slopes."""
    with open(fits_csv, newline="") as fh:
        fits = list(csv.DictReader(fh))
    obs = slopes(table)
    rows = []
    for arm in table.arms:
        sel = [r for r in fits if r["arm"] == arm]
        row = {"arm": arm, "n_mice": len(sel),
               "status": ";".join(sorted({r["status"] for r in sel}))}
        for name in EFFECTS:
            v, se = _f(sel[0].get(name)), _f(sel[0].get(f"{name}_se"))
            row[name], row[f"{name}_se"] = v, se
            at = math.isfinite(v) and min(v, 1 - v) < BOUND
            row[f"{name}_flag"] = "at_bound" if at else ("" if math.isfinite(se) or
                                                          not math.isfinite(v) else "no_se")
        s = np.asarray([obs[r["subject"]] for r in sel])
        row["observed_slope_median"] = float(np.nanmedian(s)) if np.isfinite(s).any() else \
            math.nan
        row["model_slope_median"] = float(np.nanmedian([pred_csv[r["subject"]] for r in sel]))
        rows.append(row)
    ctrl = next(r for r in rows if r["arm"] == CONTROL)
    for r in rows:
        r["observed_reduction"] = ctrl["observed_slope_median"] - r["observed_slope_median"]
        r["model_reduction"] = ctrl["model_slope_median"] - r["model_slope_median"]
    return rows


def model_slopes(out, table):
    """Per subject: slope of the fitted log volume over the subject's observation days in
    ``SLOPE_DAYS`` (from the fit's predictions at the data points)."""
    path = out / "fit" / "predictions.csv"
    pred = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            d = float(r["day"])
            if SLOPE_DAYS[0] <= d <= SLOPE_DAYS[1]:
                pred.setdefault(r["subject"], []).append((d, float(r["log_volume_pred"])))
    return {s: float(np.polyfit(*np.asarray(v).T, 1)[0]) if len(v) >= 3 else math.nan
            for s, v in pred.items()}


def figure(rows, out):
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    treated = [r for r in rows if r["arm"] != CONTROL]
    for k, name in enumerate(EFFECTS):
        xs, ys, es = [], [], []
        for i, r in enumerate(treated):
            if math.isfinite(r[name]):
                xs.append(i + (k - 1) * 0.22)
                ys.append(r[name])
                ok = r[f"{name}_flag"] == ""
                es.append(1.96 * r[f"{name}_se"] if ok else 0.0)
        if xs:
            ax0.errorbar(xs, ys, yerr=es, fmt="o", ms=5, color=f"C{k}", capsize=2,
                         label=name, lw=0.9)
    ax0.set_xticks(range(len(treated)), [r["arm"] for r in treated], rotation=40,
                   ha="right")
    ax0.set(ylim=(-0.05, 1.05), ylabel="fitted efficacy (95% interval)",
            title="MAS98.06: constant effect per arm (shared growth)")
    ax0.legend(fontsize=8)
    for r in rows:
        ax1.scatter(r["observed_reduction"], r["model_reduction"], s=20)
        ax1.annotate(r["arm"], (r["observed_reduction"], r["model_reduction"]), fontsize=7,
                     xytext=(3, 3), textcoords="offset points")
    lim = [min(min(r["observed_reduction"], r["model_reduction"]) for r in rows) - 0.005,
           max(max(r["observed_reduction"], r["model_reduction"]) for r in rows) + 0.005]
    ax1.plot(lim, lim, color="0.6", lw=0.8)
    ax1.set(xlabel="observed slope reduction vs control [1/day] (median per arm)",
            ylabel="fitted slope reduction vs control [1/day]",
            title=f"days {SLOPE_DAYS[0]:g}-{SLOPE_DAYS[1]:g}: model vs data")
    save_figure(fig, out / "effects.png")


def main(args) -> dict:
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    table = window(fitcsc.read_tidy_csv(fitcsc.data_dir(args.data_dir) / DATA), args.quick)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the constant-effect note: in summary
        job = fitcsc.fit_job(table, out / "fit", share_growth_by="study", starts=args.starts,
                      quick=args.quick, max_subjects=len(table.subjects),
                      progress=not args.no_progress)
    rows = arm_rows(out / "fit" / "fits.csv", table, model_slopes(out, table))
    header = list(rows[0])
    write_atomic(out / "arms.csv", csv_text(
        header, [[f"{r[h]:.6g}" if isinstance(r[h], float) else str(r[h]) for h in header]
                 for r in rows]))
    figure(rows, out)
    ok = [r for r in rows if r["arm"] != CONTROL and math.isfinite(r["observed_reduction"])]
    rho = (stats.spearmanr([r["observed_reduction"] for r in ok],
                           [r["model_reduction"] for r in ok]) if len(ok) >= 3 else None)
    trast = [r for r in rows if "Trast" in r["arm"]]
    summary = {
        "question": "trastuzumab on an ER+ HER2-non-amplified PDX: CSC or bulk term?",
        "quick": bool(args.quick), "n_curves": job["n_subjects"], "n_arms": len(rows),
        "n_failed": job["n_failed"], "status_counts": job["status_counts"],
        "group_status_counts": job["group_status_counts"], "starts": job["starts"],
        "optimiser": job["optimiser"], "fit_s": job["fit_s"],
        "wall_s": round(time.perf_counter() - t_start, 2),
        "device": job["device"], "precision": job["precision"], "versions": job["versions"],
        "shared_growth": _shared_growth(out / "fit" / "fits.csv"),
        "arms": rows,
        "trastuzumab_arms": {r["arm"]: {k: r[k] for k in (
            "her2_efficacy_csc", "her2_efficacy_csc_se", "her2_efficacy_csc_flag",
            "her2_efficacy_bulk", "her2_efficacy_bulk_se", "her2_efficacy_bulk_flag")}
            for r in trast},
        "spearman_model_vs_observed": (None if rho is None else
                                       {"rho": float(rho.statistic),
                                        "p": float(rho.pvalue), "n_arms": len(ok)}),
        "job_warnings": job["warnings"], "job_errors": job["errors"],
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, allow_nan=True) + "\n")
    _result_md(summary, out / "RESULT.md")
    return summary


def _shared_growth(fits_csv):
    with open(fits_csv, newline="") as fh:
        first = next(csv.DictReader(fh))
    return {k: _f(first[k]) for k in ("csc_division_rate", "self_renewal")}


def _ci(r, name):
    v, se, fl = r[name], r[f"{name}_se"], r[f"{name}_flag"]
    if not math.isfinite(v):
        return ""
    if fl:
        return f"{v:.3g} ({fl})"
    return f"{v:.3g} ({max(v - 1.96 * se, 0):.3g}-{min(v + 1.96 * se, 1):.3g})"


def _result_md(s, path):
    g = s["shared_growth"]
    lines = ["# MAS98.06 (ER+, HER2 not amplified): trastuzumab through the CSC or bulk term?",
             "", ("Quick run (3 arms x 3 mice, 2 starts, 100 optimiser steps): a smoke test, "
                  "not a result." if s["quick"] else
                  "Full run: every mouse of the treatment window (day >= 0)."), "",
             f"- {s['n_curves']} curves in {s['n_arms']} arms, one joint fit; status "
             f"{s['status_counts']}; failed {s['n_failed']}.",
             f"- Shared growth: CSC division rate {g['csc_division_rate']:.3g}/day, "
             f"self-renewal p = {g['self_renewal']:.3g}.",
             f"- Wall time {s['wall_s']:.0f} s ({s['device']}, {s['precision']}, "
             f"{s['starts']} starts).", "",
             "| arm | mice | HER2 CSC term | HER2 bulk term | cytostatic | observed slope "
             "[1/day] | fitted slope |",
             "|---|---|---|---|---|---|---|"]
    for r in s["arms"]:
        lines.append(f"| {r['arm']} | {r['n_mice']} | {_ci(r, 'her2_efficacy_csc')} | "
                     f"{_ci(r, 'her2_efficacy_bulk')} | {_ci(r, 'cytostatic_efficacy')} | "
                     f"{r['observed_slope_median']:.4f} | {r['model_slope_median']:.4f} |")
    sp = s["spearman_model_vs_observed"]
    if sp:
        lines += ["", f"Fitted vs observed slope reduction over the treated arms: Spearman "
                  f"rho {sp['rho']:.2f} (two-sided p {sp['p']:.2g}; 0 means every rank agrees, "
                  f"{sp['n_arms']} arms)."]
    lines += ["", "Intervals: 95% from the Gauss-Newton standard errors (delta method); an "
              "efficacy at a bound has none. Heregulin and EGF arms can only show an "
              "efficacy >= 0: a stimulated arm sits at 0. Doses are not in the data, so each "
              "arm's effect is a constant from day 0."]
    write_atomic(path, "\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"arms {', '.join(QUICK_ARMS)}, {QUICK_MICE} mice each, 2 starts")
    p.add_argument("--starts", type=int, default=4, help="starts of the joint fit")
    p.add_argument("--data-dir", default=None, help="data directory (default: fitcsc's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "mas98_response"))
    return p.parse_args(argv)


if __name__ == "__main__":
    summary = main(parse_args(sys.argv[1:]))
    print(json.dumps({k: summary[k] for k in ("n_curves", "n_failed", "status_counts",
                                               "trastuzumab_arms",
                                               "spearman_model_vs_observed", "wall_s")},
                     indent=1))
