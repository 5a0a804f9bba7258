"""Stacked batches: every member of a fit in one array program.

Under `jax.vmap` each member of a batch runs its own `diffrax.diffeqsolve`, and every
step pays for the solve loop's general machinery under vmap (Runge-Kutta stages as an
inner loop, interpolation to the save times). Here the members are stacked instead:

- one `paced_solve` (`fitcsc._paced`) per evaluation: every member's states and their
  forward sensitivities ``dy/dz`` (one Jacobian-vector product of the vector field per
  free parameter) in one array program, each member at its own step size with
  diffrax's Tsit5 tableau and PID controller, in its own time since its first
  observation, stepping onto its observation times and up to its dose discontinuities;
  so one solve gives the residuals and the whole Jacobian of every member;
- the error control sees each member's RMS error of the states (sensitivities are not
  error-controlled, as in diffrax's forward mode), as a member solved alone would;
- members that finish their solve early leave it (the unfinished are gathered into
  smaller batches), members whose fit has stopped are not solved at all, and a failed
  solve (step cap, non-finite values) marks only its own member.

An earlier version integrated all members as one ODE system with one shared step size;
one member's stiff trial point then held every member, and the failed shared solve had
to be redone member by member. Measured on a 2-core CPU (float64, 256 PDXE members,
residuals and Jacobian): at the starts 49 µs per member paced, 168 µs shared, 530 µs
vmapped; at trial points 1.5 away in z, 68, 401 and 857 µs.

`solve_stacked` is a Levenberg–Marquardt on all members at once (per-member damping,
acceptance and convergence, with optimistix's trust-region rule and Cauchy test, so
that it takes the steps `fit_map`'s vmapped optimistix solver takes), run in
passes of at most ``cap`` iterations: between passes, members that have stopped are
dropped and the rest packed into a smaller batch, so converged members stop costing
ODE work. The LM state travels between passes, so passes never change results. One
stopping rule is added: a rejected step that is negligible in ``z`` and promised a
negligible decrease stops the member: the residuals carry noise at the ODE tolerance
(a nearby ``z`` takes other steps), and at an optimum that noise alone can reject every
step, so that the trust region would shrink for ever. (A test on the
undamped Gauss-Newton gain instead stopped members early: 11 % of PDXE curves ended
up to 2e-6 above the scipy peer's loss, as `pinv` drops the sloppy directions.)

``trust_region="bounded"`` replaces optimistix's damping rule by MINPACK lmder's kind:
the step is bounded in the parameters scaled by the largest column norms of J so far
(`bounded_step`: Gauss–Newton when its scaled step lies within the bound, else the LM
step whose scaled length is the bound, as lmder's ``lmpar``), the bound shrinks by
lmder's rule after a poor step and grows to twice the scaled step after a good one
(`bound_update`). Under the damping rule a member whose first steps were rejected
keeps a large damping for many steps (it falls by 3x per good step), and converges
linearly; under the bound it takes Gauss–Newton steps as soon as they fit. On PDXE
curves (4 starts each; 64 cytostatic, 48 HER2 and all 39 chemotherapy curves): 16.8,
37.1 and 34.8 LM steps per start against 24.9, 48.6 and 42.1 under "eager", each
curve's best start as low or lower but one HER2 curve (another optimum); on all 849
curves (benchmarks/batch_fit.py) a mean of 17.4 against 26.7. Two choices differ
from lmder's and were measured: the first bound is ``1 * |D z0|`` (lmder: 100; then
6 of those 48 HER2 curves went to a flat region of saturated parameters on their first
Gauss–Newton step, all four starts, and ended far above the "eager" fits), and the
bound grows at a ratio >= 0.5 (lmder: 0.75; with 0.75 two cytostatic curves whose
optimum lies at a transform's bound crawled to the step cap and ended 4e-5 above the
scipy peer). lmder's ftol test is applied to
Gauss–Newton steps only, and its xtol test not at all (both also fire when the bound,
not the optimum, makes the steps small).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._fit_predict import CSCPredictor
from ._fit_solve import FitStatus, Member, _status, nll_from_log, residuals_jacobian, sigma_mle
from ._model import initial_state, total_cells, vector_field
from ._paced import paced_solve
from ._pk import concentrations
from ._regimen import discontinuity_times
from ._simulate import Status, _pk_arrays

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


def _state_norm(err):
    """RMS of the scaled error of the states (sensitivities left out, as in diffrax's
    forward mode, whose controller sees only the primal solve)."""
    return jnp.sqrt(jnp.mean(err[0] ** 2))


def paced_log_pred(predictor, Z, data, active=None):
    """Log volumes and their Jacobian for every member, each solved at its own pace.

    **Arguments:** ``Z`` ``(M, n_z)``; ``data`` a `SubjectData` with leading axis M;
    ``active`` ``(M,)`` bool: members to solve (default all; the others come back
    failed, without ODE work).

    **Returns:** ``(log_pred (M, n_obs), status (M,), J (M, n_obs, n_z), steps (M,))``.
    """
    model = predictor.model
    n_z = Z.shape[1]
    eye = jnp.eye(n_z, dtype=Z.dtype)

    def field(t, y, z, s):  # parameters from z inside: only free fields carry tangents
        prm = predictor._params(z, s)
        coefs, rates = _pk_arrays(model, prm)
        return vector_field(model, t, y, prm, concentrations(coefs, rates, s.schedule, t))

    def rhs(tau, state, args):  # states and their sensitivities dy/dz, one member
        y, sens = state
        z, s = args
        t = s.t0_day + tau

        def tangent(sj, e):
            return jax.jvp(lambda y_, z_: field(t, y_, z_, s), (y, z), (sj, e))

        return jax.vmap(tangent, out_axes=(None, 0))(sens, eye)

    def start(z, s):
        def y0(z_):
            return initial_state(model, predictor._params(z_, s))

        return jax.vmap(lambda e: jax.jvp(y0, (z,), (e,)), out_axes=(None, 0))(eye)

    tau_obs = jnp.where(data.mask, data.day - data.t0_day[:, None], jnp.inf)
    if model.drugs:  # each member's dose discontinuities, in its own time
        end = jnp.max(jnp.where(data.mask, tau_obs, 0.0), axis=1)
        jumps = jax.vmap(lambda s, t0, e: discontinuity_times(s, t0 + e + 1.0) - t0)(
            data.schedule, data.t0_day, end)
    else:
        jumps = jnp.full((Z.shape[0], 1), jnp.inf, Z.dtype)
    (N, dN), status, steps = paced_solve(
        rhs, jax.vmap(start)(Z, data), (Z, data), tau_obs, jumps,
        lambda st: (total_cells(model, st[0]), total_cells(model, st[1])),
        rtol=predictor.rtol, atol=predictor.atol, max_steps=predictor.max_steps,
        norm=_state_norm, active=active)
    v = N / model.cells_per_mm3
    good = jnp.where(data.mask, (v > 0) & jnp.isfinite(v), True)
    member_ok = jnp.all(good, axis=1) & jnp.all(jnp.isfinite(jnp.where(
        data.mask[..., None], dN, 0.0)), axis=(1, 2))
    log_pred = jnp.log(jnp.where(data.mask & (v > 0), v, 1.0))
    J = jnp.where(data.mask[..., None], dN / jnp.where(v > 0, N, 1.0)[..., None], 0.0)
    status = jnp.where((status == Status.SUCCESS) & ~member_ok, Status.NONFINITE, status)
    return log_pred, status.astype(jnp.int32), J, steps


def evaluate(predictor, Z, data, sigma, active=None):
    """Residuals, their Jacobian, log predictions and status of every member at ``Z``.

    Failed members get `PENALTY` residuals and a zero Jacobian, as in `member_residuals`.
    **Returns:** ``(r, J_r, log_pred, status)``.
    """
    lp, st, J, _ = paced_log_pred(predictor, Z, data, active)
    r, J_r = residuals_jacobian(lp, st, J, data, sigma[:, None])
    return r, J_r, lp, st


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
    scale: jax.Array  # trust_region="bounded": the largest column norms of J so far


def take(state, sel):
    return jax.tree_util.tree_map(lambda x: x[sel], state)


@eqx.filter_jit
def lm_init(predictor, z0, data, sigma, bounded: bool = False):
    """The LM state at ``z0``. ``bounded`` (trust_region="bounded"): the first step
    bound, `BOUND_FACTOR` times the scaled norm of ``z0`` (`BOUND_FACTOR` where that is
    0), as lmder; otherwise the trust-region radius 1 (damping 1), as optimistix."""
    r, J, lp, st = evaluate(predictor, z0, data, sigma)
    loss = 0.5 * jnp.sum(r**2, axis=1)
    ok = (st == 0) & jnp.isfinite(loss)
    M = z0.shape[0]
    scale = column_norms(J)
    radius = jnp.ones((M,), z0.dtype)
    if bounded:
        dz = jnp.linalg.norm(scale * z0, axis=1)
        radius = jnp.where(dz > 0, BOUND_FACTOR * dz, BOUND_FACTOR)
    return LMState(z=z0, r=r, jac=J, log_pred=lp, sim_status=st, loss=loss,
                   radius=radius, ref=jnp.where(ok, loss, jnp.inf),
                   count=jnp.zeros((M,), jnp.int32), done=~ok,
                   converged=jnp.zeros((M,), bool), n_steps=jnp.zeros((M,), jnp.int32),
                   scale=scale)


# trust_region="bounded": the first step bound is BOUND_FACTOR |D z0| (lmder's
# `factor`; its default 100 let the first Gauss-Newton step of some PDXE HER2 curves
# leave for a flat region of saturated parameters: 6 of 48 curves ended far above the
# "eager" fits, none at 1), and the bound grows when the ratio of actual to predicted
# reduction is at least BOUND_GROW (lmder: 0.75; at 0.5, as "eager", fits whose
# optimum lies at a transform's bound reach it instead of crawling to the step cap)
BOUND_FACTOR = 1.0
BOUND_GROW = 0.5


def column_norms(J):
    """The norms of the columns of each member's ``J`` ``(M, n, p)`` (1 where a column
    is zero): MINPACK's scaling of the parameters."""
    n = jnp.linalg.norm(J, axis=1)
    return jnp.where(n > 0, n, 1.0)


def bounded_step(A, g, D, free, delta, newton_iters: int = 12):
    """The Levenberg–Marquardt step of MINPACK's ``lmpar``, for every member.

    ``p = -(A + lam D^2)^-1 g`` with ``lam = 0`` (Gauss–Newton) when ``|D p| <= 1.1
    delta``, else with the ``lam > 0`` where ``|D p| = delta``. Through the eigenvalues
    of the scaled ``D^-1 A D^-1`` (``n_z`` is small): ``|D p(lam)|`` is then explicit
    and the secular equation ``1/|D p(lam)| = 1/delta`` is solved by Newton's method
    from ``lam = 0`` (Moré and Hebden; monotone from below, as ``1/|D p|`` is concave
    in ``lam``). Components that are not ``free`` stay 0. A singular ``A`` is handled
    as by a pseudo-inverse at ``lam = 0``.

    **Arguments** (leading axis M): ``A`` ``(M, p, p)`` = J'J, ``g`` = J'r, ``D`` the
    scaling, ``free`` bool ``(M, p)``, ``delta`` ``(M,)``.
    **Returns:** ``(p, lam)``.
    """
    n = A.shape[-1]
    pair = free[:, :, None] & free[:, None, :]
    As = jnp.where(pair, A / (D[:, :, None] * D[:, None, :]), 0.0)
    As = As + jnp.where(free, 0.0, 1.0)[:, :, None] * jnp.eye(n, dtype=A.dtype)
    e, Q = jnp.linalg.eigh(As)
    e = jnp.maximum(e, 0.0)
    c = jnp.einsum("mji,mj->mi", Q, jnp.where(free, g / D, 0.0))
    e_max = jnp.max(e, axis=1)
    tiny = jnp.finfo(A.dtype).eps * e_max[:, None]

    def inverse(lam):  # c / (e + lam), 0 on the numerically null space
        d = e + lam[:, None]
        big = d > tiny
        return jnp.where(big, c / jnp.where(big, d, 1.0), 0.0), big

    def norm(lam):  # |D p(lam)| (inf where a null direction has c != 0), and its slope
        q, big = inverse(lam)
        pn = jnp.sqrt(jnp.sum(q**2, axis=1))
        pn = jnp.where(jnp.any(~big & (c != 0), axis=1), jnp.inf, pn)
        return pn, jnp.sum(q**2 / jnp.where(big, e + lam[:, None], 1.0), axis=1)

    def newton(lam, _):
        pn, slope = norm(lam)
        step = (pn / delta - 1.0) * pn**2 / jnp.where(slope > 0, slope, 1.0)
        lam = jnp.where(jnp.isfinite(pn) & (slope > 0), lam + step,
                        lam + 1e-8 * e_max + jnp.finfo(A.dtype).tiny)
        return jnp.maximum(lam, 0.0), None

    lam, _ = jax.lax.scan(newton, jnp.zeros_like(delta), None, length=newton_iters)
    lam = jnp.where(norm(jnp.zeros_like(delta))[0] <= 1.1 * delta, 0.0, lam)
    ps = -jnp.einsum("mij,mj->mi", Q, inverse(lam)[0])
    return jnp.where(free, ps / D, 0.0), lam


def bound_update(s, act, step, lam, D, change, predicted, ok_t, loss_t, Js, opts):
    """Acceptance, step-bound update and ftol test of the "bounded" rule, per member
    (MINPACK lmder's, but for `BOUND_GROW` and the ftol test's condition).

    Accept when the actual reduction is at least 1e-4 of the predicted one. The step
    bound shrinks when that ratio is <= 0.25 (by 0.1 to 0.5, from a quadratic fit
    along the step, as lmder) and becomes twice the scaled step when the ratio is >=
    `BOUND_GROW` or the step was Gauss–Newton. Converged (lmder's ftol test, with
    ``opts.rtol``): the actual and the predicted relative reduction are both <= rtol,
    for a Gauss–Newton step only (a step cut short by its bound also promises little;
    lmder's xtol test is left out for the same reason: the optimistix and stall tests
    of `lm_run` stop the rest).
    **Returns:** ``(accept, radius, converged)``.
    """
    pnorm = jnp.linalg.norm(D * step, axis=1)
    delta = jnp.where(s.n_steps == 0, jnp.minimum(s.radius, pnorm), s.radius)
    neg = predicted < 0
    ratio = jnp.where(neg, change / jnp.where(neg, predicted, -1.0), 0.0)
    ratio = jnp.where(ok_t, ratio, -jnp.inf)
    accept = act & neg & (ratio >= 1e-4)
    blowup = ~ok_t | (loss_t >= 100.0 * s.loss)  # lmder: 0.1 * fnorm1 >= fnorm
    actred = jnp.where(blowup, -1.0, -change / s.loss)
    dirder = -(jnp.sum(Js**2, axis=1) + lam * pnorm**2) / (2.0 * s.loss)
    temp = jnp.where(actred >= 0, 0.5, 0.5 * dirder / (dirder + 0.5 * actred))
    temp = jnp.where(blowup | ~(temp >= 0.1), 0.1, temp)
    radius = jnp.where(ratio <= 0.25, temp * jnp.minimum(delta, pnorm / 0.1),
                       jnp.where((lam == 0) | (ratio >= BOUND_GROW), pnorm / 0.5, delta))
    radius = jnp.where(act, radius, s.radius)
    ftol = ((jnp.abs(actred) <= opts.rtol) & (-predicted <= opts.rtol * s.loss)
            & (0.5 * ratio <= 1.0) & (lam == 0))
    return accept, radius, act & ftol


@eqx.filter_jit
def lm_run(predictor, state: LMState, data, sigma, free, opts, cap):
    """At most ``cap`` iterations of every member that has not stopped."""
    def active(s):
        return ~s.done & (s.n_steps < opts.max_steps)

    def cond(carry):
        s, k = carry
        return jnp.any(active(s)) & (k < cap)

    bounded = opts.trust_region == "bounded"
    if not bounded:
        hc, hk, lc, lk = opts.trust_region or OPTIMISTIX_TRUST_REGION
    tiny = jnp.finfo(state.z.dtype).eps

    def body(carry):
        s, k = carry
        act = active(s)
        A = jnp.einsum("mnp,mnq->mpq", s.jac, s.jac)
        g = jnp.einsum("mnp,mn->mp", s.jac, s.r)
        if bounded:  # the step within MINPACK's scaled step bound
            D = jnp.maximum(s.scale, column_norms(s.jac))
            step, lam = bounded_step(A, g, D, free, s.radius)
        else:  # damped Gauss-Newton step, damping 1 / trust-region size (optimistix)
            D = s.scale
            lam = jnp.where(s.radius > tiny, 1.0 / jnp.where(s.radius > tiny, s.radius,
                                                              1.0),
                            jnp.finfo(s.z.dtype).max)
            H = A + lam[:, None, None] * jnp.eye(A.shape[-1], dtype=A.dtype)
            step = -jnp.linalg.solve(H, g[..., None])[..., 0]
        step = jnp.where(act[:, None] & free & jnp.isfinite(step), step, 0.0)
        z_t = s.z + step
        # members that stopped are not solved again (no ODE work)
        r, J, lp, st = evaluate(predictor, z_t, data, sigma, act)
        loss_t = 0.5 * jnp.sum(r**2, axis=1)
        ok_t = (st == 0) & jnp.isfinite(loss_t)
        Js = jnp.einsum("mnp,mp->mn", s.jac, step)
        predicted = jnp.sum(g * step, axis=1) + 0.5 * jnp.sum(Js**2, axis=1)  # <= 0
        change = jnp.where(ok_t, loss_t - s.loss, jnp.inf)
        if bounded:
            accept, radius, conv_bound = bound_update(
                s, act, step, lam, D, change, predicted, ok_t, loss_t, Js, opts)
        else:
            accept = act & (change <= lc * predicted)
            good = accept & (change < hc * predicted) & (predicted < 0)
            radius = s.radius * jnp.where(good, hk, jnp.where(accept, 1.0, jnp.where(
                act, lk, 1.0)))
            conv_bound = False
        # converged (optimistix's Cauchy test): small step in z and small change of the
        # residuals, both relative to atol + rtol * |value| (max norm)
        small_z = jnp.all(jnp.abs(step) < opts.atol + opts.rtol * jnp.abs(z_t), axis=1)
        small_r = jnp.all(jnp.abs(r - s.r) < opts.atol + opts.rtol * jnp.abs(r), axis=1)
        conv = (accept & small_z & small_r) | conv_bound
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
                    n_steps=s.n_steps + act.astype(jnp.int32), scale=D)
        return s, k + 1

    state, _ = jax.lax.while_loop(cond, body, (state, jnp.asarray(0)))
    return state


# Between passes the pending members are packed into a batch of the full size divided
# by a power of PASS_SHRINK. Members that have stopped do no ODE work, but still cost
# the solve's set-up and the LM's algebra: on the 154 PDXE HER2 curves (4 starts each,
# trust_region="bounded") halving rather than quartering took the fit from 2.78 to
# 2.40 s, at the price of more batch sizes to compile.
PASS_SHRINK = 2


def _bucket(n: int, full: int, smallest: int = 8) -> int:
    """The batch size for ``n`` pending members: ``full`` divided by a power of
    `PASS_SHRINK`."""
    size = full
    while size // PASS_SHRINK >= max(n, smallest):
        size //= PASS_SHRINK
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
    passes and batch sizes.
    """
    host = jax.tree_util.tree_map(np.asarray, data)  # the passes' bookkeeping: NumPy
    free = np.asarray(free, bool)
    info = {"passes": 0, "batch_sizes": []}
    z = np.asarray(z0)
    sigma = np.asarray(sigma0, dtype=z.dtype)
    steps = 0
    for _ in range(3 if opts.refit_sigma else 1):
        state = _passes(predictor, data, host, z, sigma, free, opts, cap, info)
        steps = steps + state.n_steps
        z, used = state.z, sigma
        if opts.refit_sigma:
            sigma = np.asarray(_sigma_mle(state.log_pred, data, sigma))
    state = eqx.tree_at(lambda s_: s_.n_steps, state, steps)
    return _finish(predictor, state, data, used, opts), info


def _passes(predictor, data, host, z0, sigma, free, opts, cap, info) -> LMState:
    state = lm_init(predictor, jnp.asarray(z0), data, jnp.asarray(sigma),
                    opts.trust_region == "bounded")
    state = jax.tree_util.tree_map(np.array, state)
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
        out = lm_run(predictor, sub, take(host, sel), sigma[sel], free[sel],
                     opts, np.asarray(cap))
        out = jax.tree_util.tree_map(np.asarray, out)
        first = np.unique(sel, return_index=True)[1]  # one copy of each member
        for full, new in zip(jax.tree_util.tree_leaves(state),
                             jax.tree_util.tree_leaves(out), strict=True):
            full[sel[first]] = new[first]
        info["passes"] += 1
        info["batch_sizes"].append(size)


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
