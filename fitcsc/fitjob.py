"""The public building blocks of `fitcsc fit` (`fitcsc.fit_job`), so that a script can
fit exactly the problem the command fits, curve by curve, and compare it with a peer
(benchmarks/batch_fit.py does), under public names (the implementation lives in private
modules that may move)::

    from fitcsc.fitjob import load_job_data, csc_union_spec, arm_predictor

- Data: `load_job_data` (the batch, regimens and notes the command reads from a file or a
  `fitcsc.TidyTable`), `regimen_of` (a subject's regimen).
- The CSC model's parameters: `CSC_REFERENCE` (the value of every parameter a fit does
  not free, and the reference start), `csc_arm_spec` (one arm's free parameters),
  `csc_union_spec` (the union over arms), `arm_predictor` (each subject its arm's part of
  the union), `drug_slots` and `slot_batch` (drugs keyed by their PK, and a batch
  re-indexed to them).
- Starts: `sobol_unit`, `reference_starts`, `starts` (the multi-start vectors
  `fitcsc.fit_map` builds).
- Engine counters: `lane_stats` (iterations, services, lane steps, idle lanes of the
  fixed-shape lanes since the last `reset_lane_stats`).
- The paced evaluator's hold between doses: `paced_hold` (what it holds for a batch:
  ``"effects"``, ``"exposure"`` or ``"none"``) and `stage_by_stage` (a block in which
  it holds nothing: the reference that benchmarks/pk_regimens.py times).
"""

from ._fit.csc_spec import (
    CSC_REFERENCE,
    arm_predictor,
    csc_arm_spec,
    csc_union_spec,
    drug_slots,
    slot_batch,
)
from ._fit.driver import pad_observations, reference_starts, sobol_unit, starts
from ._fit.evaluators import hold_for, stage_by_stage
from ._fit.lanes import STATS as _STATS
from ._fit.predictors import subject_data
from ._jobs.fit_job import load_job_data, regimen_of


def paced_hold(predictor, batch) -> str:
    """What the paced evaluator holds between doses when `fitcsc.fit_map` fits
    ``batch`` (a `SubjectBatch`) with ``predictor``: ``"effects"`` (every exposure
    constant between doses), ``"exposure"`` (any other PK that does not depend on z) or
    ``"none"``."""
    return hold_for(predictor, pad_observations(subject_data(batch)))


def lane_stats() -> dict:
    """A copy of the lane engine's counters since the last `reset_lane_stats`."""
    return dict(_STATS)


def reset_lane_stats() -> None:
    """Set the lane engine's counters to 0."""
    for k in _STATS:
        _STATS[k] = 0


__all__ = [
    "CSC_REFERENCE", "arm_predictor", "csc_arm_spec", "csc_union_spec", "drug_slots",
    "lane_stats", "load_job_data", "paced_hold", "reference_starts", "regimen_of",
    "reset_lane_stats", "slot_batch", "sobol_unit", "stage_by_stage", "starts",
]
