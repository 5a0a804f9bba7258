"""Predictions for any regimen from a saved trial fit: ``fitcsc predict``.

From a fit directory (``fit.json`` written by experiments/pcr_fit.py or
experiments/adjuvant_fit.py) and a regimen table (the format of
data/clinical/regimens.csv, documented in data/README.md), every arm is predicted as one
arm of a new trial, over the fit's saved posterior draws (``fitcsc run --posterior``:
Laplace draws with every prediction linearised at the MAP, the default and the one whose
intervals passed the calibration check by simulation; PSIS-reweighted Laplace, NUTS or
ChEES), else Laplace draws from the fit's covariance, linearised:

- neoadjuvant: the pCR rate under every requested definition (surgery 4 weeks after the
  last dose): the arm's rate (mean, 95% interval) and the 95% posterior predictive
  interval of the rate a trial arm of ``--n-patients`` would observe (parameter
  uncertainty, the new trial's own effect when the fit has trial effects, and binomial
  sampling); paired contrasts between arms (``--contrast A-B``); every draw of every
  arm's rate in ``pcr_draws.csv`` (the same draws for every arm);
- adjuvant (only from a fit with adjuvant data): the same regimen given after surgery to
  patients with a fitted micrometastatic burden: DFS at each ``--years`` and the DFS
  hazard ratio (ratio of cumulative hazards) against each ``--comparator``.

What the fit cannot support is refused (`FitcscInputError`, exit 2) or, where the user
supplies an assumption, flagged in the ``assumptions`` column and on screen:

- a drug the fit has no effect for: refused unless ``--assume DRUG=REF`` (the effect of a
  fitted drug of the same class; chemotherapy: the same kill per reference dose) or
  ``--assume DRUG=class`` (a draw from the class distribution of the fit's hierarchical
  prior);
- a pCR definition whose factor the fit did not estimate (breast-only needs
  ``logit_breast_factor``; ypT0 and ypT0 ypN0 need ``logit_no_dcis``);
- DFS, hazard ratios or a burden trial from a fit without adjuvant data;
- posterior draws that cannot be trusted (PSIS k_hat > 0.7, MCMC R-hat > 1.01 or any
  divergence; `fitcsc._trial.posterior.posterior_flag`): flagged on screen, in
  ``summary.json`` (``posterior.flag``) and in the report;
- a fit whose trials spread more than the between-trial prior from which a new trial's
  effect is drawn (`fitcsc._trial.fit.trial_spread_check`): the new-trial intervals are
  too narrow; flagged on screen, in ``summary.json`` (``trial_spread_flag``) and in the
  report.
- how intervals of the fit's configuration held on trials left out of the fit
  (`out_of_sample`, `OUT_OF_SAMPLE`: the leave-one-trial-out record of
  experiments/clinical_validation.py), or that there is no such record: on screen, in
  ``summary.json`` (``out_of_sample``, ``out_of_sample_flag``) and in the report.

The folder gets ``report.md`` (`fitcsc._jobs.report.write_report`) beside the CSVs and
``predictions.png``.

No arm's prediction depends on the other arms of the file: kill rates are per reference
dose (`fitcsc._trial.model.CHEMO_REFERENCE_DOSE`) or from the fit, never from the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import FitcscInputError
from .._io.files import csv_text, pyplot, run_record, save_figure, write_atomic
from .._model.drugs import CATALOGUE
from .._status import outcome
from .._trial.endpoints import hazard_ratio
from .._trial.fit import (
    YEAR,
    draw_values,
    load_draws,
    load_fit,
    saved_her2_scale,
    trial_spread_check,
    trial_spread_warning,
)
from .._trial.model import (
    CHEMO_REFERENCE_DOSE,
    DEFINITIONS,
    TUMOUR_VOLUME_MM3,
    Arm,
    TrialModel,
    reference_kill,
    trial_family,
)
from .._trial.posterior import LABELS, linearise_at, posterior_flag

NEW_TRIAL = "new trial"
# what each pCR definition needs the fit to have estimated
_NEEDS = {"ypT0/is ypN0": (), "ypT0/is": ("logit_breast_factor",),
          "ypT0": ("logit_breast_factor", "logit_no_dcis"),
          "ypT0 ypN0": ("logit_no_dcis",)}
DEFAULT_N_PATIENTS = 100
JOB = "prediction from a saved trial fit"  # summary.json's "job"


@dataclasses.dataclass(frozen=True)
class Assumption:
    """``DRUG=REF``: the fitted effect of drug ``REF``; ``DRUG=class``: a class draw."""

    drug: str
    ref: str  # a fitted drug, or "class"

    def label(self) -> str:
        return f"{self.drug}={self.ref}"


def parse_assumption(text: str) -> Assumption:
    drug, sep, ref = text.partition("=")
    drug, ref = drug.strip().lower(), ref.strip().lower()
    if not sep or not drug or not ref:
        raise FitcscInputError(f"--assume: expected DRUG=REF or DRUG=class, got {text!r}")
    if drug not in CATALOGUE:
        raise FitcscInputError(f"--assume: unknown drug {drug!r} (catalogue: "
                               f"{', '.join(sorted(CATALOGUE))})")
    return Assumption(drug, ref)


def fitted_drugs(doc) -> set[str]:
    """Drugs with an effect in the fit: HER2 blockers with a fitted potency, and the
    chemotherapy drugs of the fit's own arms."""
    names = set(doc["names"])
    out = set()
    for d in doc["base_kill"]:
        cls = CATALOGUE[d].drug_class
        if (cls == "her2" and f"log_her2_potency#{d}" in names) or cls == "chemo":
            out.add(d)
    return out


def _refuse_unfitted(regimens, regimen_file, doc, assumptions) -> None:
    have = fitted_drugs(doc)
    for arm, reg in regimens.items():
        for d in reg.drugs:
            if d in have or d in assumptions:
                continue
            hint = sorted(x for x in have if CATALOGUE[x].drug_class == CATALOGUE[d].drug_class)
            raise FitcscInputError(
                f"{regimen_file}: arm {arm}: drug {d!r} has no fitted effect in this fit "
                f"(fitted: {', '.join(sorted(have))}); give an assumption with --assume "
                f"{d}={hint[0] if hint else 'REF'} (a fitted drug of its class) or --assume "
                f"{d}=class (the class prior), or leave the arm out")


def _extend(doc, assumptions, draws, seed, trial_sd, *, noise=True):
    """Names, base kill and draws extended by the assumptions and a new trial's effect.

    **Returns:** ``(names, base_kill, draws, flags)`` with ``flags[drug]`` the text shown
    for predictions that use the assumption."""
    names = list(doc["names"])
    base_kill = dict(doc["base_kill"])
    hyper = doc.get("hyper", {})
    cols = [draws]
    flags = {}
    n = draws.shape[0]

    def normal(shape, what):  # one stream per quantity: no draw depends on the others
        stream = np.random.default_rng([seed, zlib.crc32(what.encode())])
        return stream.standard_normal(shape) if noise else np.zeros(shape)
    for a in assumptions.values():
        cls = CATALOGUE[a.drug].drug_class
        if cls not in ("her2", "chemo"):
            raise FitcscInputError(f"--assume {a.label()}: the trial model has no effect for "
                                   f"a {cls!r} drug")
        key = "log_her2_potency" if cls == "her2" else "log_chemo_potency"
        if cls == "chemo":
            base_kill[a.drug] = _kill_per_reference(a.drug, a)
        if a.ref == "class":
            if cls == "her2":
                if "log_her2_potency" not in names:
                    raise FitcscInputError(
                        f"--assume {a.label()}: this fit has no HER2 class mean "
                        "(log_her2_potency); use --assume DRUG=REF with a fitted HER2 drug")
                mu = draws[:, names.index("log_her2_potency")]
                col = mu + hyper.get("her2_drug_sd", 1.0) * normal(n, a.drug)
            else:
                if not doc.get("reference_doses"):
                    raise FitcscInputError(
                        f"--assume {a.label()}: this fit's kill rates are not per reference "
                        "dose (an older fit); use --assume DRUG=REF with a fitted drug")
                col = hyper.get("chemo_drug_sd", 0.5) * normal(n, a.drug)
            flags[a.drug] = f"{a.drug}: class prior (no data)"
        else:
            if a.ref not in fitted_drugs(doc) or CATALOGUE[a.ref].drug_class != cls:
                raise FitcscInputError(
                    f"--assume {a.label()}: {a.ref!r} is not a fitted {cls} drug of this fit")
            ref_name = f"{key}#{a.ref}"
            if cls == "chemo":  # same kill per reference dose as REF
                base_kill[a.drug] *= (doc["base_kill"][a.ref]
                                      / _kill_per_reference(a.ref, Assumption(a.ref, "")))
            col = (draws[:, names.index(ref_name)] if ref_name in names
                   else np.zeros(n))
            flags[a.drug] = f"{a.drug}: assumed as {a.ref} (no data)"
        names.append(f"{key}#{a.drug}")
        cols.append(col[:, None])
    if any(x.startswith("trial_effect#") for x in names):  # a new trial's own population
        names.append(f"trial_effect#{NEW_TRIAL}")
        cols.append(trial_sd * normal((n, 1), NEW_TRIAL))
    return tuple(names), base_kill, np.concatenate(cols, axis=1), flags


def _kill_per_reference(drug, a) -> float:
    from .._model.family import ModelConfig

    if drug not in CHEMO_REFERENCE_DOSE:
        raise FitcscInputError(f"--assume {a.label()}: {drug!r} has no reference dose in "
                               "fitcsc._trial.model.CHEMO_REFERENCE_DOSE")
    return float(reference_kill(ModelConfig(crowding="none", drugs=(drug,),
                                            species="human"))[0])


def parse_contrast(text: str, arms, source="the regimen file") -> tuple[str, str]:
    """``--contrast A-B`` as the pair ``(A, B)`` of two different arms of ``arms``. Arm
    names may contain "-" themselves (``NEOSPHERE-TH-NEOSPHERE-THP``): the contrast is the
    one split at a "-" whose two sides are both arms; none, or more than one, is refused."""
    splits = [(text[:i], text[i + 1:]) for i, ch in enumerate(text) if ch == "-"]
    found = [(a, b) for a, b in splits if a in arms and b in arms and a != b]
    if len(found) == 1:
        return found[0]
    why = (f"two different arms of {source} ({', '.join(arms)})" if not found else
           "an unambiguous split: it reads as " + " or ".join(f"{a!r} - {b!r}" for a, b in found))
    raise FitcscInputError(f"--contrast: expected ARM-ARM with {why}, got {text!r}")


def predict(fit_dir, regimen_file, out_dir, *, pcr_definitions=None, comparators=(),
            years=(), n_patients=DEFAULT_N_PATIENTS, contrasts=(), assume=(),
            her2_dependence=None, volume_mm3=TUMOUR_VOLUME_MM3, n_draws=1000,
            burden_trial=None, seed=0, log=None) -> dict:
    """Predict every arm of ``regimen_file``; see the module docstring.

    **Returns:** the summary dictionary (also written as ``summary.json``).
    **Raises:** `FitcscInputError` for anything the fit cannot support.
    """
    import fitcsc.summary as fs

    from .._io.data import read_regimen_table

    log = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    try:
        doc = load_fit(fit_dir)
    except (FileNotFoundError, ValueError) as err:
        raise FitcscInputError(str(err)) from None
    regimens = read_regimen_table(regimen_file)
    arm_names = list(regimens)
    names_fit = set(doc["names"])
    explicit = pcr_definitions is not None
    definitions = list(dict.fromkeys(pcr_definitions or DEFINITIONS))
    for d in definitions:
        if d not in DEFINITIONS:
            raise FitcscInputError(f"--pcr-definition: expected one of {DEFINITIONS}, got {d!r}")
    missing = {d: [p for p in _NEEDS[d] if p not in names_fit] for d in definitions}
    unsupported = [d for d in definitions if missing[d]]
    if unsupported and explicit:
        d = unsupported[0]
        raise FitcscInputError(f"--pcr-definition {d!r}: this fit did not estimate "
                               f"{', '.join(missing[d])}, which that definition needs; fit "
                               "data with such counts first, or ask for another definition")
    definitions = [d for d in definitions if d not in unsupported]
    trials = doc.get("trials") or []
    if (comparators or years or burden_trial is not None) and not trials:
        raise FitcscInputError("--comparator/--years/--burden-trial: this fit has no adjuvant "
                               "data (no micrometastatic burden was estimated), so it cannot "
                               "predict DFS or hazard ratios; use a fit with adjuvant outcomes "
                               "(experiments/adjuvant_fit.py)")
    for c in comparators:
        if c not in regimens:
            raise FitcscInputError(f"{regimen_file}: column arm: comparator arm expected, "
                                   f"got {c!r} (arms: {', '.join(arm_names)})")
    pairs = [parse_contrast(c, arm_names, regimen_file) for c in contrasts]
    if n_patients < 1:
        raise FitcscInputError(f"--n-patients: expected a trial arm size >= 1, got {n_patients}")
    if burden_trial is not None and burden_trial not in trials:
        raise FitcscInputError(f"--burden-trial: expected one of {trials} (the trials whose "
                               f"burden the fit estimated), got {burden_trial!r}")
    trial = burden_trial if burden_trial is not None else (_default_burden(trials))
    assumptions = {}
    for text in assume:
        a = parse_assumption(text)
        assumptions[a.drug] = a
    _refuse_unfitted(regimens, regimen_file, doc, assumptions)
    do_dfs = bool(trials) and bool(years or comparators)
    years = list(years) or ([3.0] if do_dfs else [])

    rng = np.random.default_rng(seed)
    try:
        saved = load_draws(fit_dir, doc)
    except (OSError, ValueError) as err:
        raise FitcscInputError(f"{fit_dir}: {err}") from None
    if saved is not None:  # the fit's own posterior draws (e.g. PSIS-reweighted)
        draws0 = saved[rng.choice(len(saved), size=n_draws, replace=len(saved) < n_draws)]
        posterior = doc["posterior"]
    else:  # the default posterior: Laplace draws, predictions linearised at the MAP
        draws0 = fs.laplace_draws(np.asarray(doc["z"]), np.asarray(doc["cov"]),
                                  n_draws=n_draws, key=jax.random.PRNGKey(seed))
        posterior = {"sampler": "linear", "method": LABELS["linear"]
                     + " (the fit saved no draws: drawn from its covariance)"}
    z_map0 = np.asarray(doc["z"])[None, :]
    trial_sd = doc.get("hyper", {}).get("trial_sd", 1.0)  # a new trial's shift sd
    names, base_kill, draws, flags = _extend(doc, assumptions, np.asarray(draws0), seed,
                                             trial_sd)
    z_map = _extend(doc, assumptions, z_map0, seed, 0.0, noise=False)[2][0]
    fixed = dict(doc["fixed"])
    if her2_dependence is not None:
        fixed["her2_dependence_csc"], fixed["her2_dependence_bulk"] = map(float,
                                                                          her2_dependence)
        names_set = set(names)
        if {"her2_dependence_csc", "her2_dependence_bulk"} & names_set:
            raise FitcscInputError("--her2-dependence: this fit estimated the HER2 "
                                   "dependence; it cannot be set")
    arm_flags = {a: "; ".join(flags[d] for d in regimens[a].drugs if d in flags)
                 for a in arm_names}
    if her2_dependence is not None and tuple(map(float, her2_dependence)) != (1.0, 1.0):
        note = (f"HER2 dependence h_S={her2_dependence[0]:g}, h_D={her2_dependence[1]:g} "
                "(assumed, not fitted)")
        arm_flags = {a: "; ".join(x for x in (f, note) if x) for a, f in arm_flags.items()}
    opts = dict(doc["options"])
    neo = [Arm(a, regimens[a], pcr_definition="ypT0/is ypN0", trial=NEW_TRIAL,
               volume_mm3=volume_mm3) for a in arm_names]
    try:
        her2_scale = saved_her2_scale(doc)
        tm_neo = TrialModel.build(neo, names, fixed=fixed, base_kill=base_kill,
                                  her2_scale=her2_scale, **opts)
        tm_adj = (TrialModel.build([Arm(a, regimens[a], setting="adjuvant", trial=trial)
                                    for a in arm_names], names, fixed=fixed,
                                   base_kill=base_kill, her2_scale=her2_scale, **opts)
                  if do_dfs else None)
    except ValueError as err:
        raise FitcscInputError(f"{regimen_file}: {err}") from None
    horizon = jnp.asarray(years, float) * YEAR
    ci = [arm_names.index(c) for c in comparators]

    def endpoints(z):
        total, breast, status = tm_neo.pcr_pair(z)
        pcr = jnp.stack([tm_neo.by_definition(z, total, breast, (d,) * len(arm_names))
                         for d in definitions]) if definitions else jnp.zeros((0, len(neo)))
        out = {"pcr": pcr, "status": status}
        if do_dfs:
            dfs, _, status_a = tm_adj.dfs(z, horizon)  # (arms, years)
            out["dfs"] = dfs
            # no events in the comparator by the horizon: the ratio is undefined (NaN)
            out["hr"] = (jnp.stack([jnp.where(dfs[i][None, :] < 1.0 - 1e-9,
                                              hazard_ratio(dfs, dfs[i][None, :]), jnp.nan)
                                    for i in ci]) if ci else jnp.zeros((0,) + dfs.shape))
            out["status"] = jnp.maximum(status, status_a)
        return out

    point = jax.tree_util.tree_map(np.asarray, jax.jit(endpoints)(jnp.asarray(z_map)))
    # the delta method for a "linear" posterior: every endpoint linearised at the MAP on
    # its link scale (the new trial's effect and class-prior drugs at their centres)
    vals = draw_values(endpoints, draws, batch=100,
                       linearise_at=linearise_at(posterior.get("sampler", ""), z_map),
                       link={"pcr": "logit", "status": "map", "dfs": "logit", "hr": "log"})
    pcr = vals["pcr"]  # (draws, definitions, arms)
    # binomial sampling per arm from the arm's own stream, so that an arm's numbers do not
    # depend on the other arms of the file
    counts = np.stack([np.random.default_rng([seed, zlib.crc32(a.encode())]).binomial(
        n_patients, np.clip(pcr[..., i], 0.0, 1.0)) for i, a in enumerate(arm_names)],
        axis=-1) / n_patients
    status = np.vectorize(outcome, otypes=[str])(np.max(vals["status"], axis=0))
    out = pathlib.Path(out_dir)
    rows = []
    for k, d in enumerate(definitions):
        for i, a in enumerate(arm_names):
            p, c = pcr[:, k, i], counts[:, k, i]
            rows.append([a, d, n_patients, _f(point["pcr"][k, i]), _f(p.mean()),
                         *_interval(p), *_interval(c), arm_flags[a], status[i]])
    write_atomic(out / "predictions.csv", csv_text(
        ["arm", "pcr_definition", "n_patients", "pcr_map", "pcr_mean", "pcr_lo", "pcr_hi",
         "pcr_pred_lo", "pcr_pred_hi", "assumptions", "status"], rows))
    c_rows = []
    for a, b in pairs:
        ia, ib = arm_names.index(a), arm_names.index(b)
        for k, d in enumerate(definitions):
            diff = pcr[:, k, ia] - pcr[:, k, ib]
            obs = counts[:, k, ia] - counts[:, k, ib]
            c_rows.append([f"{a}-{b}", d, n_patients, _f(diff.mean()), *_interval(diff),
                           _f(np.mean(diff > 0)), *_interval(obs),
                           "; ".join(dict.fromkeys(x for x in (arm_flags[a], arm_flags[b])
                                                   if x))])
    if pairs:
        write_atomic(out / "contrasts.csv", csv_text(
            ["contrast", "pcr_definition", "n_patients_per_arm", "diff_mean", "diff_lo",
             "diff_hi", "prob_a_better", "pred_diff_lo", "pred_diff_hi", "assumptions"],
            c_rows))
    write_atomic(out / "pcr_draws.csv", csv_text(
        ["draw", "pcr_definition", *arm_names],
        [[j, d, *[f"{v:.6g}" for v in pcr[j, k]]] for k, d in enumerate(definitions)
         for j in range(pcr.shape[0])]))
    d_rows = []
    curves = None
    if do_dfs:
        for iy, y in enumerate(years):
            for i, a in enumerate(arm_names):
                base = [a, f"{y:g}", _f(point["dfs"][i, iy]), _f(vals["dfs"][:, i, iy].mean()),
                        *_interval(vals["dfs"][:, i, iy])]
                if not ci:
                    d_rows.append(base + ["", "", "", "", arm_flags[a]])
                for j, c in enumerate(comparators):
                    h = vals["hr"][:, j, i, iy]
                    if np.mean(np.isnan(h)) > 0.05:  # the comparator has no events
                        d_rows.append(base + [c, "", "", "", "; ".join(
                            x for x in (arm_flags[a], f"HR undefined: {c} has no DFS events "
                                        f"by {y:g} years in most draws") if x)])
                        continue
                    h = h[np.isfinite(h)]
                    d_rows.append(base + [c, _f(np.exp(np.mean(np.log(h)))), *_interval(h),
                                          arm_flags[a]])
        write_atomic(out / "dfs.csv", csv_text(
            ["arm", "years", "dfs_map", "dfs_mean", "dfs_lo", "dfs_hi", "comparator",
             "dfs_hr_geomean", "dfs_hr_lo", "dfs_hr_hi", "assumptions"], d_rows))
        days = jnp.linspace(0.0, max(max(years), 5.0), 61) * YEAR
        curves = np.asarray(tm_adj.dfs(jnp.asarray(z_map), days)[0])
        write_atomic(out / "dfs_curves.csv", csv_text(
            ["arm", "years", "dfs"], [[a, f"{float(t) / YEAR:.4g}", f"{curves[i, k]:.5f}"]
                                      for i, a in enumerate(arm_names)
                                      for k, t in enumerate(days)]))
        curves = (np.asarray(days) / YEAR, curves)
    _figure(arm_names, definitions, pcr, counts, curves, comparators, out / "predictions.png")
    for a, f in arm_flags.items():
        if f:
            log(f"fitcsc predict: warning: arm {a}: prior-only assumption: {f}")
    # the fit's posterior diagnostics (PSIS k_hat; MCMC R-hat, divergences), checked
    # here again: a flag is shown on screen whatever --quiet says, and in the report
    posterior = {k: v for k, v in posterior.items() if k != "flag"}
    flag = posterior_flag(posterior)
    if flag:
        posterior["flag"] = flag
        log(f"fitcsc predict: warning: {flag}")
    # the new trial's effect is drawn from the fit's between-trial prior: flag a fit
    # whose own trials spread more than it allows
    spread = trial_spread_check(doc["names"], doc["z"], trial_sd)
    spread_flag = trial_spread_warning(spread)
    if spread_flag:
        log(f"fitcsc predict: warning: {spread_flag}")
    # how intervals of this fit's configuration held on trials left out of the fit
    validation, validation_line = out_of_sample(fit_dir)
    log(f"fitcsc predict: warning: {validation_line}")
    for d in unsupported:
        log(f"fitcsc predict: note: pCR definition {d!r} not predicted: the fit did not "
            f"estimate {', '.join(missing[d])}")
    summary = {
        "job": JOB, "fit": str(fit_dir),
        "regimens": str(regimen_file), "n_arms": len(arm_names),
        "n_failed": int(np.sum(status != "ok")), "pcr_definitions": definitions,
        "pcr_definitions_refused": {d: missing[d] for d in unsupported},
        "n_patients": n_patients, "contrasts": [f"{a}-{b}" for a, b in pairs],
        "comparators": list(comparators), "dfs_years": years,
        "burden_trial": trial if do_dfs else None, "dfs": do_dfs,
        "assumptions": {d: f for d, f in flags.items()},
        "her2_dependence": list(map(float, her2_dependence)) if her2_dependence else [1.0, 1.0],
        "volume_mm3": volume_mm3, "new_trial_effect": any(
            n.startswith("trial_effect#") for n in doc["names"]),
        "trial_spread_check": spread, "trial_spread_flag": spread_flag,
        "out_of_sample": validation, "out_of_sample_flag": validation_line,
        "n_draws": n_draws, "seed": seed, "posterior": posterior,
        "interval": "95% percentile intervals over posterior draws of the fit; pcr_pred_*: "
                    "the rate a trial arm of n_patients observes (binomial per draw)",
        "hazard_ratio": "ratio of cumulative hazards at the horizon",
        "wall_s": round(time.perf_counter() - t_start, 2),
        **run_record(posterior_draws=seed, binomial_counts=seed),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    from .report import write_report

    write_report(out)
    return summary


# Leave-one-trial-out records (`experiments/clinical_validation.py`, the default
# posterior) of fits on the shipped neoadjuvant data (23 arms of nine trials), by the
# fit's configuration: how many held-out arms fell inside their 95% predictive interval.
# `predict` reports the record of its fit's configuration, or that there is none.
# tests/test_predict.py checks each record against its run's summary.json.
VALIDATION_DIR = "experiments/results/clinical_validation"
# the trials (pcr_arms.csv's names) those runs held out in turn
VALIDATED_TRIALS = ("CHER-LOB", "GeparQuattro", "GeparQuinto", "MDACC (Buzdar 2005)",
                    "MDACC (Buzdar 2007 extra cohort)", "NOAH", "NSABP B-41", "NeoALTTO",
                    "NeoSphere", "TRYPHAENA")
OUT_OF_SAMPLE = (
    {"run": "continuous_kill_alpha_links_10trials", "structure": "continuous_kill_alpha",
     "hyper": "fixed", "trial_sd": 1.0, "links": True, "n_arms": 23, "n_inside": 16,
     "mean_signed_error_points": -5.2, "mean_width_points": 39.4},
    {"run": "continuous_kill_alpha_links_10trials_trial_sd_1.4",
     "structure": "continuous_kill_alpha", "hyper": "fixed", "trial_sd": 1.4, "links": True,
     "n_arms": 23, "n_inside": 18, "mean_signed_error_points": -5.1,
     "mean_width_points": 42.8},
    {"run": "continuous_kill_alpha_hyper_auto_links_10trials",
     "structure": "continuous_kill_alpha", "hyper": "auto", "trial_sd": None, "links": True,
     "n_arms": 23, "n_inside": 21, "mean_signed_error_points": -3.3,
     "mean_width_points": 63.0},
    {"run": "continuous_kill_alpha_micromet_links_10trials_fit_long_term",
     "structure": "continuous_kill_alpha_micromet", "hyper": "fixed", "trial_sd": 1.0,
     "links": True, "n_arms": 23, "n_inside": 12, "mean_signed_error_points": -0.8,
     "mean_width_points": 32.7},
    {"run": "continuous_kill_alpha_response_hyper_auto_links",
     "structure": "continuous_kill_alpha_response", "hyper": "auto", "trial_sd": None,
     "links": True, "n_arms": 23, "n_inside": 23, "mean_signed_error_points": 2.6,
     "mean_width_points": 59.0},
)
# below this share of held-out arms inside their 95% intervals, the line says the
# intervals hold fewer than they claim (with 23 arms, 90% is about one binomial sd below
# 95%)
NOMINAL_SHARE = 0.9


def _configuration(fit_dir) -> dict | None:
    """The fit's configuration from the `fitcsc run` summary.json beside its fit.json
    (``fit_dir``: the folder or its fit.json; None without one, or for a quick run)."""
    path = pathlib.Path(fit_dir)
    path = (path if path.is_dir() else path.parent) / "summary.json"
    try:
        s = json.loads(path.read_text())
        m = s["model"]
        if s.get("quick"):
            return None
        return {"structure": m["structure"],
                "hyper": "auto" if m.get("hyper_choice", "given") != "given" else "fixed",
                "trial_sd": float(m["trial_sd"]),
                "links": bool(s["data"].get("pcr_outcome_links")),
                "n_arms": int(s["n_arms"]),
                "trials": tuple(sorted(s["data"]["trials"]))}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def out_of_sample(fit_dir) -> tuple[dict | None, str]:
    """The leave-one-trial-out record of the fit's configuration (`OUT_OF_SAMPLE`: the
    same trials (`VALIDATED_TRIALS`) and number of fitted arms, structure, prior-sd
    choice, between-trial sd when fixed and pCR-outcome links), and the line that reports
    it, or that says there is none."""
    conf = _configuration(fit_dir)
    if conf is None:
        return None, ("out of sample: this fit has no configuration record (summary.json "
                      "of `fitcsc run`, not a quick run), so its pCR intervals for a new "
                      "trial have no leave-one-trial-out check "
                      "(experiments/clinical_validation.py)")
    for r in OUT_OF_SAMPLE:
        if (conf["trials"] == VALIDATED_TRIALS
                and all(r[k] == conf[k] for k in ("structure", "hyper", "links", "n_arms"))
                and (r["hyper"] == "auto" or math.isclose(r["trial_sd"], conf["trial_sd"]))):
            share = r["n_inside"] / r["n_arms"]
            verdict = ("fewer than their nominal 95%" if share < NOMINAL_SHARE
                       else "about their nominal 95%")
            return dict(r), (
                f"out of sample: with this fit's configuration, leave-one-trial-out 95% "
                f"predictive intervals of pCR held {r['n_inside']} of {r['n_arms']} held-out arms "
                f"({100 * share:.0f}%; mean width {r['mean_width_points']:.0f} points, mean "
                f"signed error {r['mean_signed_error_points']:+.1f}; "
                f"{VALIDATION_DIR}/{r['run']}): pCR intervals for a new trial hold {verdict}")
    sd = "chosen per fit" if conf["hyper"] == "auto" else f"{conf['trial_sd']:g}"
    return None, (f"out of sample: no leave-one-trial-out record for this fit's "
                  f"configuration (structure {conf['structure']}, between-trial sd {sd}, "
                  f"links {'on' if conf['links'] else 'off'}, {conf['n_arms']} arms of "
                  f"{len({trial_family(t) for t in conf['trials']})} trials): its "
                  "pCR intervals for a new trial are not checked on held-out trials "
                  "(experiments/clinical_validation.py)")


def _default_burden(trials):
    """B-31/N9831's burden when fitted (patients starting adjuvant chemotherapy after
    surgery, the usual setting of a new regimen), else the fit's first trial."""
    for t in trials:
        if t.startswith("B-31"):
            return t
    return trials[0] if trials else ""


def _f(v) -> str:
    return f"{float(v):.4f}"


def _interval(x, prob=0.95):
    lo, hi = np.quantile(np.asarray(x), [(1 - prob) / 2, (1 + prob) / 2])
    return _f(lo), _f(hi)


def _figure(names, definitions, pcr, counts, curves, comparators, path):
    plt = pyplot()
    n_panels = 1 if curves is None else 2  # DFS beside pCR only when predicted
    fig, axes = plt.subplots(1, n_panels, figsize=(6.5 * n_panels, 0.35 * len(names) + 3.5),
                             squeeze=False, constrained_layout=True)
    a1 = axes[0, 0]
    y = np.arange(len(names))[::-1]
    for k, d in enumerate(definitions):
        off = 0.12 * (k - (len(definitions) - 1) / 2)
        p, c = 100 * pcr[:, k, :], 100 * counts[:, k, :]
        a1.hlines(y + off, np.quantile(c, 0.025, axis=0), np.quantile(c, 0.975, axis=0),
                  color=f"C{k}", lw=1, alpha=0.5)
        a1.errorbar(p.mean(axis=0), y + off, fmt="o", ms=4, color=f"C{k}", label=d,
                    xerr=[np.maximum(p.mean(axis=0) - np.quantile(p, 0.025, axis=0), 0),
                          np.maximum(np.quantile(p, 0.975, axis=0) - p.mean(axis=0), 0)],
                    capsize=2, lw=2)
    a1.set_yticks(y, names, fontsize=7)
    a1.set(xlabel="predicted pCR %: rate (thick, 95%) and a trial arm's observed rate "
           "(thin, 95%)", xlim=(0, 100), ylim=(-0.6, len(names) - 0.4),
           title="neoadjuvant" + ("" if curves is not None else
                                  " (no DFS: the fit has no adjuvant data)"))
    if definitions:
        a1.legend(fontsize=7, title="pCR definition", title_fontsize=7)
    if curves is not None:
        years, dfs = curves
        a2 = axes[0, 1]
        for i, a in enumerate(names):
            a2.plot(years, 100 * dfs[i], label=a, lw=2 if a in comparators else 1)
        a2.set(xlabel="years from start of adjuvant therapy", ylabel="DFS % (MAP)",
               ylim=(max(0, 100 * dfs.min() - 5), 100), title="adjuvant")
        a2.legend(fontsize=7)
    save_figure(fig, path)


def _pair(text):
    s, sep, d = text.partition(",")
    try:
        return float(s), float(d)
    except ValueError:
        raise FitcscInputError(f"--her2-dependence: expected CSC,BULK numbers in [0, 1], "
                               f"got {text!r}") from None


def _predict_cli(args) -> int:
    from .._io.data import resolve_input
    from .compile import enable_compile_cache

    enable_compile_cache()
    dep = _pair(args.her2_dependence) if args.her2_dependence else None
    if dep and not all(0.0 <= v <= 1.0 for v in dep):
        raise FitcscInputError(f"--her2-dependence: expected numbers in [0, 1], got "
                               f"{args.her2_dependence!r}")
    if args.volume_mm3 <= 0:
        raise FitcscInputError(f"--volume-mm3: expected a tumour volume > 0 mm3, got "
                               f"{args.volume_mm3}")
    summary = predict(args.fit, resolve_input(args.regimens), args.out,
                      pcr_definitions=args.pcr_definition, comparators=args.comparator or (),
                      years=args.years or (), n_patients=args.n_patients,
                      contrasts=args.contrast or (), assume=args.assume or (),
                      her2_dependence=dep, volume_mm3=args.volume_mm3, n_draws=args.draws,
                      burden_trial=args.burden_trial, seed=args.seed)
    files = ["predictions.csv", "pcr_draws.csv", "predictions.png", "summary.json",
             "report.md"]
    files += ["contrasts.csv"] if summary["contrasts"] else []
    files += ["dfs.csv", "dfs_curves.csv"] if summary["dfs"] else []
    if not args.quiet:  # warnings and flags print whatever --quiet says (predict's log)
        print(f"fitcsc predict: {summary['n_arms']} arms x {len(summary['pcr_definitions'])} "
              f"pCR definitions ({summary['n_failed']} failed) in {summary['wall_s']:.1f} s "
              f"-> {args.out}/{{{', '.join(files)}}}")
    return 0 if summary["n_failed"] == 0 else 1


def add_predict_command(subparsers, common) -> None:
    """``fitcsc predict``: pCR and DFS for any regimen from a saved trial fit."""
    p = subparsers.add_parser(
        "predict", parents=[common], help="predict pCR and DFS for regimens from a saved fit",
        description="From a saved trial fit (a directory with fit.json, e.g. "
        "experiments/results/pcr_fit or experiments/results/adjuvant_fit), predict for "
        "every arm of a regimen table, as the arms of one new trial: the pCR rate under "
        "every pCR definition the fit supports (surgery 4 weeks after the last dose), with "
        "95 percent intervals of the rate and of what a trial arm of --n-patients would "
        "observe; paired contrasts; and, from a fit with adjuvant data, DFS and hazard "
        "ratios of the same regimens given as adjuvant therapy. A drug the fit has no "
        "effect for is refused unless --assume gives one; such predictions are flagged "
        "prior-only. The regimen format is documented in data/README.md. Exit 0 ok, 1 if an "
        "arm failed, 2 on refused input.",
        epilog="example: fitcsc predict --fit experiments/results/adjuvant_fit --regimens "
        "my_trial.csv --out runs/my_trial --contrast TCH-TC --comparator TC --years 3 "
        "--assume carboplatin=class")
    p.add_argument("--fit", metavar="RUN_DIR", required=True,
                   help="directory holding fit.json (or the file itself)")
    p.add_argument("--regimens", metavar="FILE", required=True, help="regimen table")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.add_argument("--pcr-definition", action="append", choices=DEFINITIONS, default=None,
                   help="pCR definition (repeatable; default: every definition the fit "
                   "supports)")
    p.add_argument("--n-patients", type=int, default=DEFAULT_N_PATIENTS,
                   help=f"trial arm size for the predictive intervals (default "
                   f"{DEFAULT_N_PATIENTS})")
    p.add_argument("--contrast", action="append", metavar="A-B",
                   help="paired contrast of two arms' pCR (repeatable)")
    p.add_argument("--comparator", action="append", metavar="ARM",
                   help="arm the DFS hazard ratios are against (repeatable; needs a fit "
                   "with adjuvant data)")
    p.add_argument("--years", type=float, action="append",
                   help="DFS landmark and hazard-ratio horizon in years (repeatable; "
                   "default 3 when DFS is asked for)")
    p.add_argument("--assume", action="append", metavar="DRUG=REF",
                   help="effect for a drug the fit has none for: a fitted drug of its class "
                   "(chemotherapy: equal kill per reference dose) or 'class' for a draw from "
                   "the fit's class prior (repeatable; flagged prior-only)")
    p.add_argument("--her2-dependence", metavar="CSC,BULK", default=None,
                   help="HER2 dependence of CSCs and bulk relative to the fitted HER2+ "
                   "tumours, e.g. 0.3,0 for a HER2-low population (an assumption; default "
                   "1,1)")
    p.add_argument("--volume-mm3", type=float, default=TUMOUR_VOLUME_MM3,
                   help=f"median primary tumour volume (default {TUMOUR_VOLUME_MM3:g} mm3, a "
                   "3-cm tumour; 65000 for a 5-cm locally advanced one)")
    p.add_argument("--burden-trial", default=None, metavar="TRIAL",
                   help="whose fitted micrometastatic burden the adjuvant predictions use "
                   "(default: B-31/N9831 when fitted: patients starting adjuvant "
                   "chemotherapy after surgery)")
    p.add_argument("--draws", type=int, default=1000,
                   help="posterior draws for the intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_predict_cli)
