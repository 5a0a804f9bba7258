"""The main job (`fitcsc run`): the clinical trial model fitted to the published pCR counts.

Fits one CSC trial model (`fitcsc._trial.model.TrialModel`, the structure chosen out of
sample by experiments/clinical_validation.py) with shared drug effects to every
neoadjuvant HER2+ arm with a pCR count in ``data/clinical/pcr_arms.csv``, each under its
own regimen (``regimens.csv``) and pCR definition; MAP by Levenberg-Marquardt from
several starts; posterior by Laplace draws with every prediction linearised at the MAP
(``posterior="linear"``, the default: the delta method, calibrated by simulation in
benchmarks/trial_calibration.py), Laplace draws reweighted with Pareto-smoothed
importance sampling (``"psis"``: PSIS k_hat reported, and flagged above 0.7), plain
Laplace draws (``"laplace"``), or NUTS / ChEES-HMC chains warm-started from the
MAP (``"nuts"``, ``"chees"``: R-hat, ESS and divergences reported, flagged at R-hat >
1.01 or any divergence); `fitcsc._trial.posterior`.

Writes to ``out_dir``: ``fit.json`` (+ its draws, a saved fit `fitcsc predict --fit` can
use), ``arms.csv`` (published vs fitted pCR per arm, with intervals), ``posterior.csv``
(ArviZ summary on the natural scale), ``summary.json``, and ``report.md`` with
``pcr_fit.png``, built from those files by `fitcsc._jobs.report.write_report` (data, model
and settings, fit, parameter table with uncertainty, predictive check, warnings).

NOAH (locally advanced, T3/T4) starts from a 5-cm median tumour (65,000 mm3), the
others from a 3-cm one (14,000 mm3): an assumption, written into the report.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import beta

from .._io.files import csv_text, write_atomic
from .simulate_job import REPO_DATA

VOLUMES = {"NOAH": 65000.0}  # locally advanced: 5-cm median primary (assumption)
QUICK_TRIALS = ("NeoSphere",)
# chosen out of sample (experiments/clinical_validation.py, leave one trial out, with the
# links): growth and chemotherapy sensitivity as two powers of one patient factor held
# 11-12 of 13 left-out arms at a mean signed error near 0 where one factor
# ("continuous_kill") held 10 at +5.6 points, and in sample its trials' shifts fit their
# prior (experiments/results/pcr_fit)
DEFAULT_STRUCTURE = "continuous_kill_alpha"
# the hierarchical prior sds (between-trial sd of log burden, a HER2 blocker's and a
# chemotherapy drug's log potency around their class): "fixed" at the values given (the
# default), or "auto", the largest Laplace marginal likelihood
# (`fitcsc._trial.fit.fit_prior_sds`). Chosen out of sample
# (experiments/clinical_validation.py, leave one trial out, 13 arms): both held 12 of 13
# arms inside their 95% predictive intervals; "auto" chose the largest trial sd on its
# grid (2) in most folds and widened the intervals (mean width 73 against 67 points)
DEFAULT_HYPER = "fixed"
DEFAULT_TRIAL_SD = 1.0  # the value when fixed (the starting value of "auto")
PRIOR_ONLY_RATIO = 0.9  # posterior sd / prior sd above this: the data say little
# a pCR-outcome link is flagged when fewer than this share of the no-pCR patients has an
# event by its horizon: its HR is then a ratio of vanishing hazards (NOAH's chemotherapy
# arm had 57% events by 5 years, NeoSphere's TH arm 19%: experiments/pcr_cure.py)
LINK_MIN_EVENTS = 0.01


def ci95(k: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95% interval of a binomial proportion ``k / n``."""
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def load_pcr(clinical_dir=None, trials=None):
    """``(arms, observations)`` of the pCR counts in ``clinical_dir`` (default data/clinical)."""
    from .._io.clinical import read_clinical
    from .._io.data import read_regimen_table
    from .._trial.fit import pcr_observations

    d = pathlib.Path(clinical_dir) if clinical_dir is not None else REPO_DATA / "clinical"
    regimens = read_regimen_table(d / "regimens.csv")
    rows = read_clinical(d / "pcr_arms.csv")
    return pcr_observations(rows, regimens, volumes=VOLUMES, trials=trials)


NEO_LANDMARK_YEARS = 5.0


def load_neo_landmarks(arms, clinical_dir=None, years: float = NEO_LANDMARK_YEARS):
    """The published EFS/DFS landmarks at ``years`` of the neoadjuvant ``arms`` (rows of
    ``adjuvant_outcomes.csv`` in ``clinical_dir`` whose ``arm_id`` is the arm's name),
    and each such arm's whole course (the row's ``regimen_id``: preoperative then
    postoperative therapy, from ``regimens.csv``) for `TrialModel.build`'s ``courses``.
    **Returns:** ``(landmarks, courses)``: `LandmarkObservation` list (arm = the pCR arm,
    ``n`` the randomised patients) and ``{arm name: Arm}``."""
    import dataclasses

    from .._io.clinical import read_clinical
    from .._io.data import read_regimen_table
    from .._trial.fit import LandmarkObservation

    d = pathlib.Path(clinical_dir) if clinical_dir is not None else REPO_DATA / "clinical"
    regimens = read_regimen_table(d / "regimens.csv")
    rows = read_clinical(d / "adjuvant_outcomes.csv")
    landmarks, courses = [], {}
    for a in arms:
        if a.setting != "neoadjuvant":
            continue
        hit = [r for r in rows if r["arm_id"] == a.name and r["landmark_years"] == years
               and r["endpoint"] in ("EFS", "DFS") and r["landmark_rate_pct"] is not None]
        if not hit:
            continue
        r = hit[0]
        landmarks.append(LandmarkObservation(a.name, float(years),
                                             float(r["landmark_rate_pct"]) / 100.0,
                                             int(r["n_randomized"])))
        if r["regimen_id"] != a.regimen.name:
            if r["regimen_id"] not in regimens:
                raise ValueError(f"{d / 'adjuvant_outcomes.csv'}: column regimen_id, arm "
                                 f"{a.name}: expected a regimen of regimens.csv, got "
                                 f"{r['regimen_id']!r}")
            courses[a.name] = dataclasses.replace(a, name=r["regimen_id"],
                                                  regimen=regimens[r["regimen_id"]])
    return landmarks, courses


def load_links(arms, clinical_dir=None):
    """`LinkObservation` rows of `fitcsc._trial.fit.LINKS_USED` from
    ``pcr_outcome_links.csv`` in ``clinical_dir`` (default data/clinical), pooled over the
    ``arms`` given a HER2 blocker (the treated patients)."""
    from .._io.clinical import read_clinical
    from .._model.drugs import CATALOGUE
    from .._trial.fit import link_observations

    d = pathlib.Path(clinical_dir) if clinical_dir is not None else REPO_DATA / "clinical"
    treated = [a.name for a in arms
               if any(CATALOGUE[g].drug_class == "her2" for g in a.regimen.drugs)]
    if not treated:
        return []
    return link_observations(read_clinical(d / "pcr_outcome_links.csv"), treated)


def clinical_fit_job(out_dir, *, quick: bool = False, starts: int = 4, steps: int = 200,
                     nodes: int = 13, her2_nodes: int = 7, structure: str = DEFAULT_STRUCTURE,
                     trial_sd: float = DEFAULT_TRIAL_SD, her2_drug_sd: float = 1.0,
                     hyper: str = DEFAULT_HYPER,
                     draws: int = 2000, seed: int = 0, clinical_dir=None,
                     posterior: str = "linear", chains: int = 4, warmup: int = 500,
                     links: bool = True,
                     log: Callable[[str], None] | None = None) -> dict:
    """Fit the trial model to the published pCR counts and write the run folder.

    ``quick``: NeoSphere's arms only, 1 start, 25 steps, at most 200 draws (MCMC: at
    most 100 warm-up steps), coarse grids (a
    smoke run, not a result). ``posterior``: ``"linear"`` (the default: Laplace draws,
    predictions linearised at the MAP), ``"psis"``, ``"laplace"``, ``"nuts"`` or
    ``"chees"`` (`fitcsc._trial.posterior.posterior_draws`; ``chains`` and ``warmup``
    per chain for the last two). ``links``: the published HER2+ hazard ratios of pCR vs
    no pCR (`fitcsc._trial.fit.LINKS_USED`, ``pcr_outcome_links.csv``) enter the
    likelihood through `TrialModel.pcr_outcome`, with the neoadjuvant distant burden and
    the fraction of micrometastatic CSCs out of the drugs' reach free: pCR and recurrence
    come from one residual state per patient, and the adjuvant benefit predicted from the
    fit is bounded by what pCR patients' recurrences say (without ``links`` every
    micrometastatic CSC is in reach). ``log``: called with one line per phase (None:
    silent).
    **Returns:** the summary written to ``summary.json``.
    """
    import fitcsc.summary as fs

    from .._io.files import run_record
    from .._trial.fit import (
        HYPERS,
        Objective,
        TrialData,
        draw_values,
        fit_prior_sds,
        fit_trials,
        quadrature_check,
        quadrature_warning,
        save_fit,
        trial_spread_check,
        trial_spread_warning,
    )
    from .._trial.model import STRUCTURES, TrialModel, to_natural
    from .._trial.posterior import LABELS, METHODS, linearise_at, posterior_draws
    from .sample_job import progress_printer

    if structure not in STRUCTURES:
        raise ValueError(f"structure {structure!r} is not one of {sorted(STRUCTURES)}")
    if posterior not in METHODS:
        raise ValueError(f"posterior {posterior!r} is not one of {METHODS}")
    if quick:
        starts, steps, nodes, her2_nodes = 1, 25, 9, 5
        draws, warmup = min(draws, 200), min(warmup, 100)
    say = log or (lambda _line: None)
    t_start = time.perf_counter()
    out = pathlib.Path(out_dir)
    arms, obs = load_pcr(clinical_dir, QUICK_TRIALS if quick else None)
    neo_lm, courses = load_neo_landmarks(arms, clinical_dir) if links else ([], {})
    tm = TrialModel.build(arms, n_nodes=nodes, n_her2=her2_nodes, pcr_outcome=links,
                          courses=courses, **({"protected": links} | STRUCTURES[structure]))
    link_obs = load_links(arms, clinical_dir) if links else []
    if hyper not in ("auto", "fixed"):
        raise ValueError(f"hyper must be 'auto' or 'fixed', got {hyper!r}")
    objective = Objective(tm, TrialData(pcr=obs, links=link_obs, neo_landmarks=neo_lm),
                          trial_sd=trial_sd, her2_drug_sd=her2_drug_sd)
    say(f"fitting {len(tm.names)} parameters to {len(obs)} arms"
        + (f", {len(link_obs)} pCR-outcome hazard ratios and {len(neo_lm)} EFS/DFS "
           "landmarks" if link_obs else "") + " "
        f"({starts} start{'s' * (starts > 1)}, at most {steps} steps each)")
    t_fit = time.perf_counter()
    fit = fit_trials(objective, n_starts=starts, max_steps=steps, seed=seed)
    evidence = None
    if hyper == "auto":
        say(f"prior sds {', '.join(HYPERS)}: Laplace marginal likelihood")
        fit, objective, evidence = fit_prior_sds(objective, fit, which=HYPERS,
                                                 max_steps=steps)
    fit_s = time.perf_counter() - t_fit
    quadrature = quadrature_check(objective, fit.z)
    say(f"quadrature check: negative log posterior {quadrature['loss']:.3f} at {nodes} "
        f"responsiveness nodes, {quadrature['loss_check']:.3f} at "
        f"{quadrature['n_nodes_check']}")

    say(f"posterior: {draws} draws, {LABELS[posterior]}")
    t_post = time.perf_counter()
    progress = progress_printer(quiet=log is None)  # on a terminal only
    post = posterior_draws(objective, fit, draws, jax.random.PRNGKey(seed), method=posterior,
                           num_chains=chains, num_warmup=warmup, progress=progress)
    z_draws = post.equal_weight(seed)  # PSIS: resampled by the weights
    record = post.record()
    if posterior == "psis":
        record["method"] += ", resampled"
    k_hat = record.get("k_hat")
    idata = fs.to_inference_data(z_draws, list(tm.names),
                                 method="laplace" if posterior not in ("nuts", "chees")
                                 else posterior,
                                 transforms={n: (lambda v, n=n: np.asarray(
                                     to_natural(n, jnp.asarray(v)))) for n in tm.names})
    rows_post = fs.summarize(idata)
    out.mkdir(parents=True, exist_ok=True)
    fs.write_summary_csv(rows_post, out / "posterior.csv")
    z = jnp.asarray(fit.z)
    rates, status = tm.pcr_rates(z)
    pcr_draws = draw_values(lambda zz: tm.pcr_rates(zz)[0], z_draws, batch=100,
                            linearise_at=linearise_at(posterior, fit.z))
    lo, hi = np.quantile(pcr_draws, [0.025, 0.975], axis=0)
    total = tm.pcr_pair(z)[0]
    link_rows = []
    if link_obs:
        l_point = np.exp(np.asarray(objective.link_log_hr(z)))
        l_draws = draw_values(lambda zz: jnp.exp(objective.link_log_hr(zz)), z_draws,
                              batch=100, linearise_at=linearise_at(posterior, fit.z),
                              link="log")
        l_lo, l_hi = np.quantile(l_draws, [0.025, 0.975], axis=0)
        s_pcr, s_no = (np.asarray(v) for v in objective.link_survival(z))
        link_rows = [{"link": o.name, "years": o.years,
                      "published_hr": float(np.exp(o.log_hr)),
                      "published_lo95": float(np.exp(o.log_hr - 1.959964 * o.se)),
                      "published_hi95": float(np.exp(o.log_hr + 1.959964 * o.se)),
                      "fitted_hr": float(l_point[k]), "fitted_lo95": float(l_lo[k]),
                      "fitted_hi95": float(l_hi[k]),
                      "fitted_efs_pcr": float(s_pcr[k]), "fitted_efs_no_pcr": float(s_no[k]),
                      "degenerate": bool(1.0 - s_no[k] < LINK_MIN_EVENTS)}
                     for k, o in enumerate(link_obs)]
    neo_rows = []
    if neo_lm:
        n_point = np.asarray(objective.neo_landmark_dfs(z))
        n_draws = draw_values(objective.neo_landmark_dfs, z_draws, batch=100,
                              linearise_at=linearise_at(posterior, fit.z))
        n_lo, n_hi = np.quantile(n_draws, [0.025, 0.975], axis=0)
        neo_rows = [{"arm": o.arm, "course": courses[o.arm].name if o.arm in courses
                     else o.arm, "years": o.years, "n": o.n, "published": o.rate,
                     "fitted": float(n_point[k]), "fitted_lo95": float(n_lo[k]),
                     "fitted_hi95": float(n_hi[k])} for k, o in enumerate(neo_lm)]
    post_s = time.perf_counter() - t_post

    rows, inside = [], 0
    for i, o in enumerate(obs):
        k_lo, k_hi = ci95(o.count, o.n)
        pred = float(rates[i])
        ok = k_lo <= pred <= k_hi
        inside += ok
        rows.append([o.trial, o.arm, arms[i].regimen.name, o.definition, o.n, o.count,
                     f"{100 * o.count / o.n:.1f}", f"{100 * k_lo:.1f}", f"{100 * k_hi:.1f}",
                     f"{100 * pred:.2f}", f"{100 * lo[i]:.2f}", f"{100 * hi[i]:.2f}", ok,
                     "" if o.nested_total is None else f"{100 * o.nested_total / o.n:.1f}",
                     f"{100 * float(total[i]):.2f}", int(status[i])])
    header = ["trial", "arm_id", "regimen_id", "pcr_definition", "n", "pcr_count",
              "observed_pct", "observed_ci95_lo", "observed_ci95_hi", "predicted_pct",
              "predicted_lo95", "predicted_hi95", "predicted_within_observed_ci",
              "observed_total_pcr_pct", "predicted_total_pcr_pct", "status"]
    write_atomic(out / "arms.csv", csv_text(header, rows))

    # what the data say little about: posterior sd of z close to its prior sd
    prior_sd = np.broadcast_to(np.asarray(objective.prior_scale, float), (len(tm.names),))
    post_sd = np.std(z_draws, axis=0)
    prior_only = [n for n, a, b in zip(tm.names, post_sd, prior_sd, strict=True)
                  if a > PRIOR_ONLY_RATIO * b]
    warnings = []
    if not fit.converged:
        warnings.append(f"the optimiser stopped at its step cap ({steps}) before converging: "
                        "raise --steps")
    if record["flag"]:
        warnings.append(record["flag"])
    quadrature_flag = quadrature_warning(quadrature)
    if quadrature_flag:
        warnings.append(quadrature_flag)
    spread = trial_spread_check(tm.names, fit.z, objective.trial_sd)
    spread_flag = trial_spread_warning(spread)
    if spread_flag:
        warnings.append(spread_flag)
    if prior_only:
        warnings.append("not identified by these data (posterior sd > "
                        f"{PRIOR_ONLY_RATIO:g} x prior sd): " + ", ".join(prior_only))
    degenerate = [r for r in link_rows if r["degenerate"]]
    if degenerate:
        r = degenerate[0]
        warnings.append(
            f"pCR-outcome link met only where events vanish: fitted {r['years']:g}-yr EFS "
            f"{r['fitted_efs_pcr']:.4f} with pCR and {r['fitted_efs_no_pcr']:.4f} without "
            f"(fewer than {LINK_MIN_EVENTS:.0%} events without pCR), so its HR "
            f"{r['fitted_hr']:.2f} is a ratio of vanishing hazards and the distant burden "
            "is not identified: treat the link, and DFS predicted from this fit, as "
            "unsupported")
    if quick:
        warnings.append("quick run (NeoSphere arms only, few steps and draws): a smoke "
                        "test, not a result")
    summary = {
        "job": JOB,
        "data": {"pcr_arms": "data/clinical/pcr_arms.csv", "regimens":
                 "data/clinical/regimens.csv", "n_arms": len(obs),
                 "n_patients": int(sum(o.n for o in obs)),
                 "trials": sorted({o.trial for o in obs}),
                 "start_volume_mm3": {"default": 14000.0, **VOLUMES},
                 "pcr_outcome_links": ("data/clinical/pcr_outcome_links.csv"
                                       if link_obs else None),
                 "neoadjuvant_landmarks": ("data/clinical/adjuvant_outcomes.csv"
                                           if neo_lm else None)},
        "pcr_outcome_links": link_rows,
        "neoadjuvant_landmarks": neo_rows,
        "n_arms": len(obs), "n_within_binomial_ci95": int(inside), "quick": bool(quick),
        "model": {"structure": structure, "build_options": STRUCTURES[structure],
                  "n_parameters": len(tm.names), "responsiveness_nodes": nodes,
                  "her2_nodes": her2_nodes, "trial_sd": objective.trial_sd,
                  "chemo_drug_sd": objective.chemo_drug_sd,
                  "hyper_choice": ("largest Laplace marginal likelihood"
                                   if evidence else "given"),
                  "hyper_evidence": evidence,
                  "her2_drug_sd": objective.her2_drug_sd,
                  "quadrature_check": quadrature, "trial_spread_check": spread},
        "optimiser": {"method": "Levenberg-Marquardt, forward-mode Jacobian, "
                                f"{starts} Sobol starts",
                      "max_steps": steps, "lm_steps": fit.n_steps,
                      "converged": fit.converged,
                      "start_losses": [round(float(v), 4) for v in fit.start_losses],
                      "fit_s": round(fit_s, 2)},
        "neg_log_posterior": fit.loss,
        "estimates": {n: {"z": float(fit.z[i]), "se_z": float(fit.se[i]),
                          "natural": float(to_natural(n, fit.z[i]))}
                      for i, n in enumerate(tm.names)},
        "posterior": {**record, "method": record["method"] + "; ArviZ summary in "
                      "posterior.csv", "n_draws": draws, "psis_k_hat": k_hat,
                      "posterior_s": round(post_s, 2)},
        "psis_k_hat": k_hat, "prior_only": prior_only, "warnings": warnings,
        "seed": seed,
        "wall_s": round(time.perf_counter() - t_start, 2),
        **run_record(starts=seed, posterior_draws=seed, resampling=seed),
    }
    save_fit(out / "fit.json", tm, fit, extra={
        "n_arms": summary["n_arms"], "n_within_binomial_ci95": summary["n_within_binomial_ci95"],
        "optimiser": summary["optimiser"], "quick": summary["quick"],
        "wall_s": summary["wall_s"], "device": summary["device"],
        "precision": summary["precision"], "estimates": summary["estimates"],
        "data": "pcr_arms.csv (all-patient rows with counts)"
                + (" + pcr_outcome_links.csv (HER2+ pCR-vs-no-pCR HRs)" if link_obs else ""),
        "structure": structure}, draws=z_draws,
        posterior=record)
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    from .report import write_report

    write_report(out)  # report.md and pcr_fit.png, from the files above
    return summary


JOB = "fitcsc run: clinical trial model fitted to the published pCR counts"

