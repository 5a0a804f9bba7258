"""One status chain, from an ODE solve to the command line's exit code.

Each layer's codes say what went wrong at that layer and are built from the layer
below (as diffrax's ``RESULTS`` extend optimistix's):

- `Status`: one trajectory of `fitcsc.simulate` or of the fit engine's paced solver
  (diffrax's result mapped to four codes, plus non-finite output).
- `FitStatus`: one fit member (a subject or a group, from one start, or its best
  start). `fit_status` builds it from the optimiser's outcome and the `Status` of the
  simulation at the estimate (any failed solve is ``SOLVER_FAILURE``); ``RAISED`` marks
  a fit unit whose chunk raised an exception while the rest of the job went on.
- `outcome`: a member's status as the ``"ok"`` / ``"failed"`` of result tables.
- `Exit`: the command line's exit codes (`fitcsc.cli.main`): a job with failed members
  exits `Exit.FAILED` (`job_exit`), refused input `Exit.INPUT`.

Every code has a one-line ``message`` that says what to do about it.
"""

from __future__ import annotations

import enum

import jax.numpy as jnp


class Status(enum.IntEnum):
    """Outcome of one trajectory (one batch member)."""

    SUCCESS = 0
    MAX_STEPS = 1  # the solver hit `max_steps`: increase `max_steps` or check stiffness
    SOLVER_FAILURE = 2  # step size collapsed or another solver error
    NONFINITE = 3  # NaN/inf in the output: check parameter values

    @property
    def message(self) -> str:
        return {
            0: "success",
            1: "the solver reached max_steps; increase `max_steps`, or use a stiff "
               "solver (solver=diffrax.Kvaerno5()) for extreme parameter values",
            2: "the ODE solver failed (step size underflow); check parameter values",
            3: "non-finite values in the solution; check parameter values",
        }[int(self)]


class FitStatus(enum.IntEnum):
    """Outcome of one fit (one subject, or one start of one subject)."""

    CONVERGED = 0
    MAX_STEPS = 1  # the optimiser reached `max_steps`: increase it or loosen rtol/atol
    SOLVER_FAILURE = 2  # the simulation (or the optimiser's linear solve) failed
    NONFINITE = 3  # non-finite loss or parameters: check data and starting values
    RAISED = -1  # the job's chunk holding this fit raised; the other chunks went on

    @property
    def message(self) -> str:
        return {
            0: "converged",
            1: "the optimiser reached max_steps; increase `max_steps` or loosen rtol/atol",
            2: "the simulation failed at the estimate (e.g. it reached the predictor's "
               "max_steps); check parameter values or raise the predictor's max_steps",
            3: "non-finite loss or parameters; check the data and the starting values",
            -1: "the fit raised an exception (see summary.json's errors); the rest of "
                "the job went on",
        }[int(self)]

    @property
    def label(self) -> str:
        """The word of result tables (``fits.csv``'s status): the name, ``"error"`` for
        ``RAISED``."""
        return "error" if self is FitStatus.RAISED else self.name.lower()


def fit_status(opt_ok, opt_max_steps, sim_status, loss, z):
    """`FitStatus` of a member (traced): converged, at the step cap, or failed;
    non-finite loss or parameters, and a failed simulation (any nonzero `Status`),
    override."""
    code = jnp.where(opt_ok, FitStatus.CONVERGED,
                     jnp.where(opt_max_steps, FitStatus.MAX_STEPS, FitStatus.SOLVER_FAILURE))
    code = jnp.where(jnp.isfinite(loss) & jnp.all(jnp.isfinite(z)), code, FitStatus.NONFINITE)
    code = jnp.where(sim_status == Status.SUCCESS, code, FitStatus.SOLVER_FAILURE)
    return code.astype(jnp.int32)


def outcome(code) -> str:
    """``"ok"`` for a success code (`Status.SUCCESS` = `FitStatus.CONVERGED` = 0),
    ``"failed"`` otherwise (host side)."""
    return "ok" if int(code) == 0 else "failed"


class Exit(enum.IntEnum):
    """Exit codes of the command line."""

    OK = 0
    FAILED = 1  # the run failed, or a job ended with no usable result
    INPUT = 2  # refused input or bad usage (one line on stderr)
    INTERRUPTED = 130  # Ctrl-C (a checkpointed job resumes with --resume)


def job_exit(ok: bool) -> Exit:
    """`Exit.OK` when a job's results are usable, else `Exit.FAILED`."""
    return Exit.OK if ok else Exit.FAILED
