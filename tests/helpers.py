"""Shared test helpers (imported by test modules; fixtures live in conftest.py).

The synthetic CSC set-up of the fit tests: five mice under trastuzumab, known
parameters (`TRUE`), their noise-free volumes and the user's path into a batch (a tidy
CSV, then `make_batch`), and batches spoilt on purpose (`bad_batches`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import fitcsc
from fitcsc._data import make_batch, read_tidy_csv
from fitcsc._fit_solve import FitStatus

MODEL = fitcsc.ModelConfig(crowding="logistic", drugs=("trastuzumab",), species="mouse")
REF = fitcsc.default_params(MODEL, carrying_capacity_cells=5e9, bulk_death_rate=0.2,
                            initial_csc_fraction=0.1, csc_division_rate=0.4,
                            self_renewal=0.7, her2_efficacy_csc=0.5, her2_efficacy_bulk=0.8)
SPEC = fitcsc.ParamSpec({"csc_division_rate": fitcsc.Positive(),
                         "self_renewal": fitcsc.Interval(0.5, 1.0),
                         "her2_efficacy_csc": fitcsc.Interval(0.0, 1.0)}, REF)
FREE = ("csc_division_rate", "self_renewal", "her2_efficacy_csc", "initial_volume_mm3")
DAYS = np.array([-7.0, -4, 0, 3, 7, 10, 14, 21, 28, 35])  # treatment from day 0
LIMIT = 5.0  # detection limit [mm3]
TRUE = np.array([[0.30, 0.68, 0.30, 80.0], [0.35, 0.72, 0.40, 90.0],
                 [0.40, 0.75, 0.50, 100.0], [0.45, 0.78, 0.60, 110.0],
                 [0.40, 0.55, 0.95, 60.0]])  # the last one: complete response (zeros late)
REGIMEN = fitcsc.Regimen((fitcsc.DoseLine("trastuzumab", 10.0, "mg/kg", n_doses=5,
                                          interval_day=7.0),))
NOISE_SD = 0.05
NUM_STARTS = 4


def true_volumes():
    sched = REGIMEN.to_schedule(MODEL.drugs, species="mouse")
    out = []
    for row in TRUE:
        p = eqx.tree_at(lambda q: [getattr(q, n) for n in FREE], REF,
                        [jnp.asarray(v) for v in row])
        out.append(fitcsc.simulate(MODEL, p, sched, jnp.asarray(DAYS), t0=DAYS[0]).volume_mm3)
    return np.asarray(out)


def write_batch(path, volumes, days, regimens=None, limit=LIMIT):
    """Through the user's path: a tidy CSV (volume 0 below the limit), then make_batch."""
    lines = ["study,arm,subject,day,volume_mm3"]
    arm = "trastuzumab" if regimens else "control"
    for i, (d_row, v_row) in enumerate(zip(days, volumes, strict=True)):
        for d, v in zip(d_row, v_row, strict=True):
            lines.append(f"syn,{arm},m{i},{float(d)},{0.0 if v < limit else float(v)}")
    path.write_text("\n".join(lines) + "\n")
    return make_batch(read_tidy_csv(path), regimens, detection_limit_mm3=limit)



def bad_batches(batch, k):
    """``{expected status: batch with subject k spoilt}``."""
    return {
        # observations 10,000 times later: the solver reaches the predictor's max_steps
        FitStatus.SOLVER_FAILURE: eqx.tree_at(lambda b: b.day, batch,
                                              batch.day.at[k].multiply(1e4)),
        FitStatus.NONFINITE: eqx.tree_at(lambda b: b.volume_mm3, batch,
                                         batch.volume_mm3.at[k, 3].set(jnp.nan)),
    }
