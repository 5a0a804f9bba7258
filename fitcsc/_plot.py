"""Plots. They consume results and never recompute them."""

from __future__ import annotations

import pathlib


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_regimen_run(arms, ts, volume_mm3, csc_fraction, residual_cells, pcr, path):
    """Three panels: volume and CSC fraction over time per arm; residual vs pCR.

    **Arguments:** ``arms`` (n,), ``ts``/``volume_mm3``/``csc_fraction`` (n, n_t),
    ``residual_cells`` (n,) at surgery, ``pcr`` a dict regimen -> published pCR row.
    """
    plt = _pyplot()
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
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path

