"""Clinical endpoints from one residual state: pCR, cure, DFS (DESIGN §3).

The one module of endpoint formulas. `fitcsc.TrialModel` (every fitted trial
prediction) and the patient-level API below both use them:

- `lineage`: a residual CSC's chance ``pi = max(0, 1 - d/b)`` of founding a lasting
  lineage (supercritical birth-death lineage with birth ``b = v_S p`` and death ``d =
  v_S (1 - p) + delta_S``, drug washed out) and the CSC net rate ``lambda = b - d``.
- `log_lasting_lineages`: the expected number of lasting lineages, ``pi S e^{-lambda
  t}`` with ``S`` the residual CSCs ``t`` days after the start of therapy. Without drug,
  ``pi S e^{-lambda t}`` is a martingale of the branching process, so drug-free growth
  leaves it unchanged and only the drugs' extra killing lowers it, whatever the
  evaluation day.
- `cure_probability`: ``P(cure) = exp(-pi S e^{-lambda t})``, exact for a Poisson number
  of founding CSCs (the Poisson generating function).
- `recurrence_day`: a non-cured patient's lineages regrow at ``lambda`` from the residual
  at day ``t`` until ``detection_cells``: ``t_rec = t + (ln detection - ln S) / lambda``
  (back-extrapolated, so earlier than ``t``, when the residual is already above
  detection; never when ``lambda <= 0``).
- `dfs_given`: ``DFS(s) = P(cure) + (1 - P(cure)) sigmoid((t_rec - s) / w)``, the
  recurrence timing smoothed by a logistic of width ``w`` (`TIMING_SD_DAY`, the spread
  of lineage establishment), which keeps DFS differentiable.
- `hazard_ratio`: the ratio of cumulative hazards ``log DFS_e / log DFS_c``.
- pCR: residual invasive cells are Poisson with mean ``N_inv`` (all living tumour cells;
  damaged transit cells are dying and do not count), so ``P(pCR) = exp(-N_inv)``.

Virtual patients of the patient-level API vary log-normally around typical parameters;
their random effects ``eta`` are drawn once (common random numbers, `draw_eta`) or
placed on Gauss–Hermite nodes (`gauss_hermite_eta`), so arm-level predictions are
smooth, differentiable functions of the parameters. Everything vmaps over patients
(and, one level up, arms).

pCR and recurrence come from the same state, so a patient can reach pCR and recur
(``N_inv`` small but ``pi S_res`` not) or be cured without pCR.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._model.family import ModelConfig
from .._solve.simulate import simulate

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


TIMING_SD_DAY = 90.0  # width of the recurrence-timing logistic (every DFS uses it)


def lineage(division_rate, self_renewal, death_rate):
    """``(pi, lambda)`` of CSCs with these rates (see the module docstring)."""
    b = division_rate * self_renewal
    d = division_rate * (1.0 - self_renewal) + death_rate
    return jnp.maximum(1.0 - d / b, 0.0), b - d


def lineage_survival(params):
    """``(pi, lambda)``: a residual CSC's chance of a lasting lineage and its net rate."""
    return lineage(params.csc_division_rate, params.self_renewal, params.csc_death_rate)


def log_lasting_lineages(log_pi, log_residual_csc, lam, days_since_start):
    """``log(pi S e^{-lambda t})``: the expected lasting lineages, drug-free growth
    since the start of therapy discounted (a martingale; module docstring)."""
    return log_pi + log_residual_csc - lam * days_since_start


def with_protected(log_founders, log_residual_csc, log_pi, log_protected_csc, log_fraction):
    """``(log founders, log residual CSCs)`` when a fraction (log ``log_fraction``) of
    the micrometastatic CSCs is out of the drugs' reach: those keep their untreated
    number ``log_protected_csc`` and found ``pi`` lasting lineages each; the rest are as
    given."""
    keep = jnp.log1p(-jnp.exp(log_fraction))
    return (jnp.logaddexp(keep + log_founders, log_fraction + log_pi + log_protected_csc),
            jnp.logaddexp(keep + log_residual_csc, log_fraction + log_protected_csc))


def cure_probability(log_founders):
    """``exp(-founders)`` from ``log founders`` (`log_lasting_lineages`)."""
    return jnp.exp(-jnp.exp(jnp.minimum(log_founders, 40.0)))


def recurrence_day(day, log_residual_csc, lam, detection_cells):
    """``day + (ln detection_cells - ln S) / lambda``; ``inf`` where ``lambda <= 0``."""
    grow = (jnp.log(detection_cells) - log_residual_csc) / jnp.where(lam > 0, lam, 1.0)
    return jnp.where(lam > 0, day + grow, jnp.inf)


def dfs_given(cure, t_rec, days, timing_sd_day: float = TIMING_SD_DAY):
    """``P(cure) + (1 - P(cure)) sigmoid((t_rec - days) / w)`` (broadcasting); a
    non-finite ``t_rec`` (no regrowth) counts as never."""
    finite = jnp.isfinite(t_rec)
    still = jnp.where(finite, jax.nn.sigmoid((jnp.where(finite, t_rec, 0.0) - days)
                                             / timing_sd_day), 1.0)
    return cure + (1.0 - cure) * still


def hazard_ratio(dfs_e, dfs_c):
    """Cumulative-hazard ratio ``log DFS_e / log DFS_c`` at the same day (with cure
    fractions the hazards are not proportional; this is the Cox estimate's
    large-sample limit only when they are)."""
    return jnp.log(jnp.clip(dfs_e, 1e-12, 1 - 1e-12)) / jnp.log(
        jnp.clip(dfs_c, 1e-12, 1 - 1e-12))


class Endpoints(eqx.Module):
    """Per-patient endpoints at the evaluation time ``t`` (see module docstring)."""

    invasive_cells: Float[Array, ""]  # N_inv(t)
    residual_csc: Float[Array, ""]  # S + Q + R at t
    p_pcr: Float[Array, ""]
    p_cure: Float[Array, ""]
    recurrence_day: Float[Array, ""]  # t_rec if not cured (inf if pi = 0 or lambda <= 0)
    status: Array


def patient_endpoints(model: ModelConfig, params, schedule, t_day, *, t0_day=0.0,
                      detection_cells: float = 1e9, **simulate_kw) -> Endpoints:
    """Simulate one patient from ``t0_day`` to ``t_day`` and compute pCR, cure and
    recurrence time (module docstring)."""
    ts = jnp.stack([jnp.asarray(t0_day, float), jnp.asarray(t_day, float)])
    sol = simulate(model, params, schedule, ts, t0=t0_day, **simulate_kw)
    y = sol.states[-1]
    living = [model.index(n) for n in model.cell_states if not n.startswith("X")]
    stem = [model.index(n) for n in model.stem_states]
    n_inv = jnp.maximum(jnp.sum(y[jnp.asarray(living)]), 0.0)
    s_res = jnp.maximum(jnp.sum(y[jnp.asarray(stem)]), 0.0)
    log_s = jnp.log(jnp.maximum(s_res, 1e-300))
    pi, lam = lineage_survival(params)
    log_f = log_lasting_lineages(jnp.log(jnp.maximum(pi, 1e-300)), log_s, lam,
                                 jnp.asarray(t_day, float) - t0_day)
    t_rec = jnp.where(pi > 0, recurrence_day(t_day, log_s, lam, detection_cells), jnp.inf)
    return Endpoints(invasive_cells=n_inv, residual_csc=s_res, p_pcr=jnp.exp(-n_inv),
                     p_cure=cure_probability(log_f), recurrence_day=t_rec,
                     status=sol.status)


def dfs_curve(endpoints: Endpoints, days, *, timing_sd_day: float = TIMING_SD_DAY,
              weights=None):
    """Population DFS at ``days`` from per-patient endpoints (leading patient axis)."""
    days = jnp.asarray(days, float)
    per_patient = dfs_given(endpoints.p_cure[:, None], endpoints.recurrence_day[:, None],
                            days[None, :], timing_sd_day)
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
