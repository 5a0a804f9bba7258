"""The driver of the one Levenberg–Marquardt: members stream through fixed-shape lanes.

A fit is a set of *members* (one subject, group or profile point from one start), each
an independent least-squares problem. A *problem* object says how one member's
residuals and Jacobian are evaluated (its evaluator: `jax.jacfwd` under vmap for any
predictor, a paced ODE solve for the CSC model; see `fitcsc._fit.evaluators`); `fitcsc._fit.lm`
says what the LM does with them. This module runs them:

- a fixed number of *lanes* (``lanes``), each holding one member in flight: its LM
  state and its evaluation in progress. One loop iteration advances every lane's
  evaluation by one unit (for the paced evaluator one ODE step, for jacfwd the whole
  evaluation);
- a lane whose evaluation has finished is *served* (at most ``slots`` lanes per
  iteration, gathered): the LM accepts or rejects the point and proposes the next,
  whose evaluation starts at once; when the member has stopped, its results go to an
  outbox and the lane takes the next member from a queue. No lane waits for another
  lane's solve, and a member that stops costs nothing more;
- the queue and the outbox have a fixed size (``window``); the host refills the one and
  drains the other between calls of the same compiled program.

So a fit compiles one program per problem structure (model, spec, evaluator) and
shape of one member's data (the observation count is padded to a bucket), whatever
the number of members. `TRACES` counts how often the lane program was traced.

Sigma refits (censored observations, sigma estimated) run inside a lane: when a
member's LM stops, the problem may re-weigh its residuals (a new sigma) and restart
the LM from the same point without a new evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .lm import LMState, Stop, lm_init, lm_propose, lm_terminated, lm_update

TRACES = {"lanes": 0}  # traces of the lane program (the compile-count test reads it)
# loop iterations, services, lane-iterations spent evaluating (busy and not ready) and
# calls of the lane program since import (for tuning and the benchmark)
STATS = {"iterations": 0, "services": 0, "lane_steps": 0, "ready_waiting": 0, "idle": 0,
         "calls": 0}
DEFAULT_LANES = 128


class LaneConfig(eqx.Module):
    """Static shape of the lane program."""

    lanes: int = eqx.field(static=True)
    slots: int = eqx.field(static=True)  # lanes served per iteration
    window: int = eqx.field(static=True)  # queue and outbox size
    threshold: int = eqx.field(static=True)  # ready lanes that start a service


def _where(pred, new, old):
    """``new`` where ``pred`` (leading-axis bool), else ``old``, over a pytree."""
    def one(a, b):
        p = jnp.reshape(pred, jnp.shape(pred) + (1,) * (jnp.ndim(a) - jnp.ndim(pred)))
        return jnp.where(p, a, b)

    return jax.tree_util.tree_map(one, new, old)


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def _compact(z, idx):
    """The elements ``idx`` of ``z`` (0 where ``idx`` pads: ``idx == len(z)``)."""
    return jnp.take(z, idx, mode="fill", fill_value=0)


def _insert(base, idx, u):
    """``base`` with ``u`` at the elements ``idx`` (padding dropped). By selects, not a
    scatter: the service compiles into one function only without one (`_once`)."""
    hit = idx[:, None] == jnp.arange(base.shape[0])[None, :]
    vals = jnp.sum(jnp.where(hit, u[:, None], 0), axis=0)
    return jnp.where(jnp.any(hit, axis=0), vals, base)


class ResidualProblem(eqx.Module):
    """Any residual function ``fn(z, args) -> r``: the Jacobian by `jax.jacfwd`, or by
    ``jac(z, args) -> (n_r, n_z)`` when given."""

    fn: Callable = eqx.field(static=True)
    args: object
    jac: Callable | None = eqx.field(static=True, default=None)
    one_shot = True
    rounds = 1

    def start(self, z, member, idx):
        del member
        if self.jac is not None:  # the free columns (0 where idx pads)
            J = jnp.take(self.jac(z, self.args), idx, axis=1, mode="fill", fill_value=0)
            return self.fn(z, self.args), J

        def f(u):
            r = self.fn(_insert(z, idx, u), self.args)
            return r, r

        J, r = jax.jacfwd(f, has_aux=True)(_compact(z, idx))
        return r, J

    def advance(self, ev, members, busy):
        del members, busy
        return ev

    def ready(self, ev):
        return jnp.ones((), bool)

    def cost(self, ev):
        return jnp.ones((), jnp.int32)

    def outcome(self, ev, member):
        del member
        r, J = ev
        return r, J, jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(J)), ()

    def n_rounds(self, member):
        del member
        return jnp.ones((), jnp.int32)

    def reweigh(self, aux, member):
        raise NotImplementedError

    def record(self, s: LMState, aux, member):
        del aux, member
        return dict(r=s.r, loss=s.loss)


def _lane(problem, member, base, idx, ident, ev, lm, aux, p, lam):
    return dict(id=ident, member=member, base=base, idx=idx, z_eval=base,
                fresh=jnp.ones((), bool), round=jnp.zeros((), jnp.int32),
                rounds=problem.n_rounds(member), total=jnp.zeros((), jnp.int32),
                work=jnp.zeros((), jnp.int32), ev=ev, lm=lm, aux=aux, p=p, lam=lam)


def _full_lane(problem, rule, stop, member, z, idx):
    """One lane with its first evaluation done (for shapes only)."""
    ev = problem.start(z, member, idx)
    r, J, ok, aux = problem.outcome(ev, member)
    lm = lm_init(rule, _compact(z, idx), r, J, ok, stop)
    p, lam = lm_propose(rule, lm, idx < z.shape[0])
    return _lane(problem, member, z, idx, jnp.zeros((), jnp.int32), ev, lm, aux, p, lam)


def _consume(problem, rule, stop, lane, ready):
    """Consume the finished evaluation of one lane (if ``ready``): LM init or update.
    The LM works on the member's free elements (``idx``) only.
    **Returns:** the lane, and whether its LM stopped in a round that a sigma refit
    follows (``again``)."""
    r, J, ok, aux_t = problem.outcome(lane["ev"], lane["member"])
    first = lm_init(rule, _compact(lane["z_eval"], lane["idx"]), r, J, ok, stop)
    upd, accepted = lm_update(rule, stop, lane["lm"], lane["p"], lane["lam"], r, J, ok)
    fresh = lane["fresh"]
    lm = _where(ready, _where(fresh, first, upd), lane["lm"])
    aux = _where(ready & (fresh | accepted), aux_t, lane["aux"])
    again = (ready & lm_terminated(stop, lm) & ~(lm.done & ~lm.converged)
             & (lane["round"] + 1 < lane["rounds"]))
    work = lane["work"] + jnp.where(ready, problem.cost(lane["ev"]), 0)
    return dict(lane, lm=lm, aux=aux, total=lane["total"] + ready.astype(jnp.int32),
                work=work), again


def _reweigh(problem, rule, stop, lane, again):
    """A new sigma for a lane whose round ended: the LM restarts where it stopped."""
    member2, r, J, ok = problem.reweigh(lane["aux"], lane["member"])
    lm2 = lm_init(rule, lane["lm"].z, r, J, ok, stop)
    return dict(lane, member=_where(again, member2, lane["member"]),
                lm=_where(again, lm2, lane["lm"]),
                round=lane["round"] + again.astype(jnp.int32))


def _next(problem, rule, stop, lane, ready):
    """The stop decision, the record of a stopped member (``z`` and the Jacobian on all
    elements, 0 on the fixed ones) and the next proposal."""
    lm, idx = lane["lm"], lane["idx"]
    n_z = lane["base"].shape[0]
    final = ready & lm_terminated(stop, lm)
    p, lam = lm_propose(rule, lm, idx < n_z)
    hit = idx[:, None] == jnp.arange(n_z)[None, :]
    jac = jnp.sum(jnp.where(hit[None], lm.jac[:, :, None], 0), axis=1)
    rec = dict(problem.record(lm, lane["aux"], lane["member"]),
               z=_insert(lane["base"], idx, lm.z), jac=jac, n_steps=lane["total"],
               work=lane["work"],
               converged=lm.converged, failed=lm.done & ~lm.converged,
               at_max=~lm.done & (lm.n_steps >= stop.max_steps))
    lane = dict(lane, p=_where(ready, p, lane["p"]), lam=_where(ready, lam, lane["lam"]))
    return lane, rec, final, ready & ~final


def _serve(problem, rule, stop, lanes, ready):
    """Serve gathered lanes (leading axis): consume, sigma rounds, next step."""
    lanes, again = jax.vmap(lambda ln, rd: _consume(problem, rule, stop, ln, rd))(
        lanes, ready)
    if problem.rounds > 1:  # static: only fits that refit sigma compile this
        lanes = jax.lax.cond(
            jnp.any(again),
            lambda ln: jax.vmap(lambda l_, a: _reweigh(problem, rule, stop, l_, a))(
                ln, again),
            lambda ln: ln, lanes)
    return jax.vmap(lambda ln, rd: _next(problem, rule, stop, ln, rd))(lanes, ready)


def _advance(problem, lanes, busy):
    """Advance every lane's evaluation by one unit, all lanes in one pass (idle lanes
    too: on a CPU a pass costs mostly per operation, not per lane, so advancing only
    the busy lanes, in blocks, was measured slower)."""
    if problem.one_shot:
        return lanes["ev"]
    return problem.advance(lanes["ev"], lanes["member"], busy)


# The lane program runs thousands of iterations of many small operations: on a CPU
# its time goes mostly to dispatching them, and XLA's default schedule, which
# spreads independent operations over threads, costs more in hand-offs than it gains
# (measured 10-15 % slower on a shared 2-core CPU). So the work runs in loops that
# XLA:CPU compiles into one function each, without a dispatch per operation, once
# `fitcsc._xla` has raised its loop threshold; such a loop holds no scatter, sort or
# library call (LAPACK, YNNPACK):
# - the inner loop that only advances the solves (the ODE step writes its output row
#   by a select, `fitcsc._solve.paced._put`): 1.6x faster on the PDXE benchmark;
# - the service of the gathered lanes, in a loop that runs once (`_once`): the LM's
#   eigendecomposition by Jacobi rotations (`fitcsc._fit.lm.small_eigh`), the order
#   of the observation times once per member on the host (`paced.time_order`), the
#   free elements put in place by selects (`_insert`); the lanes' scatter back and the
#   outbox stay outside it.
# YNNPACK fusions (XLA's library for reductions and dots) are off for this program
# only: they would keep the service from compiling into one function.
LOOP_COMPILER_OPTIONS = {"xla_cpu_enable_concurrency_optimized_scheduler": False,
                         "xla_cpu_experimental_ynn_fusion_type": ""}


@eqx.filter_jit(compiler_options=LOOP_COMPILER_OPTIONS)
def _run(problem, rule, stop: Stop, lanes, queue, head, count, more, cfg: LaneConfig):
    """Run the lanes until the outbox is nearly full, the queue is empty and a lane
    idles while the host has more members (``more``), or every lane is idle."""
    TRACES["lanes"] += 1
    L, F, W = cfg.lanes, cfg.slots, cfg.window
    rec_shape = jax.eval_shape(
        lambda ln: _serve(problem, rule, stop, ln, jnp.ones((1,), bool))[1],
        _take(lanes, jnp.zeros((1,), jnp.int32)))
    outbox = jax.tree_util.tree_map(lambda s: jnp.zeros((W,) + s.shape[1:], s.dtype),
                                    rec_shape)
    out_id = jnp.full((W,), -1, jnp.int32)

    def exit_now(lanes_, head_, n_out):
        busy = lanes_["id"] >= 0
        empty = head_ >= count
        return ((n_out > W - F) | (~jnp.any(busy) & empty)
                | (more & empty & jnp.any(~busy)))

    def service(args):
        lanes_, head_, outbox_, out_id_, n_out, ready = args
        busy = lanes_["id"] >= 0
        idle = ~busy
        # serve ready lanes first; idle lanes take queue members while there are some
        n_left = count - head_
        loadable = idle & (jnp.cumsum(idle) <= n_left)
        if F == L:
            idx = jnp.arange(L)
            valid = ready | loadable
        else:  # the lanes to serve first, in lane order (argsort's, without a sort)
            sel = ready | loadable
            n_sel = jnp.sum(sel, dtype=jnp.int32)
            pos = jnp.where(sel, jnp.cumsum(sel) - 1, n_sel + jnp.cumsum(~sel) - 1)
            idx = jnp.sum(jnp.where(pos[None, :] == jnp.arange(F)[:, None],
                                    jnp.arange(L)[None, :], 0), axis=1)
            valid = jnp.arange(F) < n_sel
        s_ready = ready[idx] & valid
        s_idle = idle[idx]

        def work(lanes_, head_):
            """The served lanes' LM steps and their next evaluations' set-up."""
            sl = _take(lanes_, idx)
            sl, rec, final, cont = _serve(problem, rule, stop, sl, s_ready)
            # lanes that are free now take the next queue members
            want = valid & (final | (s_idle & ~s_ready))
            q_rank = jnp.cumsum(want) - 1
            q_pos = head_ + q_rank
            has = want & (q_pos < count)
            q = _take(queue, jnp.clip(q_pos, 0, W - 1))
            z_cont = jax.vmap(_insert)(sl["base"], sl["idx"], sl["lm"].z + sl["p"])
            z_start = jnp.where(cont[:, None], z_cont, q["z0"])
            member = _where(cont, sl["member"], q["member"])
            idx_ = jnp.where(cont[:, None], sl["idx"], q["idx"])
            started = cont | has
            ev = jax.vmap(problem.start)(z_start, member, idx_)
            new = jax.vmap(lambda m, z, ix, i, e, lm, a, p, lam: _lane(
                problem, m, z, ix, i, e, lm, a, p, lam))(
                q["member"], q["z0"], q["idx"], q["id"], ev, sl["lm"], sl["aux"], sl["p"],
                sl["lam"])
            sl = dict(sl, ev=_where(started, ev, sl["ev"]),
                      z_eval=jnp.where(cont[:, None], z_start, sl["z_eval"]),
                      fresh=jnp.where(cont, False, sl["fresh"]))
            ids = sl["id"]
            sl = _where(has, new, sl)
            sl["id"] = jnp.where(final & ~has, -1, sl["id"])
            return sl, rec, final, has, ids

        if problem.one_shot:
            sl, rec, final, has, ids = work(lanes_, head_)
        else:
            sl, rec, final, has, ids = _once(work, (lanes_, head_), count >= 0)
        # members that stopped go to the outbox
        o_rank = jnp.cumsum(final) - 1
        o_pos = jnp.where(final, n_out + o_rank, W)
        outbox_ = jax.tree_util.tree_map(lambda b, x: b.at[o_pos].set(x, mode="drop"),
                                         outbox_, rec)
        out_id_ = out_id_.at[o_pos].set(ids, mode="drop")
        n_out = n_out + jnp.sum(final, dtype=jnp.int32)
        head_ = head_ + jnp.sum(has, dtype=jnp.int32)
        put = jnp.where(valid, idx, L)  # slots that serve no lane are dropped
        lanes_ = jax.tree_util.tree_map(
            lambda full, part: full.at[put].set(part, mode="drop", unique_indices=True),
            lanes_, sl)
        return lanes_, head_, outbox_, out_id_, n_out, ready

    def body(c):
        lanes_, head_, outbox_, out_id_, n_out, _, stats = c
        busy = lanes_["id"] >= 0
        n_busy = jnp.sum(busy, dtype=jnp.int32)
        n_load = jnp.minimum(jnp.sum(~busy, dtype=jnp.int32), count - head_)
        T = cfg.threshold

        def advance(member, busy, ic):
            ev, _, _, st, _ = ic
            ev = _advance(problem, dict(member=member, ev=ev), busy)
            # serve once enough lanes wait: a full set of slots while many lanes are
            # busy, at once in the tail (serving costs the LM's algebra and a solve's
            # set-up)
            ready = busy & jax.vmap(problem.ready)(ev)
            n_ready = jnp.sum(ready, dtype=jnp.int32)
            now = (((n_ready > 0) & (n_ready >= jnp.minimum(T, (n_busy + 7) // 8)))
                   | (n_load > 0))
            st = st + jnp.stack([jnp.ones((), jnp.int32), now.astype(jnp.int32),
                                 n_busy - n_ready, n_ready, L - n_busy])
            return ev, ready, now, st, now | (n_busy == 0)

        ic = (lanes_["ev"], busy, jnp.zeros((), bool), stats, jnp.zeros((), bool))
        if problem.one_shot:  # every busy lane is ready after every iteration
            ev, ready, now, stats, _ = advance(lanes_["member"], busy, ic)
        else:  # advance until a service is due (at least once): a loop of its own
            # (LOOP_COMPILER_OPTIONS)
            ev, ready, now, stats, _ = jax.lax.while_loop(
                lambda c_: ~c_[4], lambda c_: advance(lanes_["member"], busy, c_), ic)
        lanes_ = dict(lanes_, ev=ev)
        args = (lanes_, head_, outbox_, out_id_, n_out, ready)
        if problem.one_shot:
            args = service(args)
        else:
            args = jax.lax.cond(now, service, lambda a: a, args)
        lanes_, head_, outbox_, out_id_, n_out, _ = args
        return (lanes_, head_, outbox_, out_id_, n_out, exit_now(lanes_, head_, n_out),
                stats)

    init = (lanes, head, outbox, out_id, jnp.zeros((), jnp.int32),
            exit_now(lanes, head, jnp.zeros((), jnp.int32)), jnp.zeros((5,), jnp.int32))
    lanes, head, outbox, out_id, n_out, _, stats = jax.lax.while_loop(
        lambda c: ~c[-2], body, init)
    return lanes, head, out_id, n_out, outbox, stats


def _once(f, args, one):
    """``f(*args)`` inside a while loop that runs once (``one``: a traced True, so that
    XLA cannot see the trip count and inline the loop): XLA:CPU compiles such a loop
    into one function when it holds no scatter, sort or library call (`fitcsc._xla`),
    without a dispatch per operation. The lane service's algebra is hundreds of small
    operations per call."""
    out = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 jax.eval_shape(f, *args))

    def body(c):
        return jnp.zeros((), bool), f(*args)

    return jax.lax.while_loop(lambda c: c[0], body, (one, out))[1]


_SHAPES: dict = {}


def _leaf_key(x):
    if isinstance(x, (np.ndarray, np.generic)) or eqx.is_array(x):
        return ("array", np.shape(x), np.asarray(x).dtype.str)
    try:
        hash(x)
    except TypeError:
        return ("object", id(x))
    return ("value", x)


def _lane_shapes(problem, rule, stop, member, z, idx):
    """Shapes of one lane (memoised on the structure, so a new fit of the same kind
    traces nothing)."""
    args = (problem, rule, stop, member, z, idx)
    leaves, tree = jax.tree_util.tree_flatten(args)
    key = (tree, tuple(_leaf_key(x) for x in leaves))
    if key not in _SHAPES:
        _SHAPES[key] = jax.eval_shape(
            lambda m, z_, i: _full_lane(problem, rule, stop, m, z_, i), member,
            jnp.asarray(z), jnp.asarray(idx))
    return _SHAPES[key]


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def solve_members(problem, rule, stop: Stop, members, z0, free, *, lanes: int = DEFAULT_LANES,
                  slots: int | None = None, window: int | None = None,
                  threshold: int | None = None, progress: Callable | None = None) -> dict:
    """Run the LM on every member; return each member's record (numpy, member order).

    **Arguments:** ``members``: the members' data (a pytree with leading axis M, or None);
    ``z0`` ``(M, n_z)`` starts; ``free`` ``(M, n_z)`` bool; ``lanes``: members in
    flight; ``slots``: lanes served per iteration (default: all for a one-shot
    evaluator, else an eighth of the lanes, at least 8); ``window``: queue and outbox
    size (default ``max(2 lanes, 4 slots)``); ``progress(n_done)``: called after each
    call of the lane program.

    **Returns:** ``{field: (M, ...)}``: the problem's record (``z`` and what it keeps)
    and ``n_steps`` (evaluations), ``converged``, ``failed`` (stopped at the start) and
    ``at_max`` (at the step cap).
    """
    z0 = np.asarray(z0, dtype=float)
    free = np.asarray(free, bool)
    M, n_z = z0.shape
    # the LM works on each member's free elements: their indices, padded with n_z
    K = max(1, int(free.sum(axis=1).max(initial=1)))
    order = np.argsort(~free, axis=1, kind="stable")[:, :K]
    idx = np.where(np.take_along_axis(free, order, axis=1), order, n_z).astype(np.int32)
    L = int(lanes)
    F = L if problem.one_shot else int(slots or max(8, L // 8))
    F = min(F, L)
    W = int(window or max(2 * L, 4 * F))
    cfg = LaneConfig(lanes=L, slots=F, window=W, threshold=int(threshold or F))
    members = _host(members)
    if hasattr(problem, "prepare"):  # what every evaluation of a member shares
        members = problem.prepare(members)

    def rows(ids):
        return _take(members, ids)

    shapes = _lane_shapes(problem, rule, stop, rows(0), z0[0], idx[0])
    lane_state = jax.tree_util.tree_map(lambda s: np.zeros((L,) + s.shape, s.dtype), shapes)
    lane_state["id"][:] = -1
    first = np.zeros(L, np.int64)  # idle lanes hold a copy of member 0
    lane_state["member"] = rows(first)
    lane_state["z_eval"], lane_state["base"] = z0[first], z0[first]
    lane_state["idx"] = idx[first]

    # the members expected to cost most start first, so that the last lanes to finish
    # are not a few long fits started late (on the 849 PDXE curves x 4 starts the lane
    # program's iterations fell from 37,900 to about 26,000; each member's result does
    # not depend on when or in which lane it runs)
    cost = problem.expected_cost(members) if hasattr(problem, "expected_cost") else None
    pending = (list(range(M)) if cost is None
               else [int(i) for i in np.argsort(-np.asarray(cost), kind="stable")])
    out: dict | None = None
    n_done = 0
    while n_done < M:
        ids = np.asarray(pending[:W], np.int64)
        n_q = ids.size
        pad = np.resize(ids, W) if n_q else np.zeros(W, np.int64)
        queue = dict(member=rows(pad), z0=z0[pad], idx=idx[pad],
                     id=np.where(np.arange(W) < n_q, pad, -1).astype(np.int32))
        t_call = time.perf_counter()
        lane_state, head, out_id, n_out, outbox, st = _run(
            problem, rule, stop, lane_state, queue, jnp.zeros((), jnp.int32),
            jnp.asarray(n_q, jnp.int32), jnp.asarray(len(pending) > n_q), cfg)
        head, n_out = int(head), int(n_out)
        t_call = time.perf_counter() - t_call
        STATS["iterations"] += int(st[0])
        STATS["services"] += int(st[1])
        STATS["lane_steps"] += int(st[2])
        STATS["ready_waiting"] += int(st[3])
        STATS["idle"] += int(st[4])
        STATS["calls"] += 1
        if STATS.get("trace_calls"):
            print("call", [int(x) for x in np.asarray(st)], "n_out", n_out, "head", head,
                  "n_q", n_q, "pending", len(pending), f"{t_call:.2f}s", flush=True)
        pending = pending[head:]
        got = _host(outbox)
        got_id = np.asarray(out_id)[:n_out]
        if out is None:
            out = {k: np.zeros((M,) + v.shape[1:], v.dtype) for k, v in got.items()}
        for k, v in got.items():
            out[k][got_id] = v[:n_out]
        n_done += n_out
        if progress is not None:
            progress(n_done)
        if n_out == 0 and head == 0 and not np.any(np.asarray(lane_state["id"]) >= 0):
            raise RuntimeError("fit engine: no progress (internal error)")
    return out
