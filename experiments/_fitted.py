"""Shared set-up for experiments that build on a saved trial fit (experiments/pcr_fit.py).

Not an experiment itself: `her2_low.py`, `csc_enrichment.py` and `pcr_cure.py` load it
by path (``load_module("_fitted")``), as the tests load the experiments.

- `resolve_fit`: the saved fit (``--fit``, default experiments/results/pcr_fit/fit.json);
  in ``--quick`` mode, when it is absent, pcr_fit's own quick fit is run into
  ``<out>/quick_fit`` so that the experiment is self-contained (CI).
- `build`: a `TrialModel` for new arms with the saved parameters, plus extra free
  parameters (e.g. HER2 dependence, a trial's micrometastatic burden) appended to ``z``
  at chosen natural-scale values, so they can be scanned by vmapping over ``z``.
"""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import fitcsc
from fitcsc.trials import TrialModel, from_natural, load_fit

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLINICAL = ROOT / "data" / "clinical"
DEFAULT_FIT = ROOT / "experiments" / "results" / "pcr_fit" / "fit.json"
YEAR = 365.25


def load_module(name: str):
    """Import ``experiments/<name>.py`` by path (the experiments are not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"_exp_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shown(path) -> str:
    """``path`` relative to the repository when inside it (results stay portable)."""
    p = pathlib.Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def resolve_fit(path, *, quick: bool, out: pathlib.Path) -> tuple[dict, str]:
    """The saved fit and a sentence saying where it came from.

    ``path`` may be a fit.json or its directory. When it does not exist: in quick mode
    pcr_fit's quick fit (NeoSphere only) is run into ``out / "quick_fit"``; otherwise
    `FileNotFoundError` (run experiments/pcr_fit.py first, or pass ``--fit``).
    """
    p = pathlib.Path(path)
    f = p / "fit.json" if p.is_dir() else p
    if f.exists():
        doc = load_fit(f)
        kind = "quick" if doc.get("quick") else "full"
        return doc, f"saved {kind} pCR fit {_shown(f)}"
    if not quick:
        raise FileNotFoundError(f"{f}: no saved trial fit; run experiments/pcr_fit.py "
                                "first or pass --fit PATH")
    pcr_fit = load_module("pcr_fit")
    qdir = out / "quick_fit"
    pcr_fit.main(pcr_fit.parse_args(["--quick", "--out", str(qdir)]))
    return load_fit(qdir / "fit.json"), (f"quick pCR fit (NeoSphere only) run here into "
                                         f"{qdir}, because {f} was absent")


def regimens() -> dict:
    return fitcsc.read_regimen_table(CLINICAL / "regimens.csv")


def build(doc: dict, arms, extra: dict | None = None, **options) -> tuple[TrialModel, np.ndarray]:
    """`TrialModel` for ``arms`` with the fit's parameters, calibration and options.

    ``extra`` ``{name: natural value}``: parameters made free (appended to the fit's
    names unless already there) and set to these values; everything else stays at the
    fit's estimate or fixed value. **Returns:** ``(tm, z)``.
    """
    names = list(doc["names"])
    extra = dict(extra or {})
    names += [n for n in extra if n not in names]
    opts = dict(doc["options"]) | options
    tm = TrialModel.build(arms, tuple(names), fixed=dict(doc["fixed"]),
                          base_kill=doc["base_kill"], **opts)
    z = np.concatenate([np.asarray(doc["z"], float), np.zeros(len(names) - len(doc["z"]))])
    for n, v in extra.items():
        z[names.index(n)] = from_natural(n, v)
    return tm, z


def arms_inside(rates, arm_names, obs, ci95) -> list[str]:
    """The arms of ``obs`` whose rate (``rates`` in ``arm_names`` order) lies inside the
    arm's exact binomial 95% interval ``ci95(count, n)``."""
    rates = np.asarray(rates)
    ix = {a: i for i, a in enumerate(arm_names)}
    out = []
    for o in obs:
        lo, hi = ci95(o.count, o.n)
        if lo <= rates[ix[o.arm]] <= hi:
            out.append(o.arm)
    return out


def natural_value(doc: dict, name: str) -> float:
    """A parameter's natural-scale value in a saved fit (estimate or fixed), or the
    documented default for fits made before the parameter existed."""
    from fitcsc.trials import PARAMETERS

    for src in (doc.get("natural", {}), doc.get("fixed", {})):
        if name in src:
            return float(src[name])
    return float(PARAMETERS[name.split("#")[0]][1])


def subset_arms(tm: TrialModel, idx) -> TrialModel:
    """``tm`` restricted to the arms ``idx`` (same parameters, names and grid length),
    without rebuilding the exposure grids (`TrialModel.build` compiles per arm)."""
    import dataclasses

    ix = np.asarray(idx)
    g = tm.grid
    return dataclasses.replace(
        tm, grid=type(g)(t=g.t[ix], conc=g.conc[ix], auc=g.auc[ix],
                         conc_gl=g.conc_gl[ix]),
        eval_day=tm.eval_day[ix], volume_mm3=tm.volume_mm3[ix],
        breast_only=tm.breast_only[ix], trial_index=tm.trial_index[ix],
        arm_names=tuple(tm.arm_names[i] for i in ix),
        settings=tuple(tm.settings[i] for i in ix))


def draws_for(doc: dict, z: np.ndarray, draws_doc: np.ndarray) -> np.ndarray:
    """Laplace draws of the fit's parameters, padded with ``z``'s extra entries."""
    d = len(doc["z"])
    tail = np.broadcast_to(z[d:], (draws_doc.shape[0], z.shape[0] - d))
    return np.concatenate([draws_doc, tail], axis=1)


def calibrate_burden(tm: TrialModel, z, res, arm: int, m_index: int, day: float,
                     target: float, *, lo: float = 0.0, hi: float = 35.0, iters: int = 60):
    """Log micrometastatic burden (``z[m_index]``, log cells) at which arm ``arm``'s DFS
    at ``day`` equals ``target``, by bisection (DFS falls as the burden rises); pure
    JAX, so it vmaps over parameter draws. ``res``: ``tm.residuals(z)`` (the burden
    does not change it). **Returns:** ``(log_cells, dfs_reached)``; a target outside
    ``[DFS(e^hi), DFS(e^lo)]`` gives the nearer end."""
    days = jnp.asarray([day], float)

    def dfs(lm):
        return tm.dfs(z.at[m_index].set(lm), days, res)[0][arm, 0]

    def body(_, ab):
        a, b = ab
        m = 0.5 * (a + b)
        above = dfs(m) > target
        return jnp.where(above, m, a), jnp.where(above, b, m)

    a, b = jax.lax.fori_loop(0, iters, body, (jnp.asarray(lo, float), jnp.asarray(hi, float)))
    lm = 0.5 * (a + b)
    return lm, dfs(lm)


def zero_dose_pad(control, experimental, name=None):
    """``control`` plus the lines of ``experimental``'s drugs that ``control`` lacks, at
    dose 0, so both arms end on the same day and share one evaluation day.

    A hazard ratio compares two arms at one horizon; with a common evaluation day the
    arms differ only in their drugs (an arm compared with itself at h = 0 gives HR 1
    exactly). Older `TrialModel` versions evaluated cure as ``exp(-pi S(t_eval))``,
    which drug-free regrowth before ``t_eval`` lowered; this padding removed that bias.
    """
    from fitcsc import DoseLine, Regimen

    have = set(control.drugs)
    pad = tuple(DoseLine(ln.drug, 0.0, ln.dose_unit, ln.start_day, ln.interval_day,
                         ln.n_doses, ln.infusion_hours)
                for ln in experimental.lines if ln.drug not in have)
    return Regimen(control.lines + pad, name=name or f"{control.name}+0")


def batched(fn, zs, *, batch: int) -> np.ndarray:
    """``fn`` (a JAX function of one ``z``) over the rows of ``zs``: vmapped, jitted
    once, in chunks of ``batch`` (the last one padded, so nothing recompiles)."""
    zs = np.asarray(zs, float)
    n = zs.shape[0]
    pad = (-n) % batch
    zp = np.concatenate([zs, np.repeat(zs[-1:], pad, axis=0)]) if pad else zs
    f = jax.jit(jax.vmap(fn))
    return np.concatenate([np.asarray(f(jnp.asarray(zp[i:i + batch])))
                           for i in range(0, zp.shape[0], batch)])[:n]


def save_figure(fig, path: pathlib.Path) -> None:
    """Save a matplotlib figure atomically (temporary name + rename)."""
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def as_float(x) -> float:
    return float(jnp.asarray(x))
