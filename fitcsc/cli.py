"""The ``fitcsc`` command line: a thin shell over the library.

Each subcommand is registered by a small function ``add_<name>_command(subparsers,
common)`` listed in `COMMANDS`; it adds its parser and sets ``handler`` (a function
``args -> exit code``). To add a command (``run``, ``simulate``, ``fit``, ``predict``),
write such a function and append it to `COMMANDS`.

Exit codes: 0 success, 2 refused input or bad usage. Refused input prints one line,
``fitcsc: error: <file>, line <n>, column '<c>': <what>; expected <x>, got <y>``, on
stderr and no traceback.

Examples::

    fitcsc data validate volumes.csv
    fitcsc --data-dir /data/public data validate pdxe_brca/pdxe_brca_tumor_volume.csv
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from ._errors import DataError, FitcscInputError


def _resolve_input(name: str) -> pathlib.Path:
    """``name`` as given if it exists (or is absolute), else relative to `data_dir`."""
    from ._data import data_dir

    path = pathlib.Path(name)
    if path.exists() or path.is_absolute():
        return path
    try:
        base = data_dir()
    except FitcscInputError:
        return path  # the reader reports "file not found"
    if (base / path).exists():
        return base / path
    raise DataError(
        "file not found",
        file=name,
        expected=f"a file in the current directory or in the data directory {base}",
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _describe_table(table, limit_mm3: float) -> str:
    return (
        f"{_n(len(table.subjects), 'subject')}, {_n(len(table.arms), 'arm')}, "
        f"{_n(table.n_rows, 'observation')} "
        f"({int(table.censored(limit_mm3).sum())} censored), "
        f"days {table.day.min():g}..{table.day.max():g}"
    )


def _describe_regimens(regimens) -> str:
    drugs = tuple(dict.fromkeys(d for reg in regimens.values() for d in reg.drugs))
    n_lines = sum(len(reg.lines) for reg in regimens.values())
    n_doses = sum(reg.n_doses for reg in regimens.values())
    return f"{_n(n_lines, 'dose line')}, {_n(n_doses, 'dose')} of {_n(len(drugs), 'drug')}" + (
        f" ({', '.join(drugs)})" if drugs else ""
    )


def _parse_cmt(text: str) -> tuple[int, str]:
    cmt, sep, drug = text.partition("=")
    if not sep or not cmt.strip().isdigit() or not drug.strip():
        raise argparse.ArgumentTypeError(f"expected CMT=DRUG (e.g. 1=trastuzumab), got {text!r}")
    return int(cmt), drug.strip()


def _data_validate(args) -> int:
    from ._data import detect_kind, read_regimen_table, read_tidy_csv
    from ._nonmem import read_nonmem

    path = _resolve_input(args.file)
    kind = detect_kind(path) if args.kind == "auto" else args.kind
    if kind == "tidy":
        summary = _describe_table(read_tidy_csv(path), args.detection_limit_mm3)
    elif kind == "regimen":
        regimens = read_regimen_table(path)
        summary = f"{_n(len(regimens), 'arm')}, {_describe_regimens(regimens)}"
    elif kind in ("pcr", "adjuvant", "links", "pk"):
        from ._clinical import read_clinical

        rows = read_clinical(path, kind)
        verified = sum(r["verified"] == "yes" for r in rows)
        summary = f"{_n(len(rows), 'row')}, {verified} verified, every row cited"
    else:
        table, regimens = read_nonmem(
            path,
            cmt_drugs=dict(args.cmt_drug) if args.cmt_drug else None,
            amount_unit=args.amount_unit,
            time_unit=args.time_unit,
        )
        summary = (
            f"{_describe_table(table, args.detection_limit_mm3)}, {_describe_regimens(regimens)}"
        )
    print(f"OK {kind}: {summary}")
    return 0


def add_data_command(subparsers, common) -> None:
    """``fitcsc data validate FILE``: check a tidy, regimen or NONMEM file."""
    data = subparsers.add_parser("data", help="check data files", parents=[common])
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    v = sub.add_parser(
        "validate",
        parents=[common],
        help="validate a tidy volume CSV, a regimen table or NONMEM event data",
        description="Validate FILE and print a one-line summary (exit 0), or print why "
        "it was refused (exit 2). A relative FILE missing from the current directory is "
        "looked up in the data directory.",
    )
    v.add_argument("file", metavar="FILE")
    v.add_argument(
        "--kind",
        choices=("auto", "tidy", "regimen", "nonmem", "pcr", "adjuvant", "links", "pk"),
        default="auto",
        help="file kind (default: detected from the header)",
    )
    v.add_argument(
        "--detection-limit-mm3",
        type=float,
        default=1.0,
        help="volumes below this are counted as censored (default 1.0)",
    )
    v.add_argument(
        "--cmt-drug",
        type=_parse_cmt,
        action="append",
        metavar="CMT=DRUG",
        help="NONMEM: drug dosed into compartment CMT (default 1=trastuzumab)",
    )
    v.add_argument(
        "--amount-unit",
        default="mg",
        choices=("mg", "mg/kg", "mg/m2"),
        help="NONMEM: unit of AMT (default mg)",
    )
    v.add_argument(
        "--time-unit",
        default="day",
        choices=("day", "hour"),
        help="NONMEM: unit of TIME (default day)",
    )
    v.set_defaults(handler=_data_validate)


def enable_compile_cache() -> None:
    """Use JAX's persistent compilation cache so a second run compiles nothing.

    Location: ``$FITCSC_CACHE_DIR``, else ``~/.cache/fitcsc/jax``; ``FITCSC_CACHE_DIR=off``
    disables it (`fitcsc._compile.enable_compile_cache`).
    """
    from ._compile import enable_compile_cache as enable

    enable()


def _run(args) -> int:
    from ._run import run_default

    enable_compile_cache()

    summary = run_default(args.regimens, args.out, quick=args.quick)
    print(f"fitcsc run: {summary['n_arms']} regimens simulated "
          f"({summary['n_failed']} failed) in {summary['wall_s']:.1f} s -> {args.out}/"
          f"{{summary.json, arms.csv, trajectories.csv, regimens.png}}")
    return 0 if summary["n_failed"] == 0 else 1


def add_run_command(subparsers, common) -> None:
    """``fitcsc run``: the main job on the embedded default data in data/."""
    r = subparsers.add_parser(
        "run", parents=[common], help="main job: simulate the published regimens in data/",
        description="Simulate every regimen of the regimen table (default: the published "
        "HER2+ trial arms in data/clinical/regimens.csv) with illustrative CSC-model "
        "parameters and write summary.json, arms.csv, trajectories.csv and regimens.png.",
    )
    r.add_argument("--regimens", metavar="FILE", default=None,
                   help="regimen table (default: data/clinical/regimens.csv)")
    r.add_argument("--out", metavar="DIR", default="runs/default",
                   help="output directory (default runs/default)")
    r.add_argument("--quick", action="store_true", help="a few arms, coarse output grid")
    r.set_defaults(handler=_run)


def _fit(args) -> int:
    from ._fitrun import fit_job

    if not args.no_compile_cache:
        enable_compile_cache()
    data = _resolve_input(args.data)
    regimens = None if args.regimens is None else _resolve_input(args.regimens)
    summary = fit_job(data, args.out, regimens_file=regimens, model=args.model,
                      starts=args.starts, chunk_size=args.chunk_size, quick=args.quick,
                      max_subjects=args.max_subjects,
                      detection_limit_mm3=args.detection_limit_mm3,
                      cmt_drugs=dict(args.cmt_drug) if args.cmt_drug else None,
                      share_growth_by=args.share_growth_by, evaluator=args.evaluator,
                      batching=args.batching, progress=not args.no_progress)
    for note in summary["warnings"] + summary["errors"]:
        print(f"fitcsc: warning: {note}", file=sys.stderr)
    counts = ", ".join(f"{v} {k}" for k, v in summary["status_counts"].items())
    shared = (f" in {_n(summary['n_groups'], 'group')} by {summary['share_growth_by']!r}"
              if "share_growth_by" in summary else "")
    print(f"fitcsc fit: {_n(summary['n_subjects'], 'subject')}{shared} fitted with "
          f"{summary['model']} ({counts}) in {summary['wall_s']:.1f} s -> {args.out}/"
          "{summary.json, fits.csv, *.png}")
    return 0


def add_fit_command(subparsers, common) -> None:
    """``fitcsc fit``: fit every subject of a tumour-volume file separately."""
    from ._fitrun import MODELS

    f = subparsers.add_parser(
        "fit", parents=[common], help="fit each subject of a tumour-volume file",
        description="Fit the CSC model (or a baseline) to every subject of a tidy CSV or "
        "NONMEM file by maximum likelihood (multi-start Levenberg-Marquardt, one fit per "
        "subject) and write summary.json, fits.csv and plots. Without --regimens, control "
        "arms are untreated and every other arm gets its own constant drug effect from "
        "day 0. Exit 0 when the job ran (failed fits are listed in fits.csv), 2 on "
        "refused input.",
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
    f.add_argument("--detection-limit-mm3", type=float, default=1.0,
                   help="volumes below this are left-censored (default 1.0)")
    f.add_argument("--quick", action="store_true",
                   help="2 starts, 100 optimiser steps, first 8 subjects (unless "
                   "--max-subjects), coarse curves")
    f.add_argument("--cmt-drug", type=_parse_cmt, action="append", metavar="CMT=DRUG",
                   help="NONMEM: drug dosed into compartment CMT (default 1=trastuzumab)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(handler=_fit)


def add_predict_command(subparsers, common) -> None:
    from ._predict import add_predict_command as add

    add(subparsers, common)


COMMANDS = [add_data_command, add_run_command, add_fit_command, add_predict_command]


def build_parser() -> argparse.ArgumentParser:
    """The ``fitcsc`` argument parser with every command of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="fitcsc", description="Fit cancer-stem-cell tumour models to data."
    )
    help_dir = (
        "directory of the public datasets (sets FITCSC_DATA_DIR; default: "
        "$FITCSC_DATA_DIR, else ../shared/data beside the repository)"
    )
    parser.add_argument("--data-dir", metavar="DIR", default=None, help=help_dir)
    # Accepted after the subcommand too; SUPPRESS keeps it from resetting the global one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS, help=help_dir)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``fitcsc`` command line; returns the exit code (0 ok, 2 refused)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors and --help
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.data_dir is not None:
        os.environ["FITCSC_DATA_DIR"] = str(args.data_dir)
    try:
        return int(args.handler(args))
    except FitcscInputError as err:
        message = " ".join(str(err).splitlines())
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
