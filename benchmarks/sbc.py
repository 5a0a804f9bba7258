"""Simulation-based calibration of the whole population pipeline (Talts et al. 2018).

For each of ``--replications`` data sets: draw every parameter from the prior of the
small hierarchical design (`_hier.py`: mice in a control and a HER2-class arm, the CSC
model, mouse effects on v_S and V0, M3 censoring), simulate the volumes, and run the
pipeline of `fitcsc sample` on them: `fit_map` per curve, the population start
(`PopulationModel.init_values`), the Adam refinement, ChEES-HMC. The rank of the true
value among ``L`` thinned posterior draws is uniform on 0..L for every parameter if the
pipeline is calibrated. All replications run in one vmapped program (data sets x chains
x curves: one paced ODE solve per gradient).

Writes ``benchmarks/results/sbc.json``: per parameter the chi-square uniformity p-value
of the ranks (``n_bins`` bins) and the 90% interval coverage; ``min_rank_uniformity_p``
(the smallest p over parameters) and ``coverage90`` (pooled), with timing, device,
precision and versions.

Run: ``python benchmarks/sbc.py [--replications 128] [--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import RESULTS, device_info, load_avg, log, precision, versions, write_json_atomic
from _hier import design, with_volumes
from scipy import stats

from fitcsc._sample import run_chains
from fitcsc._sample_job import map_curve_z, refine

MIN_REPLICATIONS = 100  # the "done": at least this many data sets


def tiled_batch(batch, volumes, censored):
    """``batch`` repeated once per data set, with the simulated volumes."""
    r = volumes.shape[0]
    big = batch.subset(np.tile(np.arange(batch.n_subjects), r))
    return dataclasses.replace(big, volume_mm3=jnp.asarray(volumes.reshape(-1, batch.n_obs)),
                               censored=jnp.asarray(censored.reshape(-1, batch.n_obs)),
                               subject=tuple(f"r{i}:{s}" for i in range(r)
                                             for s in batch.subject))


def main(args) -> dict:
    t_start = time.perf_counter()
    pop, batch = design(args.mice, args.obs)
    key = jax.random.key(args.seed)
    k_prior, k_sim, k_run = jax.random.split(key, 3)
    R = args.replications
    truth = pop.sample_prior(k_prior, R)
    vols = jax.jit(jax.vmap(pop.simulate_volumes))(jax.random.split(k_sim, R), truth)
    sim = jax.vmap(lambda v: with_volumes(pop, v).curves)(vols)
    vols, cens = np.asarray(sim.volume_mm3), np.asarray(sim.censored)
    ok_sim = np.all(np.isfinite(vols), axis=(1, 2))
    log(f"{R} data sets simulated ({(~ok_sim).sum()} failed solves); "
        f"{cens.sum()} censored observations")

    t = time.perf_counter()
    zc, sigma, info = map_curve_z(pop, tiled_batch(batch, np.where(np.isfinite(vols), vols,
                                                                    100.0), cens))
    n = batch.n_subjects
    z0 = np.stack([pop.space.to_z(with_volumes(pop, vols[r]).init_values(
        zc[r * n:(r + 1) * n], float(np.nanmedian(sigma[r * n:(r + 1) * n]))))
        for r in range(R)])
    t_map = time.perf_counter() - t
    log(f"MAP warm starts: {t_map:.0f} s, fit_map status {info['map_status_counts']}")

    def one(v, z, key):
        p = with_volumes(pop, v)
        z = refine(p.log_density, z, steps=args.refine_steps)
        k1, k2 = jax.random.split(key)
        starts = z[None] + 0.1 * jax.random.normal(k1, (args.chains, z.shape[0]))
        draws, st = run_chains(p.log_density, starts, k2, method="chees",
                               num_warmup=args.warmup, num_samples=args.samples)
        return draws, st["diverging"]

    f = jax.jit(jax.vmap(one))
    keys = jax.random.split(k_run, R)
    t = time.perf_counter()
    compiled = f.lower(jnp.asarray(vols), jnp.asarray(z0), keys).compile()
    t_compile = time.perf_counter() - t
    log(f"compiled in {t_compile:.0f} s")
    t = time.perf_counter()
    draws, div = jax.block_until_ready(compiled(jnp.asarray(vols), jnp.asarray(z0), keys))
    t_run = time.perf_counter() - t
    log(f"sampled in {t_run:.0f} s")

    draws = np.asarray(draws)  # (R, samples, chains, d)
    flat = np.swapaxes(draws, 1, 2).reshape(R, -1, draws.shape[-1])  # chain-major
    thin = max(1, flat.shape[1] // args.rank_draws)
    thinned = flat[:, ::thin][:, :args.rank_draws]
    L = thinned.shape[1]
    z_true = np.stack([np.asarray(pop.space.to_z({k: v[r] for k, v in truth.items()}))
                       for r in range(R)])
    good = ok_sim & np.all(np.isfinite(flat), axis=(1, 2))
    labels = pop.space.labels()
    ranks = (thinned < z_true[:, None, :]).sum(axis=1)  # (R, d) in 0..L
    lo, hi = np.quantile(flat, [0.05, 0.95], axis=1)  # (R, d)
    inside = (z_true >= lo) & (z_true <= hi)
    per = {}
    edges = np.linspace(0, L + 1, args.bins + 1)
    for j, name in enumerate(labels):
        counts = np.histogram(ranks[good, j], bins=edges)[0]
        per[name] = {"p_uniform": float(stats.chisquare(counts).pvalue),
                     "coverage90": float(inside[good, j].mean()),
                     "rank_counts": counts.tolist()}
    result = {
        "benchmark": "sbc", "design": {
            "mice": args.mice, "observations_per_mouse": args.obs,
            "parameters": list(labels), "n_parameters": len(labels),
            "model": "CSC S/D, logistic crowding; mouse effects on v_S and V0; HER2 bulk "
                     "effect in the treated arm; M3 below 1 mm3 (benchmarks/_hier.py)"},
        "replications": R, "replications_used": int(good.sum()),
        "pipeline": {"map": info["map"], "refine_steps": args.refine_steps,
                     "sampler": "chees", "chains": args.chains, "warmup": args.warmup,
                     "samples": args.samples, "rank_draws": L, "thin": thin},
        "min_rank_uniformity_p": float(min(v["p_uniform"] for v in per.values())),
        "coverage90": float(inside[good].mean()),
        "targets": {"min_rank_uniformity_p": ">= 0.01", "coverage90": "[0.84, 0.96]"},
        "n_divergent": int(np.asarray(div).sum()),
        "censored_fraction": float(cens.sum() / np.asarray(batch.mask).sum() / R),
        "per_parameter": per,
        "timing_s": {"map": round(t_map, 1), "compile": round(t_compile, 1),
                     "sampling": round(t_run, 1),
                     "total": round(time.perf_counter() - t_start, 1)},
        "load_avg": load_avg(), "device": device_info(), "precision": precision(),
        "versions": versions(("jax", "jaxlib", "diffrax", "numpyro", "blackjax", "scipy")),
        "command": " ".join(sys.argv),
    }
    result["partial"] = result["replications_used"] < MIN_REPLICATIONS
    result["passed"] = bool(not result["partial"] and result["min_rank_uniformity_p"] >= 0.01
                            and 0.84 <= result["coverage90"] <= 0.96)
    if not args.quick:
        write_json_atomic(args.out, result)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replications", type=int, default=128)
    p.add_argument("--mice", type=int, default=6)
    p.add_argument("--obs", type=int, default=6)
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument("--rank-draws", type=int, default=100, help="thinned draws L per data set")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "sbc.json"), help="JSON to write")
    p.add_argument("--quick", action="store_true",
                   help="4 data sets, tiny sampler, no JSON written (a smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.replications, args.warmup, args.samples, args.chains = 4, 20, 20, 4
        args.refine_steps, args.rank_draws, args.bins = 5, 20, 4
    return args


if __name__ == "__main__":
    out = main(parse_args())
    print({k: out[k] for k in ("min_rank_uniformity_p", "coverage90", "replications_used",
                               "n_divergent", "passed", "timing_s")})
    sys.exit(0 if math.isfinite(out["coverage90"]) else 1)
