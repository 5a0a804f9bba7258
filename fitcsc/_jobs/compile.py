"""Compilation: JAX's persistent cache, and what a run spent compiling.

A fit compiles one program per problem structure and data shape (`fitcsc._fit.lanes`).
The persistent compilation cache keeps those programs on disk, so the second run on
the same model shape compiles nothing: `fitcsc fit` (and `fitcsc run`) turn it on by
default in ``$FITCSC_CACHE_DIR``, else ``~/.cache/fitcsc/jax``; ``FITCSC_CACHE_DIR=off``
turns it off. Every program is cached, however short its compile.

`CompileStats` counts, while active, the XLA compilations that ran (a persistent-cache
hit is not one), the cache hits, and the seconds spent tracing, lowering and compiling
(or reading compiled programs from the cache).
"""

from __future__ import annotations

import os
import pathlib

import jax

DEFAULT_CACHE_DIR = pathlib.Path.home() / ".cache" / "fitcsc" / "jax"
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"


def cache_dir() -> pathlib.Path | None:
    """The persistent cache directory in use by default (None when turned off)."""
    where = os.environ.get("FITCSC_CACHE_DIR", str(DEFAULT_CACHE_DIR))
    return None if where.strip().lower() == "off" else pathlib.Path(where)


def enable_compile_cache() -> str | None:
    """Turn JAX's persistent compilation cache on in `cache_dir` (every program is
    written, however short its compile). **Returns:** the directory, or None if off."""
    where = cache_dir()
    if where is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return str(where)


class CompileStats:
    """Counts compilations while active: ``with CompileStats() as c: ...``, then
    ``c.n_compiles`` (XLA compilations run), ``c.n_cache_hits`` (programs read from the
    persistent cache), ``c.compile_s`` (trace + lowering + XLA compile seconds) and
    ``c.programs`` (names of the compiled programs)."""

    _installed = False
    _active: list[CompileStats] = []

    def __init__(self):
        self.n_compiles = 0
        self.n_cache_hits = 0
        self.compile_s = 0.0
        self.xla_s = 0.0
        self.programs: list[str] = []
        self._hit = False

    @classmethod
    def _duration(cls, event: str, duration: float, **kw) -> None:
        if event not in (_TRACE, _LOWER, _COMPILE):
            return
        for c in cls._active:
            c.compile_s += float(duration)
            if event == _COMPILE:  # an XLA compilation, or a read from the cache
                if c._hit:
                    c._hit = False
                    continue
                c.n_compiles += 1
                c.xla_s += float(duration)
                c.programs.append(str(kw.get("fun_name", "?")))

    @classmethod
    def _event(cls, event: str, **kw) -> None:
        if event == _HIT:  # recorded inside the compile event it saves
            for c in cls._active:
                c.n_cache_hits += 1
                c._hit = True

    def __enter__(self) -> CompileStats:
        if not CompileStats._installed:
            jax.monitoring.register_event_duration_secs_listener(CompileStats._duration)
            jax.monitoring.register_event_listener(CompileStats._event)
            CompileStats._installed = True
        CompileStats._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        CompileStats._active.remove(self)

    def summary(self) -> dict:
        return {"n_compiles": self.n_compiles, "compile_s": round(self.compile_s, 3),
                "xla_compile_s": round(self.xla_s, 3), "n_cache_hits": self.n_cache_hits,
                "cache_dir": jax.config.jax_compilation_cache_dir,
                "programs": sorted(set(self.programs))}
