"""XLA:CPU settings that fitcsc applies before JAX starts (no JAX import here).

XLA:CPU runs a compiled program as a sequence of operations, each dispatched by its
runtime (a few microseconds each). A while loop whose bytes per iteration are under a
threshold (1 KB by default) and that holds no scatter, sort or library call is instead
compiled into one function, without a dispatch per operation. The fit engine's loops
(`fitcsc._fit.lanes`: the one that advances every lane's ODE solve, a few MB, and the
lanes' service) are such loops: with the threshold raised to `LOOP_HOISTING_BYTES` the
first alone ran 1.6x faster on all 849 PDXE curves (benchmarks/README.md).

XLA reads ``XLA_FLAGS`` once, when JAX starts its CPU backend, so ``import fitcsc``
sets it only for a process where nothing has run on JAX yet (otherwise the engine runs
as before, slower). ``FITCSC_LOOP_HOISTING=0``, or the option already in ``XLA_FLAGS``,
leaves the flags alone. Other loops under the threshold are compiled the same way.
"""

from __future__ import annotations

LOOP_HOISTING_BYTES = 100_000_000
KEY = "xla_cpu_small_while_loop_byte_threshold"


def hoist_small_loops(flags: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the loop threshold raised to
    `LOOP_HOISTING_BYTES`, unless it already sets one. Ours goes first: XLA ignores,
    silently, every flag after a token it cannot read (e.g.
    ``intra_op_parallelism_threads=1`` without its dashes: measured, the engine then
    ran 6.1 s warm on the PDXE benchmark instead of 3.4 s)."""
    if KEY in flags:
        return flags
    opt = f"{KEY}={LOOP_HOISTING_BYTES}"
    marker = "--xla_backend_extra_options="
    if marker in flags:  # XLA keeps one map option: add ours to it
        return flags.replace(marker, f"{marker}{opt},", 1)
    return f"{marker}{opt} {flags}".strip()
