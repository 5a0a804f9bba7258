"""Static parameter-transform specs: constrained parameters <-> unconstrained ``z``.

A `ParamSpec` says, per `CSCParams` field, how it maps to the real line:
`Positive` (log), `Interval` (scaled logit), `Real` (identity) or `Fixed` (not in
``z``). Fields not named are fixed at the reference values. The spec's structure is
static metadata (changing it recompiles); the reference values are traced (changing
them never does). Optimisers and samplers only see the flat vector ``z``; samplers
add `ParamSpec.log_jacobian`.

```python
spec = fitcsc.ParamSpec(
    {"csc_division_rate": fitcsc.Positive(), "self_renewal": fitcsc.Interval(0.5, 1.0)},
    reference=params,
)
z = spec.to_z(params)
params2, log_jac = spec.from_z(z, with_log_jacobian=True)
```

Every parameter space that a sampler or optimiser can work in (a `ParamSpec`, a
baseline's `NamedSpec`, a population model's `SiteSpace`, the trial model's space)
implements `ParameterSpace`: ``size``, ``labels()``, ``to_z``, ``from_z``, ``natural``,
``log_jacobian``, ``element_transforms()`` and ``reference_z()``; the engine reads a
space through these only (no attribute probing). A density written on the natural
scale becomes a density of ``z`` by adding ``log_jacobian(z)`` (`fitcsc.z_log_density`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp


@runtime_checkable
class ParameterSpace(Protocol):
    """A model's parameters as a flat unconstrained vector ``z`` (static structure).

    - ``size``: the length of ``z`` (an int property).
    - ``labels()``: one distinct string per element of ``z``, in order.
    - ``to_z(values)``: the model's own parameter object (a `CSCParams`, a dict of
      natural-scale values, ...) -> ``z`` of shape ``(size,)``.
    - ``from_z(z)``: ``z`` -> the model's parameter object (inverse of ``to_z``).
    - ``natural(z)``: the free parameters on their natural scale, flat, shape
      ``(size,)``, in the order of ``labels()``.
    - ``log_jacobian(z)``: ``log |d natural / d z|`` (a scalar): add it to a log density
      written on the natural scale to sample in ``z``.
    - ``element_transforms()``: one transform (`Positive`, `Interval` or `Real`) per
      element of ``z``, so that ``natural(z)[i] == element_transforms()[i].forward(z[i])``
      (profile grids and group fits map natural values to ``z`` through it).
    - ``reference_z()``: the reference ``z`` (start 0 of a multi-start fit; zeros where a
      space has no reference).

    The four functions of ``z`` are pure JAX (jit, vmap and grad through them).
    """

    @property
    def size(self) -> int: ...

    def labels(self) -> tuple[str, ...]: ...

    def to_z(self, values: Any) -> jax.Array: ...

    def from_z(self, z: jax.Array) -> Any: ...

    def natural(self, z: jax.Array) -> jax.Array: ...

    def log_jacobian(self, z: jax.Array) -> jax.Array: ...

    def element_transforms(self) -> tuple: ...

    def reference_z(self) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Positive:
    """``x = exp(z)``; x > 0."""

    def forward(self, z):
        return jnp.exp(z)

    def inverse(self, x):
        return jnp.log(x)

    def log_jacobian(self, z):
        return z


@dataclasses.dataclass(frozen=True)
class Interval:
    """``x = lo + (hi - lo) sigmoid(z)``; lo < x < hi."""

    lo: float
    hi: float

    def __post_init__(self):
        if not self.lo < self.hi:
            raise ValueError(f"Interval needs lo < hi, got ({self.lo}, {self.hi})")

    def forward(self, z):
        return self.lo + (self.hi - self.lo) * jax.nn.sigmoid(z)

    def inverse(self, x):
        u = (x - self.lo) / (self.hi - self.lo)
        return jnp.log(u) - jnp.log1p(-u)

    def log_jacobian(self, z):
        return jnp.log(self.hi - self.lo) + jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z)


@dataclasses.dataclass(frozen=True)
class Real:
    """``x = z``."""

    def forward(self, z):
        return z

    def inverse(self, x):
        return x

    def log_jacobian(self, z):
        return jnp.zeros_like(z)


@dataclasses.dataclass(frozen=True)
class Fixed:
    """Not estimated: the reference value, or ``value`` if given."""

    value: float | None = None


def elementwise_natural(transforms: tuple, z):
    """``z`` on the natural scale, element ``i`` through ``transforms[i]``."""
    if not transforms:
        return jnp.zeros((0,), jnp.result_type(z))
    return jnp.stack([t.forward(z[i]) for i, t in enumerate(transforms)])


def elementwise_to_z(transforms: tuple, values):
    """Natural values (shape ``(len(transforms),)``) -> ``z``, element by element."""
    x = jnp.asarray(values, dtype=float)
    if not transforms:
        return jnp.zeros((0,))
    return jnp.stack([t.inverse(x[i]) for i, t in enumerate(transforms)])


def elementwise_log_jacobian(transforms: tuple, z):
    """``log |d natural / d z|`` of `elementwise_natural` (a scalar)."""
    return sum((t.log_jacobian(z[i]) for i, t in enumerate(transforms)),
               jnp.zeros((), jnp.result_type(z)))


class ParamSpec(eqx.Module):
    """Which `CSCParams` fields are estimated, and through which transform."""

    transforms: tuple = eqx.field(static=True)  # ((field_name, transform), ...)
    reference: eqx.Module  # CSCParams holding fixed values and shapes

    def __init__(self, transforms: dict, reference):
        fields = {f.name for f in dataclasses.fields(reference)} - {"pk"}
        for name, tr in transforms.items():
            if name not in fields:
                raise ValueError(f"ParamSpec: {name!r} is not a CSCParams array field")
            if not isinstance(tr, (Positive, Interval, Real, Fixed)):
                raise TypeError(f"ParamSpec: transform for {name!r} must be Positive, "
                                f"Interval, Real or Fixed, got {tr!r}")
        self.transforms = tuple(transforms.items())
        self.reference = reference

    @property
    def free(self) -> tuple[str, ...]:
        """Names of the estimated fields, in the order they appear in ``z``."""
        return tuple(n for n, t in self.transforms if not isinstance(t, Fixed))

    def sizes(self) -> tuple[int, ...]:
        return tuple(int(jnp.size(getattr(self.reference, n))) for n in self.free)

    @property
    def size(self) -> int:
        """Length of ``z``."""
        return sum(self.sizes())

    def labels(self) -> tuple[str, ...]:
        """One label per element of ``z`` (``name`` or ``name[i]`` for per-drug fields)."""
        out = []
        for n, k in zip(self.free, self.sizes(), strict=True):
            if jnp.ndim(getattr(self.reference, n)) == 0:
                out.append(n)
            else:
                out += [f"{n}[{i}]" for i in range(k)]
        return tuple(out)

    def to_z(self, params) -> jax.Array:
        """Constrained `CSCParams` -> unconstrained vector ``z`` of length `size`."""
        tr = dict(self.transforms)
        parts = [jnp.ravel(tr[n].inverse(getattr(params, n))) for n in self.free]
        return jnp.concatenate(parts) if parts else jnp.zeros((0,))

    def from_z(self, z, *, with_log_jacobian: bool = False):
        """Unconstrained ``z`` -> `CSCParams` (and the log-Jacobian if asked)."""
        tr = dict(self.transforms)
        params = self.reference
        log_jac = jnp.zeros((), dtype=z.dtype)
        i = 0
        names, values = [], []
        for n, t in self.transforms:
            ref = getattr(self.reference, n)
            if isinstance(t, Fixed):
                if t.value is not None:
                    names.append(n)
                    values.append(jnp.full(jnp.shape(ref), t.value, dtype=float))
                continue
            k = int(jnp.size(ref))
            zi = jnp.reshape(z[i:i + k], jnp.shape(ref))
            i += k
            names.append(n)
            values.append(tr[n].forward(zi))
            log_jac = log_jac + jnp.sum(t.log_jacobian(zi))
        if names:
            params = eqx.tree_at(lambda p: [getattr(p, n) for n in names], params, values)
        return (params, log_jac) if with_log_jacobian else params

    def natural(self, z):
        """The free fields of ``from_z(z)``, flat, in the order of `labels`."""
        params = self.from_z(z)
        parts = [jnp.ravel(getattr(params, n)) for n in self.free]
        return jnp.concatenate(parts) if parts else jnp.zeros((0,), jnp.result_type(z))

    def log_jacobian(self, z):
        """``log |d params / d z|`` summed over free elements."""
        return self.from_z(z, with_log_jacobian=True)[1]

    def element_transforms(self) -> tuple:
        """One transform per element of ``z`` (a per-drug field repeats its own)."""
        tr = dict(self.transforms)
        return tuple(tr[n] for n, k in zip(self.free, self.sizes(), strict=True)
                     for _ in range(k))

    def reference_z(self):
        """``to_z`` of the reference values."""
        return self.to_z(self.reference)


class ElementwiseSpace(eqx.Module):
    """A `ParameterSpace` over named scalars, element ``i`` of ``z`` through
    ``transforms[i]`` (`Positive`, `Interval` or `Real`); ``to_z``/``from_z`` take and
    give the flat natural-scale array (a group fit's ``z``; the baselines' `NamedSpec`
    and the trial model's space give named values instead)."""

    names: tuple[str, ...] = eqx.field(static=True)
    transforms: tuple = eqx.field(static=True)
    reference: tuple = eqx.field(static=True, default=())  # reference z; () for zeros

    @property
    def free(self) -> tuple[str, ...]:
        return self.names

    @property
    def size(self) -> int:
        return len(self.names)

    def labels(self) -> tuple[str, ...]:
        return self.names

    def natural(self, z):
        """``z`` on the natural scale, shape ``(size,)``."""
        return elementwise_natural(self.transforms, z)

    def from_z(self, z):
        return self.natural(z)

    def to_z(self, values):
        return elementwise_to_z(self.transforms, values)

    def log_jacobian(self, z):
        """``log |d natural / d z|`` (see `ParameterSpace`)."""
        return elementwise_log_jacobian(self.transforms, z)

    def element_transforms(self) -> tuple:
        return self.transforms

    def reference_z(self):
        """``reference`` (as ``z``), or zeros where a predictor gives each curve (or group)
        its own start."""
        if self.reference:
            return jnp.asarray(self.reference, dtype=float)
        return jnp.zeros((self.size,))
