"""The one Levenberg–Marquardt of fitcsc: per-member state, rules as small objects.

Every least-squares fit in the package minimises ``0.5 |r(z)|^2`` with these pure
functions of *one* member (one subject or group from one start), vmapped over members
by the lane driver (`fitcsc._fit.lanes`):

- `lm_init(rule, z, r, J, ok)`: the state at a start, from its residuals ``r`` and
  Jacobian ``J`` (the first evaluation);
- `lm_propose(rule, state, free)`: the next step ``p`` (and the LM parameter used);
- `lm_update(rule, stop, state, p, lam, r_t, J_t, ok_t)`: accept or reject the trial
  point ``z + p`` from its evaluation, adapt the trust region, apply the stopping tests;
- `lm_terminated(stop, state)`: stopped (converged, failed at the start, or at the
  step cap).

How a step is chosen is a *rule*, a small immutable object:

- `Damping` (``"damping"``): optimistix's `LevenbergMarquardt` with its
  `ClassicalTrustRegion`: the damped Gauss–Newton step ``-(J'J + lam I)^-1 J'r`` with
  ``lam = 1 / radius``, accepted when the actual reduction is at least ``low_cutoff``
  of the predicted one; the radius grows by ``high_constant`` when the ratio exceeds
  ``high_cutoff`` and shrinks by ``low_constant`` on a rejection. Defaults are
  optimistix's constants (Gould et al.); ``"eager"`` is (0.5, 3.0, 1e-4, 0.25). A test
  checks it takes optimistix's steps.
- `Bounded` (``"bounded"``, the default): MINPACK lmder's rule, the one
  `scipy.optimize.least_squares(method="lm")` runs: a bound on the step scaled by the
  largest column norms of J so far, Gauss–Newton whenever its scaled step lies inside
  (`bounded_step`, lmder's ``lmpar``), the bound shrunk after a poor step by lmder's
  quadratic rule and grown to twice the scaled step after a good one (a ratio of
  actual to predicted reduction >= 0.75, as lmder). One choice differs from lmder's
  and was measured: the first bound is ``1 x |D z0|`` (lmder: 100; then 6 of 48 PDXE
  HER2 curves left on their first Gauss–Newton step for a flat region of saturated
  parameters). With the bound grown at a ratio >= 0.5 instead, it took a mean of 17.4
  LM steps per start on the 849 PDXE curves against 26.7 for ``"eager"``, but the
  golden per-curve PDXE fits (`tests/test_fit_golden.py`) lost an optimum: an HER2
  combination curve (X.1004 LJM716 + trastuzumab) stopped at 46.04 on the plateau of
  saturated efficacies against 45.027 (at 0.75, and optimistix's rule, it reaches
  45.027; a first bound of ``0.1`` or ``0.3 x |D z0|`` lost a cytostatic curve
  instead). The steps per start at 0.75 on the 849 curves are not yet measured.
  A second choice differs: the scaling ``D`` *decays* (``decay = 0.95``: the larger of
  the current column norms and 0.95 times the previous ``D``; lmder keeps the largest
  column norms so far). With lmder's scaling, 35 of the 3,396 PDXE starts crawled to
  the 200-step cap along a parameter running to a bound (its column shrunk, its ``D``
  not); with the decay they reach the asymptote in tens of steps, at lower losses.
  ``Bounded(decay=1.0)`` is lmder's scaling (the trial fits still use it).

The stopping tests, written once for every rule (`Stop`):

- optimistix's Cauchy test on an accepted step: the step in ``z`` and the change of
  the residuals both below ``atol + rtol |.|`` (max norm); at the start, residuals
  below that bound;
- lmder's ftol test on a Gauss–Newton step (``lam == 0``, so never under `Damping`):
  the actual and the predicted relative reduction both at most ``rtol``;
- a rejected step negligible in ``z`` that promised a negligible decrease: the
  residuals of an ODE model carry noise at the solver's tolerance, which alone can
  reject every step at an optimum;
- the stall test (``stall_rtol``, off by default): the loss fell by at most
  ``stall_atol + stall_rtol |loss|`` over ``stall_steps`` accepted steps. Boundary
  optima (an efficacy at 0 or 1, ``z`` running off to infinity) stop there instead of
  crawling to the cap;
- the step cap ``max_steps``, counting evaluations (the first included, as optimistix
  and scipy's ``nfev``).

`least_squares` is the entry point for any residual function of an unconstrained
vector, from several starts at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._status import FitStatus


class Stop(eqx.Module):
    """Stopping tests of the LM (traced values: changing them never recompiles).

    ``stall_steps = 0`` switches the stall test off.
    """

    rtol: Float[Array, ""]
    atol: Float[Array, ""]
    max_steps: Int[Array, ""]
    stall_rtol: Float[Array, ""]
    stall_atol: Float[Array, ""]
    stall_steps: Int[Array, ""]


def make_stop(*, rtol=1e-8, atol=1e-8, max_steps=200, stall_rtol=None, stall_atol=0.0,
              stall_steps=3, who: str = "least_squares") -> Stop:
    """A `Stop`, checked on concrete values. **Raises:** `ValueError` (one line)."""
    for name, v in (("rtol", rtol), ("atol", atol), ("stall_atol", stall_atol)):
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise ValueError(f"{who}: {name} must be finite and >= 0, got {v!r}")
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"{who}: max_steps must be an integer >= 1, got {max_steps!r}")
    if stall_rtol is not None and not (math.isfinite(float(stall_rtol))
                                       and float(stall_rtol) >= 0):
        raise ValueError(f"{who}: stall_rtol must be finite and >= 0, got {stall_rtol!r}")
    if int(stall_steps) != stall_steps or stall_steps < 1:
        raise ValueError(f"{who}: stall_steps must be an integer >= 1, got {stall_steps!r}")
    off = stall_rtol is None
    return Stop(rtol=jnp.asarray(float(rtol)), atol=jnp.asarray(float(atol)),
                max_steps=jnp.asarray(int(max_steps), jnp.int32),
                stall_rtol=jnp.asarray(0.0 if off else float(stall_rtol)),
                stall_atol=jnp.asarray(float(stall_atol)),
                stall_steps=jnp.asarray(0 if off else int(stall_steps), jnp.int32))


class LMState(eqx.Module):
    """State of one member (no leading axis; the driver vmaps over members)."""

    z: Float[Array, " n_z"]  # the last accepted point
    r: Float[Array, " n_r"]  # residuals there
    jac: Float[Array, "n_r n_z"]  # their Jacobian
    loss: Float[Array, ""]  # 0.5 |r|^2
    radius: Float[Array, ""]  # Damping: 1 / lam; Bounded: the bound on |D p|
    scale: Float[Array, " n_z"]  # D: the largest column norms of J so far (Bounded)
    ref: Float[Array, ""]  # stall test: the loss at its reference point
    count: Int[Array, ""]  # accepted steps since the reference point
    n_steps: Int[Array, ""]  # evaluations, the first included
    done: Bool[Array, ""]  # stopped: converged, or failed at the start
    converged: Bool[Array, ""]


def column_norms(J):
    """Norms of the columns of ``J`` (..., n, p) (1 where a column is zero): MINPACK's
    scaling of the parameters."""
    n = jnp.linalg.norm(J, axis=-2)
    return jnp.where(n > 0, n, 1.0)


def _free_block(A, free):
    """``A`` on the free rows and columns, the identity on the others."""
    pair = free[:, None] & free[None, :]
    return jnp.where(pair, A, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))


class Damping(eqx.Module):
    """optimistix's Levenberg–Marquardt rule (`optimistix.ClassicalTrustRegion`):
    (high_cutoff, high_constant, low_cutoff, low_constant)."""

    high_cutoff: float = eqx.field(static=True, default=0.99)
    high_constant: float = eqx.field(static=True, default=3.5)
    low_cutoff: float = eqx.field(static=True, default=0.01)
    low_constant: float = eqx.field(static=True, default=0.25)

    def first_radius(self, z, D):
        del D
        return jnp.ones((), z.dtype)

    def scaling(self, s: LMState):
        return s.scale

    def step(self, A, g, D, free, radius):
        del D
        eps = jnp.finfo(A.dtype).eps
        lam = jnp.where(radius > eps, 1.0 / jnp.where(radius > eps, radius, 1.0),
                        jnp.finfo(A.dtype).max)
        H = _free_block(A, free) + lam * jnp.diag(jnp.where(free, 1.0, 0.0))
        return -jnp.linalg.solve(H, jnp.where(free, g, 0.0)), lam

    def update(self, s, p, lam, D, change, predicted, ok_t, loss_t, Js, stop):
        del p, lam, D, ok_t, loss_t, Js, stop
        accept = change <= self.low_cutoff * predicted
        good = accept & (change < self.high_cutoff * predicted) & (predicted < 0)
        mul = jnp.where(good, self.high_constant, jnp.where(accept, 1.0, self.low_constant))
        return accept, s.radius * mul


class Bounded(eqx.Module):
    """MINPACK lmder's rule: a bound on the scaled step (see the module docstring).

    ``factor``: the first bound is ``factor * |D z0|`` (``factor`` where that is 0);
    ``grow``: the bound becomes twice the scaled step when the ratio of actual to
    predicted reduction is at least ``grow`` (or the step was Gauss–Newton);
    ``decay``: the scaling ``D`` is the larger of the Jacobian's column norms and
    ``decay`` times the previous ``D`` (lmder: ``decay = 1``, the largest column norms
    so far). With lmder's, a parameter whose column has shrunk by orders of magnitude
    (an efficacy's logit running to a bound, a rate's log to minus infinity) keeps its
    largest ``D`` and moves by a bounded step per iteration: on the PDXE benchmark 35 of
    3,396 starts crawled like this to the 200-step cap. ``decay = 0.95`` lets ``D``
    follow the column down (by 5 % per step at most).
    """

    factor: float = eqx.field(static=True, default=1.0)
    grow: float = eqx.field(static=True, default=0.75)
    decay: float = eqx.field(static=True, default=0.95)

    def first_radius(self, z, D):
        dz = jnp.linalg.norm(D * z)
        return jnp.where(dz > 0, self.factor * dz, self.factor)

    def scaling(self, s: LMState):
        return jnp.maximum(self.decay * s.scale, column_norms(s.jac))

    def step(self, A, g, D, free, radius):
        return bounded_step(A, g, D, free, radius)

    def update(self, s, p, lam, D, change, predicted, ok_t, loss_t, Js, stop):
        """lmder's acceptance and bound update (`grow` 0.75 is lmder's)."""
        pnorm = jnp.linalg.norm(D * p)
        delta = jnp.where(s.n_steps == 1, jnp.minimum(s.radius, pnorm), s.radius)
        neg = predicted < 0
        ratio = jnp.where(neg, change / jnp.where(neg, predicted, -1.0), 0.0)
        ratio = jnp.where(ok_t, ratio, -jnp.inf)
        accept = neg & (ratio >= 1e-4)
        blowup = ~ok_t | (loss_t >= 100.0 * s.loss)  # lmder: 0.1 * fnorm1 >= fnorm
        actred = jnp.where(blowup, -1.0, -change / s.loss)
        dirder = -(jnp.sum(Js**2) + lam * pnorm**2) / (2.0 * s.loss)
        temp = jnp.where(actred >= 0, 0.5, 0.5 * dirder / (dirder + 0.5 * actred))
        temp = jnp.where(blowup | ~(temp >= 0.1), 0.1, temp)
        radius = jnp.where(ratio <= 0.25, temp * jnp.minimum(delta, pnorm / 0.1),
                           jnp.where((lam == 0) | (ratio >= self.grow), pnorm / 0.5, delta))
        return accept, radius


def small_eigh(A, sweeps: int = 12):
    """Eigenvalues and eigenvectors of a small symmetric matrix ``A`` (n, n) by cyclic
    Jacobi rotations (``sweeps`` sweeps over the pairs): ``A = Q diag(e) Q'``,
    eigenvalues unordered. Selects and elementwise algebra only, no LAPACK call: the fit
    engine's service compiles into one function only without one (`fitcsc._fit.lanes`).
    The sweeps stop once the off-diagonal is at rounding of ``A`` (Jacobi converges
    quadratically: 4-6 sweeps for the n <= 20 of a fit; tested against numpy's eigh)."""
    n = A.shape[-1]
    if n == 1:
        return A[..., 0, :], jnp.ones_like(A)
    i = jnp.arange(n)

    def rotate(A, Q, p, q):
        apq, app, aqq = A[p, q], A[p, p], A[q, q]
        nz = apq != 0
        tau = (aqq - app) / (2.0 * jnp.where(nz, apq, 1.0))
        t = jnp.where(tau >= 0, 1.0, -1.0) / (jnp.abs(tau) + jnp.hypot(1.0, tau))
        t = jnp.where(nz, t, 0.0)
        c = 1.0 / jnp.hypot(1.0, t)
        s = t * c
        # A <- R' A R with R the rotation in the (p, q) plane
        rp, rq = A[p], A[q]
        A = jnp.where((i == p)[:, None], c * rp - s * rq,
                      jnp.where((i == q)[:, None], s * rp + c * rq, A))
        cp, cq = A[:, p], A[:, q]
        A = jnp.where((i == p)[None, :], (c * cp - s * cq)[:, None],
                      jnp.where((i == q)[None, :], (s * cp + c * cq)[:, None], A))
        qp, qq = Q[:, p], Q[:, q]
        Q = jnp.where((i == p)[None, :], (c * qp - s * qq)[:, None],
                      jnp.where((i == q)[None, :], (s * qp + c * qq)[:, None], Q))
        return A, Q

    ps, qs = (jnp.asarray(a, jnp.int32) for a in np.triu_indices(n, 1))
    off_diagonal = ~np.eye(n, dtype=bool)
    # stop when the off-diagonal is at rounding of A (or after `sweeps` sweeps)
    tol = (jnp.finfo(A.dtype).eps * jnp.sqrt(jnp.sum(A**2))) ** 2

    def sweep(c):
        k, A, Q = c
        A, Q = jax.lax.fori_loop(0, ps.shape[0], lambda j, AQ: rotate(*AQ, ps[j], qs[j]),
                                 (A, Q))
        return k + 1, A, Q

    def more(c):
        k, A, _ = c
        return (k < sweeps) & (jnp.sum(jnp.where(off_diagonal, A, 0.0) ** 2) > tol)

    _, A, Q = jax.lax.while_loop(more, sweep, (0, A, jnp.eye(n, dtype=A.dtype)))
    return jnp.diagonal(A), Q


def bounded_step(A, g, D, free, delta, newton_iters: int = 12):
    """The Levenberg–Marquardt step of MINPACK's ``lmpar`` (one member).

    ``p = -(A + lam D^2)^-1 g`` with ``lam = 0`` (Gauss–Newton) when ``|D p| <= 1.1
    delta``, else with the ``lam > 0`` where ``|D p| = delta``. Through the eigenvalues
    of the scaled ``D^-1 A D^-1`` (``n_z`` is small): ``|D p(lam)|`` is then explicit
    and the secular equation ``1/|D p(lam)| = 1/delta`` is solved by Newton's method
    from ``lam = 0`` (Moré and Hebden; monotone from below, as ``1/|D p|`` is concave
    in ``lam``). Components that are not ``free`` stay 0. A singular ``A`` is handled
    as by a pseudo-inverse at ``lam = 0``.

    **Arguments:** ``A`` ``(p, p)`` = J'J, ``g`` = J'r, ``D`` the scaling, ``free``
    bool ``(p,)``, ``delta`` the bound. **Returns:** ``(p, lam)``.
    """
    As = _free_block(A / (D[:, None] * D[None, :]), free)
    ok = jnp.all(jnp.isfinite(As)) & jnp.all(jnp.isfinite(g)) & jnp.isfinite(delta)
    As = jnp.where(ok, As, jnp.eye(A.shape[-1], dtype=A.dtype))  # (eigh crawls on NaN)
    e, Q = small_eigh(As)
    e = jnp.maximum(e, 0.0)
    c = Q.T @ jnp.where(free, g / D, 0.0)
    e_max = jnp.max(e)
    tiny = jnp.finfo(A.dtype).eps * e_max

    def inverse(lam):  # c / (e + lam), 0 on the numerically null space
        d = e + lam
        big = d > tiny
        return jnp.where(big, c / jnp.where(big, d, 1.0), 0.0), big

    def norm(lam):  # |D p(lam)| (inf where a null direction has c != 0), and its slope
        q, big = inverse(lam)
        pn = jnp.sqrt(jnp.sum(q**2))
        pn = jnp.where(jnp.any(~big & (c != 0)), jnp.inf, pn)
        return pn, jnp.sum(q**2 / jnp.where(big, e + lam, 1.0))

    def newton(lam, _):
        pn, slope = norm(lam)
        step = (pn / delta - 1.0) * pn**2 / jnp.where(slope > 0, slope, 1.0)
        lam = jnp.where(jnp.isfinite(pn) & (slope > 0), lam + step,
                        lam + 1e-8 * e_max + jnp.finfo(A.dtype).tiny)
        return jnp.maximum(lam, 0.0), None

    lam, _ = jax.lax.scan(newton, jnp.zeros_like(delta), None, length=newton_iters)
    lam = jnp.where(norm(jnp.zeros_like(delta))[0] <= 1.1 * delta, 0.0, lam)
    ps = -(Q @ inverse(lam)[0])
    return jnp.where(free, jnp.where(ok, ps / D, jnp.nan), 0.0), lam


RULES = {
    "damping": Damping(),  # optimistix's constants
    "eager": Damping(0.5, 3.0, 1e-4, 0.25),  # accept any decrease, widen often
    "bounded": Bounded(),  # with the decaying scaling (lmder's: Bounded(decay=1.0))
}
DEFAULT_RULE = "bounded"


def as_rule(trust_region, who: str = "fit_map"):
    """A rule from ``trust_region``: None (the default, ``"bounded"``), a name in
    `RULES`, a 4-tuple of `Damping` constants, or a rule object.
    **Raises:** `ValueError` (one line)."""
    if trust_region is None:
        return RULES[DEFAULT_RULE]
    if isinstance(trust_region, (Damping, Bounded)):
        return trust_region
    if isinstance(trust_region, str):
        if trust_region not in RULES:
            raise ValueError(f"{who}: trust_region must be one of {sorted(RULES)} or a "
                             f"4-tuple, got {trust_region!r}")
        return RULES[trust_region]
    t = tuple(float(x) for x in trust_region)
    if len(t) != 4 or not 0 <= t[2] <= t[0]:
        raise ValueError(f"{who}: trust_region must be (high_cutoff, high_constant, "
                         f"low_cutoff, low_constant) with low_cutoff <= high_cutoff, got "
                         f"{trust_region!r}")
    return Damping(t[0], t[1], t[2], t[3])


# ------------------------------------------------------------- one member's steps --


def lm_init(rule, z, r, J, ok, stop: Stop) -> LMState:
    """The state at a start ``z`` with residuals ``r`` and Jacobian ``J``; ``ok``:
    whether the evaluation succeeded (if not, the member stops, failed)."""
    loss = 0.5 * jnp.sum(r**2)
    ok = ok & jnp.isfinite(loss) & jnp.all(jnp.isfinite(z))
    D = column_norms(J)
    # optimistix's first step: the residuals themselves are below the Cauchy bound
    at_zero = jnp.all(jnp.abs(r) < stop.atol + stop.rtol * jnp.abs(r))
    return LMState(z=z, r=r, jac=J, loss=loss, radius=rule.first_radius(z, D), scale=D,
                   ref=jnp.where(ok, loss, jnp.inf), count=jnp.zeros((), jnp.int32),
                   n_steps=jnp.ones((), jnp.int32), done=~ok | at_zero,
                   converged=ok & at_zero)


def lm_propose(rule, s: LMState, free):
    """The step ``p`` from ``s.z`` (0 on elements that are not ``free``) and the LM
    parameter ``lam`` it used (0: Gauss–Newton)."""
    A = s.jac.T @ s.jac
    g = s.jac.T @ s.r
    p, lam = rule.step(A, g, rule.scaling(s), free, s.radius)
    return jnp.where(free & jnp.isfinite(p), p, 0.0), lam


def lm_update(rule, stop: Stop, s: LMState, p, lam, r_t, J_t, ok_t):
    """Accept or reject ``s.z + p`` (residuals ``r_t``, Jacobian ``J_t``; ``ok_t``:
    its evaluation succeeded), adapt the trust region and apply the stopping tests.
    **Returns:** ``(state, accepted)``."""
    z_t = s.z + p
    loss_t = 0.5 * jnp.sum(r_t**2)
    ok_t = ok_t & jnp.isfinite(loss_t)
    Js = s.jac @ p
    predicted = jnp.dot(s.jac.T @ s.r, p) + 0.5 * jnp.sum(Js**2)  # <= 0
    change = jnp.where(ok_t, loss_t - s.loss, jnp.inf)
    D = rule.scaling(s)
    accept, radius = rule.update(s, p, lam, D, change, predicted, ok_t, loss_t, Js, stop)
    accept = accept & ok_t
    tol_z = stop.atol + stop.rtol * jnp.abs(z_t)
    small_z = jnp.all(jnp.abs(p) < tol_z)
    small_r = jnp.all(jnp.abs(r_t - s.r) < stop.atol + stop.rtol * jnp.abs(r_t))
    conv = accept & small_z & small_r  # optimistix's Cauchy test
    # lmder's ftol test, on Gauss-Newton steps only (a step cut short by its bound
    # also promises little)
    actred = jnp.where(ok_t & (loss_t < 100.0 * s.loss), -change / s.loss, -1.0)
    ratio = jnp.where(predicted < 0, change / jnp.where(predicted < 0, predicted, -1.0),
                      0.0)
    conv = conv | ((lam == 0) & ok_t & (jnp.abs(actred) <= stop.rtol)
                   & (-predicted <= stop.rtol * s.loss) & (0.5 * ratio <= 1.0))
    # a rejected step negligible in z that promised a negligible decrease: at an
    # optimum, noise at the ODE tolerance alone can reject every step
    conv = conv | (~accept & small_z & (-predicted <= stop.atol + stop.rtol * s.loss))
    # the stall test: the loss fell by <= stall_atol + stall_rtol |loss| over
    # stall_steps accepted steps
    count = s.count + accept.astype(jnp.int32)
    check = accept & (stop.stall_steps > 0) & (count >= stop.stall_steps)
    stalled = check & (s.ref - loss_t <= stop.stall_atol + stop.stall_rtol * jnp.abs(loss_t))
    conv = conv | stalled

    def pick(new, old):
        return jnp.where(accept, new, old)

    return LMState(z=pick(z_t, s.z), r=pick(r_t, s.r), jac=pick(J_t, s.jac),
                   loss=pick(loss_t, s.loss), radius=radius, scale=D,
                   ref=jnp.where(check, loss_t, s.ref), count=jnp.where(check, 0, count),
                   n_steps=s.n_steps + 1, done=s.done | conv,
                   converged=s.converged | conv), accept


def lm_terminated(stop: Stop, s: LMState):
    """Whether the member has stopped: converged, failed at its start, or at the cap."""
    return s.done | (s.n_steps >= stop.max_steps)


# ------------------------------------------------- any residual function, many starts --


class LeastSquaresResult(eqx.Module):
    """Per-start outcome of `least_squares` (leading axis: starts)."""

    z: Float[Array, "n_starts n_z"]  # the last accepted point
    loss: Float[Array, " n_starts"]  # 0.5 |r(z)|^2
    status: Int[Array, " n_starts"]  # `FitStatus`: 0 converged, 1 max_steps, 3 nonfinite
    n_steps: Int[Array, " n_starts"]  # evaluations of r (and its Jacobian)
    residuals: Float[Array, "n_starts n_r"]  # r(z)
    jac: Float[Array, "n_starts n_r n_z"]  # dr/dz at z

    @property
    def best(self) -> int:
        """The start with the lowest loss among those that did not fail."""
        loss = np.where(np.asarray(self.status) <= FitStatus.MAX_STEPS,
                        np.asarray(self.loss), np.inf)
        return int(np.argmin(loss))


def least_squares(
    fn: Callable,
    z0,
    args=None,
    *,
    trust_region=None,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    max_steps: int = 200,
    stall_rtol: float | None = None,
    stall_atol: float = 0.0,
    stall_steps: int = 3,
    lanes: int | None = None,
    jac: Callable | None = None,
) -> LeastSquaresResult:
    """Minimise ``0.5 |fn(z, args)|^2`` over an unconstrained vector ``z`` from several
    starts at once, with the package's one Levenberg–Marquardt.

    **Arguments:**
    - `fn`: ``fn(z, args) -> r``, residuals ``(n_r,)`` of ``z`` ``(n_z,)``; forward-
      differentiable (the Jacobian is `jax.jacfwd`, vmapped over starts). A non-finite
      residual rejects a trial point; at a start it stops that start (``NONFINITE``).
    - `z0`: starts, ``(n_starts, n_z)`` (or ``(n_z,)`` for one).
    - `args`: any pytree passed to ``fn`` unchanged (shared by the starts; traced, so
      new values never recompile).
    - `trust_region`: the rule: ``"bounded"`` (default, MINPACK lmder's), ``"damping"``
      (optimistix's), ``"eager"``, or a 4-tuple of `Damping` constants.
    - `rtol`, `atol`: the Cauchy and ftol tests (see the module docstring).
    - `max_steps`: evaluations per start (the first included).
    - `stall_rtol`, `stall_atol`, `stall_steps`: also stop (as converged) once the loss
      fell by at most ``stall_atol + stall_rtol |loss|`` over ``stall_steps`` accepted
      steps (``stall_rtol=None``: off).
    - `lanes`: starts in flight at once (default: all).
    - `jac`: ``jac(z, args) -> (n_r, n_z)``, the Jacobian of ``fn``, when it is cheaper
      than `jax.jacfwd` of ``fn`` (default None: jacfwd). It must equal jacfwd's.

    **Returns:** a `LeastSquaresResult` (per start; ``.best`` picks one).

    ```python
    def r(z, t):                       # fit y = exp(-k t) to two points
        return jnp.exp(-jnp.exp(z[0]) * t) - jnp.array([0.6, 0.35])
    res = fitcsc.least_squares(r, jnp.array([[0.0], [-2.0]]), jnp.array([1.0, 2.0]))
    res.z[res.best], res.status
    ```
    """
    from .lanes import ResidualProblem, solve_members

    z0 = np.atleast_2d(np.asarray(z0, dtype=float))
    if z0.ndim != 2 or z0.shape[1] < 1:
        raise ValueError(f"least_squares: z0 must be (n_starts, n_z), got {z0.shape}")
    rule = as_rule(trust_region, "least_squares")
    stop = make_stop(rtol=rtol, atol=atol, max_steps=max_steps, stall_rtol=stall_rtol,
                     stall_atol=stall_atol, stall_steps=stall_steps)
    n = z0.shape[0]
    out = solve_members(ResidualProblem(fn, args, jac), rule, stop, None, z0,
                        np.ones(z0.shape, bool), lanes=lanes or n)
    status = np.where(out["converged"], FitStatus.CONVERGED, np.where(
        out["at_max"], FitStatus.MAX_STEPS, FitStatus.NONFINITE)).astype(np.int32)
    return LeastSquaresResult(z=jnp.asarray(out["z"]), loss=jnp.asarray(out["loss"]),
                              status=jnp.asarray(status),
                              n_steps=jnp.asarray(out["n_steps"]),
                              residuals=jnp.asarray(out["r"]), jac=jnp.asarray(out["jac"]))
