"""The public trial API: fit the CSC trial model to published arms and predict new ones.

Everything an experiment, a benchmark or a user script needs to work with trials,
under public names (the implementation lives in private modules that may move)::

    from fitcsc.trials import Arm, TrialModel, TrialData, Objective, fit_trials

- Model: `TrialModel` (arm-level pCR, cure, DFS from one residual state; its
  structures in `STRUCTURES`, its parameters and priors in `PARAMETERS`), `Arm` (one
  published arm and its regimen), `trial_family`, the parameter scales
  `to_natural` / `from_natural` (``z`` value ↔ natural value of one named parameter),
  and `exposure_grid` (the arms' time grid and drug exposure, every `GRID_STEP_DAY`
  days unless told, with the HER2 blockers' concentrations at `BLOCKADE_GL`
  Gauss-Legendre points per interval; ``eqx.tree_at(lambda m: m.grid, tm, ...)``
  refines a model's).
- Endpoint formulas (one module, shared with the patient-level API ``fitcsc.
  patient_endpoints``): `hazard_ratio`, `TIMING_SD_DAY`.
- Data: `TrialData` and its observations (`PcrObservation`, `pcr_observations`,
  `adjuvant_observations` (with `ADJUVANT_LONG_TERM`: long-term ITT hazard ratios as
  upper bounds, `HrObservation.upper`), `link_observations` with `LINKS_USED`,
  `hr_pcr_observations`).
- Fitting: `Objective`, `fit_trials` (the one Levenberg–Marquardt, multi-start),
  `fit_prior_sds` (the hierarchical prior sds, `HYPERS`, by Laplace marginal
  likelihood over `HYPER_SD_GRID`), `draw_values` and `quadrature_check` (is the
  responsiveness grid fine enough at a fit?) and `trial_spread_check` (do the fitted
  trial effects fit the between-trial prior that a new trial's prediction draws from?).
- Posterior: `posterior_draws` (`METHODS`: ``method="linear"``, the default: Laplace
  draws whose predictions are linearised at the MAP, see `linearise_at` and
  `draw_values`'s ``linearise_at``; ``"psis"``: Laplace draws reweighted by PSIS;
  ``"laplace"``; ``"nuts"``; ``"chees"``) returning a `TrialPosterior`, and
  `posterior_flag` (one line when the draws cannot be trusted).
- Calibration: `CHEMO_REFERENCE_DOSE` / `reference_kill` (chemotherapy kill per
  reference dose) and `HER2_REFERENCE_DOSE` / `reference_her2_scale` (HER2 potency
  relative to each blocker's labelled-dose exposure).
- The published data and the shipped fit: `load_pcr` (the pCR arms and counts of
  data/clinical), `load_links` (the pCR-outcome hazard ratios the main job fits),
  `load_neo_landmarks` (the neoadjuvant arms' EFS/DFS landmarks and whole courses it fits
  with them),
  `clinical_fit_job` (what ``fitcsc run`` fits), `DEFAULT_STRUCTURE`,
  `DEFAULT_TRIAL_SD`, `QUICK_TRIALS` (its choices), `ci95` (a binomial 95% interval).
- Files: `save_fit`, `load_fit`, `load_draws`, `model_from_fit` (the ``fit.json`` that
  ``fitcsc run`` writes and ``fitcsc predict`` reads).
"""

from ._jobs.main import (
    DEFAULT_HYPER,
    DEFAULT_STRUCTURE,
    DEFAULT_TRIAL_SD,
    QUICK_TRIALS,
    ci95,
    clinical_fit_job,
    load_links,
    load_neo_landmarks,
    load_pcr,
)
from ._trial.endpoints import TIMING_SD_DAY, hazard_ratio, with_protected
from ._trial.fit import (
    ADJUVANT_LONG_TERM,
    HYPER_SD_GRID,
    HYPERS,
    LINKS_USED,
    HrObservation,
    Objective,
    PcrObservation,
    TrialData,
    TrialFit,
    adjuvant_observations,
    draw_values,
    fit_prior_sds,
    fit_trials,
    hr_pcr_observations,
    link_observations,
    load_draws,
    load_fit,
    model_from_fit,
    pcr_observations,
    quadrature_check,
    quadrature_warning,
    save_fit,
    trial_spread_check,
    trial_spread_warning,
)
from ._trial.model import (
    BLOCKADE_GL,
    CHEMO_REFERENCE_DOSE,
    GRID_STEP_DAY,
    HER2_REFERENCE_DOSE,
    PARAMETERS,
    STRUCTURES,
    TRIAL_SHIFT_LABELS,
    Arm,
    TrialModel,
    exposure_grid,
    from_natural,
    reference_her2_scale,
    reference_kill,
    to_natural,
    trial_family,
)
from ._trial.posterior import (
    METHODS,
    TrialPosterior,
    linearise_at,
    posterior_draws,
    posterior_flag,
)

__all__ = [
    "ADJUVANT_LONG_TERM", "HrObservation", "LINKS_USED", "PARAMETERS", "STRUCTURES",
    "TRIAL_SHIFT_LABELS", "TIMING_SD_DAY", "Arm", "Objective", "PcrObservation",
    "TrialData", "TrialFit", "TrialModel", "adjuvant_observations", "draw_values",
    "fit_trials", "from_natural", "hazard_ratio", "hr_pcr_observations",
    "link_observations", "load_draws", "load_fit", "model_from_fit", "pcr_observations",
    "posterior_draws", "posterior_flag", "save_fit", "to_natural", "trial_family",
    "TrialPosterior", "DEFAULT_STRUCTURE", "DEFAULT_TRIAL_SD", "QUICK_TRIALS", "ci95",
    "clinical_fit_job", "load_links", "load_neo_landmarks", "load_pcr", "METHODS",
    "linearise_at", "CHEMO_REFERENCE_DOSE",
    "HER2_REFERENCE_DOSE", "reference_her2_scale", "reference_kill", "HYPER_SD_GRID",
    "HYPERS", "fit_prior_sds", "DEFAULT_HYPER", "with_protected", "quadrature_check",
    "quadrature_warning", "trial_spread_check", "trial_spread_warning", "exposure_grid",
    "GRID_STEP_DAY", "BLOCKADE_GL",
]
