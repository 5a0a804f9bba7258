"""Neoadjuvant pCR across HER2+ trials: one CSC model, fitted vs published.

Question: can one CSC model with shared drug-effect parameters reproduce the published
pCR rates of the neoadjuvant HER2+ trial arms in data/clinical (MDACC, NOAH,
GeparQuattro, NeoSphere, NeoALTTO), each under its own regimen and pCR definition?

Model (`fitcsc.trials.TrialModel`, structure ``--structure``, default the one chosen
out of sample by experiments/clinical_validation.py): the SD model without crowding,
simulated exactly along each arm's exposure grid. Patients differ in responsiveness (a
log-normal factor ``r`` on chemotherapy kill, tumour turnover scaling with ``r^alpha``;
``alpha`` is fitted in the default structure, 1 in ``continuous_kill``), in HER2 dependence
(``continuous``: logit-normal, independent of responsiveness; ``fraction``: a fraction
with none), and in burden (log-normal); blockade also kills HER2-dependent cells at a
fitted rate (``_kill`` structures). Chemotherapy kills one ln-unit per reference dose
times a class scale and a per-drug potency (prior sd 0.5); HER2 blockers' potencies are
drawn around a class mean (prior sd 1); each trial shifts the log burden (prior sd
``--trial-sd``). ``P(pCR) = exp(-c N_inv)`` at surgery, 4 weeks after the last
preoperative dose, with ``c`` the breast's share of residual disease for breast-only
definitions (identified by the trials that publish both counts), times the chance of no
in-situ residual for ypT0 definitions (identified by GeparQuattro's two counts).
NOAH (locally advanced, T3/T4) starts from a 5-cm median tumour (65,000 mm3), the
others from a 3-cm one (14,000 mm3): an assumption, written down here.
MAP (binomial likelihoods + normal priors, sd 2 on the unconstrained scale unless said)
by Levenberg-Marquardt; posterior: Laplace draws reweighted by Pareto-smoothed
importance sampling to the exact posterior (saved with the fit for `fitcsc predict`),
ArviZ summary, and 95% intervals of each arm's predicted pCR.

The fit is the package's main job (`fitcsc run`, `fitcsc._jobs.main`); this script
runs it with the same options into the results folder and keeps its report as RESULT.md.

Run: ``python experiments/pcr_fit.py [--quick] [--out DIR]``. Writes ``fit.json`` (a
saved fit `fitcsc predict --fit DIR` can use), ``arms.csv``, ``posterior.csv``,
``pcr_fit.png``, ``summary.json`` and ``RESULT.md`` to ``--out`` (default
experiments/results/pcr_fit).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from fitcsc.trials import (
    DEFAULT_HYPER,
    DEFAULT_STRUCTURE,
    DEFAULT_TRIAL_SD,
    QUICK_TRIALS,  # noqa: F401  (used by adjuvant_fit.py through this module)
    STRUCTURES,
    ci95,  # noqa: F401  (idem)
    clinical_fit_job,
    load_pcr,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(trials=None):
    """``(arms, observations)`` of the published pCR counts in data/clinical."""
    return load_pcr(None, trials)


def main(args) -> dict:
    out = pathlib.Path(args.out)
    summary = clinical_fit_job(out, quick=args.quick, starts=args.starts, steps=args.steps,
                               nodes=args.nodes, her2_nodes=args.her2_nodes,
                               structure=args.structure, trial_sd=args.trial_sd, hyper=args.hyper,
                               her2_drug_sd=args.her2_drug_sd, draws=args.draws,
                               seed=args.seed, links=args.links)
    (out / "report.md").replace(out / "RESULT.md")
    return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="NeoSphere arms only, 1 start, 25 optimiser steps, 200 draws")
    p.add_argument("--starts", type=int, default=4, help="optimiser starts")
    p.add_argument("--steps", type=int, default=200, help="max Levenberg-Marquardt steps")
    p.add_argument("--nodes", type=int, default=13, help="responsiveness grid nodes")
    p.add_argument("--her2-nodes", type=int, default=7,
                   help="HER2-dependence nodes (continuous structures)")
    p.add_argument("--structure", default=DEFAULT_STRUCTURE, choices=sorted(STRUCTURES),
                   help=f"model structure (default {DEFAULT_STRUCTURE}, chosen out of sample "
                   "by experiments/clinical_validation.py)")
    p.add_argument("--trial-sd", type=float, default=DEFAULT_TRIAL_SD,
                   help="between-trial sd of log burden (prior of the trial effects; with "
                   "--hyper auto: the starting value)")
    p.add_argument("--hyper", default=DEFAULT_HYPER, choices=("auto", "fixed"),
                   help="the prior sds: fixed at the values given (the default) or auto "
                   "(largest Laplace marginal likelihood, fitcsc.trials.fit_prior_sds)")
    p.add_argument("--her2-drug-sd", type=float, default=1.0,
                   help="sd of a HER2 blocker's log potency around the class mean")
    p.add_argument("--draws", type=int, default=2000, help="posterior draws")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-links", dest="links", action="store_false",
                   help="leave the pCR-vs-no-pCR hazard ratios out of the fit")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "pcr_fit"))
    return p.parse_args(argv)


if __name__ == "__main__":
    summary = main(parse_args(sys.argv[1:]))
    print(json.dumps({k: summary[k] for k in ("n_arms", "n_within_binomial_ci95", "wall_s")},
                     indent=1))
