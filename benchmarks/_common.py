"""Helpers shared by the benchmark scripts: device, versions, memory, atomic JSON.

Importing this module makes `fitcsc` importable from a checkout without installing it
(the repository root goes on ``sys.path``), so every script runs as
``python benchmarks/<name>.py`` from the repository root.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
try:
    import fitcsc
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))
    import fitcsc
import jax  # noqa: E402  (fitcsc sets float64 on import)
import jax.numpy as jnp  # noqa: E402

from fitcsc.files import write_atomic  # noqa: E402

BASE_PACKAGES = ("jax", "jaxlib", "diffrax", "equinox", "numpy", "scipy")


def log(*args) -> None:
    """Progress messages go to stderr, so stdout stays clean."""
    print(*args, file=sys.stderr, flush=True)


def precision() -> str:
    """The default float dtype of JAX arrays (``float64`` once fitcsc is imported)."""
    return str(jnp.zeros(()).dtype)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far [MiB]."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def load_avg() -> list[float]:
    """1-, 5- and 15-minute load averages (the machine may be shared)."""
    return list(os.getloadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_info() -> dict:
    d = jax.devices()[0]
    return {
        "jax_platform": d.platform,
        "jax_device_kind": d.device_kind,
        "jax_device_count": jax.device_count(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
    }


def versions(packages: tuple[str, ...] = BASE_PACKAGES) -> dict:
    """Python and package versions, fitcsc's version, the git commit and whether the
    ``fitcsc`` sources differ from it."""
    v = {"python": platform.python_version()}
    for pkg in packages:
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = None
    v["fitcsc"] = fitcsc.__version__
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "fitcsc"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        v["git_commit"] = rev.stdout.strip() if rev.returncode == 0 else None
        v["fitcsc_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        v["git_commit"] = None
    return v


def timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (`fitcsc.files.write_atomic`), so a
    reader never sees a half-written file."""
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


class CompileMeter:
    """Sums JAX's compile-time events (trace, lowering, XLA compile) while active.

    ``with meter: ...`` then ``meter.seconds`` (total) and ``meter.events`` (by name).
    Used to take compile time out of a call's wall time and to check that a timed call
    did not recompile.
    """

    _EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )
    _installed = False
    _active: list[CompileMeter] = []

    def __init__(self):
        self.events = {e.rsplit("/", 1)[1]: 0.0 for e in self._EVENTS}

    @property
    def seconds(self) -> float:
        return float(sum(self.events.values()))

    @classmethod
    def _listener(cls, event: str, duration: float, **_) -> None:
        if event in cls._EVENTS:
            for m in cls._active:
                m.events[event.rsplit("/", 1)[1]] += float(duration)

    def __enter__(self) -> CompileMeter:
        if not CompileMeter._installed:
            jax.monitoring.register_event_duration_secs_listener(CompileMeter._listener)
            CompileMeter._installed = True
        CompileMeter._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        CompileMeter._active.remove(self)


def timed(fn, *args, **kwargs):
    """``(result, wall_s, compile_s)``: ``fn(*args, **kwargs)`` run to completion
    (`jax.block_until_ready`), with the compile time spent inside it."""
    with CompileMeter() as meter:
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        wall = time.perf_counter() - t
    return out, wall, meter.seconds
