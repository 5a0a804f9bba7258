"""``fitcsc sample``: a population posterior of every curve of a data file.

The job reads a tidy CSV (or NONMEM data) and its regimens (or the default arm
regimens), builds `csc_population` (or a baseline's `baseline_population`), starts the
chains at a MAP (`warm_start`: `fit_map` per curve, then the population's mode
nearby), samples (`fitcsc.sample`), and writes

- ``posterior.nc``: the ArviZ `InferenceData` (netCDF);
- ``summary.csv``: mean, sd, 95% HDI, MCSE, bulk and tail ESS and R-hat of the
  population-level variables (typical values, random-effect SDs, sigma);
- ``summary.json``: settings, timing, convergence (worst R-hat over every sampled
  variable, smallest ESS, divergences) and the warm start;
- plots: ``trace_rank.png``, ``pair.png``, ``forest.png``, ``ppc.png``, ``vpc.png``.

Progress of the MAP, the warm-up and the sampling goes to stderr on a terminal.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import jax
import numpy as np

from ._baselines import BASELINES
from ._fit import fit_map
from ._fitrun import LM_EXTRAS, LM_TOL, _load, _regimen_of
from ._population import posterior_derived
from ._population_csc import V0, baseline_population, csc_population
from ._run import write_atomic
from ._sample import METHODS, sample
from ._transforms import Interval

DEFAULTS = dict(num_chains=8, num_warmup=500, num_samples=500)
QUICK = dict(num_chains=4, num_warmup=40, num_samples=40)


def progress_printer(stream=None, *, quiet: bool = False):
    """A `fitcsc.sample` progress callback writing ``warmup 120/500`` to ``stream``
    (default stderr), in place on a terminal; None when ``quiet`` or not a terminal."""
    stream = sys.stderr if stream is None else stream
    if quiet or not getattr(stream, "isatty", lambda: False)():
        return None
    t0 = time.perf_counter()

    def report(phase, done, total):
        end = "\n" if done == total else ""
        stream.write(f"\r{phase:>8} {done:5d}/{total} ({time.perf_counter() - t0:6.0f} s)"
                     + end)
        stream.flush()

    return report


def warm_start(pop, batch, *, num_starts: int = 4, max_steps=None, refine_steps: int = 300,
               learning_rate: float = 0.02):
    """Sampler start from a MAP: ``(values, info)``.

    1. `fit_map`, per curve: the CSC model's growth (v_S) and V0 (everything else at the
       reference), or every parameter of a baseline;
    2. `PopulationModel.init_values`: each fixed effect at the mean of its curves'
       estimates (the prior mean where no curve estimates it), each random effect at
       the spread;
    3. ``refine_steps`` Adam steps on the population log density (the joint mode's
       neighbourhood; the best finite point is kept).
    """
    import optax

    from ._fit_predict import csc_predictor
    from ._transforms import ParamSpec, Positive

    t = time.perf_counter()
    labels = list(pop.labels)
    if hasattr(pop.predictor, "model"):
        ref = pop.predictor.spec.reference
        pred = csc_predictor(pop.predictor.model, ParamSpec(
            {"csc_division_rate": Positive(), V0: Positive()}, ref), rtol=pop.predictor.rtol)
    else:
        pred = pop.predictor
    res = fit_map(pred, batch, num_starts=num_starts, sigma="estimate", rtol=LM_TOL,
                  atol=LM_TOL, max_steps=max_steps, **LM_EXTRAS)
    zc = np.full((batch.n_subjects, len(labels)), np.nan)
    for j, lab in enumerate(pred.spec.labels()):
        zc[:, labels.index(lab)] = np.asarray(res.z)[:, j]
    ok = np.asarray(res.status) <= 1
    zc[~ok] = np.nan
    sigma = float(np.nanmedian(np.where(ok, np.asarray(res.sigma), np.nan)))
    z = pop.space.to_z(pop.init_values(zc, sigma))
    t_map = time.perf_counter() - t
    lp0 = float(pop.log_density(z))
    if refine_steps:
        opt = optax.adam(learning_rate)

        @jax.jit
        def step(z, state):
            lp, g = jax.value_and_grad(pop.log_density)(z)
            g = jax.numpy.where(jax.numpy.isfinite(g), g, 0.0)
            upd, state = opt.update(-g, state)
            return optax.apply_updates(z, upd), state, lp

        state, best, best_lp = opt.init(z), z, lp0
        for _ in range(refine_steps):
            z_new, state, lp = step(z, state)
            if np.isfinite(float(lp)) and float(lp) > best_lp:
                best, best_lp = z, float(lp)
            z = z_new
        z = best
    info = {"map": "fit_map per curve (" + ", ".join(pred.spec.labels()) + ")",
            "map_s": round(t_map, 2), "map_sigma": sigma,
            "map_status_counts": {int(k): int(v) for k, v in zip(
                *np.unique(np.asarray(res.status), return_counts=True), strict=True)},
            "refine_steps": int(refine_steps), "log_density_map": lp0,
            "log_density_start": float(pop.log_density(z)),
            "warm_start_s": round(time.perf_counter() - t, 2)}
    return pop.space.from_z(z), info


def build(table, regimens, batch, *, model="csc", group_by=None, effects="arm",
          stimulation=False):
    """``(pop, groups)`` for the job (see the module docstring)."""
    regs = [_regimen_of(regimens, s, a) for s, a in zip(batch.subject, batch.arm, strict=True)]
    if group_by is None:
        groups = list(batch.study)
    else:
        from ._fitrun_group import _table_groups

        groups = _table_groups(table, group_by, batch.subject)
    if model == "csc":
        pop = csc_population(batch, regs, groups=None if group_by is None else groups,
                             effects=effects, stimulation=stimulation,
                             level=group_by or "group")
    else:
        pop = baseline_population(model, batch, regs)
    return pop, groups


def posterior_outputs(pop, post, out, *, key, pair=None) -> dict:
    """InferenceData, summary table and plots of ``post`` in ``out``; returns the
    convergence summary (and the PPC coverage)."""
    import fitcsc.summary as fs

    from ._population_plot import plot_ppc, plot_vpc

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    derived = posterior_derived(pop, post.z, key)
    idata = fs.population_inference_data(pop, post, derived)
    tmp = out / ".posterior.nc.tmp"
    idata.to_netcdf(str(tmp))
    tmp.replace(out / "posterior.nc")
    rows = fs.summarize(idata, var_names=fs.population_var_names(idata))
    fs.write_summary_csv(rows, out / "summary.csv")
    effects = [f for f in pop.fe_labels if not f.startswith(V0)]
    bounded = [f for f, t in zip(pop.fe_labels, pop.fe_transforms, strict=True)
               if isinstance(t, Interval)]
    fs.plot_diagnostics(idata, out, pair_coords=pair or effects[:6],
                        forest_coords=bounded or None,
                        forest_xlabel="fraction (efficacies, self-renewal p), typical value"
                        if bounded else "value (natural scale)")
    coverage = plot_ppc(idata, out / "ppc.png")
    plot_vpc(idata, out / "vpc.png")
    return {**fs.convergence(idata), "ppc_coverage90": coverage}, idata, rows


def sample_job(data_file, out_dir, *, regimens_file=None, model: str = "csc",
               group_by: str | None = None, effects: str = "arm", method: str = "chees",
               num_chains: int | None = None, num_warmup: int | None = None,
               num_samples: int | None = None, dense_mass: bool = False, seed: int = 0,
               detection_limit_mm3: float = 1.0, species: str = "mouse",
               quick: bool = False, progress: bool = True) -> dict:
    """Run the sample job (see the module docstring). **Returns:** the summary."""
    t0 = time.perf_counter()
    out = pathlib.Path(out_dir)
    settings = dict(QUICK if quick else DEFAULTS)
    settings.update({k: v for k, v in dict(num_chains=num_chains, num_warmup=num_warmup,
                                            num_samples=num_samples).items() if v is not None})
    batch, regimens, source, notes, table = _load(
        data_file, regimens_file, model, species, detection_limit_mm3, 8 if quick else None,
        None, with_table=True)
    pop, _ = build(table, regimens, batch, model=model, group_by=group_by,
                              effects=effects)
    report = progress_printer(quiet=not progress)
    if report:
        sys.stderr.write(f"MAP warm start of {batch.n_subjects} curves ...\n")
    values, start_info = warm_start(pop, batch, num_starts=2 if quick else 4,
                                    max_steps=100 if quick else None,
                                    refine_steps=50 if quick else 300)
    post = sample(pop.log_density, pop.space.to_z(values), method=method,
                  dense_mass=dense_mass, seed=seed, progress=report, **settings)
    diag, _, rows = posterior_outputs(pop, post, out, key=jax.random.key(seed + 1))
    summary = {
        "data": str(getattr(data_file, "path", data_file)), "regimens": source,
        "model": model, "group_by": group_by, "effects": effects,
        "n_curves": batch.n_subjects, "n_observations": int(np.asarray(batch.mask).sum()),
        "n_censored": int(np.asarray(batch.censored & batch.mask).sum()),
        "fixed_effects": list(pop.fe_labels),
        "random_effects": {lev: list(labs) for lev, labs in zip(pop.levels, pop.re_labels,
                                                                strict=True)},
        "n_parameters": pop.space.size, "sampler": post.settings, "timing": post.timing,
        "warm_start": start_info, "convergence": diag, "notes": notes,
        "wall_s": round(time.perf_counter() - t0, 2),
        "device": str(jax.devices()[0]), "precision": str(np.asarray(jax.numpy.zeros(())).dtype),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def add_sample_command(subparsers, common) -> None:
    """Register ``fitcsc sample`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "sample", parents=[common],
        help="population posterior (hierarchical model, ChEES-HMC/NUTS) of every curve",
        description="Population posterior of every curve of a data file: a hierarchical "
        "CSC model (or a baseline) with the ODE solve inside, sampled from a MAP warm "
        "start; writes posterior.nc (ArviZ InferenceData), summary.csv, summary.json and "
        "trace/rank, pair, forest, posterior predictive and VPC plots. Exit 0 ok, 2 on "
        "refused input.")
    p.add_argument("--data", required=True, help="tidy CSV or NONMEM file")
    p.add_argument("--regimens", default=None, help="regimen table (tidy CSV only)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", default="csc", choices=("csc", *BASELINES))
    p.add_argument("--group-by", default=None,
                   help="column whose groups (e.g. pdx_line) get random effects on growth "
                        "and drug effects (default: animal-level growth effects)")
    p.add_argument("--effects", default="arm", choices=("arm", "drug"),
                   help="tumour-level drug effects per arm or per drug")
    p.add_argument("--method", default="chees", choices=METHODS)
    p.add_argument("--dense-mass", action="store_true", help="NUTS: dense mass matrix")
    p.add_argument("--chains", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detection-limit-mm3", type=float, default=1.0)
    p.add_argument("--species", default="mouse", choices=("mouse", "human"))
    p.add_argument("--quick", action="store_true",
                   help="8 curves, 4 chains x 40 + 40 iterations (a smoke test)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from .cli import _resolve_input, enable_compile_cache

    enable_compile_cache()
    regimens = None if args.regimens is None else _resolve_input(args.regimens)
    s = sample_job(_resolve_input(args.data), args.out, regimens_file=regimens,
                   model=args.model,
                   group_by=args.group_by, effects=args.effects, method=args.method,
                   num_chains=args.chains, num_warmup=args.warmup, num_samples=args.samples,
                   dense_mass=args.dense_mass, seed=args.seed,
                   detection_limit_mm3=args.detection_limit_mm3, species=args.species,
                   quick=args.quick, progress=not args.quiet)
    c = s["convergence"]
    print(f"fitcsc sample: {s['n_curves']} curves, {s['n_parameters']} parameters, "
          f"{c['n_draws']} draws, max R-hat {c['rhat_max']:.3f}, min bulk ESS "
          f"{c['ess_bulk_min']:.0f}, {c['n_divergent']} divergent, {s['wall_s']:.0f} s "
          f"-> {args.out}/")
    return 0
