"""Posterior predictive plots of a population posterior (an `InferenceData` from
`fitcsc.summary.population_inference_data`). They read its ``observed_data`` and
``posterior_predictive`` groups and never recompute the model.

- `plot_ppc`: every observation against its posterior predictive median and 90%
  interval (log axes, coloured by arm), with the interval's coverage;
- `plot_vpc`: a visual predictive check per arm: the observed 10th, 50th and 90th
  percentiles of volume in time bins, over the 90% intervals of the same percentiles
  in replicate data sets drawn from the posterior.
"""

from __future__ import annotations

import numpy as np

from .._io.files import pyplot, save_figure
from .plot import arm_colours

PERCENTILES = (10.0, 50.0, 90.0)


def _obs(idata):
    od = idata.observed_data
    rep = idata.posterior_predictive["volume_mm3"].values
    return (od["volume_mm3"].values, rep.reshape(-1, rep.shape[-1]), od["arm"].values,
            od["day"].values, od["censored"].values.astype(bool))


def _ppc_bands(idata, prob):
    """Observations, arms, censoring, the predictive (lower, median, upper) per
    observation and the fraction of uncensored observations inside."""
    y, rep, arm, _, cens = _obs(idata)
    lo, med, hi = np.nanpercentile(rep, [50 * (1 - prob), 50, 50 * (1 + prob)], axis=0)
    inside = (y >= lo) & (y <= hi)
    coverage = float(inside[~cens].mean()) if (~cens).any() else float("nan")
    return y, arm, cens, (lo, med, hi), coverage


def ppc_coverage(idata, *, prob: float = 0.9) -> float:
    """The fraction of uncensored observations inside their ``prob`` posterior
    predictive interval (what `plot_ppc` reports, without the figure)."""
    return _ppc_bands(idata, prob)[-1]


def plot_ppc(idata, path, *, prob: float = 0.9) -> float:
    """Observed vs posterior predictive (median, ``prob`` interval) per observation.
    **Returns:** the fraction of uncensored observations inside their interval."""
    plt = pyplot()
    y, arm, cens, (lo, med, hi), coverage = _ppc_bands(idata, prob)
    colours = arm_colours(arm)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), constrained_layout=True)
    for a, c in colours.items():
        m = (arm == a) & ~cens
        ax.errorbar(y[m], med[m], yerr=[med[m] - lo[m], hi[m] - med[m]], fmt="o", ms=2.5,
                    color=c, alpha=0.5, lw=0.6, label=a)
        mc = (arm == a) & cens
        if mc.any():
            ax.scatter(y[mc], med[mc], marker="<", s=18, facecolors="none", edgecolors=c)
    finite = np.concatenate([y, lo[np.isfinite(lo) & (lo > 0)], hi[np.isfinite(hi)]])
    lim = (max(np.nanmin(finite[finite > 0]) * 0.8, 1e-2), np.nanmax(finite) * 1.25)
    ax.plot(lim, lim, color="0.4", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim,
           xlabel="observed volume [mm³] (◁: below the detection limit, drawn at it)",
           ylabel=f"posterior predictive volume [mm³], median and {prob:.0%} interval",
           title=f"Posterior predictive check: {coverage:.1%} of observed volumes inside "
                 f"their {prob:.0%} interval")
    ax.legend(fontsize=7, ncol=2, loc="upper left", markerscale=2)
    save_figure(fig, path)
    return coverage


def _bins(day, n_max):
    """Bin edges over ``day``: every distinct day if few, else quantile bins."""
    u = np.unique(day)
    if u.size <= n_max:
        mids = (u[1:] + u[:-1]) / 2
        return np.concatenate([[u[0] - 0.5], mids, [u[-1] + 0.5]])
    edges = np.unique(np.quantile(day, np.linspace(0, 1, n_max + 1)))
    edges[-1] += 0.5
    return edges


def plot_vpc(idata, path, *, n_bins: int = 8, prob: float = 0.9, min_obs: int = 3) -> None:
    """Visual predictive check, one panel per arm, volume on a log axis. Bins with fewer
    than ``min_obs`` observations are left out. Censored observations enter at their
    detection limit in both the data and (below it) the replicates."""
    plt = pyplot()
    y, rep, arm, day, cens = _obs(idata)
    arms = list(dict.fromkeys(arm))
    colours = arm_colours(arm)
    ncol = min(4, len(arms))
    nrow = -(-len(arms) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False,
                             sharey=True, constrained_layout=True)
    limit = np.where(cens, y, 0.0)
    q = [50 * (1 - prob), 50 * (1 + prob)]
    for ax, a in zip(axes.ravel(), arms, strict=False):
        m = arm == a
        c = colours[a]
        edges = _bins(day[m], n_bins)
        which = np.clip(np.digitize(day[m], edges) - 1, 0, len(edges) - 2)
        ym, rm, lm = y[m], np.maximum(rep[:, m], limit[m]), cens[m]
        x, obs_p, band = [], [], []
        for b in range(len(edges) - 1):
            sel = which == b
            if sel.sum() < min_obs:
                continue
            x.append(day[m][sel].mean())
            obs_p.append(np.percentile(ym[sel], PERCENTILES))
            sim = np.nanpercentile(rm[:, sel], PERCENTILES, axis=1)  # (3, n_draws)
            band.append(np.nanpercentile(sim, q, axis=1))  # (2, 3)
        ax.scatter(day[m][~lm], ym[~lm], s=5, color=c, alpha=0.35)
        ax.scatter(day[m][lm], ym[lm], s=9, marker="v", facecolors="none", edgecolors=c,
                   alpha=0.5)
        if x:
            x, obs_p, band = np.asarray(x), np.asarray(obs_p), np.asarray(band)
            for k, style in enumerate((":", "-", ":")):
                ax.fill_between(x, band[:, 0, k], band[:, 1, k], color=c,
                                alpha=0.35 if k == 1 else 0.18, lw=0)
                ax.plot(x, obs_p[:, k], color="k", ls=style, lw=1.1)
        ax.set(yscale="log", title=f"{a} ({m.sum()} obs)", xlabel="day")
        ax.set_xlim(day[m].min() - 1, day[m].max() + 1)
    for ax in axes[:, 0]:
        ax.set_ylabel("tumour volume [mm³]")
    for ax in axes.ravel()[len(arms):]:
        ax.set_visible(False)
    fig.suptitle(f"Visual predictive check: observed 10th/50th/90th percentiles (black "
                 f"dotted/solid/dotted)\nover the {prob:.0%} intervals of the same "
                 f"percentiles in posterior replicates (bands); ▽ below the detection limit",
                 fontsize=9)
    save_figure(fig, path)
