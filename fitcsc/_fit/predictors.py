"""What the fitting engine fits: per-subject data and prediction functions.

The engine (`fit_map`, `profile`) fits any model given as a *predictor*: an
`AbstractPredictor` (an `eqx.Module`) with a parameter spec and

    predictor(z, subject) -> (log_volume_mm3 (n_obs,), status)

where ``z`` is the unconstrained parameter vector of one subject and ``subject`` one
`SubjectData` (one row of a `SubjectBatch`). ``status`` is 0 on success (any other
value marks the prediction as failed, e.g. a `fitcsc.Status` code). Predictors must be
forward-differentiable in ``z`` (`jax.jacfwd`), as Levenberg–Marquardt needs.

`csc_predictor` adapts the CSC model; `FunctionPredictor` wraps a plain function, so
that baseline models (exponential, logistic, Gompertz, Simeoni) reuse the engine.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._model.family import ModelConfig
from .._model.regimen import DoseSchedule
from .._model.transforms import Fixed, ParameterSpace, ParamSpec, Positive, Real
from .._solve.simulate import simulate


class SubjectData(eqx.Module):
    """One subject's observations and doses (a row of a `SubjectBatch`); all arrays.

    With a leading subject axis (from `subject_data(batch)`) it vmaps over subjects.
    """

    day: Float[Array, " n_obs"]  # observation times [day]; padding repeats the last
    volume_mm3: Float[Array, " n_obs"]  # observed volume; censored: the limit [mm3]
    mask: Bool[Array, " n_obs"]  # True: real observation
    censored: Bool[Array, " n_obs"]  # True: left-censored (M3)
    t0_day: Float[Array, ""]  # first observation day [day]
    schedule: DoseSchedule  # this subject's padded doses

    @property
    def first_volume_mm3(self) -> Float[Array, ""]:
        """The first observation (the detection limit if it is censored) [mm3]."""
        return self.volume_mm3[..., 0]


def subject_data(batch, index: int | None = None) -> SubjectData:
    """The array part of a `SubjectBatch`: all subjects (leading axis), or row ``index``."""
    data = SubjectData(batch.day, batch.volume_mm3, batch.mask, batch.censored,
                       batch.t0_day, batch.schedule)
    if index is None:
        return data
    return jax.tree_util.tree_map(lambda x: x[index], data)


class SizeSpec(eqx.Module):
    """The `fitcsc.ParameterSpace` of a predictor given only ``len(z)``: ``z`` is used as
    it is (every element `Real`, natural == ``z``, log-Jacobian 0)."""

    size: int = eqx.field(static=True)

    def labels(self) -> tuple[str, ...]:
        return tuple(f"z[{i}]" for i in range(self.size))

    def to_z(self, values):
        return jnp.asarray(values, dtype=float)

    def from_z(self, z):
        return z

    def natural(self, z):
        return z

    def log_jacobian(self, z):
        return jnp.zeros((), jnp.result_type(z))

    def element_transforms(self) -> tuple:
        return (Real(),) * self.size

    def reference_z(self):
        return jnp.zeros((self.size,))


_CONTRACT = ("size", "labels", "to_z", "from_z", "natural", "log_jacobian",
             "element_transforms", "reference_z")


def as_spec(spec_or_size):
    """A `fitcsc.ParameterSpace` as it is; an int as `SizeSpec`.

    **Raises:** `TypeError` naming what a spec lacks of the contract.
    """
    if isinstance(spec_or_size, int):
        return SizeSpec(int(spec_or_size))
    if not isinstance(spec_or_size, ParameterSpace):
        missing = [a for a in _CONTRACT if a not in dir(spec_or_size)]
        raise TypeError(f"spec must be a fitcsc.ParameterSpace or an int (the length of z), "
                        f"got {type(spec_or_size).__name__} without {missing}")
    return spec_or_size


class AbstractPredictor(eqx.Module):
    """A model the engine can fit. Subclasses set ``spec`` and define ``__call__``."""

    spec: eqx.AbstractVar[object]

    def __call__(self, z, subject: SubjectData) -> tuple[Float[Array, " n_obs"],
                                                          Int[Array, ""]]:
        raise NotImplementedError

    def init_z(self, subject: SubjectData) -> Float[Array, " n_z"]:
        """The reference start of a subject (start 0 of the multi-start)."""
        del subject
        return self.spec.reference_z()

    def free_mask(self, subject: SubjectData) -> Bool[Array, " n_z"]:
        """Which elements of ``z`` are estimated for this subject (default: all). The
        others stay at ``init_z`` and the prediction must not depend on them."""
        del subject
        return jnp.ones((self.spec.size,), bool)

    def log_pred_jacobian(self, z, subject) -> tuple | None:
        """``(log V, status, d log V / d z)`` computed by the predictor itself, or None
        (the default): the jacfwd evaluator then differentiates ``__call__`` forward. A
        predictor with a cheaper Jacobian of its own overrides it (a group fit's,
        scattered from its curves')."""
        del z, subject
        return None


class FunctionPredictor(AbstractPredictor):
    """Wrap ``fn(z, subject) -> (log_volume_mm3, status)`` and a spec (or ``len(z)``).

    ``init(subject) -> z`` optionally gives each subject's reference start.

    ```python
    def exponential(z, s):       # log V = log V0 + r (t - t0)
        return z[0] + jnp.exp(z[1]) * (s.day - s.t0_day), jnp.asarray(0)
    pred = FunctionPredictor(exponential, 2,
                             init=lambda s: jnp.array([jnp.log(s.volume_mm3[0]), -2.0]))
    ```
    """

    fn: Callable = eqx.field(static=True)
    spec: object
    init: Callable | None = eqx.field(static=True, default=None)

    def __init__(self, fn, spec, init=None):
        self.fn = fn
        self.spec = as_spec(spec)
        self.init = init

    def __call__(self, z, subject):
        log_v, status = self.fn(z, subject)
        return log_v, jnp.asarray(status, jnp.int32)

    def init_z(self, subject):
        if self.init is None:
            return AbstractPredictor.init_z(self, subject)
        return jnp.asarray(self.init(subject), dtype=float)


class CSCPredictor(AbstractPredictor):
    """The CSC model as a predictor; build it with `csc_predictor`."""

    model: ModelConfig
    spec: ParamSpec
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    v0_from_data: bool = eqx.field(static=True)  # V0 fixed at the first observation

    def params(self, z, subject):
        """The `CSCParams` of ``z`` for ``subject`` (its V0 pinned to its first
        observation when the predictor says so)."""
        params = self.spec.from_z(z)
        if self.v0_from_data:
            params = eqx.tree_at(lambda p: p.initial_volume_mm3, params,
                                 jnp.asarray(subject.first_volume_mm3, dtype=float))
        return params

    def __call__(self, z, subject):
        sol = simulate(self.model, self.params(z, subject), subject.schedule, subject.day,
                       t0=subject.t0_day, rtol=self.rtol, atol=self.atol,
                       max_steps=self.max_steps, adjoint="forward", throw=False)
        v = sol.volume_mm3
        # a non-positive volume (failed or overshooting solve) is reported, not logged
        ok = jnp.all(jnp.where(subject.mask, v > 0, True))
        status = jnp.where((sol.status == 0) & ~ok, 3, sol.status)
        return jnp.log(jnp.where(v > 0, v, 1.0)), status

    def init_z(self, subject):
        ref = self.spec.reference
        if "initial_volume_mm3" in self.spec.free:
            ref = eqx.tree_at(lambda p: p.initial_volume_mm3, ref,
                              jnp.asarray(subject.first_volume_mm3, dtype=float))
        return self.spec.to_z(ref)


def csc_predictor(
    model: ModelConfig,
    spec: ParamSpec,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-6,
    max_steps: int = 512,
) -> CSCPredictor:
    """The CSC model (`fitcsc.simulate`) as a predictor for `fit_map` and `profile`.

    The initial volume is per subject: unless ``spec`` names ``initial_volume_mm3``,
    it is added as free (`Positive`), and every free ``initial_volume_mm3`` starts at
    the subject's first observation (the detection limit if that one is censored).
    ``initial_volume_mm3: Fixed()`` (no value) pins it to the first observation;
    ``Fixed(v)`` to ``v``. Each subject is simulated from its ``t0_day`` with forward-
    mode sensitivities (``adjoint="forward"``) and ``throw=False``.

    **Arguments:**
    - `model`: a `ModelConfig`; `spec`: a `ParamSpec` over `CSCParams`.
    - `rtol`, `atol`: ODE solver tolerances (atol in cells).
    - `max_steps`: solver step cap per segment; under vmap every member waits for the
      slowest, so keep it low: a member that reaches it gets a failure status.

    **Returns:** a `CSCPredictor`, whose ``spec`` is the (completed) spec fitted.

    ```python
    model = fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab",))
    spec = fitcsc.ParamSpec({"csc_division_rate": fitcsc.Positive()},
                            fitcsc.default_params(model))
    pred = fitcsc.csc_predictor(model, spec)   # free: csc_division_rate, V0
    ```
    """
    transforms = dict(spec.transforms)
    tr_v0 = transforms.setdefault("initial_volume_mm3", Positive())
    v0_from_data = isinstance(tr_v0, Fixed) and tr_v0.value is None
    return CSCPredictor(model=model, spec=ParamSpec(transforms, spec.reference),
                        rtol=float(rtol), atol=float(atol), max_steps=int(max_steps),
                        v0_from_data=v0_from_data)
