"""Calibration of the trial model's predictive intervals, by simulation.

Known parameters (the MAP of the trial model fitted to the published NeoSphere counts)
generate pCR counts for the four NeoSphere arms; each replicate is fitted (MAP by
Levenberg-Marquardt) and the posterior predictive distribution of a *new* trial arm of
the same size is formed by each posterior method, then checked against a fresh count
drawn from the true rates (paired: the same counts, fit and fresh counts for every
method):

- ``psis``: PSIS-reweighted Laplace draws of ``z`` (`fitcsc.trials.posterior_draws`),
  pushed through the model;
- ``laplace``: the Laplace draws of ``z`` with equal weights, pushed through the model;
- ``linear`` (the package's default): the delta method: Laplace draws of ``z`` with
  every arm's logit rate linearised at the MAP (`fitcsc.trials.draw_values` with
  ``linearise_at``), so the logit rates are normal around the MAP's with the
  Gauss-Newton covariance carried by their Jacobian (the Laplace posterior of the model
  linearised at the MAP, for which that covariance is exact).

Coverage is counted two ways: a closed interval of the predictive draws' quantiles
(``coverage90``: at least nominal for a calibrated *discrete* predictive) and the
randomised PIT (``pit_coverage90``: exactly nominal when calibrated, the number the
99.9% binomial acceptance region ``acceptance99.9`` is for; tests/
test_trial_calibration.py runs the same check with small settings).

Writes ``benchmarks/results/trial_calibration.json`` (coverage per method, per-replicate
rows, compile counts, device, precision, versions) and ``trial_calibration.png``.

Run: ``python benchmarks/trial_calibration.py [--replicates 50] [--method psis ...]
[--quick]``.
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
from fitcsc import CompileStats
from fitcsc.trials import (
    STRUCTURES,
    Objective,
    PcrObservation,
    TrialData,
    TrialModel,
    draw_values,
    fit_trials,
    linearise_at,
    pcr_observations,
    posterior_draws,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import (  # noqa: E402
    device_info,
    load_avg,
    precision,
    timestamp,
    versions,
    write_json_atomic,  # noqa: E402
)

CLINICAL = ROOT / "data" / "clinical"
# the validated structure (experiments/clinical_validation.py); one trial: no trial effect,
# and NeoSphere's definition (ypT0/is) has no in-situ factor
STRUCTURE = {k: v for k, v in STRUCTURES["continuous_kill"].items()
             if k not in ("trial_effects", "dcis")}
MODEL = dict(n_nodes=11, n_her2=5, refine=8, n_burden=16)


def setup():
    """NeoSphere's arms and observations (primary counts only) and the model."""
    regimens = fitcsc.read_regimen_table(CLINICAL / "regimens.csv")
    arms, obs = pcr_observations(fitcsc.read_clinical(CLINICAL / "pcr_arms.csv"), regimens,
                                 trials=("NeoSphere",))
    obs = [PcrObservation(o.arm, o.trial, o.definition, o.n, o.count) for o in obs]
    return arms, obs, TrialModel.build(arms, **STRUCTURE, **MODEL)


def arm_rates(z, tm):
    """The arms' pCR rates at ``z`` (a fixed function of traced ``(z, tm)``: one compile
    for every replicate's draws)."""
    return tm.pcr_rates(z)[0]


LEVELS = (0.5, 0.9, 0.95)


def truth():
    """The known parameters: the MAP on NeoSphere's published counts.
    **Returns:** ``(tm, obs, z_true, p_true, n)``."""
    _, obs, tm = setup()
    truth_fit = fit_trials(Objective(tm, TrialData(pcr=obs)), n_starts=1, max_steps=100)
    z_true = jnp.asarray(truth_fit.z)
    p_true = np.asarray(tm.pcr_rates(z_true)[0])
    return tm, obs, z_true, p_true, np.asarray([o.n for o in obs])


METHODS = ("psis", "laplace", "linear")


def replicate(tm, obs, z_true, p_true, rng, key, draws: int, *, methods=("psis",),
              levels=LEVELS) -> dict:
    """One replicate: counts simulated from ``p_true``, fitted (LM from the truth), and
    for each of ``methods`` (`METHODS`) the posterior predictive distribution of a *new*
    trial of each arm's size (``draws`` draws), checked against one fresh count per arm
    from ``p_true`` (the same for every method).
    **Returns:** the replicate's row: counts, fresh counts, and per method ``k_hat``,
    ``ess``, ``pit`` and, per level, ``inside``, ``pit_inside`` and ``width``."""
    n = np.asarray([o.n for o in obs])
    counts = rng.binomial(n, p_true)
    fresh = rng.binomial(n, p_true)
    data = TrialData(pcr=[PcrObservation(o.arm, o.trial, o.definition, o.n, int(k))
                          for o, k in zip(obs, counts, strict=True)])
    objective = Objective(tm, data)
    fit = fit_trials(objective, n_starts=1, max_steps=100, start=z_true)
    row = {"converged": fit.converged, "counts": counts.tolist(), "fresh": fresh.tolist()}
    for method in methods:
        post = posterior_draws(objective, fit, draws, key, method=method)
        idx = rng.choice(len(post.weights), size=len(post.weights), p=post.weights)
        # "linear": the package's delta method, every rate linearised at the MAP on the
        # logit scale (`draw_values`' ``linearise_at``); the others: each draw evaluated
        rates = draw_values(arm_rates, post.draws[idx], batch=100, args=tm,
                            linearise_at=linearise_at(method, fit.z))
        k_hat, ess = post.k_hat, float(1.0 / np.sum(post.weights ** 2))
        pred = rng.binomial(n[None, :], np.clip(rates, 0, 1))  # a new trial of each arm
        u = randomized_pit(pred, fresh, rng)
        one = {"k_hat": k_hat if np.isfinite(k_hat) else None, "ess": ess, "pit": u.tolist()}
        for level in levels:
            q = round(100 * level)
            lo, hi = np.quantile(pred, [(1 - level) / 2, (1 + level) / 2], axis=0,
                                 method="inverted_cdf")
            one[f"inside{q}"] = ((lo <= fresh) & (fresh <= hi)).tolist()
            one[f"pit_inside{q}"] = (np.abs(u - 0.5) < level / 2).tolist()
            one[f"width{q}"] = ((hi - lo) / n).tolist()
        row[method] = one
    return row


def randomized_pit(pred, fresh, rng):
    """Randomised probability integral transform of each fresh count under its arm's
    predictive draws ``pred`` ``(draws, arms)``: ``F(x - 1) + V (F(x) - F(x - 1))``,
    ``V ~ U(0, 1)``, ``F`` the draws' empirical CDF. Uniform on (0, 1) when the
    predictive is the fresh count's distribution, counts being discrete or not, so a
    fresh count falls in the central ``level`` (``|u - 0.5| < level / 2``) with
    probability exactly ``level`` (a closed interval of quantiles of a discrete
    predictive holds more)."""
    below = np.mean(pred < fresh[None, :], axis=0)
    at_or_below = np.mean(pred <= fresh[None, :], axis=0)
    return below + rng.uniform(size=fresh.shape) * (at_or_below - below)


def run(replicates: int, draws: int, seed: int, log, *, methods=METHODS) -> dict:
    tm, obs, z_true, p_true, n = truth()
    rng = np.random.default_rng(seed)
    rows = []
    t0 = time.perf_counter()
    with CompileStats() as stats:
        for r in range(replicates):
            if r == 1:  # what the first replicate compiled; the others compile nothing
                first = {"n_compiles": stats.n_compiles, "compile_s": round(stats.compile_s, 2),
                         "wall_s": round(time.perf_counter() - t0, 2)}
            row = {"replicate": r} | replicate(tm, obs, z_true, p_true, rng,
                                               jax.random.PRNGKey(seed + r), draws,
                                               methods=methods)
            rows.append(row)
            log(f"replicate {r + 1}/{replicates}: " + ", ".join(
                f"{m} inside90 {sum(row[m]['pit_inside90'])}/{len(n)} (ESS "
                f"{row[m]['ess']:.0f})" for m in methods)
                + f" ({time.perf_counter() - t0:.1f} s)")
    wall = time.perf_counter() - t0
    later = {"n_compiles": stats.n_compiles - first["n_compiles"],
             "compile_s": round(max(0.0, stats.compile_s - first["compile_s"]), 2),
             "programs": stats.programs[first["n_compiles"]:]} if replicates > 1 else {}
    n_int = replicates * len(n)
    summary = {}
    for m in methods:
        def pooled(key, m=m):
            return [v for row in rows for v in row[m][key]]

        one = {f"{kind}coverage{q}": float(np.mean(pooled(f"{kind}inside{q}")))
               for kind in ("", "pit_") for q in (50, 90, 95)}
        inside = np.asarray([row[m]["pit_inside90"] for row in rows], float)
        per_rep = inside.sum(axis=1)
        c90 = float(inside.mean())
        one |= {
            "pit_per_arm_coverage90": inside.mean(axis=0).tolist(),
            # within-replicate clustering: variance of the per-replicate count inside
            # over the binomial one (1 when the arms' intervals are independent)
            "pit_variance_ratio90": float(per_rep.var(ddof=1) / (len(n) * c90 * (1 - c90)))
            if 0 < c90 < 1 else None,
            "pit_inside_acceptance90": bool(acceptance_region(0.9, n_int)[0] <= c90
                                            <= acceptance_region(0.9, n_int)[1]),
            "mean_width90_points": float(100 * np.mean(pooled("width90"))),
            "median_k_hat": (float(np.median(k_hats)) if (k_hats := [
                row[m]["k_hat"] for row in rows if row[m]["k_hat"] is not None]) else None),
            "median_ess": float(np.median([row[m]["ess"] for row in rows])),
        }
        summary[m] = one
    return {
        "question": "do the trial model's posterior predictive intervals cover fresh counts "
                    "from known parameters at their nominal rate?",
        "design": "NeoSphere's 4 arms (n 96-107), primary counts; truth = MAP on the "
                  "published counts; per replicate: simulate, fit (LM from the truth), "
                  "posterior predictive of a new arm by each method (paired), one fresh "
                  "count per arm",
        "structure": STRUCTURE | MODEL, "names": list(tm.names),
        "p_true": p_true.tolist(), "n": n.tolist(), "replicates": replicates,
        "draws": draws, "methods": summary,
        "n_intervals": n_int,
        "acceptance99.9": {f"coverage{q}": list(acceptance_region(q / 100, n_int))
                           for q in (50, 90, 95)},
        "n_not_converged": int(sum(not row["converged"] for row in rows)),
        "wall_s": round(wall, 1),
        "wall_s_per_later_replicate": (round((wall - first["wall_s"]) / (replicates - 1), 3)
                                       if replicates > 1 else None),
        "compiles": {"first_replicate": first if replicates > 1 else None,
                     "later_replicates": later},
        "rows": rows, "device": device_info(), "precision": precision(),
        "versions": versions(), "load_avg": load_avg(), "timestamp": timestamp(),
    }


def acceptance_region(p: float, n: int, level: float = 0.999) -> tuple[float, float]:
    """The central ``level`` acceptance region of a share of ``n`` independent
    intervals, each inside with probability ``p``: ``[lo, hi] / n`` with ``lo`` the
    largest count with ``P(X < lo) <= (1 - level) / 2`` and ``hi`` the smallest with
    ``P(X > hi) <= (1 - level) / 2``, ``X ~ Bin(n, p)`` (so the region holds at least
    ``level``)."""
    from scipy import stats

    tail = (1 - level) / 2
    lo = int(stats.binom.ppf(tail, n, p))  # smallest k with P(X <= k) >= tail
    hi = int(stats.binom.isf(tail, n, p))  # smallest k with P(X > k) <= tail
    return lo / n, hi / n


def figure(result, path):
    from fitcsc.files import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.8), constrained_layout=True)
    nominal = [50, 90, 95]
    for i, (m, one) in enumerate(result["methods"].items()):
        got = [100 * one[f"pit_coverage{q}"] for q in nominal]
        ax.plot(nominal, got, "o-", color=f"C{i}",
                label=f"{m} (90% width {one['mean_width90_points']:.0f} pts)")
    ax.plot([40, 100], [40, 100], color="0.5", ls="--", lw=0.8, label="nominal")
    lo, hi = result["acceptance99.9"]["coverage90"]
    ax.errorbar([90], [90], yerr=[[90 - 100 * lo], [100 * hi - 90]], color="k", capsize=4,
                lw=0, elinewidth=1.2, label="99.9% binomial region at 90%")
    ax.set(xlabel="nominal predictive interval (%)",
           ylabel="fresh counts inside (%, randomised PIT)",
           title=f"trial-model intervals: {result['replicates']} replicates x "
                 f"{len(result['n'])} arms", xlim=(40, 100), ylim=(40, 100))
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicates", type=int, default=50)
    p.add_argument("--draws", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", action="append", choices=METHODS, dest="methods",
                   help="a posterior method (repeatable; default: all of them)")
    p.add_argument("--quick", action="store_true", help="5 replicates, 200 draws")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.replicates, args.draws = 5, 200
    result = run(args.replicates, args.draws, args.seed,
                 lambda m: print(m, file=sys.stderr, flush=True),
                 methods=tuple(args.methods or METHODS))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "trial_calibration.json", result)
    figure(result, out / "trial_calibration.png")
    return result


if __name__ == "__main__":
    r = main()
    print(json.dumps({m: {k: v[k] for k in ("coverage90", "pit_coverage50", "pit_coverage90",
                                            "pit_coverage95", "mean_width90_points")}
                      for m, v in r["methods"].items()} | {"wall_s": r["wall_s"]}, indent=1))
