"""Reports: ``report.md`` of a job folder, built only from the files the job wrote.

One mechanism for every job: `fitcsc run`, `fit`, `sample` and `predict` call
`write_report` on their folder as their last step, and `fitcsc report RUN_DIR` calls the
same function later, so a rebuilt report is the job's own, byte for byte. The kind of a
folder comes from ``summary.json``'s ``job`` (`job_kind`); any other folder is refused in
one line naming the file.

Every report has the same sections: Data (subjects, arms, observations, censoring),
Model and settings, Fit quality and diagnostics, Parameters (with uncertainty),
Predictive checks (the job's figures, linked relatively so the folder is
self-contained), Warnings. A report draws only the figures no job writes (the run's
``pcr_fit.png`` and the fit's ``fits_by_arm.png``, from ``arms.csv`` and
``predictions.csv``); the jobs' own figures are linked, not redrawn.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import pathlib
import re

import numpy as np

from .._errors import FitcscInputError
from .._io.files import write_atomic
from .._trial.fit import TRIAL_SPREAD_P
from .._trial.model import TRIAL_SHIFT_LABELS
from .._trial.posterior import describe

SECTIONS = ("## Data", "## Model and settings", "## Fit quality and diagnostics",
            "## Parameters", "## Predictive checks", "## Warnings")
RHAT_LIMIT, ESS_MIN = 1.01, 400  # Vehtari et al. 2021: R-hat < 1.01, bulk/tail ESS >= 400
OK_STATUSES = ("converged", "max_steps")  # fits whose parameters are reported
MAX_LISTED = 12  # subjects named in a warning


def job_kind(summary) -> str | None:
    """``"run"``, ``"fit"``, ``"sample"`` or ``"predict"``: the job that wrote a folder,
    from its ``summary.json`` (a dict); None for anything else."""
    from .fit_job import GROUP_JOB
    from .fit_job import JOB as FIT_JOB
    from .main import JOB as RUN_JOB
    from .predict import JOB as PREDICT_JOB
    from .sample_job import JOB as SAMPLE_JOB

    job = summary.get("job") if isinstance(summary, dict) else None
    if not isinstance(job, str):
        return None
    if job == RUN_JOB:
        return "run"
    if job.startswith((FIT_JOB, GROUP_JOB)):
        return "fit"
    return {SAMPLE_JOB: "sample", PREDICT_JOB: "predict"}.get(job)


def write_report(run_dir) -> pathlib.Path:
    """Write ``report.md`` (and the figures only a report draws) of a folder written by
    `fitcsc run`, `fit`, `sample` or `predict`, from that folder's files.

    **Returns:** the path of ``report.md``.
    **Raises:** `FitcscInputError` (one line naming the file) when the folder has no
    readable ``summary.json`` of one of those jobs, or lacks a file its report needs.
    """
    d = pathlib.Path(run_dir)
    path = d / "summary.json"
    if not path.is_file():
        raise FitcscInputError(f"{path}: no such file; expected a folder written by fitcsc "
                               "run, fit, sample or predict")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FitcscInputError(f"{path}: not JSON ({err})") from None
    kind = job_kind(summary)
    if kind is None:
        job = summary.get("job") if isinstance(summary, dict) else None
        raise FitcscInputError(f"{path}: key 'job': expected the summary of fitcsc run, "
                               f"fit, sample or predict, got {job!r}")
    lines = BUILDERS[kind](d, summary)
    write_atomic(d / "report.md", "\n".join(lines) + "\n")
    return d / "report.md"


# ----------------------------------------------------------------------------------
# reading the folder and writing Markdown


def _read_csv(path) -> list[dict]:
    if not path.is_file():
        raise FitcscInputError(f"{path}: no such file; the job writes it (run the job "
                               "again to rebuild the folder)")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _num(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _g(v, digits=3) -> str:
    v = _num(v)
    return f"{v:.{digits}g}" if math.isfinite(v) else "n/a" if math.isnan(v) else f"{v}"


def cell(value) -> str:
    """A Markdown table cell: ``|`` (in a variable's name) escaped."""
    return str(value).replace("|", "\\|")


def _table(header, rows) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows] + [""])


def _figure(d, name, caption) -> list[str]:
    """A relative image link, or a line saying the figure is missing."""
    if (d / name).is_file():
        return [f"![{caption}]({name})", ""]
    return [f"({name}: not written by the job)", ""]


def _quadrature_line(q) -> str:
    """The run's responsiveness quadrature check (`fitcsc.trials.quadrature_check`), or
    nothing for runs saved before it."""
    if not q:
        return ""
    return (f"Quadrature check at the MAP: negative log posterior {q['loss_check']:.3f} at "
            f"{q['n_nodes_check']} responsiveness nodes (estimated error of the fit's grid "
            f"{q['loss_error_estimate']:.2f}; largest pCR change "
            f"{q['max_abs_pcr_diff_pct']:.2f} points, {q['arm']}): "
            + ("passed" if q["ok"] else "FAILED, see the warnings") + ". ")


def _trial_scale(build_options) -> str:
    """What a trial effect shifts, in the structure's ``trial_shift`` option."""
    return TRIAL_SHIFT_LABELS[(build_options or {}).get("trial_shift", "burden")]


def _spread_line(t, build_options=None) -> str:
    """The run's between-trial spread check (`fitcsc.trials.trial_spread_check`), or
    nothing for models without trial effects and runs saved before it."""
    if not t:
        return ""
    eff = ", ".join(f"{k} {v:+.2f}" for k, v in t["effects"].items())
    return (f"Trial effects ({_trial_scale(build_options)}): {eff}; root mean square "
            f"{t['rms']:.2f} against the prior sd {t['trial_sd']:g} that a new trial's "
            "prediction draws from "
            f"(chi-square {t['q']:.1f} on {t['df']} df, p = {t['p_value']:.2g}): "
            + (f"not flagged (the check flags p < {t.get('p_threshold', TRIAL_SPREAD_P):g}; "
               "the MAP shifts are shrunk towards 0, so it can miss a spread)" if t["ok"]
               else "the trials spread more, so new-trial intervals are too narrow, see the "
               "warnings") + ". ")


def _warnings(items) -> list[str]:
    return ["## Warnings", ""] + ([f"- {w}" for w in items] or ["- none"]) + [""]


def _plural(n, word) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def param_unit(name) -> str:
    """Unit of a parameter (from `CSCParams`'s field comments, or its name), or ''."""
    from .._model.params import CSCParams

    field = name.split("[")[0]
    units = dict(re.findall(r"^\s+(\w+):.*#.*\[([^\]]+)\]\s*$",
                            inspect.getsource(CSCParams), re.M))
    if field in units:
        return units[field]
    for suffix, unit in (("_mm3_per_day", "mm3/day"), ("_mm3", "mm3"), ("_rate", "1/day"),
                         ("_day", "day")):
        if field.endswith(suffix):
            return unit
    return ""


def _var_unit(name) -> str:
    """Unit of a population variable of ``summary.csv``: a typical value's is its
    parameter's; the SDs (omega, sigma) are on the log or logit scale."""
    if name.startswith("typical["):
        return param_unit(name[len("typical["):].split("|")[0].rstrip("]")) or "-"
    if name.startswith("omega_"):
        return "SD on the sampled scale"
    return "SD of log volume" if name == "sigma" else "-"


def _named(name) -> str:
    unit = param_unit(name)
    return f"{name} [{unit}]" if unit and unit != "-" else name


# ----------------------------------------------------------------------------------
# fitcsc run: the clinical trial model fitted to the published pCR counts


def _run_lines(d, s) -> list[str]:
    from .plot import plot_pcr_arms
    from .predict import out_of_sample

    rows = _read_csv(d / "arms.csv")
    post = _read_csv(d / "posterior.csv")
    plot_pcr_arms(rows, d / "pcr_fit.png")
    data, m, o, p = s["data"], s["model"], s["optimiser"], s["posterior"]
    opts = ", ".join(f"{k}={v}" for k, v in m["build_options"].items())
    lines = [
        "# Clinical trial model fitted to published pCR counts", "",
        SECTIONS[0], "",
        f"{data['n_arms']} neoadjuvant HER2+ arms ({data['n_patients']} patients) from "
        f"{_plural(len(data['trials']), 'trial report')} in `{data['pcr_arms']}`, each with "
        f"its regimen (`{data['regimens']}`) and its own pCR definition; the observation "
        "is the arm's pCR count (binomial, no censoring). Assumed starting tumour volume: "
        f"{data['start_volume_mm3']['default']:g} mm3 (3-cm primary), NOAH "
        f"{data['start_volume_mm3'].get('NOAH', 0):g} mm3 (locally advanced)."
        + (f" The published HER2+ hazard ratios of pCR vs no pCR (`{data['pcr_outcome_links']}`:"
           " " + ", ".join(r["link"] for r in s["pcr_outcome_links"]) + ") enter as normal "
           "likelihoods of the log HR, pooled over the trastuzumab-treated arms."
           if s.get("pcr_outcome_links") else ""), "",
        SECTIONS[1], "",
        f"Structure `{m['structure']}` ({opts}); {m['n_parameters']} parameters; quadrature "
        f"{m['responsiveness_nodes']} responsiveness x {m['her2_nodes']} HER2 nodes; "
        f"between-trial sd of the trial effects ({_trial_scale(m['build_options'])}) "
        f"{m['trial_sd']:g}; sd of a HER2 blocker's log "
        f"potency {m['her2_drug_sd']:g}"
        + (f", of a chemotherapy drug's {m['chemo_drug_sd']:g}" if "chemo_drug_sd" in m
           else "") + f" ({m.get('hyper_choice', 'given')}). MAP: {o['method']}, at "
        f"most {o['max_steps']} steps. Posterior: {p['method']} ({p['n_draws']} draws). "
        f"Seed {s['seed']}; "
        f"{s['device']}, {s['precision']}.", "",
        SECTIONS[2], "",
        f"Negative log posterior {s['neg_log_posterior']:.3f}; {o['lm_steps']} LM "
        f"evaluations; converged: {o['converged']}; fit {o['fit_s']} s, posterior "
        f"{p['posterior_s']} s, total {s['wall_s']} s. {s['n_within_binomial_ci95']} of "
        f"{s['n_arms']} arms: fitted pCR inside the exact binomial 95% CI of the published "
        "count (in sample). Out of sample"
        + out_of_sample(d)[1].removeprefix("out of sample") + ". "
        + _quadrature_line(m.get("quadrature_check"))
        + _spread_line(m.get("trial_spread_check"), m["build_options"]) + _posterior_check(p), "",
        SECTIONS[3], "",
        "Natural scale (each name's transform of its unconstrained z, as in "
        "posterior.csv's `*_natural` rows). MAP from the fit; mean, sd and 95% HDI over "
        "the reweighted posterior draws (ArviZ).", "",
    ]
    table = []
    for r in post:
        name = r["name"].removesuffix("_natural")
        if name == r["name"]:
            continue
        est = s["estimates"].get(name, {})
        table.append([name, _g(est.get("natural")), _g(r["mean"]), _g(r["sd"]),
                      f"{_g(r['hdi_lo'])} to {_g(r['hdi_hi'])}"])
    lines += _table(["parameter", "MAP", "mean", "sd", "95% HDI"], table)
    lines += [SECTIONS[4], ""] + _figure(d, "pcr_fit.png", "fitted vs published pCR")
    lines += _table(["trial", "arm", "definition", "n", "published % (95% CI)",
                     "fitted % (95% interval)"],
                    [[r["trial"], r["arm_id"], r["pcr_definition"], r["n"],
                      f"{r['observed_pct']} ({r['observed_ci95_lo']}-{r['observed_ci95_hi']})",
                      f"{r['predicted_pct']} ({r['predicted_lo95']}-{r['predicted_hi95']})"]
                     for r in rows])
    if s.get("pcr_outcome_links"):
        lines += ["", "pCR vs no pCR among treated patients (DFS hazard ratio at the "
                  "horizon, from one residual state per patient):", ""]
        lines += _table(["study", "years", "published HR (95% CI)", "fitted (95% interval)",
                         "fitted EFS with / without pCR"],
                        [[r["link"], _g(r["years"]),
                          f"{r['published_hr']:.2f} ({r['published_lo95']:.2f}-"
                          f"{r['published_hi95']:.2f})",
                          f"{r['fitted_hr']:.2f} ({r['fitted_lo95']:.2f}-"
                          f"{r['fitted_hi95']:.2f})",
                          (f"{r['fitted_efs_pcr']:.4f} / {r['fitted_efs_no_pcr']:.4f}"
                           + (" (**events vanish**)" if r["degenerate"] else ""))
                          if "fitted_efs_pcr" in r else "-"] for r in s["pcr_outcome_links"]])
    if s.get("neoadjuvant_landmarks"):
        lines += ["", "Event-free survival of all the patients of a neoadjuvant arm "
                  "(published EFS/DFS landmarks, binomial on the randomised patients; the "
                  "whole course: preoperative and postoperative therapy):", ""]
        lines += _table(["arm", "course", "years", "n", "published %",
                         "fitted % (95% interval)"],
                        [[r["arm"], r["course"], _g(r["years"]), r["n"],
                          f"{100 * r['published']:.1f}",
                          f"{100 * r['fitted']:.1f} ({100 * r['fitted_lo95']:.1f}-"
                          f"{100 * r['fitted_hi95']:.1f})"]
                         for r in s["neoadjuvant_landmarks"]])
    lines += _warnings(s["warnings"])
    lines += ["Files: `fit.json` (use with `fitcsc predict --fit` on this folder), "
              "`arms.csv`, `posterior.csv`, `pcr_fit.png`, `summary.json`."]
    return lines


def _posterior_check(p) -> str:
    """The run's posterior diagnostics in words, with its flag in bold when raised (a
    summary written before `fitcsc run --posterior` existed: its PSIS k_hat)."""
    if "sampler" not in p:
        return f"PSIS k_hat {p['psis_k_hat']:.2f} (reliable below 0.7)."
    text = f"Posterior ({p['sampler']}): {describe(p)}."
    return text + (f" **Flag: {p['flag']}**" if p.get("flag") else "")


# ----------------------------------------------------------------------------------
# fitcsc fit: per-subject (or shared-growth) maximum-likelihood fits


def _data_lines(preds, subjects_by_arm, limit_mm3) -> list[str]:
    """Per-arm table of subjects, observations, censoring, days and volumes."""
    rows = []
    for arm, subjects in subjects_by_arm.items():
        mine = [p for p in preds if p["arm"] == arm]
        day = [_num(p["day"]) for p in mine]
        vol = [_num(p["volume_mm3"]) for p in mine if p["censored"] == "0"]
        rows.append([arm, len(subjects), len(mine), sum(p["censored"] != "0" for p in mine),
                     f"{_g(min(day))}-{_g(max(day))}" if day else "n/a",
                     f"{_g(min(vol))}-{_g(max(vol))}" if vol else "n/a"])
    return _table(["arm", "subjects", "observations",
                   f"censored (< {limit_mm3:g} mm3)", "days", "volume range [mm3]"], rows)


def _param_summary(fits, params) -> list[str]:
    """Per parameter and arm (and over all arms, where several estimate it): the fits'
    median estimate, the spread of estimates across subjects, the median standard error
    and the fits without one (an SE of a fit that is not identifiable is left out)."""
    table = []
    for p in params:
        got = [r for r in fits if r["status"] in OK_STATUSES and r[p] != ""]
        arms = list(dict.fromkeys(r["arm"] for r in got))
        for arm in [*arms, "all arms"] if len(arms) > 1 else arms:
            rows = [r for r in got if arm in ("all arms", r["arm"])]
            est = np.array([_num(r[p]) for r in rows])
            se = np.array([_num(r[f"{p}_se"]) if r["identifiable"] != "false" else math.nan
                           for r in rows])
            # nearest-rank quantiles: an estimate run off to inf is never subtracted
            q1, med, q3 = np.percentile(est, [25, 50, 75], method="nearest")
            ok = np.isfinite(se)
            nz = ok & (est != 0)
            rel = np.median(se[nz] / np.abs(est[nz])) if nz.any() else math.nan
            table.append([_named(p), arm, len(rows), _g(med), f"{_g(q1)} to {_g(q3)}",
                          _g(np.median(se[ok])) if ok.any() else "n/a",
                          f"{100 * rel:.0f}%" if math.isfinite(rel) else "n/a",
                          int((~ok).sum())])
    return _table(["parameter", "arm", "fits", "median estimate", "IQR across subjects",
                   "median SE", "median SE / estimate", "fits without SE"], table)


def _fit_lines(d, s) -> list[str]:
    from .plot import plot_arm_fits

    fits = _read_csv(d / "fits.csv")
    preds = _read_csv(d / "predictions.csv")
    plot_arm_fits(preds, d / "fits_by_arm.png", limit_mm3=s["detection_limit_mm3"])
    header = list(fits[0]) if fits else []
    params = [h for h in header if f"{h}_se" in header]
    by_arm: dict[str, list[str]] = {}
    for r in fits:
        by_arm.setdefault(r["arm"], []).append(r["subject"])
    n, n_obs = len(fits), len(preds)
    n_cens = sum(p["censored"] != "0" for p in preds)
    grouped = "share_growth_by" in s
    o = s["optimiser"]
    source = f"`{s['data_file']}`" if s["data_file"] else "a table given in memory"
    lines = [f"# Maximum-likelihood fits ({s['model']}) of {pathlib.Path(s['data_file']).name}",
             "", SECTIONS[0], "",
             f"{source}: {_plural(n, 'subject')} in {_plural(len(by_arm), 'arm')} "
             f"(studies: {', '.join(sorted({r['study'] for r in fits}))}), "
             f"{_plural(n_obs, 'observation')}, {n_cens} left-censored (below the "
             f"detection limit {s['detection_limit_mm3']:g} mm3, M3 likelihood). "
             f"Regimens: {s['regimen_source']}.", ""]
    lines += _data_lines(preds, by_arm, s["detection_limit_mm3"])
    lines += [SECTIONS[1], ""]
    if s["model"] == "csc":
        cfg = s["model_config"]
        ref = ", ".join(f"{k}={v:g}" for k, v in cfg["reference"].items())
        lines += [f"CSC model (S, D compartments), {cfg['crowding']} crowding, species "
                  f"{cfg['species']}, drug slots: {', '.join(cfg['drug_slots']) or 'none'}. "
                  f"Parameters not estimated stay at the reference: {ref}.", ""]
    else:
        lines += [f"Baseline model `{s['model']}` (every parameter free per subject).", ""]
    if grouped:
        lines += [f"Curves grouped by `{s['share_growth_by']}` ({_plural(s['n_groups'], 'group')}"
                  f"): shared within a group {', '.join(s['shared'])}; per curve "
                  f"{', '.join(s['per_subject'])}; per group and arm "
                  f"{', '.join(s['per_arm']) or 'none'}.", ""]
    else:
        lines += _table(["arms", "drug classes", "subjects", "free parameters"],
                        [[", ".join(g["arms"]), ", ".join(g["drug_classes"]) or "none",
                          g["n_subjects"], ", ".join(g["labels"])] for g in s["groups"]])
    lines += [f"Likelihood: log-normal volume error, sigma {s['sigma']} (per "
              f"{'group' if grouped else 'subject'}). Optimiser: Levenberg-Marquardt "
              f"({s.get('evaluator', 'jacfwd')} evaluator), {s['starts']} starts per "
              f"{'group' if grouped else 'subject'}, at most {o['max_steps']} steps, rtol "
              f"= atol = {o['rtol']:g}. {s['device']}, {s['precision']}; fit {s['fit_s']} s, "
              f"total {s['wall_s']} s (with compilation).", ""]
    counts = s["status_counts"]
    bad = [r for r in fits if r["status"] not in OK_STATUSES]
    unident = [r["subject"] for r in fits if r["identifiable"] == "false"]
    rmse = {a: [_num(r["rmse_log_volume"]) for r in fits if r["arm"] == a
                and r["status"] in OK_STATUSES] for a in by_arm}
    lines += [SECTIONS[2], "",
              "Status of the fits: " + ", ".join(f"{v} {k}" for k, v in counts.items())
              + f" (of {n}). {s['n_max_steps']} stopped at the step cap; {s['n_failed']} "
              f"failed; {len(unident)} not identifiable (Jacobian condition number above "
              "its limit: some parameter combination is not determined by the curve)."
              + (" Groups: " + ", ".join(f"{v} {k}" for k, v in
                                         s["group_status_counts"].items())
                 + f" (of {s['n_groups']})." if grouped else ""), ""]
    lines += _table(["arm", "fits reported", "median RMSE of log volume",
                     "median condition number"],
                    [[a, len(v), _g(np.median(v)) if v else "n/a",
                      _g(np.median([_num(r["condition_number"]) for r in fits
                                    if r["arm"] == a and r["status"] in OK_STATUSES]))
                      if v else "n/a"] for a, v in rmse.items()])
    lines += _figure(d, "multistart.png", "multi-start spread of the optimum")
    lines += [SECTIONS[3], "",
              "Estimates on the natural scale, summarised across subjects (fits that "
              "converged or stopped at the step cap); SE: each fit's asymptotic standard "
              "error (Gauss-Newton). Every subject's estimate and SE are in `fits.csv`."
              + (" A value shared by a group repeats on each of its curves." if grouped
                 else ""), ""]
    lines += _param_summary(fits, params)
    lines += [SECTIONS[4], "",
              "Observed volumes and the fitted values at the observation days, by arm "
              "(axes clipped to the data; a prediction beyond them is drawn at the edge):",
              ""]
    lines += _figure(d, "fits_by_arm.png", "observed and fitted volumes by arm")
    lines += _figure(d, "fits_subjects.png", "fitted curve per subject")
    lines += _figure(d, "observed_vs_predicted.png", "observed vs predicted volume")
    lines += _figure(d, "residuals.png", "residuals over time")
    notes = [*s["warnings"], *(f"a chunk of fits raised: {e}" for e in s["errors"])]
    if s["n_max_steps"]:
        at_cap = [r["subject"] for r in fits if r["status"] == "max_steps"]
        notes.append(f"{_plural(len(at_cap), 'fit')} stopped at the step cap "
                     f"({o['max_steps']}) before converging: {_listed(at_cap)}")
    if bad:
        notes.append(f"{_plural(len(bad), 'fit')} failed (no parameters reported): "
                     + _listed([f"{r['subject']} ({r['status']})" for r in bad]))
    if unident:
        notes.append(f"{_plural(len(unident), 'fit')} not identifiable from the curve "
                     "(Jacobian condition number above its limit; their SEs are left out "
                     f"of the parameter table): {_listed(unident)}")
    no_se = [p for p in params if any(r[p] != "" and not math.isfinite(_num(r[f"{p}_se"]))
                                      for r in fits if r["status"] in OK_STATUSES
                                      and r["identifiable"] != "false")]
    if no_se:
        notes.append("parameters without a standard error in some fits (not identified "
                     "there): " + ", ".join(no_se))
    if s["quick"]:
        notes.append("quick run (few starts and steps, first subjects only): a smoke test, "
                     "not a result")
    lines += _warnings(notes)
    lines += ["Files: `fits.csv` (one row per subject), `predictions.csv` (one row per "
              "observation), `summary.json`, the figures above."]
    return lines


def _listed(items) -> str:
    more = len(items) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


# ----------------------------------------------------------------------------------
# fitcsc sample: a population posterior


def _sample_lines(d, s) -> list[str]:
    rows = _read_csv(d / "summary.csv")
    c, sm, ws = s["convergence"], s["sampler"], s["warm_start"]
    lines = [f"# Population posterior ({s['model']}) of {pathlib.Path(s['data']).name}", "",
             SECTIONS[0], "",
             (f"`{s['data']}`" if s["data"] else "a table given in memory")
             + f": {_plural(s['n_curves'], 'curve')}, "
             f"{_plural(s['n_observations'], 'observation')}, {s['n_censored']} "
             "left-censored (M3). Regimens: " + f"{s['regimens']}.", ""]
    lines += _table(["arm", "curves", "observations", "censored"],
                    [[a, v["curves"], v["observations"], v["censored"]]
                     for a, v in s["arms"].items()])
    re_text = "; ".join(f"{lev}: {', '.join(labs)}" for lev, labs in
                        s["random_effects"].items()) or "none"
    lines += [SECTIONS[1], "",
              f"Hierarchical `{s['model']}` model, drug effects per {s['effects']}"
              + (f", random effects by `{s['group_by']}`" if s["group_by"] else "")
              + f"; {s['n_parameters']} sampled parameters (unconstrained). Fixed effects: "
              f"{', '.join(s['fixed_effects'])}. Random effects: {re_text}.", "",
              "Sampler: " + ", ".join(f"{k}={v}" for k, v in sm.items()) + ". Warm start: "
              f"{ws['map']}, then {ws['refine_steps']} Adam steps on the population log "
              f"density ({_g(ws['log_density_map'], 6)} -> {_g(ws['log_density_start'], 6)})."
              f" {s['device']}, {s['precision']}; total {s['wall_s']} s.", "",
              *([f"Chains run as {len(s['processes'])} processes side by side (seeds "
                 + ", ".join(str(p["seed"]) for p in s["processes"]) + ", in "
                 "`processes/`), joined into one posterior; each process's own max R-hat "
                 + ", ".join(_g(p["rhat_max"], 4) for p in s["processes"]) + ".", ""]
                if s.get("processes") else []),
              SECTIONS[2], ""]
    lines += _table(["", "all sampled variables", "population-level variables"],
                    [["max R-hat", _g(c["rhat_max"], 4), _g(c["rhat_max_population"], 4)],
                     ["min bulk ESS", _g(c["ess_bulk_min"]), _g(c["ess_bulk_min_population"])],
                     ["min tail ESS", _g(c["ess_tail_min"]), _g(c["ess_tail_min_population"])]])
    lines += [f"{c['n_divergent']} divergent transitions in {c['n_draws']} draws.", ""]
    lines += _figure(d, "trace_rank.png", "trace and rank plots")
    lines += _figure(d, "pair.png", "pair plot")
    lines += [SECTIONS[3], "",
              "Posterior mean, sd and 95% HDI of the population-level variables (natural "
              "scale), with their bulk ESS and R-hat (`summary.csv`).", ""]
    lines += _table(["variable", "unit", "mean", "sd", "95% HDI", "bulk ESS", "R-hat"],
                    [[r["name"], _var_unit(r["name"]), _g(r["mean"]), _g(r["sd"]),
                      f"{_g(r['hdi_lo'])} to {_g(r['hdi_hi'])}", _g(r["ess_bulk"]),
                      _g(r["r_hat"], 4)] for r in rows])
    lines += _figure(d, "forest.png", "forest plot")
    lines += [SECTIONS[4], "",
              f"{100 * c['ppc_coverage90']:.0f}% of the uncensored observations lie inside "
              "their 90% posterior predictive interval (about 90% expected).", ""]
    lines += _figure(d, "ppc.png", "posterior predictive check")
    lines += _figure(d, "vpc.png", "visual predictive check")
    notes = list(s["notes"])
    if not c["rhat_max"] < RHAT_LIMIT:
        notes.append(f"max R-hat {c['rhat_max']:.3f} >= {RHAT_LIMIT}: the chains disagree; "
                     "run longer (--warmup, --samples)")
    if not min(c["ess_bulk_min"], c["ess_tail_min"]) >= ESS_MIN:
        notes.append(f"smallest ESS {min(c['ess_bulk_min'], c['ess_tail_min']):.0f} < "
                     f"{ESS_MIN}: intervals rest on few effective draws")
    if c["n_divergent"]:
        notes.append(f"{c['n_divergent']} divergent transitions: the posterior may be "
                     "biased where the sampler could not follow its curvature")
    if s["quick"]:
        notes.append("quick run (8 curves, short chains): a smoke test, not a result")
    lines += _warnings(notes)
    lines += ["Files: `posterior.nc` (ArviZ InferenceData), `summary.csv`, `summary.json`, "
              "the figures above."]
    return lines


# ----------------------------------------------------------------------------------
# fitcsc predict: predicted pCR (and DFS) of new regimens from a saved trial fit


def _predict_lines(d, s) -> list[str]:
    rows = _read_csv(d / "predictions.csv")
    contrasts = _read_csv(d / "contrasts.csv") if s["contrasts"] else []
    dfs = _read_csv(d / "dfs.csv") if s["dfs"] else []
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    post = s["posterior"]
    lines = [f"# Predicted outcomes of {pathlib.Path(s['regimens']).name}", "", SECTIONS[0], "",
             f"{_plural(s['n_arms'], 'arm')} of the regimen table `{s['regimens']}` "
             f"({', '.join(arms)}), each a virtual trial arm of {s['n_patients']} patients; "
             f"nothing is fitted here: the parameters come from the fit in `{s['fit']}` "
             "(its own report shows the data it was fitted to).", "",
             SECTIONS[1], "",
             f"Trial model of the fit; posterior: {post['method']}; {s['n_draws']} draws, "
             f"seed {s['seed']}. pCR definitions: {', '.join(s['pcr_definitions'])}. Tumour "
             f"volume at the start {s['volume_mm3']:g} mm3; HER2 dependence h_S, h_D = "
             f"{', '.join(f'{v:g}' for v in s['her2_dependence'])}"
             + (f"; DFS at {', '.join(f'{y:g}' for y in s['dfs_years'])} years with the "
                f"micrometastatic burden of {s['burden_trial']}" if s["dfs"] else "")
             + f". Intervals: {s['interval']}. {s['device']}, {s['precision']}; "
             f"{s['wall_s']} s.", "",
             SECTIONS[2], "",
             f"{s['n_failed']} of {s['n_arms']} arms failed (a solver failure in some draw)."
             + (f" Posterior diagnostics of the fit: {describe(post)}." if "rhat_max" in post
                else f" PSIS k_hat of the fit's posterior {post['k_hat']:.2f}."
                if post.get("k_hat") is not None else "")
             + (f" **Flag: {post['flag']}**" if post.get("flag") else ""), "",
             SECTIONS[3], "",
             "Predicted pCR per arm and definition: the rate at the MAP, its posterior "
             "mean and 95% interval, and the 95% interval of the rate a trial arm of "
             f"{s['n_patients']} patients observes (binomial on top).", ""]
    lines += _table(["arm", "pCR definition", "MAP %", "mean % (95% interval)",
                     f"observed in {s['n_patients']} patients, % (95%)", "status"],
                    [[r["arm"], r["pcr_definition"], _pct(r["pcr_map"]),
                      f"{_pct(r['pcr_mean'])} ({_pct(r['pcr_lo'])}-{_pct(r['pcr_hi'])})",
                      f"{_pct(r['pcr_pred_lo'])}-{_pct(r['pcr_pred_hi'])}", r["status"]]
                     for r in rows])
    if contrasts:
        lines += ["Differences in pCR between arms (percentage points):", ""]
        lines += _table(["contrast", "pCR definition", "mean (95% interval)",
                         "P(first arm better)"],
                        [[r["contrast"], r["pcr_definition"],
                          f"{_pct(r['diff_mean'])} ({_pct(r['diff_lo'])} to "
                          f"{_pct(r['diff_hi'])})", _g(r["prob_a_better"])]
                         for r in contrasts])
    if dfs:
        lines += ["Disease-free survival and hazard ratios (HR against the comparator):", ""]
        lines += _table(["arm", "years", "DFS % (95% interval)", "comparator",
                         "HR (95% interval)"],
                        [[r["arm"], r["years"],
                          f"{_pct(r['dfs_mean'])} ({_pct(r['dfs_lo'])}-{_pct(r['dfs_hi'])})",
                          r["comparator"] or "-",
                          f"{_g(r['dfs_hr_geomean'])} ({_g(r['dfs_hr_lo'])}-"
                          f"{_g(r['dfs_hr_hi'])})" if r["dfs_hr_geomean"] else "-"]
                         for r in dfs])
    lines += [SECTIONS[4], "",
              "New regimens have no observed outcome to check against: the figure shows "
              "the predictions with their intervals. The fit's predictive checks are in "
              "its own report.", ""]
    lines += _figure(d, "predictions.png", "predicted pCR and DFS per arm")
    notes = [f"arm {a}: prior-only assumption: {f}" for a, f in
             dict.fromkeys((r["arm"], r["assumptions"]) for r in rows if r["assumptions"])]
    notes += [f"pCR definition {k!r} not predicted: the fit did not estimate "
              f"{', '.join(v)}" for k, v in s["pcr_definitions_refused"].items()]
    if post.get("flag"):
        notes.append(post["flag"])
    if s.get("trial_spread_flag"):
        notes.append(s["trial_spread_flag"])
    if s.get("out_of_sample_flag"):
        notes.append(s["out_of_sample_flag"])
    notes += [f"arm {r['arm']} ({r['pcr_definition']}): failed in some draw"
              for r in rows if r["status"] != "ok"]
    lines += _warnings(notes)
    lines += ["Files: `predictions.csv`, `pcr_draws.csv`"
              + (", `contrasts.csv`" if contrasts else "")
              + (", `dfs.csv`, `dfs_curves.csv`" if dfs else "")
              + ", `predictions.png`, `summary.json`."]
    return lines


def _pct(v) -> str:
    v = _num(v)
    return f"{100 * v:.1f}" if math.isfinite(v) else "n/a"


BUILDERS = {"run": _run_lines, "fit": _fit_lines, "sample": _sample_lines,
            "predict": _predict_lines}
