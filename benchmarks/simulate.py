"""Benchmark: many parameter sets under one regimen in one vmapped `fitcsc.simulate` call.

Simulates ``--n`` (default 10,000) parameter sets drawn around `fitcsc.default_params`
for the logistic CSC model with trastuzumab + paclitaxel (mouse PK), and times

- fitcsc: one ``jax.jit(jax.vmap(simulate))`` call over all parameter sets. Compile
  (trace + lower + XLA compile, ahead of time) is timed separately from the runs; the
  runs are repeated ``--repeats`` times and the median is reported.
- the peer: a plain loop of `scipy.integrate.solve_ivp` (RK45, same rtol/atol, same
  output times) over the first ``--n-scipy`` parameter sets, with an independent NumPy
  vector field of the same model and the same closed-form concentrations, integrated
  piecewise between dose discontinuities (dose times and infusion ends).

Accuracy is reported beside speed: the relative error of tumour volume at every output
time, fitcsc vs scipy and both vs a tight-tolerance scipy reference (DOP853,
rtol 1e-12), on the scipy subset.

Tolerance policy (per simulation, identical for both solvers): rtol = 1e-6 and
atol = 1e-3 cells on every state component, with the RMS error norm over components
(diffrax's and scipy's default). Tumours start at 1e8 cells, so rtol dominates.

Usage (from the repository root)::

    python benchmarks/simulate.py                 # full run -> benchmarks/results/simulate.json
    python benchmarks/simulate.py --quick         # smoke run (tiny n), written to a temp dir
    python benchmarks/simulate.py --n 2000 --n-scipy 50 --repeats 3 --out /tmp/sim.json

Results are JSON (written atomically); see benchmarks/README.md for the fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    REPO,
    device_info,
    fitcsc,
    jax,
    jnp,
    peak_rss_mib,
    versions,
    write_json_atomic,
)
from scipy.integrate import solve_ivp

DEFAULT_OUT = REPO / "benchmarks" / "results" / "simulate.json"

# ---------------------------------------------------------------- setup (the workload)

MODEL_KW = dict(crowding="logistic", drugs=("trastuzumab", "paclitaxel"), species="mouse")
REGIMEN = fitcsc.Regimen(
    (
        fitcsc.DoseLine(
            "trastuzumab",
            10.0,
            "mg/kg",
            start_day=0.0,
            interval_day=7.0,
            n_doses=6,
            infusion_hours=0.0,
        ),
        fitcsc.DoseLine(
            "paclitaxel",
            20.0,
            "mg/kg",
            start_day=0.0,
            interval_day=7.0,
            n_doses=3,
            infusion_hours=1.0,
        ),
    ),
    name="trastuzumab 10 mg/kg qw x6 bolus + paclitaxel 20 mg/kg qw x3 1-h infusion",
)
T_END_DAY, N_TIMES = 42.0, 22
RTOL, ATOL_CELLS = 1e-6, 1e-3
MAX_STEPS = 4096
REF_RTOL, REF_ATOL = 1e-12, 1e-6  # the tight scipy reference (DOP853)
SEED = 20240601

# Parameters varied across the batch: (name, transform, sigma). "log": log-normal with
# median = default; "logit": logit-normal (log-normal odds) for values in (0, 1), median =
# default. Per-drug fields get an independent draw per drug.
VARIED = (
    ("csc_division_rate", "log", 0.25),
    ("self_renewal", "logit", 0.25),
    ("bulk_division_rate", "log", 0.25),
    ("bulk_death_rate", "log", 0.25),
    ("carrying_capacity_cells", "log", 0.25),
    ("her2_efficacy_csc", "logit", 0.25),
    ("her2_efficacy_bulk", "logit", 0.25),
    ("csc_sparing", "logit", 0.25),
    ("ec50_mg_per_L", "log", 0.5),
    ("hill", "log", 0.25),
    ("kill_rate", "log", 0.5),
)


def draw_params(base, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` draws of the VARIED fields around ``base`` (float64 NumPy arrays)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, how, sigma in VARIED:
        b = np.asarray(getattr(base, name), dtype=np.float64)
        z = rng.standard_normal((n, *b.shape))
        if how == "log":
            out[name] = b * np.exp(sigma * z)
        else:
            logit = np.log(b / (1.0 - b)) + sigma * z
            out[name] = 1.0 / (1.0 + np.exp(-logit))
    return out


# ---------------------------------------------------------------- the scipy peer


class NumpyModel:
    """Independent NumPy right-hand side of the configured model (S, D states).

    Implements only what the benchmark uses: logistic crowding, no extensions, HER2
    drug + chemotherapy in concentration mode, one-compartment PK (closed form).
    """

    def __init__(self, model, base, schedule):
        assert model.crowding == "logistic" and model.state_names == ("S", "D")
        assert model.chemo_mode == "concentration"
        classes = [fitcsc.CATALOGUE[d].drug_class for d in model.drugs]
        assert set(classes) <= {"her2", "chemo"}
        self.her2 = np.array([c == "her2" for c in classes])
        self.chemo = np.array([c == "chemo" for c in classes])
        for pk in base.pk:
            assert isinstance(pk, fitcsc.OneCompartment), pk
        self.k_el = np.array([np.log(2.0) / float(pk.half_life_day) for pk in base.pk])
        self.inv_v = np.array([1.0 / float(pk.volume_L) for pk in base.pk])
        mask = np.asarray(schedule.mask)
        self.dose_t = np.asarray(schedule.time_day)[mask]
        self.dose_amt = np.asarray(schedule.amount_mg)[mask]
        self.dose_dur = np.asarray(schedule.duration_day)[mask]
        self.dose_drug = np.asarray(schedule.drug)[mask]
        self.cells_per_mm3 = model.cells_per_mm3
        self.n_drugs = len(model.drugs)

    def breakpoints(self, t0: float, t1: float) -> np.ndarray:
        ends = self.dose_t[self.dose_dur > 0] + self.dose_dur[self.dose_dur > 0]
        b = np.concatenate([[t0, t1], self.dose_t, ends])
        return np.unique(b[(b >= t0) & (b <= t1)])

    def concentrations(self, t: float, started: np.ndarray) -> np.ndarray:
        """mg/L of each drug at ``t``; ``started`` marks doses given by the current piece."""
        k, iv = self.k_el[self.dose_drug], self.inv_v[self.dose_drug]
        tau = np.maximum(t - self.dose_t, 0.0)
        dur = self.dose_dur
        bolus = iv * np.exp(-k * tau)
        T = np.where(dur > 0, dur, 1.0)
        a = np.maximum(tau - T, 0.0)
        infusion = iv / k * np.exp(-k * a) * -np.expm1(-k * (tau - a)) / T
        per_dose = np.where(started, np.where(dur > 0, infusion, bolus) * self.dose_amt, 0.0)
        return np.bincount(self.dose_drug, weights=per_dose, minlength=self.n_drugs)

    def rhs(self, p: dict, started: np.ndarray):
        v_S, p_self, d_S = p["csc_division_rate"], p["self_renewal"], p["csc_death_rate"]
        v_D, d_D, K = p["bulk_division_rate"], p["bulk_death_rate"], p["carrying_capacity_cells"]
        ec50, hill, kill = p["ec50_mg_per_L"], p["hill"], p["kill_rate"]
        eps_S = p["her2_efficacy_csc"] * p["her2_dependence_csc"]
        eps_D = p["her2_efficacy_bulk"] * p["her2_dependence_bulk"]
        sigma = p["csc_sparing"]

        def f(t, y):
            S, D = y
            C = self.concentrations(t, started)
            Cn = np.where(C > 0, C, 0.0) ** hill
            I = Cn / (ec50**hill + Cn)
            B = 1.0 - np.prod(np.where(self.her2, 1.0 - I, 1.0))
            k_D = np.sum(np.where(self.chemo, kill * C, 0.0))
            k_S = sigma * k_D
            p_eff = p_self * (1.0 - eps_S * B)
            g = 1.0 - (S + D) / K
            dS = v_S * (2.0 * p_eff - 1.0) * S * g - d_S * S - k_S * S
            dD = (
                2.0 * v_S * (1.0 - p_eff) * S * g
                + (v_D * (1.0 - eps_D * B) * g - d_D) * D
                - k_D * D
            )
            return np.array([dS, dD])

        return f

    def simulate(
        self, p: dict, y0: np.ndarray, ts: np.ndarray, *, method: str, rtol: float, atol: float
    ):
        """Volume [mm3] at ``ts``, scipy status (0 ok), and number of RHS evaluations."""
        bps = self.breakpoints(float(ts[0]), float(ts[-1]))
        ys = np.full((ts.size, y0.size), np.nan)
        done = np.zeros(ts.size, bool)
        y, status, nfev = np.asarray(y0, float), 0, 0
        for a, b in zip(bps[:-1], bps[1:], strict=True):
            # concentrations are smooth inside (a, b); doses at a are given, at b not yet
            started = self.dose_t <= a
            sel = ~done & (ts >= a) & (ts <= b)
            n_sel = int(sel.sum())
            t_eval = ts[sel]
            if n_sel == 0 or t_eval[-1] < b:  # b last: the state carried to the next piece
                t_eval = np.append(t_eval, b)
            sol = solve_ivp(
                self.rhs(p, started), (a, b), y, method=method, rtol=rtol, atol=atol, t_eval=t_eval
            )
            nfev += sol.nfev
            if sol.status != 0:
                status = sol.status if sol.status > 0 else 2
                break
            ys[sel] = sol.y[:, :n_sel].T
            done |= sel
            y = sol.y[:, -1]
        return ys.sum(axis=1) / self.cells_per_mm3, status, nfev


def run_scipy(nm: NumpyModel, per_sim: list[dict], y0, ts, *, method, rtol, atol):
    vols, statuses, nfevs = [], [], []
    t = time.perf_counter()
    for p in per_sim:
        v, s, n = nm.simulate(p, y0, ts, method=method, rtol=rtol, atol=atol)
        vols.append(v)
        statuses.append(s)
        nfevs.append(n)
    return (time.perf_counter() - t, np.array(vols), np.array(statuses), np.array(nfevs))


# ---------------------------------------------------------------- bookkeeping


def rel_err_stats(a: np.ndarray, ref: np.ndarray) -> dict:
    ok = np.isfinite(a).all(axis=1) & np.isfinite(ref).all(axis=1)
    e = np.abs(a[ok] - ref[ok]) / np.abs(ref[ok])
    return {
        "quantity": "volume_mm3 at every output time",
        "max_rel_err": float(e.max()) if e.size else None,
        "median_rel_err": float(np.median(e)) if e.size else None,
        "p99_rel_err": float(np.quantile(e, 0.99)) if e.size else None,
        "n_sims_compared": int(ok.sum()),
    }


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=10_000, help="parameter sets in the vmapped call")
    ap.add_argument(
        "--n-scipy",
        type=int,
        default=200,
        help="parameter sets (the first ones) run by the scipy loop",
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed fitcsc runs after compile")
    ap.add_argument("--scipy-repeats", type=int, default=3, help="timed scipy loops")
    ap.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="0: one vmapped call of --n; k > 0: jax.lax.map over chunks of k (bounds memory)",
    )
    ap.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the tight-tolerance scipy reference (accuracy vs truth)",
    )
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run (n=64, n-scipy=4, repeats=2); written to a temp "
        "dir unless --out is given",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON output path (default {DEFAULT_OUT.relative_to(REPO)})",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.n_scipy, args.repeats, args.scipy_repeats = 64, 4, 2, 1
        if args.out is None:
            args.out = Path(tempfile.gettempdir()) / "fitcsc-bench-simulate-quick.json"
    if args.out is None:
        args.out = DEFAULT_OUT
    args.n_scipy = min(args.n_scipy, args.n)
    if args.n < 1 or args.repeats < 1 or args.scipy_repeats < 1 or args.n_scipy < 1:
        ap.error("--n, --n-scipy, --repeats and --scipy-repeats must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    load_start = list(os.getloadavg())
    precision = str(jnp.zeros(()).dtype)
    model = fitcsc.ModelConfig(**MODEL_KW)
    base = fitcsc.default_params(model)
    schedule = REGIMEN.to_schedule(model.drugs, species=model.species)
    ts_np = np.linspace(0.0, T_END_DAY, N_TIMES)
    ts = jnp.asarray(ts_np)
    draws_np = draw_params(base, args.n, args.seed)
    draws = {k: jnp.asarray(v) for k, v in draws_np.items()}
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    log(f"device {jax.devices()[0]}, precision {precision}, n={args.n}")

    def one(d):
        p = dataclasses.replace(base, **d)
        sol = fitcsc.simulate(
            model, p, schedule, ts, rtol=RTOL, atol=ATOL_CELLS, max_steps=MAX_STEPS
        )
        return sol.volume_mm3, sol.status, sol.num_steps

    if args.chunk > 0:
        batched = jax.jit(lambda d: jax.lax.map(one, d, batch_size=args.chunk))
    else:
        batched = jax.jit(jax.vmap(one))

    # ---- compile (ahead of time), then the first call, then timed runs
    t = time.perf_counter()
    lowered = batched.lower(draws)
    trace_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    xla_compile_s = time.perf_counter() - t
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(draws))
    first_run_s = time.perf_counter() - t
    log(
        f"compile {trace_s + xla_compile_s:.2f} s (trace {trace_s:.2f}), "
        f"first run {first_run_s:.3f} s"
    )
    run_s = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(compiled(draws))
        run_s.append(time.perf_counter() - t)
    run_med = float(np.median(run_s))
    vol, status, nsteps = (np.asarray(x) for x in out)
    rss_after_fitcsc = peak_rss_mib()
    log(f"fitcsc: runs {[f'{r:.3f}' for r in run_s]} s -> {args.n / run_med:.0f} sims/s")

    # ---- scipy peer on the first n_scipy parameter sets
    nm = NumpyModel(model, base, schedule)
    y0 = np.asarray(fitcsc.initial_state(model, base))
    base_np = {
        f.name: np.asarray(getattr(base, f.name))
        for f in dataclasses.fields(base)
        if f.name != "pk"
    }
    per_sim = [{**base_np, **{k: v[i] for k, v in draws_np.items()}} for i in range(args.n_scipy)]
    scipy_s = []
    for _ in range(args.scipy_repeats):
        s, svol, sstatus, snfev = run_scipy(
            nm, per_sim, y0, ts_np, method="RK45", rtol=RTOL, atol=ATOL_CELLS
        )
        scipy_s.append(s)
    scipy_med = float(np.median(scipy_s))
    scipy_rate = args.n_scipy / scipy_med
    log(f"scipy: loops {[f'{x:.2f}' for x in scipy_s]} s -> {scipy_rate:.1f} sims/s")

    accuracy = {"fitcsc_vs_scipy": rel_err_stats(vol[: args.n_scipy], svol)}
    reference = None
    if not args.no_reference:
        ref_s, rvol, rstatus, rnfev = run_scipy(
            nm, per_sim, y0, ts_np, method="DOP853", rtol=REF_RTOL, atol=REF_ATOL
        )
        accuracy["fitcsc_vs_reference"] = rel_err_stats(vol[: args.n_scipy], rvol)
        accuracy["scipy_vs_reference"] = rel_err_stats(svol, rvol)
        reference = {
            "method": "scipy solve_ivp DOP853, piecewise",
            "rtol": REF_RTOL,
            "atol_cells": REF_ATOL,
            "n_failed": int((rstatus != 0).sum()),
            "wall_s": ref_s,
        }
    log("accuracy:", json.dumps(accuracy))

    sims_per_s = args.n / run_med
    result = {
        "benchmark": "simulate",
        "description": "N parameter sets under one regimen: one jit(vmap(fitcsc.simulate)) "
        "call vs a scipy solve_ivp loop",
        "quick": bool(args.quick),
        "n_sims": args.n,
        "chunk": args.chunk or None,
        "sims_per_s": sims_per_s,
        "run_s_median": run_med,
        "run_s_all": run_s,
        "repeats": args.repeats,
        "compile_s": trace_s + xla_compile_s,
        "trace_lower_s": trace_s,
        "xla_compile_s": xla_compile_s,
        "first_run_s": first_run_s,
        "first_call_s": trace_s + xla_compile_s + first_run_s,
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "n_failed": int((status != 0).sum()),
        "status_counts": {
            fitcsc.Status(int(c)).name: int((status == c).sum()) for c in np.unique(status)
        },
        "solver_steps": {
            "what": "accepted + rejected steps per simulation; under vmap the batch runs "
            "in lockstep until its slowest member finishes",
            "median": float(np.median(nsteps)),
            "max": int(nsteps.max()),
            "min": int(nsteps.min()),
            "lockstep_efficiency": float(nsteps.mean() / nsteps.max()),
        },
        "scipy_n": args.n_scipy,
        "scipy_sims_per_s": scipy_rate,
        "scipy_s_median": scipy_med,
        "scipy_s_all": scipy_s,
        "scipy_n_failed": int((sstatus != 0).sum()),
        "scipy_nfev_median": float(np.median(snfev)),
        "scipy_method": "solve_ivp RK45 (Dormand-Prince 5(4)), NumPy vector field, "
        "integrated piecewise between dose discontinuities, t_eval = ts",
        "fitcsc_method": "diffrax Tsit5 5(4), PIDController with jump_ts at dose "
        "discontinuities, SaveAt(ts)",
        "ratio_vs_scipy": sims_per_s / scipy_rate,
        "accuracy": accuracy,
        "reference": reference,
        "device": device_info(),
        "precision": precision,
        "load_avg_1_5_15_min": {"start": load_start, "end": list(os.getloadavg())},
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_mib_after_fitcsc": rss_after_fitcsc,
        "versions": versions(),
        "model": {f.name: getattr(model, f.name) for f in dataclasses.fields(model)},
        "state_names": list(model.state_names),
        "regimen": {
            "name": REGIMEN.name,
            "lines": [dataclasses.asdict(ln) for ln in REGIMEN.lines],
            "species": model.species,
            "events": [list(e) for e in REGIMEN.events(model.species)],
        },
        "params": {
            "base": "fitcsc.default_params(model)",
            "varied": [
                {
                    "name": n,
                    "distribution": "lognormal" if h == "log" else "logit-normal",
                    "sigma": s,
                    "median": np.asarray(getattr(base, n)).tolist(),
                }
                for n, h, s in VARIED
            ],
            "seed": args.seed,
        },
        "ts_day": ts_np.tolist(),
        "tolerances": {
            "rtol": RTOL,
            "atol_cells": ATOL_CELLS,
            "max_steps": MAX_STEPS,
            "policy": "per simulation, same for fitcsc and scipy: rtol on every "
            "state, atol in cells on every state, RMS error norm",
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(args.out, result)
    log(
        f"sims/s {sims_per_s:.0f} (scipy {scipy_rate:.1f}, ratio {result['ratio_vs_scipy']:.1f}"
        f"), compile {result['compile_s']:.2f} s, failed {result['n_failed']} -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
