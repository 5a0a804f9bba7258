"""Baseline growth models: closed forms, Simeoni against scipy, recovery by fit_map."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import fitcsc
from fitcsc._fit.baselines import SIMEONI_PSI


def _subject(days, volumes, dose_day=None):
    regimen = fitcsc.Regimen(() if dose_day is None else
                             (fitcsc.DoseLine("paclitaxel", 10.0, "mg/kg", start_day=dose_day),))
    sched = regimen.to_schedule(("paclitaxel",), species="mouse", max_doses=1)
    days = jnp.asarray(days, float)
    return fitcsc.SubjectData(day=days, volume_mm3=jnp.asarray(volumes, float),
                              mask=jnp.ones(days.shape, bool),
                              censored=jnp.zeros(days.shape, bool), t0_day=days[0],
                              schedule=sched)


DAYS = [-2.0, 0.0, 3.0, 7.0, 10.0, 14.0, 21.0, 28.0]


@pytest.mark.parametrize("kind,values,formula", [
    ("exponential", {"initial_volume_mm3": 80.0, "growth_rate": -0.03},
     lambda t: 80.0 * np.exp(-0.03 * t)),
    ("logistic", {"initial_volume_mm3": 80.0, "growth_rate": 0.2, "capacity_mm3": 2000.0},
     lambda t: 2000.0 / (1 + (2000.0 / 80.0 - 1) * np.exp(-0.2 * t))),
    ("gompertz", {"initial_volume_mm3": 80.0, "gompertz_rate": 0.07, "capacity_mm3": 3000.0},
     lambda t: 3000.0 * np.exp(np.log(80.0 / 3000.0) * np.exp(-0.07 * t))),
])
def test_closed_forms(kind, values, formula):
    pred = fitcsc.baseline_predictor(kind)
    s = _subject(DAYS, np.ones(len(DAYS)))
    log_v, status = pred(pred.spec.to_z(values), s)
    assert int(status) == 0
    np.testing.assert_allclose(np.exp(log_v), formula(np.asarray(DAYS) + 2.0), rtol=1e-12)


def test_simeoni_matches_scipy():
    values = {"initial_volume_mm3": 100.0, "lambda0": 0.25, "lambda1_mm3_per_day": 60.0,
              "k1": 0.4, "k2": 0.08}
    pred = fitcsc.baseline_predictor("simeoni")
    s = _subject(DAYS, np.ones(len(DAYS)), dose_day=0.0)
    log_v, status = pred(pred.spec.to_z(values), s)
    assert int(status) == 0

    def rhs(t, x):
        w = x.sum()
        growth = 0.25 * x[0] / (1 + (0.25 * w / 60.0) ** SIMEONI_PSI) ** (1 / SIMEONI_PSI)
        kill = 0.08 * x[0] if t >= 0.0 else 0.0
        return [growth - kill, kill - 0.4 * x[1], 0.4 * (x[1] - x[2]), 0.4 * (x[2] - x[3])]

    pre = solve_ivp(rhs, (-2.0, 0.0), [100.0, 0, 0, 0], rtol=1e-12, atol=1e-12, method="DOP853")
    post = solve_ivp(rhs, (0.0, 28.0), pre.y[:, -1], t_eval=DAYS[1:], rtol=1e-12, atol=1e-12,
                     method="DOP853")
    ref = np.concatenate([[100.0], post.y.sum(axis=0)])
    np.testing.assert_allclose(np.exp(log_v), ref, rtol=1e-6)
    # an untreated subject follows the same growth with no kill
    s0 = _subject(DAYS, np.ones(len(DAYS)))
    log_v0, _ = pred(pred.spec.to_z(values), s0)
    assert float(log_v0[-1]) > float(log_v[-1])


@pytest.mark.parametrize("kind", ["logistic", "gompertz"])
def test_fit_map_recovers_baseline_parameters(kind):
    rng = np.random.default_rng(3)
    pred = fitcsc.baseline_predictor(kind)
    truths = [{"initial_volume_mm3": v0, "capacity_mm3": k, "growth_rate": r, "gompertz_rate": r}
              for v0, k, r in [(60.0, 1500.0, 0.15), (120.0, 2500.0, 0.08), (90.0, 900.0, 0.2)]]
    rows = []
    for i, truth in enumerate(truths):
        z = pred.spec.to_z(truth)
        log_v, _ = pred(z, _subject(DAYS, np.ones(len(DAYS))))
        noisy = np.exp(np.asarray(log_v) + 0.01 * rng.standard_normal(len(DAYS)))
        rows += [(f"m{i}", d, v) for d, v in zip(DAYS, noisy, strict=True)]
    import csv
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "arm", "subject", "day", "volume_mm3"])
        w.writerows([("syn", "control", s, d, v) for s, d, v in rows])
    batch = fitcsc.make_batch(fitcsc.read_tidy_csv(fh.name))
    result = fitcsc.fit_map(pred, batch, num_starts=4, sigma=0.01)
    assert np.all(np.asarray(result.status) == 0)
    names = list(result.labels)
    rate = "growth_rate" if kind == "logistic" else "gompertz_rate"
    for i, truth in enumerate(truths):
        for name in ("initial_volume_mm3", "capacity_mm3", rate):
            est = float(result.theta[i, names.index(name)])
            se = float(result.se_theta[i, names.index(name)])
            assert abs(est - truth[name]) < 4 * se + 1e-9, (i, name, est, truth[name], se)


def test_unknown_baseline_refused():
    with pytest.raises(ValueError, match="baseline must be one of"):
        fitcsc.baseline_predictor("richards")
