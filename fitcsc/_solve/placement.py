"""Writes into arrays without scatter operations, for code inside the fit engine's loops.

XLA:CPU compiles a loop into one function (no per-operation dispatch) only when it
holds no scatter or sort (its small-loop hoisting; `fitcsc._fit.lanes`). ``x.at[i].set``
with traced indices lowers to a scatter, so the engine's loops place values through
these helpers instead: comparisons, gathers and selects, exact and cheap for the short
axes they are used on (lanes, slots, observations, parameters).
"""

from __future__ import annotations

import jax.numpy as jnp


def _expand(mask, ndim):
    return jnp.reshape(mask, jnp.shape(mask) + (1,) * (ndim - jnp.ndim(mask)))


def put_rows(base, idx, rows):
    """``base.at[idx].set(rows, mode="drop")`` on the leading axis, for distinct
    ``idx`` (an index outside ``[0, len(base))`` drops its row)."""
    n = base.shape[0]
    match = jnp.asarray(idx)[None, :] == jnp.arange(n)[:, None]  # (n, len(idx))
    src = jnp.argmax(match, axis=1)
    has = jnp.any(match, axis=1)
    return jnp.where(_expand(has, base.ndim), rows[src], base)


def put_row(base, k, row):
    """``base.at[k].set(row, mode="drop")`` for one scalar index ``k``."""
    hit = jnp.arange(base.shape[0]) == k
    return jnp.where(_expand(hit, base.ndim), row[None], base)


def put_columns(base, idx, cols):
    """``base.at[:, idx].set(cols, mode="drop")`` on axis 1 (distinct ``idx``)."""
    return jnp.swapaxes(put_rows(jnp.swapaxes(base, 0, 1), idx, jnp.swapaxes(cols, 0, 1)),
                        0, 1)


def inverse_permutation(perm):
    """``q`` with ``q[perm[j]] = j`` (``perm`` a permutation of ``0..n-1``)."""
    n = perm.shape[0]
    return jnp.argmax(jnp.asarray(perm)[None, :] == jnp.arange(n)[:, None], axis=1).astype(
        jnp.int32)
