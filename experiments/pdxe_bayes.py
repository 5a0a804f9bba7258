"""PDXE breast population posterior: trastuzumab and paclitaxel with line-level effects.

Question: across the PDX lines of the Novartis PDX Encyclopedia breast set (Gao et al.
2015; one mouse per line and arm), what is the population posterior of trastuzumab's
effect on CSC self-renewal (epsilon_S) against its effect on bulk proliferation
(epsilon_D), how much do lines differ, do the line-level effects follow ERBB2
amplification, and what do the curves identify? Paclitaxel's bulk kill and CSC sparing
are estimated beside them.

Method: the untreated, trastuzumab and paclitaxel arms of every line with an untreated
curve and at least one of the two; `fitcsc.csc_population` with ``groups`` = the PDX
line: line-level random effects (logit- or log-normal, non-centred) on the CSC division
rate and on every drug effect (epsilon_S, epsilon_D, kill rate, CSC sparing; none on
the labels given to ``--no-line-effect``), a log-normal mouse effect on V0; p and the
carrying capacity shared; each treated arm a constant effect from day 0 (doses are
not in the data); log-normal volume error with M3 censoring of zero volumes. MAP warm
start (`fit_map` per curve, then the population mode), ChEES-HMC, 8 chains.

Run: ``python experiments/pdxe_bayes.py [--quick] [--out DIR]``. Writes ``posterior.nc``,
``summary.csv``, ``summary.json``, ``lines.csv`` (line-level effects with ERBB2),
``RESULT.md`` and the figures (``trace_rank.png``, ``pair.png``, ``forest.png``,
``ppc.png``, ``vpc.png``, ``trastuzumab.png``, ``lines.png``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import sys
import time

import jax
import numpy as np
from _bayes import (
    add_sampler_arguments,
    fit_population,
    her2_terms,
    identification,
    md_table,
    sampler_settings,
    script_checkpoint,
)

import fitcsc
from fitcsc.files import (
    csv_text,
    pyplot,
    remove_checkpoint,
    save_figure,
    write_atomic,
)
from fitcsc.population import csc_population

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATASET = "pdxe_brca"
ARMS = ("untreated", "trastuzumab", "paclitaxel")
QUICK_LINES = ("X-3873", "X-4567", "X-1004")
AMPLIFIED_CN = 3.0  # ERBB2 copy number above which a line counts as amplified
FULL = dict(method="chees", num_chains=8, num_warmup=500, num_samples=500)
QUICK = dict(method="chees", num_chains=4, num_warmup=30, num_samples=30, map_max_steps=50)
CSC, BULK = "her2_efficacy_csc|trastuzumab", "her2_efficacy_bulk|trastuzumab"


def load(data_dir, quick):
    path = fitcsc.data_dir(data_dir) / DATASET / "pdxe_brca_tumor_volume.csv"
    table = fitcsc.read_tidy_csv(path)
    line = table.extra["pdx_line"]
    keep = np.isin(table.arm, ARMS)
    lines = [ln for ln in dict.fromkeys(line[keep].tolist())
             if {"untreated"} <= set(table.arm[keep & (line == ln)].tolist())
             and len(set(table.arm[keep & (line == ln)].tolist())) >= 2]
    if quick:
        lines = [ln for ln in lines if ln in QUICK_LINES]
    table = table.select(keep & np.isin(line, lines))
    regs = fitcsc.default_arm_regimens(table, warn=False)
    batch = fitcsc.make_batch(table, regs)
    of = dict(zip(table.subject.tolist(), table.extra["pdx_line"].tolist(), strict=True))
    return table, batch, [regs[a] for a in batch.arm], [of[s] for s in batch.subject]


def read_markers(data_dir):
    out = {}
    with open(fitcsc.data_dir(data_dir) / DATASET / "pdxe_brca_line_markers.csv",
              newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["pdx_line"]] = {k: float(v) if v not in ("", "NA") else math.nan
                                    for k, v in row.items() if k != "pdx_line"}
    return out


def line_effects(pop, idata, lines, markers):
    """Per line and effect: posterior mean and 95% interval of the line's value (from its
    treated curve's ``theta``), with ERBB2 copy number and RNA."""
    theta = idata.posterior["theta"]
    rows = []
    for i, (s, a) in enumerate(zip(pop.subject, pop.arm, strict=True)):
        if a == "untreated":
            continue
        for lab in pop.uses[a]:
            if lab.startswith(("her2_", "kill_rate", "csc_sparing")):
                x = theta.sel(subject=s, parameter=lab).values.ravel()
                m = markers.get(lines[i], {})
                rows.append({"line": lines[i], "arm": a, "parameter": lab.split("[")[0],
                             "mean": float(x.mean()), "q025": float(np.quantile(x, 0.025)),
                             "q975": float(np.quantile(x, 0.975)),
                             "erbb2_cnv": m.get("ERBB2_cnv", math.nan),
                             "erbb2_rnaseq": m.get("ERBB2_rnaseq_fpkm", math.nan)})
    return rows


def lines_figure(rows, path):
    plt = pyplot()
    params = [("her2_efficacy_csc", "ε_S: trastuzumab, CSC self-renewal blocked [fraction]"),
              ("her2_efficacy_bulk", "ε_D: trastuzumab, bulk division blocked [fraction]"),
              ("kill_rate", "k: paclitaxel bulk kill rate [1/day]")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), constrained_layout=True)
    for ax, (p, label) in zip(axes, params, strict=True):
        sel = [r for r in rows if r["parameter"] == p]
        cn = np.asarray([r["erbb2_cnv"] for r in sel])
        amp = cn > AMPLIFIED_CN
        for flag, c, name in ((False, "C0", "ERBB2 not amplified"),
                              (True, "C3", f"ERBB2 CN > {AMPLIFIED_CN:g}")):
            k = [j for j in range(len(sel)) if bool(amp[j]) == flag]
            if not k:
                continue
            x = np.where(np.isfinite(cn[k]), cn[k], 0.0)
            y = np.asarray([sel[j]["mean"] for j in k])
            lo = y - np.asarray([sel[j]["q025"] for j in k])
            hi = np.asarray([sel[j]["q975"] for j in k]) - y
            ax.errorbar(x, y, yerr=[lo, hi], fmt="o", ms=4, color=c, lw=0.7, capsize=2,
                        label=name)
        ax.set(xlabel="ERBB2 copy number (PDXE marker table; missing at 0)", ylabel=label,
               title=label.split(":")[0] + " per line: posterior mean and 95% interval")
        ax.title.set_fontsize(9)
        ax.yaxis.label.set_fontsize(8)
        ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)


def main(args) -> dict:
    t0 = time.perf_counter()
    out = pathlib.Path(args.out)
    table, batch, regs, lines = load(args.data_dir, args.quick)
    extra = {} if args.rtol is None else {"rtol": args.rtol}
    pop = csc_population(batch, regs, groups=lines, level="line", effects="arm",
                         no_group_effect=tuple(args.no_line_effect), **extra)
    settings = sampler_settings(args, QUICK if args.quick else FULL)
    ckpt = script_checkpoint(args, out, "pdxe_bayes")  # removed when the run finishes
    idata, record, _ = fit_population(pop, batch, out, settings=settings, seed=args.seed,
                                      progress=not args.no_progress,
                                      refine_steps=20 if args.quick else 300,
                                      precondition=({"lbfgs_steps": args.lbfgs_steps}
                                                    if args.precondition else None),
                                      centre=tuple(args.centre), checkpoint=ckpt,
                                      pair=["csc_division_rate", "self_renewal", CSC, BULK,
                                            "kill_rate[0]", "csc_sparing|paclitaxel"])
    if ckpt is not None and not args.keep_checkpoint:
        remove_checkpoint(out)
    ident = identification(pop, idata)
    her2 = her2_terms(idata, CSC, BULK, out / "trastuzumab.png",
                      title="PDXE breast: trastuzumab's typical CSC term vs bulk term "
                            "(line-level effects around them)")
    omegas = {lab: _stats(idata.posterior["omega_line"].sel(line_effect=lab).values.ravel())
              for lab in pop.re_labels[pop.levels.index("line")]}
    rows = line_effects(pop, idata, lines, read_markers(args.data_dir))
    cols = list(rows[0]) if rows else []
    write_atomic(out / "lines.csv", csv_text(cols, [[f"{r[c]:.6g}" if isinstance(r[c], float)
                                                      else str(r[c]) for c in cols]
                                                     for r in rows]))
    lines_figure(rows, out / "lines.png")
    summary = {
        "question": "PDXE breast: trastuzumab on CSC self-renewal or bulk proliferation, "
                    "line to line; paclitaxel's kill and CSC sparing",
        "quick": bool(args.quick), "n_curves": batch.n_subjects,
        "settings_override": {k: v for k, v in settings.items()
                              if (FULL if not args.quick else QUICK).get(k) != v},
        "ode_rtol": args.rtol if args.rtol is not None else 1e-6,
        "precondition": bool(args.precondition), "centred": list(args.centre),
        "no_line_effect": list(args.no_line_effect), "seed": args.seed,
        "n_lines": len(set(lines)), "arms": list(ARMS),
        "n_observations": int(np.asarray(batch.mask).sum()),
        "n_censored": int(np.asarray(batch.censored & batch.mask).sum()),
        **record, "identification": ident, "trastuzumab": her2,
        "line_sd_z_scale": omegas, "wall_s": round(time.perf_counter() - t0, 1),
        "device": str(jax.devices()[0]), "precision": str(jax.numpy.zeros(()).dtype)}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    _result_md(summary, rows, out / "RESULT.md")
    return summary


def _stats(x):
    return {"mean": float(x.mean()), "q025": float(np.quantile(x, 0.025)),
            "q975": float(np.quantile(x, 0.975))}


def _result_md(s, rows, path):
    c, h = s["convergence"], s["trastuzumab"]
    amp = [r for r in rows if r["parameter"] == "her2_efficacy_bulk"
           and r["erbb2_cnv"] > AMPLIFIED_CN]
    lines = ["# PDXE breast population posterior: trastuzumab's CSC and bulk terms, line to "
             "line", "",
             ("Quick run (3 lines, 4 chains x 30 + 30 iterations): a smoke test, not a "
              "result." if s["quick"] else
              f"{'Run with overridden settings' if s.get('settings_override') else 'Full run'}"
              f": {s['n_curves']} curves of {s['n_lines']} lines (arms "
              f"{', '.join(s['arms'])}), {s['n_observations']} observations "
              f"({s['n_censored']} censored)."), "",
             f"- Sampler: {s['sampler']['method']}, {s['sampler']['num_chains']} chains x "
             f"{s['sampler']['num_warmup']} warm-up + {s['sampler']['num_samples']} draws"
             + (f" (thinned: one kept of every {th} steps)"
                if (th := s["sampler"].get("thinning", 1)) > 1 else "")
             + (f" (max tree depth {s['sampler']['max_tree_depth']}, target acceptance "
                f"{s['sampler']['target_accept_prob']})" if s['sampler']['method'] == "nuts"
                else f" (max {s['sampler']['max_leapfrog_steps']} leapfrog steps)")
             + f"; {s['n_parameters']} parameters; ODE rtol {s.get('ode_rtol', 1e-6):g}"
             + ("; Laplace-preconditioned (z = z_hat + L u, L from the Hessian at an L-BFGS "
                "mode)" if s.get("precondition") else "")
             + (f"; centred: {', '.join(s['centred'])}" if s.get("centred") else "")
             + (f"; no line-level effect on: {', '.join(s['no_line_effect'])}"
                if s.get("no_line_effect") else "") + ".",
             *([f"- Warm-up: final step size {w['final_step_size']:.3g}, leapfrog steps per "
                f"step {w['n_leapfrog_median_last_half']:.0f} (median, last half; max "
                f"{w['n_leapfrog_max']:.0f}), acceptance {w['acceptance_rate_last_half']:.2f}"
                f" (last half), {w['n_divergent']} divergent."]
               if (w := s.get("warmup")) else []),
             f"- Convergence: max R-hat {c['rhat_max']:.4f} over every sampled parameter "
             f"({c['rhat_max_population']:.4f} population-level), min bulk ESS "
             f"{c['ess_bulk_min']:.0f}, min tail ESS {c['ess_tail_min']:.0f}, "
             f"{c['n_divergent']} divergent transitions.",
             f"- Posterior predictive: {c['ppc_coverage90']:.1%} of the volumes inside their "
             "90% interval.",
             f"- Time: warm start {s['warm_start']['warm_start_s']:.0f} s, compile "
             f"{s['timing']['compile_s']:.0f} s, warm-up {s['timing']['warmup_s']:.0f} s, "
             f"sampling {s['timing']['sampling_s']:.0f} s ({s['precision']}).", "",
             "## Trastuzumab, typical line", "",
             f"- ε_S (CSC self-renewal): mean {h['csc_term']['mean']:.3f} (95% "
             f"{h['csc_term']['q025']:.3f}–{h['csc_term']['q975']:.3f}); ε_D (bulk "
             f"division): mean {h['bulk_term']['mean']:.3f} (95% {h['bulk_term']['q025']:.3f}"
             f"–{h['bulk_term']['q975']:.3f}); correlation {h['correlation']:.2f}; "
             f"P(ε_S > ε_D) = {h['p_csc_gt_bulk']:.2f}.",
             "- Between-line SD on the logit/log scale (posterior mean, 95%): "
             + "; ".join(f"{k} {v['mean']:.2f} ({v['q025']:.2f}–{v['q975']:.2f})"
                         for k, v in s["line_sd_z_scale"].items()) + ".",
             f"- ERBB2-amplified lines (CN > {AMPLIFIED_CN:g}) with a trastuzumab curve: "
             + (", ".join(f"{r['line']} ε_D {r['mean']:.2f} ({r['q025']:.2f}–{r['q975']:.2f})"
                          for r in amp) or "none") + ".", "",
             "## What the data identify", ""]
    lines += md_table(s["identification"], ["parameter", "post_mean", "post_sd", "hdi95",
                                            "prior_sd", "shrinkage"])
    lines += ["", "Shrinkage = 1 - posterior SD / prior SD (natural scale). Line-level "
              "values: lines.csv, lines.png. Figures: trace_rank.png, pair.png, forest.png, "
              "ppc.png, vpc.png, trastuzumab.png; posterior.nc holds the InferenceData."]
    write_atomic(path, "\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"lines {QUICK_LINES}, tiny sampler")
    add_sampler_arguments(p)
    p.add_argument("--precondition", action="store_true",
                   help="sample z = z_hat + L u, L from the Hessian at an L-BFGS mode "
                        "(a fixed dense metric; see _bayes.laplace_preconditioner)")
    p.add_argument("--lbfgs-steps", type=int, default=1000,
                   help="with --precondition: L-BFGS steps from the warm start")
    p.add_argument("--centre", nargs="*", default=[], metavar="LEVEL:LABEL",
                   help="random effects to sample centred, e.g. line:kill_rate[0] "
                        "animal:initial_volume_mm3 (default: all non-centred)")
    p.add_argument("--no-line-effect", nargs="*", default=[], metavar="LABEL",
                   help="labels without a line-level random effect (one value per arm for "
                        "every line), e.g. her2_efficacy_csc (default: none)")
    p.add_argument("--rtol", type=float, default=None,
                   help="ODE relative tolerance of the model (default 1e-6)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the chains' starts and the sampler (default 0)")
    p.add_argument("--checkpoint", action="store_true",
                   help="save the warm-up and every chunk of draws in OUT/.checkpoint; a "
                        "rerun with the same options resumes from them (with --method "
                        "nuts, --draws may differ: more extend the chains)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="with --checkpoint: keep it when the run ends, so that a NUTS run "
                        "can be extended later with more --draws")
    p.add_argument("--data-dir", default=None, help="data directory (default: fitcsc's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "pdxe_bayes"))
    return p.parse_args(argv)


if __name__ == "__main__":
    s = main(parse_args(sys.argv[1:]))
    print(json.dumps({k: s[k] for k in ("n_curves", "convergence", "trastuzumab", "wall_s")},
                     indent=1, default=float))
