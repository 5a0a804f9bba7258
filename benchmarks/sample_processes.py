"""`fitcsc sample`: chains vmapped in one process against the same chains as processes.

Question: on a multi-core CPU, how much faster does a population posterior come when
its chains run as ``--processes N`` processes side by side (one XLA thread each)
instead of vmapped in one process, at the same number of chains and draws, and is it
the same posterior?

Method: one synthetic data file (``--curves`` mice, a control and a paclitaxel arm,
exponential-ish volumes), the CSC population model, NUTS with ``--chains`` chains,
``--warmup`` + ``--samples`` each. Each mode runs as a fresh ``fitcsc sample`` process
twice per repeat with its own empty compile cache: the first run is cold (compiles), the
second warm (reads the cache). The modes alternate, so machine noise falls on both.
Reported per run: wall time, the sampler's own warm-up and sampling seconds (the
slowest process's for ``--processes``), the smallest bulk ESS and the largest R-hat;
per mode the medians, and the ratios one-process / N-process (above 1: processes
faster). Accuracy: the typical values' posterior means of the two modes' warm runs
compared in units of their combined Monte Carlo standard errors.

Writes ``benchmarks/results/sample_processes.json`` (device, precision, versions, load).

Run: ``python benchmarks/sample_processes.py [--processes 2] [--repeats 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    RESULTS,
    command_line,
    device_info,
    load_avg,
    log,
    precision,
    timestamp,
    versions,
    write_json_atomic,
)


def write_data(path: Path, curves: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    lines = ["study,arm,subject,day,volume_mm3"]
    for i in range(curves):
        arm = "control" if i < curves // 2 else "paclitaxel"
        rate = 0.06 if arm == "control" else -0.02
        for d in range(0, 29, 4):
            v = 100 * np.exp((rate + 0.01 * rng.normal()) * d + 0.1 * rng.normal())
            lines.append(f"syn,{arm},m{i},{d},{v:.3f}")
    path.write_text("\n".join(lines) + "\n")


def run_once(data: Path, out: Path, cache: Path, processes: int, args) -> dict:
    cmd = [sys.executable, "-m", "fitcsc.cli", "sample", "--data", str(data), "--out", str(out),
           "--method", "nuts", "--chains", str(args.chains), "--warmup", str(args.warmup),
           "--samples", str(args.samples), "--seed", "0", "--quiet",
           "--processes", str(processes)]
    env = {**os.environ, "FITCSC_CACHE_DIR": str(cache)}
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"sample_processes: {' '.join(cmd)} failed ({done.returncode}): "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    s = json.loads((out / "summary.json").read_text())
    c = s["convergence"]
    rows = {r["name"]: r for r in csv.DictReader((out / "summary.csv").open())}
    typical = {k: (float(r["mean"]), float(r["mcse_mean"])) for k, r in rows.items()
               if k.startswith("typical[")}
    return {"wall_s": round(wall, 2), "warmup_s": round(s["timing"]["warmup_s"], 2),
            "sampling_s": round(s["timing"]["sampling_s"], 2),
            "compile_s": round(s["timing"].get("compile_s", float("nan")), 2),
            "ess_bulk_min": c["ess_bulk_min"], "rhat_max": c["rhat_max"],
            "n_divergent": c["n_divergent"], "typical": typical}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--curves", type=int, default=12)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="6 curves, 50 + 50 steps, 1 repeat")
    p.add_argument("--out", default=str(RESULTS / "sample_processes.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.curves, args.warmup, args.samples, args.repeats = 6, 50, 50, 1
    t0 = time.perf_counter()
    modes = {"one_process": 1, f"{args.processes}_processes": args.processes}
    runs = {m: {"cold": [], "warm": []} for m in modes}
    load = {"before": load_avg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "volumes.csv"
        write_data(data, args.curves)
        for rep in range(args.repeats):
            for mode, n in modes.items():
                cache = tmp / f"cache_{mode}_{rep}"
                for phase in ("cold", "warm"):
                    log(f"repeat {rep}, {mode}, {phase} ...")
                    r = run_once(data, tmp / f"{mode}_{rep}_{phase}", cache, n, args)
                    runs[mode][phase].append(r)
                    log(f"  wall {r['wall_s']} s, sampling {r['sampling_s']} s, "
                        f"min ESS {r['ess_bulk_min']:.0f}, R-hat {r['rhat_max']:.3f}")
    load["after"] = load_avg()
    one, many = modes

    def med(mode, phase, key):
        return statistics.median(r[key] for r in runs[mode][phase])

    summary = {}
    for phase in ("cold", "warm"):
        for key in ("wall_s", "warmup_s", "sampling_s"):
            summary[f"{phase}_{key}_median"] = {m: med(m, phase, key) for m in modes}
            summary[f"{phase}_{key}_ratio"] = med(one, phase, key) / med(many, phase, key)
    ess_s = {m: statistics.median(r["ess_bulk_min"] / r["sampling_s"]
                                  for r in runs[m]["warm"]) for m in modes}
    summary["warm_ess_per_sampling_s_median"] = ess_s
    summary["warm_ess_per_sampling_s_ratio"] = ess_s[many] / ess_s[one]
    a, b = runs[one]["warm"][-1]["typical"], runs[many]["warm"][-1]["typical"]
    z = {k: abs(a[k][0] - b[k][0]) / np.hypot(a[k][1], b[k][1]) for k in a}
    result = {
        "benchmark": "sample_processes", "question": __doc__.splitlines()[2].strip(),
        "settings": {"curves": args.curves, "chains": args.chains, "warmup": args.warmup,
                     "samples": args.samples, "processes": args.processes,
                     "repeats": args.repeats, "model": "csc", "method": "nuts",
                     "quick": bool(args.quick)},
        "summary": summary,
        "accuracy": {"typical_mean_diff_in_mcse": z,
                     "max_diff_in_mcse": max(z.values()),
                     "posteriors_agree": bool(max(z.values()) < 3.0)},
        "runs": runs, "device": device_info(), "precision": precision(),
        "versions": versions(), "load_avg": load, "timestamp": timestamp(),
        "command": command_line(), "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_json_atomic(Path(args.out), result)
    log(json.dumps(summary, indent=1))
    return result


if __name__ == "__main__":
    main()
