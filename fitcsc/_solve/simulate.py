"""Simulation: the only caller of diffrax.

`simulate` integrates any configured model (its right-hand side from
`fitcsc._model.family.model_rhs`, the one builder the fit engine's paced evaluator also uses)
under any dosing schedule and returns
states, total cells, volume, CSC fraction and a status code. Concentrations are
closed-form (see `fitcsc._model.pk`), so their jumps at bolus doses and infusion starts/ends are
handed to the step-size controller as known discontinuities (``jump_ts``). State
jumps (log-kill chemotherapy) split the time axis into segments that a `lax.scan`
integrates one after another; padded segments have zero length and are no-ops.
"""

from __future__ import annotations

import contextlib
import functools

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._model.family import (
    ModelConfig,
    initial_state,
    log_kill_jump,
    model_rhs,
    stem_cells,
    total_cells,
)
from .._model.regimen import DoseSchedule, discontinuity_times, empty_schedule
from .._status import Status


class Solution(eqx.Module):
    """Output of `simulate` at the requested times ``ts`` (shape ``(n_t,)``)."""

    ts: Float[Array, " n_t"]  # [day]
    states: Float[Array, "n_t n_states"]  # [cells] (signal L dimensionless)
    total_cells: Float[Array, " n_t"]  # cells making up the volume
    volume_mm3: Float[Array, " n_t"]
    csc_fraction: Float[Array, " n_t"]  # (S + Q + R) / total cells
    status: Int[Array, ""]  # a `Status` code
    num_steps: Int[Array, ""]  # accepted + rejected solver steps


def _status(result, ys):
    code = jnp.where(
        result == diffrax.RESULTS.successful, Status.SUCCESS,
        jnp.where(result == diffrax.RESULTS.max_steps_reached, Status.MAX_STEPS,
                  Status.SOLVER_FAILURE))
    return jnp.where((code == Status.SUCCESS) & ~jnp.all(jnp.isfinite(ys)),
                     Status.NONFINITE, code)


def integrate(
    f,
    y0: Float[Array, " n"],
    ts: Float[Array, " n_t"],
    *,
    t0: Float[Array, ""],
    args=None,
    jump_ts: Float[Array, " m"] | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-6,
    max_steps: int = 4096,
    solver: diffrax.AbstractSolver | None = None,
    adjoint: str = "reverse",
) -> tuple[Float[Array, "n_t n"], Int[Array, ""], Int[Array, ""]]:
    """Integrate ``dy/dt = f(t, y, args)`` from ``t0`` and save at ``ts`` (no throw).

    The low-level helper for models outside the CSC family (e.g. the baselines).
    **Returns:** ``(ys, status, num_steps)`` with a `Status` code.
    """
    t_end = jnp.maximum(ts[-1], t0)
    if jump_ts is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
    else:
        controller = diffrax.PIDController(rtol=rtol, atol=atol, jump_ts=jump_ts)
    with _cacheable():
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(f), diffrax.Tsit5() if solver is None else solver, t0=t0,
            t1=t_end, dt0=None, y0=y0, args=args,
            saveat=diffrax.SaveAt(ts=jnp.clip(ts, t0, t_end)),
            stepsize_controller=controller, max_steps=max_steps,
            adjoint=_adjoint(adjoint), throw=False,
        )
    steps = sol.stats["num_steps"] + sol.stats["num_rejected_steps"]
    return sol.ys, _status(sol.result, sol.ys), steps


@contextlib.contextmanager
def _cacheable(throw: bool = False):
    """Trace diffrax's input checks (``saveat.ts`` increasing and inside ``[t0, t1]``)
    without a host callback when ``throw`` is False.

    Under equinox's default ``EQX_ON_ERROR=raise`` each `equinox.internal.error_if`
    embeds a host callback, and JAX never writes a program with host callbacks to the
    persistent compilation cache, so every run would compile it again. Our ``ts`` are
    clipped into ``[t0, t1]`` (and documented non-decreasing): the checks cannot fire,
    and are traced as ``on_error="nan"`` (passed explicitly, so equinox's own cache of
    traced checks never hands this mode to other callers).
    """
    if throw:
        yield
        return
    original = eqxi.error_if
    eqxi.error_if = functools.partial(original, on_error="nan")
    try:
        yield
    finally:
        eqxi.error_if = original


def _adjoint(name: str):
    if name == "reverse":
        return diffrax.RecursiveCheckpointAdjoint()
    if name == "forward":
        return diffrax.ForwardMode()
    raise ValueError(f"adjoint must be 'reverse' or 'forward', got {name!r}")


@eqx.filter_jit
def simulate(
    model: ModelConfig,
    params,
    schedule: DoseSchedule | None,
    ts: Float[Array, " n_t"],
    *,
    t0: float | Array | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-6,
    max_steps: int = 4096,
    solver: diffrax.AbstractSolver | None = None,
    adjoint: str = "reverse",
    throw: bool = False,
) -> Solution:
    """Simulate ``model`` with ``params`` under ``schedule`` and save at ``ts``.

    **Arguments:**
    - `model`: a `ModelConfig` (static).
    - `params`: a `CSCParams` (traced; vmap over it for many parameter sets).
    - `schedule`: a `DoseSchedule` (padded dose events) or None for no drug.
    - `ts`: non-decreasing output times [day], shape ``(n_t,)``; pad ragged data by
      repeating the last time. Observations at a dose time are taken before the dose.
    - `t0`: time [day] at which the initial state from ``params`` holds
      (default ``ts[0]``).
    - `rtol`, `atol`: solver tolerances (atol in cells).
    - `max_steps`: step budget per segment.
    - `solver`: a diffrax solver (default `Tsit5`; `Kvaerno5` for stiff problems).
    - `adjoint`: ``"reverse"`` (reverse-mode AD, `jax.grad`) or ``"forward"``
      (forward-mode AD, `jax.jacfwd`, as Levenberg–Marquardt needs).
    - `throw`: raise on solver failure instead of returning a status code. Under vmap
      keep False and read `Solution.status`.

    **Returns:** a `Solution`.

    ```python
    model = fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab",))
    params = fitcsc.default_params(model)
    reg = fitcsc.Regimen((fitcsc.DoseLine("trastuzumab", 10.0, "mg/kg", n_doses=6,
                                          interval_day=7.0),))
    sol = fitcsc.simulate(model, params, reg.to_schedule(model.drugs, species="mouse"),
                          jnp.linspace(0.0, 42.0, 43))
    ```
    """
    ts = jnp.asarray(ts, dtype=float)
    if ts.ndim != 1:
        raise ValueError(f"ts must be one-dimensional (n_t,), got shape {ts.shape}; "
                         "use jax.vmap for batches")
    if schedule is None:
        schedule = empty_schedule(1)
    t0 = ts[0] if t0 is None else jnp.asarray(t0, dtype=float)
    t_end = jnp.maximum(ts[-1], t0)
    f = model_rhs(model, params, schedule)
    y0 = initial_state(model, params)
    term = diffrax.ODETerm(f)
    solver_ = diffrax.Tsit5() if solver is None else solver
    if model.drugs:
        jumps = discontinuity_times(schedule, t_end + 1.0)
        controller = diffrax.PIDController(rtol=rtol, atol=atol, jump_ts=jumps)
    else:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
    adj = _adjoint(adjoint)

    def solve(a, b, y):
        with _cacheable(throw):
            sol = diffrax.diffeqsolve(
                term, solver_, t0=a, t1=b, dt0=None, y0=y,
                saveat=diffrax.SaveAt(ts=jnp.clip(ts, a, b), t1=True),
                stepsize_controller=controller, max_steps=max_steps, adjoint=adj,
                throw=throw,
            )
        steps = sol.stats["num_steps"] + sol.stats["num_rejected_steps"]
        return sol.ys[:-1], sol.ys[-1], sol.result, steps

    if not model.has_log_kill:
        ys, _, result, steps = solve(t0, t_end, y0)
        status = _status(result, ys)
    else:
        # segment boundaries: log-kill doses inside (t0, t_end]; others moved to t_end
        chemo = jnp.asarray(model.drug_mask("chemo"))
        active = schedule.mask & chemo[schedule.drug] & (schedule.time_day >= t0)
        active = active & (schedule.time_day <= t_end)
        b = jnp.where(active, schedule.time_day, t_end)
        order = jnp.argsort(b)
        b, active, drug = b[order], active[order], schedule.drug[order]
        starts = jnp.concatenate([t0[None], b])
        ends = jnp.concatenate([b, t_end[None]])

        def body(carry, seg):
            y, ys_acc, code, nsteps, k = carry
            a, e, act, dr = seg
            seg_ys, y_end, result, steps = solve(a, e, y)
            inside = ((ts > a) | ((k == 0) & (ts >= a))) & (ts <= e)
            ys_acc = jnp.where(inside[:, None], seg_ys, ys_acc)
            seg_code = _status(result, y_end)
            code = jnp.where(code == Status.SUCCESS, seg_code, code)
            y_next = log_kill_jump(model, params, y_end, dr, act)
            return (y_next, ys_acc, code, nsteps + steps, k + 1), None

        n_seg = ends.shape[0]
        acts = jnp.concatenate([active, jnp.zeros((1,), bool)])
        drugs = jnp.concatenate([drug, jnp.zeros((1,), drug.dtype)])
        init = (y0, jnp.zeros((ts.shape[0], y0.shape[0])), jnp.asarray(0),
                jnp.asarray(0), jnp.asarray(0))
        (_, ys, code, steps, _), _ = jax.lax.scan(
            body, init, (starts, ends, acts, drugs), length=n_seg)
        status = jnp.where(code == Status.SUCCESS, _status(diffrax.RESULTS.successful, ys),
                           code)
    N = total_cells(model, ys)
    return Solution(
        ts=ts,
        states=ys,
        total_cells=N,
        volume_mm3=N / model.cells_per_mm3,
        csc_fraction=stem_cells(model, ys) / N,
        status=jnp.asarray(status, dtype=jnp.int32),
        num_steps=jnp.asarray(steps, dtype=jnp.int32),
    )
