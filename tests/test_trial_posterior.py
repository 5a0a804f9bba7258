"""`fitcsc.trials.posterior_draws` (psis, laplace, nuts, chees) against a posterior known
by 2-D quadrature, and `posterior_flag` on deliberately bad runs.

The objective is a residual function of two parameters, like the trial model's
(`fitcsc._trial.fit.Objective`): ``-0.5 |r(z)|^2`` is the log posterior. Here

    r = ((z0 - 0.5) / 0.8, (z1 - 0.3 z0^2) / 0.5)

a mild banana: z0 ~ N(0.5, 0.8) exactly, z1 | z0 ~ N(0.3 z0^2, 0.5), so z1's marginal
is skewed and its mean (0.3 E[z0^2] = 0.267) is far from the MAP's 0.075. The
Laplace approximation gets z0 right and z1 wrong; PSIS, NUTS and ChEES must get both.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitcsc.trials import TrialPosterior, posterior_draws, posterior_flag

Q = (0.05, 0.5, 0.95)


def banana(z, args=None, *, thin=0.5):
    return jnp.stack([(z[0] - 0.5) / 0.8, (z[1] - 0.3 * z[0] ** 2) / thin])


def _fit(objective=banana):
    """The MAP and the Gauss-Newton covariance ``(J^T J)^-1``, as `fit_trials` gives."""
    z = np.array([0.5, 0.3 * 0.25])
    J = np.asarray(jax.jacfwd(objective)(jnp.asarray(z)))
    return types.SimpleNamespace(z=z, cov=np.linalg.inv(J.T @ J))


@pytest.fixture(scope="module")
def exact():
    """Marginal means, sds, quantiles and densities at the quantiles, by quadrature."""
    g0 = np.linspace(-4.0, 5.0, 901)
    g1 = np.linspace(-3.0, 9.0, 1201)
    Z0, Z1 = np.meshgrid(g0, g1, indexing="ij")
    r = np.asarray(jax.vmap(banana)(jnp.stack([Z0.ravel(), Z1.ravel()], axis=1)))
    p = np.exp(-0.5 * np.sum(r ** 2, axis=1)).reshape(Z0.shape)
    p /= p.sum()
    out = []
    for axis, grid in ((1, g0), (0, g1)):
        m = p.sum(axis=axis)
        mean = float(np.sum(m * grid))
        sd = float(np.sqrt(np.sum(m * (grid - mean) ** 2)))
        cdf = np.cumsum(m) - 0.5 * m
        q = np.interp(Q, cdf, grid)
        dens = np.interp(q, grid, m / (grid[1] - grid[0]))
        out.append({"mean": mean, "sd": sd, "q": q, "dens": dens})
    assert abs(out[0]["mean"] - 0.5) < 1e-6 and abs(out[0]["sd"] - 0.8) < 1e-3
    assert abs(out[1]["mean"] - 0.3 * (0.25 + 0.64)) < 1e-3
    return out


def _weighted(x, w):
    mean = float(np.sum(w * x))
    sd = float(np.sqrt(np.sum(w * (x - mean) ** 2)))
    order = np.argsort(x)
    cdf = np.cumsum(w[order]) - 0.5 * w[order]
    return mean, sd, np.interp(Q, cdf, x[order])


def _check(post, exact, ess, dims=(0, 1), k=4.5):
    """Means, sds and quantiles within ``k`` Monte-Carlo standard errors (ESS ``ess``)."""
    assert np.isclose(np.sum(post.weights), 1.0)
    for i in dims:
        e = exact[i]
        mean, sd, q = _weighted(post.draws[:, i], post.weights)
        assert abs(mean - e["mean"]) < k * e["sd"] / np.sqrt(ess), (i, mean, e["mean"])
        # sd of the sample sd ~ sd / sqrt(2 ess) for a near-Gaussian; skew: * 1.5
        assert abs(sd - e["sd"]) < k * 1.5 * e["sd"] / np.sqrt(2 * ess), (i, sd, e["sd"])
        se_q = np.sqrt(np.asarray(Q) * (1 - np.asarray(Q)) / ess) / e["dens"]
        assert np.all(np.abs(q - e["q"]) < k * se_q + 0.01), (i, q, e["q"])


@pytest.mark.parametrize("method, chains", [("nuts", 4), ("chees", 8)])
def test_mcmc_matches_quadrature(method, chains, exact):
    # ChEES adapts its step size across chains: with 4 it kept 3-10 divergent
    # transitions per 4000 draws on this ridge (seeds 1-4), with 8 none
    post = posterior_draws(banana, _fit(), 4000, jax.random.PRNGKey(1), method=method,
                           num_chains=chains, num_warmup=500)
    assert isinstance(post, TrialPosterior) and post.method == method
    assert post.draws.shape == (4000, 2)
    assert np.allclose(post.weights, 1 / 4000)
    d = post.diagnostics
    assert d["rhat_max"] <= 1.01 and d["ess_bulk_min"] > 400, d
    assert d["n_divergent"] == 0 and posterior_flag(post) is None, d
    _check(post, exact, min(d["ess_bulk_min"], d["ess_tail_min"]))


def test_psis_matches_quadrature_and_laplace_only_the_gaussian_margin(exact):
    post = posterior_draws(banana, _fit(), 4000, jax.random.PRNGKey(2), method="psis")
    assert post.method == "psis" and post.k_hat < 0.7
    assert posterior_flag(post) is None
    ess = 1.0 / np.sum(post.weights ** 2)  # Kish's effective sample size of the weights
    _check(post, exact, ess)
    lap = posterior_draws(banana, _fit(), 4000, jax.random.PRNGKey(2), method="laplace")
    assert np.allclose(lap.weights, 1 / 4000) and lap.diagnostics == {}
    assert posterior_flag(lap) is None  # nothing to check it with
    _check(lap, exact, 4000, dims=(0,))  # z0's margin is Gaussian: Laplace is exact there
    # z1's is skewed: the Laplace mean stays at the MAP's 0.075, far from 0.267
    assert abs(np.mean(lap.draws[:, 1]) - exact[1]["mean"]) > 0.15
    draws, weights, k_hat = post  # the old return value still unpacks
    assert draws is post.draws and k_hat == post.k_hat


def test_flag_for_a_proposal_far_from_the_posterior():
    fit = _fit()
    fit.cov = fit.cov * 0.02  # a proposal 7 times too narrow: heavy-tailed weights
    post = posterior_draws(banana, fit, 2000, jax.random.PRNGKey(3), method="psis")
    assert post.k_hat > 0.7
    flag = posterior_flag(post)
    assert flag and f"k_hat {post.k_hat:.2f} > 0.7" in flag
    assert posterior_flag(post.record()) == flag == post.record()["flag"]


def test_flag_for_unconverged_chains():
    """A thin banana with almost no warm-up: the step size is never adapted to the ridge
    and the chains, started far apart, have not met: divergences and a large R-hat."""
    def thin(z, args=None):
        return banana(z, thin=0.01)

    post = posterior_draws(thin, _fit(thin), 200, jax.random.PRNGKey(4), method="nuts",
                           num_chains=4, num_warmup=5, init_scale=5.0, max_tree_depth=3)
    d = post.diagnostics
    assert d["rhat_max"] > 1.01 or d["n_divergent"] > 0, d
    flag = posterior_flag(post)
    assert flag is not None and flag.startswith("posterior: ")
    rec = post.record()
    assert rec["sampler"] == "nuts" and rec["flag"] == flag
    assert posterior_flag({"rhat_max": 1.002, "n_divergent": 0}) is None
    assert "R-hat 1.050 > 1.01" in posterior_flag({"rhat_max": 1.05, "n_divergent": 0})
    assert "3 divergent" in posterior_flag({"rhat_max": 1.0, "n_divergent": 3})
    assert "R-hat NaN" in posterior_flag({"rhat_max": None, "n_divergent": 0})


def test_linear_is_the_default_laplace_draws_pushed_through_the_delta_method():
    """The default: Laplace draws (the same as "laplace" for a key), uniform weights, no
    diagnostic; `draw_values` with `linearise_at` gives the delta method: exact for a
    prediction that is linear on its link scale, first order otherwise."""
    from fitcsc._trial.fit import draw_values
    from fitcsc._trial.posterior import linearise_at

    fit = _fit()
    post = posterior_draws(banana, fit, 2000, jax.random.PRNGKey(5))
    lap = posterior_draws(banana, fit, 2000, jax.random.PRNGKey(5), method="laplace")
    assert post.method == "linear" and post.diagnostics == {}
    assert np.array_equal(post.draws, lap.draws) and posterior_flag(post) is None
    assert linearise_at("psis", fit.z) is None
    z0 = linearise_at(post.method, fit.z)

    def logistic(z):  # linear on the logit scale: the delta method is exact
        return jax.nn.sigmoid(jnp.stack([0.5 + z[0] - 2.0 * z[1], -z[0]]))
    exact = draw_values(logistic, post.draws)
    assert np.allclose(draw_values(logistic, post.draws, linearise_at=z0), exact,
                       rtol=1e-10, atol=1e-12)

    def curved(z):  # a ratio: first order on the log scale, exp(z0^2) curvature
        return {"hr": jnp.exp(z[0] ** 2 + z[1]), "status": jnp.int32(0)}
    lin = draw_values(curved, post.draws, linearise_at=z0, link={"hr": "log",
                                                                 "status": "map"})
    slope = np.array([2.0 * z0[0], 1.0])  # d log hr / dz at z0
    want = np.exp(z0[0] ** 2 + z0[1] + (post.draws - z0) @ slope)
    assert np.allclose(lin["hr"], want, rtol=1e-10) and lin["status"].shape == (2000,)
    with pytest.raises(ValueError, match="link must be one of"):
        draw_values(logistic, post.draws[:3], linearise_at=z0, link="probit")


def test_unknown_method_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        posterior_draws(banana, _fit(), 10, jax.random.PRNGKey(0), method="hmc")


def test_forward_and_reverse_gradients_agree():
    from fitcsc._trial.posterior import log_density

    z = jnp.asarray([0.3, -0.7])
    g = [jax.grad(log_density(banana, gradient=m))(z) for m in ("reverse", "forward")]
    assert np.allclose(g[0], g[1], rtol=1e-12)
    assert np.isclose(log_density(banana)(z), -0.5 * np.sum(np.asarray(banana(z)) ** 2))
    with pytest.raises(ValueError, match="gradient must be"):
        log_density(banana, gradient="numeric")
