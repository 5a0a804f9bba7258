"""The trial model's posterior by Laplace, PSIS, ChEES and NUTS: how far apart, at what cost.

On the quick clinical fit (`fitcsc run --quick`: NeoSphere's 4 arms, 9 + 5 quadrature
nodes, 1 start, 25 LM steps), draws of the posterior by every method of
`fitcsc.trials.posterior_draws`; per method the wall time, its diagnostics and flag, the
posterior mean and sd of every parameter (z scale), each arm's pCR rate (mean and 95%
interval) and the 95% posterior predictive interval of a new trial of the arm's size
(parameter uncertainty plus binomial sampling: ``ppi_*``, the interval the clinical
validation scores), so the approximations (the delta method ``linear``, Laplace, PSIS) can
be read against the samplers.

Run: ``python benchmarks/trial_posterior.py [--methods linear laplace psis chees nuts]
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
    linearise_at,
    load_pcr,
    posterior_draws,
    posterior_flag,
)


def geometry(objective, fit, names, steps=(-2.0, -1.0, 1.0, 2.0)) -> list[dict]:
    """The log posterior along each eigendirection of the Laplace (Gauss-Newton)
    covariance, at ``steps`` of that direction's sd from the MAP, less its value at the MAP.
    A Gaussian gives ``-t^2 / 2`` (-0.5 at one sd, -2 at two); a direction where the
    arms' rates are flat to first order at the MAP (the Gauss-Newton sd is the prior's)
    but curve away further out drops by far more: the walls that Laplace draws land on and
    that a sampler's step size must resolve."""
    lp = jax.jit(jax.vmap(lambda z: -0.5 * jnp.sum(objective(z) ** 2)))
    z0 = np.asarray(fit.z, float)
    w, v = np.linalg.eigh(0.5 * (np.asarray(fit.cov) + np.asarray(fit.cov).T))
    sd = np.sqrt(np.clip(w, 0.0, None))
    pts = z0[None, None] + np.asarray(steps)[None, :, None] * (v * sd).T[:, None, :]
    vals = np.asarray(lp(jnp.asarray(pts.reshape(-1, z0.size)))).reshape(len(w), len(steps))
    base = float(lp(jnp.asarray(z0[None]))[0])
    out = []
    for i in np.argsort(-sd):
        top = np.argsort(-np.abs(v[:, i]))[:3]
        out.append({"sd": float(sd[i]), "steps_sd": list(steps),
                    "delta_log_density": (vals[i] - base).round(3).tolist(),
                    "main_parameters": {names[k]: round(float(v[k, i]), 3) for k in top}})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["linear", "laplace", "psis", "chees"])
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
           "geometry": geometry(objective, fit, list(tm.names)),
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
        rates = 100 * draw_values(rates_fn, z, batch=100, linearise_at=linearise_at(m, fit.z))
        # a new trial of each arm's size: parameter uncertainty plus binomial sampling
        # (draws whose rates are not finite are left out, and counted)
        n_arm = np.asarray([o.n for o in obs])
        ok = np.all(np.isfinite(rates), axis=1)
        counts = np.random.default_rng(args.seed).binomial(
            n_arm, np.clip(rates[ok] / 100.0, 0.0, 1.0))
        ppi = 100 * np.quantile(counts / n_arm, [0.025, 0.975], axis=0)
        rec = post.record()
        out["methods"][m] = {
            "settings": settings, "wall_s": round(wall, 1),
            "diagnostics": {k: v for k, v in rec.items() if k not in ("method", "sampler")},
            "flag": posterior_flag(post),
            "z_mean": z.mean(axis=0).tolist(), "z_sd": z.std(axis=0).tolist(),
            "pcr_mean_pct": rates.mean(axis=0).tolist(),
            "pcr_lo_pct": np.quantile(rates, 0.025, axis=0).tolist(),
            "pcr_hi_pct": np.quantile(rates, 0.975, axis=0).tolist(),
            "ppi_lo_pct": ppi[0].tolist(), "ppi_hi_pct": ppi[1].tolist(),
            "ppi_width_mean": float(np.mean(ppi[1] - ppi[0])),
            "n_draws_rates_not_finite": int(np.sum(~ok))}
        print(f"{m}: {wall:.0f} s, flag {posterior_flag(post)}", file=sys.stderr, flush=True)
        out |= {"device": device_info(), "precision": precision(), "versions": versions(),
                "load_avg": load_avg(), "timestamp": timestamp()}
        write_atomic(args.out, json.dumps(out, indent=1) + "\n")  # after every method
    return out


if __name__ == "__main__":
    main()
