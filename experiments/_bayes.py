"""Helpers shared by the Bayesian experiments (mas98_bayes.py, pdxe_bayes.py).

`fit_population` runs the sample job's steps (MAP warm start, sampling, InferenceData,
summary table and plots) on a population model; `identification` compares each
typical value's posterior with its prior; `her2_terms` summarises trastuzumab's CSC
(self-renewal) against its bulk (proliferation) term; `loo_against_baselines` samples
the baselines on the same curves and compares them by PSIS-LOO.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import fitcsc
import fitcsc.summary as fs
from fitcsc.files import Checkpoint, fingerprint, pyplot, save_figure
from fitcsc.population import (
    baseline_population,
    posterior_outputs,
    progress_printer,
    sample,
    warm_start,
    warmup_summary,
)

BASELINE_ORDER = ("exponential", "logistic", "gompertz", "simeoni")
V0 = "initial_volume_mm3"


SAMPLER_ARGS = (  # (flag, sample()'s keyword, type, help): overrides of a script's settings
    ("--method", "method", str, "sampler: nuts or chees"),
    ("--chains", "num_chains", int, "number of chains"),
    ("--warmup", "num_warmup", int, "warm-up steps per chain"),
    ("--draws", "num_samples", int, "kept draws per chain"),
    ("--thinning", "thinning", int, "keep every k-th draw"),
    ("--max-leapfrog", "max_leapfrog_steps", int,
     "ChEES: cap on leapfrog steps per transition (default 1000)"),
    ("--max-tree-depth", "max_tree_depth", int, "NUTS: maximum tree depth (default 10)"),
    ("--target-accept", "target_accept_prob", float,
     "NUTS: target acceptance probability (default 0.8)"),
    ("--init-scale", "init_scale", float,
     "spread of the chains' starts around the warm start (default 0.1; with a "
     "preconditioner in units of its SDs)"),
)


def add_sampler_arguments(parser):
    """Add `SAMPLER_ARGS` and ``--dense-mass`` to an argparse parser (default: the
    script's own settings)."""
    for flag, _, kind, text in SAMPLER_ARGS:
        parser.add_argument(flag, type=kind, default=None, help=f"override: {text}",
                            **({"choices": ("nuts", "chees")} if flag == "--method" else {}))
    parser.add_argument("--dense-mass", action="store_true", help="NUTS: dense mass matrix")


def sampler_settings(args, base) -> dict:
    """``base`` (a script's sampler settings) with the command line's overrides."""
    out = dict(base)
    for flag, key, _, _ in SAMPLER_ARGS:
        v = getattr(args, flag[2:].replace("-", "_"))
        if v is not None:
            out[key] = v
    if args.dense_mass:
        out["dense_mass"] = True
    return out


def script_checkpoint(args, out, name):
    """A script's `Checkpoint` in ``out`` when ``--checkpoint`` is given (else None),
    fingerprinted by the options that shape the run (all but --no-progress, --checkpoint,
    --keep-checkpoint and --merge), so that a rerun with the same options resumes it.
    With NUTS the number of draws is left out too: its draws do not depend on how many
    follow, so a rerun with more ``--draws`` extends an unfinished run and one with
    fewer stops early."""
    if not args.checkpoint:
        return None
    skip = {"no_progress", "checkpoint", "keep_checkpoint", "merge"} | (
        {"draws"} if getattr(args, "method", None) == "nuts" else set())
    return Checkpoint(out, name, fingerprint(
        {k: v for k, v in vars(args).items() if k not in skip}), resume=True)


def fit_population(pop, batch, out, *, settings, seed=0, progress=True, refine_steps=300,
                   pair=None, precondition=None, centre=(), net_rate=None,
                   seeded_ref=None, checkpoint=None, starts=None):
    """MAP warm start, ChEES sampling, outputs in ``out``: ``(idata, record)``.

    ``starts``: None, or ``(z, info)`` from `starts_from_posterior`: each chain starts at
    its own row of ``z`` (the model's coordinates) in place of the MAP warm start.

    ``centre``: random effects to sample centred, e.g. ``("line:kill_rate[0]",
    "animal:initial_volume_mm3")``; ``net_rate``: ``(rate, fraction)`` to sample the log
    net growth rate in place of the rate's fixed effects; ``seeded_ref``: the level of
    the seeded curves' V0 effects, sampled at their reference day (`seeded_reference`;
    all three `reparameterise`).
    ``precondition``: None, or ``{"lbfgs_steps": n}``:
    sample ``u`` with ``w = w_hat + L u`` (`laplace_preconditioner`; a fixed dense mass
    matrix ``L L^T``, under the sampler's own diagonal adaptation). The draws are mapped
    back to ``z``. ``checkpoint``: a `fitcsc._checkpoint.Checkpoint` for `sample` (the
    warm-up and every chunk of draws saved as they finish; with a preconditioner also its
    ``w_hat`` and ``L``, part ``affine``, to map saved draws back)."""
    t0 = time.perf_counter()
    kw = {k: v for k, v in settings.items() if k != "map_max_steps"}
    to_w, to_z, density = reparameterise(pop, centre, net_rate, seeded_ref)
    if starts is None:
        values, start = warm_start(pop, batch, refine_steps=refine_steps,
                                   max_steps=settings.get("map_max_steps"))
        w0 = to_w(pop.space.to_z(values))
    else:
        z_starts, start = starts
        if precondition:
            raise ValueError("fit_population: starts and precondition exclude each other "
                             "(the preconditioner is built at one warm start)")
        if z_starts.shape != (kw.get("num_chains", 4), pop.space.size):
            raise ValueError(f"fit_population: starts must have shape (num_chains, "
                             f"{pop.space.size}), got {z_starts.shape}")
        w0 = jax.jit(jax.vmap(to_w))(jnp.asarray(z_starts))
    if precondition:
        w0, lin, start["precondition"] = laplace_preconditioner(density, w0, **precondition)
        density = _affine(density, w0, lin)
        if checkpoint is not None:
            checkpoint.save("affine", {"w_hat": np.asarray(w0), "L": np.asarray(lin)})
    post = sample(density, jnp.zeros_like(w0) if precondition else w0, seed=seed,
                  progress=progress_printer(quiet=not progress), checkpoint=checkpoint,
                  **kw)
    w = np.asarray(post.z)
    if precondition:
        w = np.asarray(w0)[None, None] + w @ np.asarray(lin).T
    post = post._replace(z=np.asarray(jax.jit(jax.vmap(jax.vmap(to_z)))(w)))
    start["centred"] = list(centre)
    start["net_rate"] = None if net_rate is None else list(net_rate)
    start["seeded_ref"] = seeded_ref
    diag, idata, rows = posterior_outputs(pop, post, out, key=jax.random.key(seed + 1),
                                          pair=pair)
    record = {"n_parameters": pop.space.size, "fixed_effects": list(pop.fe_labels),
              "sampler": post.settings, "timing": post.timing, "warm_start": start,
              "warmup": warmup_summary(post.warmup_stats),
              "convergence": diag, "wall_s": round(time.perf_counter() - t0, 1)}
    return idata, record, rows


def starts_from_posterior(pop, path, num_chains, chain=None):
    """``(z, info)``: chain starts from an earlier run's ``posterior.nc`` of the same model.

    ``z`` ``(num_chains, d)``: ``num_chains`` draws evenly spaced over one chain of that run
    (``chain``; default the chain with the highest mean log density, ``sample_stats.lp``),
    so that every chain starts in that chain's region, spread as its draws are. Read with
    xarray (the netCDF groups `posterior_outputs` writes).
    """
    import xarray as xr

    t = time.perf_counter()
    with xr.open_dataset(path, group="posterior") as post, \
            xr.open_dataset(path, group="sample_stats") as stats:
        lp = stats["lp"].mean("draw").values
        c = int(np.argmax(lp)) if chain is None else int(chain)
        if not 0 <= c < lp.size:
            raise ValueError(f"{path}: no chain {c}; it has {lp.size}")
        idx = np.round(np.linspace(0, post.sizes["draw"] - 1, num_chains)).astype(int)
        values = {}
        for name, shape, _, _ in pop.space.sites:
            if name not in post:
                raise ValueError(f"{path}: no posterior variable {name!r}; was it written by "
                                 "the same model and options?")
            v = post[name].values[c][idx]
            lev = name[4:] if name.startswith("eta_") else None
            if lev is not None and pop.is_zero_sum(lev):  # written per group
                shape = (len(pop.group_names[pop.levels.index(lev)]), shape[1])
            if v.shape[1:] != tuple(shape):
                raise ValueError(f"{path}: posterior variable {name!r} has shape "
                                 f"{v.shape[1:]} per draw, the model's is {tuple(shape)}")
            values[name] = v
    z = np.stack([np.asarray(pop.space.to_z(pop.site_values({k: v[i]
                                                               for k, v in values.items()})))
                  for i in range(num_chains)])
    info = {"starts_from": str(path), "chain": c, "draws": idx.tolist(),
            "chain_mean_lp": [float(x) for x in lp],
            "warm_start_s": round(time.perf_counter() - t, 2)}
    return z, info


def reparameterise(pop, centre=(), net_rate=None, seeded_ref=None):
    """``(to_w, to_z, log_density_w)``: the sampler's coordinates ``w`` of the population
    model's ``z``, an exact change of variables (``log_density_w(w) = log_density(z) +
    log |det dz/dw|``).

    - ``centre``: random effects (each ``"level:label"``) sampled centred: ``w`` holds
      ``t = omega * eta`` (the group's deviation) in place of ``eta``, so that ``eta = t /
      omega``; log-Jacobian ``-sum log omega`` over the centred entries. For effects the
      data pin per group (a funnel the other way round from the non-centred one).
    - ``net_rate``: None, or ``(rate, fraction)`` (``("csc_division_rate",
      "self_renewal")``): each fixed effect of ``rate`` (log v_S) is replaced by the log
      of the net CSC growth rate ``log(v_S (2p - 1))``, p the typical ``fraction`` (an
      ``Interval(0.5, hi)`` shared by all arms), so that a ridge of constant net growth
      becomes an axis of ``w``. A shear: ``w_rate = z_rate + log(2p - 1)``, log-Jacobian 0.
    - ``seeded_ref``: None, or the level of the seeded curves' V0 effects (``"seeded"``,
      `csc_population`'s ``v0_by_start``): see `seeded_reference`; log-Jacobian ``-n
      log omega`` (n seeded curves), as centring them.
    """
    labels = pop.space.labels()
    eta_i, om_i = [], []
    for item in centre:
        level, lab = item.split(":", 1)
        if level in pop.levels and pop.is_zero_sum(level):
            raise ValueError(f"reparameterise: cannot centre {item!r}: level {level!r} "
                             f"sums to zero (its sites are basis coordinates, not groups)")
        names = pop.group_names[pop.levels.index(level)]
        j = labels.index(f"omega_{level}[{lab}]")
        for g in names:
            eta_i.append(labels.index(f"eta_{level}[{g},{lab}]"))
            om_i.append(j)
    eta_i, om_i = jnp.asarray(eta_i, int), jnp.asarray(om_i, int)
    rate_i, log_2p1 = jnp.zeros((0,), int), None
    if net_rate is not None:
        rate, frac = net_rate
        rate_i = [labels.index(f"beta[{lab}]") for lab in pop.fe_labels
                  if lab.split("|")[0] == rate]
        if f"beta[{frac}]" not in labels or not rate_i:
            raise ValueError(f"reparameterise: net_rate needs fixed effects of {rate!r} and "
                             f"one shared fixed effect of {frac!r}; the model's are "
                             f"{list(pop.fe_labels)}")
        tr = pop.fe_transforms[pop.fe_labels.index(frac)]
        if not isinstance(tr, fitcsc.Interval) or tr.lo != 0.5:
            raise ValueError(f"reparameterise: net_rate needs {frac!r} in Interval(0.5, hi), "
                             f"got {tr!r}")
        p_i, rate_i = labels.index(f"beta[{frac}]"), jnp.asarray(rate_i, int)

        def log_2p1(x):  # log(2p - 1) = log(2 (hi - lo)) + log sigmoid(z_p)
            return math.log(2.0 * (tr.hi - tr.lo)) + jax.nn.log_sigmoid(x[p_i])

    seed_w, seed_z, seed_om = (lambda z: z), (lambda w: w), jnp.zeros((0,), int)
    if seeded_ref is not None:
        if f"{seeded_ref}:{V0}" in centre:
            raise ValueError(f"reparameterise: seeded_ref={seeded_ref!r} already centres "
                             f"{seeded_ref}:{V0}; leave it out of centre")
        seed_w, seed_z, seed_om = seeded_reference(pop, seeded_ref)

    def to_w(z):  # the seeded shear reads z, so it goes first (and is undone last)
        z = seed_w(z)
        if log_2p1 is not None:
            z = z.at[rate_i].add(log_2p1(z))
        return z.at[eta_i].set(z[eta_i] * jnp.exp(z[om_i]))

    def to_z(w):
        if log_2p1 is not None:
            w = w.at[rate_i].add(-log_2p1(w))
        return seed_z(w.at[eta_i].set(w[eta_i] * jnp.exp(-w[om_i])))

    def log_density_w(w):
        return pop.log_density(to_z(w)) - jnp.sum(w[om_i]) - jnp.sum(w[seed_om])

    return to_w, to_z, log_density_w


def seeded_reference(pop, level="seeded"):
    """``(to_w, to_z, om_index)``: the seeded curves' V0 block at each curve's reference
    day, an exact change of variables of the population model's ``z``.

    The curves at ``level`` start at volume 0 weeks before treatment; the data say when
    each became palpable, not how large its seed was at t0, so log V0 is pinned only
    together with the growth rate (``log V(t_ref) ~ log V0 + growth``): a curved ridge
    between the typical V0, the mice's V0 effects and v_S. Here ``w`` holds, per seeded
    curve ``c`` (t_ref its first measured volume, `seeded_reference_days`), the centred
    ``omega eta_c + G_c - Gbar_a`` and per typical V0 ``a`` the ``beta_a + Gbar_a``, so
    that their sum is ``log V0_c + G_c``, the log volume at t_ref of the untreated model
    without crowding. ``G_c`` = `untreated_log_growth` over ``t_ref - t0`` with curve
    ``c``'s parameters (its mouse's v_S), ``Gbar_a`` the same with the typical
    parameters over the mean ``t_ref - t0`` of the curves that share ``beta_a`` (an
    arm's, or a pool's: `csc_population`'s ``seeded_v0``): functions of coordinates this map
    leaves alone, so it is a shear plus a centring, ``log |det dz/dw| = -n log omega``
    (``om_index``: the omega entry of each seeded curve, to sum over). The model is
    unchanged: the same ``z``, the same predictions; only the sampler's coordinates move.
    Needs one curve per group at ``level``; a V0 fixed effect that also covers curves
    at other levels keeps its ``beta_a`` (no ``Gbar_a`` added).

    At a zero-sum level (`population_model`'s ``zero_sum``: ``omega eta = omega s Q u``,
    ``s = sqrt(n / (n - 1))``) the one typical V0 of the level's curves is needed, and
    ``w`` holds ``beta + mean_c G_c`` (the mean log volume at the curves' reference
    days) and, for the basis coordinates, ``omega u + Q^T G / s`` (the differences
    between them), so that the log volume of curve ``c`` at t_ref is ``w_beta + s (Q
    w_u)_c``; ``log |det dz/dw| = -(n - 1) log omega``.
    """
    from fitcsc.population import seeded_reference_days, untreated_log_growth

    labels = pop.space.labels()
    if level not in pop.levels or pop.re_labels[pop.levels.index(level)] != (V0,):
        raise ValueError(f"seeded_reference: no level {level!r} with the V0 effect alone "
                         f"(csc_population(..., v0_by_start=True)); levels {pop.levels}")
    k = pop.levels.index(level)
    gidx = np.asarray(pop.group_index[k])
    on = np.asarray(pop.re_mask[k])[:, 0]
    names = pop.group_names[k]
    curve = []
    for g in range(len(names)):
        rows = np.flatnonzero(on & (gidx == g))
        if rows.size != 1:
            raise ValueError(f"seeded_reference: group {names[g]!r} of {level!r} has "
                             f"{rows.size} curves; one per group needed")
        curve.append(int(rows[0]))
    curve = np.asarray(curve)
    t_ref = seeded_reference_days(pop.curves)
    span = t_ref[curve] - np.asarray(pop.curves.t0_day)[curve]
    if not np.all(span > 0):
        raise ValueError("seeded_reference: every seeded curve needs t0 < 0")
    j_v0 = pop.labels.index(V0)
    fe_v0 = np.asarray(pop.fe_index)[:, j_v0]
    if pop.is_zero_sum(level):
        return _seeded_reference_zero_sum(pop, level, curve, span, j_v0, fe_v0)
    beta_i, first, mean_span = [], [], np.empty(len(curve))
    for fe in dict.fromkeys(fe_v0[curve]):  # per typical V0: an arm's, or a pool of arms'
        mine = [i for i, c in enumerate(curve) if fe_v0[c] == fe]
        mean_span[mine] = span[mine].mean()
        if fe >= 0 and set(np.flatnonzero(fe_v0 == fe)) == {int(curve[i]) for i in mine}:
            beta_i.append(labels.index(f"beta[{pop.fe_labels[fe]}]"))
            first.append(mine[0])  # a V0 shared with unseeded curves keeps its beta
    beta_i, first = jnp.asarray(beta_i, int), jnp.asarray(first, int)
    eta_i = jnp.asarray([labels.index(f"eta_{level}[{g},{V0}]") for g in names], int)
    om_i = jnp.full((len(names),), labels.index(f"omega_{level}[{V0}]"), int)
    spec, model = pop.predictor.spec, pop.predictor.model
    span, mean_span, curve = jnp.asarray(span), jnp.asarray(mean_span), jnp.asarray(curve)

    def growth(z):  # (G_c, Gbar of c's arm): read no V0 coordinate
        values = pop.space.from_z(z)
        zc = pop.curve_z(values)[curve].at[:, j_v0].set(0.0)
        typ = pop.curve_z({**values, **{f"eta_{lev}": jnp.zeros_like(values[f"eta_{lev}"])
                                        for lev in pop.levels}})[curve].at[:, j_v0].set(0.0)
        g = untreated_log_growth(model, jax.vmap(spec.from_z)(zc), span)
        gbar = untreated_log_growth(model, jax.vmap(spec.from_z)(typ), mean_span)
        return g, gbar

    def to_w(z):
        g, gbar = growth(z)
        w = z.at[eta_i].set(z[eta_i] * jnp.exp(z[om_i]) + g - gbar)
        return w.at[beta_i].add(gbar[first])

    def to_z(w):
        g, gbar = growth(w)
        z = w.at[beta_i].add(-gbar[first])
        return z.at[eta_i].set((w[eta_i] - g + gbar) * jnp.exp(-w[om_i]))

    return to_w, to_z, om_i


def _seeded_reference_zero_sum(pop, level, curve, span, j_v0, fe_v0):
    """`seeded_reference` at a zero-sum level (see there)."""
    from fitcsc.population import untreated_log_growth

    labels = pop.space.labels()
    fe = set(fe_v0[curve].tolist())
    if len(fe) != 1 or -1 in fe or set(np.flatnonzero(fe_v0 == min(fe))) != set(curve.tolist()):
        raise ValueError(f"seeded_reference: the zero-sum level {level!r} needs one typical "
                         f"V0 for exactly its curves (csc_population(..., "
                         f"seeded_v0='shared'))")
    n = curve.size  # curve[g] is group g's, so G's basis coordinates are the pop's
    beta_i = labels.index(f"beta[{pop.fe_labels[min(fe)]}]")
    u_i = jnp.asarray([labels.index(f"eta_{level}[zero-sum {k},{V0}]") for k in range(1, n)],
                      int)
    om_i = jnp.full((n - 1,), labels.index(f"omega_{level}[{V0}]"), int)
    spec, model = pop.predictor.spec, pop.predictor.model
    span, curve = jnp.asarray(span), jnp.asarray(curve)

    def growth(z):  # G_c: reads no V0 coordinate
        zc = pop.curve_z(pop.space.from_z(z))[curve].at[:, j_v0].set(0.0)
        return untreated_log_growth(model, jax.vmap(spec.from_z)(zc), span)

    def to_w(z):
        g = growth(z)
        w = z.at[u_i].set(z[u_i] * jnp.exp(z[om_i]) + pop.basis_coordinates(level, g))
        return w.at[beta_i].add(jnp.mean(g))

    def to_z(w):
        g = growth(w)
        z = w.at[beta_i].add(-jnp.mean(g))
        return z.at[u_i].set((w[u_i] - pop.basis_coordinates(level, g)) * jnp.exp(-w[om_i]))

    return to_w, to_z, om_i


def _affine(log_density, z0, lin):
    return lambda u: log_density(z0 + lin @ u)


def laplace_preconditioner(log_density, z, *, lbfgs_steps=1000, floor=0.25, h=1e-4,
                           batch=41):
    """``(z_hat, L, info)``: ``z_hat`` after ``lbfgs_steps`` L-BFGS steps uphill from
    ``z``; ``L = V diag(1 / sqrt(max(|w|, floor)))`` from the eigenpairs ``(w, V)`` of
    the negative Hessian there (central differences of the gradient, step ``h``: the
    log density's custom VJP has no forward mode), so that ``z_hat + L u`` with ``u``
    near standard normal covers the Laplace approximation. ``floor`` bounds the scale
    of flat or negatively curved directions (``z_hat`` need not be an exact mode)."""
    import optax

    t = time.perf_counter()
    neg = lambda x: -log_density(x)  # noqa: E731
    opt, vg = optax.lbfgs(), optax.value_and_grad_from_state(neg)

    def body(c, _):
        x, s = c
        v, g = vg(x, state=s)
        upd, s = opt.update(g, s, x, value=v, grad=g, value_fn=neg)
        return (optax.apply_updates(x, upd), s), v

    lp0 = float(log_density(z))
    if lbfgs_steps:
        z_new, _ = jax.jit(lambda x: jax.lax.scan(body, (x, opt.init(x)), None,
                                                  length=lbfgs_steps)[0])(z)
        if np.isfinite(float(log_density(z_new))) and float(log_density(z_new)) > lp0:
            z = z_new
    grad = jax.grad(log_density)
    col = jax.jit(jax.vmap(lambda e: (grad(z + h * e) - grad(z - h * e)) / (2 * h)))
    eye = np.eye(z.size)
    hess = -np.concatenate([np.asarray(col(jnp.asarray(eye[i:i + batch])))
                            for i in range(0, z.size, batch)])
    w, v = np.linalg.eigh(0.5 * (hess + hess.T))
    lin = jnp.asarray(v / np.sqrt(np.maximum(np.abs(w), floor))[None, :])
    info = {"lbfgs_steps": int(lbfgs_steps), "floor": float(floor),
            "log_density_before": lp0, "log_density_after": float(log_density(z)),
            "grad_norm_after": float(jnp.linalg.norm(grad(z))),
            "n_negative_eigenvalues": int(np.sum(w < 0)),
            "n_floored": int(np.sum(np.abs(w) < floor)),
            "eig_min": float(w[0]), "eig_max": float(w[-1]),
            "seconds": round(time.perf_counter() - t, 1)}
    return z, lin, info


def _interval_sd(transform, loc, scale, n=200_000, seed=0):
    z = np.random.default_rng(seed).normal(loc, scale, n)
    return float(np.std(np.asarray(transform.forward(z))))


def identification(pop, idata) -> list[dict]:
    """Per typical value: prior and posterior mean/SD (natural scale), the shrinkage of
    the SD (``1 - sd_post / sd_prior``; near 0: the data say nothing beyond the prior)
    and the posterior SD on the sampled (log/logit) scale."""
    rows = []
    post = idata.posterior
    for i, name in enumerate(pop.fe_labels):
        tr = pop.fe_transforms[i]
        loc, scale = float(pop.prior_loc[i]), float(pop.prior_scale[i])
        x = post["typical"].sel(fixed_effect=name).values.ravel()
        b = post["beta"].sel(fixed_effect=name).values.ravel()
        sd_prior = _interval_sd(tr, loc, scale)
        rows.append({"parameter": name, "post_mean": float(x.mean()), "post_sd": float(x.std()),
                     "hdi95": [float(v) for v in np.quantile(x, [0.025, 0.975])],
                     "prior_sd": sd_prior, "shrinkage": 1.0 - float(x.std()) / sd_prior,
                     "z_sd_post": float(b.std()), "z_sd_prior": scale})
    return rows


def her2_terms(idata, csc: str, bulk: str, out_png, *, title: str) -> dict:
    """Posterior of trastuzumab's CSC term (``csc``: fewer symmetric self-renewals)
    against its bulk term (``bulk``: slower bulk division), two fixed-effect labels;
    a figure of the joint draws."""
    t = idata.posterior["typical"]
    a = t.sel(fixed_effect=csc).values.ravel()
    b = t.sel(fixed_effect=bulk).values.ravel()
    r = float(np.corrcoef(a, b)[0, 1])
    res = {"csc_term": _stats(a), "bulk_term": _stats(b), "correlation": r,
           "p_csc_gt_bulk": float(np.mean(a > b)),
           "p_csc_gt_0.1": float(np.mean(a > 0.1)), "p_bulk_gt_0.1": float(np.mean(b > 0.1))}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    axes[0].scatter(a, b, s=3, alpha=0.25, color="C3", label="posterior draws")
    prior = 1 / (1 + np.exp(-np.random.default_rng(1).normal(0, 1.5, (2, 2000))))
    axes[0].scatter(*prior, s=2, alpha=0.15, color="0.5", label="prior draws")
    axes[0].set(xlim=(0, 1), ylim=(0, 1), xlabel="ε_S: CSC self-renewal blocked [fraction]",
                ylabel="ε_D: bulk division blocked [fraction]",
                title=f"joint posterior (corr {r:.2f})")
    axes[0].legend(fontsize=8, markerscale=4, loc="upper right")  # "best" is slow here
    bins = np.linspace(0, 1, 41)
    axes[1].hist(a, bins=bins, density=True, alpha=0.6, color="C0", label="ε_S (CSC term)")
    axes[1].hist(b, bins=bins, density=True, alpha=0.6, color="C1", label="ε_D (bulk term)")
    axes[1].set(xlim=(0, 1), xlabel="efficacy [fraction of the term blocked]",
                ylabel="posterior density [1/unit]", title="marginal posteriors")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, out_png)
    return res


def _stats(x) -> dict:
    lo, hi = np.quantile(x, [0.025, 0.975])
    return {"mean": float(x.mean()), "sd": float(x.std()), "q025": float(lo),
            "q975": float(hi)}


def loo_against_baselines(csc_idata, batch, regimens, out, *, settings, seed=0,
                          baselines=BASELINE_ORDER, progress=True) -> tuple[list, dict]:
    """Sample each baseline's population model on the same curves; PSIS-LOO table."""
    idatas, records = {"csc": csc_idata}, {}
    for kind in baselines:
        pop = baseline_population(kind, batch, regimens)
        idata, rec, _ = fit_population(pop, batch, out / kind, settings=settings, seed=seed,
                                       progress=progress)
        idatas[kind], records[kind] = idata, rec
    return fs.loo_compare(idatas), records


def md_table(rows, cols, fmt="{:.3g}") -> list[str]:
    """Markdown table lines of ``rows`` (dicts) over ``cols``."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                cells.append("nan" if math.isnan(v) else fmt.format(v))
            elif isinstance(v, list):
                cells.append("–".join(fmt.format(x) for x in v))
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return out
