"""The small hierarchical design of `sbc.py` and `nuts_vs_stan.py`.

Mice in two arms (control, and a HER2-class arm with a constant effect from day 0),
observed at the same days. The per-curve model is fitcsc's CSC model (S/D, logistic
crowding, `csc_arm_spec`'s reference values); per mouse, the CSC division rate v_S and
the initial volume V0 are log-normal (non-centred random effects); the HER2 bulk
efficacy eps_D of the treated arm is one fixed effect (logit scale). Priors, in ``z``:
``log v_S ~ N(log 0.3, 0.5)``, ``logit eps_D ~ N(0, 1)``, ``log V0 ~ N(log 100, 0.5)``,
``omega ~ HalfNormal(0.3)``, ``sigma ~ HalfNormal(0.3)``. Volumes below
`DETECTION_LIMIT_MM3` are left-censored (M3).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import fitcsc

from fitcsc import ARM_EC50_MG_PER_L, TidyTable, default_arm_regimens
from fitcsc.population import population_model

REFERENCE = dict(csc_division_rate=0.3, self_renewal=0.6, bulk_division_rate=0.25,
                 bulk_death_rate=0.3, initial_csc_fraction=0.1, carrying_capacity_cells=1e10,
                 her2_efficacy_bulk=0.5)
PRIOR_LOC = {"csc_division_rate": math.log(0.3), "her2_efficacy_bulk": 0.0,
             "initial_volume_mm3": math.log(100.0)}
PRIOR_SCALE = {"csc_division_rate": 0.5, "her2_efficacy_bulk": 1.0, "initial_volume_mm3": 0.5}
OMEGA_SCALE = 0.3
SIGMA_SCALE = 0.3
DETECTION_LIMIT_MM3 = 1.0
RTOL, ATOL = 1e-6, 1e-6  # ODE tolerances (atol in cells), the same for Stan


def design(n_mice: int = 8, n_obs: int = 8, last_day: float = 21.0):
    """``(pop, batch)``: the population model (placeholder volumes) and its batch."""
    days = np.linspace(0.0, last_day, n_obs)
    arms = ["control"] * (n_mice // 2) + ["Trast"] * (n_mice - n_mice // 2)
    subjects = [f"m{i}" for i in range(n_mice)]
    table = TidyTable(study=np.array(["sim"] * (n_mice * n_obs)),
                      arm=np.repeat(arms, n_obs), subject=np.repeat(subjects, n_obs),
                      day=np.tile(days, n_mice), volume_mm3=np.full(n_mice * n_obs, 100.0))
    batch = fitcsc.make_batch(table, default_arm_regimens(table, warn=False),
                              detection_limit_mm3=DETECTION_LIMIT_MM3)
    model = fitcsc.ModelConfig(crowding="logistic", drugs=batch.drugs)
    ref = fitcsc.default_params(model, **REFERENCE, ec50_mg_per_L=ARM_EC50_MG_PER_L)
    spec = fitcsc.ParamSpec({"csc_division_rate": fitcsc.Positive(),
                             "her2_efficacy_bulk": fitcsc.Interval(0.0, 1.0),
                             "initial_volume_mm3": fitcsc.Positive()}, ref)
    pred = fitcsc.csc_predictor(model, spec, rtol=RTOL, atol=ATOL)
    growth = ("csc_division_rate", "initial_volume_mm3")
    pop = population_model(pred, batch, uses={"control": growth, "Trast": spec.labels()},
                           random={"animal": growth}, prior_loc=PRIOR_LOC,
                           prior_scale=PRIOR_SCALE, omega_scale=OMEGA_SCALE,
                           sigma_scale=SIGMA_SCALE)
    return pop, batch


def with_volumes(pop, volume_mm3):
    """``pop`` with these observed volumes (censored below the detection limit)."""
    v = jnp.asarray(volume_mm3, float)
    cens = pop.curves.mask & (v < DETECTION_LIMIT_MM3)
    v = jnp.where(cens, DETECTION_LIMIT_MM3, v)
    return eqx.tree_at(lambda p: (p.curves.volume_mm3, p.curves.censored), pop, (v, cens))


def simulated(pop, key):
    """``(pop with data, truth)``: data simulated from one prior draw."""
    k1, k2 = jax.random.split(key)
    truth = {k: v[0] for k, v in pop.sample_prior(k1, 1).items()}
    return with_volumes(pop, pop.simulate_volumes(k2, truth)), truth
