"""Calibration of the trial model's predictive intervals, by simulation.

Known parameters (the MAP of the trial model fitted to the published NeoSphere counts)
generate pCR counts for the four NeoSphere arms; each replicate is fitted (MAP by
Levenberg-Marquardt, posterior by PSIS-reweighted Laplace draws, as
`fitcsc.trials.posterior_draws`), and the 90% and 50% posterior predictive intervals
of a *new* trial arm of the same size are checked against a fresh count drawn from the
true rates. Calibrated intervals contain it 90% (50%) of the time.

Writes ``benchmarks/results/trial_calibration.json`` (coverage, per-replicate rows,
device, precision, versions) and ``trial_calibration.png``.

Run: ``python benchmarks/trial_calibration.py [--replicates 50] [--quick]``.
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
from fitcsc._compile import CompileStats
from fitcsc.trials import (
    STRUCTURES,
    Objective,
    PcrObservation,
    TrialData,
    TrialModel,
    draw_values,
    fit_trials,
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


def replicate(tm, obs, z_true, p_true, rng, key, draws: int, *, method: str = "psis",
              levels=LEVELS) -> dict:
    """One replicate: counts simulated from ``p_true``, fitted (LM from the truth),
    posterior draws (`posterior_draws` by ``method``, resampled by their weights), and
    the posterior predictive interval (central, at each of ``levels``) of a *new* trial
    of each arm's size checked against a fresh count from ``p_true``.
    **Returns:** the replicate's row (counts, fresh counts, inside and width per level)."""
    n = np.asarray([o.n for o in obs])
    counts = rng.binomial(n, p_true)
    data = TrialData(pcr=[PcrObservation(o.arm, o.trial, o.definition, o.n, int(k))
                          for o, k in zip(obs, counts, strict=True)])
    objective = Objective(tm, data)
    fit = fit_trials(objective, n_starts=1, max_steps=100, start=z_true)
    post = posterior_draws(objective, fit, draws, key, method=method)
    idx = rng.choice(len(post.weights), size=len(post.weights), p=post.weights)
    rates = draw_values(arm_rates, post.draws[idx], batch=100, args=tm)
    pred = rng.binomial(n[None, :], np.clip(rates, 0, 1))  # a new trial of each arm
    fresh = rng.binomial(n, p_true)
    row = {"k_hat": post.k_hat, "ess": float(1.0 / np.sum(post.weights ** 2)),
           "converged": fit.converged, "counts": counts.tolist(), "fresh": fresh.tolist()}
    for level in levels:
        lo, hi = np.quantile(pred, [(1 - level) / 2, (1 + level) / 2], axis=0,
                             method="inverted_cdf")
        row[f"inside{round(100 * level)}"] = ((lo <= fresh) & (fresh <= hi)).tolist()
        row[f"width{round(100 * level)}"] = ((hi - lo) / n).tolist()
    return row


def run(replicates: int, draws: int, seed: int, log, *, method: str = "psis") -> dict:
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
                                               method=method)
            rows.append(row)
            log(f"replicate {r + 1}/{replicates}: k_hat {row['k_hat']:.2f}, ESS "
                f"{row['ess']:.0f}, inside90 {sum(row['inside90'])}/{len(n)} "
                f"({time.perf_counter() - t0:.1f} s)")
    wall = time.perf_counter() - t0
    later = {"n_compiles": stats.n_compiles - first["n_compiles"],
             "compile_s": round(stats.compile_s - first["compile_s"], 2),
             "programs": stats.programs[first["n_compiles"]:]} if replicates > 1 else {}
    cover = {f"coverage{q}": float(np.mean([v for row in rows for v in row[f"inside{q}"]]))
             for q in (50, 90, 95)}
    return {
        "question": "do the trial model's posterior predictive intervals cover fresh counts "
                    "from known parameters at their nominal rate?",
        "design": "NeoSphere's 4 arms (n 96-107), primary counts; truth = MAP on the "
                  "published counts; per replicate: simulate, fit (LM from the truth), "
                  f"posterior draws ({method}), predictive interval of a new arm",
        "method": method,
        "structure": STRUCTURE | MODEL, "names": list(tm.names),
        "p_true": p_true.tolist(), "n": n.tolist(), "replicates": replicates,
        "draws": draws, **cover,
        "n_intervals": replicates * len(n),
        "acceptance99.9": {f"coverage{q}": list(acceptance_region(q / 100,
                                                                  replicates * len(n)))
                           for q in (50, 90, 95)},
        "per_arm_coverage90": np.mean([row["inside90"] for row in rows], axis=0).tolist(),
        "mean_width90_points": float(100 * np.mean([w for row in rows for w in row["width90"]])),
        "median_k_hat": float(np.median([row["k_hat"] for row in rows])),
        "median_ess": float(np.median([row["ess"] for row in rows])),
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
    fig, ax = plt.subplots(figsize=(5, 4.5), constrained_layout=True)
    nominal = [50, 90, 95]
    got = [100 * result[f"coverage{q}"] for q in nominal]
    ax.plot(nominal, got, "o-", label="simulated coverage")
    ax.plot([40, 100], [40, 100], color="0.5", ls="--", lw=0.8, label="nominal")
    ax.axhspan(85, 95, xmin=0, xmax=1, color="C2", alpha=0.1, label="target band at 90%")
    ax.set(xlabel="nominal predictive interval (%)", ylabel="fresh counts inside (%)",
           title=f"trial-model intervals: {result['replicates']} replicates x "
                 f"{len(result['n'])} arms", xlim=(40, 100), ylim=(40, 100))
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicates", type=int, default=50)
    p.add_argument("--draws", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="psis", choices=("psis", "laplace"),
                   help="posterior draws (`fitcsc.trials.posterior_draws`)")
    p.add_argument("--quick", action="store_true", help="5 replicates, 200 draws")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.replicates, args.draws = 5, 200
    result = run(args.replicates, args.draws, args.seed,
                 lambda m: print(m, file=sys.stderr, flush=True), method=args.method)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "trial_calibration.json", result)
    figure(result, out / "trial_calibration.png")
    return result


if __name__ == "__main__":
    r = main()
    print(json.dumps({k: r[k] for k in ("coverage50", "coverage90", "coverage95",
                                        "mean_width90_points", "wall_s")}, indent=1))
