"""Simulation-based calibration of the whole population pipeline (Talts et al. 2018).

For each of ``--replications`` data sets: draw every parameter from the prior of the
small hierarchical design (`_hier.py`: mice in a control and a HER2-class arm, the CSC
model, mouse effects on v_S and V0, M3 censoring), simulate the volumes, and run the
pipeline of `fitcsc sample` on them: `fit_map` per curve, the population start
(`PopulationModel.init_values`), the Adam refinement, ChEES-HMC. The rank of the true
value among ``L`` thinned posterior draws is uniform on 0..L for every parameter if the
pipeline is calibrated. The sampler keeps every ``--thinning``-th draw (`run_chains`'s
``thinning``), so the ranked draws are near-independent. Replications run in chunks of
``--batch``, each one vmapped program (data sets x chains x curves: one paced ODE solve
per gradient), compiled once; every replication has its own keys (``fold_in`` of its
index), so its data set and chains do not depend on the batching. The last chunk is
filled up with replications of the first: their draws, recomputed in another batch, say
whether results depend on the batch (``batch_dependence``).

Writes ``benchmarks/results/sbc.json``: per parameter the chi-square uniformity p-value
of the ranks (``n_bins`` bins) and the 90% interval coverage; ``min_rank_uniformity_p``
(the smallest p over parameters) and ``coverage90`` (pooled), with timing, device,
precision and versions, after every chunk (``partial`` until all are done).

Run: ``python benchmarks/sbc.py [--replications 100] [--batch 1] [--quick]``.
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
from _common import (
    RESULTS,
    command_line,
    device_info,
    load_avg,
    log,
    precision,
    timestamp,
    versions,
    write_json_atomic,
)
from _hier import design, with_volumes
from scipy import stats

from fitcsc import enable_compile_cache
from fitcsc.population import map_curve_z, refine, run_chains

MIN_REPLICATIONS = 100  # the "done": at least this many data sets


def tiled_batch(batch, volumes, censored):
    """``batch`` repeated once per data set, with the simulated volumes."""
    r = volumes.shape[0]
    big = batch.subset(np.tile(np.arange(batch.n_subjects), r))
    return dataclasses.replace(big, volume_mm3=jnp.asarray(volumes.reshape(-1, batch.n_obs)),
                               censored=jnp.asarray(censored.reshape(-1, batch.n_obs)),
                               subject=tuple(f"r{i}:{s}" for i in range(r)
                                             for s in batch.subject))


def chunks(R: int, B: int) -> list[np.ndarray]:
    """Replication indices per compiled call: chunks of ``B``; the last one is filled up
    with replications of the first chunk (in reverse order, so they sit at other
    positions among other companions): one compiled program, and a check that a
    replication's result does not depend on its batch."""
    out = [np.arange(i, min(i + B, R)) for i in range(0, R, B)]
    pad = B - out[-1].size
    if pad:
        out[-1] = np.concatenate([out[-1], np.arange(min(pad, R))[::-1]])
    return out


def batch_note(check: dict) -> str:
    """The verdict of a batch-size check, in words, from its measured numbers."""
    if check["bitwise_identical"]:
        return (f"results do not depend on the batch: batch {check['batch']} and batch "
                f"{check['other_batch']} gave bitwise identical draws")
    return (f"results depend on the batch size at the level of single draws: the same "
            f"replications (same data and keys) run as batches of "
            f"{check['batch']} and {check['other_batch']} start from MAP starts that "
            f"differ by {check['starts_max_abs_difference']:.1e} (fit_map on a different "
            f"number of curves) and the chains amplify that (and the vectorized program's "
            f"roundoff) to draws differing by up to {check['max_abs_draw_difference']:.2g} "
            f"(median {check['median_abs_draw_difference']:.2g}) in z; ranks identical: "
            f"{check['ranks_identical']}. Each batching is a valid SBC run of its own")


def analyse(args, pop, labels, z_true, draws, ok, cens_frac, n_div):
    """Ranks and coverage over the replications done so far."""
    R = draws.shape[0]
    flat = np.swapaxes(draws, 1, 2).reshape(R, -1, draws.shape[-1])  # chain-major
    stride = max(1, flat.shape[1] // args.rank_draws)
    ranked = flat[:, ::stride][:, :args.rank_draws]
    L = ranked.shape[1]
    good = ok & np.all(np.isfinite(flat), axis=(1, 2))
    ranks = (ranked < z_true[:, None, :]).sum(axis=1)  # (R, d) in 0..L
    lo, hi = np.quantile(flat, [0.05, 0.95], axis=1)  # (R, d)
    inside = (z_true >= lo) & (z_true <= hi)
    per = {}
    edges = np.linspace(0, L + 1, args.bins + 1)
    for j, name in enumerate(labels):
        counts = np.histogram(ranks[good, j], bins=edges)[0]
        per[name] = {"p_uniform": float(stats.chisquare(counts).pvalue),
                     "coverage90": float(inside[good, j].mean()),
                     "rank_counts": counts.tolist()}
    # near-independence of the kept draws: lag-1 autocorrelation within chains, pooled
    # over chains and replications (draws: (R, samples, chains, d))
    x = draws[good] - draws[good].mean(axis=1, keepdims=True)
    lag1 = (x[:, 1:] * x[:, :-1]).sum(axis=(0, 1, 2)) / (x ** 2).sum(axis=(0, 1, 2))
    return {"replications_used": int(good.sum()), "rank_draws": L, "rank_stride": stride,
            "kept_draws_lag1_autocorrelation": {"max": float(lag1.max()),
                                                "mean": float(lag1.mean()),
                                                "argmax": labels[int(lag1.argmax())]},
            "min_rank_uniformity_p": float(min(v["p_uniform"] for v in per.values())),
            "coverage90": float(inside[good].mean()), "n_divergent": int(n_div),
            "censored_fraction": cens_frac, "per_parameter": per}


def main(args) -> dict:
    t_start = time.perf_counter()
    if not args.quick:
        enable_compile_cache()  # a rerun with the same --batch compiles nothing
    load = {"start": load_avg()}
    pop, batch = design(args.mice, args.obs)
    labels = pop.space.labels()
    k_prior, k_sim, k_run = jax.random.split(jax.random.key(args.seed), 3)
    R, B = args.replications, min(args.batch, args.replications)
    n = batch.n_subjects

    def rep_keys(key, idx):  # one key per replication, whatever the batch
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(idx))

    def simulate(kp, ks):
        truth = {k: v[0] for k, v in pop.sample_prior(kp, 1).items()}
        return truth, pop.simulate_volumes(ks, truth)

    simulate_batch = jax.jit(jax.vmap(simulate))

    def one(v, z, key):
        p = with_volumes(pop, v)
        z = refine(p.log_density, z, steps=args.refine_steps)
        k1, k2 = jax.random.split(key)
        starts = z[None] + 0.1 * jax.random.normal(k1, (args.chains, z.shape[0]))
        draws, st = run_chains(p.log_density, starts, k2, method="chees",
                               num_warmup=args.warmup, num_samples=args.samples,
                               thinning=args.thinning)
        return draws, st["diverging"].sum()

    f = jax.jit(jax.vmap(one))
    compiled = None
    timing = {"map": 0.0, "compile": 0.0, "sampling": 0.0, "per_chunk": []}
    draws_by_rep, z_true, ok, n_div, n_cens, again, z0_by_rep = {}, {}, {}, {}, {}, {}, {}
    parts = chunks(R, B)
    info = {}
    result = {}
    for c, idx in enumerate(parts):
        truth, vols = simulate_batch(rep_keys(k_prior, idx), rep_keys(k_sim, idx))
        sim = jax.vmap(lambda v: with_volumes(pop, v).curves)(vols)
        vols, cens = np.asarray(sim.volume_mm3), np.asarray(sim.censored)
        ok_sim = np.all(np.isfinite(vols), axis=(1, 2))
        t = time.perf_counter()
        zc, sigma, info = map_curve_z(pop, tiled_batch(
            batch, np.where(np.isfinite(vols), vols, 100.0), cens))
        z0 = np.stack([pop.space.to_z(with_volumes(pop, vols[r]).init_values(
            zc[r * n:(r + 1) * n], float(np.nanmedian(sigma[r * n:(r + 1) * n]))))
            for r in range(len(idx))])
        t_map = time.perf_counter() - t
        args_in = (jnp.asarray(vols), jnp.asarray(z0), rep_keys(k_run, idx))
        if compiled is None:
            t = time.perf_counter()
            compiled = f.lower(*args_in).compile()
            timing["compile"] = time.perf_counter() - t
            log(f"compiled in {timing['compile']:.0f} s (batch {B})")
        t = time.perf_counter()
        d, div = jax.block_until_ready(compiled(*args_in))
        t_run = time.perf_counter() - t
        d, div = np.asarray(d), np.asarray(div)
        for j, r in enumerate(idx):
            r = int(r)
            if r in draws_by_rep:  # a filler: the same replication, in another batch
                again[r] = d[j]
                continue
            draws_by_rep[r], ok[r], n_div[r], n_cens[r] = d[j], ok_sim[j], div[j], cens[j].sum()
            z0_by_rep[r] = z0[j]
            z_true[r] = np.asarray(pop.space.to_z({k: v[j] for k, v in truth.items()}))
        timing["map"] += t_map
        timing["sampling"] += t_run
        timing["per_chunk"].append({"map": round(t_map, 1), "sampling": round(t_run, 1)})
        done = sorted(draws_by_rep)
        per_rep = (time.perf_counter() - t_start - timing["compile"]) / len(done)
        log(f"chunk {c + 1}/{len(parts)}: {len(done)} replications, MAP {t_map:.0f} s, "
            f"sampling {t_run:.0f} s (fit_map status {info['map_status_counts']}); "
            f"about {per_rep * (R - len(done)):.0f} s to go; load {load_avg()[0]:.1f}")
        res = analyse(args, pop, labels, np.stack([z_true[r] for r in done]),
                      np.stack([draws_by_rep[r] for r in done]),
                      np.array([ok[r] for r in done]), float(sum(n_cens[r] for r in done)
                      / np.asarray(batch.mask).sum() / len(done)),
                      sum(n_div[r] for r in done))
        load["end"] = load_avg()
        batch_check = None
        if again:
            diffs = {r: float(np.max(np.abs(again[r] - draws_by_rep[r]))) for r in again}
            batch_check = {
                "replications_rerun": sorted(again), "batch": B,
                "max_abs_draw_difference": max(diffs.values()),
                "bitwise_identical": all(v == 0.0 for v in diffs.values()),
                "note": "the last chunk is filled with replications of the first, at other "
                        "positions among other companions, under the same compiled program "
                        "and the same per-replication keys; a difference would mean results "
                        "depend on the batch of replications (e.g. floating-point roundoff "
                        "of the vectorized solve, amplified by the chains)"}
        result = {
            "benchmark": "sbc", "design": {
                "mice": args.mice, "observations_per_mouse": args.obs,
                "parameters": list(labels), "n_parameters": len(labels),
                "model": "CSC S/D, logistic crowding; mouse effects on v_S and V0; HER2 bulk "
                         "effect in the treated arm; M3 below 1 mm3 (benchmarks/_hier.py)"},
            "replications": R, "replications_done": len(done),
            "pipeline": {"map": info["map"], "refine_steps": args.refine_steps,
                         "sampler": "chees", "chains": args.chains, "warmup": args.warmup,
                         "samples_per_chain_kept": args.samples, "thinning": args.thinning,
                         "sampling_steps_per_chain": args.samples * args.thinning,
                         "batch": B, "chunks": len(parts),
                         "keys": "one per replication (fold_in of its index): the same "
                                 "data set and chains whatever --batch"},
            **res,
            "targets": {"min_rank_uniformity_p": ">= 0.01", "coverage90": "[0.84, 0.96]",
                        "replications": f">= {MIN_REPLICATIONS}"},
            "batch_dependence": batch_check,
            "timing_s": {"map": round(timing["map"], 1), "compile": round(timing["compile"], 1),
                         "sampling": round(timing["sampling"], 1),
                         "per_chunk": timing["per_chunk"],
                         "total": round(time.perf_counter() - t_start, 1)},
            "load_avg": load, "device": device_info(), "precision": precision(),
            "versions": versions(("jax", "jaxlib", "diffrax", "numpyro", "blackjax", "scipy")),
            "command": command_line(), "timestamp": timestamp(),
        }
        result["partial"] = (result["replications_used"] < MIN_REPLICATIONS
                             or len(done) < R)
        result["passed"] = bool(not result["partial"]
                                and result["min_rank_uniformity_p"] >= 0.01
                                and 0.84 <= result["coverage90"] <= 0.96)
        if not args.quick:  # after every chunk: an interrupted run keeps what it did
            write_json_atomic(args.out, result)

    if args.check_batch and args.check_batch != B:
        # the first replications again, as one batch of another size (another program)
        idx = np.arange(min(args.check_batch, R))
        truth, vols = simulate_batch(rep_keys(k_prior, idx), rep_keys(k_sim, idx))
        sim = jax.vmap(lambda v: with_volumes(pop, v).curves)(vols)
        vols, cens = np.asarray(sim.volume_mm3), np.asarray(sim.censored)
        zc, sigma, _ = map_curve_z(pop, tiled_batch(
            batch, np.where(np.isfinite(vols), vols, 100.0), cens))
        z0 = np.stack([pop.space.to_z(with_volumes(pop, vols[r]).init_values(
            zc[r * n:(r + 1) * n], float(np.nanmedian(sigma[r * n:(r + 1) * n]))))
            for r in range(len(idx))])
        t = time.perf_counter()
        d, _ = jax.block_until_ready(f(jnp.asarray(vols), jnp.asarray(z0),
                                       rep_keys(k_run, idx)))
        t_check = time.perf_counter() - t
        d = np.asarray(d)
        diff = np.abs(d - np.stack([draws_by_rep[int(r)] for r in idx]))
        other = analyse(args, pop, labels, np.stack([z_true[int(r)] for r in idx]), d,
                        np.ones(len(idx), bool), 0.0, 0)
        mine = analyse(args, pop, labels, np.stack([z_true[int(r)] for r in idx]),
                       np.stack([draws_by_rep[int(r)] for r in idx]),
                       np.ones(len(idx), bool), 0.0, 0)
        result["batch_size_dependence"] = {
            "replications": idx.tolist(), "batch": B, "other_batch": int(len(idx)),
            "max_abs_draw_difference": float(diff.max()),
            "median_abs_draw_difference": float(np.median(diff)),
            "bitwise_identical": bool(diff.max() == 0.0),
            "ranks_identical": bool(all(
                mine["per_parameter"][k]["rank_counts"] == other["per_parameter"][k][
                    "rank_counts"] for k in labels)),
            "starts_max_abs_difference": float(np.max(np.abs(
                z0 - np.stack([z0_by_rep[int(r)] for r in idx])))),
            "seconds_with_compile": round(t_check, 1),
            "what": "the same replications (same data, starts from the same MAP, same "
                    "keys) run as a batch of another size, i.e. another compiled program"}
        result["batch_size_dependence"]["note"] = batch_note(
            result["batch_size_dependence"])
        log(f"batch-size check: max |draw difference| {diff.max():.3g} "
            f"({t_check:.0f} s with its compile)")
        result["timing_s"]["total"] = round(time.perf_counter() - t_start, 1)
        if not args.quick:
            write_json_atomic(args.out, result)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replications", type=int, default=100)
    p.add_argument("--batch", type=int, default=1,
                   help="replications per compiled call (vmapped); chunks run in turn. "
                        "1 is fastest here: a vmapped batch runs every step until its "
                        "slowest replication is done (ODE steps, ChEES trajectory length)")
    p.add_argument("--mice", type=int, default=6)
    p.add_argument("--obs", type=int, default=6)
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--samples", type=int, default=13, help="kept draws per chain")
    p.add_argument("--thinning", type=int, default=8,
                   help="keep every k-th draw (samples x thinning steps per chain)")
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument("--rank-draws", type=int, default=99,
                   help="kept draws L ranked per data set (L + 1 a multiple of --bins)")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--check-batch", type=int, default=4,
                   help="rerun the first N replications as one batch of N (0: no check)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "sbc.json"), help="JSON to write")
    p.add_argument("--quick", action="store_true",
                   help="4 data sets, tiny sampler, no JSON written (a smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.replications, args.warmup, args.samples, args.chains = 4, 20, 10, 4
        args.refine_steps, args.rank_draws, args.bins, args.thinning = 5, 19, 4, 2
        args.batch = 3
    return args


if __name__ == "__main__":
    out = main(parse_args())
    print({k: out[k] for k in ("min_rank_uniformity_p", "coverage90", "replications_used",
                               "n_divergent", "passed", "timing_s")})
    sys.exit(0 if math.isfinite(out["coverage90"]) else 1)
