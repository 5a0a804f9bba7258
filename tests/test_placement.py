"""Scatter-free writes (fitcsc._solve.placement) against numpy's, and the XLA flag
that lets XLA:CPU compile the engine's inner loop into one function (fitcsc._xla)."""

import jax.numpy as jnp
import numpy as np
import pytest

from fitcsc._solve.placement import inverse_permutation, put_columns, put_row, put_rows
from fitcsc._xla import KEY, LOOP_HOISTING_BYTES, hoist_small_loops


@pytest.mark.parametrize("seed", range(5))
def test_put_rows_matches_numpy_assignment(seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(9, 3, 2))
    idx = rng.permutation(12)[:5]  # distinct; those >= 9 are dropped
    rows = rng.normal(size=(5, 3, 2))
    want = base.copy()
    keep = idx < 9
    want[idx[keep]] = rows[keep]
    got = np.asarray(put_rows(jnp.asarray(base), jnp.asarray(idx), jnp.asarray(rows)))
    np.testing.assert_array_equal(got, want)


def test_put_columns_and_row():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4, 6))
    cols = rng.normal(size=(4, 3))
    idx = np.array([5, 0, 6])  # 6 is out of range: dropped
    want = base.copy()
    want[:, [5, 0]] = cols[:, :2]
    np.testing.assert_array_equal(
        np.asarray(put_columns(jnp.asarray(base), jnp.asarray(idx), jnp.asarray(cols))), want)
    row = rng.normal(size=6)
    for k in (0, 3, 4, -1):  # 4 and -1 are out of range: nothing written
        want = base.copy()
        if 0 <= k < 4:
            want[k] = row
        got = put_row(jnp.asarray(base), k, jnp.asarray(row))
        np.testing.assert_array_equal(np.asarray(got), want)


def test_inverse_permutation():
    rng = np.random.default_rng(2)
    for n in (1, 2, 7, 64):
        p = rng.permutation(n)
        q = np.asarray(inverse_permutation(jnp.asarray(p)))
        np.testing.assert_array_equal(q[p], np.arange(n))


def test_loop_hoisting_flag():
    opt = f"--xla_backend_extra_options={KEY}={LOOP_HOISTING_BYTES}"
    assert hoist_small_loops("") == opt
    assert hoist_small_loops("--xla_dump_to=/tmp/x") == f"--xla_dump_to=/tmp/x {opt}"
    # the user's own threshold wins
    mine = f"--xla_backend_extra_options={KEY}=5"
    assert hoist_small_loops(mine) == mine
    # one map option: ours joins the user's entries
    assert hoist_small_loops("--xla_backend_extra_options=a=1") == (
        f"--xla_backend_extra_options={KEY}={LOOP_HOISTING_BYTES},a=1")
