"""Shared pytest set-up:

- float64 for every test (the project's precision; importing fitcsc also turns it on
  unless FITCSC_FLOAT32=1);
- the tests folder on the path, so that test modules import `helpers` (shared constants
  and builders);
- JAX's persistent compilation cache off for the whole session (``FITCSC_CACHE_DIR=off``,
  inherited by subprocesses, and ``jax_enable_compilation_cache`` False in-process, so
  no executable is serialised). In-process CLI runs would otherwise turn it on for the
  rest of their worker, and full runs with -n 2 crashed a worker twice inside JAX's
  cache write (a segmentation fault in ``executable.serialize``). The tests of the cache
  give their subprocesses a directory of their own (tests/test_fit_compile.py). A third
  crash came inside XLA's compiler itself; pyproject.toml reruns a test whose worker
  dies, once, and never reruns an ordinary failure.
- JAX's in-memory compilation caches cleared whenever a worker holds more than
  ``MAX_MAPPINGS`` memory mappings. Every XLA CPU executable keeps its own JIT-compiled
  code mapped, and a worker that runs ~340 tests compiles thousands of them: the count
  grows by 1,000-6,000 per test module, and at Linux's default limit (vm.max_map_count,
  65,530) LLVM cannot map the next one. CI failed that way ("LLVM compilation error:
  Cannot allocate memory", "Failed to materialize symbols") after a worker had crashed
  earlier in the run. Clearing returns a worker to about 1,100 mappings; only the
  executables are lost, and they recompile on next use.
"""

import gc
import os
import pathlib
import sys

import jax

os.environ["FITCSC_CACHE_DIR"] = "off"
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_enable_compilation_cache", False)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


MAX_MAPPINGS = 20_000


def _mappings():
    """The number of memory mappings this process holds (None where /proc is absent)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def pytest_runtest_teardown(item, nextitem):
    n = _mappings()
    if n is not None and n > MAX_MAPPINGS:
        jax.clear_caches()
        gc.collect()
