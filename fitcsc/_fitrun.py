"""The fit job: every subject of a tumour-volume file fitted separately, in batches.

`fit_job` reads a tidy CSV (or NONMEM event data), builds each arm's regimen (from a
regimen table, from the NONMEM dose records, or `default_arm_regimens`: one constant
effect per treated arm), and fits each subject by maximum likelihood with `fit_map`
(multi-start Levenberg–Marquardt, sigma estimated per subject): the CSC model or a
baseline (exponential, logistic, Gompertz, Simeoni).

CSC fits are grouped by the *shape* of their regimen: subjects whose regimens have the
same drug classes and PK (e.g. every constant-effect HER2 arm) share one model, one
parameter spec and one compiled fit; each subject's free parameters cover only its own
arm's drug effects. Each group is fitted in chunks of ``chunk_size`` subjects (the last
one padded by repeating a subject, padding dropped), so every chunk after a group's
first reuses its compiled code. A subject whose fit fails gets a failure status; the job
goes on. (With a regimen table, an arm that combines drug classes frees each per-drug
effect field for all its drugs; the elements of another class's drug do not change the
fit, are left empty in ``fits.csv`` and make that subject's Jacobian singular.)

Outputs (written atomically): ``summary.json``, ``fits.csv`` (one row per subject) and
the plots ``fits_subjects.png``, ``observed_vs_predicted.png``, ``residuals.png``,
``multistart.png``.
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

from ._arms import ARM_EC50_MG_PER_L, constant_effect_message, default_arm_regimens, is_arm_drug
from ._baselines import BASELINES, baseline_predictor
from ._batch import SubjectBatch, make_batch
from ._checkpoint import Checkpoint, fingerprint
from ._checkpoint import remove as remove_checkpoint
from ._compile import CompileStats
from ._drugs import CATALOGUE, default_pk
from ._errors import FitcscInputError
from ._fit import bucket, evaluator_option, fit_map
from ._fit_predict import CSCPredictor, SubjectData, csc_predictor, subject_data
from ._fit_solve import FitStatus
from ._model import ModelConfig
from ._params import default_params
from ._regimen import Regimen
from ._simulate import simulate
from ._transforms import Interval, ParamSpec, Positive
from .files import csv_text, run_record, write_atomic

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

# Reference (start 0, and the value of every fixed parameter) of a per-curve CSC fit: a
# tumour with 10% CSCs whose bulk cannot sustain itself (v_D - delta_D = -0.05/day),
# growing at v_S (2p - 1) = 0.06/day once CSCs lead; logistic crowding at K = 1e10
# cells (10,000 mm3, above every PDX volume).
CSC_REFERENCE = dict(csc_division_rate=0.3, self_renewal=0.6, bulk_division_rate=0.25,
                     bulk_death_rate=0.3, initial_csc_fraction=0.1,
                     carrying_capacity_cells=1e10, her2_efficacy_csc=0.5,
                     her2_efficacy_bulk=0.5, csc_sparing=0.2, kill_rate=0.1,
                     cytostatic_efficacy=0.5, csc_kill_rate=0.1)
# Free parameters (see `csc_arm_spec`): what one curve can identify.
BASE_FREE = {"csc_division_rate": Positive()}
CONTROL_FREE = {"self_renewal": Interval(0.5, 1.0)}
CLASS_FREE = {
    "her2": {"her2_efficacy_csc": Interval(0.0, 1.0), "her2_efficacy_bulk": Interval(0.0, 1.0)},
    "chemo": {"kill_rate": Positive(), "csc_sparing": Interval(0.0, 1.0)},
    "cytostatic": {"cytostatic_efficacy": Interval(0.0, 1.0)},
    "csc": {"csc_kill_rate": Positive()},
}
PER_DRUG_CLASS = {"kill_rate": "chemo", "cytostatic_efficacy": "cytostatic",
                  "csc_kill_rate": "csc"}


def csc_arm_spec(model: ModelConfig) -> ParamSpec:
    """The default spec of a per-curve CSC fit for ``model`` (its drugs: one arm's).

    Free: ``csc_division_rate`` v_S (Positive) and ``initial_volume_mm3`` (added by
    `csc_predictor`); for an untreated subject also ``self_renewal`` p (Interval(0.5,
    1)); per drug class present: HER2, ``her2_efficacy_csc`` and ``her2_efficacy_bulk``
    (Interval(0, 1)); chemo, ``kill_rate`` (Positive) and ``csc_sparing`` (Interval(0,
    1)); cytostatic, ``cytostatic_efficacy`` (Interval(0, 1)); CSC-targeted,
    ``csc_kill_rate`` (Positive). Everything else stays at `CSC_REFERENCE`; arm
    pseudo-drugs get EC50 = `ARM_EC50_MG_PER_L` (full inhibition at C = 1 mg/L).

    Why so few: one volume curve shows about three rates, the CSCs' net growth v_S (2p
    - 1), their output of bulk cells 2 v_S (1 - p) and the bulk's own net rate. With
    the bulk kinetics and the initial CSC fraction fixed, a control curve identifies v_S
    and p. In a treated curve that starts at the first dose, a constant drug effect is
    confounded with the intrinsic kinetics (a chemo kill adds to the bulk death rate,
    HER2 blockade of CSCs rescales p), so there p stays at its reference and the drug's
    parameters carry the difference. Freeing p and the bulk death rate as well was
    tried on PDXE curves: most fits then ran into the optimiser's step cap along flat
    directions.
    """
    ref = default_params(model, **{k: v for k, v in CSC_REFERENCE.items()})
    arm = jnp.asarray([is_arm_drug(d) for d in model.drugs], bool)
    if model.drugs:
        ref = eqx.tree_at(lambda p: p.ec50_mg_per_L, ref,
                          jnp.where(arm, ARM_EC50_MG_PER_L, ref.ec50_mg_per_L))
    free = dict(BASE_FREE) if model.drugs else {**BASE_FREE, **CONTROL_FREE}
    for c in dict.fromkeys(CATALOGUE[d].drug_class for d in model.drugs):
        free.update(CLASS_FREE[c])
    return ParamSpec(free, ref)


def drug_slots(regs, species):
    """Drug kinds (class, PK) of the regimens, in order: ``(slot drugs, {drug: slot})``.

    One model with a drug slot per kind fits every subject of a job (one compiled
    program): each subject's doses go to the slot of its drug. **Raises:**
    `FitcscInputError` for an arm with two drugs of the same kind.
    """
    kinds: dict[tuple, int] = {}
    drugs, slot = [], {}
    for reg in regs:
        for d in reg.drugs:
            key = (CATALOGUE[d].drug_class, repr(default_pk(d, species)))
            if key not in kinds:
                kinds[key] = len(drugs)
                drugs.append(d)
            slot[d] = kinds[key]
    for reg in regs:
        used = [slot[d] for d in reg.drugs]
        if len(set(used)) < len(used):
            raise FitcscInputError(
                f"arm {reg.name!r} has two drugs of the same class and PK",
                expected="at most one drug of each class and PK per arm",
                value=", ".join(reg.drugs))
    return tuple(drugs), slot


def slot_batch(batch: SubjectBatch, slot: dict, drugs: tuple) -> SubjectBatch:
    """``batch`` with each dose's drug index moved to its drug's slot in ``drugs``."""
    if not drugs:
        return dataclasses.replace(batch, drugs=drugs)
    table = np.asarray([slot.get(d, 0) for d in batch.drugs] or [0])
    drug, mask = np.asarray(batch.schedule.drug), np.asarray(batch.schedule.mask)
    schedule = eqx.tree_at(lambda s: s.drug, batch.schedule,
                           jnp.asarray(np.where(mask, table[drug], 0)))
    return dataclasses.replace(batch, schedule=schedule, drugs=drugs)


def csc_union_spec(model: ModelConfig) -> ParamSpec:
    """The spec of every subject of a job at once: growth (v_S, p), every class's
    effects for the model's drug slots, V0 (added by `csc_predictor`); reference and
    fixed values as in `csc_arm_spec`. Each subject estimates a part of it (its
    free mask, `ArmPredictor`)."""
    ref = default_params(model, **CSC_REFERENCE)
    if model.drugs:
        arm = jnp.asarray([is_arm_drug(d) for d in model.drugs], bool)
        ref = eqx.tree_at(lambda p: p.ec50_mg_per_L, ref,
                          jnp.where(arm, ARM_EC50_MG_PER_L, ref.ec50_mg_per_L))
    free = {**BASE_FREE, **CONTROL_FREE}
    for c in dict.fromkeys(CATALOGUE[d].drug_class for d in model.drugs):
        free.update(CLASS_FREE[c])
    return ParamSpec(free, ref)


def label_needs(labels, model: ModelConfig) -> tuple:
    """What each element of a union spec needs to be estimated for a subject: None
    (always: v_S, V0), ``()`` (no dose at all: p, as in `csc_arm_spec`), the drug slots
    of which one must be dosed (a class's effect; a per-drug field its slot), or
    ``"never"`` (a per-drug field of a slot whose drug is of another class)."""
    classes = [CATALOGUE[d].drug_class for d in model.drugs]
    out = []
    for label in labels:
        field = label.split("[")[0]
        if field in BASE_FREE or field == "initial_volume_mm3":
            out.append(None)
        elif field in CONTROL_FREE:
            out.append(())
        elif "[" in label:  # a per-drug field: its slot, if the slot's drug is its class
            k = int(label[:-1].split("[")[1])
            out.append((k,) if classes[k] == PER_DRUG_CLASS[field] else "never")
        else:
            cls = next(c for c, f in CLASS_FREE.items() if field in f)
            out.append(tuple(k for k, c in enumerate(classes) if c == cls))
    return tuple(out)


class ArmPredictor(CSCPredictor):
    """A CSC predictor over a union spec whose free elements follow each subject's
    dosed drug slots (`label_needs`): the per-arm spec of `csc_arm_spec` as a mask, so
    that every regimen shape shares one compiled program."""

    needs: tuple = eqx.field(static=True, default=())

    def free_slots(self, dosed) -> np.ndarray:
        """The free mask (host) of a subject dosed with drug slots ``dosed``."""
        dosed = set(dosed)
        return np.asarray([n is None or (n == () and not dosed)
                           or (n != "never" and bool(dosed & set(n))) for n in self.needs],
                          bool)

    def free_mask(self, subject):
        n_drugs = max(len(self.model.drugs), 1)
        s = subject.schedule
        dosed = jnp.zeros((n_drugs,), bool).at[s.drug].max(s.mask)
        cols = []
        for n in self.needs:
            if n is None:
                cols.append(jnp.ones((), bool))
            elif n == ():
                cols.append(~jnp.any(dosed))
            elif n == "never":
                cols.append(jnp.zeros((), bool))
            else:
                cols.append(jnp.any(dosed[jnp.asarray(n)]))
        return jnp.stack(cols)


def arm_predictor(model: ModelConfig, **ode) -> ArmPredictor:
    """The job's CSC predictor for ``model`` (every drug slot of the data); ``ode``:
    `csc_predictor`'s ``rtol``, ``atol``, ``max_steps``."""
    base = csc_predictor(model, csc_union_spec(model), **ode)
    return ArmPredictor(model=base.model, spec=base.spec, rtol=base.rtol, atol=base.atol,
                        max_steps=base.max_steps, v0_from_data=base.v0_from_data,
                        needs=label_needs(base.spec.labels(), model))


@dataclasses.dataclass
class JobFits:
    """Per-subject fit outputs in batch order (what the plots consume; duck-types the
    fields of `FitResult` they read). NaN rows for subjects whose chunk failed."""

    subject: tuple[str, ...]
    arm: tuple[str, ...]
    study: tuple[str, ...]
    status: np.ndarray  # FitStatus code, -1 = the chunk raised
    loss: np.ndarray
    log_volume_pred: np.ndarray  # (n_subjects, n_obs)
    all_losses: np.ndarray  # (n_subjects, n_starts)
    all_status: np.ndarray


def _status_name(code: int) -> str:
    return "error" if code < 0 else FitStatus(code).name.lower()


def _load(data_file, regimens_file, model, species, limit, max_subjects, cmt_drugs, *,
          with_table=False, data_options=None):
    """Batch, regimens (or None), regimen source and warnings (and the table, with
    ``with_table``). ``data_file`` may also be a `TidyTable` already read."""
    from ._data import TidyTable, read_regimen_table, read_volumes

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


def _regimen_of(regimens, subject, arm) -> Regimen:
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


def _column(label, own_drugs, slot):
    """CSV column of a union-spec label for a subject with drugs ``own_drugs``: the
    field, or ``field[drug]`` (the drug in that slot) when the arm has several drugs."""
    if "[" not in label:
        return label
    field, k = label[:-1].split("[")
    drug = next(d for d in own_drugs if slot[d] == int(k))
    return field if len(own_drugs) == 1 else f"{field}[{drug}]"


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
      only; see `fitcsc._fitrun_group`).
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
      ``time_unit``, ``amount_unit``; see `fitcsc._data.read_volumes`).
    - `report`: write ``report.md`` (and ``fits_by_arm.png``) at the end
      (`fitcsc._report.write_report`).
    - `resume`: continue the interrupted run whose checkpoint ``out_dir`` holds.

    Every finished chunk is checkpointed in ``out_dir/.checkpoint`` (`fitcsc._checkpoint`;
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
        from ._report import write_report

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
    batch, regimens, source, notes, table = _load(
        data_file, regimens_file, model, species, detection_limit_mm3, max_subjects,
        cmt_drugs, with_table=True, data_options=data_options)
    regs = [_regimen_of(regimens, s, a) for s, a in zip(batch.subject, batch.arm, strict=True)]
    options = dict(model=model, starts=starts, chunk_size=chunk_size, quick=quick,
                   max_subjects=max_subjects, sigma=sigma, species=species,
                   detection_limit_mm3=detection_limit_mm3, share_growth_by=share_growth_by,
                   evaluator=evaluator, lanes=lanes, max_steps=max_steps, n_grid=n_grid)
    digest = fingerprint(options, batch, [(r.name, r.drugs, repr(r)) for r in regs],
                         None if share_growth_by is None else [
                             table.study.tolist(), table.subject.tolist(),
                             table.extra.get(share_growth_by, np.array([])).tolist()])
    ckpt = Checkpoint(out_dir, "fit", digest, resume=resume)
    if share_growth_by is not None:
        from ._fitrun_group import group_job

        return group_job(table, batch, regs, pathlib.Path(out_dir), column=share_growth_by,
                         starts=starts, chunk_size=chunk_size, max_steps=max_steps,
                         sigma=sigma, species=species, n_grid=n_grid, max_panels=max_panels,
                         progress=progress, source=source, notes=notes,
                         data_file=getattr(data_file, "path", data_file),
                         detection_limit_mm3=detection_limit_mm3, quick=quick,
                         t_start=t_start, lanes=lanes, checkpoint=ckpt)
    n = batch.n_subjects
    if model == "csc":
        drugs, slot = drug_slots(regs, species)
        predictor = arm_predictor(ModelConfig(crowding="logistic", drugs=drugs,
                                              species=species))
        fit_batch = slot_batch(batch, slot, drugs)
        free = [predictor.free_slots({slot[d] for d in reg.drugs}) for reg in regs]
    else:
        predictor, fit_batch, slot = baseline_predictor(model), batch, {}
        free = [np.ones(predictor.spec.size, bool)] * n
    labels = tuple(predictor.spec.labels())

    fits = JobFits(batch.subject, batch.arm, batch.study, np.full(n, -1), np.full(n, np.nan),
                   np.full((n, batch.n_obs), np.nan), np.full((n, starts), np.nan),
                   np.full((n, starts), -1))
    day, mask = np.asarray(batch.day), np.asarray(batch.mask)
    grid = np.stack([np.linspace(d[m][0], d[m][-1], n_grid) for d, m in zip(day, mask,
                                                                             strict=True)])
    curves = np.full((2, *grid.shape), np.nan)  # fitted volume, CSC fraction
    per_subject: list[dict] = [{"params": {}} for _ in range(n)]
    errors: list[str] = []
    size = n if chunk_size is None else min(int(chunk_size), n)
    info = {}

    from tqdm import tqdm

    bar = tqdm(total=n, desc=f"fit {model}", unit="subject",
               disable=not (progress and sys.stderr.isatty()))
    chunks = [np.arange(k, min(k + size, n)) for k in range(0, n, size)]
    for c, chunk in enumerate(chunks):
        a = ckpt.load(chunk_name(c))
        if a is None:
            try:
                a = _fit_chunk(predictor, fit_batch.subset(chunk), grid[chunk], bar,
                               int(chunk[0]), starts=starts, sigma=sigma,
                               max_steps=max_steps, evaluator=evaluator, lanes=lanes)
            except KeyboardInterrupt:
                raise ckpt.interrupted() from None
            except Exception as err:  # one chunk failing never stops the job
                errors.append(f"{type(err).__name__} fitting "
                              f"{[batch.subject[i] for i in chunk]}: {err}")
                continue
            ckpt.save(chunk_name(c), a)
        vol, frac = a["grid_volume_mm3"], a["grid_csc_fraction"]
        for f in ("status", "loss", "log_volume_pred", "all_losses", "all_status"):
            getattr(fits, f)[chunk] = a[f]
        curves[0, chunk], curves[1, chunk] = vol, frac
        for j, i in enumerate(chunk):
            own = regs[i].drugs if model == "csc" else ()
            for c, label in enumerate(labels):
                if free[i][c]:
                    col = _column(label, own, slot)
                    per_subject[i]["params"][col] = (a["theta"][j, c], a["se_theta"][j, c])
            per_subject[i].update({f: a[f][j] for f in _RESULT_FIELDS[5:]},
                                  n_free=int(free[i].sum()) + isinstance(sigma, str))
    bar.n = n
    bar.close()
    t_fit = time.perf_counter() - t_start
    ev = evaluator if evaluator != "auto" else (
        "paced" if model == "csc" and not predictor.model.has_log_kill else "jacfwd")
    info = dict(evaluator=ev, lanes=lanes or "default (128, fewer for a small fit)",
                n_chunks=len(chunks),
                checkpoint=ckpt.record(kept=bool(errors)))

    out = pathlib.Path(out_dir)
    statuses = write_outputs(out, batch, fits, per_subject, grid, curves,
                             max_panels=max_panels, csc=model == "csc")
    shape_info = [dict(arms=sorted({batch.arm[i] for i in idx}), drug_classes=list(cls),
                       n_subjects=len(idx), labels=[lab for c, lab in enumerate(labels)
                                                    if free[idx[0]][c]])
                  for cls, idx in _shapes(batch, regs, model).items()]
    return {
        "job": f"{JOB} ({model})",
        "data_file": str(getattr(data_file, "path", data_file)),  # a TidyTable: its file
        "regimen_source": source,
        "model": model,
        "model_config": (dict(crowding="logistic", species=species, chemo_mode="concentration",
                              reference=CSC_REFERENCE, drug_slots=list(predictor.model.drugs))
                         if model == "csc" else None),
        "groups": shape_info,
        "spec_labels": sorted({lab for gi in shape_info for lab in gi["labels"]}),
        "starts": int(starts), "chunk_size": chunk_size, "quick": bool(quick),
        **info,
        "sigma": sigma, "detection_limit_mm3": float(detection_limit_mm3),
        **job_record(statuses, max_steps, t_fit, t_start, notes, errors,
                     "wall_s and fit_s include JAX compilation (see compile)"),
    }


def chunk_name(c: int) -> str:
    """The checkpoint name of chunk ``c`` of a fit job."""
    return f"chunk_{c:05d}"


def _fit_chunk(predictor, sub, grid, bar, base, *, starts, sigma, max_steps, evaluator,
               lanes) -> dict:
    """Fit the subjects of batch ``sub``: the `_RESULT_FIELDS` and the fitted curves on
    ``grid`` (host arrays; what a checkpoint holds). A function of its arguments only,
    so a resumed run refits a chunk exactly as an uninterrupted one."""

    def tick(done):
        bar.n = base + done // starts
        bar.refresh()

    r = fit_map(predictor, sub, num_starts=starts, sigma=sigma, rtol=LM_TOL, atol=LM_TOL,
                max_steps=max_steps, evaluator=evaluator, lanes=lanes, progress=tick,
                **LM_EXTRAS)
    vol, frac, _ = grid_curves(predictor, subject_data(sub), np.asarray(r.z), grid)
    return {**{f: np.asarray(getattr(r, f)) for f in _RESULT_FIELDS},
            "grid_volume_mm3": vol, "grid_csc_fraction": frac}


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
    from ._plot import (
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

    rows = []
    for i, s in enumerate(batch.subject):
        for j in np.nonzero(mask[i])[0]:
            lp = float(fits.log_volume_pred[i, j])
            ok = math.isfinite(lp)
            res = math.log(vol[i, j]) - lp if not cens[i, j] and ok else math.nan
            rows.append([s, batch.arm[i], cell(float(day[i, j])), cell(float(vol[i, j])),
                         str(int(cens[i, j])), cell(lp), cell(math.exp(lp) if ok else math.nan),
                         cell(res)])
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
