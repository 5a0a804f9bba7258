"""Closed-form linear pharmacokinetics.

Every linear compartment model has a unit impulse response that is a sum of
exponentials, ``h(tau) = sum_k c_k exp(-lambda_k tau)`` (concentration per unit
amount). A regimen's concentration is the superposition of that response over its
doses, so fast elimination adds no stiffness to the tumour ODE and nothing is
integrated. Zero-order infusions of length ``T`` use the exact convolution of the
same exponentials with a box of height ``1/T``.

Each PK module returns its own exponentials (1 for one-compartment IV, 2 for
two-compartment or oral); `pk_arrays` pads them with zero coefficients to the largest
count among a model's drugs, so drugs with different PK models stack into one array.

Units: amounts in mg, volumes in L, so concentrations are mg/L (= ug/mL); time in
days.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def _pad(coefs, rates, n_exp):
    """Pad to ``n_exp`` exponentials: coefficient 0, rate 1 (contributes nothing)."""
    n = coefs.shape[0]
    coefs = jnp.concatenate([coefs, jnp.zeros(n_exp - n)])
    rates = jnp.concatenate([rates, jnp.ones(n_exp - n)])
    return coefs, rates


def pk_arrays(pks) -> tuple[Float[Array, "n_drugs n_exp"], Float[Array, "n_drugs n_exp"]]:
    """Stack the exponentials of several PK modules, padded to a common count."""
    if not pks:
        return jnp.zeros((0, 1)), jnp.ones((0, 1))
    cr = [pk.exponentials() for pk in pks]
    n_exp = max(c.shape[0] for c, _ in cr)
    padded = [_pad(c, r, n_exp) for c, r in cr]
    return jnp.stack([c for c, _ in padded]), jnp.stack([r for _, r in padded])


class OneCompartment(eqx.Module):
    """One-compartment IV bolus/infusion: ``C = A/V exp(-ln2 tau / t_half)``."""

    half_life_day: Float[Array, ""] | float  # t_1/2 [day]
    volume_L: Float[Array, ""] | float  # V [L]

    def exponentials(self):
        """``(coefs [1/L], rates [1/day])`` of the unit impulse response."""
        k = jnp.log(2.0) / jnp.asarray(self.half_life_day, float)
        return jnp.stack([1.0 / jnp.asarray(self.volume_L, float)]), jnp.stack([k])


class OneCompartmentOral(eqx.Module):
    """One-compartment with first-order absorption (Bateman function)."""

    half_life_day: Float[Array, ""] | float  # elimination t_1/2 [day]
    volume_L: Float[Array, ""] | float  # V/F-free volume [L]
    absorption_rate: Float[Array, ""] | float  # k_a [1/day]
    bioavailability: Float[Array, ""] | float = 1.0  # F [-]

    def exponentials(self):
        """``(coefs [1/L], rates [1/day])`` of the unit impulse response."""
        k = jnp.log(2.0) / jnp.asarray(self.half_life_day, float)
        ka = jnp.asarray(self.absorption_rate, float)
        # ka == k has no sum-of-exponentials form (C ~ t e^-kt): nudge ka by 1e-6
        # relative, which changes C by O(1e-6) and keeps everything finite.
        close = jnp.abs(ka - k) < 1e-7 * k
        ka = jnp.where(close, k * (1.0 + 1e-6), ka)
        a = self.bioavailability * ka / (self.volume_L * (ka - k))
        return jnp.stack([a, -a]), jnp.stack([k, ka])


class TwoCompartment(eqx.Module):
    """Two-compartment IV model in clearance form (e.g. trastuzumab, Bruno 2005)."""

    clearance_L_per_day: Float[Array, ""] | float  # CL [L/day]
    central_volume_L: Float[Array, ""] | float  # V1 [L]
    k12_per_day: Float[Array, ""] | float  # k12 [1/day]
    k21_per_day: Float[Array, ""] | float  # k21 [1/day]

    def macro_rates(self):
        """``(alpha, beta)`` [1/day], alpha > beta; beta is the terminal rate."""
        v1 = jnp.asarray(self.central_volume_L, float)
        k10 = self.clearance_L_per_day / v1
        k12 = jnp.asarray(self.k12_per_day, float)
        k21 = jnp.asarray(self.k21_per_day, float)
        s = k10 + k12 + k21
        disc = jnp.sqrt(s * s - 4.0 * k10 * k21)
        return 0.5 * (s + disc), 0.5 * (s - disc)

    def exponentials(self):
        """``(coefs [1/L], rates [1/day])`` of the unit impulse response."""
        v1 = jnp.asarray(self.central_volume_L, float)
        k21 = jnp.asarray(self.k21_per_day, float)
        alpha, beta = self.macro_rates()
        a = (alpha - k21) / (v1 * (alpha - beta))
        b = (k21 - beta) / (v1 * (alpha - beta))
        return jnp.stack([a, b]), jnp.stack([alpha, beta])


def unit_response(coefs, rates, tau_day, duration_day):
    """Concentration [mg/L per mg] at ``tau_day`` after the start of one dose.

    ``duration_day == 0`` is a bolus; otherwise a zero-order infusion of that length:
    ``sum_k c_k exp(-l_k a) (1 - exp(-l_k w)) / (l_k T)`` with ``a = max(tau - T, 0)``,
    ``w = tau - a``, which tends to the bolus ``sum_k c_k exp(-l_k tau)`` as T -> 0.
    Zero for ``tau_day < 0``. Safe to differentiate everywhere.
    """
    started = tau_day >= 0.0
    tau = jnp.where(started, tau_day, 0.0)
    is_inf = duration_day > 0.0
    dur = jnp.where(is_inf, duration_day, 1.0)
    a = jnp.where(is_inf, jnp.maximum(tau - dur, 0.0), tau)
    lw = rates * (tau - a)
    safe_lw = jnp.where(lw > 0.0, lw, 1.0)
    frac = jnp.where(lw > 0.0, -jnp.expm1(-safe_lw) / safe_lw, 1.0)  # (1-e^-x)/x
    width_factor = jnp.where(is_inf, frac * (tau - a) / dur, 1.0)
    return jnp.where(started, jnp.sum(coefs * jnp.exp(-rates * a) * width_factor), 0.0)


def held_exposure(pk_coefs, pk_rates, schedule, t_day, inside_day):
    """The exposure on an interval between two jumps of ``schedule``
    (`fitcsc._model.regimen.discontinuity_times`) that starts at ``t_day``, as
    `concentrations_between` needs it.

    Each exponential of a drug's unit response is one linear compartment: on such an
    interval its value decays at its rate from its value at the start, plus the input
    of the infusions running in it. ``inside_day``, a time strictly inside the interval,
    decides which doses have started and which infusions run (so a dose at ``t_day``
    itself counts whatever the rounding of ``t_day``).

    **Returns:** ``(x, r)``, shape ``(n_drugs, n_exp)``: each exponential's value at
    ``t_day`` [mg/L] and its input rate [mg/L/day].
    """
    n_drugs = pk_coefs.shape[0]
    drug = schedule.drug
    c, lam = pk_coefs[drug], pk_rates[drug]  # (n_doses, n_exp)
    started = schedule.mask & (schedule.time_day <= inside_day)
    dur = schedule.duration_day
    elapsed = jnp.maximum(t_day - schedule.time_day, 0.0)
    # per dose and exponential: `unit_response` of that exponential alone
    comp = jax.vmap(lambda ck, lk, e, d: jax.vmap(
        lambda cj, lj: unit_response(cj[None], lj[None], e, d))(ck, lk))(c, lam, elapsed, dur)
    x_dose = jnp.where(started[:, None], comp * schedule.amount_mg[:, None], 0.0)
    running = started & (dur > 0.0) & (inside_day < schedule.time_day + dur)
    r_dose = jnp.where(running[:, None],
                       c * (schedule.amount_mg / jnp.where(dur > 0.0, dur, 1.0))[:, None], 0.0)
    onehot = (drug[:, None] == jnp.arange(n_drugs)[None, :])[:, :, None]
    x = jnp.sum(jnp.where(onehot, x_dose[:, None, :], 0.0), axis=0)
    r = jnp.sum(jnp.where(onehot, r_dose[:, None, :], 0.0), axis=0)
    return x, r


def concentrations_between(x, r, pk_rates, dt_day):
    """Concentrations of every drug ``dt_day`` after the start of an interval between
    jumps, from its `held_exposure` ``(x, r)``: each exponential
    ``x exp(-l dt) + r (1 - exp(-l dt)) / l`` (``r dt`` at ``l = 0``), summed.
    Shape ``(n_drugs,)``."""
    pos = pk_rates > 0.0
    safe = jnp.where(pos, pk_rates, 1.0)
    grow = jnp.where(pos, -jnp.expm1(-safe * dt_day) / safe, dt_day)
    return jnp.sum(x * jnp.exp(-pk_rates * dt_day) + r * grow, axis=1)


def concentrations(pk_coefs, pk_rates, schedule, t_day):
    """Concentrations of every drug slot at time ``t_day`` by superposition.

    **Arguments:**
    - `pk_coefs`, `pk_rates`: shape ``(n_drugs, n_exp)`` from `pk_arrays`.
    - `schedule`: a `DoseSchedule` with padded arrays of length ``n_doses``.
    - `t_day`: scalar time [day].

    **Returns:** shape ``(n_drugs,)`` [mg/L].
    """
    n_drugs = pk_coefs.shape[0]
    if n_drugs == 0:
        return jnp.zeros((0,))
    drug = schedule.drug
    c = pk_coefs[drug]  # (n_doses, n_exp)
    r = pk_rates[drug]
    tau = t_day - schedule.time_day
    per_dose = jnp.vectorize(unit_response, signature="(k),(k),(),()->()")(
        c, r, tau, schedule.duration_day
    )
    per_dose = jnp.where(schedule.mask, per_dose * schedule.amount_mg, 0.0)
    onehot = drug[:, None] == jnp.arange(n_drugs)[None, :]
    return jnp.sum(jnp.where(onehot, per_dose[:, None], 0.0), axis=0)


def unit_auc(coefs, rates, tau_day, duration_day):
    """``int_0^tau`` of `unit_response` [mg day/L per mg], in closed form.

    Bolus: ``sum_k c_k (1 - exp(-l_k tau)) / l_k``. Infusion of length ``T``: the
    integral of the rising part up to ``u = min(tau, T)``, ``sum_k c_k (u - (1 -
    exp(-l_k u)) / l_k) / (l_k T)``, plus the decay from the end-of-infusion level
    after ``T``. Zero for ``tau_day <= 0``.
    """
    started = tau_day > 0.0
    tau = jnp.where(started, tau_day, 0.0)
    is_inf = duration_day > 0.0
    dur = jnp.where(is_inf, duration_day, 1.0)
    bolus = jnp.sum(coefs * -jnp.expm1(-rates * tau) / rates)
    u = jnp.minimum(tau, dur)
    rising = jnp.sum(coefs * (u + jnp.expm1(-rates * u) / rates) / (rates * dur))
    level = coefs * -jnp.expm1(-rates * dur) / (rates * dur)
    after = jnp.maximum(tau - dur, 0.0)
    decay = jnp.sum(level * -jnp.expm1(-rates * after) / rates)
    return jnp.where(started, jnp.where(is_inf, rising + decay, bolus), 0.0)


def stepwise_exposure(coefs, rates, schedule) -> bool:
    """Whether every concentration is constant between the jumps of ``schedule`` (a
    `DoseSchedule`, leading axes allowed; `fitcsc._model.regimen.discontinuity_times`)
    for drugs with the exponentials ``coefs, rates`` (`pk_arrays`): boluses only, of
    drugs whose unit response does not decay (each exponential with a coefficient has
    rate 0, as the constant unit exposure of a PDX arm's pseudo-drug, `fitcsc._io.arms`).
    A host-side check of concrete values (numpy)."""
    coefs, rates = np.asarray(coefs), np.asarray(rates)
    mask, dur = np.asarray(schedule.mask), np.asarray(schedule.duration_day)
    flat = bool(np.all((coefs == 0.0) | (rates == 0.0)))
    return flat and not bool(np.any(mask & (dur != 0.0)))


def cumulative_exposure(pk_coefs, pk_rates, schedule, t_day):
    """Per-drug AUC from the first dose to ``t_day`` [mg day/L], shape ``(n_drugs,)``."""
    n_drugs = pk_coefs.shape[0]
    if n_drugs == 0:
        return jnp.zeros((0,))
    drug = schedule.drug
    per_dose = jnp.vectorize(unit_auc, signature="(k),(k),(),()->()")(
        pk_coefs[drug], pk_rates[drug], t_day - schedule.time_day, schedule.duration_day)
    per_dose = jnp.where(schedule.mask, per_dose * schedule.amount_mg, 0.0)
    onehot = drug[:, None] == jnp.arange(n_drugs)[None, :]
    return jnp.sum(jnp.where(onehot, per_dose[:, None], 0.0), axis=0)
