"""MAS98.06 population posterior: all arms, pre-treatment growth included.

Question: with every mouse of the ER+ (HER2 not amplified) MAS98.06 PDX (Romero-Becerra
et al. 2025 Nat Commun 16:10151; 57 curves, 10 arms, days -125 to 42) in one
hierarchical CSC model, what is the posterior of trastuzumab's effect on CSC
self-renewal (epsilon_S: fewer symmetric divisions) against its effect on bulk
proliferation (epsilon_D: slower non-stem division), and what can these data identify?
Does the CSC model predict the curves better than the exponential, logistic, Gompertz
and Simeoni models (PSIS-LOO)?

Method: `fitcsc.csc_population` with one fixed effect per agent (``effects="drug"``):
each agent (trastuzumab: HER2 class; fulvestrant, heregulin ``Her``, EGF: cytostatic,
whose efficacy may be negative, i.e. growth-stimulating) acts from day 0 at a constant
exposure (the files give no doses), combination arms through the model's combination
rules; v_S, p and the carrying capacity K shared; V0 at each mouse's first observation
one typical value per arm (arms with and without pre-treatment rows start at different
days); log-normal mouse effects on v_S and V0 (``--animal-growth self_renewal``: on
2p - 1 in place of v_S; ``none``: on V0 only). Volume 0 (not palpable) and below 4 mm3
is left-censored (M3). MAP warm start (`fit_map` per curve, then the population mode),
ChEES-HMC, 8 chains. The baselines get the same design (rate and V0 per arm, mouse
effects on both) and sampler.

Run: ``python experiments/mas98_bayes.py [--quick] [--out DIR]``. Chains run as separate
processes (``--seed 0 --out A`` and ``--seed 1 --out B``, one core each) are joined by
the same command with ``--merge A B --out C``. Writes ``posterior.nc``,
``summary.csv``, ``summary.json``, ``RESULT.md``, ``loo.csv`` and the figures
(``trace_rank.png``, ``pair.png``, ``forest.png``, ``ppc.png``, ``vpc.png``,
``trastuzumab.png``).
"""

from __future__ import annotations

import argparse
import json
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
    loo_against_baselines,
    md_table,
    sampler_settings,
    script_checkpoint,
    starts_from_posterior,
)

import fitcsc
import fitcsc.summary as fs
from fitcsc.files import csv_text, remove_checkpoint, write_atomic
from fitcsc.population import csc_population, write_posterior_outputs

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = "mas98_06_pdx/mas98_06_tumor_volume.csv"
AGENTS = {"Trast": "her2", "Fulv": "cytostatic", "Her": "cytostatic", "EGF": "cytostatic"}
DETECTION_LIMIT_MM3 = 4.0  # smallest palpable volumes recorded; 0 = not palpable
QUICK_ARMS, QUICK_MICE = ("Ctrl", "Trast"), 2
FULL = dict(method="chees", num_chains=8, num_warmup=500, num_samples=500)
QUICK = dict(method="chees", num_chains=4, num_warmup=30, num_samples=30, map_max_steps=50)
PAIR = ["csc_division_rate", "self_renewal", "carrying_capacity_cells", "her2_efficacy_csc",
        "her2_efficacy_bulk"]


def regimens(arms):
    """Per arm: one constant-exposure pseudo-drug per agent named in the arm, from day 0."""
    drug = {a: fitcsc.register_arm_drug(a, c) for a, c in AGENTS.items()}
    out = {}
    for arm in arms:
        parts = [p for p in arm.split("_") if p in AGENTS]
        out[arm] = fitcsc.Regimen(tuple(fitcsc.DoseLine(drug[p], 1.0, "mg", start_day=0.0)
                                        for p in parts), name=arm)
    return out


def load(data_dir, quick):
    table = fitcsc.read_tidy_csv(fitcsc.data_dir(data_dir) / DATA)
    if quick:
        keep = np.zeros(table.n_rows, bool)
        for arm in QUICK_ARMS:
            mice = list(dict.fromkeys(table.subject[table.arm == arm].tolist()))[:QUICK_MICE]
            keep |= np.isin(table.subject, mice)
        table = table.select(keep)
    regs = regimens(table.arms)
    batch = fitcsc.make_batch(table, regs, detection_limit_mm3=DETECTION_LIMIT_MM3)
    return table, batch, [regs[a] for a in batch.arm]


def main(args) -> dict:
    t0 = time.perf_counter()
    out = pathlib.Path(args.out)
    if args.zero_sum_seeded and not args.v0_by_start:
        raise SystemExit("mas98_bayes: --zero-sum-seeded needs --v0-by-start")
    table, batch, regs = load(args.data_dir, args.quick)
    drugs = {d.split(":", 1)[1]: i for i, d in enumerate(batch.drugs)}
    v0 = "initial_volume_mm3"  # seeded curves' V0 spread: wide (a seed of ~1e-2 mm3)
    pop = csc_population(batch, regs, effects="drug", stimulation=True,
                         v0_by_start=args.v0_by_start, animal_growth=args.animal_growth,
                         seeded_v0=args.seeded_v0,
                         zero_sum=("seeded",) if args.zero_sum_seeded else (),
                         omega_scale=({f"seeded|{v0}": args.seeded_v0_scale,
                                       f"palpable|{v0}": 1.0}
                                      if args.v0_by_start else {f"animal|{v0}": 3.0}),
                         **({} if args.vs_prior_sd is None else
                            {"prior_scale": {"csc_division_rate": args.vs_prior_sd}}))
    if args.seeded_ref and not args.v0_by_start:
        raise SystemExit("mas98_bayes: --seeded-ref needs --v0-by-start")
    if args.merge and args.baselines:
        raise SystemExit("mas98_bayes: --merge samples nothing, so it compares no baselines; "
                         "drop --baselines")
    if args.merge:
        idata, record = merge_runs(args, pop, out)
    else:
        idata, record = run(args, pop, batch, out)
    ident = identification(pop, idata)
    her2 = her2_terms(idata, "her2_efficacy_csc", "her2_efficacy_bulk", out / "trastuzumab.png",
                      title="MAS98.06: trastuzumab's CSC term vs its bulk term (all arms "
                            "with trastuzumab share them)")
    baselines = (() if args.merge else ("exponential",) if args.quick else
                 ("exponential", "logistic", "gompertz", "simeoni") if args.baselines is None
                 else tuple(args.baselines))
    loo, base_records = loo_against_baselines(
        idata, batch, regs, out / "baselines",
        settings=sampler_settings(args, QUICK if args.quick else FULL), baselines=baselines,
        progress=not args.no_progress)
    cols = ["model", "rank", "elpd_loo", "se", "elpd_diff", "dse", "p_loo", "weight",
            "n_k_high"]
    write_atomic(out / "loo.csv", csv_text(cols, [[f"{r[c]:.6g}" if isinstance(r[c], float)
                                                    else str(r[c]) for c in cols]
                                                   for r in loo]))
    sampler = record["sampler"]
    summary = {
        "question": "MAS98.06 (ER+, HER2 not amplified): trastuzumab on CSC self-renewal "
                    "or on bulk proliferation? What do the curves identify?",
        "reduced": bool(not args.quick and any(sampler.get(k, 1) != FULL.get(k, 1) for k in
                                               ("num_chains", "num_warmup", "num_samples",
                                                "thinning"))),
        "n_curves": batch.n_subjects, "arms": list(table.arms),
        "n_observations": int(np.asarray(batch.mask).sum()),
        "n_censored": int(np.asarray(batch.censored & batch.mask).sum()),
        "detection_limit_mm3": DETECTION_LIMIT_MM3, "agents": drugs, **model_options(args),
        **record, "identification": ident, "trastuzumab": her2, "loo": loo,
        "baselines": base_records, "wall_s": round(time.perf_counter() - t0, 1),
        "device": str(jax.devices()[0]), "precision": str(jax.numpy.zeros(()).dtype),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    _result_md(summary, out / "RESULT.md")
    return summary


def model_options(args) -> dict:
    """The options that define the model (runs merged by ``--merge`` must share them)."""
    return {"quick": bool(args.quick),
            "vs_prior_sd": args.vs_prior_sd if args.vs_prior_sd is not None else 1.0,
            "precondition": bool(args.precondition), "centred": list(args.centre),
            "v0_by_start": bool(args.v0_by_start), "net_rate": bool(args.net_rate),
            "seeded_ref": bool(args.seeded_ref), "animal_growth": args.animal_growth,
            "seeded_v0": args.seeded_v0, "zero_sum_seeded": bool(args.zero_sum_seeded),
            "seeded_v0_scale": args.seeded_v0_scale}


def run(args, pop, batch, out):
    """Warm start and sample ``pop`` (`_bayes.fit_population`): ``(idata, record)``."""
    settings = sampler_settings(args, QUICK if args.quick else FULL)
    ckpt = script_checkpoint(args, out, "mas98_bayes")  # removed when the run finishes
    starts = (None if args.init_from is None else
              starts_from_posterior(pop, args.init_from, settings["num_chains"],
                                    args.init_chain))
    idata, record, _ = fit_population(pop, batch, out, settings=settings, seed=args.seed,
                                      starts=starts,
                                      progress=not args.no_progress, checkpoint=ckpt,
                                      precondition=({"lbfgs_steps": args.lbfgs_steps}
                                                    if args.precondition else None),
                                      centre=tuple(args.centre),
                                      net_rate=(("csc_division_rate", "self_renewal")
                                                if args.net_rate else None),
                                      seeded_ref="seeded" if args.seeded_ref else None,
                                      refine_steps=20 if args.quick else 300, pair=PAIR)
    if ckpt is not None and not args.keep_checkpoint:
        remove_checkpoint(out)
    return idata, record


def merge_runs(args, pop, out):
    """The chains of the finished runs in ``args.merge`` as one posterior in ``out``
    (`fitcsc.summary.concat_chains`): ``(idata, record)``. Each run's ``summary.json``
    must give this command's model options, and its sampler settings must match the
    others' but for the seed."""
    runs = [pathlib.Path(d) for d in args.merge]
    if out.resolve() in {d.resolve() for d in runs}:
        raise SystemExit(f"mas98_bayes --merge: --out {out} is one of the merged runs; "
                         "write the merge elsewhere")
    want, records = model_options(args), []
    for d in runs:
        f = d / "summary.json"
        if not f.is_file():
            raise SystemExit(f"mas98_bayes --merge: {f}: no such file (is {d} a finished "
                             "run's output folder?)")
        r = json.loads(f.read_text())
        if "merged_from" in r:
            raise SystemExit(f"mas98_bayes --merge: {f} is itself a merge; merge the runs "
                             "it names")
        for k, v in want.items():
            if k in r and r[k] != v or k not in r and k != "seeded_v0_scale":
                raise SystemExit(f"mas98_bayes --merge: {f}: {k} is {r.get(k)!r}, this "
                                 f"command's options give {v!r}")
        if r["n_parameters"] != pop.space.size:
            raise SystemExit(f"mas98_bayes --merge: {f}: {r['n_parameters']} parameters, "
                             f"this command's model has {pop.space.size}")
        records.append(r)
    try:
        idata = fs.concat_chains([d / "posterior.nc" for d in runs])
    except (ValueError, OSError) as e:
        raise SystemExit(f"mas98_bayes --merge: {e}") from None
    diag, _ = write_posterior_outputs(pop, idata, out, pair=PAIR)
    sampler = {**records[0]["sampler"],
               "num_chains": sum(r["sampler"]["num_chains"] for r in records),
               "seed": [r["sampler"]["seed"] for r in records]}
    record = {"n_parameters": pop.space.size, "fixed_effects": list(pop.fe_labels),
              "sampler": sampler, "timing": fs.sampler_timing(idata),  # the slowest run's
              "warm_start": {"warm_start_s": max(r["warm_start"]["warm_start_s"]
                                                 for r in records),
                             "runs": [r["warm_start"] for r in records]},
              "warmup": [r["warmup"] for r in records], "convergence": diag,
              "merged_from": [{"out": str(d), "seed": r["sampler"]["seed"],
                               "num_chains": r["sampler"]["num_chains"],
                               "convergence": r["convergence"], "timing": r["timing"],
                               "wall_s": r["wall_s"]} for d, r in zip(runs, records,
                                                                      strict=True)]}
    return idata, record


def _result_md(s, path):
    c, h = s["convergence"], s["trastuzumab"]
    lines = ["# MAS98.06 population posterior: trastuzumab on CSC self-renewal or on bulk "
             "proliferation?", ""]
    if not c["rhat_max"] <= 1.01:
        lines += [f"**Not converged (max R-hat {c['rhat_max']:.2f}, min bulk ESS "
                  f"{c['ess_bulk_min']:.0f}): these numbers are indicative only.**", ""]
    lines += [
             ("Quick run (2 arms x 2 mice, 4 chains x 30 + 30 iterations): a smoke test, "
              "not a result." if s["quick"] else
              ("Reduced run (fewer chains/iterations than the script's full settings "
               f"{FULL['num_chains']} x {FULL['num_warmup']} + {FULL['num_samples']}, "
               "which did not fit the time available): " if s["reduced"] else "Full run: ")
              + f"{s['n_curves']} curves, {s['n_observations']} observations "
              f"({s['n_censored']} below {s['detection_limit_mm3']:g} mm³, M3), pre-treatment "
              "growth included."), "",
             f"- Sampler: {s['sampler']['method']}, {s['sampler']['num_chains']} chains x "
             f"{s['sampler']['num_warmup']} warm-up + {s['sampler']['num_samples']} draws"
             f" (thinning {s['sampler'].get('thinning', 1)})"
             + (", dense mass" if s['sampler'].get('dense_mass') else "")
             + (f", max tree depth {s['sampler']['max_tree_depth']}"
                if s['sampler']['method'] == "nuts" else "")
             + ("; Laplace-preconditioned (z = z_hat + L u, L from the Hessian at an L-BFGS "
                "mode)" if s.get("precondition") else "")
             + (f"; centred: {', '.join(s['centred'])}" if s.get("centred") else "")
             + ("; V0 mouse SDs by start (palpable from day 0 / seeded before)"
                if s.get("v0_by_start") else "")
             + ("; sampled log net rate v_S (2p - 1) in place of log v_S"
                if s.get("net_rate") else "")
             + ("; seeded curves' V0 sampled as the volume at their first measured "
                "volume (an exact change of variables, _bayes.seeded_reference)"
                if s.get("seeded_ref") else "")
             + ("; one typical V0 for every arm seeded before treatment"
                if s.get("seeded_v0") == "shared" else "")
             + ("; the seeded mice's V0 effects sum to zero (the typical seeded V0 is "
                "their mean)" if s.get("zero_sum_seeded") else "")
             + ({None: "; no mouse effect on growth (one v_S and p for every mouse)",
                 "self_renewal": "; mouse effects on 2p - 1 (the net CSC growth rate at "
                                 "one v_S)"}.get(s.get("animal_growth", "csc_division_rate"),
                                                 ""))
             + f"; {s['n_parameters']} parameters.",
             f"- Convergence: max R-hat {c['rhat_max']:.4f} over every sampled parameter "
             f"({c['rhat_max_population']:.4f} over the population-level ones), min bulk ESS "
             f"{c['ess_bulk_min']:.0f}, min tail ESS {c['ess_tail_min']:.0f}, "
             f"{c['n_divergent']} divergent transitions.",
             f"- Posterior predictive: {c['ppc_coverage90']:.1%} of the measured volumes inside "
             "their 90% predictive interval.",
             *([f"- Merged: the chains of {len(s['merged_from'])} runs (seeds "
                + ", ".join(str(m['seed']) for m in s['merged_from'])
                + "), run side by side as separate processes; their own max R-hat "
                + ", ".join(f"{m['convergence']['rhat_max']:.3f}" for m in s['merged_from'])
                + ". Times below are the slowest run's."] if s.get("merged_from") else []),
             *([f"- Starts: draws {s['warm_start']['draws']} of chain "
                f"{s['warm_start']['chain']} of {s['warm_start']['starts_from']} (its chains' "
                "mean log densities " + ", ".join(f"{x:.1f}" for x in
                                                  s['warm_start']['chain_mean_lp'])
                + "), not a MAP warm start."] if "starts_from" in s["warm_start"] else []),
             f"- Time: warm start {s['warm_start']['warm_start_s']:.0f} s, compile "
             f"{s['timing']['compile_s']:.0f} s, warm-up {s['timing']['warmup_s']:.0f} s, "
             f"sampling {s['timing']['sampling_s']:.0f} s ({s['precision']}).", "",
             "## Trastuzumab: CSC term against bulk term", "",
             f"- ε_S (CSC self-renewal blocked): mean {h['csc_term']['mean']:.3f}, 95% "
             f"interval {h['csc_term']['q025']:.3f}–{h['csc_term']['q975']:.3f}.",
             f"- ε_D (bulk division blocked): mean {h['bulk_term']['mean']:.3f}, 95% "
             f"interval {h['bulk_term']['q025']:.3f}–{h['bulk_term']['q975']:.3f}.",
             f"- Posterior correlation {h['correlation']:.2f}; P(ε_S > ε_D) = "
             f"{h['p_csc_gt_bulk']:.2f}; P(ε_S > 0.1) = {h['p_csc_gt_0.1']:.2f}, "
             f"P(ε_D > 0.1) = {h['p_bulk_gt_0.1']:.2f}.", "",
             "## What the data identify", "",
             "Shrinkage = 1 - posterior SD / prior SD (natural scale): near 1 the data pin "
             "the value, near 0 the posterior is the prior.", ""]
    lines += md_table(s["identification"], ["parameter", "post_mean", "post_sd", "hdi95",
                                            "prior_sd", "shrinkage"])
    lines += ["", "## PSIS-LOO against the baselines (same curves, design and sampler)", ""]
    lines += md_table(s["loo"], ["model", "rank", "elpd_loo", "se", "elpd_diff", "dse",
                                 "p_loo", "weight", "n_k_high"])
    lines += ["", "n_k_high: observations with Pareto k > 0.7 (their LOO term is unreliable).",
              "Figures: trace_rank.png, pair.png, forest.png, ppc.png, vpc.png, "
              "trastuzumab.png; posterior.nc holds the InferenceData."]
    write_atomic(path, "\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"arms {QUICK_ARMS}, {QUICK_MICE} mice each, tiny sampler, one baseline")
    p.add_argument("--baselines", nargs="*", default=None,
                   help="baseline models for PSIS-LOO (default: exponential logistic gompertz "
                        "simeoni; none with --merge)")
    add_sampler_arguments(p)
    p.add_argument("--vs-prior-sd", type=float, default=None,
                   help="prior SD of log v_S (the CSC division rate; default 1.0): a smaller "
                        "one keeps chains off fast, stiff divisions (see ATTEMPTS.md)")
    p.add_argument("--precondition", action="store_true",
                   help="sample u with z = z_hat + L u, L from the Hessian at an L-BFGS mode "
                        "(a fixed dense metric; see _bayes.laplace_preconditioner)")
    p.add_argument("--lbfgs-steps", type=int, default=1000,
                   help="with --precondition: L-BFGS steps from the warm start")
    p.add_argument("--centre", nargs="*", default=[], metavar="LEVEL:LABEL",
                   help="mouse effects to sample centred, e.g. animal:initial_volume_mm3 "
                        "animal:csc_division_rate (default: all non-centred)")
    for flag, text in (("--v0-by-start", "mouse V0 effects with one SD for the curves that "
                        "start at day 0 (palpable) and another for those seeded before "
                        "treatment (csc_population's v0_by_start)"),
                       ("--net-rate", "sample the log net CSC growth rate log(v_S (2p - 1)) "
                        "in place of log v_S (an exact shear; _bayes.reparameterise)"),
                       ("--seeded-ref", "with --v0-by-start: sample the seeded curves' V0 "
                        "as their volume at the first measured volume (centred; an exact "
                        "change of variables, _bayes.seeded_reference)")):
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument("--animal-growth", default="csc_division_rate",
                   type=lambda x: None if x == "none" else x,
                   choices=["csc_division_rate", "self_renewal", None],
                   help="the growth parameter with a mouse effect: csc_division_rate (v_S, "
                        "the default), self_renewal (2p - 1: the net CSC rate at one v_S) "
                        "or none (csc_population's animal_growth)")
    p.add_argument("--seeded-v0", default="arm", choices=["arm", "shared"],
                   help="the typical V0 of the arms seeded before treatment: one per arm "
                        "(default) or one for all of them (shared: every mouse was seeded "
                        "before any arm was assigned; csc_population's seeded_v0)")
    p.add_argument("--zero-sum-seeded", action="store_true",
                   help="with --v0-by-start: the seeded mice's V0 effects sum to zero, so "
                        "that the typical seeded V0 is their mean (population_model's "
                        "zero_sum; removes the shift of the typical V0 against every "
                        "mouse's effect that only the prior sets)")
    p.add_argument("--seeded-v0-scale", type=float, default=3.0,
                   help="with --v0-by-start: HalfNormal scale of the seeded curves' V0 SD "
                        "(log scale; default 3)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the chains' starts and the sampler (default 0)")
    p.add_argument("--checkpoint", action="store_true",
                   help="save the warm-up and every chunk of draws in OUT/.checkpoint; a "
                        "rerun with the same options resumes from them (with --method "
                        "nuts, --draws may differ: more extend the chains)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="with --checkpoint: keep it when the run ends, so that a NUTS run "
                        "can be extended later with more --draws")
    p.add_argument("--init-from", default=None, metavar="POSTERIOR_NC",
                   help="start the chains at draws of one chain of an earlier run with the "
                        "same options (its posterior.nc) in place of the MAP warm start")
    p.add_argument("--init-chain", type=int, default=None,
                   help="with --init-from: that run's chain (default: the one with the "
                        "highest mean log density)")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="join the chains of finished runs (their --out folders, run with "
                        "this command's model options and different --seed) into one "
                        "posterior in --out; samples nothing")
    p.add_argument("--data-dir", default=None, help="data directory (default: fitcsc's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "mas98_bayes"))
    return p.parse_args(argv)


if __name__ == "__main__":
    s = main(parse_args(sys.argv[1:]))
    print(json.dumps({k: s[k] for k in ("n_curves", "convergence", "trastuzumab", "wall_s")},
                     indent=1, default=float))
