"""Profile likelihoods, batched over grid values and subjects (identifiability, DESIGN §4).

For one parameter pinned at each grid value, the others are re-optimised (the package's
LM, from the MAP estimate, at the MAP's sigma) for every subject: each (grid value,
subject) is one member of the fit engine, the pinned element held by the member's free
mask, all in one program. A flat profile (``delta`` below ~1.92 over a wide range)
flags a parameter the data do not identify; where ``delta`` crosses 1.92 gives a 95%
likelihood-based interval.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .driver import fit_members, lm_options, prepare_fit, reference_starts
from .predictors import AbstractPredictor, subject_data


class ProfileResult(eqx.Module):
    """Profile of the -log-likelihood of one parameter, per subject."""

    value: Float[Array, " n_grid"]  # grid, natural scale (ParamSpec) or z
    z_value: Float[Array, " n_grid"]  # the same grid in z
    loss: Float[Array, "n_grid n_subjects"]  # re-optimised -log-likelihood
    delta: Float[Array, "n_grid n_subjects"]  # loss - MAP loss (>= 0 up to tolerance)
    status: Int[Array, "n_grid n_subjects"]  # `FitStatus`
    z: Float[Array, "n_grid n_subjects n_z"]  # full z at each profile point
    name: str = eqx.field(static=True)


def _grid_to_z(spec, label, grid):
    """The natural-scale grid of ``label`` in ``z``, through its element's transform."""
    i = tuple(spec.labels()).index(label)
    return spec.element_transforms()[i].inverse(jnp.asarray(grid, dtype=float))


def profile(predictor, batch, result, name: str, grid, *, rtol: float = 1e-8,
            atol: float = 1e-8, max_steps: int = 200, trust_region=None,
            evaluator: str = "auto") -> ProfileResult:
    """Profile likelihood of parameter ``name`` over ``grid`` for every subject.

    **Arguments:**
    - `predictor`: the predictor that produced ``result`` (`fit_map`, method ``"lm"``
      or ``"optax"``); a plain function is not accepted here, wrap it in
      `FunctionPredictor`.
    - `batch`: the same `SubjectBatch`; `result`: its `FitResult`.
    - `name`: one of ``result.labels`` (e.g. ``"self_renewal"``, ``"ec50_mg_per_L[0]"``).
    - `grid`: values of the parameter, on its natural scale for a `ParamSpec` (in ``z``
      for an int spec), shape ``(n_grid,)``.
    - `rtol`, `atol`, `max_steps`, `trust_region`, `evaluator`: as in `fit_map`.

    Sigma is held at each subject's MAP value (``result.sigma``).

    **Returns:** a `ProfileResult`; ``delta = loss - result.loss`` is ~0 at the MAP and
    >= 0 elsewhere when the MAP is the optimum.
    """
    if not isinstance(predictor, AbstractPredictor):
        raise TypeError("profile: wrap a plain function in fitcsc.FunctionPredictor")
    labels = tuple(predictor.spec.labels())
    if name not in labels:
        raise ValueError(f"profile: unknown parameter {name!r}; fitted: {labels}")
    if len(labels) < 2:
        raise ValueError("profile: needs at least two free parameters")
    if tuple(result.subject) != tuple(batch.subject):
        raise ValueError("profile: `result` was not fitted on this batch")
    grid = np.asarray(grid, dtype=float).reshape(-1)
    z_grid = np.asarray(_grid_to_z(predictor.spec, name, grid))
    k = labels.index(name)
    n, g = batch.n_subjects, grid.size
    opts, _, _, _, sigma = prepare_fit(
        "profile", predictor, n * g, False, num_starts=1, key=None, z_init=None,
        start_scale=0.0, method="lm", sigma=np.tile(np.asarray(result.sigma), g),
        rtol=rtol, atol=atol, max_steps=max_steps, optimiser=None)
    rule, stop = lm_options(opts, trust_region=trust_region, who="profile")
    data = subject_data(batch)
    _, free = reference_starts(predictor, data)
    z0 = np.tile(np.asarray(result.z, float), (g, 1))  # (grid x subject, n_z)
    z0[:, k] = np.repeat(z_grid, n)
    free = np.tile(free, (g, 1))
    free[:, k] = False
    each = np.tile(np.arange(n), g)
    members = jax.tree_util.tree_map(lambda x: np.asarray(x)[each], data)
    out = fit_members("profile", predictor, members, z0=z0[:, None, :], free=free,
                      sigma0=sigma, opts=opts, rule=rule, stop=stop, evaluator=evaluator)
    loss = out["loss"].reshape(g, n)
    return ProfileResult(value=jnp.asarray(grid), z_value=jnp.asarray(z_grid),
                         loss=jnp.asarray(loss),
                         delta=jnp.asarray(loss - np.asarray(result.loss)[None, :]),
                         status=jnp.asarray(out["status"].reshape(g, n)),
                         z=jnp.asarray(out["z"].reshape(g, n, -1)), name=name)
