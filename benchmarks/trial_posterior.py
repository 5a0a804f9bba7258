"""The trial model's posterior by Laplace, PSIS, ChEES and NUTS: how far apart, at what cost.

On the quick clinical fit (`fitcsc run --quick`: NeoSphere's 4 arms, 9 + 5 quadrature
nodes, 1 start, 25 LM steps), draws of the posterior by every method of
`fitcsc.trials.posterior_draws`; per method the wall time, its diagnostics and flag, the
posterior mean and sd of every parameter (z scale) and each arm's pCR rate (mean and
95% interval), so the approximations (Laplace, PSIS) can be read against the samplers.

Run: ``python benchmarks/trial_posterior.py [--methods laplace psis chees nuts]
[--chains 8] [--warmup 300] [--draws 800] [--max-tree-depth 10] [--dense-mass]
[--target-accept 0.8]``; writes
``benchmarks/results/trial_posterior.json`` (``--out`` to change; ``--merge`` adds the
methods run to those already there, each method with its own settings).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import RESULTS, device_info, load_avg, precision, timestamp, versions

from fitcsc.files import write_atomic  # noqa: E402
from fitcsc.trials import (  # noqa: E402
    DEFAULT_STRUCTURE,
    QUICK_TRIALS,
    STRUCTURES,
    Objective,
    TrialData,
    TrialModel,
    draw_values,
    fit_trials,
    load_pcr,
    posterior_draws,
    posterior_flag,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["laplace", "psis", "chees"])
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--draws", type=int, default=800)
    p.add_argument("--max-tree-depth", type=int, default=10, help="NUTS")
    p.add_argument("--dense-mass", action="store_true", help="NUTS: adapt a dense mass matrix")
    p.add_argument("--target-accept", type=float, default=0.8, help="NUTS")
    p.add_argument("--steps", type=int, default=25,
                   help="LM steps of the MAP fit (its covariance whitens the samplers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "trial_posterior.json"))
    p.add_argument("--merge", action="store_true",
                   help="keep the methods already in --out (each with its own settings)")
    args = p.parse_args(argv)
    old = {}
    if args.merge and pathlib.Path(args.out).exists():
        old = json.loads(pathlib.Path(args.out).read_text())["methods"]

    arms, obs = load_pcr(None, QUICK_TRIALS)
    tm = TrialModel.build(arms, n_nodes=9, n_her2=5, **STRUCTURES[DEFAULT_STRUCTURE])
    objective = Objective(tm, TrialData(pcr=obs))
    t = time.perf_counter()
    fit = fit_trials(objective, n_starts=1, max_steps=args.steps, seed=args.seed)
    fit_s = time.perf_counter() - t
    rates_fn = jax.jit(lambda z: tm.pcr_rates(z)[0])
    point = np.asarray(rates_fn(jnp.asarray(fit.z)))
    out = {"question": __doc__.splitlines()[0], "names": list(tm.names),
           "fit": {"max_steps": args.steps, "n_steps": int(fit.n_steps),
                   "converged": bool(fit.converged), "loss": float(fit.loss)},
           "arms": [o.arm for o in obs],
           "published_pct": [100 * o.count / o.n for o in obs],
           "map_pct": (100 * point).tolist(), "fit_s": round(fit_s, 1),
           "methods": old}
    settings = {k: v for k, v in vars(args).items() if k not in ("methods", "out", "merge")}
    for m in args.methods:
        t = time.perf_counter()
        post = posterior_draws(objective, fit, args.draws, jax.random.PRNGKey(args.seed),
                               method=m, num_chains=args.chains, num_warmup=args.warmup,
                               max_tree_depth=args.max_tree_depth,
                               dense_mass=args.dense_mass and m == "nuts",
                               target_accept_prob=args.target_accept)
        wall = time.perf_counter() - t
        z = post.equal_weight(args.seed)
        rates = 100 * draw_values(rates_fn, z, batch=100)
        rec = post.record()
        out["methods"][m] = {
            "settings": settings, "wall_s": round(wall, 1),
            "diagnostics": {k: v for k, v in rec.items() if k not in ("method", "sampler")},
            "flag": posterior_flag(post),
            "z_mean": z.mean(axis=0).tolist(), "z_sd": z.std(axis=0).tolist(),
            "pcr_mean_pct": rates.mean(axis=0).tolist(),
            "pcr_lo_pct": np.quantile(rates, 0.025, axis=0).tolist(),
            "pcr_hi_pct": np.quantile(rates, 0.975, axis=0).tolist()}
        print(f"{m}: {wall:.0f} s, flag {posterior_flag(post)}", file=sys.stderr, flush=True)
        out |= {"device": device_info(), "precision": precision(), "versions": versions(),
                "load_avg": load_avg(), "timestamp": timestamp()}
        write_atomic(args.out, json.dumps(out, indent=1) + "\n")  # after every method
    return out


if __name__ == "__main__":
    main()
