"""Predictions for any regimen from a saved trial fit: ``fitcsc predict``.

From a fit directory (``fit.json`` written by experiments/pcr_fit.py or
experiments/adjuvant_fit.py) and a regimen table (the format of
data/clinical/regimens.csv, documented in data/README.md), every arm is predicted
twice, with intervals from the fit's parameter uncertainty (Laplace draws):

- neoadjuvant: pCR rate under ``--pcr-definition``, surgery 4 weeks after the last
  dose; mean and 95% interval;
- adjuvant: the same regimen given after surgery to patients with the fit's
  micrometastatic burden; DFS curve, DFS at ``--years``, and with ``--comparator ARM``
  the DFS hazard ratio (ratio of cumulative hazards at ``--years``) against that arm.

Writes ``predictions.csv`` (one row per arm: arm, pcr_definition, pcr_mean, pcr_lo,
pcr_hi, dfs_years, dfs_mean, dfs_lo, dfs_hi, dfs_hr_mean, dfs_hr_lo, dfs_hr_hi, status),
``dfs_curves.csv``, ``predictions.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import FitcscInputError
from ._plot import _pyplot, _save
from ._run import _csv_text, write_atomic
from ._trial_fit import YEAR, load_fit, model_from_fit
from ._trials import Arm, hazard_ratio

DEFINITIONS = ("ypT0/is ypN0", "ypT0/is", "ypT0", "ypT0 ypN0")


def predict(fit_dir, regimen_file, out_dir, *, pcr_definition="ypT0/is ypN0",
            comparator=None, years=3.0, n_draws=400, burden_trial=None, seed=0) -> dict:
    """Predict pCR and DFS for every arm of ``regimen_file``; see the module docstring.

    **Returns:** the summary dictionary (also written as ``summary.json``).
    """
    import fitcsc.summary as fs

    from ._data import read_regimen_table

    t_start = time.perf_counter()
    try:
        doc = load_fit(fit_dir)
    except (FileNotFoundError, ValueError) as err:
        raise FitcscInputError(str(err)) from None
    regimens = read_regimen_table(regimen_file)
    names = list(regimens)
    if pcr_definition not in DEFINITIONS:
        raise FitcscInputError(f"--pcr-definition: expected one of {DEFINITIONS}, got "
                               f"{pcr_definition!r}")
    if comparator is not None and comparator not in regimens:
        raise FitcscInputError(f"{regimen_file}: column arm: comparator arm expected, "
                               f"got {comparator!r} (arms: {', '.join(names)})")
    trials = doc.get("trials") or []
    trial = burden_trial if burden_trial is not None else (trials[0] if trials else "")
    if burden_trial is not None and burden_trial not in trials:
        raise FitcscInputError(f"--burden-trial: expected one of {trials} (the trials whose "
                               f"burden the fit estimated), got {burden_trial!r}")
    neo = [Arm(a, regimens[a], pcr_definition=pcr_definition) for a in names]
    adj = [Arm(a, regimens[a], setting="adjuvant", trial=trial) for a in names]
    try:
        tm_neo, tm_adj = model_from_fit(doc, neo), model_from_fit(doc, adj)
    except ValueError as err:
        raise FitcscInputError(f"{regimen_file}: {err}") from None
    z = jnp.asarray(doc["z"])
    draws = fs.laplace_draws(np.asarray(doc["z"]), np.asarray(doc["cov"]), n_draws=n_draws,
                             key=jax.random.PRNGKey(seed))
    days = jnp.linspace(0.0, max(years, 5.0), 61) * YEAR
    horizon = jnp.asarray([years * YEAR])
    ci = comparator is not None and names.index(comparator)

    def endpoints(zz):
        pcr, status_n = tm_neo.pcr_rates(zz)
        dfs_h, _, status_a = tm_adj.dfs(zz, horizon)
        out = {"pcr": pcr, "dfs": dfs_h[:, 0], "status": jnp.maximum(status_n, status_a)}
        if comparator is not None:
            out["hr"] = hazard_ratio(dfs_h[:, 0], dfs_h[ci, 0])
        return out

    point = endpoints(z)
    keys = [k for k in ("pcr", "dfs", "hr") if k in point]
    mean, lo, hi = fs.predictive_interval(  # one compiled function for every endpoint
        lambda zz: jnp.stack([endpoints(zz)[k] for k in keys]), draws, batch=100)
    stats = {k: (mean[j], lo[j], hi[j]) for j, k in enumerate(keys)}
    curves, _, _ = tm_adj.dfs(z, days)

    header = ["arm", "pcr_definition", "pcr_map", "pcr_mean", "pcr_lo", "pcr_hi",
              "dfs_years", "dfs_mean", "dfs_lo", "dfs_hi", "comparator", "dfs_hr_mean",
              "dfs_hr_lo", "dfs_hr_hi", "status"]
    rows = []
    for i, a in enumerate(names):
        hr = (["", "", "", ""] if comparator is None else
              [comparator] + [f"{stats['hr'][j][i]:.4f}" for j in range(3)])
        rows.append([a, pcr_definition, f"{float(point['pcr'][i]):.4f}"]
                    + [f"{stats['pcr'][j][i]:.4f}" for j in range(3)]
                    + [f"{years:g}"] + [f"{stats['dfs'][j][i]:.4f}" for j in range(3)]
                    + hr + ["ok" if int(point["status"][i]) == 0 else "failed"])
    out = pathlib.Path(out_dir)
    write_atomic(out / "predictions.csv", _csv_text(header, rows))
    write_atomic(out / "dfs_curves.csv", _csv_text(
        ["arm", "years", "dfs"], [[a, f"{float(d) / YEAR:.4g}", f"{float(curves[i, k]):.5f}"]
                                  for i, a in enumerate(names)
                                  for k, d in enumerate(days)]))
    _figure(names, rows, np.asarray(days) / YEAR, np.asarray(curves), comparator,
            out / "predictions.png")
    summary = {
        "job": "prediction from a saved trial fit", "fit": str(fit_dir),
        "regimens": str(regimen_file), "n_arms": len(names),
        "n_failed": sum(r[-1] != "ok" for r in rows), "pcr_definition": pcr_definition,
        "comparator": comparator, "dfs_years": years, "burden_trial": trial or None,
        "n_draws": n_draws, "interval": "95% percentile interval over Laplace draws",
        "hazard_ratio": "ratio of cumulative hazards at dfs_years",
        "wall_s": round(time.perf_counter() - t_start, 2),
        "precision": "float64" if jax.config.jax_enable_x64 else "float32",
        "device": str(jax.devices()[0]),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _figure(names, rows, years, curves, comparator, path):
    plt = _pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    y = np.arange(len(names))[::-1]
    mean = np.array([float(r[3]) for r in rows]) * 100
    lo = np.array([float(r[4]) for r in rows]) * 100
    hi = np.array([float(r[5]) for r in rows]) * 100
    a1.errorbar(mean, y, xerr=[np.maximum(mean - lo, 0), np.maximum(hi - mean, 0)], fmt="o",
                capsize=3)
    a1.set_yticks(y, names, fontsize=7)
    a1.set(xlabel=f"predicted pCR % ({rows[0][1]}), 95% interval", xlim=(0, 100),
           title="neoadjuvant")
    for i, a in enumerate(names):
        a2.plot(years, 100 * curves[i], label=a, lw=2 if a == comparator else 1)
    a2.set(xlabel="years from start of adjuvant therapy", ylabel="DFS %",
           title="adjuvant" + (f" (comparator {comparator})" if comparator else ""))
    a2.legend(fontsize=7)
    _save(fig, path)


def _predict_cli(args) -> int:
    from .cli import _resolve_input, enable_compile_cache

    enable_compile_cache()
    summary = predict(args.fit, _resolve_input(args.regimens), args.out,
                      pcr_definition=args.pcr_definition, comparator=args.comparator,
                      years=args.years, n_draws=args.draws, burden_trial=args.burden_trial)
    print(f"fitcsc predict: {summary['n_arms']} arms ({summary['n_failed']} failed) in "
          f"{summary['wall_s']:.1f} s -> {args.out}/"
          "{predictions.csv, dfs_curves.csv, predictions.png, summary.json}")
    return 0 if summary["n_failed"] == 0 else 1


def add_predict_command(subparsers, common) -> None:
    """``fitcsc predict``: pCR and DFS for any regimen from a saved trial fit."""
    p = subparsers.add_parser(
        "predict", parents=[common], help="predict pCR and DFS for regimens from a saved fit",
        description="From a saved trial fit (a directory with fit.json, e.g. "
        "experiments/results/adjuvant_fit), predict for every arm of a regimen table the "
        "pCR rate (neoadjuvant, surgery 4 weeks after the last dose) and the DFS curve "
        "and hazard ratio against a comparator arm (the same regimen given as adjuvant "
        "therapy), with 95%% intervals from the fit's parameter uncertainty. The regimen "
        "format is documented in data/README.md. Exit 0 ok, 1 if an arm failed, 2 on "
        "refused input.",
    )
    p.add_argument("--fit", metavar="RUN_DIR", required=True,
                   help="directory holding fit.json (or the file itself)")
    p.add_argument("--regimens", metavar="FILE", required=True, help="regimen table")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.add_argument("--pcr-definition", default="ypT0/is ypN0", choices=DEFINITIONS,
                   help="pCR definition (default 'ypT0/is ypN0': breast and nodes)")
    p.add_argument("--comparator", metavar="ARM", default=None,
                   help="arm of the regimen table the hazard ratios are against")
    p.add_argument("--years", type=float, default=3.0,
                   help="DFS landmark and hazard-ratio horizon in years (default 3)")
    p.add_argument("--burden-trial", default=None, metavar="TRIAL",
                   help="whose fitted micrometastatic burden to use (default: the fit's "
                   "first adjuvant trial)")
    p.add_argument("--draws", type=int, default=400,
                   help="posterior draws for the intervals (default 400)")
    p.set_defaults(handler=_predict_cli)
