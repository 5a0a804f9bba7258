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
effect parameters are its arm's. All groups go to one `fit_group_batch` call (the
fit engine's lanes take them one after another; with ``chunk_size``, calls of
``chunk_size // (most curves in a group)`` groups, each the same compiled program); a
group with censored (zero) volumes alternates LM and the sigma update in its lane.

``fits.csv`` keeps one row per subject: the group column after ``study``, the shared
parameters repeated on every row of the group, the arm's effects on each of its curves.
``loss`` is the curve's share of its group's -log-likelihood; ``group_loss``,
``group_aic``, ``group_bic`` and ``group_n_free`` are the group's (the per-curve
``aic``/``bic`` are left empty: the parameters are not the curve's own).
"""

from __future__ import annotations

import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ._drugs import CATALOGUE
from ._errors import FitcscInputError
from ._fit_group import GroupBatch, expand, fit_group_batch, group_batch, group_predictor
from ._fit_predict import csc_predictor, subject_data
from ._fitrun import (
    CLASS_FREE,
    CSC_REFERENCE,
    GROUP_JOB,
    LM_EXTRAS,
    LM_TOL,
    PER_DRUG_CLASS,
    JobFits,
    _status_name,
    chunk_name,
    csc_union_spec,
    drug_slots,
    grid_curves,
    job_record,
    slot_batch,
    write_outputs,
)
from ._model import ModelConfig

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


VIEW_FIELDS = ("status", "loss", "log_volume_pred", "theta", "se_theta", "sigma",
               "rmse_log_volume")
RES_FIELDS = ("status", "loss", "all_losses", "all_status", "condition_number",
              "identifiable", "best_start", "n_steps")


def _fit_chunk(gpred, pred, cgb, sb, grid, bar, base, *, starts, sigma, max_steps,
               lanes) -> dict:
    """Fit the groups of ``cgb``: the group results, their per-curve view and fitted
    curves as host arrays (what a checkpoint holds; a function of its arguments only)."""

    def tick(done):
        bar.n = base + done // starts
        bar.refresh()

    res = fit_group_batch(gpred, cgb, num_starts=starts, sigma=sigma, rtol=LM_TOL,
                          atol=LM_TOL, max_steps=max_steps, lanes=lanes, progress=tick,
                          who="fit", **LM_EXTRAS)
    sub = np.sort(np.asarray(cgb.curve_subject)[np.asarray(cgb.curve_subject) >= 0])
    view = expand(gpred, cgb, res, sb.subset(sub))
    vol, frac, _ = grid_curves(pred, subject_data(sb.subset(sub)), np.asarray(view.z),
                               grid[sub])
    return {"sub": sub, "grid_volume_mm3": vol, "grid_csc_fraction": frac,
            "view_group": np.asarray(list(view.group), dtype=str),
            "res_subject": np.asarray(list(res.subject), dtype=str),
            **{"view_" + k: np.asarray(getattr(view, k)) for k in VIEW_FIELDS},
            **{"res_" + k: np.asarray(getattr(res, k)) for k in RES_FIELDS}}


def group_job(table, batch, regs, out, *, column, starts, chunk_size, max_steps, sigma,
              species, n_grid, max_panels, progress, source, notes, data_file,
              detection_limit_mm3, quick, t_start, checkpoint, lanes=None) -> dict:
    """The shared-growth job on a loaded table and batch (see `fit_job`)."""
    groups = _table_groups(table, column, batch.subject)
    drugs, slot = drug_slots(regs, species)
    model = ModelConfig(crowding="logistic", drugs=drugs, species=species)
    pred = csc_predictor(model, csc_union_spec(model), rtol=ODE_RTOL)
    labels = tuple(pred.spec.labels())
    uses = {}
    for a, reg in zip(batch.arm, regs, strict=True):
        uses.setdefault(a, arm_uses(reg, slot, control=not reg.drugs))
    sb = slot_batch(batch, slot, drugs)
    gb = group_batch(sb, groups, labels, shared=SHARED, per_subject=PER_SUBJECT, uses=uses)
    gpred = group_predictor(pred, gb)
    n_curves = int(gb.curve_subject.shape[1])
    per_chunk = gb.n_groups if chunk_size is None else max(1, int(chunk_size) // n_curves)

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
    chunks = [np.arange(k, min(k + per_chunk, gb.n_groups))
              for k in range(0, gb.n_groups, per_chunk)]

    from tqdm import tqdm

    bar = tqdm(total=gb.n_groups, desc="fit csc (shared growth)", unit="group",
               disable=not (progress and sys.stderr.isatty()))
    t_fit0 = time.perf_counter()
    for c, chunk in enumerate(chunks):
        cgb = _take_groups(gb, chunk)
        a = checkpoint.load(chunk_name(c))
        if a is None:
            try:
                a = _fit_chunk(gpred, pred, cgb, sb, grid, bar, int(chunk[0]), starts=starts,
                               sigma=sigma, max_steps=max_steps, lanes=lanes)
            except KeyboardInterrupt:
                raise checkpoint.interrupted() from None
            except Exception as err:  # one chunk failing never stops the job
                errors.append(f"{type(err).__name__} fitting groups {list(cgb.groups)}: "
                              f"{err}")
                continue
            checkpoint.save(chunk_name(c), a)
        sub, vol, frac = a["sub"], a["grid_volume_mm3"], a["grid_csc_fraction"]
        view_group, res_subject = a["view_group"].tolist(), a["res_subject"].tolist()
        rows_g = {g: i for i, g in enumerate(res_subject)}
        v = {k: a["view_" + k] for k in VIEW_FIELDS}
        r = {k: a["res_" + k] for k in RES_FIELDS}
        status = r["status"]
        for j, i in enumerate(sub):
            gi = rows_g[view_group[j]]
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
                n_steps=int(r["n_steps"][gi]), group=view_group[j])
        curves[0, sub], curves[1, sub] = vol, frac
        free = np.asarray(cgb.data.free)
        for gi, g in enumerate(res_subject):
            members = [i for j, i in enumerate(sub) if view_group[j] == g]
            m_obs = int(np.asarray(batch.mask)[members].sum())
            k = int(free[gi].sum()) + isinstance(sigma, str)
            loss = float(r["loss"][gi])
            group_rows.append(dict(group=g, n_curves=len(members), n_obs=m_obs, n_free=k,
                                   loss=loss, aic=2 * k + 2 * loss,
                                   bic=k * math.log(max(m_obs, 1)) + 2 * loss,
                                   status=_status_name(int(status[gi]))))
            for i in members:
                per_subject[i]["group_stats"] = group_rows[-1]
    bar.n = gb.n_groups
    bar.close()
    t_fit = time.perf_counter() - t_fit0

    statuses = write_outputs(out, batch, fits, per_subject, grid, curves,
                             max_panels=max_panels, group_column=column, groups=groups)

    g_counts = {}
    for r in group_rows:
        g_counts[r["status"]] = g_counts.get(r["status"], 0) + 1
    n_groups_failed = gb.n_groups - g_counts.get("converged", 0) - g_counts.get("max_steps", 0)
    summary = {
        "job": f"{GROUP_JOB} {column!r}",
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
        "groups_per_chunk": per_chunk, "n_chunks": len(chunks),
        "checkpoint": checkpoint.record(kept=bool(errors)),
        "n_z": gpred.spec.size, "evaluator": "jacfwd",
        "groups": group_rows,
        "group_status_counts": g_counts, "n_groups_failed": n_groups_failed,
        "spec_labels": list(labels),
        "starts": int(starts), "chunk_size": chunk_size, "quick": bool(quick),
        "sigma": sigma if isinstance(sigma, str) else float(sigma),
        "sigma_note": "one sigma per group" if isinstance(sigma, str) else "fixed",
        "detection_limit_mm3": float(detection_limit_mm3),
        **job_record(statuses, max_steps, t_fit, t_start, notes, errors,
                     "wall_s and fit_s include JAX compilation (see compile)"),
    }
    return summary
