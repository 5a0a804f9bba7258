"""vmap == loop, jit == eager, no retrace when only values change, failure isolation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitcsc
import fitcsc._solve.simulate as _sim_module

TS = jnp.array([0.0, 3.0, 7.0, 14.0, 21.0])


def _batch_params(model, n, seed=0):
    rng = np.random.default_rng(seed)
    base = fitcsc.default_params(model)
    return jax.vmap(lambda v, p, e: eqx.tree_at(
        lambda q: (q.csc_division_rate, q.self_renewal, q.ec50_mg_per_L), base,
        (v, p, jnp.broadcast_to(e, base.ec50_mg_per_L.shape))))(
        jnp.asarray(rng.uniform(0.2, 0.8, n)), jnp.asarray(rng.uniform(0.5, 0.9, n)),
        jnp.asarray(rng.uniform(1.0, 30.0, n)))


def _regimens(model, n):
    regs = [fitcsc.Regimen((fitcsc.DoseLine("trastuzumab", 5.0 + i, "mg/kg",
                                            n_doses=1 + i % 3, interval_day=7.0),))
            for i in range(n)]
    return fitcsc.stack_schedules([r.to_schedule(model.drugs, species="mouse", max_doses=3)
                                   for r in regs])


def test_vmap_over_params_equals_loop():
    model = fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab",))
    params = _batch_params(model, 5)
    sched = _regimens(model, 1)
    one = jax.tree_util.tree_map(lambda x: x[0], sched)
    batched = jax.vmap(lambda p: fitcsc.simulate(model, p, one, TS))(params)
    for i in range(5):
        p_i = jax.tree_util.tree_map(lambda x, i=i: x[i], params)
        sol = fitcsc.simulate(model, p_i, one, TS)
        np.testing.assert_allclose(batched.volume_mm3[i], sol.volume_mm3, rtol=1e-10)
        assert int(batched.status[i]) == int(sol.status) == 0


def test_vmap_over_regimens_and_subjects_equals_loop():
    # subjects differ in regimen, observation times (padded) and t0
    model = fitcsc.ModelConfig(drugs=("trastuzumab",))
    params = fitcsc.default_params(model)
    scheds = _regimens(model, 4)
    ts = jnp.array([[0.0, 2.0, 9.0, 9.0, 9.0], [-4.0, 0.0, 5.0, 12.0, 20.0],
                    [1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 7.0, 7.0, 14.0, 14.0]])
    out = jax.vmap(lambda s, t: fitcsc.simulate(model, params, s, t))(scheds, ts)
    for i in range(4):
        s_i = jax.tree_util.tree_map(lambda x, i=i: x[i], scheds)
        sol = fitcsc.simulate(model, params, s_i, ts[i])
        np.testing.assert_allclose(out.volume_mm3[i], sol.volume_mm3, rtol=1e-10)


def test_jit_equals_eager():
    model = fitcsc.ModelConfig(crowding="logistic", drugs=("paclitaxel",),
                               chemo_mode="log_kill")
    params = fitcsc.default_params(model)
    sched = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 10.0, "mg/kg", n_doses=2,
                                            interval_day=5.0, start_day=1.0),)
                           ).to_schedule(model.drugs, species="mouse")
    ts = jnp.array([0.0, 1.0, 4.0, 8.0])
    jitted = fitcsc.simulate(model, params, sched, ts)
    with jax.disable_jit():
        eager = fitcsc.simulate(model, params, sched, ts)
    np.testing.assert_allclose(jitted.states, eager.states, rtol=1e-12)


def test_no_retrace_when_only_values_change(monkeypatch):
    calls = []
    original = _sim_module.model_rhs  # simulate builds its right-hand side once per trace

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(_sim_module, "model_rhs", counting)
    # a configuration no other test compiles, so the jit cache starts empty for it
    model = fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab",),
                               cells_per_mm3=1.2345e6)
    sched = _regimens(model, 2)
    s0 = jax.tree_util.tree_map(lambda x: x[0], sched)
    s1 = jax.tree_util.tree_map(lambda x: x[1], sched)
    fitcsc.simulate(model, fitcsc.default_params(model), s0, TS)
    n_first = len(calls)
    assert n_first > 0
    fitcsc.simulate(model, fitcsc.default_params(model, self_renewal=0.8,
                                                 ec50_mg_per_L=3.0), s1, TS + 1.0)
    assert len(calls) == n_first  # new values, new regimen of the same length: no retrace
    fitcsc.simulate(fitcsc.ModelConfig(crowding="gompertz", drugs=("trastuzumab",),
                                       cells_per_mm3=1.2345e6),
                    fitcsc.default_params(model), s0, TS)
    assert len(calls) > n_first  # a different structure does retrace


def test_one_failing_member_does_not_change_the_others():
    model = fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab",))
    params = _batch_params(model, 4)
    # member 2 gets an absurd division rate: stiff, hits max_steps
    params = eqx.tree_at(lambda p: p.csc_division_rate, params,
                         params.csc_division_rate.at[2].set(1e7))
    one = jax.tree_util.tree_map(lambda x: x[0], _regimens(model, 1))
    out = jax.vmap(lambda p: fitcsc.simulate(model, p, one, TS, max_steps=200))(params)
    assert int(out.status[2]) != fitcsc.Status.SUCCESS
    for i in (0, 1, 3):
        p_i = jax.tree_util.tree_map(lambda x, i=i: x[i], params)
        ref = fitcsc.simulate(model, p_i, one, TS, max_steps=200)
        assert int(out.status[i]) == 0
        np.testing.assert_allclose(out.volume_mm3[i], ref.volume_mm3, rtol=1e-10)


def test_status_max_steps_and_throw():
    model = fitcsc.ModelConfig()
    params = fitcsc.default_params(model)
    sol = fitcsc.simulate(model, params, None, jnp.array([0.0, 1000.0]), max_steps=4)
    assert int(sol.status) == fitcsc.Status.MAX_STEPS
    assert "max_steps" in fitcsc.Status(int(sol.status)).message
    with pytest.raises(Exception, match="max_steps|maximum number of"):
        fitcsc.simulate(model, params, None, jnp.array([0.0, 1000.0]), max_steps=4,
                        throw=True)


def test_nonfinite_parameters_flagged():
    model = fitcsc.ModelConfig()
    params = fitcsc.default_params(model, csc_division_rate=jnp.nan)
    sol = fitcsc.simulate(model, params, None, TS)
    assert int(sol.status) != fitcsc.Status.SUCCESS
