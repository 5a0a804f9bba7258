"""Posterior summaries: Laplace draws, NUTS, population posteriors and ArviZ tables and plots.

This is the only module of fitcsc that imports ArviZ (so moving to ArviZ 1.x touches one
file); the samplers live in `fitcsc._fit.sample` (`nuts` here is `fitcsc.sample` with
NumPyro's NUTS). It serves small posteriors (a handful of drug-effect
parameters, say) whose log density is an expensive but differentiable JAX function of an
unconstrained vector ``z``:

```python
import fitcsc.summary as fs

cov = fs.laplace_cov(neg_log_density, z_map)  # inverse Hessian at the MAP
draws = fs.laplace_draws(z_map, cov, n_draws=2000)  # (2000, d)
idata = fs.to_inference_data(draws, ("log_ec50", "emax"), transforms={"log_ec50": np.exp})
rows = fs.summarize(idata)  # name, mean, sd, hdi_lo, hdi_hi, ess_bulk, r_hat, ...
fs.write_summary_csv(rows, "out/summary.csv")
mean, lo, hi = fs.predictive_interval(pcr_of_z, draws)  # pCR and its 95% interval
```

Or, where the Gaussian approximation is doubtful, `nuts` (warm-started at the MAP) and
``fs.to_inference_data(res.z, names, sample_stats=res.sample_stats, method="nuts")``.

Population (hierarchical) posteriors of tumour curves (`fitcsc.PopulationModel`):
`population_inference_data` (posterior, sample_stats, log_likelihood,
posterior_predictive and observed_data groups with named dims), `summarize`,
`convergence`, `loo_compare` (PSIS-LOO between models) and `plot_diagnostics` (rank,
pair and forest plots).
"""

from __future__ import annotations

import csv
import io
import math
import os
import pathlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

with warnings.catch_warnings():
    # arviz 0.2x announces its 1.x refactor with a FutureWarning at import; nothing for a
    # caller to act on (this module is the one place that will change), and it would fail
    # every test run under ``filterwarnings = error``.
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
    import arviz as az

from ._fit.sample import sample
from ._io.files import write_atomic

__all__ = [
    "NutsResult",
    "laplace_cov",
    "laplace_draws",
    "natural_name",
    "nuts",
    "predictive_interval",
    "summarize",
    "to_inference_data",
    "write_summary_csv",
    "population_inference_data",
    "convergence",
    "concat_chains",
    "sampler_timing",
    "loo_compare",
    "plot_diagnostics",
]

SUMMARY_COLUMNS = (
    "name", "mean", "sd", "hdi_lo", "hdi_hi", "mcse_mean", "ess_bulk", "ess_tail", "r_hat",
)


def _sym_eigh(a: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what}: expected a square (d, d) matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: the matrix has non-finite entries (NaN or inf)")
    return np.linalg.eigh(0.5 * (a + a.T))


def laplace_cov(
    neg_log_density: Callable[[jax.Array], jax.Array] | None,
    z_map: Any,
    *,
    hessian: Any = None,
    rcond: float = 1e-10,
    min_curvature: float | None = None,
) -> np.ndarray:
    """Laplace covariance: the inverse Hessian of ``neg_log_density`` at the MAP ``z_map``.

    **Arguments:**
    - `neg_log_density`: ``z -> scalar``, the negative log posterior (or loss) in the
      unconstrained space, differentiable twice by JAX. Unused (may be ``None``) when
      `hessian` is given.
    - `z_map`: the mode, shape ``(d,)``.
    - `hessian`: a Hessian to invert instead of ``jax.hessian(neg_log_density)(z_map)``,
      shape ``(d, d)``; e.g. the Gauss-Newton ``J^T J / sigma^2`` of a least-squares fit.
    - `rcond`: eigenvalues of the (symmetrised) Hessian at or below
      ``rcond * max|eigenvalue|`` (and all negative ones) count as flat directions.
    - `min_curvature`: if ``None``, flat directions get zero variance (pseudo-inverse). If
      given, every eigenvalue is first clipped up to ``min_curvature``, so flat and weakly
      identified directions get variance ``1 / min_curvature`` (a weak Gaussian prior).

    **Returns:** the covariance of ``z``, shape ``(d, d)``, symmetric positive semidefinite.

    **Raises:** `ValueError` if the Hessian is not square or has non-finite entries.
    """
    z_map = jnp.asarray(z_map, dtype=float)
    if z_map.ndim != 1:
        raise ValueError(f"laplace_cov: z_map must have shape (d,), got {z_map.shape}")
    if hessian is None:
        if neg_log_density is None:
            raise ValueError("laplace_cov: give `neg_log_density` or `hessian`")
        hessian = jax.jit(jax.hessian(neg_log_density))(z_map)
    w, v = _sym_eigh(hessian, "laplace_cov")
    if w.shape[0] != z_map.shape[0]:
        raise ValueError(f"laplace_cov: Hessian shape {w.shape * 2} does not match "
                         f"z_map shape {z_map.shape}")
    if min_curvature is not None:
        if not min_curvature > 0:
            raise ValueError(f"laplace_cov: min_curvature must be > 0, got {min_curvature}")
        inv_w = 1.0 / np.maximum(w, min_curvature)
    else:
        tol = rcond * np.max(np.abs(w), initial=0.0)
        inv_w = np.where(w > tol, 1.0 / np.where(w > tol, w, 1.0), 0.0)
    cov = (v * inv_w) @ v.T
    return 0.5 * (cov + cov.T)


def laplace_draws(
    z_map: Any, cov: Any, *, n_draws: int = 2000, key: jax.Array | None = None
) -> np.ndarray:
    """Draws of ``z ~ Normal(z_map, cov)``, the Laplace approximation of the posterior.

    A singular or slightly indefinite ``cov`` (round-off, flat directions) is accepted:
    it is symmetrised and its negative eigenvalues are clipped to zero, so the draws
    are degenerate along those directions instead of failing.

    **Arguments:**
    - `z_map`: the mode in unconstrained space, shape ``(d,)``.
    - `cov`: its covariance, shape ``(d, d)`` (e.g. from `laplace_cov`).
    - `n_draws`: number of draws.
    - `key`: a JAX PRNG key; ``jax.random.key(0)`` when ``None``.

    **Returns:** draws, shape ``(n_draws, d)`` (one "chain" for `to_inference_data`).

    **Raises:** `ValueError` on mismatched shapes or non-finite entries.
    """
    z_map = np.asarray(z_map, dtype=float)
    if z_map.ndim != 1 or not np.all(np.isfinite(z_map)):
        raise ValueError(f"laplace_draws: z_map must be a finite (d,) vector, got {z_map!r}")
    w, v = _sym_eigh(cov, "laplace_draws")
    if w.shape[0] != z_map.shape[0]:
        raise ValueError(f"laplace_draws: cov shape {w.shape * 2} does not match z_map "
                         f"shape {z_map.shape}")
    # the symmetric square root (cov = root @ root.T): unique, so the draws of one key are a
    # continuous function of cov. The eigenvector factor ``v * sqrt(w)`` is not: within
    # an eigenspace of repeated eigenvalues (parameters known by their prior alone) its
    # basis is arbitrary, and a perturbation of cov at round-off (another compilation or
    # BLAS) rotated it, redrawing those directions (measured: draws 12 apart for a
    # covariance changed by 2e-11)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    key = jax.random.key(0) if key is None else key
    eps = np.asarray(jax.random.normal(key, (int(n_draws), z_map.shape[0])))
    return z_map + eps @ root.T


class NutsResult(NamedTuple):
    """What `nuts` returns; feed it to `to_inference_data` with ``method="nuts"``."""

    z: np.ndarray  # (num_chains, num_samples, d) draws of z
    sample_stats: dict[str, np.ndarray]  # ArviZ names, each (num_chains, num_samples)

    @property
    def num_divergent(self) -> int:
        """Total number of divergent transitions after warmup (should be 0)."""
        return int(np.sum(self.sample_stats["diverging"]))


def nuts(
    log_density: Callable[[jax.Array], jax.Array],
    z_init: Any,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    seed: int = 0,
    init_scale: float = 0.1,
    dense_mass: bool = True,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
) -> NutsResult:
    """NumPyro NUTS on ``log_density`` in the unconstrained space, warm-started near the MAP:
    `fitcsc.sample` with ``method="nuts"`` (vectorized chains), dense mass by default.

    **Arguments:** as `fitcsc.sample`; `z_init` ``(d,)`` (jittered by ``init_scale``) or
    ``(num_chains, d)``.

    **Returns:** a `NutsResult`: ``z`` of shape ``(num_chains, num_samples, d)`` and
    ``sample_stats`` with ArviZ names (``diverging``, ``acceptance_rate``, ``n_steps``,
    ``tree_depth``, ``energy``, ``lp``, ``step_size``), each ``(num_chains, num_samples)``.

    **Raises:** `ValueError` if ``z_init`` has the wrong shape or non-finite entries.
    """
    post = sample(log_density, z_init, method="nuts", num_warmup=num_warmup,
                  num_samples=num_samples, num_chains=num_chains, seed=seed,
                  init_scale=init_scale, dense_mass=dense_mass,
                  target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
    return NutsResult(z=post.z, sample_stats=post.sample_stats)


def natural_name(name: str) -> str:
    """Name of the natural-scale variable `to_inference_data` adds for ``name``."""
    return f"{name}_natural"


def to_inference_data(
    samples: Any,
    names: Sequence[str],
    *,
    transforms: Mapping[str, Callable[[Any], Any]] | None = None,
    sample_stats: Mapping[str, Any] | None = None,
    observed: Mapping[str, Any] | None = None,
    method: Literal["laplace", "nuts", "chees"] = "laplace",
) -> az.InferenceData:
    """Draws of ``z`` as an ArviZ `InferenceData` with one scalar variable per parameter.

    **Arguments:**
    - `samples`: draws of ``z``, shape ``(chains, draws, d)`` or ``(draws, d)`` (one
      chain, e.g. `laplace_draws`).
    - `names`: ``d`` distinct labels, one per element of ``z`` (e.g. ``spec.labels()``).
    - `transforms`: optional ``{name: f}`` with ``f`` an elementwise map from ``z`` to the
      natural scale (``np.exp``, ``Positive().forward``, ...); each adds a posterior
      variable `natural_name` (``name + "_natural"``) beside the ``z``-scale one.
    - `sample_stats`: optional ``{stat: array}``, each ``(chains, draws)`` (``(draws,)``
      for 2-D ``samples``), e.g. `NutsResult.sample_stats`.
    - `observed`: optional ``{name: array}`` stored as the ``observed_data`` group.
    - `method`: how the draws were made, ``"laplace"``, ``"nuts"`` or ``"chees"``; stored in
      ``idata.posterior.attrs["method"]``.

    **Returns:** an `arviz.InferenceData` with groups ``posterior`` (dims ``chain``,
    ``draw``) and, when given, ``sample_stats`` and ``observed_data``.

    **Raises:** `ValueError` on inconsistent shapes, names or an unknown `method`.
    """
    x = np.asarray(samples, dtype=float)
    one_chain = x.ndim == 2
    if one_chain:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"to_inference_data: samples must be (chains, draws, d) or "
                         f"(draws, d), got shape {np.shape(samples)}")
    names = tuple(names)
    if len(names) != x.shape[-1] or len(set(names)) != len(names):
        raise ValueError(f"to_inference_data: need {x.shape[-1]} distinct names, got {names}")
    if method not in ("laplace", "nuts", "chees"):
        raise ValueError(f"to_inference_data: method must be 'laplace', 'nuts' or 'chees', "
                         f"got {method!r}")
    posterior = {n: x[..., i] for i, n in enumerate(names)}
    for n, f in (transforms or {}).items():
        if n not in names:
            raise ValueError(f"to_inference_data: transform for unknown name {n!r}; "
                             f"names are {names}")
        value = np.asarray(f(posterior[n]), dtype=float)
        if value.shape != x.shape[:2]:
            raise ValueError(f"to_inference_data: transform of {n!r} must be elementwise; "
                             f"got shape {value.shape} from {x.shape[:2]}")
        posterior[natural_name(n)] = value
    stats = None
    if sample_stats is not None:
        stats = {}
        for k, v in sample_stats.items():
            v = np.asarray(v)[None] if one_chain else np.asarray(v)
            if v.shape[:2] != x.shape[:2]:
                raise ValueError(f"to_inference_data: sample_stats[{k!r}] has shape "
                                 f"{np.shape(sample_stats[k])}, samples {np.shape(samples)}")
            stats[k] = v
    observed_data = None if observed is None else {k: np.asarray(v) for k, v in
                                                   observed.items()}
    attrs = {"method": method, "inference_library": "fitcsc"}
    return az.from_dict(posterior=posterior, sample_stats=stats, observed_data=observed_data,
                        attrs=attrs, posterior_attrs=dict(attrs))


def _single_chain_diagnostics(idata: az.InferenceData) -> dict[str, np.ndarray]:
    """ESS and MCSE of one chain, in `arviz.summary`'s row order (variables in order,
    elements flattened). ``arviz.summary`` would also try R-hat, which needs two chains,
    and log a warning per variable; R-hat is NaN here by definition."""
    out = {}
    for col, ds in (("ess_bulk", az.ess(idata, method="bulk")),
                    ("ess_tail", az.ess(idata, method="tail")),
                    ("mcse_mean", az.mcse(idata, method="mean"))):
        out[col] = np.concatenate([np.ravel(ds[v].values) for v in idata.posterior.data_vars])
    return out


def summarize(idata: az.InferenceData, *, hdi_prob: float = 0.95,
              var_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per posterior variable: mean, sd, highest-density interval and diagnostics.

    **Arguments:**
    - `idata`: from `to_inference_data` (any InferenceData with a ``posterior`` works;
      array variables give one row per element, named ``name[i]``).
    - `hdi_prob`: probability mass of the HDI.
    - `var_names`: the variables to summarise (default all).

    **Returns:** a list of dicts with keys ``name``, ``mean``, ``sd``, ``hdi_lo``,
    ``hdi_hi``, ``mcse_mean``, ``ess_bulk``, ``ess_tail``, ``r_hat`` (floats; ``r_hat``
    is NaN for a single chain, such as Laplace draws), plus ``method`` from the
    posterior's attrs (``""`` if absent).
    """
    if not 0.0 < hdi_prob < 1.0:
        raise ValueError(f"summarize: hdi_prob must be in (0, 1), got {hdi_prob}")
    one_chain = idata.posterior.sizes["chain"] < 2
    df = az.summary(idata, kind="stats" if one_chain else "all", hdi_prob=hdi_prob,
                    round_to="none", var_names=None if var_names is None else list(var_names))
    if one_chain:
        for col, values in _single_chain_diagnostics(idata).items():
            df[col] = values
        df["r_hat"] = math.nan
    hdi = [c for c in df.columns if c.startswith("hdi_")]
    method = str(idata.posterior.attrs.get("method", ""))
    rows = []
    for name, r in df.iterrows():
        rows.append({
            "name": str(name),
            "mean": float(r["mean"]),
            "sd": float(r["sd"]),
            "hdi_lo": float(r[hdi[0]]),
            "hdi_hi": float(r[hdi[1]]),
            "mcse_mean": float(r["mcse_mean"]),
            "ess_bulk": float(r["ess_bulk"]),
            "ess_tail": float(r["ess_tail"]),
            "r_hat": float(r["r_hat"]),
            "method": method,
        })
    return rows


def write_summary_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write `summarize` rows to ``path`` as CSV, atomically (temporary file + rename).

    Columns are ``SUMMARY_COLUMNS`` first, then any other keys in first-seen order;
    floats are written in full precision (``repr``), NaN as ``nan``.
    """
    path = pathlib.Path(path)
    header = list(SUMMARY_COLUMNS)
    for r in rows:
        header += [k for k in r if k not in header]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([repr(v) if isinstance(v, float) else ("" if v is None else v)
                    for v in (r.get(k) for k in header)])
    write_atomic(path, buf.getvalue().encode("utf-8"))


def predictive_interval(
    fn: Callable[[jax.Array], Any],
    draws: Any,
    *,
    prob: float = 0.95,
    batch: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and central (percentile) interval of ``fn(z)`` over parameter draws.

    ``fn`` is vmapped and jitted once; the draws go through in chunks of ``batch``
    (the last chunk padded to the same shape, so nothing recompiles).

    **Arguments:**
    - `fn`: JAX function of one ``z`` of shape ``(d,)``, returning an array of any
      shape ``S`` (e.g. the pCR rate of each arm).
    - `draws`: shape ``(n, d)`` or ``(chains, draws, d)`` (flattened over chains).
    - `prob`: interval mass: the ``(1 - prob) / 2`` and ``(1 + prob) / 2`` quantiles.
    - `batch`: draws per compiled call (bounds memory); all at once when ``None``.

    **Returns:** ``(mean, lo, hi)``, each a NumPy array of shape ``S``.

    **Raises:** `ValueError` on a bad `prob`, `batch` or empty `draws`.
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"predictive_interval: prob must be in (0, 1), got {prob}")
    z = np.asarray(draws, dtype=float)
    if z.ndim not in (2, 3) or z.size == 0:
        raise ValueError(f"predictive_interval: draws must be (n, d) or (chains, draws, d),"
                         f" got shape {z.shape}")
    z = z.reshape(-1, z.shape[-1])
    n = z.shape[0]
    size = n if batch is None else int(batch)
    if size < 1:
        raise ValueError(f"predictive_interval: batch must be >= 1, got {batch}")
    f = jax.jit(jax.vmap(fn))
    pad = (-n) % size
    zp = np.concatenate([z, np.repeat(z[-1:], pad, axis=0)]) if pad else z
    out = np.concatenate([np.asarray(f(jnp.asarray(zp[i:i + size])))
                          for i in range(0, zp.shape[0], size)])[:n]
    q = 50.0 * np.array([1.0 - prob, 1.0 + prob])
    lo, hi = np.percentile(out, q, axis=0)
    return out.mean(axis=0), lo, hi


# ---- population posteriors (fitcsc._fit.population) -------------------------------------

POPULATION_SITES = ("typical", "beta", "sigma")  # and omega_<level>, eta_<level>


def population_inference_data(pop, post, derived: Mapping[str, np.ndarray]) -> az.InferenceData:
    """A `fitcsc.PopulationModel`'s posterior as ArviZ `InferenceData`.

    **Arguments:** ``pop``; ``post``, the `fitcsc.Posterior` of ``pop.log_density``;
    ``derived``, `fitcsc._fit.population.posterior_derived` of ``post.z``.

    **Returns:** groups ``posterior`` (``typical`` and ``beta`` over dim
    ``fixed_effect``, ``omega_<level>`` over ``<level>_effect``, ``eta_<level>`` over
    ``(<level>, <level>_effect)``, ``sigma``, and ``theta``, each curve's parameters on
    their natural scale, over ``(subject, parameter)``), ``sample_stats``,
    ``log_likelihood``, ``posterior_predictive`` and ``observed_data`` (variable
    ``volume_mm3`` over dim ``obs``, one entry per real observation, with coordinates
    ``subject``, ``arm``, ``day`` and ``censored``; a censored entry holds its detection
    limit). Attributes: sampler, settings and timing.
    """
    mask = np.asarray(pop.curves.mask)
    ci, oi = np.nonzero(mask)
    posterior = {k: np.asarray(derived[k]) for k in (*POPULATION_SITES, "theta")}
    dims = {"typical": ["fixed_effect"], "beta": ["fixed_effect"],
            "theta": ["subject", "parameter"], "volume_mm3": ["obs"]}
    coords = {"fixed_effect": list(pop.fe_labels), "subject": list(pop.subject),
              "parameter": list(pop.labels), "obs": np.arange(ci.size)}
    for lev, labs, names in zip(pop.levels, pop.re_labels, pop.group_names, strict=True):
        posterior[f"omega_{lev}"] = np.asarray(derived[f"omega_{lev}"])
        posterior[f"eta_{lev}"] = np.asarray(derived[f"eta_{lev}"])
        dims[f"omega_{lev}"] = [f"{lev}_effect"]
        dims[f"eta_{lev}"] = [lev, f"{lev}_effect"]
        coords[f"{lev}_effect"] = list(labs)
        coords[lev] = list(names)
    c = pop.curves
    observed = np.asarray(c.volume_mm3)[ci, oi]
    attrs = {"inference_library": "fitcsc", "method": post.method,
             **{f"setting_{k}": v if isinstance(v, (float, str)) or v is None else int(v)
                for k, v in post.settings.items()},
             **{f"timing_{k}": float(v) for k, v in post.timing.items()}}
    idata = az.from_dict(
        posterior=posterior, sample_stats=dict(post.sample_stats),
        log_likelihood={"volume_mm3": np.asarray(derived["log_likelihood"])[..., ci, oi]},
        posterior_predictive={"volume_mm3": np.asarray(derived["volume_rep"])[..., ci, oi]},
        observed_data={"volume_mm3": observed}, coords=coords, dims=dims, attrs=attrs,
        posterior_attrs=attrs)
    obs_coords = {"subject": ("obs", np.asarray(pop.subject)[ci]),
                  "arm": ("obs", np.asarray(pop.arm)[ci]),
                  "day": ("obs", np.asarray(c.day)[ci, oi]),
                  "censored": ("obs", np.asarray(c.censored)[ci, oi])}
    for group in ("log_likelihood", "posterior_predictive", "observed_data"):
        setattr(idata, group, getattr(idata, group).assign_coords(obs_coords))
    return idata


def population_var_names(idata: az.InferenceData) -> list[str]:
    """The population-level variables (``typical``, the ``omega_*``, ``sigma``)."""
    return ["typical", *[v for v in idata.posterior.data_vars if v.startswith("omega_")],
            "sigma"]


def convergence(idata: az.InferenceData) -> dict[str, Any]:
    """Worst R-hat and smallest bulk/tail ESS over every sampled site (``beta``,
    ``omega_*``, ``eta_*``, ``sigma``) and over ``typical`` alone, and the divergences."""
    sampled = [v for v in idata.posterior.data_vars
               if v in ("beta", "sigma") or v.startswith(("omega_", "eta_"))]

    def worst(names):
        rh = az.rhat(idata, var_names=names)
        bulk = az.ess(idata, var_names=names, method="bulk")
        tail = az.ess(idata, var_names=names, method="tail")
        return (max(float(np.nanmax(rh[v].values)) for v in names),
                min(float(np.nanmin(bulk[v].values)) for v in names),
                min(float(np.nanmin(tail[v].values)) for v in names))

    r_all, b_all, t_all = worst(sampled)
    r_pop, b_pop, t_pop = worst(population_var_names(idata))
    div = idata.sample_stats.get("diverging")
    return {"rhat_max": r_all, "ess_bulk_min": b_all, "ess_tail_min": t_all,
            "rhat_max_population": r_pop, "ess_bulk_min_population": b_pop,
            "ess_tail_min_population": t_pop,
            "n_divergent": 0 if div is None else int(div.values.sum()),
            "n_draws": int(idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"])}


CHAIN_GROUPS = ("posterior", "sample_stats", "log_likelihood", "posterior_predictive")


def concat_chains(idatas: Sequence[az.InferenceData | str | os.PathLike],
                  names: Sequence[str] | None = None) -> az.InferenceData:
    """The chains of several runs of one population model as one `InferenceData`.

    ``idatas``: InferenceData, or the paths of their netCDF files (`posterior_outputs`'s
    ``posterior.nc``), which also name them. For chains run as separate processes (one
    per core, say): each run's
    ``posterior``, ``sample_stats``, ``log_likelihood`` and ``posterior_predictive``
    are concatenated along ``chain`` (renumbered from 0), ``observed_data`` is kept once.
    The runs must be the same model and sampler: the same variables, dims and
    coordinates, the same observed data and the same ``setting_*`` attributes except
    the seed, and their seeds must differ (two runs with one seed repeat the same
    chains, and R-hat and ESS would count them twice). ``names`` (the runs' files, say)
    name a run in the error. The result's attributes: ``setting_num_chains`` is the
    total, ``setting_seed`` the runs' seeds joined by commas, ``timing_*`` the slowest
    run's where every run has it (the runs went side by side), and ``merged_runs`` the
    number of runs.
    """
    idatas = list(idatas)
    if names is None:
        names = [str(x) if isinstance(x, (str, os.PathLike)) else f"run {i}"
                 for i, x in enumerate(idatas)]
    idatas = [az.from_netcdf(str(x)) if isinstance(x, (str, os.PathLike)) else x
              for x in idatas]
    names = list(names)
    if len(names) != len(idatas):
        raise ValueError(f"concat_chains: {len(idatas)} runs but {len(names)} names")
    if len(idatas) < 2:
        raise ValueError(f"concat_chains: needs at least 2 runs, got {len(idatas)}")
    first, name0 = idatas[0], names[0]
    attrs0 = dict(first.posterior.attrs)
    seeds = []
    for idata, name in zip(idatas, names, strict=True):
        for group in (*CHAIN_GROUPS, "observed_data"):
            if group not in idata.groups():
                raise ValueError(f"concat_chains: {name} has no {group} group")
            a, b = getattr(first, group), getattr(idata, group)
            if set(a.data_vars) != set(b.data_vars):
                raise ValueError(f"concat_chains: {name}'s {group} variables "
                                 f"{sorted(b.data_vars)} differ from {name0}'s "
                                 f"{sorted(a.data_vars)}")
            for v in a.data_vars:
                if a[v].dims != b[v].dims:
                    raise ValueError(f"concat_chains: {name}'s {group}.{v} has dims "
                                     f"{b[v].dims}, {name0}'s {a[v].dims}")
            for c in a.coords:
                if c not in ("chain", "draw") and not np.array_equal(a[c].values,
                                                                     b[c].values):
                    raise ValueError(f"concat_chains: {name}'s {group} coordinate {c!r} "
                                     f"differs from {name0}'s")
        if not np.array_equal(first.observed_data["volume_mm3"].values,
                              idata.observed_data["volume_mm3"].values, equal_nan=True):
            raise ValueError(f"concat_chains: {name}'s observed data differ from {name0}'s")
        attrs = dict(idata.posterior.attrs)
        for k in sorted(set(attrs0) | set(attrs)):
            if (k.startswith("setting_") and k != "setting_seed" or k == "method") \
                    and attrs0.get(k) != attrs.get(k):
                raise ValueError(f"concat_chains: {name} has {k}={attrs.get(k)!r}, "
                                 f"{name0} {attrs0.get(k)!r}: not the same sampler")
        seed = attrs.get("setting_seed")
        if seed is not None and seed in seeds:
            raise ValueError(f"concat_chains: {name} has seed {seed}, as an earlier run: "
                             "its chains would repeat that run's")
        seeds.append(seed)
    merged = az.concat(*idatas, dim="chain", reset_dim=True)
    timing = {k: max(float(i.posterior.attrs[k]) for i in idatas) for k in attrs0
              if k.startswith("timing_") and all(k in i.posterior.attrs for i in idatas)}
    attrs = {**attrs0, **timing, "setting_num_chains": int(merged.posterior.sizes["chain"]),
             "setting_seed": ",".join(str(s) for s in seeds), "merged_runs": len(idatas)}
    for group in CHAIN_GROUPS:
        getattr(merged, group).attrs.update(attrs)
    return merged


def sampler_timing(idata: az.InferenceData) -> dict[str, float]:
    """The sampler's timings [s] stored in ``idata``'s posterior attributes (``timing_*``
    without the prefix; for joined runs, `concat_chains`, the slowest run's)."""
    return {k.removeprefix("timing_"): float(v) for k, v in idata.posterior.attrs.items()
            if k.startswith("timing_")}


LOO_FLAT = 1e-3  # log-likelihood span over the draws below which `_loo` skips PSIS


def _loo(idata: az.InferenceData):
    """`arviz.loo` (pointwise), with plain importance sampling for the observations whose
    log-likelihood is (nearly) the same in every draw. PSIS fits a tail to their
    (nearly) identical weights and returns NaN, which made the whole model's elpd NaN
    (MAS98.06: censored volumes whose model volume lies far below the detection limit in
    every draw, log-likelihood -1e-28 to -1e-5). Where the log-likelihood spans at most
    `LOO_FLAT` over the draws, the importance weights differ by at most a factor
    e^LOO_FLAT, so the plain estimate ``-log mean exp(-ll)`` needs no smoothing (and lies
    between the smallest and largest log-likelihood, as the exact value does)."""
    res = az.loo(idata, pointwise=True)
    names = list(idata.log_likelihood.data_vars)
    loo_i = np.asarray(res.loo_i.values, float)
    if len(names) != 1 or not np.isnan(loo_i).any():
        return res
    ll = np.asarray(idata.log_likelihood[names[0]].values, float)
    ll = ll.reshape(-1, loo_i.size)  # (draws, observations), as loo_i is flattened
    fix = np.isnan(loo_i) & (np.ptp(ll, axis=0) <= LOO_FLAT)
    if not fix.any():
        return res
    plain = -(np.logaddexp.reduce(-ll, axis=0) - math.log(ll.shape[0]))
    loo_i = np.where(fix, plain, loo_i)
    res["loo_i"] = res.loo_i.copy(data=loo_i.reshape(res.loo_i.shape))
    lppd = float(np.sum(np.logaddexp.reduce(ll, axis=0) - math.log(ll.shape[0])))
    res["elpd_loo"] = float(loo_i.sum())
    res["se"] = float(math.sqrt(loo_i.size * np.var(loo_i)))
    res["p_loo"] = lppd - res["elpd_loo"]
    return res


def loo_compare(idatas: Mapping[str, az.InferenceData]) -> list[dict[str, Any]]:
    """PSIS-LOO comparison (`arviz.compare`, stacking weights) of models fitted to the
    same observations: one row per model, best first, with ``elpd_loo``, ``se``,
    ``p_loo``, ``elpd_diff``, ``dse``, ``weight`` and the number of observations whose
    Pareto k exceeds 0.7 (``n_k_high``: their LOO estimate is unreliable). An observation
    whose log-likelihood is nearly the same in every draw gets plain importance sampling
    (`_loo`)."""
    # an observation whose log-likelihood is the same in every draw (short runs) gives
    # arviz's Pareto fit a zero tail: a harmless division by zero
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", UserWarning)  # high-k notes: counted below
        # arviz 0.23's compare uses a pandas keyword that pandas 3 deprecates
        warnings.filterwarnings("ignore", message="The inplace keyword")
        loos = {name: _loo(d) for name, d in idatas.items()}
        table = az.compare(loos, ic="loo")
        k_high = {name: int((r.pareto_k.values > 0.7).sum()) for name, r in loos.items()}
    return [{"model": str(name), "rank": int(r["rank"]), "elpd_loo": float(r["elpd_loo"]),
             "se": float(r["se"]), "p_loo": float(r["p_loo"]),
             "elpd_diff": float(r["elpd_diff"]), "dse": float(r["dse"]),
             "weight": float(r["weight"]), "n_k_high": k_high[name]}
            for name, r in table.iterrows()]


def plot_diagnostics(idata: az.InferenceData, out_dir, *, pair_coords=None,
                     forest_var: str = "typical", forest_coords=None,
                     forest_xlabel: str = "value (natural scale)") -> list[str]:
    """Rank plots with densities (``trace_rank.png``), a pair plot of the fixed effects
    named in ``pair_coords`` on the sampled scale (``pair.png``, divergences marked) and a
    forest plot of ``forest_var`` (``forest.png``, 95% HDI, one row per element of ``forest_coords``
    (its last dim; default all), R-hat beside).
    **Returns:** the files written."""
    from ._io.files import pyplot

    plt = pyplot()
    out = pathlib.Path(out_dir)
    with warnings.catch_warnings():
        # arviz 0.23 calls a matplotlib helper that matplotlib 3.11 deprecates
        warnings.filterwarnings("ignore", message=".*alias_mapping")
        _diagnostic_figures(idata, out, pair_coords, forest_var, forest_coords, forest_xlabel)
    plt.close("all")
    return [str(out / f) for f in ("trace_rank.png", "pair.png", "forest.png")]


def _diagnostic_figures(idata, out, pair_coords, forest_var, forest_coords, forest_xlabel):
    from ._io.files import save_figure

    names = population_var_names(idata)
    n_rows = sum(idata.posterior[v].size // (idata.posterior.sizes["chain"]
                                             * idata.posterior.sizes["draw"]) for v in names)
    axes = np.atleast_2d(az.plot_trace(idata, var_names=names, kind="rank_bars",
                                       compact=False, figsize=(11, 1.5 * n_rows + 1)))
    for row in axes:
        row[0].title.set_fontsize(8)
        row[1].title.set_fontsize(8)
        row[1].set_ylabel("chain", fontsize=8)
        row[1].set_xlabel("")  # one axis label, on the last row
    axes[-1, 0].set_xlabel("value (natural scale; omega_*, sigma: SDs on the log/logit "
                           "scale)", fontsize=8)
    axes[-1, 1].set_xlabel("rank of the draw among all chains (flat bars: chains agree)",
                           fontsize=8)
    fig = axes[0, 0].figure
    fig.suptitle("Posterior by chain: densities (left) and rank plots (right)")
    fig.set_layout_engine("constrained")
    save_figure(fig, out / "trace_rank.png")
    coords = {"fixed_effect": list(pair_coords)} if pair_coords else None
    n_pair = len(pair_coords) if pair_coords else idata.posterior["beta"].shape[-1]
    side = min(10.0, 3.5 + 2.5 * max(n_pair - 1, 1))  # a lone pair is no 10-inch panel
    axes = az.plot_pair(idata, var_names=["beta"], coords=coords, kind="scatter",
                        divergences=True, figsize=(side, side), textsize=7,
                        scatter_kwargs={"alpha": float(np.clip(  # visible when few
                            100 / idata.posterior.sizes["draw"] / idata.posterior.sizes[
                                "chain"] * 2, 0.15, 0.6))})
    fig = np.ravel(axes)[0].figure
    fig.suptitle("Fixed effects, joint posterior on the sampled scale\n(log for positive, "
                 "logit for bounded parameters; red: divergent draws)", fontsize=9)
    save_figure(fig, out / "pair.png")
    fcoords = None if forest_coords is None else {
        idata.posterior[forest_var].dims[-1]: list(forest_coords)}
    sub = idata.posterior[forest_var] if fcoords is None else idata.posterior[
        forest_var].sel(fcoords)
    n = sub.size // (idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"])
    axes = az.plot_forest(idata, var_names=[forest_var], coords=fcoords, combined=True,
                          hdi_prob=0.95, r_hat=True, textsize=8, figsize=(10, 1.4 + 0.3 * n))
    axes[0].set_xlabel(forest_xlabel)
    axes[0].set_title("Posterior medians, 50% and 95% HDIs", fontsize=9)
    fig = axes[0].figure
    fig.set_layout_engine("constrained")
    save_figure(fig, out / "forest.png")


def psis_log_weights(log_ratios: Any) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance-sampling log weights (ArviZ ``psislw``) of draws with
    log density ratios ``log_ratios`` (target over proposal, any constant), normalised to
    log-sum-exp 0, and the Pareto shape ``k_hat`` (reliable below 0.7).

    ```python
    lw, k_hat = fs.psis_log_weights(-loss(draws) - log_q(draws))
    ```
    """
    lr = np.asarray(log_ratios, dtype=float)
    if lr.ndim != 1 or lr.size < 10:
        raise ValueError(f"psis_log_weights: expected >= 10 log ratios, got shape {lr.shape}")
    lr = np.where(np.isfinite(lr), lr, -np.inf)
    if not np.any(np.isfinite(lr)):
        raise ValueError("psis_log_weights: every log ratio is -inf or NaN")
    lw, k = az.psislw(lr - np.max(lr))
    return np.asarray(lw), float(k)


def chain_diagnostics(z: Any) -> dict[str, float]:
    """Worst R-hat (rank-normalised, split) and smallest bulk and tail ESS over the
    elements of ``z`` ``(chains, draws, d)`` (ArviZ): ``rhat_max``, ``ess_bulk_min``,
    ``ess_tail_min``. R-hat is NaN for a single chain."""
    x = np.asarray(z, dtype=float)
    if x.ndim != 3:
        raise ValueError(f"chain_diagnostics: expected (chains, draws, d), got {x.shape}")
    ds = az.convert_to_dataset({"z": x})
    r = np.asarray(az.rhat(ds)["z"].values) if x.shape[0] > 1 else np.full(1, math.nan)
    rhat = float(np.max(r[np.isfinite(r)])) if np.any(np.isfinite(r)) else math.nan
    return {"rhat_max": rhat,
            "ess_bulk_min": float(np.nanmin(az.ess(ds, method="bulk")["z"].values)),
            "ess_tail_min": float(np.nanmin(az.ess(ds, method="tail")["z"].values))}
