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
"""

import os
import pathlib
import sys

import jax

os.environ["FITCSC_CACHE_DIR"] = "off"
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_enable_compilation_cache", False)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
