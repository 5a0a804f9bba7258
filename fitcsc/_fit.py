"""Batched MAP / maximum-likelihood fits: every subject, every start, one compiled call.

`fit_map` fits each subject of a `SubjectBatch` separately, from ``num_starts``
quasi-random starts (scrambled Sobol, fixed seed), vmapped over subjects and starts in
one jit-compiled call: Levenberg–Marquardt on the residuals of the log-normal/M3
observation model (``method="lm"``), or an optax optimiser on the negative
log-likelihood (``method="optax"``). Each subject keeps its best start (lowest loss among
starts that did not fail) and reports its own `FitStatus`; a failing subject changes
nothing for the others. Standard errors come from the residual Jacobian at the optimum,
``cov = (J^T J)^+`` (``= sigma^2 (J_logV^T J_logV)^-1`` without censoring), and reach the
natural scale by the delta method. `fitcsc._fit_group.fit_groups` (parameters shared
within groups of curves) runs the same core with one group per batch member; a predictor's
``free_mask`` there marks the elements a member does not estimate.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from ._fit_predict import AbstractPredictor, FunctionPredictor, constrained, subject_data
from ._fit_solve import FitStatus, Options, lm_options, solve_lm, solve_optax
from ._fit_stacked import check_stackable, solve_stacked

DEFAULT_OPTIMISER = optax.adam(0.05)  # module level: a new optimiser object recompiles


class FitResult(eqx.Module):
    """Per-subject MAP estimates (leading axis: subjects, in batch order).

    ``z`` is unconstrained (the optimiser's space); ``theta`` the same parameters on
    their natural scale (`ParamSpec.from_z`), in the order of ``labels``.
    """

    z: Float[Array, "n_subjects n_z"]  # best estimate
    loss: Float[Array, " n_subjects"]  # -log-likelihood at the estimate
    status: Int[Array, " n_subjects"]  # `FitStatus` of the best start
    sigma: Float[Array, " n_subjects"]  # SD of the log-volume error [-]
    n_steps: Int[Array, " n_subjects"]  # optimiser steps of the best start
    best_start: Int[Array, " n_subjects"]
    all_z: Float[Array, "n_subjects n_starts n_z"]
    all_losses: Float[Array, "n_subjects n_starts"]
    all_status: Int[Array, "n_subjects n_starts"]
    all_n_steps: Int[Array, "n_subjects n_starts"]
    cov_z: Float[Array, "n_subjects n_z n_z"]  # (J^T J)^+ at the estimate
    se_z: Float[Array, "n_subjects n_z"]
    condition_number: Float[Array, " n_subjects"]  # of the residual Jacobian J
    identifiable: Bool[Array, " n_subjects"]  # condition_number < max_condition
    theta: Float[Array, "n_subjects n_z"]  # natural scale
    se_theta: Float[Array, "n_subjects n_z"]  # delta method
    log_volume_pred: Float[Array, "n_subjects n_obs"]  # at the estimate [log mm3]
    rmse_log_volume: Float[Array, " n_subjects"]  # over uncensored observations
    labels: tuple[str, ...] = eqx.field(static=True)
    subject: tuple[str, ...] = eqx.field(static=True)
    arm: tuple[str, ...] = eqx.field(static=True)
    study: tuple[str, ...] = eqx.field(static=True)
    method: str = eqx.field(static=True)

    def to_rows(self) -> list[dict]:
        """One dict per subject: ids, status name, loss, sigma, rmse, each parameter
        (natural scale) with ``<label>_se``, condition number and identifiability."""
        arr = {k: np.asarray(getattr(self, k)) for k in (
            "status", "loss", "sigma", "rmse_log_volume", "theta", "se_theta",
            "condition_number", "identifiable", "n_steps")}
        rows = []
        for i, s in enumerate(self.subject):
            row = {"study": self.study[i], "subject": s, "arm": self.arm[i],
                   "status": FitStatus(int(arr["status"][i])).name.lower(),
                   "loss": float(arr["loss"][i]), "sigma": float(arr["sigma"][i]),
                   "rmse_log_volume": float(arr["rmse_log_volume"][i])}
            for j, label in enumerate(self.labels):
                row[label] = float(arr["theta"][i, j])
                row[f"{label}_se"] = float(arr["se_theta"][i, j])
            row["condition_number"] = float(arr["condition_number"][i])
            row["identifiable"] = bool(arr["identifiable"][i])
            row["n_steps"] = int(arr["n_steps"][i])
            rows.append(row)
        return rows


def sobol_unit(num_starts: int, n_z: int, seed: int = 0) -> np.ndarray:
    """``(num_starts, n_z)`` points in [0, 1): row 0 is the centre (the reference
    start), the rest a scrambled Sobol sequence (fixed ``seed``)."""
    from scipy.stats import qmc

    out = np.full((num_starts, n_z), 0.5)
    if num_starts > 1:
        try:
            sobol = qmc.Sobol(n_z, scramble=True, rng=seed)
        except TypeError:  # scipy < 1.15
            sobol = qmc.Sobol(n_z, scramble=True, seed=seed)
        out[1:] = sobol.random_base2(max(0, math.ceil(math.log2(num_starts - 1))))[
            : num_starts - 1]
    return out


def _best(losses, status):
    usable = (status <= FitStatus.MAX_STEPS) & jnp.isfinite(losses)
    finite = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    return jnp.where(jnp.any(usable), jnp.argmin(jnp.where(usable, losses, jnp.inf)),
                     jnp.argmin(finite))


def _uncertainty(spec, J, z, status, max_condition, free=None):
    """Covariance of ``z`` from the residual Jacobian ``J``, and the delta method.

    ``free`` (bool, ``(n_z,)``) marks the estimated elements; the others (fixed in this
    member, e.g. a group's parameter that no curve of the group informs) get NaN
    standard errors and are left out of the condition number.
    """
    n_z = z.shape[0]
    free = jnp.ones((n_z,), bool) if free is None else free
    both = free[:, None] & free[None, :]
    # fixed elements: a decoupled -1 block, so that pinv and the sorted eigenvalues of
    # the free block are exactly those of J's free columns
    jtj = jnp.where(both, J.T @ J, 0.0) - jnp.diag(jnp.where(free, 0.0, 1.0))
    bad = status >= FitStatus.SOLVER_FAILURE
    cov = jnp.where(both, jnp.linalg.pinv(jtj, hermitian=True), 0.0)
    ev = jnp.linalg.eigvalsh(jtj)
    ev_min = ev[jnp.sum(~free)]
    cond = jnp.where(bad, jnp.nan, jnp.sqrt(ev[-1] / jnp.maximum(ev_min, 0.0)))
    Jt = jax.jacfwd(lambda z_: constrained(spec, z_))(z)
    se_t = jnp.sqrt(jnp.diag(Jt @ cov @ Jt.T))
    cov = jnp.where(bad | ~both, jnp.nan, cov)
    se_t = jnp.where(bad | ~free, jnp.nan, se_t)
    return cov, jnp.sqrt(jnp.diag(cov)), cond, cond < max_condition, se_t


def run_members(predictor, data, z0, sigma0, opts):
    """Solve every (subject, start) member: ``z0`` is ``(n_subjects, n_starts, n_z)``.

    The members are flattened into one vmap axis. **Returns:** a `Member` whose arrays
    have leading axes ``(n_subjects, n_starts)``.
    """
    n_subj, n_starts = z0.shape[:2]
    solve = solve_lm if opts.method == "lm" else solve_optax
    rep = jax.tree_util.tree_map(lambda x: jnp.repeat(x, n_starts, axis=0), data)
    flat = jax.vmap(lambda d, z_, s: solve(predictor, d, z_, s, opts))(
        rep, z0.reshape(n_subj * n_starts, -1), jnp.repeat(sigma0, n_starts))
    return jax.tree_util.tree_map(lambda x: x.reshape(n_subj, n_starts, *x.shape[1:]), flat)


@eqx.filter_jit
def _init_z(predictor, data):
    return jax.vmap(predictor.init_z)(data)


def _starts(predictor, data, z_ref, unit, scale):
    """Start vectors ``(n_subjects, n_starts, n_z)`` and the free masks ``(n, n_z)``."""
    free = jax.vmap(predictor.free_mask)(data)
    z0 = z_ref[:, None, :] + scale * (2.0 * unit - 1.0)[None]
    z0 = jnp.where(free[:, None, :], z0, z_ref[:, None, :])  # fixed elements: no spread
    return z0, free


@eqx.filter_jit
def _fit_core(predictor, data, z_ref, unit, scale, sigma0, opts, max_condition):
    z0, free = _starts(predictor, data, z_ref, unit, scale)
    m = run_members(predictor, data, z0, sigma0, opts)
    return _summarise(predictor, data, m, free, max_condition)


def _fit_stacked(predictor, data, z_ref, unit, scale, sigma0, opts, max_condition):
    """`_fit_core` with every (subject, start) member in one stacked solve."""
    z0, free = _starts_jit(predictor, data, z_ref, unit, scale)
    n_subj, n_starts, n_z = z0.shape
    rep = jax.tree_util.tree_map(lambda x: np.repeat(np.asarray(x), n_starts, axis=0), data)
    m, info = solve_stacked(predictor, rep, np.asarray(z0).reshape(-1, n_z),
                            np.repeat(np.asarray(sigma0), n_starts), opts,
                            np.repeat(np.asarray(free), n_starts, axis=0))
    m = jax.tree_util.tree_map(lambda x: x.reshape(n_subj, n_starts, *x.shape[1:]), m)
    return _summarise_jit(predictor, data, m, free, max_condition), info


def _summarise(predictor, data, m, free, max_condition):
    best = jax.vmap(_best)(m.loss, m.status)
    b = jax.tree_util.tree_map(jax.vmap(lambda a, i: a[i]), m, jax.tree_util.tree_map(
        lambda _: best, m))
    cov, se, cond, ident, se_t = jax.vmap(
        lambda J, z_, st, f: _uncertainty(predictor.spec, J, z_, st, max_condition, f))(
        b.jac, b.z, b.status, free)
    obs = data.mask & ~data.censored
    sq = jnp.where(obs, (jnp.log(jnp.where(obs, data.volume_mm3, 1.0)) - b.log_pred) ** 2,
                   0.0)
    rmse = jnp.sqrt(jnp.sum(sq, axis=1) / jnp.maximum(jnp.sum(obs, axis=1), 1))
    theta = jax.vmap(lambda z_: constrained(predictor.spec, z_))(b.z)
    return dict(z=b.z, loss=b.loss, status=b.status, sigma=b.sigma,
                n_steps=b.n_steps.astype(jnp.int32), best_start=best.astype(jnp.int32),
                all_z=m.z, all_losses=m.loss, all_status=m.status,
                all_n_steps=m.n_steps.astype(jnp.int32), cov_z=cov, se_z=se,
                condition_number=cond, identifiable=ident, theta=theta, se_theta=se_t,
                log_volume_pred=b.log_pred, rmse_log_volume=rmse)


_starts_jit = eqx.filter_jit(_starts)
_summarise_jit = eqx.filter_jit(_summarise)


def fit_map(
    predictor,
    batch,
    *,
    spec=None,
    num_starts: int = 8,
    key=None,
    z_init=None,
    start_scale=1.0,
    method: str = "lm",
    sigma: float | str = 0.2,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    max_steps: int | None = None,
    optimiser=None,
    max_condition: float = 1e6,
    throw: bool = False,
    trust_region: str | tuple | None = None,
    stall_rtol: float | None = None,
    stall_steps: int = 3,
    batching: str = "vmap",
) -> FitResult:
    """Fit every subject of ``batch`` separately by maximum likelihood, multi-start.

    **Arguments:**
    - `predictor`: an `AbstractPredictor` (e.g. from `csc_predictor`), or a function
      ``fn(z, subject) -> (log_volume_mm3, status)`` together with ``spec``.
    - `batch`: a `SubjectBatch` (``n_subjects`` subjects, padded to ``n_obs``).
    - `spec`: only with a plain function: a `ParamSpec`, or the length of ``z``.
    - `num_starts`: starts per subject: start 0 is the reference (``z_init`` or the
      predictor's ``init_z``), the others ``z_ref + start_scale * (2u - 1)`` with ``u``
      scrambled Sobol points (seeded by ``key``; default seed 0).
    - `z_init`: reference start, shape ``(n_z,)`` or ``(n_subjects, n_z)``.
    - `start_scale`: half-width of the start box in ``z`` units, scalar or ``(n_z,)``.
    - `method`: ``"lm"`` (Levenberg–Marquardt, optimistix) or ``"optax"``
      (``optimiser``, default ``optax.adam(0.05)``, on the -log-likelihood).
    - `sigma`: SD of the log-volume error, fixed (float), or ``"estimate"`` (per subject:
      a free parameter with ``"optax"``; with ``"lm"`` its closed-form/M3 MLE after the
      fit, and the fit redone at it if the batch has censored points).
    - `rtol`, `atol`: optimiser convergence tolerances (on ``z`` and the loss).
    - `max_steps`: optimiser step cap (default 200 for ``"lm"``, 2000 for ``"optax"``).
    - `max_condition`: condition number of the residual Jacobian above which a subject
      is flagged not identifiable.
    - `throw`: raise `RuntimeError` if any subject did not converge (after the fit).
    - `trust_region`: ``"lm"`` only: ``"eager"`` (MINPACK-like: accept any decrease,
      widen often; parameters at a transform's bound leave quickly), a 4-tuple of
      `optimistix.ClassicalTrustRegion` constants, None (optimistix's defaults), or,
      with ``batching="stacked"`` only, ``"bounded"``: the rule of MINPACK's lmder,
      which `scipy.optimize.least_squares` (``method="lm"``) runs: a bound on the step
      scaled by J's column norms, Gauss–Newton whenever its step lies inside, lmder's
      ftol test (at ``rtol``) on Gauss–Newton steps. On the 849 PDXE curves (4 starts
      each) it took a mean of 17.4 LM steps against 26.7 for "eager"
      (fitcsc._fit_stacked and benchmarks/README.md for the details).
    - `stall_rtol`, `stall_steps`: ``"lm"`` only: also stop a start (as converged) once
      its loss fell by no more than ``stall_rtol * |loss|`` over ``stall_steps`` accepted
      steps (None: off), e.g. ``1e-8``: a boundary optimum then stops, where ``z`` never
      settles.
    - `batching`: how the members (subject x start) are batched. ``"vmap"``: each
      member runs its own solver under `jax.vmap` (any predictor). ``"stacked"``
      (``"lm"`` with a `csc_predictor` without log-kill chemotherapy): all members'
      ODEs are integrated as one system
      with their forward sensitivities, under a Levenberg–Marquardt that takes the
      same steps as the vmapped one (same trust region and stopping rules), in passes
      that drop members once they stop. Same optima (to the ODE tolerance); measured
      2.4–2.5x faster than vmapped chunks on PDXE curves on a CPU (benchmarks/README.md),
      slower where trial points make a member stiff (its shared solve is redone). Each member
      is solved at least as accurately as alone; a failed shared solve is redone
      member by member, so a failure stays with its member.

    **Returns:** a `FitResult`.

    ```python
    pred = fitcsc.csc_predictor(model, spec)
    result = fitcsc.fit_map(pred, batch, num_starts=8)
    result.to_rows()
    ```
    """
    if not isinstance(predictor, AbstractPredictor):
        if spec is None:
            raise TypeError("fit_map: a plain prediction function needs `spec` "
                            "(a ParamSpec or the length of z)")
        predictor = FunctionPredictor(predictor, spec)
    elif spec is not None:
        raise TypeError("fit_map: `spec` is only for plain functions; a predictor "
                        "carries its own `spec`")
    has_cens = bool(np.any(np.asarray(batch.censored) & np.asarray(batch.mask)))
    opts, unit, z_ref, scale, sigma0 = _prepare(
        "fit_map", predictor, batch.n_subjects, has_cens, num_starts=num_starts, key=key,
        z_init=z_init, start_scale=start_scale, method=method, sigma=sigma, rtol=rtol, atol=atol,
        max_steps=max_steps, optimiser=optimiser)
    opts = lm_options(opts, trust_region=trust_region, stall_rtol=stall_rtol,
                      stall_steps=stall_steps)
    if batching not in ("vmap", "stacked"):
        raise ValueError(f"fit_map: batching must be 'vmap' or 'stacked', got {batching!r}")
    if batching == "stacked":
        check_stackable(predictor, opts)
    elif opts.trust_region == "bounded":
        raise ValueError("fit_map: trust_region='bounded' needs batching='stacked'")
    data = subject_data(batch)
    if z_ref is None:  # outside `_fit_core`, so that giving z_init or not never retraces
        z_ref = _init_z(predictor, data)
    if batching == "stacked":
        out, _ = _fit_stacked(predictor, data, z_ref, unit, scale, sigma0, opts,
                              float(max_condition))
    else:
        out = _fit_core(predictor, data, z_ref, unit, scale, sigma0, opts,
                        float(max_condition))
    result = FitResult(**out, labels=tuple(predictor.spec.labels()),
                       subject=tuple(batch.subject), arm=tuple(batch.arm),
                       study=tuple(batch.study), method=method)
    if throw:
        codes = np.asarray(result.status)
        bad = [f"{s}: {FitStatus(int(c)).message}" for s, c in zip(
            result.subject, codes, strict=True) if c != FitStatus.CONVERGED]
        if bad:
            raise RuntimeError("fit_map: " + "; ".join(bad))
    return result


def _prepare(who, predictor, n_members, has_cens, *, num_starts, key, z_init, start_scale,
             method, sigma, rtol, atol, max_steps, optimiser):
    """Check options on concrete values; starts and options for `_fit_core`.

    ``who`` names the caller in error messages; ``n_members`` is the number of fitted
    members (subjects, or groups); ``has_cens``: whether any observation is censored.
    """
    n_z, n_subj = int(predictor.spec.size), int(n_members)
    if n_z < 1:
        raise ValueError(f"{who}: the spec has no free parameter")
    if method not in ("lm", "optax"):
        raise ValueError(f"{who}: method must be 'lm' or 'optax', got {method!r}")
    if int(num_starts) != num_starts or num_starts < 1:
        raise ValueError(f"{who}: num_starts must be an integer >= 1, got {num_starts!r}")
    estimate = isinstance(sigma, str)
    if estimate and sigma != "estimate":
        raise ValueError(f"{who}: sigma must be a float > 0 or 'estimate', got {sigma!r}")
    sigma0 = np.broadcast_to(np.asarray(0.2 if estimate else sigma, float), (n_subj,))
    if not np.all(np.isfinite(sigma0) & (sigma0 > 0)):
        raise ValueError(f"{who}: sigma must be finite and > 0, got {sigma!r}")
    scale = np.broadcast_to(np.asarray(start_scale, float), (n_z,))
    if not np.all(np.isfinite(scale) & (scale >= 0)):
        raise ValueError(f"{who}: start_scale must be finite and >= 0, got {start_scale!r}")
    if z_init is not None:
        z_init = np.asarray(z_init, float)
        if z_init.shape not in ((n_z,), (n_subj, n_z)):
            raise ValueError(f"{who}: z_init must have shape ({n_z},) or ({n_subj}, {n_z})"
                             f", got {z_init.shape}")
        z_init = jnp.asarray(np.broadcast_to(z_init, (n_subj, n_z)))
    seed = 0 if key is None else int(jax.random.randint(key, (), 0, 2**31 - 1))
    if max_steps is None:
        max_steps = 200 if method == "lm" else 2000
    opts = Options(method=method, rtol=float(rtol), atol=float(atol),
                    max_steps=int(max_steps), estimate_sigma=estimate,
                    refit_sigma=estimate and has_cens and method == "lm",
                    optimiser=(DEFAULT_OPTIMISER if optimiser is None else optimiser)
                    if method == "optax" else None)
    return (opts, jnp.asarray(sobol_unit(int(num_starts), n_z, seed)), z_init,
            jnp.asarray(scale), jnp.asarray(sigma0))
