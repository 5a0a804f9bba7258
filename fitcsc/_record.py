"""What every result folder records about the run: package versions, device, precision
and the seeds of its random streams (``summary.json``'s run record)."""

from __future__ import annotations

import importlib.metadata
import platform

import jax

PACKAGES = ("fitcsc", "jax", "jaxlib", "diffrax", "optimistix", "equinox", "numpyro",
            "numpy", "scipy")


def versions() -> dict:
    """Python's and the numerical packages' versions (None: not installed)."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    if out["fitcsc"] is None:  # not installed (run from a checkout)
        from . import __version__

        out["fitcsc"] = __version__
    return out


def device() -> str:
    """The device new arrays and computations go to (``jax_default_device`` if set,
    else the first device of JAX's default backend), e.g. ``TFRT_CPU_0``."""
    dev = jax.config.jax_default_device
    if dev is None:
        return str(jax.devices()[0])
    return str(jax.devices(dev)[0] if isinstance(dev, str) else dev)


def precision() -> str:
    """``float64`` when JAX's x64 mode is on (fitcsc's default), else ``float32``."""
    return "float64" if jax.config.jax_enable_x64 else "float32"


def run_record(**seeds) -> dict:
    """``summary.json`` entries of every job: device, precision, versions and ``seeds``
    (the seed of each random stream the job used, by name; empty when it uses none)."""
    return {"device": device(), "precision": precision(), "versions": versions(),
            "seeds": {k: v for k, v in seeds.items()}}
