"""Trial-level model: exact exposure-grid solution, PK integrals, likelihoods, recovery."""

import dataclasses
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import fitcsc
from fitcsc._model.pk import TwoCompartment, unit_auc, unit_response
from fitcsc._trial.endpoints import hazard_ratio
from fitcsc._trial.fit import (
    Objective,
    PcrObservation,
    TrialData,
    TrialFit,
    _deviance_residual,
    adjuvant_observations,
    fit_trials,
    load_fit,
    model_from_fit,
    pcr_observations,
    save_fit,
    trial_spread_check,
    trial_spread_warning,
)
from fitcsc._trial.model import Arm, TrialModel

CLINICAL = pathlib.Path(__file__).resolve().parents[1] / "data" / "clinical"


@pytest.fixture(scope="module")
def regimens():
    return fitcsc.read_regimen_table(CLINICAL / "regimens.csv")


@pytest.fixture(scope="module")
def neosphere(regimens):
    arms, obs = pcr_observations(fitcsc.read_clinical(CLINICAL / "pcr_arms.csv"), regimens,
                                 trials=("NeoSphere",))
    return arms, obs


@pytest.mark.parametrize("duration", [0.0, 0.0625, 1.0])
def test_unit_auc_matches_quadrature(duration):
    c, r = TwoCompartment(0.225, 2.95, 0.2, 0.15).exponentials()
    for tau in [0.01, 0.05, 0.5, 3.0, 40.0]:
        ref, _ = integrate.quad(lambda t: float(unit_response(c, r, t, duration)), 0.0, tau,
                                points=[duration] if 0 < duration < tau else None,
                                epsabs=1e-14, epsrel=1e-12, limit=200)
        assert float(unit_auc(c, r, tau, duration)) == pytest.approx(ref, rel=1e-9, abs=1e-14)
    assert float(unit_auc(c, r, -1.0, duration)) == 0.0


@pytest.mark.parametrize("trial", ["NeoSphere", "NeoALTTO"])
def test_exposure_grid_solution_matches_ode_solver(regimens, trial):
    """The exact linear solution along the grid agrees with diffrax on the full ODE,
    lapatinib's daily peaks (NeoALTTO) included: the blockade's integral is
    Gauss-Legendre on each half-day interval (the trapezoid it replaced was 0.10 off in
    NA-L's log cells)."""
    arms, _ = pcr_observations(fitcsc.read_clinical(CLINICAL / "pcr_arms.csv"), regimens,
                               trials=(trial,))
    tm = TrialModel.build(arms)
    z = tm.z0()
    res = tm.residuals(z)
    nodes = np.asarray(tm.nodes())
    checked = 0
    for ai, arm in enumerate(arms):
        for k in (2, 4, 6, 8, 10, 14):
            p = tm.patient(z, nodes[k])  # its EC50 over the exposure multiplier (the
            # fitted potency x the labelled-exposure scale: pertuzumab 1.04 here)
            p = eqx.tree_at(lambda q: q.ec50_mg_per_L, p,
                            p.ec50_mg_per_L / tm.exposure_multiplier(z))
            sched = arm.regimen.to_schedule(tm.model.drugs)
            sol = fitcsc.simulate(tm.model, p, sched, jnp.asarray([0.0, arm.eval_day()]),
                                  rtol=1e-10, atol=1e-12, max_steps=200000)
            y = np.asarray(sol.states[-1])
            if min(y[0], y.sum()) < 1e6 * np.exp(-25):  # under the reference's tolerance
                continue
            log_n = np.log(y.sum() / 1e6)
            assert int(sol.status) == 0
            # the CSCs' log cells are exact up to the blockade's quadrature; the total's
            # production integral (log-linear between grid points) is within ~2e-3
            log_s = np.log(y[0] / 1e6)
            assert float(res[1][ai, k]) == pytest.approx(log_s, abs=1e-3 + 1e-5 * abs(log_s))
            assert float(res[0][ai, k]) == pytest.approx(log_n, abs=1e-3 + 1e-4 * abs(log_n))
            checked += 1
    assert checked >= 6


def test_pcr_rate_gradient_matches_finite_differences(neosphere):
    arms, _ = neosphere
    tm = TrialModel.build(arms)
    z = tm.z0()
    f = jax.jit(lambda zz: tm.pcr_rates(zz)[0])
    J = np.asarray(jax.jacfwd(f)(z))
    h = 1e-5
    for i in range(z.shape[0]):
        e = jnp.zeros_like(z).at[i].set(h)
        fd = (np.asarray(f(z + e)) - np.asarray(f(z - e))) / (2 * h)
        np.testing.assert_allclose(J[:, i], fd, rtol=1e-4, atol=1e-7)
    rates = np.asarray(f(z))
    assert np.all((rates > 0) & (rates < 1))


def test_pcr_breast_only_at_least_total(neosphere):
    arms, _ = neosphere
    tm = TrialModel.build(arms)
    total, breast, status = tm.pcr_pair(tm.z0())
    assert np.all(np.asarray(breast) >= np.asarray(total) - 1e-12)
    assert np.all(np.asarray(status) == 0)


def test_deviance_residual_is_binomial_loglik():
    k, n = jnp.asarray([0.0, 3.0, 17.0, 40.0]), jnp.asarray([40.0, 40.0, 40.0, 40.0])
    for p in (0.05, 0.3, 0.8):
        r = _deviance_residual(jnp.full(4, p), k, n)
        sat = stats.binom.logpmf(np.asarray(k), 40, np.asarray(k) / 40)
        ref = 2 * (sat - stats.binom.logpmf(np.asarray(k), 40, p))
        np.testing.assert_allclose(np.asarray(r) ** 2, ref, rtol=1e-8, atol=1e-10)
    # at the perfect fit the residual and its gradient are finite (Pearson branch)
    g = jax.grad(lambda q: _deviance_residual(q, 3.0, 40.0))(3.0 / 40.0)
    assert np.isfinite(float(g)) and float(_deviance_residual(3.0 / 40.0, 3.0, 40.0)) == 0.0


def test_nested_pcr_counts_are_a_multinomial(neosphere):
    """Total + breast-only binomial pair = multinomial log-likelihood (up to a constant)."""
    arms, _ = neosphere
    tm = TrialModel.build(arms[:1])
    obs = [PcrObservation(arms[0].name, "x", "ypT0/is", 100, 30, nested_total=20)]
    objective = Objective(tm, TrialData(pcr=obs), prior_sd=1e12)
    vals = []
    for dz in (0.0, 0.3, -0.4):
        z = tm.z0().at[0].add(dz)
        r = np.asarray(objective(z))[:2]
        t, b, _ = tm.pcr_pair(z)
        pt, pb = float(t[0]), float(b[0])
        logpmf = stats.multinomial.logpmf([20, 10, 70], 100, [pt, pb - pt, 1 - pb])
        vals.append(0.5 * np.sum(r**2) + logpmf)
    np.testing.assert_allclose(vals, vals[0], rtol=1e-8)


def test_hazard_ratio_direction_and_identity(regimens):
    rows = fitcsc.read_clinical(CLINICAL / "adjuvant_outcomes.csv")
    arms, landmarks, hrs = adjuvant_observations(rows, regimens)
    assert {a.name for a in arms} >= {"JA-C-B31", "JA-H-B31", "HERA-OBS", "HERA-H1"}
    assert [o.arm for o in landmarks] == ["JA-C-B31", "HERA-OBS"]
    tm = TrialModel.build(arms)
    z = tm.z0()
    days = jnp.asarray([365.25, 730.5, 1095.75])
    dfs, cure, status = tm.dfs(z, days)
    dfs = np.asarray(dfs)
    assert np.all(np.diff(dfs, axis=1) <= 1e-12) and np.all((dfs > 0) & (dfs <= 1))
    i_c, i_h = tm.arm_names.index("HERA-OBS"), tm.arm_names.index("HERA-H1")
    assert float(cure[i_h]) > float(cure[i_c])  # a year of trastuzumab cures more
    hr = np.asarray(hazard_ratio(dfs[i_h], dfs[i_c]))
    assert np.all(hr < 1.0)
    np.testing.assert_allclose(np.asarray(hazard_ratio(dfs[i_c], dfs[i_c])), 1.0)


def test_long_term_hazard_ratios_are_upper_bounds_with_a_censored_likelihood(regimens):
    """``adjuvant_observations(long_term=ADJUVANT_LONG_TERM)`` adds B-31/N9831 0.61
    (0.54-0.69) at 8.35 y and HERA 0.76 (0.68-0.86) at 11 y, between the primary
    analyses' arms, as upper bounds; an analysis missing from the file is refused. In the
    objective an upper bound's squared residual is -2 log Phi((published - model) / se),
    the censored deviance (scipy), with a finite gradient far below the bound, where it
    vanishes; the same observation without ``upper`` is the plain normal residual."""
    from fitcsc.trials import ADJUVANT_LONG_TERM

    rows = fitcsc.read_clinical(CLINICAL / "adjuvant_outcomes.csv")
    arms, _, hrs = adjuvant_observations(rows, regimens, long_term=ADJUVANT_LONG_TERM)
    primary = [h for h in hrs if not h.upper]
    bounds = [h for h in hrs if h.upper]
    assert len(primary) == 2 and hrs[:2] == primary
    for b, p, (hr, hi, years) in zip(bounds, primary, ((0.61, 0.69, 8.35), (0.76, 0.86, 11.0)),
                                     strict=True):
        assert (b.experimental, b.control) == (p.experimental, p.control)
        assert b.years == years and np.exp(b.log_hr) == pytest.approx(hr, rel=1e-5)
        assert np.exp(b.log_hr + 1.959964 * b.se) == pytest.approx(hi, abs=0.01)  # 2 dp
    with pytest.raises(ValueError, match="final 11-yr"):
        adjuvant_observations([r for r in rows if not r["analysis"].startswith("final 11-yr")],
                              regimens, long_term=ADJUVANT_LONG_TERM)
    tm = TrialModel.build([a for a in arms if a.trial == "HERA"])
    b = bounds[1]
    z = tm.z0()
    plain = Objective(tm, TrialData(hrs=[dataclasses.replace(b, upper=False)]), prior_sd=1e12)
    d = float(np.asarray(plain(z))[0])  # (model log HR - published) / se
    assert np.isfinite(d)
    for shift in (-3.0, -0.5, 0.0, 0.7, 2.5, 40.0):  # published bound moved by shift * se
        ob = dataclasses.replace(b, log_hr=b.log_hr + shift * b.se)
        r = float(np.asarray(Objective(tm, TrialData(hrs=[ob]), prior_sd=1e12)(z))[0])
        want = -2.0 * stats.norm.logcdf(-(d - shift))
        assert r >= 0.0 and r**2 == pytest.approx(want, rel=1e-9, abs=1e-14)
    far = Objective(tm, TrialData(hrs=[dataclasses.replace(b, log_hr=b.log_hr + 40 * b.se)]),
                    prior_sd=1e12)
    g = np.asarray(jax.jacfwd(far.residuals)(z))
    assert np.all(np.isfinite(g)) and np.abs(g[0]).max() < 1e-6
    # the loss by kind of data adds up to the loss
    both = Objective(tm, TrialData(hrs=[primary[1], b]))
    parts = both.loss_parts(z)
    assert set(parts) == {"hrs", "prior"}
    assert sum(parts.values()) == pytest.approx(0.5 * float(jnp.sum(both(z) ** 2)), rel=1e-12)


def test_fit_recovers_known_parameters(neosphere, tmp_path):
    """Counts generated from known parameters (large n) are fitted back."""
    arms, _ = neosphere
    names = ("log_kill_scale", "log_turnover", "logit_her2_independent")
    tm = TrialModel.build(arms, names)
    z_true = tm.z0() + jnp.asarray([0.4, -0.3, 0.5])
    t, b, _ = tm.pcr_pair(z_true)
    n = 20000
    obs = [PcrObservation(a.name, "synthetic", "ypT0/is", n, int(round(n * float(b[i]))),
                          nested_total=int(round(n * float(t[i]))))
           for i, a in enumerate(arms)]
    fit = fit_trials(Objective(tm, TrialData(pcr=obs), prior_sd=100.0), n_starts=1)
    assert np.all(np.abs(fit.z - np.asarray(z_true)) < np.maximum(4 * fit.se, 0.02))
    # saved and reloaded, the fit predicts the same for the same regimens
    save_fit(tmp_path / "fit.json", tm, fit)
    doc = load_fit(tmp_path)
    tm2 = model_from_fit(doc, list(arms))
    np.testing.assert_allclose(np.asarray(tm2.pcr_rates(jnp.asarray(doc["z"]))[0]),
                               np.asarray(tm.pcr_rates(jnp.asarray(fit.z))[0]), rtol=1e-10)


def test_unsupported_drug_class_is_refused():
    reg = fitcsc.Regimen((fitcsc.DoseLine("gamma_secretase_inhibitor", 100.0, "mg", n_doses=3,
                                          interval_day=7.0),), name="csc")
    with pytest.raises(ValueError, match="supports HER2 blockers and chemotherapy"):
        TrialModel.build([Arm("csc", reg)])


def test_load_fit_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fit.json"):
        load_fit(tmp_path)
    (tmp_path / "fit.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a fitcsc trial fit"):
        load_fit(tmp_path / "fit.json")


def test_hr_covariate_subgroups(neosphere):
    """HR covariate: weights of a shifted normal; no shift = the population; a lower
    responsiveness or more HER2-independence lowers HR+ pCR; the objective mixes."""
    arms, obs = neosphere
    names = ("log_kill_scale", "logit_her2_independent",
             "hr_response_shift", "hr_her2_independent_shift")
    tm = TrialModel.build(arms[:2], names)
    z = tm.z0()
    assert np.asarray(z)[2:].tolist() == [0.0, 0.0]  # both shifts start at 0
    fine = jnp.linspace(-tm.eta_max, tm.eta_max, (tm.n_nodes - 1) * tm.refine + 1)
    for shift in (-1.0, 0.0, 0.7):  # weights: N(shift, 1) truncated to the grid
        _, w = tm._fine(jnp.zeros((1, tm.n_nodes)), z, shift)
        ref = stats.truncnorm(-tm.eta_max - shift, tm.eta_max - shift, loc=shift)
        assert float(jnp.sum(w * fine)) == pytest.approx(ref.mean(), abs=5e-4)
        assert float(jnp.sum(w * (fine - ref.mean()) ** 2)) == pytest.approx(ref.var(),
                                                                          abs=1e-3)
    pop = np.asarray(tm.pcr_rates(z)[0])
    for g in ("HR+", "HR-"):  # no shift: both subgroups are the population
        np.testing.assert_allclose(np.asarray(tm.pcr_rates(z, subgroup=g)[0]), pop, rtol=1e-12)
    less = np.asarray(tm.pcr_rates(z.at[2].set(-1.0), subgroup="HR+")[0])
    indep = np.asarray(tm.pcr_rates(z.at[3].set(2.0), subgroup="HR+")[0])
    assert np.all(less < pop) and np.all(indep < pop)
    np.testing.assert_allclose(np.asarray(tm.pcr_rates(z.at[2].set(-1.0), subgroup="HR-")[0]),
                               pop, rtol=1e-12)  # HR- is the reference
    with pytest.raises(ValueError, match="subgroup must be one of"):
        tm.pcr_rates(z, subgroup="ER+")
    # derived subgroup counts: the share solves p_all = f p+ + (1 - f) p- exactly
    o = [PcrObservation(arms[0].name, "T", arms[0].pcr_definition, 100, 30)]
    rows = [{"arm_id": arms[0].name, "hr_subgroup": g, "pcr_pct": pct,
             "pcr_definition": arms[0].pcr_definition} for g, pct in (("HR+", 15.0),
                                                                      ("HR-", 40.0))]
    hobs, share = fitcsc._trial.fit.hr_pcr_observations(rows, o)
    assert share == {"T": pytest.approx(0.4)}  # 0.3 = 0.4 * 0.15 + 0.6 * 0.40
    assert [(h.subgroup, h.n, h.count) for h in hobs] == [("HR+", 40, 6), ("HR-", 60, 24)]
    # the objective's population rate is the share-weighted mixture of the subgroups
    objective = Objective(tm, TrialData(pcr=o, hr_pcr=hobs))
    zs = z.at[2].set(-0.8).at[3].set(1.0)
    pr = objective.predictions(zs)
    mix = 0.4 * pr["pcr_HR+"] + 0.6 * pr["pcr_HR-"]
    np.testing.assert_allclose(np.asarray(tm.pcr_rates(zs, subgroup="HR+")[0]),
                               np.asarray(pr["pcr_HR+"]), rtol=1e-12)
    own = np.where(np.asarray(tm.breast_only), np.asarray(pr["pcr_breast"]),
                   np.asarray(pr["pcr_total"]))
    np.testing.assert_allclose(own, np.asarray(mix), rtol=1e-10)
    r = np.asarray(objective(zs))  # all-patient row left out: only subgroups carry data
    assert r[0] == 0.0 and np.count_nonzero(r[2:4]) == 2


def test_trial_response_shift_is_the_subgroup_shift_per_arm(neosphere):
    """``trial_shift="response"``: a trial effect d moves its arms' mean responsiveness
    by -d (the burden is untouched); the pCR equals that of the HR+ subgroup with
    ``hr_response_shift = -d`` in the burden model at no trial effect (the scalar path of
    the same weights), arms of another trial keep the population's rate, and
    `pcr_outcome`'s pCR is `pcr_pair`'s total under the same shift."""
    arms, _ = neosphere
    other = [Arm("X", arms[1].regimen, pcr_definition=arms[1].pcr_definition, trial="Other")]
    both = [arms[0], other[0]]
    names = ("log_kill_scale", "logit_her2_independent", "hr_response_shift",
             "hr_her2_independent_shift", "trial_effect#NeoSphere")
    kw = dict(n_nodes=9, pcr_outcome=True)
    resp = TrialModel.build(both, names, trial_shift="response", **kw)
    burd = TrialModel.build(both, names, **kw)
    z = resp.z0()
    for d in (-0.8, 0.6):
        zr = z.at[4].set(d)
        total, breast, _ = resp.pcr_pair(zr)
        np.testing.assert_allclose(np.asarray(resp.log_burden_shift(zr)), 0.0)
        ref_t, ref_b, _ = burd.pcr_pair(z.at[2].set(-d), subgroup="HR+")
        np.testing.assert_allclose(float(total[0]), float(ref_t[0]), rtol=1e-10)
        np.testing.assert_allclose(float(breast[0]), float(ref_b[0]), rtol=1e-10)
        base_t, _, _ = burd.pcr_pair(z)
        np.testing.assert_allclose(float(total[1]), float(base_t[1]), rtol=1e-12)
        assert (float(total[0]) < float(base_t[0])) == (d > 0)  # positive: lower pCR
        pcr, _, _ = resp.pcr_outcome(zr, jnp.asarray([730.0]))
        np.testing.assert_allclose(np.asarray(pcr), np.asarray(total), rtol=2e-3)
    with pytest.raises(ValueError, match="trial_shift must be one of"):
        TrialModel.build(both, names, trial_shift="slope")


def test_csc_fraction_spread_matches_direct_integral(neosphere):
    """The initial CSC fraction's log-normal spread (Gauss-Hermite over 7 nodes) gives
    the pCR of a direct integral over the spread; sd 0 is the fixed-fraction model."""
    arms, _ = neosphere
    names = ("log_kill_scale", "logit_csc_sparing", "csc_fraction_sd")
    tm = TrialModel.build(arms[:2], names)
    assert tm.n_csc_fraction == 7 and len(tm.mixture(tm.z0())) == 14
    tm1 = TrialModel.build(arms[:2], names[:2])
    z1 = tm1.z0()
    z = jnp.concatenate([z1, jnp.zeros(1)])  # sd 0: every node at the typical fraction
    np.testing.assert_allclose(np.asarray(tm.pcr_rates(z)[0]), np.asarray(tm1.pcr_rates(z1)[0]),
                               rtol=1e-12)
    sd = 0.9
    zs = z.at[2].set(-sd)  # |sd| is used
    got = np.asarray(tm.pcr_rates(zs)[0])
    phi = float(tm._value(zs, "logit_her2_independent"))
    u = np.linspace(-6, 6, 241)

    def rate(shift, dependent):
        r = tm.residuals(zs, her2_dependent=dependent, log_fraction_shift=shift)
        return tm.pcr_rates(zs, res=r)[0]

    per = (1 - phi) * jax.vmap(lambda s: rate(s, True))(jnp.asarray(sd * u)) \
        + phi * jax.vmap(lambda s: rate(s, False))(jnp.asarray(sd * u))
    dens = stats.norm.pdf(u)
    ref = integrate.trapezoid(np.asarray(per) * dens[:, None], u, axis=0)
    np.testing.assert_allclose(got, ref, rtol=2e-3)
    assert not np.allclose(got, np.asarray(tm1.pcr_rates(z1)[0]), rtol=1e-3)  # it matters
    # the cap: a huge shift gives at most MAX_CSC_FRACTION stem cells
    big = tm.residuals(zs, log_fraction_shift=50.0)
    base = tm.residuals(zs, log_fraction_shift=np.log(0.5 / tm.base.initial_csc_fraction))
    np.testing.assert_allclose(np.asarray(big[0]), np.asarray(base[0]), rtol=1e-12)


def test_trial_model_space_is_the_parameter_space_of_its_z(neosphere):
    """`TrialModel.space` implements `fitcsc.ParameterSpace`: its natural values are the
    model's own (`TrialModel.natural`), its log-Jacobian the log-determinant of
    d natural / d z by autodiff, its reference the model's start."""
    arms, _ = neosphere
    tm = TrialModel.build(arms, heterogeneity="continuous", trial_effects=True)
    space = tm.space
    assert isinstance(space, fitcsc.ParameterSpace) and space.labels() == tm.names
    kinds = {type(t).__name__ for t in space.element_transforms()}
    assert kinds == {"Positive", "Interval", "Real"}  # every kind of PARAMETERS is there
    np.testing.assert_allclose(space.reference_z(), tm.z0(), rtol=0, atol=0)
    z = tm.z0() + jnp.asarray(np.random.default_rng(3).normal(scale=0.5, size=space.size))
    nat = tm.natural(z)
    np.testing.assert_allclose(space.natural(z), [nat[n] for n in tm.names], rtol=1e-14)
    np.testing.assert_allclose(space.to_z(space.from_z(z)), z, rtol=1e-10, atol=1e-12)
    jac = jax.jacfwd(space.natural)(z)
    _, logdet = np.linalg.slogdet(np.asarray(jac))
    np.testing.assert_allclose(space.log_jacobian(z), logdet, rtol=1e-10)


def test_her2_potency_is_relative_to_labelled_exposure(regimens, tmp_path):
    """Each HER2 blocker's concentration is scaled so that its labelled-dose average
    steady-state exposure equals trastuzumab's: the closed form dose / (CL tau) from the
    catalogue PK (trastuzumab: CL 0.225 L/day, 6 mg/kg x 70 kg q21d; lapatinib: V/F
    2200 L, t1/2 1 d, 1250 mg daily; pertuzumab: CL 0.235 L/day, 420 mg q21d)."""
    from fitcsc._trial.model import HER2_REFERENCE_DOSE, reference_her2_scale

    c_trast = 6.0 * 70.0 / (0.225 * 21.0)
    c_lap = 1250.0 / (2200.0 * np.log(2.0) / 1.0 * 1.0)
    c_pert = 420.0 / (0.235 * 21.0)
    model = fitcsc.ModelConfig(crowding="none", drugs=("docetaxel", "trastuzumab",
                                                       "lapatinib", "pertuzumab"),
                               species="human")
    np.testing.assert_allclose(reference_her2_scale(model),
                               [1.0, 1.0, c_trast / c_lap, c_trast / c_pert], rtol=1e-9)
    assert set(HER2_REFERENCE_DOSE) >= {"trastuzumab", "pertuzumab", "lapatinib",
                                        "neratinib", "trastuzumab_emtansine"}
    # a blocker without a labelled dose is refused, not given trastuzumab's exposure
    with pytest.raises(ValueError, match="HER2_REFERENCE_DOSE"):
        reference_her2_scale(fitcsc.ModelConfig(crowding="none", drugs=("ljm716",),
                                                species="human"))
    # the model uses it: lapatinib alone blocks as much as its scaled concentration says
    arm = Arm("NEOALTTO-L", regimens["NEOALTTO-L"])
    names = ("log_kill_scale", "log_her2_potency#lapatinib")
    tm = TrialModel.build([arm], names)
    legacy = TrialModel.build([arm], names, her2_scale={"lapatinib": 1.0})
    j = tm.model.drugs.index("lapatinib")
    assert np.isclose(float(tm.her2_scale[j]), c_trast / c_lap, rtol=1e-9)
    b_new = float(jnp.mean(tm.blockade(tm.z0())[0]))
    b_old = float(jnp.mean(legacy.blockade(legacy.z0())[0]))
    assert b_old < 0.15 < 0.5 < b_new  # inert at one shared EC50; active at its label
    # saved with the fit; a fit saved before the scale existed reloads with 1
    fit = TrialFit(names=names, z=np.asarray(tm.z0()), cov=np.eye(2), loss=0.0,
                   status=fitcsc.FitStatus.CONVERGED, n_steps=1, start_losses=np.zeros(1))
    save_fit(tmp_path / "fit.json", tm, fit)
    doc = load_fit(tmp_path)
    assert np.isclose(doc["her2_scale"]["lapatinib"], c_trast / c_lap, rtol=1e-9)
    assert np.allclose(model_from_fit(doc, [arm]).her2_scale, tm.her2_scale)
    del doc["her2_scale"]
    assert np.allclose(model_from_fit(doc, [arm]).her2_scale, 1.0)
    # ... and a drug a prediction adds to such a fit gets 1 too, not its reference
    both = [arm, Arm("NEOSPHERE-TH", regimens["NEOSPHERE-TH"])]
    assert np.allclose(model_from_fit(doc, both).her2_scale, 1.0)


def test_trial_sd_by_marginal_likelihood_matches_quadrature(neosphere):
    """`fit_prior_sds`'s Laplace log marginal likelihood (the model linearised at one
    MAP) against the exact one, by quadrature over the one free parameter (a trial
    effect of 0.4 behind counts of 20,000 patients per NeoSphere arm, the rest fixed at
    their defaults): differences between sds agree, the chosen sd is the exact argmax
    over the grid, and the refit there is its MAP."""
    from scipy import integrate as si

    from fitcsc._trial.fit import fit_prior_sds

    arms, _ = neosphere
    tm = TrialModel.build(arms, ("trial_effect#NeoSphere",), n_nodes=9)
    _, b, _ = tm.pcr_pair(jnp.asarray([0.4]))
    n = 20000
    data = TrialData(pcr=[PcrObservation(a.name, "NeoSphere", "ypT0/is", n,
                                         int(round(n * float(b[i]))))
                          for i, a in enumerate(arms)])
    grid = (0.1, 0.2, 0.4, 0.8, 1.6)
    obj = Objective(tm, data, trial_sd=1.0)
    fit = fit_trials(obj, n_starts=1)
    best, best_obj, record = fit_prior_sds(obj, fit, which=("trial_sd", "her2_drug_sd"),
                                           grid=grid)  # no HER2 class here: trial only
    assert list(record["profile"]) == ["trial_sd"]
    assert [v for v, _ in record["profile"]["trial_sd"]] == list(grid)

    def exact(sd):  # log of int exp(-0.5 |r(t)|^2) dt / sd (the prior's normaliser)
        o = Objective(tm, data, trial_sd=sd)
        t0 = float(fit_trials(o, n_starts=1).z[0])
        f = jax.jit(lambda t: 0.5 * jnp.sum(o(jnp.atleast_1d(t)) ** 2))
        m = float(f(t0))
        val, _ = si.quad(lambda t: np.exp(m - float(f(t))), t0 - 0.5, t0 + 0.5,
                         points=[t0], limit=200)
        return -m + np.log(val) - np.log(sd), t0

    ex, modes = map(np.array, zip(*(exact(sd) for sd in grid), strict=True))
    lap = np.array([e for _, e in record["profile"]["trial_sd"]])
    # the same up to the constant 0.5 log(2 pi), to the linearisation's error; leaving
    # out the K log sd or the log det term would be off by log 2 = 0.69 per grid step
    np.testing.assert_allclose(lap - lap[0], ex - ex[0], atol=0.1)
    k = int(np.argmax(ex))
    assert 0 < k < len(grid) - 1  # an interior optimum: the test can tell
    assert best_obj.trial_sd == grid[k] == grid[int(np.argmax(lap))]
    assert record["chosen"] == {"trial_sd": grid[k]} and best_obj.her2_drug_sd == 1.0
    assert abs(float(best.z[0]) - modes[k]) < 1e-4


def test_prior_sds_refit_falls_back_to_the_map_when_the_linearised_mode_fails(
        neosphere, monkeypatch):
    """When the refit from the linearised mode is not finite (in a validation fold the
    chosen sds of 4 moved it where the model is not finite, and the fold crashed on its
    NaN covariance), `fit_prior_sds` refits from the MAP at the start sds and says so;
    otherwise it keeps the linearised start."""
    import dataclasses as dc

    import fitcsc._trial.fit as trial_fit

    arms, obs = neosphere
    tm = TrialModel.build(arms, ("trial_effect#NeoSphere",), n_nodes=9)
    obj = Objective(tm, TrialData(pcr=obs), trial_sd=1.0)
    fit = fit_trials(obj, n_starts=1)
    _, _, rec = trial_fit.fit_prior_sds(obj, fit, grid=(0.5, 1.0, 2.0))
    assert rec["refit_start"] == "linearised mode"
    real, starts = trial_fit.fit_trials, []

    def failing_first(objective, **kw):
        starts.append(np.asarray(kw["start"], float))
        out = real(objective, **kw)
        if len(starts) == 1:  # the linearised start "fails"
            return dc.replace(out, loss=np.inf, cov=np.full_like(np.asarray(out.cov), np.nan))
        return out

    monkeypatch.setattr(trial_fit, "fit_trials", failing_first)
    best, best_obj, rec = trial_fit.fit_prior_sds(obj, fit, grid=(0.5, 1.0, 2.0))
    assert len(starts) == 2 and np.array_equal(starts[1], np.asarray(fit.z))
    assert rec["refit_start"].startswith("MAP at the start sds")
    assert np.isfinite(best.loss) and np.all(np.isfinite(np.asarray(best.cov)))
    ref = real(best_obj, n_starts=1, start=fit.z)
    assert best.loss == pytest.approx(ref.loss, rel=1e-12)


def test_two_margin_residuals_are_the_exact_likelihood_with_information():
    """ypT0 and ypT0/is ypN0 counts of one arm (GeparQuattro): ``0.5 |r|^2`` differs
    from the exact -log P(k_a, k_b) (a sum over the unseen joint count, by brute force
    here) by a constant, and where the counts are fitted exactly the residuals still
    carry information (a nonzero derivative: the Laplace posterior is not the prior)."""
    from scipy import stats as st

    from fitcsc._trial.fit import _two_margin_residual

    n, k_a, k_b = 445, 141, 178

    def exact(p_a, p_b, p_ab):
        j = np.arange(0, min(k_a, k_b) + 1)
        cells = np.array([p_ab, p_a - p_ab, p_b - p_ab, 1 - p_a - p_b + p_ab])
        counts = np.stack([j, k_a - j, k_b - j, n - k_a - k_b + j], axis=1)
        return -np.log(np.sum(st.multinomial.pmf(counts, n, cells)))

    def half_sq(p):
        r = _two_margin_residual(*(jnp.atleast_1d(jnp.asarray(v)) for v in p),
                                 jnp.asarray([k_a], float), jnp.asarray([k_b], float),
                                 jnp.asarray([n], float))
        return 0.5 * jnp.sum(r ** 2)

    ps = [(0.30, 0.40, 0.25), (0.317, 0.40, 0.28), (0.35, 0.45, 0.30), (0.25, 0.38, 0.2)]
    got = np.array([float(half_sq(p)) for p in ps])
    want = np.array([exact(*p) for p in ps])
    np.testing.assert_allclose(got - got[0], want - want[0], atol=1e-8)
    r = _two_margin_residual(jnp.asarray([k_a / n]), jnp.asarray([0.4]),
                             jnp.asarray([0.3]), jnp.asarray([k_a], float),
                             jnp.asarray([k_b], float), jnp.asarray([n], float))
    assert r.shape == (2,) and abs(float(r[0])) < 1e-6 and float(r[1]) > 0.5
    jac = jax.jacfwd(lambda pa: _two_margin_residual(
        pa, jnp.asarray([0.4]), jnp.asarray([0.3]), jnp.asarray([k_a], float),
        jnp.asarray([k_b], float), jnp.asarray([n], float)))(jnp.asarray([k_a / n]))
    # margin A's Fisher information n / (p (1 - p)) at its exact fit, not 0
    assert float(jac[0, 0]) ** 2 > 0.5 * n / (k_a / n * (1 - k_a / n))


def test_with_protected_mixes_the_two_populations_on_the_natural_scale():
    """A fraction f of micrometastatic CSCs out of reach: founders (1-f) F + f pi S0 and
    residual CSCs (1-f) R + f S0, computed on the log scale."""
    import numpy as np

    from fitcsc.trials import with_protected

    f, F, R, pi, S0 = 0.01, 3.0, 50.0, 0.2, 1e4
    lf, lr = with_protected(np.log(F), np.log(R), np.log(pi), np.log(S0), np.log(f))
    assert float(np.exp(lf)) == pytest.approx((1 - f) * F + f * pi * S0, rel=1e-12)
    assert float(np.exp(lr)) == pytest.approx((1 - f) * R + f * S0, rel=1e-12)


def test_neoadjuvant_course_sets_recurrence_and_landmarks_are_all_patients(neosphere):
    """`load_neo_landmarks` gives NeoSphere's published 5-yr DFS (81/84/80/75%) with each
    arm's whole course; in `pcr_outcome`, an arm's recurrence comes from its course: the
    DFS of all its patients equals that of the course arm itself (a patient's DFS does
    not depend on how her primary responded), and the objective's landmark prediction is
    that DFS."""
    from fitcsc.trials import Objective, TrialData, load_neo_landmarks

    arms, obs = neosphere
    landmarks, courses = load_neo_landmarks(arms)
    assert [(m.arm, m.years, m.rate, m.n) for m in landmarks] == [
        ("NS-A", 5.0, 0.81, 107), ("NS-B", 5.0, 0.84, 107), ("NS-C", 5.0, 0.80, 107),
        ("NS-D", 5.0, 0.75, 96)]
    assert courses["NS-A"].name == "NEOSPHERE-TH-FULL"
    assert courses["NS-A"].regimen.n_doses > arms[0].regimen.n_doses
    tm = TrialModel.build(arms, n_nodes=7, n_her2=3, pcr_outcome=True, protected=True,
                          courses=courses, heterogeneity="continuous")
    assert tm.arm_names[len(arms):] == tuple(c.name for c in courses.values())
    z = tm.z0().at[tm.names.index("log_micromet_cells#neoadjuvant")].set(14.0)
    days = jnp.asarray([2.0 * 365.25, 5.0 * 365.25])
    pcr, d_p, d_n = tm.pcr_outcome(z, days)
    dfs_all = pcr[:, None] * d_p + (1 - pcr[:, None]) * d_n
    for i, a in enumerate(arms):
        j = tm.arm_names.index(courses[a.name].name)
        np.testing.assert_allclose(dfs_all[i], dfs_all[j], rtol=1e-10)
    # without the course the postoperative trastuzumab is missing: a different DFS
    plain = TrialModel.build(arms, n_nodes=7, n_her2=3, pcr_outcome=True, protected=True,
                             heterogeneity="continuous")
    p0, dp0, dn0 = plain.pcr_outcome(z, days)
    np.testing.assert_allclose(p0, pcr[:len(arms)], rtol=1e-12)
    hazard_course = -np.log(np.asarray(dfs_all[0]))
    hazard_plain = -np.log(np.asarray(p0[0] * dp0[0] + (1 - p0[0]) * dn0[0]))
    assert np.all(hazard_course < 0.8 * hazard_plain)
    obj = Objective(tm, TrialData(pcr=obs, neo_landmarks=landmarks))
    np.testing.assert_allclose(obj.neo_landmark_dfs(z), dfs_all[:len(arms), 1], rtol=1e-10)


def test_micromet_correlation_decouples_the_link_and_keeps_the_landmarks(neosphere):
    """``micromet_correlation``: a patient's micrometastatic responsiveness is ``rho eta +
    sqrt(1 - rho^2) xi``. With one HER2 part (no HER2-independent tumours) and rho = 0 a
    pCR says nothing about her micrometastases: pCR and no-pCR patients have the same DFS
    (link HR 1); rho near 1 is the model without the option; at every rho the DFS of all
    of an arm's patients is that of its course (the marginal kept, to the grid's
    truncation); and the option is refused without the pCR-outcome link."""
    from fitcsc.trials import load_neo_landmarks

    arms, _ = neosphere
    _, courses = load_neo_landmarks(arms)
    kw = dict(n_nodes=7, n_her2=3, pcr_outcome=True, protected=True, courses=courses,
              fixed={"logit_her2_independent": 1e-12})
    base = TrialModel.build(arms, **kw)
    tm = TrialModel.build(arms, micromet_correlation=True, **kw)
    assert tm.names == (*base.names, "logit_micromet_correlation")
    j = tm.names.index("logit_micromet_correlation")
    z0 = base.z0().at[base.names.index("log_micromet_cells#neoadjuvant")].set(14.0)
    days = jnp.asarray([2.0 * 365.25, 5.0 * 365.25])
    p0, dp0, dn0 = base.pcr_outcome(z0, days)
    assert float(jnp.max(jnp.abs(dp0 - dn0))) > 1e-3  # the same responsiveness: linked

    def at(rho):
        return jnp.append(z0, jnp.log(rho / (1.0 - rho)))

    p, d_p, d_n = tm.pcr_outcome(at(0.0 + 1e-12), days)
    np.testing.assert_allclose(p, p0, rtol=1e-12)
    np.testing.assert_allclose(d_p, d_n, rtol=1e-8)
    p, d_p, d_n = tm.pcr_outcome(at(1.0 - 1e-9), days)
    np.testing.assert_allclose(d_p, dp0, rtol=1e-6)
    np.testing.assert_allclose(d_n, dn0, rtol=1e-6)
    p, d_p, d_n = tm.pcr_outcome(at(0.5), days)
    n = len(arms)  # the neoadjuvant arms: rho = 0.5 links them less than rho = 1
    gap, gap1 = np.asarray(d_p - d_n)[:n], np.asarray(dp0 - dn0)[:n]
    assert np.all(np.sign(gap) == np.sign(gap1)) and np.all(np.abs(gap) < np.abs(gap1))
    dfs_all = p[:, None] * d_p + (1 - p[:, None]) * d_n
    for i, a in enumerate(arms):
        k = tm.arm_names.index(courses[a.name].name)
        np.testing.assert_allclose(dfs_all[i], dfs_all[k], rtol=1e-4)
    jac = jax.jacfwd(lambda zz: tm.pcr_outcome(zz, days)[1])(at(0.5))
    assert np.isfinite(np.asarray(jac)).all() and float(jnp.abs(jac[..., j]).max()) > 0
    with pytest.raises(ValueError, match="needs pcr_outcome"):
        TrialModel.build(arms, micromet_correlation=True)


def test_growth_response_power_scales_growth_and_kill_apart(neosphere):
    """``growth_response_power`` alpha: a patient's growth rates scale with r^alpha, her
    chemotherapy kill with r. alpha = 1 is the one-factor model exactly; at alpha = 0 a
    node with responsiveness r is the typical patient (eta = 0) with the kill scaled by
    r. The typical patient does not depend on alpha."""
    arms, _ = neosphere
    names = ("log_kill_scale", "logit_csc_sparing", "log_response_sd")
    tm1 = TrialModel.build(arms, names)
    tm = TrialModel.build(arms, names + ("growth_response_power",))
    assert tm.names[-1] == "growth_response_power" and tm.fixed["growth_response_power"] == 1.0
    z1 = tm1.z0()
    z = jnp.concatenate([z1, jnp.ones(1)])
    for a, b in zip(tm.residuals(z)[:4], tm1.residuals(z1)[:4], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # alpha = 0: node j is the typical patient with kill x r_j
    z0 = z.at[3].set(0.0)
    s = float(tm._value(z0, "log_response_sd"))
    j = tm.n_nodes - 2
    eta = float(tm.nodes()[j])
    c = tm.n_nodes // 2
    assert abs(float(tm.nodes()[c])) < 1e-12
    got = [np.asarray(v)[:, j] for v in tm.residuals(z0)[:4]]
    zk = z0.at[0].add(s * eta)  # log_kill_scale + log r_j
    ref = [np.asarray(v)[:, c] for v in tm.residuals(zk)[:4]]
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # the typical patient (eta = 0, r = 1) is the same whatever alpha; other nodes differ
    for alpha in (0.0, 0.5, 2.0):
        za = z.at[3].set(alpha)
        for a, b in zip(tm.residuals(za)[:2], tm.residuals(z)[:2], strict=True):
            np.testing.assert_allclose(np.asarray(a)[:, c], np.asarray(b)[:, c], rtol=1e-12)
            assert not np.allclose(np.asarray(a)[:, j], np.asarray(b)[:, j], rtol=1e-6)
    assert float(tm.natural(z.at[3].set(0.3))["growth_response_power"]) == pytest.approx(0.3)


def test_objective_jacobian_is_jacfwd_with_every_parameter_free(neosphere):
    """`ObjectiveCore.jacobian` differentiates the residual states only along
    `SIM_PARAMETERS`: with every structure option's parameters free (growth power, HER2
    kill, CSC-fraction spread, ...) it must equal forward-mode autodiff of the whole
    objective, so that no parameter the states depend on is missing from the list (a
    missing one has a zero Jacobian column, and the LM never moves it)."""
    from fitcsc._trial.model import PARAMETERS

    arms, obs = neosphere
    tm = TrialModel.build(arms, None, n_nodes=5, n_her2=3, heterogeneity="continuous",
                          chemo_potency=True, her2_class=True, trial_effects=True, dcis=True,
                          her2_kill=True, growth_power=True)
    extra = [n for n in ("csc_fraction_sd", "her2_dependence_csc", "her2_dependence_bulk",
                         "hr_response_shift") if n not in tm.names]
    tm = TrialModel.build(arms, tm.names + tuple(extra), n_nodes=5, n_her2=3,
                          heterogeneity="continuous", n_csc_fraction=3)
    sim_like = {n.split("#")[0] for n in tm.names} & set(PARAMETERS)
    assert {"growth_response_power", "log_her2_kill", "csc_fraction_sd"} <= sim_like
    obj = Objective(tm, TrialData(pcr=obs))
    rng = np.random.default_rng(3)
    z = jnp.asarray(np.asarray(tm.z0()) + 0.3 * rng.standard_normal(len(tm.names)))
    z = z.at[tm.names.index("csc_fraction_sd")].set(0.4)
    got = np.asarray(obj.core.jacobian(z))
    ref = np.asarray(jax.jacfwd(obj.core.residuals)(z))
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10)
    assert np.abs(got[:, tm.names.index("growth_response_power")]).max() > 0.0


def test_trial_spread_check_has_its_nominal_size_and_flags_a_wider_spread():
    """Trial effects drawn from their prior N(0, sd) (what a MAP effect would be without
    shrinkage; shrinkage only lowers the statistic) are flagged at the nominal 1%; effects
    whose sd is 2.2 times the prior's (the shipped fit's ratio) are flagged far more often;
    the statistic is the chi-square of scipy; a model without trial effects has no check."""
    rng = np.random.default_rng(3)
    names = ("log_kill_scale",) + tuple(f"trial_effect#T{k}" for k in range(5))
    sd, reps = 0.7, 4000
    for ratio, lo, hi in ((1.0, 0.006, 0.014), (2.2, 0.6, 1.0)):
        flags = 0
        for _ in range(reps):
            z = np.concatenate([[1.3], ratio * sd * rng.standard_normal(5)])
            c = trial_spread_check(names, z, sd)
            flags += not c["ok"]
        assert lo <= flags / reps <= hi, (ratio, flags / reps)
    z = np.array([0.0, -2.94, 0.15, -0.73, 0.25, 3.75])
    c = trial_spread_check(names, z, 1.0)
    assert c["q"] == pytest.approx(float(np.sum(z[1:] ** 2)))
    assert c["p_value"] == pytest.approx(stats.chi2.sf(c["q"], 5))
    assert c["rms"] == pytest.approx(float(np.sqrt(np.mean(z[1:] ** 2))))
    assert set(c["effects"]) == {f"T{k}" for k in range(5)}
    w = trial_spread_warning(c)
    assert not c["ok"] and "T4 +3.75" in w and "too narrow" in w
    assert trial_spread_warning(trial_spread_check(names, 0.1 * z, 1.0)) is None
    assert trial_spread_check(("log_kill_scale",), [0.0], 1.0) is None


def test_quadrature_check_agrees_with_a_converged_grid(neosphere):
    """`quadrature_check` passes where the responsiveness grid is accurate and fails
    where it is not, judged against a converged grid (193 nodes): 13 nodes at the
    prior's spread are within the tolerance of the converged loss; 7 nodes at a spread
    of e^2 (adjacent nodes differ in sensitivity by e^2.5) are far off, and the check,
    which only doubles the grid, says so."""
    import dataclasses

    from fitcsc._trial.fit import (
        QUADRATURE_LOSS_TOL,
        objective_loss,
        quadrature_check,
        quadrature_warning,
    )

    arms, obs = neosphere
    verdicts = {}
    for label, nodes, log_sd in (("calm", 13, None), ("wide", 7, 2.0)):
        tm = TrialModel.build(arms, None, n_nodes=nodes, n_her2=3,
                              heterogeneity="continuous", chemo_potency=True)
        obj = Objective(tm, TrialData(pcr=obs))
        ref = Objective(dataclasses.replace(tm, n_nodes=193), obj.data, **obj.hyper)
        z = tm.z0()
        if log_sd is not None:
            z = z.at[tm.names.index("log_response_sd")].set(log_sd)
        check = quadrature_check(obj, z)
        assert check["n_nodes_check"] == 2 * nodes - 1
        np.testing.assert_allclose(check["loss"], float(objective_loss(z, obj.core)),
                                   rtol=1e-12)
        true_error = abs(float(objective_loss(z, ref.core)) - check["loss"])
        verdicts[label] = (check["ok"], true_error, check["loss_error_estimate"])
        assert (quadrature_warning(check) is None) == check["ok"]
    assert verdicts["calm"][0] and verdicts["calm"][1] < 0.5 * QUADRATURE_LOSS_TOL, verdicts
    assert not verdicts["wide"][0] and verdicts["wide"][1] > 5 * QUADRATURE_LOSS_TOL, verdicts


@pytest.mark.parametrize("log_sd,alpha", [(-3.0, 1.0), (0.0, 1.0), (1.0, 1.0), (0.85, -0.98),
                                           (0.0, 0.0), (1.0, 2.0), (0.5, 1.0 + 1e-9)])
def test_interpolation_is_exact_for_csc_log_residuals_and_lineage_rates(neosphere, log_sd,
                                                                        alpha):
    """`TrialModel.interpolate` is exact, at any ``eta``, for node values ``c0 + c1 r^alpha
    + c2 r`` (a CSC log residual: turnover scaled by ``r^alpha``, kill by ``r``; a
    lineage rate is the case ``c0 = c2 = 0``), however far apart the nodes are in ``r``,
    for ``alpha`` 1 (where ``r^alpha`` and ``r`` coincide), near 1, 0, negative and
    above 1; it interpolates the nodes; and as ``s -> 0`` it is the quadratic through
    three adjacent nodes."""
    arms, _ = neosphere
    tm = TrialModel.build(arms, ("log_response_sd", "growth_response_power"), n_nodes=7)
    z = jnp.asarray([log_sd, alpha])
    s = float(np.exp(log_sd))
    assert abs(float(tm._value(z, "log_response_sd")) - s) < 1e-12 * s
    assert float(tm._value(z, "growth_response_power")) == alpha
    nodes = np.asarray(tm.nodes())
    c0, c1, c2 = (np.asarray(v)[:, None] for v in ([3.0, -1.0, 0.0], [-0.7, 2e-3, 0.01],
                                                    [0.5, 2e-3, 0.0]))

    def f(eta):
        return c0 + c1 * np.exp(alpha * s * eta) + c2 * np.exp(s * eta)

    eta = np.linspace(-tm.eta_max - 0.5, tm.eta_max + 0.5, 61)
    got = np.asarray(tm.interpolate(jnp.asarray(f(nodes)), eta, z))
    want = f(np.clip(eta, nodes[0], nodes[-1]))  # clamped to the grid
    scale = np.max(np.abs(c1 * np.exp(alpha * s * eta)) + np.abs(c2 * np.exp(s * eta))
                   + np.abs(c0), axis=1)
    assert np.all(np.abs(got - want).max(axis=1) <= 1e-9 * scale), np.abs(got - want).max(axis=1)
    # at the nodes it returns the node values, whatever they are
    v = np.random.default_rng(0).normal(size=(2, nodes.size))
    np.testing.assert_allclose(np.asarray(tm.interpolate(jnp.asarray(v), nodes, z)), v,
                               atol=1e-12)
    # s -> 0: the quadratic through nodes (c - 1, c, c + 1) of each interval (first: 0-2)
    q = np.asarray(tm.interpolate(jnp.asarray(v), eta, jnp.asarray([-30.0, alpha])))
    d = nodes[1] - nodes[0]
    for e, row in zip(np.clip(eta, nodes[0], nodes[-1]), q.T, strict=True):
        c = min(max(int(np.clip(np.floor((e - nodes[0]) / d), 0, 5)), 1), 5)
        for j in range(2):
            poly = np.polyfit(nodes[c - 1:c + 2], v[j, c - 1:c + 2], 2)
            assert abs(np.polyval(poly, e) - row[j]) < 1e-9
