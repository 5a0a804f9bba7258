"""Helpers shared by the Bayesian experiments (mas98_bayes.py, pdxe_bayes.py).

`fit_population` runs the sample job's steps (MAP warm start, sampling, InferenceData,
summary table and plots) on a population model; `identification` compares each
typical value's posterior with its prior; `her2_terms` summarises trastuzumab's CSC
(self-renewal) against its bulk (proliferation) term; `loo_against_baselines` samples
the baselines on the same curves and compares them by PSIS-LOO.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

import fitcsc.summary as fs
from fitcsc.files import pyplot, save_figure
from fitcsc.population import (
    baseline_population,
    posterior_outputs,
    progress_printer,
    sample,
    warm_start,
    warmup_summary,
)

BASELINE_ORDER = ("exponential", "logistic", "gompertz", "simeoni")


def fit_population(pop, batch, out, *, settings, seed=0, progress=True, refine_steps=300,
                   pair=None):
    """MAP warm start, ChEES sampling, outputs in ``out``: ``(idata, record)``."""
    t0 = time.perf_counter()
    values, start = warm_start(pop, batch, refine_steps=refine_steps,
                               max_steps=settings.get("map_max_steps"))
    kw = {k: v for k, v in settings.items() if k != "map_max_steps"}
    post = sample(pop.log_density, pop.space.to_z(values), seed=seed,
                  progress=progress_printer(quiet=not progress), **kw)
    diag, idata, rows = posterior_outputs(pop, post, out, key=jax.random.key(seed + 1),
                                          pair=pair)
    record = {"n_parameters": pop.space.size, "fixed_effects": list(pop.fe_labels),
              "sampler": post.settings, "timing": post.timing, "warm_start": start,
              "warmup": warmup_summary(post.warmup_stats),
              "convergence": diag, "wall_s": round(time.perf_counter() - t0, 1)}
    return idata, record, rows


def _interval_sd(transform, loc, scale, n=200_000, seed=0):
    z = np.random.default_rng(seed).normal(loc, scale, n)
    return float(np.std(np.asarray(transform.forward(z))))


def identification(pop, idata) -> list[dict]:
    """Per typical value: prior and posterior mean/SD (natural scale), the shrinkage of
    the SD (``1 - sd_post / sd_prior``; near 0: the data say nothing beyond the prior)
    and the posterior SD on the sampled (log/logit) scale."""
    rows = []
    post = idata.posterior
    for i, name in enumerate(pop.fe_labels):
        tr = pop.fe_transforms[i]
        loc, scale = float(pop.prior_loc[i]), float(pop.prior_scale[i])
        x = post["typical"].sel(fixed_effect=name).values.ravel()
        b = post["beta"].sel(fixed_effect=name).values.ravel()
        sd_prior = _interval_sd(tr, loc, scale)
        rows.append({"parameter": name, "post_mean": float(x.mean()), "post_sd": float(x.std()),
                     "hdi95": [float(v) for v in np.quantile(x, [0.025, 0.975])],
                     "prior_sd": sd_prior, "shrinkage": 1.0 - float(x.std()) / sd_prior,
                     "z_sd_post": float(b.std()), "z_sd_prior": scale})
    return rows


def her2_terms(idata, csc: str, bulk: str, out_png, *, title: str) -> dict:
    """Posterior of trastuzumab's CSC term (``csc``: fewer symmetric self-renewals)
    against its bulk term (``bulk``: slower bulk division), two fixed-effect labels;
    a figure of the joint draws."""
    t = idata.posterior["typical"]
    a = t.sel(fixed_effect=csc).values.ravel()
    b = t.sel(fixed_effect=bulk).values.ravel()
    r = float(np.corrcoef(a, b)[0, 1])
    res = {"csc_term": _stats(a), "bulk_term": _stats(b), "correlation": r,
           "p_csc_gt_bulk": float(np.mean(a > b)),
           "p_csc_gt_0.1": float(np.mean(a > 0.1)), "p_bulk_gt_0.1": float(np.mean(b > 0.1))}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    axes[0].scatter(a, b, s=3, alpha=0.25, color="C3", label="posterior draws")
    prior = 1 / (1 + np.exp(-np.random.default_rng(1).normal(0, 1.5, (2, 2000))))
    axes[0].scatter(*prior, s=2, alpha=0.15, color="0.5", label="prior draws")
    axes[0].set(xlim=(0, 1), ylim=(0, 1), xlabel="ε_S: CSC self-renewal blocked [fraction]",
                ylabel="ε_D: bulk division blocked [fraction]",
                title=f"joint posterior (corr {r:.2f})")
    axes[0].legend(fontsize=8, markerscale=4, loc="upper right")  # "best" is slow here
    bins = np.linspace(0, 1, 41)
    axes[1].hist(a, bins=bins, density=True, alpha=0.6, color="C0", label="ε_S (CSC term)")
    axes[1].hist(b, bins=bins, density=True, alpha=0.6, color="C1", label="ε_D (bulk term)")
    axes[1].set(xlim=(0, 1), xlabel="efficacy [fraction of the term blocked]",
                ylabel="posterior density [1/unit]", title="marginal posteriors")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, out_png)
    return res


def _stats(x) -> dict:
    lo, hi = np.quantile(x, [0.025, 0.975])
    return {"mean": float(x.mean()), "sd": float(x.std()), "q025": float(lo),
            "q975": float(hi)}


def loo_against_baselines(csc_idata, batch, regimens, out, *, settings, seed=0,
                          baselines=BASELINE_ORDER, progress=True) -> tuple[list, dict]:
    """Sample each baseline's population model on the same curves; PSIS-LOO table."""
    idatas, records = {"csc": csc_idata}, {}
    for kind in baselines:
        pop = baseline_population(kind, batch, regimens)
        idata, rec, _ = fit_population(pop, batch, out / kind, settings=settings, seed=seed,
                                       progress=progress)
        idatas[kind], records[kind] = idata, rec
    return fs.loo_compare(idatas), records


def md_table(rows, cols, fmt="{:.3g}") -> list[str]:
    """Markdown table lines of ``rows`` (dicts) over ``cols``."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                cells.append("nan" if math.isnan(v) else fmt.format(v))
            elif isinstance(v, list):
                cells.append("–".join(fmt.format(x) for x in v))
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return out
