"""Evaluators: how a tumour-curve member's predictions and their Jacobian are computed.

An evaluator works on one member: ``start(z, data, idx)`` begins the evaluation at
``z``, ``advance`` (batched over lanes) moves it on, ``ready`` says it has finished and
``result`` gives ``(log V, status, d log V / d z[idx])``: the Jacobian along the
member's free elements ``idx`` only (``idx == n_z`` pads).

The LM (`fitcsc._fit.lm`) and its driver (`fitcsc._fit.lanes`) are the same for every fit; an
evaluator only decides how ``log V(z)`` and ``d log V / d z`` of one member come about:

- `JacfwdEvaluator` (``"jacfwd"``): any predictor, `jax.jacfwd` of its prediction (or
  the predictor's own ``log_pred_jacobian``, e.g. a group fit's), vmapped over lanes;
  one evaluation per loop iteration (the lanes run it in lockstep).
- `PacedEvaluator` (``"paced"``): the CSC model (`csc_predictor`): the model's ODE
  from the one right-hand-side builder `fitcsc._model.family.model_rhs` (the one `simulate`
  integrates) with forward sensitivities along the member's free directions, stepped
  by `fitcsc._solve.paced` one Tsit5 step per loop iteration, each lane at its own pace.
  What does not change between two doses is computed once per interval, not at every
  stage of every step (`PacedEvaluator.hold`, chosen from the data; `fitcsc._solve.paced`'s
  ``hold``; exact, tested against the stage-by-stage solve): where every exposure is
  constant between doses (boluses of drugs whose response does not decay: the arm
  pseudo-drugs of `fitcsc fit` without a regimen table) the drug effects and their
  tangents; under any other PK that does not depend on z, each exponential's value and
  input rate at the interval's start, so that the concentrations at a stage cost one
  exponential per drug and PK exponential, not a sum over every dose.
  Log-kill chemotherapy is refused (`PacedEvaluator.check`): its dose jumps move the
  state itself, which the paced solver does not do; use ``"jacfwd"``.

Both give the same residuals and Jacobians to the ODE tolerance (tested), so the
choice never moves an optimum beyond it. `CurveProblem` turns an evaluation into the
residuals of the log-normal/M3 observation model (`fitcsc._fit.likelihood`) at the
member's sigma.
"""

from __future__ import annotations

import contextlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Var
from jaxtyping import Array, Float

from .._model.family import exposure_effects, initial_state, model_rhs, total_cells
from .._model.pk import held_exposure, pk_arrays, stepwise_exposure
from .._model.regimen import discontinuity_times
from .._solve.paced import controller, paced_solve, records, refresh, setup, step, time_order
from .._status import Status
from .member import residuals_jacobian, sigma_mle
from .predictors import AbstractPredictor, CSCPredictor

EVALUATORS = ("paced", "jacfwd")


def basis(idx, n_z: int):
    """``(k, n_z)`` unit rows along the elements ``idx`` (``idx == n_z``: a zero row)."""
    return jax.nn.one_hot(idx, n_z, dtype=float)


class JacfwdEvaluator(eqx.Module):
    """Any predictor: ``(log V, status, d log V/dz)`` by `jax.jacfwd` in one go."""

    predictor: AbstractPredictor
    one_shot = True

    def start(self, z, data, idx, order=None):
        del order
        own = self.predictor.log_pred_jacobian(z, data)  # e.g. a group fit's
        if own is not None:
            lp, st, J = own
            return lp, st, jnp.take(J, idx, axis=1, mode="fill", fill_value=0)

        def f(u):
            lp, st = self.predictor(z.at[idx].set(u, mode="drop"), data)
            return lp, (lp, st)

        J, (lp, st) = jax.jacfwd(f, has_aux=True)(jnp.take(z, idx, mode="fill",
                                                            fill_value=0))
        return lp, jnp.asarray(st, jnp.int32), J

    def advance(self, ev, data, busy):
        del data, busy
        return ev

    def ready(self, ev):
        return jnp.ones((), bool)

    def cost(self, ev):
        return jnp.ones((), jnp.int32)

    def result(self, ev, data):
        del data
        return ev


def _z_dependent(params, z, s) -> tuple[int, ...]:
    """Indices of the leaves of ``params(z, s)`` that depend on ``z`` (from the
    function's jaxpr; static)."""
    shape = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x),
                                                                  jnp.result_type(x)),
                                   (z, s))
    closed = jax.make_jaxpr(params)(*shape)
    dep = set(closed.jaxpr.invars[:1])  # z is the first argument (one leaf)
    for eqn in closed.jaxpr.eqns:
        if any(isinstance(v, Var) and v in dep for v in eqn.invars):
            dep.update(eqn.outvars)
    return tuple(i for i, v in enumerate(closed.jaxpr.outvars)
                 if isinstance(v, Var) and v in dep)


class _RhsArgs(eqx.Module):
    """The right-hand side's parameters of one member (`PacedEvaluator._args`), packed
    in two arrays: the lane driver moves a lane's state leaf by leaf, so few leaves
    cost less than one per parameter."""

    p: Array  # every leaf of the model parameters, raveled and concatenated
    dp: Array  # (directions, n): tangents of the leaves ``dep``, raveled and concatenated
    tree: object = eqx.field(static=True)  # the parameters' tree structure
    shapes: tuple = eqx.field(static=True)  # and their leaves' shapes and dtypes
    dep: tuple = eqx.field(static=True)  # leaves that depend on z

    def leaves(self, flat, which):
        out, at = [], 0
        for i in which:
            shape, dtype = self.shapes[i]
            n = int(np.prod(shape, dtype=int))
            out.append(flat[at:at + n].reshape(shape).astype(dtype))
            at += n
        return out


def _ravel(leaves):
    return jnp.concatenate([jnp.ravel(jnp.asarray(x, float)) for x in leaves])


class PacedEvaluator(eqx.Module):
    """The CSC model's ODE and its sensitivities along the member's free elements,
    one paced Tsit5 step per iteration (see the module docstring)."""

    predictor: CSCPredictor
    # what is computed once per interval between jumps (doses, infusion ends) instead of
    # at every stage of every step (one of `HOLDS`): "effects" where every exposure is constant
    # on it (`stepwise_exposure`), "exposure" for any PK that does not depend on z,
    # "none" (stage by stage: the reference, and PK that depends on z)
    hold: str = eqx.field(static=True, default="none")
    one_shot = False

    @staticmethod
    def check(predictor, who: str = "fit_map") -> None:
        """Raise `ValueError` (one line) unless ``predictor`` can run paced."""
        if not isinstance(predictor, CSCPredictor):
            raise ValueError(f"{who}: evaluator='paced' needs a CSC predictor "
                             f"(fitcsc.csc_predictor), got {type(predictor).__name__}; use "
                             "evaluator='jacfwd'")
        if predictor.model.has_log_kill:
            raise ValueError(f"{who}: evaluator='paced' does not run log-kill "
                             "chemotherapy (its dose jumps move the state, the paced solver "
                             "only steps up to jumps of the vector field); use "
                             "evaluator='jacfwd'")

    def _args(self, z, s, E):
        """What the right-hand side of one member needs, computed once per evaluation:
        the model parameters at ``z`` and their tangents along the rows of ``E`` (only
        of the parameters that depend on ``z``; the transforms then run once per
        evaluation, not at every stage of every step)."""
        leaves, tree = jax.tree_util.tree_flatten(self.predictor.params(z, s))
        dep = _z_dependent(self.predictor.params, z, s)

        def varying(z_):
            lv = jax.tree_util.tree_leaves(self.predictor.params(z_, s))
            return _ravel([lv[i] for i in dep])

        _, dp = jax.vmap(lambda e: jax.jvp(varying, (z,), (e,)), out_axes=(None, 0))(E)
        shapes = tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves)
        return _RhsArgs(p=_ravel(leaves), dp=dp, tree=tree, shapes=shapes, dep=dep)

    @staticmethod
    def _params(a, varying):
        """The model parameters with the z-dependent leaves ``varying`` (raveled)."""
        lv = a.leaves(a.p, range(len(a.shapes)))
        for i, v in zip(a.dep, a.leaves(varying, a.dep), strict=True):
            lv[i] = v
        return jax.tree_util.tree_unflatten(a.tree, lv)

    @staticmethod
    def _varying(a):
        """The z-dependent leaves of the model parameters, raveled."""
        leaves = a.leaves(a.p, range(len(a.shapes)))
        return _ravel([leaves[i] for i in a.dep])

    def _rhs(self, tau, state, args):
        """States and their sensitivities along the rows of ``E``, one member; with a
        `hold`, ``args`` also has what `_hold` gave."""
        y, S = state
        (a, s), held = args if self.hold != "none" else (args, None)
        t = s.t0_day + tau
        model = self.predictor.model
        at = self._varying(a)
        if self.hold != "effects":
            def field(y_, varying):
                return model_rhs(model, self._params(a, varying), s.schedule,
                                 exposure=held)(t, y_)

            return jax.vmap(lambda sj, dpj: jax.jvp(field, (y, at), (sj, dpj)),
                            out_axes=(None, 0))(S, a.dp)
        eff, d_eff = held

        def at_effects(y_, varying, e):
            return model_rhs(model, self._params(a, varying), s.schedule, tuple(e))(t, y_)

        return jax.vmap(lambda sj, dpj, dej: jax.jvp(at_effects, (y, at, eff), (sj, dpj, dej)),
                        out_axes=(None, 0))(S, a.dp, d_eff)

    def _hold(self, tau, inside, args):
        """What `hold` keeps on the interval between jumps that starts at ``tau``
        (``inside``: a time strictly inside it): ``"effects"``, the drug effects there
        and their tangents along the rows of ``E``; ``"exposure"``, its
        `held_exposure`, the exponentials' rates and its start [day]."""
        a, s = args
        if self.hold == "exposure":
            coefs, rates = pk_arrays(self._params(a, self._varying(a)).pk)
            x, r = held_exposure(coefs, rates, s.schedule, s.t0_day + tau,
                                 s.t0_day + inside)
            return x, r, rates, s.t0_day + tau

        def effects(varying):
            return jnp.stack(exposure_effects(self.predictor.model, self._params(a, varying),
                                              s.schedule, s.t0_day + inside))

        eff, d_eff = jax.vmap(lambda d: jax.jvp(effects, (self._varying(a),), (d,)),
                              out_axes=(None, 0))(a.dp)
        return eff, d_eff

    def _held(self):
        return None if self.hold == "none" else self._hold

    @staticmethod
    def _norm(err):
        return jnp.sqrt(jnp.mean(err[0] ** 2))  # states only

    def _ctrl(self):
        return controller(self.predictor.rtol, self.predictor.atol, self._norm)

    def _record(self, state):
        model = self.predictor.model
        return total_cells(model, state[0]), total_cells(model, state[1])

    def _initial(self, z, s, E):
        """The state at ``tau = 0`` and its sensitivities along the rows of ``E``."""
        def y0(z_):
            return initial_state(self.predictor.model, self.predictor.params(z_, s))

        return jax.vmap(lambda e: jax.jvp(y0, (z,), (e,)), out_axes=(None, 0))(E)

    def _times(self, s):
        """Output times and dose discontinuities, in the member's own time."""
        tau_obs = jnp.where(s.mask, s.day - s.t0_day, jnp.inf)
        if self.predictor.model.drugs:
            end = jnp.max(jnp.where(s.mask, tau_obs, 0.0))
            jumps = discontinuity_times(s.schedule, s.t0_day + end + 1.0) - s.t0_day
        else:
            jumps = jnp.full((1,), jnp.inf)
        return tau_obs, jumps

    def start(self, z, s, idx, order=None):
        """``order``: `time_order` of the member's output times (`prepare`), if known."""
        E = basis(idx, z.shape[0])
        tau_obs, jumps = self._times(s)
        a = self._args(z, s, E)
        c = setup(self._rhs, self._ctrl(), self._initial(z, s, E), (a, s), tau_obs, jumps,
                  self._record, order=order, hold=self._held())
        return dict(c=c, a=a)

    @staticmethod
    def _tau(data):
        return np.where(np.asarray(data.mask),
                        np.asarray(data.day) - np.asarray(data.t0_day)[..., None], np.inf)

    def order(self, data):
        """`time_order` of every member's output times (numpy, leading axis)."""
        return time_order(self._tau(data))

    def span(self, data):
        """Every member's solve length [day] (numpy, leading axis): how far its ODE
        runs, the best predictor of its cost that the data give."""
        tau = self._tau(data)
        return np.max(np.where(np.isfinite(tau), tau, 0.0), axis=-1)

    def advance(self, ev, data, busy):
        c = dict(ev["c"], done=ev["c"]["done"] | ~busy)
        args = (ev["a"], data)
        c = refresh(self._rhs, c, args, self._held())
        ctrl, n_max = self._ctrl(), self.predictor.max_steps
        c = jax.vmap(lambda ci, a: step(self._rhs, ctrl, ci, a, self._record, n_max))(c, args)
        return dict(ev, c=c)

    def ready(self, ev):
        return ev["c"]["done"]

    def cost(self, ev):
        return ev["c"]["steps"]

    def result(self, ev, s):
        (N, dN), status, _ = records(ev["c"])
        return self._finish(N, dN, status, s)

    def _finish(self, N, dN, status, s):
        """``(log V, status, d log V / dz)`` of one member from its recorded cells."""
        v = N / self.predictor.model.cells_per_mm3
        good = jnp.where(s.mask, (v > 0) & jnp.isfinite(v), True)
        ok = jnp.all(good) & jnp.all(jnp.isfinite(jnp.where(s.mask[:, None], dN, 0.0)))
        log_pred = jnp.log(jnp.where(s.mask & (v > 0), v, 1.0))
        J = jnp.where(s.mask[:, None], dN / jnp.where(v > 0, N, 1.0)[:, None], 0.0)
        status = jnp.where((status == Status.SUCCESS) & ~ok, Status.NONFINITE, status)
        return log_pred, status.astype(jnp.int32), J


def paced_log_pred(predictor, Z, data, active=None):
    """Log volumes and their full Jacobian for every member at ``Z``, each solved at its
    own pace: the paced evaluator's ODE and sensitivities in one
    `fitcsc._solve.paced.paced_solve`, for callers outside the LM (the population model).

    **Arguments:** ``Z`` ``(M, n_z)``; ``data`` a `SubjectData` with leading axis M;
    ``active`` ``(M,)`` bool: members to solve (default all; the others come back
    failed, without ODE work).

    **Returns:** ``(log_pred (M, n_obs), status (M,), J (M, n_obs, n_z), steps (M,))``.
    """
    PacedEvaluator.check(predictor, "paced_log_pred")
    ev = PacedEvaluator(predictor)
    E = jnp.broadcast_to(jnp.eye(Z.shape[1], dtype=Z.dtype), (Z.shape[0],) + (Z.shape[1],) * 2)
    tau_obs, jumps = jax.vmap(ev._times)(data)
    (N, dN), status, steps = paced_solve(
        ev._rhs, jax.vmap(ev._initial)(Z, data, E), (jax.vmap(ev._args)(Z, data, E), data),
        tau_obs, jumps,
        ev._record, rtol=predictor.rtol, atol=predictor.atol,
        max_steps=predictor.max_steps, norm=ev._norm, active=active)
    log_pred, status, J = jax.vmap(ev._finish)(N, dN, status, data)
    return log_pred, status, J, steps


HOLDS = ("effects", "exposure", "none")
_STAGE_BY_STAGE: list[bool] = []  # `stage_by_stage` blocks entered


@contextlib.contextmanager
def stage_by_stage():
    """Within the block the paced evaluator holds nothing between doses (hold
    ``"none"``): the reference that benchmarks/pk_regimens.py times beside the held
    exposure."""
    _STAGE_BY_STAGE.append(True)
    try:
        yield
    finally:
        _STAGE_BY_STAGE.pop()


def hold_for(predictor, data) -> str:
    """What the paced evaluator can hold between jumps for every member of ``data``
    (concrete, leading axis; `PacedEvaluator.hold`): ``"effects"`` where
    `stepwise_exposure` holds for the PK and every schedule, else ``"exposure"``;
    ``"none"`` without drugs, data or where the PK depends on z."""
    schedule = getattr(data, "schedule", None)
    if schedule is None or not predictor.model.drugs:
        return "none"
    s0 = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], data)
    z = np.zeros(predictor.spec.size)

    def pk(z_, s_):
        return predictor.params(z_, s_).pk

    if _z_dependent(pk, z, s0):
        return "none"
    if stepwise_exposure(*_pk_arrays_of(predictor, s0), schedule):
        return "effects"
    return "exposure"


@eqx.filter_jit
def _pk_arrays_of(predictor, s):
    """`pk_arrays` of ``predictor``'s PK for subject ``s`` (one small program, not an
    eager operation, and a compilation, at a time)."""
    return pk_arrays(predictor.params(predictor.spec.reference_z(), s).pk)


def make_evaluator(name: str, predictor, who: str = "fit_map", data=None):
    """The evaluator ``name`` (`EVALUATORS`) for ``predictor``; ``data`` (concrete,
    leading axis): the members it will evaluate, when known (the paced evaluator then
    holds what does not change between doses, `PacedEvaluator.hold`).
    **Raises:** `ValueError` (one line) for an unknown name or one that cannot run."""
    if name == "jacfwd":
        return JacfwdEvaluator(predictor)
    if name == "paced":
        PacedEvaluator.check(predictor, who)
        hold = "none" if _STAGE_BY_STAGE else hold_for(predictor, data)
        return PacedEvaluator(predictor, hold=hold)
    raise ValueError(f"{who}: evaluator must be one of {EVALUATORS} or 'auto', got {name!r}")


def default_evaluator(predictor) -> str:
    """The fastest evaluator that runs ``predictor``: paced for the CSC model without
    log-kill chemotherapy, else jacfwd."""
    try:
        PacedEvaluator.check(predictor)
    except ValueError:
        return "jacfwd"
    return "paced"


class CurveMember(eqx.Module):
    """One member of a tumour-curve fit: its data and the sigma its residuals use."""

    data: object  # a SubjectData (or a GroupData)
    sigma: Float[Array, ""]
    order: object = None  # the paced evaluator's order of output times (`prepare`)


class CurveProblem(eqx.Module):
    """Residuals of the log-normal/M3 observation model of an evaluator's predictions.

    ``rounds`` > 1 (sigma estimated, censored observations): a member with censored
    observations alternates the LM and sigma's MLE for its predictions ``rounds``
    times (the optimum of the M3 terms depends on sigma); the last round's sigma is
    the one reported.
    """

    evaluator: JacfwdEvaluator | PacedEvaluator
    rounds: int = eqx.field(static=True, default=1)

    @property
    def one_shot(self):
        return self.evaluator.one_shot

    def prepare(self, members):
        """The members (numpy, leading axis) with what an evaluation of them needs
        and can compute once: the paced evaluator's order of output times."""
        if not isinstance(self.evaluator, PacedEvaluator):
            return members
        return CurveMember(members.data, members.sigma, self.evaluator.order(members.data))

    def start(self, z, member, idx):
        return self.evaluator.start(z, member.data, idx, member.order)

    def expected_cost(self, members):
        """A guess of each member's cost from its data (numpy), or None: the paced
        evaluator's solve length (`fitcsc._fit.lanes` starts the costliest first)."""
        if not isinstance(self.evaluator, PacedEvaluator):
            return None
        return self.evaluator.span(members.data)

    def advance(self, ev, members, busy):
        return self.evaluator.advance(ev, members.data, busy)

    def ready(self, ev):
        return self.evaluator.ready(ev)

    def cost(self, ev):
        return self.evaluator.cost(ev)

    def outcome(self, ev, member):
        lp, st, J_lp = self.evaluator.result(ev, member.data)
        r, J, ok = residuals_jacobian(lp, st, J_lp, member.data, member.sigma)
        return r, J, ok, (lp, st, J_lp)

    def n_rounds(self, member):
        d = member.data
        censored = jnp.any(d.mask & d.censored)
        return jnp.where(censored, self.rounds, 1).astype(jnp.int32)

    def reweigh(self, aux, member):
        lp, st, J_lp = aux
        sigma = sigma_mle(lp, member.data, member.sigma)
        r, J, ok = residuals_jacobian(lp, st, J_lp, member.data, sigma)
        return CurveMember(member.data, sigma, member.order), r, J, ok

    def record(self, s, aux, member):
        lp, st, _ = aux
        return dict(log_pred=lp, sim_status=st, sigma=member.sigma)
