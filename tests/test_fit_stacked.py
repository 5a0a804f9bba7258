"""fit_map(batching="stacked"): all members of a fit in one array program.

Checked against the per-member (vmapped) path, central finite differences, known
parameters and the failure rules of the vmapped path.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_fit import (
    DAYS,
    FREE,
    MODEL,
    NOISE_SD,
    NUM_STARTS,
    REGIMEN,
    SPEC,
    TRUE,
    _true_volumes,
    _write_batch,
    bad_batches,
)

import fitcsc
from fitcsc._fit import fit_map
from fitcsc._fit_predict import FunctionPredictor, csc_predictor, subject_data
from fitcsc._fit_solve import FitStatus
from fitcsc._fit_stacked import bounded_step, paced_log_pred

LM = dict(trust_region="eager", stall_rtol=1e-8, stall_steps=2)


@pytest.fixture(scope="module")
def stk(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stacked")
    vols = _true_volumes()
    noise = np.asarray(jax.random.normal(jax.random.key(1), vols.shape))
    # ragged: subject 1 starts at day 0 (its own t0, doses at its start), subject 3
    # stops at day 21
    days = [DAYS, DAYS[2:], DAYS, DAYS[:-2], DAYS]
    vols = [v[len(DAYS) - len(d):] if d[0] == 0 else v[: len(d)]
            for v, d in zip(vols * np.exp(NOISE_SD * noise), days, strict=True)]
    batch = _write_batch(tmp / "noisy.csv", vols, days, {"trastuzumab": REGIMEN})
    pred = csc_predictor(MODEL, SPEC)
    stacked = fit_map(pred, batch, num_starts=NUM_STARTS, sigma=NOISE_SD,
                      batching="stacked", **LM)
    vmapped = fit_map(pred, batch, num_starts=NUM_STARTS, sigma=NOISE_SD, **LM)
    return dict(batch=batch, pred=pred, stacked=stacked, vmapped=vmapped)


def test_log_pred_and_jacobian_match_each_member_solved_alone(stk):
    """Values against the vmapped per-member solve (each member is solved with the same
    error control at its own pace), the Jacobian against `jax.jacfwd` of it."""
    pred, data = stk["pred"], subject_data(stk["batch"])
    rng = np.random.default_rng(0)
    z = np.asarray(jax.vmap(pred.init_z)(data)) + rng.uniform(-0.5, 0.5, (5, len(FREE)))
    lp, status, J, steps = eqx.filter_jit(paced_log_pred)(pred, jnp.asarray(z), data)
    assert np.all(np.asarray(status) == 0) and np.all(np.asarray(steps) > 5)

    def one(z_, s):
        return jax.jacfwd(lambda q: pred(q, s)[0])(z_), pred(z_, s)[0]

    J_ref, lp_ref = jax.jit(jax.vmap(one))(jnp.asarray(z), data)
    m = np.asarray(data.mask)
    np.testing.assert_allclose(np.asarray(lp)[m], np.asarray(lp_ref)[m], rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(J)[m], np.asarray(J_ref)[m], rtol=1e-5,
                               atol=1e-8)


def test_inactive_members_cost_no_steps_and_leave_the_others_alone(stk):
    pred, data = stk["pred"], subject_data(stk["batch"])
    z = jax.vmap(pred.init_z)(data)
    f = eqx.filter_jit(paced_log_pred)
    lp, status, _, steps = f(pred, z, data)
    act = jnp.array([True, False, True, False, True])
    lp2, status2, _, steps2 = f(pred, z, data, act)
    a = np.asarray(act)
    assert np.all(np.asarray(steps2)[~a] == 0) and np.all(np.asarray(status2)[~a] != 0)
    np.testing.assert_array_equal(np.asarray(lp2)[a], np.asarray(lp)[a])
    np.testing.assert_array_equal(np.asarray(steps2)[a], np.asarray(steps)[a])


def test_jacobian_matches_central_differences(stk):
    pred, data = stk["pred"], subject_data(stk["batch"])
    z = np.asarray(jax.vmap(pred.init_z)(data))
    f = eqx.filter_jit(lambda z_: paced_log_pred(pred, z_, data))
    J = np.asarray(f(jnp.asarray(z))[2])
    h = 1e-5
    m = np.asarray(data.mask)
    for j in range(z.shape[1]):
        e = np.zeros_like(z)
        e[:, j] = h
        fd = (np.asarray(f(jnp.asarray(z + e))[0]) - np.asarray(f(jnp.asarray(z - e))[0])
              ) / (2 * h)
        np.testing.assert_allclose(J[..., j][m], fd[m], rtol=1e-4, atol=1e-6,
                                   err_msg=FREE[j])


def test_stacked_fit_reaches_the_vmapped_optima(stk):
    s, v = stk["stacked"], stk["vmapped"]
    # subject 1 (treated from its first observation) crawls to self_renewal's bound in
    # both: the same status, the stacked one at least as low
    np.testing.assert_array_equal(s.status, v.status)
    conv = np.asarray(v.status) == FitStatus.CONVERGED
    assert conv.sum() >= 4
    np.testing.assert_allclose(np.asarray(s.loss)[conv], np.asarray(v.loss)[conv], rtol=1e-7)
    assert np.all(np.asarray(s.loss) <= np.asarray(v.loss) * (1 + 1e-7))
    np.testing.assert_allclose(np.asarray(s.theta)[conv], np.asarray(v.theta)[conv],
                               rtol=1e-3)
    ident = np.asarray(s.identifiable) & np.asarray(v.identifiable) & conv
    assert ident.sum() >= 3
    np.testing.assert_allclose(np.asarray(s.se_theta)[ident], np.asarray(v.se_theta)[ident],
                               rtol=1e-3)


def test_bounded_step_is_lmpars_step():
    """Gauss-Newton (where A is singular: the step of least scaled length |D p|) when
    its scaled step lies within 1.1 delta, else the LM step whose scaled length is
    delta; fixed components stay 0. Against numpy's solve and pinv."""
    rng = np.random.default_rng(3)
    M, p = 64, 4
    J = rng.standard_normal((M, 9, p)) * rng.lognormal(0.0, 2.0, (M, 1, p))
    J[:8, :, 3] = 0.0  # singular A: a parameter the residuals do not see
    J[8:16, :, 2] = J[8:16, :, 1]  # singular A: two parameters seen alike
    A = np.einsum("mnp,mnq->mpq", J, J)
    g = np.einsum("mnp,mn->mp", J, rng.standard_normal((M, 9)))
    g[8:16, 1:3] = g[8:16, 1:2]  # g in the range of A, as J'r is
    D = np.maximum(np.linalg.norm(J, axis=1), 1e-3) * rng.uniform(1.0, 2.0, (M, p))
    free = np.ones((M, p), bool)
    free[16:24, 0] = False
    delta = rng.lognormal(0.0, 2.0, M)
    step, lam = map(np.asarray, bounded_step(*map(jnp.asarray, (A, g, D, free, delta))))
    assert np.all(step[~free] == 0.0)
    n_gn = n_lm = 0
    for m in range(M):
        f = free[m]
        Af, gf, Df, s = A[m][np.ix_(f, f)], g[m][f], D[m][f], step[m][f]
        if lam[m] == 0.0:
            n_gn += 1
            gn = -np.linalg.pinv(Af / np.outer(Df, Df), rcond=1e-12) @ (gf / Df) / Df
            np.testing.assert_allclose(s, gn, rtol=1e-6, atol=1e-9 * np.abs(gn).max())
            assert np.linalg.norm(Df * s) <= 1.1 * delta[m] * (1 + 1e-12)
        else:
            n_lm += 1
            np.testing.assert_allclose(
                s, -np.linalg.solve(Af + lam[m] * np.diag(Df**2), gf), rtol=1e-8)
            np.testing.assert_allclose(np.linalg.norm(Df * s), delta[m], rtol=1e-6)
    assert n_gn >= 5 and n_lm >= 5


def test_bounded_rule_reaches_the_vmapped_optima(stk):
    """trust_region="bounded" (stacked only): the optima of the vmapped "eager" fits,
    or lower."""
    s = fit_map(stk["pred"], stk["batch"], num_starts=NUM_STARTS, sigma=NOISE_SD,
                batching="stacked", **{**LM, "trust_region": "bounded"})
    v = stk["vmapped"]
    conv = (np.asarray(v.status) == FitStatus.CONVERGED) & (
        np.asarray(s.status) == FitStatus.CONVERGED)
    assert conv.sum() >= 4
    np.testing.assert_allclose(np.asarray(s.loss)[conv], np.asarray(v.loss)[conv], rtol=1e-7)
    assert np.all(np.asarray(s.loss) <= np.asarray(v.loss) * (1 + 1e-7))
    np.testing.assert_allclose(np.asarray(s.theta)[conv], np.asarray(v.theta)[conv],
                               rtol=1e-3)


def test_estimated_sigma_with_censored_points_as_the_vmapped_fit(stk):
    """sigma estimated with censored points (subject 4): LM and the sigma MLE alternate,
    as in the vmapped path."""
    batch, pred = stk["batch"], stk["pred"]
    assert bool(np.any(np.asarray(batch.censored)[4]))
    kw = dict(num_starts=2, sigma="estimate", **LM)
    s = fit_map(pred, batch, batching="stacked", **kw)
    v = fit_map(pred, batch, **kw)
    np.testing.assert_array_equal(s.status, v.status)
    conv = np.asarray(v.status) == FitStatus.CONVERGED
    np.testing.assert_allclose(np.asarray(s.sigma)[conv], np.asarray(v.sigma)[conv],
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s.loss)[conv], np.asarray(v.loss)[conv],
                               rtol=1e-6)


def test_stacked_fit_recovers_noise_free_parameters(tmp_path):
    vols = _true_volumes()[:4]
    batch = _write_batch(tmp_path / "clean.csv", vols, np.tile(DAYS, (4, 1)),
                         {"trastuzumab": REGIMEN})
    res = fit_map(csc_predictor(MODEL, SPEC), batch, num_starts=2, sigma=NOISE_SD,
                  batching="stacked", **LM)
    assert np.all(np.asarray(res.status) == FitStatus.CONVERGED)
    np.testing.assert_allclose(res.theta, TRUE[:4], rtol=1e-5)


def test_a_failing_member_keeps_its_failure(stk):
    """A subject with non-finite data, or whose span makes its solve fail, gets its own
    status; the others reach the optima they reach without it."""
    batch, pred, base = stk["batch"], stk["pred"], stk["stacked"]
    k, others = 2, [0, 1, 3, 4]
    for expected, bad in bad_batches(batch, k).items():
        res = fit_map(pred, bad, num_starts=NUM_STARTS, sigma=NOISE_SD, batching="stacked",
                      **LM)
        assert int(res.status[k]) == expected
        np.testing.assert_array_equal(np.asarray(res.status)[others],
                                      np.asarray(base.status)[others])
        np.testing.assert_allclose(np.asarray(res.loss)[others],
                                   np.asarray(base.loss)[others], rtol=1e-6)


def test_stacked_refuses_what_it_cannot_run(stk):
    batch = stk["batch"]
    fn = FunctionPredictor(lambda z, s: (z[0] + 0.0 * s.day, 0), 1)
    with pytest.raises(ValueError, match="needs a CSC predictor"):
        fit_map(fn, batch, batching="stacked")
    with pytest.raises(ValueError, match="method must be 'lm'"):
        fit_map(stk["pred"], batch, method="optax", batching="stacked")
    chemo = fitcsc.ModelConfig(crowding="logistic", drugs=("paclitaxel",),
                               chemo_mode="log_kill", species="mouse")
    spec = fitcsc.ParamSpec({"csc_division_rate": fitcsc.Positive()},
                            fitcsc.default_params(chemo))
    with pytest.raises(ValueError, match="log-kill"):
        fit_map(csc_predictor(chemo, spec), batch, batching="stacked")
    with pytest.raises(ValueError, match="batching must be"):
        fit_map(stk["pred"], batch, batching="pmap")
    with pytest.raises(ValueError, match="'bounded' needs batching='stacked'"):
        fit_map(stk["pred"], batch, trust_region="bounded")
