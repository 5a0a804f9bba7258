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
documented default), i.e. a MAP estimate. Levenberg–Marquardt (forward-mode Jacobian)
from several scrambled Sobol starts; standard errors from the Gauss–Newton
Hessian ``J^T J`` at the optimum.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from scipy.stats import qmc

from ._endpoints import binomial_log_likelihood
from ._trials import BREAST_ONLY, Arm, TrialModel, hazard_ratio

TOTAL = ("ypT0/is ypN0", "ypT0 ypN0")
YEAR = 365.25


@dataclasses.dataclass(frozen=True)
class PcrObservation:
    arm: str
    trial: str
    definition: str  # primary
    n: int
    count: int
    nested_total: int | None = None  # total-pCR count when the primary is breast-only


@dataclasses.dataclass(frozen=True)
class HrObservation:
    name: str
    experimental: str  # arm names in the model
    control: str
    years: float  # horizon of the cumulative-hazard ratio
    log_hr: float
    se: float


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


@dataclasses.dataclass
class TrialData:
    pcr: list[PcrObservation] = dataclasses.field(default_factory=list)
    landmarks: list[LandmarkObservation] = dataclasses.field(default_factory=list)
    hrs: list[HrObservation] = dataclasses.field(default_factory=list)
    hr_pcr: list[HrPcrObservation] = dataclasses.field(default_factory=list)


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


class Objective:
    """Residual vector of a `TrialModel` against `TrialData` (see module docstring)."""

    def __init__(self, tm: TrialModel, data: TrialData, *, prior_sd: float = 2.0):
        self.tm, self.data, self.prior_sd = tm, data, prior_sd
        ix = {a: i for i, a in enumerate(tm.arm_names)}
        self.p_idx = jnp.asarray([ix[o.arm] for o in data.pcr], int)
        self.p_n = jnp.asarray([o.n for o in data.pcr], float)
        self.p_k = jnp.asarray([o.count for o in data.pcr], float)
        self.p_breast = jnp.asarray([o.definition in BREAST_ONLY for o in data.pcr])
        self.p_has_nested = jnp.asarray([o.nested_total is not None for o in data.pcr])
        self.p_nested = jnp.asarray([o.nested_total or 0 for o in data.pcr], float)
        self.l_idx = jnp.asarray([ix[o.arm] for o in data.landmarks], int)
        self.l_days = jnp.asarray([o.years * YEAR for o in data.landmarks], float)
        self.l_k = jnp.asarray([o.rate * o.n for o in data.landmarks], float)
        self.l_n = jnp.asarray([o.n for o in data.landmarks], float)
        self.h_e = jnp.asarray([ix[o.experimental] for o in data.hrs], int)
        self.h_c = jnp.asarray([ix[o.control] for o in data.hrs], int)
        self.h_days = jnp.asarray([o.years * YEAR for o in data.hrs], float)
        self.h_obs = jnp.asarray([o.log_hr for o in data.hrs], float)
        self.h_se = jnp.asarray([o.se for o in data.hrs], float)
        self.z_prior = tm.z0()
        # arms with subgroup counts: their all-patient primary count is the subgroups'
        # sum, so it is left out (the nested breast/total split is kept)
        sub_arms = {o.arm for o in data.hr_pcr}
        self.p_live = jnp.asarray([o.arm not in sub_arms for o in data.pcr])
        self.s_idx = jnp.asarray([ix[o.arm] for o in data.hr_pcr], int)
        self.s_pos = jnp.asarray([o.subgroup == "HR+" for o in data.hr_pcr])
        self.s_n = jnp.asarray([o.n for o in data.hr_pcr], float)
        self.s_k = jnp.asarray([o.count for o in data.hr_pcr], float)
        if data.hr_pcr and (data.landmarks or data.hrs):
            raise ValueError("Objective: hormone-receptor subgroups are fitted with pCR data "
                             "only (DFS has no HR covariate yet)")
        # every arm's population = its trial's HR+ share of HR+ tumours, the rest HR-;
        # trials without subgroup data get the mean share
        share = {o.trial: o.hr_positive_share for o in data.hr_pcr}
        mean = float(np.mean(list(share.values()))) if share else 0.0
        trial_of = {o.arm: o.trial for o in data.pcr}
        self.hr_share = jnp.asarray([share.get(trial_of.get(a, ""), mean)
                                     for a in tm.arm_names], float)

    def predictions(self, z) -> dict:
        tm = self.tm
        res = tm.mixture(z)
        if self.data.hr_pcr:  # the population is a mixture of the two subgroups
            tp, bp, sp = tm.pcr_pair(z, res, subgroup="HR+")
            tn, bn, sn = tm.pcr_pair(z, res, subgroup="HR-")
            f = self.hr_share
            total, breast = f * tp + (1 - f) * tn, f * bp + (1 - f) * bn
            status = jnp.maximum(sp, sn)
        else:
            total, breast, status = tm.pcr_pair(z, res)
        out = {"pcr_total": total, "pcr_breast": breast, "status": status}
        if self.data.hr_pcr:
            out["pcr_HR+"] = jnp.where(tm.breast_only, bp, tp)
            out["pcr_HR-"] = jnp.where(tm.breast_only, bn, tn)
        days = jnp.concatenate([self.l_days, self.h_days, jnp.zeros((1,))])
        if self.data.landmarks or self.data.hrs:
            dfs, cure, _ = tm.dfs(z, days, res)
            out["cure"] = cure
            nl = len(self.data.landmarks)
            out["landmark"] = dfs[self.l_idx, jnp.arange(nl)]
            hd = jnp.arange(len(self.data.hrs)) + nl
            out["log_hr"] = jnp.log(hazard_ratio(dfs[self.h_e, hd], dfs[self.h_c, hd]))
        return out

    def __call__(self, z, args=None):
        pr = self.predictions(z)
        parts = []
        if self.data.pcr:
            t = pr["pcr_total"][self.p_idx]
            b = pr["pcr_breast"][self.p_idx]
            prim = jnp.where(self.p_breast, b, t)
            parts.append(_deviance_residual(prim, self.p_k, jnp.where(self.p_live,
                                                                      self.p_n, 0.0)))
            # nested: total among the breast-only pCRs ~ Bin(k_b, pi_t / pi_b)
            cond = jnp.clip(t / jnp.maximum(b, 1e-12), 1e-9, 1 - 1e-9)
            parts.append(_deviance_residual(cond, self.p_nested,
                                            jnp.where(self.p_has_nested, self.p_k, 0.0)))
        if self.data.hr_pcr:
            rate = jnp.where(self.s_pos, pr["pcr_HR+"][self.s_idx], pr["pcr_HR-"][self.s_idx])
            parts.append(_deviance_residual(rate, self.s_k, self.s_n))
        if self.data.landmarks:
            parts.append(_deviance_residual(pr["landmark"], self.l_k, self.l_n))
        if self.data.hrs:
            parts.append((pr["log_hr"] - self.h_obs) / self.h_se)
        parts.append((z - self.z_prior) / self.prior_sd)
        return jnp.concatenate(parts)


@dataclasses.dataclass
class TrialFit:
    names: tuple[str, ...]
    z: np.ndarray
    cov: np.ndarray
    loss: float
    converged: bool
    n_steps: int
    start_losses: np.ndarray

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))


def fit_trials(objective: Objective, *, n_starts: int = 4, spread: float = 1.5,
               max_steps: int = 200, seed: int = 0, progress: bool = False,
               start=None) -> TrialFit:
    """MAP by Levenberg–Marquardt from ``n_starts`` starts (the default, then scrambled
    Sobol points within ``+- spread`` of it on the unconstrained scale; ``start``
    replaces the default as the first start); the residual
    Jacobian is forward-mode, and the few shared parameters make each step cheap.
    **Returns:** a `TrialFit` (the best start; covariance ``(J^T J)^+``)."""
    z0 = objective.z_prior if start is None else jnp.asarray(start, float)
    d = z0.shape[0]
    starts = [np.asarray(z0)]
    if n_starts > 1:
        m = int(np.ceil(np.log2(n_starts - 1))) if n_starts > 2 else 0
        u = qmc.Sobol(d, scramble=True, seed=seed).random_base2(m)[: n_starts - 1]
        starts += list(np.asarray(z0) + spread * (2 * u - 1))
    res = jax.jit(objective)
    jac = jax.jit(jax.jacfwd(objective))
    results = [_levenberg_marquardt(res, jac, jnp.asarray(z), max_steps, progress)
               for z in starts]
    losses = np.asarray([r[1] for r in results])
    best = int(np.argmin(losses))
    z, _, converged, n_steps = results[best]
    J = np.asarray(jax.jacfwd(objective)(z))
    if np.all(np.isfinite(J)):
        cov = np.linalg.pinv(J.T @ J, rcond=1e-12)
    else:
        cov = np.full((d, d), np.nan)
    return TrialFit(names=objective.tm.names, z=np.asarray(z), cov=cov,
                    loss=float(losses[best]), converged=converged, n_steps=n_steps,
                    start_losses=losses)


def _levenberg_marquardt(res, jac, z, max_steps, progress):
    """Damped Gauss-Newton with an adaptive damping; converged when five accepted
    steps together lower the loss by less than 1e-4 (relative; far below one unit of
    log-likelihood here), or the gradient is
    below 1e-6 (sloppy directions crawl; the loss is what the fit reports)."""
    r = res(z)
    loss = float(0.5 * r @ r)
    if not np.isfinite(loss):
        return z, np.inf, False, 0
    mu, converged, k, history = 1e-3, False, 0, [loss]
    bar = tqdm.trange(max_steps, desc="trial fit", disable=not progress, leave=False)
    for k in bar:  # noqa: B007 (k is the step count after the loop)
        J = jac(z)
        g = J.T @ r
        if float(jnp.max(jnp.abs(g))) < 1e-6:
            converged = True
            break
        JtJ = J.T @ J
        step = jnp.linalg.solve(JtJ + mu * jnp.diag(jnp.maximum(jnp.diag(JtJ), 1e-9)), -g)
        r_new = res(z + step)
        new = float(0.5 * r_new @ r_new)
        if np.isfinite(new) and new < loss:
            z, r, mu = z + step, r_new, max(mu / 3.0, 1e-12)
            loss = new
            history.append(loss)
            done = len(history) > 5 and history[-6] - loss < 1e-4 * (1.0 + loss)
            bar.set_postfix(loss=f"{loss:.4f}")
            if done:
                converged = True
                break
        else:
            mu *= 4.0
            if mu > 1e10:
                break
    return z, loss, converged, k + 1


# ---------------------------------------------------------------- saving and loading
def save_fit(path, tm: TrialModel, fit: TrialFit, extra: dict | None = None) -> None:
    """Write ``fit.json``: names, estimates, covariance and everything needed to
    rebuild the model for new regimens (`load_fit`)."""
    from ._run import write_atomic

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
        "options": {k: getattr(tm, k) for k in OPTIONS},
        "trials": list(tm.trials),
        "loss": fit.loss, "converged": fit.converged, "n_steps": fit.n_steps,
    } | (extra or {})
    write_atomic(pathlib.Path(path), json.dumps(doc, indent=2) + "\n")


OPTIONS = ("n_nodes", "eta_max", "refine", "n_burden", "burden_sd", "micromet_sd",
           "detection_cells", "timing_sd_day", "n_csc_fraction")


def load_fit(path) -> dict:
    """Read a ``fit.json`` written by `save_fit` (clear error if it is not one)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "fit.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no fit.json here; run a trial fit first "
                                "(experiments/pcr_fit.py or adjuvant_fit.py --out DIR)")
    doc = json.loads(path.read_text())
    if doc.get("format") != "fitcsc.trial_fit/1":
        raise ValueError(f"{path}: not a fitcsc trial fit (format "
                         f"{doc.get('format')!r}, expected 'fitcsc.trial_fit/1')")
    return doc


def model_from_fit(doc: dict, arms: list[Arm]) -> TrialModel:
    """A `TrialModel` for new ``arms`` with the saved parameters and calibration.

    Drugs the fit never saw keep their calibrated kill rate (one ln-kill per median
    dose in ``arms``) times the fitted kill scale; HER2 drugs without a fitted potency
    get the default (1)."""
    names = tuple(doc["names"])
    fixed = dict(doc["fixed"])
    return TrialModel.build(arms, names, fixed=fixed, base_kill=doc["base_kill"],
                            **doc["options"])


# ---------------------------------------------------------------- adjuvant outcomes
# The primary, crossover-free analyses: (trial label, analysis prefix, experimental arm,
# control arm). Later HERA analyses are diluted by the observation arm's crossover to
# trastuzumab (52 %) and are left out of fits; their rows stay in data/.
ADJUVANT_PRIMARY = (
    ("B-31/N9831", "definitive DFS (Romond 2005)", "JA-H", "JA-C"),
    ("HERA", "1st interim (2005)", "HERA-H1", "HERA-OBS"),
)


def adjuvant_observations(rows, regimens, *, analyses=ADJUVANT_PRIMARY, endpoint="DFS"):
    """Adjuvant arms, control landmarks and hazard ratios from ``adjuvant_outcomes.csv``.

    **Returns:** ``(arms, landmarks, hrs)``; arm names are regimen ids.
    """
    arms, landmarks, hrs = {}, [], []
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
    return list(arms.values()), landmarks, hrs
