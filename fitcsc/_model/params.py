"""Model parameters as an immutable pytree, with units.

All fields are arrays (values are traced, so changing them never recompiles).
Fields that the configured model does not use are simply ignored by it; the
transform spec (`fitcsc.ParamSpec`) fixes them.

Per-drug fields are arrays of shape ``(n_drugs,)`` aligned with ``model.drugs``.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .drugs import default_pk


def _arr():
    return eqx.field(converter=jnp.asarray)



class CSCParams(eqx.Module):
    # --- CSC and bulk kinetics (DESIGN §2) ---
    csc_division_rate: Float[Array, ""] = _arr()  # v_S [1/day]
    self_renewal: Float[Array, ""] = _arr()  # p, P(symmetric self-renewal) [-]
    csc_death_rate: Float[Array, ""] = _arr()  # delta_S [1/day]
    bulk_division_rate: Float[Array, ""] = _arr()  # v_D [1/day]
    bulk_death_rate: Float[Array, ""] = _arr()  # delta_D [1/day]
    plasticity_rate: Float[Array, ""] = _arr()  # omega_0, D -> S [1/day]
    carrying_capacity_cells: Float[Array, ""] = _arr()  # K [cells]
    # --- progenitor compartment (SPD) ---
    progenitor_division_rate: Float[Array, ""] = _arr()  # v_P [1/day]
    progenitor_self_renewal: Float[Array, ""] = _arr()  # q [-]
    progenitor_death_rate: Float[Array, ""] = _arr()  # delta_P [1/day]
    # --- CSC dormancy ---
    dormancy_entry_rate: Float[Array, ""] = _arr()  # S -> Q [1/day]
    dormancy_exit_rate: Float[Array, ""] = _arr()  # Q -> S [1/day]
    dormant_death_rate: Float[Array, ""] = _arr()  # delta_Q [1/day]
    # --- signal-driven plasticity (IL-6-like signal L, dimensionless) ---
    signal_production: Float[Array, ""] = _arr()  # s_L [1/(day * mm3 of CSCs)]
    signal_decay_rate: Float[Array, ""] = _arr()  # delta_L [1/day]
    signal_gain: Float[Array, ""] = _arr()  # a: omega = omega_0 (1 + a L) [-]
    # --- chemotherapy damage chain (Simeoni 2004) ---
    damage_transit_rate: Float[Array, ""] = _arr()  # k_tr [1/day]
    # --- initial state at t0 ---
    initial_volume_mm3: Float[Array, ""] = _arr()  # V_0 [mm3]
    initial_csc_fraction: Float[Array, ""] = _arr()  # (S+Q+R)/N at t0 [-]
    initial_progenitor_fraction: Float[Array, ""] = _arr()  # P/N at t0 [-]
    initial_dormant_fraction: Float[Array, ""] = _arr()  # Q/(S+Q) at t0 [-]
    resistant_fraction: Float[Array, ""] = _arr()  # R/(S+Q+R) at t0 [-]
    # --- drug effects, tumour level ---
    her2_efficacy_csc: Float[Array, ""] = _arr()  # epsilon_S [-]
    her2_efficacy_bulk: Float[Array, ""] = _arr()  # epsilon_D [-]
    her2_dependence_csc: Float[Array, ""] = _arr()  # h_S [-]
    her2_dependence_bulk: Float[Array, ""] = _arr()  # h_D [-]
    csc_sparing: Float[Array, ""] = _arr()  # sigma_S: k_S = sigma_S k_D [-]
    # --- drug effects, per drug (shape (n_drugs,)) ---
    ec50_mg_per_L: Float[Array, " n_drugs"] = _arr()  # EC50 [mg/L]
    hill: Float[Array, " n_drugs"] = _arr()  # Hill coefficient n [-]
    kill_rate: Float[Array, " n_drugs"] = _arr()  # k_chemo [L/(mg*day)]
    log_kill_per_dose: Float[Array, " n_drugs"] = _arr()  # ln-kill per dose (reduced form) [-]
    csc_kill_rate: Float[Array, " n_drugs"] = _arr()  # CSC-targeted max kill [1/day]
    cytostatic_efficacy: Float[Array, " n_drugs"] = _arr()  # max fractional slowing [-]
    # --- PK, one module per drug ---
    pk: tuple = ()


DEFAULTS = dict(
    csc_division_rate=0.5,
    self_renewal=0.6,
    csc_death_rate=0.0,
    bulk_division_rate=0.25,
    bulk_death_rate=0.1,
    plasticity_rate=0.0,
    carrying_capacity_cells=1e10,
    progenitor_division_rate=0.5,
    progenitor_self_renewal=0.45,
    progenitor_death_rate=0.05,
    dormancy_entry_rate=0.05,
    dormancy_exit_rate=0.05,
    dormant_death_rate=0.0,
    signal_production=1e-3,
    signal_decay_rate=1.0,
    signal_gain=1.0,
    damage_transit_rate=0.5,
    initial_volume_mm3=100.0,
    initial_csc_fraction=0.05,
    initial_progenitor_fraction=0.2,
    initial_dormant_fraction=0.2,
    resistant_fraction=0.0,
    her2_efficacy_csc=0.5,
    her2_efficacy_bulk=0.5,
    her2_dependence_csc=1.0,
    her2_dependence_bulk=1.0,
    csc_sparing=0.1,
)
DRUG_DEFAULTS = dict(
    ec50_mg_per_L=10.0,
    hill=1.0,
    kill_rate=0.1,
    log_kill_per_dose=1.0,
    csc_kill_rate=0.1,
    cytostatic_efficacy=0.5,
)
PER_DRUG_FIELDS = tuple(DRUG_DEFAULTS)
SCALAR_FIELDS = tuple(DEFAULTS)


def default_params(model, **overrides) -> CSCParams:
    """Default parameters for ``model`` (a `fitcsc.ModelConfig`), float64 arrays.

    Per-drug fields get one value per drug in ``model.drugs`` (a scalar override is
    broadcast), and ``pk`` comes from the catalogue for ``model.species``.

    ```python
    model = fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab",))
    params = fitcsc.default_params(model, self_renewal=0.7, ec50_mg_per_L=20.0)
    ```
    """
    unknown = set(overrides) - set(DEFAULTS) - set(DRUG_DEFAULTS) - {"pk"}
    if unknown:
        raise TypeError(f"unknown parameter(s) {sorted(unknown)}; see fitcsc.CSCParams")
    n = len(model.drugs)
    kw = {k: jnp.asarray(overrides.get(k, v), dtype=float) for k, v in DEFAULTS.items()}
    for k, v in DRUG_DEFAULTS.items():
        val = jnp.asarray(overrides.get(k, v), dtype=float)
        kw[k] = jnp.broadcast_to(val, (n,)) + 0.0
    kw["pk"] = tuple(overrides.get("pk", [default_pk(d, model.species) for d in model.drugs]))
    return CSCParams(**kw)
