"""The vector field and initial state against values computed by hand.

Every test uses the same small tumour so that each expected number can be checked with
pencil and paper (DESIGN §2, `fitcsc._model.family` docstring):

    S = 1e6 CSCs, D = 9e6 bulk cells (N = 1e7)
    v_S = 0.5, p = 0.6, delta_S = 0.01, v_D = 0.25, delta_D = 0.1   [1/day]

so that, with g = 1 and no drug,

    dS/dt = v_S (2p - 1) S - delta_S S       = 0.5*0.2*1e6 - 0.01*1e6 = 1e5 - 1e4 = 9e4
    dD/dt = 2 v_S (1 - p) S + (v_D - delta_D) D = 2*0.5*0.4*1e6 + 0.15*9e6 = 4e5 + 1.35e6

The drug concentrations are passed in directly (mg/L), so PK plays no part here.
"""

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import fitcsc
from fitcsc._model.family import log_kill_jump

RTOL = 1e-12
_vector_field = eqx.filter_jit(fitcsc.vector_field)  # one compile per model, not per op

BASE = dict(
    csc_division_rate=0.5,  # v_S
    self_renewal=0.6,  # p
    csc_death_rate=0.01,  # delta_S
    bulk_division_rate=0.25,  # v_D
    bulk_death_rate=0.1,  # delta_D
    carrying_capacity_cells=1e8,  # K
    plasticity_rate=0.0,
    # HER2: eps_S = eps_D = 0.5, h_S = h_D = 1
    her2_efficacy_csc=0.5,
    her2_efficacy_bulk=0.5,
    her2_dependence_csc=1.0,
    her2_dependence_bulk=1.0,
    csc_sparing=0.1,  # sigma_S
)


def _field(conc=(), y=None, **config_and_params):
    """``dy/dt`` as a dict by state name, for state ``y`` (dict by name)."""
    config_keys = {"crowding", "progenitor", "dormancy", "plasticity", "resistant_clone",
                   "damage_chain", "drugs", "chemo_mode", "species"}
    config = {k: v for k, v in config_and_params.items() if k in config_keys}
    overrides = {**BASE, **{k: v for k, v in config_and_params.items() if k not in config_keys}}
    model = fitcsc.ModelConfig(**config)
    params = fitcsc.default_params(model, **overrides)
    y = {"S": 1e6, "D": 9e6} if y is None else y
    assert set(y) == set(model.state_names), (sorted(y), model.state_names)
    y_arr = jnp.asarray([y[n] for n in model.state_names], dtype=float)
    dy = _vector_field(model, 0.0, y_arr, params, jnp.asarray(conc, dtype=float))
    assert dy.dtype == jnp.float64
    return {n: float(dy[i]) for i, n in enumerate(model.state_names)}


def _check(dy, expected):
    assert set(dy) == set(expected)
    for name, value in expected.items():
        assert dy[name] == pytest.approx(value, rel=RTOL, abs=0.0), name


# ---- growth without drugs ----

def test_base_sd_no_crowding():
    # dS = 1e5 - 1e4 = 9e4;  dD = 4e5 + 1.35e6 = 1.75e6
    _check(_field(), {"S": 9e4, "D": 1.75e6})


def test_base_sd_logistic():
    # g = 1 - N/K = 1 - 1e7/1e8 = 0.9
    # dS = 1e5*0.9 - 1e4 = 8e4
    # dD = 4e5*0.9 + (0.25*0.9 - 0.1)*9e6 = 3.6e5 + 0.125*9e6 = 3.6e5 + 1.125e6 = 1.485e6
    _check(_field(crowding="logistic"), {"S": 8e4, "D": 1.485e6})


def test_base_sd_gompertz():
    # g = ln(K/N) = ln(1e8/1e7) = ln 10
    # dS = 1e5 ln10 - 1e4;  dD = 4e5 ln10 + (0.25 ln10 - 0.1)*9e6
    ln10 = math.log(10.0)
    _check(_field(crowding="gompertz"),
           {"S": 1e5 * ln10 - 1e4, "D": 4e5 * ln10 + (0.25 * ln10 - 0.1) * 9e6})


def test_logistic_counts_every_cell_state_but_not_the_signal():
    # N = S + D + P + Q + R + X1 + X2 = 1e6 + 9e6 + 2e6 + 5e5 + 2e5 + 2e6 + 3e5 = 1.5e7
    # (the signal L = 5e6 is dimensionless and not a cell); K = 1e8 -> g = 0.85.
    # dS  = 0.5*0.2*1e6*0.85 - 1e4 - 0.1*1e6 (entry) + 0.1*5e5 (exit)
    #       + 0.02*9e6 (omega D; signal_gain = 0) = 8.5e4 - 1e4 - 1e5 + 5e4 + 1.8e5 = 2.05e5
    # dP  = 2*0.5*0.4*1e6*0.85 (from S) + 2*0.5*0.4*2e5*0.85 (from R)
    #       + 0.5*(2*0.45 - 1)*2e6*0.85 - 0.05*2e6
    #     = 3.4e5 + 6.8e4 - 8.5e4 - 1e5 = 2.23e5
    # dD  = 2*0.5*0.55*2e6*0.85 + (0.25*0.85 - 0.1)*9e6 - 0.02*9e6
    #     = 9.35e5 + 1.0125e6 - 1.8e5 = 1.7675e6
    # dQ  = 1e5 - 5e4 - 0 = 5e4;  dR = 0.5*0.2*2e5*0.85 - 0.01*2e5 = 1.7e4 - 2e3 = 1.5e4
    # dL  = 1e-3 * S/1e6 - 1.0 * L = 1e-3 - 5e6
    # dX1 = 0 - 0.5*2e6 = -1e6;  dX2 = 0.5*(2e6 - 3e5) = 8.5e5
    y = {"S": 1e6, "D": 9e6, "P": 2e6, "Q": 5e5, "R": 2e5, "L": 5e6, "X1": 2e6, "X2": 3e5}
    dy = _field(y=y, crowding="logistic", progenitor=True, dormancy=True, resistant_clone=True,
                plasticity="signal", damage_chain=2, plasticity_rate=0.02, signal_gain=0.0,
                signal_production=1e-3, signal_decay_rate=1.0, dormancy_entry_rate=0.1,
                dormancy_exit_rate=0.1, dormant_death_rate=0.0, progenitor_division_rate=0.5,
                progenitor_self_renewal=0.45, progenitor_death_rate=0.05,
                damage_transit_rate=0.5)
    _check(dy, {"S": 2.05e5, "P": 2.23e5, "D": 1.7675e6, "Q": 5e4, "R": 1.5e4,
                "L": 1e-3 - 5e6, "X1": -1e6, "X2": 8.5e5})


# ---- HER2 blockade ----

def test_her2_hill_1_at_ec50():
    # I = C/(EC50 + C) = 10/20 = 0.5 -> B = 0.5
    # p_eff = 0.6 (1 - 0.5*1*0.5) = 0.45;  v_D' = 0.25 (1 - 0.5*1*0.5) = 0.1875
    # dS = 0.5 (0.9 - 1) 1e6 - 1e4 = -5e4 - 1e4 = -6e4
    # dD = 2*0.5*0.55*1e6 + (0.1875 - 0.1)*9e6 = 5.5e5 + 7.875e5 = 1.3375e6
    dy = _field([10.0], drugs=("trastuzumab",), ec50_mg_per_L=10.0, hill=1.0)
    _check(dy, {"S": -6e4, "D": 1.3375e6})


def test_her2_hill_2_at_ec50_gives_the_same_half_effect():
    # C = EC50: I = C^2/(EC50^2 + C^2) = 0.5 whatever n, so the same numbers as n = 1
    dy = _field([4.0], drugs=("lapatinib",), ec50_mg_per_L=4.0, hill=2.0)
    _check(dy, {"S": -6e4, "D": 1.3375e6})


def test_her2_hill_2_above_ec50():
    # C = 2 EC50, n = 2: I = 4/(1 + 4) = 0.8 (n = 1 would give 2/3)
    # p_eff = 0.6 (1 - 0.4) = 0.36;  v_D' = 0.25 (1 - 0.4) = 0.15
    # dS = 0.5 (0.72 - 1) 1e6 - 1e4 = -1.4e5 - 1e4 = -1.5e5
    # dD = 2*0.5*0.64*1e6 + (0.15 - 0.1)*9e6 = 6.4e5 + 4.5e5 = 1.09e6
    dy = _field([20.0], drugs=("trastuzumab",), ec50_mg_per_L=10.0, hill=2.0)
    _check(dy, {"S": -1.5e5, "D": 1.09e6})


def test_her2_low_tumour_only_csc_dependence():
    # h_D = 0 (HER2-low luminal): p_eff = 0.45 as above, v_D unchanged
    # dS = -6e4;  dD = 5.5e5 + (0.25 - 0.1)*9e6 = 5.5e5 + 1.35e6 = 1.9e6
    dy = _field([10.0], drugs=("trastuzumab",), ec50_mg_per_L=10.0, hill=1.0,
                her2_dependence_bulk=0.0)
    _check(dy, {"S": -6e4, "D": 1.9e6})


def test_two_her2_blockers_combine_by_bliss_independence():
    # I_1 = I_2 = 0.5 -> B = 1 - (1 - 0.5)(1 - 0.5) = 0.75
    # p_eff = 0.6 (1 - 0.375) = 0.375;  v_D' = 0.25 (1 - 0.375) = 0.15625
    # dS = 0.5 (0.75 - 1) 1e6 - 1e4 = -1.25e5 - 1e4 = -1.35e5
    # dD = 2*0.5*0.625*1e6 + (0.15625 - 0.1)*9e6 = 6.25e5 + 5.0625e5 = 1.13125e6
    dy = _field([10.0, 10.0], drugs=("trastuzumab", "pertuzumab"), ec50_mg_per_L=10.0,
                hill=1.0)
    _check(dy, {"S": -1.35e5, "D": 1.13125e6})


def test_zero_concentration_has_no_effect():
    dy = _field([0.0, 0.0, 0.0, 0.0],
                drugs=("trastuzumab", "paclitaxel", "gamma_secretase_inhibitor", "fulvestrant"),
                hill=2.0, kill_rate=0.2, csc_kill_rate=0.3, cytostatic_efficacy=0.5)
    _check(dy, {"S": 9e4, "D": 1.75e6})


# ---- cytotoxic, CSC-targeted and cytostatic drugs ----

def test_chemo_concentration_kill_spares_cscs():
    # k_D = k_chemo C = 0.2 * 2 = 0.4;  k_S = sigma_S k_D = 0.1 * 0.4 = 0.04
    # dS = 9e4 - 0.04*1e6 = 5e4;  dD = 1.75e6 - 0.4*9e6 = -1.85e6
    dy = _field([2.0], drugs=("paclitaxel",), kill_rate=0.2)
    _check(dy, {"S": 5e4, "D": -1.85e6})


def test_chemo_log_kill_mode_has_no_continuous_kill():
    dy = _field([2.0], drugs=("paclitaxel",), kill_rate=0.2, chemo_mode="log_kill")
    _check(dy, {"S": 9e4, "D": 1.75e6})


def test_csc_targeted_agent():
    # I = 3/(1 + 3) = 0.75;  k_S = k_csc I = 0.3 * 0.75 = 0.225, bulk untouched
    # dS = 9e4 - 2.25e5 = -1.35e5;  dD = 1.75e6
    dy = _field([3.0], drugs=("gamma_secretase_inhibitor",), ec50_mg_per_L=1.0, hill=1.0,
                csc_kill_rate=0.3)
    _check(dy, {"S": -1.35e5, "D": 1.75e6})


def test_chemo_and_csc_agent_kill_rates_add():
    # k_D = 0.2*2 = 0.4;  k_S = 0.1*0.4 + 0.3*0.75 = 0.04 + 0.225 = 0.265
    # (per-drug arrays: paclitaxel's csc_kill_rate and the GSI's kill_rate are unused)
    # dS = 9e4 - 2.65e5 = -1.75e5;  dD = 1.75e6 - 3.6e6 = -1.85e6
    dy = _field([2.0, 3.0], drugs=("paclitaxel", "gamma_secretase_inhibitor"),
                ec50_mg_per_L=[50.0, 1.0], hill=1.0, kill_rate=[0.2, 7.0],
                csc_kill_rate=[9.0, 0.3])
    _check(dy, {"S": -1.75e5, "D": -1.85e6})


def test_cytostatic_slows_every_division():
    # I = 10/(10 + 10) = 0.5;  G = 1 - e I = 1 - 0.5*0.5 = 0.75
    # dS = 0.75*0.5*0.2*1e6 - 1e4 = 7.5e4 - 1e4 = 6.5e4
    # dD = 0.75*4e5 + (0.25*0.75 - 0.1)*9e6 = 3e5 + 7.875e5 = 1.0875e6
    dy = _field([10.0], drugs=("fulvestrant",), ec50_mg_per_L=10.0, hill=1.0,
                cytostatic_efficacy=0.5)
    _check(dy, {"S": 6.5e4, "D": 1.0875e6})


# ---- extensions ----

def test_progenitor_compartment():
    # S = 1e6, P = 2e6, D = 7e6;  v_P = 0.5, q = 0.45, delta_P = 0.05
    # dS = 9e4
    # dP = 2*0.5*0.4*1e6 + 0.5*(0.9 - 1)*2e6 - 0.05*2e6 = 4e5 - 1e5 - 1e5 = 2e5
    # dD = 2*0.5*0.55*2e6 + (0.25 - 0.1)*7e6 = 1.1e6 + 1.05e6 = 2.15e6
    dy = _field(y={"S": 1e6, "P": 2e6, "D": 7e6}, progenitor=True,
                progenitor_division_rate=0.5, progenitor_self_renewal=0.45,
                progenitor_death_rate=0.05)
    _check(dy, {"S": 9e4, "P": 2e5, "D": 2.15e6})


def test_progenitors_are_killed_like_bulk_and_feed_the_damage_chain():
    # chemo k_D = 0.2*2 = 0.4, k_S = 0.04; progenitor numbers as above; k_tr = 0.5
    # dS = 9e4 - 4e4 = 5e4;  dP = 2e5 - 0.4*2e6 = -6e5;  dD = 2.15e6 - 0.4*7e6 = -6.5e5
    # dX1 = 0.04*1e6 + 0.4*(2e6 + 7e6) - 0.5*0 = 4e4 + 3.6e6 = 3.64e6
    dy = _field([2.0], y={"S": 1e6, "P": 2e6, "D": 7e6, "X1": 0.0}, progenitor=True,
                damage_chain=1, drugs=("paclitaxel",), kill_rate=0.2,
                progenitor_division_rate=0.5, progenitor_self_renewal=0.45,
                progenitor_death_rate=0.05, damage_transit_rate=0.5)
    _check(dy, {"S": 5e4, "P": -6e5, "D": -6.5e5, "X1": 3.64e6})


def test_dormancy_exchange_and_dormant_cells_escape_chemo():
    # Q = 5e5; entry 0.05, exit 0.2, delta_Q = 0.02; chemo k_D = 0.4, k_S = 0.04
    # dS = 9e4 - 0.05*1e6 + 0.2*5e5 - 0.04*1e6 = 9e4 - 5e4 + 1e5 - 4e4 = 1e5
    # dQ = 5e4 - 1e5 - 0.02*5e5 = -6e4   (no kill term)
    # dD = -1.85e6
    dy = _field([2.0], y={"S": 1e6, "D": 9e6, "Q": 5e5}, dormancy=True,
                drugs=("paclitaxel",), kill_rate=0.2, dormancy_entry_rate=0.05,
                dormancy_exit_rate=0.2, dormant_death_rate=0.02)
    _check(dy, {"S": 1e5, "Q": -6e4, "D": -1.85e6})


def test_constant_plasticity():
    # omega = 0.02: omega D = 1.8e5 moves from D to S
    # dS = 9e4 + 1.8e5 = 2.7e5;  dD = 1.75e6 - 1.8e5 = 1.57e6
    dy = _field(plasticity="constant", plasticity_rate=0.02)
    _check(dy, {"S": 2.7e5, "D": 1.57e6})


def test_signal_driven_plasticity():
    # L = 0.5, a = 2: omega = 0.02 (1 + 2*0.5) = 0.04, omega D = 3.6e5
    # dS = 9e4 + 3.6e5 = 4.5e5;  dD = 1.75e6 - 3.6e5 = 1.39e6
    # dL = s_L S/c - delta_L L = 0.1 * 1e6/1e6 - 1.0*0.5 = -0.4
    dy = _field(y={"S": 1e6, "D": 9e6, "L": 0.5}, plasticity="signal", plasticity_rate=0.02,
                signal_gain=2.0, signal_production=0.1, signal_decay_rate=1.0)
    _check(dy, {"S": 4.5e5, "D": 1.39e6, "L": -0.4})


def test_resistant_clone_ignores_every_drug():
    # R = 2e5; trastuzumab at I = 0.5 and paclitaxel at k_D = 0.4 (k_S = 0.04)
    # dS = 0.5 (0.9 - 1) 1e6 - 1e4 - 0.04*1e6 = -5e4 - 1e4 - 4e4 = -1e5
    # dR = 0.5 (1.2 - 1) 2e5 - 0.01*2e5 = 2e4 - 2e3 = 1.8e4   (undrugged p = 0.6)
    # dD = 2*0.5*0.55*1e6 + 2*0.5*0.4*2e5 + (0.1875 - 0.1)*9e6 - 0.4*9e6
    #    = 5.5e5 + 8e4 + 7.875e5 - 3.6e6 = -2.1825e6
    dy = _field([10.0, 2.0], y={"S": 1e6, "D": 9e6, "R": 2e5}, resistant_clone=True,
                drugs=("trastuzumab", "paclitaxel"), ec50_mg_per_L=10.0, hill=1.0,
                kill_rate=[0.0, 0.2])
    _check(dy, {"S": -1e5, "R": 1.8e4, "D": -2.1825e6})


def test_damage_chain_three_compartments():
    # X = (3e5, 2e5, 1e5), k_tr = 0.5; chemo k_D = 0.4, k_S = 0.04
    # dX1 = 0.04*1e6 + 0.4*9e6 - 0.5*3e5 = 4e4 + 3.6e6 - 1.5e5 = 3.49e6
    # dX2 = 0.5 (3e5 - 2e5) = 5e4;  dX3 = 0.5 (2e5 - 1e5) = 5e4
    # dS = 5e4, dD = -1.85e6 as without the chain
    model = fitcsc.ModelConfig(damage_chain=3, drugs=("paclitaxel",))
    assert model.state_names == ("S", "D", "X1", "X2", "X3")
    dy = _field([2.0], y={"S": 1e6, "D": 9e6, "X1": 3e5, "X2": 2e5, "X3": 1e5}, damage_chain=3,
                drugs=("paclitaxel",), kill_rate=0.2, damage_transit_rate=0.5)
    _check(dy, {"S": 5e4, "D": -1.85e6, "X1": 3.49e6, "X2": 5e4, "X3": 5e4})


def test_log_kill_jump():
    # LK = 1, sigma_S = 0.1: D and P keep e^-1, S keeps e^-0.1; Q and R are spared;
    # the killed cells enter X1.
    model = fitcsc.ModelConfig(progenitor=True, dormancy=True, resistant_clone=True,
                               damage_chain=2, drugs=("trastuzumab", "paclitaxel"),
                               chemo_mode="log_kill")
    params = fitcsc.default_params(model, csc_sparing=0.1, log_kill_per_dose=1.0)
    y = {"S": 1e6, "D": 9e6, "P": 2e6, "Q": 5e5, "R": 2e5, "X1": 1e5, "X2": 1e4}
    y_arr = jnp.asarray([y[n] for n in model.state_names])
    kill_S, kill_D, kill_P = 1e6 * (1 - math.exp(-0.1)), 9e6 * (1 - math.exp(-1.0)), \
        2e6 * (1 - math.exp(-1.0))
    expected = dict(y, S=1e6 - kill_S, D=9e6 - kill_D, P=2e6 - kill_P,
                    X1=1e5 + kill_S + kill_D + kill_P)
    out = log_kill_jump(model, params, y_arr, 1, jnp.asarray(True))
    np.testing.assert_allclose(out, [expected[n] for n in model.state_names], rtol=RTOL, atol=0)
    # a HER2 slot or an inactive (padding) dose changes nothing
    np.testing.assert_array_equal(log_kill_jump(model, params, y_arr, 0, jnp.asarray(True)),
                                  y_arr)
    np.testing.assert_array_equal(log_kill_jump(model, params, y_arr, 1, jnp.asarray(False)),
                                  y_arr)


# ---- initial state ----

def test_initial_state_fractions_with_every_compartment():
    # N0 = 100 mm3 * 1e6 cells/mm3 = 1e8; stem = 0.05 N0 = 5e6
    # R = 0.1*5e6 = 5e5;  S = 5e6*0.9*0.8 = 3.6e6;  Q = 5e6*0.9*0.2 = 9e5
    # P = 0.2 N0 = 2e7;  D = 1e8 - 5e6 - 2e7 = 7.5e7;  L = X1 = X2 = 0
    model = fitcsc.ModelConfig(progenitor=True, dormancy=True, resistant_clone=True,
                               plasticity="signal", damage_chain=2)
    params = fitcsc.default_params(model, initial_volume_mm3=100.0, initial_csc_fraction=0.05,
                                   resistant_fraction=0.1, initial_dormant_fraction=0.2,
                                   initial_progenitor_fraction=0.2)
    expected = {"S": 3.6e6, "D": 7.5e7, "P": 2e7, "Q": 9e5, "R": 5e5, "L": 0.0, "X1": 0.0,
                "X2": 0.0}
    y0 = fitcsc.initial_state(model, params)
    assert y0.dtype == jnp.float64
    np.testing.assert_allclose(y0, [expected[n] for n in model.state_names], rtol=RTOL, atol=0)


def test_initial_state_ignores_fractions_of_switched_off_compartments():
    # base SD: S = 0.05*1e8 = 5e6, D = 9.5e7 (resistant/dormant/progenitor fractions unused)
    model = fitcsc.ModelConfig()
    params = fitcsc.default_params(model, initial_volume_mm3=100.0, initial_csc_fraction=0.05,
                                   resistant_fraction=0.1, initial_dormant_fraction=0.2,
                                   initial_progenitor_fraction=0.2)
    np.testing.assert_allclose(fitcsc.initial_state(model, params), [5e6, 9.5e7], rtol=RTOL,
                               atol=0)
