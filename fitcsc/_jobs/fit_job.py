"""The fit job (`fitcsc fit`): one job for per-curve and shared-growth fits.

`fit_job` reads a tidy CSV (or NONMEM event data), builds each arm's regimen (from a
regimen table, from the NONMEM dose records, or `default_arm_regimens`: one constant
effect per treated arm), and fits by maximum likelihood (multi-start Levenberg–Marquardt,
sigma estimated) the CSC model or a baseline (exponential, logistic, Gompertz, Simeoni).

One chunk loop runs over *fit units* (`SubjectUnits`: each subject fitted alone by
`fit_map`; `GroupUnits`, ``--share-growth-by COLUMN``: the curves of each group fitted
together by `fit_group_batch`, growth shared and drug effects per arm). Both use one
model with a drug slot per drug kind of the data and the union spec of
`fitcsc._fit.csc_spec` (each curve estimating its arm's part), so every regimen shape shares
one compiled program; ``chunk_size`` cuts the units into calls of that many subjects
(curves, for groups), each checkpointed; a unit whose fit fails gets a failure status
and the job goes on. (With a regimen table, an arm that combines drug classes frees each
per-drug effect field for all its drugs; the elements of another class's drug do not
change the fit, are left empty in ``fits.csv`` and make that subject's Jacobian
singular.)

Outputs (written atomically): ``summary.json``, ``fits.csv`` (one row per subject),
``predictions.csv`` and the plots ``fits_subjects.png``, ``observed_vs_predicted.png``,
``residuals.png``, ``multistart.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import FitcscInputError
from .._fit.baselines import BASELINES, baseline_predictor
from .._fit.csc_spec import (
    CSC_REFERENCE,
    arm_predictor,
    arm_uses,
    csc_union_spec,
    drug_slots,
    param_column,
    slot_batch,
)
from .._fit.driver import bucket, evaluator_option, fit_map
from .._fit.groups import GroupBatch, expand, fit_group_batch, group_batch, group_predictor
from .._fit.predictors import CSCPredictor, SubjectData, csc_predictor, subject_data
from .._io.arms import constant_effect_message, default_arm_regimens
from .._io.batch import make_batch
from .._io.checkpoint import Checkpoint, fingerprint
from .._io.checkpoint import remove as remove_checkpoint
from .._io.files import csv_text, run_record, write_atomic
from .._model.drugs import CATALOGUE
from .._model.family import ModelConfig
from .._model.regimen import Regimen
from .._solve.simulate import simulate
from .._status import FitStatus
from .compile import CompileStats

MODELS = ("csc", *BASELINES)
LM_TOL = 1e-6  # rtol = atol of Levenberg–Marquardt (on z and on the loss)
# MINPACK lmder's step bound and the stall stop: boundary optima (an efficacy -> 0 or
# 1) stop instead of crawling to the cap (benchmarks/README.md, batch_fit)
LM_EXTRAS = {"trust_region": "bounded", "stall_rtol": 1e-8, "stall_steps": 2}
GRID_POINTS, QUICK_GRID_POINTS = 120, 40  # fine grid of the fitted curves
QUICK_STARTS, QUICK_MAX_STEPS, QUICK_MAX_SUBJECTS = 2, 100, 8
PLOTS = ("fits_subjects.png", "observed_vs_predicted.png", "residuals.png", "multistart.png")
JOB = "per-subject maximum-likelihood fits"  # summary.json's "job": JOB (model)
GROUP_JOB = "maximum-likelihood fits (csc), growth shared within each"  # ... 'column'
# Shared-growth fits: estimated per group, per curve; the ODE rtol of their curves (a
# group's LM steps wait for the slowest of its curves' solves; 1e-6, a relative volume
# error far below the measurement error, made one PDXE line's fit several times faster
# than the per-curve fits' 1e-8 on a 2-core CPU, same optimum).
SHARED = ("csc_division_rate", "self_renewal")
PER_SUBJECT = ("initial_volume_mm3",)
GROUP_ODE_RTOL = 1e-6

@dataclasses.dataclass
class JobFits:
    """Per-subject fit outputs in batch order (what the plots consume; duck-types the
    fields of `FitResult` they read). NaN rows for subjects whose chunk failed."""

    subject: tuple[str, ...]
    arm: tuple[str, ...]
    study: tuple[str, ...]
    status: np.ndarray  # FitStatus code (RAISED: the chunk raised)
    loss: np.ndarray
    log_volume_pred: np.ndarray  # (n_subjects, n_obs)
    all_losses: np.ndarray  # (n_subjects, n_starts)
    all_status: np.ndarray


def _status_name(code: int) -> str:
    return FitStatus(int(code)).label


def load_job_data(data_file, regimens_file, model, species, limit, max_subjects, cmt_drugs, *,
          with_table=False, data_options=None):
    """Batch, regimens (or None), regimen source and warnings (and the table, with
    ``with_table``). ``data_file`` may also be a `TidyTable` already read."""
    from .._io.data import TidyTable, read_regimen_table, read_volumes

    notes = []
    if isinstance(data_file, TidyTable):
        table, regimens, source = data_file, None, None
        if regimens_file is not None:
            regimens = read_regimen_table(regimens_file)
            source = f"regimen table {regimens_file}"
    else:  # units converted, duplicates resolved, plausibility checked: by the data layer
        loaded = read_volumes(data_file, regimens_file, cmt_drugs=cmt_drugs,
                              **(data_options or {}))
        table, regimens, source = loaded.table, loaded.regimens, loaded.regimen_source
    if max_subjects is not None:
        table = _head(table, max_subjects)
    if regimens is None:
        regimens = default_arm_regimens(table, warn=False)
        classes = {a: CATALOGUE[r.drugs[0]].drug_class for a, r in regimens.items() if r.lines}
        source = "default arm regimens (constant effect from day 0 per treated arm)"
        if classes and model in ("csc", "simeoni"):  # the other baselines ignore doses
            notes.append(constant_effect_message(classes))
    batch = make_batch(table, regimens, species=species, detection_limit_mm3=limit)
    if with_table:
        return batch, regimens, source, notes, table
    return batch, regimens, source, notes


def _head(table, n):
    """The table restricted to its first ``n`` subjects."""
    keep = np.isin(table.subject, np.asarray(table.subjects[:n], dtype=str))
    return dataclasses.replace(
        table, study=table.study[keep], arm=table.arm[keep], subject=table.subject[keep],
        day=table.day[keep], volume_mm3=table.volume_mm3[keep],
        extra={k: v[keep] for k, v in table.extra.items()},
        line=None if table.line is None else table.line[keep])


def regimen_of(regimens, subject, arm) -> Regimen:
    if regimens is None:
        return Regimen(name=arm)
    return regimens[subject] if subject in regimens else regimens[arm]


def _shapes(batch, regs, model):
    """Subjects by the classes of their regimen's drugs (what the summary lists)."""
    if model != "csc":
        return {(): list(range(batch.n_subjects))}
    out: dict[tuple, list[int]] = {}
    for i, reg in enumerate(regs):
        out.setdefault(tuple(CATALOGUE[d].drug_class for d in reg.drugs), []).append(i)
    return out


def grid_curves(predictor, data, z, grid):
    """Fitted volume [mm3], CSC fraction (NaN for baselines) and status on ``grid``
    (host arrays; subjects padded to a bucket, so few programs compile)."""
    n = np.asarray(z).shape[0]
    idx = np.resize(np.arange(n), bucket(n, 8))
    pick = jax.tree_util.tree_map(lambda x: np.asarray(x)[idx], (data, z, grid))
    return tuple(np.asarray(x)[:n] for x in _grid_curves(predictor, *pick))


@eqx.filter_jit
def _grid_curves(predictor, data, z, grid):

    def one(d, z_, g):
        gd = SubjectData(day=g, volume_mm3=jnp.full(g.shape, d.first_volume_mm3),
                         mask=jnp.ones(g.shape, bool), censored=jnp.zeros(g.shape, bool),
                         t0_day=d.t0_day, schedule=d.schedule)
        if isinstance(predictor, CSCPredictor):  # simulate, for the CSC fraction
            sol = simulate(predictor.model, predictor.params(z_, gd), d.schedule, g,
                           t0=d.t0_day, rtol=predictor.rtol, atol=predictor.atol,
                           max_steps=4 * predictor.max_steps)
            return sol.volume_mm3, sol.csc_fraction, sol.status
        log_v, status = predictor(z_, gd)
        return jnp.exp(log_v), jnp.full(g.shape, jnp.nan), status

    return jax.vmap(one)(data, z, grid)


def _fmt(x) -> str:
    return "" if x is None else f"{x:.6g}"


def fit_job(
    data_file,
    out_dir,
    *,
    regimens_file=None,
    model: str = "csc",
    starts: int = 4,
    chunk_size: int | None = None,
    quick: bool = False,
    max_subjects: int | None = None,
    sigma: float | str = "estimate",
    species: str = "mouse",
    detection_limit_mm3: float = 1.0,
    max_panels: int = 24,
    cmt_drugs: dict[int, str] | None = None,
    share_growth_by: str | None = None,
    progress: bool = True,
    evaluator: str = "auto",
    batching: str | None = None,
    lanes: int | None = None,
    data_options: dict | None = None,
    report: bool = True,
    resume: bool = False,
) -> dict:
    """Fit every subject of ``data_file`` separately and write the results to ``out_dir``.

    **Arguments:**
    - `data_file`: tidy CSV (``study, arm, subject, day, volume_mm3``) or NONMEM data
      (or a `TidyTable` already read, e.g. a subset).
    - `out_dir`: output directory (created).
    - `regimens_file`: regimen table for a tidy CSV; without it, `default_arm_regimens`
      (controls untreated, one constant effect per treated arm; listed in the summary's
      warnings).
    - `model`: ``"csc"`` (each subject the per-arm spec of `csc_arm_spec`, logistic
      crowding) or one of `BASELINES`.
    - `starts`: multi-start starts per subject.
    - `chunk_size`: subjects per `fit_map` call (default: all in one; every call runs
      the same compiled program); with `share_growth_by`, curves per call.
    - `quick`: at most 2 starts, 100 optimiser steps, a coarse curve grid and, unless
      `max_subjects` is given, the first 8 subjects.
    - `max_subjects`: fit only the first subjects of the file.
    - `sigma`: SD of the log-volume error: ``"estimate"`` (per subject) or a float.
    - `species`, `detection_limit_mm3`: as in `make_batch`.
    - `max_panels`: subjects shown in ``fits_subjects.png``.
    - `cmt_drugs`: NONMEM only: ``{CMT: drug}`` (see `read_nonmem`).
    - `share_growth_by`: a column of the data (e.g. ``"pdx_line"``): fit the curves of
      each of its groups together, growth shared and drug effects per arm (CSC model
      only; see `fitcsc._jobs.fit_job.GroupUnits`).
    - `progress`: a progress bar over subjects (only on a terminal).
    - `evaluator`: `fit_map`'s (``"auto"``: paced ODE solves for the CSC model, jacfwd
      for the baselines and group fits); `batching`: its former name.
    - `lanes`: fits in flight at once (`fit_map`'s ``lanes``; default 128).

    CSC subjects of every regimen shape are fitted by one model with a drug slot per
    drug kind of the data (`drug_slots`) and a union spec (`csc_union_spec`), each
    subject estimating the part of it that its arm identifies (`ArmPredictor`): one
    compiled program for the whole file. ``summary.json`` records the compilations
    (``compile``: count, seconds, persistent-cache hits).
    - `data_options`: reader options of the data file (``duplicates``, NONMEM
      ``time_unit``, ``amount_unit``; see `fitcsc._io.data.read_volumes`).
    - `report`: write ``report.md`` (and ``fits_by_arm.png``) at the end
      (`fitcsc._jobs.report.write_report`).
    - `resume`: continue the interrupted run whose checkpoint ``out_dir`` holds.

    Every finished chunk is checkpointed in ``out_dir/.checkpoint`` (`fitcsc._io.checkpoint`;
    removed when every chunk is done): with `resume`, finished chunks are loaded, not
    refitted, and the outputs equal an uninterrupted run's (``fits.csv`` byte for byte).
    Without `resume`, an ``out_dir`` holding an unfinished run's checkpoint is refused;
    with `resume`, one of other data or options is refused. Ctrl-C raises
    `KeyboardInterrupt` with a message saying how to resume; the checkpoint stays.

    **Returns:** the summary (also ``summary.json``).

    **Raises:** `FitcscInputError` (one line) for refused data or options. A subject
    whose fit fails never stops the job: see its ``status`` in ``fits.csv``.
    """
    t_start = time.perf_counter()
    with CompileStats() as comp:
        summary = _fit_job(data_file, out_dir, regimens_file=regimens_file, model=model,
                           starts=starts, chunk_size=chunk_size, quick=quick,
                           max_subjects=max_subjects, sigma=sigma, species=species,
                           detection_limit_mm3=detection_limit_mm3, max_panels=max_panels,
                           cmt_drugs=cmt_drugs, share_growth_by=share_growth_by,
                           progress=progress, evaluator=evaluator, batching=batching,
                           lanes=lanes, data_options=data_options, t_start=t_start,
                           resume=resume)
    summary["compile"] = comp.summary()
    summary["wall_s"] = round(time.perf_counter() - t_start, 3)
    write_atomic(pathlib.Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
    if report:
        from .report import write_report

        write_report(out_dir)
    if not summary["errors"]:  # every chunk done and every output written
        remove_checkpoint(out_dir)
    return summary


def _fit_job(data_file, out_dir, *, regimens_file, model, starts, chunk_size, quick,
             max_subjects, sigma, species, detection_limit_mm3, max_panels, cmt_drugs,
             share_growth_by, progress, evaluator, batching, lanes, data_options,
             t_start, resume) -> dict:
    _check_options(model, sigma, starts=starts, chunk_size=chunk_size,
                   max_subjects=max_subjects, max_panels=max_panels, lanes=lanes)
    n_grid, max_steps = GRID_POINTS, None
    if quick:
        starts, n_grid, max_steps = min(starts, QUICK_STARTS), QUICK_GRID_POINTS, QUICK_MAX_STEPS
        max_subjects = QUICK_MAX_SUBJECTS if max_subjects is None else max_subjects
    try:
        evaluator = evaluator_option(evaluator, batching, "fit")
    except ValueError as err:
        raise FitcscInputError("bad --batching", column="--batching",
                               expected="vmap or stacked", value=batching) from err
    if evaluator not in ("auto", "paced", "jacfwd"):
        raise FitcscInputError("bad --evaluator", column="--evaluator",
                               expected="auto, paced or jacfwd", value=evaluator)
    if share_growth_by is not None and evaluator == "paced":
        raise FitcscInputError("--share-growth-by fits run the jacfwd evaluator",
                               column="--evaluator", expected="auto or jacfwd",
                               value=evaluator)
    if share_growth_by is not None and model != "csc":
        raise FitcscInputError("--share-growth-by needs the CSC model", column="--model",
                               expected="csc", value=model)
    batch, regimens, source, notes, table = load_job_data(
        data_file, regimens_file, model, species, detection_limit_mm3, max_subjects,
        cmt_drugs, with_table=True, data_options=data_options)
    regs = [regimen_of(regimens, s, a) for s, a in zip(batch.subject, batch.arm, strict=True)]
    options = dict(model=model, starts=starts, chunk_size=chunk_size, quick=quick,
                   max_subjects=max_subjects, sigma=sigma, species=species,
                   detection_limit_mm3=detection_limit_mm3, share_growth_by=share_growth_by,
                   evaluator=evaluator, lanes=lanes, max_steps=max_steps, n_grid=n_grid)
    digest = fingerprint(options, batch, [(r.name, r.drugs, repr(r)) for r in regs],
                         None if share_growth_by is None else [
                             table.study.tolist(), table.subject.tolist(),
                             table.extra.get(share_growth_by, np.array([])).tolist()])
    ckpt = Checkpoint(out_dir, "fit", digest, resume=resume)
    fit_options = dict(starts=starts, sigma=sigma, max_steps=max_steps, lanes=lanes)
    if share_growth_by is None:
        units = SubjectUnits(batch, regs, model=model, species=species,
                             evaluator=evaluator, **fit_options)
    else:
        units = GroupUnits(batch, regs, share_growth_by,
                           table_groups(table, share_growth_by, batch.subject),
                           species=species, **fit_options)

    n = batch.n_subjects
    raised = int(FitStatus.RAISED)  # until its chunk's fit lands
    fits = JobFits(batch.subject, batch.arm, batch.study, np.full(n, raised),
                   np.full(n, np.nan), np.full((n, batch.n_obs), np.nan),
                   np.full((n, starts), np.nan), np.full((n, starts), raised))
    day, mask = np.asarray(batch.day), np.asarray(batch.mask)
    grid = np.stack([np.linspace(d[m][0], d[m][-1], n_grid) for d, m in zip(day, mask,
                                                                             strict=True)])
    curves = np.full((2, *grid.shape), np.nan)  # fitted volume, CSC fraction
    per_subject: list[dict] = [{"params": {}} for _ in range(n)]
    errors: list[str] = []
    chunks = units.chunks(chunk_size)

    from tqdm import tqdm

    bar = tqdm(total=units.n, desc=units.desc, unit=units.unit,
               disable=not (progress and sys.stderr.isatty()))
    t_fit0 = time.perf_counter()
    with ckpt.resumable():
        for c, chunk in enumerate(chunks):
            a = ckpt.load(chunk_name(c))
            if a is None:
                try:
                    a = _fit_chunk(units, chunk, grid, bar)
                except Exception as err:  # one chunk failing never stops the job
                    errors.append(f"{type(err).__name__} fitting "
                                  f"{units.describe(chunk)}: {err}")
                    continue
                ckpt.save(chunk_name(c), a)
            units.absorb(chunk, a, fits, per_subject, curves)
    bar.n = units.n
    bar.close()
    t_fit = time.perf_counter() - t_fit0

    grouped = share_growth_by is not None
    statuses = write_outputs(pathlib.Path(out_dir), batch, fits, per_subject, grid, curves,
                             max_panels=max_panels, csc=model == "csc",
                             group_column=share_growth_by,
                             groups=units.group_of if grouped else None)
    model_config = None
    if model == "csc":
        model_config = dict(crowding="logistic", species=species, chemo_mode="concentration",
                            reference=CSC_REFERENCE, drug_slots=list(units.drugs))
        if grouped:
            model_config["ode_rtol"] = GROUP_ODE_RTOL
    return {
        "job": f"{GROUP_JOB} {share_growth_by!r}" if grouped else f"{JOB} ({model})",
        "data_file": str(getattr(data_file, "path", data_file)),  # a TidyTable: its file
        "regimen_source": source,
        "model": model,
        "model_config": model_config,
        **units.summary(),
        "starts": int(starts), "chunk_size": chunk_size, "quick": bool(quick),
        "n_chunks": len(chunks), "checkpoint": ckpt.record(kept=bool(errors)),
        "sigma": sigma if isinstance(sigma, str) else float(sigma),
        "detection_limit_mm3": float(detection_limit_mm3),
        **job_record(statuses, max_steps, t_fit, t_start, notes, errors,
                     "wall_s and fit_s include JAX compilation (see compile)"),
    }


def chunk_name(c: int) -> str:
    """The checkpoint name of chunk ``c`` of a fit job."""
    return f"chunk_{c:05d}"


def _fit_chunk(units, chunk, grid, bar) -> dict:
    """Fit the units ``chunk`` (`SubjectUnits.fit` / `GroupUnits.fit`): host arrays,
    what a checkpoint holds; a function of its arguments only, so a resumed run refits
    a chunk exactly as an uninterrupted one."""
    base = int(chunk[0])

    def tick(done):  # fit_map / fit_group_batch count finished starts
        bar.n = base + done // units.starts
        bar.refresh()

    return units.fit(chunk, grid, tick)


class SubjectUnits:
    """Fit units of the per-curve job: each subject alone (`fit_map`); the CSC model's
    subjects through one `arm_predictor` (each its arm's part of the union spec)."""

    unit = "subject"

    def __init__(self, batch, regs, *, model, species, evaluator, starts, sigma, max_steps,
                 lanes):
        self.batch, self.regs, self.model, self.evaluator = batch, regs, model, evaluator
        self.starts, self.sigma, self.max_steps, self.lanes = starts, sigma, max_steps, lanes
        self.n, self.desc = batch.n_subjects, f"fit {model}"
        if model == "csc":
            self.drugs, self.slot = drug_slots(regs, species)
            model_cfg = ModelConfig(crowding="logistic", drugs=self.drugs, species=species)
            self.predictor = arm_predictor(csc_predictor(model_cfg, csc_union_spec(model_cfg)))
            self.fit_batch = slot_batch(batch, self.slot, self.drugs)
            self.free = [self.predictor.free_slots({self.slot[d] for d in reg.drugs})
                         for reg in regs]
        else:
            self.predictor, self.fit_batch = baseline_predictor(model), batch
            self.drugs, self.slot = (), {}
            self.free = [np.ones(self.predictor.spec.size, bool)] * self.n
        self.labels = tuple(self.predictor.spec.labels())

    def chunks(self, chunk_size):
        size = self.n if chunk_size is None else min(int(chunk_size), self.n)
        return [np.arange(k, min(k + size, self.n)) for k in range(0, self.n, size)]

    def describe(self, chunk) -> str:
        return str([self.batch.subject[i] for i in chunk])

    def fit(self, chunk, grid, tick) -> dict:
        sub = self.fit_batch.subset(chunk)
        r = fit_map(self.predictor, sub, num_starts=self.starts, sigma=self.sigma,
                    rtol=LM_TOL, atol=LM_TOL, max_steps=self.max_steps,
                    evaluator=self.evaluator, lanes=self.lanes, progress=tick, **LM_EXTRAS)
        vol, frac, _ = grid_curves(self.predictor, subject_data(sub), np.asarray(r.z),
                                   grid[chunk])
        return {**{f: np.asarray(getattr(r, f)) for f in _RESULT_FIELDS},
                "grid_volume_mm3": vol, "grid_csc_fraction": frac}

    def absorb(self, chunk, a, fits, per_subject, curves):
        for f in ("status", "loss", "log_volume_pred", "all_losses", "all_status"):
            getattr(fits, f)[chunk] = a[f]
        curves[0, chunk], curves[1, chunk] = a["grid_volume_mm3"], a["grid_csc_fraction"]
        for j, i in enumerate(chunk):
            own = self.regs[i].drugs if self.model == "csc" else ()
            for c, label in enumerate(self.labels):
                if self.free[i][c]:
                    per_subject[i]["params"][param_column(label, own, self.slot)] = (
                        a["theta"][j, c], a["se_theta"][j, c])
            per_subject[i].update({f: a[f][j] for f in _RESULT_FIELDS[5:]},
                                  n_free=int(self.free[i].sum()) + isinstance(self.sigma, str))

    def summary(self) -> dict:
        shapes = [dict(arms=sorted({self.batch.arm[i] for i in idx}), drug_classes=list(cls),
                       n_subjects=len(idx), labels=[lab for c, lab in enumerate(self.labels)
                                                    if self.free[idx[0]][c]])
                  for cls, idx in _shapes(self.batch, self.regs, self.model).items()]
        ev = self.evaluator if self.evaluator != "auto" else (
            "paced" if self.model == "csc" and not self.predictor.model.has_log_kill
            else "jacfwd")
        return {"groups": shapes,
                "spec_labels": sorted({lab for g in shapes for lab in g["labels"]}),
                "evaluator": ev, "lanes": self.lanes or "default (128, fewer for a small fit)"}


class GroupUnits:
    """Fit units of the shared-growth job (``--share-growth-by COLUMN``): every group of
    curves (e.g. a PDX line) is one member of `fit_group_batch`. `SHARED` growth
    kinetics (v_S, p) are shared by the group's curves; each arm present has its own
    drug effects (its part of the union spec, `arm_uses`); each curve its own V0.
    Growth and effects are estimated jointly, so the untreated curve pins the growth
    that the treated curves' effects are measured against; p is estimated only in
    groups with an untreated curve (elsewhere it stays at the reference, as in a
    per-curve treated fit); v_S always. A group with censored (zero) volumes alternates
    LM and the sigma update in its lane. ``chunk_size`` counts curves: calls of
    ``chunk_size // (most curves in a group)`` groups.

    ``fits.csv`` keeps one row per subject: the group column after ``study``, the
    shared parameters repeated on every row of the group, the arm's effects on each of
    its curves; ``loss`` is the curve's share of its group's -log-likelihood;
    ``group_loss``, ``group_aic``, ``group_bic`` and ``group_n_free`` are the group's
    (the per-curve ``aic``/``bic`` are left empty: the parameters are not the curve's
    own)."""

    unit = "group"
    desc = "fit csc (shared growth)"

    def __init__(self, batch, regs, column, group_of, *, species, starts, sigma, max_steps,
                 lanes):
        self.batch, self.regs, self.column, self.group_of = batch, regs, column, group_of
        self.starts, self.sigma, self.max_steps, self.lanes = starts, sigma, max_steps, lanes
        self.drugs, self.slot = drug_slots(regs, species)
        model = ModelConfig(crowding="logistic", drugs=self.drugs, species=species)
        self.pred = csc_predictor(model, csc_union_spec(model), rtol=GROUP_ODE_RTOL)
        self.labels = tuple(self.pred.spec.labels())
        uses = {}
        for a, reg in zip(batch.arm, regs, strict=True):
            uses.setdefault(a, arm_uses(reg, self.slot, control=not reg.drugs))
        self.sb = slot_batch(batch, self.slot, self.drugs)
        self.gb = group_batch(self.sb, group_of, self.labels, shared=SHARED,
                              per_subject=PER_SUBJECT, uses=uses)
        self.gpred = group_predictor(self.pred, self.gb)
        self.n = self.gb.n_groups
        self.n_curves = int(self.gb.curve_subject.shape[1])
        self.rows: list[dict] = []

    def chunks(self, chunk_size):
        self.per_chunk = (self.n if chunk_size is None
                          else max(1, int(chunk_size) // self.n_curves))
        return [np.arange(k, min(k + self.per_chunk, self.n))
                for k in range(0, self.n, self.per_chunk)]

    def describe(self, chunk) -> str:
        return f"groups {[self.gb.groups[i] for i in chunk]}"

    def fit(self, chunk, grid, tick) -> dict:
        cgb = _take_groups(self.gb, chunk)
        res = fit_group_batch(self.gpred, cgb, num_starts=self.starts, sigma=self.sigma,
                              rtol=LM_TOL, atol=LM_TOL, max_steps=self.max_steps,
                              lanes=self.lanes, progress=tick, who="fit", **LM_EXTRAS)
        cs = np.asarray(cgb.curve_subject)
        sub = np.sort(cs[cs >= 0])
        view = expand(self.gpred, cgb, res, self.sb.subset(sub))
        vol, frac, _ = grid_curves(self.pred, subject_data(self.sb.subset(sub)),
                                   np.asarray(view.z), grid[sub])
        return {"sub": sub, "grid_volume_mm3": vol, "grid_csc_fraction": frac,
                "view_group": np.asarray(list(view.group), dtype=str),
                "res_subject": np.asarray(list(res.subject), dtype=str),
                **{"view_" + k: np.asarray(getattr(view, k)) for k in _VIEW_FIELDS},
                **{"res_" + k: np.asarray(getattr(res, k)) for k in _GROUP_FIELDS}}

    def absorb(self, chunk, a, fits, per_subject, curves):
        sub = a["sub"]
        view_group, res_subject = a["view_group"].tolist(), a["res_subject"].tolist()
        row_of = {g: i for i, g in enumerate(res_subject)}
        v = {k: a["view_" + k] for k in _VIEW_FIELDS}
        r = {k: a["res_" + k] for k in _GROUP_FIELDS}
        for j, i in enumerate(sub):
            gi = row_of[view_group[j]]
            fits.status[i], fits.loss[i] = int(v["status"][j]), v["loss"][j]
            fits.log_volume_pred[i] = v["log_volume_pred"][j]
            fits.all_losses[i], fits.all_status[i] = r["all_losses"][gi], r["all_status"][gi]
            for c, label in enumerate(self.labels):
                if np.isfinite(v["theta"][j, c]):
                    col = param_column(label, self.regs[i].drugs, self.slot, by_class=True)
                    per_subject[i]["params"][col] = (float(v["theta"][j, c]),
                                                     float(v["se_theta"][j, c]))
            per_subject[i].update(
                sigma=float(v["sigma"][j]), rmse_log_volume=float(v["rmse_log_volume"][j]),
                condition_number=float(r["condition_number"][gi]),
                identifiable=bool(r["identifiable"][gi]), best_start=int(r["best_start"][gi]),
                n_steps=int(r["n_steps"][gi]), group=view_group[j])
        curves[0, sub], curves[1, sub] = a["grid_volume_mm3"], a["grid_csc_fraction"]
        free = np.asarray(self.gb.data.free)[np.asarray(chunk)]
        mask = np.asarray(self.batch.mask)
        for gi, g in enumerate(res_subject):
            members = [i for j, i in enumerate(sub) if view_group[j] == g]
            m_obs = int(mask[members].sum())
            k = int(free[gi].sum()) + isinstance(self.sigma, str)
            loss = float(r["loss"][gi])
            self.rows.append(dict(group=g, n_curves=len(members), n_obs=m_obs, n_free=k,
                                  loss=loss, aic=2 * k + 2 * loss,
                                  bic=k * math.log(max(m_obs, 1)) + 2 * loss,
                                  status=_status_name(int(r["status"][gi]))))
            for i in members:
                per_subject[i]["group_stats"] = self.rows[-1]

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        ok = counts.get("converged", 0) + counts.get("max_steps", 0)
        return {
            "share_growth_by": self.column,
            "shared": list(SHARED), "per_subject": list(PER_SUBJECT),
            "per_arm": sorted({lab for lab in self.labels if lab not in SHARED + PER_SUBJECT}),
            "n_groups": self.n, "curves_per_group_max": self.n_curves,
            "groups_per_chunk": self.per_chunk, "n_z": self.gpred.spec.size,
            "evaluator": "jacfwd", "groups": self.rows, "group_status_counts": counts,
            "n_groups_failed": self.n - ok, "spec_labels": list(self.labels),
            "sigma_note": "one sigma per group" if isinstance(self.sigma, str) else "fixed"}


def table_groups(table, column, subjects):
    """Each subject's value of ``column`` (``study`` or an extra column of the table;
    one per subject, else refused)."""
    values = table.study if column == "study" else table.extra.get(column)
    if values is None:
        raise FitcscInputError(f"no column {column!r} to share growth by",
                               file=table.path or None, column=column,
                               expected="study or one of the table's extra columns: "
                               + (", ".join(table.extra) or "none"), value=column)
    of: dict[str, str] = {}
    for s, v in zip(table.subject.tolist(), values.tolist(), strict=True):
        if of.setdefault(s, v) != v:
            raise FitcscInputError(f"subject {s!r} has more than one {column!r}",
                                   file=table.path or None, column=column,
                                   expected="one value per subject",
                                   value=f"{of[s]!r} and {v!r}")
        if v.strip() == "":
            raise FitcscInputError(f"subject {s!r} has an empty {column!r}",
                                   file=table.path or None, column=column,
                                   expected="a group name", value=v)
    return [of[s] for s in subjects]


def _take_groups(gb: GroupBatch, idx) -> GroupBatch:
    idx = np.asarray(idx)
    return GroupBatch(data=jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)[idx]),
                                                  gb.data),
                      curve_subject=jnp.asarray(np.asarray(gb.curve_subject)[idx]),
                      entry_local=gb.entry_local, entry_kind=gb.entry_kind,
                      entry_key=gb.entry_key, groups=tuple(gb.groups[i] for i in idx),
                      local_labels=gb.local_labels)


_VIEW_FIELDS = ("status", "loss", "log_volume_pred", "theta", "se_theta", "sigma",
                "rmse_log_volume")
_GROUP_FIELDS = ("status", "loss", "all_losses", "all_status", "condition_number",
                 "identifiable", "best_start", "n_steps")


def job_record(statuses, max_steps, t_fit, t_start, notes, errors, timing_note) -> dict:
    """The ``summary.json`` entries every fit job shares: optimiser, status counts,
    timings, device, precision, versions, warnings, errors and outputs."""
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    n = len(statuses)
    return {
        "optimiser": dict(method="lm", rtol=LM_TOL, atol=LM_TOL, max_steps=max_steps or 200,
                          **LM_EXTRAS),
        "n_subjects": n,
        "n_converged": counts.get("converged", 0),
        "n_max_steps": counts.get("max_steps", 0),
        "n_failed": n - counts.get("converged", 0) - counts.get("max_steps", 0),
        "status_counts": counts,
        "fit_s": round(t_fit, 3),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "timing_note": timing_note,
        **run_record(sobol_starts=0),  # fit_map's scrambled Sobol starts, fixed seed
        "warnings": notes,
        "errors": errors,
        "outputs": ["summary.json", "fits.csv", "predictions.csv", *PLOTS, "report.md",
                    "fits_by_arm.png"],
    }


_RESULT_FIELDS = ("status", "loss", "log_volume_pred", "all_losses", "all_status", "sigma",
                  "rmse_log_volume", "condition_number", "identifiable", "best_start",
                  "n_steps", "theta", "se_theta")


def _check_options(model, sigma, **counts):
    if model not in MODELS:
        raise FitcscInputError("unknown model", column="--model",
                               expected="one of " + ", ".join(MODELS), value=model)
    for name, val in counts.items():
        if val is not None and (isinstance(val, bool) or int(val) != val or val < 1):
            raise FitcscInputError(f"bad --{name.replace('_', '-')}",
                                   expected="an integer >= 1", value=val)
    if isinstance(sigma, str) and sigma == "estimate":
        return
    if isinstance(sigma, str) or not (math.isfinite(sigma) and sigma > 0):
        raise FitcscInputError("bad sigma", expected="'estimate' or a float > 0", value=sigma)


def write_outputs(out, batch, fits, per_subject, grid, curves, *, max_panels, csc=True,
                  group_column=None, groups=None) -> list[str]:
    """Write ``fits.csv``, ``predictions.csv`` and the `PLOTS` of a fit job to ``out``;
    returns each subject's status name."""
    from .plot import (
        plot_multistart,
        plot_observed_vs_predicted,
        plot_residuals,
        plot_subject_fits,
    )

    statuses = [_status_name(int(c)) for c in fits.status]
    write_atomic(out / "fits.csv", _fits_csv(batch, fits, statuses, per_subject,
                                             group_column=group_column, groups=groups))
    write_atomic(out / "predictions.csv", _predictions_csv(batch, fits))
    plot_subject_fits(fits, batch, grid, curves[0], out / PLOTS[0], max_panels=max_panels,
                      csc_fraction=curves[1] if csc else None)
    plot_observed_vs_predicted(fits, batch, out / PLOTS[1])
    plot_residuals(fits, batch, out / PLOTS[2])
    plot_multistart(fits, out / PLOTS[3])
    return statuses


def _predictions_csv(batch, fits) -> str:
    """``predictions.csv`` (as NONMEM's table file): one row per observation with the
    fitted volume (PRED) and the log residual ``log(obs) - log(pred)`` (blank where the
    observation is left-censored, or the subject's fit failed)."""
    day, vol = np.asarray(batch.day), np.asarray(batch.volume_mm3)
    mask, cens = np.asarray(batch.mask), np.asarray(batch.censored)
    def cell(x):
        return _fmt(x) if math.isfinite(x) else ""

    def log_cell(x):  # log scale: 6 significant digits of log(1e-5) = -11.5129 would
        # leave the volume 5e-5 off; 10 keep it to 1e-9
        return f"{x:.10g}" if math.isfinite(x) else ""

    rows = []
    for i, s in enumerate(batch.subject):
        for j in np.nonzero(mask[i])[0]:
            lp = float(fits.log_volume_pred[i, j])
            ok = math.isfinite(lp)
            res = math.log(vol[i, j]) - lp if not cens[i, j] and ok else math.nan
            rows.append([s, batch.arm[i], cell(float(day[i, j])), cell(float(vol[i, j])),
                         str(int(cens[i, j])), log_cell(lp),
                         cell(math.exp(lp) if ok else math.nan), log_cell(res)])
    return csv_text(["subject", "arm", "day", "volume_mm3", "censored", "log_volume_pred",
                      "volume_pred_mm3", "residual_log"], rows)


def _fits_csv(batch, fits, statuses, per_subject, *, group_column=None, groups=None) -> str:
    """``fits.csv``: one row per subject; a parameter's cells are empty where it is not
    free for that subject; AIC/BIC count sigma when it is estimated. With
    ``group_column`` (a shared-growth fit): that column after ``study``, the curve's
    share of the loss, the group's loss/AIC/BIC/free count, no per-curve AIC/BIC."""
    n_obs = np.asarray(batch.mask).sum(axis=1)
    params = list(dict.fromkeys(c for r in per_subject for c in r["params"]))
    grouped = group_column is not None
    extra = grouped and group_column != "study"  # grouped by study: the column is there
    header = ["subject", "arm", "study", *([group_column] if extra else []), "status",
              *[h for p in params for h in (p, f"{p}_se")],
              "rmse_log_volume", "loss", "aic", "bic", "n_obs", "sigma", "condition_number",
              "identifiable", "best_start", "n_steps"]
    if grouped:
        header += ["group_loss", "group_aic", "group_bic", "group_n_free"]
    rows = []
    for i, rec in enumerate(per_subject):
        loss, k, m = float(fits.loss[i]), rec.get("n_free", 0), int(n_obs[i])
        row = [batch.subject[i], batch.arm[i], batch.study[i], *([groups[i]] if extra else []),
               statuses[i]]
        for p in params:
            row += [_fmt(x) for x in rec["params"].get(p, (None, None))]
        got = "identifiable" in rec
        aic, bic = ("", "") if grouped else (_fmt(2 * k + 2 * loss),
                                             _fmt(k * math.log(m) + 2 * loss))
        row += [_fmt(rec.get("rmse_log_volume", math.nan)), _fmt(loss), aic, bic, str(m),
                _fmt(rec.get("sigma", math.nan)), _fmt(rec.get("condition_number", math.nan)),
                str(bool(rec["identifiable"])).lower() if got else "",
                str(int(rec["best_start"])) if got else "",
                str(int(rec["n_steps"])) if got else ""]
        if grouped:
            g = rec.get("group_stats")
            row += ["", "", "", ""] if g is None else [
                _fmt(g["loss"]), _fmt(g["aic"]), _fmt(g["bic"]), str(g["n_free"])]
        rows.append(row)
    return csv_text(header, rows)
