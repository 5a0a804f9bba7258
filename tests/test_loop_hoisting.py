"""What lets XLA:CPU compile the engine's inner loop into one function: the ODE step's
scatter-free output write (fitcsc._solve.paced._put) against numpy's assignment, and
the XLA flag that raises the loop threshold (fitcsc._xla)."""

import jax.numpy as jnp
import numpy as np

from fitcsc._solve.paced import _put
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
    assert hoist_small_loops("--xla_dump_to=/tmp/x") == f"--xla_dump_to=/tmp/x {opt}"
    # the user's own threshold wins
    mine = f"--xla_backend_extra_options={KEY}=5"
    assert hoist_small_loops(mine) == mine
    # one map option: ours joins the user's entries
    assert hoist_small_loops("--xla_backend_extra_options=a=1") == (
        f"--xla_backend_extra_options={KEY}={LOOP_HOISTING_BYTES},a=1")
