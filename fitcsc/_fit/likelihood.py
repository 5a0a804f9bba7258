"""Observation model for tumour volumes (DESIGN §3): log-normal error, M3 censoring.

A measured volume is log-normal around the prediction, ``log V_obs = log V_pred + sigma
eps`` with ``eps ~ N(0, 1)`` (proportional error). A volume of zero or below the
detection limit (``censored``; its ``obs_volume`` holds the limit) is left-censored and
contributes ``P(V < LLOQ) = Phi((log LLOQ - log V_pred) / sigma)`` (Beal's M3), never
dropped and never ``log 0``. Padding entries (``mask == False``) contribute exactly 0
(value and gradient).

`residuals` writes the same model as least squares: for fixed ``sigma``,
``0.5 * sum(r**2) == -log_likelihood + const``, so Levenberg–Marquardt minimises the
negative log-likelihood.

```python
per_obs, total = fitcsc.log_likelihood(pred, batch.volume_mm3, batch.mask,
                                       batch.censored, 0.2)
r = fitcsc.residuals(pred, batch.volume_mm3, batch.mask, batch.censored, 0.2)
```
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.special import log_ndtr
from jaxtyping import Array, ArrayLike, Float

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_TINY = 1e-250  # below this, sqrt(-2 log Phi) is set to 0 (its gradient is ~0 there)


def _safe(mask, log_pred, log_obs):
    # Padding may hold anything (even NaN from a failed solve): replace it *before* any
    # arithmetic so that neither values nor gradients of padding can be non-finite.
    return jnp.where(mask, log_pred, 0.0), jnp.where(mask, log_obs, 0.0)


def _logs(pred_volume, obs_volume, mask):
    mask = jnp.asarray(mask, bool)
    return (jnp.log(jnp.where(mask, jnp.asarray(pred_volume, float), 1.0)),
            jnp.log(jnp.where(mask, jnp.asarray(obs_volume, float), 1.0)))


def log_likelihood_from_log(
    log_pred: ArrayLike,
    log_obs: ArrayLike,
    mask: ArrayLike,
    censored: ArrayLike,
    sigma: ArrayLike,
) -> tuple[Float[Array, "*shape"], Float[Array, ""]]:
    """As `log_likelihood`, with log volumes: ``log_pred``, ``log_obs`` [log mm3]."""
    mask = jnp.asarray(mask, bool)
    cens = jnp.asarray(censored, bool) & mask
    lp, lo = _safe(mask, jnp.asarray(log_pred, float), jnp.asarray(log_obs, float))
    sigma = jnp.asarray(sigma, dtype=lp.dtype)
    z = (lo - lp) / sigma
    observed = -0.5 * z**2 - jnp.log(sigma) - _HALF_LOG_2PI - lo  # density of V, not log V
    per_obs = jnp.where(cens, log_ndtr(z), observed)
    per_obs = jnp.where(mask, per_obs, 0.0)
    return per_obs, jnp.sum(per_obs)


def residuals_from_log(
    log_pred: ArrayLike,
    log_obs: ArrayLike,
    mask: ArrayLike,
    censored: ArrayLike,
    sigma: ArrayLike,
) -> Float[Array, "*shape"]:
    """As `residuals`, with log volumes: ``log_pred``, ``log_obs`` [log mm3]."""
    mask = jnp.asarray(mask, bool)
    cens = jnp.asarray(censored, bool) & mask
    lp, lo = _safe(mask, jnp.asarray(log_pred, float), jnp.asarray(log_obs, float))
    z = (lo - lp) / jnp.asarray(sigma, dtype=lp.dtype)
    q = -2.0 * log_ndtr(jnp.where(cens, z, 0.0))  # >= 0
    big = q > _TINY
    r_cens = jnp.where(big, jnp.sqrt(jnp.where(big, q, 1.0)), 0.0)
    return jnp.where(mask, jnp.where(cens, r_cens, z), 0.0)


def log_likelihood(
    pred_volume: ArrayLike,
    obs_volume: ArrayLike,
    mask: ArrayLike,
    censored: ArrayLike,
    sigma: ArrayLike,
) -> tuple[Float[Array, "*shape"], Float[Array, ""]]:
    """Log-likelihood of volume observations under log-normal error with M3 censoring.

    **Arguments** (arrays of one shape, e.g. ``(n_obs,)`` or ``(n_subjects, n_obs)``,
    as in a `SubjectBatch`):
    - `pred_volume`: predicted volume [mm3], > 0.
    - `obs_volume`: observed volume [mm3]; for censored entries the detection limit.
    - `mask`: True for real observations; False entries contribute exactly 0.
    - `censored`: True for left-censored observations (below the limit).
    - `sigma`: SD of the log-volume error [-], a scalar or broadcastable array.

    **Returns:** ``(per_obs, total)``: per-observation log densities of the volume
    (observed: ``log N(log V_obs; log V_pred, sigma) - log V_obs``; censored:
    ``log Phi((log LLOQ - log V_pred) / sigma)``; padding: 0) and their sum.
    """
    return log_likelihood_from_log(*_logs(pred_volume, obs_volume, mask), mask, censored,
                                   sigma)


def residuals(
    pred_volume: ArrayLike,
    obs_volume: ArrayLike,
    mask: ArrayLike,
    censored: ArrayLike,
    sigma: ArrayLike,
) -> Float[Array, "*shape"]:
    """Least-squares residuals of the observation model in `log_likelihood`.

    Observed: ``r = (log V_obs - log V_pred) / sigma``; censored:
    ``r = sqrt(-2 log Phi((log LLOQ - log V_pred) / sigma))`` (>= 0, with a finite
    gradient everywhere); padding: 0. For fixed ``sigma``,
    ``0.5 * sum(r**2) = -total_log_likelihood - sum over uncensored entries of
    (log sigma + log(2 pi)/2 + log V_obs)``.

    **Arguments and shapes:** as `log_likelihood`. **Returns:** ``r``, same shape.
    """
    return residuals_from_log(*_logs(pred_volume, obs_volume, mask), mask, censored, sigma)
