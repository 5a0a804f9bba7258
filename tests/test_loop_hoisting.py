"""What lets XLA:CPU compile the engine's loops into one function each: the helpers that
replace a scatter, a sort or a LAPACK call there, each against numpy (the ODE step's
output write `fitcsc._solve.paced._put`; the service's `small_eigh`,
`_insert` and the host's `time_order`), and the XLA flag that raises the loop
threshold (fitcsc._xla)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitcsc._fit.lanes import _insert
from fitcsc._fit.lm import small_eigh
from fitcsc._solve.paced import _put, setup, time_order
from fitcsc._xla import KEY, LOOP_HOISTING_BYTES, hoist_small_loops


def test_output_row_write_matches_numpy_assignment():
    rng = np.random.default_rng(1)
    base = {"a": rng.normal(size=(4, 6)), "b": rng.normal(size=(4,))}
    rec = {"a": rng.normal(size=6), "b": np.float64(rng.normal())}
    for k in (0, 3, 4, -1):  # 4 and -1 are out of range: nothing written
        got = _put(k, {n: jnp.asarray(v) for n, v in rec.items()},
                   {n: jnp.asarray(v) for n, v in base.items()})
        for n in base:
            want = base[n].copy()
            if 0 <= k < 4:
                want[k] = rec[n]
            np.testing.assert_array_equal(np.asarray(got[n]), want)


def test_loop_hoisting_flag():
    opt = f"--xla_backend_extra_options={KEY}={LOOP_HOISTING_BYTES}"
    assert hoist_small_loops("") == opt
    # first: a token XLA cannot read makes it ignore the flags after it
    assert hoist_small_loops("--xla_dump_to=/tmp/x") == f"{opt} --xla_dump_to=/tmp/x"
    assert hoist_small_loops("--xla_cpu_multi_thread_eigen=false threads=1") == (
        f"{opt} --xla_cpu_multi_thread_eigen=false threads=1")
    # the user's own threshold wins
    mine = f"--xla_backend_extra_options={KEY}=5"
    assert hoist_small_loops(mine) == mine
    # one map option: ours joins the user's entries
    assert hoist_small_loops("--xla_backend_extra_options=a=1") == (
        f"--xla_backend_extra_options={KEY}={LOOP_HOISTING_BYTES},a=1")


@pytest.mark.parametrize("n", [1, 2, 4, 7, 12])
def test_small_eigh_matches_numpy(n):
    """Jacobi rotations: eigenvalues, reconstruction and orthogonality at rounding, for
    Gauss-Newton matrices with column scales over 8 orders of magnitude and a fixed
    (identity) block, as the LM's scaled J'J has."""
    rng = np.random.default_rng(n)
    f = jax.jit(small_eigh)
    for trial in range(10):
        B = rng.normal(size=(3 * n, n)) * np.exp(rng.normal(size=n) * 4)[None]
        A = B.T @ B
        if trial % 3 == 0 and n > 1:  # a fixed element: identity row and column
            A[:, -1] = A[-1, :] = 0.0
            A[-1, -1] = 1.0
        e, Q = (np.asarray(x) for x in f(jnp.asarray(A)))
        scale = np.max(np.abs(A))
        np.testing.assert_allclose(np.sort(e), np.linalg.eigvalsh(A), rtol=0,
                                   atol=1e-13 * scale)
        np.testing.assert_allclose(Q @ np.diag(e) @ Q.T, A, rtol=0, atol=1e-13 * scale)
        np.testing.assert_allclose(Q.T @ Q, np.eye(n), rtol=0, atol=1e-13)


def test_time_order_matches_a_stable_sort():
    rng = np.random.default_rng(3)
    t = rng.choice([0.0, 1.5, 2.0, 7.0, 9.5, np.inf], size=(5, 11))  # ties and padding
    perm, rank, first, n_same = time_order(t)
    for i, row in enumerate(t):
        ts = row[perm[i]]
        np.testing.assert_array_equal(perm[i], np.argsort(row, kind="stable"))
        np.testing.assert_array_equal(rank[i], np.argsort(perm[i], kind="stable"))
        np.testing.assert_array_equal(first[i], np.searchsorted(ts, ts, side="left"))
        np.testing.assert_array_equal(n_same[i], np.searchsorted(ts, ts, side="right")
                                      - np.searchsorted(ts, ts, side="left"))


def test_setup_with_a_known_order_is_setup_without():
    """The host's `time_order` (computed once per member) gives the same solve state as
    the order `setup` computes by sorting."""
    from fitcsc._solve.paced import controller
    rhs = lambda t, y, a: -a * y  # noqa: E731
    t_obs = jnp.asarray([3.0, 0.0, 1.0, 3.0, np.inf, 2.5])
    kw = dict(rhs=rhs, ctrl=controller(1e-8, 1e-10), y=jnp.asarray([2.0, 1.0]),
              args=jnp.asarray(0.3), t_obs=t_obs, jumps=jnp.asarray([1.7]),
              record=lambda y: y[0])
    a = setup(**kw)
    b = setup(**kw, order=tuple(jnp.asarray(x) for x in time_order(np.asarray(t_obs))))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_insert_matches_numpy_assignment():
    base = np.arange(6.0)
    idx = np.asarray([4, 1, 6])  # 6 pads: dropped
    got = np.asarray(_insert(jnp.asarray(base), jnp.asarray(idx),
                             jnp.asarray([10.0, np.nan, 30.0])))
    want = base.copy()
    want[[4, 1]] = [10.0, np.nan]
    np.testing.assert_array_equal(got, want)
