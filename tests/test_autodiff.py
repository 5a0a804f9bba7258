"""Gradients of the simulator against central finite differences (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitcsc

TS = jnp.array([-3.0, 0.0, 4.0, 7.0, 10.0, 21.0, 28.0])
TOL = dict(rtol=1e-11, atol=1e-9)

CASES = {
    "sd-logistic-trastuzumab": (
        fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab",)),
        fitcsc.Regimen((fitcsc.DoseLine("trastuzumab", 10.0, "mg/kg", n_doses=4,
                                        interval_day=7.0),)),
    ),
    "spd-gompertz-paclitaxel-infusion": (
        fitcsc.ModelConfig(crowding="gompertz", progenitor=True, dormancy=True,
                           drugs=("paclitaxel",)),
        fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 15.0, "mg/kg", n_doses=3,
                                        interval_day=7.0, infusion_hours=2.0),)),
    ),
    "logkill-damage-chain-resistant": (
        fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab", "paclitaxel"),
                           chemo_mode="log_kill", damage_chain=2, resistant_clone=True,
                           plasticity="signal"),
        fitcsc.Regimen((fitcsc.DoseLine("trastuzumab", 10.0, "mg/kg", n_doses=4,
                                        interval_day=7.0),
                        fitcsc.DoseLine("paclitaxel", 15.0, "mg/kg", start_day=1.0,
                                        n_doses=3, interval_day=7.0))),
    ),
}
FREE = {
    "csc_division_rate": fitcsc.Positive(),
    "self_renewal": fitcsc.Interval(0.0, 1.0),
    "bulk_division_rate": fitcsc.Positive(),
    "initial_csc_fraction": fitcsc.Interval(0.0, 1.0),
    "her2_efficacy_csc": fitcsc.Interval(0.0, 1.0),
    "ec50_mg_per_L": fitcsc.Positive(),
    "kill_rate": fitcsc.Positive(),
    "log_kill_per_dose": fitcsc.Positive(),
    "csc_sparing": fitcsc.Interval(0.0, 1.0),
    "resistant_fraction": fitcsc.Interval(0.0, 1.0),
    "plasticity_rate": fitcsc.Positive(),
}


def _setup(name):
    model, reg = CASES[name]
    params = fitcsc.default_params(model, resistant_fraction=0.05, plasticity_rate=0.01,
                                   carrying_capacity_cells=3e9)
    spec = fitcsc.ParamSpec({k: v for k, v in FREE.items()}, reference=params)
    sched = reg.to_schedule(model.drugs, species="mouse")
    return model, spec, sched


def _fd_jacobian(f, z, h=1e-5):
    cols = []
    for i in range(z.shape[0]):
        e = jnp.zeros_like(z).at[i].set(h)
        cols.append((f(z + e) - f(z - e)) / (2 * h))
    return jnp.stack(cols, axis=-1)


@pytest.mark.parametrize("name", list(CASES))
def test_reverse_and_forward_mode_match_finite_differences(name):
    model, spec, sched = _setup(name)
    z = spec.to_z(spec.reference)

    def logv(z, adjoint):
        sol = fitcsc.simulate(model, spec.from_z(z), sched, TS, t0=-3.0, adjoint=adjoint, **TOL)
        return jnp.log(sol.volume_mm3)

    jac_rev = jax.jacrev(lambda z: logv(z, "reverse"))(z)
    jac_fwd = jax.jacfwd(lambda z: logv(z, "forward"))(z)
    jac_fd = _fd_jacobian(lambda z: logv(z, "reverse"), z)
    scale = jnp.maximum(jnp.abs(jac_fd), 1e-3)
    assert float(jnp.max(jnp.abs(jac_rev - jac_fd) / scale)) < 1e-5
    np.testing.assert_allclose(jac_fwd, jac_rev, rtol=1e-6, atol=1e-9)


def test_gradient_of_scalar_loss_and_csc_fraction():
    model, spec, sched = _setup("sd-logistic-trastuzumab")
    z = spec.to_z(spec.reference)

    def loss(z):
        sol = fitcsc.simulate(model, spec.from_z(z), sched, TS, t0=-3.0, **TOL)
        return jnp.sum(jnp.log(sol.volume_mm3) ** 2) + jnp.sum(sol.csc_fraction)

    g = jax.grad(loss)(z)
    g_fd = _fd_jacobian(lambda z: loss(z)[None], z)[0]
    np.testing.assert_allclose(g, g_fd, rtol=1e-5, atol=1e-7)


def test_gradient_wrt_pk_parameters():
    model = fitcsc.ModelConfig(drugs=("trastuzumab",), species="human")
    reg = fitcsc.Regimen((fitcsc.DoseLine("trastuzumab", 8.0, "mg/kg", infusion_hours=1.5),))
    sched = reg.to_schedule(model.drugs)

    def final(cl):
        pk = fitcsc.TwoCompartment(cl, 2.95, 0.164, 0.101)
        params = fitcsc.default_params(model, pk=(pk,), ec50_mg_per_L=50.0)
        return fitcsc.simulate(model, params, sched, jnp.array([0.0, 20.0]), **TOL
                               ).volume_mm3[-1]

    g = jax.grad(final)(0.225)
    g_fd = (final(0.225 + 1e-6) - final(0.225 - 1e-6)) / 2e-6
    assert float(g) == pytest.approx(float(g_fd), rel=1e-5)
    assert float(g) > 0  # faster clearance, less drug, larger tumour
