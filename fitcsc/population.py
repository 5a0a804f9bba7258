"""The public population (NLME) API: hierarchical models of tumour-volume curves and
their posterior, under public names (the implementation lives in private modules that
may move)::

    from fitcsc.population import csc_population, warm_start, sample

- Models: `population_model` (any per-curve predictor lifted to fixed, random and
  grouped effects), `csc_population` and `baseline_population` (the CSC model and the
  baselines with the design of ``fitcsc sample``), `PopulationModel`, `SiteSpace` (its
  parameter space), `posterior_derived`, `zero_sum_basis` (the basis of a zero-sum
  level's effects).
- Starting points: `map_curve_z` (a MAP fit per curve), `refine` (Adam on the log
  density), `warm_start` (both, then the population mode).
- Sampling: `sample` (ChEES-HMC or NUTS, chains vmapped, with checkpoints and
  thinning), `run_chains` (the same from explicit per-chain starts), `Posterior`
  (with the warm-up's step sizes and leapfrog counts, `WARMUP_STATS`, summarised by
  `warmup_summary`; a progress callback may also see the draws so far),
  `z_log_density`.
- Outputs: `posterior_outputs` (netCDF, summary tables and diagnostic plots of a
  posterior), `write_posterior_outputs` (the same from an InferenceData, e.g. the
  chains of several runs by `fitcsc.summary.concat_chains`), `progress_printer`.
- Gradients: `forward_predict` (each curve's forward-mode Jacobian under reverse-mode
  of the log density) and `vmapped_jacobians` (the same by ``jax.jacfwd`` under
  ``jax.vmap``, the reference it is tested against).
"""

from ._fit.population import (
    PopulationModel,
    SiteSpace,
    forward_predict,
    population_model,
    posterior_derived,
    vmapped_jacobians,
    zero_sum_basis,
)
from ._fit.population_csc import (
    baseline_population,
    csc_population,
    seeded_reference_days,
    untreated_log_growth,
)
from ._fit.sample import WARMUP_STATS, Posterior, run_chains, sample, warmup_summary, z_log_density
from ._jobs.sample_job import (
    map_curve_z,
    posterior_outputs,
    progress_printer,
    refine,
    warm_start,
    write_posterior_outputs,
)

__all__ = [
    "Posterior", "PopulationModel", "SiteSpace", "baseline_population", "csc_population",
    "forward_predict", "map_curve_z", "population_model", "posterior_derived",
    "posterior_outputs", "progress_printer", "refine", "run_chains", "sample",
    "seeded_reference_days", "untreated_log_growth", "vmapped_jacobians", "warm_start",
    "write_posterior_outputs", "z_log_density", "WARMUP_STATS", "warmup_summary",
    "zero_sum_basis",
]
