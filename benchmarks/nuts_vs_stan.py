"""fitcsc's sampler against Stan (pystan 3) on the same hierarchical ODE model and data.

The model is `_hier.py`'s design (8 mice, 8 volumes each over 21 days; the CSC model's
S/D ODE with logistic crowding; non-centred log-normal mouse effects on v_S and V0; a
HER2 bulk effect in the treated arm, beside the CSC self-renewal effect fixed at the
reference ``her2_efficacy_csc``; log-normal volumes with M3 censoring), written once
as a `fitcsc.PopulationModel` (NumPyro) and once in Stan (``STAN_PROGRAM``, the ODE by
``ode_rk45_tol`` at the same rtol/atol, in cells). Same simulated data, priors, starts
(the MAP warm start of `fitcsc sample`, jittered) and number of posterior draws.

Measured in one run (Stan first, so that its worker processes fork before JAX starts its
threads):

- Stan: NUTS (diagonal mass), ``--stan-chains`` chains (httpstan runs them in parallel
  worker processes, at most one per CPU core). Its sampling wall time is the sum of
  Stan's own per-chain sampling timers over the number of chains that run at once
  (``min(chains, workers)``): the wall time of the sampling phases, without pystan's
  HTTP and draw-parsing overhead (the measured wall time of the whole call, split by
  the timers, is kept beside it).
- fitcsc, the default: ChEES-HMC (BlackJAX) with ``--chains`` vectorized chains, as many
  draws in total as Stan; the paced ODE solver with forward-mode sensitivities inside
  the gradient. Also NumPyro NUTS with Stan's chains and draws (the plain path), and the
  lockstep cost of vectorized NUTS (mean over iterations of the largest tree among the
  chains over the mean tree).
- The log-density gradient itself, vmapped over the chains, three ways: paced forward
  mode (used), vmapped `jax.jacfwd` of `diffrax.diffeqsolve` (forward mode), and reverse
  mode through diffrax (`RecursiveCheckpointAdjoint`).

``ess_per_s``: the smallest bulk ESS over the 22 sampled parameters (beta, omega, eta,
sigma) divided by the sampling wall time (compile excluded, reported apart);
``posteriors_agree``: every posterior mean within 2 combined MCSE of Stan's.

Run: ``python benchmarks/nuts_vs_stan.py`` (needs ``pip install -e '.[bench]'``).
Writes ``benchmarks/results/nuts_vs_stan.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import RESULTS, device_info, load_avg, log, precision, versions, write_json_atomic
from _hier import (
    ATOL,
    OMEGA_SCALE,
    PRIOR_LOC,
    PRIOR_SCALE,
    REFERENCE,
    RTOL,
    SIGMA_SCALE,
    design,
    with_volumes,
)
from scipy import stats

import fitcsc
import fitcsc.summary as fs
from fitcsc import ARM_EC50_MG_PER_L
from fitcsc.population import (
    PopulationModel,
    forward_predict,
    sample,
    vmapped_jacobians,
    warm_start,
)

STAN_PROGRAM = """
functions {
  vector sd_rhs(real t, vector y, real v_s, real p, real v_d, real d_d, real k) {
    vector[2] dy;
    real g = 1 - (y[1] + y[2]) / k;
    dy[1] = v_s * (2 * p - 1) * y[1] * g;
    dy[2] = 2 * v_s * (1 - p) * y[1] * g + (v_d * g - d_d) * y[2];
    return dy;
  }
}
data {
  int<lower=1> n_mice;
  int<lower=2> n_obs;
  array[n_obs] real day;
  array[n_mice] int<lower=0, upper=1> treated;
  matrix[n_mice, n_obs] log_volume;
  array[n_mice, n_obs] int<lower=0, upper=1> censored;
  real p; real eps_s; real v_d; real d_d; real k_cells; real f_csc; real cells_per_mm3;
  real blockade;
  vector[3] prior_loc; vector[3] prior_scale; real omega_scale; real sigma_scale;
  real rtol; real atol; int max_steps;
}
parameters {
  vector[3] beta;
  vector<lower=0>[2] omega;
  matrix[n_mice, 2] eta;
  real<lower=0> sigma;
}
model {
  real eps = inv_logit(beta[2]);
  beta ~ normal(prior_loc, prior_scale);
  omega ~ normal(0, omega_scale);
  to_vector(eta) ~ std_normal();
  sigma ~ normal(0, sigma_scale);
  for (i in 1:n_mice) {
    real v_s = exp(beta[1] + omega[1] * eta[i, 1]);
    real v0 = exp(beta[3] + omega[2] * eta[i, 2]);
    real p_eff = p * (1 - (treated[i] ? eps_s * blockade : 0));
    real v_d_eff = v_d * (1 - (treated[i] ? eps * blockade : 0));
    vector[2] y0 = [f_csc * v0 * cells_per_mm3, (1 - f_csc) * v0 * cells_per_mm3]';
    array[n_obs - 1] vector[2] ys = ode_rk45_tol(sd_rhs, y0, day[1], day[2:n_obs], rtol,
                                                 atol, max_steps, v_s, p_eff, v_d_eff, d_d,
                                                 k_cells);
    for (j in 1:n_obs) {
      real lp = j == 1 ? log(v0) : log((ys[j - 1][1] + ys[j - 1][2]) / cells_per_mm3);
      if (censored[i, j])
        target += std_normal_lcdf((log_volume[i, j] - lp) / sigma);
      else
        target += normal_lpdf(log_volume[i, j] | lp, sigma) - log_volume[i, j];
    }
  }
}
"""
ORDER = ("csc_division_rate", "her2_efficacy_bulk", "initial_volume_mm3")
# Stan's timers, once per chain in its "logger" messages (repeated under the "sample" and
# "diagnostic" topics): "Elapsed Time: 0.05 seconds (Warm-up)", then, on the next line
# without the prefix, "0.04 seconds (Sampling)"
_ELAPSED = re.compile(rb'"topic":"logger".*?([0-9.eE+-]+) seconds \((Warm-up|Sampling)\)')


def data_for_stan(pop: PopulationModel, treated) -> dict:
    c = pop.curves
    day = np.asarray(c.day[0])
    assert np.all(np.asarray(c.mask)) and np.allclose(np.asarray(c.day), day)
    return dict(
        n_mice=pop.n_curves, n_obs=int(day.size), day=day.tolist(),
        treated=[int(t) for t in treated],
        log_volume=np.log(np.asarray(c.volume_mm3)).tolist(),
        censored=np.asarray(c.censored).astype(int).tolist(),
        p=REFERENCE["self_renewal"], eps_s=float(pop.predictor.spec.reference.her2_efficacy_csc),
        v_d=REFERENCE["bulk_division_rate"],
        d_d=REFERENCE["bulk_death_rate"], k_cells=REFERENCE["carrying_capacity_cells"],
        f_csc=REFERENCE["initial_csc_fraction"], cells_per_mm3=fitcsc.CELLS_PER_MM3,
        blockade=1.0 / (1.0 + ARM_EC50_MG_PER_L),  # the arm pseudo-drug's I at C = 1 mg/L
        prior_loc=[PRIOR_LOC[k] for k in ORDER], prior_scale=[PRIOR_SCALE[k] for k in ORDER],
        omega_scale=OMEGA_SCALE, sigma_scale=SIGMA_SCALE, rtol=RTOL, atol=ATOL,
        max_steps=100_000)


def _patient_stanc():
    """httpstan gives the stanc compiler 1 s (``subprocess.run(..., timeout=1)``) and
    pystan's HTTP client 300 s per request (the C++ build), which a loaded shared machine
    exceeds: no limits on either (this process only)."""
    import functools
    import subprocess
    import types

    import aiohttp
    import httpstan.compile

    if not isinstance(aiohttp.ClientSession, functools.partial):  # pystan's only client
        aiohttp.ClientSession = functools.partial(aiohttp.ClientSession,
                                                  timeout=aiohttp.ClientTimeout(total=None))

    def run(*a, **k):
        k["timeout"] = 300
        return subprocess.run(*a, **k)

    names = {n: getattr(subprocess, n) for n in dir(subprocess) if not n.startswith("_")}
    httpstan.compile.subprocess = types.SimpleNamespace(**{**names, "run": run})


def fork_stan_workers():
    """Start httpstan's worker processes (a forking pool: every worker forks at the first
    task) before JAX starts its threads, so no worker is forked from a threaded process."""
    import os

    import httpstan.services_stub

    httpstan.services_stub.executor.submit(os.getpid).result()


def run_stan(data, inits, *, chains, warmup, samples, seed):
    """``(draws (chains, samples, 22), timing)`` with the per-chain Stan timers."""
    import stan
    import stan.fit

    _patient_stanc()
    captured = []
    original = stan.fit.Fit.__init__

    def keep(self, stan_outputs, *a, **k):
        captured.extend(stan_outputs)
        original(self, stan_outputs, *a, **k)

    t = time.perf_counter()
    posterior = stan.build(STAN_PROGRAM, data=data, random_seed=seed)
    t_build = time.perf_counter() - t
    stan.fit.Fit.__init__ = keep
    try:
        t = time.perf_counter()
        fit = posterior.sample(num_chains=chains, num_warmup=warmup, num_samples=samples,
                               init=inits)
        wall = time.perf_counter() - t
    finally:
        stan.fit.Fit.__init__ = original
    timers = [m.groups() for out in captured for line in out.splitlines()
              for m in _ELAPSED.finditer(line)]
    warm = sum(float(v) for v, phase in timers if phase == b"Warm-up")
    samp = sum(float(v) for v, phase in timers if phase == b"Sampling")
    if len(timers) != 2 * chains:
        raise RuntimeError(f"Stan's timers: expected {chains} warm-up and {chains} sampling "
                           f"timers in its output, found {len(timers)}")
    # pystan: fit[name] is (dims..., draws) with Stan's indexing; draws are draw-major
    # (chain fastest). eta (n_mice, 2) flattens row-major, as fitcsc's eta_animal.
    n = samples * chains
    draws = np.concatenate([np.asarray(fit[k]).reshape(-1, n) for k in
                            ("beta", "omega", "eta", "sigma")]).T
    draws = draws.reshape(samples, chains, -1).swapaxes(0, 1)
    import httpstan.services_stub

    parallel = min(chains, httpstan.services_stub.executor._max_workers)
    timing = {"compile_s": t_build, "wall_s": wall, "chain_warmup_s_sum": warm,
              "chain_sampling_s_sum": samp,
              "chains_at_once": parallel, "sampling_s": samp / parallel,
              "warmup_s": warm / parallel, "sampling_s_wall_split": wall * samp / (warm + samp),
              "warmup_s_wall_split": wall * warm / (warm + samp)}
    return draws, timing


def diagnostics(z, labels):
    idata = fs.to_inference_data(z, labels, method="nuts")
    rows = fs.summarize(idata)
    return rows, min(r["ess_bulk"] for r in rows), max(r["r_hat"] for r in rows)


def natural_draws(pop, z):
    """Flat z draws -> (beta, omega, eta, sigma) in Stan's order and scale."""
    return np.asarray(jax.vmap(jax.vmap(pop.space.natural))(jnp.asarray(z)))


def gradient_modes(pop, z, n_chains, repeats):
    """Seconds per vmapped value-and-gradient of the log-likelihood over ``n_chains``
    chains: paced forward mode (fitcsc's), vmapped `jax.jacfwd` of `diffeqsolve` (forward
    mode), and reverse mode through diffrax (`RecursiveCheckpointAdjoint`)."""
    pred, c = pop.predictor, pop.curves
    Z = jnp.asarray(z[None] + 0.05 * np.random.default_rng(0).normal(size=(n_chains, z.size)))

    def reverse(zc, curves):
        def one(z_, s):
            sol = fitcsc.simulate(pred.model, pred.params(z_, s), s.schedule, s.day,
                                  t0=s.t0_day, rtol=pred.rtol, atol=pred.atol,
                                  max_steps=pred.max_steps, adjoint="reverse", throw=False)
            return jnp.log(sol.volume_mm3), sol.status

        return jax.vmap(one)(zc, curves)

    predicts = {
        "paced_forward": lambda zc, curves: forward_predict(pred, zc, curves),
        "vmapped_jacfwd_forward": lambda zc, curves: forward_predict(
            pred, zc, curves, jacobians=lambda a, b: vmapped_jacobians(pred, a, b)),
        "reverse_recursive_checkpoint": reverse,
    }
    out = {}
    for name, predict in predicts.items():
        def loglik(z_, predict=predict):
            values = pop.space.from_z(z_)
            lp, _ = predict(pop.curve_z(values), c)
            return fitcsc.log_likelihood_from_log(lp, jnp.log(c.volume_mm3), c.mask, c.censored,
                                           values["sigma"])[1]

        g = jax.jit(jax.vmap(jax.value_and_grad(loglik)))
        t = time.perf_counter()
        first = jax.block_until_ready(g(Z))
        compile_s = time.perf_counter() - t
        times = []
        for i in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(g(Z + 1e-3 * i))
            times.append(time.perf_counter() - t)
        out[name] = {"median_s": float(np.median(times)), "first_call_s": compile_s,
                     "value": float(first[0][0]), "grad": np.asarray(first[1][0]).tolist()}
    base = out["paced_forward"]
    for v in out.values():
        v["relative_to_paced"] = v["median_s"] / base["median_s"]
        v["max_grad_diff_vs_paced"] = float(np.max(np.abs(np.subtract(v["grad"],
                                                                      base["grad"]))))
    for v in out.values():
        del v["grad"]
    return out


def lockstep(n_steps) -> float:
    """Mean over iterations of the largest number of gradient evaluations among the
    vectorized chains, over the mean: what vmapped NUTS pays for lockstep."""
    n = np.asarray(n_steps, float)
    return float(n.max(axis=0).mean() / n.mean())


def main(args) -> dict:
    t_start = time.perf_counter()
    fork_stan_workers()
    pop, batch = design(args.mice, args.obs)
    truth = {k: v[0] for k, v in pop.sample_prior(jax.random.key(args.data_seed), 1).items()}
    pop = with_volumes(pop, pop.simulate_volumes(jax.random.key(args.data_seed + 1), truth))
    batch = dataclasses.replace(batch, volume_mm3=pop.curves.volume_mm3,
                                censored=pop.curves.censored)
    labels = pop.space.labels()
    values, start = warm_start(pop, batch)
    z0 = np.asarray(pop.space.to_z(values))
    total = args.stan_chains * args.samples
    rng = np.random.default_rng(args.seed)
    inits = []
    for _ in range(args.stan_chains):
        zj = pop.space.from_z(jnp.asarray(z0 + 0.1 * rng.normal(size=z0.size)))
        inits.append({"beta": np.asarray(zj["beta"]).tolist(),
                      "omega": np.asarray(zj["omega_animal"]).tolist(),
                      "eta": np.asarray(zj["eta_animal"]).tolist(),
                      "sigma": float(zj["sigma"])})
    treated = [a != "control" for a in pop.arm]
    load = {"before_stan": load_avg()}
    log(f"Stan: {args.stan_chains} chains x ({args.warmup} + {args.samples})")
    stan_draws, stan_t = run_stan(data_for_stan(pop, treated), inits, chains=args.stan_chains,
                                  warmup=args.warmup, samples=args.samples, seed=args.seed)
    load["after_stan"] = load_avg()
    s_rows, s_ess, s_rhat = diagnostics(stan_draws, labels)
    log(f"Stan: sampling {stan_t['sampling_s']:.1f} s, min bulk ESS {s_ess:.0f}, "
        f"R-hat max {s_rhat:.3f}")

    runs = {}
    for name, method, chains in (("chees", "chees", args.chains),
                                 ("nuts", "nuts", args.stan_chains)
                                 )[:2 if args.plain_nuts else 1]:
        n_samples = total // chains
        warmup = args.chees_warmup if method == "chees" else args.warmup
        thin = args.thinning if method == "chees" else 1
        log(f"fitcsc {name}: {chains} chains x ({warmup} + {n_samples} x {thin})")
        post = sample(pop.log_density, z0, method=method, num_chains=chains,
                      num_warmup=warmup, num_samples=n_samples, seed=args.seed,
                      thinning=thin)
        nat = natural_draws(pop, post.z)
        rows, ess, rhat = diagnostics(nat, labels)
        runs[name] = {"post": post, "rows": rows, "ess": ess, "rhat": rhat}
        log(f"fitcsc {name}: sampling {post.timing['sampling_s']:.1f} s, min bulk ESS "
            f"{ess:.0f}, R-hat max {rhat:.3f}")
        load[f"after_{name}"] = load_avg()

    def agree(rows):
        z = [abs(a["mean"] - b["mean"]) / np.hypot(a["mcse_mean"], b["mcse_mean"])
             for a, b in zip(rows, s_rows, strict=True)]
        # the test is every |z| <= 2; for d correct, independent comparisons
        # that holds with probability 0.954^d (0.36 for 22), so the family-wise 5% bound
        # (Bonferroni) is reported beside it, not instead of it
        bound = float(stats.norm.ppf(1 - 0.025 / len(z)))
        return {"all_within_2_mcse": bool(max(z) <= 2.0),
                "n_within_2_mcse": int(sum(x <= 2.0 for x in z)), "n_parameters": len(z),
                "max_abs_z": float(max(z)),
                "p_all_within_2_if_identical": float((2 * stats.norm.cdf(2.0) - 1) ** len(z)),
                "bonferroni_bound_5pct": bound, "all_within_bonferroni": bool(max(z) <= bound),
                "z_by_parameter": dict(zip(labels, map(float, z), strict=True))}

    def by_parameter(rows):
        return {lab: {k: float(r[k]) for k in ("mean", "sd", "mcse_mean", "ess_bulk",
                                                  "r_hat")}
                for lab, r in zip(labels, rows, strict=True)}

    stan_ess_s = s_ess / stan_t["sampling_s"]
    ch, nu = runs["chees"], runs.get("nuts")
    fit_ess_s = ch["ess"] / ch["post"].timing["sampling_s"]
    result = {
        "benchmark": "nuts_vs_stan",
        "model": {"mice": args.mice, "observations_per_mouse": args.obs,
                  "parameters": list(labels), "rtol": RTOL, "atol_cells": ATOL,
                  "stan_ode": "ode_rk45_tol", "fitcsc_ode": "Tsit5 (paced), forward mode",
                  "n_censored": int(np.asarray(pop.curves.censored).sum())},
        "draws_total": total,
        "ess_per_s_fitcsc": fit_ess_s, "ess_per_s_stan": stan_ess_s,
        "ratio_ess_per_s": fit_ess_s / stan_ess_s,
        "rhat_max_fitcsc": ch["rhat"], "rhat_max_stan": s_rhat,
        "posteriors_agree": agree(ch["rows"])["all_within_2_mcse"],
        "agreement": {f"{k}_vs_stan": agree(v["rows"]) for k, v in runs.items()},
        "fitcsc": {"sampler": "chees", "chains": args.chains, "warmup": args.chees_warmup,
                   "samples_per_chain": total // args.chains, "thinning": args.thinning,
                   "steps_per_chain": total // args.chains * args.thinning,
                   "min_ess_bulk": ch["ess"],
                   "timing": ch["post"].timing, "divergent": ch["post"].num_divergent,
                   "mean_leapfrog_steps": float(ch["post"].sample_stats["n_steps"].mean()),
                   "ratio_including_warmup": (ch["ess"] / (ch["post"].timing["sampling_s"]
                                                           + ch["post"].timing["warmup_s"]))
                   / (s_ess / (stan_t["sampling_s"] + stan_t["warmup_s"]))},
        "fitcsc_nuts_plain": None if nu is None else {
                              "chains": args.stan_chains, "warmup": args.warmup,
                              "samples_per_chain": args.samples, "min_ess_bulk": nu["ess"],
                              "rhat_max": nu["rhat"], "timing": nu["post"].timing,
                              "divergent": nu["post"].num_divergent,
                              "ess_per_s": nu["ess"] / nu["post"].timing["sampling_s"],
                              "ratio_ess_per_s": nu["ess"] / nu["post"].timing["sampling_s"]
                              / stan_ess_s,
                              "lockstep_factor": lockstep(nu["post"].sample_stats["n_steps"].T),
                              "mean_tree_gradients": float(
                                  nu["post"].sample_stats["n_steps"].mean())},
        "by_parameter": {"stan": by_parameter(s_rows),
                         **{f"fitcsc_{k}": by_parameter(v["rows"]) for k, v in runs.items()}},
        "stan": {"chains": args.stan_chains, "warmup": args.warmup, "samples": args.samples,
                 "min_ess_bulk": s_ess, "timing": stan_t,
                 "parallel_workers": "httpstan: one process per chain, at most one per core"},
        "warm_start": start,
        "load_avg": load, "device": device_info(), "precision": precision(),
        "versions": versions(("jax", "jaxlib", "diffrax", "numpyro", "blackjax", "pystan",
                              "httpstan", "arviz")),
        "wall_s": round(time.perf_counter() - t_start, 1), "command": " ".join(sys.argv),
    }
    write_json_atomic(RESULTS / "nuts_vs_stan.json", result)  # the comparison, first
    log("gradient modes")
    result["gradient_modes"] = gradient_modes(pop, z0, args.chains, args.repeats)
    load["after_gradient_modes"] = load_avg()
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_json_atomic(RESULTS / "nuts_vs_stan.json", result)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mice", type=int, default=8)
    p.add_argument("--obs", type=int, default=8)
    p.add_argument("--stan-chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000, help="Stan's and NUTS's warm-up")
    p.add_argument("--samples", type=int, default=1000, help="Stan's draws per chain")
    p.add_argument("--chains", type=int, default=16, help="fitcsc's (ChEES) chains")
    p.add_argument("--chees-warmup", type=int, default=500)
    p.add_argument("--thinning", type=int, default=4,
                   help="ChEES keeps every k-th draw: as many draws as Stan, k x the steps")
    p.add_argument("--plain-nuts", action=argparse.BooleanOptionalAction, default=True,
                   help="also run NumPyro NUTS with Stan's chains and draws")
    p.add_argument("--repeats", type=int, default=7, help="timings of each gradient mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=3)
    return p.parse_args(argv)


if __name__ == "__main__":
    r = main(parse_args())
    print({k: r[k] for k in ("ess_per_s_fitcsc", "ess_per_s_stan", "ratio_ess_per_s",
                             "rhat_max_fitcsc", "rhat_max_stan", "posteriors_agree")})
