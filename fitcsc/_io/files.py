"""Result files: the one place that writes them (public: experiments, benchmarks and
user scripts use it too).

- `write_atomic`: text or bytes through a temporary file in the same folder and an atomic
  rename (flushed to disk first), so a file is the old one or the whole new one, never a
  part; every output of fitcsc goes through it, figures included.
- `csv_text`: a header and rows as CSV text (``\\n`` line ends).
- `pyplot` / `save_figure`: matplotlib on the Agg backend, and a figure saved as PNG
  (atomically) and closed.
- `run_record`: what every result folder records about its run (``summary.json``):
  package `versions`, `device`, `precision` and the seeds of its random streams.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import os
import pathlib
import platform
import tempfile

import jax


def write_atomic(path, text: str | bytes) -> pathlib.Path:
    """Write ``text`` (or bytes) to ``path`` through a temporary file in the same folder,
    flushed to disk, and an atomic rename: ``path`` is the old file or the whole new one,
    never a part (a run killed meanwhile leaves at most a hidden ``.name.*`` temporary).
    Creates the folder. **Returns:** the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
        binary = isinstance(text, bytes)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def csv_text(header, rows) -> str:
    """``header`` and ``rows`` as CSV text with ``\\n`` line ends."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, *, dpi: int = 110) -> pathlib.Path:
    """Save ``fig`` as PNG to ``path`` atomically (`write_atomic`) and close it.
    **Returns:** the path."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)
    return write_atomic(path, buf.getvalue())


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
        from .. import __version__

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
