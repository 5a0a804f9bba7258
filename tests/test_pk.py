"""PK against closed forms, published values and numerical integration."""

import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import fitcsc
from fitcsc._model.pk import concentrations, pk_arrays, unit_response


def _conc(pk, regimen, t, species="human"):
    coefs, rates = pk.exponentials()
    sched = regimen.to_schedule(regimen.drugs, species=species)
    return np.array([float(concentrations(coefs[None], rates[None], sched, ti)[0]) for ti in t])


def test_one_compartment_repeated_bolus_closed_form():
    # 5 mg/kg x 70 kg = 350 mg every 2 days, V = 10 L, t1/2 = 1.5 d
    pk = fitcsc.OneCompartment(half_life_day=1.5, volume_L=10.0)
    reg = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 5.0, "mg/kg", n_doses=5,
                                          interval_day=2.0),))
    k = math.log(2) / 1.5
    t = np.array([0.0, 0.5, 1.99, 2.0, 3.3, 8.0, 9.0, 15.0])
    expected = [sum(350.0 / 10.0 * math.exp(-k * (ti - 2 * i)) for i in range(5) if ti >= 2 * i)
                for ti in t]
    np.testing.assert_allclose(_conc(pk, reg, t), expected, rtol=1e-12)


def test_accumulation_ratio_at_steady_state():
    # trough before dose 60 = C0 e^{-k tau} (1 - e^{-59 k tau}) / (1 - e^{-k tau})
    pk = fitcsc.OneCompartment(half_life_day=3.0, volume_L=5.0)
    reg = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 100.0, "mg", n_doses=60,
                                          interval_day=1.0),))
    k = math.log(2) / 3.0
    trough = _conc(pk, reg, [59.0 - 1e-9])[0]
    expected = 20.0 * math.exp(-k) * (1 - math.exp(-59 * k)) / (1 - math.exp(-k))
    assert trough == pytest.approx(expected, rel=1e-9)  # 1e-9 day before the dose


def test_infusion_matches_integrated_one_compartment():
    pk = fitcsc.OneCompartment(half_life_day=0.5, volume_L=20.0)
    reg = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 100.0, "mg/m2", n_doses=2,
                                          interval_day=1.0, infusion_hours=6.0),))
    amount, dur, k = 180.0, 0.25, math.log(2) / 0.5

    def rhs(t, a):
        rate = sum(amount / dur for s in (0.0, 1.0) if s <= t < s + dur)
        return [rate - k * a[0]]

    t = np.array([0.1, 0.25, 0.6, 1.0, 1.1, 1.25, 2.0])
    ref = solve_ivp(rhs, (0, 2.0), [0.0], t_eval=t, rtol=1e-12, atol=1e-12, max_step=0.01,
                    method="DOP853").y[0] / 20.0
    np.testing.assert_allclose(_conc(pk, reg, t), ref, rtol=1e-7)


def test_infusion_tends_to_bolus():
    c, r = fitcsc.OneCompartment(2.0, 3.0).exponentials()
    bolus = unit_response(c, r, 1.0, 0.0)
    short = unit_response(c, r, 1.0, 1e-7)
    assert float(short) == pytest.approx(float(bolus), rel=1e-6)


def test_two_compartment_bruno_terminal_half_life():
    # Bruno 2005: CL 0.225 L/day, V1 2.95 L, k12 0.164, k21 0.101 -> t1/2 beta 28.5 d
    pk = fitcsc.TwoCompartment(0.225, 2.95, 0.164, 0.101)
    alpha, beta = pk.macro_rates()
    assert math.log(2) / float(beta) == pytest.approx(28.5, abs=0.1)
    # C(0) after a bolus = dose / V1
    coefs, _ = pk.exponentials()
    assert float(jnp.sum(coefs)) == pytest.approx(1 / 2.95, rel=1e-12)


def test_two_compartment_matches_ode():
    pk = fitcsc.TwoCompartment(0.225, 2.95, 0.164, 0.101)
    reg = fitcsc.Regimen((
        fitcsc.DoseLine("trastuzumab", 8.0, "mg/kg", n_doses=1, infusion_hours=1.5),
        fitcsc.DoseLine("trastuzumab", 6.0, "mg/kg", start_day=21.0, interval_day=21.0,
                        n_doses=3, infusion_hours=0.5),
    ))
    doses = [(0.0, 560.0, 1.5 / 24)] + [(21.0 * i, 420.0, 0.5 / 24) for i in (1, 2, 3)]
    k10 = 0.225 / 2.95

    def rhs(t, a):
        rate = sum(amt / d for s, amt, d in doses if s <= t < s + d)
        return [rate - (k10 + 0.164) * a[0] + 0.101 * a[1], 0.164 * a[0] - 0.101 * a[1]]

    t = np.array([0.03, 1.0, 20.9, 21.0 + 1 / 48, 40.0, 63.5, 80.0])
    ref = solve_ivp(rhs, (0, 80.0), [0.0, 0.0], t_eval=t, rtol=1e-12, atol=1e-10,
                    max_step=0.005, method="DOP853").y[0] / 2.95
    np.testing.assert_allclose(_conc(pk, reg, t), ref, rtol=2e-6)


def test_trastuzumab_q3w_exposure_near_published():
    # SmPC (EBC popPK, 8 -> 6 mg/kg q3w): cycle-1 Cmin median 30.9 (18.7-45.5) ug/mL,
    # Cmax,ss 184 (134-247) ug/mL. Typical-patient Bruno model at 70 kg must fall inside.
    pk = fitcsc.TwoCompartment(0.225, 2.95, 0.164, 0.101)
    reg = fitcsc.Regimen((
        fitcsc.DoseLine("trastuzumab", 8.0, "mg/kg", n_doses=1, infusion_hours=1.5),
        fitcsc.DoseLine("trastuzumab", 6.0, "mg/kg", start_day=21.0, interval_day=21.0,
                        n_doses=20, infusion_hours=0.5),
    ))
    cmin1 = _conc(pk, reg, [21.0 - 1e-9])[0]
    cmax_ss = _conc(pk, reg, [21.0 * 15 + 0.5 / 24])[0]
    assert 18.7 < cmin1 < 45.5
    assert 134 < cmax_ss < 247


def test_oral_bateman_function():
    pk = fitcsc.OneCompartmentOral(half_life_day=1.0, volume_L=100.0, absorption_rate=5.0,
                                   bioavailability=0.5)
    reg = fitcsc.Regimen((fitcsc.DoseLine("lapatinib", 1000.0, "mg"),))
    k, ka = math.log(2), 5.0
    t = np.array([0.1, 0.5, 2.0])
    expected = 0.5 * 1000 * ka / (100 * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
    np.testing.assert_allclose(_conc(pk, reg, t), expected, rtol=1e-12)


def test_concentration_zero_before_first_dose_and_padding_ignored():
    pk = fitcsc.OneCompartment(1.0, 1.0)
    reg = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 1.0, "mg", start_day=5.0),))
    sched = reg.to_schedule(("paclitaxel",), max_doses=4)
    assert sched.mask.tolist() == [True, False, False, False]
    c, r = pk.exponentials()
    assert float(concentrations(c[None], r[None], sched, 4.999)[0]) == 0.0
    assert float(concentrations(c[None], r[None], sched, 5.0)[0]) == pytest.approx(1.0)


def test_dose_units_by_species():
    line = fitcsc.DoseLine("trastuzumab", 10.0, "mg/kg")
    mouse = fitcsc.Regimen((line,)).to_schedule(("trastuzumab",), species="mouse")
    human = fitcsc.Regimen((line,)).to_schedule(("trastuzumab",), species="human",
                                                body_weight_kg=60.0)
    assert float(mouse.amount_mg[0]) == pytest.approx(0.2)
    assert float(human.amount_mg[0]) == pytest.approx(600.0)
    sq = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 80.0, "mg/m2"),))
    assert float(sq.to_schedule(("paclitaxel",)).amount_mg[0]) == pytest.approx(144.0)


def test_multi_drug_slots():
    m = fitcsc.ModelConfig(drugs=("trastuzumab", "paclitaxel"), species="human")
    p = fitcsc.default_params(m)
    reg = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 80.0, "mg/m2", n_doses=2,
                                          interval_day=7.0),))
    sched = reg.to_schedule(m.drugs)
    coefs, rates = pk_arrays(p.pk)
    assert coefs.shape == (2, 2)  # 2-cmt trastuzumab and 1-cmt paclitaxel padded to 2
    assert float(coefs[1, 1]) == 0.0
    c = concentrations(coefs, rates, sched, 1.0)
    assert float(c[0]) == 0.0 and float(c[1]) > 0.0


def test_oral_equal_rates_limit_is_finite_and_close():
    # ka == k: C = F D k / V * t e^{-k t}
    k = 2.0
    pk = fitcsc.OneCompartmentOral(half_life_day=math.log(2) / k, volume_L=1.0,
                                   absorption_rate=k)
    c, r = pk.exponentials()
    t = 0.7
    value = float(jnp.sum(c * jnp.exp(-r * t)))
    assert value == pytest.approx(k * t * math.exp(-k * t), rel=1e-5)


def test_catalogue_trastuzumab_matches_published_table():
    # the human PK in the catalogue is the Bruno 2005 model of data/clinical/trastuzumab_pk.csv
    rows = {r["parameter"]: r for r in fitcsc.read_clinical(
        pathlib.Path(__file__).resolve().parents[1] / "data/clinical/trastuzumab_pk.csv")}
    pk = fitcsc.CATALOGUE["trastuzumab"].pk_human
    assert pk.clearance_L_per_day == rows["CL (linear)"]["value"]
    assert pk.central_volume_L == rows["V1 (central)"]["value"]
    _, beta = pk.macro_rates()
    assert math.log(2) / float(beta) == pytest.approx(rows["terminal half-life"]["value"],
                                                      abs=0.1)


def test_held_exposure_gives_the_superposition_between_jumps():
    """`held_exposure` at an interval's start (its doses decided at a time inside it)
    and `concentrations_between` give `concentrations` (the sum over every dose) at
    every time of every interval between the schedule's jumps: boluses by mouth (two
    exponentials), a two-compartment infusion and a 24-hour infusion that spans a
    bolus of another drug."""
    from fitcsc._model.drugs import default_pk
    from fitcsc._model.pk import concentrations_between, held_exposure
    from fitcsc._model.regimen import discontinuity_times

    drugs = ("lapatinib", "trastuzumab", "paclitaxel")
    reg = fitcsc.Regimen((
        fitcsc.DoseLine("lapatinib", 100.0, "mg/kg", n_doses=5, interval_day=1.0,
                        start_day=0.5),
        fitcsc.DoseLine("trastuzumab", 10.0, "mg/kg", n_doses=3, interval_day=7.0,
                        infusion_hours=3.0),
        fitcsc.DoseLine("paclitaxel", 20.0, "mg/kg", n_doses=2, interval_day=7.0,
                        start_day=1.0, infusion_hours=24.0)))
    for species in ("mouse", "human"):
        sched = reg.to_schedule(drugs, species=species)
        c, r = pk_arrays([default_pk(d, species) for d in drugs])
        jumps = np.unique(np.asarray(discontinuity_times(sched, 40.0)))
        edges = np.concatenate([[-1.0], jumps])
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            x, rate = held_exposure(c, r, sched, a, 0.5 * (a + b))
            for t in np.linspace(a, b, 6)[:-1]:
                want = np.asarray(concentrations(c, r, sched, t))
                got = np.asarray(concentrations_between(x, rate, r, t - a))
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300,
                                           err_msg=f"{species}, t = {t}")
