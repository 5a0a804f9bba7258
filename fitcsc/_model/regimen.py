"""Regimens as data, and their padded array form for the simulator.

A `Regimen` is a tuple of `DoseLine` s, each one drug given ``n_doses`` times every
``interval_day`` from ``start_day``, as a bolus (``infusion_hours == 0``) or a
zero-order infusion. A loading dose is a line of its own::

    trastuzumab_q3w = Regimen((
        DoseLine("trastuzumab", 8.0, "mg/kg", start_day=0.0, n_doses=1, infusion_hours=1.5),
        DoseLine("trastuzumab", 6.0, "mg/kg", start_day=21.0, interval_day=21.0,
                 n_doses=17, infusion_hours=0.5),
    ))

`Regimen.to_schedule` turns it into a `DoseSchedule`: padded arrays (time, amount in
mg, infusion length in days, drug slot, mask) with a static length, so regimens of
different lengths stack and vmap.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._errors import RegimenError
from .drugs import DOSE_UNITS, canonical_drug, dose_to_mg


@dataclasses.dataclass(frozen=True)
class DoseLine:
    """One drug on one schedule. Units in the field names."""

    drug: str
    dose: float  # amount per administration, in `dose_unit`
    dose_unit: str  # "mg", "mg/kg" or "mg/m2"
    start_day: float = 0.0  # day of the first dose (day 0 = start of treatment)
    interval_day: float = 0.0  # days between doses (ignored when n_doses == 1)
    n_doses: int = 1
    infusion_hours: float = 0.0  # 0 = bolus

    def __post_init__(self):
        name = canonical_drug(self.drug)
        if name is None:
            raise RegimenError(
                "unknown drug", column="drug", expected="a drug in fitcsc.CATALOGUE",
                value=self.drug,
            )
        object.__setattr__(self, "drug", name)
        if self.dose_unit not in DOSE_UNITS:
            raise RegimenError(
                "unknown dose unit", column="dose_unit", expected=f"one of {DOSE_UNITS}",
                value=self.dose_unit,
            )
        checks = [
            ("dose", self.dose >= 0 and np.isfinite(self.dose), "a finite dose >= 0"),
            ("start_day", np.isfinite(self.start_day), "a finite day"),
            ("interval_day", self.interval_day >= 0 and np.isfinite(self.interval_day),
             "a finite interval >= 0 days"),
            ("n_doses", int(self.n_doses) == self.n_doses and self.n_doses >= 1,
             "an integer >= 1"),
            ("infusion_hours", self.infusion_hours >= 0 and np.isfinite(self.infusion_hours),
             "a finite duration >= 0 hours"),
        ]
        for col, ok, expected in checks:
            if not ok:
                raise RegimenError("bad value", column=col, expected=expected,
                                   value=getattr(self, col))
        if self.n_doses > 1 and self.interval_day <= 0:
            raise RegimenError("repeated doses need an interval", column="interval_day",
                               expected="> 0 days when n_doses > 1", value=self.interval_day)

    def dose_times_day(self) -> np.ndarray:
        return self.start_day + self.interval_day * np.arange(int(self.n_doses))


@dataclasses.dataclass(frozen=True)
class Regimen:
    """A named regimen: several drugs, each on its own schedule (may be empty)."""

    lines: tuple[DoseLine, ...] = ()
    name: str = ""

    @property
    def drugs(self) -> tuple[str, ...]:
        """The distinct drugs in order of first appearance."""
        return tuple(dict.fromkeys(line.drug for line in self.lines))

    @property
    def n_doses(self) -> int:
        return int(sum(line.n_doses for line in self.lines))

    def events(self, species="human", body_weight_kg=None, bsa_m2=None):
        """Sorted dose events: list of ``(time_day, drug, amount_mg, duration_day)``."""
        ev = []
        for line in self.lines:
            amount = dose_to_mg(line.dose, line.dose_unit, species, body_weight_kg, bsa_m2)
            for t in line.dose_times_day():
                ev.append((float(t), line.drug, amount, line.infusion_hours / 24.0))
        return sorted(ev, key=lambda e: e[0])

    def to_schedule(
        self,
        drugs: tuple[str, ...],
        *,
        species: str = "human",
        body_weight_kg: float | None = None,
        bsa_m2: float | None = None,
        max_doses: int | None = None,
    ) -> DoseSchedule:
        """Padded `DoseSchedule` with drug slots numbered as in ``drugs``.

        **Raises:** `RegimenError` if a drug of the regimen is not among ``drugs`` or the
        regimen has more than ``max_doses`` doses.
        """
        ev = self.events(species, body_weight_kg, bsa_m2)
        n = len(ev) if max_doses is None else max_doses
        if len(ev) > n:
            raise RegimenError(
                f"regimen {self.name!r} has {len(ev)} doses", expected=f"at most {n}",
            )
        slot = {d: i for i, d in enumerate(drugs)}
        for e in ev:
            if e[1] not in slot:
                raise RegimenError(
                    f"regimen {self.name!r} uses a drug the model does not include",
                    column="drug", expected=f"one of {drugs}", value=e[1],
                )
        pad = n - len(ev)
        t_last = ev[-1][0] if ev else 0.0
        return DoseSchedule(
            time_day=jnp.asarray([e[0] for e in ev] + [t_last] * pad, dtype=float),
            amount_mg=jnp.asarray([e[2] for e in ev] + [0.0] * pad, dtype=float),
            duration_day=jnp.asarray([e[3] for e in ev] + [0.0] * pad, dtype=float),
            drug=jnp.asarray([slot[e[1]] for e in ev] + [0] * pad, dtype=jnp.int32),
            mask=jnp.asarray([True] * len(ev) + [False] * pad, dtype=bool),
        )


class DoseSchedule(eqx.Module):
    """Padded dose events (arrays of one static length ``n``); padding has mask False."""

    time_day: Float[Array, " n"]  # dose (or infusion start) time [day]
    amount_mg: Float[Array, " n"]  # amount [mg]
    duration_day: Float[Array, " n"]  # infusion length [day]; 0 = bolus
    drug: Int[Array, " n"]  # drug slot (index into the model's `drugs`)
    mask: Bool[Array, " n"]  # True for real doses

    @property
    def n(self) -> int:
        return self.time_day.shape[-1]


def empty_schedule(n: int = 1) -> DoseSchedule:
    """A schedule with no doses (untreated), padded to length ``n``."""
    return Regimen().to_schedule((), max_doses=n)


def stack_schedules(schedules) -> DoseSchedule:
    """Stack schedules of equal length along a new leading (batch) axis."""
    return DoseSchedule(*(jnp.stack([getattr(s, f) for s in schedules]) for f in
                          ("time_day", "amount_mg", "duration_day", "drug", "mask")))


def discontinuity_times(schedule: DoseSchedule, pad_day: float) -> Float[Array, " m"]:
    """Times where concentrations jump (bolus doses, infusion starts and ends).

    Padding entries are moved to ``pad_day`` (choose a time past the last output).
    """
    starts = jnp.where(schedule.mask, schedule.time_day, pad_day)
    ends = jnp.where(schedule.mask & (schedule.duration_day > 0),
                     schedule.time_day + schedule.duration_day, pad_day)
    return jnp.concatenate([starts, ends])
