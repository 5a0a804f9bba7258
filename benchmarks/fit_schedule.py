"""`fitcsc fit` with and without cost-sorted chunks, on the same curves, in one process.

Under vmap a chunk of curves runs until its slowest member is done (lockstep). `fit_job`
therefore sorts a group's curves by the ODE solver steps of one forward solve at the
start before chunking (``schedule=True``, the default). This script runs the per-curve
job on the PDXE breast file (or ``--max-subjects N``) both ways, in alternating order
over ``--repeats`` pairs, and writes wall times (the job as a user runs it; the medians
leave out the first run, which compiles what the later runs of both kinds reuse), the
per-curve loss agreement, device, precision and versions as JSON.

    python benchmarks/fit_schedule.py                       # -> results/fit_schedule.json
    python benchmarks/fit_schedule.py --max-subjects 128 --out /tmp/fs.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import fitcsc  # noqa: E402
from fitcsc._fitrun import _versions, fit_job  # noqa: E402
from fitcsc._run import write_atomic  # noqa: E402


def losses(path):
    with open(path, newline="") as fh:
        return {r["subject"]: (float(r["loss"]) if r["loss"] not in ("", "nan") else np.nan,
                               r["status"]) for r in csv.DictReader(fh)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-subjects", type=int, default=None)
    p.add_argument("--starts", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="pairs of runs (>= 2: the "
                   "first run, which compiles, is left out of the medians)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fit_schedule.json"))
    a = p.parse_args(argv)
    data = fitcsc.data_dir() / "pdxe_brca" / "pdxe_brca_tumor_volume.csv"
    load0 = os.getloadavg()[0]
    runs = {"plain": [], "scheduled": []}
    result_loss = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            order = ("plain", "scheduled") if rep % 2 == 0 else ("scheduled", "plain")
            for name in order:
                out = pathlib.Path(tmp) / f"{name}{rep}"
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    job = fit_job(data, out, starts=a.starts, chunk_size=a.chunk_size,
                                  max_subjects=a.max_subjects, progress=False,
                                  schedule=name == "scheduled")
                runs[name].append({"wall_s": round(time.perf_counter() - t, 2),
                                   "cold": rep == 0 and name == order[0],
                                   "fit_s": job["fit_s"], "n_failed": job["n_failed"],
                                   "status_counts": job["status_counts"]})
                result_loss[name] = losses(out / "fits.csv")
    pl, sc = result_loss["plain"], result_loss["scheduled"]
    rel = np.asarray([(sc[s][0] - pl[s][0]) / max(abs(pl[s][0]), 1.0) for s in pl
                      if np.isfinite(pl[s][0]) and np.isfinite(sc[s][0])])
    # the process's first run compiles the fit functions; later runs of either kind
    # reuse them (the scheduled runs compile only their screening solve)
    med = {k: float(np.median([r["wall_s"] for r in v if not r["cold"]])) for k, v in
           runs.items()}
    res = {
        "benchmark": "fitcsc fit (per-curve, CSC model) with and without cost-sorted chunks",
        "data": "pdxe_brca_tumor_volume.csv", "n_curves": len(pl),
        "starts": a.starts, "chunk_size": a.chunk_size, "repeats": a.repeats,
        "runs": runs, "wall_s_median": med,
        "speedup_scheduled": med["plain"] / med["scheduled"],
        "loss_agreement": {"n": int(rel.size), "max_abs_rel_diff": float(np.max(np.abs(rel))),
                           "n_scheduled_lower_by_1e-6": int(np.sum(rel < -1e-6)),
                           "n_scheduled_higher_by_1e-6": int(np.sum(rel > 1e-6))},
        "timing_note": "wall time of the whole job; the medians leave out the process's "
                       "first run, which compiles the fit functions that later runs of "
                       "both kinds reuse (scheduled runs also compile one screening solve "
                       "per group, included)",
        "device": str(jax.devices()[0]), "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "precision": "float64" if jax.config.jax_enable_x64 else "float32",
        "versions": _versions(), "load_average_start_end": [load0, os.getloadavg()[0]],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(pathlib.Path(a.out), json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    r = main()
    print(json.dumps({k: r[k] for k in ("n_curves", "wall_s_median", "speedup_scheduled",
                                         "loss_agreement")}, indent=1))
