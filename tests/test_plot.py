"""Plots of per-subject fits: each writes a valid PNG atomically, from given results."""

from __future__ import annotations

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

import fitcsc
from fitcsc._io.data import make_batch, read_tidy_csv
from fitcsc._jobs.plot import (
    plot_multistart,
    plot_observed_vs_predicted,
    plot_residuals,
    plot_subject_fits,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Exponential fits of 4 synthetic subjects (one with a censored point)."""
    path = tmp_path_factory.mktemp("plot") / "volumes.csv"
    rng = np.random.default_rng(0)
    lines = ["study,arm,subject,day,volume_mm3"]
    for i, (arm, rate) in enumerate([("control", 0.06), ("control", 0.05),
                                     ("paclitaxel", -0.04), ("paclitaxel", -0.12)]):
        for d in range(0, 36, 5):
            v = 100.0 * np.exp(rate * d + 0.05 * rng.normal())
            lines.append(f"s,{arm},m{i},{d},{0.0 if v < 2.0 else v:.4f}")
    path.write_text("\n".join(lines) + "\n")
    batch = make_batch(read_tidy_csv(path), None, detection_limit_mm3=2.0)
    assert bool(np.asarray(batch.censored).any())
    result = fitcsc.fit_map(fitcsc.baseline_predictor("exponential"), batch, num_starts=3,
                            sigma="estimate")
    # the caller (here the test, in the package `fit_job`) computes the fine-grid curves
    grid = np.stack([np.linspace(0.0, 30.0, 50)] * batch.n_subjects)
    p = np.asarray(result.theta)  # (V0, r) per subject
    curve = p[:, :1] * np.exp(p[:, 1:] * grid)
    frac = 0.1 + 0.8 * grid / 30.0
    return batch, result, grid, curve, frac


def _check_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.ptp(image[..., :3]) > 0  # not blank
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_subject_panels(fitted, tmp_path):
    batch, result, grid, curve, frac = fitted
    _check_png(plot_subject_fits(result, batch, grid, curve, tmp_path / "a" / "panels.png",
                                 csc_fraction=frac))
    _check_png(plot_subject_fits(result, batch, grid, curve, tmp_path / "few.png",
                                 max_panels=2))


def test_observed_vs_predicted_residuals_and_multistart(fitted, tmp_path):
    batch, result, *_ = fitted
    _check_png(plot_observed_vs_predicted(result, batch, tmp_path / "ovp.png"))
    _check_png(plot_residuals(result, batch, tmp_path / "res.png"))
    _check_png(plot_multistart(result, tmp_path / "starts.png"))


def test_overwrite_is_atomic_and_mismatch_refused(fitted, tmp_path):
    batch, result, *_ = fitted
    path = tmp_path / "res.png"
    path.write_bytes(b"old")
    plot_residuals(result, batch, path)
    _check_png(path)
    with pytest.raises(ValueError, match="different subjects"):
        plot_residuals(result, batch.subset([1, 0, 2, 3]), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_failed_predictions_are_skipped(fitted, tmp_path):
    batch, result, grid, curve, _ = fitted
    broken = result.__class__(**{**{f: getattr(result, f) for f in result.__dataclass_fields__},
                                 "log_volume_pred": jnp.full_like(result.log_volume_pred,
                                                                  jnp.nan)})
    curve = np.where(np.arange(curve.shape[0])[:, None] == 0, np.nan, curve)
    _check_png(plot_subject_fits(broken, batch, grid, curve, tmp_path / "p.png"))
    _check_png(plot_observed_vs_predicted(broken, batch, tmp_path / "o.png"))


def test_axes_are_clipped_to_the_data(fitted, tmp_path, monkeypatch):
    """A complete response predicted at 1e-18 mm3 (and a failed fit at 1e30) no longer
    stretches the observed-vs-predicted axes or a subject's panel: both span the observed
    volumes (widened 3x), the outliers sit at the edge and are counted in the title."""
    import fitcsc._jobs.plot as plot

    batch, result, grid, curve, _ = fitted
    logp = np.asarray(result.log_volume_pred).copy()
    cens = np.asarray(batch.censored)
    assert cens.any()
    logp[cens] = np.log(1e-18)
    i, j = np.argwhere(np.asarray(batch.mask) & ~cens)[0]
    logp[i, j] = np.log(1e30)
    stretched = result.__class__(**{**{f: getattr(result, f)
                                       for f in result.__dataclass_fields__},
                                    "log_volume_pred": jnp.asarray(logp)})
    seen = []
    real = plot.save_figure
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: (seen.append(
        [(ax.get_xlim(), ax.get_ylim(), ax.get_title()) for ax in fig.axes]), real(fig, path))[1])
    _check_png(plot_observed_vs_predicted(stretched, batch, tmp_path / "ovp.png"))
    vol = np.asarray(batch.volume_mm3)[np.asarray(batch.mask)]
    lo, hi = vol.min() / 3, vol.max() * 3
    ((xlim, ylim, title),) = seen[0]
    np.testing.assert_allclose([xlim, ylim], [[lo, hi], [lo, hi]], rtol=1e-12)
    n_out = int(cens.sum()) + 1
    assert f"{n_out} predictions beyond the axes, at the edge" in title
    # per-subject panels: the curve falls to 1e-18 after a complete response
    low_curve = np.where(np.arange(curve.shape[1]) > 25, 1e-18, curve)
    _check_png(plot_subject_fits(stretched, batch, grid, low_curve, tmp_path / "p.png"))
    mask = np.asarray(batch.mask)
    for k, (_, ylim_k, _) in enumerate(seen[1][:batch.n_subjects]):
        v = np.asarray(batch.volume_mm3)[k][mask[k]]
        np.testing.assert_allclose(ylim_k, [v.min() / 3, v.max() * 3], rtol=1e-12)


@pytest.mark.parametrize("n_arms", [3, 10, 12, 20])
def test_arm_colours_distinct_up_to_20_arms(n_arms):
    """Colour by arm: the legend of the observed-vs-predicted plot lists up to 12 arms, so
    two arms never share a colour up to 20 (PDXE files have 12 treated arms and more)."""
    from fitcsc._jobs.plot import arm_colours

    arms = [f"arm{i}" for i in range(n_arms) for _ in range(2)]  # repeated, in order
    colours = arm_colours(arms)
    assert list(colours) == [f"arm{i}" for i in range(n_arms)]
    assert len(set(colours.values())) == n_arms
    more = arm_colours([f"arm{i}" for i in range(25)])
    assert len(set(more.values())) == 20  # beyond 20 the colours repeat
