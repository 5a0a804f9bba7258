"""Clinical endpoints: pCR, cure, DFS, virtual patients, endpoint likelihoods."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import fitcsc
from fitcsc._trial.endpoints import (
    arm_endpoints,
    binomial_log_likelihood,
    dfs_curve,
    draw_eta,
    gauss_hermite_eta,
    individual_params,
    lineage_survival,
    log_hr_log_likelihood,
    patient_endpoints,
)

MODEL = fitcsc.ModelConfig(drugs=("paclitaxel",), species="human")


def _static_params(**kw):
    base = dict(csc_division_rate=0.0, bulk_division_rate=0.0, bulk_death_rate=0.0,
                initial_volume_mm3=1e-5, initial_csc_fraction=0.2)  # 10 cells, 2 CSCs
    return fitcsc.default_params(MODEL, **{**base, **kw})


def test_pcr_probability_is_poisson_zero_class():
    p = _static_params()
    ep = patient_endpoints(MODEL, p, None, 30.0)
    assert float(ep.invasive_cells) == pytest.approx(10.0, rel=1e-9)
    assert float(ep.p_pcr) == pytest.approx(math.exp(-10.0), rel=1e-9)
    assert float(ep.residual_csc) == pytest.approx(2.0, rel=1e-9)


def test_lineage_survival_and_cure_match_branching_process_monte_carlo():
    # CSC birth b = v p, death d = v (1 - p): pi = 1 - d/b = (2p - 1)/p
    p = _static_params(csc_division_rate=1.0, self_renewal=0.7, initial_csc_fraction=0.3)
    pi, lam = lineage_survival(p)
    assert float(pi) == pytest.approx(0.4 / 0.7, rel=1e-12)
    assert float(lam) == pytest.approx(0.4, rel=1e-12)
    rng = np.random.default_rng(0)
    n = 20000
    counts = np.ones(n, dtype=np.int64)
    alive = np.ones(n, bool)
    for _ in range(1500):  # embedded jump chain: +1 w.p. 0.7, -1 w.p. 0.3
        step = np.where(rng.random(n) < 0.7, 1, -1)
        counts = np.where(alive & (counts < 200), counts + step, counts)
        alive = counts > 0
    survive = np.mean(counts >= 200)
    assert survive == pytest.approx(float(pi), abs=4 * math.sqrt(0.25 / n))
    # cure from a Poisson number of residual CSCs (mean S): exp(-pi S)
    ep = patient_endpoints(MODEL, _static_params(self_renewal=0.7, csc_division_rate=1e-12,
                                                 csc_death_rate=0.0), None, 1.0)
    s = float(ep.residual_csc)
    k = rng.poisson(s, size=200000)
    mc = np.mean((1 - float(pi)) ** k)
    pi_static, _ = lineage_survival(_static_params(self_renewal=0.7, csc_division_rate=1e-12))
    assert float(pi_static) == pytest.approx(float(pi), rel=1e-6)
    assert float(ep.p_cure) == pytest.approx(mc, rel=0.01)


def test_subcritical_lineage_always_cured():
    p = _static_params(self_renewal=0.45, csc_division_rate=0.3)
    ep = patient_endpoints(MODEL, p, None, 10.0)
    assert float(ep.p_cure) == 1.0 and math.isinf(float(ep.recurrence_day))
    dfs = dfs_curve(jax.tree_util.tree_map(lambda x: x[None], ep), [0.0, 1000.0])
    np.testing.assert_allclose(dfs, 1.0)


def test_recurrence_time_regrowth():
    # pi S_res lineages of ~1/pi cells each grow at lambda until detection
    p = _static_params(csc_division_rate=1e-12, self_renewal=0.8, csc_death_rate=0.0)
    ep = patient_endpoints(MODEL, p, None, 5.0, detection_cells=1e6)
    pi, lam = lineage_survival(p)
    expected = 5.0 + math.log(1e6 / float(ep.residual_csc)) / float(lam)
    assert float(ep.recurrence_day) == pytest.approx(expected, rel=1e-9)


def test_gauss_hermite_moments():
    eta, w = gauss_hermite_eta(8, 2)
    assert eta.shape == (64, 2) and float(jnp.sum(w)) == pytest.approx(1.0)
    val = jnp.sum(w * jnp.exp(0.3 * eta[:, 0] - 0.2 * eta[:, 1]))
    assert float(val) == pytest.approx(math.exp(0.5 * (0.09 + 0.04)), rel=1e-10)


def test_individual_params_lognormal_logit_and_hr_covariate():
    p = fitcsc.default_params(MODEL, initial_csc_fraction=0.05)
    q = individual_params(p, {"csc_division_rate": 0.5, "initial_csc_fraction": 2.0},
                          jnp.array([1.0, 10.0]), hr_positive=True,
                          hr_effect={"bulk_division_rate": math.log(0.5)})
    assert float(q.csc_division_rate) == pytest.approx(0.5 * math.exp(0.5))
    assert 0.999 < float(q.initial_csc_fraction) < 1.0  # logit scale keeps it a fraction
    assert float(q.bulk_division_rate) == pytest.approx(0.5 * float(p.bulk_division_rate))


def test_arm_pcr_rate_is_smooth_and_differentiable():
    model = fitcsc.ModelConfig(drugs=("paclitaxel",), species="human")
    sched = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 80.0, "mg/m2", n_doses=12,
                                            interval_day=7.0, infusion_hours=1.0),)
                           ).to_schedule(model.drugs)
    eta = draw_eta(jax.random.PRNGKey(0), 64, 2)
    omega = {"initial_volume_mm3": 1.0, "kill_rate": 0.3}

    def rate(log_kill):
        params = fitcsc.default_params(model, initial_volume_mm3=1.0, csc_division_rate=0.05,
                                       bulk_division_rate=0.05, bulk_death_rate=0.02,
                                       kill_rate=jnp.exp(log_kill), csc_sparing=1.0)
        return arm_endpoints(model, params, omega, eta, sched, 105.0)[0]

    r0 = float(rate(jnp.log(3.0)))
    assert 0.05 < r0 < 0.95  # the arm is between no and full response
    g = jax.grad(rate)(jnp.log(3.0))
    g_fd = (rate(jnp.log(3.0) + 1e-5) - rate(jnp.log(3.0) - 1e-5)) / 2e-5
    assert float(g) == pytest.approx(float(g_fd), rel=1e-4)
    assert float(g) > 0


def test_endpoint_likelihoods_match_scipy():
    assert float(binomial_log_likelihood(0.3, 7, 20)) == pytest.approx(
        stats.binom.logpmf(7, 20, 0.3) - math.log(math.comb(20, 7)), rel=1e-12)
    se = (math.log(1.25) - math.log(0.76)) / (2 * 1.959964)
    assert float(log_hr_log_likelihood(math.log(0.9), math.log(0.98), se)) == pytest.approx(
        stats.norm.logpdf(math.log(0.9), math.log(0.98), se), rel=1e-12)
