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
- plots: ``trace_rank.png``, ``pair.png``, ``forest.png``, ``ppc.png``, ``vpc.png``;
- ``report.md`` (`fitcsc._jobs.report.write_report`).

Progress of the MAP, the warm-up and the sampling goes to stderr on a terminal.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import jax
import numpy as np

from .._fit.baselines import BASELINES
from .._fit.driver import fit_map
from .._fit.population import posterior_derived
from .._fit.population_csc import V0, baseline_population, csc_population
from .._fit.sample import METHODS, sample, warmup_summary
from .._io.checkpoint import Checkpoint, fingerprint
from .._io.checkpoint import remove as remove_checkpoint
from .._io.files import run_record, write_atomic
from .._model.transforms import Interval
from .fit_job import LM_EXTRAS, LM_TOL, load_job_data, regimen_of

JOB = "population posterior (fitcsc sample)"  # summary.json's "job"
DEFAULTS = dict(num_chains=8, num_warmup=500, num_samples=500)
QUICK = dict(num_chains=4, num_warmup=40, num_samples=40)


def progress_printer(stream=None, *, quiet: bool = False):
    """A `fitcsc.sample` progress callback writing ``warmup 120/500 (31 s, step 0.04,
    37 leapfrog, accept 0.71, 0 divergent)`` and ``sampling 200/500 (95 s, max R-hat
    1.021, min bulk ESS 140, 0 divergent)`` (of the draws so far, in the sampler's
    coordinates: rank-normalised R-hat is that of every monotone transform) to
    ``stream`` (default stderr), in place on a terminal; None when ``quiet`` or not a
    terminal."""
    stream = sys.stderr if stream is None else stream
    if quiet or not getattr(stream, "isatty", lambda: False)():
        return None
    t0 = time.perf_counter()

    def report(phase, done, total, diagnostics=None, draws=None):
        end = "\n" if done == total else ""
        d = diagnostics or {}
        if phase == "sampling":  # the draws so far
            tail = "" if not d else f", {d['n_divergent']:.0f} divergent"
            if draws is not None and draws.shape[0] > 1 and draws.shape[1] >= 4:
                import warnings

                from ..summary import chain_diagnostics

                with warnings.catch_warnings():  # an element constant so far: NaN
                    warnings.simplefilter("ignore")
                    c = chain_diagnostics(draws)
                tail = (f", max R-hat {c['rhat_max']:.3f}, min bulk ESS "
                        f"{c['ess_bulk_min']:.0f}" + tail)
        else:
            tail = (f", step {d['step_size']:.3g}, {d['n_leapfrog']:.0f} leapfrog, accept "
                    f"{d['acceptance_rate']:.2f}, {d['n_divergent']:.0f} divergent"
                    if d else "")
        stream.write(f"\r{phase:>8} {done:5d}/{total} ({time.perf_counter() - t0:6.0f} s"
                     f"{tail})" + end)
        stream.flush()

    return report


MAP_Z_LIMIT = 30.0  # |z| beyond this (a factor e^30 on the natural scale): a boundary


def map_curve_z(pop, batch, *, num_starts: int = 4, max_steps=None):
    """Per-curve MAP (`fit_map`) in the layout of ``pop.labels``: ``(curve_z, sigma, info)``.

    The CSC model fits each curve's growth (v_S) and V0, everything else at the
    reference (NaN columns: the prior means start them); a baseline fits all its
    parameters. Failed curves are NaN rows; ``sigma`` is the median of the others'.
    """
    from .._fit.predictors import CSCPredictor, csc_predictor
    from .._model.transforms import ParamSpec, Positive

    t = time.perf_counter()
    labels = list(pop.labels)
    if isinstance(pop.predictor, CSCPredictor):
        pred = csc_predictor(pop.predictor.model, ParamSpec(
            {"csc_division_rate": Positive(), V0: Positive()}, pop.predictor.spec.reference),
            rtol=pop.predictor.rtol)
    else:
        pred = pop.predictor
    res = fit_map(pred, batch, num_starts=num_starts, sigma="estimate", rtol=LM_TOL,
                  atol=LM_TOL, max_steps=max_steps, **LM_EXTRAS)
    zc = np.full((batch.n_subjects, len(labels)), np.nan)
    for j, lab in enumerate(pred.spec.labels()):
        zc[:, labels.index(lab)] = np.asarray(res.z)[:, j]
    ok = np.asarray(res.status) <= 1
    zc[~ok] = np.nan
    # a boundary optimum (a rate running off to 0: the LM may leave it anywhere far out
    # on the flat side) is no start: its prior mean starts that element instead
    zc[np.abs(zc) > MAP_Z_LIMIT] = np.nan
    sigma = np.where(ok, np.asarray(res.sigma), np.nan)
    info = {"map": "fit_map per curve (" + ", ".join(pred.spec.labels()) + ")",
            "map_s": round(time.perf_counter() - t, 2),
            "map_status_counts": {int(k): int(v) for k, v in zip(
                *np.unique(np.asarray(res.status), return_counts=True), strict=True)}}
    return zc, sigma, info


def refine(log_density, z, *, steps: int = 300, learning_rate: float = 0.02):
    """``steps`` Adam steps uphill on ``log_density`` from ``z``; the best finite point
    seen (``z`` itself if none is better). Pure (`jax.lax.scan`): jit and vmap it."""
    import optax

    opt = optax.adam(learning_rate)
    jnp = jax.numpy

    def body(carry, _):
        z, state, best, best_lp = carry
        lp, g = jax.value_and_grad(log_density)(z)
        better = jnp.isfinite(lp) & (lp > best_lp)
        best, best_lp = jnp.where(better, z, best), jnp.where(better, lp, best_lp)
        upd, state = opt.update(-jnp.where(jnp.isfinite(g), g, 0.0), state)
        return (optax.apply_updates(z, upd), state, best, best_lp), None

    lp0 = log_density(z)
    init = (z, opt.init(z), z, jnp.where(jnp.isfinite(lp0), lp0, -jnp.inf))
    (_, _, best, _), _ = jax.lax.scan(body, init, None, length=steps)
    return best


def warm_start(pop, batch, *, num_starts: int = 4, max_steps=None, refine_steps: int = 300,
               learning_rate: float = 0.02):
    """Sampler start from a MAP: ``(values, info)``: `map_curve_z` (`fit_map` per curve),
    `PopulationModel.init_values` (fixed effects at the mean of their curves' estimates,
    random effects at their spread), then `refine` on the population log density."""
    t = time.perf_counter()
    zc, sigma, info = map_curve_z(pop, batch, num_starts=num_starts, max_steps=max_steps)
    z = pop.space.to_z(pop.init_values(zc, float(np.nanmedian(sigma))))
    lp0 = float(pop.log_density(z))
    if refine_steps:
        z = jax.jit(lambda z_: refine(pop.log_density, z_, steps=refine_steps,
                                      learning_rate=learning_rate))(z)
    info.update(refine_steps=int(refine_steps), log_density_map=lp0,
                log_density_start=float(pop.log_density(z)),
                warm_start_s=round(time.perf_counter() - t, 2))
    return pop.space.from_z(z), info


def build(table, regimens, batch, *, model="csc", group_by=None, effects="arm",
          stimulation=False):
    """``(pop, groups)`` for the job (see the module docstring)."""
    regs = [regimen_of(regimens, s, a) for s, a in zip(batch.subject, batch.arm, strict=True)]
    if group_by is None:
        groups = list(batch.study)
    else:
        from .fit_job import table_groups

        groups = table_groups(table, group_by, batch.subject)
    if model == "csc":
        pop = csc_population(batch, regs, groups=None if group_by is None else groups,
                             effects=effects, stimulation=stimulation,
                             level=group_by or "group")
    else:
        pop = baseline_population(model, batch, regs)
    return pop, groups


def posterior_outputs(pop, post, out, *, key, pair=None,
                      plots: bool = True) -> tuple[dict, object, list]:
    """InferenceData, summary table and (with ``plots``) plots of ``post`` in ``out``;
    returns the convergence summary (and the PPC coverage), the InferenceData and the
    summary rows."""
    import fitcsc.summary as fs

    idata = fs.population_inference_data(pop, post, posterior_derived(pop, post.z, key))
    diag, rows = write_posterior_outputs(pop, idata, out, pair=pair, plots=plots)
    return diag, idata, rows


def write_posterior_outputs(pop, idata, out, *, pair=None,
                            plots: bool = True) -> tuple[dict, list]:
    """``posterior.nc``, ``summary.csv`` and (with ``plots``) the plots of ``pop``'s
    posterior ``idata`` in ``out`` (also for chains of several runs,
    `fitcsc.summary.concat_chains`); returns the convergence summary (and the PPC
    coverage) and the summary rows."""
    import fitcsc.summary as fs

    from .population_plot import plot_ppc, plot_vpc, ppc_coverage
    from .report import param_unit

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".posterior.nc.tmp"
    idata.to_netcdf(str(tmp))
    tmp.replace(out / "posterior.nc")
    rows = fs.summarize(idata, var_names=fs.population_var_names(idata))
    fs.write_summary_csv(rows, out / "summary.csv")
    if not plots:
        return {**fs.convergence(idata), "ppc_coverage90": ppc_coverage(idata)}, rows
    effects = [f for f in pop.fe_labels if not f.startswith(V0)]
    bounded = [f for f, t in zip(pop.fe_labels, pop.fe_transforms, strict=True)
               if isinstance(t, Interval)]
    # one scale per forest plot: the bounded fractions, else the effects without V0 (a
    # volume of 100 mm3 beside rates of 0.05/day hides the rates)
    units = {param_unit(f.split("|")[0]) for f in effects}
    fs.plot_diagnostics(idata, out, pair_coords=pair or effects[:6],
                        forest_coords=bounded or effects or None,
                        forest_xlabel="fraction (efficacies, self-renewal p), typical value"
                        if bounded else "typical value " + (
                            f"[{units.pop()}]" if len(units) == 1 and "" not in units
                            else "(natural scale)"))
    coverage = plot_ppc(idata, out / "ppc.png")
    plot_vpc(idata, out / "vpc.png")
    return {**fs.convergence(idata), "ppc_coverage90": coverage}, rows


def sample_job(data_file, out_dir, *, regimens_file=None, model: str = "csc",
               group_by: str | None = None, effects: str = "arm", method: str = "chees",
               num_chains: int | None = None, num_warmup: int | None = None,
               num_samples: int | None = None, dense_mass: bool = False, seed: int = 0,
               detection_limit_mm3: float = 1.0, species: str = "mouse",
               quick: bool = False, progress: bool = True, report: bool = True,
               plots: bool = True, resume: bool = False,
               keep_checkpoint: bool = False) -> dict:
    """Run the sample job (see the module docstring). **Returns:** the summary.

    The warm start, the warm-up and every chunk of draws are checkpointed in
    ``out_dir/.checkpoint`` (`fitcsc._io.checkpoint`, removed at the end); with `resume`,
    an interrupted run continues from them to the same draws. With NUTS the resumed run
    may ask for another `num_samples`: more extend the chains from their saved state
    (the first draws are the interrupted run's), fewer stop early. Without it, an
    ``out_dir`` holding an unfinished run's checkpoint is refused. `keep_checkpoint`:
    leave the checkpoint in place when the run ends, so that a NUTS run can be extended
    later (`resume` with a larger `num_samples`). `report`: write
    ``report.md`` at the end (`fitcsc._jobs.report.write_report`; it shows the
    figures, so it needs `plots`)."""
    t0 = time.perf_counter()
    out = pathlib.Path(out_dir)
    settings = dict(QUICK if quick else DEFAULTS)
    settings.update({k: v for k, v in dict(num_chains=num_chains, num_warmup=num_warmup,
                                            num_samples=num_samples).items() if v is not None})
    batch, regimens, source, notes, table = load_job_data(
        data_file, regimens_file, model, species, detection_limit_mm3, 8 if quick else None,
        None, with_table=True)
    pop, groups = build(table, regimens, batch, model=model, group_by=group_by,
                        effects=effects)
    regs = [regimen_of(regimens, s, a) for s, a in zip(batch.subject, batch.arm, strict=True)]
    options = dict(model=model, group_by=group_by, effects=effects, method=method,
                   dense_mass=dense_mass, seed=seed, detection_limit_mm3=detection_limit_mm3,
                   species=species, quick=quick, **settings)
    if method == "nuts":  # NUTS's draws do not depend on how many follow: a resumed
        del options["num_samples"]  # run may ask for more draws (or fewer) than before
    ckpt = Checkpoint(out, "sample", fingerprint(
        options, batch, [(r.name, r.drugs, repr(r)) for r in regs], list(groups)),
        resume=resume)
    show = progress_printer(quiet=not progress)
    with ckpt.resumable():
        saved = ckpt.load("warm_start")
        if saved is None:
            if show:
                sys.stderr.write(f"MAP warm start of {batch.n_subjects} curves ...\n")
            values, start_info = warm_start(pop, batch, num_starts=2 if quick else 4,
                                            max_steps=100 if quick else None,
                                            refine_steps=50 if quick else 300)
            z_start = np.asarray(pop.space.to_z(values))
            ckpt.save("warm_start", {"z": z_start, "info": json.dumps(start_info)})
            start_info = json.loads(json.dumps(start_info))  # as a resumed run reads it
        else:
            z_start, start_info = saved["z"], json.loads(str(saved["info"]))
        post = sample(pop.log_density, z_start, method=method, dense_mass=dense_mass,
                      seed=seed, progress=show, checkpoint=ckpt, **settings)
    diag, _, rows = posterior_outputs(pop, post, out, key=jax.random.key(seed + 1),
                                      plots=plots)
    summary = {
        **_model_summary(data_file, source, batch, pop, model=model, group_by=group_by,
                         effects=effects, quick=quick),
        "sampler": post.settings, "timing": post.timing,
        "warmup": warmup_summary(post.warmup_stats),
        "warm_start": start_info, "convergence": diag, "notes": notes,
        "wall_s": round(time.perf_counter() - t0, 2),
        **run_record(sampler=seed, posterior_predictive=seed + 1),
        "checkpoint": ckpt.record(kept=keep_checkpoint),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    if report and plots:
        from .report import write_report

        write_report(out)
    if not keep_checkpoint:
        remove_checkpoint(out)  # every output written
    return summary


def _model_summary(data_file, source, batch, pop, *, model, group_by, effects,
                   quick) -> dict:
    """``summary.json``'s entries on the data and the model."""
    mask, cens = np.asarray(batch.mask), np.asarray(batch.censored & batch.mask)
    arm = np.asarray(batch.arm)
    return {
        "job": JOB, "quick": bool(quick),
        "data": str(getattr(data_file, "path", data_file)), "regimens": source,
        "model": model, "group_by": group_by, "effects": effects,
        "n_curves": batch.n_subjects, "n_observations": int(mask.sum()),
        "n_censored": int(cens.sum()),
        "arms": {a: {"curves": int(np.sum(arm == a)), "observations": int(mask[arm == a].sum()),
                     "censored": int(cens[arm == a].sum())} for a in dict.fromkeys(batch.arm)},
        "fixed_effects": list(pop.fe_labels),
        "random_effects": {lev: list(labs) for lev, labs in zip(pop.levels, pop.re_labels,
                                                                strict=True)},
        "n_parameters": pop.space.size,
    }


SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def sample_in_processes(args, data_file, regimens_file=None) -> dict:
    """``fitcsc sample --processes N``: the chains as ``N`` processes side by side, joined.

    Each process is ``fitcsc sample`` with this run's resolved options (written to
    ``OUT/processes/<i>.toml``, `fitcsc._jobs.config`), ``--chains / N`` chains and seed
    ``--seed + i``, one XLA thread and ``--no-plots``, in ``OUT/processes/<i>`` (its log
    beside it; the first process shows its progress on a terminal). When all have
    finished, their chains are joined into one posterior in ``OUT``
    (`fitcsc.summary.concat_chains`, `write_posterior_outputs`), with ``summary.json``
    listing each process. The data and the model are checked here first, so bad input
    is refused before any process starts; so is a device other than the CPU. With
    ``--resume``, a process that finished is kept and the others resume from their
    checkpoints. **Returns:** the summary."""
    import os
    import subprocess

    import tomli_w

    import fitcsc.summary as fs

    from .._errors import FitcscInputError
    from .config import resolved_config

    t0 = time.perf_counter()
    n, quick = int(args.processes), bool(args.quick)
    chains = args.chains if args.chains is not None else (QUICK if quick else DEFAULTS)[
        "num_chains"]
    if n < 1 or chains % n:
        raise FitcscInputError(f"--processes {n}: expected a number of processes that "
                               f"divides --chains {chains} (each process runs as many "
                               "chains)")
    if jax.default_backend() != "cpu":
        raise FitcscInputError(f"--processes {n}: runs the chains as CPU processes; on "
                               f"{jax.default_backend()}, the vmapped chains of one process "
                               "already run in parallel (drop --processes)")
    batch, regimens, source, notes, table = load_job_data(
        data_file, regimens_file, args.model, args.species, args.detection_limit_mm3,
        8 if quick else None, None, with_table=True)
    pop, _ = build(table, regimens, batch, model=args.model, group_by=args.group_by,
                   effects=args.effects)
    out = pathlib.Path(args.out)
    work = out / "processes"
    runs = [work / str(i) for i in range(n)]
    done = [(r / "summary.json").is_file() and not (r / ".checkpoint").exists()
            for r in runs]
    unfinished = [r for r in runs if (r / ".checkpoint").exists()]
    if unfinished and not args.resume:
        raise FitcscInputError(f"{unfinished[0]}: holds the checkpoint of an unfinished "
                               "process (or one kept with --keep-checkpoint); add --resume "
                               "to continue it, or choose another --out")
    draws = args.samples if args.samples is not None else (QUICK if quick else DEFAULTS)[
        "num_samples"]
    for run, finished in zip(runs, done, strict=True):
        had = (json.loads((run / "summary.json").read_text())["sampler"]["num_samples"]
               if finished and args.resume else draws)
        if had != draws:  # its checkpoint is gone: it cannot be extended
            raise FitcscInputError(f"{run}: this process finished with {had} draws per "
                                   f"chain, not the --samples {draws} asked for, and its "
                                   f"checkpoint is gone; ask for {had}, or choose another "
                                   "--out (--keep-checkpoint keeps a run extendable)")
    work.mkdir(parents=True, exist_ok=True)
    doc, _ = resolved_config(args.parser, args)  # the CLI's parser (`fitcsc.cli.main`)
    env = {**os.environ,
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()}
    show = not args.quiet and sys.stderr.isatty()
    procs = {}
    try:
        for i, run in enumerate(runs):
            if done[i] and args.resume:
                continue
            cfg = work / f"{i}.toml"
            write_atomic(cfg, tomli_w.dumps({
                **doc, "quiet": not (i == 0 and show),
                "sample": {**doc["sample"], "processes": 1, "chains": chains // n,
                           "no_plots": True,
                           "seed": int(args.seed) + i, "out": os.path.abspath(run)}}))
            log = (work / f"{i}.log").open("w")
            procs[i] = subprocess.Popen(
                [sys.executable, "-m", "fitcsc.cli", "sample", "--config", str(cfg)],
                stdout=log, stderr=None if i == 0 and show else log, env=env)
            log.close()
        failed = [(i, p.wait()) for i, p in procs.items()]
    except BaseException:
        for p in procs.values():
            p.terminate()
        raise
    failed = [(i, rc) for i, rc in failed if rc != 0]
    if failed:
        i, rc = failed[0]
        raise RuntimeError(f"process {i} of {n} (seed {int(args.seed) + i}) exited with "
                           f"code {rc}: see {work / f'{i}.log'}; the others' draws are kept "
                           "(rerun with --resume)")
    records = [json.loads((r / "summary.json").read_text()) for r in runs]
    idata = fs.concat_chains([r / "posterior.nc" for r in runs])
    diag, _ = write_posterior_outputs(pop, idata, out, plots=not args.no_plots)
    seeds = [r["sampler"]["seed"] for r in records]
    summary = {
        **_model_summary(data_file, source, batch, pop, model=args.model,
                         group_by=args.group_by, effects=args.effects, quick=quick),
        "sampler": {**records[0]["sampler"], "num_chains": chains, "seed": seeds},
        "timing": fs.sampler_timing(idata),  # the slowest process's
        "warmup": records[0]["warmup"], "warm_start": records[0]["warm_start"],
        "convergence": diag, "notes": notes,
        "processes": [{"out": str(run), "seed": r["sampler"]["seed"],
                       "num_chains": r["sampler"]["num_chains"],
                       "rhat_max": r["convergence"]["rhat_max"], "timing": r["timing"],
                       "wall_s": r["wall_s"]} for run, r in zip(runs, records, strict=True)],
        "wall_s": round(time.perf_counter() - t0, 2),
        **run_record(sampler=seeds, posterior_predictive=[s + 1 for s in seeds]),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    if not args.no_plots:
        from .report import write_report

        write_report(out)
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
        "refused input.",
        epilog="example: fitcsc sample --data volumes.csv --regimens regimens.csv --out "
        "runs/sample --group-by pdx_line (add --resume to continue an interrupted run)")
    p.add_argument("--data", metavar="FILE", required=True, help="tidy CSV or NONMEM file")
    p.add_argument("--regimens", metavar="FILE", default=None, help="regimen table (tidy CSV only)")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
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
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="run the chains as N processes side by side, one XLA thread each "
                        "(--chains split evenly, seeds SEED to SEED+N-1), then join them "
                        "into one posterior; warm-up and sampling 1.4-1.8x faster with 2 "
                        "processes on 2 free cores (benchmarks/sample_processes.py; "
                        "default 1)")
    p.add_argument("--no-plots", action="store_true",
                   help="write posterior.nc, summary.csv and summary.json only: no figures "
                        "and no report.md (the processes of --processes run so)")
    p.add_argument("--detection-limit-mm3", type=float, default=1.0)
    p.add_argument("--species", default="mouse", choices=("mouse", "human"))
    p.add_argument("--quick", action="store_true",
                   help="8 curves, 4 chains x 40 + 40 iterations (a smoke test)")
    from .._io.checkpoint import add_resume_option

    add_resume_option(p, "part (warm start, warm-up, chunk of draws)",
                      " With --method nuts, --samples may differ: more extend the chains "
                      "from their saved state, fewer stop early.")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep OUT/.checkpoint when the run ends (it is removed otherwise), "
                        "so that a NUTS run can be extended later with --resume and more "
                        "--samples")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from .._io.data import resolve_input
    from .compile import enable_compile_cache

    enable_compile_cache()
    regimens = None if args.regimens is None else resolve_input(args.regimens)
    if args.processes != 1:
        s = sample_in_processes(args, resolve_input(args.data), regimens)
    else:
        s = sample_job(resolve_input(args.data), args.out, regimens_file=regimens,
                       model=args.model, group_by=args.group_by, effects=args.effects,
                       method=args.method, num_chains=args.chains, num_warmup=args.warmup,
                       num_samples=args.samples, dense_mass=args.dense_mass, seed=args.seed,
                       detection_limit_mm3=args.detection_limit_mm3, species=args.species,
                       quick=args.quick, progress=not args.quiet, plots=not args.no_plots,
                       resume=args.resume, keep_checkpoint=args.keep_checkpoint)
    c = s["convergence"]
    if args.quiet:
        return 0
    print(f"fitcsc sample: {s['n_curves']} curves, {s['n_parameters']} parameters, "
          f"{c['n_draws']} draws, max R-hat {c['rhat_max']:.3f}, min bulk ESS "
          f"{c['ess_bulk_min']:.0f}, {c['n_divergent']} divergent, {s['wall_s']:.0f} s "
          f"-> {args.out}/")
    return 0
