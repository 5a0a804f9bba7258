"""HER2-low: can the fitted CSC model reproduce the NSABP B-47 null, and the xenograft finding?

Questions (DESIGN §1 claims 3 and 6):

1. NSABP B-47 (Fehrenbacher 2020) found no benefit of one year of adjuvant trastuzumab
   added to chemotherapy in HER2-low disease: IDFS HR 0.98 (95% CI 0.76-1.25). For which
   HER2 dependence of CSCs (``h_S``) and bulk (``h_D``), both in [0, 1] (1 = HER2+ as
   fitted), does the model's predicted HR lie inside that CI?
2. In HER2-low luminal xenografts trastuzumab given early (adjuvant: small burden,
   CSC-driven) blocks tumour growth, while established tumours do not respond. Where in
   (h_S, h_D) does the model show that: no response of an established tumour (adding H
   to chemotherapy leaves pCR unchanged, H alone leaves the volume unchanged) while H
   alone in the adjuvant setting cures more patients?

Model: the saved pCR fit (experiments/pcr_fit.py; HER2+ trials) with ``h_S``, ``h_D`` set
on a grid; a HER2-low tumour is otherwise the fitted HER2+ tumour (same growth,
chemotherapy sensitivity and spread): an assumption. B-47's micrometastatic burden is
not known: it is calibrated so that the chemotherapy-alone arm (TC x6) reaches the
published 5-yr IDFS (89.2%); then the trastuzumab arm is a prediction. The HR is the
cumulative-hazard ratio at the median follow-up (3.8 yr; `fitcsc.trials.hazard_ratio`).
The control arm carries the trastuzumab lines at dose 0 so both arms are evaluated on
the same day (see `_fitted.zero_dose_pad`). Sensitivity: the AC -> weekly paclitaxel
backbone (B47-*-ACP), calibrated the same way. Reference: the HER2+ joint B-31/N9831
analysis (HR 0.48, 0.39-0.59), calibrated on its control arm's 3-yr DFS, predicted at
h = (1, 1): does the fitted model's adjuvant trastuzumab effect have HER2+ size?

Established tumour (the fit's 3-cm primary, 14,000 mm3): neoadjuvant TC x6 with and
without trastuzumab q3w for 18 weeks (pCR in breast and nodes), and trastuzumab alone
for 12 weeks (typical patient's invasive cells relative to h = 0, i.e. untreated).
Adjuvant, xenograft analogue: trastuzumab alone for one year (HERA schedule) on B-47's
calibrated micrometastatic burden; cure gain relative to h = 0.

Parameter uncertainty: Laplace draws of the fit's parameters (the burden recalibrated
per draw) give a 95% interval of the largest h_S (at h_D = 0) compatible with the B-47
CI's lower limit.

Run: ``python experiments/her2_low.py [--quick] [--fit PATH] [--out DIR]``. Writes
``grid.csv``, ``summary.json``, ``her2_low.png`` and ``RESULT.md`` to ``--out`` (default
experiments/results/her2_low).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fitcsc
import fitcsc.summary as fs
from fitcsc import DoseLine, Regimen
from fitcsc.files import csv_text, write_atomic
from fitcsc.trials import Arm, from_natural, hazard_ratio, load_draws

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _fitted  # noqa: E402

ROOT = _fitted.ROOT
B47 = "NSABP B-47"
JA = "NSABP B-31 / NCCTG N9831 (joint)"
H_S, H_D = "her2_dependence_csc", "her2_dependence_bulk"
M_B47, M_JA = f"log_micromet_cells#{B47}", f"log_micromet_cells#{JA}"
PHI = "logit_her2_independent"  # fraction of tumours that do not depend on HER2
YEAR = _fitted.YEAR


def published():
    """B-47 and B-31/N9831 numbers used here, from data/clinical/adjuvant_outcomes.csv."""
    rows = fitcsc.read_clinical(_fitted.CLINICAL / "adjuvant_outcomes.csv")

    def row(arm, analysis):
        return next(r for r in rows if r["arm_id"] == arm and r["analysis"] == analysis)

    c, h = row("B47-C", "definitive IDFS"), row("B47-H", "definitive IDFS")
    jc = row("JA-C", "definitive DFS (Romond 2005)")
    jh = row("JA-H", "definitive DFS (Romond 2005)")
    return {
        "b47": {"hr": float(h["hr_vs_control"]), "lo": h["hr_ci95_lo"], "hi": h["hr_ci95_hi"],
                "followup_years": h["median_followup_years"],
                "landmark_years": c["landmark_years"],
                "control_landmark": c["landmark_rate_pct"] / 100.0,
                "h_landmark": h["landmark_rate_pct"] / 100.0, "citation": h["citation"]},
        "ja": {"hr": float(jh["hr_vs_control"]), "lo": jh["hr_ci95_lo"],
               "hi": jh["hr_ci95_hi"], "followup_years": jh["median_followup_years"],
               "landmark_years": jc["landmark_years"],
               "control_landmark": jc["landmark_rate_pct"] / 100.0,
               "citation": jh["citation"]},
    }


def trastuzumab_q3w(n_doses, start_day=0.0):
    """8 mg/kg load, then 6 mg/kg every 3 weeks (``n_doses`` in all)."""
    lines = [DoseLine("trastuzumab", 8.0, "mg/kg", start_day, 0.0, 1, 1.5)]
    if n_doses > 1:
        lines.append(DoseLine("trastuzumab", 6.0, "mg/kg", start_day + 21.0, 21.0,
                              n_doses - 1, 0.5))
    return tuple(lines)


def make_arms(regimens):
    """Arms in a fixed order (indices in `ARM`)."""
    r = regimens
    tc, tch = r["B47-C-TC"], r["B47-H-TC"]
    acp, acph = r["B47-C-ACP"], r["B47-H-ACP"]
    jc, jh = r["JA-C-B31"], r["JA-H-B31"]
    return [
        Arm("B47-C-TC", _fitted.zero_dose_pad(tc, tch), "adjuvant", trial=B47),
        Arm("B47-H-TC", tch, "adjuvant", trial=B47),
        Arm("B47-C-ACP", _fitted.zero_dose_pad(acp, acph), "adjuvant", trial=B47),
        Arm("B47-H-ACP", acph, "adjuvant", trial=B47),
        Arm("JA-C-B31", _fitted.zero_dose_pad(jc, jh), "adjuvant", trial=JA),
        Arm("JA-H-B31", jh, "adjuvant", trial=JA),
        Arm("NEO-TC", Regimen(tc.lines, name="TC x6 (neoadjuvant)")),
        Arm("NEO-TCH", Regimen(tc.lines + trastuzumab_q3w(6),
                               name="TC x6 + trastuzumab 18 wk (neoadjuvant)")),
        Arm("EST-H", Regimen(trastuzumab_q3w(4), name="trastuzumab alone 12 wk")),
        Arm("ADJ-H", r["HERA-H1"], "adjuvant", trial=B47),
    ]


ARM = {a: i for i, a in enumerate(("B47-C-TC", "B47-H-TC", "B47-C-ACP", "B47-H-ACP",
                                    "JA-C-B31", "JA-H-B31", "NEO-TC", "NEO-TCH", "EST-H",
                                    "ADJ-H"))}


def h_grid(n):
    """0 and a geometric grid 1e-3 ... 1: the HR changes within h_S of a few percent."""
    return np.concatenate([[0.0], np.geomspace(1e-3, 1.0, n - 1)])


class Predictor:
    """Every prediction of this experiment as one JAX function of ``z``."""

    def __init__(self, tm, pub):
        self.tm = tm
        self.i_s, self.i_d = tm.names.index(H_S), tm.names.index(H_D)
        self.i_mb, self.i_mj = tm.names.index(M_B47), tm.names.index(M_JA)
        b, j = pub["b47"], pub["ja"]
        self.days = jnp.asarray([b["followup_years"] * YEAR, b["landmark_years"] * YEAR,
                                 j["followup_years"] * YEAR, j["landmark_years"] * YEAR])
        self.pub = pub
        self.centre = tm.n_nodes // 2

    def calibrate(self, z):
        """z with both trials' burdens calibrated on their control arms (which do not
        depend on h); and the DFS reached."""
        tm, b, j = self.tm, self.pub["b47"], self.pub["ja"]
        mix = tm.mixture(z)
        lb, db = _fitted.calibrate_burden(tm, z, mix, ARM["B47-C-TC"], self.i_mb,
                                          b["landmark_years"] * YEAR, b["control_landmark"])
        z = z.at[self.i_mb].set(lb)
        lj, dj = _fitted.calibrate_burden(tm, z, mix, ARM["JA-C-B31"], self.i_mj,
                                          j["landmark_years"] * YEAR, j["control_landmark"])
        return z.at[self.i_mj].set(lj), db, dj

    def at(self, z, h_s, h_d):
        return z.at[self.i_s].set(h_s).at[self.i_d].set(h_d)

    def __call__(self, z):
        """Predictions at ``z`` (h and burdens already set), as a dict of scalars."""
        tm = self.tm
        mix = tm.mixture(z)  # HER2-dependent tumours (h as set) and the fraction phi with h = 0
        dfs, cure, status = tm.dfs(z, self.days, mix)
        pcr, _, _ = tm.pcr_pair(z, mix)
        z0 = self.at(z, 0.0, 0.0)
        mix0 = tm.mixture(z0)
        _, cure0, _ = tm.dfs(z0, self.days, mix0)
        res, res0 = mix[0][1], mix0[0][1]  # typical HER2-dependent tumour
        a = ARM
        return {
            "hr_b47_tc": hazard_ratio(dfs[a["B47-H-TC"], 0], dfs[a["B47-C-TC"], 0]),
            "hr_b47_acp": hazard_ratio(dfs[a["B47-H-ACP"], 0], dfs[a["B47-C-ACP"], 0]),
            "hr_ja": hazard_ratio(dfs[a["JA-H-B31"], 2], dfs[a["JA-C-B31"], 2]),
            "idfs5_c": dfs[a["B47-C-TC"], 1], "idfs5_h": dfs[a["B47-H-TC"], 1],
            "cure_c": cure[a["B47-C-TC"]], "cure_h": cure[a["B47-H-TC"]],
            "pcr_tc": pcr[a["NEO-TC"]], "pcr_tch": pcr[a["NEO-TCH"]],
            "est_h_volume_ratio": jnp.exp(res[0][a["EST-H"], self.centre]
                                          - res0[0][a["EST-H"], self.centre]),
            "adj_h_cure_gain": cure[a["ADJ-H"]] - cure0[a["ADJ-H"]],
            "status": jnp.max(status),
        }


def b47_threshold(tm, pub, hs, hr_lo):
    """Per draw of ``z``: the largest h_S (h_D = 0) whose predicted B-47 HR is >=
    ``hr_lo`` (interpolated in log HR over the grid ``hs``; the HR falls with h_S),
    and the HR at ``hs[-1]``. ``tm`` holds the two TC arms only (cheap); the burden is
    recalibrated per draw."""
    hs = jnp.asarray(hs)
    grid = b47_hr_grid(tm, pub, hs)

    def fn(z):
        loghr = jnp.log(jnp.clip(grid(z), 1e-300, None))
        below = loghr < jnp.log(hr_lo)
        k = jnp.argmax(below)  # first grid point below the limit
        k0 = jnp.maximum(k - 1, 0)
        t = (jnp.log(hr_lo) - loghr[k0]) / jnp.where(k > 0, loghr[k] - loghr[k0], 1.0)
        cross = hs[k0] + jnp.clip(t, 0.0, 1.0) * (hs[k] - hs[k0])
        return jnp.stack([jnp.where(jnp.any(below), cross, hs[-1]), jnp.exp(loghr[-1])])

    return fn


def b47_hr_grid(tm, pub, hs):
    """Per draw of ``z``: B-47's predicted IDFS HR at each h_S of ``hs`` (h_D = 0), the
    burden recalibrated per draw on the chemotherapy arm (``tm``: the two TC arms)."""
    hs = jnp.asarray(hs)
    b = pub["b47"]
    i_s, i_d, i_m = tm.names.index(H_S), tm.names.index(H_D), tm.names.index(M_B47)
    days = jnp.asarray([b["followup_years"] * YEAR])

    def fn(z):
        lm, _ = _fitted.calibrate_burden(tm, z, tm.mixture(z), 0, i_m,
                                         b["landmark_years"] * YEAR, b["control_landmark"])
        z = z.at[i_m].set(lm)

        def hr_at(h):
            dfs = tm.dfs(z.at[i_s].set(h).at[i_d].set(0.0), days)[0]
            return hazard_ratio(dfs[1, 0], dfs[0, 0])

        return jax.vmap(hr_at)(hs)

    return fn


def main(args) -> dict:
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc, fit_source = _fitted.resolve_fit(args.fit, quick=args.quick, out=out)
    pub = published()
    arms = make_arms(_fitted.regimens())
    fraction = doc["options"].get("heterogeneity", "fraction") == "fraction"
    phi = _fitted.natural_value(doc, PHI) if fraction else None
    extra = {H_S: 1.0, H_D: 1.0, M_B47: 1e5, M_JA: 1e5} | ({PHI: phi} if fraction else {})
    tm, z = _fitted.build(doc, arms, extra)
    pred = Predictor(tm, pub)
    zc, dfs_b, dfs_j = jax.jit(pred.calibrate)(jnp.asarray(z))
    hs = h_grid(args.grid)
    hd = hs.copy()
    f_row = jax.jit(jax.vmap(lambda zz, a, b: pred(pred.at(zz, a, b)), in_axes=(None, None, 0)))
    grid = {}
    for i, a in enumerate(hs):
        row = f_row(zc, a, jnp.asarray(hd))
        for k, v in row.items():
            grid.setdefault(k, np.zeros((len(hs), len(hd))))[i] = np.asarray(v)
    b = pub["b47"]
    in_ci = (grid["hr_b47_tc"] >= b["lo"]) & (grid["hr_b47_tc"] <= b["hi"])
    dpcr = grid["pcr_tch"] - grid["pcr_tc"]
    established_null = (np.abs(dpcr) <= args.max_pcr_gain) & (
        grid["est_h_volume_ratio"] >= 1.0 - args.max_shrinkage)
    adjuvant_works = grid["adj_h_cure_gain"] >= args.min_cure_gain
    xeno = established_null & adjuvant_works
    both = xeno & in_ci

    # parameter uncertainty: the fit's posterior draws (saved with it; else Laplace)
    saved = load_draws(args.fit, doc) if pathlib.Path(args.fit).exists() else None
    if saved is not None:
        draws_doc = saved[np.random.default_rng(args.seed).choice(len(saved), args.draws)]
        posterior = "the fit's saved posterior draws"
    else:
        draws_doc = fs.laplace_draws(np.asarray(doc["z"]), np.asarray(doc["cov"]),
                                     n_draws=args.draws, key=jax.random.PRNGKey(args.seed))
        posterior = "Laplace draws (the fit saved no posterior draws)"
    tm2 = _fitted.subset_arms(tm, [ARM["B47-C-TC"], ARM["B47-H-TC"]])
    draws = _fitted.draws_for(doc, np.asarray(zc), draws_doc)
    # the largest h_S compatible with B-47's lower CI limit
    thr_fn = b47_threshold(tm2, pub, h_grid(args.line), b["lo"])
    # sensitivity: every tumour fully HER2-dependent (no independent fraction / all h = 1)
    z_nomix = np.asarray(zc).copy()
    if fraction:
        z_nomix[tm.names.index(PHI)] = from_natural(PHI, 1e-9)
    elif "her2_dependence_logit_mean" in tm.names:
        z_nomix[tm.names.index("her2_dependence_logit_mean")] = 12.0
    vals = _fitted.batched(thr_fn, np.concatenate([np.asarray(zc)[None], z_nomix[None],
                                                   draws]), batch=min(args.draws + 2, 25))
    thr_map, thr_nomix = vals[0], vals[1]
    mean, (lo, hi) = vals[2:].mean(axis=0), np.percentile(vals[2:], [2.5, 97.5], axis=0)
    # posterior probability that B-47's HR falls inside its CI, per h_S (the HR does not
    # depend on h_D) and under a uniform prior on h_S in [0, 1]
    h_prob = np.linspace(0.0, 1.0, args.prob_points)
    hr_draws = _fitted.batched(b47_hr_grid(tm2, pub, h_prob), draws,
                               batch=min(args.draws, 25))  # (draws, h)
    p_in = np.mean((hr_draws >= b["lo"]) & (hr_draws <= b["hi"]), axis=0)
    b47_prob = {"h_S": h_prob.tolist(), "p_inside_ci": p_in.tolist(),
                "p_inside_ci_uniform_h_S": float(np.trapezoid(p_in, h_prob)),
                "hr_median": np.median(hr_draws, axis=0).tolist(),
                "n_draws": int(args.draws), "posterior": posterior}

    write_atomic(out / "grid.csv", _grid_csv(hs, hd, grid, in_ci, established_null,
                                             adjuvant_works))
    summary = _summary(args, doc, fit_source, pub, tm, zc, dfs_b, dfs_j, hs, hd, grid, in_ci,
                       established_null, adjuvant_works, xeno, both, thr_map, (mean, lo, hi),
                       thr_nomix, phi, time.perf_counter() - t_start)
    summary["b47_posterior_probability"] = b47_prob
    _figure(hs, hd, grid, in_ci, xeno, b, out / "her2_low.png")
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _result_md(summary, out / "RESULT.md")
    return summary


def _region(mask, hs, hd):
    """Extent of a boolean region on the (h_S, h_D) grid."""
    if not mask.any():
        return None
    i, j = np.nonzero(mask)
    return {"n_points": int(mask.sum()), "of": int(mask.size),
            "h_S": [float(hs[i.min()]), float(hs[i.max()])],
            "h_D": [float(hd[j.min()]), float(hd[j.max()])]}


def _grid_csv(hs, hd, grid, in_ci, est, adj):
    keys = ["hr_b47_tc", "hr_b47_acp", "idfs5_c", "idfs5_h", "cure_c", "cure_h", "pcr_tc",
            "pcr_tch", "est_h_volume_ratio", "adj_h_cure_gain", "hr_ja", "status"]
    rows = []
    for i, a in enumerate(hs):
        for j, b in enumerate(hd):
            rows.append([f"{a:.6g}", f"{b:.6g}"] + [f"{grid[k][i, j]:.6g}" for k in keys]
                        + [bool(in_ci[i, j]), bool(est[i, j]), bool(adj[i, j])])
    return csv_text(["h_S", "h_D", *keys, "hr_in_b47_ci", "established_no_response",
                      "adjuvant_cure_gain"], rows)


def _summary(args, doc, fit_source, pub, tm, zc, dfs_b, dfs_j, hs, hd, grid, in_ci, est,
             adj, xeno, both, thr_map, thr_int, thr_nomix, phi, wall):
    i1 = len(hs) - 1
    zero = 0
    mean, lo, hi = thr_int
    dpcr = grid["pcr_tch"] - grid["pcr_tc"]
    # the HR does not depend on h_D in this model (cure and regrowth depend on CSCs only)
    hd_spread = float(np.max(np.abs(np.log(grid["hr_b47_tc"][:, :1]) -
                                    np.log(grid["hr_b47_tc"]))))
    return {
        "question": "B-47 null (IDFS HR 0.98) vs HER2 dependence of CSCs and bulk; "
                    "xenograft finding (adjuvant works, established tumours do not respond)",
        "quick": bool(args.quick), "fit": fit_source,
        "fit_quick": bool(doc.get("quick", False)),
        "published": pub,
        "calibration": {
            "b47_micromet_cells": float(np.exp(zc[tm.names.index(M_B47)])),
            "b47_control_idfs5_reached": float(dfs_b),
            "ja_micromet_cells": float(np.exp(zc[tm.names.index(M_JA)])),
            "ja_control_dfs3_reached": float(dfs_j)},
        "grid": {"h_S": [float(v) for v in hs], "h_D": [float(v) for v in hd]},
        "hr_b47_at": {
            "h=(0,0)": float(grid["hr_b47_tc"][zero, zero]),
            "h=(1,0) CSC-only hypothesis": float(grid["hr_b47_tc"][i1, zero]),
            "h=(1,1) HER2+": float(grid["hr_b47_tc"][i1, i1])},
        "hr_b47_max_abs_log_change_over_h_D": hd_spread,
        "her2_independent_fraction_phi": phi,
        # what drives each established-tumour readout: spread over one axis, worst case
        "pcr_gain_spread_over_h_D": float(np.max(np.ptp(dpcr, axis=1))),
        "pcr_gain_spread_over_h_S": float(np.max(np.ptp(dpcr, axis=0))),
        "est_volume_ratio_spread_over_h_D": float(np.max(np.ptp(grid["est_h_volume_ratio"],
                                                                axis=1))),
        "est_volume_ratio_spread_over_h_S": float(np.max(np.ptp(grid["est_h_volume_ratio"],
                                                                axis=0))),
        "no_mixture": {"max_h_S_at_ci_lower": float(thr_nomix[0]),
                       "hr_at_h_S_1": float(thr_nomix[1])},
        "hr_ja_her2pos_predicted": float(grid["hr_ja"][i1, i1]),
        "b47_ci_region": _region(in_ci, hs, hd),
        "b47_max_h_S_at_ci_lower": {
            "map": float(thr_map[0]), "mean": float(mean[0]), "lo95": float(lo[0]),
            "hi95": float(hi[0]), "n_draws": args.draws,
            "hr_at_h_S_1_lo95": float(lo[1]), "hr_at_h_S_1_hi95": float(hi[1])},
        "xenograft_criteria": {"max_abs_pcr_gain": args.max_pcr_gain,
                               "max_shrinkage": args.max_shrinkage,
                               "min_adjuvant_cure_gain": args.min_cure_gain},
        "established_no_response_region": _region(est, hs, hd),
        "adjuvant_cure_gain_region": _region(adj, hs, hd),
        "xenograft_region": _region(xeno, hs, hd),
        "overlap_b47_and_xenograft": _region(both, hs, hd),
        "at_h=(1,0)": {k: float(grid[k][i1, zero]) for k in (
            "pcr_tc", "pcr_tch", "est_h_volume_ratio", "adj_h_cure_gain", "cure_c",
            "cure_h", "idfs5_h")},
        "status_max": int(np.max(grid["status"])),
        "wall_s": round(wall, 2),
        "precision": "float64" if jax.config.jax_enable_x64 else "float32",
        "device": str(jax.devices()[0]),
    }


def _figure(hs, hd, grid, in_ci, xeno, b, path):
    plt = _fitted.pyplot()
    n = len(hs)
    idx = np.arange(n)
    ticks = [k for k in range(n) if k == 0 or k % max(1, n // 6) == 0 or k == n - 1]
    labels = [f"{hs[k]:.2g}" for k in ticks]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), constrained_layout=True)
    hr = np.log10(np.clip(grid["hr_b47_tc"], 1e-6, None))
    ax = axes[0]
    m = ax.pcolormesh(idx, idx, hr.T, shading="nearest", cmap="viridis",
                      vmin=max(hr.min(), -3), vmax=max(hr.max(), 0.2))
    fig.colorbar(m, ax=ax, label="log10 predicted IDFS HR (H vs chemo alone)")
    if hr.min() < np.log10(b["lo"]) < hr.max():
        ax.contour(idx, idx, hr.T, levels=[np.log10(b["lo"])], colors="w", linewidths=1.5)
    if hr.min() < np.log10(b["hi"]) < hr.max():
        ax.contour(idx, idx, hr.T, levels=[np.log10(b["hi"])], colors="w",
                   linestyles="--", linewidths=1.5)
    ax.contourf(idx, idx, in_ci.T.astype(float), levels=[0.5, 1.5], colors="none",
                hatches=["//"])
    ax.set_title(f"NSABP B-47: predicted HR; hatched = inside the CI "
                 f"{b['lo']}-{b['hi']}\n(white line: HR = {b['lo']})", fontsize=9)
    ax2 = axes[1]
    dp = 100 * (grid["pcr_tch"] - grid["pcr_tc"])
    m2 = ax2.pcolormesh(idx, idx, dp.T, shading="nearest", cmap="magma")
    fig.colorbar(m2, ax=ax2, label="pCR gain from adding H to TC (points), 3-cm tumour")
    ax2.set_title("established tumour: pCR gain of TC+H over TC", fontsize=9)
    ax3 = axes[2]
    g = 100 * grid["adj_h_cure_gain"]
    m3 = ax3.pcolormesh(idx, idx, g.T, shading="nearest", cmap="cividis")
    fig.colorbar(m3, ax=ax3, label="adjuvant H-alone cure gain (points)")
    ax3.contourf(idx, idx, xeno.T.astype(float), levels=[0.5, 1.5], colors="none",
                 hatches=["\\\\"])
    ax3.contourf(idx, idx, in_ci.T.astype(float), levels=[0.5, 1.5], colors="none",
                 hatches=["//"])
    ax3.set_title("xenograft pattern (hatched \\\\) vs B-47 CI (hatched //)", fontsize=9)
    for a in axes:
        a.set_xticks(ticks, labels)
        a.set_yticks(ticks, labels)
        a.set_xlabel("h_S: HER2 dependence of CSCs")
        a.set_ylabel("h_D: HER2 dependence of bulk")
    _fitted.save_figure(fig, path)
    plt.close(fig)


def _hr(x):
    """An HR for the text: below 1e-3 the cumulative-hazard ratio only says 'no
    recurrences' (both DFS within round-off of 1 or of each other)."""
    return "<0.001" if x < 1e-3 else f"{x:.3g}"


def _result_md(s, path):
    b = s["published"]["b47"]
    ja = s["published"]["ja"]
    thr = s["b47_max_h_S_at_ci_lower"]
    at = s["hr_b47_at"]
    x = s["at_h=(1,0)"]

    def reg(r):
        if r is None:
            return "empty on this grid"
        return (f"{r['n_points']} of {r['of']} grid points, h_S in [{r['h_S'][0]:.3g}, "
                f"{r['h_S'][1]:.3g}], h_D in [{r['h_D'][0]:.3g}, {r['h_D'][1]:.3g}]")

    overlap = s["overlap_b47_and_xenograft"]
    lines = [
        "# HER2-low: the NSABP B-47 null against the xenograft finding",
        "",
        ("**Quick run** (smoke test: coarse grid, few draws)." if s["quick"] else
         "Full run."),
        f"Fit: {s['fit']}" + (" — a quick fit (NeoSphere arms only): the numbers below "
                             "are a demonstration, not a result." if s["fit_quick"] else "."),
        "",
        "## B-47: where is the predicted IDFS HR inside the published CI?",
        "",
        f"Published: HR {b['hr']} (95% CI {b['lo']}-{b['hi']}) at median follow-up "
        f"{b['followup_years']} yr; 5-yr IDFS {100 * b['control_landmark']:.1f}% (chemo) vs "
        f"{100 * b['h_landmark']:.1f}% (+H) ({b['citation']}).",
        f"Calibration: B-47 micrometastatic burden {s['calibration']['b47_micromet_cells']:.3g}"
        f" cells gives the chemo arm's 5-yr IDFS "
        f"{100 * s['calibration']['b47_control_idfs5_reached']:.1f}%.",
        "",
        f"- Predicted HR at h = (0, 0): {at['h=(0,0)']:.3g} (no HER2 effect: 1 by "
        "construction); at (1, 0), HER2 in CSCs only (the hypothesis of DESIGN §1.3): "
        f"{_hr(at['h=(1,0) CSC-only hypothesis'])}; at (1, 1), as HER2+: "
        f"{_hr(at['h=(1,1) HER2+'])}.",
        (f"- The HR does not depend on h_D (largest |log HR| change over h_D: "
         f"{s['hr_b47_max_abs_log_change_over_h_D']:.2g}): in this model adjuvant cure and "
         "regrowth depend on CSCs only."
         if s["hr_b47_max_abs_log_change_over_h_D"] < 1e-6 else
         f"- Largest |log HR| change over h_D: {s['hr_b47_max_abs_log_change_over_h_D']:.2g}."),
        f"- Region inside B-47's CI: {reg(s['b47_ci_region'])}.",
        f"- Largest h_S with HR >= {b['lo']} (h_D = 0): "
        + (f"{thr['map']:.3g} at the fit" if thr["map"] < 1 else
           "none: the HR stays above the CI's lower limit up to h_S = 1") + "; "
        f"95% interval over {thr['n_draws']} posterior draws {thr['lo95']:.3g}-"
        f"{thr['hi95']:.3g}. HR at h_S = 1 over the draws: {_hr(thr['hr_at_h_S_1_lo95'])} to "
        f"{_hr(thr['hr_at_h_S_1_hi95'])}.",
        (f"- The fit's HER2-independent fraction phi = {s['her2_independent_fraction_phi']:.2f} "
         "of tumours (h = 0 whatever the HER2 status) is kept for HER2-low disease; it caps "
         "how far any h can push the HR below 1. Without it (phi = 0, every tumour has "
         "dependence h)"
         if s["her2_independent_fraction_phi"] is not None else
         "- The fit's between-patient spread of HER2 dependence is kept for HER2-low disease "
         "(h_S, h_D scale it). With every patient fully dependent instead")
        + f": largest h_S inside the CI {s['no_mixture']['max_h_S_at_ci_lower']:.3g}, HR at "
        f"h_S = 1 {_hr(s['no_mixture']['hr_at_h_S_1'])}.",
        "",
        "## B-47 from the posterior",
        "",
        "Probability, over the fit's posterior draws (B-47's burden recalibrated per draw), "
        f"that the predicted IDFS HR lies inside B-47's CI {b['lo']}-{b['hi']}: "
        + ", ".join(f"{p:.2f} at h_S = {h:.2g}" for h, p in zip(
            s["b47_posterior_probability"]["h_S"],
            s["b47_posterior_probability"]["p_inside_ci"], strict=True))
        + f"; {s['b47_posterior_probability']['p_inside_ci_uniform_h_S']:.2f} averaged over a "
        "uniform prior on h_S in [0, 1] (the HER2+ data cannot inform h_S: this is a "
        f"statement about the fitted model, not about HER2-low tumours). "
        f"Draws: {s['b47_posterior_probability']['posterior']}.",
        "",
        "## The xenograft finding",
        "",
        f"Criteria: established 3-cm tumour does not respond (pCR gain of TC+H over TC <= "
        f"{100 * s['xenograft_criteria']['max_abs_pcr_gain']:.0f} points and trastuzumab "
        f"alone for 12 weeks shrinks the typical tumour by < "
        f"{100 * s['xenograft_criteria']['max_shrinkage']:.0f}% vs untreated) while "
        "trastuzumab alone for 1 yr on the B-47 micrometastatic burden raises cure by >= "
        f"{100 * s['xenograft_criteria']['min_adjuvant_cure_gain']:.0f} points.",
        "",
        f"- Established tumour shows no response: {reg(s['established_no_response_region'])}.",
        f"- What drives it: the pCR gain of TC+H changes by at most "
        f"{100 * s['pcr_gain_spread_over_h_D']:.1f} points along h_D but by up to "
        f"{100 * s['pcr_gain_spread_over_h_S']:.1f} points along h_S; H alone's volume "
        f"effect changes by {100 * s['est_volume_ratio_spread_over_h_D']:.0f} points of the "
        f"untreated volume along h_D and {100 * s['est_volume_ratio_spread_over_h_S']:.0f} "
        "along h_S."
        + (" In this fit the pCR gain is driven by h_S (CSC kill), not h_D: with strong "
           "CSC sparing by chemotherapy, whether any cell survives to surgery is decided "
           "by the CSCs. So the established-tumour pCR test constrains h_S and the volume "
           "test constrains h_D; claim 4's premise that pCR measures the bulk does not "
           "hold in this fit."
           if s["pcr_gain_spread_over_h_S"] > 5 * s["pcr_gain_spread_over_h_D"] else ""),
        f"- Adjuvant cure gain: {reg(s['adjuvant_cure_gain_region'])}.",
        f"- Both (xenograft pattern): {reg(s['xenograft_region'])}.",
        f"- At h = (1, 0): pCR {100 * x['pcr_tc']:.1f}% (TC) vs {100 * x['pcr_tch']:.1f}% "
        f"(TC+H); H alone leaves {100 * x['est_h_volume_ratio']:.0f}% of the untreated "
        f"volume; adjuvant H-alone cure gain {100 * x['adj_h_cure_gain']:.1f} points; B-47 "
        f"cure {100 * x['cure_c']:.1f}% -> {100 * x['cure_h']:.1f}%, 5-yr IDFS with H "
        f"{100 * x['idfs5_h']:.1f}% (published {100 * b['h_landmark']:.1f}%).",
        "",
        "## Conflict",
        "",
        ("- Overlap of the B-47 CI and the xenograft pattern: " + reg(overlap) + "."),
        (f"- The two are compatible only in a narrow band, h_S in [{overlap['h_S'][0]:.3g}, "
         f"{overlap['h_S'][1]:.3g}] (CSCs keep a few percent at most of the HER2+ "
         f"dependence) and h_D <= {overlap['h_D'][1]:.3g}: there adjuvant H alone still "
         "passes the cure-gain criterion while the B-47 HR stays inside the CI. The band lies "
         "between two thresholds on h_S (cure gain reaching the criterion; HR leaving the "
         "CI), so its existence depends on the criteria chosen." if overlap else
         "- No grid point satisfies both: with the fitted HER2+ effect sizes, any CSC "
         "HER2 dependence large enough to give the xenograft's adjuvant benefit gives an "
         "adjuvant HR far below B-47's CI; the B-47 null requires h_S near 0, where the "
         "xenograft's adjuvant benefit disappears."),
        ("- The CSC-only hypothesis at full strength (h = (1, 0)) predicts HR "
         f"{_hr(at['h=(1,0) CSC-only hypothesis'])}, outside B-47's CI: either HER2-low CSCs "
         "in patients are (nearly) HER2-independent, or the xenograft effect does not carry "
         "over to one year of trastuzumab at clinical exposure."
         if not b["lo"] <= at["h=(1,0) CSC-only hypothesis"] <= b["hi"] else
         "- The CSC-only hypothesis at full strength (h = (1, 0)) predicts HR "
         f"{_hr(at['h=(1,0) CSC-only hypothesis'])}, inside B-47's CI."),
        "",
        "## Reference: HER2+ adjuvant effect size",
        "",
        f"B-31/N9831 joint analysis: published DFS HR {ja['hr']} ({ja['lo']}-{ja['hi']}); "
        f"the model at h = (1, 1), burden calibrated on the control arm's 3-yr DFS "
        f"({100 * s['calibration']['ja_control_dfs3_reached']:.1f}%), predicts "
        f"{_hr(s['hr_ja_her2pos_predicted'])}"
        + (" — inside the published CI." if ja["lo"] <= s["hr_ja_her2pos_predicted"] <= ja["hi"]
           else " — below the published CI: the pCR fit's trastuzumab effect on CSCs is too "
           "strong for the adjuvant data, which makes the B-47 threshold on h_S "
           "correspondingly small; a joint pCR + adjuvant fit would move it."
           if s["hr_ja_her2pos_predicted"] < ja["lo"] else
           " — above the published CI: the pCR fit's trastuzumab effect on CSCs is too "
           "weak for the adjuvant data, so no CSC HER2 dependence gives the B-47 HR a "
           "visible effect; a joint pCR + adjuvant fit would move it."),
        "",
        "## Assumptions and caveats",
        "",
        "- A HER2-low tumour is the fitted HER2+ tumour with scaled HER2 dependence (same "
        "growth, chemotherapy sensitivity, spread of responsiveness and HER2-independent "
        "fraction phi; h scales the dependent tumours only).",
        "- Micrometastatic burden calibrated per trial on the control arm's landmark; "
        "HR = cumulative-hazard ratio at the median follow-up, not a Cox estimate.",
        "- The control regimen carries the trastuzumab lines at dose 0 so that both arms "
        "share one evaluation day (HR exactly 1 at h = 0).",
        "- Trastuzumab schedule in B-47 not published (8 -> 6 mg/kg q3w, 18 doses, "
        "assumed in regimens.csv); TC backbone as in the data; ACP backbone HR in "
        "grid.csv (hr_b47_acp).",
        "",
        f"Wall time {s['wall_s']:.0f} s; {s['device']}, {s['precision']}; highest solver "
        f"status on the grid {s['status_max']} (0 = all finite).",
    ]
    write_atomic(path, "\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="6 x 6 grid, 8 Laplace draws; runs a quick pCR fit if --fit is absent")
    p.add_argument("--fit", default=str(_fitted.DEFAULT_FIT),
                   help="saved trial fit (fit.json or its directory)")
    p.add_argument("--grid", type=int, default=25, help="grid points per HER2 dependence")
    p.add_argument("--line", type=int, default=40, help="h_S points for the threshold")
    p.add_argument("--draws", type=int, default=200, help="posterior draws")
    p.add_argument("--prob-points", type=int, default=11,
                   help="h_S points for the posterior probability of B-47's CI")
    p.add_argument("--max-pcr-gain", type=float, default=0.02,
                   help="established tumour 'does not respond': |pCR gain| at most this")
    p.add_argument("--max-shrinkage", type=float, default=0.1,
                   help="... and H alone shrinks the typical tumour by less than this")
    p.add_argument("--min-cure-gain", type=float, default=0.05,
                   help="adjuvant H alone 'works': cure gain at least this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "her2_low"))
    args = p.parse_args(argv)
    if args.quick:
        args.grid, args.line, args.draws, args.prob_points = 6, 12, 8, 3
    return args


if __name__ == "__main__":
    summary = main(parse_args(sys.argv[1:]))
    print(json.dumps({k: summary[k] for k in ("hr_b47_at", "b47_ci_region", "xenograft_region",
                                               "overlap_b47_and_xenograft", "wall_s")},
                     indent=1))
