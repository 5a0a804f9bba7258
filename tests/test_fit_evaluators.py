"""Evaluators: the paced CSC evaluator against jacfwd, finite differences and the fits.

Choosing an evaluator changes how residuals and Jacobians are computed, never the
optimum beyond the ODE tolerance: checked against `jax.jacfwd` of `simulate` (each
member solved alone), central differences, known parameters and the failure rules.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    DAYS,
    FREE,
    MODEL,
    NOISE_SD,
    NUM_STARTS,
    REGIMEN,
    SPEC,
    TRUE,
    bad_batches,
    true_volumes,
    write_batch,
)

import fitcsc
from fitcsc._fit.driver import fit_map, pad_observations
from fitcsc._fit.evaluators import JacfwdEvaluator, PacedEvaluator, basis
from fitcsc._fit.predictors import FunctionPredictor, csc_predictor, subject_data
from fitcsc._status import FitStatus

LM = dict(trust_region="bounded", stall_rtol=1e-8, stall_steps=2)


def evaluate(evaluator, z, data, free=None):
    """``(log V, status, d log V/dz)`` of every member by ``evaluator`` (start, then
    advance until every member is ready: the lane driver's calls, without the LM), the
    Jacobian along the ``free`` elements (default all; the others' columns are 0)."""
    z = np.asarray(z)
    free = np.ones(z.shape, bool) if free is None else np.asarray(free)
    K = int(free.sum(axis=1).max())
    order = np.argsort(~free, axis=1, kind="stable")[:, :K]
    idx = jnp.asarray(np.where(np.take_along_axis(free, order, axis=1), order, z.shape[1]))

    @jax.jit
    def run(z_, d):
        ev = jax.vmap(evaluator.start)(z_, d, idx)
        busy = jnp.ones(z_.shape[0], bool)
        ev = jax.lax.while_loop(lambda e: ~jnp.all(jax.vmap(evaluator.ready)(e)),
                                lambda e: evaluator.advance(e, d, busy), ev)
        lp, st, J = jax.vmap(evaluator.result)(ev, d)
        full = jnp.zeros(J.shape[:-1] + (z_.shape[1],)).at[
            jnp.arange(J.shape[0])[:, None, None], jnp.arange(J.shape[1])[None, :, None],
            idx[:, None, :]].set(J, mode="drop")
        return lp, st, full

    return run(jnp.asarray(z), jax.tree_util.tree_map(jnp.asarray, data))


@pytest.fixture(scope="module")
def stk(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paced")
    vols = true_volumes()
    noise = np.asarray(jax.random.normal(jax.random.key(1), vols.shape))
    # ragged: subject 1 starts at day 0 (its own t0, doses at its start), subject 3
    # stops at day 21
    days = [DAYS, DAYS[2:], DAYS, DAYS[:-2], DAYS]
    vols = [v[len(DAYS) - len(d):] if d[0] == 0 else v[: len(d)]
            for v, d in zip(vols * np.exp(NOISE_SD * noise), days, strict=True)]
    batch = write_batch(tmp / "noisy.csv", vols, days, {"trastuzumab": REGIMEN})
    pred = csc_predictor(MODEL, SPEC)
    paced = fit_map(pred, batch, num_starts=NUM_STARTS, sigma=NOISE_SD, evaluator="paced",
                    **LM)
    jacfwd = fit_map(pred, batch, num_starts=NUM_STARTS, sigma=NOISE_SD,
                     evaluator="jacfwd", **LM)
    return dict(batch=batch, pred=pred, paced=paced, jacfwd=jacfwd)


def test_evaluators_agree_on_residual_inputs_and_jacobians(stk):
    """The paced evaluator's log volumes and Jacobian against jacfwd of `simulate`
    (each member solved alone with the same error control), at perturbed starts,
    also with a free mask (the paced one solves sensitivities along free directions
    only; the others' columns are 0)."""
    pred = stk["pred"]
    data = pad_observations(subject_data(stk["batch"]))
    rng = np.random.default_rng(0)
    z = np.asarray(jax.vmap(pred.init_z)(data)) + rng.uniform(-0.5, 0.5, (5, len(FREE)))
    free = np.ones(z.shape, bool)
    free[::2, 1] = False
    lp, st, J = evaluate(PacedEvaluator(pred), z, data)
    lp2, st2, J2 = evaluate(JacfwdEvaluator(pred), z, data)
    _, _, J_masked = evaluate(PacedEvaluator(pred), z, data, free)
    assert np.all(np.asarray(st) == 0) and np.all(np.asarray(st2) == 0)
    m = np.asarray(data.mask)
    np.testing.assert_allclose(np.asarray(lp)[m], np.asarray(lp2)[m], rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(J)[m], np.asarray(J2)[m], rtol=1e-5, atol=1e-8)
    Jm = np.asarray(J_masked)
    for i in range(5):
        mi = m[i]
        np.testing.assert_allclose(Jm[i][mi][:, free[i]], np.asarray(J2)[i][mi][:, free[i]],
                                   rtol=1e-5, atol=1e-8)
        assert np.all(Jm[i][mi][:, ~free[i]] == 0.0)


def test_paced_jacobian_matches_central_differences(stk):
    pred = stk["pred"]
    data = pad_observations(subject_data(stk["batch"]))
    z = np.asarray(jax.vmap(pred.init_z)(data))
    ev = PacedEvaluator(pred)
    J = np.asarray(evaluate(ev, z, data)[2])
    h = 1e-5
    m = np.asarray(data.mask)
    for j in range(z.shape[1]):
        e = np.zeros_like(z)
        e[:, j] = h
        fd = (np.asarray(evaluate(ev, z + e, data)[0])
              - np.asarray(evaluate(ev, z - e, data)[0])) / (2 * h)
        np.testing.assert_allclose(J[..., j][m], fd[m], rtol=1e-4, atol=1e-6,
                                   err_msg=FREE[j])


def test_basis_rows_are_the_free_elements():
    np.testing.assert_array_equal(basis(jnp.array([0, 2, 3]), 4), np.eye(4)[[0, 2, 3]])
    np.testing.assert_array_equal(basis(jnp.array([0, 2, 3, 4]), 4),
                                  np.vstack([np.eye(4)[[0, 2, 3]], np.zeros(4)]))


def test_evaluators_reach_the_same_optima(stk):
    """Same statuses, and the same optima to the ODE tolerance (the loss to 1e-7)."""
    s, v = stk["paced"], stk["jacfwd"]
    np.testing.assert_array_equal(s.status, v.status)
    conv = np.asarray(v.status) == FitStatus.CONVERGED
    assert conv.sum() >= 4
    np.testing.assert_allclose(np.asarray(s.loss)[conv], np.asarray(v.loss)[conv], rtol=1e-7)
    np.testing.assert_allclose(np.asarray(s.theta)[conv], np.asarray(v.theta)[conv],
                               rtol=1e-3)
    ident = np.asarray(s.identifiable) & np.asarray(v.identifiable) & conv
    assert ident.sum() >= 3
    np.testing.assert_allclose(np.asarray(s.se_theta)[ident], np.asarray(v.se_theta)[ident],
                               rtol=1e-3)


def test_estimated_sigma_with_censored_points_as_with_jacfwd(stk):
    """sigma estimated with censored points (subject 4): LM and the sigma MLE alternate
    in the member's lane, with either evaluator."""
    batch, pred = stk["batch"], stk["pred"]
    assert bool(np.any(np.asarray(batch.censored)[4]))
    kw = dict(num_starts=2, sigma="estimate", **LM)
    s = fit_map(pred, batch, evaluator="paced", **kw)
    v = fit_map(pred, batch, evaluator="jacfwd", **kw)
    np.testing.assert_array_equal(s.status, v.status)
    conv = np.asarray(v.status) == FitStatus.CONVERGED
    np.testing.assert_allclose(np.asarray(s.sigma)[conv], np.asarray(v.sigma)[conv],
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s.loss)[conv], np.asarray(v.loss)[conv],
                               rtol=1e-6)


def test_paced_fit_recovers_noise_free_parameters(tmp_path):
    vols = true_volumes()[:4]
    batch = write_batch(tmp_path / "clean.csv", vols, np.tile(DAYS, (4, 1)),
                         {"trastuzumab": REGIMEN})
    res = fit_map(csc_predictor(MODEL, SPEC), batch, num_starts=2, sigma=NOISE_SD,
                  evaluator="paced", **LM)
    assert np.all(np.asarray(res.status) == FitStatus.CONVERGED)
    np.testing.assert_allclose(res.theta, TRUE[:4], rtol=1e-5)


def test_a_failing_member_keeps_its_failure(stk):
    """A subject with non-finite data, or whose span makes its solve fail, gets its own
    status; the others reach the optima they reach without it."""
    batch, pred, base = stk["batch"], stk["pred"], stk["paced"]
    k, others = 2, [0, 1, 3, 4]
    for expected, bad in bad_batches(batch, k).items():
        res = fit_map(pred, bad, num_starts=NUM_STARTS, sigma=NOISE_SD, evaluator="paced",
                      **LM)
        assert int(res.status[k]) == expected
        np.testing.assert_array_equal(np.asarray(res.status)[others],
                                      np.asarray(base.status)[others])
        np.testing.assert_allclose(np.asarray(res.loss)[others],
                                   np.asarray(base.loss)[others], rtol=1e-6)


def test_evaluator_options_and_refusals(stk):
    batch = stk["batch"]
    fn = FunctionPredictor(lambda z, s: (z[0] + 0.0 * s.day, 0), 1)
    with pytest.raises(ValueError, match="needs a CSC predictor"):
        fit_map(fn, batch, evaluator="paced")
    chemo = fitcsc.ModelConfig(crowding="logistic", drugs=("paclitaxel",),
                               chemo_mode="log_kill", species="mouse")
    spec = fitcsc.ParamSpec({"csc_division_rate": fitcsc.Positive()},
                            fitcsc.default_params(chemo))
    with pytest.raises(ValueError, match="log-kill"):
        fit_map(csc_predictor(chemo, spec), batch, evaluator="paced")
    with pytest.raises(ValueError, match="evaluator must be"):
        fit_map(stk["pred"], batch, evaluator="stacked")
    with pytest.raises(ValueError, match="batching must be"):
        fit_map(stk["pred"], batch, batching="pmap")
    with pytest.raises(ValueError, match="contradicts"):
        fit_map(stk["pred"], batch, batching="vmap", evaluator="paced")
    # the former batching names still select the evaluators
    legacy = fit_map(stk["pred"], batch, num_starts=NUM_STARTS, sigma=NOISE_SD,
                     batching="stacked", **LM)
    np.testing.assert_array_equal(legacy.loss, stk["paced"].loss)
    # auto: paced for the CSC model, jacfwd where paced cannot run
    auto = fit_map(stk["pred"], batch, num_starts=NUM_STARTS, sigma=NOISE_SD, **LM)
    np.testing.assert_array_equal(auto.loss, stk["paced"].loss)


def test_costliest_first_changes_nothing_but_the_order(stk, monkeypatch):
    """The lanes start the members with the longest solves first (the paced evaluator's
    guess of their cost); each member's result does not depend on when or in which
    lane it runs: the same fit, bit for bit, in file order."""
    from fitcsc._fit.evaluators import CurveProblem

    batch, pred, base = stk["batch"], stk["pred"], stk["paced"]
    span = PacedEvaluator(pred).span(subject_data(batch))
    # ragged data: subject 3 stops early, subject 1 starts late (its own t0)
    order = np.argsort(-np.repeat(span, NUM_STARTS), kind="stable")
    assert span[3] < span[0] and np.any(order != np.arange(order.size))
    monkeypatch.setattr(CurveProblem, "expected_cost", lambda self, members: None)
    plain = fit_map(pred, batch, num_starts=NUM_STARTS, sigma=NOISE_SD, evaluator="paced",
                    **LM)
    for field in ("z", "loss", "status", "n_steps"):
        np.testing.assert_array_equal(np.asarray(getattr(plain, field)),
                                      np.asarray(getattr(base, field)), err_msg=field)


def test_held_drug_effects_match_the_stage_by_stage_solve(tmp_path):
    """Constant unit exposures (an arm's pseudo-drug), dosed three times during the
    curves (curves from day -7, boluses at days 0, 7 and 14: the exposure steps 0, 1,
    2, 3 mg/L and, with EC50 1.5 mg/L and Hill 2, so does the effect): the paced
    evaluator holds the drug effects between doses (hold "effects", chosen from the data)
    and gives the log volumes and Jacobian of the stage-by-stage paced evaluator and of
    jacfwd of `simulate`. Real PK and infusions are not held."""
    from fitcsc._fit.evaluators import make_evaluator
    from fitcsc._io.arms import UNIT_EXPOSURE_PK, register_arm_drug
    from fitcsc._model.drugs import default_pk
    from fitcsc._model.pk import pk_arrays, stepwise_exposure

    drug = register_arm_drug("held effects test", "cytostatic")
    model = fitcsc.ModelConfig(crowding="logistic", drugs=(drug,), species="mouse")
    ref = fitcsc.default_params(model, carrying_capacity_cells=5e9, initial_csc_fraction=0.1,
                                csc_division_rate=0.4, self_renewal=0.7,
                                ec50_mg_per_L=jnp.array([1.5]), hill=jnp.array([2.0]),
                                cytostatic_efficacy=jnp.array([0.6]))
    spec = fitcsc.ParamSpec({"csc_division_rate": fitcsc.Positive(),
                             "self_renewal": fitcsc.Interval(0.5, 1.0),
                             "cytostatic_efficacy": fitcsc.Interval(0.0, 1.0)}, ref)
    regimen = fitcsc.Regimen((fitcsc.DoseLine(drug, 1.0, "mg", n_doses=3,
                                              interval_day=7.0),))
    vols = true_volumes()[:3]
    batch = write_batch(tmp_path / "held.csv", vols, [DAYS] * 3, {"trastuzumab": regimen})
    pred = csc_predictor(model, spec)
    data = pad_observations(subject_data(batch))
    held = make_evaluator("paced", pred, data=data)
    assert held.hold == "effects" and make_evaluator("paced", pred).hold == "none"
    z = np.asarray(jax.vmap(pred.init_z)(data)) + np.random.default_rng(1).uniform(
        -0.3, 0.3, (3, 4))
    lp, st, J = evaluate(held, z, data)
    lp1, st1, J1 = evaluate(PacedEvaluator(pred), z, data)
    lp2, st2, J2 = evaluate(JacfwdEvaluator(pred), z, data)
    assert np.all(np.asarray(st) == 0) and np.all(np.asarray(st2) == 0)
    m = np.asarray(data.mask)
    np.testing.assert_allclose(np.asarray(lp)[m], np.asarray(lp1)[m], rtol=0, atol=1e-8)
    np.testing.assert_allclose(np.asarray(lp)[m], np.asarray(lp2)[m], rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(J)[m], np.asarray(J1)[m], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(J)[m], np.asarray(J2)[m], rtol=1e-5, atol=1e-8)
    # the later doses move the curves: with the first dose alone they differ
    first = fitcsc.Regimen((fitcsc.DoseLine(drug, 1.0, "mg"),))
    params = pred.params(jnp.asarray(z[0]), jax.tree_util.tree_map(lambda x: x[0], data))
    lp_first = np.log(np.asarray(fitcsc.simulate(
        model, params, first.to_schedule(model.drugs, species="mouse"), jnp.asarray(DAYS),
        t0=DAYS[0]).volume_mm3))
    assert np.max(np.abs(lp_first - np.asarray(lp)[0][: len(DAYS)])) > 0.05
    # what is not held: a decaying exposure, an infusion
    unit = pk_arrays((UNIT_EXPOSURE_PK,))
    assert stepwise_exposure(*unit, batch.schedule)
    assert not stepwise_exposure(*pk_arrays((default_pk("trastuzumab", "mouse"),)),
                                 batch.schedule)
    infused = fitcsc.Regimen((fitcsc.DoseLine(drug, 1.0, "mg", infusion_hours=2.0),))
    assert not stepwise_exposure(*unit, infused.to_schedule(model.drugs, species="mouse"))


def test_held_exposure_matches_the_stage_by_stage_solve(tmp_path):
    """Real PK (hold "exposure", chosen from the data): lapatinib by mouth daily
    (absorption and elimination, two exponentials) and trastuzumab as 3-hour infusions,
    during curves from day -7; the exposure is held from each jump on (each
    exponential's value and input rate), the concentrations are no longer a sum over
    the doses at every stage. Log volumes and Jacobian as the stage-by-stage paced
    evaluator and jacfwd of `simulate`."""
    from fitcsc._fit.csc_spec import csc_arm_spec
    from fitcsc._fit.evaluators import make_evaluator

    model = fitcsc.ModelConfig(crowding="logistic", drugs=("lapatinib", "trastuzumab"),
                               species="mouse")
    regimen = fitcsc.Regimen((
        fitcsc.DoseLine("lapatinib", 100.0, "mg/kg", start_day=0.5, n_doses=6,
                        interval_day=1.0),
        fitcsc.DoseLine("trastuzumab", 10.0, "mg/kg", n_doses=2, interval_day=7.0,
                        infusion_hours=3.0)))
    vols = true_volumes()[:3]
    batch = write_batch(tmp_path / "pk.csv", vols, [DAYS] * 3, {"trastuzumab": regimen})
    pred = csc_predictor(model, csc_arm_spec(model))
    data = pad_observations(subject_data(batch))
    held = make_evaluator("paced", pred, data=data)
    assert held.hold == "exposure"
    n_z = pred.spec.size
    z = np.asarray(jax.vmap(pred.init_z)(data)) + np.random.default_rng(2).uniform(
        -0.3, 0.3, (3, n_z))
    lp, st, J = evaluate(held, z, data)
    lp1, st1, J1 = evaluate(PacedEvaluator(pred), z, data)
    lp2, st2, J2 = evaluate(JacfwdEvaluator(pred), z, data)
    assert np.all(np.asarray(st) == 0) and np.all(np.asarray(st1) == 0)
    assert np.all(np.asarray(st2) == 0)
    m = np.asarray(data.mask)
    np.testing.assert_allclose(np.asarray(lp)[m], np.asarray(lp1)[m], rtol=0, atol=1e-8)
    np.testing.assert_allclose(np.asarray(lp)[m], np.asarray(lp2)[m], rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(J)[m], np.asarray(J1)[m], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(J)[m], np.asarray(J2)[m], rtol=1e-5, atol=1e-8)
    # the drugs act: untreated, the same parameters give other curves
    params = pred.params(jnp.asarray(z[0]), jax.tree_util.tree_map(lambda x: x[0], data))
    untreated = fitcsc.Regimen((fitcsc.DoseLine("lapatinib", 100.0, "mg/kg",
                                                start_day=1000.0),)).to_schedule(
        model.drugs, species="mouse")  # its one dose after the curves
    lp_none = np.log(np.asarray(fitcsc.simulate(model, params, untreated, jnp.asarray(DAYS),
                                                t0=DAYS[0]).volume_mm3))
    assert np.max(np.abs(lp_none - np.asarray(lp)[0][: len(DAYS)])) > 0.05
