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


def run(replicates: int, draws: int, seed: int, log) -> dict:
    arms, obs, tm = setup()
    truth_fit = fit_trials(Objective(tm, TrialData(pcr=obs)), n_starts=1, max_steps=100)
    z_true = jnp.asarray(truth_fit.z)
    p_true = np.asarray(tm.pcr_rates(z_true)[0])
    n = np.asarray([o.n for o in obs])
    rng = np.random.default_rng(seed)
    rows = []
    rates_fn = jax.jit(lambda z: tm.pcr_rates(z)[0])
    t0 = time.perf_counter()
    for r in range(replicates):
        counts = rng.binomial(n, p_true)
        data = TrialData(pcr=[PcrObservation(o.arm, o.trial, o.definition, o.n, int(k))
                              for o, k in zip(obs, counts, strict=True)])
        objective = Objective(tm, data)
        fit = fit_trials(objective, n_starts=1, max_steps=100, start=z_true)
        post = posterior_draws(objective, fit, draws, jax.random.PRNGKey(seed + r))
        k_hat = post.k_hat
        idx = rng.choice(len(post.weights), size=len(post.weights), p=post.weights)
        rates = draw_values(rates_fn, post.draws[idx], batch=100)
        pred = rng.binomial(n[None, :], np.clip(rates, 0, 1))  # a new trial of each arm
        fresh = rng.binomial(n, p_true)
        row = {"replicate": r, "k_hat": k_hat, "converged": fit.converged,
               "counts": counts.tolist(), "fresh": fresh.tolist()}
        for level in (0.5, 0.9, 0.95):
            lo, hi = np.quantile(pred, [(1 - level) / 2, (1 + level) / 2], axis=0,
                                 method="inverted_cdf")
            row[f"inside{int(100 * level)}"] = ((lo <= fresh) & (fresh <= hi)).tolist()
            row[f"width{int(100 * level)}"] = ((hi - lo) / n).tolist()
        rows.append(row)
        log(f"replicate {r + 1}/{replicates}: k_hat {k_hat:.2f}, inside90 "
            f"{sum(row['inside90'])}/{len(n)} ({time.perf_counter() - t0:.0f} s)")
    cover = {f"coverage{q}": float(np.mean([v for row in rows for v in row[f"inside{q}"]]))
             for q in (50, 90, 95)}
    return {
        "question": "do the trial model's posterior predictive intervals cover fresh counts "
                    "from known parameters at their nominal rate?",
        "design": "NeoSphere's 4 arms (n 96-107), primary counts; truth = MAP on the "
                  "published counts; per replicate: simulate, fit (LM from the truth), "
                  "PSIS-reweighted Laplace posterior, predictive interval of a new arm",
        "structure": STRUCTURE | MODEL, "names": list(tm.names),
        "p_true": p_true.tolist(), "n": n.tolist(), "replicates": replicates,
        "draws": draws, **cover,
        "n_intervals": replicates * len(n),
        "mean_width90_points": float(100 * np.mean([w for row in rows for w in row["width90"]])),
        "median_k_hat": float(np.median([row["k_hat"] for row in rows])),
        "n_not_converged": int(sum(not row["converged"] for row in rows)),
        "wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows, "device": device_info(), "precision": precision(),
        "versions": versions(), "load_avg": load_avg(), "timestamp": timestamp(),
    }


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
    p.add_argument("--quick", action="store_true", help="5 replicates, 200 draws")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.replicates, args.draws = 5, 200
    result = run(args.replicates, args.draws, args.seed,
                 lambda m: print(m, file=sys.stderr, flush=True))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "trial_calibration.json", result)
    figure(result, out / "trial_calibration.png")
    return result


if __name__ == "__main__":
    r = main()
    print(json.dumps({k: r[k] for k in ("coverage50", "coverage90", "coverage95",
                                        "mean_width90_points", "wall_s")}, indent=1))
