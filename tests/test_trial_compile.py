"""The trial fit compiles once per model structure and data shape: the data (counts,
sizes) are traced arguments of the compiled fit and posterior programs
(`fitcsc._trial.fit.ObjectiveCore`), so a second data set of the same structure, e.g.
the next replicate of a calibration study, compiles nothing and is fitted to its own
counts, not the first set's."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitcsc
from fitcsc._jobs.compile import CompileStats
from fitcsc.trials import (
    Objective,
    PcrObservation,
    TrialData,
    TrialModel,
    draw_values,
    fit_trials,
    pcr_observations,
    posterior_draws,
)

CLINICAL = pathlib.Path(__file__).resolve().parents[1] / "data" / "clinical"


@pytest.fixture(scope="module")
def model():
    regimens = fitcsc.read_regimen_table(CLINICAL / "regimens.csv")
    arms, obs = pcr_observations(fitcsc.read_clinical(CLINICAL / "pcr_arms.csv"), regimens,
                                 trials=("NeoSphere",))
    names = ("log_kill_scale", "log_turnover", "logit_her2_independent", "logit_her2_csc")
    tm = TrialModel.build(arms, names, n_nodes=7, refine=4, n_burden=8)
    obs = [PcrObservation(o.arm, o.trial, o.definition, o.n, o.count) for o in obs]
    return tm, obs


def _data(obs, counts):
    return TrialData(pcr=[PcrObservation(o.arm, o.trial, o.definition, o.n, int(k))
                          for o, k in zip(obs, counts, strict=True)])


def _arm_rates(z, tm):
    return tm.pcr_rates(z)[0]


def test_second_data_set_compiles_nothing(model):
    tm, obs = model
    n = np.asarray([o.n for o in obs])
    first = Objective(tm, _data(obs, np.round(0.3 * n)))
    fit_a = fit_trials(first, n_starts=2, max_steps=30)
    posterior_draws(first, fit_a, 50, jax.random.PRNGKey(0))
    draw_values(_arm_rates, np.repeat(fit_a.z[None], 3, axis=0), batch=4, args=tm)
    # other counts and other trial sizes: same structure and shapes
    second = Objective(tm, _data(obs, np.round(0.15 * n)))
    with CompileStats() as c:
        fit_b = fit_trials(second, n_starts=2, max_steps=30)
        post = posterior_draws(second, fit_b, 50, jax.random.PRNGKey(1))
        draw_values(_arm_rates, post.draws[:3], batch=4, args=tm)
    assert c.n_compiles == 0, c.programs
    # the reused program fitted the second set's counts: its loss is the second
    # objective's, evaluated outside the compiled fit, and differs from the first's
    direct = 0.5 * float(jnp.sum(second(jnp.asarray(fit_b.z)) ** 2))
    assert fit_b.loss == pytest.approx(direct, rel=1e-9, abs=1e-12)
    assert 0.5 * float(jnp.sum(first(jnp.asarray(fit_b.z)) ** 2)) > direct + 1.0
    assert not np.allclose(fit_a.z, fit_b.z)


def test_objective_core_is_the_objective(model):
    """`Objective` delegates to its `ObjectiveCore`: the same residuals whether the core
    is traced through jit or not."""
    tm, obs = model
    objective = Objective(tm, _data(obs, [30, 45, 17, 24]))
    z = tm.z0() + 0.1
    r = objective(z)
    core_r = jax.jit(lambda zz, core: core.residuals(zz))(z, objective.core)
    np.testing.assert_allclose(np.asarray(core_r), np.asarray(r), rtol=1e-12, atol=1e-14)
    assert objective.p_k.tolist() == [30.0, 45.0, 17.0, 24.0]  # the core's arrays
