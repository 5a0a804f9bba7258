"""What one member of a tumour-curve fit (one subject or group from one start) needs
beside the LM: its statuses, residuals, -log-likelihood and sigma's MLE, and the
``method="optax"`` optimiser (an optax optimiser on the negative log-likelihood with
forward-mode gradients, vmapped over members; a failed prediction costs `PENALTY`).
The Levenberg–Marquardt is `fitcsc._fit.lm`, driven by `fitcsc._fit.lanes`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from .._status import fit_status
from .likelihood import log_likelihood_from_log, residuals_from_log

PENALTY = 1e6  # residual of a real observation when the prediction failed
SIGMA_MIN, SIGMA_MAX = 1e-4, 10.0


class Options(eqx.Module):
    """Static options of a fit that are not the LM's (`fitcsc._fit.lm.Stop`)."""

    method: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    estimate_sigma: bool = eqx.field(static=True)
    refit_sigma: bool = eqx.field(static=True)
    optimiser: object = eqx.field(static=True, default=None)


def _log_obs(data):
    return jnp.log(jnp.where(data.mask, data.volume_mm3, 1.0))


def member_residuals(predictor, data, z, sigma):
    """Residuals of one subject at ``z``; failures become `PENALTY` (no gradient).

    **Returns:** ``(r, (log_pred, status))``.
    """
    log_pred, status = predictor(z, data)
    r = residuals_from_log(log_pred, _log_obs(data), data.mask, data.censored, sigma)
    ok = (status == 0) & jnp.all(jnp.isfinite(r))
    return jnp.where(ok, r, jnp.where(data.mask, PENALTY, 0.0)), (log_pred, status)


def residuals_jacobian(log_pred, status, J_lp, data, sigma):
    """Residuals, their Jacobian and whether they are usable, from log predictions and
    ``J_lp = d log_pred / d z`` (one member, or members on leading axes with ``sigma``
    broadcastable to ``log_pred``). The residuals are elementwise in ``log_pred``, so
    one JVP gives ``d r_i / d log_pred_i``. **Returns:** ``(r, J_r, ok)``; ``ok`` is
    False where the prediction failed or a residual is not finite."""

    def raw(lp):
        return residuals_from_log(lp, _log_obs(data), data.mask, data.censored, sigma)

    r, d = jax.jvp(raw, (log_pred,), (jnp.ones_like(log_pred),))
    ok = (status == 0) & jnp.all(jnp.isfinite(r), axis=-1)
    return r, d[..., None] * J_lp, ok


def nll_from_log(log_pred, data, sigma):
    """-log-likelihood of one subject for log predictions ``log_pred``."""
    _, ll = log_likelihood_from_log(log_pred, _log_obs(data), data.mask, data.censored,
                                    sigma)
    return -ll


def sigma_mle(log_pred, data, sigma0):
    """Maximum-likelihood ``sigma`` for fixed predictions (M3 terms included).

    Closed form over the uncensored points, then Newton steps in ``log sigma`` when
    some points are censored. Fewer than two uncensored points: ``sigma0``.
    """
    obs = data.mask & ~data.censored
    n = jnp.sum(obs)
    d = jnp.where(obs, _log_obs(data) - jnp.where(obs, log_pred, 0.0), 0.0)
    closed = jnp.sqrt(jnp.sum(d**2) / jnp.maximum(n, 1))
    u0 = jnp.log(jnp.clip(jnp.where(n >= 2, closed, sigma0), SIGMA_MIN, SIGMA_MAX))

    def f(u):
        return -log_likelihood_from_log(log_pred, _log_obs(data), data.mask,
                                        data.censored, jnp.exp(u))[1]

    def newton(_, u):
        g, h = jax.grad(f)(u), jax.hessian(f)(u)
        step = jnp.clip(jnp.where(h > 0, -g / h, -jnp.sign(g) * 0.5), -1.0, 1.0)
        u_new = jnp.clip(u + step, jnp.log(SIGMA_MIN), jnp.log(SIGMA_MAX))
        return jnp.where(f(u_new) < f(u), u_new, u)

    any_cens = jnp.any(data.mask & data.censored)
    u = jnp.where(any_cens, jax.lax.fori_loop(0, 20, newton, u0), u0)
    return jnp.where(n >= 2, jnp.exp(u), sigma0)


class Member(eqx.Module):
    """Outcome of one member (one subject from one start)."""

    z: Array
    loss: Array  # -log-likelihood at z
    status: Array  # FitStatus
    n_steps: Array
    sigma: Array
    jac: Array  # d residuals / d z at z (n_obs, n_z), residuals at `sigma`
    log_pred: Array  # (n_obs,)


def solve_optax(predictor, data, z0, sigma0, opts) -> Member:
    """An optax optimiser on the -log-likelihood; sigma free (log scale) if estimated.

    Gradients are forward-mode (`jax.jacfwd`), so forward-only predictors work. The best
    iterate is returned; convergence as in optimistix: both the parameter change and the
    loss change below ``atol + rtol * |.|`` (max norm).
    """
    n_z = z0.shape[0]
    w0 = jnp.concatenate([z0, jnp.log(sigma0)[None]]) if opts.estimate_sigma else z0
    lo, hi = math.log(SIGMA_MIN), math.log(SIGMA_MAX)

    def split(w):
        if opts.estimate_sigma:
            return w[:n_z], jnp.exp(jnp.clip(w[n_z], lo, hi))
        return w, sigma0

    def loss(w):
        z, sigma = split(w)
        log_pred, status = predictor(z, data)
        nll = nll_from_log(log_pred, data, sigma)
        val = jnp.where((status == 0) & jnp.isfinite(nll), nll, PENALTY**2)
        return val, val

    optim = opts.optimiser

    def body(carry):
        w, state, f_prev, best_w, best_f, k, _ = carry
        grad, f = jax.jacfwd(loss, has_aux=True)(w)
        grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
        updates, state = optim.update(grad, state, w)
        w_new = optax.apply_updates(w, updates)
        done = (jnp.max(jnp.abs(updates) / (opts.atol + opts.rtol * jnp.abs(w))) < 1) & (
            jnp.abs(f - f_prev) < opts.atol + opts.rtol * jnp.abs(f_prev))
        better = f < best_f
        best_w, best_f = jnp.where(better, w, best_w), jnp.where(better, f, best_f)
        return w_new, state, f, best_w, best_f, k + 1, done

    def cond(carry):
        return (carry[5] < opts.max_steps) & ~carry[6]

    inf = jnp.asarray(jnp.inf, w0.dtype)
    init = (w0, optim.init(w0), inf, w0, inf, jnp.asarray(0), jnp.asarray(False))
    _, _, _, w, _, k, done = jax.lax.while_loop(cond, body, init)
    z, sigma = split(w)
    jac, (log_pred, sim_status) = jax.jacfwd(
        lambda z_: member_residuals(predictor, data, z_, sigma), has_aux=True)(z)
    nll = nll_from_log(log_pred, data, sigma)
    return Member(z, nll, fit_status(done, ~done, sim_status, nll, z), k, sigma, jac, log_pred)
