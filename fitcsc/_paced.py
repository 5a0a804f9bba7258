"""Many small ODE solves in one array program, each member at its own pace.

`jax.vmap` of `diffrax.diffeqsolve` gives every member its own step size, but each
member-step pays for the solve loop's general machinery under vmap: the Runge-Kutta
stages run as an inner loop, and saving at the requested times interpolates inside
another. On a 2-core CPU (float64, 256 PDXE members of `fitcsc fit`, residuals and
Jacobian) that costs about 600 µs per member. `paced_solve` keeps only what a fit needs:

- diffrax's Tsit5 tableau (`diffrax.Tsit5.tableau`) written out stage by stage (no
  inner loop), first-same-as-last, and diffrax's `PIDController` for the initial step
  (`init`) and every accept/reject and step-size decision (`adapt_step_size`), so the
  error control is diffrax's own (same norm, safety factor and limits);
- each member's steps end exactly on its observation times and just before its known
  discontinuities of the vector field (dose times), as diffrax's ``jump_ts`` does; a
  step cut short by an observation does not shrink the next proposal, and the values
  at the observations are the step's end points (no interpolation);
- members that finish early leave the loop: whenever the unfinished members fit into a
  batch half as large they are gathered into it (down to 16), so one hard member runs
  alone at the end rather than holding every member of the batch (each batch size is
  one more copy of the loop in the compiled program: halving rather than quartering
  took a whole-group fit of the PDXE cytostatic curves from 3.4 to 2.4 s in one
  exploratory run, 3.8 s in the full benchmark, and its compile from about 75 to 130 s).

Measured (256 PDXE cytostatic members at their starts, 2-core CPU, float64, median of
15): 49 µs per member against 168 µs for one shared
solve of all members and 530 µs for vmapped diffeqsolve; at trial points 1.5 (in z)
away from the starts 68 µs against 401 µs and 857 µs. Values agree with vmapped
diffeqsolve to the tolerance (3.6e-9 in log volume at rtol 1e-8), and both lie as far
from a solve at rtol 1e-12.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from ._simulate import Status

SHRINK = 2  # gather the unfinished members once they fit into a batch this much smaller
SMALLEST = 16  # ... down to this many

_TABLEAU = diffrax.Tsit5.tableau
_ERROR_ORDER = diffrax.Tsit5().error_order(diffrax.ODETerm(lambda t, y, a: y))


def _tree_where(pred, new, old):
    """``new`` where ``pred`` (a scalar or leading-axis bool), else ``old``."""
    def one(a, b):
        p = jnp.reshape(pred, jnp.shape(pred) + (1,) * (jnp.ndim(a) - jnp.ndim(pred)))
        return jnp.where(p, a, b)

    return jax.tree_util.tree_map(one, new, old)


def _finite(tree):
    """Whether every value of ``tree`` is finite (a bool scalar)."""
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x))
                                for x in jax.tree_util.tree_leaves(tree)]))


def _put(hit, rec, out):
    """``rec`` (one output) in the output slots where ``hit`` ``(n_obs,)``, else ``out``."""
    return jax.tree_util.tree_map(
        lambda r, o: jnp.where(hit.reshape((-1,) + (1,) * jnp.ndim(r)), r, o), rec, out)


def _combine(y0, dt, coefs, ks):
    """``y0 + dt * sum_j coefs[j] * ks[j]`` over a pytree (zero coefficients skipped)."""
    terms = [(float(a), k) for a, k in zip(coefs, ks, strict=False) if a != 0.0]

    def one(y, *kk):
        return y + dt * sum(a * k for (a, _), k in zip(terms, kk, strict=True))

    return jax.tree_util.tree_map(one, y0, *[k for _, k in terms])


def tsit5_step(f, t0, t1, y0, args, k1):
    """One Tsit5 step from ``t0`` to ``t1`` with ``k1 = f(t0, y0, args)`` known.

    **Returns:** ``(y1, y_error, k_last)`` with ``k_last = f(t1, y1, args)`` (the next
    step's ``k1``)."""
    dt = t1 - t0
    ks = [k1]
    for c, a in zip(_TABLEAU.c, _TABLEAU.a_lower, strict=True):
        y1 = _combine(y0, dt, np.asarray(a), ks)
        ks.append(f(t0 + float(c) * dt, y1, args))
    # the last stage sits at t1 with the solution's weights: y1 is the step's result
    err = jax.tree_util.tree_map(
        lambda *kk: dt * sum(float(b) * k for b, k in
                             zip(np.asarray(_TABLEAU.b_error), kk, strict=True) if b != 0.0),
        *ks)
    return y1, err, ks[-1]


def paced_solve(
    rhs: Callable,
    y0,
    args,
    tau_obs: jax.Array,
    tau_jumps: jax.Array,
    record: Callable,
    *,
    rtol: float,
    atol: float,
    max_steps: int,
    norm: Callable | None = None,
    active: jax.Array | None = None,
):
    """Solve ``dy/dtau = rhs(tau, y, args)`` for every member from ``tau = 0``.

    **Arguments** (leading axis M, the members, on ``y0``, ``args`` and the arrays):

    - ``rhs(tau, y, args)``: the vector field of one member.
    - ``tau_obs`` ``(M, n_obs)``: output times (>= 0); ``+inf`` marks padding.
    - ``tau_jumps`` ``(M, n_jumps)``: times where ``rhs`` jumps (entries <= 0 or
      ``+inf`` are ignored).
    - ``record(y)``: the pytree kept at each output time.
    - ``rtol``, ``atol``, ``norm``: diffrax's `PIDController` error control (default
      norm: its RMS over all of ``y``);
      ``max_steps``: accepted plus rejected steps per member.
    - ``active`` ``(M,)`` bool: members to solve (default all); the others return NaN.

    **Returns:** ``(records, status, steps)``: ``records`` with leading axes
    ``(M, n_obs)`` (NaN at padding and where a solve stopped), a `Status` code and the
    number of steps of each member.
    """
    ctrl = diffrax.PIDController(rtol=rtol, atol=atol, **({} if norm is None else {"norm": norm}))
    term = diffrax.ODETerm(rhs)
    M, n_obs = tau_obs.shape
    if active is None:
        active = jnp.ones((M,), bool)

    def setup(y, a, t_obs, jumps, act):
        order = jnp.argsort(t_obs)
        t_obs = t_obs[order]
        jumps = jnp.where(jumps > 0, jumps, jnp.inf)
        dt0, cstate = ctrl.init(term, 0.0, 1.0, y, None, a,
                                lambda _, t, y_, a_: rhs(t, y_, a_), _ERROR_ORDER)
        rec0 = record(y)
        at0 = (t_obs <= 0.0) & act
        out = _put(at0, rec0, jax.tree_util.tree_map(
            lambda r: jnp.full((n_obs,) + jnp.shape(r), jnp.nan), rec0))
        k = jnp.sum(at0)
        n_real = jnp.sum(jnp.isfinite(t_obs))
        finite = jnp.isfinite(dt0) & _finite(y)
        carry = dict(tau=jnp.zeros_like(dt0), y=y, k1=rhs(0.0, y, a), cstate=cstate,
                     h=dt0, k=k, out=out, steps=jnp.asarray(0), jump=jnp.asarray(False),
                     done=(k >= n_real) | ~act | ~finite,
                     code=jnp.where(finite | ~act, Status.SUCCESS, Status.NONFINITE))
        return carry, (t_obs, order, n_real, jumps)

    def step(c, consts, a):
        t_obs, _, n_real, jumps = consts
        obs_next = t_obs[jnp.minimum(c["k"], n_obs - 1)]
        jump_next = jnp.min(jnp.where(jumps > c["tau"], jumps, jnp.inf))
        before_jump = jnp.nextafter(jump_next, -jnp.inf)
        t0 = c["tau"]
        t1 = jnp.minimum(t0 + c["h"], jnp.minimum(obs_next, before_jump))
        y1, y_err, k_last = tsit5_step(rhs, t0, t1, c["y"], a, c["k1"])
        keep, next_t0, next_t1, _, cstate, _ = ctrl.adapt_step_size(
            t0, t1, c["y"], y1, a, y_err, _ERROR_ORDER, c["cstate"])
        finite = _finite(y1)
        keep = keep & finite
        h = next_t1 - next_t0
        # a step cut short by an output or a jump does not shrink the next proposal
        h = jnp.where(keep & (t1 < t0 + c["h"]), jnp.maximum(h, c["h"]), h)
        h = jnp.where(finite, h, 0.2 * (t1 - t0))
        at_obs = keep & (t1 >= obs_next)
        at_jump = keep & (t1 >= before_jump) & ~at_obs
        hit = at_obs & (t_obs == obs_next)
        out = _put(hit, record(y1), c["out"])
        k = c["k"] + jnp.sum(hit)
        steps = c["steps"] + 1
        finished = k >= n_real
        code = jnp.where(finished, Status.SUCCESS, jnp.where(
            steps >= max_steps, Status.MAX_STEPS, jnp.where(
                ~(h > 0), Status.SOLVER_FAILURE, Status.SUCCESS)))
        new = dict(tau=jnp.where(keep, jnp.where(at_jump, jump_next, t1), t0),
                   y=_tree_where(keep, y1, c["y"]), k1=_tree_where(keep, k_last, c["k1"]),
                   cstate=cstate, h=h, k=k, out=out, steps=steps, jump=at_jump,
                   done=finished | (code != Status.SUCCESS), code=code)
        return _tree_where(c["done"], c, new)

    def refresh(c, a):
        """After a jump the stored k1 is the derivative before it: evaluate it again."""
        k1 = jax.vmap(rhs)(c["tau"], c["y"], a)
        return dict(c, k1=_tree_where(c["jump"], k1, c["k1"]))

    def run(carry, consts, a):
        n = carry["done"].shape[0]

        def body(c):
            c = jax.lax.cond(jnp.any(c["jump"]), refresh, lambda c_, _: c_, c, a)
            return jax.vmap(step)(c, consts, a)

        small = n // SHRINK
        if small < SMALLEST:
            return jax.lax.while_loop(lambda c: ~jnp.all(c["done"]), body, carry)
        carry = jax.lax.while_loop(lambda c: jnp.sum(~c["done"]) > small, body, carry)
        idx = jnp.argsort(carry["done"], stable=True)[:small]  # unfinished first
        sub = run(*jax.tree_util.tree_map(lambda x: x[idx], (carry, consts, a)))
        return jax.tree_util.tree_map(lambda x, s: x.at[idx].set(s), carry, sub)

    carry, consts = jax.vmap(setup)(y0, args, tau_obs, tau_jumps, active)
    carry = run(carry, consts, args)
    order = consts[1]
    back = jnp.argsort(order, axis=1)
    records = jax.tree_util.tree_map(
        lambda r: jnp.take_along_axis(r, back.reshape(back.shape + (1,) * (r.ndim - 2)),
                                      axis=1), carry["out"])
    return records, carry["code"].astype(jnp.int32), carry["steps"]
