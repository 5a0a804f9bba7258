"""Benchmark: multi-start MAP fits of many tumour growth curves, fitcsc vs a scipy peer.

Fits the same ``--n`` real curves (default: all 849 mice of the PDXE breast set,
``data_dir()/pdxe_brca/pdxe_brca_tumor_volume.csv``) with

- fitcsc: `fitcsc.fit_map` (Levenberg–Marquardt, optimistix, forward-mode ODE
  sensitivities) on a `fitcsc.csc_predictor`, vmapped over curves and starts, called
  on equal-size chunks of ``--chunk`` curves (one compile). Compile is timed apart.
- the peer: a Python loop of `scipy.optimize.least_squares` (MINPACK ``lm``; ``trf``
  for curves with fewer observations than parameters) over curves and starts, on the
  same residuals computed by an independent NumPy model integrated by
  `scipy.integrate.solve_ivp` (RK45) together with its forward sensitivity equations
  (the analytic Jacobian), from the same start vectors, with the same tolerances.
  When the peer is too slow for all curves it runs on a fixed random subset
  (``--n-peer``) and the speed ratio is taken in curves per second.

The model of this increment is growth only (no drug term): ``ModelConfig(crowding=
"logistic")``, free ``csc_division_rate``, ``self_renewal`` (in (0.5, 1)),
``bulk_division_rate`` and the per-curve ``initial_volume_mm3``; observation model:
log-normal with fixed sigma, zeros left-censored (M3). Both fitters minimise
``0.5 * sum(r**2)`` of `fitcsc.residuals`, which is the -log-likelihood up to a
constant of the data.

Also measured: the lockstep cost of one hard member in a vmapped batch (DESIGN §5) and
three mitigations (a lower ODE step cap, retrying failures in a small batch, bucketing
members by their screened ODE cost). ``--scaling`` instead fits synthetic curves
(known parameters, fixed seed) for N = 10 ... 10,000 in chunks, each N in its own
process, and writes time per curve and peak memory per N.

Usage (from the repository root)::

    python benchmarks/batch_fit.py                # -> benchmarks/results/batch_fit.json
    python benchmarks/batch_fit.py --quick        # smoke run (24 curves), temp dir
    python benchmarks/batch_fit.py --n 200 --n-peer 48 --out /tmp/bf.json
    python benchmarks/batch_fit.py --scaling      # -> results/batch_fit_scaling.json

Results are JSON (written atomically); see benchmarks/README.md for the fields.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    REPO,
    RESULTS,
    command_line,
    device_info,
    fitcsc,
    jax,
    jnp,
    load_avg,
    log,
    peak_rss_mib,
    precision,
    timed,
    timestamp,
    versions,
    write_json_atomic,
)
from scipy.integrate import RK45
from scipy.optimize import least_squares
from scipy.special import expit, log_ndtr

DEFAULT_OUT = RESULTS / "batch_fit.json"
DEFAULT_SCALING_OUT = RESULTS / "batch_fit_scaling.json"
PACKAGES = ("jax", "jaxlib", "diffrax", "equinox", "optimistix", "numpy", "scipy")

# ---------------------------------------------------------------- the workload

MODEL = fitcsc.ModelConfig(crowding="logistic")
FIXED = {  # everything not listed keeps fitcsc.default_params (unused by this model)
    "csc_death_rate": 0.0,  # delta_S [1/day]
    "bulk_death_rate": 0.1,  # delta_D [1/day]: the bulk can shrink when v_D < 0.1
    "carrying_capacity_cells": 1e10,  # K [cells] = 10,000 mm3 (largest volume: 2,728)
    "initial_csc_fraction": 0.05,  # S/N at the first observation [-]
}
REFERENCE = fitcsc.default_params(MODEL, **FIXED)  # free ones: v_S 0.5, p 0.6, v_D 0.25
FREE = {
    "csc_division_rate": fitcsc.Positive(),  # v_S [1/day]
    "self_renewal": fitcsc.Interval(0.5, 1.0),  # p [-]
    "bulk_division_rate": fitcsc.Positive(),  # v_D [1/day]
    "initial_volume_mm3": fitcsc.Positive(),  # V0 [mm3], per curve, starts at obs 1
}
SPEC = fitcsc.ParamSpec(FREE, REFERENCE)
N_Z = len(FREE)
SIGMA = 0.2  # SD of the log-volume error, fixed [-]
DETECTION_LIMIT_MM3 = 1.0  # volumes below it (the zeros) are left-censored (M3)
ODE_RTOL, ODE_ATOL_CELLS, ODE_MAX_STEPS = 1e-8, 1e-6, 512  # csc_predictor defaults
LM_RTOL = LM_ATOL = 1e-8  # fit_map defaults; scipy: ftol = xtol = gtol = 1e-8
LM_MAX_STEPS = 200  # fit_map's default for "lm"; scipy: max_nfev = 200
NUM_STARTS, START_SCALE, START_SEED = 4, 1.0, 0
PENALTY = 1e6  # residual of a failed prediction, as in fitcsc._fit_solve
SEED = 20240601  # curve subsets and synthetic data
ABSURD_CSC_RATE = 1000.0  # v_S [1/day] of the lockstep experiment's hard member
DATA_FILE = ("pdxe_brca", "pdxe_brca_tumor_volume.csv")


def predictor(max_steps: int = ODE_MAX_STEPS):
    return fitcsc.csc_predictor(
        MODEL, SPEC, rtol=ODE_RTOL, atol=ODE_ATOL_CELLS, max_steps=max_steps
    )


def fit(pred, batch, z_ref, num_starts: int, *, sigma: float = SIGMA):
    """The fitcsc call being timed: every curve of ``batch``, ``num_starts`` starts."""
    return fitcsc.fit_map(
        pred,
        batch,
        num_starts=num_starts,
        z_init=z_ref,
        start_scale=START_SCALE,
        sigma=sigma,
        rtol=LM_RTOL,
        atol=LM_ATOL,
        max_steps=LM_MAX_STEPS,
    )


# ---------------------------------------------------------------- data and starts


def load_pdxe(path: Path, n: int | None, seed: int):
    """``n`` curves of the file (all, or a fixed random subset in file order; padded as
    the full file, so shapes never depend on ``n``): ``(batch, indices, n_in_file)``."""
    table = fitcsc.read_tidy_csv(path)
    full = fitcsc.make_batch(table, detection_limit_mm3=DETECTION_LIMIT_MM3)
    if n is None or n >= full.n_subjects:
        return full, np.arange(full.n_subjects), full.n_subjects
    idx = np.sort(np.random.default_rng(seed).choice(full.n_subjects, n, replace=False))
    return full.subset(idx), idx, full.n_subjects


def reference_z(batch) -> np.ndarray:
    """Start 0 of every curve, ``(n, N_Z)``: the reference parameters with V0 at the
    first observation (the detection limit if it is censored), as `csc_predictor`."""
    ref = [
        np.log(float(REFERENCE.csc_division_rate)),
        float(np.log(0.2) - np.log1p(-0.2)),  # p = 0.6 -> (p - 0.5) / 0.5 = 0.2
        np.log(float(REFERENCE.bulk_division_rate)),
    ]
    assert abs(0.5 + 0.5 * 0.2 - float(REFERENCE.self_renewal)) < 1e-15
    v0 = np.asarray(batch.volume_mm3)[:, 0]
    return np.column_stack([np.broadcast_to(ref, (v0.size, 3)), np.log(v0)])


def sobol_unit(num_starts: int, n_z: int, seed: int) -> np.ndarray:
    """fit_map's start rule: row 0 the centre, then scrambled Sobol points (seed)."""
    from scipy.stats import qmc

    out = np.full((num_starts, n_z), 0.5)
    if num_starts > 1:
        sobol = qmc.Sobol(n_z, scramble=True, rng=seed)
        m = max(0, math.ceil(math.log2(num_starts - 1)))
        out[1:] = sobol.random_base2(m)[: num_starts - 1]
    return out


def start_vectors(z_ref: np.ndarray, num_starts: int) -> np.ndarray:
    """``(n, num_starts, N_Z)``: ``z_ref + START_SCALE * (2u - 1)``, as in fit_map."""
    u = sobol_unit(num_starts, N_Z, START_SEED)
    return z_ref[:, None, :] + START_SCALE * (2.0 * u - 1.0)[None]


def check_starts(batch, z_ref, num_starts: int) -> dict:
    """The starts fit_map uses equal ours: its reference start (`init_z`) and, through
    a predictor with zero gradient (LM stops where it starts), every start vector."""
    k = min(batch.n_subjects, 8)
    small = batch.subset(np.arange(k))
    data = fitcsc.subject_data(small)
    init = np.asarray(jax.vmap(predictor().init_z)(data))

    def flat(z, s):  # log predictions = observations: zero residual, zero gradient
        return jnp.log(s.volume_mm3) + 0.0 * jnp.sum(z), jnp.asarray(0)

    res = fitcsc.fit_map(
        fitcsc.FunctionPredictor(flat, N_Z),
        small,
        num_starts=num_starts,
        z_init=z_ref[:k],
        start_scale=START_SCALE,
        sigma=SIGMA,
    )
    from fitcsc._fit import sobol_unit as fitcsc_sobol_unit  # the rule we copy

    out = {
        "max_abs_diff_reference_start_vs_predictor_init_z": float(np.abs(init - z_ref[:k]).max()),
        "max_abs_diff_starts_vs_fit_map_all_z_zero_gradient": float(
            np.abs(np.asarray(res.all_z) - start_vectors(z_ref[:k], num_starts)).max()
        ),
        "max_abs_diff_sobol_unit_vs_fitcsc": float(
            np.abs(
                sobol_unit(num_starts, N_Z, START_SEED)
                - fitcsc_sobol_unit(num_starts, N_Z, START_SEED)
            ).max()
        ),
        "n_curves_checked": k,
    }
    if max(v for key, v in out.items() if key.startswith("max")) > 1e-12:
        raise RuntimeError(f"start vectors differ from fit_map's: {out}")
    return out


def curves_np(batch) -> list[dict]:
    """Real observations of each curve as NumPy (no padding), for the peer."""
    day, vol = np.asarray(batch.day), np.asarray(batch.volume_mm3)
    mask, cens = np.asarray(batch.mask), np.asarray(batch.censored)
    out = []
    for i in range(batch.n_subjects):
        m = mask[i]
        out.append(
            {
                "day": day[i, m],
                "log_obs": np.log(vol[i, m]),
                "censored": cens[i, m],
                "t0": float(day[i, 0]),
            }
        )
    return out


def objective_constant(curve: dict) -> float:
    """-log-likelihood minus 0.5 sum(r**2): the uncensored terms' constants."""
    obs = ~curve["censored"]
    return float(np.sum(math.log(SIGMA) + 0.5 * math.log(2 * math.pi) + curve["log_obs"][obs]))


# ---------------------------------------------------------------- the scipy peer


class PeerModel:
    """Independent NumPy model: logistic SD model, its forward sensitivities in ``z``
    (2 states + 2 x 4 sensitivities), scipy RK45 with fitcsc's rtol/atol and step cap."""

    def __init__(self, reference, model):
        assert model.crowding == "logistic" and model.state_names == ("S", "D")
        assert not model.drugs
        self.d_S = float(reference.csc_death_rate)
        self.d_D = float(reference.bulk_death_rate)
        self.K = float(reference.carrying_capacity_cells)
        self.f_csc = float(reference.initial_csc_fraction)
        self.c = float(model.cells_per_mm3)
        self.n_rhs = 0

    def rhs(self, v_S, p, v_D, dp_dz):
        d_S, d_D, K = self.d_S, self.d_D, self.K
        a, b = v_S * (2.0 * p - 1.0), 2.0 * v_S * (1.0 - p)

        def f(t, y):
            self.n_rhs += 1
            S, D = y[0], y[1]
            g = 1.0 - (S + D) / K
            sS, sD = y[2:6], y[6:10]
            # d(dS/dt)/dy and d(dD/dt)/dy
            j_SS, j_SD = a * (g - S / K) - d_S, -a * S / K
            j_DS = b * (g - S / K) - v_D * D / K
            j_DD = -b * S / K + v_D * (g - D / K) - d_D
            Sg = S * g
            # explicit dependence on z = (log v_S, logit-ish p, log v_D, log V0)
            pS = np.array([a * Sg, 2.0 * v_S * Sg * dp_dz, 0.0, 0.0])
            pD = np.array([b * Sg, -2.0 * v_S * Sg * dp_dz, v_D * g * D, 0.0])
            out = np.empty(10)
            out[0] = a * Sg - d_S * S
            out[1] = b * Sg + (v_D * g - d_D) * D
            out[2:6] = j_SS * sS + j_SD * sD + pS
            out[6:10] = j_DS * sS + j_DD * sD + pD
            return out

        return f

    def log_volume(self, z, day, t0):
        """log V [log mm3] at ``day`` and its Jacobian in ``z``; ``ok`` False when the
        solve failed or a volume is not positive."""
        v_S, v_D, V0 = (float(x) for x in np.exp(z[[0, 2, 3]]))  # inf, not an error
        s = expit(z[1])
        p, dp_dz = 0.5 + 0.5 * s, 0.5 * s * (1.0 - s)
        N0 = V0 * self.c
        y0 = np.zeros(10)
        y0[0], y0[1] = self.f_csc * N0, (1.0 - self.f_csc) * N0
        y0[5], y0[9] = y0[0], y0[1]  # d y0 / d log V0 = y0
        if not (np.all(np.isfinite(y0)) and math.isfinite(v_S * v_D * dp_dz)):
            return None, None, False
        ts, inv = np.unique(day, return_inverse=True)
        ys = rk45_capped(self.rhs(v_S, p, v_D, dp_dz), t0, y0, ts)
        if ys is None:
            return None, None, False
        N = ys[:, 0] + ys[:, 1]
        if not np.all(np.isfinite(ys)) or np.any(N <= 0):
            return None, None, False
        dN = ys[:, 2:6] + ys[:, 6:10]
        return (np.log(N / self.c))[inv], (dN / N[:, None])[inv], True


# Error control on the two cell states only, as diffrax's ForwardMode (its step sizes
# follow the primal solution; the sensitivities ride along on the same steps). scipy's
# RMS norm divides by the number of components (10, not 2): dividing rtol and the
# states' atol by sqrt(5) makes it the 2-state norm exactly; the sensitivities get an
# atol of 1e300, so they never limit a step.
_NORM = math.sqrt(10 / 2)
PEER_RTOL = ODE_RTOL / _NORM
PEER_ATOL = np.array([ODE_ATOL_CELLS / _NORM] * 2 + [1e300] * 8)


def rk45_capped(fun, t0: float, y0: np.ndarray, ts: np.ndarray, max_steps=ODE_MAX_STEPS):
    """`scipy.integrate.RK45` from ``t0`` to ``ts[-1]``, saved at ``ts`` (dense
    output), failing (None) after ``max_steps`` step attempts as diffrax does."""
    out = np.empty((ts.size, y0.size))
    k = int(np.searchsorted(ts, t0, side="right"))
    out[:k] = y0
    if k == ts.size:
        return out
    solver = RK45(fun, t0, y0, ts[-1], rtol=PEER_RTOL, atol=PEER_ATOL)
    nfev0 = solver.nfev  # f(t0) and the initial-step probe; then 6 per attempt
    while solver.status == "running":
        solver.step()
        if solver.status == "failed":
            return None
        j = int(np.searchsorted(ts, solver.t, side="right"))
        if j > k:
            out[k:j] = solver.dense_output()(ts[k:j]).T
            k = j
        if solver.status == "running" and (solver.nfev - nfev0) // 6 >= max_steps:
            return None
    return out


def peer_residuals(model: PeerModel, z, curve):
    """Residuals of `fitcsc.residuals` and their Jacobian; a failed prediction gives
    `PENALTY` and a zero Jacobian, as in fitcsc."""
    with np.errstate(all="ignore"):  # absurd trial points overflow: a failure, as in fitcsc
        try:
            return _peer_residuals(model, z, curve)
        except (ArithmeticError, ValueError):
            m = curve["day"].size
            return np.full(m, PENALTY), np.zeros((m, N_Z)), False


def _peer_residuals(model, z, curve):
    m = curve["day"].size
    lp, dlp, ok = model.log_volume(z, curve["day"], curve["t0"])
    if not ok:
        return np.full(m, PENALTY), np.zeros((m, N_Z)), False
    zc = (curve["log_obs"] - lp) / SIGMA
    r, w = zc.copy(), np.full(m, -1.0 / SIGMA)
    cens = curve["censored"]
    if cens.any():
        lphi = log_ndtr(zc[cens])
        q = -2.0 * lphi
        big = q > 1e-250
        rc = np.where(big, np.sqrt(np.where(big, q, 1.0)), 0.0)
        ratio = np.exp(-0.5 * zc[cens] ** 2 - 0.5 * math.log(2 * math.pi) - lphi)
        r[cens] = rc
        w[cens] = np.where(big, ratio / (SIGMA * np.where(big, rc, 1.0)), 0.0)
    if not np.all(np.isfinite(r)):
        return np.full(m, PENALTY), np.zeros((m, N_Z)), False
    return r, w[:, None] * dlp, True


def peer_fit_curve(model: PeerModel, curve: dict, starts: np.ndarray) -> dict:
    """least_squares from every start; the best start by objective among those that
    did not fail. Each objective evaluation is one augmented ODE solve; the Jacobian at
    the last evaluated point is reused, not recomputed."""
    m = curve["day"].size
    method = "lm" if m >= N_Z else "trf"  # MINPACK lm needs m >= n
    rows = []
    for z0 in starts:
        cache = {}
        solves = 0

        def fun(z, cache=cache):
            nonlocal solves
            solves += 1
            r, J, _ = peer_residuals(model, z, curve)
            cache["z"], cache["J"] = z.copy(), J
            return r

        def jac(z, *_, cache=cache):
            if "z" not in cache or not np.array_equal(cache["z"], z):
                fun(z)
            return cache["J"]

        res = least_squares(
            fun,
            z0,
            jac=jac,
            method=method,
            ftol=LM_RTOL,
            xtol=LM_RTOL,
            gtol=LM_RTOL,
            max_nfev=LM_MAX_STEPS,
        )
        failed = not np.all(np.abs(res.fun) < PENALTY) or not np.isfinite(res.cost)
        rows.append(
            {
                "z": res.x,
                "objective": float(res.cost),
                "status": int(res.status),
                "failed": bool(failed),
                "nfev": int(res.nfev),
                "njev": int(res.njev or 0),
                "ode_solves": solves,
            }
        )
    usable = [k for k, r in enumerate(rows) if not r["failed"]] or list(range(len(rows)))
    best = min(usable, key=lambda k: rows[k]["objective"])
    return {"best": best, "starts": rows, "method": method}


PEER_STATUS = {
    -1: "improper_input",
    0: "max_nfev",
    1: "gtol",
    2: "ftol",
    3: "xtol",
    4: "ftol_and_xtol",
}


# ---------------------------------------------------------------- the fitcsc side

FIELDS = (
    "z",
    "loss",
    "status",
    "n_steps",
    "best_start",
    "all_z",
    "all_losses",
    "all_status",
    "all_n_steps",
    "log_volume_pred",
)


def equal_chunks(n: int, chunk: int) -> tuple[int, int]:
    """``(n_chunks, size)``: the fewest chunks of at most ``chunk`` curves, all of one
    size (one compile); the last one is padded with repeats of the first curves."""
    n_chunks = math.ceil(n / max(1, min(chunk, n)))
    return n_chunks, math.ceil(n / n_chunks)


def run_fitcsc(pred, batch, z_ref, *, chunk: int, num_starts: int, sigma=SIGMA) -> dict:
    """fit_map over equal-size chunks: a first call on chunk 0 (compile + run), then
    every chunk timed. **Returns** the per-curve arrays (FIELDS) and the timings."""
    n = batch.n_subjects
    n_chunks, size = equal_chunks(n, chunk)
    order = np.arange(n_chunks * size) % n
    parts = [order[k * size : (k + 1) * size] for k in range(n_chunks)]
    parts = [(batch.subset(ix), z_ref[ix]) for ix in parts]  # host work, not timed
    _, first_s, compile_s = timed(fit, pred, *parts[0], num_starts, sigma=sigma)
    run_s, outs, recompile_s = [], [], 0.0
    for k, (b, z) in enumerate(parts):
        res, wall, comp = timed(fit, pred, b, z, num_starts, sigma=sigma)
        run_s.append(wall)
        recompile_s += comp
        outs.append({f: np.asarray(getattr(res, f)) for f in FIELDS})
        log(f"  chunk {k + 1}/{n_chunks}: {wall:.2f} s")
    return {
        "arrays": {f: np.concatenate([o[f] for o in outs])[:n] for f in FIELDS},
        "chunk_lm_steps_max": [int(o["all_n_steps"].max()) for o in outs],
        "chunk_lm_steps_mean": [float(o["all_n_steps"].mean()) for o in outs],
        "n_chunks": n_chunks,
        "chunk_size": size,
        "n_padding_curves": n_chunks * size - n,
        "run_s": run_s,
        "wall_s": float(sum(run_s)),
        "first_call_s": first_s,
        "compile_s": compile_s,
        "compile_s_inside_timed_calls": recompile_s,
    }


def ode_steps(batch, z: np.ndarray, max_steps: int = ODE_MAX_STEPS):
    """ODE steps and status of one forward solve per curve at ``z`` (no sensitivities),
    with the predictor's solver settings; ``(steps, status, run_s, compile_s)``."""

    @jax.jit
    @jax.vmap
    def one(z_, s):
        sol = fitcsc.simulate(
            MODEL,
            SPEC.from_z(z_),
            None,
            s.day,
            t0=s.t0_day,
            rtol=ODE_RTOL,
            atol=ODE_ATOL_CELLS,
            max_steps=max_steps,
        )
        return sol.num_steps, sol.status

    data, zz = fitcsc.subject_data(batch), jnp.asarray(z)
    _, _, compile_s = timed(one, zz, data)
    (steps, status), run_s, _ = timed(one, zz, data)
    return np.asarray(steps), np.asarray(status), run_s, compile_s


def counts(codes, names) -> dict:
    codes = np.asarray(codes).ravel()
    return {names(int(c)): int((codes == c).sum()) for c in np.unique(codes)}


def fit_status_name(c: int) -> str:
    return fitcsc.FitStatus(c).name


def spread(x) -> dict:
    x = np.asarray(x, float).ravel()
    return {
        "median": float(np.median(x)),
        "p90": float(np.quantile(x, 0.9)),
        "max": float(x.max()),
        "min": float(x.min()),
        "mean": float(x.mean()),
    }


def obs_objective(curve: dict, log_pred: np.ndarray) -> float:
    """0.5 sum(r**2) of `fitcsc.residuals` at log predictions (NumPy)."""
    zc = (curve["log_obs"] - log_pred) / SIGMA
    q = -2.0 * log_ndtr(zc)
    r2 = np.where(curve["censored"], np.where(q > 1e-250, q, 0.0), zc**2)
    return 0.5 * float(np.sum(r2))


# ---------------------------------------------------------------- lockstep (DESIGN §5)


def lockstep_experiment(batch, z_ref, *, size: int, cap: int, buckets: int, retry: int):
    """One hard member in a batch of ``size`` ordinary curves (one start each): its
    start ``v_S = ABSURD_CSC_RATE`` makes every ODE solve run into the step cap, and
    under vmap the whole batch waits for it at every LM iteration."""
    idx = np.arange(size) % batch.n_subjects
    b, z = batch.subset(idx), z_ref[idx]
    hard = z.copy()
    hard[0, 0] = math.log(ABSURD_CSC_RATE)
    base, capped = predictor(), predictor(cap)
    runs: dict[str, dict] = {}
    results: dict[str, object] = {}

    def go(name, pred, bb, zz):
        res, wall, comp = timed(fit, pred, bb, zz, 1)
        runs[name] = {
            "wall_s": wall,
            "compile_s": comp,
            "run_s": wall - comp,
            "n_curves": bb.n_subjects,
            "lm_steps_max": int(np.asarray(res.n_steps).max()),
            "status_counts": counts(res.status, fit_status_name),
        }
        results[name] = res
        log(f"  lockstep {name}: {wall:.2f} s (compile {comp:.2f} s)")
        return res

    go("base_ordinary_first_call", base, b, z)
    r_ord = go("base_ordinary", base, b, z)
    r_hard = go("base_hard", base, b, hard)
    steps_o, status_o, screen_o_s, _ = ode_steps(b, z)
    steps_h, status_h, screen_h_s, screen_compile = ode_steps(b, hard)
    t_ord, t_hard = runs["base_ordinary"]["run_s"], runs["base_hard"]["run_s"]

    def total(names):
        return float(sum(runs[n]["run_s"] for n in names))

    out = {
        "n_curves": size,
        "num_starts": 1,
        "hard_member": f"member 0 started at csc_division_rate = {ABSURD_CSC_RATE} /day "
        "(the others at the reference start)",
        "hard_member_start_ode": {
            "steps": int(steps_h[0]),
            "status": fitcsc.Status(int(status_h[0])).name,
        },
        "ode_steps_at_start_ordinary": spread(steps_o),
        "timing": "run_s = wall time minus JAX compile events in the call "
        "(CompileMeter); calls that compiled are marked by compile_s > 0",
        "subtraction_check": {
            "first_call_run_s": runs["base_ordinary_first_call"]["run_s"],
            "clean_run_s": t_ord,
        },
        "base": {"ordinary_s": t_ord, "hard_s": t_hard, "slowdown": t_hard / t_ord},
        "members_unchanged_by_hard_member_max_abs_loss_diff": float(
            np.abs(np.asarray(r_hard.loss)[1:] - np.asarray(r_ord.loss)[1:]).max()
        ),
    }

    # 1. a lower ODE step cap for every member
    r_cap_h = go("cap_hard", capped, b, hard)
    r_cap_o = go("cap_ordinary", capped, b, z)

    # 2. the capped fit, then its failures refitted with the default cap, small batches
    def retry_failures(tag, r_cap, zz):
        fail = np.flatnonzero(np.asarray(r_cap.status) == fitcsc.FitStatus.SOLVER_FAILURE)
        names = []
        for k in range(0, fail.size, retry):
            sel = fail[k : k + retry]
            sel = np.resize(sel, retry)  # pad to a fixed size (one compile)
            names.append(f"retry_{tag}_{k // retry}")
            go(names[-1], base, b.subset(sel), zz[sel])
        return fail, names

    fail_h, retry_h = retry_failures("hard", r_cap_h, hard)
    fail_o, retry_o = retry_failures("ordinary", r_cap_o, z)

    # 3. screen the starts (one forward solve each), sort by ODE steps, fit in buckets
    def bucketed(tag, steps, status, zz):
        key = np.where(status == 0, steps, np.iinfo(np.int32).max)
        order = np.argsort(key, kind="stable")
        per = size // buckets
        names = []
        for k in range(buckets):
            sel = order[k * per : (k + 1) * per if k < buckets - 1 else size]
            sel = np.resize(sel, per) if sel.size < per else sel
            names.append(f"bucket_{tag}_{k}")
            go(names[-1], base, b.subset(sel), zz[sel])
        return names

    # 4. screen the starts; members that fail or exceed the cap are fitted apart in
    #    small batches, the others in a batch of the usual shape (padded with repeats)
    def quarantined(tag, steps, status, zz):
        bad = np.flatnonzero((status != 0) | (steps > cap))
        good = np.setdiff1d(np.arange(size), bad)
        names = []
        if bad.size:
            sel = np.resize(good, size)
            names.append(f"quarantine_{tag}_main")
            go(names[-1], base, b.subset(sel), zz[sel])
        else:  # the main batch would be the base batch itself: reuse its time
            names.append("base_ordinary" if tag == "ordinary" else "base_hard")
        for k in range(0, bad.size, retry):
            sel = np.resize(bad[k : k + retry], retry)
            names.append(f"quarantine_{tag}_apart_{k // retry}")
            go(names[-1], base, b.subset(sel), zz[sel])
        return bad, names

    bad_h, quar_h = quarantined("hard", steps_h, status_h, hard)
    bad_o, quar_o = quarantined("ordinary", steps_o, status_o, z)
    bucket_h = bucketed("hard", steps_h, status_h, hard)
    bucket_o = bucketed("ordinary", steps_o, status_o, z)
    # control: the same bucket size in a random order (is it the order or the size?)
    perm = np.random.default_rng(SEED).permutation(size)
    rand_h = bucketed("random_hard", perm, np.zeros(size), hard)
    rand_o = bucketed("random_ordinary", perm, np.zeros(size), z)

    def changed(r_new, r_ref, sel=slice(None)):
        a, c = np.asarray(r_new.loss)[sel], np.asarray(r_ref.loss)[sel]
        return int(np.sum(~np.isclose(a, c, rtol=1e-6, atol=1e-9)))

    cap_h, cap_o = runs["cap_hard"]["run_s"], runs["cap_ordinary"]["run_s"]
    out["mitigations"] = {
        "cap": {
            "what": f"csc_predictor(max_steps={cap}) instead of {ODE_MAX_STEPS}",
            "hard_s": cap_h,
            "ordinary_s": cap_o,
            "gain_vs_base_hard": t_hard / cap_h,
            "cost_on_ordinary_batch": cap_o / t_ord,
            "ordinary_members_with_changed_loss": changed(r_cap_o, r_ord),
            "ordinary_members_failed_under_cap": int(fail_o.size),
            "hard_batch_failed_under_cap": int(fail_h.size),
        },
        "cap_then_retry": {
            "what": f"cap {cap}, then members with status SOLVER_FAILURE refitted with "
            f"max_steps={ODE_MAX_STEPS} in batches of {retry} (padded)",
            "hard_s": cap_h + total(retry_h),
            "ordinary_s": cap_o + total(retry_o),
            "gain_vs_base_hard": t_hard / (cap_h + total(retry_h)),
            "cost_on_ordinary_batch": (cap_o + total(retry_o)) / t_ord,
            "retry_batches_hard": len(retry_h),
            "retry_batches_ordinary": len(retry_o),
        },
        "screen_and_quarantine": {
            "what": f"one forward solve per member at its start; members whose solve "
            f"fails or takes more than {cap} steps are fitted apart in batches of {retry} "
            f"(padded), the others in a batch of {size} (padded with repeats)",
            "hard_s": screen_h_s + total(quar_h),
            "ordinary_s": screen_o_s + total(quar_o),
            "gain_vs_base_hard": t_hard / (screen_h_s + total(quar_h)),
            "cost_on_ordinary_batch": (screen_o_s + total(quar_o)) / t_ord,
            "n_quarantined_hard": int(bad_h.size),
            "n_quarantined_ordinary": int(bad_o.size),
            "runs_hard": quar_h,
            "runs_ordinary": quar_o,
        },
        "screen_and_bucket": {
            "what": f"one forward solve per member at its start (steps, status), members "
            f"sorted by steps (failures last) and fitted in {buckets} buckets of "
            f"{size // buckets}",
            "screen_s_hard": screen_h_s,
            "screen_s_ordinary": screen_o_s,
            "screen_compile_s": screen_compile,
            "hard_s": screen_h_s + total(bucket_h),
            "ordinary_s": screen_o_s + total(bucket_o),
            "gain_vs_base_hard": t_hard / (screen_h_s + total(bucket_h)),
            "cost_on_ordinary_batch": (screen_o_s + total(bucket_o)) / t_ord,
            "bucket_s_hard": [runs[n]["run_s"] for n in bucket_h],
            "bucket_s_ordinary": [runs[n]["run_s"] for n in bucket_o],
        },
        "control_random_buckets": {
            "what": "as screen_and_bucket, members in a fixed random order (no screen): "
            "separates the gain of sorting by cost from that of a smaller batch",
            "hard_s": total(rand_h),
            "ordinary_s": total(rand_o),
            "gain_vs_base_hard": t_hard / total(rand_h),
            "cost_on_ordinary_batch": total(rand_o) / t_ord,
        },
    }
    out["runs"] = runs
    return out


# ---------------------------------------------------------------- the physical floor


def _flops(fn, *args) -> float:
    ca = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0]
    return float(ca.get("flops", float("nan")))


def flop_counts() -> dict:
    """XLA's flop counts (cost analysis of the compiled function) of the vector field
    and of one Tsit5 step, primal and with forward sensitivities in all of ``z``."""
    import diffrax

    z = SPEC.to_z(REFERENCE)
    conc = jnp.zeros((0,))

    def step(z_):
        p = SPEC.from_z(z_)
        term = diffrax.ODETerm(lambda t, y, a: fitcsc.vector_field(MODEL, t, y, p, conc))
        solver = diffrax.Tsit5(scan_kind="lax")  # as ForwardMode sets it
        y0 = fitcsc.initial_state(MODEL, p)
        st = solver.init(term, 0.0, 0.1, y0, None)
        y1, err, _, _, _ = solver.step(term, 0.0, 0.1, y0, None, st, made_jump=False)
        return y1, err

    y0 = fitcsc.initial_state(MODEL, REFERENCE)
    return {
        "vector_field": _flops(lambda y: fitcsc.vector_field(MODEL, 0.0, y, REFERENCE, conc), y0),
        "tsit5_step": _flops(step, z),
        "tsit5_step_with_sensitivities": _flops(jax.jacfwd(step), z),
        "source": "jax.jit(f).lower().compile().cost_analysis()['flops'] (XLA's count); "
        "a step: 6 new vector-field evaluations (7 stages, FSAL), the RK sums and the "
        "error estimate, not the controller or the output interpolation",
    }


# ---------------------------------------------------------------- synthetic curves

SYN_DAYS = np.array([0.0, 3, 7, 10, 14, 17, 21, 24, 28, 31, 35, 38, 42])  # twice a week
SYN_TRUTH = {  # name: (median, log-scale SD); self_renewal: logit of (p - 0.5) / 0.5
    "csc_division_rate": (0.3, 0.3),
    "self_renewal": (0.7, 0.5),
    "bulk_division_rate": (0.15, 0.3),
    "initial_volume_mm3": (150.0, 0.3),
}
SYN_NOISE_SD = 0.1  # log-normal observation noise; the fits use sigma = this


def synthetic_batch(n: int, seed: int):
    """``n`` curves simulated from the model (truth drawn around SYN_TRUTH, fixed seed,
    tight tolerances), with log-normal noise. **Returns** ``(batch, true z)``."""
    from fitcsc._data import TidyTable

    rng = np.random.default_rng(seed)
    z = np.empty((n, N_Z))
    for j, (name, (med, sd)) in enumerate(SYN_TRUTH.items()):
        if name == "self_renewal":
            u = (med - 0.5) / 0.5
            z[:, j] = np.log(u / (1 - u)) + sd * rng.standard_normal(n)
        else:
            z[:, j] = np.log(med) + sd * rng.standard_normal(n)
    ts = jnp.asarray(SYN_DAYS)

    @jax.jit
    @jax.vmap
    def volumes(z_):
        sol = fitcsc.simulate(MODEL, SPEC.from_z(z_), None, ts, rtol=1e-10, atol=1e-8)
        return sol.volume_mm3, sol.status

    vol, status = (np.asarray(x) for x in volumes(jnp.asarray(z)))
    assert np.all(status == 0), "synthetic truth failed to simulate"
    vol = vol * np.exp(SYN_NOISE_SD * rng.standard_normal(vol.shape))
    m = SYN_DAYS.size
    subj = np.repeat(np.array([f"syn{i:06d}" for i in range(n)]), m)
    table = TidyTable(
        np.full(n * m, "synthetic"),
        np.full(n * m, "growth"),
        subj,
        np.tile(SYN_DAYS, n),
        vol.ravel(),
    )
    return fitcsc.make_batch(table, detection_limit_mm3=DETECTION_LIMIT_MM3), z


def scaling_one(n: int, chunk: int, num_starts: int, seed: int) -> dict:
    """Fit ``n`` synthetic curves in equal chunks; run in a fresh process per ``n`` so
    that its peak RSS is its own."""
    rss0 = peak_rss_mib()
    batch, z_true = synthetic_batch(n, seed)
    rss_data = peak_rss_mib()
    z_ref = reference_z(batch)
    load0 = load_avg()
    r = run_fitcsc(
        predictor(), batch, z_ref, chunk=chunk, num_starts=num_starts, sigma=SYN_NOISE_SD
    )
    a = r.pop("arrays")
    err = np.abs(a["z"] - z_true)
    return {
        "n_curves": n,
        "num_starts": num_starts,
        **{k: v for k, v in r.items() if k not in ("run_s",)},
        "run_s_per_chunk": spread(r["run_s"]),
        "s_per_curve": r["wall_s"] / n,
        "curves_per_s": n / r["wall_s"],
        "status_counts": counts(a["status"], fit_status_name),
        "lm_steps_best_start": spread(a["n_steps"]),
        "recovery_median_abs_error_in_z": dict(
            zip(FREE, np.median(err, axis=0).tolist(), strict=True)
        ),
        "peak_rss_mib_after_import": rss0,
        "peak_rss_mib_after_data": rss_data,
        "peak_rss_mib": peak_rss_mib(),
        "load_avg_1_5_15_min": {"start": load0, "end": load_avg()},
    }


def run_scaling(args) -> dict:
    rows, skipped = [], []
    for n in args.scaling_sizes:
        if rows:  # predicted from the last size's time per curve (compile excluded)
            last = rows[-1]
            predicted = last["s_per_curve"] * n + last["first_call_s"]
            if predicted > args.scaling_budget_s:
                skipped.append(
                    {
                        "n_curves": n,
                        "reason": f"predicted {predicted:.0f} s from N={last['n_curves']} "
                        f"({last['s_per_curve']:.4f} s/curve) exceeds the budget of "
                        f"{args.scaling_budget_s:.0f} s on this machine; memory is not the "
                        f"limit (chunks of {args.scaling_chunk} curves bound it)",
                    }
                )
                log(f"scaling: skip N={n}: {skipped[-1]['reason']}")
                continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "one.json"
            cmd = [
                sys.executable,
                __file__,
                "--scaling-one",
                str(n),
                "--out",
                str(out),
                "--scaling-chunk",
                str(args.scaling_chunk),
                "--scaling-starts",
                str(args.scaling_starts),
                "--seed",
                str(args.seed),
            ]
            log(f"scaling: N={n} ...")
            t = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO)
            row = json.loads(out.read_text())
            row["process_wall_s"] = time.perf_counter() - t
        log(
            f"scaling: N={n}: {row['curves_per_s']:.1f} curves/s, "
            f"peak RSS {row['peak_rss_mib']:.0f} MiB"
        )
        rows.append(row)
    return {"sizes": rows, "skipped": skipped}


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=None, help="curves (default: all in the file)")
    ap.add_argument(
        "--n-peer",
        type=int,
        default=96,
        help="curves the scipy peer fits (a fixed random subset of the N)",
    )
    ap.add_argument("--num-starts", type=int, default=NUM_STARTS)
    ap.add_argument("--chunk", type=int, default=64, help="curves per fit_map call")
    ap.add_argument("--lockstep-size", type=int, default=256)
    ap.add_argument(
        "--lockstep-cap", type=int, default=128, help="the ODE step cap of the 'cap' mitigation"
    )
    ap.add_argument("--lockstep-buckets", type=int, default=4)
    ap.add_argument("--retry-size", type=int, default=8)
    ap.add_argument("--no-lockstep", action="store_true")
    ap.add_argument("--data-dir", default=None, help="default: fitcsc.data_dir()")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="run the synthetic scaling curve instead (-> batch_fit_scaling.json)",
    )
    ap.add_argument("--scaling-sizes", default="10,100,1000,10000,100000")
    ap.add_argument("--scaling-chunk", type=int, default=1000)
    ap.add_argument("--scaling-starts", type=int, default=1)
    ap.add_argument(
        "--scaling-budget-s",
        type=float,
        default=900.0,
        help="skip a size whose predicted fit time exceeds this",
    )
    ap.add_argument("--scaling-one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (24 curves; scaling: N = 10, 100); temp dir unless --out",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.scaling_sizes = [int(x) for x in str(args.scaling_sizes).split(",")]
    if args.quick:
        args.n, args.n_peer, args.chunk = args.n or 24, min(args.n_peer, 24), 24
        args.lockstep_size, args.lockstep_buckets, args.retry_size = 32, 2, 4
        args.scaling_sizes = [10, 100]
        if args.out is None:
            name = "scaling" if args.scaling else "fit"
            args.out = Path(tempfile.gettempdir()) / f"fitcsc-bench-batch-{name}-quick.json"
    if args.out is None:
        args.out = DEFAULT_SCALING_OUT if args.scaling else DEFAULT_OUT
    if min(args.n_peer, args.num_starts, args.chunk, args.lockstep_size) < 1:
        ap.error("--n-peer, --num-starts, --chunk and --lockstep-size must be >= 1")
    return args


def environment(load_start) -> dict:
    return {
        "device": device_info(),
        "precision": precision(),
        "versions": versions(PACKAGES),
        "load_avg_1_5_15_min": {"start": load_start, "end": load_avg()},
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "command": command_line(),
        "timestamp": timestamp(),
    }


def workload() -> dict:
    return {
        "model": "growth only, no drug term (the arm-effect model is a later increment): "
        "fitcsc.ModelConfig(crowding='logistic'), states S, D",
        "free": {k: repr(v) for k, v in FREE.items()},
        "fixed": FIXED,
        "reference_start": {
            "csc_division_rate": float(REFERENCE.csc_division_rate),
            "self_renewal": float(REFERENCE.self_renewal),
            "bulk_division_rate": float(REFERENCE.bulk_division_rate),
            "initial_volume_mm3": "the curve's first observation",
        },
        "cells_per_mm3": MODEL.cells_per_mm3,
        "observation_model": f"log-normal, sigma = {SIGMA} fixed; volumes below "
        f"{DETECTION_LIMIT_MM3} mm3 (the zeros) left-censored (M3); both fitters minimise "
        "0.5 sum(r^2) of fitcsc.residuals (= -log-likelihood - a data constant)",
        "starts": f"num_starts Sobol starts as fit_map builds them: z_ref + {START_SCALE} "
        f"(2u - 1), u = scrambled Sobol (seed {START_SEED}) with row 0 = 0.5; z_ref = the "
        "reference start; passed to fit_map as z_init/start_scale, to scipy as x0",
    }


def tolerances() -> dict:
    return {
        "ode": {
            "solver_fitcsc": "diffrax Tsit5, PIDController, ForwardMode",
            "solver_peer": "scipy.integrate.RK45 (the solve_ivp RK45 stepper) with "
            "dense output at the observation days, own stepping loop for the step cap",
            "rtol": ODE_RTOL,
            "atol_cells": ODE_ATOL_CELLS,
            "max_steps": ODE_MAX_STEPS,
            "error_norm": "RMS over the 2 cell states only (sensitivities ride along on "
            "the primal's steps in both)",
        },
        "optimiser": {
            "fitcsc": f"optimistix LevenbergMarquardt rtol = atol = {LM_RTOL}, "
            f"max_steps = {LM_MAX_STEPS} (stops when both the step in z and the "
            "change in the objective are below atol + rtol |.|)",
            "peer": f"scipy least_squares ftol = xtol = gtol = {LM_RTOL}, "
            f"max_nfev = {LM_MAX_STEPS}, x_scale default (lm: 'jac'); stops when "
            "any of the three tests passes",
            "note": "the stopping rules differ (both tests vs any test): "
            "compare ratio_per_evaluation as well as ratio_vs_scipy",
        },
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.scaling_one is not None:
        row = scaling_one(args.scaling_one, args.scaling_chunk, args.scaling_starts, args.seed)
        write_json_atomic(args.out, row)
        return row
    load_start = load_avg()
    if args.scaling:
        return main_scaling(args, load_start)
    return main_fit(args, load_start)


def check_residuals(batch, curves, pred, z_ref, num_starts, candidates) -> dict:
    """The peer's residuals and Jacobian equal fitcsc's (`fitcsc.residuals` of the
    predictor's output, `jax.jacfwd`) at the same ``z``, on a few curves."""
    cens = [i for i in candidates if curves[i]["censored"].any()]
    if not cens:
        cens = [i for i in range(len(curves)) if curves[i]["censored"].any()]
    pick = list(dict.fromkeys(list(candidates[:4]) + cens[:2]))

    @jax.jit
    def r_fitcsc(z, s):
        def r(z_):
            lp, _ = pred(z_, s)
            return fitcsc.residuals(jnp.exp(lp), s.volume_mm3, s.mask, s.censored, SIGMA)

        return r(z), jax.jacfwd(r)(z)

    pm = PeerModel(REFERENCE, MODEL)
    worst_r = worst_j = 0.0
    n_points = 0
    for i in pick:
        s = fitcsc.subject_data(batch, i)
        mask = np.asarray(s.mask)
        zs = [z_ref[i], z_ref[i] + np.array([0.3, 2.0, -1.0, -0.5])]
        zs += list(start_vectors(z_ref[i : i + 1], num_starts)[0, 1:])
        for z in zs:
            rf, jf = (np.asarray(x)[mask] for x in r_fitcsc(jnp.asarray(z), s))
            rp, jp, ok = peer_residuals(pm, z, curves[i])
            assert ok, f"peer failed at a check point of curve {i}"
            worst_r = max(worst_r, float(np.abs(rf - rp).max()))
            worst_j = max(worst_j, float(np.abs(jf - jp).max() / max(np.abs(jf).max(), 1.0)))
            n_points += 1
    out = {
        "curves": [batch.subject[i] for i in pick],
        "n_censored_curves": sum(1 for i in pick if curves[i]["censored"].any()),
        "n_z_points": n_points,
        "points": "per curve: the reference start, a far point, and the other starts",
        "max_abs_diff_residuals": worst_r,
        "max_rel_diff_jacobian": worst_j,
        "tolerance_residuals": 1e-5,
    }
    if worst_r > 1e-5:
        raise RuntimeError(f"peer residuals differ from fitcsc's: {out}")
    return out


def main_fit(args, load_start) -> dict:
    path = fitcsc.data_dir(args.data_dir) / Path(*DATA_FILE)
    batch, idx, n_file = load_pdxe(path, args.n, args.seed)
    n, S = batch.n_subjects, args.num_starts
    log(f"device {jax.devices()[0]}, precision {precision()}, {n} curves, {S} starts")
    z_ref = reference_z(batch)
    starts = start_vectors(z_ref, S)
    curves = curves_np(batch)
    pred = predictor()
    n_peer = min(args.n_peer, n)
    if n_peer == n:
        peer_idx = np.arange(n)
    else:
        rng = np.random.default_rng(args.seed + 1)
        peer_idx = np.sort(rng.choice(n, n_peer, replace=False))
    start_check = check_starts(batch, z_ref, S)
    residual_check = check_residuals(batch, curves, pred, z_ref, S, peer_idx)
    log("checks:", json.dumps(start_check), json.dumps(residual_check))

    # ---- the scipy peer on n_peer of them (first: it fails fast if it fails)
    log(f"scipy peer: {n_peer} curves ...")
    pm = PeerModel(REFERENCE, MODEL)
    peer, per_curve_s = [], []
    for k, i in enumerate(peer_idx):
        t = time.perf_counter()
        peer.append(peer_fit_curve(pm, curves[i], starts[i]))
        per_curve_s.append(time.perf_counter() - t)
        if (k + 1) % 16 == 0:
            log(f"  peer {k + 1}/{n_peer}: {sum(per_curve_s):.1f} s")
    peer_s = float(sum(per_curve_s))
    peer_rate = n_peer / peer_s
    log(f"peer: {peer_s:.1f} s -> {peer_rate:.3f} curves/s")

    # ---- fitcsc on all n curves
    log(f"fitcsc: {n} curves in chunks of <= {args.chunk} ...")
    rf = run_fitcsc(pred, batch, z_ref, chunk=args.chunk, num_starts=S)
    a = rf.pop("arrays")
    rss_fitcsc = peak_rss_mib()
    fit_rate = n / rf["wall_s"]
    log(f"fitcsc: {rf['wall_s']:.1f} s -> {fit_rate:.2f} curves/s, compile {rf['compile_s']:.1f} s")
    steps0, status0, _, _ = ode_steps(batch, z_ref)
    steps1, status1, _, _ = ode_steps(batch, a["z"])

    # ---- the same objective on both sides
    const = np.array([objective_constant(curves[i]) for i in peer_idx])
    obj_f = a["loss"][peer_idx] - const
    mask = np.asarray(batch.mask)
    obj_f_np = np.array(
        [obs_objective(curves[i], a["log_volume_pred"][i][mask[i]]) for i in peer_idx]
    )
    best = [p["starts"][p["best"]] for p in peer]
    obj_p = np.array([b["objective"] for b in best])
    tol = 1e-6 * np.abs(obj_p) + 1e-9
    le = obj_f <= obj_p + tol
    rel = (obj_f - obj_p) / np.maximum(np.abs(obj_p), 1e-9)
    fit_evals = int(a["all_n_steps"].sum())
    peer_solves = int(sum(r["ode_solves"] for p in peer for r in p["starts"]))
    all_p = [r for p in peer for r in p["starts"]]

    fl = flop_counts()
    lm_med = float(np.median(a["all_n_steps"]))
    ode_med = float(np.median(steps1))
    per_curve_brief = fl["vector_field"] * 6 * ode_med * (1 + N_Z) * lm_med * S
    per_curve_step = fl["tsit5_step_with_sensitivities"] * ode_med * lm_med * S
    mhz = _cpu_mhz()
    peak = 16.0 * (os.cpu_count() or 1) * mhz * 1e6 if mhz else None

    result = {
        "benchmark": "batch_fit",
        "description": "multi-start MAP fits of N real tumour growth curves: fitcsc.fit_map "
        "(LM, vmapped over curves and starts, chunked) vs a scipy least_squares loop on the "
        "same residuals, starts and tolerances",
        "quick": bool(args.quick),
        **workload(),
        "data": {
            "file": str(Path(*DATA_FILE)),
            "source": "Novartis PDXE breast (Gao et al. 2015), via Xeva; every arm fitted "
            "with the growth-only model",
            "n_curves_in_file": n_file,
            "selection": "all" if n == n_file else f"fixed random subset (seed {args.seed})",
            "n_obs_per_curve": spread(mask.sum(axis=1)),
            "padded_n_obs": batch.n_obs,
            "n_censored_obs": int(np.asarray(batch.censored).sum()),
            "n_curves_with_censored_obs": int(np.asarray(batch.censored).any(axis=1).sum()),
        },
        "n_curves": n,
        "num_starts": S,
        "compile_s": rf["compile_s"],
        "fitcsc": {
            **rf,
            "curves_per_s": fit_rate,
            "s_per_curve": rf["wall_s"] / n,
            "status_counts": counts(a["status"], fit_status_name),
            "status_counts_all_starts": counts(a["all_status"], fit_status_name),
            "n_steps_best_start": spread(a["n_steps"]),
            "n_steps_all_starts": spread(a["all_n_steps"]),
            "n_steps_what": "LM iterations (one residual + Jacobian evaluation each)",
            "ode_steps_at_start": spread(steps0),
            "ode_steps_at_estimate": spread(steps1),
            "ode_status_at_estimate": counts(status1, lambda c: fitcsc.Status(c).name),
            "ode_steps_what": "fitcsc.Solution.num_steps of one forward solve (diffrax "
            "num_steps + num_rejected_steps: attempts, with rejected ones counted twice)",
            "peak_rss_mib_after_fitcsc": rss_fitcsc,
        },
        "peer": {
            "method": "scipy.optimize.least_squares per curve and start, analytic Jacobian "
            "from the forward sensitivity equations (one augmented RK45 solve per "
            "evaluation); MINPACK 'lm' (trf where a curve has fewer points than parameters)",
            "n_curves": n_peer,
            "wall_s": peer_s,
            "curves_per_s": peer_rate,
            "s_per_curve": spread(per_curve_s),
            "method_counts": {m: sum(p["method"] == m for p in peer) for m in ("lm", "trf")},
            "status_counts": counts([b["status"] for b in best], PEER_STATUS.get),
            "status_counts_all_starts": counts([r["status"] for r in all_p], PEER_STATUS.get),
            "n_failed_best": int(sum(b["failed"] for b in best)),
            "n_failed_all_starts": int(sum(r["failed"] for r in all_p)),
            "nfev_best_start": spread([b["nfev"] for b in best]),
            "nfev_all_starts": spread([r["nfev"] for r in all_p]),
            "ode_solves": peer_solves,
            "rhs_evaluations": pm.n_rhs,
        },
        "fitcsc_curves_per_s": fit_rate,
        "peer_curves_per_s": peer_rate,
        "peer_n_curves": n_peer,
        "ratio_vs_scipy": fit_rate / peer_rate,
        "ratio_basis": "same curves: peer wall time / fitcsc wall time"
        if n_peer == n
        else f"curves per second: fitcsc on all {n} curves, peer on a fixed random subset "
        f"of {n_peer} (seed {args.seed + 1}); ratio = fitcsc curves/s / peer curves/s",
        "ratio_per_evaluation": (peer_s / peer_solves) / (rf["wall_s"] / fit_evals),
        "ratio_per_evaluation_what": "peer s per objective+Jacobian evaluation / fitcsc s "
        "per member LM iteration (fitcsc's includes its padding and lockstep waste)",
        "frac_loss_le_peer": float(le.mean()),
        "loss_comparison": {
            "objective": "0.5 sum(r^2) = FitResult.loss minus the data constant "
            "sum over uncensored points of (log sigma + log(2 pi)/2 + log V_obs)",
            "rule": "fitcsc <= peer + 1e-6 |peer| + 1e-9",
            "n_curves": n_peer,
            "n_fitcsc_le_peer": int(le.sum()),
            "n_fitcsc_worse_by_more_than_1e-3_rel": int((rel > 1e-3).sum()),
            "n_fitcsc_worse_by_more_than_1pct": int((rel > 1e-2).sum()),
            "n_fitcsc_better_by_more_than_1pct": int((rel < -1e-2).sum()),
            "rel_diff_fitcsc_minus_peer": spread(rel),
            "check_loss_vs_numpy_objective_max_abs_diff": float(np.abs(obj_f - obj_f_np).max()),
            "fitcsc_worse_by_more_than_1e-3_rel": [
                {
                    "subject": batch.subject[i],
                    "n_obs": int(curves[i]["day"].size),
                    "fitcsc": float(obj_f[k]),
                    "peer": float(obj_p[k]),
                    "fitcsc_all_starts": (a["all_losses"][i] - const[k]).tolist(),
                    "fitcsc_status_all_starts": [
                        fit_status_name(int(c)) for c in a["all_status"][i]
                    ],
                    "peer_all_starts": [r["objective"] for r in peer[k]["starts"]],
                }
                for k, i in enumerate(peer_idx)
                if rel[k] > 1e-3
            ],
        },
        "start_check": start_check,
        "residual_check": residual_check,
        "physical_floor": {
            "flops": fl,
            "lm_iterations_median": lm_med,
            "ode_steps_median_at_estimate": ode_med,
            "flops_per_curve_brief_formula": per_curve_brief,
            "brief_formula": "vector_field flops x 6 stages x ODE steps x (1 + n_params) x "
            "LM iterations x starts (medians)",
            "flops_per_curve_step_count": per_curve_step,
            "step_count_formula": "tsit5_step_with_sensitivities flops x ODE steps x LM "
            "iterations x starts (medians)",
            "assumed_peak_flops_per_s": peak,
            "assumed_peak_what": "ASSUMPTION, not measured: 16 float64 flops/cycle/core "
            "(AVX2, two 256-bit FMA units) x cores x current 'cpu MHz' from /proc/cpuinfo",
            "cpu_mhz": mhz,
            "floor_curves_per_s": peak / per_curve_step if peak else None,
            "measured_curves_per_s": fit_rate,
            "measured_flops_per_s_step_count": per_curve_step * fit_rate,
        },
    }
    if not args.no_lockstep:
        log(f"lockstep: {args.lockstep_size} curves ...")
        result["lockstep"] = lockstep_experiment(
            batch,
            z_ref,
            size=min(args.lockstep_size, n) if args.quick else args.lockstep_size,
            cap=args.lockstep_cap,
            buckets=args.lockstep_buckets,
            retry=args.retry_size,
        )
    result.update(tolerances=tolerances(), peak_rss_mib=peak_rss_mib(), **environment(load_start))
    write_json_atomic(args.out, result)
    log(
        f"ratio_vs_scipy {result['ratio_vs_scipy']:.2f} ({result['ratio_basis']}), "
        f"frac_loss_le_peer {result['frac_loss_le_peer']:.3f}, compile {rf['compile_s']:.1f} s "
        f"-> {args.out}"
    )
    return result


def _cpu_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def main_scaling(args, load_start) -> dict:
    res = run_scaling(args)
    result = {
        "benchmark": "batch_fit_scaling",
        "description": "time per curve and peak memory of fitcsc.fit_map on N synthetic "
        "curves, fitted in equal chunks (one compile per chunk size), one process per N",
        "quick": bool(args.quick),
        **workload(),
        "synthetic": {
            "days": SYN_DAYS.tolist(),
            "truth": {k: {"median": m, "log_sd": s} for k, (m, s) in SYN_TRUTH.items()},
            "truth_note": "log-normal around the median; self_renewal: normal on the logit "
            "of (p - 0.5) / 0.5",
            "noise": f"log-normal, SD {SYN_NOISE_SD}; fits use sigma = {SYN_NOISE_SD}",
            "simulated_with": "fitcsc.simulate, rtol 1e-10, atol 1e-8 cells",
            "seed": args.seed,
        },
        "num_starts": args.scaling_starts,
        "chunk": args.scaling_chunk,
        "timing": "compile excluded: a first call on chunk 0 compiles (first_call_s, "
        "compile_s), then every chunk is timed; wall_s is their sum",
        **res,
        "tolerances": tolerances(),
        **environment(load_start),
    }
    write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
