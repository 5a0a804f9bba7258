"""Posterior summaries of fitted shared parameters: Laplace draws, NUTS and ArviZ tables.

This is the only module of fitcsc that imports ArviZ (so moving to ArviZ 1.x touches one
file), and the home of NumPyro NUTS. It serves small posteriors (a handful of drug-effect
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
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import pathlib
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

with warnings.catch_warnings():
    # arviz 0.2x announces its 1.x refactor with a FutureWarning at import; nothing for a
    # caller to act on (this module is the one place that will change), and it would fail
    # every test run under ``filterwarnings = error``.
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
    import arviz as az

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
    root = v * np.sqrt(np.clip(w, 0.0, None))  # cov = root @ root.T
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


# numpyro extra field -> ArviZ sample_stats name (as arviz.from_numpyro renames them)
_NUTS_FIELDS = {
    "diverging": "diverging",
    "accept_prob": "acceptance_rate",
    "num_steps": "n_steps",
    "energy": "energy",
    "potential_energy": "lp",
    "adapt_state.step_size": "step_size",
}


def nuts(
    log_density: Callable[[jax.Array], jax.Array],
    z_init: Any,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    chain_method: Literal["vectorized", "sequential", "parallel"] = "vectorized",
    seed: int = 0,
    progress_bar: bool = False,
    init_scale: float = 0.1,
    dense_mass: bool = True,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
) -> NutsResult:
    """NumPyro NUTS on ``log_density`` in the unconstrained space, warm-started near the MAP.

    **Arguments:**
    - `log_density`: ``z -> scalar`` log posterior density (up to a constant) of
      ``z`` of shape ``(d,)``, differentiable by JAX; include any transform log-Jacobian.
    - `z_init`: start, shape ``(d,)`` (each chain starts at ``z_init`` plus
      ``init_scale`` times a standard normal jitter) or ``(num_chains, d)`` (used as is).
    - `num_warmup`, `num_samples`, `num_chains`: per chain.
    - `chain_method`: ``"vectorized"`` (all chains in one vmapped program, the default),
      ``"sequential"`` or ``"parallel"`` (one device per chain).
    - `seed`: integer seed of the jitter and the sampler.
    - `progress_bar`: NumPyro's progress bar.
    - `init_scale`: jitter scale in ``z`` units.
    - `dense_mass`, `target_accept_prob`, `max_tree_depth`: NUTS options; a dense mass
      matrix suits the few, correlated parameters this is meant for.

    **Returns:** a `NutsResult`: ``z`` of shape ``(num_chains, num_samples, d)`` and
    ``sample_stats`` with ArviZ names (``diverging``, ``acceptance_rate``, ``n_steps``,
    ``tree_depth``, ``energy``, ``lp``, ``step_size``), each ``(num_chains, num_samples)``.

    **Raises:** `ValueError` if ``z_init`` has the wrong shape or non-finite entries.
    """
    z0 = jnp.asarray(z_init, dtype=float)
    key_init, key_run = jax.random.split(jax.random.key(seed))
    if z0.ndim == 1:
        jitter = jax.random.normal(key_init, (num_chains, z0.shape[0]))
        init = z0[None, :] + init_scale * jitter
    elif z0.ndim == 2 and z0.shape[0] == num_chains:
        init = z0
    else:
        raise ValueError(f"nuts: z_init must have shape (d,) or (num_chains={num_chains}, d),"
                         f" got {z0.shape}")
    if not bool(jnp.all(jnp.isfinite(init))):
        raise ValueError("nuts: z_init has non-finite entries")

    def potential(z):
        return -log_density(z)

    kernel = NUTS(potential_fn=potential, dense_mass=dense_mass,
                  target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples,
                num_chains=num_chains, chain_method=chain_method, progress_bar=progress_bar)
    mcmc.run(key_run, init_params=init if num_chains > 1 else init[0],
             extra_fields=tuple(_NUTS_FIELDS))
    z = np.asarray(mcmc.get_samples(group_by_chain=True))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {_NUTS_FIELDS[k]: np.asarray(v) for k, v in extra.items() if k in _NUTS_FIELDS}
    stats["lp"] = -stats["lp"]  # potential energy is -log density
    stats["tree_depth"] = np.log2(stats["n_steps"]).astype(int) + 1
    return NutsResult(z=z.reshape(num_chains, num_samples, -1), sample_stats=stats)


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
    method: Literal["laplace", "nuts"] = "laplace",
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
    - `method`: how the draws were made, ``"laplace"`` or ``"nuts"``; stored in
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
    if method not in ("laplace", "nuts"):
        raise ValueError(f"to_inference_data: method must be 'laplace' or 'nuts', "
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


def summarize(idata: az.InferenceData, *, hdi_prob: float = 0.95) -> list[dict[str, Any]]:
    """One row per posterior variable: mean, sd, highest-density interval and diagnostics.

    **Arguments:**
    - `idata`: from `to_inference_data` (any InferenceData with a ``posterior`` works;
      array variables give one row per element, named ``name[i]``).
    - `hdi_prob`: probability mass of the HDI.

    **Returns:** a list of dicts with keys ``name``, ``mean``, ``sd``, ``hdi_lo``,
    ``hdi_hi``, ``mcse_mean``, ``ess_bulk``, ``ess_tail``, ``r_hat`` (floats; ``r_hat``
    is NaN for a single chain, such as Laplace draws), plus ``method`` from the
    posterior's attrs (``""`` if absent).
    """
    if not 0.0 < hdi_prob < 1.0:
        raise ValueError(f"summarize: hdi_prob must be in (0, 1), got {hdi_prob}")
    one_chain = idata.posterior.sizes["chain"] < 2
    df = az.summary(idata, kind="stats" if one_chain else "all", hdi_prob=hdi_prob,
                    round_to="none")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
