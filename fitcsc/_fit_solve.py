"""One batch member of a fit: one subject from one start (vmapped by `fit_map`).

Levenberg–Marquardt (optimistix) on the residuals of `_likelihood`, or an optax
optimiser on the negative log-likelihood with forward-mode gradients. A failed or
non-finite prediction turns into a large finite residual without gradient, so the
optimiser retreats from it; the member's own status records what happened, and no
member ever changes another.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import optimistix as optx
from jaxtyping import Array

from ._likelihood import log_likelihood_from_log, residuals_from_log

PENALTY = 1e6  # residual of a real observation when the prediction failed
SIGMA_MIN, SIGMA_MAX = 1e-4, 10.0


class FitStatus(enum.IntEnum):
    """Outcome of one fit (one subject, or one start of one subject)."""

    CONVERGED = 0
    MAX_STEPS = 1  # the optimiser reached `max_steps`: increase it or loosen rtol/atol
    SOLVER_FAILURE = 2  # the simulation (or the optimiser's linear solve) failed
    NONFINITE = 3  # non-finite loss or parameters: check data and starting values

    @property
    def message(self) -> str:
        return {
            0: "converged",
            1: "the optimiser reached max_steps; increase `max_steps` or loosen rtol/atol",
            2: "the simulation failed at the estimate (e.g. it reached the predictor's "
               "max_steps); check parameter values or raise the predictor's max_steps",
            3: "non-finite loss or parameters; check the data and the starting values",
        }[int(self)]


class Options(eqx.Module):
    """Static solver options of a fit (changing them recompiles)."""

    method: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    estimate_sigma: bool = eqx.field(static=True)
    refit_sigma: bool = eqx.field(static=True)
    optimiser: object = eqx.field(static=True, default=None)
    # Levenberg–Marquardt only (see `lm_options`); the defaults are optimistix's solver
    trust_region: tuple[float, float, float, float] | None = eqx.field(static=True,
                                                                     default=None)
    stall_rtol: float | None = eqx.field(static=True, default=None)
    stall_steps: int = eqx.field(static=True, default=3)


# Trust-region constants of Levenberg–Marquardt, as (high_cutoff, high_constant,
# low_cutoff, low_constant) of `optimistix.ClassicalTrustRegion`: a step is accepted when
# the actual/predicted reduction ratio is at least low_cutoff (else the radius shrinks by
# low_constant), and the radius grows by high_constant when the ratio exceeds high_cutoff.
TRUST_REGIONS = {
    "optimistix": None,  # optimistix's defaults (0.99, 3.5, 0.01, 0.25; Gould et al.)
    # MINPACK-like: accept nearly every decrease, widen whenever the quadratic model is
    # fair. Parameters whose optimum lies at a transform's bound (z -> +-inf, where the
    # Jacobian column vanishes) then leave in a few steps instead of crawling.
    "eager": (0.5, 3.0, 1e-4, 0.25),
    # MINPACK lmder's kind of rule (batching="stacked" only): a bound on the scaled
    # step |D p| (D: the largest column norms of J so far) rather than a damping,
    # Gauss-Newton whenever its step lies inside, lmder's ftol test on Gauss-Newton
    # steps (fitcsc._fit_stacked: bounded_step, bound_update, BOUND_FACTOR, BOUND_GROW)
    "bounded": "bounded",
}


def lm_options(opts: Options, *, trust_region=None, stall_rtol=None, stall_steps=3,
               who: str = "fit_map") -> Options:
    """``opts`` with the Levenberg–Marquardt extras checked and set.

    - `trust_region`: a name in `TRUST_REGIONS` or a 4-tuple of floats (None: optimistix's;
      ``"bounded"`` only with ``batching="stacked"``).
    - `stall_rtol`, `stall_steps`: stop a member (as converged) once its loss fell by no
      more than ``stall_rtol * |loss|`` over ``stall_steps`` accepted steps (None: off).
      Boundary optima, where ``z`` runs off to infinity and optimistix's test (both the
      step in ``z`` and the change in the residuals small) never holds, then stop.
    """
    if trust_region is None and stall_rtol is None:
        return opts
    if opts.method != "lm":
        raise ValueError(f"{who}: trust_region and stall_rtol are options of method='lm'")
    if isinstance(trust_region, str):
        if trust_region not in TRUST_REGIONS:
            raise ValueError(f"{who}: trust_region must be one of {sorted(TRUST_REGIONS)} or "
                             f"a 4-tuple, got {trust_region!r}")
        trust_region = TRUST_REGIONS[trust_region]
    elif trust_region is not None:
        trust_region = tuple(float(x) for x in trust_region)
        if len(trust_region) != 4 or not 0 <= trust_region[2] <= trust_region[0]:
            raise ValueError(f"{who}: trust_region must be (high_cutoff, high_constant, "
                             f"low_cutoff, low_constant) with low_cutoff <= high_cutoff, "
                             f"got {trust_region!r}")
    if stall_rtol is not None:
        stall_rtol = float(stall_rtol)
        if not (math.isfinite(stall_rtol) and stall_rtol >= 0):
            raise ValueError(f"{who}: stall_rtol must be finite and >= 0, got {stall_rtol!r}")
    if int(stall_steps) != stall_steps or stall_steps < 1:
        raise ValueError(f"{who}: stall_steps must be an integer >= 1, got {stall_steps!r}")
    return dataclasses.replace(opts, trust_region=trust_region, stall_rtol=stall_rtol,
                               stall_steps=int(stall_steps))


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
    """Residuals and their Jacobian from log predictions and ``J_lp = d log_pred / d z``
    (one member, or members on leading axes with ``sigma`` broadcastable to
    ``log_pred``); failed members as in `member_residuals`."""

    def raw(lp):
        return residuals_from_log(lp, _log_obs(data), data.mask, data.censored, sigma)

    # the residuals are elementwise in log_pred: one JVP gives d r_i / d log_pred_i
    r, d = jax.jvp(raw, (log_pred,), (jnp.ones_like(log_pred),))
    ok = ((status == 0) & jnp.all(jnp.isfinite(r), axis=-1))[..., None]
    r = jnp.where(ok, r, jnp.where(data.mask, PENALTY, 0.0))
    J_r = jnp.where(ok[..., None], d[..., None] * J_lp, 0.0)
    return r, J_r


@eqx.filter_custom_jvp
def dense_residuals(z, predictor, data, sigma):
    """`member_residuals` whose JVP materialises the Jacobian with one `jax.jacfwd`.

    Under `jax.linearize` (as Levenberg–Marquardt uses it) the linear part is then a
    matrix product, instead of the whole ODE solve run again for every Jacobian-vector
    product: less to compile and less to run. A predictor with a method
    ``log_pred_jacobian(z, data) -> (log_pred, status, d log_pred / d z)`` (e.g. a group
    fit's, which assembles it from small per-curve Jacobians) supplies it itself.
    """
    return member_residuals(predictor, data, z, sigma)


@dense_residuals.def_jvp
def _dense_residuals_jvp(primals, tangents):
    z, predictor, data, sigma = primals
    t_z, *t_rest = tangents
    if t_z is None or jax.tree_util.tree_leaves(t_rest):  # not only z: plain JVP
        def fn(z_, predictor_, data_, sigma_):
            return member_residuals(predictor_, data_, z_, sigma_)

        t_all = jax.tree_util.tree_map(
            lambda t, p: t if t is not None else (
                jnp.zeros_like(p) if eqx.is_inexact_array(p) else None),
            list(tangents), list(primals), is_leaf=lambda x: x is None)
        return eqx.filter_jvp(fn, tuple(primals), tuple(t_all))

    if hasattr(predictor, "log_pred_jacobian"):  # the predictor builds its own Jacobian
        log_pred, status, J_lp = predictor.log_pred_jacobian(z, data)
        r, J_r = residuals_jacobian(log_pred, status, J_lp, data, sigma)
        return (r, (log_pred, status)), (J_r @ t_z, (J_lp @ t_z, None))

    def fn(z_):
        r, (log_pred, status) = member_residuals(predictor, data, z_, sigma)
        return (r, log_pred), (r, log_pred, status)

    (J_r, J_lp), (r, log_pred, status) = jax.jacfwd(fn, has_aux=True)(z)
    return (r, (log_pred, status)), (J_r @ t_z, (J_lp @ t_z, None))


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


def _status(opt_ok, opt_max_steps, sim_status, loss, z):
    code = jnp.where(opt_ok, FitStatus.CONVERGED,
                     jnp.where(opt_max_steps, FitStatus.MAX_STEPS, FitStatus.SOLVER_FAILURE))
    code = jnp.where(jnp.isfinite(loss) & jnp.all(jnp.isfinite(z)), code, FitStatus.NONFINITE)
    code = jnp.where(sim_status == 0, code, FitStatus.SOLVER_FAILURE)
    return code.astype(jnp.int32)


class Member(eqx.Module):
    """Outcome of one member (one subject from one start)."""

    z: Array
    loss: Array  # -log-likelihood at z
    status: Array  # FitStatus
    n_steps: Array
    sigma: Array
    jac: Array  # d residuals / d z at z (n_obs, n_z), residuals at `sigma`
    log_pred: Array  # (n_obs,)


class _StallingLM(optx.AbstractLeastSquaresSolver):
    """A Gauss–Newton solver (``inner``) that also stops once the loss at its accepted
    points fell by no more than ``stall_rtol * |loss|`` over ``stall_steps`` accepted
    steps. Per member under vmap: a stopped member no longer changes."""

    inner: optx.AbstractGaussNewton
    stall_rtol: float = eqx.field(static=True)
    stall_steps: int = eqx.field(static=True)

    @property
    def rtol(self):
        return self.inner.rtol

    @property
    def atol(self):
        return self.inner.atol

    @property
    def norm(self):
        return self.inner.norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        state = self.inner.init(fn, y, args, options, f_struct, aux_struct, tags)
        # (inner state, reference loss, accepted steps since it, stalled)
        return state, jnp.asarray(jnp.inf, y.dtype), jnp.asarray(0), jnp.asarray(False)

    def step(self, fn, y, args, options, state, tags):
        inner, ref, count, _ = state
        y, new, aux = self.inner.step(fn, y, args, options, inner, tags)
        loss = 0.5 * jnp.sum(new.f_info.residual**2)  # at the last accepted point
        accepted = new.num_accepted_steps > inner.num_accepted_steps
        count = count + accepted.astype(count.dtype)
        first = accepted & ~jnp.isfinite(ref)
        check = accepted & ~first & (count >= self.stall_steps)
        stalled = check & (ref - loss <= self.stall_rtol * jnp.abs(loss))
        reset = first | check
        return y, (new, jnp.where(reset, loss, ref), jnp.where(reset, 0, count),
                   stalled), aux

    def terminate(self, fn, y, args, options, state, tags):
        done, result = self.inner.terminate(fn, y, args, options, state[0], tags)
        return done | state[3], result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return self.inner.postprocess(fn, y, aux, args, options, state[0], tags, result)


def _lm_solver(opts):
    solver = optx.LevenbergMarquardt(rtol=opts.rtol, atol=opts.atol)
    if opts.trust_region == "bounded":
        raise ValueError("trust_region='bounded' is a rule of fit_map(batching='stacked'); "
                         "with batching='vmap' use 'eager', a 4-tuple or None")
    if opts.trust_region is not None:
        hc, hk, lc, lk = opts.trust_region
        search = optx.ClassicalTrustRegion(high_cutoff=hc, high_constant=hk,
                                           low_cutoff=lc, low_constant=lk)
        solver = eqx.tree_at(lambda s: s.search, solver, search)
    if opts.stall_rtol is not None:
        solver = _StallingLM(solver, opts.stall_rtol, opts.stall_steps)
    return solver


def _lm(predictor, data, z0, sigma, opts):
    solver = _lm_solver(opts)
    sol = optx.least_squares(
        lambda z, _: dense_residuals(z, predictor, data, sigma),
        solver, z0, has_aux=True, max_steps=opts.max_steps, throw=False)
    ok = sol.result == optx.RESULTS.successful
    at_max = sol.result == optx.RESULTS.nonlinear_max_steps_reached
    # The solver state holds residuals, Jacobian and aux at the returned (last
    # accepted) point, so no further solve of the model is needed.
    state = sol.state[0] if isinstance(solver, _StallingLM) else sol.state
    log_pred, sim_status = state.aux
    jac = state.f_info.jac.as_matrix()
    return sol.value, ok, at_max, sol.stats["num_steps"], log_pred, sim_status, jac


def solve_lm(predictor, data, z0, sigma0, opts) -> Member:
    """LM from ``z0``. With ``opts.estimate_sigma`` sigma is then set to its MLE for
    the fitted predictions; with ``opts.refit_sigma`` (censored points, whose M3 terms
    make the optimum depend on sigma) LM and the sigma update alternate 3 times."""
    if opts.refit_sigma:
        def round_(_, carry):
            z, sigma, steps = carry[:3]
            z, ok, at_max, k, log_pred, sim_status, jac = _lm(predictor, data, z, sigma,
                                                              opts)
            new_sigma = sigma_mle(log_pred, data, sigma)
            return (z, new_sigma, (steps + k).astype(jnp.int32), sigma, ok, at_max,
                    log_pred, sim_status.astype(jnp.int32), jac)

        head = (z0, sigma0, jnp.zeros((), jnp.int32))
        shapes = jax.eval_shape(round_, 0, head + (None,) * 6)
        init = head + tuple(jnp.zeros(s.shape, s.dtype) for s in shapes[3:])
        out = jax.lax.fori_loop(0, 3, round_, init)
        z, _, steps, sigma, ok, at_max, log_pred, sim_status, jac = out
    else:
        z, ok, at_max, steps, log_pred, sim_status, jac = _lm(predictor, data, z0, sigma0,
                                                              opts)
        sigma = sigma0
        if opts.estimate_sigma:  # no censoring: the optimum does not depend on sigma
            sigma = sigma_mle(log_pred, data, sigma0)
            jac = jac * (sigma0 / sigma)
    loss = nll_from_log(log_pred, data, sigma)
    return Member(z, loss, _status(ok, at_max, sim_status, loss, z), steps, sigma, jac,
                  log_pred)


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
        lambda z_: dense_residuals(z_, predictor, data, sigma), has_aux=True)(z)
    nll = nll_from_log(log_pred, data, sigma)
    return Member(z, nll, _status(done, ~done, sim_status, nll, z), k, sigma, jac, log_pred)
