"""Stacked batches: every member of a fit integrated as one ODE system.

Under `jax.vmap` each member of a batch runs its own adaptive solve inside one
vmapped while-loop, and every step pays for the loop's per-member bookkeeping
(controller, save buffer, selects). Here the members' states are stacked into one
system instead:

- one diffrax solve (Tsit5) per evaluation, in each member's own time since its first
  observation (``tau = t - t0``), saved on the union of the members' observation times;
- the forward sensitivities ``dy/dz`` integrated beside the states (one Jacobian-vector
  product of the vector field per free parameter), so one solve gives the residuals and
  the whole Jacobian of every member;
- the step-size controller sees the largest per-member RMS error (sensitivities are not
  error-controlled, as diffrax's forward mode does not control them either), so each
  member is solved at least as accurately as alone; a member whose state is not finite
  is left out of the norm, so it cannot stall the others;
- if the shared solve fails (e.g. one member's trial point makes the system stiff and
  the step cap is reached), that evaluation is redone member by member under vmap, so a
  failure only ever marks the member that caused it.

Measured on a 2-core CPU (float64, 256 PDXE members, residuals and Jacobian at the
starts): 213 µs per member stacked against 743 µs vmapped. The members share step
sizes, so the hardest member sets the pace: sort members by cost before stacking.

`solve_stacked` is a Levenberg–Marquardt on all members at once (per-member damping,
acceptance and convergence, with optimistix's trust-region rule and Cauchy test, so
that it takes the steps `fit_map`'s vmapped optimistix solver takes), run in
passes of at most ``cap`` iterations: between passes, members that have stopped are
dropped and the rest packed into a smaller batch, so converged members stop costing
ODE work. The LM state travels between passes, so passes never change results. One
stopping rule is added: a rejected step that is negligible in ``z`` and promised a
negligible decrease stops the member. A member's step sizes depend on the other
members, so its residuals carry noise at the ODE tolerance; at an optimum the noise
alone can reject every step, and the trust region would shrink for ever. (A test on the
undamped Gauss-Newton gain instead stopped members early: 11 % of PDXE curves ended
up to 2e-6 above the scipy peer's loss, as `pinv` drops the sloppy directions.)
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._fit_predict import CSCPredictor
from ._fit_solve import FitStatus, Member, _status, nll_from_log, residuals_jacobian, sigma_mle
from ._model import initial_state, total_cells, vector_field
from ._pk import concentrations
from ._regimen import discontinuity_times
from ._simulate import _pk_arrays

# optimistix.ClassicalTrustRegion's defaults (high_cutoff, high_constant, low_cutoff,
# low_constant), used when the options name none
OPTIMISTIX_TRUST_REGION = (0.99, 3.5, 0.01, 0.25)


def check_stackable(predictor, opts, who: str = "fit_map") -> None:
    """Raise ValueError unless ``predictor`` and ``opts`` can run stacked."""
    if not isinstance(predictor, CSCPredictor):
        raise ValueError(f"{who}: batching='stacked' needs a CSC predictor "
                         f"(fitcsc.csc_predictor), got {type(predictor).__name__}; "
                         "use batching='vmap'")
    if predictor.model.has_log_kill:
        raise ValueError(f"{who}: batching='stacked' does not support log-kill "
                         "chemotherapy (its dose jumps split each member's solve); use "
                         "batching='vmap'")
    if opts.method != "lm":
        raise ValueError(f"{who}: batching='stacked' is a Levenberg–Marquardt; "
                         f"method must be 'lm', got {opts.method!r}")


def time_grid(day: np.ndarray, t0: np.ndarray, mask: np.ndarray, smallest: int = 256):
    """Union of the members' observation times since their first (host side).

    **Returns:** ``(grid, idx)``: ``grid`` (sorted, padded by repeating its last value
    to a power of two, at least ``smallest``, so that few shapes compile) and ``idx``
    (same shape as ``day``) with ``grid[idx] == day - t0`` (padding points: any index)."""
    local = np.where(mask, np.asarray(day, float) - np.asarray(t0, float)[:, None], 0.0)
    grid, inv = np.unique(local, return_inverse=True)
    grid = np.maximum(grid, 0.0)
    n = max(smallest, 1 << (grid.size - 1).bit_length())
    grid = np.concatenate([grid, np.full(n - grid.size, grid[-1])])
    return grid, inv.reshape(local.shape).astype(np.int32)


def _member_norm(err):
    """Largest per-member RMS of the scaled state error (sensitivities left out)."""
    y = err[0]  # (k, M)
    m = jnp.sqrt(jnp.mean(y**2, axis=0))
    return jnp.max(jnp.where(jnp.isfinite(m), m, 0.0))


def stacked_log_pred(predictor, Z, data, grid, idx):
    """Log volumes and their Jacobian for every member, from one stacked solve.

    **Arguments:** ``Z`` ``(M, n_z)``; ``data`` a `SubjectData` with leading axis M;
    ``grid``, ``idx`` from `time_grid`.

    **Returns:** ``(log_pred (M, n_obs), status (M,), J (M, n_obs, n_z), ok)``, where
    ``ok`` is False when the shared solve failed (then the values are not usable).
    """
    model = predictor.model
    n_z = Z.shape[1]
    eye = jnp.eye(n_z, dtype=Z.dtype)

    def field(t, y, z, s):  # parameters from z inside: only free fields carry tangents
        prm = predictor._params(z, s)
        coefs, rates = _pk_arrays(model, prm)
        return vector_field(model, t, y, prm, concentrations(coefs, rates, s.schedule, t))

    def start(z, s):
        def y0(z_):
            return initial_state(model, predictor._params(z_, s))

        return jax.vmap(lambda e: jax.jvp(y0, (z,), (e,)), out_axes=(None, 0))(eye)

    # members on the last (fastest) axis, so that each operation of a step runs along
    # the members
    Y0, S0 = jax.vmap(start, out_axes=(-1, -1))(Z, data)  # (k, M), (n_z, k, M)
    t0 = data.t0_day

    def rhs(tau, state, args):
        Y, Sens = state

        def one(y, sens, z, s, t0m):
            t = t0m + tau

            def tangent(sj, e):
                return jax.jvp(lambda y_, z_: field(t, y_, z_, s), (y, z), (sj, e))

            return jax.vmap(tangent, out_axes=(None, 0))(sens, eye)

        return jax.vmap(one, in_axes=(-1, -1, 0, 0, 0), out_axes=(-1, -1))(
            Y, Sens, Z, data, t0)

    kw = {}
    if model.drugs:  # every member's dose discontinuities, in stacked time
        end = grid[-1]
        jumps = jax.vmap(lambda s, a: discontinuity_times(s, a + end + 1.0) - a)(
            data.schedule, t0)
        kw["jump_ts"] = jnp.sort(jnp.ravel(jumps))
    ctrl = diffrax.PIDController(rtol=predictor.rtol, atol=predictor.atol,
                                 norm=_member_norm, **kw)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs), diffrax.Tsit5(), 0.0, grid[-1], None, (Y0, S0),
        saveat=diffrax.SaveAt(ts=grid), stepsize_controller=ctrl,
        max_steps=predictor.max_steps, throw=False)
    ys = jnp.moveaxis(sol.ys[0], -1, 1)  # (n_grid, M, k)
    ss = jnp.moveaxis(sol.ys[1], -1, 1)  # (n_grid, M, n_z, k)
    rows = jnp.arange(Z.shape[0])[:, None]
    y_obs, s_obs = ys[idx, rows], ss[idx, rows]  # (M, n_obs, k), (M, n_obs, n_z, k)
    N = total_cells(model, y_obs)
    dN = total_cells(model, s_obs)  # (M, n_obs, n_z)
    v = N / model.cells_per_mm3
    good = jnp.where(data.mask, (v > 0) & jnp.isfinite(v), True)
    member_ok = jnp.all(good, axis=1) & jnp.all(jnp.isfinite(jnp.where(
        data.mask[..., None], dN, 0.0)), axis=(1, 2))
    log_pred = jnp.log(jnp.where(v > 0, v, 1.0))
    J = dN / jnp.where(v > 0, N, 1.0)[..., None]
    status = jnp.where(member_ok, 0, 3).astype(jnp.int32)
    return log_pred, status, J, sol.result == diffrax.RESULTS.successful


def _vmapped_log_pred(predictor, Z, data):
    """The same quantities member by member (the fallback of a failed shared solve)."""

    def one(z, s):
        def f(z_):
            lp, st = predictor(z_, s)
            return lp, (lp, st)

        J, (lp, st) = jax.jacfwd(f, has_aux=True)(z)
        return lp, st, J

    return jax.vmap(one)(Z, data)


def evaluate(predictor, Z, data, grid, idx, sigma):
    """Residuals, their Jacobian, log predictions and status of every member at ``Z``.

    Failed members get `PENALTY` residuals and a zero Jacobian, as in `member_residuals`.
    **Returns:** ``(r, J_r, log_pred, status, fallback)``; ``fallback``: whether the
    shared solve failed and the members were solved one by one.
    """
    lp, st, J, ok = stacked_log_pred(predictor, Z, data, grid, idx)
    lp, st, J = jax.lax.cond(ok, lambda: (lp, st, J),
                             lambda: _vmapped_log_pred(predictor, Z, data))
    r, J_r = residuals_jacobian(lp, st, J, data, sigma[:, None])
    return r, J_r, lp, st, ~ok


class LMState(eqx.Module):
    """Per-member state of the stacked Levenberg–Marquardt (leading axis: members)."""

    z: jax.Array
    r: jax.Array
    jac: jax.Array
    log_pred: jax.Array
    sim_status: jax.Array
    loss: jax.Array  # 0.5 * sum(r**2)
    radius: jax.Array  # trust-region size; the damping is its inverse
    ref: jax.Array  # stall test: loss at the last reference point
    count: jax.Array  # accepted steps since it
    done: jax.Array  # stopped (converged, or failed at its start)
    converged: jax.Array
    n_steps: jax.Array
    fallbacks: jax.Array  # evaluations redone member by member (same for all members)


def take(state, sel):
    return jax.tree_util.tree_map(lambda x: x[sel], state)


@eqx.filter_jit
def lm_init(predictor, z0, data, grid, idx, sigma):
    r, J, lp, st, fb = evaluate(predictor, z0, data, grid, idx, sigma)
    loss = 0.5 * jnp.sum(r**2, axis=1)
    ok = (st == 0) & jnp.isfinite(loss)
    M = z0.shape[0]
    return LMState(z=z0, r=r, jac=J, log_pred=lp, sim_status=st, loss=loss,
                   radius=jnp.ones((M,), z0.dtype), ref=jnp.where(ok, loss, jnp.inf),
                   count=jnp.zeros((M,), jnp.int32), done=~ok,
                   converged=jnp.zeros((M,), bool), n_steps=jnp.zeros((M,), jnp.int32),
                   fallbacks=jnp.full((M,), fb.astype(jnp.int32)))


@eqx.filter_jit
def lm_run(predictor, state: LMState, data, grid, idx, sigma, free, opts, cap):
    """At most ``cap`` iterations of every member that has not stopped."""
    def active(s):
        return ~s.done & (s.n_steps < opts.max_steps)

    def cond(carry):
        s, k = carry
        return jnp.any(active(s)) & (k < cap)

    hc, hk, lc, lk = opts.trust_region or OPTIMISTIX_TRUST_REGION
    tiny = jnp.finfo(state.z.dtype).eps

    def body(carry):
        s, k = carry
        act = active(s)
        A = jnp.einsum("mnp,mnq->mpq", s.jac, s.jac)
        g = jnp.einsum("mnp,mn->mp", s.jac, s.r)
        # damped Gauss-Newton step, damping 1 / trust-region size (as optimistix's LM)
        lam = jnp.where(s.radius > tiny, 1.0 / jnp.where(s.radius > tiny, s.radius, 1.0),
                        jnp.finfo(s.z.dtype).max)
        H = A + lam[:, None, None] * jnp.eye(A.shape[-1], dtype=A.dtype)
        step = -jnp.linalg.solve(H, g[..., None])[..., 0]
        step = jnp.where(act[:, None] & free & jnp.isfinite(step), step, 0.0)
        z_t = s.z + step
        r, J, lp, st, fb = evaluate(predictor, z_t, data, grid, idx, sigma)
        loss_t = 0.5 * jnp.sum(r**2, axis=1)
        ok_t = (st == 0) & jnp.isfinite(loss_t)
        Js = jnp.einsum("mnp,mp->mn", s.jac, step)
        predicted = jnp.sum(g * step, axis=1) + 0.5 * jnp.sum(Js**2, axis=1)  # <= 0
        change = jnp.where(ok_t, loss_t - s.loss, jnp.inf)
        accept = act & (change <= lc * predicted)
        good = accept & (change < hc * predicted) & (predicted < 0)
        radius = s.radius * jnp.where(good, hk, jnp.where(accept, 1.0, jnp.where(
            act, lk, 1.0)))
        # converged (optimistix's Cauchy test): small step in z and small change of the
        # residuals, both relative to atol + rtol * |value| (max norm)
        small_z = jnp.all(jnp.abs(step) < opts.atol + opts.rtol * jnp.abs(z_t), axis=1)
        small_r = jnp.all(jnp.abs(r - s.r) < opts.atol + opts.rtol * jnp.abs(r), axis=1)
        conv = accept & small_z & small_r
        # A rejected step that is negligible in z and promised a negligible decrease:
        # stop there. (The shared step sizes depend on every member, so re-solving one
        # member at the same z can move its loss at the ODE tolerance's level; a
        # member at its optimum would otherwise shrink its trust region for ever.)
        conv = conv | (act & ~accept & small_z & (-predicted <= opts.atol
                                                  + opts.rtol * jnp.abs(s.loss)))
        # stall test (fit_map's `stall_rtol`): the loss fell by <= stall_rtol * loss
        # over `stall_steps` accepted steps
        count = s.count + accept.astype(jnp.int32)
        first = accept & ~jnp.isfinite(s.ref)
        check = accept & ~first & (count >= opts.stall_steps)
        if opts.stall_rtol is not None:
            conv = conv | (check & (s.ref - loss_t <= opts.stall_rtol * jnp.abs(loss_t)))
        reset = first | check
        ref = jnp.where(reset, loss_t, s.ref)
        count = jnp.where(reset, 0, count)

        def pick(new, old):
            sel = accept.reshape(accept.shape + (1,) * (new.ndim - 1))
            return jnp.where(sel, new, old)

        s = LMState(z=pick(z_t, s.z), r=pick(r, s.r), jac=pick(J, s.jac),
                    log_pred=pick(lp, s.log_pred), sim_status=pick(st, s.sim_status),
                    loss=pick(loss_t, s.loss), radius=radius, ref=ref,
                    count=count, done=s.done | conv, converged=s.converged | conv,
                    n_steps=s.n_steps + act.astype(jnp.int32),
                    fallbacks=s.fallbacks + fb.astype(jnp.int32))
        return s, k + 1

    state, _ = jax.lax.while_loop(cond, body, (state, jnp.asarray(0)))
    return state


def _bucket(n: int, full: int, smallest: int = 8) -> int:
    """The batch size for ``n`` pending members: ``full`` divided by a power of 4."""
    size = full
    while size // 4 >= max(n, smallest):
        size //= 4
    return size


def solve_stacked(predictor, data, z0, sigma0, opts, free, *, cap: int = 10
                  ) -> tuple[Member, dict]:
    """Levenberg–Marquardt on all members at once (host-driven passes).

    **Arguments:** ``data`` a `SubjectData` with one row per member (leading axis M);
    ``z0`` ``(M, n_z)``; ``sigma0`` ``(M,)``; ``opts`` fit options (`check_stackable`);
    ``free`` ``(M, n_z)`` bool; ``cap``: LM iterations per pass.

    With ``opts.refit_sigma`` (sigma estimated, censored points) LM and the sigma MLE
    alternate 3 times, as in the vmapped `solve_lm`.

    **Returns:** ``(members, info)``: a `Member` with leading axis M, and counts of
    passes, batch sizes and fallback evaluations.
    """
    host = jax.tree_util.tree_map(np.asarray, data)  # the passes' bookkeeping: NumPy
    grid, idx = time_grid(host.day, host.t0_day, host.mask)
    free = np.asarray(free, bool)
    info = {"passes": 0, "batch_sizes": [], "fallback_evaluations": 0}
    z = np.asarray(z0)
    sigma = np.asarray(sigma0, dtype=z.dtype)
    steps = 0
    for _ in range(3 if opts.refit_sigma else 1):
        state = _passes(predictor, data, host, grid, idx, z, sigma, free, opts, cap, info)
        steps = steps + state.n_steps
        z, used = state.z, sigma
        if opts.refit_sigma:
            sigma = np.asarray(_sigma_mle(state.log_pred, data, sigma))
    state = eqx.tree_at(lambda s_: s_.n_steps, state, steps)
    return _finish(predictor, state, data, used, opts), info


def _passes(predictor, data, host, grid, idx, z0, sigma, free, opts, cap, info) -> LMState:
    state = lm_init(predictor, jnp.asarray(z0), data, jnp.asarray(grid), jnp.asarray(idx),
                    jnp.asarray(sigma))
    state = jax.tree_util.tree_map(np.array, state)
    info["fallback_evaluations"] += int(state.fallbacks[0])
    M = z0.shape[0]
    pending = np.arange(M)
    while True:
        act = ~state.done[pending] & (state.n_steps[pending] < opts.max_steps)
        pending = pending[act]
        if pending.size == 0:
            return state
        size = _bucket(pending.size, M)
        sel = np.resize(pending, size)  # padding repeats pending members
        sub = take(state, sel)
        out = lm_run(predictor, sub, take(host, sel), grid, idx[sel], sigma[sel], free[sel],
                     opts, np.asarray(cap))
        out = jax.tree_util.tree_map(np.asarray, out)
        first = np.unique(sel, return_index=True)[1]  # one copy of each member
        for full, new in zip(jax.tree_util.tree_leaves(state),
                             jax.tree_util.tree_leaves(out), strict=True):
            full[sel[first]] = new[first]
        info["passes"] += 1
        info["batch_sizes"].append(size)
        info["fallback_evaluations"] += int(out.fallbacks.max() - sub.fallbacks.max())


@eqx.filter_jit
def _sigma_mle(log_pred, data, sigma):
    return jax.vmap(sigma_mle)(log_pred, data, sigma)


@eqx.filter_jit
def _finish(predictor, s: LMState, data, sigma0, opts) -> Member:
    at_max = ~s.done & (s.n_steps >= opts.max_steps)
    sigma, jac = sigma0, s.jac
    if opts.estimate_sigma and not opts.refit_sigma:  # the optimum does not depend on it
        sigma = jax.vmap(sigma_mle)(s.log_pred, data, sigma0)
        jac = jac * (sigma0 / sigma)[:, None, None]
    loss = jax.vmap(nll_from_log)(s.log_pred, data, sigma)
    status = jax.vmap(_status)(s.converged, at_max, s.sim_status, loss, s.z)
    status = jnp.where(s.done & ~s.converged, FitStatus.SOLVER_FAILURE, status)
    return Member(s.z, loss, status.astype(jnp.int32), s.n_steps, sigma, jac, s.log_pred)
