"""Baseline tumour-growth models, fitted per curve by the same engine as the CSC model.

Each baseline is a predictor (see `fitcsc._fit.predictors`): ``(z, subject) -> (log V, status)``,
so `fit_map` fits it exactly as it fits the CSC model and the curves can be compared
by AIC/BIC. With ``tau = t - t0``:

- ``"exponential"``: ``V = V0 exp(r tau)`` (r may be negative for a regressing curve).
- ``"logistic"``: ``V = K / (1 + (K/V0 - 1) exp(-r tau))``.
- ``"gompertz"``: ``V = K exp(ln(V0/K) exp(-b tau))``.
- ``"simeoni"``: the Simeoni et al. 2004 (Cancer Res 64:1094) tumour-growth-inhibition
  model: proliferating cells ``x1`` grow at ``lambda0 x1 / (1 + (lambda0 w /
  lambda1)^psi)^(1/psi)`` (exponential, then linear), psi = 20; drug exposure ``c(t)``
  moves them at rate ``k2 c`` into a chain of three damaged compartments that die at
  rate ``k1``; ``V = w = x1 + x2 + x3 + x4``. Exposure is 1 from the subject's first
  dose on (a constant effect, as for arms with no PK), 0 for an untreated subject.
"""

from __future__ import annotations

import types

import equinox as eqx
import jax.numpy as jnp

from .._model.transforms import ElementwiseSpace, Positive, Real, elementwise_to_z
from .._solve.simulate import integrate
from .predictors import AbstractPredictor, SubjectData

BASELINES = ("exponential", "logistic", "gompertz", "simeoni")
SIMEONI_PSI = 20.0


class NamedSpec(ElementwiseSpace):
    """A parameter spec over named scalars (for models outside `CSCParams`); a
    `fitcsc.ParameterSpace` whose ``from_z`` gives a namespace of natural values."""

    def from_z(self, z):
        return types.SimpleNamespace(**dict(zip(self.names, self.natural(z), strict=True)))

    def to_z(self, values):
        """Natural values (a dict, or the namespace `from_z` returns) -> ``z``."""
        values = values if isinstance(values, dict) else vars(values)
        return elementwise_to_z(self.transforms, jnp.stack(
            [jnp.asarray(values[n], dtype=float) for n in self.names]))

    def log_natural(self, z, name: str):
        """``log`` of the positive parameter ``name`` at ``z``, without overflow (``z``
        itself for a `Positive` transform)."""
        i = self.names.index(name)
        t = self.transforms[i]
        return z[i] if isinstance(t, Positive) else jnp.log(t.forward(z[i]))


_SPECS = {
    "exponential": (("initial_volume_mm3", Positive()), ("growth_rate", Real())),
    "logistic": (("initial_volume_mm3", Positive()), ("growth_rate", Positive()),
                 ("capacity_mm3", Positive())),
    "gompertz": (("initial_volume_mm3", Positive()), ("gompertz_rate", Positive()),
                 ("capacity_mm3", Positive())),
    "simeoni": (("initial_volume_mm3", Positive()), ("lambda0", Positive()),
                ("lambda1_mm3_per_day", Positive()), ("k1", Positive()), ("k2", Positive())),
}


class BaselinePredictor(AbstractPredictor):
    """One of `BASELINES` as a predictor; build it with `baseline_predictor`."""

    kind: str = eqx.field(static=True)
    spec: NamedSpec
    rtol: float = eqx.field(static=True, default=1e-8)
    atol: float = eqx.field(static=True, default=1e-9)
    max_steps: int = eqx.field(static=True, default=2048)

    def __call__(self, z, subject: SubjectData):
        p = self.spec.from_z(z)
        tau = subject.day - subject.t0_day
        ok = jnp.asarray(0, jnp.int32)
        if self.kind == "exponential":
            return jnp.log(p.initial_volume_mm3) + p.growth_rate * tau, ok
        if self.kind == "logistic":
            K, V0 = p.capacity_mm3, p.initial_volume_mm3
            return jnp.log(K) - jnp.log1p((K / V0 - 1.0) * jnp.exp(-p.growth_rate * tau)), ok
        if self.kind == "gompertz":
            # in logs of V0 and K, never K itself: a flat curve's fit runs K off to
            # infinity (an exponential limit), where log(V0 / K) differentiated
            # through K^2 gave a zero Jacobian column (from K > 1e154: the LM then
            # crawls) and exp(z) overflows (from K > 1e308: a NaN Jacobian)
            decay = -p.gompertz_rate * tau
            return (self.spec.log_natural(z, "initial_volume_mm3") * jnp.exp(decay)
                    - self.spec.log_natural(z, "capacity_mm3") * jnp.expm1(decay)), ok
        return self._simeoni(p, subject)

    def _simeoni(self, p, subject):
        sched = subject.schedule
        treated = jnp.any(sched.mask)
        start = jnp.min(jnp.where(sched.mask, sched.time_day, jnp.inf))
        start = jnp.where(treated, start, subject.day[-1] + 1.0)

        def f(t, y, args):
            x1, x2, x3, x4 = y
            w = jnp.sum(y)
            growth = p.lambda0 * x1 / (1.0 + (p.lambda0 * w / p.lambda1_mm3_per_day)
                                       ** SIMEONI_PSI) ** (1.0 / SIMEONI_PSI)
            kill = p.k2 * jnp.where(t >= start, 1.0, 0.0) * x1
            return jnp.stack([growth - kill, kill - p.k1 * x2, p.k1 * (x2 - x3),
                              p.k1 * (x3 - x4)])

        y0 = jnp.stack([p.initial_volume_mm3, 0.0, 0.0, 0.0])
        ys, status, _ = integrate(f, y0, subject.day, t0=subject.t0_day,
                                  jump_ts=jnp.atleast_1d(start), rtol=self.rtol,
                                  atol=self.atol, max_steps=self.max_steps,
                                  adjoint="forward")
        w = jnp.sum(ys, axis=-1)
        bad = jnp.any(jnp.where(subject.mask, w <= 0, False))
        status = jnp.where((status == 0) & bad, 3, status)
        return jnp.log(jnp.where(w > 0, w, 1.0)), status

    def init_z(self, subject: SubjectData):
        v = jnp.where(subject.mask, subject.volume_mm3, 0.0)
        v0 = subject.first_volume_mm3
        vmax = jnp.maximum(jnp.max(v), v0)
        start = {"initial_volume_mm3": v0, "growth_rate": 0.05, "capacity_mm3": 3.0 * vmax,
                 "gompertz_rate": 0.05, "lambda0": 0.1, "lambda1_mm3_per_day": 0.3 * vmax,
                 "k1": 0.5, "k2": 0.05}
        return self.spec.to_z(start)


def baseline_predictor(kind: str, *, rtol=1e-8, atol=1e-9, max_steps=2048):
    """The baseline ``kind`` (one of `BASELINES`) as a predictor for `fit_map`.

    ```python
    result = fitcsc.fit_map(fitcsc.baseline_predictor("gompertz"), batch, key=key)
    ```
    """
    if kind not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
    names, transforms = zip(*_SPECS[kind], strict=True)
    return BaselinePredictor(kind=kind, spec=NamedSpec(names, transforms), rtol=float(rtol),
                             atol=float(atol), max_steps=int(max_steps))
