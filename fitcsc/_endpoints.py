"""Clinical endpoints from one simulated residual state: pCR, cure, DFS (DESIGN §3).

Virtual patients vary log-normally around typical parameters; their random effects
``eta`` are drawn once (common random numbers, `draw_eta`) or placed on Gauss–Hermite
nodes (`gauss_hermite_eta`), so arm-level predictions are smooth, differentiable
functions of the parameters. Everything vmaps over patients (and, one level up, arms).

Per patient, at surgery (or at the end of therapy) ``t``:

- ``P(pCR) = exp(-N_inv(t))``: residual invasive cells are Poisson with mean ``N_inv``
  (all living tumour cells; damaged transit cells are dying and do not count).
- ``P(cure) = exp(-pi S_res)``: each residual CSC founds a lasting lineage with
  probability ``pi = max(0, 1 - d/b)`` (supercritical birth-death lineage with birth
  ``b = v_S p`` and death ``d = v_S (1 - p) + delta_S``, drug washed out). With a
  Poisson number of residual CSCs this is exact (the Poisson generating function).
- Recurrence: a non-cured patient's surviving lineages regrow at the CSC net rate
  ``lambda = b - d`` from about ``1/pi`` cells each (the branching-process size of a
  surviving lineage) until ``detection_cells``; ``t_rec = t + ln(detection_cells pi /
  (pi S_res)) / lambda`` for ``pi S_res < detection_cells pi``. Its timing is smoothed
  by a logistic of width ``timing_sd_day`` (the spread of lineage establishment),
  which keeps DFS differentiable: ``DFS(s) = P(cure) + (1 - P(cure)) sigma((t_rec -
  s)/w)``.

pCR and recurrence come from the same state, so a patient can reach pCR and recur
(``N_inv`` small but ``pi S_res`` not) or be cured without pCR.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._model import ModelConfig
from ._simulate import simulate

_FRACTION_FIELDS = ("initial_csc_fraction", "self_renewal", "her2_efficacy_csc",
                    "her2_efficacy_bulk", "csc_sparing", "resistant_fraction")


def draw_eta(key, n_patients: int, n_eta: int) -> Float[Array, "n_patients n_eta"]:
    """Standard-normal random effects, drawn once and kept (common random numbers)."""
    return jax.random.normal(key, (n_patients, n_eta))


def gauss_hermite_eta(n_per_dim: int, n_eta: int):
    """Tensor Gauss–Hermite nodes and weights for ``E[f(eta)]``, eta ~ N(0, I).

    **Returns:** ``(eta (n_per_dim**n_eta, n_eta), weights (n,))``, weights sum to 1.
    """
    x, w = np.polynomial.hermite_e.hermegauss(n_per_dim)
    w = w / w.sum()
    grids = np.meshgrid(*([x] * n_eta), indexing="ij")
    wgrids = np.meshgrid(*([w] * n_eta), indexing="ij")
    eta = np.stack([g.ravel() for g in grids], axis=-1)
    weights = np.prod(np.stack([g.ravel() for g in wgrids], axis=-1), axis=-1)
    return jnp.asarray(eta), jnp.asarray(weights)


def individual_params(params, omega: dict[str, float | Array], eta, *, hr_positive=None,
                      hr_effect: dict[str, float | Array] | None = None):
    """Patient parameters: ``theta_i = theta exp(omega eta_i)`` per field in ``omega``.

    Fields that are fractions (e.g. ``initial_csc_fraction``, ``self_renewal``) vary on
    the logit scale instead. ``hr_effect`` multiplies fields for hormone-receptor-
    positive patients (``hr_positive``: bool per patient): a log-scale shift
    ``theta exp(hr_effect)`` (logit-scale shift for fractions).

    **Arguments:** ``eta`` of shape ``(n_eta,)`` with ``n_eta == len(omega)`` (vmap for
    many patients). **Returns:** a `CSCParams`.
    """
    names = list(omega)
    values = []
    for k, name in enumerate(names):
        shift = omega[name] * eta[k]
        if hr_effect and name in hr_effect and hr_positive is not None:
            shift = shift + jnp.where(hr_positive, hr_effect[name], 0.0)
        base = getattr(params, name)
        if name in _FRACTION_FIELDS:
            values.append(jax.nn.sigmoid(jnp.log(base) - jnp.log1p(-base) + shift))
        else:
            values.append(base * jnp.exp(shift))
    extra = [n for n in (hr_effect or {}) if n not in omega]
    for name in extra:
        base = getattr(params, name)
        shift = jnp.where(hr_positive, hr_effect[name], 0.0)
        if name in _FRACTION_FIELDS:
            values.append(jax.nn.sigmoid(jnp.log(base) - jnp.log1p(-base) + shift))
        else:
            values.append(base * jnp.exp(shift))
    return eqx.tree_at(lambda p: [getattr(p, n) for n in names + extra], params, values)


def lineage_survival(params):
    """``(pi, lambda)``: a residual CSC's chance of a lasting lineage and its net rate."""
    b = params.csc_division_rate * params.self_renewal
    d = params.csc_division_rate * (1.0 - params.self_renewal) + params.csc_death_rate
    pi = jnp.maximum(1.0 - d / b, 0.0)
    return pi, b - d


class Endpoints(eqx.Module):
    """Per-patient endpoints at the evaluation time ``t`` (see module docstring)."""

    invasive_cells: Float[Array, ""]  # N_inv(t)
    residual_csc: Float[Array, ""]  # S + Q + R at t
    p_pcr: Float[Array, ""]
    p_cure: Float[Array, ""]
    recurrence_day: Float[Array, ""]  # t_rec if not cured (inf if pi = 0)
    status: Array


def patient_endpoints(model: ModelConfig, params, schedule, t_day, *, t0_day=0.0,
                      detection_cells: float = 1e9, **simulate_kw) -> Endpoints:
    """Simulate one patient to ``t_day`` and compute pCR, cure and recurrence time."""
    ts = jnp.stack([jnp.asarray(t0_day, float), jnp.asarray(t_day, float)])
    sol = simulate(model, params, schedule, ts, t0=t0_day, **simulate_kw)
    y = sol.states[-1]
    living = [model.index(n) for n in model.cell_states if not n.startswith("X")]
    stem = [model.index(n) for n in model.stem_states]
    n_inv = jnp.maximum(jnp.sum(y[jnp.asarray(living)]), 0.0)
    s_res = jnp.maximum(jnp.sum(y[jnp.asarray(stem)]), 0.0)
    pi, lam = lineage_survival(params)
    founders = jnp.maximum(pi * s_res, 1e-300)
    grow = jnp.log(detection_cells * jnp.maximum(pi, 1e-300) / founders)
    t_rec = jnp.where((pi > 0) & (lam > 0), t_day + jnp.maximum(grow, 0.0) / jnp.where(
        lam > 0, lam, 1.0), jnp.inf)
    return Endpoints(invasive_cells=n_inv, residual_csc=s_res, p_pcr=jnp.exp(-n_inv),
                     p_cure=jnp.exp(-pi * s_res), recurrence_day=t_rec, status=sol.status)


def dfs_curve(endpoints: Endpoints, days, *, timing_sd_day: float = 60.0, weights=None):
    """Population DFS at ``days`` from per-patient endpoints (leading patient axis)."""
    days = jnp.asarray(days, float)
    t_rec = endpoints.recurrence_day[:, None]
    finite = jnp.isfinite(t_rec)
    still = jnp.where(finite, jax.nn.sigmoid((jnp.where(finite, t_rec, 0.0) - days[None, :])
                                             / timing_sd_day), 1.0)
    pc = endpoints.p_cure[:, None]
    per_patient = pc + (1.0 - pc) * still
    if weights is None:
        return jnp.mean(per_patient, axis=0)
    return jnp.sum(weights[:, None] * per_patient, axis=0)


def arm_endpoints(model: ModelConfig, params, omega, eta, schedule, t_day, *, weights=None,
                  hr_positive=None, hr_effect=None, **kw):
    """Arm-level ``(pcr_rate, cure_rate, per-patient Endpoints)`` over virtual patients.

    ``eta`` (n_patients, n_eta) from `draw_eta` (weights None: plain mean) or
    `gauss_hermite_eta` (pass its weights). ``hr_positive`` (n_patients,) bool.
    """
    n = eta.shape[0]
    hr = jnp.zeros((n,), bool) if hr_positive is None else jnp.asarray(hr_positive)

    def one(e, h):
        p = individual_params(params, omega, e, hr_positive=h, hr_effect=hr_effect)
        return patient_endpoints(model, p, schedule, t_day, **kw)

    ep = jax.vmap(one)(eta, hr)
    w = jnp.full((n,), 1.0 / n) if weights is None else weights
    return jnp.sum(w * ep.p_pcr), jnp.sum(w * ep.p_cure), ep


def binomial_log_likelihood(rate, count, n):
    """``log Binomial(count | n, rate)`` up to the constant, safe at rate 0 and 1."""
    rate = jnp.clip(rate, 1e-12, 1.0 - 1e-12)
    return count * jnp.log(rate) + (n - count) * jnp.log1p(-rate)


def log_hr_log_likelihood(log_hr_pred, log_hr_obs, log_hr_se):
    """Normal log density of a published log hazard ratio given its standard error."""
    z = (log_hr_pred - log_hr_obs) / log_hr_se
    return -0.5 * z * z - jnp.log(log_hr_se) - 0.5 * jnp.log(2 * jnp.pi)
