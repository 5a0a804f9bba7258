"""CSC fraction after chemotherapy vs under HER2 blockade, from the fitted trial model.

Question (DESIGN §1 claim 2): chemotherapy kills cycling bulk cells and spares CSCs, so
the CSC fraction of the residual tumour rises; HER2 blockade does not enrich CSCs (or
depletes them). Li et al. 2008 (J Natl Cancer Inst 100:672, paired biopsies before and
after neoadjuvant treatment) reported that chemotherapy (HER2-negative tumours) raised
the CD44+/CD24-low fraction and mammosphere formation, while lapatinib (HER2+
tumours) did not raise it (a non-significant fall in self-renewal). Does the model
fitted to HER2+ pCR rates reproduce these directions, and by how much?

Method: the saved pCR fit (experiments/pcr_fit.py). CSC fraction ``S / (S + D)`` of
the residual tumour at surgery (4 weeks after the last preoperative dose), per
responsiveness node, from the same exact solution that gives pCR
(`TrialModel.residuals`); relative to an untreated tumour on the same day (every dose
set to 0), because the untreated CSC fraction drifts too. Matched regimens (NeoSphere's
12-week schedule): docetaxel alone (T), trastuzumab alone (H), T+H, trastuzumab +
pertuzumab (HP); lapatinib 1500 mg/d for 6 weeks (L, as in Li et al.); in full mode
also the published trial arms. Typical patient (responsiveness 1) and the mean over
patients with residual disease (weights: responsiveness density x P(no pCR), the
population a post-treatment biopsy samples). Trajectories for the typical patient from
`fitcsc.simulate` (an independent ODE solve; its end point is checked against the exact
solution). 95% intervals from Laplace draws of the fit's parameters.

PDX comparison: if experiments/results/pdxe_response/line_arm.csv exists (per-line
fits of the PDX Encyclopedia breast set), its trastuzumab routes (CSC vs bulk term) and
paclitaxel CSC sparing are summarised beside the clinical fit's effects.

Run: ``python experiments/csc_enrichment.py [--quick] [--fit PATH] [--out DIR]``.
Writes ``arms.csv``, ``trajectories.csv``, ``summary.json``, ``csc_enrichment.png`` and
``RESULT.md`` to ``--out`` (default experiments/results/csc_enrichment).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import fitcsc
import fitcsc.summary as fs
from fitcsc import DoseLine, Regimen
from fitcsc.files import csv_text, write_atomic
from fitcsc.trials import BLOCKADE_GL, Arm, exposure_grid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _fitted  # noqa: E402

ROOT = _fitted.ROOT
PDX_DIR = ROOT / "experiments" / "results" / "pdxe_response"
HER2_DRUGS = ("trastuzumab", "pertuzumab", "lapatinib")
# published arms (full mode): regimen id, whether it contains chemotherapy / HER2 blockade
TRIAL_ARMS = ("NOAH-C", "NOAH-H", "MDACC-C", "MDACC-H", "NEOSPHERE-TP", "NEOSPHERE-THP",
              "NEOALTTO-L", "NEOALTTO-T", "NEOALTTO-LT", "GEPARQUATTRO-ECDH")
VOLUMES = {"NOAH": 65000.0}  # as experiments/pcr_fit.py
# the exposure grid [day] of the exact solution that fitcsc.simulate is checked against
# (the model's own is fitcsc.trials.GRID_STEP_DAY; when the model's blockade was a
# trapezoid, 0.02 brought a quick fit's lapatinib arm from 23% to 0.2%)
FINE_STEP_DAY = 0.02
LI_2008 = ("Li X et al. J Natl Cancer Inst 2008;100(9):672-9: neoadjuvant chemotherapy "
           "(HER2-negative tumours) raised the CD44+/CD24-low fraction and mammosphere "
           "formation; lapatinib (HER2+ tumours) did not raise the CD44+/CD24-low fraction "
           "(a non-significant fall in self-renewal)")


def _zero(regimen, name):
    """The same schedule with every dose 0: an untreated tumour on the same days."""
    return Regimen(tuple(DoseLine(ln.drug, 0.0, ln.dose_unit, ln.start_day, ln.interval_day,
                                  ln.n_doses, ln.infusion_hours) for ln in regimen.lines),
                   name=name)


def _only(regimen, drugs, name):
    return Regimen(tuple(ln for ln in regimen.lines if ln.drug in drugs), name=name)


def make_arms(regimens, quick):
    """``[(label, kind, Arm)]``: each treated arm followed by its untreated twin."""
    th, hp = regimens["NEOSPHERE-TH"], regimens["NEOSPHERE-HP"]
    lap = Regimen((DoseLine("lapatinib", 1500.0, "mg", 0.0, 1.0, 42, 0.0),),
                  name="lapatinib 1500 mg/d x 6 wk")
    treated = [("T", "chemo alone", _only(th, ("docetaxel",), "docetaxel q3w x4")),
               ("H", "HER2 blockade alone", _only(th, ("trastuzumab",), "trastuzumab q3w x4")),
               ("T+H", "chemo + HER2 blockade", th),
               ("HP", "HER2 blockade alone", hp),
               ("L", "HER2 blockade alone", lap)]
    if not quick:
        for rid in TRIAL_ARMS:
            r = regimens[rid]
            chemo = any(fitcsc.CATALOGUE[d].drug_class == "chemo" for d in r.drugs)
            her2 = any(d in HER2_DRUGS for d in r.drugs)
            kind = ("chemo + HER2 blockade" if chemo and her2 else
                    "chemo alone" if chemo else "HER2 blockade alone")
            treated.append((rid, kind, r))
    out = []
    for label, kind, reg in treated:
        vol = next((v for k, v in VOLUMES.items() if label.startswith(k)), None)
        kw = {"volume_mm3": vol} if vol else {}
        out.append((label, kind, Arm(label, reg, **kw)))
        out.append((f"{label}|untreated", "untreated", Arm(f"{label}|untreated",
                                                          _zero(reg, "untreated"), **kw)))
    return out


def csc_fractions(tm, res):
    """Per treated arm (even rows; odd rows are the untreated twins) from one
    `TrialModel.residuals` output: log CSC fraction at surgery per responsiveness node,
    the untreated twin's, and P(pCR) per node (burden integrated)."""
    log_inv, log_s = res[:2]
    log_f = log_s - log_inv
    x, wx = np.polynomial.hermite_e.hermegauss(tm.n_burden)
    u = (log_inv + jnp.log(tm.volume_mm3)[:, None])[..., None] + tm.burden_sd * jnp.asarray(x)
    pcr = jnp.sum(jnp.asarray(wx / wx.sum()) * jnp.exp(-jnp.exp(jnp.minimum(u, 40.0))), -1)
    return log_f[0::2], log_f[1::2], pcr[0::2]


def node_weights(tm):
    eta = np.linspace(-tm.eta_max, tm.eta_max, tm.n_nodes)  # tm.nodes(), host side
    w = np.exp(-0.5 * eta**2)
    return jnp.asarray(w / w.sum())


def summaries(tm, z):
    """Per treated arm: the CSC fraction of the typical patient (full HER2 dependence
    h = 1, median responsiveness), its untreated twin's, their log ratio; the mean
    fraction among patients with residual disease (over responsiveness and HER2
    dependence; weights x P(no pCR)) and
    its log ratio to the same patients untreated; the pCR rate."""
    mix = tm.mixture(z)
    c = tm.n_nodes // 2
    lf, lu, _ = csc_fractions(tm, mix[0][1])
    num = den = num_u = 0.0
    for weight, res in mix:
        f, u, pcr = csc_fractions(tm, res)
        w = weight * node_weights(tm)[None, :] * (1.0 - pcr)
        num, num_u, den = (num + jnp.sum(w * jnp.exp(f), 1), num_u + jnp.sum(w * jnp.exp(u), 1),
                           den + jnp.sum(w, 1))
    resid = num / jnp.maximum(den, 1e-300)
    return jnp.stack([jnp.exp(lf[:, c]), jnp.exp(lu[:, c]), lf[:, c] - lu[:, c],
                      resid, jnp.log(num / num_u), tm.pcr_pair(z, mix)[0][0::2]])


def typical_params(tm, z):
    """Typical patient's `CSCParams` for `fitcsc.simulate`: the fitted HER2 potency and
    the labelled-exposure scale are folded into EC50 (``I = (pC)^n / (EC50^n + (pC)^n)``
    with ``EC50 / p``, ``p`` = `TrialModel.exposure_multiplier`)."""
    p = tm.patient(z, 0.0)
    return eqx.tree_at(lambda q: q.ec50_mg_per_L, p,
                       p.ec50_mg_per_L / tm.exposure_multiplier(z))


def trajectories(tm, z, arms, labels, n_t):
    """Typical patient's CSC fraction and volume over time for ``labels``."""
    p = typical_params(tm, z)
    n_doses = max(a.regimen.n_doses for _, _, a in arms)
    out = {}
    for label, _, arm in arms:
        if label not in labels:
            continue
        ts = jnp.linspace(0.0, arm.eval_day(), n_t)
        # tight tolerances: the solve is the reference the exact solution is checked
        # against (at the defaults a deep chemotherapy kill left 1.6% in T+H's fraction)
        sol = fitcsc.simulate(tm.model, p, arm.regimen.to_schedule(
            tm.model.drugs, max_doses=n_doses), ts, rtol=1e-10, atol=1e-12,
            max_steps=200_000)
        out[label] = {"day": np.asarray(ts), "csc_fraction": np.asarray(sol.csc_fraction),
                      "volume_mm3_per_mm3": np.asarray(sol.volume_mm3),
                      "status": int(sol.status)}
    return out


def read_pdx(path: pathlib.Path):
    """Summary of experiments/pdxe_response's line_arm.csv, or None when absent."""
    f = path / "line_arm.csv"
    if not f.exists():
        return None
    with open(f, newline="") as fh:
        rows = list(csv.DictReader(fh))

    def num(x):
        try:
            return float(x)
        except (TypeError, ValueError):
            return math.nan

    ok = [r for r in rows if r.get("status") in ("converged", "max_steps")]
    shown = f.resolve().relative_to(ROOT) if f.resolve().is_relative_to(ROOT) else f
    out = {"file": str(shown), "n_rows": len(rows), "n_usable": len(ok), "arms": {}}
    for arm in sorted({r["arm"] for r in ok}):
        sel = [r for r in ok if r["arm"] == arm]
        d = {"n_lines": len(sel)}
        if any(r.get("her2_route") for r in sel):
            routes = {}
            for r in sel:
                routes[r["her2_route"]] = routes.get(r["her2_route"], 0) + 1
            d["her2_routes"] = routes
        for name in ("her2_efficacy_csc", "her2_efficacy_bulk", "csc_sparing"):
            vals = [num(r.get(name)) for r in sel if r.get(f"{name}_flag", "") == ""]
            vals = [v for v in vals if math.isfinite(v)]
            if vals:
                d[f"{name}_unflagged_median"] = float(np.median(vals))
                d[f"{name}_unflagged_n"] = len(vals)
        out["arms"][arm] = d
    return out


def her2_population(tm, nat) -> dict:
    """The fitted spread of HER2 dependence, in the model's own structure: the fraction
    ``phi`` of tumours with h = 0 ("fraction"), or h = sigmoid(m + s xi) ("continuous"),
    summarised by its median and the share of tumours with h < 0.1."""
    if tm.heterogeneity == "fraction":
        return {"her2_independent_fraction_phi": float(nat["logit_her2_independent"])}
    from scipy.stats import norm

    m = float(nat["her2_dependence_logit_mean"])
    sd = float(nat["log_her2_dependence_sd"])
    return {"her2_dependence_logit_mean": m, "her2_dependence_logit_sd": sd,
            "her2_dependence_median": float(1.0 / (1.0 + math.exp(-m))),
            "her2_dependence_share_below_0.1": float(
                norm.cdf((math.log(0.1 / 0.9) - m) / sd))}


def her2_population_text(fe) -> str:
    if "her2_independent_fraction_phi" in fe:
        return (f"a fraction phi = {fe['her2_independent_fraction_phi']:.2f} of tumours "
                "does not depend on HER2 (HER2 blockade leaves them, and their CSC "
                "fraction, unchanged)")
    return (f"HER2 dependence h = sigmoid(m + s xi) varies between tumours, m = "
            f"{fe['her2_dependence_logit_mean']:.3g}, s = {fe['her2_dependence_logit_sd']:.3g}"
            f" (median h {fe['her2_dependence_median']:.3g}; "
            f"{100 * fe['her2_dependence_share_below_0.1']:.0f}% of tumours have h < 0.1, "
            "nearly untouched by HER2 blockade)")


def main(args) -> dict:
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc, fit_source = _fitted.resolve_fit(args.fit, quick=args.quick, out=out)
    arms = make_arms(_fitted.regimens(), args.quick)
    tm, z = _fitted.build(doc, [a for _, _, a in arms])
    z = jnp.asarray(z)
    nat = tm.natural(z)
    fn = jax.jit(lambda zz: summaries(tm, zz))
    s_map = np.asarray(fn(z))
    draws = fs.laplace_draws(np.asarray(doc["z"]), np.asarray(doc["cov"]),
                             n_draws=args.draws, key=jax.random.PRNGKey(args.seed))
    draws = _fitted.draws_for(doc, np.asarray(z), draws)
    _, lo, hi = fs.predictive_interval(lambda zz: summaries(tm, zz), draws,
                                       batch=min(args.draws, 50))
    treated = [(lab, kind, a) for lab, kind, a in arms if kind != "untreated"]
    traj_labels = ("T", "H", "T+H", "HP", "L", "T|untreated")
    traj = trajectories(tm, z, arms, traj_labels, args.n_t)
    f_map = np.exp(np.asarray(csc_fractions(tm, tm.residuals(z))[0]))
    rows = []
    for i, (lab, kind, a) in enumerate(treated):
        rows.append({
            "arm": lab, "kind": kind, "regimen": a.regimen.name,
            "surgery_day": round(a.eval_day(), 2),
            "csc_fraction_typical": s_map[0, i], "untreated_fraction_typical": s_map[1, i],
            "log_enrichment_typical": s_map[2, i], "log_enrichment_lo95": lo[2, i],
            "log_enrichment_hi95": hi[2, i], "enrichment_typical": math.exp(s_map[2, i]),
            "csc_fraction_residual_mean": s_map[3, i],
            "log_enrichment_residual": s_map[4, i], "log_enrichment_residual_lo95": lo[4, i],
            "log_enrichment_residual_hi95": hi[4, i], "pcr_rate": s_map[5, i],
            "csc_fraction_min_over_patients": float(f_map[i].min()),
            "csc_fraction_max_over_patients": float(f_map[i].max())})
    header = list(rows[0])
    write_atomic(out / "arms.csv", csv_text(header, [[
        f"{r[h]:.6g}" if isinstance(r[h], float) else r[h] for h in header] for r in rows]))
    trows = []
    for lab, tr in traj.items():
        for t, f, v in zip(tr["day"], tr["csc_fraction"], tr["volume_mm3_per_mm3"],
                           strict=True):
            trows.append([lab, f"{t:.4g}", f"{f:.6g}", f"{v:.6g}"])
    write_atomic(out / "trajectories.csv", csv_text(
        ["arm", "day", "csc_fraction", "volume_relative_to_start"], trows))

    # the ODE solve and the exact solution agree at surgery (typical patient). The check
    # uses a fine exposure grid (`FINE_STEP_DAY`), and the model grid's own error (half a
    # day; the blockade by Gauss-Legendre on each interval, the production integral
    # log-linear between grid points) is reported beside it
    fine = eqx.tree_at(lambda m: m.grid, tm, exposure_grid(
        tm.model, tm.base, [a for _, _, a in arms], step_day=FINE_STEP_DAY))
    s_fine = np.asarray(jax.jit(lambda zz: summaries(fine, zz))(z))
    i_of = {r["arm"]: i for i, r in enumerate(rows)}
    check = {lab: abs(traj[lab]["csc_fraction"][-1] / s_fine[0, i_of[lab]] - 1.0)
             for lab in traj if lab in i_of}
    grid_err = {lab: abs(rows[i_of[lab]]["csc_fraction_typical"] / s_fine[0, i_of[lab]] - 1.0)
                for lab in check}
    by = {r["arm"]: r for r in rows}
    sigma = float(nat["logit_csc_sparing"])
    chemo_sign = int(np.sign(by["T"]["log_enrichment_typical"]))
    pdx = read_pdx(pathlib.Path(args.pdx))
    summary = {
        "question": "CSC fraction at surgery: chemotherapy vs HER2 blockade (Li et al. 2008)",
        "quick": bool(args.quick), "fit": fit_source, "fit_quick": bool(doc.get("quick")),
        "published_direction": {"chemotherapy": "+ (CD44+/CD24-low fraction rises)",
                                "her2_blockade": "not + (no rise; lapatinib)",
                                "citation": LI_2008},
        "fitted_effects": {"csc_sparing_sigma_S": sigma,
                           "her2_heterogeneity": tm.heterogeneity,
                           **her2_population(tm, nat),
                           "her2_efficacy_csc_eps_S": float(nat["logit_her2_csc"]),
                           "her2_efficacy_bulk_eps_D": float(nat["logit_her2_bulk"]),
                           "initial_csc_fraction": float(tm.base.initial_csc_fraction)},
        "chemo_enrichment_sign": chemo_sign,
        "chemo_sign_matches_sparing": bool(chemo_sign == int(np.sign(1.0 - sigma))),
        "arms": {r["arm"]: {k: v for k, v in r.items() if k != "arm"} for r in rows},
        "direction_agrees": {
            r["arm"]: (bool(r["log_enrichment_typical"] > 0) if r["kind"] == "chemo alone"
                       else bool(r["log_enrichment_typical"] <= 0)
                       if r["kind"] == "HER2 blockade alone" else None) for r in rows},
        "simulate_vs_exact_rel_err": check,
        "exact_grid_rel_err": grid_err,
        "fine_step_day": FINE_STEP_DAY,
        "trajectory_status": {k: v["status"] for k, v in traj.items()},
        "trajectory_peak_csc_fraction": {k: float(np.max(v["csc_fraction"]))
                                         for k, v in traj.items()},
        "pdx": pdx,
        "n_draws": args.draws,
        "wall_s": round(time.perf_counter() - t_start, 2),
        "precision": "float64" if jax.config.jax_enable_x64 else "float32",
        "device": str(jax.devices()[0]),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    _figure(rows, traj, out / "csc_enrichment.png")
    _result_md(summary, rows, out / "RESULT.md")
    return summary


def _figure(rows, traj, path):
    plt = _fitted.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    for lab, tr in traj.items():
        ax.plot(tr["day"], 100 * tr["csc_fraction"], label=lab.replace("|", " "),
                ls="--" if "untreated" in lab else "-")
    ax.set(yscale="log", xlabel="day (treatment start = 0; curves end at surgery)",
           ylabel="CSC fraction S/(S+D) [%]",
           title="typical patient: CSC fraction during neoadjuvant therapy")
    ax.legend(fontsize=8)
    colours = {"chemo alone": "C3", "HER2 blockade alone": "C0",
               "chemo + HER2 blockade": "C4"}
    y = np.arange(len(rows))
    for i, r in enumerate(rows):
        e = r["log_enrichment_typical"]
        bx.errorbar(e / math.log(2), i, xerr=[[max(e - r["log_enrichment_lo95"], 0) / math.log(2)],
                                             [max(r["log_enrichment_hi95"] - e, 0) / math.log(2)]],
                    fmt="o", color=colours[r["kind"]], capsize=2)
    bx.axvline(0, color="0.5", lw=0.8)
    bx.set_yticks(y, [f"{r['arm']} ({r['kind']})" for r in rows], fontsize=7)
    bx.invert_yaxis()
    bx.set(xlabel="log2 CSC fraction at surgery / untreated (typical; 95% interval)",
           title="Li 2008 direction: chemo > 0, HER2 blockade <= 0")
    _fitted.save_figure(fig, path)
    plt.close(fig)


def _result_md(s, rows, path):
    fe = s["fitted_effects"]
    by = {r["arm"]: r for r in rows}

    def enr(lab):
        r = by[lab]
        return (f"{r['enrichment_typical']:.2f}x (95% interval "
                f"{math.exp(r['log_enrichment_lo95']):.2g}-"
                f"{math.exp(r['log_enrichment_hi95']):.2g}); CSC fraction "
                f"{100 * r['csc_fraction_typical']:.2f}% vs "
                f"{100 * r['untreated_fraction_typical']:.2f}% untreated; among residual tumours "
                f"{math.exp(r['log_enrichment_residual']):.2f}x")

    agree = s["direction_agrees"]

    def robust(a):
        r = by[a]
        if r["kind"] == "chemo alone":
            return r["log_enrichment_lo95"] > 0
        return r["log_enrichment_hi95"] <= 0
    single = [a for a, v in agree.items() if v is not None]
    n_ok = sum(agree[a] for a in single)
    lines = [
        "# CSC fraction after chemotherapy vs under HER2 blockade",
        "",
        ("**Quick run** (matched arms only, few draws)." if s["quick"] else "Full run."),
        f"Fit: {s['fit']}" + (" — a quick fit (NeoSphere only): a demonstration, not a "
                             "result." if s["fit_quick"] else "."),
        "",
        f"Published direction: {s['published_direction']['citation']}.",
        "",
        "## Model (typical patient, CSC fraction at surgery relative to an untreated "
        "tumour on the same day)",
        "",
        f"- Docetaxel alone (T): {enr('T')}.",
        f"- Trastuzumab alone (H): {enr('H')}.",
        f"- T+H: {enr('T+H')}.",
        f"- Trastuzumab + pertuzumab (HP): {enr('HP')}.",
        f"- Lapatinib 6 wk (L): {enr('L')}.",
        "",
        f"Fitted effects: CSC sparing sigma_S = {fe['csc_sparing_sigma_S']:.3g} (chemo "
        f"kills CSCs at {fe['csc_sparing_sigma_S']:.3g} x the bulk rate); HER2 efficacy on "
        f"CSC self-renewal eps_S = {fe['her2_efficacy_csc_eps_S']:.3g}, on bulk division "
        f"eps_D = {fe['her2_efficacy_bulk_eps_D']:.3g}; {her2_population_text(fe)}. "
        "'Typical' is the patient with full HER2 dependence (h = 1) and median "
        "responsiveness; 'among residual tumours' averages over responsiveness and HER2 "
        "dependence, weighted by P(no pCR).",
        "",
        f"Direction vs Li et al. (chemo alone: rise; HER2 blockade alone: no rise): "
        f"{n_ok} of {len(single)} single-modality arms agree"
        + ("" if n_ok == len(single) else
           " (disagreeing: " + ", ".join(a for a in single if not agree[a]) + ")") + ".",
        "On the published side of 1 over the whole 95% interval (Laplace draws): "
        + ", ".join(f"{a}: {'yes' if robust(a) else 'no'}" for a in single) + ".",
        f"Chemotherapy's enrichment sign ({s['chemo_enrichment_sign']:+d}) matches the sign "
        f"of 1 - sigma_S: {s['chemo_sign_matches_sparing']}.",
        "",
        "All arms (arms.csv has every number):",
        "",
        "| arm | kind | enrichment (typical) | 95% interval | pCR (model) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['kind']} | {r['enrichment_typical']:.2f}x | "
                     f"{math.exp(r['log_enrichment_lo95']):.2g}-"
                     f"{math.exp(r['log_enrichment_hi95']):.2g} | "
                     f"{100 * r['pcr_rate']:.1f}% |")
    lines += ["", "## Against the PDX fits", ""]
    pdx = s["pdx"]
    if pdx is None:
        lines.append("experiments/results/pdxe_response/line_arm.csv is absent (that "
                     "experiment had not written its results when this ran): no PDX "
                     "comparison.")
    else:
        lines.append(f"From {pdx['file']} ({pdx['n_usable']} usable line x arm fits):")
        lines.append("")
        for arm, d in pdx["arms"].items():
            if len(d) < 2:  # an arm without a HER2 or chemotherapy effect: nothing to show
                continue
            lines.append(f"- {arm}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float)
                                                  else f"{k} {v}" for k, v in d.items()))
        pac = pdx["arms"].get("paclitaxel", {})
        tz = pdx["arms"].get("trastuzumab", {})
        lines.append("")
        if "csc_sparing_unflagged_median" in pac:
            m = pac["csc_sparing_unflagged_median"]
            lines.append(
                f"- Paclitaxel CSC sparing: PDX median {m:.3g} vs clinical fit "
                f"{fe['csc_sparing_sigma_S']:.3g}: "
                + ("both < 1, chemotherapy enriches CSCs in both." if m < 1 else
                   "the PDX lines do not show sparing; the clinical fit does: disagree."))
        else:
            lines.append("- Paclitaxel CSC sparing: no unflagged PDX estimate.")
        if "her2_routes" in tz:
            lines.append(f"- Trastuzumab routes in PDX lines: {tz['her2_routes']}; the "
                         f"clinical fit puts eps_S = {fe['her2_efficacy_csc_eps_S']:.3g} and "
                         f"eps_D = {fe['her2_efficacy_bulk_eps_D']:.3g}.")
    lines += [
        "",
        "## Caveats",
        "",
        "- The model's CSC compartment is a functional one (self-renewing, founds lasting "
        "lineages); CD44+/CD24-low or ALDH1+ fractions are markers that overlap it only "
        "in part. Li et al. measured chemotherapy effects in HER2-negative tumours; here "
        "the chemotherapy arms are HER2+ tumours of the fitted model.",
        "- Another series found the opposite after epirubicin/cyclophosphamide "
        "(CD44+/CD24- fell from 4.4% to 2%; PubMed 20004947): the published direction is "
        "not settled.",
        "- Along the way (typical patient, trajectories.csv) the CSC fraction peaks at "
        + ", ".join(f"{100 * v:.0f}% ({k})" for k, v in s["trajectory_peak_csc_fraction"].items()
                    if "untreated" not in k)
        + ": each chemotherapy dose kills most of the bulk for a few days. Peaks near 100% "
        "are far above any measured marker fraction; they follow from the fit's large "
        "per-dose kill and strong sparing, which pCR alone does not pin down.",
        "- The CSC fraction is not fitted to any marker data: it follows from the pCR fit's "
        "CSC sparing and HER2 efficacies, with a fixed initial fraction "
        f"{100 * fe['initial_csc_fraction']:.0f}%.",
        "- Trajectories from fitcsc.simulate agree with the exact solution at surgery, "
        f"its HER2 blockade integrated on a {s['fine_step_day']:g}-day grid (largest "
        f"relative difference {max(s['simulate_vs_exact_rel_err'].values()):.1e}). On the "
        "trial model's own half-day grid the typical patient's CSC fraction is off by up "
        f"to {max(s['exact_grid_rel_err'].values()):.1e} (relative; "
        f"lapatinib {s['exact_grid_rel_err'].get('L', float('nan')):.1e}; the blockade is "
        f"integrated by {BLOCKADE_GL}-point Gauss-Legendre on each interval, which "
        "resolves the peaks of its daily doses: the trapezoid it replaced was 4.4% off on "
        "the main fit).",
        "",
        f"Wall time {s['wall_s']:.0f} s; {s['device']}, {s['precision']}; "
        f"{s['n_draws']} Laplace draws.",
    ]
    write_atomic(path, "\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="matched arms only, 10 draws; runs a quick pCR fit if --fit is absent")
    p.add_argument("--fit", default=str(_fitted.DEFAULT_FIT),
                   help="saved trial fit (fit.json or its directory)")
    p.add_argument("--pdx", default=str(PDX_DIR), help="pdxe_response results directory")
    p.add_argument("--draws", type=int, default=400, help="Laplace draws")
    p.add_argument("--n-t", type=int, default=200, help="trajectory time points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "csc_enrichment"))
    args = p.parse_args(argv)
    if args.quick:
        args.draws, args.n_t = 10, 60
    return args


if __name__ == "__main__":
    summary = main(parse_args(sys.argv[1:]))
    print(json.dumps({k: summary[k] for k in ("chemo_enrichment_sign", "direction_agrees",
                                               "wall_s")}, indent=1))
