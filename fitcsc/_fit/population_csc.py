"""The default population designs of tumour-volume data: the CSC model and the baselines.

`csc_population` builds a `PopulationModel` of the CSC model (S/D, logistic crowding,
`fitcsc._fit.csc_spec.CSC_REFERENCE` for what is not estimated) from a batch and its regimens:

- growth: CSC division rate v_S (log-normal between animals, or between groups such as
  PDX lines when ``group_by`` is given), self-renewal p and the carrying capacity K of
  the logistic crowding (one population value each: K lets growth slow down, as the
  long pre-treatment curves of MAS98.06 do);
- initial volume V0 at each curve's first observation: one typical value per arm (arms
  may start at different days, e.g. with and without pre-treatment growth) and a
  log-normal animal effect (with ``v0_by_start``, one SD for the curves that start at a
  palpable volume from day 0 on, another for those seeded before treatment); with
  ``seeded_v0="shared"``, one typical V0 for all the arms whose curves start before
  treatment (their mice were seeded before any arm was assigned);
- drug effects by class (HER2: ``her2_efficacy_csc`` and ``her2_efficacy_bulk``;
  chemotherapy: ``kill_rate`` and ``csc_sparing``; cytostatic: ``cytostatic_efficacy``;
  CSC-targeted: ``csc_kill_rate``): per-drug parameters one fixed effect per drug
  (arms sharing a drug share it, combinations act through the model's combination
  rules), tumour-level ones (the HER2 efficacies, CSC sparing) one per arm, or one for
  all arms with ``effects="drug"``; with ``group_by``, every effect also varies between
  groups (logit- or log-normal), except the labels named in ``no_group_effect``.
  A per-drug slot that no arm's regimen uses (trastuzumab's ``kill_rate[1]`` when only
  paclitaxel is a chemotherapy) is not sampled: it stays at the reference.

`baseline_population` does the same for the exponential, logistic, Gompertz and Simeoni
models: their growth rate (Simeoni: the drug potency k2) per arm, V0 per arm, animal
effects on V0 and the rate.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._io.arms import ARM_EC50_MG_PER_L, is_arm_drug
from .._model.drugs import CATALOGUE
from .._model.family import ModelConfig
from .._model.params import default_params
from .._model.transforms import Interval, ParamSpec, Positive
from .baselines import baseline_predictor
from .csc_spec import CLASS_FREE, CSC_REFERENCE, PER_DRUG_CLASS
from .population import population_model
from .predictors import csc_predictor

GROWTH = ("csc_division_rate", "self_renewal", "carrying_capacity_cells")
V0 = "initial_volume_mm3"
ODE_RTOL = 1e-6  # as the shared-growth fits: far below the measurement error
PRIOR_LOC = {"csc_division_rate": math.log(0.3), "self_renewal": math.log(0.2 / 0.8),
             "carrying_capacity_cells": math.log(1e10), "kill_rate": math.log(0.1)}
# p = 0.6 and K = 1e4 mm3; efficacies: 0 (0.5); V0: the mean log first volume
PRIOR_SCALE = {"csc_division_rate": 1.0, V0: 2.0}  # others: 1.5
OMEGA_SCALE = {f"animal|{V0}": 1.0}  # others 0.5


def arm_labels(spec_labels, drugs, regimen) -> set[str]:
    """Labels a curve under ``regimen`` estimates: growth, V0 and its drugs' effects."""
    out = set(GROWTH) | {V0}
    for d in regimen.drugs:
        slot = drugs.index(d)
        for field in CLASS_FREE[CATALOGUE[d].drug_class]:
            out |= {lab for lab in spec_labels if lab == field
                    or lab == f"{field}[{slot}]"}
    return out


def csc_population(batch, regimens, *, groups=None, level: str = "group",
                   effects: str = "arm", rtol: float = ODE_RTOL, stimulation: bool = False,
                   no_group_effect=(), v0_by_start: bool = False,
                   animal_growth: str | None = "csc_division_rate", seeded_v0: str = "arm",
                   **priors):
    """The CSC population model of ``batch`` (see the module docstring).

    **Arguments:**
    - `batch`: a `SubjectBatch`; `regimens`: each subject's `Regimen` (a list in batch
      order).
    - `groups`: one group name per subject (e.g. the PDX line) for group-level random
      effects on growth and drug effects; None: animal-level growth effects.
    - `level`: the name of the group level (e.g. ``"line"``): dims of the posterior.
    - `effects`: ``"arm"`` or ``"drug"`` for the tumour-level effect parameters.
    - `rtol`: ODE tolerance; `stimulation`: cytostatic efficacies in (-1, 1) instead of
      (0, 1), so that a growth factor can speed growth up.
    - `no_group_effect`: labels or fields (``"her2_efficacy_csc"``) without a group-level
      random effect: one value per arm (or drug) for every group.
    - `v0_by_start`: the animal effects on V0 at two levels with their own SDs,
      ``"palpable"`` (curves whose first observation is at day 0 or later: a measured
      tumour) and ``"seeded"`` (curves that start before day 0, pre-treatment growth from
      a small seed), instead of one ``"animal"`` SD for both (omega scales
      ``"palpable|initial_volume_mm3"``, ``"seeded|initial_volume_mm3"``; default that of
      ``"animal|initial_volume_mm3"``). A level no curve belongs to is left out.
    - `animal_growth`: with `groups` None, the growth parameter with an animal effect:
      ``"csc_division_rate"`` (the default; log-normal on v_S, which scales the mouse's
      net CSC growth v_S (2p - 1) and its bulk production 2 v_S (1 - p) together),
      ``"self_renewal"`` (logit-normal on 2p - 1, i.e. about log-normal on the net rate
      while p is near 1/2, at one v_S for every mouse), or None (one v_S and p for every
      mouse, animal effects on V0 only).
    - `seeded_v0`: ``"arm"`` (one typical V0 per arm) or ``"shared"``: the arms whose
      curves all start before day 0 share one typical V0, ``"initial_volume_mm3|seeded"``
      (a seed is a seed: treatment is assigned later), the others keep one per arm.
    - `priors`: passed to `population_model` (also `zero_sum`, e.g. ``("seeded",)``); a
      dict (``prior_scale={"csc_division_rate": 0.5}``) overrides the defaults above for
      its labels only, a number all of them.

    **Returns:** the `PopulationModel`.
    """
    if effects not in ("arm", "drug"):
        raise ValueError(f"csc_population: effects must be 'arm' or 'drug', got {effects!r}")
    if seeded_v0 not in ("arm", "shared"):
        raise ValueError(f"csc_population: seeded_v0 must be 'arm' or 'shared', "
                         f"got {seeded_v0!r}")
    if animal_growth not in (None, "csc_division_rate", "self_renewal"):
        raise ValueError("csc_population: animal_growth must be 'csc_division_rate', "
                         f"'self_renewal' or None, got {animal_growth!r}")
    drugs = tuple(batch.drugs)
    model = ModelConfig(crowding="logistic", drugs=drugs)
    ref = default_params(model, **CSC_REFERENCE)
    if drugs:
        arm = jnp.asarray([is_arm_drug(d) for d in drugs], bool)
        ref = eqx.tree_at(lambda p: p.ec50_mg_per_L, ref,
                          jnp.where(arm, ARM_EC50_MG_PER_L, ref.ec50_mg_per_L))
    free = {"csc_division_rate": Positive(), "self_renewal": Interval(0.5, 1.0),
            "carrying_capacity_cells": Positive(), V0: Positive()}
    for c in dict.fromkeys(CATALOGUE[d].drug_class for d in drugs):
        free.update(CLASS_FREE[c])
    if stimulation and "cytostatic_efficacy" in free:
        free["cytostatic_efficacy"] = Interval(-1.0, 1.0)
    pred = csc_predictor(model, ParamSpec(free, ref), rtol=rtol)
    labels = tuple(pred.spec.labels())
    uses = {}
    for a, reg in zip(batch.arm, regimens, strict=True):
        uses.setdefault(a, arm_labels(labels, drugs, reg))
    used = set().union(*uses.values())  # per-drug slots no regimen uses are not sampled
    effect_labels = tuple(lab for lab in labels if lab not in GROWTH and lab != V0
                          and lab in used)
    skip = set(no_group_effect)
    unknown = skip - set(labels) - {lab.split("[")[0] for lab in labels}
    if unknown:
        raise ValueError(f"csc_population: no_group_effect names unknown parameter(s) "
                         f"{sorted(unknown)}; the model's are {list(labels)}")
    fixed = {**{g: "shared" for g in GROWTH}, V0: "arm"}
    if seeded_v0 == "shared":
        early = {}
        for a, t0 in zip(batch.arm, np.asarray(batch.t0_day), strict=True):
            early.setdefault(a, set()).add(bool(t0 < 0.0))
        mixed = sorted(a for a, k in early.items() if len(k) > 1)
        if mixed:
            raise ValueError(f"csc_population: seeded_v0='shared' needs each arm's curves "
                             f"to start all before day 0 or all from day 0 on; arm(s) "
                             f"{mixed} have both")
        if early.get("seeded") == {False}:
            raise ValueError("csc_population: seeded_v0='shared' names its pool 'seeded', "
                             "and an arm that starts from day 0 has that name")
        fixed[V0] = {a: ("seeded" if True in k else a) for a, k in early.items()}
    for lab in effect_labels:
        per_drug = lab.split("[")[0] in PER_DRUG_CLASS
        fixed[lab] = "shared" if per_drug or effects == "drug" else "arm"
    if groups is None:
        random = {"animal": (V0,) if animal_growth is None else (animal_growth, V0)}
        group_of = {}
    else:
        random = {level: tuple(lab for lab in ("csc_division_rate", *effect_labels)
                               if lab not in skip and lab.split("[")[0] not in skip),
                  "animal": (V0,)}
        group_of = {level: list(groups)}
    omega = dict(OMEGA_SCALE)
    if v0_by_start:
        random["animal"] = tuple(lab for lab in random["animal"] if lab != V0)
        if not random["animal"]:
            del random["animal"]
        seeded = np.asarray(batch.t0_day) < 0.0
        for lev, kind in (("palpable", False), ("seeded", True)):
            if (seeded == kind).any():
                random[lev] = (V0,)
                group_of[lev] = [s if k == kind else None
                                 for s, k in zip(batch.subject, seeded, strict=True)]
                omega[f"{lev}|{V0}"] = OMEGA_SCALE[f"animal|{V0}"]
    scale = {lab.split("[")[0]: PRIOR_SCALE.get(lab.split("[")[0], 1.5) for lab in labels}
    options = dict(prior_loc=PRIOR_LOC, prior_scale=scale, omega_scale=omega)
    for key in ("prior_loc", "prior_scale", "omega_scale"):  # a dict overrides its labels
        if isinstance(priors.get(key), dict):
            options[key] = {**options[key], **priors.pop(key)}
    options.update(priors)
    return population_model(pred, batch, fixed=fixed, random=random, groups=group_of,
                            uses=uses, **options)


def untreated_log_growth(model: ModelConfig, params, days):
    """``log(V(t0 + days) / V0)`` of the untreated CSC model far below its capacity.

    Without drug and crowding the S/D model is linear, ``S' = a S``, ``D' = b S + c D``
    (``a = v_S (2p - 1) - delta_S``, ``b = 2 v_S (1 - p)``, ``c = v_D - delta_D``), so the
    volume grows by a factor that does not depend on V0: with ``f`` the initial CSC
    fraction, ``V(T) / V0 = f e^(aT) + (1 - f) e^(cT) + b f e^(cT) (e^((a-c)T) - 1) / (a
    - c)``, computed on the log scale (no overflow at fast rates). Logistic crowding makes
    the model grow more slowly than this as the volume nears K. Used by
    ``experiments/_bayes.reparameterise`` (``seeded_ref``) to move the seeded curves' V0
    to the volume at a reference day; any smooth function of the other parameters would
    keep that change of variables exact, this one makes it close to the data's.

    **Arguments:** `model`: a `ModelConfig` with the S and D states only (no progenitor,
    dormancy, resistant clone, plasticity or damage chain); `params`: `CSCParams`
    (scalars, or arrays that broadcast with `days`); `days`: time since t0 [day].

    **Raises:** `ValueError` for a model with other states.
    """
    if (model.progenitor or model.dormancy or model.resistant_clone
            or model.plasticity != "none" or model.damage_chain):
        raise ValueError("untreated_log_growth: only the S/D model (no progenitor, dormancy, "
                         "resistant clone, plasticity or damage chain)")
    p = params
    t = jnp.asarray(days, float)
    a = p.csc_division_rate * (2.0 * p.self_renewal - 1.0) - p.csc_death_rate
    c = p.bulk_division_rate - p.bulk_death_rate
    b = 2.0 * p.csc_division_rate * (1.0 - p.self_renewal)
    f = p.initial_csc_fraction
    d = a - c
    small = jnp.abs(d) < 1e-9
    ad = jnp.where(small, 1.0, jnp.abs(d))
    # log((e^(dT) - 1) / d) = max(dT, 0) + log(1 - e^(-|d|T)) - log|d|; T as d -> 0
    log_h = jnp.where(small, jnp.log(t),
                      jnp.maximum(d * t, 0.0) + jnp.log(-jnp.expm1(-ad * t)) - jnp.log(ad))
    terms = jnp.stack(jnp.broadcast_arrays(jnp.log(f) + a * t, jnp.log1p(-f) + c * t,
                                           jnp.log(b * f) + c * t + log_h))
    return jax.scipy.special.logsumexp(terms, axis=0)


def seeded_reference_days(curves) -> np.ndarray:
    """Per curve (``SubjectData`` with a leading curve axis, e.g. ``pop.curves``): the
    day of its first measured (uncensored) volume, at most day 0 (no drug before it; day 0
    for a curve without one); NaN for a curve that starts at day 0 or later."""
    day, mask = np.asarray(curves.day), np.asarray(curves.mask)
    seen = mask & ~np.asarray(curves.censored)
    t0 = np.asarray(curves.t0_day)
    out = np.full(t0.shape, np.nan)
    for c in np.flatnonzero(t0 < 0.0):
        first = day[c][seen[c]]
        out[c] = min(float(first[0]) if first.size else 0.0, 0.0)
    return out


def baseline_population(kind: str, batch, regimens, **priors):
    """The baseline ``kind`` as a population model: rate (Simeoni: k2) and V0 per arm,
    the other parameters shared, animal effects on V0 and the rate."""
    pred = baseline_predictor(kind)
    labels = tuple(pred.spec.labels())
    rate = {"exponential": "growth_rate", "logistic": "growth_rate",
            "gompertz": "gompertz_rate", "simeoni": "lambda0"}[kind]
    fixed = {lab: "shared" for lab in labels}
    fixed[V0] = "arm"
    fixed["k2" if kind == "simeoni" else rate] = "arm"
    uses = None
    if kind == "simeoni":
        treated = {a for a, r in zip(batch.arm, regimens, strict=True) if r.drugs}
        uses = {a: set(labels) - ({"k2"} if a not in treated else set())
                for a in dict.fromkeys(batch.arm)}
    # prior means: the predictor's reference starts (data-scaled V0 and capacity)
    options = dict(prior_scale=2.0,
                   omega_scale={"animal": 0.5, f"animal|{V0}": 1.0,
                                "animal|growth_rate": 0.05 if kind == "exponential" else 0.5})
    if kind == "exponential":
        options["prior_scale"] = {"growth_rate": 0.1, V0: 2.0}
    options.update(priors)
    return population_model(pred, batch, fixed=fixed, random={"animal": (V0, rate)},
                            uses=uses, **options)
