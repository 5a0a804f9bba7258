"""Plots. They consume results and never recompute them.

`plot_regimen_run` draws the main job's simulated regimens; `plot_subject_fits`,
`plot_observed_vs_predicted`, `plot_residuals` and `plot_multistart` draw per-subject
fits (a `FitResult` and its `SubjectBatch`; curves on a fine grid are passed in by the
caller, e.g. `fitcsc._jobs.fit_job.fit_job`). Volume axes are clipped to the observed data
(`data_limits`): a prediction far below it (a complete response's curve falls to 1e-18
mm3) is drawn at the axis edge instead of squeezing the data into a corner. Every PNG is
written atomically.
"""

from __future__ import annotations

from .._io.files import pyplot, save_figure


def plot_regimen_run(arms, ts, volume_mm3, csc_fraction, residual_cells, pcr, path):
    """Three panels: volume and CSC fraction over time per arm; residual vs pCR.

    **Arguments:** ``arms`` (n,), ``ts``/``volume_mm3``/``csc_fraction`` (n, n_t),
    ``residual_cells`` (n,) at surgery, ``pcr`` a dict regimen -> published pCR row.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), constrained_layout=True)
    cmap = plt.get_cmap("tab20")
    for i, arm in enumerate(arms):
        c = cmap(i % 20)
        axes[0].semilogy(ts[i], volume_mm3[i], color=c, lw=1.2, label=arm)
        axes[1].semilogy(ts[i], csc_fraction[i], color=c, lw=1.2)
    axes[0].set(xlabel="day", ylabel="tumour volume [mm³]", title="Typical patient, per regimen")
    axes[0].axhline(1e-6, color="0.6", ls=":", lw=0.8)
    axes[1].set(xlabel="day", ylabel="CSC fraction", title="CSC fraction (S+Q+R)/N")
    ax = axes[2]
    xs, ys, labels = [], [], []
    for i, arm in enumerate(arms):
        row = pcr.get(arm)
        if row and row.get("pcr_pct"):
            xs.append(max(residual_cells[i], 1e-3))
            ys.append(float(row["pcr_pct"]))
            labels.append(arm)
    if xs:
        ax.scatter(xs, ys, color="k", s=18)
        for x, y, lab in zip(xs, ys, labels, strict=True):
            ax.annotate(lab, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
    ax.set(xlabel="residual invasive cells at surgery (model, typical patient)",
           ylabel="published pCR [%] (trial's primary definition)",
           title="Illustrative parameters — not a fit")
    axes[0].legend(fontsize=5, ncol=2, loc="lower left")
    return save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------------
# Per-subject fits. ``result`` is a `FitResult`, or any object with its per-subject
# fields ``subject``, ``arm``, ``status``, ``loss``, ``log_volume_pred`` (n, n_obs),
# ``all_losses`` and ``all_status`` (n, n_starts), aligned with ``batch``'s subjects.


def _arrays(result, batch):
    import numpy as np

    if tuple(result.subject) != tuple(batch.subject):
        raise ValueError("plot: the fit result and the batch list different subjects")
    mask = np.asarray(batch.mask)
    cens = np.asarray(batch.censored) & mask
    return (np.asarray(batch.day), np.asarray(batch.volume_mm3), mask & ~cens, cens,
            np.asarray(result.log_volume_pred, float), np.asarray(result.status))


def data_limits(volume_mm3, *, pad=3.0):
    """Log-axis limits ``(lo, hi)`` around the finite positive observed volumes (censored
    ones at their detection limit): their range widened by the factor ``pad`` each way;
    (0.1, 10) without any."""
    import numpy as np

    v = np.asarray(volume_mm3, float)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return 0.1, 10.0
    return float(v.min()) / pad, float(v.max()) * pad


def _status_text(code) -> str:
    from .._status import FitStatus

    code = int(code)
    return "error" if code < 0 else FitStatus(code).name.lower()


def arm_colours(arms):
    """A colour per arm, in order of appearance: tab10 up to 10 arms, tab20 up to 20 (so
    no two arms of a legend share a colour), tab20 repeated beyond."""
    plt = pyplot()
    names = list(dict.fromkeys(arms))
    n = 10 if len(names) <= 10 else 20
    cmap = plt.get_cmap(f"tab{n}")
    return {a: cmap(i % n) for i, a in enumerate(names)}


def plot_subject_fits(result, batch, grid_day, grid_volume_mm3, path, *, csc_fraction=None,
                      max_panels=24):
    """One panel per subject (the first ``max_panels``): data, fitted curve, CSC fraction.

    **Arguments:**
    - `result`, `batch`: the fits and their `SubjectBatch` (same subjects, same order).
    - `grid_day`, `grid_volume_mm3`: ``(n_subjects, n_grid)``, the fitted curve on a fine
      grid (computed by the caller, e.g. `fit_job`, with the fitted parameters).
    - `csc_fraction`: optional ``(n_subjects, n_grid)``, drawn on a twin axis.
    - `path`: PNG file (written atomically).

    Observed volumes are dots; censored ones (below the detection limit) are open
    triangles at the limit. A panel title in red marks a subject whose fit did not
    converge.
    """
    import numpy as np

    plt = pyplot()
    day, vol, obs, cens, _, status = _arrays(result, batch)
    n = min(len(batch.subject), int(max_panels))
    ncol = min(n, 6)
    nrow = max(1, -(-n // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol + 0.4, 2.2 * nrow + 0.5),
                             squeeze=False, constrained_layout=True)
    colours = arm_colours(batch.arm)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_axis_off()
            continue
        c = colours[batch.arm[k]]
        ax.semilogy(day[k][obs[k]], vol[k][obs[k]], "o", ms=3, color=c)
        ax.semilogy(day[k][cens[k]], vol[k][cens[k]], "v", ms=4, mfc="none", color="0.3")
        good = np.isfinite(grid_volume_mm3[k]) & (np.asarray(grid_volume_mm3[k]) > 0)
        ax.semilogy(np.asarray(grid_day[k])[good], np.asarray(grid_volume_mm3[k])[good],
                    "-", lw=1.2, color="k")
        ax.set_ylim(*data_limits(vol[k][obs[k] | cens[k]]))  # the curve may leave the axes
        if csc_fraction is not None and np.any(np.isfinite(csc_fraction[k])):
            tw = ax.twinx()
            tw.plot(grid_day[k], csc_fraction[k], "--", lw=1.0, color="tab:purple")
            tw.set_ylim(0.0, 1.0)
            tw.tick_params(labelsize=6, colors="tab:purple")
            if k % ncol == ncol - 1 or k == n - 1:
                tw.set_ylabel("CSC fraction", fontsize=7, color="tab:purple")
        st = _status_text(status[k])
        ax.set_title(f"{batch.subject[k]}\n{batch.arm[k]}" + ("" if st == "converged"
                                                              else f" [{st}]"),
                     fontsize=7, color="k" if st == "converged" else "tab:red")
        ax.tick_params(which="both", labelsize=6)
        if k % ncol == 0:
            ax.set_ylabel("volume [mm³]", fontsize=7)
        if k >= n - ncol:
            ax.set_xlabel("day", fontsize=7)
    shown = "" if n == len(batch.subject) else f" (first {n} of {len(batch.subject)})"
    fig.suptitle(f"Fitted tumour volumes{shown}: data •, censored ▽ at the limit, "
                 "fit —, CSC fraction --", fontsize=9)
    return save_figure(fig, path)


def plot_observed_vs_predicted(result, batch, path):
    """Observed against fitted volumes (log-log, identity line), coloured by arm;
    censored observations as open triangles at the detection limit.

    Both axes span the observed volumes (`data_limits`); a prediction outside them (a
    complete response predicted at 1e-18 mm3, a failed fit) is drawn at the edge as a
    ``<`` or ``>`` and counted in the title."""
    import numpy as np

    plt = pyplot()
    _, vol, obs, cens, logp, _ = _arrays(result, batch)
    with np.errstate(over="ignore"):
        pred = np.exp(logp)
    seen = (obs | cens) & np.isfinite(pred) & (pred > 0)
    lo, hi = data_limits(vol[obs | cens])
    low, high = seen & (pred < lo), seen & (pred > hi)
    x = np.clip(pred, lo, hi)
    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    colours = arm_colours(batch.arm)
    for a, c in colours.items():
        rows = np.asarray([x_ == a for x_ in batch.arm])[:, None]
        inside = seen & rows & ~low & ~high
        ax.loglog(x[inside & obs], vol[inside & obs], "o", ms=3, alpha=0.7, color=c, label=a)
        ax.loglog(x[inside & cens], vol[inside & cens], "v", ms=4, mfc="none", color=c)
        ax.loglog(x[low & rows], vol[low & rows], "<", ms=5, mfc="none", color=c)
        ax.loglog(x[high & rows], vol[high & rows], ">", ms=5, mfc="none", color=c)
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    n_out = int(low.sum() + high.sum())
    beyond = f"\n{n_out} predictions beyond the axes, at the edge (< >)" if n_out else ""
    ax.set(xlabel="predicted volume [mm³]", ylabel="observed volume [mm³]",
           title=f"Observed vs predicted (▽ censored, at the limit){beyond}")
    ax.title.set_fontsize(9)
    if len(colours) <= 12:
        ax.legend(fontsize=6, loc="upper left")
    return save_figure(fig, path)


def plot_residuals(result, batch, path):
    """Residuals ``log V_obs - log V_pred`` of uncensored observations against time,
    coloured by arm; zero line."""
    import numpy as np

    plt = pyplot()
    day, vol, obs, _, logp, _ = _arrays(result, batch)
    res = np.log(np.where(obs, vol, 1.0)) - logp
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for a, c in arm_colours(batch.arm).items():
        rows = np.asarray([x == a for x in batch.arm])
        o = obs & rows[:, None] & np.isfinite(res)
        ax.plot(day[o], res[o], "o", ms=3, alpha=0.7, color=c, label=a)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set(xlabel="day", ylabel="residual log V_obs − log V_pred",
           title="Residuals of the fits (uncensored observations)")
    if len(set(batch.arm)) <= 12:
        ax.legend(fontsize=6, loc="best")
    return save_figure(fig, path)


def plot_multistart(result, path, *, floor=1e-8):
    """Spread of the multi-start optimum per subject: ``loss - best loss`` of every start
    (log scale; starts at the best loss are drawn at ``floor``; failed starts as x at
    the top). Many starts near the floor mean the optimum was found repeatedly."""
    import numpy as np

    from .._status import FitStatus

    plt = pyplot()
    losses = np.asarray(result.all_losses, float)
    st = np.asarray(result.all_status)
    n, n_starts = losses.shape
    ok = np.isfinite(losses) & (st >= 0) & (st <= FitStatus.MAX_STEPS)
    best = np.min(np.where(ok, losses, np.inf), axis=1, initial=np.inf)
    gap = np.maximum(losses - best[:, None], floor)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * n + 2), 4), constrained_layout=True)
    x = np.repeat(np.arange(n)[:, None], n_starts, axis=1)
    good = ok & np.isfinite(best)[:, None]
    ax.semilogy(x[good], gap[good], "o", ms=3, alpha=0.6, color="tab:blue", label="start")
    top = np.max(gap[good]) * 3 if np.any(good) else 1.0
    bad = ~good
    if np.any(bad):
        ax.semilogy(x[bad], np.full(int(bad.sum()), top), "x", ms=4, color="tab:red",
                    label="failed start")
    ax.axhline(floor, color="0.6", ls=":", lw=0.8)
    same = bool(np.any(good)) and bool(np.all(gap[good] <= floor))
    ax.set(xlabel="subject", ylabel="loss − best loss (−log-likelihood)",
           title=f"Multi-start spread ({n_starts} starts per subject)"
           + (f"\nevery start within {floor:g} of its subject's best loss" if same else ""))
    if n <= 40:
        ax.set_xticks(np.arange(n))
        ax.set_xticklabels(result.subject, rotation=90, fontsize=6)
    ax.legend(fontsize=7, loc="upper right")
    return save_figure(fig, path)


def plot_pcr_arms(rows, path):
    """Fitted against published pCR per arm (``arms.csv`` rows of `fitcsc run`), with
    the exact 95% CI of the published count and the 95% posterior interval of the fit,
    coloured by trial, each arm labelled; squares mark arms fitted outside the published
    CI. Both axes span the intervals (5 points beyond, within 0-100%)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6), constrained_layout=True)
    trials = list(dict.fromkeys(r["trial"] for r in rows))
    for r in rows:
        obs, lo, hi = (float(r[k]) for k in ("observed_pct", "observed_ci95_lo",
                                              "observed_ci95_hi"))
        pred, plo, phi = (float(r[k]) for k in ("predicted_pct", "predicted_lo95",
                                                 "predicted_hi95"))
        inside = r["predicted_within_observed_ci"] == "True"
        ax.errorbar(obs, pred, xerr=[[max(obs - lo, 0)], [max(hi - obs, 0)]],
                    yerr=[[max(pred - plo, 0)], [max(phi - pred, 0)]],
                    fmt="o" if inside else "s", ms=4, capsize=2, lw=0.8,
                    color=f"C{trials.index(r['trial']) % 10}",
                    label=r["trial"] if r["trial"] not in ax.get_legend_handles_labels()[1]
                    else None)
        ax.annotate(r["arm_id"], (obs, pred), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ends = [float(r[k]) for r in rows for k in ("observed_ci95_lo", "observed_ci95_hi",
                                                 "predicted_lo95", "predicted_hi95")]
    lo, hi = max(0.0, min(ends, default=0.0) - 5), min(100.0, max(ends, default=100.0) + 5)
    ax.plot([lo, hi], [lo, hi], color="0.5", ls="--", lw=0.8)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_aspect("equal")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="published pCR, % of patients (exact 95% CI)",
           ylabel="fitted pCR, % of patients (95% posterior interval)",
           title="pCR per arm: fitted vs published (squares: outside the CI)")
    return save_figure(fig, path)


def plot_arm_fits(rows, path, *, limit_mm3=1.0, max_arms=12):
    """One panel per arm (the first ``max_arms``): every subject's observed volumes
    (dots; censored ones as open triangles at the detection limit ``limit_mm3``) and its
    fitted values at the observation days (line), coloured by arm, from the rows of a
    fit job's ``predictions.csv``. Shared log volume axis clipped to the observed data
    (`data_limits`): a fitted value beyond it is drawn at the edge."""
    import numpy as np

    plt = pyplot()
    all_arms = list(dict.fromkeys(r["arm"] for r in rows))
    arms = all_arms[:max_arms]
    colours = arm_colours(arms)
    rows = [r for r in rows if r["arm"] in colours]  # the axes span what is shown

    def num(text):
        return float(text) if text != "" else np.nan

    vol = np.array([num(r["volume_mm3"]) for r in rows])
    cens = np.array([r["censored"] != "0" for r in rows])
    lo, hi = data_limits(np.where(cens, limit_mm3, vol))
    days = [num(r["day"]) for r in rows]
    by_arm: dict = {}  # arm -> subject -> rows
    for r in rows:
        by_arm.setdefault(r["arm"], {}).setdefault(r["subject"], []).append(r)
    ncol = min(len(arms), 4) or 1
    nrow = max(1, -(-len(arms) // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol + 0.4, 2.9 * nrow + 0.6),
                             squeeze=False, sharey=True, constrained_layout=True)
    for k, ax in enumerate(axes.flat):
        if k >= len(arms):
            ax.set_axis_off()
            continue
        arm, c = arms[k], colours[arms[k]]
        subjects = by_arm[arm]
        for mine in subjects.values():
            d = np.array([num(r["day"]) for r in mine])
            v = np.array([num(r["volume_mm3"]) for r in mine])
            cz = np.array([r["censored"] != "0" for r in mine])
            pred = np.array([num(r["volume_pred_mm3"]) for r in mine])
            ax.semilogy(d[~cz], v[~cz], "o", ms=3, alpha=0.8, color=c)
            ax.semilogy(d[cz], np.full(int(cz.sum()), limit_mm3), "v", ms=4, mfc="none",
                        color=c)
            ok = np.isfinite(pred)
            ax.semilogy(d[ok], np.clip(pred[ok], lo, hi), "-", lw=0.9, alpha=0.8, color=c)
        ax.set_ylim(lo, hi)
        ax.set_xlim(min(days) - 1, max(days) + 1)
        ax.set_title(f"{arm} ({len(subjects)} subject{'s' * (len(subjects) != 1)})",
                     fontsize=8, color=c)
        ax.tick_params(which="both", labelsize=7)
        if k % ncol == 0:
            ax.set_ylabel("tumour volume [mm³]", fontsize=8)
        if k >= len(arms) - ncol:
            ax.set_xlabel("day", fontsize=8)
    shown = "" if len(all_arms) == len(arms) else f" (first {len(arms)} of {len(all_arms)} arms)"
    fig.suptitle(f"Observed (•, ▽ censored at the limit) and fitted (—) volumes by arm"
                 f"{shown}", fontsize=9)
    return save_figure(fig, path)
