"""Fits under real dosing regimens: the held exposure against the stage-by-stage solve
and a scipy peer.

`fitcsc fit` with a regimen table fits curves under real doses, where every drug's
concentration is a sum over its doses. The paced evaluator holds each PK exponential's
value and input rate from one dose to the next (`PacedEvaluator.hold == "exposure"`),
so a stage of an ODE step costs one exponential per drug and PK exponential instead of
a sum over every dose. This script measures that on synthetic curves with known
parameters:

- **data**: ``--n`` mice (default 128), the CSC model of `fitcsc fit` for one HER2
  drug (`csc_arm_spec`: free v_S, eps_S, eps_D, V0), parameters drawn at random,
  log-normal noise (sd 0.1), days -7 to 35 (treatment from day 0); ``--regimen
  lapatinib`` (default: 100 mg/kg by mouth daily for 21 days, two exponentials, 21
  doses) or ``trastuzumab`` (10 mg/kg i.v. weekly x 5, one exponential).
- **fitcsc**: `fit_map` (4 starts, fit_map's start rule, LM "bounded", as `fitcsc fit`),
  the default (held exposure) and the stage-by-stage solve (hold "none", the reference,
  same process), each warm (second call; checked to compile nothing); the default also
  cold (fresh process, empty compile cache).
- **peer**: a Python loop of `scipy.optimize.least_squares` (MINPACK lm, 2-point
  Jacobian) per curve and start from the same starts, each residual an RK45 solve
  (`solve_ivp`, from dose to dose) of an independent NumPy model of the same ODE, the
  concentrations a sum over the doses; on ``--n-peer`` curves.
- **accuracy**: the fitted sum of squared log residuals of each curve, fitcsc against
  the peer (`frac_loss_le_peer`), and the held against the stage-by-stage optimum.

Run: ``python benchmarks/pk_regimens.py [--regimen lapatinib|trastuzumab] [--n 128]
[--n-peer 16]`` -> ``results/pk_regimens_<regimen>.json`` (~3-6 min on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import equinox as eqx
import numpy as np
from _common import (
    REPO,
    RESULTS,
    device_info,
    load_avg,
    log,
    precision,
    timed,
    timestamp,
    versions,
    write_json_atomic,
)
from scipy.integrate import solve_ivp
from scipy.optimize import least_squares
from scipy.special import expit

import fitcsc
from fitcsc.fitjob import csc_arm_spec, paced_hold, reference_starts, stage_by_stage, starts

DAYS = np.array([-7.0, -4, -1, 0, 3, 7, 10, 14, 17, 21, 24, 28, 31, 35])
NOISE_SD = 0.1
NUM_STARTS = 4
ODE_RTOL, ODE_ATOL_CELLS = 1e-8, 1e-6  # csc_predictor's defaults; the peer's too
LM_RTOL, LM_MAX_STEPS = 1e-8, 200
REGIMENS = {
    "lapatinib": ("lapatinib", 100.0, dict(n_doses=21, interval_day=1.0)),
    "trastuzumab": ("trastuzumab", 10.0, dict(n_doses=5, interval_day=7.0)),
}


def setting(regimen: str):
    """``(model, predictor, regimen)`` of the benchmark."""
    drug, dose, kw = REGIMENS[regimen]
    model = fitcsc.ModelConfig(crowding="logistic", drugs=(drug,), species="mouse")
    pred = fitcsc.csc_predictor(model, csc_arm_spec(model), rtol=ODE_RTOL,
                                atol=ODE_ATOL_CELLS)
    reg = fitcsc.Regimen((fitcsc.DoseLine(drug, dose, "mg/kg", **kw),), name="treated")
    return model, pred, reg


def write_curves(path: Path, regimen: str, n: int, seed: int) -> None:
    """Synthetic curves of known parameters under ``regimen`` (a tidy CSV)."""
    model, pred, reg = setting(regimen)
    sched = reg.to_schedule(model.drugs, species="mouse")
    rng = np.random.default_rng(seed)
    names = ("initial_volume_mm3", "csc_division_rate", "her2_efficacy_csc",
             "her2_efficacy_bulk")
    lines = ["study,arm,subject,day,volume_mm3"]
    for i in range(n):
        theta = (rng.uniform(80.0, 200.0), rng.uniform(0.25, 0.6), rng.uniform(0.1, 0.9),
                 rng.uniform(0.1, 0.9))
        p = eqx.tree_at(lambda q: [getattr(q, k) for k in names], pred.spec.reference,
                        [np.asarray(v, float) for v in theta])
        v = np.asarray(fitcsc.simulate(model, p, sched, DAYS, t0=DAYS[0]).volume_mm3)
        v = v * np.exp(NOISE_SD * rng.standard_normal(v.shape))
        lines += [f"syn,treated,m{i},{float(d)!r},{float(x)!r}"
                  for d, x in zip(DAYS, v, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def read_curves(path: Path, reg):
    return fitcsc.make_batch(fitcsc.read_tidy_csv(path), {"treated": reg},
                             detection_limit_mm3=1e-3)


def fit_kwargs() -> dict:
    return dict(num_starts=NUM_STARTS, sigma=NOISE_SD, trust_region="bounded",
                stall_rtol=1e-8, stall_steps=2, rtol=LM_RTOL, atol=LM_RTOL,
                max_steps=LM_MAX_STEPS, evaluator="paced")


def ssr(log_pred, batch) -> np.ndarray:
    """Each curve's sum of squared log residuals."""
    obs = np.log(np.asarray(batch.volume_mm3))
    m = np.asarray(batch.mask)
    lp = np.asarray(log_pred)[:, : obs.shape[1]]
    return np.sum(np.where(m, (obs - lp) ** 2, 0.0), axis=1)


# ---------------------------------------------------------------- the scipy peer


class Peer:
    """Independent NumPy model of one HER2 drug's curve: logistic S/D, Hill blockade of
    CSC self-renewal and bulk division, concentrations summed over the doses."""

    def __init__(self, model, pred, reg):
        ref = pred.spec.reference
        assert model.state_names == ("S", "D") and model.plasticity == "none"
        g = {k: float(np.asarray(getattr(ref, k))) for k in (
            "csc_death_rate", "bulk_death_rate", "bulk_division_rate", "self_renewal",
            "carrying_capacity_cells", "initial_csc_fraction", "her2_dependence_csc",
            "her2_dependence_bulk")}
        self.__dict__.update(g)
        self.ec50 = float(np.asarray(ref.ec50_mg_per_L)[0])
        self.hill = float(np.asarray(ref.hill)[0])
        sched = reg.to_schedule(model.drugs, species="mouse")
        m = np.asarray(sched.mask)
        self.t_dose = np.asarray(sched.time_day)[m]
        self.amount = np.asarray(sched.amount_mg)[m]
        assert np.all(np.asarray(sched.duration_day)[m] == 0.0)
        c, r = fitcsc.CATALOGUE[model.drugs[0]].pk_mouse.exponentials()
        self.coefs, self.rates = np.asarray(c, float), np.asarray(r, float)
        self.cells = float(model.cells_per_mm3)
        self.labels = list(pred.spec.labels())

    def conc(self, t):
        dt = t - self.t_dose
        on = dt >= 0.0
        e = np.exp(-np.outer(np.where(on, dt, 0.0), self.rates)) @ self.coefs
        return float(np.sum(np.where(on, self.amount * e, 0.0)))

    def log_volumes(self, z, days):
        th = dict(zip(self.labels, z, strict=True))
        v_S = math.exp(th["csc_division_rate"])
        e_S, e_D = expit(th["her2_efficacy_csc"]), expit(th["her2_efficacy_bulk"])
        N0 = math.exp(th["initial_volume_mm3"]) * self.cells
        K = self.carrying_capacity_cells

        def f(t, y):
            c = self.conc(t)
            x = (c / self.ec50) ** self.hill if c > 0 else 0.0
            B = x / (1.0 + x)
            p = self.self_renewal * (1.0 - e_S * self.her2_dependence_csc * B)
            v_D = self.bulk_division_rate * (1.0 - e_D * self.her2_dependence_bulk * B)
            S, D = y
            g = 1.0 - (S + D) / K
            return [v_S * (2 * p - 1) * S * g - self.csc_death_rate * S,
                    2 * v_S * (1 - p) * S * g + (v_D * g - self.bulk_death_rate) * D]

        # from dose to dose (the concentration's kinks), as the paced solver's jumps
        t0, t_end = days[0], days[-1]
        inner = self.t_dose[(self.t_dose > t0) & (self.t_dose < t_end)]
        edges = np.unique(np.concatenate([[t0, t_end], inner]))
        y = np.array([self.initial_csc_fraction * N0, (1 - self.initial_csc_fraction) * N0])
        out = np.empty(days.size)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            sel = (days >= a) & ((days < b) | ((b == t_end) & (days <= b)))
            te = np.unique(np.concatenate([days[sel], [b]]))
            sol = solve_ivp(f, (a, b), y, method="RK45", rtol=ODE_RTOL,
                            atol=ODE_ATOL_CELLS, t_eval=te)
            if not sol.success:
                raise RuntimeError(sol.message)
            total = np.sum(sol.y, axis=0)
            out[sel] = np.log(total[np.searchsorted(te, days[sel])] / self.cells)
            y = sol.y[:, -1]
        return out

    def fit(self, z_starts, days, log_obs):
        best = None
        for z0 in z_starts:
            res = least_squares(lambda z: (self.log_volumes(z, days) - log_obs) / NOISE_SD,
                                z0, method="lm", ftol=LM_RTOL, xtol=LM_RTOL, gtol=LM_RTOL,
                                max_nfev=LM_MAX_STEPS * (len(z0) + 1))
            if best is None or res.cost < best.cost:
                best = res
        return best


# ---------------------------------------------------------------- runs


def run_fitcsc(pred, batch, stages: bool):
    """Warm and first-call seconds of fit_map (``stages``: stage by stage)."""
    with stage_by_stage() if stages else contextlib.nullcontext():
        first, first_s, first_c = timed(fitcsc.fit_map, pred, batch, **fit_kwargs())
        warm, warm_s, warm_c = timed(fitcsc.fit_map, pred, batch, **fit_kwargs())
    if warm_c > 0.5:
        raise RuntimeError(f"the warm call compiled for {warm_c:.1f} s")
    return warm, {"first_call_s": first_s, "first_call_compile_s": first_c,
                  "warm_s": warm_s, "warm_compile_s": warm_c}


def cold_one(args) -> None:
    """The child of the cold run: read the curves, compile and fit in this fresh
    process."""
    t = time.perf_counter()
    _, pred, reg = setting(args.regimen)
    batch = read_curves(Path(args.csv), reg)
    res, wall, comp = timed(fitcsc.fit_map, pred, batch, **fit_kwargs())
    n_failed = int(np.sum(np.asarray(res.status) >= 2))
    Path(args.out).write_text(json.dumps({"fit_s": wall, "compile_s": comp,
                                          "in_process_s": time.perf_counter() - t,
                                          "n_failed": n_failed}))


def run_cold(args, csv: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cold.json"
        env = {**os.environ, "FITCSC_CACHE_DIR": str(Path(tmp) / "cache")}
        cmd = [sys.executable, __file__, "--cold-one", "--out", str(out), "--regimen",
               args.regimen, "--csv", str(csv)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
        wall = time.perf_counter() - t
        return {"process_wall_s": wall, **json.loads(out.read_text())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regimen", choices=sorted(REGIMENS), default="lapatinib")
    ap.add_argument("--n", type=int, default=128, help="curves fitted by fitcsc")
    ap.add_argument("--n-peer", type=int, default=16, help="curves fitted by the peer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cold-one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--csv", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cold_one:
        cold_one(args)
        return {}
    out_path = Path(args.out or RESULTS / f"pk_regimens_{args.regimen}.json")
    load0 = load_avg()
    model, pred, reg = setting(args.regimen)
    tmp = tempfile.TemporaryDirectory()
    csv = Path(tmp.name) / "curves.csv"
    write_curves(csv, args.regimen, args.n, args.seed)
    batch = read_curves(csv, reg)
    mode = paced_hold(pred, batch)
    log(f"{args.n} curves under {args.regimen}: fitcsc, hold {mode!r} ...")
    held, t_held = run_fitcsc(pred, batch, False)
    log(f"  first {t_held['first_call_s']:.1f} s, warm {t_held['warm_s']:.2f} s")
    log("fitcsc, stage by stage (hold 'none') ...")
    stage, t_stage = run_fitcsc(pred, batch, True)
    log(f"  first {t_stage['first_call_s']:.1f} s, warm {t_stage['warm_s']:.2f} s")
    cold = None if args.no_cold else run_cold(args, csv)
    if cold:
        log(f"cold: {cold['process_wall_s']:.1f} s (compile {cold['compile_s']:.1f} s)")
    # the peer on the first n_peer curves, from fit_map's starts (start_scale 1, seed 0)
    peer = Peer(model, pred, reg)
    z_ref, free = reference_starts(pred, fitcsc.subject_data(batch))
    z0 = starts(z_ref, free, NUM_STARTS, 1.0, 0)
    log(f"scipy peer: {args.n_peer} curves ...")
    t = time.perf_counter()
    peer_ssr = []
    obs = np.log(np.asarray(batch.volume_mm3))
    for i in range(args.n_peer):
        res = peer.fit(z0[i], DAYS, obs[i, : DAYS.size])
        peer_ssr.append(2.0 * res.cost * NOISE_SD ** 2)
    peer_s = time.perf_counter() - t
    peer_rate = args.n_peer / peer_s
    log(f"  {peer_s:.1f} s -> {peer_rate:.3f} curves/s")
    tmp.cleanup()
    s_held, s_stage = ssr(held.log_volume_pred, batch), ssr(stage.log_volume_pred, batch)
    peer_ssr = np.asarray(peer_ssr)
    le = s_held[: args.n_peer] <= peer_ssr * (1 + 1e-6) + 1e-9
    rel = (s_held[: args.n_peer] - peer_ssr) / peer_ssr
    rate_held, rate_stage = args.n / t_held["warm_s"], args.n / t_stage["warm_s"]
    result = {
        "benchmark": "pk_regimens", "question": __doc__.splitlines()[0],
        "regimen": args.regimen, "drug_doses": REGIMENS[args.regimen][2],
        "n_curves": args.n, "num_starts": NUM_STARTS, "days": DAYS.tolist(),
        "hold_chosen": mode,
        "fitcsc_held": {**t_held, "curves_per_s": rate_held},
        "fitcsc_stage_by_stage": {**t_stage, "curves_per_s": rate_stage},
        "speedup_held_vs_stage_warm": t_stage["warm_s"] / t_held["warm_s"],
        "peer": {"n_curves": args.n_peer, "wall_s": peer_s, "curves_per_s": peer_rate},
        "ratio_vs_scipy": rate_held / peer_rate,
        "ratio_vs_scipy_stage_by_stage": rate_stage / peer_rate,
        "cold": cold,
        "ratio_vs_scipy_cold": (None if not cold else
                                (args.n / peer_rate) / cold["process_wall_s"]),
        "frac_loss_le_peer": float(np.mean(le)),
        "loss_rule": "fitcsc <= peer (1 + 1e-6) + 1e-9, loss the sum of squared log residuals",
        "rel_diff_fitcsc_minus_peer": {
            "median": float(np.median(rel)), "max": float(np.max(rel)),
            "min": float(np.min(rel)),
            "n_worse_by_more_than_1e-3_rel": int(np.sum(rel > 1e-3)),
            "n_better_by_more_than_1e-3_rel": int(np.sum(rel < -1e-3))},
        "ssr_fitcsc": s_held[: args.n_peer].tolist(), "ssr_peer": peer_ssr.tolist(),
        "ssr_held_minus_stage": {"max_abs": float(np.max(np.abs(s_held - s_stage))),
                                 "max_rel": float(np.max(np.abs(s_held - s_stage)
                                                         / np.maximum(s_stage, 1e-300)))},
        "n_failed": int(np.sum(np.asarray(held.status) >= 2)),
        "tolerances": {"ode_rtol": ODE_RTOL, "ode_atol_cells": ODE_ATOL_CELLS,
                       "lm_rtol": LM_RTOL, "lm_max_steps": LM_MAX_STEPS},
        "device": device_info(), "precision": precision(), "versions": versions(),
        "load_avg_start": load0, "load_avg_end": load_avg(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "timestamp": timestamp(),
    }
    write_json_atomic(out_path, result)
    log(f"ratio_vs_scipy {result['ratio_vs_scipy']:.1f} (held) / "
        f"{result['ratio_vs_scipy_stage_by_stage']:.1f} (stage by stage), held "
        f"{result['speedup_held_vs_stage_warm']:.2f}x faster warm -> {out_path}")
    return result


if __name__ == "__main__":
    main()
