"""Design-aware fits: parameters shared within a group of curves (e.g. a PDX line).

`fit_groups` fits all curves of a group together: one batch member is one group, whose
parameter vector ``z`` holds

- *shared* parameters, one value per group (e.g. the line's growth kinetics),
- *per-arm* parameters, one value per arm present in the group (e.g. a drug's effect in
  this line; replicate curves of an arm share it),
- *per-subject* parameters, one value per curve (e.g. the initial volume),

and whose residuals are those of all its curves, concatenated (one sigma per group).
Groups are padded to the same number of curves (padding curves have no observation) and
``z`` has one layout for every group: the union over groups. An element that a group
does not use (an arm it lacks, a padding curve, a shared parameter that none of its
curves informs) is *fixed* there: it stays at its reference, has a zero Jacobian column
and a NaN standard error. Everything else is `fit_map`'s engine: the one multi-start
Levenberg–Marquardt over groups and starts, a status per group, so one failing group
never changes another; the evaluator is `jax.jacfwd` (the group predictor assembles its
Jacobian from the curves').

Each curve is predicted by an ordinary per-curve predictor (e.g. `csc_predictor`) whose
``z`` is assembled from the group's ``z``. Its Jacobian is computed per curve with
respect to the few elements that curve reads, and scattered (a custom JVP), so a group
of 22 curves and 50 parameters costs 22 small forward-mode solves, not 22 x 50.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from .._model.transforms import ElementwiseSpace
from .._status import FitStatus
from .driver import (
    FitResult,
    fit_members,
    fit_optax,
    lm_options,
    prepare_fit,
    reference_starts,
    starts,
)
from .member import nll_from_log
from .predictors import AbstractPredictor, SubjectData, subject_data

SEP = "|"  # group-z labels: "<label>" (shared), "<label>|<arm>", "<label>|curve<k>"


def _flat(x):
    return x.reshape(*x.shape[:-2], -1)


class GroupData(eqx.Module):
    """One group's curves and how each reads the group's ``z`` (a batch member).

    With a leading group axis (from `GroupBatch.data`) it vmaps over groups. The
    likelihood sees the group's observations flattened: ``volume_mm3``, ``mask`` and
    ``censored`` have shape ``(n_curves * n_obs,)``.
    """

    curves: SubjectData  # leading axis n_curves; padding curves copy curve 0
    curve_mask: Bool[Array, " n_curves"]  # True: a real curve
    u_index: Int[Array, "n_curves n_read"]  # element of z read (n_z: nothing)
    spec_index: Int[Array, "n_curves n_read"]  # ...into this element of the curve's z
    free: Bool[Array, " n_z"]  # estimated in this group

    @property
    def volume_mm3(self):
        return _flat(self.curves.volume_mm3)

    @property
    def mask(self):
        return _flat(self.curves.mask & self.curve_mask[..., None])

    @property
    def censored(self):
        return _flat(self.curves.censored)


class GroupSpec(ElementwiseSpace):
    """The `fitcsc.ParameterSpace` of a group fit's ``z``: one label (``names``) and one
    transform per element (static); values are flat natural-scale arrays."""


class GroupPredictor(AbstractPredictor):
    """A per-curve predictor lifted to groups: ``(z, GroupData) -> (log V, status)``."""

    curve: AbstractPredictor
    spec: GroupSpec
    default_z: Array  # (n_z,) reference of elements that no curve of a group reads

    def _reference(self, g):
        """Per curve, its own reference ``z`` (``curve.init_z``), and the group's."""
        ref = jax.vmap(self.curve.init_z)(g.curves)  # (n_curves, n_local)
        n_z = self.spec.size
        w = jnp.where(g.curve_mask[:, None], 1.0, 0.0) * jnp.ones(g.u_index.shape)
        vals = jnp.take_along_axis(ref, jnp.minimum(g.spec_index, ref.shape[1] - 1), axis=1)
        total = jnp.zeros(n_z + 1).at[g.u_index].add(w * vals)[:n_z]
        count = jnp.zeros(n_z + 1).at[g.u_index].add(w)[:n_z]
        return ref, jnp.where(count > 0, total / jnp.maximum(count, 1.0), self.default_z)

    def init_z(self, g):
        return self._reference(g)[1]

    def free_mask(self, g):
        return g.free

    def _curve_z(self, u, spec_index, ref):
        ext = jnp.concatenate([ref, jnp.zeros((1,), ref.dtype)])
        return ext.at[spec_index].set(u)[:-1]

    def _reads(self, z, g):
        """Per curve: the elements of ``z`` it reads (fixed ones at the reference)."""
        ref, z_ref = self._reference(g)
        z = jnp.where(g.free, z, z_ref)
        u = jnp.concatenate([z, jnp.zeros((1,), z.dtype)])[g.u_index]
        return u, ref

    def curve_z(self, z, g):
        """Each curve's own ``z`` (for ``self.curve``), shape ``(n_curves, n_local)``."""
        u, ref = self._reads(z, g)
        return jax.vmap(self._curve_z)(u, g.spec_index, ref)

    def __call__(self, z, g):
        return _group_log_pred(z, self, g)

    def log_pred_jacobian(self, z, g):
        """``(log V, status, d log V / d z)``, the Jacobian ``(n_curves * n_obs, n_z)``
        scattered from per-curve ones; zero columns for fixed elements."""
        lp, st, J = _curves_jacobian(self, z, g)
        n_z = self.spec.size
        onehot = jax.nn.one_hot(g.u_index, n_z + 1, dtype=J.dtype)[..., :n_z]
        J_full = jnp.einsum("cok,ckz->coz", J, onehot) * g.free
        return lp.reshape(-1), _status(st, g.curve_mask), J_full.reshape(-1, n_z)


def _status(st, curve_mask):
    return jnp.max(jnp.where(curve_mask, st, 0)).astype(jnp.int32)


def _curves_jacobian(predictor, z, g):
    """Per curve: log predictions, status and the Jacobian with respect to the
    elements it reads, ``(n_curves, n_obs, n_read)`` (forward mode, n_read tangents)."""
    u, ref = predictor._reads(z, g)

    def one(u_c, sidx, ref_c, curve):
        def f(u_):
            lp, st = predictor.curve(predictor._curve_z(u_, sidx, ref_c), curve)
            return lp, (lp, st)

        J, (lp, st) = jax.jacfwd(f, has_aux=True)(u_c)
        return lp, st, J

    return jax.vmap(one)(u, g.spec_index, ref, g.curves)


@eqx.filter_custom_jvp
def _group_log_pred(z, predictor, g):
    zc = predictor.curve_z(z, g)
    lp, st = jax.vmap(predictor.curve)(zc, g.curves)
    return lp.reshape(-1), _status(st, g.curve_mask)


@_group_log_pred.def_jvp
def _group_log_pred_jvp(primals, tangents):
    z, predictor, g = primals
    t_z, *t_rest = tangents
    if t_z is None or jax.tree_util.tree_leaves(t_rest):  # not only z: plain JVP
        def fn(z_, p_, g_):
            zc = p_.curve_z(z_, g_)
            lp, st = jax.vmap(p_.curve)(zc, g_.curves)
            return lp.reshape(-1), _status(st, g_.curve_mask)

        t_all = jax.tree_util.tree_map(
            lambda t, p: t if t is not None else (
                jnp.zeros_like(p) if eqx.is_inexact_array(p) else None),
            list(tangents), list(primals), is_leaf=lambda x: x is None)
        return eqx.filter_jvp(fn, tuple(primals), tuple(t_all))

    lp, st, J = _curves_jacobian(predictor, z, g)
    t_free = jnp.concatenate([jnp.where(g.free, t_z, 0.0), jnp.zeros((1,), t_z.dtype)])
    t_lp = jnp.einsum("cok,ck->co", J, t_free[g.u_index])
    return (lp.reshape(-1), _status(st, g.curve_mask)), (t_lp.reshape(-1), None)


class GroupBatch(eqx.Module):
    """Curves arranged by group, with the layout of the group ``z`` (`group_batch`)."""

    data: GroupData  # leading axis n_groups
    curve_subject: Int[Array, "n_groups n_curves"]  # subject index in the batch, -1 padding
    entry_local: tuple[int, ...] = eqx.field(static=True)  # local element of each z element
    entry_kind: tuple[str, ...] = eqx.field(static=True)  # "shared", "arm", "subject"
    entry_key: tuple[str, ...] = eqx.field(static=True)  # arm name, "curve<k>" or ""
    groups: tuple[str, ...] = eqx.field(static=True)
    local_labels: tuple[str, ...] = eqx.field(static=True)

    @property
    def n_groups(self) -> int:
        return len(self.groups)


def group_batch(batch, groups: Sequence[str], local_labels: Sequence[str], *,
                shared: Sequence[str], per_subject: Sequence[str] = (),
                uses: Mapping[str, Sequence[str]] | Callable | None = None) -> GroupBatch:
    """Arrange the subjects of ``batch`` by group and lay out the group ``z``.

    See `fit_groups` for the arguments. **Raises:** `ValueError` (one line) for a
    ``groups`` of the wrong length or unknown labels.
    """
    n = batch.n_subjects
    groups = [str(x) for x in groups]
    if len(groups) != n:
        raise ValueError(f"fit_groups: groups has {len(groups)} entries, expected one per "
                         f"subject ({n})")
    labels = tuple(local_labels)
    for name, sel in (("shared", shared), ("per_subject", per_subject)):
        bad = [lab for lab in sel if lab not in labels]
        if bad:
            raise ValueError(f"fit_groups: {name} names unknown parameter(s) {bad}; the "
                             f"predictor's are {list(labels)}")
    both = set(shared) & set(per_subject)
    if both:
        raise ValueError(f"fit_groups: {sorted(both)} cannot be both shared and per_subject")
    arms = tuple(dict.fromkeys(batch.arm))
    if uses is None:
        use = {a: set(labels) for a in arms}
    else:
        use = {a: set(uses(a) if callable(uses) else uses.get(a, ())) for a in arms}
        for a, u in use.items():
            if u - set(labels):
                raise ValueError(f"fit_groups: uses[{a!r}] names unknown parameter(s) "
                                 f"{sorted(u - set(labels))}; the predictor's are "
                                 f"{list(labels)}")
    names = tuple(dict.fromkeys(groups))
    members = [[i for i in range(n) if groups[i] == g] for g in names]
    n_curves = max(len(m) for m in members)
    local = {lab: j for j, lab in enumerate(labels)}

    # the z layout: shared, then per arm, then per curve slot
    entries: list[tuple[str, str, str]] = [("shared", lab, "") for lab in labels
                                           if lab in shared]
    entries += [("arm", lab, a) for a in arms for lab in labels
                if lab not in shared and lab not in per_subject and lab in use[a]]
    entries += [("subject", lab, f"curve{k}") for k in range(n_curves) for lab in labels
                if lab in per_subject]
    index = {e: i for i, e in enumerate(entries)}
    n_z = len(entries)

    reads, free, curve_subject = [], np.zeros((len(names), n_z), bool), []
    for gi, idx in enumerate(members):
        rows = []
        for k in range(n_curves):
            i = idx[k] if k < len(idx) else idx[0]
            a = batch.arm[i]
            r = [(index[("shared", lab, "")], local[lab]) for lab in labels if lab in shared]
            r += [(index[("arm", lab, a)], local[lab]) for lab in labels
                  if ("arm", lab, a) in index]
            r += [(index[("subject", lab, f"curve{k}")], local[lab]) for lab in labels
                  if lab in per_subject]
            rows.append(r)
            if k < len(idx):
                for e, _ in r:
                    kind, lab, _key = entries[e]
                    free[gi, e] |= lab in use[a]
        reads.append(rows)
        curve_subject.append(idx + [-1] * (n_curves - len(idx)))
    n_read = max(len(r) for rows in reads for r in rows)
    u_index = np.full((len(names), n_curves, n_read), n_z)
    spec_index = np.full((len(names), n_curves, n_read), len(labels))
    for gi, rows in enumerate(reads):
        for k, r in enumerate(rows):
            for j, (e, p) in enumerate(r):
                u_index[gi, k, j], spec_index[gi, k, j] = e, p

    cs = np.asarray(curve_subject)
    take = np.where(cs >= 0, cs, cs[:, :1])
    flat = subject_data(batch.subset(take.reshape(-1)))
    curves = jax.tree_util.tree_map(lambda x: x.reshape(len(names), n_curves, *x.shape[1:]),
                                    flat)
    data = GroupData(curves=curves, curve_mask=jnp.asarray(cs >= 0),
                     u_index=jnp.asarray(u_index), spec_index=jnp.asarray(spec_index),
                     free=jnp.asarray(free))
    return GroupBatch(data=data, curve_subject=jnp.asarray(cs),
                      entry_local=tuple(local[lab] for _, lab, _ in entries),
                      entry_kind=tuple(k for k, _, _ in entries),
                      entry_key=tuple(key for _, _, key in entries), groups=names,
                      local_labels=labels)


def group_predictor(curve: AbstractPredictor, gb: GroupBatch) -> GroupPredictor:
    """The group predictor of ``curve`` for the layout of ``gb``."""
    trs = curve.spec.element_transforms()
    entries = tuple(
        gb.local_labels[j] + ("" if kind == "shared" else SEP + key)
        for j, kind, key in zip(gb.entry_local, gb.entry_kind, gb.entry_key, strict=True))
    first = jax.tree_util.tree_map(lambda x: x[0, 0], gb.data.curves)
    ref = np.asarray(curve.init_z(first))
    return GroupPredictor(curve=curve, spec=GroupSpec(entries, tuple(
        trs[j] for j in gb.entry_local)), default_z=jnp.asarray(ref[list(gb.entry_local)]))


class GroupFitResult(eqx.Module):
    """A group fit: ``groups`` (one `FitResult` member per group, over the group ``z``)
    and its per-subject view (leading axis: the subjects of the batch, in order).

    Per-subject ``theta``/``se_theta`` are on the per-curve predictor's labels
    (``labels``): a shared parameter repeats its group's value, a per-arm one its arm's;
    NaN where the curve does not use the parameter (or its group does not estimate it).
    ``loss`` is the curve's share of its group's -log-likelihood (they sum to it).
    """

    groups: FitResult
    group: tuple[str, ...] = eqx.field(static=True)  # each subject's group
    labels: tuple[str, ...] = eqx.field(static=True)
    subject: tuple[str, ...] = eqx.field(static=True)
    arm: tuple[str, ...] = eqx.field(static=True)
    study: tuple[str, ...] = eqx.field(static=True)
    status: Array  # of the subject's group
    theta: Array  # (n_subjects, n_labels), natural scale
    se_theta: Array
    z: Array  # (n_subjects, n_labels): each curve's own z (its predictor's)
    loss: Array
    sigma: Array
    rmse_log_volume: Array
    log_volume_pred: Array  # (n_subjects, n_obs)

    def to_rows(self) -> list[dict]:
        """One dict per subject: ids, group, status name, the curve's loss and rmse, the
        group's loss, sigma, condition number and identifiability, and every parameter
        the curve uses (natural scale) with ``<label>_se``."""
        g_index = {g: i for i, g in enumerate(self.groups.subject)}
        arr = {k: np.asarray(getattr(self, k)) for k in (
            "status", "theta", "se_theta", "loss", "sigma", "rmse_log_volume")}
        cond, ident = np.asarray(self.groups.condition_number), np.asarray(
            self.groups.identifiable)
        rows = []
        for i, s in enumerate(self.subject):
            gi = g_index[self.group[i]]
            row = {"study": self.study[i], "subject": s, "arm": self.arm[i],
                   "group": self.group[i],
                   "status": FitStatus(int(arr["status"][i])).name.lower(),
                   "loss": float(arr["loss"][i]),
                   "group_loss": float(self.groups.loss[gi]),
                   "sigma": float(arr["sigma"][i]),
                   "rmse_log_volume": float(arr["rmse_log_volume"][i])}
            for j, label in enumerate(self.labels):
                if np.isfinite(arr["theta"][i, j]):
                    row[label] = float(arr["theta"][i, j])
                    row[f"{label}_se"] = float(arr["se_theta"][i, j])
            row["condition_number"] = float(cond[gi])
            row["identifiable"] = bool(ident[gi])
            rows.append(row)
        return rows


@eqx.filter_jit
def _per_subject(predictor, data, z, theta, se_theta, sigma):
    """Per curve: its own z, the natural-scale values and SEs of the estimated elements
    it reads (NaN elsewhere), its log predictions, loss share and rmse."""
    def group(z_, th, se, s, g):
        zc = predictor.curve_z(z_, g)
        n_curves, n_local = zc.shape
        rows = jnp.arange(n_curves)[:, None]
        read = jnp.concatenate([g.free, jnp.zeros((1,), bool)])[g.u_index]

        def scatter(v):  # (n_curves, n_read) values of z elements -> (n_curves, n_local)
            v = jnp.where(read, jnp.concatenate([v, jnp.full((1,), jnp.nan)])[g.u_index],
                          jnp.nan)
            return jnp.full((n_curves, n_local + 1), jnp.nan).at[rows, g.spec_index].set(
                v)[:, :-1]

        lp, _ = jax.vmap(predictor.curve)(zc, g.curves)

        def stats(lp_c, c):
            obs = c.mask & ~c.censored
            lo = jnp.log(jnp.where(obs, c.volume_mm3, 1.0))
            rmse = jnp.sqrt(jnp.sum(jnp.where(obs, (lo - lp_c) ** 2, 0.0))
                            / jnp.maximum(jnp.sum(obs), 1))
            return nll_from_log(lp_c, c, s), rmse

        loss, rmse = jax.vmap(stats)(lp, g.curves)
        return zc, scatter(th), scatter(se), lp, loss, rmse

    return jax.vmap(group)(z, theta, se_theta, sigma, data)


def fit_groups(
    predictor: AbstractPredictor,
    batch,
    groups: Sequence[str],
    *,
    shared: Sequence[str],
    per_subject: Sequence[str] = (),
    uses: Mapping[str, Sequence[str]] | Callable | None = None,
    num_starts: int = 8,
    key=None,
    start_scale=1.0,
    method: str = "lm",
    sigma: float | str = 0.2,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    max_steps: int | None = None,
    optimiser=None,
    max_condition: float = 1e6,
    trust_region: str | tuple | None = None,
    stall_rtol: float | None = None,
    stall_steps: int = 3,
    lanes: int | None = None,
    progress=None,
) -> GroupFitResult:
    """Fit the curves of each group together, with parameters shared within the group.

    **Arguments:**
    - `predictor`: the per-curve predictor (e.g. `csc_predictor`); its labels (e.g.
      ``csc_division_rate``, ``kill_rate[1]``, ``initial_volume_mm3``) name the roles.
    - `batch`: a `SubjectBatch`; `groups`: each subject's group (e.g. its PDX line).
    - `shared`: labels with one value per group, read by every curve of the group.
    - `per_subject`: labels with one value per curve.
    - every other label is *per arm*: one value per (group, arm).
    - `uses`: ``{arm: labels}`` (or ``arm -> labels``): what a curve of that arm
      estimates. A per-arm or per-subject label outside it is not estimated for that
      curve (it keeps the predictor's reference); a shared label is estimated in a group
      if at least one curve of the group uses it, else fixed at the reference. Default:
      every arm uses every label.
    - the rest as in `fit_map` (`sigma="estimate"`: one sigma per group; `trust_region`,
      `stall_rtol` and `stall_steps` for ``method="lm"``; `lanes`: groups x starts in
      flight; `progress(n_done)`).

    **Returns:** a `GroupFitResult`: ``.groups`` is the `FitResult` over groups (the
    group ``z``, labels ``"<label>"``, ``"<label>|<arm>"``, ``"<label>|curve<k>"``),
    ``.to_rows()`` one row per subject.

    **Raises:** `ValueError` (one line) for inconsistent groups, labels or options.

    ```python
    pred = fitcsc.csc_predictor(model, spec)      # spec frees growth, effect and V0
    res = fitcsc.fit_groups(pred, batch, lines, shared=("csc_division_rate",),
                            per_subject=("initial_volume_mm3",), num_starts=4)
    res.to_rows()
    ```
    """
    if not isinstance(predictor, AbstractPredictor):
        raise TypeError("fit_groups: wrap a plain function in fitcsc.FunctionPredictor")
    gb = group_batch(batch, groups, predictor.spec.labels(), shared=shared,
                     per_subject=per_subject, uses=uses)
    gpred = group_predictor(predictor, gb)
    res = fit_group_batch(gpred, gb, num_starts=num_starts, key=key, start_scale=start_scale,
                          method=method, sigma=sigma, rtol=rtol, atol=atol,
                          max_steps=max_steps, optimiser=optimiser,
                          max_condition=max_condition, trust_region=trust_region,
                          stall_rtol=stall_rtol, stall_steps=stall_steps, lanes=lanes,
                          progress=progress)
    return expand(gpred, gb, res, batch)


def fit_group_batch(gpred: GroupPredictor, gb: GroupBatch, *, num_starts=8, key=None,
                    start_scale=1.0, method="lm", sigma=0.2, rtol=1e-8, atol=1e-8,
                    max_steps=None, optimiser=None, max_condition=1e6, trust_region=None,
                    stall_rtol=None, stall_steps=3, lanes=None, progress=None,
                    who: str = "fit_groups") -> FitResult:
    """The `FitResult` over the groups of ``gb`` (one member per group and start)."""
    has_cens = bool(np.any(np.asarray(gb.data.mask & gb.data.censored)))
    opts, seed, _, scale, sigma0 = prepare_fit(
        who, gpred, gb.n_groups, has_cens, num_starts=num_starts, key=key, z_init=None,
        start_scale=start_scale, method=method, sigma=sigma, rtol=rtol, atol=atol,
        max_steps=max_steps, optimiser=optimiser)
    rule, stop = lm_options(opts, trust_region=trust_region, stall_rtol=stall_rtol,
                            stall_steps=stall_steps, who=who)
    z_ref, free = reference_starts(gpred, gb.data)
    z0 = starts(z_ref, free, int(num_starts), scale, seed)
    if method == "optax":
        out = fit_optax(gpred, gb.data, jnp.asarray(z0), jnp.asarray(sigma0), opts,
                         jnp.asarray(free), float(max_condition))
    else:
        out = fit_members(who, gpred, gb.data, z0=z0, free=free, sigma0=sigma0, opts=opts,
                          rule=rule, stop=stop, evaluator="jacfwd", lanes=lanes,
                          max_condition=max_condition, progress=progress)
        out.pop("info")
    return FitResult(**{k: jnp.asarray(v) for k, v in out.items()},
                     labels=gpred.spec.labels(), subject=gb.groups,
                     arm=("",) * gb.n_groups, study=("",) * gb.n_groups, method=method)


def expand(gpred: GroupPredictor, gb: GroupBatch, res: FitResult, batch) -> GroupFitResult:
    """The per-subject view of a group fit ``res`` of ``gb`` (made from ``batch``)."""
    zc, theta, se_theta, lp, loss, rmse = (np.asarray(x) for x in _per_subject(
        gpred, gb.data, res.z, res.theta, res.se_theta, res.sigma))
    cs = np.asarray(gb.curve_subject)
    gi, k = np.nonzero(cs >= 0)
    order = np.argsort(cs[gi, k])  # subjects in batch order
    gi, k = gi[order], k[order]
    return GroupFitResult(
        groups=res, group=tuple(gb.groups[g] for g in gi), labels=gb.local_labels,
        subject=tuple(batch.subject), arm=tuple(batch.arm), study=tuple(batch.study),
        status=jnp.asarray(np.asarray(res.status)[gi]), theta=jnp.asarray(theta[gi, k]),
        se_theta=jnp.asarray(se_theta[gi, k]), z=jnp.asarray(zc[gi, k]),
        loss=jnp.asarray(loss[gi, k]), sigma=jnp.asarray(np.asarray(res.sigma)[gi]),
        rmse_log_volume=jnp.asarray(rmse[gi, k]), log_volume_pred=jnp.asarray(lp[gi, k]))
