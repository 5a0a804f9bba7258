"""The simulator in limits with closed-form solutions."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import fitcsc

TS = jnp.array([0.0, 1.0, 2.5, 7.0, 14.0, 30.0])
TIGHT = dict(rtol=1e-11, atol=1e-9)


def _sim(model, params, schedule=None, ts=TS, **kw):
    sol = fitcsc.simulate(model, params, schedule, ts, **{**TIGHT, **kw})
    assert int(sol.status) == fitcsc.Status.SUCCESS
    return sol


def test_exponential_growth_pure_stem():
    # p = 1: all CSC divisions self-renew -> S' = v_S S, no bulk
    m = fitcsc.ModelConfig()
    p = fitcsc.default_params(m, self_renewal=1.0, csc_division_rate=0.3,
                              initial_csc_fraction=1.0, initial_volume_mm3=50.0)
    sol = _sim(m, p)
    np.testing.assert_allclose(sol.volume_mm3, 50.0 * np.exp(0.3 * np.asarray(TS)), rtol=1e-9)
    np.testing.assert_allclose(sol.csc_fraction, 1.0, rtol=1e-12)


def test_exponential_bulk_only():
    m = fitcsc.ModelConfig()
    p = fitcsc.default_params(m, initial_csc_fraction=0.0, bulk_division_rate=0.2,
                              bulk_death_rate=0.05)
    sol = _sim(m, p)
    np.testing.assert_allclose(sol.volume_mm3, 100.0 * np.exp(0.15 * np.asarray(TS)),
                               rtol=1e-9)


def test_sd_linear_system_matches_matrix_exponential():
    # no crowding, no drug: y' = A y, y(t) = expm(A t) y0
    from scipy.linalg import expm

    m = fitcsc.ModelConfig(plasticity="constant")
    p = fitcsc.default_params(m, plasticity_rate=0.03, csc_death_rate=0.01)
    vS, pp, dS, vD, dD, w = 0.5, 0.6, 0.01, 0.25, 0.1, 0.03
    A = np.array([[vS * (2 * pp - 1) - dS, w], [2 * vS * (1 - pp), vD - dD - w]])
    y0 = np.array([5e6, 95e6])
    sol = _sim(m, p)
    ref = np.stack([expm(A * t) @ y0 for t in np.asarray(TS)])
    np.testing.assert_allclose(sol.states, ref, rtol=1e-9)


def test_logistic_growth():
    m = fitcsc.ModelConfig(crowding="logistic")
    K, r, N0 = 2e9, 0.4, 1e8
    p = fitcsc.default_params(m, self_renewal=1.0, csc_division_rate=r,
                              carrying_capacity_cells=K, initial_csc_fraction=1.0,
                              initial_volume_mm3=N0 / 1e6)
    t = np.asarray(TS)
    expected = K / (1 + (K / N0 - 1) * np.exp(-r * t))
    np.testing.assert_allclose(_sim(m, p).total_cells, expected, rtol=1e-9)


def test_gompertz_growth():
    m = fitcsc.ModelConfig(crowding="gompertz")
    K, v, N0 = 5e9, 0.1, 1e8
    p = fitcsc.default_params(m, self_renewal=1.0, csc_division_rate=v,
                              carrying_capacity_cells=K, initial_csc_fraction=1.0,
                              initial_volume_mm3=N0 / 1e6)
    t = np.asarray(TS)
    expected = K * np.exp(np.log(N0 / K) * np.exp(-v * t))
    np.testing.assert_allclose(_sim(m, p).total_cells, expected, rtol=1e-9)


def test_log_kill_jump_size():
    # no growth, one log-kill dose of LK=2 at day 3: D drops by e^-2, S by e^-(sigma LK)
    m = fitcsc.ModelConfig(drugs=("paclitaxel",), chemo_mode="log_kill")
    p = fitcsc.default_params(m, csc_division_rate=0.0, bulk_division_rate=0.0,
                              bulk_death_rate=0.0, log_kill_per_dose=2.0, csc_sparing=0.25)
    sched = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 10.0, "mg/kg", start_day=3.0),)
                           ).to_schedule(m.drugs, species="mouse", max_doses=3)
    sol = _sim(m, p, sched, ts=jnp.array([0.0, 3.0, 3.5, 10.0]))
    S0, D0 = 5e6, 95e6
    np.testing.assert_allclose(sol.states[1], [S0, D0], rtol=1e-10)  # pre-dose at day 3
    np.testing.assert_allclose(sol.states[2], [S0 * math.exp(-0.5), D0 * math.exp(-2.0)],
                               rtol=1e-10)
    np.testing.assert_allclose(sol.states[3], sol.states[2], rtol=1e-10)


def test_constant_chemo_kill_exponential():
    # chemo concentration kill with a 1-cmt infusion: log N drops by k * AUC
    m = fitcsc.ModelConfig(drugs=("paclitaxel",))
    pk = fitcsc.OneCompartment(half_life_day=0.2, volume_L=1.0)
    p = fitcsc.default_params(m, csc_division_rate=0.0, bulk_division_rate=0.0,
                              bulk_death_rate=0.0, kill_rate=0.05, csc_sparing=0.0,
                              initial_csc_fraction=0.0, pk=(pk,))
    sched = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 10.0, "mg", start_day=1.0,
                                            infusion_hours=3.0),)).to_schedule(m.drugs)
    sol = _sim(m, p, sched, ts=jnp.array([0.0, 20.0]))
    auc = 10.0 / (math.log(2) / 0.2)  # dose / (V k), complete by day 20 (100 half-lives)
    assert float(sol.volume_mm3[1]) == pytest.approx(100.0 * math.exp(-0.05 * auc), rel=1e-8)


def test_her2_blockade_at_steady_concentration_lowers_renewal():
    # with I_H constant (many short-interval doses, long half-life), S grows at
    # v_S (2 p (1 - eps_S h_S I) - 1); compare growth of S with the closed form
    m = fitcsc.ModelConfig(drugs=("trastuzumab",))
    pk = fitcsc.OneCompartment(half_life_day=1e9, volume_L=1.0)  # C = dose, forever
    p = fitcsc.default_params(m, self_renewal=0.9, csc_division_rate=0.5, ec50_mg_per_L=2.0,
                              her2_efficacy_csc=0.6, her2_dependence_csc=1.0,
                              initial_csc_fraction=1.0, pk=(pk,))
    sched = fitcsc.Regimen((fitcsc.DoseLine("trastuzumab", 2.0, "mg"),)).to_schedule(m.drugs)
    sol = _sim(m, p, sched, ts=jnp.array([0.0, 5.0]))
    p_eff = 0.9 * (1 - 0.6 * 0.5)
    expected_S = 100e6 * math.exp(0.5 * (2 * p_eff - 1) * 5.0)
    assert float(sol.states[1, 0]) == pytest.approx(expected_S, rel=1e-8)
