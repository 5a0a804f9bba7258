"""paced_solve: many small ODE solves, each member at its own pace, against closed forms
(and setup/step, the pieces the fit engine's lanes step one at a time)."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from fitcsc._solve.paced import paced_solve, tsit5_step
from fitcsc._status import Status

M = 70  # members solved together, each at its own pace


def decay(tau, y, args):
    """dy/dtau = -k y, the rate jumping from k1 to k2 at T (a dose time)."""
    k1, k2, T = args
    return -jnp.where(tau < T, k1, k2) * y


def decay_exact(tau, y0, k1, k2, T):
    return y0 * np.exp(-k1 * np.minimum(tau, T) - k2 * np.maximum(tau - T, 0.0))


def problem(seed=0):
    rng = np.random.default_rng(seed)
    k1 = rng.uniform(0.05, 0.5, M)
    k2 = rng.uniform(0.5, 3.0, M)  # faster after the jump
    T = rng.uniform(1.0, 8.0, M)
    y0 = rng.uniform(1.0, 100.0, M)
    tau = np.sort(rng.uniform(0.0, 12.0, (M, 9)), axis=1)
    tau[:, 0] = 0.0  # an output at the start
    tau[:, 3] = tau[:, 2]  # a repeated output time
    tau[:, 5] = T  # an output exactly at the jump
    tau = rng.permuted(tau, axis=1)  # outputs in any order
    pad = np.zeros_like(tau, bool)
    pad[::3, -2:] = True  # padding
    tau[pad] = np.inf
    jumps = np.stack([T, np.full(M, -1.0), np.full(M, np.inf)], axis=1)  # ignored: <= 0, inf
    return y0, (k1, k2, T), tau, jumps


def solve(y0, args, tau, jumps, **kw):
    kw = dict(rtol=1e-10, atol=1e-12, max_steps=4096) | kw
    f = jax.jit(lambda *a: paced_solve(decay, *a, lambda y: y, **kw))
    return f(jnp.asarray(y0), tuple(jnp.asarray(a) for a in args), jnp.asarray(tau),
             jnp.asarray(jumps))


def test_outputs_match_the_closed_form_across_a_jump():
    y0, args, tau, jumps = problem()
    rec, status, steps = solve(y0, args, tau, jumps)
    assert np.all(np.asarray(status) == Status.SUCCESS)
    real = np.isfinite(tau)
    exact = decay_exact(tau, y0[:, None], *(a[:, None] for a in args))
    np.testing.assert_allclose(np.asarray(rec)[real], exact[real], rtol=1e-8, atol=1e-11)
    assert np.all(np.isnan(np.asarray(rec)[~real]))
    # a member's steps do not depend on the others: the slowest (k2 = 3) take more
    k2 = args[1]
    assert np.median(np.asarray(steps)[k2 > 2.5]) > np.median(np.asarray(steps)[k2 < 1.0])


def test_without_the_jump_time_the_kink_costs_accuracy():
    """The jump times are used: without them the same tolerance misses the kink more."""
    y0, args, tau, jumps = problem()
    real = np.isfinite(tau)
    exact = decay_exact(tau, y0[:, None], *(a[:, None] for a in args))
    kw = dict(rtol=1e-6, atol=1e-9)
    with_j = np.asarray(solve(y0, args, tau, jumps, **kw)[0])
    without = np.asarray(solve(y0, args, tau, np.full_like(jumps, np.inf), **kw)[0])
    big = real & (np.where(real, exact, 0.0) > 1e-3)  # away from the atol floor
    err = lambda r: np.abs(r[big] / exact[big] - 1).max()  # noqa: E731
    assert err(with_j) < 1e-5 < err(without)


def test_each_member_is_solved_as_if_alone():
    """Members solved together (with the gathering of unfinished ones) give what they
    give alone."""
    y0, args, tau, jumps = problem()
    rec, status, steps = solve(y0, args, tau, jumps)
    for i in (0, 17, M - 1):
        one = solve(y0[i:i + 1], tuple(a[i:i + 1] for a in args), tau[i:i + 1],
                    jumps[i:i + 1])
        np.testing.assert_allclose(np.asarray(one[0])[0], np.asarray(rec)[i], rtol=1e-13)
        assert int(one[2][0]) == int(steps[i])


def test_failures_and_inactive_members_stay_with_their_member():
    y0, args, tau, jumps = problem()
    base, _, base_steps = solve(y0, args, tau, jumps, max_steps=2000)
    assert int(base_steps.max()) < 2000
    k1, k2, T = (a.copy() for a in args)
    y0 = y0.copy()
    k2[5] = 1e4  # stiff after its jump: hits the step cap
    y0[9] = np.nan  # non-finite start
    active = np.ones(M, bool)
    active[11] = False
    kw = dict(max_steps=2000, active=jnp.asarray(active))
    rec, status, steps = solve(y0, (k1, k2, T), tau, jumps, **kw)
    status = np.asarray(status)
    assert status[5] == Status.MAX_STEPS and status[9] == Status.NONFINITE
    assert int(steps[11]) == 0 and np.all(np.isnan(np.asarray(rec)[11]))
    others = np.setdiff1d(np.arange(M), [5, 9, 11])
    assert np.all(status[others] == Status.SUCCESS)
    np.testing.assert_allclose(np.asarray(rec)[others], np.asarray(base)[others],
                               rtol=1e-13)
    np.testing.assert_array_equal(np.asarray(steps)[others], np.asarray(base_steps)[others])


def test_tsit5_step_is_diffrax_tsit5():
    """The unrolled step against diffrax's own Tsit5 step on a nonlinear system."""
    def f(t, y, a):
        return jnp.stack([a * y[0] * (1 - y[1]), -y[1] + jnp.sin(t) * y[0]])

    y0, t0, t1, a = jnp.array([0.3, 0.2]), 0.4, 0.9, 1.7
    y1, err, k_last = tsit5_step(f, t0, t1, y0, a, f(t0, y0, a))
    solver, term = diffrax.Tsit5(), diffrax.ODETerm(f)
    ref = solver.step(term, t0, t1, y0, a, solver.init(term, t0, t1, y0, a), False)
    np.testing.assert_allclose(y1, ref[0], rtol=1e-14)
    np.testing.assert_allclose(err, ref[1], rtol=1e-10, atol=1e-16)
    np.testing.assert_allclose(k_last, f(t1, y1, a), rtol=1e-14)
