"""The fit job with growth shared within groups (``fitcsc fit --share-growth-by COLUMN``).

Every group (e.g. a PDX line: the column ``pdx_line`` of a tidy CSV) is fitted as one
batch member of `fit_groups`: the CSC model's growth kinetics, ``csc_division_rate``
v_S and ``self_renewal`` p, are *shared* by all curves of the group; each arm present
has its *own* drug-effect parameters (as in `csc_arm_spec`: HER2, ``her2_efficacy_csc``
and ``her2_efficacy_bulk``; chemo, ``kill_rate`` and ``csc_sparing``; cytostatic,
``cytostatic_efficacy``; CSC-targeted, ``csc_kill_rate``); each curve its own initial
volume. Growth and effects are estimated jointly from all curves of the group, so the
untreated curve pins the growth that the treated curves' effects are measured against.
p is estimated only in groups with an untreated curve (elsewhere it stays at the
reference, as in a per-curve treated fit); v_S always.

All curves use one model whose drug slots are the drug *kinds* of the data (class and
PK: with default arm regimens one slot per class, since every arm pseudo-drug has the
same constant unit exposure); each curve's doses go to the slot of its drug, and its
effect parameters are its arm's. Groups are fitted in chunks of ``chunk_size // (most
curves in a group)`` groups (at least 1), the last one padded by repeating a group, so
every chunk reuses one compiled fit; groups with censored (zero) volumes, whose fit
alternates LM and the sigma update, are chunked apart from the others.

``fits.csv`` keeps one row per subject: the group column after ``study``, the shared
parameters repeated on every row of the group, the arm's effects on each of its curves.
``loss`` is the curve's share of its group's -log-likelihood; ``group_loss``,
``group_aic``, ``group_bic`` and ``group_n_free`` are the group's (the per-curve
``aic``/``bic`` are left empty: the parameters are not the curve's own).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._arms import ARM_EC50_MG_PER_L, is_arm_drug
from ._batch import SubjectBatch
from ._drugs import CATALOGUE, default_pk
from ._errors import FitcscInputError
from ._fit import FitResult, _fit_core, _init_z, _prepare
from ._fit_group import GroupBatch, expand, group_batch, group_predictor
from ._fit_predict import csc_predictor, subject_data
from ._fit_solve import lm_options
from ._fitrun import (
    BASE_FREE,
    CLASS_FREE,
    CONTROL_FREE,
    CSC_REFERENCE,
    LM_EXTRAS,
    LM_TOL,
    PER_DRUG_CLASS,
    JobFits,
    _grid_curves,
    _status_name,
    job_record,
    write_outputs,
)
from ._model import ModelConfig
from ._params import default_params
from ._run import write_atomic
from ._transforms import ParamSpec

SHARED = ("csc_division_rate", "self_renewal")
PER_SUBJECT = ("initial_volume_mm3",)
# ODE rtol of the curves: a group's LM steps wait for the slowest of its curves' solves;
# 1e-6 (a relative volume error far below the measurement error) made one PDXE line's
# fit several times faster than the per-curve job's 1e-8 (2-core CPU), same optimum.
ODE_RTOL = 1e-6


def _table_groups(table, column, subjects):
    """Each subject's value of ``column`` (``study`` or an extra column; one per subject,
    else refused)."""
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


def drug_slots(regs, species):
    """Drug kinds (class, PK) of the regimens, in order: ``(slot drugs, {drug: slot})``."""
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
                expected="at most one drug of each class and PK per arm for a shared-growth "
                "fit", value=", ".join(reg.drugs))
    return tuple(drugs), slot


def slot_batch(batch: SubjectBatch, slot: dict, drugs: tuple) -> SubjectBatch:
    """``batch`` with each dose's drug index moved to its drug's slot in ``drugs``."""
    if not drugs:
        return batch
    table = np.asarray([slot.get(d, 0) for d in batch.drugs] or [0])
    drug, mask = np.asarray(batch.schedule.drug), np.asarray(batch.schedule.mask)
    schedule = eqx.tree_at(lambda s: s.drug, batch.schedule,
                           jnp.asarray(np.where(mask, table[drug], 0)))
    return dataclasses.replace(batch, schedule=schedule, drugs=drugs)


def csc_group_spec(model: ModelConfig) -> ParamSpec:
    """Per-curve spec of a shared-growth fit: growth, every class's effects, V0 (added
    by `csc_predictor`); reference and fixed values as in `csc_arm_spec`."""
    ref = default_params(model, **CSC_REFERENCE)
    if model.drugs:
        arm = jnp.asarray([is_arm_drug(d) for d in model.drugs], bool)
        ref = eqx.tree_at(lambda p: p.ec50_mg_per_L, ref,
                          jnp.where(arm, ARM_EC50_MG_PER_L, ref.ec50_mg_per_L))
    free = {**BASE_FREE, **CONTROL_FREE}
    for c in dict.fromkeys(CATALOGUE[d].drug_class for d in model.drugs):
        free.update(CLASS_FREE[c])
    return ParamSpec(free, ref)


def arm_uses(reg, slot, control: bool) -> set[str]:
    """Labels a curve of regimen ``reg`` estimates: v_S, V0, p if ``control``, and the
    effect parameters of its drugs' classes (per-drug ones at the drug's slot)."""
    out = {"csc_division_rate", "initial_volume_mm3"} | ({"self_renewal"} if control else set())
    for d in reg.drugs:
        for field in CLASS_FREE[CATALOGUE[d].drug_class]:
            out.add(f"{field}[{slot[d]}]" if field in PER_DRUG_CLASS else field)
    return out


def _column(label, drugs_of_arm, slot):
    """fits.csv column of a per-curve label: ``field``, or ``field[drug]`` when the
    arm has several drugs with that per-drug field."""
    if "[" not in label:
        return label
    field, s = label[:-1].split("[")
    same = [d for d in drugs_of_arm if CATALOGUE[d].drug_class == PER_DRUG_CLASS[field]]
    if len(same) == 1:
        return field
    return f"{field}[{next(d for d in same if slot[d] == int(s))}]"


def _take_groups(gb: GroupBatch, idx) -> GroupBatch:
    idx = np.asarray(idx)
    return GroupBatch(data=jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)[idx]),
                                                  gb.data),
                      curve_subject=jnp.asarray(np.asarray(gb.curve_subject)[idx]),
                      entry_local=gb.entry_local, entry_kind=gb.entry_kind,
                      entry_key=gb.entry_key, groups=tuple(gb.groups[i] for i in idx),
                      local_labels=gb.local_labels)


def _first(res: FitResult, n: int, names) -> FitResult:
    arrays = {f.name: np.asarray(getattr(res, f.name))[:n] for f in dataclasses.fields(res)
              if f.name not in ("labels", "subject", "arm", "study", "method")}
    return FitResult(**{k: jnp.asarray(v) for k, v in arrays.items()}, labels=res.labels,
                     subject=tuple(names), arm=("",) * n, study=("",) * n, method=res.method)


def group_job(table, batch, regs, out, *, column, starts, chunk_size, max_steps, sigma,
              species, n_grid, max_panels, progress, source, notes, data_file,
              detection_limit_mm3, quick, t_start) -> dict:
    """The shared-growth job on a loaded table and batch (see `fit_job`)."""
    groups = _table_groups(table, column, batch.subject)
    drugs, slot = drug_slots(regs, species)
    model = ModelConfig(crowding="logistic", drugs=drugs, species=species)
    pred = csc_predictor(model, csc_group_spec(model), rtol=ODE_RTOL)
    labels = tuple(pred.spec.labels())
    uses = {}
    for a, reg in zip(batch.arm, regs, strict=True):
        uses.setdefault(a, arm_uses(reg, slot, control=not reg.drugs))
    sb = slot_batch(batch, slot, drugs)
    gb = group_batch(sb, groups, labels, shared=SHARED, per_subject=PER_SUBJECT, uses=uses)
    gpred = group_predictor(pred, gb)
    n_curves = int(gb.curve_subject.shape[1])
    per_chunk = max(1, chunk_size // n_curves)
    # groups with censored points need the sigma/LM alternation (3 LM rounds): chunk
    # them apart, so that the other chunks run (and compile) without it
    g_cens = np.asarray(jnp.any(gb.data.mask & gb.data.censored, axis=1))
    prepared = {c: _prepare(
        "fit", gpred, per_chunk, c, num_starts=starts, key=None, z_init=None,
        start_scale=1.0, method="lm", sigma=sigma, rtol=LM_TOL, atol=LM_TOL,
        max_steps=max_steps, optimiser=None) for c in (False, True)}
    prepared = {c: (lm_options(p[0], **LM_EXTRAS, who="fit"), *p[1:])
                for c, p in prepared.items()}

    n = batch.n_subjects
    fits = JobFits(batch.subject, batch.arm, batch.study, np.full(n, -1), np.full(n, np.nan),
                   np.full((n, batch.n_obs), np.nan), np.full((n, starts), np.nan),
                   np.full((n, starts), -1))
    day, mask = np.asarray(batch.day), np.asarray(batch.mask)
    grid = np.stack([np.linspace(d[m][0], d[m][-1], n_grid) for d, m in zip(day, mask,
                                                                             strict=True)])
    curves = np.full((2, *grid.shape), np.nan)
    per_subject: list[dict] = [{"params": {}} for _ in range(n)]
    group_rows, errors = [], []
    chunks = [part[k:k + per_chunk] for part in (np.flatnonzero(~g_cens),
                                                 np.flatnonzero(g_cens))
              for k in range(0, len(part), per_chunk)]

    from tqdm import tqdm

    bar = tqdm(total=len(chunks), desc="fit csc (shared growth)", unit="chunk",
               disable=not (progress and sys.stderr.isatty()))
    t_fit0 = time.perf_counter()
    for chunk in chunks:
        padded = np.concatenate([chunk, np.repeat(chunk[:1], per_chunk - len(chunk))])
        cgb = _take_groups(gb, padded)
        opts, unit, _, scale, sigma0 = prepared[bool(g_cens[chunk[0]])]
        try:
            out_ = _fit_core(gpred, cgb.data, _init_z(gpred, cgb.data), unit, scale,
                             sigma0, opts, 1e6)
            res = FitResult(**out_, labels=gpred.spec.labels(), subject=cgb.groups,
                            arm=("",) * per_chunk, study=("",) * per_chunk, method="lm")
            res = _first(res, len(chunk), cgb.groups[:len(chunk)])
            real = _take_groups(gb, chunk)
            sub = np.sort(np.asarray(real.curve_subject)[np.asarray(real.curve_subject) >= 0])
            view = expand(gpred, real, res, sb.subset(sub))
            vol, frac, _ = _grid_curves(pred, subject_data(sb.subset(sub)), view.z,
                                        jnp.asarray(grid[sub]))
        except Exception as err:  # one chunk failing never stops the job
            errors.append(f"{type(err).__name__} fitting groups {list(cgb.groups)}: {err}")
            bar.update(1)
            continue
        rows_g = {g: i for i, g in enumerate(res.subject)}
        v = {k: np.asarray(getattr(view, k)) for k in (
            "status", "loss", "log_volume_pred", "theta", "se_theta", "sigma",
            "rmse_log_volume")}
        r = {k: np.asarray(getattr(res, k)) for k in (
            "status", "all_losses", "all_status", "condition_number", "identifiable",
            "best_start", "n_steps")}
        status = r["status"]
        for j, i in enumerate(sub):
            gi = rows_g[view.group[j]]
            fits.status[i], fits.loss[i] = int(v["status"][j]), v["loss"][j]
            fits.log_volume_pred[i] = v["log_volume_pred"][j]
            fits.all_losses[i], fits.all_status[i] = r["all_losses"][gi], r["all_status"][gi]
            for c, label in enumerate(labels):
                if np.isfinite(v["theta"][j, c]):
                    per_subject[i]["params"][_column(label, regs[i].drugs, slot)] = (
                        float(v["theta"][j, c]), float(v["se_theta"][j, c]))
            per_subject[i].update(
                sigma=float(v["sigma"][j]), rmse_log_volume=float(v["rmse_log_volume"][j]),
                condition_number=float(r["condition_number"][gi]),
                identifiable=bool(r["identifiable"][gi]), best_start=int(r["best_start"][gi]),
                n_steps=int(r["n_steps"][gi]), group=view.group[j])
        curves[0, sub], curves[1, sub] = np.asarray(vol), np.asarray(frac)
        free = np.asarray(jax.vmap(gpred.free_mask)(_take_groups(gb, chunk).data))
        for gi, g in enumerate(res.subject):
            members = [i for j, i in enumerate(sub) if view.group[j] == g]
            m_obs = int(np.asarray(batch.mask)[members].sum())
            k = int(free[gi].sum()) + isinstance(sigma, str)
            loss = float(res.loss[gi])
            group_rows.append(dict(group=g, n_curves=len(members), n_obs=m_obs, n_free=k,
                                   loss=loss, aic=2 * k + 2 * loss,
                                   bic=k * math.log(max(m_obs, 1)) + 2 * loss,
                                   status=_status_name(int(status[gi]))))
            for i in members:
                per_subject[i]["group_stats"] = group_rows[-1]
        bar.update(1)
    bar.close()
    t_fit = time.perf_counter() - t_fit0

    statuses = write_outputs(out, batch, fits, per_subject, grid, curves,
                             max_panels=max_panels, group_column=column, groups=groups)

    g_counts = {}
    for r in group_rows:
        g_counts[r["status"]] = g_counts.get(r["status"], 0) + 1
    n_groups_failed = gb.n_groups - g_counts.get("converged", 0) - g_counts.get("max_steps", 0)
    summary = {
        "job": f"maximum-likelihood fits (csc), growth shared within each {column!r}",
        "data_file": str(data_file),
        "regimen_source": source,
        "model": "csc",
        "model_config": dict(crowding="logistic", species=species, chemo_mode="concentration",
                             reference=CSC_REFERENCE, drug_slots=list(drugs),
                             ode_rtol=ODE_RTOL),
        "share_growth_by": column,
        "shared": list(SHARED), "per_subject": list(PER_SUBJECT),
        "per_arm": sorted({lab for lab in labels if lab not in SHARED + PER_SUBJECT}),
        "n_groups": gb.n_groups, "curves_per_group_max": n_curves,
        "groups_per_chunk": per_chunk, "n_z": gpred.spec.size,
        "groups": group_rows,
        "group_status_counts": g_counts, "n_groups_failed": n_groups_failed,
        "spec_labels": list(labels),
        "starts": int(starts), "chunk_size": int(chunk_size), "quick": bool(quick),
        "sigma": sigma if isinstance(sigma, str) else float(sigma),
        "sigma_note": "one sigma per group" if isinstance(sigma, str) else "fixed",
        "detection_limit_mm3": float(detection_limit_mm3),
        **job_record(statuses, max_steps, t_fit, t_start, notes, errors,
                     "wall_s and fit_s include JAX compilation (one for the chunks of "
                     "groups without censored points, one for those with)"),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
