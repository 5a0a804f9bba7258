"""Batched MAP fits: recovery, scipy reference, censoring, SEs, isolation, profiles.

The CSC tests share one compiled fit (5 subjects x 4 starts, same shapes and options);
the engine's generic behaviour is tested on closed-form predictors, which compile fast.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from helpers import (
    DAYS,
    FREE,
    LIMIT,
    MODEL,
    NOISE_SD,
    NUM_STARTS,
    REGIMEN,
    SPEC,
    TRUE,
    bad_batches,
    true_volumes,
    write_batch,
)

from fitcsc._fit.driver import fit_map, sobol_unit
from fitcsc._fit.likelihood import log_likelihood_from_log
from fitcsc._fit.member import member_residuals
from fitcsc._fit.predictors import FunctionPredictor, csc_predictor, subject_data
from fitcsc._fit.profile import profile
from fitcsc._status import FitStatus


@pytest.fixture(scope="module")
def csc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    vols = true_volumes()
    noise = np.asarray(jax.random.normal(jax.random.key(0), vols.shape))
    days = np.tile(DAYS, (len(TRUE), 1))
    batch = write_batch(tmp / "clean.csv", vols, days, {"trastuzumab": REGIMEN})
    noisy = write_batch(tmp / "noisy.csv", vols * np.exp(NOISE_SD * noise), days,
                         {"trastuzumab": REGIMEN})
    pred = csc_predictor(MODEL, SPEC)
    result = fit_map(pred, batch, num_starts=NUM_STARTS, sigma=NOISE_SD)
    result_noisy = fit_map(pred, noisy, num_starts=NUM_STARTS, sigma=NOISE_SD)
    return dict(batch=batch, noisy=noisy, pred=pred, result=result, noisy_result=result_noisy)


@pytest.fixture(scope="module")
def residual_fn(csc):
    """Jitted residuals of the noisy subject 0 at sigma = NOISE_SD (the scipy reference)."""
    data = subject_data(csc["noisy"], 0)
    return jax.jit(lambda z: member_residuals(csc["pred"], data, z, NOISE_SD)[0])


def test_csc_recovers_noise_free_parameters(csc):
    res = csc["result"]
    assert res.labels == FREE
    assert np.all(np.asarray(res.status[:4]) == FitStatus.CONVERGED)
    np.testing.assert_allclose(res.theta[:4], TRUE[:4], rtol=1e-6)
    assert np.all(np.asarray(res.rmse_log_volume[:4]) < 1e-6)
    # multi-start: the best start has the lowest loss among starts that did not fail
    ok = np.asarray(res.all_status) <= FitStatus.MAX_STEPS
    best = np.where(ok, np.asarray(res.all_losses), np.inf).min(axis=1)
    np.testing.assert_array_equal(res.loss, best)


def test_csc_recovers_noisy_parameters_within_standard_errors(csc):
    res = csc["noisy_result"]
    # (with noise the complete responder's self-renewal runs to its bound, 0.5)
    assert np.all(np.asarray(res.status[:4]) == FitStatus.CONVERGED)
    assert np.isfinite(float(res.loss[4]))
    err = np.abs(np.asarray(res.theta) - TRUE)[:4]
    se = np.asarray(res.se_theta)[:4]
    assert np.all(np.isfinite(se)) and np.all(se > 0)
    assert np.all(err < 3.0 * se), (err / se)
    np.testing.assert_allclose(res.theta[:4, 3], TRUE[:4, 3], rtol=0.1)  # V0 is well known
    # the residual SD is close to the noise that was added
    assert 0.5 * NOISE_SD < float(np.median(res.rmse_log_volume)) < 1.5 * NOISE_SD


def test_complete_response_is_censored_and_fitted_below_the_limit(csc):
    batch, res = csc["batch"], csc["result"]
    cens = np.asarray(batch.censored[4])
    assert cens.sum() == 2 and cens[-2:].all()  # the zeros late in follow-up
    assert int(res.status[4]) == FitStatus.CONVERGED and np.isfinite(float(res.loss[4]))
    pred_v = np.exp(np.asarray(res.log_volume_pred[4]))
    assert np.all(pred_v[cens] < LIMIT)  # M3 pulls the predictions below the limit
    np.testing.assert_allclose(pred_v[~cens], np.asarray(batch.volume_mm3[4])[~cens],
                               rtol=1e-4)  # the observed part of the curve is exact


def test_lm_matches_scipy_least_squares_from_the_same_start(csc, residual_fn):
    res, data = csc["noisy_result"], subject_data(csc["noisy"], 0)
    z0 = np.asarray(csc["pred"].init_z(data))  # start 0 of the multi-start
    ref = scipy.optimize.least_squares(lambda z: np.asarray(residual_fn(jnp.asarray(z))),
                                       z0, method="lm", xtol=1e-14, ftol=1e-14, gtol=1e-14)
    assert ref.success
    ours = 0.5 * float(jnp.sum(residual_fn(res.all_z[0, 0]) ** 2))
    assert ours == pytest.approx(0.5 * float(np.sum(ref.fun**2)), rel=1e-6)
    np.testing.assert_allclose(res.all_z[0, 0], ref.x, rtol=1e-3, atol=1e-3)


def test_standard_errors_match_finite_difference_jacobian(csc, residual_fn):
    res = csc["noisy_result"]
    z = np.asarray(res.z[0])
    h = 1e-5
    J = np.stack([(np.asarray(residual_fn(jnp.asarray(z + h * e)))
                   - np.asarray(residual_fn(jnp.asarray(z - h * e)))) / (2 * h)
                  for e in np.eye(z.size)], axis=1)
    cov = np.linalg.inv(J.T @ J)  # = sigma^2 (J_logV^T J_logV)^-1, no censoring here
    np.testing.assert_allclose(res.cov_z[0], cov, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(res.se_z[0], np.sqrt(np.diag(cov)), rtol=1e-4)
    # delta method: the transforms are elementwise, so se_theta = |d theta / d z| se_z
    eps = 1e-6
    dtheta = np.array([(SPEC_TR[i](z[i] + eps) - SPEC_TR[i](z[i] - eps)) / (2 * eps)
                       for i in range(z.size)])
    np.testing.assert_allclose(res.se_theta[0], np.abs(dtheta) * np.sqrt(np.diag(cov)),
                               rtol=1e-4)
    assert bool(res.identifiable[0]) and float(res.condition_number[0]) > 1


SPEC_TR = [lambda z: np.exp(z), lambda z: 0.5 + 0.5 / (1 + np.exp(-z)),
           lambda z: 1 / (1 + np.exp(-z)), lambda z: np.exp(z)]


def test_failing_subject_is_isolated_bitwise(csc):
    """A subject whose simulation fails (or whose data are non-finite) gets its own
    status; every other subject's result is bitwise what it was without it."""
    batch, base, pred = csc["batch"], csc["result"], csc["pred"]
    k, others = 2, [0, 1, 3, 4]
    for expected, bad in bad_batches(batch, k).items():
        res = fit_map(pred, bad, num_starts=NUM_STARTS, sigma=NOISE_SD)
        assert int(res.status[k]) == expected
        assert np.all(np.asarray(res.all_status[k]) == expected)
        assert np.all(np.isnan(np.asarray(res.se_z[k])))
        for field in ("z", "loss", "status", "all_z", "all_losses", "all_status",
                      "all_n_steps", "se_z", "theta", "se_theta", "log_volume_pred"):
            np.testing.assert_array_equal(np.asarray(getattr(res, field))[others],
                                          np.asarray(getattr(base, field))[others],
                                          err_msg=field)
    rows = res.to_rows()
    assert rows[k]["status"] == "nonfinite" and rows[0]["status"] == "converged"


@pytest.mark.slow
def test_failing_subject_is_isolated_from_a_batch_without_it(csc):
    """As above, against a fit of the batch from which the bad subject is removed: the
    same statuses and step counts, the same optima to rounding. (A batch of another
    shape is another compiled program, whose reductions may round differently, so
    bitwise equality is only asserted for batches of one shape, above.)"""
    batch, pred = csc["batch"], csc["pred"]
    bad = eqx.tree_at(lambda b: b.day, batch, batch.day.at[2].multiply(1e4))
    res = fit_map(pred, bad, num_starts=NUM_STARTS, sigma=NOISE_SD)
    without = fit_map(pred, batch.subset([0, 1, 3, 4]), num_starts=NUM_STARTS,
                      sigma=NOISE_SD)
    for field in ("status", "all_status", "all_n_steps"):
        np.testing.assert_array_equal(np.asarray(getattr(res, field))[[0, 1, 3, 4]],
                                      np.asarray(getattr(without, field)), err_msg=field)
    for field in ("z", "loss", "all_z", "all_losses"):
        np.testing.assert_allclose(np.asarray(getattr(res, field))[[0, 1, 3, 4]],
                                   np.asarray(getattr(without, field)), rtol=1e-10,
                                   atol=1e-12, err_msg=field)


@pytest.mark.slow
def test_csc_vmap_over_subjects_equals_fitting_one_alone(csc):
    batch, base = csc["batch"], csc["result"]
    alone = fit_map(csc["pred"], batch.subset([1]), num_starts=NUM_STARTS, sigma=NOISE_SD)
    for field in ("z", "loss", "status", "all_z", "all_losses", "se_z"):
        np.testing.assert_allclose(np.asarray(getattr(alone, field))[0],
                                   np.asarray(getattr(base, field))[1], rtol=1e-10,
                                   err_msg=field)


def test_to_rows(csc):
    rows = csc["result"].to_rows()
    assert [r["subject"] for r in rows] == ["m0", "m1", "m2", "m3", "m4"]
    r = rows[0]
    assert r["arm"] == "trastuzumab" and r["status"] == "converged"
    for label, value in zip(FREE, TRUE[0], strict=True):
        assert r[label] == pytest.approx(value, rel=1e-6)
        assert np.isfinite(r[f"{label}_se"])
    assert {"loss", "sigma", "rmse_log_volume", "condition_number", "identifiable"} <= set(r)


@pytest.mark.slow
def test_csc_profile_minimum_is_at_the_map(csc):
    res, batch = csc["noisy_result"], csc["noisy"]
    p_hat = float(res.theta[0, 1])
    grid = np.array([p_hat - 0.02, p_hat, p_hat + 0.02])  # natural scale (self-renewal)
    prof = profile(csc["pred"], batch, res, "self_renewal", grid)
    assert prof.loss.shape == (3, 5)
    assert np.all(np.asarray(prof.status[:, 0]) == FitStatus.CONVERGED)
    assert int(np.argmin(np.asarray(prof.loss[:, 0]))) == 1
    assert float(prof.delta[1, 0]) == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.asarray(prof.delta[:, 0]) > -1e-6)


# ------------------------------------------------- closed-form predictors (fast) ------
GOMPERTZ_TRACES = []


def gompertz(z, s):
    """log V(t) = log V0 e^{-b t} + (a/b)(1 - e^{-b t}); z = (log V0, log a, log b)."""
    GOMPERTZ_TRACES.append(1)  # runs once per trace (see the no-retrace test)
    t = s.day - s.t0_day
    a, b = jnp.exp(z[1]), jnp.exp(z[2])
    return z[0] * jnp.exp(-b * t) + a / b * -jnp.expm1(-b * t), jnp.asarray(0)


def gompertz_init(s):
    return jnp.array([jnp.log(s.volume_mm3[0]), jnp.log(0.3), jnp.log(0.05)])


class _Sub(eqx.Module):
    day: jax.Array
    t0_day: jax.Array

    def __init__(self, day):
        self.day = jnp.asarray(day)
        self.t0_day = self.day[0]


G_TRUE = np.array([[np.log(50.0), np.log(0.4), np.log(0.06)],
                   [np.log(80.0), np.log(0.3), np.log(0.04)],
                   [np.log(30.0), np.log(0.5), np.log(0.08)]])
G_DAYS = np.tile(np.linspace(0.0, 30.0, 8), (3, 1))
GOMPERTZ = FunctionPredictor(gompertz, 3, init=gompertz_init)
OPTAX = optax.adam(1e-3)  # one object: a new optimiser object would recompile


@pytest.fixture(scope="module")
def g_batch(tmp_path_factory):
    """Three Gompertz curves with 10% log-normal noise (fixed seed)."""
    log_v = np.array([np.asarray(gompertz(jnp.asarray(z), _Sub(d))[0])
                      for z, d in zip(G_TRUE, G_DAYS, strict=True)])
    vols = np.exp(log_v + 0.1 * np.random.default_rng(1).standard_normal(log_v.shape))
    return write_batch(tmp_path_factory.mktemp("g") / "g.csv", vols, G_DAYS, limit=1.0)


@pytest.fixture(scope="module")
def g_fit(g_batch):
    return fit_map(GOMPERTZ, g_batch, num_starts=2)


def test_generic_predictor_recovers_and_estimates_sigma(g_batch):
    res = fit_map(GOMPERTZ, g_batch, num_starts=2, sigma="estimate")
    assert np.all(np.asarray(res.status) == FitStatus.CONVERGED)
    assert res.labels == ("z[0]", "z[1]", "z[2]")
    # sigma is the MLE: the RMS of the log residuals (no censoring)
    np.testing.assert_allclose(res.sigma, res.rmse_log_volume, rtol=1e-10)
    assert np.all(np.abs(np.asarray(res.z) - G_TRUE) < 4 * np.asarray(res.se_z))
    # optax on the full -log-likelihood (sigma free) reaches the same optimum
    opt = fit_map(GOMPERTZ, g_batch, num_starts=1, method="optax", sigma="estimate",
                  max_steps=3000, optimiser=OPTAX, z_init=res.z, start_scale=0.0)
    np.testing.assert_allclose(opt.loss, res.loss, rtol=1e-4)
    np.testing.assert_allclose(opt.sigma, res.sigma, rtol=1e-2)


def test_vmap_over_subjects_equals_fitting_one_alone(g_batch, g_fit):
    alone = fit_map(GOMPERTZ, g_batch.subset([1]), num_starts=2)
    for field in ("z", "loss", "status", "all_z", "all_losses", "se_z", "theta"):
        np.testing.assert_allclose(np.asarray(getattr(alone, field))[0],
                                   np.asarray(getattr(g_fit, field))[1], rtol=1e-10,
                                   err_msg=field)


def test_censoring_with_estimated_sigma_refits(tmp_path):
    # a shrinking tumour, log V = log 40 - 0.1 t: from day ~14 below the limit (zeros)
    days = np.linspace(0.0, 30.0, 10)[None]
    rng = np.random.default_rng(2)
    vols = 40.0 * np.exp(-0.1 * days + 0.05 * rng.standard_normal(days.shape))
    batch = write_batch(tmp_path / "cr.csv", vols, days, limit=10.0)
    line = FunctionPredictor(lambda z_, s: (z_[0] + z_[1] * (s.day - s.t0_day),
                                            jnp.asarray(0)),
                             2, init=lambda s: jnp.array([jnp.log(s.volume_mm3[0]), 0.0]))
    assert int(np.sum(batch.censored)) >= 4
    res = fit_map(line, batch, num_starts=2, sigma="estimate")
    assert int(res.status[0]) == FitStatus.CONVERGED
    assert 0.01 < float(res.sigma[0]) < 0.2
    assert float(res.z[0, 1]) == pytest.approx(-0.1, abs=0.02)
    log_pred = np.asarray(res.log_volume_pred[0])
    assert np.all(log_pred[np.asarray(batch.censored[0])] < np.log(10.0))
    # at the estimate, sigma maximises the likelihood for the fitted predictions
    data = subject_data(batch, 0)

    def nll(s):
        return -log_likelihood_from_log(log_pred, jnp.log(data.volume_mm3), data.mask,
                                        data.censored, s)[1]

    s_hat = float(res.sigma[0])
    assert float(nll(s_hat)) <= min(float(nll(s_hat * 1.01)), float(nll(s_hat / 1.01)))


def _wave(z, s):
    """A multimodal fit: log V = z0 + sin(z1 t)."""
    return z[0] + jnp.sin(z[1] * (s.day - s.t0_day)), jnp.asarray(0)


def test_multistart_finds_the_global_optimum(tmp_path):
    days = np.linspace(0.0, 10.0, 25)[None]
    vols = np.exp(np.log(50.0) + np.sin(2.0 * days))
    batch = write_batch(tmp_path / "w.csv", vols, days)
    pred = FunctionPredictor(_wave, 2, init=lambda s: jnp.array([jnp.log(50.0), 0.6]))
    res = fit_map(pred, batch, num_starts=16, start_scale=np.array([0.0, 2.0]))
    losses, status = np.asarray(res.all_losses[0]), np.asarray(res.all_status[0])
    assert losses[0] > float(res.loss[0]) + 1.0  # start 0 ends in a local optimum
    assert int(res.best_start[0]) != 0
    assert float(res.loss[0]) == losses[status <= FitStatus.MAX_STEPS].min()
    assert float(res.z[0, 1]) == pytest.approx(2.0, rel=1e-8)


def test_status_codes_per_subject_and_max_steps(g_batch):
    def half_broken(z, s):  # the predictor fails for a large growth rate
        log_v, _ = gompertz(z, s)
        return log_v, jnp.where(z[1] > jnp.log(0.6), 2, 0)

    pred = FunctionPredictor(half_broken, 3, init=gompertz_init)
    z_init = G_TRUE.copy()
    z_init[1, 1] = np.log(5.0)  # subject 1 starts where the predictor fails
    res = fit_map(pred, g_batch, num_starts=1, z_init=z_init)
    assert list(np.asarray(res.status)) == [FitStatus.CONVERGED, FitStatus.SOLVER_FAILURE,
                                            FitStatus.CONVERGED]
    assert np.all(np.isnan(np.asarray(res.se_z[1])))
    assert not bool(res.identifiable[1])
    capped = fit_map(GOMPERTZ, g_batch, num_starts=1, max_steps=1)
    assert np.all(np.asarray(capped.status) == FitStatus.MAX_STEPS)
    with pytest.raises(RuntimeError, match="m0: the optimiser reached max_steps"):
        fit_map(GOMPERTZ, g_batch, num_starts=1, max_steps=1, throw=True)


def test_profile_minimum_is_at_the_map(g_batch, g_fit):
    offsets = np.array([-0.2, -0.05, 0.0, 0.05, 0.2])
    for i in range(3):  # the grid is in z for an int spec: one grid per subject
        grid = float(g_fit.z[i, 1]) + offsets
        prof = profile(GOMPERTZ, g_batch, g_fit, "z[1]", grid)
        assert prof.loss.shape == (5, 3)
        assert np.all(np.asarray(prof.status[:, i]) == FitStatus.CONVERGED)
        assert int(np.argmin(np.asarray(prof.loss[:, i]))) == 2
        assert float(prof.delta[2, i]) == pytest.approx(0.0, abs=1e-8)
        assert np.all(np.diff(np.asarray(prof.loss[2:, i])) > 0)
        assert np.all(np.diff(np.asarray(prof.loss[:3, i])) < 0)
        np.testing.assert_allclose(prof.z[2, i], g_fit.z[i], atol=1e-6)


def test_no_retrace_when_only_values_change(g_batch, g_fit):
    n = len(GOMPERTZ_TRACES)
    shifted = eqx.tree_at(lambda b: b.volume_mm3, g_batch, g_batch.volume_mm3 * 1.1)
    res = fit_map(GOMPERTZ, shifted, num_starts=2, sigma=0.3, z_init=G_TRUE,
                  start_scale=0.5, key=jax.random.key(3))
    assert len(GOMPERTZ_TRACES) == n  # new data, sigma, starts: no new trace
    np.testing.assert_allclose(res.z[:, 0], g_fit.z[:, 0] + np.log(1.1), atol=1e-6)


def test_plain_function_with_a_spec(g_batch, g_fit):
    res = fit_map(gompertz, g_batch, spec=3, num_starts=1, z_init=g_fit.z)
    np.testing.assert_allclose(res.z, g_fit.z, atol=1e-6)
    with pytest.raises(TypeError, match="needs `spec`"):
        fit_map(gompertz, g_batch)
    with pytest.raises(TypeError, match="only for plain functions"):
        fit_map(GOMPERTZ, g_batch, spec=3)


def test_bad_options_are_refused(g_batch, g_fit):
    for kwargs, match in [(dict(method="bfgs"), "method"), (dict(num_starts=0), "num_starts"),
                          (dict(sigma="fixed"), "sigma"), (dict(sigma=-1.0), "sigma"),
                          (dict(z_init=np.zeros(4)), "z_init"),
                          (dict(start_scale=-1.0), "start_scale")]:
        with pytest.raises(ValueError, match=match):
            fit_map(GOMPERTZ, g_batch, **kwargs)
    with pytest.raises(ValueError, match="unknown parameter"):
        profile(GOMPERTZ, g_batch, g_fit, "z[7]", [0.0])
    with pytest.raises(ValueError, match="not fitted on this batch"):
        profile(GOMPERTZ, g_batch.subset([0]), g_fit, "z[1]", [0.0])


def test_eager_trust_region_and_stall_stop_a_boundary_optimum(g_batch):
    def slowed(z, s):  # a slowing the data do not show: its optimum is at z[3] -> -inf
        log_v, status = gompertz(z[:3], s)
        return log_v - 0.5 * jax.nn.sigmoid(z[3]) * (s.day - s.t0_day) / 30.0, status

    pred = FunctionPredictor(slowed, 4, init=lambda s: jnp.append(gompertz_init(s), 0.0))
    plain = fit_map(pred, g_batch, num_starts=1, trust_region="damping")  # z[3] crawls
    fast = fit_map(pred, g_batch, num_starts=1, trust_region="eager", stall_rtol=1e-8)
    assert np.all(np.asarray(fast.status) == FitStatus.CONVERGED)
    assert int(np.sum(fast.n_steps)) < int(np.sum(plain.n_steps))
    assert np.all(np.asarray(fast.loss) <= np.asarray(plain.loss) + 1e-6 * np.abs(plain.loss))
    tuned = fit_map(pred, g_batch, num_starts=1, trust_region=(0.5, 3.0, 1e-4, 0.25),
                    stall_rtol=1e-8, stall_steps=3)
    np.testing.assert_array_equal(tuned.n_steps, fast.n_steps)  # "eager" is that tuple
    for kwargs, match in [(dict(trust_region="wide"), "trust_region"),
                          (dict(trust_region=(0.5, 3.0)), "trust_region"),
                          (dict(stall_rtol=-1.0), "stall_rtol"),
                          (dict(stall_rtol=1e-8, stall_steps=0), "stall_steps"),
                          (dict(method="optax", stall_rtol=1e-8), "method='lm'")]:
        with pytest.raises(ValueError, match=match):
            fit_map(pred, g_batch, num_starts=1, **kwargs)


def test_sobol_starts_are_fixed_and_start_zero_is_the_reference():
    u = sobol_unit(8, 3)
    assert u.shape == (8, 3) and np.all(u[0] == 0.5)
    np.testing.assert_array_equal(u, sobol_unit(8, 3))
    assert np.all((u >= 0) & (u < 1)) and len(np.unique(u[:, 0])) == 8
    assert not np.array_equal(u, sobol_unit(8, 3, seed=1))
