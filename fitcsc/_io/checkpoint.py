"""Checkpoints of a long job in its result folder, so that an interrupted run resumes.

A job (``fitcsc fit``, ``fitcsc sample``) that works in chunks (subjects, groups of
curves, draws) saves every finished chunk as ``OUT/.checkpoint/chunk_00003.npz`` (or a
named part, e.g. ``warmup.npz``), written atomically, beside ``manifest.json``, which
holds the job's name and a hash of its inputs and options (`fingerprint`). A run with
``resume=True`` (``--resume``) on the same ``OUT`` loads the finished chunks instead of
redoing them; a chunk's result never depends on what ran before it in the process, so
the outputs equal an uninterrupted run's. The folder is removed (`remove`) once the
job has written all its outputs with every chunk done.

Refused in one line (`FitcscInputError`, exit 2): ``--resume`` when the checkpoint was
written by other data or options (different hash), and a run *without* ``--resume``
into an ``OUT`` that holds an unfinished run's checkpoint (nothing is overwritten: pass
``--resume``, or delete ``OUT/.checkpoint`` to start over). ``--resume`` on an ``OUT``
without a checkpoint runs from the start.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pathlib
import shutil

import jax
import numpy as np

from .._errors import FitcscInputError
from .files import write_atomic

DIR = ".checkpoint"


def fingerprint(*parts) -> str:
    """SHA-256 of ``parts``: arrays (and pytrees of arrays) by dtype, shape and bytes,
    everything else by its JSON (or ``repr``); plus the precision and package versions
    (a resumed run must compute exactly what the interrupted one did)."""
    from .files import versions

    h = hashlib.sha256()

    def add(x):
        if isinstance(x, np.ndarray | jax.Array):
            a = np.asarray(x)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(json.dumps(x, sort_keys=True, default=repr).encode())

    for part in parts:
        leaves = jax.tree_util.tree_leaves(part)
        if any(isinstance(v, np.ndarray | jax.Array) for v in leaves):
            for v in leaves:
                add(v)
            add(repr(jax.tree_util.tree_structure(part)))
        else:
            add(part)
    add([bool(jax.config.jax_enable_x64), versions()])
    return h.hexdigest()


class Checkpoint:
    """The checkpoint folder ``out/.checkpoint`` of one job run (see the module doc).

    **Raises:** `FitcscInputError` when the folder holds another run (``resume``) or an
    unfinished run (without ``resume``).
    """

    def __init__(self, out, job: str, digest: str, *, resume: bool):
        self.dir = pathlib.Path(out) / DIR
        self.resumed: list[str] = []
        self.saved: list[str] = []
        manifest = self.dir / "manifest.json"
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text())
                old_job, old_digest = old["job"], old["fingerprint"]
            except (ValueError, KeyError, TypeError):
                old_job, old_digest = "?", "unreadable"
            if not resume:
                raise FitcscInputError(
                    "the output folder holds the checkpoint of an unfinished run (or "
                    "one kept with --keep-checkpoint)",
                    file=str(manifest), expected="--resume to continue it, or another "
                    f"--out (or delete {self.dir}) to start over", value=old_job)
            if (old_job, old_digest) != (job, digest):
                raise FitcscInputError(
                    "--resume: the checkpoint was written with other data or options",
                    file=str(manifest), expected=f"the {old_job} run with fingerprint "
                    f"{old_digest[:12]} (same data, options, precision and versions)",
                    value=f"{job} {digest[:12]}")
        # the manifest is written with the first finished part (`save`), so a run refused
        # before any work leaves no folder behind
        self._manifest = (manifest, json.dumps({"job": job, "fingerprint": digest},
                                               indent=2) + "\n")

    def load(self, name: str) -> dict | None:
        """The arrays of the finished part ``name``, or None when it is not done."""
        path = self.dir / f"{name}.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as f:
            out = {k: f[k] for k in f.files}
        self.resumed.append(name)
        return out

    def save(self, name: str, arrays: dict) -> None:
        """Save the finished part ``name`` (arrays, or strings) atomically."""
        manifest, text = self._manifest
        if not manifest.exists():
            write_atomic(manifest, text)
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        write_atomic(self.dir / f"{name}.npz", buf.getvalue())
        self.saved.append(name)

    def interrupted(self) -> KeyboardInterrupt:
        """The exception to raise on Ctrl-C: one line saying how to resume."""
        n = len(self.resumed) + len(self.saved)
        return KeyboardInterrupt(f"interrupted; {n} finished chunk(s) kept in {self.dir}: "
                                 "run the same command with --resume to continue")

    @contextlib.contextmanager
    def resumable(self):
        """Ctrl-C anywhere inside (while fitting a chunk, saving one, loading the next or
        merging it) becomes `interrupted`: one line saying how to resume."""
        try:
            yield self
        except KeyboardInterrupt:
            raise self.interrupted() from None

    def record(self, *, kept: bool = False) -> dict:
        """The summary.json record: parts loaded and computed (and where the folder is
        ``kept``, when a chunk failed: ``--resume`` retries only the failed ones)."""
        out = {"resumed_chunks": len(self.resumed), "computed_chunks": len(self.saved)}
        return {**out, "kept": str(self.dir)} if kept else out


def remove(out) -> None:
    """Remove the checkpoint of ``out`` (call once every output is written)."""
    shutil.rmtree(pathlib.Path(out) / DIR, ignore_errors=True)


def add_resume_option(parser, what: str, extra: str = "") -> None:
    """``--resume`` of a job that checkpoints every finished ``what`` (`fitcsc._io.checkpoint`);
    ``extra``: a sentence the job adds to the help."""
    parser.add_argument(
        "--resume", action="store_true",
        help=f"continue the interrupted run (Ctrl-C, kill) whose checkpoint --out holds: "
        f"every finished {what} is saved in OUT/.checkpoint and not redone; the results "
        f"equal an uninterrupted run's. Refused when the data or options differ.{extra} "
        "Without --resume, an OUT holding an unfinished run's checkpoint is refused (never "
        "overwritten): resume it, or delete OUT/.checkpoint to start over")
