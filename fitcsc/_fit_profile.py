"""Profile likelihoods, batched over grid values and subjects (identifiability, DESIGN §4).

For one parameter pinned at each grid value, the others are re-optimised (LM, from the
MAP estimate, at the MAP's sigma) for every subject, all in one compiled call. A flat
profile (``delta`` below ~1.92 over a wide range) flags a parameter the data do not
identify; where ``delta`` crosses 1.92 gives a 95% likelihood-based interval.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._fit_predict import AbstractPredictor, subject_data
from ._fit_solve import Options, solve_lm


class ProfileResult(eqx.Module):
    """Profile of the -log-likelihood of one parameter, per subject."""

    value: Float[Array, " n_grid"]  # grid, natural scale (ParamSpec) or z
    z_value: Float[Array, " n_grid"]  # the same grid in z
    loss: Float[Array, "n_grid n_subjects"]  # re-optimised -log-likelihood
    delta: Float[Array, "n_grid n_subjects"]  # loss - MAP loss (>= 0 up to tolerance)
    status: Int[Array, "n_grid n_subjects"]  # `FitStatus`
    z: Float[Array, "n_grid n_subjects n_z"]  # full z at each profile point
    name: str = eqx.field(static=True)


class _Pinned(AbstractPredictor):
    """``predictor`` with element ``index`` of ``z`` pinned at ``value``."""

    spec: object  # the inner predictor's (only used for its size by the solver)
    inner: AbstractPredictor
    index: int = eqx.field(static=True)
    value: Array

    def full(self, z_rest):
        return jnp.insert(z_rest, self.index, self.value)

    def __call__(self, z_rest, subject):
        return self.inner(self.full(z_rest), subject)


def _grid_to_z(spec, label, grid):
    """The grid in ``z``: through the label's transform if the spec has transforms
    (`ParamSpec`: ``(name, transform)`` pairs; or ``transforms`` aligned with ``free``)."""
    grid = jnp.asarray(grid, dtype=float)
    trs = getattr(spec, "transforms", None)
    if trs is None or not hasattr(spec, "free"):
        return grid  # no transform: the grid is in z
    if all(isinstance(t, tuple) and len(t) == 2 for t in trs):
        lookup = dict(trs)
    else:
        lookup = dict(zip(spec.free, trs, strict=True))
    return lookup[label.split("[")[0]].inverse(grid)


@eqx.filter_jit
def _profile_core(predictor, data, z_map, sigma, index, z_grid, opts):
    rest = jnp.delete(z_map, index, axis=1, assume_unique_indices=True)

    def one(zv, d, z0, s):
        pinned = _Pinned(predictor.spec, predictor, index, zv)
        m = solve_lm(pinned, d, z0, s, opts)
        return m.loss, m.status, pinned.full(m.z)

    per_subject = jax.vmap(one, in_axes=(None, 0, 0, 0))
    return jax.vmap(per_subject, in_axes=(0, None, None, None))(z_grid, data, rest, sigma)


def profile(predictor, batch, result, name: str, grid, *, rtol: float = 1e-8,
            atol: float = 1e-8, max_steps: int = 200) -> ProfileResult:
    """Profile likelihood of parameter ``name`` over ``grid`` for every subject.

    **Arguments:**
    - `predictor`: the predictor that produced ``result`` (`fit_map`, method ``"lm"``
      or ``"optax"``); a plain function is not accepted here, wrap it in
      `FunctionPredictor`.
    - `batch`: the same `SubjectBatch`; `result`: its `FitResult`.
    - `name`: one of ``result.labels`` (e.g. ``"self_renewal"``, ``"ec50_mg_per_L[0]"``).
    - `grid`: values of the parameter, on its natural scale for a `ParamSpec` (in ``z``
      for an int spec), shape ``(n_grid,)``.
    - `rtol`, `atol`, `max_steps`: LM options.

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
    z_grid = _grid_to_z(predictor.spec, name, grid)
    opts = Options(method="lm", rtol=float(rtol), atol=float(atol),
                    max_steps=int(max_steps), estimate_sigma=False, refit_sigma=False)
    loss, status, z = _profile_core(predictor, subject_data(batch), result.z, result.sigma,
                                    labels.index(name), z_grid, opts)
    return ProfileResult(value=jnp.asarray(grid), z_value=z_grid, loss=loss,
                         delta=loss - result.loss[None, :], status=status, z=z, name=name)
