"""The CSC model family: configuration, state layout, vector field (DESIGN §2).

Base model "SD" in cell numbers, time in days::

    dS/dt = v_S (2 p_eff - 1) S g - delta_S S + omega D - k_S S
    dD/dt = 2 v_S (1 - p_eff) S g + (v_D' g - delta_D) D - omega D - k_D D

with ``N`` the total cell count, ``g(N)`` the crowding factor, ``p_eff = p (1 -
eps_S h_S B)`` and ``v_D' = v_D (1 - eps_D h_D B)`` under HER2 blockade ``B``, and
``k_D = sum_j k_chemo,j C_j``, ``k_S = sigma_S k_D + sum_j k_csc,j I_j``.

Extensions, each switched on in `ModelConfig`:

- ``progenitor``: S -> P -> D; ``dP/dt = 2 v_S (1-p_eff) S g + v_P (2q-1) P g
  - delta_P P - k_D P``, and D is fed by ``2 v_P (1-q) P g``.
- ``dormancy``: quiescent CSCs Q, ``S <-> Q``; Q neither divides nor is killed.
- ``plasticity``: ``"constant"`` (omega = omega_0) or ``"signal"``: an IL-6-like signal
  ``dL/dt = s_L S/c - delta_L L`` and ``omega = omega_0 (1 + a L)``.
- ``resistant_clone``: drug-insensitive CSCs R (same kinetics as S, no drug effect);
  their differentiated progeny join the sensitive bulk.
- ``damage_chain = n``: killed cells pass through ``n`` transit compartments at rate
  ``k_tr`` before they die (Simeoni 2004), so kill shows up in volume with a delay.

Cytostatic drugs multiply every division rate by ``G = prod_j (1 - e_j I_j)``.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .drugs import CATALOGUE, SPECIES, canonical_drug
from .pk import concentrations, concentrations_between, pk_arrays

CROWDING = ("none", "logistic", "gompertz")
PLASTICITY = ("none", "constant", "signal")
CHEMO_MODES = ("concentration", "log_kill")
CELLS_PER_MM3 = 1.0e6  # the usual conversion: about 1e6 tumour cells per mm3
_TINY = 1e-300


class ModelConfig(eqx.Module):
    """Static structure of a CSC model. Changing it recompiles; values never do.

    **Arguments** (all keyword):
    - `crowding`: ``"none"`` (g = 1), ``"logistic"`` (g = 1 - N/K) or ``"gompertz"``
      (g = ln(K/N), so an untreated tumour of one rate v follows Gompertz growth).
    - `progenitor`, `dormancy`, `resistant_clone`: bool switches.
    - `plasticity`: ``"none"``, ``"constant"`` or ``"signal"``.
    - `damage_chain`: number of transit compartments for killed cells (0 = off).
    - `drugs`: drug names (catalogue names or aliases); their order fixes the slots of
      per-drug parameters and of `DoseSchedule.drug`.
    - `chemo_mode`: ``"concentration"`` (kill rate proportional to C(t)) or ``"log_kill"``
      (an instant fractional kill at each chemotherapy dose).
    - `species`: ``"human"`` or ``"mouse"`` (default PK and dose conversion).
    - `cells_per_mm3`: cell density converting cells to volume.
    """

    crowding: str = "none"
    progenitor: bool = False
    dormancy: bool = False
    plasticity: str = "none"
    resistant_clone: bool = False
    damage_chain: int = 0
    drugs: tuple[str, ...] = ()
    chemo_mode: str = "concentration"
    species: str = "mouse"
    cells_per_mm3: float = CELLS_PER_MM3

    def __check_init__(self):
        for name, value, allowed in [
            ("crowding", self.crowding, CROWDING),
            ("plasticity", self.plasticity, PLASTICITY),
            ("chemo_mode", self.chemo_mode, CHEMO_MODES),
            ("species", self.species, SPECIES),
        ]:
            if value not in allowed:
                raise ValueError(f"ModelConfig.{name} must be one of {allowed}, got {value!r}")
        if int(self.damage_chain) != self.damage_chain or self.damage_chain < 0:
            raise ValueError(f"ModelConfig.damage_chain must be an integer >= 0, "
                             f"got {self.damage_chain!r}")
        for d in self.drugs:
            if canonical_drug(d) is None:
                raise ValueError(f"ModelConfig.drugs: unknown drug {d!r}; known: "
                                 f"{sorted(CATALOGUE)} (add one with fitcsc.register_drug)")
        names = [canonical_drug(d) for d in self.drugs]
        if len(set(names)) != len(names):
            raise ValueError(f"ModelConfig.drugs has duplicates: {self.drugs!r}")

    def __init__(self, *, crowding="none", progenitor=False, dormancy=False,
                 plasticity="none", resistant_clone=False, damage_chain=0, drugs=(),
                 chemo_mode="concentration", species="mouse", cells_per_mm3=CELLS_PER_MM3):
        self.crowding = crowding
        self.progenitor = bool(progenitor)
        self.dormancy = bool(dormancy)
        self.plasticity = plasticity
        self.resistant_clone = bool(resistant_clone)
        self.damage_chain = int(damage_chain)
        self.drugs = tuple(canonical_drug(d) or d for d in drugs)
        self.chemo_mode = chemo_mode
        self.species = species
        self.cells_per_mm3 = float(cells_per_mm3)

    # ---- state layout ----
    @property
    def state_names(self) -> tuple[str, ...]:
        names = ["S", "D"]
        if self.progenitor:
            names.append("P")
        if self.dormancy:
            names.append("Q")
        if self.resistant_clone:
            names.append("R")
        if self.plasticity == "signal":
            names.append("L")
        names += [f"X{i + 1}" for i in range(self.damage_chain)]
        return tuple(names)

    @property
    def n_states(self) -> int:
        return len(self.state_names)

    def index(self, name: str) -> int:
        return self.state_names.index(name)

    @property
    def cell_states(self) -> tuple[str, ...]:
        """States counted in the tumour's cell number (all but the signal L)."""
        return tuple(n for n in self.state_names if n != "L")

    @property
    def stem_states(self) -> tuple[str, ...]:
        return tuple(n for n in self.state_names if n in ("S", "Q", "R"))

    def drug_mask(self, drug_class: str) -> np.ndarray:
        return np.array([CATALOGUE[d].drug_class == drug_class for d in self.drugs], bool)

    @property
    def has_log_kill(self) -> bool:
        return self.chemo_mode == "log_kill" and bool(self.drug_mask("chemo").any())


def hill_response(conc, ec50, hill):
    """``C^n / (EC50^n + C^n)``, differentiable at ``C = 0``."""
    pos = conc > 0
    x = jnp.exp(hill * (jnp.log(jnp.where(pos, conc, 1.0)) - jnp.log(ec50)))
    return jnp.where(pos, x / (1.0 + x), 0.0)


def drug_effects(model: ModelConfig, params, conc):
    """Effect terms at concentrations ``conc`` (shape ``(n_drugs,)``, mg/L).

    Returns ``(B, G, k_S, k_D)``: HER2 blockade in [0, 1], the cytostatic division
    factor, and the CSC and bulk kill rates [1/day].
    """
    if not model.drugs:
        zero = jnp.zeros(())
        return zero, jnp.ones(()), zero, zero
    I = hill_response(conc, params.ec50_mg_per_L, params.hill)
    her2, chemo = model.drug_mask("her2"), model.drug_mask("chemo")
    csc, cyto = model.drug_mask("csc"), model.drug_mask("cytostatic")
    B = 1.0 - jnp.prod(jnp.where(her2, 1.0 - I, 1.0))
    G = jnp.prod(jnp.where(cyto, 1.0 - params.cytostatic_efficacy * I, 1.0))
    if model.chemo_mode == "concentration":
        k_D = jnp.sum(jnp.where(chemo, params.kill_rate * conc, 0.0))
    else:
        k_D = jnp.zeros(())
    k_S = params.csc_sparing * k_D + jnp.sum(jnp.where(csc, params.csc_kill_rate * I, 0.0))
    return B, G, k_S, k_D


def crowding_factor(model: ModelConfig, N, K):
    if model.crowding == "none":
        return jnp.ones_like(N)
    if model.crowding == "logistic":
        return 1.0 - N / K
    return jnp.log(K) - jnp.log(jnp.maximum(N, _TINY))


def total_cells(model: ModelConfig, y):
    """Cells that make up the tumour volume (living and damaged), shape ``y.shape[:-1]``."""
    idx = [model.index(n) for n in model.cell_states]
    return jnp.sum(y[..., jnp.asarray(idx)], axis=-1)


def stem_cells(model: ModelConfig, y):
    idx = [model.index(n) for n in model.stem_states]
    return jnp.sum(y[..., jnp.asarray(idx)], axis=-1)


def vector_field(model: ModelConfig, t, y, params, conc):
    """``dy/dt`` of the configured model at drug concentrations ``conc`` [mg/L]."""
    del t
    return cell_field(model, y, params, drug_effects(model, params, conc))


def cell_field(model: ModelConfig, y, params, effects):
    """``dy/dt`` of the configured model under the drug ``effects`` ``(B, G, k_S, k_D)``
    of `drug_effects`."""
    ix = {n: i for i, n in enumerate(model.state_names)}
    get = lambda n: y[ix[n]] if n in ix else jnp.zeros((), y.dtype)  # noqa: E731
    S, D, P, Q, R, L = (get(n) for n in ("S", "D", "P", "Q", "R", "L"))
    p = params
    v_S, p_self, d_S = p.csc_division_rate, p.self_renewal, p.csc_death_rate
    v_D, d_D, K = p.bulk_division_rate, p.bulk_death_rate, p.carrying_capacity_cells
    B, G, k_S, k_D = effects
    p_eff = p_self * (1.0 - p.her2_efficacy_csc * p.her2_dependence_csc * B)
    v_D_eff = v_D * (1.0 - p.her2_efficacy_bulk * p.her2_dependence_bulk * B)
    g = crowding_factor(model, total_cells(model, y), K)
    if model.plasticity == "none":
        omega = jnp.zeros(())
    elif model.plasticity == "constant":
        omega = p.plasticity_rate
    else:
        omega = p.plasticity_rate * (1.0 + p.signal_gain * L)

    csc_renew = v_S * G * (2.0 * p_eff - 1.0) * S * g
    csc_out = 2.0 * v_S * G * (1.0 - p_eff) * S * g  # differentiating divisions
    res_renew = v_S * (2.0 * p_self - 1.0) * R * g  # resistant clone: no drug effect
    res_out = 2.0 * v_S * (1.0 - p_self) * R * g
    killed_S = k_S * S
    killed_bulk = k_D * (D + P)

    d = {}
    d["S"] = csc_renew - d_S * S + omega * D - killed_S
    if model.dormancy:
        entry, exit_ = p.dormancy_entry_rate * S, p.dormancy_exit_rate * Q
        d["S"] = d["S"] - entry + exit_
        d["Q"] = entry - exit_ - p.dormant_death_rate * Q
    if model.resistant_clone:
        d["R"] = res_renew - d_S * R
    if model.progenitor:
        v_P, q = p.progenitor_division_rate, p.progenitor_self_renewal
        d["P"] = (csc_out + res_out + v_P * G * (2.0 * q - 1.0) * P * g
                  - p.progenitor_death_rate * P - k_D * P)
        into_D = 2.0 * v_P * G * (1.0 - q) * P * g
    else:
        into_D = csc_out + res_out
    d["D"] = into_D + (v_D_eff * G * g - d_D) * D - omega * D - k_D * D
    if model.plasticity == "signal":
        d["L"] = p.signal_production * S / model.cells_per_mm3 - p.signal_decay_rate * L
    if model.damage_chain:
        k_tr = p.damage_transit_rate
        X = [y[ix[f"X{i + 1}"]] for i in range(model.damage_chain)]
        d["X1"] = killed_S + killed_bulk - k_tr * X[0]
        for i in range(1, model.damage_chain):
            d[f"X{i + 1}"] = k_tr * (X[i - 1] - X[i])
    return jnp.stack([d[n] for n in model.state_names])


def model_rhs(model: ModelConfig, params, schedule, effects=None, exposure=None):
    """The right-hand side ``f(t, y, args=None)`` of ``model`` with ``params`` under
    ``schedule`` (a `DoseSchedule`): `vector_field` at the closed-form concentrations of
    every drug. The one builder of the model's ODE: `fitcsc.simulate` integrates it with
    diffrax, the paced evaluator of the fit engine with its forward sensitivities.

    Between two jumps of the schedule (doses, infusion ends) the paced evaluator of the
    fit engine holds what does not change:

    - ``effects``: the drug effects (`exposure_effects`) to use at every ``t``, where
      every exposure is constant between jumps (`fitcsc._model.pk.stepwise_exposure`);
    - ``exposure``: ``(x, r, rates, t_start)``, the interval's
      `fitcsc._model.pk.held_exposure` from ``t_start`` on and the exponentials' rates:
      the concentrations at ``t`` are then `fitcsc._model.pk.concentrations_between`,
      not a sum over every dose.

    **Raises:** `ValueError` if ``params.pk`` does not hold one PK model per drug.
    """
    if len(params.pk) != len(model.drugs):
        raise ValueError(f"params.pk has {len(params.pk)} PK models for "
                         f"{len(model.drugs)} drugs {model.drugs}")

    if effects is None and exposure is None:
        coefs, rates = pk_arrays(params.pk)  # once, not at every evaluation

    def f(t, y, args=None):
        del args
        if effects is not None:
            held = effects
        elif exposure is not None:
            x, r, rates_, t_start = exposure
            held = drug_effects(model, params, concentrations_between(x, r, rates_,
                                                                      t - t_start))
        else:
            held = drug_effects(model, params, concentrations(coefs, rates, schedule, t))
        return cell_field(model, y, params, held)

    return f


def exposure_effects(model: ModelConfig, params, schedule, t):
    """`drug_effects` at time ``t`` [day] at the closed-form concentrations of every
    drug under ``schedule``."""
    coefs, rates = pk_arrays(params.pk)
    return drug_effects(model, params, concentrations(coefs, rates, schedule, t))


def initial_state(model: ModelConfig, params):
    """State at ``t0`` from the initial volume and fractions in ``params`` [cells]."""
    p = params
    N0 = p.initial_volume_mm3 * model.cells_per_mm3
    stem = p.initial_csc_fraction * N0
    f_R = p.resistant_fraction if model.resistant_clone else 0.0
    f_Q = p.initial_dormant_fraction if model.dormancy else 0.0
    f_P = p.initial_progenitor_fraction if model.progenitor else 0.0
    y = {
        "S": stem * (1.0 - f_R) * (1.0 - f_Q),
        "Q": stem * (1.0 - f_R) * f_Q,
        "R": stem * f_R,
        "P": f_P * N0,
        "D": N0 - stem - f_P * N0,
        "L": jnp.zeros(()),
    }
    return jnp.stack([jnp.asarray(y.get(n, 0.0), dtype=float) * jnp.ones(())
                      for n in model.state_names])


def log_kill_jump(model: ModelConfig, params, y, drug, active):
    """State just after a log-kill chemotherapy dose of drug slot ``drug``.

    Cycling cells (D, P) lose ``1 - exp(-LK)``, CSCs ``1 - exp(-sigma_S LK)``; dormant
    and resistant CSCs are spared. With a damage chain the killed cells enter X1.
    """
    chemo = jnp.asarray(model.drug_mask("chemo"))
    lk = jnp.where(active & chemo[drug], params.log_kill_per_dose[drug], 0.0)
    frac = {"S": -jnp.expm1(-params.csc_sparing * lk), "D": -jnp.expm1(-lk),
            "P": -jnp.expm1(-lk)}
    names = model.state_names
    killed = jnp.stack([frac.get(n, 0.0) * y[i] if n in frac else jnp.zeros(())
                        for i, n in enumerate(names)])
    y = y - killed
    if model.damage_chain:
        y = y.at[model.index("X1")].add(jnp.sum(killed))
    return y
