"""Padded, masked batches of subjects: the array form of a `TidyTable` and its regimens.

A `SubjectBatch` holds every subject's observations and dose schedule as arrays with a
leading subject axis and static padded lengths, so one compiled function vmaps over
subjects (or arms, or virtual patients) without retracing. Left-censored observations
(volume 0 or below the detection limit, M3) are flagged, never dropped or logged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._errors import DataError, RegimenError
from .._model.drugs import SPECIES, canonical_drug
from .._model.regimen import DoseSchedule, Regimen, stack_schedules

if TYPE_CHECKING:
    from .data import TidyTable


class SubjectBatch(eqx.Module):
    """Observations and dose schedules of many subjects, padded to static shapes.

    Arrays have a leading subject axis so that everything vmaps over subjects.
    Padding entries have ``mask == False``; their ``day`` repeats the subject's last
    real day (so solvers see no new time points) and their volume is 1.0 (log-safe).
    Censored entries (volume 0 or below the detection limit, M3) hold the detection
    limit as their volume and are kept, never dropped.
    """

    # Array fields, (n_subjects, n_obs) unless noted.
    day: Float[Array, "n_subjects n_obs"]  # noqa: F722  observation times [day]
    volume_mm3: Float[Array, "n_subjects n_obs"]  # noqa: F722  observed volume [mm3]
    mask: Bool[Array, "n_subjects n_obs"]  # noqa: F722  True: real observation
    censored: Bool[Array, "n_subjects n_obs"]  # noqa: F722  True: left-censored
    t0_day: Float[Array, " n_subjects"]  # noqa: F722  first observation day [day]
    schedule: DoseSchedule  # arrays of shape (n_subjects, n_doses)
    subject: tuple[str, ...] = eqx.field(static=True)
    arm: tuple[str, ...] = eqx.field(static=True)
    study: tuple[str, ...] = eqx.field(static=True)
    drugs: tuple[str, ...] = eqx.field(static=True)  # drug slots of `schedule.drug`

    @property
    def n_subjects(self) -> int:
        return len(self.subject)

    @property
    def n_obs(self) -> int:
        return int(self.day.shape[-1])

    def subset(self, indices) -> SubjectBatch:
        """The batch restricted to ``indices`` (ints, negative allowed, or a bool mask).

        Padding shapes (``n_obs``, number of doses) and drug slots are kept.
        **Raises:** `IndexError` for an index out of range or a mask of the wrong length.
        """
        n = self.n_subjects
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"bool mask of shape {idx.shape}, expected ({n},)")
            idx = np.flatnonzero(idx)
        elif idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"subject indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64).reshape(-1)
        if np.any((idx < -n) | (idx >= n)):
            raise IndexError(f"subject index out of range for {n} subjects: {idx.tolist()}")
        idx = idx % max(n, 1)
        take = functools.partial(_take, idx=idx)
        return SubjectBatch(
            day=take(self.day),
            volume_mm3=take(self.volume_mm3),
            mask=take(self.mask),
            censored=take(self.censored),
            t0_day=take(self.t0_day),
            schedule=jax.tree_util.tree_map(take, self.schedule),
            subject=tuple(self.subject[i] for i in idx),
            arm=tuple(self.arm[i] for i in idx),
            study=tuple(self.study[i] for i in idx),
            drugs=self.drugs,
        )


def _take(x, idx):
    """Rows ``idx`` of ``x``, indexed on the host (no gather to compile)."""
    return jnp.asarray(np.asarray(x)[idx])


def _weight(body_weight_kg, subject):
    w = body_weight_kg.get(subject) if isinstance(body_weight_kg, Mapping) else body_weight_kg
    if w is not None and not (math.isfinite(w) and w > 0):
        raise DataError(
            f"bad body weight for subject {subject!r}",
            expected="a finite weight > 0 in kg",
            value=w,
        )
    return None if w is None else float(w)


def make_batch(
    table: TidyTable,
    regimens: Mapping[str, Regimen] | None = None,
    *,
    drugs: tuple[str, ...] | None = None,
    species: str = "mouse",
    detection_limit_mm3: float = 1.0,
    max_obs: int | None = None,
    max_doses: int | None = None,
    body_weight_kg: float | Mapping[str, float] | None = None,
) -> SubjectBatch:
    """Pad a `TidyTable` and its regimens into a `SubjectBatch`.

    **Arguments:**
    - `table`: the observations (e.g. from `read_tidy_csv` or `read_nonmem`).
    - `regimens`: ``{key: Regimen}``; each subject's regimen is looked up by subject id
      first, then by arm. None gives every subject an empty (untreated) regimen.
    - `drugs`: drug slots; default: the drugs of the regimens in use, in order of first
      appearance over subjects.
    - `species`: ``"mouse"`` or ``"human"``, for mg/kg and mg/m2 conversion.
    - `detection_limit_mm3`: volumes below it (and zeros) are left-censored [mm3].
    - `max_obs`, `max_doses`: padded lengths (default: the longest subject; >= 1 dose).
    - `body_weight_kg`: one weight [kg], or ``{subject: kg}`` (species default if absent).

    **Returns:** a `SubjectBatch` with arrays ``(n_subjects, n_obs)`` and a schedule of
    shape ``(n_subjects, n_doses)``.

    **Raises:** `DataError` if an arm has no regimen, a subject has more than
    ``max_obs`` observations, or an option is invalid; `RegimenError` if a regimen uses
    a drug outside ``drugs`` or has more than ``max_doses`` doses.

    Example::

        batch = make_batch(read_tidy_csv("volumes.csv"), read_regimen_table("regimens.csv"))
        batch.day.shape, batch.schedule.time_day.shape
    """
    if species not in SPECIES:
        raise DataError("unknown species", expected=f"one of {SPECIES}", value=species)
    limit = float(detection_limit_mm3)
    if not (math.isfinite(limit) and limit > 0):
        raise DataError(
            "bad detection limit", expected="a finite volume > 0 in mm3", value=detection_limit_mm3
        )
    if table.n_rows == 0:
        raise DataError("no observations", file=table.path or None, expected="a non-empty table")
    subjects = table.subjects
    rank = {s: i for i, s in enumerate(subjects)}
    r = np.asarray([rank[s] for s in table.subject.tolist()], dtype=np.int64)
    order = np.lexsort((table.day, r))
    r = r[order]
    counts = np.bincount(r, minlength=len(subjects))
    starts = np.cumsum(counts) - counts
    n_obs = int(counts.max()) if max_obs is None else int(max_obs)
    if counts.max() > n_obs:
        worst = int(np.argmax(counts))
        raise DataError(
            f"subject {subjects[worst]!r} has {counts[worst]} observations",
            file=table.path or None,
            expected=f"at most max_obs={n_obs}",
            value=int(counts[worst]),
        )
    pos = np.arange(r.size) - starts[r]
    day_sorted = np.asarray(table.day, dtype=np.float64)[order]
    mask = np.zeros((len(subjects), n_obs), dtype=bool)
    mask[r, pos] = True
    day = np.repeat(day_sorted[starts + counts - 1][:, None], n_obs, axis=1)
    day[r, pos] = day_sorted
    volume = np.ones((len(subjects), n_obs))
    volume[r, pos] = np.asarray(table.volume_mm3, dtype=np.float64)[order]
    censored = mask & ((volume < limit) | (volume == 0))
    volume = np.where(censored, limit, volume)
    arms = tuple(table.arm[order][starts].tolist())
    studies = tuple(table.study[order][starts].tolist())

    used = []
    for s, a, i in zip(subjects, arms, starts, strict=True):
        if regimens is None:
            used.append(Regimen(name=a))
        elif s in regimens:
            used.append(regimens[s])
        elif a in regimens:
            used.append(regimens[a])
        else:
            keys = ", ".join(map(str, list(regimens)[:12])) + (" ..." if len(regimens) > 12 else "")
            raise DataError(
                f"arm {a!r} of subject {s!r} has no regimen",
                file=table.path or None,
                row=None if table.line is None else int(table.line[order][i]),
                column="arm",
                expected=f"an arm or subject of the regimens ({keys})",
                value=a,
            )
    if drugs is None:
        drugs = tuple(dict.fromkeys(d for reg in used for d in reg.drugs))
    else:
        names = tuple(canonical_drug(d) for d in drugs)
        for d, name in zip(drugs, names, strict=True):
            if name is None:
                raise RegimenError(
                    "unknown drug", column="drug", expected="a drug in fitcsc.CATALOGUE", value=d
                )
        drugs = names
    if max_doses is None:
        max_doses = max([1] + [reg.n_doses for reg in used])
    elif int(max_doses) < 1:
        raise DataError("bad max_doses", expected="an integer >= 1", value=max_doses)

    cache: dict[tuple, int] = {}
    unique, which = [], []
    for s, reg in zip(subjects, used, strict=True):
        key = (reg, _weight(body_weight_kg, s))
        if key not in cache:
            cache[key] = len(unique)
            unique.append(
                reg.to_schedule(
                    drugs, species=species, body_weight_kg=key[1], max_doses=int(max_doses)
                )
            )
        which.append(cache[key])
    which_idx = np.asarray(which, dtype=np.int64)
    schedule = jax.tree_util.tree_map(
        functools.partial(_take, idx=which_idx), stack_schedules(unique)
    )
    return SubjectBatch(
        day=jnp.asarray(day),
        volume_mm3=jnp.asarray(volume),
        mask=jnp.asarray(mask),
        censored=jnp.asarray(censored),
        t0_day=jnp.asarray(day[:, 0]),
        schedule=schedule,
        subject=subjects,
        arm=arms,
        study=studies,
        drugs=drugs,
    )
