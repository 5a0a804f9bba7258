"""Batched MAP / maximum-likelihood fits: every subject, every start, one engine.

`fit_map` fits each subject of a `SubjectBatch` separately, from ``num_starts``
quasi-random starts (scrambled Sobol, fixed seed): the package's one Levenberg–Marquardt
(`fitcsc._fit.lm`) on the residuals of the log-normal/M3 observation model
(``method="lm"``), its members (subject x start) streamed through the fixed-shape lanes
of `fitcsc._fit.lanes`, each member's residuals and Jacobian from an evaluator
(`fitcsc._fit.evaluators`: paced ODE solves for the CSC model, `jax.jacfwd` for any
predictor); or an optax optimiser on the negative log-likelihood (``method="optax"``).
Each subject keeps its best start (lowest loss among starts that did not fail) and
reports its own `FitStatus`; a failing subject changes nothing for the others.
Standard errors come from the residual Jacobian at the optimum, ``cov = (J^T J)^+``
(``= sigma^2 (J_logV^T J_logV)^-1`` without censoring), and reach the natural scale by
the delta method. `fit_groups` (parameters shared within groups of curves) and
`profile` run the same core (`fit_members`); a member's free mask (a predictor's
``free_mask``, a pinned profile parameter) marks the elements it does not estimate.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from .._status import FitStatus, fit_status
from .evaluators import CurveMember, CurveProblem, default_evaluator, make_evaluator
from .lanes import DEFAULT_LANES, solve_members
from .lm import as_rule, make_stop
from .member import Options, nll_from_log, sigma_mle, solve_optax
from .predictors import AbstractPredictor, FunctionPredictor, SubjectData, subject_data

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
    Jt = jax.jacfwd(spec.natural)(z)
    se_t = jnp.sqrt(jnp.diag(Jt @ cov @ Jt.T))
    cov = jnp.where(bad | ~both, jnp.nan, cov)
    se_t = jnp.where(bad | ~free, jnp.nan, se_t)
    return cov, jnp.sqrt(jnp.diag(cov)), cond, cond < max_condition, se_t


def bucket(n: int, smallest: int = 4) -> int:
    """The padded size for ``n``: the next power of two, at least ``smallest`` (shapes
    that vary with the data fall into few buckets, so few programs compile)."""
    size = smallest
    while size < n:
        size *= 2
    return size


def _pad_last(x, n, fill):
    x = np.asarray(x)
    extra = n - x.shape[-1]
    if extra <= 0:
        return x
    pad = np.broadcast_to(np.asarray(fill, x.dtype), x.shape[:-1] + (extra,))
    return np.concatenate([x, pad], axis=-1)


def pad_observations(data):
    """A `SubjectData` (or a group fit's data, whose ``curves`` are one) with its
    observations and doses padded to their buckets (host arrays): padding repeats the
    last day, is masked and never observed, so predictions and fits do not change."""
    if not isinstance(data, SubjectData):  # a GroupData: its curves
        return eqx.tree_at(lambda g: g.curves, data, pad_observations(data.curves))
    host = jax.tree_util.tree_map(np.asarray, data)
    n_obs, n_doses = bucket(host.day.shape[-1]), bucket(host.schedule.time_day.shape[-1], 1)
    last = host.day[..., -1:]
    sched = host.schedule
    sched = eqx.tree_at(lambda s: (s.time_day, s.amount_mg, s.duration_day, s.drug, s.mask),
                        sched, (_pad_last(sched.time_day, n_doses, 0.0),
                                _pad_last(sched.amount_mg, n_doses, 0.0),
                                _pad_last(sched.duration_day, n_doses, 0.0),
                                _pad_last(sched.drug, n_doses, 0),
                                _pad_last(sched.mask, n_doses, False)))
    day = np.concatenate([host.day, np.broadcast_to(
        last, host.day.shape[:-1] + (max(0, n_obs - host.day.shape[-1]),))], axis=-1)
    return eqx.tree_at(lambda d: (d.day, d.volume_mm3, d.mask, d.censored, d.schedule),
                       host, (day, _pad_last(host.volume_mm3, n_obs, 1.0),
                              _pad_last(host.mask, n_obs, False),
                              _pad_last(host.censored, n_obs, False), sched))


def _rows(tree, idx):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[idx], tree)


@eqx.filter_jit
def _reference(predictor, data):
    """Each member's reference start and free mask (leading axis of ``data``)."""
    return jax.vmap(predictor.init_z)(data), jax.vmap(predictor.free_mask)(data)


def reference_starts(predictor, data):
    """``(z_ref, free)`` of every subject (host arrays); padded to a bucket of
    subjects, so few programs compile."""
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    idx = np.resize(np.arange(n), bucket(n, 8))
    z_ref, free = _reference(predictor, _rows(data, idx))
    return np.asarray(z_ref)[:n], np.asarray(free)[:n].astype(bool)


def starts(z_ref, free, num_starts: int, scale, seed: int) -> np.ndarray:
    """Start vectors ``(n, num_starts, n_z)``: start 0 is ``z_ref``, the others
    ``z_ref + scale * (2u - 1)`` on the member's free elements (in order), ``u`` the
    scrambled Sobol points of `sobol_unit` in as many dimensions as it has free
    elements; the other elements stay at ``z_ref``. (A fit whose members all estimate
    every element thus gets the same starts whatever else it fits.)"""
    n, n_z = z_ref.shape
    scale = np.broadcast_to(np.asarray(scale, float), (n_z,))
    z0 = np.repeat(z_ref[:, None, :], num_starts, axis=1).astype(float)
    n_free = free.sum(axis=1)
    for k in np.unique(n_free):
        if k == 0:
            continue
        u = sobol_unit(num_starts, int(k), seed)
        for i in np.flatnonzero(n_free == k):
            idx = np.flatnonzero(free[i])
            z0[i][:, idx] = z_ref[i, idx] + scale[idx] * (2.0 * u - 1.0)
    return z0


@eqx.filter_jit
def _summarise(predictor, data, rec, sigma0, free, estimate: bool, max_condition):
    """Per subject (leading axis), from its members' records ``(n, S, ...)``: sigma,
    loss and status of every start, the best start and its uncertainty."""
    def member(d, r, s0):
        censored = jnp.any(d.mask & d.censored)
        sigma = r["sigma"]
        if estimate:  # uncensored: the optimum does not depend on sigma (closed form)
            sigma = jnp.where(censored, sigma, sigma_mle(r["log_pred"], d, s0))
        jac = r["jac"] * (r["sigma"] / sigma)
        loss = nll_from_log(r["log_pred"], d, sigma)
        status = fit_status(r["converged"], r["at_max"], r["sim_status"], loss, r["z"])
        return sigma, jac, loss, status

    sigma, jac, loss, status = jax.vmap(jax.vmap(member, in_axes=(None, 0, None)))(
        data, rec, sigma0)
    best = jax.vmap(_best)(loss, status)

    def pick(x):
        return jax.vmap(lambda a, i: a[i])(x, best)

    b_z, b_jac, b_status = pick(rec["z"]), pick(jac), pick(status)
    lp = pick(rec["log_pred"])
    cov, se, cond, ident, se_t = jax.vmap(
        lambda J, z_, st, f: _uncertainty(predictor.spec, J, z_, st, max_condition, f))(
        b_jac, b_z, b_status, free)
    obs = data.mask & ~data.censored
    sq = jnp.where(obs, (jnp.log(jnp.where(obs, data.volume_mm3, 1.0)) - lp) ** 2, 0.0)
    rmse = jnp.sqrt(jnp.sum(sq, axis=1) / jnp.maximum(jnp.sum(obs, axis=1), 1))
    theta = jax.vmap(predictor.spec.natural)(b_z)
    return dict(z=b_z, loss=pick(loss), status=b_status, sigma=pick(sigma),
                n_steps=pick(rec["n_steps"]).astype(jnp.int32), best_start=best.astype(
                    jnp.int32), all_z=rec["z"], all_losses=loss, all_status=status,
                all_n_steps=rec["n_steps"].astype(jnp.int32), cov_z=cov, se_z=se,
                condition_number=cond, identifiable=ident, theta=theta, se_theta=se_t,
                log_volume_pred=lp, rmse_log_volume=rmse)


def fit_members(who, predictor, data, *, z0, free, sigma0, opts, rule, stop,
                evaluator="auto", lanes=None, max_condition=1e6, progress=None) -> dict:
    """The LM from every start ``z0`` ``(n, S, n_z)`` of every subject (or group) of
    ``data`` (leading axis n), through the lanes; then each subject's best start.

    **Returns:** the arrays of a `FitResult` (leading axis n), and ``"info"``: the
    evaluator, lanes and member count.
    """
    n, S, n_z = z0.shape
    obs_shape = (data if isinstance(data, SubjectData) else data.curves).day.shape[1:]
    padded = pad_observations(data)
    if evaluator == "auto":
        evaluator = default_evaluator(predictor)
    ev = make_evaluator(evaluator, predictor, who, padded)
    problem = CurveProblem(ev, rounds=3 if opts.refit_sigma else 1)
    sigma0 = np.broadcast_to(np.asarray(sigma0, float), (n,))
    each = np.repeat(np.arange(n), S)
    members = CurveMember(_rows(padded, each), np.repeat(sigma0, S))
    L = int(lanes or min(DEFAULT_LANES, bucket(n * S, 8)))
    rec = solve_members(problem, rule, stop, members, z0.reshape(n * S, n_z),
                        np.repeat(free, S, axis=0), lanes=L, progress=progress)
    rec = {k: v.reshape((n, S) + v.shape[1:]) for k, v in rec.items()}
    pad_n = np.resize(np.arange(n), bucket(n, 8))
    out = _summarise(predictor, _rows(padded, pad_n), _rows(rec, pad_n), sigma0[pad_n],
                     free[pad_n], opts.estimate_sigma, float(max_condition))
    out = {k: np.asarray(v)[:n] for k, v in out.items()}
    # back to the caller's observation count (a group's curves are flattened)
    lp = out["log_volume_pred"].reshape((n,) + obs_shape[:-1] + (-1,))
    out["log_volume_pred"] = lp[..., :obs_shape[-1]].reshape(n, -1)
    out["info"] = dict(evaluator=evaluator, lanes=L, members=n * S)
    return out


@eqx.filter_jit
def fit_optax(predictor, data, z0, sigma0, opts, free, max_condition):
    """``method="optax"``: each member its own optax loop, vmapped."""
    n, S = z0.shape[:2]
    rep = jax.tree_util.tree_map(lambda x: jnp.repeat(x, S, axis=0), data)
    m = jax.vmap(lambda d, z_, s: solve_optax(predictor, d, z_, s, opts))(
        rep, z0.reshape(n * S, -1), jnp.repeat(sigma0, S))
    m = jax.tree_util.tree_map(lambda x: x.reshape(n, S, *x.shape[1:]), m)
    rec = dict(z=m.z, jac=m.jac, log_pred=m.log_pred, sigma=m.sigma,
               converged=m.status == FitStatus.CONVERGED, at_max=m.status ==
               FitStatus.MAX_STEPS, sim_status=jnp.where(
                   m.status == FitStatus.SOLVER_FAILURE, 2, 0), n_steps=m.n_steps)
    return _summarise(predictor, data, rec, sigma0, free, False, max_condition)


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
    evaluator: str = "auto",
    batching: str | None = None,
    lanes: int | None = None,
    progress=None,
) -> FitResult:
    """Fit every subject of ``batch`` separately by maximum likelihood, multi-start.

    **Arguments:**
    - `predictor`: an `AbstractPredictor` (e.g. from `csc_predictor`), or a function
      ``fn(z, subject) -> (log_volume_mm3, status)`` together with ``spec``.
    - `batch`: a `SubjectBatch` (``n_subjects`` subjects, padded to ``n_obs``).
    - `spec`: only with a plain function: a `ParamSpec`, or the length of ``z``.
    - `num_starts`: starts per subject: start 0 is the reference (``z_init`` or the
      predictor's ``init_z``), the others ``z_ref + start_scale * (2u - 1)`` on the
      subject's free elements, ``u`` scrambled Sobol points (seeded by ``key``;
      default seed 0; `starts`).
    - `z_init`: reference start, shape ``(n_z,)`` or ``(n_subjects, n_z)``.
    - `start_scale`: half-width of the start box in ``z`` units, scalar or ``(n_z,)``.
    - `method`: ``"lm"`` (the package's Levenberg–Marquardt, `fitcsc._fit.lm`) or
      ``"optax"`` (``optimiser``, default ``optax.adam(0.05)``, on the -log-likelihood).
    - `sigma`: SD of the log-volume error, fixed (float), or ``"estimate"`` (per subject:
      a free parameter with ``"optax"``; with ``"lm"`` its closed-form MLE after the
      fit, and, for a subject with censored points, LM and the M3 MLE of sigma
      alternated three times).
    - `rtol`, `atol`: convergence tolerances (on ``z``, the residuals and the loss).
    - `max_steps`: evaluations per start (default 200 for ``"lm"``, 2000 steps for
      ``"optax"``).
    - `max_condition`: condition number of the residual Jacobian above which a subject
      is flagged not identifiable.
    - `throw`: raise `RuntimeError` if any subject did not converge (after the fit).
    - `trust_region`: ``"lm"`` only: the LM's rule, ``"bounded"`` (default: MINPACK
      lmder's scaled step bound, as `scipy.optimize.least_squares(method="lm")`),
      ``"damping"`` (optimistix's LM), ``"eager"`` (damping, accept any decrease and
      widen often) or a 4-tuple of damping constants (`fitcsc._fit.lm`).
    - `stall_rtol`, `stall_steps`: ``"lm"`` only: also stop a start (as converged) once
      its loss fell by no more than ``stall_rtol * |loss|`` over ``stall_steps`` accepted
      steps (None: off), e.g. ``1e-8``: a boundary optimum then stops, where ``z`` never
      settles.
    - `evaluator`: how residuals and Jacobians are computed: ``"paced"`` (the CSC
      model's ODE and forward sensitivities, each member at its own pace; not log-kill
      chemotherapy), ``"jacfwd"`` (`jax.jacfwd` of any predictor) or ``"auto"`` (the
      default: paced where it runs). The optimum is the same to the ODE tolerance.
    - `batching`: the former name of the evaluator: ``"stacked"`` = ``"paced"``,
      ``"vmap"`` = ``"jacfwd"``.
    - `lanes`: members (subject x start) in flight at once (default: 128, or fewer for a
      small fit); one program compiles per lane count, whatever the batch size.
    - `progress`: ``progress(n_members_done)``, called as members finish.

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
    evaluator = evaluator_option(evaluator, batching, "fit_map")
    has_cens = bool(np.any(np.asarray(batch.censored) & np.asarray(batch.mask)))
    opts, seed, z_init, scale, sigma0 = prepare_fit(
        "fit_map", predictor, batch.n_subjects, has_cens, num_starts=num_starts, key=key,
        z_init=z_init, start_scale=start_scale, method=method, sigma=sigma, rtol=rtol,
        atol=atol, max_steps=max_steps, optimiser=optimiser)
    rule, stop = lm_options(opts, trust_region=trust_region, stall_rtol=stall_rtol,
                            stall_steps=stall_steps, who="fit_map")
    data = subject_data(batch)
    z_ref, free = reference_starts(predictor, data)
    if z_init is not None:
        z_ref = z_init
    z0 = starts(z_ref, free, int(num_starts), scale, seed)
    if method == "lm":
        out = fit_members("fit_map", predictor, data, z0=z0, free=free, sigma0=sigma0,
                          opts=opts, rule=rule, stop=stop, evaluator=evaluator,
                          lanes=lanes, max_condition=max_condition, progress=progress)
        out.pop("info")
    else:
        out = fit_optax(predictor, data, jnp.asarray(z0), jnp.asarray(sigma0), opts,
                         jnp.asarray(free), float(max_condition))
    result = FitResult(**{k: jnp.asarray(v) for k, v in out.items()},
                       labels=tuple(predictor.spec.labels()), subject=tuple(batch.subject),
                       arm=tuple(batch.arm), study=tuple(batch.study), method=method)
    if throw:
        codes = np.asarray(result.status)
        bad = [f"{s}: {FitStatus(int(c)).message}" for s, c in zip(
            result.subject, codes, strict=True) if c != FitStatus.CONVERGED]
        if bad:
            raise RuntimeError("fit_map: " + "; ".join(bad))
    return result


def evaluator_option(evaluator: str, batching: str | None, who: str) -> str:
    """The evaluator named by ``evaluator`` or by the former ``batching`` option."""
    if batching is None:
        return evaluator
    legacy = {"vmap": "jacfwd", "stacked": "paced"}
    if batching not in legacy:
        raise ValueError(f"{who}: batching must be 'vmap' or 'stacked', got {batching!r}")
    if evaluator not in ("auto", legacy[batching]):
        raise ValueError(f"{who}: batching={batching!r} contradicts evaluator="
                         f"{evaluator!r}; give evaluator only")
    return legacy[batching]


def lm_options(opts: Options, *, trust_region=None, stall_rtol=None, stall_steps=3,
               who: str = "fit_map"):
    """The LM's rule and `Stop` from a fit's options (checked: `ValueError`)."""
    if opts.method != "lm" and (trust_region is not None or stall_rtol is not None):
        raise ValueError(f"{who}: trust_region and stall_rtol are options of method='lm'")
    return as_rule(trust_region, who), make_stop(
        rtol=opts.rtol, atol=opts.atol, max_steps=opts.max_steps, stall_rtol=stall_rtol,
        stall_steps=stall_steps, who=who)


def prepare_fit(who, predictor, n_members, has_cens, *, num_starts, key, z_init, start_scale,
             method, sigma, rtol, atol, max_steps, optimiser):
    """Check options on concrete values; returns ``(opts, seed, z_init, scale, sigma0)``
    (host arrays).

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
        z_init = np.broadcast_to(z_init, (n_subj, n_z)).copy()
    seed = 0 if key is None else int(jax.random.randint(key, (), 0, 2**31 - 1))
    if max_steps is None:
        max_steps = 200 if method == "lm" else 2000
    opts = Options(method=method, rtol=float(rtol), atol=float(atol),
                   max_steps=int(max_steps), estimate_sigma=estimate,
                   refit_sigma=estimate and has_cens and method == "lm",
                   optimiser=(DEFAULT_OPTIMISER if optimiser is None else optimiser)
                   if method == "optax" else None)
    return opts, seed, z_init, scale, sigma0
