"""Population (NLME) models of tumour-volume curves, written in NumPyro, ODE inside.

A `PopulationModel` lifts a per-curve predictor (`csc_predictor`, `baseline_predictor`,
any `AbstractPredictor`) to a hierarchical model over all curves of a `SubjectBatch`.
In the predictor's unconstrained space (log for `Positive`, logit for `Interval`),
curve ``c``'s parameter ``j`` is

    z[c, j] = beta[fe(c, j)] + sum over levels l of omega_l[j] * eta_l[g_l(c), j]

- *fixed effects* ``beta``: one per label (``"shared"``), one per arm and label
  (``"arm"``), or one per pool of arms (``{arm: pool}``, e.g. every arm whose curves
  start before treatment in one pool); per-drug parameters (``kill_rate[1]``) are their
  own labels, so arms that share a drug share its effect. A label that an arm does not
  use (``uses``) keeps the predictor's reference value there.
- *random effects*, non-centred: ``eta_l ~ Normal(0, 1)`` per group of level ``l``
  (``"animal"``: one group per curve; ``"line"``: the curves of a PDX line, ...), scaled
  by ``omega_l ~ HalfNormal``; so a positive parameter is log-normal between animals
  or lines, an interval one logit-normal. At a *zero-sum* level (``zero_sum``) the
  groups' effects of each label sum to zero: ``eta_l = sqrt(n / (n - 1)) Q u`` with
  ``u ~ Normal(0, I_(n-1))`` and ``Q`` an orthonormal basis of the vectors that sum to
  zero (`zero_sum_basis`), so each ``eta`` is still marginally ``Normal(0, 1)`` (their
  correlation ``-1 / (n - 1)``) and the fixed effect is the groups' mean: the common
  shift of a typical value against all of its groups' effects, which only the prior
  sets otherwise, is gone (Stan's ``sum_to_zero_vector``).
- priors ``beta ~ Normal(prior_loc, prior_scale)`` (in ``z``), ``sigma ~ HalfNormal``.
- the likelihood: log-normal volumes with M3 censoring (`fitcsc.log_likelihood`).

A failed ODE solve of any curve makes the log density ``-inf`` (a divergent transition
for NUTS), never an exception and never a NaN gradient. Gradients are reverse-mode of
the log density, but each curve's Jacobian is forward-mode (`jax.jacfwd` over its few
parameters, `diffrax.ForwardMode`): a `jax.custom_vjp` hands ``J^T g`` back.

```python
pred = fitcsc.csc_predictor(model, spec)
pop = fitcsc.population_model(pred, batch, fixed={"her2_efficacy_csc": "arm"},
                              random={"animal": ("csc_division_rate", "initial_volume_mm3")})
z = pop.space.to_z(pop.init_values())
pop.log_density(z)              # scalar; numpyro.infer.util.log_density of pop.model
post = fitcsc.sample(pop.log_density, z, num_chains=4)
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, Int
from numpyro.infer.util import log_density as _numpyro_log_density

from .._model.transforms import Positive, Real
from .evaluators import paced_log_pred
from .likelihood import log_likelihood_from_log
from .predictors import AbstractPredictor, CSCPredictor, SubjectData, subject_data

SEP = "|"  # fixed-effect labels: "<label>" (shared) or "<label>|<arm>"


class SiteSpace(eqx.Module):
    """A `fitcsc.ParameterSpace` over named array sites (a NumPyro model's latents).

    ``to_z`` takes and ``from_z`` returns ``{site: natural-scale array}``; each site has
    one transform for all its elements (`Real` or `Positive`).
    """

    sites: tuple = eqx.field(static=True)  # ((name, shape, transform, labels), ...)

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for _, shape, _, _ in self.sites)

    def labels(self) -> tuple[str, ...]:
        return tuple(lab for _, _, _, labels in self.sites for lab in labels)

    def _split(self, z):
        out, i = {}, 0
        for name, shape, tr, _ in self.sites:
            k = math.prod(shape)
            out[name] = (jnp.reshape(z[i:i + k], shape), tr)
            i += k
        return out

    def from_z(self, z) -> dict:
        return {n: tr.forward(u) for n, (u, tr) in self._split(z).items()}

    def to_z(self, values: Mapping) -> Array:
        return jnp.concatenate([jnp.ravel(tr.inverse(jnp.asarray(values[n], float)))
                                for n, _, tr, _ in self.sites])

    def natural(self, z) -> Array:
        return jnp.concatenate([jnp.ravel(v) for v in self.from_z(z).values()])

    def log_jacobian(self, z) -> Array:
        return sum(jnp.sum(tr.log_jacobian(u)) for u, tr in self._split(z).values())

    def element_transforms(self) -> tuple:
        return tuple(tr for _, shape, tr, _ in self.sites for _ in range(math.prod(shape)))

    def reference_z(self) -> Array:
        return jnp.zeros((self.size,))


def vmapped_jacobians(predictor, zc, curves):
    """Per curve ``(log V, status, d log V / d z)`` by `jax.jacfwd` of the predictor."""
    def one(z, c):
        def f(z_):
            lp, st = predictor(z_, c)
            return lp, (lp, st)

        J, (lp, st) = jax.jacfwd(f, has_aux=True)(z)
        return lp, st, J

    return jax.vmap(one)(zc, curves)


def _jacobians(predictor):
    """``(zc, curves) -> (log V, status, J)`` of every curve: the paced solver
    (`fitcsc._fit.evaluators.paced_log_pred`: each curve's ODE and sensitivities at its own
    pace) for the CSC model, else `jax.jacfwd` under `jax.vmap`. Under `jax.vmap` (chains,
    replications) the batch is flattened into more curves of one solve."""
    paced = isinstance(predictor, CSCPredictor) and not predictor.model.has_log_kill

    @jax.custom_batching.custom_vmap
    def jac(zc, curves):
        if paced:
            return paced_log_pred(predictor, zc, curves)[:3]
        return vmapped_jacobians(predictor, zc, curves)

    @jac.def_vmap
    def _rule(axis_size, in_batched, zc, curves):
        def full(x, batched):
            return x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

        args = jax.tree_util.tree_map(full, (zc, curves), tuple(in_batched))
        n = jnp.shape(args[0])[1]
        flat = jax.tree_util.tree_map(lambda x: x.reshape((-1, *x.shape[2:])), args)
        out = jac(*flat)
        return jax.tree_util.tree_map(lambda x: x.reshape((axis_size, n, *x.shape[1:])),
                                      out), (True, True, True)

    return jac


def forward_predict(predictor: AbstractPredictor, zc, curves: SubjectData, *,
                    jacobians=None):
    """``(log V (n_curves, n_obs), status (n_curves,))`` of every curve, whose reverse-mode
    derivative uses each curve's forward-mode Jacobian (zero for a failed curve).
    ``jacobians``: ``(zc, curves) -> (log V, status, J)`` (default `_jacobians`)."""
    jac = _jacobians(predictor) if jacobians is None else jacobians

    @jax.custom_vjp
    def predict(zc):
        lp, st, _ = jac(zc, curves)
        return lp, st

    def fwd(zc):
        lp, st, J = jac(zc, curves)
        good = (st == 0)[:, None, None] & jnp.isfinite(J)
        return (lp, st), jnp.where(good, J, 0.0)

    def bwd(J, g):
        return (jnp.einsum("co,cok->ck", g[0], J),)

    predict.defvjp(fwd, bwd)
    return predict(zc)


class PopulationModel(eqx.Module):
    """A hierarchical model over the curves of a batch; build it with `population_model`.

    ``model`` is the NumPyro model; ``space`` its `SiteSpace` (``beta``, then per level
    ``omega_<level>`` and ``eta_<level>``, then ``sigma``); ``log_density(z)`` the log
    posterior density of the flat ``z`` (log-Jacobian included). At a zero-sum level the
    site ``eta_<level>`` holds the ``n - 1`` basis coordinates ``u`` (labels
    ``eta_<level>[zero-sum k,<label>]``); `group_effects` gives the ``n`` groups'
    ``eta`` (what `derived` and the posterior outputs report).
    """

    predictor: AbstractPredictor
    curves: SubjectData  # leading axis n_curves
    z_ref: Float[Array, "n_curves n_z"]  # reference z of every curve (unused labels)
    fe_index: Int[Array, "n_curves n_z"]  # element of beta, -1: the reference
    group_index: tuple  # per level: (n_curves,) group of each curve
    re_mask: tuple  # per level: (n_curves, n_re) the curve's arm uses the label
    prior_loc: Float[Array, " n_fe"]
    prior_scale: Float[Array, " n_fe"]
    omega_scale: tuple  # per level: (n_re,)
    sigma_scale: float = eqx.field(static=True)
    levels: tuple[str, ...] = eqx.field(static=True)
    re_labels: tuple = eqx.field(static=True)  # per level: labels with a random effect
    re_columns: tuple = eqx.field(static=True)  # per level: their columns of z
    group_names: tuple = eqx.field(static=True)  # per level: group names
    fe_labels: tuple[str, ...] = eqx.field(static=True)
    fe_transforms: tuple = eqx.field(static=True)  # natural scale of each fixed effect
    labels: tuple[str, ...] = eqx.field(static=True)  # the predictor's labels
    subject: tuple[str, ...] = eqx.field(static=True)
    arm: tuple[str, ...] = eqx.field(static=True)
    arm_uses: tuple = eqx.field(static=True)  # ((arm, labels it estimates), ...)
    zero_sum: tuple = eqx.field(static=True, default=())  # per level: effects sum to zero

    @property
    def n_curves(self) -> int:
        return len(self.subject)

    @property
    def uses(self) -> dict[str, tuple[str, ...]]:
        """``{arm: labels}``: what the curves of each arm estimate."""
        return dict(self.arm_uses)

    def is_zero_sum(self, level: str) -> bool:
        """Whether the effects at ``level`` sum to zero over its groups."""
        return bool(self.zero_sum) and self.zero_sum[self.levels.index(level)]

    def _eta_rows(self, k: int) -> tuple[str, ...]:
        names = self.group_names[k]
        if self.is_zero_sum(self.levels[k]):
            return tuple(f"zero-sum {i}" for i in range(1, len(names)))
        return names

    def _zero_sum_map(self, level: str):
        """``(Q, s)`` of a zero-sum level: its basis and ``sqrt(n / (n - 1))``."""
        n = len(self.group_names[self.levels.index(level)])
        return jnp.asarray(zero_sum_basis(n)), math.sqrt(n / (n - 1))

    @property
    def space(self) -> SiteSpace:
        sites = [("beta", (len(self.fe_labels),), Real(),
                  tuple(f"beta[{lab}]" for lab in self.fe_labels))]
        for k, (lev, labs) in enumerate(zip(self.levels, self.re_labels, strict=True)):
            rows = self._eta_rows(k)
            sites.append((f"omega_{lev}", (len(labs),), Positive(),
                          tuple(f"omega_{lev}[{lab}]" for lab in labs)))
            sites.append((f"eta_{lev}", (len(rows), len(labs)), Real(),
                          tuple(f"eta_{lev}[{g},{lab}]" for g in rows for lab in labs)))
        sites.append(("sigma", (), Positive(), ("sigma",)))
        return SiteSpace(tuple(sites))

    def group_effects(self, values: Mapping, level: str):
        """``eta`` of every group at ``level``, ``(n_groups, n_re)``: the site itself, or
        at a zero-sum level ``sqrt(n / (n - 1)) Q u`` of its basis coordinates ``u``."""
        eta = values[f"eta_{level}"]
        if not self.is_zero_sum(level):
            return eta
        q, s = self._zero_sum_map(level)
        return s * (q @ eta)

    def basis_coordinates(self, level: str, eta):
        """The inverse of `group_effects` at a zero-sum level: ``u = Q^T eta /
        sqrt(n / (n - 1))`` (of ``eta`` minus its mean, if it does not sum to zero);
        ``eta`` itself at any other level."""
        if not self.is_zero_sum(level):
            return eta
        q, s = self._zero_sum_map(level)
        return q.T @ eta / s

    def site_values(self, values: Mapping) -> dict:
        """Site values from values with every group's ``eta`` (as `derived` reports them,
        e.g. read from a posterior): zero-sum levels go to their basis coordinates."""
        out = dict(values)
        for lev in self.levels:
            out[f"eta_{lev}"] = self.basis_coordinates(lev, jnp.asarray(values[f"eta_{lev}"]))
        return out

    def curve_z(self, values: Mapping) -> Float[Array, "n_curves n_z"]:
        """Each curve's ``z`` (for ``predictor``) from the site values."""
        beta = jnp.concatenate([values["beta"], jnp.zeros((1,))])
        z = jnp.where(self.fe_index >= 0, beta[self.fe_index], self.z_ref)
        for lev, cols, g, m in zip(self.levels, self.re_columns, self.group_index,
                                   self.re_mask, strict=True):
            dev = values[f"omega_{lev}"] * self.group_effects(values, lev)[g]  # (n_curves, n_re)
            z = z.at[:, jnp.asarray(cols, int)].add(jnp.where(m, dev, 0.0))
        return z

    def typical(self, beta) -> Float[Array, " n_fe"]:
        """Fixed effects on their natural scale (the typical curve's parameters)."""
        return jnp.stack([t.forward(beta[i]) for i, t in enumerate(self.fe_transforms)])

    def predict(self, values: Mapping):
        """``(log V (n_curves, n_obs), ok)``: predictions and whether every curve solved."""
        lp, st = forward_predict(self.predictor, self.curve_z(values), self.curves)
        ok = jnp.all(st == 0) & jnp.all(jnp.isfinite(lp))
        return jnp.where(jnp.isfinite(lp), lp, 0.0), ok

    def pointwise_log_likelihood(self, values: Mapping) -> Float[Array, "n_curves n_obs"]:
        """Per observation log densities (padding 0); ``-inf`` everywhere if a solve failed."""
        lp, ok = self.predict(values)
        c = self.curves
        per_obs, _ = log_likelihood_from_log(lp, jnp.log(c.volume_mm3), c.mask, c.censored,
                                             values["sigma"])
        return jnp.where(ok, per_obs, -jnp.inf)

    def model(self):
        """The NumPyro model (no arguments: the data live in the module)."""
        beta = numpyro.sample("beta", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
        values = {"beta": beta}
        for k, (lev, scale) in enumerate(zip(self.levels, self.omega_scale, strict=True)):
            values[f"omega_{lev}"] = numpyro.sample(
                f"omega_{lev}", dist.HalfNormal(scale).to_event(1))
            values[f"eta_{lev}"] = numpyro.sample(
                f"eta_{lev}", dist.Normal(0.0, 1.0).expand((len(self._eta_rows(k)),
                                                            scale.shape[0])).to_event(2))
        values["sigma"] = numpyro.sample("sigma", dist.HalfNormal(self.sigma_scale))
        lp, ok = self.predict(values)
        c = self.curves
        _, total = log_likelihood_from_log(lp, jnp.log(c.volume_mm3), c.mask, c.censored,
                                           values["sigma"])
        numpyro.factor("log_likelihood", jnp.where(ok, total, -jnp.inf))

    def log_density(self, z: Float[Array, " n"]) -> Float[Array, ""]:
        """Log posterior density of the flat ``z`` (`space`), log-Jacobian included."""
        space = self.space
        lp, _ = _numpyro_log_density(self.model, (), {}, space.from_z(z))
        return lp + space.log_jacobian(z)

    def sample_prior(self, key, n: int) -> dict:
        """``n`` draws of every site from the prior, ``{site: (n, ...)}``."""
        pred = numpyro.infer.Predictive(self.model, num_samples=int(n),
                                        return_sites=[s[0] for s in self.space.sites])
        return {k: v for k, v in pred(key).items()}

    def simulate_volumes(self, key, values: Mapping) -> Float[Array, "n_curves n_obs"]:
        """Replicate volumes [mm3] at the observation times: log-normal around the
        prediction (posterior or prior predictive, one draw of the sites)."""
        lp, ok = self.predict(values)
        eps = jax.random.normal(key, lp.shape)
        return jnp.where(ok, jnp.exp(lp + values["sigma"] * eps), jnp.nan)

    def derived(self, z: Float[Array, " n"], key) -> dict:
        """What a posterior draw ``z`` implies (no derivatives: one plain solve per curve):
        the sites (natural scale; ``eta_<level>`` of every group, `group_effects`),
        ``typical`` (fixed effects, natural scale), ``theta``
        (each curve's parameters, natural scale, ``(n_curves, n_z)``), ``log_volume``
        (predicted, ``(n_curves, n_obs)``), ``log_likelihood`` (per observation, -inf
        everywhere if a solve failed) and ``volume_rep`` (a replicate of the data)."""
        values = self.space.from_z(z)
        zc = self.curve_z(values)
        lp, st = jax.vmap(self.predictor)(zc, self.curves)
        ok = jnp.all(st == 0) & jnp.all(jnp.isfinite(lp))
        lp = jnp.where(jnp.isfinite(lp), lp, 0.0)
        c = self.curves
        ll, _ = log_likelihood_from_log(lp, jnp.log(c.volume_mm3), c.mask, c.censored,
                                        values["sigma"])
        eps = jax.random.normal(key, lp.shape)
        natural = getattr(self.predictor.spec, "natural", lambda z_: z_)
        return {**values, **{f"eta_{lev}": self.group_effects(values, lev)
                             for lev in self.levels},
                "typical": self.typical(values["beta"]),
                "theta": jax.vmap(natural)(zc), "log_volume": jnp.where(ok, lp, jnp.nan),
                "log_likelihood": jnp.where(ok, ll, -jnp.inf),
                "volume_rep": jnp.where(ok, jnp.exp(lp + values["sigma"] * eps), jnp.nan)}

    def init_values(self, curve_z=None, sigma=None) -> dict:
        """A start for the sampler from per-curve estimates ``curve_z`` (``(n_curves,
        n_z)``, e.g. `fit_map`'s ``z``; default: the references): each fixed effect the
        mean of its curves, each omega the SD of the deviations (within 0.05 and its prior
        scale), each eta
        the groups' mean deviation over omega (clipped to +-3; at a zero-sum level less
        their mean, in basis coordinates), sigma as given (0.2).
        Labels with NaN in ``curve_z`` (not estimated) start at the prior means."""
        zc = np.asarray(self.z_ref if curve_z is None else curve_z, float)
        fe = np.asarray(self.fe_index)
        beta = np.asarray(self.prior_loc, float).copy()
        for i in range(len(self.fe_labels)):
            if np.isfinite(zc[fe == i]).any():
                beta[i] = np.nanmean(zc[fe == i])
        zc = np.where(np.isfinite(zc), zc, np.append(beta, 0.0)[fe])
        resid = zc - np.where(fe >= 0, np.append(beta, 0.0)[fe], zc)
        values = {"beta": beta, "sigma": 0.2 if sigma is None else float(sigma)}
        for lev, cols, g, m, names, scale in zip(self.levels, self.re_columns,
                                                 self.group_index, self.re_mask,
                                                 self.group_names, self.omega_scale,
                                                 strict=True):
            g, m = np.asarray(g), np.asarray(m)
            r = resid[:, list(cols)]
            eta = np.zeros((len(names), len(cols)))
            for k in range(len(names)):
                sel = (g == k)[:, None] & m
                eta[k] = np.where(sel.any(0), (r * sel).sum(0) / np.maximum(sel.sum(0), 1), 0)
            # the spread of the curves' estimates, within (0.05, the prior scale): poorly
            # determined curves spread far more than the animals do
            omega = np.clip(np.sqrt((eta ** 2).mean(0)), 0.05, np.asarray(scale))
            values[f"omega_{lev}"] = omega
            eta = np.clip(eta / omega, -3.0, 3.0)
            if self.is_zero_sum(lev):  # the nearest effects that sum to zero
                eta = eta - eta.mean(0)
                values[f"eta_{lev}"] = np.asarray(self.basis_coordinates(lev, eta))
            else:
                values[f"eta_{lev}"] = eta
            resid[:, list(cols)] -= np.where(m, omega * eta[g], 0.0)
        return {k: jnp.asarray(v, float) for k, v in values.items()}


def _transform_of(spec, label: str):
    trs = getattr(spec, "transforms", ())
    lookup = dict(trs) if trs and isinstance(trs[0], tuple) else dict(
        zip(getattr(spec, "free", ()), trs, strict=False))
    return lookup.get(label.split("[")[0], Real())


def population_model(
    predictor: AbstractPredictor,
    batch,
    *,
    fixed: Mapping[str, str | Mapping[str, str]] | None = None,
    random: Mapping[str, Sequence[str]] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    uses: Mapping[str, Sequence[str]] | None = None,
    prior_loc: Mapping[str, float] | None = None,
    prior_scale: Mapping[str, float] | float = 1.0,
    omega_scale: Mapping[str, float] | float = 0.5,
    sigma_scale: float = 0.5,
    z_ref=None,
    zero_sum: Sequence[str] = (),
) -> PopulationModel:
    """A hierarchical model of the curves of ``batch`` (see the module docstring).

    **Arguments:**
    - `predictor`: the per-curve predictor; its ``spec.labels()`` name the parameters.
    - `batch`: a `SubjectBatch` (one curve per subject).
    - `fixed`: ``{label: "shared" | "arm" | {arm: pool}}`` for the estimated labels
      (default: every label of the predictor, shared). A ``{arm: pool}`` dict names every
      arm that uses the label; arms in one pool share one fixed effect, labelled
      ``"<label>|<pool>"`` as an arm's. Labels left out are fixed at the reference.
    - `random`: ``{level: labels}`` random effects; level ``"animal"`` has one group per
      curve, other levels need `groups`.
    - `groups`: ``{level: one group name per subject}`` (e.g. the PDX line); a subject
      whose group is None has no effect at that level (e.g. a level of its own for the
      initial volumes of the curves that start before treatment).
    - `uses`: ``{arm: labels}``: what the curves of an arm estimate (default: all). A
      fixed or random effect of a label an arm does not use leaves it at the reference.
    - `prior_loc`: ``{label or field: z}`` prior means of the fixed effects (default: the mean
      reference ``z`` of the curves, e.g. the log of the first volumes for V0).
    - `prior_scale`: prior SD in ``z`` (one number, or ``{label or field: sd}``;
      default 1).
    - `omega_scale`: HalfNormal scale of the random-effect SDs (one number, or a dict
      keyed by ``"level|label"``, ``"level|field"`` or ``level``; default 0.5).
    - `sigma_scale`: HalfNormal scale of the log-volume error SD.
    - `z_ref`: ``(n_curves, n_z)`` reference ``z`` (default ``predictor.init_z`` per curve).
    - `zero_sum`: levels of `random` whose effects sum to zero over the level's groups,
      per label (see the module docstring). Every group there needs a curve that uses
      each of the level's labels, and there must be two groups or more; a fixed effect
      of such a label is then the mean of the groups' values (in ``z``) when it covers
      exactly the level's curves.

    **Returns:** a `PopulationModel`.

    **Raises:** `ValueError` (one line) for an unknown label, level, arm or kind.
    """
    labels = tuple(predictor.spec.labels())
    col = {lab: j for j, lab in enumerate(labels)}
    fixed = {lab: "shared" for lab in labels} if fixed is None else dict(fixed)
    random = {} if random is None else {k: tuple(v) for k, v in random.items()}
    groups = {} if groups is None else dict(groups)
    arms = tuple(batch.arm)
    use = {a: set(labels) for a in arms}
    if uses is not None:
        for a in use:
            use[a] = set(uses.get(a, ()))
    for where, labs in [("fixed", fixed), *((f"random[{k!r}]", v) for k, v in random.items()),
                        *((f"uses[{a!r}]", v) for a, v in use.items())]:
        bad = [lab for lab in labs if lab not in col]
        if bad:
            raise ValueError(f"population_model: {where} names unknown parameter(s) {bad}; "
                             f"the predictor's are {list(labels)}")
    arm_names = tuple(dict.fromkeys(arms))
    pool = {}  # label: {arm using it: key of its fixed effect}
    for lab, kind in fixed.items():
        if isinstance(kind, Mapping):
            missing = [a for a in arm_names if lab in use[a] and a not in kind]
            if missing:
                raise ValueError(f"population_model: fixed[{lab!r}] pools arms but names no "
                                 f"pool for arm(s) {missing}")
            if any(not str(k) for k in kind.values()):
                raise ValueError(f"population_model: fixed[{lab!r}] names an empty pool; "
                                 f"pool names label their fixed effects ('<label>|<pool>')")
            pool[lab] = {a: str(kind[a]) for a in arm_names if lab in use[a]}
        elif kind in ("shared", "arm"):
            pool[lab] = {a: ("" if kind == "shared" else a) for a in arm_names
                         if lab in use[a]}
        else:
            raise ValueError(f"population_model: fixed[{lab!r}] must be 'shared', 'arm' or "
                             f"a dict {{arm: pool}}, got {kind!r}")
    data = subject_data(batch)
    n = batch.n_subjects
    zr = np.asarray(jax.vmap(predictor.init_z)(data) if z_ref is None else z_ref, float)
    if zr.shape != (n, len(labels)):
        raise ValueError(f"population_model: z_ref must have shape {(n, len(labels))}, "
                         f"got {zr.shape}")

    fe_labels, fe_index = [], np.full((n, len(labels)), -1)
    for lab in fixed:
        keys = [""] if fixed[lab] == "shared" else list(dict.fromkeys(pool[lab].values()))
        for key in keys:
            i = len(fe_labels)
            fe_labels.append(lab + (SEP + key if key else ""))
            rows = [c for c in range(n) if lab in use[arms[c]] and pool[lab][arms[c]] == key]
            fe_index[rows, col[lab]] = i
    loc, scale = [], []
    for i, name in enumerate(fe_labels):
        lab = name.split(SEP)[0]
        sel = fe_index[:, col[lab]] == i
        default = float(zr[sel, col[lab]].mean()) if sel.any() else 0.0
        loc.append(_lookup(prior_loc or {}, lab, default))
        scale.append(_lookup(prior_scale, lab, 1.0))

    levels, g_index, masks, re_labels, re_cols, names, om = [], [], [], [], [], [], []
    for lev, labs in random.items():
        if lev == "animal":
            per = list(batch.subject)
        elif lev in groups:
            per = [None if x is None else str(x) for x in groups[lev]]
            if len(per) != n:
                raise ValueError(f"population_model: groups[{lev!r}] has {len(per)} "
                                 f"entries, expected one per subject ({n})")
        else:
            raise ValueError(f"population_model: random effects at level {lev!r} need "
                             f"groups[{lev!r}] (one group name per subject)")
        gn = tuple(dict.fromkeys(p for p in per if p is not None))
        levels.append(lev)
        g_index.append(jnp.asarray([0 if p is None else gn.index(p) for p in per], int))
        masks.append(jnp.asarray([[lab in use[a] and p is not None for lab in labs]
                                  for a, p in zip(arms, per, strict=True)]))
        re_labels.append(tuple(labs))
        re_cols.append(tuple(col[lab] for lab in labs))
        names.append(gn)
        om.append(jnp.asarray([_lookup(omega_scale, lab, 0.5, level=lev) for lab in labs],
                              float))

    zero_sum = tuple(zero_sum)
    unknown = [lev for lev in zero_sum if lev not in levels]
    if unknown:
        raise ValueError(f"population_model: zero_sum names level(s) {unknown} without "
                         f"random effects; the levels are {levels}")
    for lev in zero_sum:
        k = levels.index(lev)
        m, g = np.asarray(masks[k]), np.asarray(g_index[k])
        if len(names[k]) < 2:
            raise ValueError(f"population_model: zero_sum level {lev!r} has "
                             f"{len(names[k])} group(s); effects that sum to zero need 2 "
                             f"or more")
        for j, lab in enumerate(re_labels[k]):
            idle = [gn for i, gn in enumerate(names[k]) if not m[g == i, j].any()]
            if idle:
                raise ValueError(f"population_model: zero_sum level {lev!r}: group(s) "
                                 f"{idle[:3]} have no curve that uses {lab!r}, so their "
                                 f"effects cannot share its sum")

    return PopulationModel(
        predictor=predictor, curves=data, z_ref=jnp.asarray(zr),
        fe_index=jnp.asarray(fe_index), group_index=tuple(g_index), re_mask=tuple(masks),
        prior_loc=jnp.asarray(loc, float), prior_scale=jnp.asarray(scale, float),
        omega_scale=tuple(om), sigma_scale=float(sigma_scale), levels=tuple(levels),
        re_labels=tuple(re_labels), re_columns=tuple(re_cols), group_names=tuple(names),
        fe_labels=tuple(fe_labels),
        fe_transforms=tuple(_transform_of(predictor.spec, lab.split(SEP)[0])
                            for lab in fe_labels),
        labels=labels, subject=tuple(batch.subject), arm=arms,
        arm_uses=tuple((a, tuple(lab for lab in labels if lab in use[a])) for a in use),
        zero_sum=tuple(lev in zero_sum for lev in levels))


def zero_sum_basis(n: int) -> np.ndarray:
    """``(n, n - 1)``: an orthonormal basis of the vectors of length ``n`` that sum to
    zero (Helmert's: column ``k`` is ``(1, ..., 1, -k, 0, ..., 0) / sqrt(k (k + 1))``
    with ``k`` ones)."""
    if n < 2:
        raise ValueError(f"zero_sum_basis: needs n >= 2, got {n}")
    q = np.zeros((n, n - 1))
    for k in range(1, n):
        q[:k, k - 1] = 1.0
        q[k, k - 1] = -float(k)
        q[:, k - 1] /= math.sqrt(k * (k + 1))
    return q


def _lookup(table, label: str, default: float, level: str | None = None) -> float:
    """A prior setting: one number, or a dict keyed by ``label`` (``kill_rate[1]``), its
    field (``kill_rate``), ``level|label``, ``level|field`` or ``level``."""
    if not isinstance(table, Mapping):
        return float(table)
    field = label.split("[")[0]
    keys = [label, field] if level is None else [f"{level}{SEP}{label}", f"{level}{SEP}{field}",
                                                 level]
    return float(next((table[k] for k in keys if k in table), default))



def posterior_derived(pop: PopulationModel, z, key, *, batch: int = 200) -> dict:
    """`PopulationModel.derived` of every draw ``z`` ``(chains, draws, d)``, as NumPy arrays
    with leading axes ``(chains, draws)`` (computed ``batch`` draws per compiled call; the
    last chunk padded, so nothing recompiles)."""
    z = np.asarray(z, float)
    c, d = z.shape[:2]
    flat = z.reshape(c * d, -1)
    n = flat.shape[0]
    size = min(int(batch), n)
    pad = (-n) % size
    flat = np.concatenate([flat, np.repeat(flat[-1:], pad, axis=0)]) if pad else flat
    keys = jax.random.split(key, flat.shape[0])
    f = jax.jit(jax.vmap(pop.derived))
    parts = [jax.device_get(f(jnp.asarray(flat[i:i + size]), keys[i:i + size]))
             for i in range(0, flat.shape[0], size)]
    return {k: np.concatenate([p[k] for p in parts])[:n].reshape(c, d, *parts[0][k].shape[1:])
            for k in parts[0]}
