"""Observation model: log-normal volumes with M3 censoring, against scipy.stats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import fitcsc  # noqa: F401  (float64)
from fitcsc._fit.likelihood import log_likelihood, residuals

PRED = np.array([[120.0, 80.0, 3.0, 0.5, 7.0], [50.0, 60.0, 70.0, 80.0, 90.0]])
OBS = np.array([[100.0, 95.0, 1.0, 1.0, 1.0], [55.0, 1.0, 65.0, 1.0, 1.0]])
MASK = np.array([[True, True, True, True, False], [True, True, True, False, False]])
CENS = np.array([[False, False, True, True, False], [False, True, False, False, False]])
SIGMA = 0.3


def _reference(pred, obs, mask, cens, sigma):
    out = np.zeros_like(pred)
    for idx in np.ndindex(pred.shape):
        if not mask[idx]:
            continue
        if cens[idx]:
            out[idx] = stats.norm.logcdf(np.log(obs[idx]), np.log(pred[idx]), sigma)
        else:  # density of V: density of log V times |d log V / d V| = 1/V
            out[idx] = stats.norm.logpdf(np.log(obs[idx]), np.log(pred[idx]), sigma) - np.log(
                obs[idx])
    return out


def test_log_likelihood_matches_scipy():
    per_obs, total = log_likelihood(PRED, OBS, MASK, CENS, SIGMA)
    ref = _reference(PRED, OBS, MASK, CENS, SIGMA)
    np.testing.assert_allclose(per_obs, ref, rtol=1e-12, atol=1e-14)
    assert float(total) == pytest.approx(ref.sum(), rel=1e-12)
    assert np.all(np.isfinite(per_obs))


def test_lognormal_density_matches_scipy_lognorm():
    # the observed-point density is scipy's lognorm (s = sigma, scale = V_pred)
    per_obs, _ = log_likelihood(PRED[1, :1], OBS[1, :1], [True], [False], SIGMA)
    ref = stats.lognorm.logpdf(OBS[1, 0], s=SIGMA, scale=PRED[1, 0])
    assert float(per_obs[0]) == pytest.approx(ref, rel=1e-12)


def test_censored_far_above_and_below_the_limit():
    # a prediction far below the limit: P -> 1 (log 0); far above: the normal tail, finite
    pred = np.array([1e-30, 1e30])
    per_obs, _ = log_likelihood(pred, [1.0, 1.0], [True, True], [True, True], 0.2)
    ref = stats.norm.logcdf(np.log(1.0), np.log(pred), 0.2)
    np.testing.assert_allclose(per_obs, ref, rtol=1e-10)
    r = residuals(pred, [1.0, 1.0], [True, True], [True, True], 0.2)
    np.testing.assert_allclose(0.5 * np.asarray(r) ** 2, -ref, rtol=1e-10, atol=1e-300)
    g = jax.grad(lambda p: jnp.sum(residuals(p, jnp.ones(2), jnp.ones(2, bool),
                                             jnp.ones(2, bool), 0.2) ** 2))(jnp.asarray(pred))
    assert np.all(np.isfinite(g))


def test_half_sum_of_squares_is_negative_log_likelihood_plus_constant():
    r = residuals(PRED, OBS, MASK, CENS, SIGMA)
    _, total = log_likelihood(PRED, OBS, MASK, CENS, SIGMA)
    obs = MASK & ~CENS
    const = np.sum(np.where(obs, np.log(SIGMA) + 0.5 * np.log(2 * np.pi) + np.log(OBS), 0.0))
    assert 0.5 * float(jnp.sum(r**2)) == pytest.approx(-float(total) - const, rel=1e-12)
    # observed points: the standardised log residual; censored: >= 0
    np.testing.assert_allclose(np.asarray(r)[obs], (np.log(OBS) - np.log(PRED))[obs] / SIGMA,
                               rtol=1e-12)
    assert np.all(np.asarray(r)[MASK & CENS] >= 0)


def test_padding_contributes_exactly_zero_even_when_garbage():
    pred = PRED.copy()
    obs = OBS.copy()
    pred[~MASK] = np.nan  # a failed solve past the end of the data
    obs[~MASK] = 0.0
    per_obs, total = log_likelihood(pred, obs, MASK, CENS, SIGMA)
    assert np.all(np.asarray(per_obs)[~MASK] == 0.0)
    _, total_clean = log_likelihood(PRED, OBS, MASK, CENS, SIGMA)
    assert float(total) == float(total_clean)
    r = residuals(pred, obs, MASK, CENS, SIGMA)
    assert np.all(np.asarray(r)[~MASK] == 0.0)

    def loss(p):
        return jnp.sum(residuals(p, obs, MASK, CENS, SIGMA) ** 2) - log_likelihood(
            p, obs, MASK, CENS, SIGMA)[1]

    g = jax.grad(loss)(jnp.asarray(pred))
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~MASK] == 0.0)


@pytest.mark.parametrize("which", ["loglik", "residuals"])
def test_gradients_match_finite_differences(which):
    def f(log_pred, sigma):
        pred = jnp.exp(log_pred)
        if which == "loglik":
            return log_likelihood(pred, OBS, MASK, CENS, sigma)[1]
        return jnp.sum(jnp.sin(residuals(pred, OBS, MASK, CENS, sigma)))  # all entries

    x = jnp.log(jnp.asarray(PRED))
    g_x, g_s = jax.grad(f, argnums=(0, 1))(x, SIGMA)
    h = 1e-6
    for idx in np.ndindex(PRED.shape):
        e = np.zeros(PRED.shape)
        e[idx] = h
        fd = (f(x + e, SIGMA) - f(x - e, SIGMA)) / (2 * h)
        assert float(g_x[idx]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
    fd_s = (f(x, SIGMA + h) - f(x, SIGMA - h)) / (2 * h)
    assert float(g_s) == pytest.approx(float(fd_s), rel=1e-6)


def test_residuals_forward_mode_jacobian_is_finite_for_censored():
    # LM uses forward mode; the censored residual sqrt(-2 log Phi) must stay differentiable
    log_pred = jnp.linspace(-10.0, 10.0, 41)
    J = jax.jacfwd(lambda lp: residuals(jnp.exp(lp), jnp.ones(41), jnp.ones(41, bool),
                                        jnp.ones(41, bool), 0.2))(log_pred)
    assert np.all(np.isfinite(J))
    assert np.all(np.diag(J) >= 0)  # a larger prediction is a worse fit to "below the limit"
