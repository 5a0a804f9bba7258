"""Fitting a `TrialModel` to published trial outcomes, saving and loading the fit.

Data (``data/clinical`` schema, `fitcsc.read_clinical`):

- pCR counts per arm under the trial's primary definition. When an arm also has a
  count under the nested stricter definition (breast *and* nodes inside breast-only),
  the two counts are one multinomial, written as two binomials: total pCR ``~
  Bin(n, pi_t)`` and breast-only-but-not-total ``~ Bin(n - k_t, (pi_b - pi_t) / (1 -
  pi_t))``. This is what identifies the breast's share of residual disease.
- Adjuvant outcomes: the control arm's DFS landmark rate (binomial on the randomised
  number, an approximation that ignores censoring) and published hazard ratios
  (normal on the log scale with the published standard error).

The objective is ``0.5 sum r^2`` over binomial deviance residuals, HR z-scores and a
weak normal prior on every unconstrained parameter (sd ``prior_sd`` around the
documented default), i.e. a MAP estimate, by the package's one Levenberg–Marquardt
(`fitcsc.least_squares`, forward-mode split Jacobian) from several scrambled Sobol
starts; standard errors from the Gauss–Newton
Hessian ``J^T J`` at the optimum.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import qmc

from .._status import FitStatus
from .endpoints import binomial_log_likelihood, hazard_ratio
from .model import BREAST_ONLY, Arm, TrialModel, reference_kill

TOTAL = ("ypT0/is ypN0", "ypT0 ypN0")
YEAR = 365.25


@dataclasses.dataclass(frozen=True)
class PcrObservation:
    arm: str
    trial: str
    definition: str  # primary
    n: int
    count: int
    # the same patients' ypT0/is ypN0 count when the primary is breast-only: nested in a
    # ypT0/is primary (a multinomial), not nested in a ypT0 primary (two margins of one
    # 2 x 2 table, whose likelihood sums over the unseen cell)
    nested_total: int | None = None


@dataclasses.dataclass(frozen=True)
class HrObservation:
    name: str
    experimental: str  # arm names in the model
    control: str
    years: float  # horizon of the cumulative-hazard ratio
    log_hr: float
    se: float
    # True: a one-sided observation, the model's HR at `years` is at most the trial's
    # (an intention-to-treat analysis after the control arm crossed over to the drug,
    # which pulls the HR toward 1); its residual is that of a censored value,
    # `_hr_residual`
    upper: bool = False


@dataclasses.dataclass(frozen=True)
class LandmarkObservation:
    arm: str
    years: float
    rate: float
    n: int


@dataclasses.dataclass(frozen=True)
class HrPcrObservation:
    """A hormone-receptor subgroup's pCR count, *derived* (see `hr_pcr_observations`)."""

    arm: str
    trial: str
    subgroup: str  # "HR+" or "HR-"
    n: int
    count: int
    published_pct: float
    hr_positive_share: float  # of the trial, derived


@dataclasses.dataclass(frozen=True)
class LinkObservation:
    """A published hazard ratio of pCR (ypT0/is ypN0) vs no pCR within treated HER2+
    patients, matched by the model's `TrialModel.pcr_outcome` pooled over ``arms``."""

    name: str
    arms: tuple[str, ...]  # neoadjuvant arms of the model the patients are pooled over
    years: float  # horizon of the cumulative-hazard ratio
    log_hr: float
    se: float


@dataclasses.dataclass
class TrialData:
    pcr: list[PcrObservation] = dataclasses.field(default_factory=list)
    landmarks: list[LandmarkObservation] = dataclasses.field(default_factory=list)
    hrs: list[HrObservation] = dataclasses.field(default_factory=list)
    hr_pcr: list[HrPcrObservation] = dataclasses.field(default_factory=list)
    links: list[LinkObservation] = dataclasses.field(default_factory=list)
    # neoadjuvant arms' published EFS/DFS landmarks (arm = the pCR arm), matched by
    # `TrialModel.pcr_outcome`'s DFS of all the arm's patients
    neo_landmarks: list[LandmarkObservation] = dataclasses.field(default_factory=list)


# The HER2+ pCR-vs-no-pCR hazard ratios fitted (verified rows with a CI in
# pcr_outcome_links.csv): (study, population, endpoint). Pooled all-subtype and
# unverified rows are left out; the horizon is 5 years (an assumption: the pooled
# analyses' follow-up is 3-9 years).
LINKS_USED = (("Li 2022 meta-analysis", "25 studies; HER2+ subgroup", "EFS"),
              ("CHER-LOB", "HER2+ stage II-IIIA", "RFS"))
LINK_YEARS = 5.0


def link_observations(rows, arms, *, used=LINKS_USED, years=LINK_YEARS):
    """`LinkObservation` rows for ``used`` from ``pcr_outcome_links.csv``, each pooled over
    the neoadjuvant ``arms`` (names) given a HER2 blocker (the treated patients)."""
    out = []
    for study, population, endpoint in used:
        r = next((r for r in rows if r["study"] == study and r["population"] == population
                  and r["endpoint"] == endpoint and r["comparison"] == "pCR vs no pCR"), None)
        if r is None or r["ci95_lo"] is None or r["ci95_hi"] is None:
            raise ValueError(f"pcr_outcome_links.csv: no {study} / {population} / {endpoint} "
                             "row with a 95% CI")
        log_hr = float(np.log(float(r["hr"])))
        se = float((np.log(r["ci95_hi"]) - np.log(r["ci95_lo"])) / (2 * 1.959964))
        out.append(LinkObservation(f"{study} ({endpoint})", tuple(arms), years, log_hr, se))
    return out


def hr_pcr_observations(rows, pcr_obs) -> tuple[list[HrPcrObservation], dict[str, float]]:
    """Hormone-receptor subgroup counts for the arms of ``pcr_obs`` whose HR+ and HR-
    pCR percentages are published under the arm's primary definition.

    The trials publish subgroup *percentages* without subgroup sizes, so sizes and counts
    are derived: per arm the mixture identity ``p_all = f p_+ + (1 - f) p_-`` gives the
    HR+ share ``f = (p_- - p_all) / (p_- - p_+)``; a trial's share is the mean over its
    arms weighted by ``(p_- - p_+)^2`` (randomisation balances it across arms), clipped
    to [0.1, 0.9]. Then ``n_+ = round(f n)``, ``k_+ = round(p_+ n_+)``, and the HR-
    subgroup gets the rest of the arm's published count, so the two add up to it.

    **Returns:** ``(observations, {trial: HR+ share})``.
    """
    by_arm = {o.arm: o for o in pcr_obs}
    pct: dict[str, dict[str, float]] = {}
    for r in rows:
        o = by_arm.get(r["arm_id"])
        if (o is None or r["hr_subgroup"] not in ("HR+", "HR-") or r["pcr_pct"] is None
                or r["pcr_definition"] != o.definition):
            continue
        pct.setdefault(o.arm, {})[r["hr_subgroup"]] = float(r["pcr_pct"]) / 100.0
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for arm, d in pct.items():
        if len(d) < 2 or abs(d["HR-"] - d["HR+"]) < 1e-9:
            continue
        o = by_arm[arm]
        f = (d["HR-"] - o.count / o.n) / (d["HR-"] - d["HR+"])
        wgt = (d["HR-"] - d["HR+"]) ** 2
        num[o.trial] = num.get(o.trial, 0.0) + wgt * f
        den[o.trial] = den.get(o.trial, 0.0) + wgt
    share = {t: float(np.clip(num[t] / den[t], 0.1, 0.9)) for t in num}
    out = []
    for arm, d in pct.items():
        o = by_arm[arm]
        if len(d) < 2 or o.trial not in share:
            continue
        n_pos = int(round(share[o.trial] * o.n))
        k_pos = int(np.clip(round(d["HR+"] * n_pos), 0, n_pos))
        k_neg = int(np.clip(o.count - k_pos, 0, o.n - n_pos))
        out.append(HrPcrObservation(arm, o.trial, "HR+", n_pos, k_pos, 100 * d["HR+"],
                                    share[o.trial]))
        out.append(HrPcrObservation(arm, o.trial, "HR-", o.n - n_pos, k_neg, 100 * d["HR-"],
                                    share[o.trial]))
    return out, share


def pcr_observations(rows, regimens, *, volumes=None, trials=None):
    """Arms and observations from ``pcr_arms.csv`` rows (all-patient subgroup, rows
    with a count). ``volumes``: ``{trial prefix: median tumour volume mm3}``.

    **Returns:** ``(arms, observations)``.
    """
    prim, nested = {}, {}
    for r in rows:
        if r["hr_subgroup"] != "all" or not r["n_patients"] or r["pcr_count"] is None:
            continue
        if trials and not r["trial"].startswith(tuple(trials)):
            continue
        if r["is_primary_definition"] == "yes":
            prim.setdefault(r["arm_id"], r)
        elif r["pcr_definition"] in TOTAL:
            nested.setdefault(r["arm_id"], r)
    arms, obs = [], []
    for arm_id, r in prim.items():
        vol = next((v for k, v in (volumes or {}).items() if r["trial"].startswith(k)), None)
        kw = {"volume_mm3": vol} if vol else {}
        arms.append(Arm(arm_id, regimens[r["regimen_id"]], pcr_definition=r["pcr_definition"],
                        trial=r["trial"], **kw))
        extra = nested.get(arm_id)
        use = (extra is not None and r["pcr_definition"] in BREAST_ONLY
               and extra["pcr_definition"] == "ypT0/is ypN0"
               and extra["n_patients"] == r["n_patients"])
        obs.append(PcrObservation(arm_id, r["trial"], r["pcr_definition"], r["n_patients"],
                                  r["pcr_count"], extra["pcr_count"] if use else None))
    return arms, obs


def _deviance_residual(rate, k, n):
    """Signed square root of the binomial deviance, ``0.5 r^2 = -loglik + const``.

    Near a perfect fit the square root's derivative is 0/0 in floating point; there
    the (first-order equal) Pearson residual is used, so gradients stay finite. Rows
    with ``n == 0`` give 0 with a zero gradient.
    """
    live = n > 0
    n = jnp.where(live, n, 1.0)
    k = jnp.where(live, k, 0.5)
    rate = jnp.where(live, jnp.clip(rate, 1e-12, 1 - 1e-12), 0.5)
    sat = jnp.where(k > 0, k * jnp.log(jnp.maximum(k, 1e-300) / n), 0.0)
    sat += jnp.where(n - k > 0, (n - k) * jnp.log(jnp.maximum(n - k, 1e-300) / n), 0.0)
    dev = 2.0 * (sat - binomial_log_likelihood(rate, k, n))
    far = dev > 1e-8
    signed = jnp.sign(k / n - rate) * jnp.sqrt(jnp.where(far, dev, 1.0))
    pearson = (k - n * rate) / jnp.sqrt(n * rate * (1.0 - rate))
    return jnp.where(live, jnp.where(far, signed, pearson), 0.0)


def _hr_residual(d, upper):
    """Residuals of hazard ratios from ``d = (model log HR - published) / se``: ``d``
    itself, or for an upper bound (`HrObservation.upper`) the root of the censored
    deviance ``-2 log Phi(-d)``, ``Phi(-d)`` being the probability that an estimate with
    that standard error lies at or above the model's HR: about 0 once the model is well
    below the bound, ``sqrt(2 log 2)`` on it, about ``d`` far above it."""
    x = jnp.minimum(jnp.where(upper, -d, 0.0), 8.0)  # Phi(8) = 1 - 6e-16: r ~ 3e-8
    return jnp.where(upper, jnp.sqrt(-2.0 * jax.scipy.special.log_ndtr(x)), d)


def _two_margin_residual(p_a, p_b, p_ab, k_a, k_b, n):
    """Two residuals for two margins of one 2 x 2 table: ``k_a`` patients with event A,
    ``k_b`` with event B, out of ``n``, when A and B are not nested (ypT0 and ypT0/is
    ypN0). The log-likelihood sums the multinomial over the unseen count of patients
    with both, and splits exactly as ``log P(k_a) + log P(k_b | k_a)``: the first
    residual is margin A's signed binomial deviance residual (`_deviance_residual`), the
    second ``sqrt(-2 log P(k_b | k_a))``, so ``0.5 |r|^2 = -loglik + const``. One
    unsigned residual ``sqrt(deviance)`` (before) had a zero derivative where it fitted
    both counts exactly, so its Gauss-Newton information, and the Laplace posterior of
    the parameters only these counts inform (GeparQuattro's trial effect and
    ``logit_no_dcis``), fell back to their priors. Rows with ``n == 0`` give 0.
    **Returns:** ``(2 * n_obs,)``: the first residuals, then the second."""
    from jax.scipy.special import gammaln

    live = n > 0
    n_, ka, kb = jnp.where(live, n, 2.0), jnp.where(live, k_a, 1.0), jnp.where(live, k_b, 1.0)
    cells = jnp.stack([p_ab, p_a - p_ab, p_b - p_ab, 1.0 - p_a - p_b + p_ab])
    logp = jnp.log(jnp.clip(cells, 1e-300, 1.0))
    both = jnp.arange(N_MAX_BOTH, dtype=float)[:, None]  # (N_MAX_BOTH, obs)
    counts = jnp.stack([both + 0 * ka, ka - both, kb - both, n_ - ka - kb + both])
    ok = jnp.all(counts >= 0, axis=0)
    cnt = jnp.where(ok, counts, 0.0)
    terms = (gammaln(n_ + 1) - jnp.sum(gammaln(cnt + 1), axis=0)
             + jnp.sum(cnt * logp[:, None, :], axis=0))
    ll = jax.scipy.special.logsumexp(jnp.where(ok, terms, -jnp.inf), axis=0)
    # margin A alone: log Binomial(k_a | n, p_a), with its coefficient
    ll_a = (gammaln(n_ + 1) - gammaln(ka + 1) - gammaln(n_ - ka + 1)
            + binomial_log_likelihood(jnp.clip(p_a, 1e-12, 1 - 1e-12), ka, n_))
    cond = jnp.sqrt(jnp.maximum(-2.0 * (ll - ll_a), 1e-12))  # -log P(k_b | k_a) > 0
    first = _deviance_residual(p_a, k_a, jnp.where(live, n, 0.0))
    return jnp.concatenate([first, jnp.where(live, cond, 0.0)])


# parameters that enter `TrialModel.residuals` (the expensive part of the objective);
# `ObjectiveCore.jacobian` differentiates the residual states along these only (a test
# checks it against jax.jacfwd of the whole objective with every structure's parameters)
SIM_PARAMETERS = frozenset({
    "log_kill_scale", "logit_her2_csc", "logit_her2_bulk", "logit_csc_sparing",
    "log_turnover", "log_response_sd", "log_chemo_potency", "log_her2_kill",
    "her2_dependence_csc", "her2_dependence_bulk", "csc_fraction_sd",
    "growth_response_power"})
SIM_PARAMETERS_PER_DRUG = ("log_her2_potency",)  # with #drug only
N_MAX_BOTH = 1024  # largest published arm count handled by `_two_margin_residual`


class Objective:
    """Residual vector of a `TrialModel` against `TrialData` (see module docstring).

    Priors (residuals ``(z - centre) / sd``): every parameter ``N(default, prior_sd)``
    on the unconstrained scale, except the hierarchical ones:
    ``log_chemo_potency#drug ~ N(0, chemo_drug_sd)`` (a drug's deviation from the class
    kill), ``log_her2_potency#drug ~ N(log_her2_potency, her2_drug_sd)`` when the class
    mean ``log_her2_potency`` is free, and ``trial_effect#trial ~ N(0, trial_sd)`` (the
    between-trial spread of log burden). The same distributions give a new drug's or a
    new trial's value in predictions (`new_draws`).

    What it computes with is one pytree, ``core`` (an `ObjectiveCore`: the model and
    the data as arrays, the data's structure static). `fit_trials` and
    `fitcsc.trials.posterior_draws` pass ``core`` to their compiled programs as a traced
    argument (the ``args`` of `fitcsc.least_squares`, `draw_values`), so another data
    set of the same structure and shapes (the same arms, definitions and kinds of
    observation: another replicate's counts, other trial sizes) compiles nothing new.
    The arrays (``p_k``, ``prior_scale``, ...) and methods of ``core`` are also
    attributes of the objective.
    """

    def __init__(self, tm: TrialModel, data: TrialData, *, prior_sd: float = 2.0,
                 chemo_drug_sd: float = 0.5, her2_drug_sd: float = 1.0,
                 trial_sd: float = 1.0):
        self.tm, self.data, self.prior_sd = tm, data, prior_sd
        self.chemo_drug_sd, self.her2_drug_sd, self.trial_sd = (chemo_drug_sd, her2_drug_sd,
                                                                trial_sd)
        self.hyper = {"prior_sd": prior_sd, "chemo_drug_sd": chemo_drug_sd,
                      "her2_drug_sd": her2_drug_sd, "trial_sd": trial_sd}
        self.core = ObjectiveCore.build(tm, data, prior_sd=prior_sd,
                                        chemo_drug_sd=chemo_drug_sd,
                                        her2_drug_sd=her2_drug_sd, trial_sd=trial_sd)

    def __getattr__(self, name):  # only for names not found on the objective itself
        if name == "core":
            raise AttributeError(name)
        return getattr(self.core, name)

    def __call__(self, z, args=None, res=None):
        """The residuals at ``z`` (``args`` is ignored: `fitcsc.least_squares`'s
        signature)."""
        del args
        return self.core.residuals(z, res)

    def predictions(self, z, res=None) -> dict:
        """Every modelled quantity the data are compared with (`ObjectiveCore`)."""
        return self.core.predictions(z, res)

    def link_log_hr(self, z, res=None):
        return self.core.link_log_hr(z, res)

    def link_survival(self, z, res=None):
        return self.core.link_survival(z, res)

    def neo_landmark_dfs(self, z, res=None):
        return self.core.neo_landmark_dfs(z, res)

    def jacobian(self, z):
        """``d self(z) / dz`` (`ObjectiveCore.jacobian`)."""
        return self.core.jacobian(z)


def prior_group(name: str, names) -> tuple[str, int]:
    """The prior of parameter ``name`` among ``names``: its scale (`Objective`'s
    ``chemo_drug_sd``, ``her2_drug_sd``, ``trial_sd`` or ``prior_sd``) and its centre
    (an index into ``names``: a drug's potency around the class mean; -1: 0; -2: the
    model's default ``z0``)."""
    base = name.split("#")[0]
    if base == "log_chemo_potency" and "#" in name:
        return "chemo_drug_sd", -1
    if base == "log_her2_potency" and "#" in name and "log_her2_potency" in names:
        return "her2_drug_sd", list(names).index("log_her2_potency")
    if base == "trial_effect":
        return "trial_sd", -1
    return "prior_sd", -2


class ObjectiveCore(eqx.Module):
    """The model and data of an `Objective` as one pytree: arrays (traced, so new
    values, e.g. another data set's counts, never recompile) and the data's structure
    (static: the pCR definitions, the number of observations of each kind, the prior
    centres). Build with `ObjectiveCore.build` (`Objective` does)."""

    tm: TrialModel
    p_idx: jax.Array
    p_n: jax.Array
    p_k: jax.Array
    p_nested: jax.Array
    p_has_nested: jax.Array
    p_margins: jax.Array
    p_live: jax.Array
    l_idx: jax.Array
    l_days: jax.Array
    l_k: jax.Array
    l_n: jax.Array
    h_e: jax.Array
    h_c: jax.Array
    h_days: jax.Array
    h_obs: jax.Array
    h_se: jax.Array
    h_upper: jax.Array
    s_idx: jax.Array
    s_pos: jax.Array
    s_n: jax.Array
    s_k: jax.Array
    k_mask: jax.Array
    k_days: jax.Array
    k_obs: jax.Array
    k_se: jax.Array
    n_idx: jax.Array
    n_days: jax.Array
    n_k: jax.Array
    n_n: jax.Array
    hr_share: jax.Array
    z_prior: jax.Array
    prior_scale: jax.Array
    # structure (static)
    p_definition: tuple[str, ...] = eqx.field(static=True)
    has_margins: bool = eqx.field(static=True)
    prior_centre_items: tuple[int, ...] = eqx.field(static=True)
    n_pcr: int = eqx.field(static=True)
    n_landmarks: int = eqx.field(static=True)
    n_hrs: int = eqx.field(static=True)
    n_hr_pcr: int = eqx.field(static=True)
    n_links: int = eqx.field(static=True)
    n_neo: int = eqx.field(static=True)

    @classmethod
    def build(cls, tm: TrialModel, data: TrialData, *, prior_sd: float,
              chemo_drug_sd: float, her2_drug_sd: float, trial_sd: float) -> ObjectiveCore:
        ix = {a: i for i, a in enumerate(tm.arm_names)}
        nested = [o.nested_total is not None and o.definition == "ypT0/is" for o in data.pcr]
        margins = [o.nested_total is not None and o.definition == "ypT0" for o in data.pcr]
        if any(o.n >= N_MAX_BOTH for o, m in zip(data.pcr, margins, strict=True) if m):
            raise ValueError(f"Objective: two-margin counts need n < {N_MAX_BOTH}")
        centre, sd = [], []
        scales = {"prior_sd": prior_sd, "chemo_drug_sd": chemo_drug_sd,
                  "her2_drug_sd": her2_drug_sd, "trial_sd": trial_sd}
        for name in tm.names:
            group, c = prior_group(name, tm.names)
            centre.append(c), sd.append(scales[group])
        if data.hr_pcr and (data.landmarks or data.hrs):
            raise ValueError("Objective: hormone-receptor subgroups are fitted with pCR data "
                             "only (DFS has no HR covariate yet)")
        # arms with subgroup counts: their all-patient primary count is the subgroups'
        # sum, so it is left out (the nested breast/total split is kept)
        sub_arms = {o.arm for o in data.hr_pcr}
        # every arm's population = its trial's HR+ share of HR+ tumours, the rest HR-;
        # trials without subgroup data get the mean share
        share = {o.trial: o.hr_positive_share for o in data.hr_pcr}
        mean = float(np.mean(list(share.values()))) if share else 0.0
        trial_of = {o.arm: o.trial for o in data.pcr}

        def arr(values, dtype=float):
            return jnp.asarray(np.asarray(values, dtype))

        return cls(
            tm=tm,
            p_idx=arr([ix[o.arm] for o in data.pcr], int),
            p_n=arr([o.n for o in data.pcr]),
            p_k=arr([o.count for o in data.pcr]),
            p_nested=arr([o.nested_total or 0 for o in data.pcr]),
            p_has_nested=arr(nested, bool), p_margins=arr(margins, bool),
            p_live=arr([o.arm not in sub_arms for o in data.pcr], bool),
            l_idx=arr([ix[o.arm] for o in data.landmarks], int),
            l_days=arr([o.years * YEAR for o in data.landmarks]),
            l_k=arr([o.rate * o.n for o in data.landmarks]),
            l_n=arr([o.n for o in data.landmarks]),
            h_e=arr([ix[o.experimental] for o in data.hrs], int),
            h_c=arr([ix[o.control] for o in data.hrs], int),
            h_days=arr([o.years * YEAR for o in data.hrs]),
            h_obs=arr([o.log_hr for o in data.hrs]),
            h_se=arr([o.se for o in data.hrs]),
            h_upper=arr([o.upper for o in data.hrs], bool),
            s_idx=arr([ix[o.arm] for o in data.hr_pcr], int),
            s_pos=arr([o.subgroup == "HR+" for o in data.hr_pcr], bool),
            s_n=arr([o.n for o in data.hr_pcr]),
            s_k=arr([o.count for o in data.hr_pcr]),
            k_mask=arr([[a in o.arms for a in tm.arm_names] for o in data.links]).reshape(
                len(data.links), len(tm.arm_names)),
            k_days=arr([o.years * YEAR for o in data.links]),
            k_obs=arr([o.log_hr for o in data.links]),
            k_se=arr([o.se for o in data.links]),
            n_idx=arr([ix[o.arm] for o in data.neo_landmarks], int),
            n_days=arr([o.years * YEAR for o in data.neo_landmarks]),
            n_k=arr([o.rate * o.n for o in data.neo_landmarks]),
            n_n=arr([o.n for o in data.neo_landmarks]),
            hr_share=arr([share.get(trial_of.get(a, ""), mean) for a in tm.arm_names]),
            z_prior=tm.z0(), prior_scale=arr(sd),
            p_definition=tuple(o.definition for o in data.pcr), has_margins=any(margins),
            prior_centre_items=tuple(int(c) for c in centre), n_pcr=len(data.pcr),
            n_landmarks=len(data.landmarks), n_hrs=len(data.hrs),
            n_hr_pcr=len(data.hr_pcr), n_links=len(data.links),
            n_neo=len(data.neo_landmarks))

    @property
    def prior_centre(self) -> np.ndarray:
        """Per parameter: the index of the parameter its prior is centred on, -1 for 0,
        -2 for its default (`z_prior`)."""
        return np.asarray(self.prior_centre_items, int)

    def predictions(self, z, res=None) -> dict:
        """Every modelled quantity the data are compared with; ``res``: precomputed
        `TrialModel.part_residuals` (see `jacobian`)."""
        tm = self.tm
        res = tm.population(z, res)
        if self.n_hr_pcr:  # the population is a mixture of the two subgroups
            tp, bp, sp = tm.pcr_pair(z, res, subgroup="HR+")
            tn, bn, sn = tm.pcr_pair(z, res, subgroup="HR-")
            f = self.hr_share
            total, breast = f * tp + (1 - f) * tn, f * bp + (1 - f) * bn
            status = jnp.maximum(sp, sn)
        else:
            total, breast, status = tm.pcr_pair(z, res)
        out = {"pcr_total": total, "pcr_breast": breast, "status": status}
        if self.n_hr_pcr:
            out["pcr_HR+"] = jnp.where(tm.breast_only, bp, tp)
            out["pcr_HR-"] = jnp.where(tm.breast_only, bn, tn)
        if self.n_links or self.n_neo:
            surv_p, surv_n, neo = self._outcomes(z, res)
            if self.n_links:
                out["link_log_hr"] = jnp.log(hazard_ratio(surv_p, surv_n))
            if self.n_neo:
                out["neo_landmark"] = neo
        days = jnp.concatenate([self.l_days, self.h_days, jnp.zeros((1,))])
        if self.n_landmarks or self.n_hrs:
            dfs, cure, _ = tm.dfs(z, days, res)
            out["cure"] = cure
            nl = self.n_landmarks
            out["landmark"] = dfs[self.l_idx, jnp.arange(nl)]
            hd = jnp.arange(self.n_hrs) + nl
            out["log_hr"] = jnp.log(hazard_ratio(dfs[self.h_e, hd], dfs[self.h_c, hd]))
        return out

    def _outcomes(self, z, res=None):
        """One `TrialModel.pcr_outcome` at every link and neoadjuvant-landmark horizon:
        ``(surv_pcr, surv_no_pcr)`` per link (`link_survival`) and the DFS of all the
        patients of each landmark's arm."""
        days = jnp.concatenate([self.k_days, self.n_days])
        pcr, d_p, d_n = self.tm.pcr_outcome(z, days, res)  # (arms,), (arms, days)
        m = self.k_mask  # (links, arms)
        i = jnp.arange(self.n_links)
        surv_p = (m @ (pcr[:, None] * d_p[:, :self.n_links]))[i, i] / (m @ pcr)
        surv_n = ((m @ ((1.0 - pcr)[:, None] * d_n[:, :self.n_links]))[i, i]
                  / (m @ (1.0 - pcr)))
        j = jnp.arange(self.n_neo) + self.n_links
        a = self.n_idx
        neo = pcr[a] * d_p[a, j] + (1.0 - pcr[a]) * d_n[a, j]
        return surv_p, surv_n, neo

    def link_survival(self, z, res=None):
        """Per link observation: the model's event-free survival of the pCR and the
        no-pCR patients ``(surv_pcr, surv_no_pcr)``, pooled over its arms (patients
        weighted equally per arm) at its horizon."""
        surv_p, surv_n, _ = self._outcomes(z, res)
        return surv_p, surv_n

    def neo_landmark_dfs(self, z, res=None):
        """Per neoadjuvant landmark: the model's DFS of all its arm's patients."""
        return self._outcomes(z, res)[2]

    def link_log_hr(self, z, res=None):
        """Per link observation: the model's log hazard ratio of pCR vs no pCR
        (`link_survival`'s two groups)."""
        return jnp.log(hazard_ratio(*self.link_survival(z, res)))

    def residual_parts(self, z, res=None) -> dict:
        """The residuals at ``z`` by kind of data (``pcr``, ``hr_pcr``, ``landmarks``,
        ``hrs``, ``links``, ``neo_landmarks``, ``prior``; a kind without data is left
        out); `residuals` is their concatenation in this order."""
        pr = self.predictions(z, res)
        parts = {}
        if self.n_pcr:
            t = pr["pcr_total"][self.p_idx]
            b = pr["pcr_breast"][self.p_idx]
            prim = self.tm.by_definition(z, t, b, self.p_definition)
            single = self.p_live & ~self.p_margins
            pcr = [_deviance_residual(prim, self.p_k, jnp.where(single, self.p_n, 0.0))]
            # nested: total among the breast-only pCRs ~ Bin(k_b, pi_t / pi_b)
            cond = jnp.clip(t / jnp.maximum(b, 1e-12), 1e-9, 1 - 1e-9)
            pcr.append(_deviance_residual(cond, self.p_nested,
                                          jnp.where(self.p_has_nested, self.p_k, 0.0)))
            # ypT0 (breast, no in-situ) and ypT0/is ypN0 in the same patients: both happen
            # with no invasive residual anywhere and no in-situ residual, i.e. q t
            if self.has_margins:
                q = self.tm._value(z, "logit_no_dcis")
                pcr.append(_two_margin_residual(prim, t, q * t, self.p_k, self.p_nested,
                                                jnp.where(self.p_margins, self.p_n, 0.0)))
            parts["pcr"] = jnp.concatenate(pcr)
        if self.n_hr_pcr:
            rate = jnp.where(self.s_pos, pr["pcr_HR+"][self.s_idx], pr["pcr_HR-"][self.s_idx])
            parts["hr_pcr"] = _deviance_residual(rate, self.s_k, self.s_n)
        if self.n_landmarks:
            parts["landmarks"] = _deviance_residual(pr["landmark"], self.l_k, self.l_n)
        if self.n_hrs:
            parts["hrs"] = _hr_residual((pr["log_hr"] - self.h_obs) / self.h_se, self.h_upper)
        if self.n_links:
            parts["links"] = (pr["link_log_hr"] - self.k_obs) / self.k_se
        if self.n_neo:
            parts["neo_landmarks"] = _deviance_residual(pr["neo_landmark"], self.n_k,
                                                        self.n_n)
        parts["prior"] = self.prior_residuals(z)
        return parts

    def residuals(self, z, res=None):
        """The residual vector at ``z`` (see the module docstring)."""
        return jnp.concatenate(list(self.residual_parts(z, res).values()))

    def loss_parts(self, z) -> dict:
        """``0.5 |r|^2`` of each kind of data at ``z`` (`residual_parts`): they add up to
        the fit's loss."""
        return {k: float(0.5 * jnp.sum(v**2)) for k, v in self.residual_parts(z).items()}

    __call__ = residuals

    def jacobian(self, z):
        """``d residuals(z) / dz``, forward mode, with the expensive part (the
        population's residual states, `TrialModel.part_residuals`) differentiated only
        along the parameters it depends on (`sim_index`); equal to
        ``jax.jacfwd(self.residuals)(z)``."""
        idx = self.sim_index
        res = self.tm.part_residuals(z)
        j_z = jax.jacfwd(lambda zz: self.residuals(zz, res=res))(z)  # states held fixed
        if idx.size == 0:
            return j_z
        floats, status = res[:4], res[4]  # the status codes are not differentiated
        jres = jax.jacfwd(lambda zs: self.tm.part_residuals(z.at[idx].set(zs))[:4])(z[idx])
        tangents = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, -1, 0), jres)
        j_res = jax.vmap(lambda t: jax.jvp(lambda rr: self.residuals(z, res=(*rr, status)),
                                           (floats,), (t,))[1])(tangents)  # (n_sim, m)
        return j_z.at[:, idx].add(j_res.T)

    @property
    def sim_index(self) -> np.ndarray:
        """Indices of the parameters the population's residual states depend on."""
        return np.asarray([i for i, n in enumerate(self.tm.names)
                           if n.split("#")[0] in SIM_PARAMETERS
                           or (n.split("#")[0] in SIM_PARAMETERS_PER_DRUG and "#" in n)], int)

    def prior_residuals(self, z):
        """``(z - centre) / sd`` per parameter (see `Objective`)."""
        c = self.prior_centre
        centre = jnp.where(c >= 0, z[np.maximum(c, 0)],
                           jnp.where(c == -1, 0.0, self.z_prior))
        return (z - centre) / self.prior_scale


# The compiled programs' entry points: module-level functions of ``(z, core)`` (a fixed
# identity, the data traced in ``core``), so that every fit and every draw evaluation of
# one data structure and shape reuses one program.
def objective_residuals(z, core: ObjectiveCore):
    """``core``'s residuals at ``z`` (`fitcsc.least_squares`'s ``fn(z, args)``)."""
    return core.residuals(z)


def objective_jacobian(z, core: ObjectiveCore):
    """``core``'s Jacobian at ``z`` (`fitcsc.least_squares`'s ``jac(z, args)``)."""
    return core.jacobian(z)


def objective_loss(z, core: ObjectiveCore):
    """``0.5 |r(z)|^2``: the negative log posterior up to a constant."""
    return 0.5 * jnp.sum(core.residuals(z) ** 2)


def draw_values(fn, draws, *, batch: int = 100, args=None, linearise_at=None,
                link="logit") -> np.ndarray:
    """``fn`` (a JAX function of one ``z``, or of ``(z, args)`` when ``args`` is given)
    at every row of ``draws`` ``(n, d)``: vmapped, jitted, in chunks of ``batch`` (the
    last padded, so nothing recompiles). With ``args`` (any pytree, e.g. an
    `ObjectiveCore`: traced) the compiled program is kept per ``fn``, so a later call
    with the same ``fn`` and args of the same structure and shapes compiles nothing:
    pass a module-level function, not a new lambda each call.

    ``linearise_at`` (a ``z``, e.g. the MAP): ``fn`` linearised there on the scale of
    ``link`` instead of evaluated at each draw (the delta method, the ``"linear"``
    posterior of `fitcsc._trial.posterior`): ``g(fn(z)) ~ g(fn(z0)) + J (z - z0)``, ``J``
    the forward-mode Jacobian of ``g(fn(.))`` at ``z0``, mapped back by ``g``'s inverse.
    ``link``: one of `PREDICTION_LINKS` (``"logit"`` for rates and survival, ``"log"`` for ratios,
    ``"identity"``, ``"map"``: the value at ``z0`` for every draw, e.g. a status), or,
    for an ``fn`` returning a dict, a dict of them per key.
    **Returns:** ``fn``'s output structure, each leaf ``(n, *leaf shape)``."""
    zs = np.asarray(draws, float)
    n = zs.shape[0]
    if linearise_at is not None:
        return _linearised(fn, zs, np.asarray(linearise_at, float), link, args)
    pad = (-n) % batch
    zp = np.concatenate([zs, np.repeat(zs[-1:], pad, axis=0)]) if pad else zs
    if args is None:
        f = jax.jit(jax.vmap(fn))
        chunks = [f(jnp.asarray(zp[i:i + batch])) for i in range(0, zp.shape[0], batch)]
    else:
        f = _batched(fn)
        chunks = [f(jnp.asarray(zp[i:i + batch]), args) for i in range(0, zp.shape[0], batch)]
    return jax.tree_util.tree_map(lambda *c: np.concatenate([np.asarray(x) for x in c])[:n],
                                  *chunks)


_EPS = 1e-12
PREDICTION_LINKS = {  # name: (to the linear scale, back)
    "logit": (lambda p: jnp.log(jnp.clip(p, _EPS, 1 - _EPS)) - jnp.log1p(
        -jnp.clip(p, _EPS, 1 - _EPS)), jax.nn.sigmoid),
    "log": (lambda x: jnp.log(jnp.maximum(x, 1e-300)), jnp.exp),
    "identity": (lambda x: x, lambda x: x),
}


def _linearised(fn, zs, z0, link, args):
    """`draw_values` by the delta method (see there)."""
    if isinstance(link, dict):
        spec = tuple(sorted(link.items()))
    else:
        spec = link
    for v in (dict(spec).values() if isinstance(spec, tuple) else (spec,)):
        if v not in PREDICTION_LINKS and v != "map":
            raise ValueError(f"draw_values: link must be one of "
                             f"{sorted(PREDICTION_LINKS)} or 'map', got {v!r}")
    if args is None:
        out0, e0, jac = _linearisation(lambda z, _: fn(z), spec)(jnp.asarray(z0), None)
    else:  # kept per fn: a later call with args of the same shapes compiles nothing
        out0, e0, jac = _cached_linearisation(fn, spec)(jnp.asarray(z0), args)
    dz = jnp.asarray(zs - z0[None, :])
    res = {}
    outs = out0 if isinstance(out0, dict) else {"": out0}
    links = dict(spec) if isinstance(spec, tuple) else dict.fromkeys(outs, spec)
    for k, v in outs.items():
        if k in e0:
            e = e0[k][None] + jnp.tensordot(dz, jac[k], axes=([1], [jac[k].ndim - 1]))
            res[k] = np.asarray(PREDICTION_LINKS[links[k]][1](e))
        else:
            res[k] = np.repeat(np.asarray(v)[None], zs.shape[0], axis=0)
    return res if isinstance(out0, dict) else res[""]


def _linearisation(fn, spec):
    """``(z0, args) -> (fn's output, its linearised leaves on the link scale, their
    Jacobians)``, jitted (args filtered: arrays traced)."""
    def one(z, args):
        out = fn(z, args)
        outs = out if isinstance(out, dict) else {"": out}
        links = dict(spec) if isinstance(spec, tuple) else dict.fromkeys(outs, spec)
        return out, {k: PREDICTION_LINKS[links[k]][0](v) for k, v in outs.items()
                     if links[k] != "map"}

    def program(z, args):
        out, eta = one(z, args)
        jac = jax.jacfwd(lambda zz: one(zz, args)[1])(z)
        return out, eta, jac

    return eqx.filter_jit(program)


@functools.lru_cache(maxsize=64)
def _cached_linearisation(fn, spec):
    return _linearisation(fn, spec)


@functools.lru_cache(maxsize=64)
def _batched(fn):
    """``fn(z, args)`` vmapped over ``z`` and jitted (args filtered: arrays traced,
    the rest static), one per ``fn``."""
    return eqx.filter_jit(jax.vmap(fn, in_axes=(0, None)))


@dataclasses.dataclass
class TrialFit:
    names: tuple[str, ...]
    z: np.ndarray
    cov: np.ndarray
    loss: float
    status: FitStatus  # of the best start (the one status chain, `fitcsc.FitStatus`)
    n_steps: int
    start_losses: np.ndarray
    hyper: dict = dataclasses.field(default_factory=dict)  # the objective's prior scales

    @property
    def converged(self) -> bool:
        return self.status is FitStatus.CONVERGED

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))


def fit_trials(objective: Objective, *, n_starts: int = 4, spread: float = 1.5,
               max_steps: int = 200, seed: int = 0, start=None) -> TrialFit:
    """MAP from ``n_starts`` starts (the default, then scrambled Sobol points within
    ``+- spread`` of it on the unconstrained scale; ``start`` replaces the default as
    the first start), by the package's one Levenberg–Marquardt (`fitcsc.least_squares`,
    MINPACK's bounded rule) with the objective's split Jacobian (`Objective.jacobian`).
    ``max_steps``: evaluations per start. A start also stops (converged) once five
    accepted steps together lowered the loss by at most ``1e-6 (1 + loss)``
    (`STALL_RTOL`): sloppy directions would otherwise crawl to the cap. At ``1e-4`` the
    fits stopped short of the optimum in their sloppy directions: the Laplace
    posterior, centred there, then missed the mode (the quick pCR fit's MAP rates fell
    outside their own predictive intervals); at ``1e-6`` the measured fits end within
    ``2e-6`` of the loss the LM's own tests (no stall test) reach.
    **Returns:** a `TrialFit` (the best start; covariance ``(J^T J)^+``)."""
    from .._fit.lm import Bounded, least_squares

    z0 = objective.z_prior if start is None else jnp.asarray(start, float)
    d = z0.shape[0]
    starts = [np.asarray(z0)]
    if n_starts > 1:
        m = int(np.ceil(np.log2(n_starts - 1))) if n_starts > 2 else 0
        u = qmc.Sobol(d, scramble=True, seed=seed).random_base2(m)[: n_starts - 1]
        starts += list(np.asarray(z0) + spread * (2 * u - 1))
    # the data travel as traced args (`ObjectiveCore`) of fixed functions: a new data set
    # of the same structure and shapes reuses the compiled fit
    # lmder's scaling (decay 1): the committed trial results were fitted with it; the
    # engine's default decaying scaling is not yet tried on the trial model
    out = least_squares(objective_residuals, np.stack(starts), objective.core,
                        max_steps=max_steps, stall_rtol=STALL_RTOL, stall_atol=STALL_RTOL,
                        stall_steps=5, jac=objective_jacobian,
                        trust_region=Bounded(decay=1.0))
    status = np.asarray(out.status)
    losses = np.where(status <= FitStatus.MAX_STEPS, np.asarray(out.loss), np.inf)
    best = int(np.argmin(losses))
    J = np.asarray(out.jac[best])
    if np.all(np.isfinite(J)):
        cov = np.linalg.pinv(J.T @ J, rcond=1e-12)
    else:
        cov = np.full((d, d), np.nan)
    return TrialFit(names=objective.tm.names, z=np.asarray(out.z[best]), cov=cov,
                    loss=float(losses[best]),
                    status=FitStatus(int(status[best])),
                    n_steps=int(out.n_steps[best]), start_losses=losses,
                    hyper=dict(objective.hyper))


STALL_RTOL = 1e-6  # fit_trials' stall test: relative (and absolute) loss decrease

# `quadrature_check`'s tolerances: the negative log posterior may move by at most one
# log-likelihood unit, an arm's pCR by at most a quarter of its binomial sd
QUADRATURE_LOSS_TOL = 1.0
QUADRATURE_PCR_SD_TOL = 0.25


def quadrature_check(objective: Objective, z, *, factor: int = 2) -> dict:
    """Is the responsiveness quadrature fine enough at ``z``?

    The objective is evaluated again with ``factor`` times as many responsiveness
    nodes (``factor (n_nodes - 1) + 1``: the old nodes nested in the new). A patient's
    log residual is interpolated between nodes (`TrialModel.interpolate`), and at a
    large responsiveness spread (``log_response_sd``) adjacent nodes differ by orders of
    magnitude in sensitivity, so the interpolated pCR transition, and with it every arm
    rate, can be off; an optimiser can then find a basin that exists only on the coarse
    grid (measured with the interpolant linear in ``eta``: a fit at 13 nodes with spread
    6.6 scored 65.6, the same point 83.7 at 97 nodes; with the present interpolant, exact
    for the CSC log residual, the main job's MAP with ``growth_response_power`` free
    scored 23.935 at 13 nodes, 23.921 at 25 and 23.917 at 49).

    The interpolation error falls at least as the square of the node spacing (the
    three-node interpolant's as its cube where the residual is smooth), so the coarse
    grid's error is estimated as ``factor^2 / (factor^2 - 1)`` times the change
    (Richardson; on NeoSphere at 13 nodes this gave 0.28 to 4.5 where a 193-node grid
    measured 0.28 to 5.4).

    **Returns:** ``{"n_nodes", "n_nodes_check", "loss", "loss_check", "delta_loss",
    "loss_error_estimate", "max_abs_pcr_diff_pct", "max_pcr_diff_in_binomial_sd",
    "arm", "ok", "pcr_diff_pct"}``: ``ok`` when the estimated loss error is at most
    `QUADRATURE_LOSS_TOL` and no observed arm's pCR moves by more than
    `QUADRATURE_PCR_SD_TOL` of its binomial sd (at the check's rate);
    ``pcr_diff_pct``: every model arm's pCR change (check minus fit, points, in
    ``tm.arm_names`` order: arms without data too, e.g. a held-out trial's)."""
    tm = objective.tm
    n_check = factor * (tm.n_nodes - 1) + 1
    fine = Objective(dataclasses.replace(tm, n_nodes=n_check), objective.data,
                     **objective.hyper)
    z = jnp.asarray(z, float)
    loss = float(objective_loss(z, objective.core))
    loss_check = float(objective_loss(z, fine.core))
    p = np.asarray(tm.pcr_rates(z)[0])
    p_check = np.asarray(fine.tm.pcr_rates(z)[0])
    idx = np.asarray(objective.core.p_idx, int)  # each observed arm's index in the model
    n = np.asarray([o.n for o in objective.data.pcr], float)
    in_sd = np.abs(p - p_check)[idx] / np.sqrt(
        np.clip(p_check[idx] * (1 - p_check[idx]), 1e-12, None) / n)
    k = int(np.argmax(in_sd)) if idx.size else None
    worst = float(in_sd[k]) if idx.size else 0.0
    error = factor**2 / (factor**2 - 1) * abs(loss_check - loss)
    return {"n_nodes": int(tm.n_nodes), "n_nodes_check": int(n_check),
            "loss": loss, "loss_check": loss_check, "delta_loss": loss_check - loss,
            "loss_error_estimate": error,
            "max_abs_pcr_diff_pct": float(100 * np.max(np.abs(p - p_check)[idx]))
            if idx.size else 0.0,
            "max_pcr_diff_in_binomial_sd": worst,
            "arm": objective.data.pcr[k].arm if idx.size else None,
            "ok": bool(error <= QUADRATURE_LOSS_TOL and worst <= QUADRATURE_PCR_SD_TOL),
            "pcr_diff_pct": [float(v) for v in 100 * (p_check - p)]}


def quadrature_warning(check: dict) -> str | None:
    """The one-line warning of a failed `quadrature_check` (None when it passed)."""
    if check["ok"]:
        return None
    return (f"responsiveness quadrature too coarse at the MAP: the negative log posterior "
            f"is {check['loss']:.2f} at {check['n_nodes']} nodes and "
            f"{check['loss_check']:.2f} at {check['n_nodes_check']} (estimated error "
            f"{check['loss_error_estimate']:.2f}), and arm "
            f"{check['arm']}'s pCR moves by {check['max_abs_pcr_diff_pct']:.1f} points "
            f"({check['max_pcr_diff_in_binomial_sd']:.2f} binomial sd): the fit and its "
            f"intervals depend on the grid; raise --nodes")


# 0.05 to 4, ratio 1.2 between points: with the top at 2 the between-trial sd chose the
# top in 3 of 4 validation folds (the five trials' fitted effects spread by about 2.2)
TRIAL_SPREAD_P = 0.01  # trial_spread_check flags a chi-square p-value below this


def trial_spread_check(names, z, trial_sd: float) -> dict | None:
    """Do the fitted trial effects fit their prior, ``trial_effect#k ~ N(0, trial_sd)``?

    A new trial's predicted arms draw its effect from that prior (`fitcsc predict`), so
    when the fitted trials spread more than ``trial_sd`` allows, every new-trial interval
    is too narrow. Statistic: ``Q = sum_k (effect_k / trial_sd)^2`` against chi-square
    with K degrees of freedom (K fitted trials). A MAP effect is shrunk towards 0 (its
    marginal variance is ``trial_sd^2`` minus its posterior variance), so ``Q`` is
    stochastically smaller than chi-square_K under the prior and the p-value is
    conservative: the check can miss a spread, not invent one.
    **Returns:** None when the model has no trial effects, else ``effects`` (per trial),
    ``trial_sd``, ``rms`` (root mean square of the effects), ``q``, ``df``, ``p_value``,
    ``p_threshold`` (`TRIAL_SPREAD_P`) and ``ok`` (``p_value >= p_threshold``)."""
    from scipy.stats import chi2

    eff = {n.split("#", 1)[1]: float(v) for n, v in zip(names, np.asarray(z, float),
                                                          strict=True)
           if n.startswith("trial_effect#")}
    if not eff:
        return None
    v = np.asarray(list(eff.values()))
    q = float(np.sum((v / trial_sd) ** 2))
    p = float(chi2.sf(q, v.size))
    return {"effects": eff, "trial_sd": float(trial_sd), "rms": float(np.sqrt(np.mean(v**2))),
            "q": q, "df": int(v.size), "p_value": p, "p_threshold": TRIAL_SPREAD_P,
            "ok": bool(p >= TRIAL_SPREAD_P)}


def trial_spread_warning(check: dict | None) -> str | None:
    """The one-line warning of a failed `trial_spread_check` (None when it passed or the
    model has no trial effects)."""
    if check is None or check["ok"]:
        return None
    worst = max(check["effects"], key=lambda k: abs(check["effects"][k]))
    return (f"the fitted trials differ more than the between-trial prior allows: effects "
            f"of log burden with root mean square {check['rms']:.2f} (largest "
            f"{worst} {check['effects'][worst]:+.2f}) against a prior sd of "
            f"{check['trial_sd']:g} (chi-square {check['q']:.1f} on {check['df']} df, "
            f"p = {check['p_value']:.1g}): intervals for a new trial, which draw its "
            "effect from that prior, are too narrow (refit with "
            "`fitcsc run --hyper auto`)")


HYPER_SD_GRID = tuple(float(v) for v in np.exp(np.linspace(np.log(0.05), np.log(4.0), 25)))
HYPERS = ("trial_sd", "her2_drug_sd", "chemo_drug_sd")


def fit_prior_sds(objective: Objective, fit: TrialFit, *, which=("trial_sd",),
                  grid=HYPER_SD_GRID, max_steps: int = 150
                  ) -> tuple[TrialFit, Objective, dict]:
    """Hierarchical prior sds (``which``, any of `HYPERS`: the between-trial sd of log
    burden, the sd of a HER2 blocker's log potency around the class mean, of a
    chemotherapy drug's around the class kill) by type-II maximum likelihood: the point
    of ``grid`` (per sd; all combinations) with the largest Laplace log marginal
    likelihood, then the MAP refitted there (one start). An sd whose group has no
    parameter in the model is left as it is.

    The marginal likelihood is that of the model linearised at ``fit`` (the
    Gauss-Newton Hessian ``H = cov^-1`` at its MAP ``z*``, made with the objective's own
    sds): only the groups' prior precisions change, ``D = sum_g (1/s_g^2 - 1/s0_g^2)
    A_g^T A_g`` (``A_g z``: the group's deviations from their centres, which are 0 or
    another parameter), so the mode moves to ``z' = (H + D)^-1 H z*`` with loss
    ``L' = L* + 0.5 (z' - z*)^T H (z' - z*) + 0.5 z'^T D z'``, and
    ``log p(data | s) = -L' - 0.5 log det(H + D) - sum_g K_g log s_g`` up to a constant
    (``K_g`` parameters in group ``g``: the normaliser their residuals leave out). A
    joint mode over the parameters and the sds would collapse the sds to 0; the
    marginal likelihood integrates the parameters out. The linearisation is the one the
    ``"linear"`` posterior makes (`fitcsc._trial.posterior`), and it needs no refit per
    grid point: refits at small sds crawled in this model's sloppy directions and
    stopped at their step caps in other basins, which made the comparison one of
    optimiser luck. The objective's structure is kept (``prior_scale`` is traced), so
    the refit compiles nothing.
    **Returns:** ``(fit at the chosen sds, its objective, record)``: ``record`` has
    ``chosen`` (sd per hyper), ``refit_start`` (the linearised mode, or the MAP at the
    start sds when the refit from the linearised mode was not finite), ``log_evidence``
    (at the chosen point; at the objective's own sds: ``log_evidence_start``) and
    ``profile``: per hyper, the
    largest log evidence over the others at each grid value."""
    names = objective.tm.names
    which = [h for h in which if h in HYPERS]
    start = {h: float(getattr(objective, h)) for h in HYPERS}
    a = {}
    for h in which:
        rows = []
        for i, n in enumerate(names):
            group, c = prior_group(n, names)
            if group == h:
                row = np.zeros(len(names))
                row[i] = 1.0
                if c >= 0:
                    row[c] -= 1.0
                rows.append(row)
        if rows:
            a[h] = np.asarray(rows)
    if not a:
        raise ValueError(f"fit_prior_sds: the model has no parameter under {which}")
    cov = np.asarray(fit.cov, float)
    if not np.all(np.isfinite(cov)):
        raise ValueError("fit_prior_sds: the fit's covariance is not finite")
    h_mat = np.linalg.pinv(0.5 * (cov + cov.T), rcond=1e-12, hermitian=True)
    z_star = np.asarray(fit.z, float)
    gram = {h: m.T @ m for h, m in a.items()}
    hypers = list(a)
    values = np.asarray(sorted(float(v) for v in grid))
    mesh = np.stack(np.meshgrid(*[values] * len(hypers), indexing="ij"), -1).reshape(
        -1, len(hypers))

    def evidence(point):
        d = sum((1.0 / s**2 - 1.0 / start[h]**2) * gram[h]
                for h, s in zip(hypers, point, strict=True))
        h_new = h_mat + d
        sign, logdet = np.linalg.slogdet(h_new)
        if sign <= 0:
            return -math.inf, None
        z_new = np.linalg.solve(h_new, h_mat @ z_star)
        dz = z_new - z_star
        loss = fit.loss + 0.5 * dz @ h_mat @ dz + 0.5 * z_new @ d @ z_new
        norm = sum(len(a[h]) * math.log(s) for h, s in zip(hypers, point, strict=True))
        return float(-loss - 0.5 * logdet - norm), z_new

    ev = np.array([evidence(p)[0] for p in mesh])
    k = int(np.argmax(ev))
    chosen = dict(start) | {h: float(v) for h, v in zip(hypers, mesh[k], strict=True)}
    profile = {h: [[float(v), float(np.max(ev[mesh[:, j] == v]))] for v in values]
               for j, h in enumerate(hypers)}
    obj = Objective(objective.tm, objective.data, prior_sd=objective.prior_sd,
                    chemo_drug_sd=chosen["chemo_drug_sd"],
                    her2_drug_sd=chosen["her2_drug_sd"], trial_sd=chosen["trial_sd"])
    refit = fit_trials(obj, n_starts=1, max_steps=max_steps, start=evidence(mesh[k])[1])
    refit_start = "linearised mode"
    if not (np.isfinite(refit.loss) and np.all(np.isfinite(np.asarray(refit.cov)))):
        # the linearised mode can land where the model is not finite (large sds let
        # sloppy directions move far): refit from the MAP at the start sds instead
        refit = fit_trials(obj, n_starts=1, max_steps=max_steps, start=z_star)
        refit_start = "MAP at the start sds (the linearised mode was not finite)"
    record = {"chosen": {h: chosen[h] for h in hypers}, "log_evidence": float(ev[k]),
              "refit_start": refit_start,
              "log_evidence_start": evidence([start[h] for h in hypers])[0],
              "profile": profile}
    return refit, obj, record


# ---------------------------------------------------------------- saving and loading
DRAWS_FILE = "posterior_draws.csv"


def save_fit(path, tm: TrialModel, fit: TrialFit, extra: dict | None = None, *,
             draws=None, posterior: dict | None = None) -> None:
    """Write ``fit.json``: names, estimates, covariance and everything needed to
    rebuild the model for new regimens (`load_fit`); with ``draws`` (equal-weight
    posterior draws ``(n, d)`` of ``z``), also `DRAWS_FILE` beside it, which
    `fitcsc predict` then uses instead of Laplace draws; ``posterior`` describes them."""
    from .._io.files import csv_text, write_atomic

    path = pathlib.Path(path)
    post = {"method": "laplace", "draws_file": None}
    if draws is not None:
        draws = np.asarray(draws, float)
        if draws.ndim != 2 or draws.shape[1] != len(fit.names):
            raise ValueError(f"save_fit: draws must be (n, {len(fit.names)}), got "
                             f"{draws.shape}")
        write_atomic(path.with_name(DRAWS_FILE), csv_text(
            list(fit.names), [[repr(float(v)) for v in row] for row in draws]))
        post = {"method": "draws", "draws_file": DRAWS_FILE, "n_draws": len(draws)}
    post |= posterior or {}

    doc = {
        "format": "fitcsc.trial_fit/1",
        "names": list(fit.names),
        "z": [float(v) for v in fit.z],
        "cov": np.asarray(fit.cov).tolist(),
        "se_z": [float(v) for v in fit.se],
        "natural": {k: float(v) for k, v in tm.natural(jnp.asarray(fit.z)).items()},
        "fixed": {k: float(v) for k, v in tm.fixed.items()},
        "base_kill": {d: float(k) for d, k in
                      zip(tm.model.drugs, np.asarray(tm.base_kill), strict=True)},
        "her2_scale": {d: float(k) for d, k in
                       zip(tm.model.drugs, np.asarray(tm.her2_scale), strict=True)},
        "options": {k: getattr(tm, k) for k in OPTIONS},
        "trials": list(tm.trials),
        "hyper": dict(fit.hyper),
        "reference_doses": bool(np.allclose(np.asarray(tm.base_kill),
                                            reference_kill(tm.model), rtol=1e-12)),
        "loss": fit.loss, "converged": fit.converged, "status": fit.status.label,
        "n_steps": fit.n_steps,
        "posterior": post,
    } | (extra or {})
    write_atomic(path, json.dumps(doc, indent=2) + "\n")


def load_draws(fit_dir, doc) -> np.ndarray | None:
    """The saved posterior draws of a fit (`save_fit`), or None if it has none."""
    name = (doc.get("posterior") or {}).get("draws_file")
    if not name:
        return None
    base = pathlib.Path(fit_dir)
    path = (base if base.is_dir() else base.parent) / name
    with open(path, newline="") as fh:
        header = fh.readline().strip().split(",")
        if header != list(doc["names"]):
            raise ValueError(f"{path}: columns {header} are not the fit's parameters "
                             f"{doc['names']}")
        return np.loadtxt(fh, delimiter=",", ndmin=2)


OPTIONS = ("n_nodes", "eta_max", "refine", "n_burden", "burden_sd", "micromet_sd",
           "detection_cells", "timing_sd_day", "n_csc_fraction", "heterogeneity", "n_her2",
           "link_refine", "trial_shift")


def load_fit(path) -> dict:
    """Read a ``fit.json`` written by `save_fit` (clear error if it is not one)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "fit.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no fit.json here; run a trial fit first "
                                "(fitcsc run --out DIR, or experiments/adjuvant_fit.py "
                                "--out DIR for DFS)")
    doc = json.loads(path.read_text())
    if doc.get("format") != "fitcsc.trial_fit/1":
        raise ValueError(f"{path}: not a fitcsc trial fit (format "
                         f"{doc.get('format')!r}, expected 'fitcsc.trial_fit/1')")
    return doc


def model_from_fit(doc: dict, arms: list[Arm]) -> TrialModel:
    """A `TrialModel` for new ``arms`` with the saved parameters and calibration.

    Drugs the fit never saw get the class kill per reference dose
    (`fitcsc._trial.model.CHEMO_REFERENCE_DOSE`) and, for HER2 blockers, the default potency:
    use `fitcsc._jobs.predict` (which refuses or flags them) for predictions."""
    names = tuple(doc["names"])
    fixed = dict(doc["fixed"])
    return TrialModel.build(arms, names, fixed=fixed, base_kill=doc["base_kill"],
                            her2_scale=saved_her2_scale(doc), **doc["options"])


def saved_her2_scale(doc: dict) -> dict:
    """A saved fit's HER2 exposure multipliers (`fitcsc._trial.model.reference_her2_scale`);
    fits saved before them used one EC50 for every blocker: 1 for every drug, those the
    fit saw and those a prediction adds alike (its potencies mean that)."""
    if "her2_scale" in doc:
        return dict(doc["her2_scale"])
    return _Ones()


class _Ones(dict):
    """``get`` gives 1 for every key (a fit saved before `saved_her2_scale`)."""

    def get(self, key, default=None):
        return 1.0


# ---------------------------------------------------------------- adjuvant outcomes
# The primary, crossover-free analyses: (trial label, analysis prefix, experimental arm,
# control arm). Later HERA analyses are diluted by the observation arm's crossover to
# trastuzumab (52 %) and are left out of fits; their rows stay in data/.
ADJUVANT_PRIMARY = (
    ("B-31/N9831", "definitive DFS (Romond 2005)", "JA-H", "JA-C"),
    ("HERA", "1st interim (2005)", "HERA-H1", "HERA-OBS"),
)


# Long-term intention-to-treat DFS analyses of the same trials: (trial label, analysis,
# horizon in years). Their control arms had crossed over to trastuzumab (HERA 52%,
# B-31/N9831 in part), which pulls the HR toward 1, so each bounds the lasting effect from
# above (`HrObservation.upper`). The SmPC row of B-31/N9831 prints no follow-up; 8.35 y is
# that of the final analysis it cites (Perez 2014).
ADJUVANT_LONG_TERM = (("B-31/N9831", "updated DFS (SmPC Table 11)", 8.35),
                      ("HERA", "final 11-yr (Cameron 2017 Lancet)", 11.0))


def adjuvant_observations(rows, regimens, *, analyses=ADJUVANT_PRIMARY, endpoint="DFS",
                          long_term=()):
    """Adjuvant arms, control landmarks and hazard ratios from ``adjuvant_outcomes.csv``.

    ``long_term``: (trial label, analysis, years) rows such as `ADJUVANT_LONG_TERM`: each
    adds, after the primary hazard ratios, the analysis' DFS HR as an upper bound
    (``upper=True``) on the model's HR between the same two arms at that horizon.

    **Returns:** ``(arms, landmarks, hrs)``; arm names are regimen ids.
    """
    arms, landmarks, hrs = {}, [], []
    pair = {}
    for label, analysis, exp_id, ctl_id in analyses:
        sel = [r for r in rows if r["analysis"] == analysis and r["endpoint"] == endpoint]
        ctl = next((r for r in sel if r["arm_id"] == ctl_id), None)
        exp = next((r for r in sel if r["arm_id"] == exp_id), None)
        if ctl is None or exp is None:
            raise ValueError(f"adjuvant_outcomes.csv: no {endpoint} rows for {exp_id} vs "
                             f"{ctl_id} in analysis {analysis!r}")
        for r in (ctl, exp):
            rid = r["regimen_id"]
            arms.setdefault(rid, Arm(rid, regimens[rid], setting="adjuvant", trial=label))
        if ctl["landmark_years"] and ctl["landmark_rate_pct"] is not None:
            landmarks.append(LandmarkObservation(ctl["regimen_id"], ctl["landmark_years"],
                                                 ctl["landmark_rate_pct"] / 100.0,
                                                 ctl["n_randomized"]))
        years = exp["median_followup_years"] or ctl["median_followup_years"]
        hrs.append(HrObservation(f"{label} {exp_id} vs {ctl_id}", exp["regimen_id"],
                                 ctl["regimen_id"], float(years), float(exp["log_hr"]),
                                 float(exp["log_hr_se"])))
        pair[label] = (exp["regimen_id"], ctl["regimen_id"])
    for label, analysis, years in long_term:
        r = next((r for r in rows if r["analysis"] == analysis and r["endpoint"] == endpoint
                  and r["log_hr"] is not None and r["log_hr_se"] is not None), None)
        if r is None or label not in pair:
            raise ValueError(f"adjuvant_outcomes.csv: no {endpoint} hazard ratio with its "
                             f"standard error in analysis {analysis!r} of a trial with a "
                             f"primary analysis (label {label!r})")
        if r["regimen_id"] != pair[label][0]:
            raise ValueError(f"adjuvant_outcomes.csv: analysis {analysis!r} compares "
                             f"{r['regimen_id']}, not {label}'s experimental arm "
                             f"{pair[label][0]}")
        hrs.append(HrObservation(f"{label} long-term ITT: {analysis}", *pair[label],
                                 float(years), float(r["log_hr"]), float(r["log_hr_se"]),
                                 upper=True))
    return list(arms.values()), landmarks, hrs
