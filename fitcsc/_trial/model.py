"""Trial-level predictions from one CSC model: pCR, cure, DFS and hazard ratios.

A `TrialModel` turns a vector ``z`` of shared, unconstrained parameters into arm-level
endpoints of published HER2+ trials, smoothly, so that pCR counts and adjuvant
outcomes can be fitted together (DESIGN §3) and predicted for any regimen.

Patients (virtual, integrated, never sampled):

- The model has no crowding over the treatment months, so it is linear in its initial
  state: one simulation from one cubic millimetre of tumour gives every patient's
  residual, scaled by her own burden. Burden is log-normal (sd ``burden_sd`` on the
  log scale) and is integrated by Gauss–Hermite quadrature.
- A fraction ``phi`` of tumours does not depend on HER2 (``h_S = h_D = 0``: HER2
  blockade does nothing to them); the rest have the typical dependence.
- Patients differ in *responsiveness* ``r = exp(s eta)``, ``eta ~ N(0, 1)``: it
  multiplies every chemotherapy kill rate and the tumour's turnover (CSC and bulk
  division rates and bulk death rate). Proliferative, high-turnover tumours respond
  more to chemotherapy and to HER2 blockade (which acts on division), which is the
  clinical picture of Ki67-high HER2+ disease. Structures with ``growth_power`` free
  ``alpha`` (``growth_response_power``): the turnover scales with ``r^alpha`` and the
  kill with ``r``, so that sensitivity can vary between patients more than growth
  (with one factor, ``alpha = 1``, a chemotherapy regimen that does not outpace the
  typical tumour's regrowth outpaces no patient's: under chemotherapy alone the net
  change of a patient's log CSC count is ``r`` times the typical one). The residual
  is simulated on a grid of ``n_nodes`` values of ``eta`` and interpolated (log
  scale, through three adjacent nodes in the span of ``1, r^alpha, r``, exact for the
  CSC log residual: `TrialModel.interpolate`) onto a fine grid, so that the arm rates,
  which are integrals of nearly step-like functions of ``eta``, stay smooth in ``z``.

Per patient (DESIGN §3): ``P(pCR) = exp(-c N_inv(t_s))`` at surgery, with ``c = 1`` for
pCR in breast and nodes and a fitted ``c < 1`` (the breast's share of residual
disease) for breast-only definitions; ``P(cure) = exp(-pi S_res)`` after adjuvant
therapy, with ``pi`` a residual CSC's chance of a lasting lineage and ``S_res`` the
residual CSCs discounted by drug-free growth since the adjuvant start (``S e^{-lambda
t}``, a martingale without drug, so only the drugs' extra killing counts); a non-cured
patient recurs when her surviving lineages regrow at the CSC net rate to
``detection_cells``; ``DFS(t) = P(cure) + (1 - P(cure)) sigmoid((t_rec - t)/w)``.
Adjuvant patients start from a log-normal micrometastatic burden (median
``exp(log_micromet_cells)`` cells, one per trial when several are fitted).

Hazard ratio between two arms: the ratio of cumulative hazards at the trial's median
follow-up, ``log DFS_e(t) / log DFS_c(t)`` (with cure fractions the hazards are not
proportional; this is the Cox estimate's large-sample limit only when they are; the
choice is stated wherever an HR is reported).
"""

from __future__ import annotations

import dataclasses
import math
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._model.drugs import CATALOGUE
from .._model.family import ModelConfig, hill_response
from .._model.params import default_params
from .._model.pk import concentrations, cumulative_exposure, pk_arrays
from .._model.regimen import Regimen
from .._model.transforms import ElementwiseSpace, Interval, Positive, Real
from .._status import Status
from .endpoints import (
    TIMING_SD_DAY,
    cure_probability,
    dfs_given,
    lineage,
    log_lasting_lineages,
    recurrence_day,
    with_protected,
)

# Gauss-Legendre on [0, 1] for `TrialModel.interpolate`'s basis functions
_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)
_GL_NODES, _GL_WEIGHTS = 0.5 * (_GL_X + 1.0), 0.5 * _GL_W

# Fixed, documented calibration (DESIGN §3; illustrative where the literature is silent).
BASE = dict(
    initial_volume_mm3=1.0,  # unit tumour: every patient is a scaled copy
    initial_csc_fraction=0.01,
    csc_division_rate=0.1,
    self_renewal=0.52,
    bulk_division_rate=0.05,
    bulk_death_rate=0.045,
    carrying_capacity_cells=1e12,  # unused without crowding
    ec50_mg_per_L=10.0,
)
TUMOUR_VOLUME_MM3 = 14000.0  # median primary: a 3-cm sphere
SURGERY_WEEKS = 4.0  # surgery 4 weeks after the last preoperative dose (assumed)
ADJUVANT_WASHOUT_DAYS = 60.0  # residual assessed this long after the last adjuvant dose

# name, transform to the natural scale, natural-scale default (the start of a fit)
PARAMETERS = {
    "log_kill_scale": ("exp", 8.0),  # x each drug's 1 ln-kill per reference dose
    "logit_her2_csc": ("sigmoid", 0.6),  # epsilon_S
    "logit_her2_bulk": ("sigmoid", 0.9),  # epsilon_D
    "logit_csc_sparing": ("sigmoid", 0.1),  # sigma_S
    "log_turnover": ("exp", 3.0),  # x division and death rates of the typical tumour
    "log_response_sd": ("exp", 0.5),  # s: sd of log responsiveness
    "log_burden_sd": ("exp", 1.0),  # sd of log primary burden (fixed: option burden_sd)
    "logit_breast_factor": ("sigmoid", 0.3),  # breast's share of residual (ypT0/is)
    "logit_her2_independent": ("sigmoid", 0.3),  # fraction of tumours with h = 0
    # heterogeneity="continuous": a patient's HER2 dependence h = sigmoid(m + s xi),
    # xi ~ N(0, 1) independent of responsiveness; h scales h_S and h_D
    "her2_dependence_logit_mean": ("identity", 1.0),  # m
    "log_her2_dependence_sd": ("exp", 1.5),  # s
    "log_micromet_cells": ("exp", 1e5),  # median residual burden after surgery [cells]
    "log_her2_potency": ("exp", 1.0),  # per HER2 drug (name#drug): C/EC50 multiplier;
    # without #drug: the class mean the drugs' potencies are drawn around (a prior only)
    "log_chemo_potency": ("exp", 1.0),  # per chemo drug (name#drug): x the class kill
    # per trial (name#trial): the trial's shift of log primary burden (option
    # ``trial_shift="burden"``) or, with ``trial_shift="response"``, minus its shift of
    # mean responsiveness in units of the between-patient sd (positive: lower pCR, both)
    "trial_effect": ("identity", 0.0),
    "logit_no_dcis": ("sigmoid", 0.8),  # P(no in-situ residual | no invasive residual)
    # extra death rate of HER2-dependent cells under full blockade [1/day] (0 unless free)
    "log_her2_kill": ("exp", 0.05),
    # fraction of micrometastatic CSCs out of the drugs' reach (dormant, or in a
    # sanctuary): they follow drug-free dynamics whatever the regimen (0 unless free)
    "logit_protected_fraction": ("sigmoid", 1e-6),
    # correlation of a patient's micrometastatic responsiveness with her primary's
    # (`pcr_outcome`; 1 unless free, when it starts at 0.5): below 1, a pCR (a responsive
    # primary) says less about her micrometastases, which the drugs still reach
    "logit_micromet_correlation": ("sigmoid", 0.5),
    "her2_dependence_csc": ("identity", 1.0),  # h_S: 1 for HER2+, lower for HER2-low
    "her2_dependence_bulk": ("identity", 1.0),  # h_D
    # hormone-receptor covariate: HR+ tumours' log responsiveness has mean
    # ``hr_response_shift`` (in units of its sd; HR- tumours: 0) and their
    # HER2-independent fraction has logit ``logit(phi) + hr_her2_independent_shift``
    "hr_response_shift": ("identity", 0.0),
    "hr_her2_independent_shift": ("identity", 0.0),
    # between-patient sd of the log initial CSC fraction (its absolute value is used;
    # 0: every tumour starts at the typical fraction); integrated by Gauss-Hermite
    # over ``n_csc_fraction`` nodes (set automatically when the sd is free)
    "csc_fraction_sd": ("identity", 0.0),
    # a patient's division and death rates scale with r^alpha, her chemotherapy kill
    # with r (alpha = 1: one factor for growth and sensitivity, as before; alpha < 1:
    # sensitivity varies more than growth, so a regimen that does not outpace the typical
    # tumour's regrowth still clears the most sensitive ones)
    "growth_response_power": ("identity", 1.0),
}
MAX_CSC_FRACTION = 0.5  # a patient's initial CSC fraction is capped here
HR_SUBGROUPS = ("HR+", "HR-")
HETEROGENEITY = ("fraction", "continuous")
# model structures compared out of sample (experiments/clinical_validation.py): name ->
# `TrialModel.build` options
STRUCTURES = {
    "shipped": dict(heterogeneity="fraction"),
    "fraction": dict(heterogeneity="fraction", chemo_potency=True, her2_class=True,
                     trial_effects=True, dcis=True),
    "continuous": dict(heterogeneity="continuous", chemo_potency=True, her2_class=True,
                       trial_effects=True, dcis=True),
    "fraction_kill": dict(heterogeneity="fraction", chemo_potency=True, her2_class=True,
                          trial_effects=True, dcis=True, her2_kill=True),
    "continuous_kill": dict(heterogeneity="continuous", chemo_potency=True, her2_class=True,
                            trial_effects=True, dcis=True, her2_kill=True),
    "continuous_kill_alpha": dict(heterogeneity="continuous", chemo_potency=True,
                                  her2_class=True, trial_effects=True, dcis=True,
                                  her2_kill=True, growth_power=True),
    # the same with each trial's effect on its patients' responsiveness instead of their
    # burden (a burden shift barely moves NOAH's pCR): in sample far better (negative log
    # posterior 32.2 against 50.8 on the 23 arms), but a shift moves pCR so much that a
    # new trial's interval is wider (README, "On trials the fit has not seen")
    "continuous_kill_alpha_response": dict(heterogeneity="continuous", chemo_potency=True,
                                           her2_class=True, trial_effects=True, dcis=True,
                                           her2_kill=True, growth_power=True,
                                           trial_shift="response"),
    # with the pCR-outcome links (--links): no micrometastatic CSCs out of the drugs'
    # reach; instead a pCR patient's micrometastases respond like her primary only up to
    # a correlation rho (`TrialModel.pcr_outcome`), so that the link's HR 0.2-0.6 need
    # not stop adjuvant therapy from curing
    "continuous_kill_alpha_micromet": dict(heterogeneity="continuous", chemo_potency=True,
                                           her2_class=True, trial_effects=True, dcis=True,
                                           her2_kill=True, growth_power=True,
                                           protected=False, micromet_correlation=True),
    # both: the correlation and (with --links) the fraction out of reach, each fitted, so
    # that the data choose between a reservoir the drugs miss and micrometastases that
    # respond unlike the primary (it nests both structures above)
    "continuous_kill_alpha_micromet_protected": dict(
        heterogeneity="continuous", chemo_potency=True, her2_class=True, trial_effects=True,
        dcis=True, her2_kill=True, growth_power=True, micromet_correlation=True),
}
# what a trial's effect shifts (``trial_shift``), as reports name it
TRIAL_SHIFT_LABELS = {"burden": "log burden",
                      "response": "mean responsiveness, in between-patient sds, "
                                  "positive: lower pCR"}
TRIAL_SHIFTS = tuple(TRIAL_SHIFT_LABELS)
_INV = {"exp": math.log, "sigmoid": lambda p: math.log(p / (1.0 - p)), "identity": float}
_FWD = {"exp": jnp.exp, "sigmoid": jax.nn.sigmoid, "identity": lambda x: x}
_SPACE = {"exp": Positive(), "sigmoid": Interval(0.0, 1.0), "identity": Real()}
DEFINITIONS = ("ypT0/is ypN0", "ypT0/is", "ypT0", "ypT0 ypN0")
BREAST_ONLY = ("ypT0/is", "ypT0")  # definitions that ignore nodal residual
NO_DCIS = ("ypT0", "ypT0 ypN0")  # definitions that count in-situ residual as no pCR


def trial_family(trial: str) -> str:
    """The trial a publication belongs to: ``"MDACC (Buzdar 2007 extra cohort)"`` ->
    ``"MDACC"`` (cohorts and updates of one trial share its population)."""
    return trial.split(" (")[0].strip()


def to_natural(name: str, value):
    """Map an unconstrained value of parameter ``name`` (or ``name#k``) to its scale."""
    return _FWD[PARAMETERS[name.split("#")[0]][0]](value)


def from_natural(name: str, value: float) -> float:
    return _INV[PARAMETERS[name.split("#")[0]][0]](value)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm to predict: regimen, evaluation day and (for pCR) the definition."""

    name: str
    regimen: Regimen
    setting: str = "neoadjuvant"  # or "adjuvant"
    pcr_definition: str = "ypT0/is ypN0"
    trial: str = ""  # adjuvant: which micrometastatic-burden parameter applies
    volume_mm3: float = TUMOUR_VOLUME_MM3  # median primary tumour volume (neoadjuvant)

    def last_dose_end(self) -> float:
        ev = self.regimen.events()
        return max([e[0] + e[3] for e in ev] or [0.0])

    def eval_day(self) -> float:
        if self.setting == "neoadjuvant":
            return self.last_dose_end() + 7.0 * SURGERY_WEEKS
        return self.last_dose_end() + ADJUVANT_WASHOUT_DAYS


class ExposureGrid(eqx.Module):
    """Per arm: a time grid to the evaluation day and the drug exposure along it.

    The grid is uniform (``step_day``) plus, for chemotherapy, points just before and at
    each dose start, at each infusion end and at 1 h ... 4 days after it, so that fast
    kinetics are resolved (other drugs: the dose start and infusion end); arms are padded
    to one length by repeating the last point (zero-width intervals contribute nothing).
    """

    t: jax.Array  # (arms, L) [day]
    conc: jax.Array  # (arms, drugs, L) [mg/L]
    auc: jax.Array  # (arms, drugs, L) cumulative, exact [mg day/L]
    # the HER2 blockers' concentrations at `BLOCKADE_GL` Gauss-Legendre points inside each
    # grid interval, (arms, HER2 drugs, L - 1, BLOCKADE_GL) [mg/L]: the blockade's integral
    conc_gl: jax.Array


GRID_STEP_DAY = 0.5
# Gauss-Legendre points per grid interval for the blockade's integral. The concentration
# is smooth inside an interval (dose starts and infusion ends are grid points), so four
# points resolve an oral blocker's daily peaks on the half-day grid, which the trapezoid
# missed (lapatinib's CSC fraction at surgery was 4-23% off; see experiments/csc_enrichment)
BLOCKADE_GL = 4
_BGL_X, _BGL_W = np.polynomial.legendre.leggauss(BLOCKADE_GL)
_AFTER = np.asarray([0.0, 1 / 24, 3 / 24, 6 / 24, 0.5, 1.0, 2.0, 4.0])


def exposure_grid(model, params, arms, *, step_day=GRID_STEP_DAY) -> ExposureGrid:
    """Build the `ExposureGrid` of ``arms`` (host side, once per model)."""
    grids = []
    for a in arms:
        end = a.eval_day()
        pts = [np.linspace(0.0, end, int(np.ceil(end / step_day)) + 1)]
        for t0, drug, _, dur in a.regimen.events():
            if CATALOGUE[drug].drug_class == "chemo":  # fast kinetics, a kill to resolve
                pts.append(np.asarray([t0 - 1e-6, t0]))
                pts.append(t0 + dur + _AFTER)
            else:  # slow or oral: the blockade is integrated by Gauss-Legendre per interval
                pts.append(np.asarray([t0, t0 + dur]))
        g = np.unique(np.clip(np.concatenate(pts), 0.0, end))
        grids.append(g)
    n = max(len(g) for g in grids)
    t = np.stack([np.concatenate([g, np.full(n - len(g), g[-1])]) for g in grids])
    coefs, rates = pk_arrays(params.pk)
    n_doses = max(1, max(a.regimen.n_doses for a in arms))
    her2 = _her2_drugs(model)
    conc, auc, conc_gl = [], [], []
    at_times = jax.vmap(lambda f, s, u: f(coefs, rates, s, u), in_axes=(None, None, 0))
    for a, ts in zip(arms, t, strict=True):
        sched = a.regimen.to_schedule(model.drugs, max_doses=n_doses)
        conc.append(at_times(concentrations, sched, jnp.asarray(ts)).T)
        auc.append(at_times(cumulative_exposure, sched, jnp.asarray(ts)).T)
        half = 0.5 * np.diff(ts)
        t_gl = (ts[:-1] + half)[:, None] + half[:, None] * _BGL_X[None, :]  # (L-1, Q)
        c_gl = at_times(concentrations, sched, jnp.asarray(t_gl.ravel())).T
        conc_gl.append(c_gl[her2].reshape(len(her2), *t_gl.shape))
    return ExposureGrid(t=jnp.asarray(t), conc=jnp.stack(conc), auc=jnp.stack(auc),
                        conc_gl=jnp.stack(conc_gl))


def _her2_drugs(model) -> np.ndarray:
    """Indices of the model's HER2 blockers (the drug axis of `ExposureGrid.conc_gl`)."""
    return np.flatnonzero(np.asarray(model.drug_mask("her2")))


class Parts(typing.NamedTuple):
    """The population of a `TrialModel` as weighted parts (see `TrialModel.population`)."""

    weights: jax.Array  # (P,)
    res: tuple  # `TrialModel.residuals` fields, each with a leading axis P


class TrialModel(eqx.Module):
    """Shared-parameter model of trial arms. Build with `TrialModel.build`.

    ``names`` are the free parameters (keys of `PARAMETERS`, ``log_micromet_cells#k``
    per adjuvant trial); everything else is fixed at ``fixed`` (natural scale).
    """

    model: ModelConfig = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    fixed_items: tuple = eqx.field(static=True)
    arm_names: tuple[str, ...] = eqx.field(static=True)
    settings: tuple[str, ...] = eqx.field(static=True)
    trials: tuple[str, ...] = eqx.field(static=True)
    base: object
    base_kill: jax.Array  # per drug, 1 ln-kill per reference dose [L/(mg day)]
    # per drug: concentration multiplier that puts a HER2 blocker's labelled-dose exposure
    # at trastuzumab's (1 for trastuzumab and every other drug; `reference_her2_scale`)
    her2_scale: jax.Array
    grid: ExposureGrid
    eval_day: jax.Array
    volume_mm3: jax.Array
    breast_only: jax.Array
    trial_index: jax.Array  # adjuvant arm -> micrometastatic parameter
    neo_trials: tuple[str, ...] = eqx.field(static=True, default=())
    arm_trial: tuple[str, ...] = eqx.field(static=True, default=())  # per arm
    definition: tuple[str, ...] = eqx.field(static=True, default=())  # per arm
    n_nodes: int = eqx.field(static=True, default=21)
    eta_max: float = eqx.field(static=True, default=4.0)
    refine: int = eqx.field(static=True, default=16)
    # `pcr_outcome`'s responsiveness grid: 8 points per node interval move the log HR of
    # pCR vs no pCR by 0.004 against 16 (0.018 with 4) and cut the Jacobian by a third
    link_refine: int = eqx.field(static=True, default=8)
    n_burden: int = eqx.field(static=True, default=24)
    n_csc_fraction: int = eqx.field(static=True, default=1)
    burden_sd: float = eqx.field(static=True, default=1.0)
    micromet_sd: float = eqx.field(static=True, default=1.5)
    detection_cells: float = eqx.field(static=True, default=1e9)
    timing_sd_day: float = eqx.field(static=True, default=TIMING_SD_DAY)
    heterogeneity: str = eqx.field(static=True, default="fraction")
    trial_shift: str = eqx.field(static=True, default="burden")  # one of TRIAL_SHIFTS
    n_her2: int = eqx.field(static=True, default=9)  # HER2-dependence nodes (continuous)
    # per arm: the arm whose regimen is the patients' whole course (preoperative and
    # postoperative therapy), from which `pcr_outcome` takes their recurrence (empty:
    # every arm its own course)
    course: tuple[int, ...] = eqx.field(static=True, default=())

    @classmethod
    def build(cls, arms: list[Arm], names=None, *, fixed=None, base_kill=None,
              her2_scale=None, drugs=None, free_burden_sd=False, chemo_potency=False,
              her2_class=False, trial_effects=False, dcis=False, pcr_outcome=False, protected=False,
              micromet_correlation=False, her2_kill=False, growth_power=False, courses=None,
              **options) -> TrialModel:
        """Model for ``arms``. ``base_kill`` ``{drug: rate}`` and ``her2_scale`` ``{drug:
        multiplier}`` override the calibration (a saved fit passes its own; drugs it
        lacks get `reference_kill` / `reference_her2_scale`); ``drugs`` fixes the drug
        slots (default: the arms' drugs in order of appearance).

        Default free parameters (``names=None``): every non-identity parameter of
        `PARAMETERS` for the ``heterogeneity`` chosen, one HER2 potency per HER2 drug
        and one micrometastatic burden per adjuvant trial; and with ``free_burden_sd``
        the burden's spread, ``chemo_potency`` one potency per chemotherapy drug,
        ``her2_class`` the HER2 potencies' class mean, ``trial_effects`` one log-burden
        shift per neoadjuvant trial, ``dcis`` the in-situ factor of ypT0 definitions,
        ``pcr_outcome`` the distant burden of neoadjuvant patients (`pcr_outcome`),
        ``protected`` the fraction of micrometastatic CSCs out of the drugs' reach,
        ``micromet_correlation`` (with ``pcr_outcome``) the correlation between a
        patient's micrometastatic and primary responsiveness,
        ``her2_kill`` the death rate of HER2-dependent cells under blockade,
        ``growth_power`` the power of responsiveness in a patient's growth rates
        (``growth_response_power``; fixed at 1 otherwise).
        ``courses`` ``{arm name: Arm}``: a neoadjuvant arm's whole course (its
        preoperative regimen followed by the postoperative one, `Arm` named for it),
        added to the model's arms; `pcr_outcome` takes that arm's recurrence from it."""
        if not arms:
            raise ValueError("TrialModel needs at least one arm")
        arms = list(arms)
        course = ()
        if courses:
            names_in = [a.name for a in arms]
            unknown = sorted(set(courses) - set(names_in))
            if unknown:
                raise ValueError(f"courses: no arm named {unknown[0]!r} in the model")
            for c in courses.values():
                if c.name not in names_in:
                    arms.append(c)
                    names_in.append(c.name)
            course = tuple(names_in.index(courses[a.name].name) if a.name in courses else i
                           for i, a in enumerate(arms))
        drugs = tuple(drugs or dict.fromkeys(d for a in arms for d in a.regimen.drugs))
        model = ModelConfig(crowding="none", drugs=drugs, species="human")
        base = default_params(model, **BASE)
        trials = tuple(dict.fromkeys(a.trial for a in arms if a.setting == "adjuvant"))
        het = options.get("heterogeneity", "fraction")
        if het not in HETEROGENEITY:
            raise ValueError(f"heterogeneity must be one of {HETEROGENEITY}, got {het!r}")
        if options.get("trial_shift", "burden") not in TRIAL_SHIFTS:
            raise ValueError(f"trial_shift must be one of {TRIAL_SHIFTS}, "
                             f"got {options['trial_shift']!r}")
        if names is None:
            names = [n for n, (f, _) in PARAMETERS.items()
                     if n not in ("log_micromet_cells", "log_burden_sd") and f != "identity"]
            if free_burden_sd:
                names.insert(names.index("log_response_sd") + 1, "log_burden_sd")
            if het == "continuous":
                names.remove("logit_her2_independent")
                names[names.index("log_her2_dependence_sd"):
                      names.index("log_her2_dependence_sd")] = ["her2_dependence_logit_mean"]
            else:
                names.remove("log_her2_dependence_sd")
            names += [f"log_her2_potency#{d}" for d in drugs
                      if CATALOGUE[d].drug_class == "her2"]
            names.remove("log_her2_potency")
            names = [n for n in names if n not in ("log_chemo_potency", "logit_no_dcis",
                                                   "logit_protected_fraction",
                                                   "logit_micromet_correlation",
                                                   "log_her2_kill")]
            if her2_class:
                names.append("log_her2_potency")
            if chemo_potency:
                names += [f"log_chemo_potency#{d}" for d in drugs
                          if CATALOGUE[d].drug_class == "chemo"]
            if dcis:
                names.append("logit_no_dcis")
            if trial_effects:
                names += [f"trial_effect#{t}" for t in dict.fromkeys(
                    trial_family(a.trial) for a in arms if a.setting == "neoadjuvant")]
            names += [f"log_micromet_cells#{t}" for t in trials]
            if pcr_outcome:
                names.append("log_micromet_cells#neoadjuvant")
            if protected:
                names.append("logit_protected_fraction")
            if micromet_correlation:
                if not pcr_outcome:
                    raise ValueError("TrialModel.build: micromet_correlation needs "
                                     "pcr_outcome (it acts on the pCR-outcome link only)")
                names.append("logit_micromet_correlation")
            if her2_kill:
                names.insert(names.index("logit_csc_sparing"), "log_her2_kill")
            if growth_power:
                names.insert(names.index("log_response_sd") + 1, "growth_response_power")
        fixed = ({n: v for n, (_, v) in PARAMETERS.items()}
                 | {"log_burden_sd": options.get("burden_sd", 1.0),
                    "logit_protected_fraction": 0.0, "log_her2_kill": 0.0,
                    "logit_micromet_correlation": 1.0}
                 | dict(fixed or {}))
        if "log_her2_kill" in names and fixed["log_her2_kill"] <= 0:
            fixed["log_her2_kill"] = PARAMETERS["log_her2_kill"][1]
        if "logit_protected_fraction" in names and fixed["logit_protected_fraction"] <= 0:
            fixed["logit_protected_fraction"] = PARAMETERS["logit_protected_fraction"][1]
        if "logit_micromet_correlation" in names and fixed["logit_micromet_correlation"] >= 1:
            fixed["logit_micromet_correlation"] = PARAMETERS["logit_micromet_correlation"][1]
        for a in arms:
            for d in a.regimen.drugs:
                if CATALOGUE[d].drug_class not in ("her2", "chemo"):
                    raise ValueError(
                        f"arm {a.name!r}: TrialModel supports HER2 blockers and "
                        f"chemotherapy; {d!r} is a {CATALOGUE[d].drug_class!r} drug")
        kill = reference_kill(model)
        if base_kill:  # a saved fit's calibration (fits before reference doses used medians)
            kill = np.asarray([base_kill.get(d, k) for d, k in zip(drugs, kill, strict=True)])
        scale = reference_her2_scale(model)
        if her2_scale is not None:  # a saved fit's own (fits before it: 1 for every drug)
            scale = np.asarray([her2_scale.get(d, k) for d, k in zip(drugs, scale,
                                                                      strict=True)])
        grid = exposure_grid(model, base, arms)
        if (("csc_fraction_sd" in names or fixed["csc_fraction_sd"] != 0)
                and options.get("n_csc_fraction", 1) < 2):  # a spread needs nodes
            options = dict(options, n_csc_fraction=7)
        t_idx = [trials.index(a.trial) if a.setting == "adjuvant" else 0 for a in arms]
        neo_trials = tuple(dict.fromkeys(trial_family(a.trial) for a in arms
                                         if a.setting == "neoadjuvant"))
        return cls(model=model, names=tuple(names), fixed_items=tuple(fixed.items()),
                   arm_names=tuple(a.name for a in arms),
                   settings=tuple(a.setting for a in arms), trials=trials,
                   base=base, base_kill=jnp.asarray(kill), her2_scale=jnp.asarray(scale),
                   grid=grid,
                   eval_day=jnp.asarray([a.eval_day() for a in arms]),
                   volume_mm3=jnp.asarray([a.volume_mm3 for a in arms], float),
                   breast_only=jnp.asarray([a.pcr_definition in BREAST_ONLY for a in arms]),
                   trial_index=jnp.asarray(t_idx), neo_trials=neo_trials,
                   arm_trial=tuple(trial_family(a.trial) for a in arms),
                   definition=tuple(a.pcr_definition for a in arms), course=course,
                   **options)

    # ------------------------------------------------------------------ parameters
    @property
    def fixed(self) -> dict:
        """Natural-scale values of every parameter not in ``names``."""
        return dict(self.fixed_items)

    def z0(self) -> jax.Array:
        """The start: every free parameter at its default (natural scale)."""
        return jnp.asarray([from_natural(n, self.fixed[n.split("#")[0]])
                            for n in self.names], float)

    @property
    def space(self) -> ElementwiseSpace:
        """The `fitcsc.ParameterSpace` of ``z`` (the free parameters, in ``names``
        order; reference: `z0`), for samplers and the engine."""
        return ElementwiseSpace(self.names, tuple(_SPACE[PARAMETERS[n.split("#")[0]][0]]
                                                  for n in self.names),
                                tuple(float(x) for x in self.z0()))

    def natural(self, z) -> dict:
        """``{name: value}`` on the natural scale, free and fixed together (the free ones
        are ``space.natural(z)``)."""
        out = dict(self.fixed)
        for i, n in enumerate(self.names):
            out[n] = to_natural(n, z[i])
        return out

    def _value(self, z, name, trial=None, key=None):
        keys = [name]
        if trial is not None and self.trials:
            keys.insert(0, f"{name}#{self.trials[trial]}")
        if key is not None:
            keys.insert(0, f"{name}#{key}")
        for key in keys:
            if key in self.names:
                return to_natural(key, z[self.names.index(key)])
        fixed = self.fixed
        return jnp.asarray(next((fixed[k] for k in keys if k in fixed), fixed[name]), float)

    def typical(self, z):
        """Typical patient's `CSCParams` (unit tumour) under ``z``."""
        v = lambda n: self._value(z, n)  # noqa: E731
        turn = v("log_turnover")
        b = self.base
        return eqx.tree_at(
            lambda p: (p.kill_rate, p.her2_efficacy_csc, p.her2_efficacy_bulk,
                       p.csc_sparing, p.csc_division_rate, p.bulk_division_rate,
                       p.bulk_death_rate),
            b, (self.base_kill * v("log_kill_scale") * self.chemo_potency(z),
                v("logit_her2_csc"),
                v("logit_her2_bulk"), v("logit_csc_sparing"), b.csc_division_rate * turn,
                b.bulk_division_rate * turn, b.bulk_death_rate * turn))

    def potency(self, z) -> jax.Array:
        """Per-drug HER2 potency multipliers (1 for drugs that are not HER2 blockers)."""
        out = []
        for d in self.model.drugs:
            key = f"log_her2_potency#{d}"
            if key in self.names:
                out.append(to_natural(key, z[self.names.index(key)]))
            else:
                fixed = self.fixed
                out.append(jnp.asarray(fixed.get(key, fixed["log_her2_potency"]), float))
        return jnp.stack(out) if out else jnp.zeros((0,))

    def exposure_multiplier(self, z) -> jax.Array:
        """Per drug: what multiplies its concentration before the one HER2 EC50 (the
        fitted potency times the labelled-exposure scale `her2_scale`; 1 for drugs that
        are not HER2 blockers). An ODE solve of the same patient divides its EC50 by it
        (experiments/csc_enrichment.py)."""
        return self.potency(z) * self.her2_scale

    def chemo_potency(self, z) -> jax.Array:
        """Per-drug chemotherapy potency multipliers (``log_chemo_potency#drug``; 1 for a
        drug without one, and for drugs that are not chemotherapy)."""
        out = [to_natural(f"log_chemo_potency#{d}", z[self.names.index(f"log_chemo_potency#{d}")])
               if f"log_chemo_potency#{d}" in self.names
               else jnp.asarray(self.fixed.get(f"log_chemo_potency#{d}", 1.0), float)
               for d in self.model.drugs]
        return jnp.stack(out) if out else jnp.zeros((0,))

    def trial_effects(self, z) -> jax.Array:
        """Per arm: its trial's effect (``trial_effect#trial``; 0 for arms of a trial
        without one and for adjuvant arms)."""
        fixed = self.fixed
        shift = {t: (z[self.names.index(f"trial_effect#{t}")]
                     if f"trial_effect#{t}" in self.names
                     else jnp.asarray(fixed.get(f"trial_effect#{t}", 0.0), float))
                 for t in self.neo_trials}
        trial_of = dict(zip(self.arm_names, self._arm_trials(), strict=True))
        return jnp.stack([shift.get(trial_of[a], jnp.asarray(0.0)) for a in self.arm_names])

    def log_burden_shift(self, z) -> jax.Array:
        """Per arm: the trial's shift of log primary burden (`trial_effects` when
        ``trial_shift="burden"``, else 0)."""
        eff = self.trial_effects(z)
        return eff if self.trial_shift == "burden" else jnp.zeros_like(eff)

    def response_shift(self, z) -> jax.Array:
        """Per arm: the trial's shift of mean responsiveness ``eta`` (minus
        `trial_effects` when ``trial_shift="response"``, else 0)."""
        eff = self.trial_effects(z)
        return -eff if self.trial_shift == "response" else jnp.zeros_like(eff)

    def _arm_trials(self):
        return self.arm_trial if self.arm_trial else ("",) * len(self.arm_names)

    def blockade(self, z):
        """HER2 blockade ``B`` on the grid (Bliss over blockers) and ``int_0^t B`` (by
        `BLOCKADE_GL`-point Gauss-Legendre on each grid interval)."""
        g, p = self.grid, self.base
        idx = _her2_drugs(self.model)
        mult, ec50, hill = (v[idx] for v in (self.exposure_multiplier(z), p.ec50_mg_per_L,
                                              p.hill))

        def bliss(conc):  # (arms, blockers, ...) -> 1 - prod over blockers of (1 - Hill)
            col = (slice(None),) + (None,) * (conc.ndim - 2)  # blockers on axis 1
            inh = hill_response(conc * mult[col], ec50[col], hill[col])
            return 1.0 - jnp.prod(1.0 - inh, axis=1)

        b = bliss(g.conc[:, idx])  # (arms, L)
        b_gl = bliss(g.conc_gl)  # (arms, L - 1, Q)
        steps = 0.5 * jnp.diff(g.t, axis=1) * jnp.einsum("alq,q->al", b_gl, _BGL_W)
        b_int = jnp.concatenate([jnp.zeros((b.shape[0], 1)), jnp.cumsum(steps, axis=1)],
                                axis=1)
        return b, b_int

    def nodes(self):
        return jnp.linspace(-self.eta_max, self.eta_max, self.n_nodes)

    def response_factors(self, z, eta):
        """A patient's factors on chemotherapy kill, ``r = exp(s eta)``, and on division
        and death rates, ``r^alpha`` (``alpha``: ``growth_response_power``, 1 unless
        free)."""
        log_r = self._value(z, "log_response_sd") * eta
        return jnp.exp(log_r), jnp.exp(self._value(z, "growth_response_power") * log_r)

    def patient(self, z, eta):
        """Patient with responsiveness ``eta`` (`response_factors`)."""
        p = self.typical(z)
        r, g = self.response_factors(z, eta)
        return eqx.tree_at(
            lambda q: (q.kill_rate, q.csc_division_rate, q.bulk_division_rate,
                       q.bulk_death_rate, q.csc_death_rate, q.her2_dependence_csc,
                       q.her2_dependence_bulk),
            p, (p.kill_rate * r, p.csc_division_rate * g, p.bulk_division_rate * g,
                p.bulk_death_rate * g, p.csc_death_rate * g,
                jnp.asarray(self._value(z, "her2_dependence_csc"), float),
                jnp.asarray(self._value(z, "her2_dependence_bulk"), float)))

    # ------------------------------------------------------------------ simulation
    def residuals(self, z, *, her2_dependent: bool = True, log_fraction_shift=0.0,
                  her2_scale=1.0):
        """Per arm and node: ``(log N_inv, log S_res, log pi, lambda, status)``.

        ``log_fraction_shift``: the patient's initial CSC fraction is the typical one
        times ``exp(log_fraction_shift)`` (capped at `MAX_CSC_FRACTION`).
        ``her2_scale``: the patient's HER2 dependence relative to the typical one (``h``
        multiplies ``h_S`` and ``h_D``; ``her2_dependent=False`` is ``h = 0``).

        Log cells at the arm's evaluation day per mm3 of initial tumour, from the exact
        solution of the linear SD model along the arm's exposure grid (see
        `exposure_grid`): ``S = S0 exp(A_S)`` and ``D = exp(A_D) (D0 + int b S
        exp(-A_D))``, where the rate integrals ``A`` are exact (closed-form AUCs, and
        the HER2 blockade integrated on the grid) and the production integral uses a
        log-linear (exponential) interpolant on each grid interval.
        """
        g = self.grid
        p = self.typical(z)
        blockade, blockade_int = self.blockade(z)
        s_kill = self._value(z, "log_kill_scale")
        h_s, h_d = self._value(z, "her2_dependence_csc"), self._value(z, "her2_dependence_bulk")
        scale = her2_scale if her2_dependent else 0.0  # 0: the HER2-independent tumours
        h_s, h_d = scale * h_s, scale * h_d
        f0 = jnp.minimum(self.base.initial_csc_fraction * jnp.exp(log_fraction_shift),
                         MAX_CSC_FRACTION)
        cells = self.model.cells_per_mm3
        log_s0, log_d0 = jnp.log(f0 * cells), jnp.log((1.0 - f0) * cells)
        kb = self.base_kill * s_kill * self.chemo_potency(z)  # (n_drugs,)
        # death of HER2-dependent cells under blockade (apoptosis, ADCC), not tied to
        # division, so not scaled by responsiveness (0 unless ``log_her2_kill`` is free)
        k_h = self._value(z, "log_her2_kill")
        kill_int = jnp.einsum("j,ajt->at", kb, g.auc)  # int k_D / r  (arms, grid)
        t = g.t

        def one_node(eta):
            r, g = self.response_factors(z, eta)
            vs, vd = p.csc_division_rate * g, p.bulk_division_rate * g
            dd, ds = p.bulk_death_rate * g, p.csc_death_rate * g
            pp, es, ed = p.self_renewal, p.her2_efficacy_csc * h_s, p.her2_efficacy_bulk * h_d
            a_s = (vs * (2 * pp - 1) - ds) * t - 2 * pp * vs * es * blockade_int \
                - p.csc_sparing * r * kill_int - k_h * h_s * blockade_int
            a_d = (vd - dd) * t - vd * ed * blockade_int - r * kill_int \
                - k_h * h_d * blockade_int
            log_b = jnp.log(2 * vs) + jnp.log1p(-pp + pp * es * blockade)
            log_f = log_b + a_s - a_d  # production integrand, log, (arms, grid)
            m = jnp.max(log_f, axis=1, keepdims=True)
            lf = log_f - m
            dl = lf[:, 1:] - lf[:, :-1]
            # int over an interval of a log-linear interpolant: h (e^b - e^a) / (b - a),
            # written with both exponents <= 0 so nothing overflows
            small = jnp.abs(dl) < 1e-6
            e0, e1 = jnp.exp(lf[:, :-1]), jnp.exp(lf[:, 1:])
            mean = jnp.where(small, e0 * (1.0 + 0.5 * dl),
                             (e1 - e0) / jnp.where(small, 1.0, dl))
            integral = jnp.sum(jnp.diff(t, axis=1) * mean, axis=1)
            log_int = jnp.log(jnp.maximum(integral, 1e-300)) + m[:, 0]
            log_d = a_d[:, -1] + jnp.logaddexp(log_d0, log_s0 + log_int)
            log_s = log_s0 + a_s[:, -1]
            pi, lam = lineage(vs, pp, ds)
            log_inv = jnp.logaddexp(log_s, log_d) - jnp.log(cells)
            return (log_inv, log_s - jnp.log(cells), jnp.broadcast_to(
                jnp.log(jnp.maximum(pi, 1e-300)), log_s.shape),
                jnp.broadcast_to(lam, log_s.shape))

        outs = jax.vmap(one_node, out_axes=1)(self.nodes())
        finite = jnp.all(jnp.isfinite(jnp.stack(outs[:2])), axis=0)
        status = jnp.where(finite, Status.SUCCESS, Status.NONFINITE).astype(jnp.int32)
        return (*outs, status)

    # ------------------------------------------------------------------ integration
    def interpolate(self, values, eta, z):
        """Node values ``(..., n_nodes)`` at responsiveness ``eta`` (any shape; clamped to
        the grid): ``(..., *eta.shape)``.

        Through three adjacent nodes (the interval's two and its left neighbour; the
        first interval uses its right one), in the span of ``1``, ``g = r^alpha`` and
        ``r = exp(s eta)`` (``alpha``: ``growth_response_power``). A patient's CSC log
        residual is ``c0 + c1 g + c2 r`` (the turnover rates in its exponent scale with
        ``g``, the kill with ``r``), her lineage rate is proportional to ``g`` and her
        lasting-lineage chance does not depend on ``eta``, so the interpolant is exact
        for all three, for every ``alpha``, however far apart adjacent nodes are in
        sensitivity. With ``alpha`` 1 the span is ``1, r, eta r``; as ``s -> 0`` it is
        the quadratic through the three nodes. (The interpolant linear in ``r`` that this
        replaces was exact only for ``alpha`` 1: with ``alpha`` free a 13-node fit moved
        by 1 to 49 units of negative log posterior on a doubled grid.)

        In the local coordinate ``u`` (node spacings from the stencil's centre) the basis
        is the Newton form of exponential divided differences, ``phi1(u) = int_0^u e^{a
        v} dv`` and ``phi2(u) = int_0^1 int_0^u v e^{(a + t (b - a)) v} dv dt`` with ``a
        = alpha s d``, ``b = s d``: smooth in ``a`` and ``b`` through ``a = b`` and ``0``,
        evaluated by Gauss-Legendre quadrature (exact to rounding for ``|a|, |b|`` up to
        about 10)."""
        nodes = self.nodes()
        n = self.n_nodes
        d = nodes[1] - nodes[0]
        pos = jnp.clip((jnp.asarray(eta, float) - nodes[0]) / d, 0.0, n - 1.0)
        # the stencil's centre: nodes c - 1, c, c + 1 (the interval's left node, or 1)
        c = jnp.clip(jnp.floor(pos).astype(jnp.int32), 1, n - 2)
        u = pos - c  # in [-1, 1]
        s = self._value(z, "log_response_sd")
        a, b = self._value(z, "growth_response_power") * s * d, s * d
        t, wt = _GL_NODES, _GL_WEIGHTS

        def phi(x):  # (phi1, phi2) at x (any shape)
            xt = x[..., None] * t  # (..., K)
            p1 = x * jnp.sum(wt * jnp.exp(a * xt), axis=-1)
            rate = a + t * (b - a)  # (K,) over the divided difference's t
            e = jnp.exp(rate[:, None] * xt[..., None, :])  # (..., K_t, K_v)
            p2 = x**2 * jnp.einsum("...ij,i,j->...", e, wt, wt * t)
            return p1, p2

        p1, p2 = phi(u)
        (q1p, q1m), (q2p, q2m) = phi(jnp.asarray([1.0, -1.0]))
        det = q1p * q2m - q2p * q1m
        w_up = (p1 * q2m - p2 * q1m) / det  # weight of v[c + 1] - v[c]
        w_down = (p2 * q1p - p1 * q2p) / det  # weight of v[c - 1] - v[c]
        v0 = values[..., c]
        return v0 + w_up * (values[..., c + 1] - v0) + w_down * (values[..., c - 1] - v0)

    def fine_grid(self, refine=None):
        """The fine responsiveness grid: ``refine`` points (default the model's) per node
        interval."""
        return jnp.linspace(-self.eta_max, self.eta_max,
                            (self.n_nodes - 1) * (refine or self.refine) + 1)

    def _fine(self, values, z, shift=0.0, refine=None):
        """Interpolate node values (..., n_nodes) onto the fine grid (`fine_grid`,
        `interpolate`); with the weights of a normal responsiveness ``eta ~ N(shift, 1)``
        (truncated to the grid): ``(fine,)`` for a scalar ``shift``, ``(arms, fine)`` for
        one shift per arm."""
        fine = self.fine_grid(refine)
        w = jnp.exp(-0.5 * (fine - jnp.asarray(shift)[..., None]) ** 2)
        w = w / jnp.sum(w, axis=-1, keepdims=True)
        return self.interpolate(values, fine, z), w

    def _burden(self, sd):
        x, w = np.polynomial.hermite_e.hermegauss(self.n_burden)
        return jnp.asarray(sd * x), jnp.asarray(w / w.sum())

    def _fraction_nodes(self, z):
        """Gauss-Hermite nodes (log-fraction shifts) and weights of the initial CSC
        fraction's between-patient spread (one node at 0 when ``n_csc_fraction == 1``)."""
        x, w = np.polynomial.hermite_e.hermegauss(self.n_csc_fraction)
        sd = jnp.abs(self._value(z, "csc_fraction_sd"))
        return [sd * xi for xi in x], [float(wi) for wi in w / w.sum()]

    def her2_nodes(self) -> np.ndarray:
        """HER2-dependence values ``h`` at which residuals are computed: 1 and 0 (the
        HER2-dependent and -independent tumours) for ``heterogeneity="fraction"``; an
        even grid from 1 down to 0 for ``"continuous"``."""
        if self.heterogeneity == "fraction":
            return np.asarray([1.0, 0.0])
        return np.linspace(1.0, 0.0, self.n_her2)

    def her2_weights(self, z, logit_shift=0.0) -> jax.Array:
        """Probability weights of `her2_nodes` (sum 1), for a population whose logit of
        the HER2-independent fraction (``"fraction"``), or whose mean logit HER2
        dependence (``"continuous"``, with the opposite sign), is shifted by
        ``logit_shift``.

        ``"continuous"``: ``h = sigmoid(m + s xi)``, ``xi ~ N(0, 1)``; a node's weight is
        the expectation of its linear-interpolation (hat) basis function, so that the
        weighted sum over nodes is the expectation of the piecewise-linear interpolant of
        a patient's outcome in ``h`` (exact for outcomes linear in ``h``), and smooth in
        ``m`` and ``s``."""
        if self.heterogeneity == "fraction":
            phi = self._value(z, "logit_her2_independent")
            phi = jax.nn.sigmoid(jnp.log(phi) - jnp.log1p(-phi) + logit_shift)
            return jnp.stack([1.0 - phi, phi])
        m = self._value(z, "her2_dependence_logit_mean") - logit_shift
        sd = self._value(z, "log_her2_dependence_sd")
        xi = jnp.linspace(-6.0, 6.0, 481)
        p = jnp.exp(-0.5 * xi**2)
        p = p / jnp.sum(p)
        h = jax.nn.sigmoid(m + sd * xi)
        nodes = jnp.asarray(self.her2_nodes())
        hat = jnp.maximum(0.0, 1.0 - jnp.abs(h[None, :] - nodes[:, None]) * (self.n_her2 - 1))
        return hat @ p

    def _stacked(self, z):
        """The population as ``(weights (P,), residuals)``: every field of `residuals`
        with a leading axis over the P parts (HER2 node outer, CSC-fraction node inner),
        computed in one vmapped call."""
        return self.part_weights(z), self.part_residuals(z)

    def part_residuals(self, z):
        """`residuals` of every part of the population (leading axis P), vmapped."""
        shifts, _ = self._fraction_nodes(z)
        h = jnp.repeat(jnp.asarray(self.her2_nodes()), len(shifts))
        sh = jnp.tile(jnp.stack([jnp.asarray(v, float) for v in shifts]),
                      len(self.her2_nodes()))
        return jax.vmap(lambda a, b: self.residuals(z, her2_scale=a, log_fraction_shift=b))(
            h, sh)

    def part_weights(self, z):
        """Probability weights of the parts of `part_residuals` (sum 1)."""
        _, w = self._fraction_nodes(z)
        return (self.her2_weights(z)[:, None] * jnp.asarray(w)[None, :]).reshape(-1)

    def population(self, z, res=None) -> Parts:
        """The population's `Parts` under ``z``; ``res``: precomputed `part_residuals`."""
        return Parts(self.part_weights(z), self.part_residuals(z) if res is None else res)

    def _parts(self, z, res=None):
        """``(weights, stacked residuals)`` of the population (``res`` None), of `Parts`,
        of one `residuals` output (weight 1) or of a `mixture` list."""
        if res is None:
            return self._stacked(z)
        if isinstance(res, Parts):
            return res.weights, res.res
        if isinstance(res, list):
            return (jnp.stack([jnp.asarray(wt, float) for wt, _ in res]),
                    tuple(jnp.stack([r[i] for _, r in res]) for i in range(5)))
        return jnp.ones(1), tuple(jnp.asarray(x)[None] for x in res)

    def mixture(self, z):
        """``[(weight, residuals)]`` over the patients' HER2 dependence (`her2_nodes`:
        for ``"fraction"``, the HER2-dependent tumours first, then the fraction ``phi``
        (``logit_her2_independent``) that does not depend on HER2), and within each,
        with a CSC-fraction spread, over the fraction nodes."""
        weights, res = self._stacked(z)
        return [(weights[i], tuple(x[i] for x in res)) for i in range(weights.shape[0])]

    def subgroup_weights(self, z, weights, name):
        """Part weights re-derived for hormone-receptor subgroup ``name`` (``"HR+"`` or
        ``"HR-"``; None: unchanged) and the subgroup's responsiveness shift:
        ``(weights, shift)``. HR- tumours are the reference; HR+ tumours' responsiveness
        is shifted by ``hr_response_shift`` and their HER2 independence by
        ``hr_her2_independent_shift`` on the logit scale (see `her2_weights`). Needs the
        population's parts (a `mixture`)."""
        if name is None:
            return weights, 0.0
        _, w = self._fraction_nodes(z)
        if name not in HR_SUBGROUPS or weights.shape[0] != len(self.her2_nodes()) * len(w):
            raise ValueError(f"subgroup must be one of {HR_SUBGROUPS} (with a mixture), "
                             f"got {name!r}")
        w = jnp.asarray(w)
        if name == "HR-":
            return (self.her2_weights(z)[:, None] * w[None, :]).reshape(-1), 0.0
        hw = self.her2_weights(z, self._value(z, "hr_her2_independent_shift"))
        return (hw[:, None] * w[None, :]).reshape(-1), self._value(z, "hr_response_shift")

    def pcr_pair(self, z, res=None, subgroup=None):
        """Per arm: pCR rate in breast and nodes, breast-only pCR rate, status.

        ``P = E[exp(-c V0 R)]`` over responsiveness (fine grid), burden
        (Gauss-Hermite) and the HER2-dependence parts, with ``c = 1`` and ``c =
        c_breast``. ``res``: one `residuals` output (no mixture) or a `mixture` list.
        ``subgroup``: ``"HR+"`` / ``"HR-"`` for a hormone-receptor subgroup (see
        `subgroup_weights`; needs the mixture), None for the whole population.
        """
        weights, r = self._parts(z, res)
        weights, shift = self.subgroup_weights(z, weights, subgroup)
        c_b = self._value(z, "logit_breast_factor")
        x, wx = self._burden(self._value(z, "log_burden_sd"))
        log_v = jnp.log(self.volume_mm3) + self.log_burden_shift(z)
        # (P, arms, fine) and weights (arms, fine)
        fine, w = self._fine(r[0] + log_v[None, :, None], z, shift + self.response_shift(z))

        def rate(log_c):
            u = fine[..., None] + x + log_c
            p = jnp.sum(wx * jnp.exp(-jnp.exp(jnp.minimum(u, 40.0))), axis=-1)
            return jnp.einsum("p,paf,af->a", weights, p, w)

        status = jnp.max(r[4], axis=(0, 2))
        return rate(0.0), rate(jnp.log(c_b)), status

    def pcr_rates(self, z, res=None, subgroup=None):
        """Arm pCR rates under each arm's own definition, and status."""
        total, breast, status = self.pcr_pair(z, res, subgroup)
        return self.by_definition(z, total, breast, self.definition), status

    def by_definition(self, z, total, breast, definitions):
        """pCR rates under ``definitions`` (one per arm) from the total (ypT0/is ypN0) and
        breast-only (ypT0/is) rates: the definitions without in-situ residual (ypT0,
        ypT0 ypN0) multiply by ``logit_no_dcis``, the chance that a patient with no
        invasive residual has no in-situ residual either (independent of the nodes)."""
        if not definitions:  # models built before definitions were stored
            definitions = tuple("ypT0/is" if b else "ypT0/is ypN0"
                                for b in np.asarray(self.breast_only))
        bad = [d for d in definitions if d not in DEFINITIONS]
        if bad:
            raise ValueError(f"pCR definition must be one of {DEFINITIONS}, got {bad[0]!r}")
        breast_only = jnp.asarray([d in BREAST_ONLY for d in definitions])
        no_dcis = jnp.asarray([d in NO_DCIS for d in definitions])
        q = self._value(z, "logit_no_dcis")
        return jnp.where(breast_only, breast, total) * jnp.where(no_dcis, q, 1.0)

    def dfs(self, z, days_after_start, res=None):
        """Arm DFS at ``days_after_start`` (days since the adjuvant start), cure rates.

        Averaged over the population's parts unless ``res`` is given.
        **Returns:** ``(dfs (n_arms, n_days), cure (n_arms,), status (n_arms,))``.
        """
        weights, r = self._parts(z, res)
        d, c, s = self._dfs_one(z, days_after_start, r)
        return (jnp.einsum("p,pad->ad", weights, d), jnp.einsum("p,pa->a", weights, c),
                jnp.max(s, axis=0))

    def _dfs_one(self, z, days_after_start, res):
        """`dfs` of one part, or of stacked parts (leading axes kept)."""
        micromet = jnp.stack([self._value(z, "log_micromet_cells", k)
                              for k in range(max(1, len(self.trials)))])
        log_m = jnp.log(micromet[self.trial_index] / self.model.cells_per_mm3)
        per, cure, w = self._dfs_fine(days_after_start, res, log_m, z, self._protected(z))
        dfs = jnp.sum(per * w[:, None], axis=-2)
        cure_rate = jnp.sum(cure * w, axis=-1)
        return dfs, cure_rate, jnp.max(res[4], axis=-1)

    def _dfs_fine(self, days_after_start, res, log_m, z, protected=None, refine=None,
                  eval_day=None):
        """Per arm and fine responsiveness point: DFS at ``days_after_start``
        ``(arms, fine, days)`` and the cure probability ``(arms, fine)``, over the
        log-normal micrometastatic burden (median ``exp(log_m)`` mm3 of tumour cells per
        arm); and the responsiveness weights ``(fine,)``. ``protected``: ``(log fraction,
        log initial CSCs per mm3)`` of micrometastatic CSCs out of the drugs' reach.
        ``eval_day``: per arm of ``res`` (default: the model's arms')."""
        _, log_s, log_pi, lam, _ = res
        eval_day = self.eval_day if eval_day is None else eval_day
        f_s, w = self._fine(log_s + log_m[:, None], z, refine=refine)
        f_pi, _ = self._fine(log_pi, z, refine=refine)
        f_lam, _ = self._fine(lam, z, refine=refine)
        x, wx = self._burden(self.micromet_sd)
        log_res = f_s[..., None] + x  # (arms, fine, burden)
        # expected lasting lineages: pi S e^{-lambda t} is conserved by drug-free
        # growth (a martingale of the branching process), so only the drug's extra
        # killing since day 0 lowers it, whatever the evaluation day
        log_founders = log_lasting_lineages(f_pi[..., None], log_res, f_lam[..., None],
                                            eval_day[:, None, None])
        if protected is not None:  # out of reach: pi S0, S0 the untreated initial CSCs
            log_p, log_s0 = protected
            log_s0m = (log_s0 + log_m)[:, None, None] + x  # (arms, 1, burden)
            log_founders, log_res = with_protected(log_founders, log_res, f_pi[..., None],
                                                   log_s0m, log_p)
        cure = cure_probability(log_founders)
        # regrowth at the CSC net rate from the residual at the evaluation day
        t_rec = recurrence_day(eval_day[:, None, None], log_res, f_lam[..., None],
                               self.detection_cells)
        days = jnp.asarray(days_after_start, float)
        per = dfs_given(cure[..., None], t_rec[..., None], days, self.timing_sd_day)
        return (jnp.sum(per * wx[:, None], axis=-2), jnp.sum(cure * wx, axis=-1), w)

    def _micromet_kernel(self, z, shift, refine=None):
        """``(arms, fine, fine)``: row ``f`` the weights over the fine grid of the
        micrometastases' responsiveness given the primary's at point ``f``, ``N(shift +
        rho (eta_f - shift), 1 - rho^2)`` normalised on the grid (rho
        ``logit_micromet_correlation``); as rho -> 1 it tends to the identity."""
        fine = self.fine_grid(refine)
        rho = self._value(z, "logit_micromet_correlation")
        shift = jnp.asarray(shift)[:, None, None]
        mean = shift + rho * (fine[None, :, None] - shift)
        logk = -0.5 * (fine[None, None, :] - mean) ** 2 / (1.0 - rho**2)
        return jax.nn.softmax(logk, axis=-1)

    def _protected(self, z):
        """``(log fraction, log initial CSCs per mm3)`` of micrometastatic CSCs out of the
        drugs' reach, or None when the fraction is 0 (fixed)."""
        if ("logit_protected_fraction" not in self.names
                and self.fixed["logit_protected_fraction"] <= 0):
            return None
        f = self._value(z, "logit_protected_fraction")
        s0 = self.base.initial_csc_fraction * self.model.cells_per_mm3
        return jnp.log(f), jnp.log(s0)

    def pcr_outcome(self, z, days, res=None):
        """The pCR-outcome link of neoadjuvant arms, from one residual state per patient.

        A patient's pCR (ypT0/is ypN0) comes from her primary tumour at surgery (its
        burden varies as in `pcr_pair`); her recurrence from distant micrometastases
        present at diagnosis (median ``log_micromet_cells#neoadjuvant`` cells for a
        primary of the default volume, scaled with the arm's median primary burden (its
        volume and its trial's effect); log-normal with sd ``micromet_sd``, independent
        of her own primary burden), treated by the arm's whole course (``course``, its
        own regimen without one) with the same sensitivity (responsiveness, HER2
        dependence, CSC fraction). Surgery removes the primary. So a pCR patient can
        still recur, and pCR is linked to cure only through her tumour's biology. With
        ``logit_micromet_correlation`` free, the micrometastases' responsiveness is
        ``rho eta + sqrt(1 - rho^2) xi`` (``xi ~ N(0, 1)``, about the trial's mean;
        `_micromet_kernel`) instead of the primary's ``eta``.

        **Returns:** per arm ``(pcr, dfs_pcr, dfs_no_pcr)``; DFS ``(arms, days)`` at
        ``days`` since the start of therapy.
        """
        weights, r = self._parts(z, res)
        log_v = jnp.log(self.volume_mm3) + self.log_burden_shift(z)
        micromet = self._value(z, "log_micromet_cells", None, key="neoadjuvant")
        log_m = (jnp.log(micromet / self.model.cells_per_mm3) + log_v
                 - jnp.log(TUMOUR_VOLUME_MM3))  # (arms,)
        x, wx = self._burden(self._value(z, "log_burden_sd"))
        refine = self.link_refine
        fine, w = self._fine(r[0] + log_v[None, :, None], z, self.response_shift(z),
                             refine=refine)  # (P, arms, fine), (arms, fine)
        u = fine[..., None] + x
        p = jnp.sum(wx * jnp.exp(-jnp.exp(jnp.minimum(u, 40.0))), axis=-1)
        course = jnp.asarray(self.course or range(len(self.arm_names)))
        r_c = tuple(v[:, course] for v in r)  # each patient's whole course
        dfs, _, _ = self._dfs_fine(days, r_c, log_m, z, self._protected(z), refine=refine,
                                   eval_day=self.eval_day[course])  # (P, arms, fine, d)
        if "logit_micromet_correlation" in self.names:
            k = self._micromet_kernel(z, self.response_shift(z), refine)  # (arms, f, g)
            dfs = jnp.einsum("afg,pagd->pafd", k, dfs)
        wp = weights[:, None, None] * w * p
        wn = weights[:, None, None] * w * (1.0 - p)
        n_p, n_n = jnp.sum(wp, axis=(0, 2)), jnp.sum(wn, axis=(0, 2))
        d_p = jnp.einsum("paf,pafd->ad", wp, dfs)
        d_n = jnp.einsum("paf,pafd->ad", wn, dfs)
        return n_p, d_p / n_p[:, None], d_n / n_n[:, None]


# One standard administration of each chemotherapy drug in early HER2+ breast cancer
# (label or guideline dose of its usual breast schedule); the class kill rate gives one
# ln-kill per reference dose (times ``log_kill_scale`` and the drug's own
# ``log_chemo_potency#drug``), so a drug's kill never depends on the other arms of a
# regimen file. Values from the US labels / standard regimens, typed from memory, not
# checked against a stored page (listed as assumptions in data/README.md).
CHEMO_REFERENCE_DOSE = {  # drug: (dose, unit, regimen it comes from)
    "paclitaxel": (175.0, "mg/m2", "q3w, Taxol label (adjuvant node-positive)"),
    "docetaxel": (75.0, "mg/m2", "q3w, Taxotere label (TC / TCH / with trastuzumab)"),
    "doxorubicin": (60.0, "mg/m2", "q3w, AC"),
    "epirubicin": (90.0, "mg/m2", "q3w, EC-90 / FEC-90"),
    "cyclophosphamide": (600.0, "mg/m2", "q3w, AC / EC / TC"),
    "fluorouracil": (600.0, "mg/m2", "CMF days 1, 8 / FEC"),
    "methotrexate": (40.0, "mg/m2", "CMF days 1, 8"),
    "carboplatin": (600.0, "mg", "AUC 6 q3w, TCH (about 600 mg)"),
}


# One labelled maintenance administration of each HER2 blocker and its interval: the
# trial model puts every blocker's steady-state average concentration at its labelled
# dose on trastuzumab's (`reference_her2_scale`), so that a potency of 1 means "as much
# blockade at its labelled dose as trastuzumab at its own", and the class prior over
# potencies is a prior over drugs given at their labelled doses, antibodies and small
# molecules alike (a shared EC50 made lapatinib, at about 1 mg/L against trastuzumab's
# about 90 mg/L, inert under the antibody-learned class mean). Doses from the US labels,
# typed from memory, not checked against a stored page (data/README.md's assumptions).
HER2_REFERENCE_DOSE = {  # drug: (dose, unit, interval [days], regimen it comes from)
    "trastuzumab": (6.0, "mg/kg", 21.0, "q3w maintenance, Herceptin label"),
    "pertuzumab": (420.0, "mg", 21.0, "q3w maintenance, Perjeta label"),
    "lapatinib": (1250.0, "mg", 1.0, "daily with capecitabine, Tykerb label"),
    "neratinib": (240.0, "mg", 1.0, "daily, Nerlynx label"),
    "trastuzumab_emtansine": (3.6, "mg/kg", 21.0, "q3w, Kadcyla label"),
    "trastuzumab_deruxtecan": (5.4, "mg/kg", 21.0, "q3w (breast), Enhertu label"),
}
HER2_REFERENCE_DRUG = "trastuzumab"


def _auc_per_mg(model) -> np.ndarray:
    """Per drug slot of ``model``: the AUC [mg day / L] of 1 mg (typical human PK)."""
    coefs, rates = pk_arrays(default_params(model).pk)
    return np.asarray(jnp.sum(coefs / rates, axis=1))


def _labelled_average_concentration(drug: str, auc_per_mg: float) -> float:
    """Steady-state average concentration [mg/L] of ``drug`` at `HER2_REFERENCE_DOSE`
    (linear PK: dose x AUC per mg / interval), typical human patient."""
    from .._model.drugs import dose_to_mg

    dose, unit, tau, _ = HER2_REFERENCE_DOSE[drug]
    return dose_to_mg(dose, unit, "human") * auc_per_mg / tau


def reference_her2_scale(model) -> np.ndarray:
    """Per drug slot of ``model``: the concentration multiplier that puts a HER2
    blocker's labelled-dose average exposure (`HER2_REFERENCE_DOSE`) at trastuzumab's; 1
    for drugs that are not HER2 blockers. Raises ``ValueError`` for a HER2 blocker
    without a labelled dose."""
    scale = np.ones(len(model.drugs))
    her2 = [j for j, d in enumerate(model.drugs) if CATALOGUE[d].drug_class == "her2"]
    if not her2:
        return scale
    auc = _auc_per_mg(model)
    ref_model = ModelConfig(crowding="none", drugs=(HER2_REFERENCE_DRUG,), species="human")
    c_ref = _labelled_average_concentration(HER2_REFERENCE_DRUG, _auc_per_mg(ref_model)[0])
    for j in her2:
        d = model.drugs[j]
        if d not in HER2_REFERENCE_DOSE:
            raise ValueError(f"{d!r}: no labelled dose in fitcsc._trial.model.HER2_REFERENCE_DOSE "
                             "(the trial model's HER2 potency is relative to each blocker's "
                             "labelled-dose exposure)")
        scale[j] = c_ref / _labelled_average_concentration(d, auc[j])
    return scale


def reference_kill(model) -> np.ndarray:
    """Per drug slot of ``model``: the chemotherapy kill rate [L/(mg day)] that gives one
    ln-kill per `CHEMO_REFERENCE_DOSE` (human PK, typical patient); 0 for drugs that are
    not chemotherapy. Raises ``ValueError`` for a chemotherapy drug without one."""
    from .._model.drugs import dose_to_mg

    auc_per_mg = _auc_per_mg(model)
    kill = np.zeros(len(model.drugs))
    for j, d in enumerate(model.drugs):
        if CATALOGUE[d].drug_class != "chemo":
            continue
        if d not in CHEMO_REFERENCE_DOSE:
            raise ValueError(f"{d!r}: no reference dose in "
                             "fitcsc._trial.model.CHEMO_REFERENCE_DOSE (the trial "
                             "model's chemotherapy kill is per reference dose)")
        dose, unit, _ = CHEMO_REFERENCE_DOSE[d]
        kill[j] = 1.0 / (dose_to_mg(dose, unit, "human") * auc_per_mg[j])
    return kill
