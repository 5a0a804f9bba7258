"""The ``fitcsc`` command line: a thin shell over the library.

Each subcommand is registered by a small function ``add_<name>_command(subparsers,
common)`` listed in `COMMANDS`; it adds its parser and sets ``handler`` (a function
``args -> exit code``). To add a command (``run``, ``simulate``, ``fit``, ``predict``, ``sample``),
write such a function and append it to `COMMANDS`.

Exit codes (`main`): 0 success, 1 the run failed, 2 refused input or bad usage, 130
interrupted. Refused input prints one line, ``fitcsc: error: <file>, line <n>, column
'<c>': <what>; expected <x>, got <y>``, on stderr and no traceback; a failed run prints
``fitcsc: error: the run failed: ...``. Only ``--debug`` prints a traceback. Warnings
about legitimate but odd input print as ``fitcsc: warning: ...`` lines when the command
ends, except when the input is refused (then one line says why). Global options (before
or after the command): ``--data-dir``, ``--drug-catalogue FILE``, ``--quiet``,
``--debug``. ``fit``, ``sample``, ``simulate``, ``predict`` and ``run`` also take
``--config FILE.toml``, ``--device cpu|gpu`` and ``--x64/--no-x64``, and store the
resolved configuration in their result folder (`fitcsc._jobs.config`).

Examples::

    fitcsc data validate volumes.csv
    fitcsc data show volumes.csv --regimens regimens.csv
    fitcsc --data-dir /data/public data validate pdxe_brca/pdxe_brca_tumor_volume.csv
    fitcsc --drug-catalogue my_drugs.toml data validate my_regimens.csv
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import traceback
import warnings

from ._errors import DataWarning, FitcscInputError
from ._io.checkpoint import add_resume_option
from ._io.data import resolve_input
from ._io.show import plural as _n
from ._jobs.compile import enable_compile_cache
from ._jobs.config import CONFIG_COMMANDS, add_run_options, apply_config, runtime, write_config
from ._status import Exit, job_exit


def _parse_cmt(text: str) -> tuple[int, str]:
    cmt, sep, drug = text.partition("=")
    if not sep or not cmt.strip().isdigit() or not drug.strip():
        raise argparse.ArgumentTypeError(f"expected CMT=DRUG (e.g. 1=trastuzumab), got {text!r}")
    return int(cmt), drug.strip()


_parse_cmt.to_text = lambda pair: f"{pair[0]}={pair[1]}"  # its inverse, for config.toml


def _data_options(args) -> dict:
    """The reader options of the data commands and ``fit`` (`fitcsc._io.data.read_volumes`)."""
    return dict(duplicates=args.duplicates, time_unit=args.time_unit,
                amount_unit=args.amount_unit,
                cmt_drugs=dict(args.cmt_drug) if args.cmt_drug else None)


def _warn_species(args, kind, path) -> None:
    """NONMEM data are often clinical: say so when they are read without ``--species``."""
    if args.species is None and kind == "nonmem":
        warnings.warn(f"{path}: --species not given, so a mouse is assumed for the PK and "
                      "for mg/kg and mg/m2 doses (0.02 kg, 0.0066 m2); pass --species human "
                      "for clinical data", DataWarning, stacklevel=2)


def _read_data_file(args):
    """``(kind, path, result)`` of the data commands: a `VolumeData`, regimens or rows."""
    from ._io.data import detect_kind, read_regimen_table, read_volumes

    path = resolve_input(args.file)
    kind = detect_kind(path) if args.kind == "auto" else args.kind
    if kind == "regimen":
        return kind, path, read_regimen_table(path)
    if kind in ("pcr", "adjuvant", "links", "pk"):
        from ._io.clinical import read_clinical

        return kind, path, read_clinical(path, kind)
    regimens = None if args.regimens is None else resolve_input(args.regimens)
    got = read_volumes(path, regimens, kind=kind, **_data_options(args))
    _warn_species(args, got.kind, path)
    return kind, path, got


def _data_validate(args) -> int:
    from ._io.batch import make_batch
    from ._io.show import describe_regimens, describe_table

    kind, path, got = _read_data_file(args)
    if kind == "regimen":
        summary = f"{_n(len(got), 'arm')}, {describe_regimens(got)}"
    elif kind in ("pcr", "adjuvant", "links", "pk"):
        verified = sum(r["verified"] == "yes" for r in got)
        summary = f"{_n(len(got), 'row')}, {verified} verified, every row cited"
    else:
        summary = describe_table(got.table, args.detection_limit_mm3)
        if got.regimens is not None:
            # the doses too: every arm has a regimen, every drug its PK for the species
            make_batch(got.table, got.regimens, species=args.species or "mouse",
                       detection_limit_mm3=args.detection_limit_mm3)
            summary += f", {describe_regimens(got.regimens)}"
    if not args.quiet:
        print(f"OK {kind}: {summary}")
    return 0


def _data_show(args) -> int:
    from ._io.show import overview, regimen_overview

    kind, path, got = _read_data_file(args)
    if kind == "regimen":
        lines = regimen_overview(path, got)
    elif kind in ("pcr", "adjuvant", "links", "pk"):
        lines = [f"{path}: {kind}, {_n(len(got), 'row')}"]
        lines += [f"  {r.get('trial') or r.get('study') or r.get('drug')}: "
                  f"{r.get('arm_id') or r.get('analysis') or r.get('parameter') or ''}"
                  for r in got]
    else:
        lines = overview(got, limit_mm3=args.detection_limit_mm3,
                         max_subjects=None if args.all else 20)
    print("\n".join(lines))
    return 0


def data_options_parser() -> argparse.ArgumentParser:
    """The reader options shared by ``data validate``, ``data show`` and ``fit`` (one
    parent parser, so that no command accepts an option another ignores)."""
    d = argparse.ArgumentParser(add_help=False)
    d.add_argument("--duplicates", choices=("refuse", "mean", "first", "drop-subject"),
                   default="refuse",
                   help="a (subject, day) measured more than once: refuse (default; lists "
                   "them), mean (average the volumes), first (keep the first row), "
                   "drop-subject (drop those subjects); resolving warns")
    d.add_argument("--detection-limit-mm3", type=float, default=1.0,
                   help="volumes below this are left-censored (default 1.0)")
    d.add_argument("--species", choices=("mouse", "human"), default=None,
                   help="species of the subjects, for the drugs' PK and mg/kg, mg/m2 doses "
                   "(default mouse; NONMEM data without it warn)")
    d.add_argument("--cmt-drug", type=_parse_cmt, action="append", metavar="CMT=DRUG",
                   help="NONMEM: drug dosed into compartment CMT (default 1=trastuzumab)")
    d.add_argument("--amount-unit", default=None, choices=("mg", "mg/kg", "mg/m2"),
                   help="NONMEM: unit of AMT (default mg)")
    d.add_argument("--time-unit", default=None, choices=("day", "hour"),
                   help="NONMEM: unit of TIME, II and RATE's time (default day); converted "
                   "to days when read")
    return d


def add_data_command(subparsers, common) -> None:
    """``fitcsc data validate|show FILE``: check or list a tidy, regimen or NONMEM file."""
    data = subparsers.add_parser(
        "data", help="check and list data files", parents=[common],
        description="Check (validate) or list (show) a tidy volume CSV, a regimen table, "
        "NONMEM event data or a clinical table of data/. Examples: fitcsc data validate "
        "volumes.csv --regimens regimens.csv; fitcsc data show nm.csv --time-unit hour "
        "--species human")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    options = data_options_parser()
    v = sub.add_parser(
        "validate",
        parents=[common, options],
        help="validate a tidy volume CSV, a regimen table or NONMEM event data",
        description="Validate FILE and print a one-line summary (exit 0), or print why "
        "it was refused (exit 2). With --regimens, the doses are checked against the "
        "volumes (every arm has a regimen, every drug its PK). A relative FILE missing "
        "from the current directory is looked up in the data directory. Example: fitcsc "
        "data validate volumes.csv --duplicates mean",
    )
    s = sub.add_parser(
        "show", parents=[common, options],
        help="list a data file per study, arm and subject",
        description="Read FILE as validate does and list it: per study its arms (their "
        "regimen, or the effect a fit without regimen table assumes) and per arm its "
        "subjects (observations, censored, days, volumes). Example: fitcsc data show "
        "volumes.csv --regimens regimens.csv --all")
    s.add_argument("--all", action="store_true", help="list every subject (default: 20 "
                   "per arm)")
    for p in (v, s):
        p.add_argument("file", metavar="FILE")
        p.add_argument(
            "--kind",
            choices=("auto", "tidy", "regimen", "nonmem", "pcr", "adjuvant", "links", "pk"),
            default="auto",
            help="file kind (default: detected from the header)",
        )
        p.add_argument("--regimens", metavar="FILE", default=None,
                       help="regimen table of a tidy volume file")
    v.set_defaults(handler=_data_validate)
    s.set_defaults(handler=_data_show)


def _simulate(args) -> int:
    from ._jobs.simulate_job import run_default

    enable_compile_cache()

    summary = run_default(args.regimens, args.out, quick=args.quick)
    if not args.quiet:
        print(f"fitcsc simulate: {summary['n_arms']} regimens simulated "
              f"({summary['n_failed']} failed) in {summary['wall_s']:.1f} s -> {args.out}/"
              f"{{summary.json, arms.csv, trajectories.csv, regimens.png}}")
    return job_exit(summary["n_failed"] == 0)


def add_simulate_command(subparsers, common) -> None:
    """``fitcsc simulate``: every regimen of a regimen table, with illustrative parameters."""
    r = subparsers.add_parser(
        "simulate", parents=[common],
        help="simulate the regimens of a regimen table (illustrative parameters)",
        description="Simulate every regimen of the regimen table (default: the published "
        "HER2+ trial arms in data/clinical/regimens.csv) with illustrative CSC-model "
        "parameters (not fitted) and write summary.json, arms.csv, trajectories.csv and "
        "regimens.png.",
        epilog="example: fitcsc simulate --regimens my_regimens.csv --out runs/sim",
    )
    r.add_argument("--regimens", metavar="FILE", default=None,
                   help="regimen table (default: data/clinical/regimens.csv)")
    r.add_argument("--out", metavar="DIR", default="runs/simulate",
                   help="output directory (default runs/simulate)")
    r.add_argument("--quick", action="store_true", help="a few arms, coarse output grid")
    r.set_defaults(handler=_simulate)


def _run(args) -> int:
    from ._jobs.main import clinical_fit_job
    from ._trial.posterior import describe

    least = {"chains": 2 if args.posterior == "chees" else 1, "warmup": 1, "nodes": 3}
    for name, low in least.items():
        if getattr(args, name) < low:
            raise FitcscInputError(f"--{name}: expected an integer >= {low}"
                                   + (" (ChEES adapts across chains)" if low == 2
                                      else "") + f", got {getattr(args, name)}")
    enable_compile_cache()
    log = None if args.quiet else (lambda line: print(f"fitcsc run: {line}", file=sys.stderr))
    s = clinical_fit_job(args.out, quick=args.quick, starts=args.starts, steps=args.steps,
                         draws=args.draws, seed=args.seed, structure=args.structure,
                         posterior=args.posterior, chains=args.chains, warmup=args.warmup,
                         hyper=args.hyper, links=args.links, nodes=args.nodes, log=log)
    for w in s["warnings"]:
        print(f"fitcsc run: warning: {w}", file=sys.stderr)
    if not args.quiet:
        print(f"fitcsc run: {s['n_arms']} arms fitted in {s['wall_s']:.0f} s; "
              f"{s['n_within_binomial_ci95']} inside the published 95% CI; posterior "
              f"{args.posterior}: {describe(s['posterior'])} -> {args.out}/report.md")
    return 0


def add_run_command(subparsers, common) -> None:
    """``fitcsc run``: the main job, a fit of the embedded published data in data/."""
    from ._jobs.main import DEFAULT_STRUCTURE
    from ._trial.model import STRUCTURES
    from ._trial.posterior import METHODS

    r = subparsers.add_parser(
        "run", parents=[common],
        help="main job: fit the trial model to the published pCR counts in data/",
        description="Fit the clinical CSC trial model (shared drug effects) to every "
        "published neoadjuvant HER2+ arm with a pCR count in data/clinical/pcr_arms.csv, "
        "with the published pCR-outcome hazard ratios and neoadjuvant EFS/DFS landmarks, "
        "with posterior uncertainty, and write report.md, fit.json (usable by fitcsc "
        "predict --fit), arms.csv, posterior.csv, pcr_fit.png and summary.json. About "
        "25 minutes on one core of a 2-core CPU (23 arms of nine trials: 1412 s measured "
        "with the other core busy); --quick is a 20-second smoke run.",
        epilog="example: fitcsc run --out runs/default && fitcsc predict --fit runs/default "
        "--regimens my_trial.csv --out runs/pred",
    )
    r.add_argument("--out", metavar="DIR", default="runs/default",
                   help="output directory (default runs/default)")
    r.add_argument("--quick", action="store_true",
                   help="smoke run: NeoSphere arms only, 1 start, 25 steps, at most 200 "
                   "draws")
    r.add_argument("--starts", type=int, default=4, help="optimiser starts (default 4)")
    r.add_argument("--steps", type=int, default=200,
                   help="Levenberg-Marquardt steps per start at most (default 200)")
    r.add_argument("--draws", type=int, default=2000, help="posterior draws (default 2000)")
    r.add_argument("--seed", type=int, default=0, help="seed of starts and draws")
    r.add_argument("--nodes", type=int, default=13,
                   help="responsiveness quadrature nodes (default 13); the run checks the "
                   "fit at twice as many and warns when its loss or a pCR rate moves")
    r.add_argument("--structure", default=DEFAULT_STRUCTURE, choices=sorted(STRUCTURES),
                   help=f"trial model structure (default {DEFAULT_STRUCTURE})")
    r.add_argument("--posterior", default="linear", choices=METHODS,
                   help="posterior draws saved with the fit: linear (Laplace draws, every "
                   "prediction linearised at the MAP: the default, the one calibrated by "
                   "simulation), psis (Laplace draws reweighted by Pareto-smoothed importance "
                   "sampling), laplace (Laplace draws pushed through the model), nuts "
                   "(NumPyro NUTS) or chees (BlackJAX ChEES-HMC), "
                   "the chains warm-started from the MAP; flagged when they cannot be "
                   "trusted (k_hat > 0.7, R-hat > 1.01, any divergence)")
    r.add_argument("--hyper", default="fixed", choices=("fixed", "auto"),
                   help="the hierarchical prior sds (between-trial sd of log burden 1, HER2 "
                   "blocker spread 1, chemotherapy drug spread 0.5): fixed (the default, "
                   "chosen out of sample) or auto (the largest Laplace marginal likelihood, "
                   "then a refit there)")
    r.add_argument("--no-links", dest="links", action="store_false",
                   help="leave out the published HER2+ hazard ratios of pCR vs no pCR "
                   "(data/clinical/pcr_outcome_links.csv), which by default enter the fit "
                   "and set the share of micrometastatic CSCs out of the drugs' reach")
    r.add_argument("--chains", type=int, default=4,
                   help="nuts/chees: chains, vectorized (default 4; ChEES adapts its step "
                   "size across chains: 8 or more measured better)")
    r.add_argument("--warmup", type=int, default=500,
                   help="nuts/chees: warm-up steps per chain (default 500; --quick: at most "
                   "100)")
    r.set_defaults(handler=_run)


def _report(args) -> int:
    from ._jobs.report import write_report

    path = write_report(args.run_dir)
    if not args.quiet:
        print(f"fitcsc report: {path}")
    return 0


def add_report_command(subparsers, common) -> None:
    """``fitcsc report RUN_DIR``: rebuild a job folder's report from its files."""
    r = subparsers.add_parser(
        "report", parents=[common], help="rebuild the report of a job folder",
        description="Rebuild report.md (and the figures only the report draws) of a "
        "folder written by fitcsc run, fit, sample or predict, from the files the job "
        "wrote there (the kind comes from its summary.json); each job writes the same "
        "report when it ends. Any other folder is refused (exit 2).",
        epilog="example: fitcsc report runs/default",
    )
    r.add_argument("run_dir", metavar="RUN_DIR",
                   help="a folder written by fitcsc run, fit, sample or predict")
    r.set_defaults(handler=_report)


def _fit(args) -> int:
    from ._jobs.fit_job import fit_job

    if not args.no_compile_cache:
        enable_compile_cache()
    data = resolve_input(args.data)
    regimens = None if args.regimens is None else resolve_input(args.regimens)
    from ._io.data import detect_kind

    _warn_species(args, detect_kind(data), data)
    options = _data_options(args)
    summary = fit_job(data, args.out, regimens_file=regimens, model=args.model,
                      starts=args.starts, chunk_size=args.chunk_size, quick=args.quick,
                      max_subjects=args.max_subjects,
                      detection_limit_mm3=args.detection_limit_mm3,
                      cmt_drugs=options.pop("cmt_drugs"), data_options=options,
                      species=args.species or "mouse",
                      share_growth_by=args.share_growth_by, evaluator=args.evaluator,
                      batching=args.batching, progress=not (args.no_progress or args.quiet),
                      resume=args.resume)
    for note in summary["warnings"] + summary["errors"]:
        print(f"fitcsc: warning: {note}", file=sys.stderr)
    counts = ", ".join(f"{v} {k}" for k, v in summary["status_counts"].items())
    shared = (f" in {_n(summary['n_groups'], 'group')} by {summary['share_growth_by']!r}"
              if "share_growth_by" in summary else "")
    if not args.quiet:
        print(f"fitcsc fit: {_n(summary['n_subjects'], 'subject')}{shared} fitted with "
              f"{summary['model']} ({counts}) in {summary['wall_s']:.1f} s -> {args.out}/"
              "{summary.json, fits.csv, report.md, *.png}")
    return job_exit(summary["n_subjects"] - summary["n_failed"] > 0 and not summary["errors"])


def add_fit_command(subparsers, common) -> None:
    """``fitcsc fit``: fit every subject of a tumour-volume file separately."""
    from ._jobs.fit_job import MODELS

    f = subparsers.add_parser(
        "fit", parents=[common, data_options_parser()],
        help="fit each subject of a tumour-volume file",
        description="Fit the CSC model (or a baseline) to every subject of a tidy CSV or "
        "NONMEM file by maximum likelihood (multi-start Levenberg-Marquardt, one fit per "
        "subject) and write summary.json, fits.csv and plots. Without --regimens, control "
        "arms are untreated and every other arm gets its own constant drug effect from "
        "day 0. Exit 0 when the job ran (failed fits are listed in fits.csv), 1 when no "
        "subject could be fitted or a chunk of fits raised, 2 on refused input. Example: "
        "fitcsc fit --data nm.csv --time-unit hour --species human --out runs/nm",
    )
    f.add_argument("--data", metavar="FILE", required=True,
                   help="tidy CSV (study, arm, subject, day, volume_mm3) or NONMEM data")
    f.add_argument("--regimens", metavar="FILE", default=None,
                   help="regimen table (default: a constant effect per treated arm)")
    f.add_argument("--out", metavar="DIR", required=True, help="output directory")
    f.add_argument("--model", choices=MODELS, default="csc", help="model (default csc)")
    f.add_argument("--starts", type=int, default=4, help="starts per subject (default 4)")
    f.add_argument("--chunk-size", type=int, default=None,
                   help="subjects (curves, with --share-growth-by) per call of the fit "
                   "engine (default: all; every call runs the same compiled program)")
    f.add_argument("--share-growth-by", metavar="COLUMN", default=None,
                   help="fit the curves of each group of this data column together "
                   "(e.g. pdx_line): CSC growth (csc_division_rate, self_renewal) shared "
                   "by the group and estimated jointly with its untreated curve(s), drug "
                   "effects per group and arm, initial volume per curve; fits.csv keeps "
                   "one row per subject, the shared values repeated")
    f.add_argument("--evaluator", choices=("auto", "paced", "jacfwd"), default="auto",
                   help="how residuals and Jacobians are computed: paced (the CSC model's "
                   "ODE and sensitivities, each fit at its own pace; the fastest), jacfwd "
                   "(jax.jacfwd of any model); auto (default): paced where it runs")
    f.add_argument("--batching", choices=("vmap", "stacked"), default=None,
                   help="former name of --evaluator: vmap = jacfwd, stacked = paced")
    f.add_argument("--no-compile-cache", action="store_true",
                   help="do not use the persistent compilation cache (default: on, in "
                   "$FITCSC_CACHE_DIR or ~/.cache/fitcsc/jax; FITCSC_CACHE_DIR=off also "
                   "turns it off)")
    f.add_argument("--max-subjects", type=int, default=None, metavar="N",
                   help="fit only the first N subjects")
    f.add_argument("--quick", action="store_true",
                   help="2 starts, 100 optimiser steps, first 8 subjects (unless "
                   "--max-subjects), coarse curves")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_resume_option(f, "chunk (--chunk-size subjects)")
    f.set_defaults(handler=_fit)


def add_predict_command(subparsers, common) -> None:
    from ._jobs.predict import add_predict_command as add

    add(subparsers, common)


def add_sample_command(subparsers, common) -> None:
    from ._jobs.sample_job import add_sample_command as add

    add(subparsers, common)


COMMANDS = [add_data_command, add_run_command, add_simulate_command, add_fit_command,
            add_predict_command, add_sample_command, add_report_command]


def build_parser() -> argparse.ArgumentParser:
    """The ``fitcsc`` argument parser with every command of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="fitcsc", description="Fit cancer-stem-cell tumour models to data."
    )
    help_dir = (
        "directory of the public datasets (sets FITCSC_DATA_DIR; default: "
        "$FITCSC_DATA_DIR, else ../shared/data beside the repository)"
    )
    help_cat = ("a drug catalogue file (CSV or TOML) adding drugs and their PK (repeat for "
                "several; see data/README.md)")
    help_quiet = "no progress bar and no summary line (warnings and errors still print)"
    help_debug = "print the traceback of an error (for bug reports)"
    # Accepted before and after the subcommand; SUPPRESS keeps the latter from resetting
    # the former.
    common = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, None), (common, argparse.SUPPRESS)):
        flag = False if default is None else argparse.SUPPRESS
        p.add_argument("--data-dir", metavar="DIR", default=default, help=help_dir)
        p.add_argument("--drug-catalogue", metavar="FILE", action="append",
                       default=default, help=help_cat)
        p.add_argument("--quiet", action="store_true", default=flag, help=help_quiet)
        p.add_argument("--debug", action="store_true", default=flag, help=help_debug)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers, common)
    for name in CONFIG_COMMANDS:
        add_run_options(subparsers.choices[name], name)
    return parser


def _check_out(args) -> None:
    """Refuse an ``--out`` that cannot be a folder (it, or a folder above it, is a file)
    before the job runs, not when it writes its first file after minutes of fitting."""
    if getattr(args, "out", None) is None:
        return
    out = pathlib.Path(args.out)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise FitcscInputError(f"--out: {path} is a file, not a folder",
                                       expected="a new or existing folder", value=str(args.out))
            return


@contextlib.contextmanager
def _collect_warnings():
    """Collect fitcsc's `DataWarning` s (every one, not once per place) into the yielded
    list; other warnings print as Python prints them."""
    collected: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, DataWarning):
                return shown(message, category, filename, lineno, file, line)
            collected.append(" ".join(str(message).splitlines()))

        warnings.showwarning = show
        yield collected


def main(argv: list[str] | None = None) -> int:
    """Run the ``fitcsc`` command line; returns the exit code: 0 ok, 1 the run failed, 2
    refused input or bad usage, 130 interrupted (Ctrl-C). No traceback unless
    ``--debug``.

    Warnings about the input (`DataWarning`) print as ``fitcsc: warning: <text>`` lines
    when the command ends, unless the input is refused: then the error's one line is all
    that prints.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        finish = apply_config(parser, argv)  # --config FILE: its values become defaults
        args = parser.parse_args(argv)
        finish(args)
    except SystemExit as exit_:  # usage errors and --help
        return exit_.code if isinstance(exit_.code, int) else 2
    except FitcscInputError as err:  # a refused --config file
        if "--debug" in argv:
            traceback.print_exception(err)
        print(f"{parser.prog}: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    if args.data_dir is not None:
        os.environ["FITCSC_DATA_DIR"] = str(args.data_dir)
    error = None
    with _collect_warnings() as notes:
        try:
            _check_out(args)
            with runtime(args):  # --device, --x64: before the job makes any array
                if args.drug_catalogue:
                    from ._io.drug_catalogue import load_drug_catalogue

                    for path in args.drug_catalogue:
                        load_drug_catalogue(path)
                args.parser = parser  # for a job that launches itself (sample --processes)
                code = int(args.handler(args))
                if code in (Exit.OK, Exit.FAILED) and args.command in CONFIG_COMMANDS:
                    write_config(parser, args)
        except FitcscInputError as err:
            error, code, message = err, Exit.INPUT, " ".join(str(err).splitlines())
        except KeyboardInterrupt as err:
            error, code, message = err, Exit.INTERRUPTED, str(err) or "interrupted"
        except Exception as err:  # a failure of the run, not of the input
            error, code = err, Exit.FAILED
            message = (f"the run failed: {type(err).__name__}: "
                       f"{' '.join(str(err).splitlines())}"
                       + ("" if args.debug else " (run with --debug for the traceback)"))
    if code != Exit.INPUT:
        for note in notes:
            print(f"fitcsc: warning: {note}", file=sys.stderr)
    if error is None:
        return code
    if args.debug:
        traceback.print_exception(error)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
