"""Leave-one-trial-out validation of the clinical trial model: pCR and hazard ratios.

Question: does the trial model predict the pCR of a neoadjuvant trial it was not fitted
to, and the DFS hazard ratio of an adjuvant trial it was not fitted to, inside honest
95% predictive intervals that are still narrow enough to say something?

Folds. The neoadjuvant arms with counts in data/clinical/pcr_arms.csv come from nine
trials (MDACC with its 2007 extra cohort, NOAH, GeparQuattro, NeoSphere, NeoALTTO,
TRYPHAENA, CHER-LOB, GeparQuinto, NSABP B-41; the first five alone before 2026-12-06).
Each fold fits the model to all trials but one and predicts every arm of the left-out
one under that trial's own pCR definition. A long run can be split and resumed:
``--checkpoint`` saves each fold as it finishes, ``--folds`` runs some of them (e.g. two
processes, one per core), and the tables are written from the saved folds by the
``--folds`` run that finds every fold saved after its hazard-ratio folds, or by a run
without ``--folds``. The model is built on all arms, so a drug or a trial seen
only in the left-out trial has a parameter with no data: its Laplace posterior is its
prior (a new HER2 blocker's potency ~ N(class mean, her2_drug_sd), a new chemotherapy
drug's potency ~ N(0, chemo_drug_sd) around the class kill per reference dose, a new
trial's shift of log burden ~ N(0, trial_sd)), which is exactly the prior predictive a
new trial gets from `fitcsc predict`. Such arms are marked in the table.

Predictive interval of an arm: 95% central interval of the pCR count of a trial of the
arm's size, over posterior draws of the fitted parameters (each draw: the arm's pCR rate,
then a binomial count), i.e. parameter uncertainty, the new trial's effect and binomial
sampling. Posterior draws (`fitcsc.trials.posterior_draws`, ``--posterior``): the delta
method, Laplace draws with each prediction linearised at the fold's MAP (``linear``, the
default), Laplace draws reweighted by Pareto-smoothed importance sampling to the exact
posterior (``psis``; k_hat reported), plain Laplace draws (``laplace``), or NUTS / ChEES-HMC
chains warm-started from the fold's MAP (``nuts``, ``chees``; R-hat, ESS and divergences
reported per fold, and `fitcsc.trials.posterior_flag` when they cannot be trusted). PIT
values (randomised at ties) give the calibration figure.

Adjuvant: B-31/N9831 and HERA, each left out in turn. The fit uses every pCR count and
the other trial's control landmark and hazard ratio; the left-out trial's burden is
fitted to its own control arm's landmark (no HR enters), then its HR is predicted with a
95% predictive interval: the posterior draws (burden included) plus the published
estimate's own sampling error (normal on the log scale with its standard error, the HR
counterpart of the binomial count of a pCR arm); the interval of the parameters alone is
reported beside it (``param_lo``, ``param_hi``). Durability: the same fold predicts the
left-out trial's long-term ITT DFS HR (`fitcsc.trials.ADJUVANT_LONG_TERM`), which its
fold never fits; the control arms' crossover to trastuzumab makes it an upper bound on the
model's HR at that horizon. With ``--fit-long-term`` the other trial's long-term HR enters
the fold's fit as such a bound (a censored observation, `fitcsc.trials.HrObservation`'s
``upper``).

Structures compared (``--structure``, see `STRUCTURES`): the shipped one and the
alternatives of issue 12; each is scored by the same folds. A structure that nests two
others (`BASINS`) can land in either one's basin, or in a worse point between them;
``--basin-starts`` fits both nested structures in each fold first and starts the
nesting one from each of their MAPs, keeping the lower loss (the rows say which, with
each start's loss with and without the prior). ``--only-hr`` runs the hazard-ratio
folds alone, added to the pCR run in ``--out`` or, with none there, on their own;
``--hr-folds`` picks some of them.

Run: ``python experiments/clinical_validation.py [--quick] [--structure NAME] [--links]
[--out DIR]`` (``--structure`` defaults to the main job's, ``--links`` fits each fold as
the main job does).
Writes ``arms.csv``, ``hazard_ratios.csv``, ``summary.json``, ``calibration.png`` and
``RESULT.md`` to ``--out`` (default experiments/results/clinical_validation/<structure>).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

import fitcsc
from fitcsc.files import (
    Checkpoint,
    csv_text,
    fingerprint,
    pyplot,
    remove_checkpoint,
    save_figure,
    write_atomic,
)
from fitcsc.trials import (
    ADJUVANT_LONG_TERM,
    BLOCKADE_GL,
    DEFAULT_STRUCTURE,
    HYPERS,
    METHODS,
    STRUCTURES,
    Objective,
    TrialData,
    TrialModel,
    adjuvant_observations,
    draw_values,
    fit_prior_sds,
    fit_trials,
    linearise_at,
    load_links,
    load_neo_landmarks,
    pcr_observations,
    posterior_draws,
    posterior_flag,
    quadrature_check,
    trial_family,
    trial_spread_check,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLINICAL = ROOT / "data" / "clinical"
DATA_FILES = ("pcr_arms.csv", "regimens.csv", "adjuvant_outcomes.csv",
              "pcr_outcome_links.csv")
# options that do not change what a fold computes (left out of the checkpoint's hash)
CHECKPOINT_FREE = ("folds", "checkpoint", "verbose", "only_hr", "no_hr", "out", "tag",
                   "hr_folds")
VOLUMES = {"NOAH": 65000.0}  # locally advanced: 5-cm median primary (as pcr_fit.py)

QUICK_FOLDS = ("NeoSphere", "MDACC")
# how runs from this version interpolate between responsiveness nodes (`TrialModel.interpolate`)
INTERPOLANT = "exp-3-node"
# how the HER2 blockade is integrated along the exposure grid (runs before 2026-12-05
# evening, without the field, used the trapezoid, which missed lapatinib's daily peaks)
BLOCKADE_RULE = f"gauss-legendre-{BLOCKADE_GL}"


def load():
    regimens = fitcsc.read_regimen_table(CLINICAL / "regimens.csv")
    arms, obs = pcr_observations(fitcsc.read_clinical(CLINICAL / "pcr_arms.csv"), regimens,
                                 volumes=VOLUMES)
    adj = adjuvant_observations(fitcsc.read_clinical(CLINICAL / "adjuvant_outcomes.csv"),
                                regimens, long_term=ADJUVANT_LONG_TERM)
    return arms, obs, adj


def _count_interval(rates, n, key, prob=0.95):
    """Posterior predictive counts of a trial of size ``n``: draws (rates, one binomial
    count per draw) -> (lo, hi) count interval and the count draws."""
    counts = np.asarray(jax.random.binomial(key, n, jnp.clip(jnp.asarray(rates), 0, 1)))
    lo, hi = np.quantile(counts, [(1 - prob) / 2, (1 + prob) / 2], method="inverted_cdf")
    return float(lo), float(hi), counts


def _pit(counts, k, key):
    """Randomised PIT of an observed count ``k`` under predictive draws ``counts``."""
    below, at = np.mean(counts < k), np.mean(counts == k)
    return float(below + at * float(jax.random.uniform(key)))


def posterior(objective, fit, args, key):
    """The fold's `TrialPosterior` by ``--posterior`` (psis, laplace: equal weights and
    k_hat NaN, nuts, chees: ``--chains`` chains of ``--warmup`` warm-up steps)."""
    return posterior_draws(objective, fit, args.draws, key, method=args.posterior,
                           batch=args.batch, num_chains=args.chains, num_warmup=args.warmup)


def mcmc_columns(post) -> dict:
    """Per-fold sampler diagnostics for the tables (nuts, chees; none otherwise)."""
    if post.method not in ("nuts", "chees"):
        return {}
    d = post.diagnostics
    return {"rhat_max": d["rhat_max"], "ess_bulk_min": d["ess_bulk_min"],
            "n_divergent": d["n_divergent"], "posterior_flag": posterior_flag(post) or ""}


def resample(values, weights, seed):
    """Equal-weight draws from weighted ones (multinomial resampling, seeded)."""
    idx = np.random.default_rng(seed).choice(len(weights), size=len(weights), p=weights)
    return np.asarray(values)[idx]


# structures that nest two others (``--basin-starts``): name -> (basin, nested structure,
# the natural values that give the basin's limit in the nesting one; a parameter of the
# nesting structure that the basin lacks and that is not named here starts at its prior
# centre). rho 0.99 stands for the reservoir structure's rho = 1 (a logit of 4.6, where
# the optimiser can still move it). The micrometastatic structure has no protected
# fraction; in the nesting one the fraction must be 1e-15 before the links and landmarks
# lose its trace (at 1e-6, the prior centre, and even at 1e-12 they differ by tens to
# hundreds of units, measured on the quick model; tests/test_experiments.py checks that
# 1e-15 leaves none), which costs the prior on its logit
# (centre 1e-6, sd 2) about 54 units: the nesting structure reaches that limit only at
# that price, and the fold rows report each start's loss with and without the prior.
BASINS = {
    "continuous_kill_alpha_micromet_protected": (
        ("reservoir", "continuous_kill_alpha", {"logit_micromet_correlation": 0.99}),
        ("micromet", "continuous_kill_alpha_micromet", {"logit_protected_fraction": 1e-15})),
}


def basin_start(objective, fit, fills) -> np.ndarray:
    """The nesting ``objective``'s z at a nested structure's MAP ``fit``: shared
    parameters copied, the others at ``fills`` (natural scale, logit parameters only)
    or at the prior centre."""
    names = list(objective.tm.names)
    z = np.asarray(objective.z_prior, float).copy()
    for n, v in zip(fit.names, np.asarray(fit.z, float), strict=True):
        if n not in names:
            raise ValueError(f"basin_start: {n!r} of the nested structure is not a "
                             f"parameter of the nesting one")
        z[names.index(n)] = v
    for n, p in fills.items():
        if not n.startswith("logit_"):
            raise ValueError(f"basin_start: fills are logit parameters, got {n!r}")
        z[names.index(n)] = np.log(p / (1.0 - p))
    return z


def fit_fold(arms, obs, train, structure, args, extra=None):
    """One fit on the observations of trials ``train`` (the model holds every arm).
    With ``args.basin_starts`` and a structure of `BASINS`: first a fit of each nested
    structure, then the nesting one from each of their MAPs (one start each), keeping
    the lower loss; ``fit.basins`` then says which start won and every loss."""
    if getattr(args, "basin_starts", False):
        return _basin_fit(arms, obs, train, structure, args, extra)
    tm, objective = _objective(arms, obs, train, structure, args, extra)
    fit = fit_trials(objective, n_starts=args.starts, max_steps=args.steps, seed=args.seed)
    if args.hyper == "auto":
        # the prior sds by type-II maximum likelihood on the fold's own trials
        fit, objective, evidence = fit_prior_sds(objective, fit, which=HYPERS,
                                                 max_steps=args.steps)
        fit.hyper["evidence"] = evidence
    return tm, objective, fit


def _objective(arms, obs, train, structure, args, extra=None):
    """The fold's model and objective (see `fit_fold`)."""
    links = getattr(args, "links", False)
    # as the main job: with the links, every neoadjuvant arm's whole course in the model
    # and the training trials' EFS/DFS landmarks in the data
    neo_all, courses = load_neo_landmarks(arms, CLINICAL) if links else ([], {})
    tm = TrialModel.build(arms, n_nodes=args.nodes, n_her2=args.her2_nodes,
                          pcr_outcome=links, courses=courses,
                          **({"protected": links} | STRUCTURES[structure]))
    pcr = [o for o in obs if trial_family(o.trial) in train]
    by_name = {a.name: a for a in arms}
    # the published pCR-outcome HRs (as the main job fits them), pooled over the
    # training trials' treated arms
    link_obs = load_links([by_name[o.arm] for o in pcr], CLINICAL) if links else []
    trained = {o.arm for o in pcr}
    neo = [m for m in neo_all if m.arm in trained]
    data = TrialData(pcr=pcr, links=link_obs, neo_landmarks=neo, **(extra or {}))
    return tm, Objective(tm, data, trial_sd=args.trial_sd, her2_drug_sd=args.her2_drug_sd)


def _basin_fit(arms, obs, train, structure, args, extra):
    if structure not in BASINS:
        raise SystemExit(f"clinical_validation: --basin-starts needs a structure that "
                         f"nests two others ({', '.join(BASINS)}), got {structure!r}")
    plain = argparse.Namespace(**(vars(args) | {"basin_starts": False}))
    subs, fits = {}, {}
    for basin, nested, fills in BASINS[structure]:
        _, _, sub = fit_fold(arms, obs, train, nested, plain, extra)
        subs[basin] = (sub, fills)
    tm, objective = _objective(arms, obs, train, structure, plain, extra)
    for basin, (sub, fills) in subs.items():
        fits[basin] = fit_trials(objective, n_starts=1, max_steps=args.steps, seed=args.seed,
                                 start=basin_start(objective, sub, fills))
    best = min(fits, key=lambda b: fits[b].loss)
    fit = fits[best]
    names = list(tm.names)
    fit.basins = {"basin": best,
                  **{f"basin_loss_{b}": f.loss for b, f in fits.items()},
                  # the same without the prior: what the data say of each basin's fit
                  **{f"basin_data_loss_{b}": f.loss - float(
                      objective.loss_parts(jnp.asarray(f.z))["prior"])
                     for b, f in fits.items()},
                  **{f"nested_loss_{b}": subs[b][0].loss for b in subs},
                  # where the kept fit ended: the two parameters that tell the basins apart
                  **{f"map_{n.removeprefix('logit_')}":
                     float(scipy.special.expit(fit.z[names.index(n)]))
                     for n in ("logit_micromet_correlation", "logit_protected_fraction")
                     if n in names}}
    return tm, objective, fit


def families_of(obs):
    """The pCR folds: one per trial family, in the order of pcr_arms.csv."""
    return list(dict.fromkeys(trial_family(o.trial) for o in obs))


def _pcr_part(fi):
    """The checkpoint part of pCR fold ``fi`` (its index in `families_of`)."""
    return f"pcr_{fi:02d}"


def _saved_rows(ckpt, part):
    """The rows of fold ``part`` saved in the checkpoint, or None."""
    got = None if ckpt is None else ckpt.load(part)
    return None if got is None else json.loads(str(got["rows"]))


def _fold_rows(ckpt, part, compute, log):
    """A fold's rows: from the checkpoint when it holds them (``--checkpoint``), else
    computed (and saved there)."""
    rows = _saved_rows(ckpt, part)
    if rows is not None:
        log(f"  {part}: from the checkpoint")
        return rows
    rows = compute()
    if ckpt is not None:
        ckpt.save(part, {"rows": json.dumps(rows, default=_plain)})
    return rows


def _plain(v):
    return v.item() if hasattr(v, "item") else str(v)


def pcr_folds(arms, obs, structure, args, log, ckpt=None):
    """Leave each trial family out in turn: ``(rows, missing)``, ``missing`` the folds
    neither run here (``--folds``) nor in the checkpoint. A fold's random keys depend on
    its index alone, so folds run apart (``--folds``, ``--checkpoint``) give the rows of
    one run."""
    families = families_of(obs)
    folds = [f for f in families if not args.quick or f in QUICK_FOLDS]
    rows, missing = [], []
    for fi, held in enumerate(families):
        if held not in folds:
            continue
        part = _pcr_part(fi)
        if args.folds and held not in args.folds:
            saved = _saved_rows(ckpt, part)
            if saved is None:
                missing.append(held)
            else:
                rows += saved
            continue
        rows += _fold_rows(ckpt, part, lambda held=held, fi=fi: _pcr_fold(
            arms, obs, families, held, fi, structure, args, log), log)
    return rows, missing


def _pcr_fold(arms, obs, families, held, fi, structure, args, log):
    t0 = time.perf_counter()
    rows = []
    fkey = jax.random.fold_in(jax.random.PRNGKey(args.seed), fi)
    key = jax.random.fold_in(fkey, 1)
    train = [f for f in families if f != held]
    tm, objective, fit = fit_fold(arms, obs, train, structure, args)
    post = posterior(objective, fit, args, jax.random.fold_in(fkey, 0))
    rates = resample(draw_values(lambda z, tm=tm: tm.pcr_rates(z)[0], post.draws,
                                 batch=args.batch,
                                 linearise_at=linearise_at(post.method, fit.z)),
                     post.weights, [args.seed, fi])
    point = np.asarray(tm.pcr_rates(jnp.asarray(fit.z))[0])
    # the fold's MAP on a doubled responsiveness grid: the fit's loss, and every arm's
    # rate (the held-out ones included)
    quad = quadrature_check(objective, fit.z)
    trial_only = _trial_effect_rates(tm, objective, fit, held, args)
    by_name = {a.name: a for a in arms}
    fitted_drugs = {d for o in objective.data.pcr for d in by_name[o.arm].regimen.drugs}
    for o in obs:
        if trial_family(o.trial) != held:
            continue
        i = tm.arm_names.index(o.arm)
        k1, k2, key = jax.random.split(key, 3)
        lo, hi, counts = _count_interval(rates[:, i], o.n, k1)
        t_lo, t_hi, _ = _count_interval(trial_only[:, i], o.n, jax.random.fold_in(k1, 1))
        f_lo, f_hi = binomial_floor(o.count / o.n, o.n)
        prior_only = sorted(set(arms[i].regimen.drugs) - fitted_drugs)
        rows.append({
            "held_out": held, "trial": o.trial, "arm": o.arm,
            "pcr_definition": o.definition, "n": o.n, "count": o.count,
            "observed_pct": 100 * o.count / o.n, "map_pct": 100 * point[i],
            "mean_pct": 100 * float(np.mean(rates[:, i])),
            "rate_lo_pct": 100 * float(np.quantile(rates[:, i], 0.025)),
            "rate_hi_pct": 100 * float(np.quantile(rates[:, i], 0.975)),
            "pred_lo_pct": 100 * lo / o.n, "pred_hi_pct": 100 * hi / o.n,
            "inside": bool(lo <= o.count <= hi),
            "pit": _pit(counts, o.count, k2),
            "map_trial_lo_pct": 100 * t_lo / o.n, "map_trial_hi_pct": 100 * t_hi / o.n,
            "floor_lo_pct": 100 * f_lo / o.n, "floor_hi_pct": 100 * f_hi / o.n,
            "drugs_prior_only": " ".join(prior_only),
            "fit_loss": fit.loss, "fit_converged": fit.converged,
            "quadrature_ok": quad["ok"], "quadrature_delta_loss": quad["delta_loss"],
            "quadrature_map_diff_pct": quad["pcr_diff_pct"][i],
            "trial_sd": objective.trial_sd, "her2_drug_sd": objective.her2_drug_sd,
            "chemo_drug_sd": objective.chemo_drug_sd,
            "psis_k_hat": post.k_hat, **mcmc_columns(post),
        })
    fold_s = round(time.perf_counter() - t0, 1)
    parts = (_loss_columns(objective, fit) | {"trial_effect_rms": _trained_rms(tm, fit, held)}
             | getattr(fit, "basins", {}))
    for r in rows:
        r |= parts
        r["fold_s"] = fold_s
    log(f"  {held}: fit {time.perf_counter() - t0:.0f} s, loss {fit.loss:.3f}, sds "
        f"trial {objective.trial_sd:.3g} her2 {objective.her2_drug_sd:.3g} chemo "
        f"{objective.chemo_drug_sd:.3g}, "
        + ", ".join(f"{r['arm']} {r['observed_pct']:.1f} in "
                    f"[{r['pred_lo_pct']:.1f}, {r['pred_hi_pct']:.1f}]"
                    for r in rows if r["held_out"] == held))
    return rows


def _trained_rms(tm, fit, held):
    """Root mean square of the training trials' fitted effects (the held-out trial's is
    its prior mean, 0): compare with ``trial_sd``, the spread a new trial is drawn from.
    NaN for a structure without trial effects."""
    check = trial_spread_check(tm.names, fit.z, 1.0)
    if check is None:
        return float("nan")
    v = [e for k, e in check["effects"].items() if k != held]  # keys: trial families
    return float(np.sqrt(np.mean(np.square(v))))


def binomial_floor(rate, n, prob=0.95):
    """The central ``prob`` interval ``(lo, hi)`` of a Bin(n, rate) count: the predictive
    interval of an oracle that knows the arm's true rate (the narrowest any model can
    give at that coverage; its width is the floor of the width target)."""
    lo, hi = scipy.stats.binom.ppf([(1 - prob) / 2, (1 + prob) / 2], n, rate)
    return float(lo), float(hi)


def floor_width(arms) -> float:
    """Mean width in points of `binomial_floor` over ``(rate, n)`` pairs (NaN if none)."""
    if not arms:
        return float("nan")
    return float(np.mean([100 * (hi - lo) / n for (lo, hi), (_, n)
                          in zip((binomial_floor(p, n) for p, n in arms), arms, strict=True)]))


def _trial_effect_rates(tm, objective, fit, held, args):
    """Arm pCR rates at the fold's MAP with only the left-out trial's effect uncertain
    (``trial_effect#held`` ~ N(0, trial_sd), its prior, which is also its posterior: no
    data of the fold inform it), ``(draws, arms)``: the width a new trial's unknown
    population alone gives, every fitted parameter known."""
    key = f"trial_effect#{held}"
    z = np.repeat(np.asarray(fit.z)[None], args.draws, axis=0)
    if key in tm.names:
        rng = np.random.default_rng([args.seed, 11])
        z[:, tm.names.index(key)] = objective.trial_sd * rng.standard_normal(args.draws)
    return np.asarray(draw_values(lambda zz, tm=tm: tm.pcr_rates(zz)[0], jnp.asarray(z),
                                  batch=args.batch))


def _meta_regression(y, v, x, groups, tau=None):
    """Random-effects meta-regression: ``y_i = x_i b + u_g(i) + e_i``, ``e_i ~ N(0,
    v_i)`` (known), ``u_g ~ N(0, tau^2)`` shared by the rows of one trial ``g``.
    ``tau`` None: REML (restricted maximum likelihood) on a bounded search; else fixed.
    **Returns:** ``(b, cov of b, tau^2)`` (generalised least squares at that tau)."""
    y, v, x = np.asarray(y, float), np.asarray(v, float), np.asarray(x, float)
    same = np.asarray(groups)[:, None] == np.asarray(groups)[None, :]

    def gls(t2):
        vi = np.linalg.inv(np.diag(v) + t2 * same)
        info = x.T @ vi @ x
        b = np.linalg.solve(info, x.T @ vi @ y)
        return b, vi, info

    def neg_reml(log_tau):
        t2 = np.exp(2.0 * log_tau)
        b, vi, info = gls(t2)
        r = y - x @ b
        return 0.5 * (-np.linalg.slogdet(vi)[1] + r @ vi @ r + np.linalg.slogdet(info)[1])

    if tau is None:
        opt = scipy.optimize.minimize_scalar(neg_reml, bounds=(-8.0, 2.0),
                                             method="bounded", options={"xatol": 1e-8})
        t2 = float(np.exp(2.0 * opt.x))
        t2 = 0.0 if t2 < 1e-6 else t2  # the bound stands for tau = 0
    else:
        t2 = float(tau) ** 2
    b, _, info = gls(t2)
    return b, np.linalg.inv(info), t2


def _meta_features(arm, definition=None, covariates="blockade"):
    """Covariates of the yardstick: intercept, any HER2 blocker, two or more; with
    ``covariates="regimen"`` also an anthracycline, carboplatin, a breast-only pCR
    definition (no ypN0) and one without in-situ disease (ypT0, not ypT0/is), of
    ``definition`` (the arm's published definition)."""
    drugs = arm.regimen.drugs
    n_her2 = sum(fitcsc.CATALOGUE[d].drug_class == "her2" for d in drugs)
    x = [1.0, float(n_her2 >= 1), float(n_her2 >= 2)]
    if covariates == "blockade":
        return x
    if covariates != "regimen":
        raise ValueError(f"_meta_features: covariates must be 'blockade' or 'regimen', got "
                         f"{covariates!r}")
    return x + [float(any(d in ("doxorubicin", "epirubicin") for d in drugs)),
                float("carboplatin" in drugs), float("ypN0" not in definition),
                float("/is" not in definition)]


META_METHOD = ("random-effects meta-regression of logit pCR (0.5 added to each cell) on "
               "HER2 blockade (none, one blocker, two), one random effect per trial shared "
               "by its arms, between-trial sd by REML on the training trials; regimen "
               "backbone, dose and definition ignored")


META_TAUS = (0.0, 0.2, 0.3, 0.4)  # fixed between-trial sds of the comparison's trade-off rows


def meta_reference(arms, obs, seed=0, n_draws=100_000, tau=None, covariates="blockade"):
    """The model-free yardstick for the same folds: each left-out arm predicted by a
    random-effects meta-regression of the training trials' arms (`_meta_regression`
    on `_meta_features` with ``covariates``; ``tau`` fixes the between-trial sd, None:
    REML): logit pCR ~ N(x b, x' cov x + tau^2), then a binomial count for a trial of
    the arm's size. A model that predicts from regimens should be sharper than this at
    the same coverage; with ``tau`` fixed, the coverage and width it gives trace what
    any sharper interval costs in coverage."""
    k = np.asarray([o.count for o in obs], float)
    n = np.asarray([o.n for o in obs], float)
    y = np.log((k + 0.5) / (n - k + 0.5))
    v = 1.0 / (k + 0.5) + 1.0 / (n - k + 0.5)
    x = np.asarray([_meta_features(a, o.definition, covariates)
                    for a, o in zip(arms, obs, strict=False)])
    fam = np.asarray([trial_family(o.trial) for o in obs])
    fits = {}
    rows = []
    for i, o in enumerate(obs):
        held = fam[i]
        if held not in fits:
            train = fam != held
            used = np.flatnonzero(np.any(x[train] != 0, axis=0))  # columns the data inform
            fits[held] = (used,) + _meta_regression(y[train], v[train], x[train][:, used],
                                                    fam[train], tau)
        used, b, cov, t2 = fits[held]
        xi = x[i, used]
        rng = np.random.default_rng([seed, i])  # per arm: no arm's draws depend on another's
        sd = np.sqrt(xi @ cov @ xi + t2)
        rate = 1.0 / (1.0 + np.exp(-rng.normal(xi @ b, sd, n_draws)))
        counts = rng.binomial(o.n, rate)
        lo, hi = np.quantile(counts, [0.025, 0.975], method="inverted_cdf")
        rows.append({"held_out": held, "arm": o.arm, "n": o.n,
                     "observed_pct": 100 * o.count / o.n,
                     "mean_pct": 100 * float(np.mean(counts)) / o.n,
                     "pred_lo_pct": 100 * float(lo) / o.n, "pred_hi_pct": 100 * float(hi) / o.n,
                     "inside": bool(lo <= o.count <= hi), "tau": float(np.sqrt(t2)),
                     "n_training_arms": int(np.sum(fam != held)), "drugs_prior_only": ""})
    return rows


def hr_folds(arms, obs, adj, structure, args, log, ckpt=None):
    """Leave one adjuvant trial out (see the module docstring); with ``ckpt`` each fold's
    row is saved, and read back by a rerun; ``args.hr_folds`` (``--hr-folds``) keeps
    only the folds of those held-out trials."""
    rows = []
    only = getattr(args, "hr_folds", None)
    for j, held in enumerate(_held_hr(adj)):
        if only and held not in only:
            continue
        rows += _fold_rows(ckpt, f"hr_{j:02d}", lambda j=j: _hr_fold(
            arms, obs, adj, j, structure, args, log), log)
    return rows


def _hr_fold(arms, obs, adj, j, structure, args, log):
    adj_arms, landmarks, all_hrs = adj
    hrs = [x for x in all_hrs if not x.upper]
    rows = []
    key = jax.random.PRNGKey(args.seed + 7)
    families = families_of(obs)
    h = hrs[j]
    held = _trial_of(adj_arms, h.experimental)
    t0 = time.perf_counter()
    lm_train = [m for m in landmarks if _trial_of(adj_arms, m.arm) != held]
    bounds = [x for x in all_hrs if x.upper]
    # the other trials' long-term bounds enter the fit with --fit-long-term; the held
    # trial's is only predicted
    hr_train = [x for x in hrs if x is not h] + (
        [x for x in bounds if _trial_of(adj_arms, x.experimental) != held]
        if getattr(args, "fit_long_term", False) else [])
    lm_held = [m for m in landmarks if _trial_of(adj_arms, m.arm) == held]
    tm, objective, fit = fit_fold(arms + adj_arms, obs, families, structure, args,
                                  extra={"landmarks": lm_train + lm_held,
                                         "hrs": hr_train})
    post = posterior(objective, fit, args, jax.random.fold_in(key, j))
    ix = {a: i for i, a in enumerate(tm.arm_names)}
    day = jnp.asarray([h.years * 365.25])

    def log_hr(z, ie=ix[h.experimental], ic=ix[h.control], days=day, tm=tm):
        """log HR (ratio of cumulative hazards) at each of ``days``."""
        dfs, _, _ = tm.dfs(z, days)
        return jnp.log(jnp.log(jnp.clip(dfs[ie], 1e-12, 1 - 1e-12))
                       / jnp.log(jnp.clip(dfs[ic], 1e-12, 1 - 1e-12)))

    vals = resample(draw_values(lambda z: log_hr(z)[0], post.draws, batch=args.batch,
                                linearise_at=linearise_at(post.method, fit.z),
                                link="identity"), post.weights,
                    args.seed + 100 + j)
    p_lo, p_hi = np.exp(np.quantile(vals, [0.025, 0.975]))
    lo, hi = hr_predictive_interval(vals, h.se, seed=[args.seed, 13, j])
    # the model's HR (ratio of cumulative hazards) at the fold's MAP over horizons: how
    # much of its effect lasts after the blocker stops
    hr_years = np.exp(np.asarray(log_hr(jnp.asarray(fit.z),
                                        days=jnp.asarray(HR_YEARS) * 365.25)))
    by_year = {f"map_hr_{y:g}y": float(v) for y, v in zip(HR_YEARS, hr_years, strict=True)}
    long_term = {}
    lt = next((x for x in bounds if _trial_of(adj_arms, x.experimental) == held), None)
    if lt is not None:
        analysis = next(a for t, a, _ in ADJUVANT_LONG_TERM if t == held)
        years, lt_log_hr, lt_se = lt.years, lt.log_hr, lt.se
        lt_days = jnp.asarray([years * 365.25])
        lt_vals = resample(draw_values(lambda z: log_hr(z, days=lt_days)[0], post.draws,
                                       batch=args.batch,
                                       linearise_at=linearise_at(post.method, fit.z),
                                       link="identity"), post.weights, args.seed + 200 + j)
        lt_lo, lt_hi = np.exp(np.quantile(lt_vals, [0.025, 0.975]))
        bound = float(np.exp(lt_log_hr + 1.96 * lt_se))
        long_term = {"long_term_analysis": analysis, "long_term_years": years,
                     "long_term_published_hr": float(np.exp(lt_log_hr)),
                     "long_term_published_hi": bound,
                     "long_term_map_hr": float(np.exp(log_hr(jnp.asarray(fit.z),
                                                             days=lt_days)[0])),
                     "long_term_param_lo": float(lt_lo), "long_term_param_hi": float(lt_hi),
                     "long_term_within_bound": bool(lt_lo <= bound)}
    hr_obs = float(np.exp(h.log_hr))
    rows.append({"held_out": held, "comparison": h.name, "years": h.years,
                 "published_hr": hr_obs,
                 "published_lo": float(np.exp(h.log_hr - 1.96 * h.se)),
                 "published_hi": float(np.exp(h.log_hr + 1.96 * h.se)),
                 "map_hr": float(np.exp(log_hr(jnp.asarray(fit.z))[0])),
                 "mean_hr": float(np.exp(np.mean(vals))), "pred_lo": float(lo),
                 "pred_hi": float(hi), "inside": bool(lo <= hr_obs <= hi),
                 # an interval that reaches HR 1 cannot tell benefit from none: "inside"
                 # then says nothing
                 "excludes_1": bool(hi < 1.0),
                 "param_lo": float(p_lo), "param_hi": float(p_hi), "se_log_hr": h.se,
                 **by_year, **long_term,
                 "fit_loss": fit.loss,
                 **_loss_columns(objective, fit), **getattr(fit, "basins", {}),
                 "trial_sd": objective.trial_sd,
                 "her2_drug_sd": objective.her2_drug_sd,
                 "chemo_drug_sd": objective.chemo_drug_sd,
                 "psis_k_hat": post.k_hat, **mcmc_columns(post),
                 "fold_s": round(time.perf_counter() - t0, 1)})
    log(f"  {h.name}: fit {time.perf_counter() - t0:.0f} s, HR {hr_obs:.2f} vs "
        f"{rows[-1]['map_hr']:.2f} [{lo:.2f}, {hi:.2f}]")
    return rows


HR_YEARS = (1.0, 2.0, 3.0, 5.0)  # horizons of the MAP's HR reported beside each HR fold


def hr_predictive_interval(log_hr_draws, se, *, prob=0.95, seed=0):
    """The central ``prob`` predictive interval ``(lo, hi)`` of a published hazard ratio
    whose log has standard error ``se``, from posterior draws of the model's log HR: each
    draw plus the estimate's own sampling error ``N(0, se)`` (the HR counterpart of a pCR
    arm's binomial count; a trial's published HR is an estimate, not the true ratio)."""
    vals = np.asarray(log_hr_draws, float)
    noise = np.random.default_rng(seed).standard_normal(vals.shape)
    lo, hi = np.quantile(vals + float(se) * noise, [(1 - prob) / 2, (1 + prob) / 2])
    return float(np.exp(lo)), float(np.exp(hi))


def posterior_check(rows) -> dict:
    """Over the folds: PSIS k_hat range (psis), or the worst R-hat, smallest bulk ESS,
    divergences and flagged folds (nuts, chees)."""
    k = [float(r["psis_k_hat"]) for r in rows if np.isfinite(float(r["psis_k_hat"]))]
    out = {"k_hat_min": min(k), "k_hat_max": max(k)} if k else {}
    if rows and "rhat_max" in rows[0]:
        folds = {r.get("held_out", "") + r.get("comparison", ""): r for r in rows}
        out |= {"rhat_max": max(float(r["rhat_max"]) for r in rows),
                "ess_bulk_min": min(float(r["ess_bulk_min"]) for r in rows),
                "n_divergent": int(sum(int(r["n_divergent"]) for r in folds.values())),
                "n_folds_flagged": sum(bool(r["posterior_flag"]) for r in folds.values())}
    return out


def _trial_of(adj_arms, name):
    return next(a.trial for a in adj_arms if a.name == name)


def _held_hr(adj) -> list[str]:
    """The adjuvant trial each hazard-ratio fold leaves out, in fold order."""
    return [_trial_of(adj[0], h.experimental) for h in adj[2] if not h.upper]


def metrics(rows):
    inside = [r["inside"] for r in rows]
    err = [r["mean_pct"] - r["observed_pct"] for r in rows]
    width = [r["pred_hi_pct"] - r["pred_lo_pct"] for r in rows]
    with_fit = [r for r in rows if not r["drugs_prior_only"]]
    parts = {}
    if rows and "map_trial_lo_pct" in rows[0]:
        parts = {"mean_width_95_map_trial_points": float(np.mean(
            [r["map_trial_hi_pct"] - r["map_trial_lo_pct"] for r in rows]))}
    return {"n_arms": len(rows), "n_inside_95": int(sum(inside)),
            "mean_width_95_floor_points": floor_width([(r["observed_pct"] / 100, r["n"])
                                                       for r in rows]), **parts,
            "share_inside_95": float(np.mean(inside)) if rows else float("nan"),
            "mean_signed_error_points": float(np.mean(err)) if rows else float("nan"),
            "mean_abs_error_points": float(np.mean(np.abs(err))) if rows else float("nan"),
            "mean_width_95_points": float(np.mean(width)) if rows else float("nan"),
            "n_arms_all_drugs_fitted": len(with_fit),
            "share_inside_95_all_drugs_fitted": (float(np.mean([r["inside"]
                                                                for r in with_fit]))
                                                 if with_fit else float("nan"))}


def main(args) -> dict:
    t_start = time.perf_counter()
    out = pathlib.Path(args.out or ROOT / "experiments" / "results" / "clinical_validation"
                       / (args.structure + ("_" + args.tag.lstrip("_") if args.tag else "")))
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.verbose else (
        lambda msg: None)
    arms, obs, adj = load()
    held_hr = _held_hr(adj)
    if args.hr_folds and not set(args.hr_folds) <= set(held_hr):
        raise SystemExit(f"clinical_validation: --hr-folds names from {sorted(held_hr)}; "
                         f"got {args.hr_folds}")
    if args.folds:
        unknown = sorted(set(args.folds) - set(families_of(obs)))
        if unknown or not args.checkpoint:
            raise SystemExit(f"clinical_validation: --folds needs --checkpoint and names "
                             f"from {families_of(obs)}; got {args.folds}")
    ckpt = None
    if args.checkpoint:  # every fold saved as it finishes; a rerun reads them back
        ckpt = Checkpoint(out, "clinical_validation", fingerprint(
            {k: v for k, v in vars(args).items() if k not in CHECKPOINT_FREE},
            [(CLINICAL / f).read_bytes() for f in DATA_FILES]), resume=True)
    previous_wall = 0.0
    if args.only_hr:  # add the hazard-ratio folds to a finished pCR run in --out, if any
        rows = _read_rows(out / "arms.csv") if (out / "arms.csv").exists() else []
        if not rows:
            log(f"{out}: no pCR folds (arms.csv); the hazard-ratio folds alone")
        if (out / "summary.json").exists():  # its pCR folds' time counts too
            previous_wall = json.loads((out / "summary.json").read_text())["wall_s"]
    else:
        log(f"structure {args.structure}: pCR folds")
        rows, missing = pcr_folds(arms, obs, args.structure, args, log, ckpt)
        if missing:
            if not (args.quick or args.no_hr):
                hr_folds(arms, obs, adj, args.structure, args, log, ckpt)
            # the folds that other processes (--folds) saved while these ran: when none
            # is missing any more, this process writes the tables. Read only: nothing is
            # recomputed (another process may have written them and removed the
            # checkpoint first)
            saved = [_saved_rows(ckpt, _pcr_part(fi))
                     for fi, f in enumerate(families_of(obs))
                     if not args.quick or f in QUICK_FOLDS]
            if all(r is not None for r in saved):
                rows, missing = [r for part in saved for r in part], []
        if missing:
            print(f"clinical_validation: folds saved in {ckpt.dir}; not done yet: "
                  f"{', '.join(missing)}. Run them (--folds), then rerun without --folds "
                  "to write the tables.", file=sys.stderr)
            return {}
    held = {r["held_out"] for r in rows}
    reference = [r for r in meta_reference(arms, obs, args.seed) if r["held_out"] in held]
    hr_rows = [] if args.quick or args.no_hr else hr_folds(arms, obs, adj, args.structure,
                                                            args, log, ckpt)
    # every fold's own time, wherever it ran (this process, or one that saved it)
    fold_s = {(r["held_out"], r.get("comparison", "")): r["fold_s"] for r in rows + hr_rows
              if "fold_s" in r}
    summary = {
        "question": "leave-one-trial-out prediction of pCR counts and adjuvant hazard ratios",
        "structure": args.structure, "build_options": STRUCTURES[args.structure],
        "quick": bool(args.quick),
        "pcr": metrics(rows),
        "meta_reference": {k: v for k, v in metrics(reference).items()
                           if "fitted" not in k} | {
            "method": META_METHOD, "arms": reference},
        "hr": {"n": len(hr_rows), "n_inside_95": int(sum(r["inside"] for r in hr_rows)),
               "n_inside_excluding_1": int(sum(r["inside"] and r["pred_hi"] < 1.0
                                               for r in hr_rows)),
               "n_long_term": sum("long_term_within_bound" in r for r in hr_rows),
               "n_long_term_within_bound": int(sum(r.get("long_term_within_bound", False)
                                                   for r in hr_rows))},
        "targets": {"share_inside_95": ">= 0.80", "mean_signed_error_points": "within +-5",
                    "mean_width_95_points": "< 30"},
        "posterior_check": posterior_check(rows + hr_rows),
        "settings": {"posterior": args.posterior, "starts": args.starts, "steps": args.steps,
                     "draws": args.draws, "nodes": args.nodes, "her2_nodes": args.her2_nodes,
                     "trial_sd": args.trial_sd, "her2_drug_sd": args.her2_drug_sd,
                     "hyper": args.hyper, "links": bool(args.links),
                     "fit_long_term": bool(getattr(args, "fit_long_term", False)),
                     "basin_starts": bool(getattr(args, "basin_starts", False)),
                     "interpolant": INTERPOLANT, "blockade": BLOCKADE_RULE,
                     "seed": args.seed}
        | ({"chains": args.chains, "warmup": args.warmup}
           if args.posterior in ("nuts", "chees") else {}),
        "interval": "95% posterior predictive interval of the count for a trial of the "
                    "arm's size: posterior draws of the parameters, then a binomial count",
        "wall_s": round(time.perf_counter() - t_start + previous_wall, 1),
        "folds_s": round(sum(fold_s.values()), 1),
        "precision": "float64" if jax.config.jax_enable_x64 else "float32",
        "device": str(jax.devices()[0]),
    }
    if rows:  # an --only-hr run without pCR folds has no arms to write or draw
        write_atomic(out / "arms.csv", _rows_csv(rows))
    write_atomic(out / "hazard_ratios.csv", _rows_csv(hr_rows, empty=["held_out"]))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if rows:
        _figure(rows, summary, out / "calibration.png")
    _result_md(rows, hr_rows, summary, out / "RESULT.md")
    if ckpt is not None:
        remove_checkpoint(out)
    if args.out is None:  # the committed results: one table over every structure run
        _comparison(out.parent)
    return summary


def _comparison(root):
    """``root/RESULT.md``: the structures run so far (``root/<structure>/summary.json``)
    side by side, with the targets of issue 12."""
    runs = []
    for d in sorted(p for p in root.iterdir() if (p / "summary.json").exists()):
        s = json.loads((d / "summary.json").read_text())
        if not s.get("quick") and s["pcr"]["n_arms"]:  # hazard-ratio-only runs: own folder
            runs.append((d.name, s))
    lines = ["# Leave-one-trial-out validation: structures compared", "",
             "Each structure is fitted to all neoadjuvant trials but one and predicts the "
             "left-out one's arms (95% posterior predictive interval of the count for a "
             "trial of the arm's size); see each folder's RESULT.md for the arms. Runs "
             "scored on 13 arms predate the four trials added on 2026-12-06 (23 arms of "
             "nine trials since); the yardstick and oracle rows are for the current data.",
             "",
             "| structure | options | posterior | arms inside 95% PI | mean signed error "
             "(points) | mean width (points) | width at the MAP, the new trial's effect "
             "only | inside, arms with fitted drugs | adjuvant HRs inside | PSIS k_hat of "
             "the folds | responsiveness grid |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             "| target | | | >= 80% | within +-5 | < 30 | | | | < 0.7 | |"]
    arms, obs, _ = load()
    base = meta_reference(arms, obs)  # on the current data (cheap, no fit)
    ref = metrics(base)
    yard = [ref]  # every yardstick row's metrics
    lines.append(f"| model-free yardstick (meta-regression, `meta_reference`) | HER2 "
                 f"blockade only, between-trial sd by REML | - | "
                 f"{ref['n_inside_95']}/{ref['n_arms']} ({100 * ref['share_inside_95']:.0f}%) | "
                 f"{ref['mean_signed_error_points']:+.1f} | "
                 f"{ref['mean_width_95_points']:.1f} | | | | | |")
    for tau in META_TAUS:  # what a sharper interval costs in coverage
        m = metrics(meta_reference(arms, obs, tau=tau))
        yard.append(m)
        lines.append(f"| the same, between-trial sd fixed at {tau:g} (logit) | | - | "
                     f"{m['n_inside_95']}/{m['n_arms']} ({100 * m['share_inside_95']:.0f}%) | "
                     f"{m['mean_signed_error_points']:+.1f} | "
                     f"{m['mean_width_95_points']:.1f} | | | | | |")
    reml = meta_reference(arms, obs, covariates="regimen")  # do covariates explain it?
    taus = sorted({r["tau"] for r in reml})
    width_cov = metrics(reml)["mean_width_95_points"]
    for tau in (None, 0.2, 0.3):
        m = metrics(reml if tau is None else meta_reference(arms, obs, tau=tau,
                                                              covariates="regimen"))
        yard.append(m)
        lines.append("| the same with the regimen and the pCR definition as covariates "
                     "(anthracycline, carboplatin, breast-only, ypT0 without /is), "
                     + ("between-trial sd by REML" if tau is None else
                        f"between-trial sd fixed at {tau:g}")
                     + f" | | - | {m['n_inside_95']}/{m['n_arms']} "
                     f"({100 * m['share_inside_95']:.0f}%) | "
                     f"{m['mean_signed_error_points']:+.1f} | "
                     f"{m['mean_width_95_points']:.1f} | | | | | |")
    floor = floor_width([(o.count / o.n, o.n) for o in obs])
    lines.append(f"| oracle: each arm's true rate known (its published rate), binomial "
                 f"sampling only (`binomial_floor`) | - | - | 95% by construction | 0 | "
                 f"{floor:.1f} | | | | | |")
    tau_blockade = sorted({r["tau"] for r in base})
    arm_rows = {}  # each run's arms.csv, read once
    for name, s in runs:
        m, st = s["pcr"], s["settings"]
        opts = ", ".join(f"{k}={v}" for k, v in s["build_options"].items() if v is not False)
        opts += (f"; trial_sd={st.get('trial_sd')}, her2_drug_sd={st.get('her2_drug_sd', 1.0)}"
                 if st.get("hyper", "fixed") == "fixed" else
                 "; prior sds by marginal likelihood per fold")
        if st.get("links"):
            opts += "; pCR-outcome links and neoadjuvant EFS/DFS landmarks (as the main job)"
        if st.get("fit_long_term"):
            opts += ("; HR folds: the other trial's long-term ITT HR fitted as an upper "
                     "bound")
        if st.get("basin_starts"):
            opts += "; each fold started from both nested structures' MAPs"
        post = st.get("posterior", "psis")
        hr = f"{s['hr']['n_inside_95']}/{s['hr']['n']}" if s["hr"]["n"] else "not run"
        if s["hr"]["n"] and "n_inside_excluding_1" in s["hr"]:
            hr += f" ({s['hr']['n_inside_excluding_1']} excluding HR 1)"
        arm_rows[name] = _read_rows(root / name / "arms.csv")
        k = [r["psis_k_hat"] for r in arm_rows[name]]
        k += [r["psis_k_hat"] for r in _read_rows(root / name / "hazard_ratios.csv")
              if "psis_k_hat" in r]
        k = [v for v in k if np.isfinite(v)]
        k_text = f"{min(k):.2f}-{max(k):.2f}" if k else "-"
        folds = {r["held_out"]: r.get("quadrature_ok") for r in arm_rows[name]}
        grid = (f"{st.get('nodes', 13)} nodes, "
                + ("eta-linear (run before the r-linear fix)" if None in folds.values() else
                   f"{st.get('interpolant', 'r-linear')}; check passed in "
                   f"{sum(folds.values())}/{len(folds)} folds")
                + f"; blockade {st.get('blockade', 'trapezoid')}")
        lines.append(
            f"| [{name}]({name}/RESULT.md) | {opts} | {post} | {m['n_inside_95']}/{m['n_arms']} "
            f"({100 * m['share_inside_95']:.0f}%) | {m['mean_signed_error_points']:+.1f} | "
            f"{m['mean_width_95_points']:.1f} | "
            + (f"{m['mean_width_95_map_trial_points']:.1f} | "
               if "mean_width_95_map_trial_points" in m else "- | ")
            + f"{100 * m['share_inside_95_all_drugs_fitted']:.0f}% of "
            f"{m['n_arms_all_drugs_fitted']} | {hr} | {k_text} | {grid} |")
    lines += ["", "Posterior: ``linear`` (the default since 2026-12-04) is the delta method, "
              "Laplace draws with every prediction linearised at the fold's MAP, the one "
              "calibrated by simulation (benchmarks/trial_calibration.py); ``psis`` rows are "
              "Laplace draws reweighted by PSIS, whose k_hat above 0.7 means the weights rest "
              "on a few draws and the intervals are too narrow. The psis rows were run before "
              "HER2 potency was made relative to each blocker's labelled-dose exposure "
              "(lapatinib was then inert under the class prior, hence NeoALTTO's misses) and "
              "before the two-margin fix of GeparQuattro's counts.", "",
              "The yardstick rows need no mechanism: a meta-regression of the training "
              "trials' logit pCR on HER2 blockade with one random effect per trial "
              "(`meta_reference`). With the between-trial sd by REML it is what "
              "between-trial spread and binomial sampling give; the rows with that sd fixed "
              "lower show what a sharper interval of this kind costs in coverage on the "
              "same folds. By REML the between-trial sd is "
              f"{tau_blockade[0]:.2f}-{tau_blockade[-1]:.2f} on the logit scale over the "
              "folds with HER2 blockade alone, and "
              f"{taus[0]:.2f}-{taus[-1]:.2f} with the regimen and the pCR definition as "
              "covariates: they explain part of the trials' spread, and their own "
              "uncertainty (four more coefficients from eight trials) adds width back "
              f"(mean width {width_cov:.1f} points by REML, against "
              f"{ref['mean_width_95_points']:.1f} without them). "
              + ("No row of this kind reaches 80% of arms inside with a mean width below "
                 "30 points: on these data the two targets conflict unless a model knows "
                 "more about a new trial's patients than its regimen and definition."
                 if not any(m["share_inside_95"] >= 0.8 and m["mean_width_95_points"] < 30
                            for m in yard) else
                 "A row of this kind meets both the coverage and the width target."), "",
              "The oracle row is the floor of the width target: an arm's 95% binomial "
              "interval when its true rate is known, here the published rate, for a trial "
              "of the arm's size. MDACC's three arms (19-23 patients) alone give 37-41 "
              "points. The column 'width at the MAP, the new trial's effect only' fixes "
              "every fitted parameter at the fold's MAP and draws only the left-out trial's "
              "effect from its prior (its posterior too: no data of the fold inform it), "
              "then a binomial count: what a new trial's unknown population costs on top "
              "of the floor, before any parameter uncertainty.", "",
              "Responsiveness grid: a patient's log residual is computed at the run's "
              "nodes of responsiveness and interpolated between them. Rows marked "
              "eta-linear were run with the interpolant linear in eta, whose error grew "
              "with the fitted spread "
              "(3.5 to 21 units of negative log posterior on NeoSphere at 13 nodes for "
              "spreads 0.5 to e); r-linear rows interpolate linearly in the kill factor r "
              "and check each fold's MAP on a doubled grid "
              "(`fitcsc.trials.quadrature_check`; per arm in arms.csv). That interpolant is "
              "exact for the CSC log residual only with growth_response_power 1: with it "
              "free the check failed in every fold at 13 nodes (the r-linear 13-node "
              "`continuous_kill_alpha` run of 2026-12-05, replaced). Rows marked "
              f"{INTERPOLANT} use `TrialModel.interpolate` since 2026-12-05: three "
              "adjacent nodes, exact for c0 + c1 r^alpha + c2 r (the CSC log residual) for "
              "every alpha, so 13 nodes suffice with alpha free.", "",
              "Blockade: how the HER2 blockade is integrated along each arm's half-day "
              "exposure grid. Rows marked trapezoid missed the daily peaks of lapatinib "
              "(NA-L's log cells 0.10 off the ODE solve at the default parameters); "
              f"{BLOCKADE_RULE} (since the evening of 2026-12-05) is Gauss-Legendre on "
              "each interval, within 2e-3."]
    linked = [(name, s["pcr"]) for name, s in runs if s["settings"].get("links")]
    for name, m in linked:
        if "mean_width_95_map_trial_points" not in m:
            continue
        wid = {k: [r["pred_hi_pct"] - r["pred_lo_pct"] for r in arm_rows[name]
                   if bool(r["drugs_prior_only"]) == k] for k in (False, True)}
        w_trial = m["mean_width_95_map_trial_points"]
        source = ("is near the binomial floor ({:.1f}); its {:.1f}-point mean width comes "
                  "from the uncertainty of the fitted parameters, not from the new "
                  "trial's unknown population" if w_trial < 1.25 * floor else
                  "is above the binomial floor ({:.1f}): the new trial's unknown "
                  "population costs width before any parameter uncertainty, and the "
                  "rest of its {:.1f}-point mean width is that uncertainty").format(
                      floor, m["mean_width_95_points"])
        lines += ["", f"`{name}` is fitted as the main job fits (`--links`: each fold "
                  "also fits the training trials' pCR-vs-no-pCR hazard ratios and "
                  "neoadjuvant EFS/DFS landmarks). Its mean width at the MAP with only "
                  f"the new trial's effect unknown, {w_trial:.1f} points, {source}: "
                  f"{np.mean(wid[False]):.1f} points over the {len(wid[False])} arms whose "
                  f"drugs all have a fitted effect, {np.mean(wid[True]):.1f} over the "
                  f"{len(wid[True])} with a drug that only the left-out trial gives "
                  "(prior-only)."]
    if not linked:
        lines += ["", "Not yet scored here: the main job's fit (`--links`)."]
    write_atomic(root / "RESULT.md", "\n".join(lines) + "\n")


def _read_rows(path):
    """Rows of a previous run's arms.csv (or hazard_ratios.csv), typed as `pcr_folds`
    (`hr_folds`) returns them."""
    import csv

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    out = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            row = {}
            for k, v in r.items():
                if v in ("True", "False"):  # inside, fit_converged, excludes_1, ...
                    row[k] = v == "True"
                elif k in ("n", "count"):
                    row[k] = int(v)
                else:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            out.append(row)
    return out


def _loss_columns(objective, fit) -> dict:
    """A fold's loss by kind of data (pCR counts, links, landmarks, prior; they add up
    to ``fit_loss``): where one structure's fit pays against another's."""
    return {f"fit_loss_{k}": v for k, v in objective.loss_parts(jnp.asarray(fit.z)).items()}


def _rows_csv(rows, empty=()):
    """CSV text of fold rows with every column any row has (folds saved by an earlier
    version may lack the newer ones: their cells stay empty)."""
    keys = list(dict.fromkeys(k for r in rows for k in r)) or list(empty)
    return csv_text(keys, [[_fmt(r.get(k, "")) for k in keys] for r in rows])


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _figure(rows, summary, path):
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5.2), constrained_layout=True)
    trials = list(dict.fromkeys(r["held_out"] for r in rows))
    for r in rows:
        c = f"C{trials.index(r['held_out'])}"
        # the interval as a line, not error bars: the mean of the draws may lie outside
        # the interval of the counts (a rate near 0 or 1 at the MAP, draws far from it)
        a1.vlines(r["observed_pct"], r["pred_lo_pct"], r["pred_hi_pct"], color=c, lw=0.8)
        a1.plot(r["observed_pct"], r["mean_pct"], "o" if r["inside"] else "x", color=c,
                ms=5, mfc="none" if r["drugs_prior_only"] else c)
        a1.annotate(r["arm"], (r["observed_pct"], r["mean_pct"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    for t in trials:
        a1.plot([], [], "o", color=f"C{trials.index(t)}", label=t)
    a1.plot([0, 100], [0, 100], color="0.5", ls="--", lw=0.8)
    a1.set(xlim=(0, 100), ylim=(0, 100), xlabel="published pCR % (left-out trial)",
           ylabel="predicted pCR %: mean and 95% predictive interval (n of the arm)",
           title=f"leave one trial out ({summary['structure']}"
                 f"{' + links' if summary['settings'].get('links') else ''}): "
                 f"{summary['pcr']['n_inside_95']}/{summary['pcr']['n_arms']} inside")
    a1.legend(fontsize=7, loc="upper left", title="left-out trial", title_fontsize=7)
    nominal = np.linspace(0.05, 0.99, 40)
    pit = np.asarray([r["pit"] for r in rows])
    cover = [np.mean(np.abs(pit - 0.5) <= q / 2) for q in nominal] if rows else []
    a2.plot(100 * nominal, 100 * np.asarray(cover), "o-", ms=3, label="left-out arms")
    a2.plot([0, 100], [0, 100], color="0.5", ls="--", lw=0.8, label="perfect calibration")
    a2.set(xlim=(0, 100), ylim=(0, 100), xlabel="nominal central interval (%)",
           ylabel="arms inside (%), from randomised PIT values",
           title="interval calibration")
    a2.legend(fontsize=8)
    save_figure(fig, path)


def _reference_line(s) -> str:
    r = s.get("meta_reference")
    if not r:
        return ""
    return (f"Model-free yardstick on the same folds ({r['method']}): "
            f"{r['n_inside_95']} of {r['n_arms']} inside "
            f"({100 * r['share_inside_95']:.0f}%), mean signed error "
            f"{r['mean_signed_error_points']:+.1f} points, mean width "
            f"{r['mean_width_95_points']:.1f} points. Its width is what between-trial "
            "spread and binomial sampling alone give; a model earns its structure by "
            "being sharper at the same coverage.")


def _pcr_md(rows, s) -> list[str]:
    m = s["pcr"]
    lines = [
        f"pCR: {m['n_inside_95']} of {m['n_arms']} left-out arms inside their 95% "
        f"predictive interval ({100 * m['share_inside_95']:.0f}%; target >= 80%); mean "
        f"signed error {m['mean_signed_error_points']:+.1f} points (target within +-5); mean "
        f"interval width {m['mean_width_95_points']:.1f} points (target < 30; "
        f"{m['mean_width_95_floor_points']:.1f} if each arm's true rate were known, "
        "binomial sampling only"
        + (f"; {m['mean_width_95_map_trial_points']:.1f} at the MAP with only the new "
           "trial's effect unknown" if "mean_width_95_map_trial_points" in m else "")
        + ")."
        + (" Quick run: two folds, few optimiser steps." if s["quick"] else ""), "",
        f"Arms whose drugs all have a fitted effect: {m['n_arms_all_drugs_fitted']}, "
        f"inside: {100 * m['share_inside_95_all_drugs_fitted']:.0f}%.", "",
        _reference_line(s), "",
        "| left out | arm | definition | n | published % | predicted mean % | 95% PI % "
        "| inside | prior-only drugs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['held_out']} | {r['arm']} | {r['pcr_definition']} | {r['n']} | "
                     f"{r['observed_pct']:.1f} | {r['mean_pct']:.1f} | "
                     f"{r['pred_lo_pct']:.1f}-{r['pred_hi_pct']:.1f} | "
                     f"{'yes' if r['inside'] else 'NO'} | {r['drugs_prior_only'] or '-'} |")
    return lines


def _hr_md(hr_rows, s) -> list[str]:
    lines = ["", f"Adjuvant hazard ratios, left out: {s['hr']['n_inside_95']} of "
              f"{s['hr']['n']} inside their 95% predictive interval (the posterior "
              "draws plus the published estimate's own sampling error); an interval "
              "that reaches HR 1 cannot tell a benefit from none, so 'inside' counts "
              "only where it excludes 1"
              + (f" ({s['hr']['n_inside_excluding_1']} of {s['hr']['n']})."
                 if "n_inside_excluding_1" in s["hr"] else "."), "",
              "| left out | comparison | published HR (95% CI) | predicted (95% predictive "
              "interval) | parameters alone (95%) | excludes HR 1 |",
              "|---|---|---|---|---|---|"]
    for r in hr_rows:
        par = (f"{r['param_lo']:.2f}-{r['param_hi']:.2f}" if "param_lo" in r else "-")
        lines.append(f"| {r['held_out']} | {r['comparison']} | {r['published_hr']:.2f} "
                     f"({r['published_lo']:.2f}-{r['published_hi']:.2f}) | "
                     f"{r['mean_hr']:.2f} ({r['pred_lo']:.2f}-{r['pred_hi']:.2f}) | "
                     f"{par} | {'yes' if r['pred_hi'] < 1.0 else 'NO'} |")
    years = [y for y in HR_YEARS if f"map_hr_{y:g}y" in hr_rows[0]]
    if years:
        lines += ["", "The model's HR at each fold's MAP by horizon (years since the "
                  "adjuvant start; ratio of cumulative hazards):", "",
                  "| left out | comparison | " + " | ".join(f"{y:g} y" for y in years)
                  + " |", "|---|---|" + "---|" * len(years)]
        lines += [f"| {r['held_out']} | {r['comparison']} | "
                  + " | ".join(f"{r[f'map_hr_{y:g}y']:.2f}" for y in years) + " |"
                  for r in hr_rows]
    lt_rows = [r for r in hr_rows if "long_term_within_bound" in r]
    if lt_rows:
        fitted = s.get("settings", {}).get("fit_long_term")
        lines += ["", "Durability: each left-out trial's long-term intention-to-treat "
                  "DFS HR, which its fold did not fit"
                  + (" (the other trial's entered the fold's fit as an upper bound, "
                     "--fit-long-term)" if fitted else "")
                  + ". Its control arm had crossed over to trastuzumab, which pulls "
                  "the HR toward 1, so the published upper 95% limit bounds the "
                  "model's HR from above: 'no' means the model's benefit has faded "
                  "further than the trial's by then, over the fold's whole parameter "
                  "interval.", "",
                  "| left out | analysis | years | published HR (upper 95%) | model MAP "
                  "| parameters (95%) | within the bound |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['held_out']} | {r['long_term_analysis']} | "
                  f"{r['long_term_years']:g} | {r['long_term_published_hr']:.2f} "
                  f"({r['long_term_published_hi']:.2f}) | {r['long_term_map_hr']:.2f} | "
                  f"{r['long_term_param_lo']:.2f}-{r['long_term_param_hi']:.2f} | "
                  f"{'yes' if r['long_term_within_bound'] else 'NO'} |" for r in lt_rows]
    if "basin" in hr_rows[0]:
        lines += ["", "Basins (--basin-starts): each fold fitted both nested structures, "
                  "then this structure from each one's MAP; the kept fit is the lower "
                  "loss. Losses: the nested structures' own fits, and this structure's "
                  "from each of their MAPs.", "",
                  "| left out | kept | loss from reservoir MAP (without prior) | loss "
                  "from micromet MAP (without prior) | reservoir structure's loss | "
                  "micromet structure's loss | rho | protected fraction |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['held_out']} | {r['basin']} | {r['basin_loss_reservoir']:.1f} "
                  f"({r['basin_data_loss_reservoir']:.1f}) | "
                  f"{r['basin_loss_micromet']:.1f} ({r['basin_data_loss_micromet']:.1f}) | "
                  f"{r['nested_loss_reservoir']:.1f} | "
                  f"{r['nested_loss_micromet']:.1f} | "
                  f"{r.get('map_micromet_correlation', float('nan')):.3f} | "
                  f"{r.get('map_protected_fraction', float('nan')):.2e} |"
                  for r in hr_rows]
    return lines


def _result_md(rows, hr_rows, s, path):
    lines = [f"# Leave-one-trial-out validation ({s['structure']})", ""]
    lines += (_pcr_md(rows, s) if rows else
              ["pCR: no folds in this run (--only-hr without a pCR run in its folder)."])
    if hr_rows:
        lines += _hr_md(hr_rows, s)
    pc = s.get("posterior_check", {})
    if "rhat_max" in pc:
        st = s["settings"]
        lines += ["", f"Posterior: {st['posterior']} ({st['chains']} chains, {st['warmup']} "
                  f"warm-up steps, {st['draws']} draws per fold): worst R-hat "
                  f"{pc['rhat_max']:.3f}, smallest bulk ESS {pc['ess_bulk_min']:.0f}, "
                  f"{pc['n_divergent']} divergent transitions, {pc['n_folds_flagged']} "
                  "folds flagged (R-hat > 1.01 or a divergence)."]
    lines += ["", f"Interval: {s['interval']}.", "",
              f"Machine: {s['device']}, {s['precision']}; wall {s['wall_s']} s"
              + (f" (the folds' own times add up to {s['folds_s']} s; folds run apart "
                 "with --folds)" if s.get("folds_s", 0) > s["wall_s"] else "") + "."]
    write_atomic(path, "\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="two folds (NeoSphere, MDACC), 9 + 5 nodes, 1 start, 10 steps, "
                   "100 draws, no hazard-ratio folds")
    p.add_argument("--structure", default=DEFAULT_STRUCTURE, choices=sorted(STRUCTURES),
                   help=f"the trial model's structure (default {DEFAULT_STRUCTURE}, the main "
                   "job's)")
    p.add_argument("--starts", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--nodes", type=int, default=13, help="responsiveness nodes")
    p.add_argument("--her2-nodes", type=int, default=7,
                   help="HER2-dependence nodes (structures with continuous dependence)")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--trial-sd", type=float, default=1.0,
                   help="between-trial sd of log burden (prior of trial_effect#trial; "
                   "--hyper auto: the starting value)")
    p.add_argument("--hyper", default="fixed", choices=("auto", "fixed"),
                   help="the prior sds (trial, HER2 and chemotherapy drug spreads): fixed "
                   "at --trial-sd, --her2-drug-sd and 0.5 (the default), or auto (per "
                   "fold, the largest Laplace marginal likelihood, "
                   "fitcsc.trials.fit_prior_sds)")
    p.add_argument("--her2-drug-sd", type=float, default=1.0,
                   help="sd of a HER2 blocker's log potency around the class mean")
    p.add_argument("--no-hr", action="store_true", help="skip the hazard-ratio folds")
    p.add_argument("--fit-long-term", action="store_true",
                   help="hazard-ratio folds: fit the training trial's long-term ITT DFS HR "
                   "as an upper bound on the model's HR at its horizon (the held-out "
                   "trial's stays out, its durability check)")
    p.add_argument("--links", action="store_true",
                   help="fit the published pCR-vs-no-pCR hazard ratios in every fold, as the "
                   "main job does (about three times the cost per fit; off for the "
                   "committed structure runs, which predate it)")
    p.add_argument("--hr-folds", nargs="+", default=None, metavar="TRIAL",
                   help="run only these hazard-ratio folds (the adjuvant trial left out: "
                        "B-31/N9831, HERA); the tables then hold only them")
    p.add_argument("--basin-starts", action="store_true",
                   help=f"with --links and a structure that nests two others "
                        f"({', '.join(BASINS)}): fit both nested structures first and "
                        f"start the fold's fit from each one's MAP, keeping the better "
                        f"(rows say which won)")
    p.add_argument("--checkpoint", action="store_true",
                   help="save each fold in OUT/.checkpoint as it finishes; a rerun with the "
                   "same options and data reads them back (removed once the tables are "
                   "written)")
    p.add_argument("--folds", nargs="+", default=None, metavar="TRIAL",
                   help="with --checkpoint: run only these pCR folds (trial families, e.g. "
                   "NeoSphere 'NSABP B-41'), e.g. on two cores at once, then the hazard-"
                   "ratio folds (unless --no-hr); the tables are written by the --folds "
                   "run that then finds every fold saved, or by a run without --folds")
    p.add_argument("--only-hr", action="store_true",
                   help="run the hazard-ratio folds and reuse the pCR folds of --out")
    p.add_argument("--posterior", default="linear", choices=METHODS,
                   help="the delta method at each fold's MAP (linear, the default), Laplace "
                   "draws reweighted by PSIS, plain Laplace, or NUTS / ChEES-HMC chains "
                   "warm-started from each fold's MAP")
    p.add_argument("--chains", type=int, default=4, help="nuts/chees: chains (default 4)")
    p.add_argument("--warmup", type=int, default=500,
                   help="nuts/chees: warm-up steps per chain (default 500; --quick 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the default output folder's name")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.basin_starts and (args.structure not in BASINS or not args.links
                              or args.hyper != "fixed"):
        p.error(f"--basin-starts needs --links, --hyper fixed and a structure of "
                f"{', '.join(BASINS)}")
    if args.quick:
        args.starts, args.steps, args.draws, args.nodes, args.her2_nodes = 1, 10, 100, 9, 5
        args.warmup = min(args.warmup, 100)
    return args


if __name__ == "__main__":
    s = main(parse_args(sys.argv[1:]))
    if not s:  # --folds: folds saved, tables not written yet
        sys.exit(0)
    print(json.dumps({"structure": s["structure"], **s["pcr"], "hr": s["hr"],
                      "wall_s": s["wall_s"]}, indent=1))
