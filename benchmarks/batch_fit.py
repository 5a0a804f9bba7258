"""Benchmark: multi-start MAP fits of many tumour growth curves, fitcsc vs a scipy peer.

Fits ``--n`` real curves (default: all 849 mice of the PDXE breast set,
``data_dir()/pdxe_brca/pdxe_brca_tumor_volume.csv``) with the model and parameter spec
that ``fitcsc fit`` uses on that file: each arm its own constant drug effect
(`fitcsc.default_arm_regimens`), the curves grouped by the class of that effect
(cytostatic, HER2, chemotherapy, control), each group with the identifiable per-arm spec
`csc_arm_spec` (free: v_S, V0 and the arm's effect; controls: v_S, p, V0). Sigma is fixed
(0.2); zeros are left-censored (M3). Both fitters minimise ``0.5 * sum(r**2)`` of
`fitcsc.residuals`, the -log-likelihood up to a constant of the data.

- fitcsc: one `fitcsc.fit_map` call on every curve and start, as `fitcsc fit` makes
  it: one model with a drug slot per drug kind of the file and the union of the per-arm
  specs, each curve estimating its arm's part (its free mask), so every regimen shape
  runs in one compiled program; the package's one Levenberg–Marquardt (rule
  ``"bounded"``, MINPACK lmder's, and the stall test), the paced evaluator (each
  member's ODE and forward sensitivities at its own pace), members streamed through
  fixed-shape lanes (`fitcsc._fit.lanes`). The benchmark times library entry points only:
  *warm* is the second call in the process (compile excluded, checked to compile
  nothing); *cold* is a fresh process with an empty persistent compile cache (Python
  start, import, data, compile and fit); and `fitcsc fit` on the same file runs in a
  fresh process with an empty cache, then again with it warm.
- the peer: a Python loop of `scipy.optimize.least_squares` (MINPACK ``lm``; ``trf`` for
  curves with fewer observations than parameters) over curves and starts, on the same
  residuals computed by an independent NumPy model integrated by scipy's RK45 with its
  forward sensitivity equations (an analytic Jacobian), from the same start vectors, with
  the same ODE and optimiser tolerances. The same peer with least_squares' default
  finite-difference Jacobian ('2-point', primal solves only) is timed on a few curves.
  The peer runs on a fixed random subset (``--n-peer``): ``ratio_vs_scipy`` is fitcsc's
  warm curves per second over the peer's; ``ratio_vs_scipy_cold`` the peer's
  end-to-end time for the same curves (from its curves per second) over fitcsc's cold
  process.

``--scaling`` fits synthetic curves of the control model (known parameters, fixed seed)
for N = 10 ... 100,000, each N in its own process, and writes time per curve and peak
memory per N.

Usage (from the repository root; the machine is shared, so run it niced)::

    nice -n 10 python benchmarks/batch_fit.py          # -> results/batch_fit.json
    python benchmarks/batch_fit.py --quick             # smoke run (24 curves), temp dir
    python benchmarks/batch_fit.py --n 200 --n-peer 48 --out /tmp/bf.json
    nice -n 10 python benchmarks/batch_fit.py --scaling  # -> results/batch_fit_scaling.json

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
    timestamp,
    versions,
    write_json_atomic,
)
from scipy.integrate import RK45
from scipy.optimize import least_squares
from scipy.special import expit, log_ndtr

from fitcsc import (
    CompileStats,
    fitjob,  # the fit job: its loader, union model and per-arm spec
)
from fitcsc.fitjob import reference_starts
from fitcsc.fitjob import sobol_unit as fitcsc_sobol_unit
from fitcsc.fitjob import starts as fit_starts

DEFAULT_OUT = RESULTS / "batch_fit.json"
DEFAULT_SCALING_OUT = RESULTS / "batch_fit_scaling.json"
PACKAGES = ("jax", "jaxlib", "diffrax", "equinox", "optimistix", "numpy", "scipy")

# ---------------------------------------------------------------- the workload

SIGMA = 0.2  # SD of the log-volume error, fixed [-]
DETECTION_LIMIT_MM3 = 1.0  # volumes below it (the zeros) are left-censored (M3)
SPECIES = "mouse"
ODE_RTOL, ODE_ATOL_CELLS, ODE_MAX_STEPS = 1e-8, 1e-6, 512  # csc_predictor defaults
LM_RTOL = 1e-8  # fit_map rtol = atol; scipy ftol = xtol = gtol
LM_MAX_STEPS = 200  # total LM steps (evaluations) per member; scipy max_nfev
TRUST_REGION = "bounded"  # fit_map(trust_region=...): MINPACK lmder's kind of rule
STALL_RTOL, STALL_STEPS = 1e-8, 2  # fit_map(stall_rtol=..., stall_steps=...)
NUM_STARTS, START_SCALE, START_SEED = 4, 1.0, 0
PENALTY = 1e6  # residual of a failed prediction, as in fitcsc._fit.member
SEED = 20240601  # curve subsets and synthetic data
DATA_FILE = ("pdxe_brca", "pdxe_brca_tumor_volume.csv")
ARM_CONC_MG_PER_L = 1.0  # an arm pseudo-drug's concentration from day 0 (fitcsc._io.arms)


def lm_tolerances(max_steps: int = LM_MAX_STEPS) -> dict[str, dict]:
    """The optimiser settings, once for both sides: ``{"fitcsc": fit_map kwargs,
    "peer": least_squares kwargs}``."""
    return {
        "fitcsc": dict(rtol=LM_RTOL, atol=LM_RTOL, max_steps=max_steps,
                       trust_region=TRUST_REGION, stall_rtol=STALL_RTOL,
                       stall_steps=STALL_STEPS),
        "peer": dict(ftol=LM_RTOL, xtol=LM_RTOL, gtol=LM_RTOL, max_nfev=LM_MAX_STEPS),
    }


class Group:
    """Curves that share one model and spec (as in ``fitcsc fit``): their batch (drug
    slots renumbered), predictor, reference starts and indices in the file."""

    def __init__(self, drugs, idx, batch, regs):
        self.drugs = tuple(drugs)
        self.cls = fitcsc.CATALOGUE[drugs[0]].drug_class if drugs else "control"
        self.idx = np.asarray(idx)
        self.model = fitcsc.ModelConfig(crowding="logistic", drugs=self.drugs,
                                        species=SPECIES)
        self.spec = fitjob.csc_arm_spec(self.model)
        self.pred = predictor(self.model, self.spec)
        sub_regs = [regs[i] for i in self.idx]
        _, slot = fitjob.drug_slots(sub_regs, SPECIES)
        self.batch = fitjob.slot_batch(batch.subset(self.idx), slot, self.drugs)
        self.labels = tuple(self.pred.spec.labels())
        self.n_z = len(self.labels)
        data = fitcsc.subject_data(self.batch)
        self.z_ref = np.asarray(jax.vmap(self.pred.init_z)(data))

    @property
    def n(self) -> int:
        return int(self.idx.size)


def predictor(model, spec, max_steps: int = ODE_MAX_STEPS):
    return fitcsc.csc_predictor(model, spec, rtol=ODE_RTOL, atol=ODE_ATOL_CELLS,
                                max_steps=max_steps)


# ---------------------------------------------------------------- data and starts


def load_file(path: Path, n: int | None, seed: int):
    """The file as ``fitcsc fit`` reads it (default arm regimens) and ``n`` of its curves
    (all, or a fixed random subset): ``(batch, regimens, kept indices)``; padding
    shapes are the full file's."""
    batch, regimens, _, _ = fitjob.load_job_data(path, None, "csc", SPECIES, DETECTION_LIMIT_MM3,
                                          None, None)
    regs = [fitjob.regimen_of(regimens, s, a)
            for s, a in zip(batch.subject, batch.arm, strict=True)]
    keep = np.arange(batch.n_subjects)
    if n is not None and n < batch.n_subjects:
        keep = np.sort(np.random.default_rng(seed).choice(batch.n_subjects, n, replace=False))
    return batch, regs, keep


def groups_of(batch, regs, keep) -> list[Group]:
    """The kept curves by the class of their arm's effect (the peer's models)."""
    shapes: dict[tuple, list[int]] = {}
    for i in keep:
        shapes.setdefault(tuple(regs[i].drugs), []).append(int(i))
    by_class: dict[str, list] = {}
    for drugs, idx in shapes.items():
        cls = fitcsc.CATALOGUE[drugs[0]].drug_class if drugs else "control"
        by_class.setdefault(cls, []).append((drugs, idx))
    groups = []
    for parts in by_class.values():  # one model per class: the pseudo-drugs share PK
        idx = sorted(i for _, ix in parts for i in ix)
        groups.append(Group(parts[0][0], idx, batch, regs))
    return groups


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
    """``(n, num_starts, n_z)``: ``z_ref + START_SCALE * (2u - 1)``, as in fit_map."""
    u = sobol_unit(num_starts, z_ref.shape[1], START_SEED)
    return z_ref[:, None, :] + START_SCALE * (2.0 * u - 1.0)[None]


def curves_np(batch) -> list[dict]:
    """Real observations of each curve as NumPy (no padding), for the peer."""
    day, vol = np.asarray(batch.day), np.asarray(batch.volume_mm3)
    mask, cens = np.asarray(batch.mask), np.asarray(batch.censored)
    return [{"day": day[i, m], "log_obs": np.log(vol[i, m]), "censored": cens[i, m],
             "t0": float(day[i, 0])} for i, m in enumerate(mask)]


def objective_constant(curve: dict, sigma: float = SIGMA) -> float:
    """-log-likelihood minus 0.5 sum(r**2): the uncensored terms' constants."""
    obs = ~curve["censored"]
    return float(np.sum(math.log(sigma) + 0.5 * math.log(2 * math.pi) + curve["log_obs"][obs]))


def obs_objective(curve: dict, log_pred: np.ndarray, sigma: float = SIGMA) -> float:
    """0.5 sum(r**2) of `fitcsc.residuals` at log predictions (NumPy)."""
    zc = (curve["log_obs"] - log_pred) / sigma
    q = -2.0 * log_ndtr(zc)
    r2 = np.where(curve["censored"], np.where(q > 1e-250, q, 0.0), zc**2)
    return 0.5 * float(np.sum(r2))


# ---------------------------------------------------------------- the scipy peer


class PeerModel:
    """Independent NumPy model of one group: the logistic SD model with the arm's
    constant effect, and its forward sensitivities in ``z``, integrated by scipy's RK45.

    With a constant exposure (C = 1 mg/L from day 0; every PDXE curve starts at day >= 0)
    the model is, for every class,

        dS/dt = a S g - e_S S,   dD/dt = b S g + (c g - e_D) D,   g = 1 - (S + D)/K,

    with constants q = (a, b, c, e_S, e_D) that depend on ``z`` (`coefficients`), so the
    sensitivity equations need only dq/dz and the state Jacobian.
    """

    def __init__(self, g: Group, sensitivities: bool = True):
        ref, model = g.spec.reference, g.model
        assert model.crowding == "logistic" and model.state_names == ("S", "D")
        assert len(model.drugs) <= 1 and model.chemo_mode == "concentration"
        self.cls, self.labels, self.n_z = g.cls, g.labels, g.n_z
        f = {k: float(getattr(ref, k)) for k in (
            "csc_death_rate", "bulk_death_rate", "bulk_division_rate", "self_renewal",
            "carrying_capacity_cells", "initial_csc_fraction", "her2_dependence_csc",
            "her2_dependence_bulk")}
        self.d_S, self.d_D, self.v_D = f["csc_death_rate"], f["bulk_death_rate"], \
            f["bulk_division_rate"]
        self.p, self.K, self.f0 = f["self_renewal"], f["carrying_capacity_cells"], \
            f["initial_csc_fraction"]
        self.h_S, self.h_D = f["her2_dependence_csc"], f["her2_dependence_bulk"]
        if model.drugs:  # Hill inhibition at C = 1 mg/L
            ec50, hill = float(ref.ec50_mg_per_L[0]), float(ref.hill[0])
            x = (ARM_CONC_MG_PER_L / ec50) ** hill
            self.I = x / (1.0 + x)
        self.c = float(model.cells_per_mm3)
        self.sens = sensitivities
        # Error control on the two cell states only, as diffrax's ForwardMode (step sizes
        # follow the primal solution; the sensitivities ride along). scipy's RMS norm
        # divides by the number of components: rtol and the states' atol are divided by
        # sqrt(n / 2) so that it is the 2-state norm exactly; the sensitivities get an
        # atol of 1e300, so they never limit a step.
        n = 2 + 2 * self.n_z if sensitivities else 2
        norm = math.sqrt(n / 2)
        self.rtol = ODE_RTOL / norm
        self.atol = np.array([ODE_ATOL_CELLS / norm] * 2 + [1e300] * (n - 2))
        self.n_rhs = 0
        self.n_solves = 0

    def coefficients(self, z):
        """``q = (a, b, c, e_S, e_D)`` and ``dq/dz`` (5, n_z) at ``z`` (the labels of
        `csc_arm_spec`; the last element is log V0)."""
        v_S, p, v_D = math.exp(z[0]), self.p, self.v_D
        Q = np.zeros((5, self.n_z))
        e_S, e_D, G = self.d_S, self.d_D, 1.0
        if self.cls == "control":  # z: log v_S, logit (p - 0.5)/0.5, log V0
            s = expit(z[1])
            p, dp = 0.5 + 0.5 * s, 0.5 * s * (1.0 - s)
            Q[0, 1], Q[1, 1] = 2.0 * v_S * dp, -2.0 * v_S * dp
        elif self.cls == "cytostatic":  # z: log v_S, logit e, log V0; G = 1 - e I
            e = expit(z[1])
            G, dG = 1.0 - e * self.I, -self.I * e * (1.0 - e)
            Q[0, 1], Q[1, 1] = v_S * (2 * p - 1) * dG, 2 * v_S * (1 - p) * dG
            Q[2, 1] = v_D * dG
        elif self.cls == "her2":  # z: log v_S, logit eps_S, logit eps_D, log V0
            es, eb = expit(z[1]), expit(z[2])
            dp = -p * self.h_S * self.I * es * (1.0 - es)
            p = p * (1.0 - es * self.h_S * self.I)
            Q[0, 1], Q[1, 1] = 2.0 * v_S * dp, -2.0 * v_S * dp
            Q[2, 2] = -v_D * self.h_D * self.I * eb * (1.0 - eb)
            v_D = v_D * (1.0 - eb * self.h_D * self.I)
        elif self.cls == "chemo":  # z: log v_S, log k, logit sigma_S, log V0; C = 1
            k, sg = math.exp(z[1]), expit(z[2])
            e_S, e_D = e_S + sg * k * ARM_CONC_MG_PER_L, e_D + k * ARM_CONC_MG_PER_L
            Q[3, 1], Q[4, 1] = sg * k * ARM_CONC_MG_PER_L, k * ARM_CONC_MG_PER_L
            Q[3, 2] = k * sg * (1.0 - sg) * ARM_CONC_MG_PER_L
        else:
            raise ValueError(f"no peer model for drug class {self.cls!r}")
        a, b, c = v_S * G * (2 * p - 1), 2 * v_S * G * (1 - p), v_D * G
        Q[0, 0], Q[1, 0] = a, b
        return (a, b, c, e_S, e_D), Q

    def rhs(self, q, Q):
        a, b, c, e_S, e_D = q
        K, n = self.K, self.n_z
        if not self.sens:
            def f(t, y):
                self.n_rhs += 1
                S, D = y[0], y[1]
                g = 1.0 - (S + D) / K
                return np.array([a * S * g - e_S * S, b * S * g + (c * g - e_D) * D])

            return f

        def f(t, y):
            self.n_rhs += 1
            S, D = y[0], y[1]
            g = 1.0 - (S + D) / K
            sS, sD = y[2 : 2 + n], y[2 + n :]
            Sg = S * g
            out = np.empty(2 + 2 * n)
            out[0] = a * Sg - e_S * S
            out[1] = b * Sg + (c * g - e_D) * D
            # d(dS/dt)/dy . s + d(dS/dt)/dq . dq/dz, and the same for D
            out[2 : 2 + n] = ((a * (g - S / K) - e_S) * sS - a * S / K * sD
                              + Sg * Q[0] - S * Q[3])
            out[2 + n :] = ((b * (g - S / K) - c * D / K) * sS
                            + (c * (g - D / K) - b * S / K - e_D) * sD
                            + Sg * Q[1] + g * D * Q[2] - D * Q[4])
            return out

        return f

    def log_volume(self, z, day, t0):
        """log V [log mm3] at ``day`` and (with sensitivities) its Jacobian in ``z``;
        ``ok`` False when the solve failed or a volume is not positive."""
        q, Q = self.coefficients(z)
        N0 = math.exp(z[-1]) * self.c  # inf, not an error
        n = self.n_z
        y0 = np.zeros(2 + 2 * n if self.sens else 2)
        y0[0], y0[1] = self.f0 * N0, (1.0 - self.f0) * N0
        if self.sens:  # d y0 / d log V0 = y0
            y0[1 + n], y0[1 + 2 * n] = y0[0], y0[1]
        if not (np.all(np.isfinite(y0)) and np.all(np.isfinite(q)) and np.all(np.isfinite(Q))):
            return None, None, False
        ts, inv = np.unique(day, return_inverse=True)
        self.n_solves += 1
        ys = rk45_capped(self.rhs(q, Q), t0, y0, ts, self.rtol, self.atol)
        if ys is None:
            return None, None, False
        N = ys[:, 0] + ys[:, 1]
        if not np.all(np.isfinite(ys)) or np.any(N <= 0):
            return None, None, False
        dlv = (ys[:, 2 : 2 + n] + ys[:, 2 + n :]) / N[:, None] if self.sens else None
        return np.log(N / self.c)[inv], None if dlv is None else dlv[inv], True


def rk45_capped(fun, t0: float, y0: np.ndarray, ts: np.ndarray, rtol, atol,
                max_steps: int = ODE_MAX_STEPS):
    """`scipy.integrate.RK45` from ``t0`` to ``ts[-1]``, saved at ``ts`` (dense
    output), failing (None) after ``max_steps`` step attempts as diffrax does."""
    out = np.empty((ts.size, y0.size))
    k = int(np.searchsorted(ts, t0, side="right"))
    out[:k] = y0
    if k == ts.size:
        return out
    solver = RK45(fun, t0, y0, ts[-1], rtol=rtol, atol=atol)
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


def peer_residuals(model: PeerModel, z, curve, sigma: float = SIGMA):
    """Residuals of `fitcsc.residuals` and (with sensitivities) their Jacobian; a
    failed prediction gives `PENALTY` and a zero Jacobian, as in fitcsc."""
    m = curve["day"].size
    fail = np.full(m, PENALTY), np.zeros((m, model.n_z)), False
    with np.errstate(all="ignore"):  # absurd trial points overflow: a failure
        try:
            lp, dlp, ok = model.log_volume(z, curve["day"], curve["t0"])
        except (ArithmeticError, ValueError):
            return fail
        if not ok:
            return fail
        zc = (curve["log_obs"] - lp) / sigma
        r, w = zc.copy(), np.full(m, -1.0 / sigma)
        cens = curve["censored"]
        if cens.any():
            lphi = log_ndtr(zc[cens])
            q = -2.0 * lphi
            big = q > 1e-250
            rc = np.where(big, np.sqrt(np.where(big, q, 1.0)), 0.0)
            ratio = np.exp(-0.5 * zc[cens] ** 2 - 0.5 * math.log(2 * math.pi) - lphi)
            r[cens] = rc
            w[cens] = np.where(big, ratio / (sigma * np.where(big, rc, 1.0)), 0.0)
        if not np.all(np.isfinite(r)):
            return fail
    return r, None if dlp is None else w[:, None] * dlp, True


def peer_fit_curve(model: PeerModel, curve: dict, starts: np.ndarray) -> dict:
    """least_squares from every start; the best start by objective among those that
    did not fail. With sensitivities each evaluation is one augmented ODE solve and
    the Jacobian at the last evaluated point is reused, not recomputed; without, the
    Jacobian is least_squares' default 2-point finite differences."""
    m = curve["day"].size
    method = "lm" if m >= model.n_z else "trf"  # MINPACK lm needs m >= n
    rows = []
    for z0 in starts:
        cache: dict = {}
        solves0 = model.n_solves

        def fun(z, cache=cache):
            r, J, _ = peer_residuals(model, z, curve)
            cache["z"], cache["J"] = z.copy(), J
            return r

        def jac(z, *_, cache=cache):
            if "z" not in cache or not np.array_equal(cache["z"], z):
                fun(z)
            return cache["J"]

        res = least_squares(fun, z0, jac=jac if model.sens else "2-point", method=method,
                            **lm_tolerances()["peer"])
        failed = not np.all(np.abs(res.fun) < PENALTY) or not np.isfinite(res.cost)
        rows.append({"z": res.x, "objective": float(res.cost), "status": int(res.status),
                     "failed": bool(failed), "nfev": int(res.nfev),
                     "njev": int(res.njev or 0), "ode_solves": model.n_solves - solves0})
    usable = [k for k, r in enumerate(rows) if not r["failed"]] or list(range(len(rows)))
    best = min(usable, key=lambda k: rows[k]["objective"])
    return {"best": best, "starts": rows, "method": method}


PEER_STATUS = {-1: "improper_input", 0: "max_nfev", 1: "gtol", 2: "ftol", 3: "xtol",
               4: "ftol_and_xtol"}


def run_peer(groups, peer_sel, curves, starts, *, sensitivities=True, tag="peer") -> dict:
    """The peer on the selected curves of every group: ``peer_sel[g]`` are indices into
    group ``g``. **Returns** per-curve results (by group) and timings."""
    out: dict = {"per_group": {}, "wall_s": 0.0, "n_curves": 0}
    done = 0
    for g, sel in zip(groups, peer_sel, strict=True):
        if not len(sel):
            continue
        pm = PeerModel(g, sensitivities=sensitivities)
        fits, per_curve_s = [], []
        for i in sel:
            t = time.perf_counter()
            fits.append(peer_fit_curve(pm, curves[g.cls][i], starts[g.cls][i]))
            per_curve_s.append(time.perf_counter() - t)
            done += 1
            if done % 16 == 0:
                log(f"  {tag} {done}: {out['wall_s'] + sum(per_curve_s):.1f} s")
        wall = float(sum(per_curve_s))
        out["per_group"][g.cls] = {"sel": np.asarray(sel), "fits": fits,
                                   "per_curve_s": per_curve_s, "wall_s": wall,
                                   "ode_solves": pm.n_solves, "rhs_evaluations": pm.n_rhs}
        out["wall_s"] += wall
        out["n_curves"] += len(sel)
    out["curves_per_s"] = out["n_curves"] / out["wall_s"] if out["wall_s"] else None
    return out


# ---------------------------------------------------------------- the fitcsc side


class UnionFit:
    """What ``fitcsc fit`` fits on the file: one model with a drug slot per drug kind
    and the union spec, each curve estimating its arm's part (`fitcsc.fitjob`), for
    the curves ``idx`` (file order). The starts are fit_map's (`fitcsc._fit.driver.starts`)."""

    def __init__(self, batch, regs, idx, num_starts: int):
        self.idx = np.asarray(idx)
        sub_regs = [regs[i] for i in self.idx]
        drugs, slot = fitjob.drug_slots(sub_regs, SPECIES)
        self.model = fitcsc.ModelConfig(crowding="logistic", drugs=drugs, species=SPECIES)
        self.pred = predictor_arm(self.model)
        self.batch = fitjob.slot_batch(batch.subset(self.idx), slot, drugs)
        data = fitcsc.subject_data(self.batch)
        self.z_ref, self.free = reference_starts(self.pred, data)
        self.z0 = fit_starts(self.z_ref, self.free, num_starts, START_SCALE, START_SEED)
        self.labels = tuple(self.pred.spec.labels())

    def fit(self, **kw):
        """The timed library call: every curve, every start, one `fit_map`."""
        return fitcsc.fit_map(self.pred, self.batch, num_starts=self.z0.shape[1],
                              start_scale=START_SCALE, sigma=SIGMA,
                              **lm_tolerances()["fitcsc"], **kw)


def predictor_arm(model):
    return fitjob.arm_predictor(fitcsc.csc_predictor(
        model, fitjob.csc_union_spec(model), rtol=ODE_RTOL, atol=ODE_ATOL_CELLS,
        max_steps=ODE_MAX_STEPS))


def _free_take(u: UnionFit, g: Group):
    """Rows of ``g``'s curves in the union fit, and each curve's free elements in the
    group spec's order: ``(pos, take (n, k))``."""
    pos = np.searchsorted(u.idx, g.idx)
    return pos, np.stack([np.flatnonzero(f) for f in u.free[pos]])


def peer_starts(u: UnionFit, g: Group) -> np.ndarray:
    """fit_map's start vectors of ``g``'s curves in the group layout ``(n, S, k)``."""
    pos, take = _free_take(u, g)
    return np.take_along_axis(u.z0[pos], take[:, None, :].repeat(u.z0.shape[1], 1), axis=2)


def group_view(u: UnionFit, g: Group, res) -> dict:
    """The union fit's results for the curves of group ``g`` (peer layout: each curve's
    free elements, in the group spec's order)."""
    pos, take = _free_take(u, g)
    all_z = np.asarray(res.all_z)[pos]
    return {
        "z": np.take_along_axis(np.asarray(res.z)[pos], take, axis=1),
        "all_z": np.take_along_axis(all_z, take[:, None, :].repeat(all_z.shape[1], 1),
                                    axis=2),
        "loss": np.asarray(res.loss)[pos], "status": np.asarray(res.status)[pos],
        "all_losses": np.asarray(res.all_losses)[pos],
        "all_status": np.asarray(res.all_status)[pos],
        "all_n_steps": np.asarray(res.all_n_steps)[pos],
        "n_steps": np.asarray(res.n_steps)[pos],
        "best_start": np.asarray(res.best_start)[pos],
        "log_pred": np.asarray(res.log_volume_pred)[pos], "n_free": int(take.shape[1]),
    }


def check_starts(u: UnionFit, groups, num_starts: int) -> dict:
    """fit_map's starts (union layout, Sobol over each curve's free elements) are the
    per-group starts of the earlier benchmark (Sobol over the group spec), and the
    library's Sobol rule is the one written here."""
    worst = 0.0
    for g in groups:
        view = peer_starts(u, g)
        worst = max(worst, float(np.abs(view - start_vectors(g.z_ref, num_starts)).max()))
    out = {"max_abs_diff_union_starts_vs_group_starts": worst,
           "max_abs_diff_sobol_unit_vs_fitcsc": float(np.abs(
               sobol_unit(num_starts, 4, START_SEED)
               - fitcsc_sobol_unit(num_starts, 4, START_SEED)).max())}
    if max(out.values()) > 1e-12:
        raise RuntimeError(f"start vectors differ: {out}")
    return out


def run_fitcsc(u: UnionFit) -> dict:
    """fit_map on every curve: the first call (compile and run), then the warm call
    (timed; it must compile nothing)."""
    with CompileStats() as first:
        t = time.perf_counter()
        jax.block_until_ready(u.fit().z)
        first_s = time.perf_counter() - t
    fitjob.reset_lane_stats()
    with CompileStats() as warm:
        t = time.perf_counter()
        res = u.fit()
        jax.block_until_ready(res.z)
        warm_s = time.perf_counter() - t
    if warm.n_compiles:
        raise RuntimeError(f"the warm call compiled {warm.n_compiles} programs")
    return {"result": res, "first_call_s": first_s, "warm_s": warm_s,
            "compile": first.summary(), "lanes": fitjob.lane_stats()}


def cold_one(args) -> dict:
    """Run in a fresh process with an empty compile cache: import, load, compile, fit;
    the parent times the whole process."""
    t = time.perf_counter()
    path = fitcsc.data_dir(args.data_dir) / Path(*DATA_FILE)
    batch, regs, keep = load_file(path, args.n, args.seed)
    u = UnionFit(batch, regs, keep, args.num_starts)
    load_s = time.perf_counter() - t
    with CompileStats() as c:
        t = time.perf_counter()
        res = u.fit()
        jax.block_until_ready(res.z)
        fit_s = time.perf_counter() - t
    return {"load_s": load_s, "fit_s_with_compile": fit_s, "compile": c.summary(),
            "loss_sum": float(np.asarray(res.loss).sum()),
            "n_failed": int((np.asarray(res.status) >= fitcsc.FitStatus.SOLVER_FAILURE
                             ).sum())}


def run_cold(args) -> dict:
    """ratio_vs_scipy_cold's fitcsc side: a fresh process, an empty persistent cache."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cold.json"
        env = {**os.environ, "FITCSC_CACHE_DIR": str(Path(tmp) / "cache")}
        cmd = [sys.executable, __file__, "--cold-one", "--out", str(out), "--seed",
               str(args.seed), "--num-starts", str(args.num_starts),
               "--ode-rtol", str(args.ode_rtol), "--ode-atol", str(args.ode_atol)]
        if args.n is not None:
            cmd += ["--n", str(args.n)]
        if args.data_dir:
            cmd += ["--data-dir", str(args.data_dir)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
        wall = time.perf_counter() - t
        row = json.loads(out.read_text())
    return {"process_wall_s": wall, **row}


def run_cli(args, path: Path) -> dict:
    """`fitcsc fit` on the file with an empty persistent cache, then again with it
    warm (each a fresh process; the CLI's defaults: sigma estimated, paced)."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FITCSC_CACHE_DIR": str(Path(tmp) / "cache")}
        exe = Path(sys.executable).with_name("fitcsc")
        for name in ("cold", "warm"):
            cmd = [str(exe) if exe.exists() else sys.executable, *(
                [] if exe.exists() else ["-m", "fitcsc.cli"]), "fit", "--data", str(path),
                "--out", str(Path(tmp) / name), "--no-progress"]
            if args.n is not None:
                cmd += ["--max-subjects", str(args.n)]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            summary = json.loads((Path(tmp) / name / "summary.json").read_text())
            out[name] = {"process_wall_s": wall, "wall_s_in_job": summary["wall_s"],
                         "compile": summary["compile"], "n_subjects": summary["n_subjects"],
                         "n_failed": summary["n_failed"],
                         "status_counts": summary["status_counts"]}
    return out


def counts(codes, names) -> dict:
    codes = np.asarray(codes).ravel()
    return {names(int(c)): int((codes == c).sum()) for c in np.unique(codes)}


def fit_status_name(c: int) -> str:
    return fitcsc.FitStatus(c).name


def spread(x) -> dict:
    x = np.asarray(x, float).ravel()
    if not x.size:
        return {}
    return {"median": float(np.median(x)), "p90": float(np.quantile(x, 0.9)),
            "max": float(x.max()), "min": float(x.min()), "mean": float(x.mean())}


def check_residuals(g: Group, curves, starts, picks) -> dict:
    """The peer's residuals and Jacobian equal fitcsc's (`fitcsc.residuals` of the
    predictor's output, `jax.jacfwd`) at the same ``z``, on a few curves of a group."""

    @jax.jit
    def r_fitcsc(z, s):
        def r(z_):
            lp, _ = g.pred(z_, s)
            return fitcsc.residuals(jnp.exp(lp), s.volume_mm3, s.mask, s.censored, SIGMA)

        return r(z), jax.jacfwd(r)(z)

    pm = PeerModel(g)
    worst_r = worst_j = 0.0
    n_points = 0
    far = np.array([0.3, 2.0, -1.0, -0.5, 1.0])[: g.n_z]
    for i in picks:
        s = fitcsc.subject_data(g.batch, int(i))
        mask = np.asarray(s.mask)
        for z in [g.z_ref[i], g.z_ref[i] + far, *starts[i][1:]]:
            rf, jf = (np.asarray(x)[mask] for x in r_fitcsc(jnp.asarray(z), s))
            rp, jp, ok = peer_residuals(pm, z, curves[i])
            if not ok:
                raise RuntimeError(f"peer failed at a check point of {g.cls} curve {i}")
            worst_r = max(worst_r, float(np.abs(rf - rp).max()))
            worst_j = max(worst_j, float(np.abs(jf - jp).max() / max(np.abs(jf).max(), 1.0)))
            n_points += 1
    return {"curves": [g.batch.subject[int(i)] for i in picks],
            "n_censored_curves": sum(1 for i in picks if curves[i]["censored"].any()),
            "n_z_points": n_points, "max_abs_diff_residuals": worst_r,
            "max_rel_diff_jacobian": worst_j}


# ---------------------------------------------------------------- the physical floor


def _flops(fn, *args) -> float:
    ca = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0]
    return float(ca.get("flops", float("nan")))


def flop_counts(g: Group) -> dict:
    """XLA's flop counts (cost analysis of the compiled function) of the vector field
    (with the arm's concentration) and of one Tsit5 step, primal and with forward
    sensitivities in all of ``z``."""
    import diffrax

    z = jnp.asarray(g.z_ref[0])
    sched = fitcsc.subject_data(g.batch, 0).schedule
    coefs, rates = fitcsc._model.pk.pk_arrays(g.spec.reference.pk)

    def field(p, t, y):
        conc = fitcsc.concentrations(coefs, rates, sched, t)
        return fitcsc.vector_field(g.model, t, y, p, conc)

    def step(z_):
        p = g.spec.from_z(z_)
        term = diffrax.ODETerm(lambda t, y, a: field(p, t, y))
        solver = diffrax.Tsit5(scan_kind="lax")  # as ForwardMode sets it
        y0 = fitcsc.initial_state(g.model, p)
        st = solver.init(term, 1.0, 1.1, y0, None)
        y1, err, _, _, _ = solver.step(term, 1.0, 1.1, y0, None, st, made_jump=False)
        return y1, err

    ref = g.spec.from_z(z)
    y0 = fitcsc.initial_state(g.model, ref)
    return {
        "group": g.cls,
        "vector_field": _flops(lambda y: field(ref, 1.0, y), y0),
        "tsit5_step": _flops(step, z),
        "tsit5_step_with_sensitivities": _flops(jax.jacfwd(step), z),
        "source": "jax.jit(f).lower().compile().cost_analysis()['flops'] (XLA's count); "
        "the vector field includes the closed-form concentration; a step: 6 new "
        "vector-field evaluations (7 stages, FSAL), the RK sums and the error estimate, "
        "not the controller or the output interpolation",
    }


def _cpu_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def physical_floor(g: Group, ode_steps, lm_steps, num_starts, curves_per_s) -> dict:
    fl = flop_counts(g)
    lm_med, ode_med = float(np.median(lm_steps)), float(np.median(ode_steps))
    per_curve = fl["tsit5_step_with_sensitivities"] * ode_med * lm_med * num_starts
    mhz = _cpu_mhz()
    peak = 16.0 * (os.cpu_count() or 1) * mhz * 1e6 if mhz else None
    return {
        "flops": fl,
        "lm_steps_median": lm_med,
        "ode_steps_median_at_start": ode_med,
        "flops_per_curve": per_curve,
        "formula": "tsit5_step_with_sensitivities flops x ODE steps x LM steps x starts "
        "(medians over all members, all groups)",
        "assumed_peak_flops_per_s": peak,
        "assumed_peak_what": "ASSUMPTION, not measured: 16 float64 flops/cycle/core "
        "(AVX2, two 256-bit FMA units) x cores x current 'cpu MHz' from /proc/cpuinfo",
        "cpu_mhz": mhz,
        "floor_curves_per_s": peak / per_curve if peak else None,
        "measured_curves_per_s": curves_per_s,
        "measured_flops_per_s": per_curve * curves_per_s,
    }


# ---------------------------------------------------------------- synthetic curves

SYN_DAYS = np.array([0.0, 3, 7, 10, 14, 17, 21, 24, 28, 31, 35, 38, 42])  # twice a week
SYN_TRUTH = {  # control spec; name: (median, SD of log v_S / logit of (p-0.5)/0.5 / log V0)
    "csc_division_rate": (0.2, 0.3),
    "self_renewal": (0.65, 0.5),
    "initial_volume_mm3": (150.0, 0.3),
}
SYN_NOISE_SD = 0.1  # log-normal observation noise; the fits use sigma = this


def synthetic_group(n: int, seed: int):
    """``n`` untreated curves simulated from the control model of `csc_arm_spec` (truth
    drawn around SYN_TRUTH, fixed seed, tight tolerances), log-normal noise.
    **Returns** ``(group, true z)``."""
    rng = np.random.default_rng(seed)
    z = np.empty((n, 3))
    for j, (name, (med, sd)) in enumerate(SYN_TRUTH.items()):
        if name == "self_renewal":
            u = (med - 0.5) / 0.5
            z[:, j] = np.log(u / (1 - u)) + sd * rng.standard_normal(n)
        else:
            z[:, j] = np.log(med) + sd * rng.standard_normal(n)
    model = fitcsc.ModelConfig(crowding="logistic", species=SPECIES)
    spec = fitjob.csc_arm_spec(model)
    full = predictor(model, spec).spec  # with initial_volume_mm3 free, last
    ts = jnp.asarray(SYN_DAYS)

    @jax.jit
    @jax.vmap
    def volumes(z_):
        sol = fitcsc.simulate(model, full.from_z(z_), None, ts, rtol=1e-10, atol=1e-8)
        return sol.volume_mm3, sol.status

    vol, status = (np.asarray(x) for x in volumes(jnp.asarray(z)))
    assert np.all(status == 0), "synthetic truth failed to simulate"
    vol = vol * np.exp(SYN_NOISE_SD * rng.standard_normal(vol.shape))
    m = SYN_DAYS.size
    subj = np.repeat(np.array([f"syn{i:06d}" for i in range(n)]), m)
    table = fitcsc.TidyTable(np.full(n * m, "synthetic"), np.full(n * m, "untreated"), subj,
                      np.tile(SYN_DAYS, n), vol.ravel())
    batch = fitcsc.make_batch(table, detection_limit_mm3=DETECTION_LIMIT_MM3)
    return Group((), np.arange(n), batch, [fitcsc.Regimen(name="untreated")] * n), z


def scaling_one(n: int, num_starts: int, seed: int) -> dict:
    """Fit ``n`` synthetic curves with `fit_map` (first call: compile and run, then the
    timed warm call); run in a fresh process per ``n`` so that its peak RSS is its
    own."""
    rss0 = peak_rss_mib()
    g, z_true = synthetic_group(n, seed)
    rss_data = peak_rss_mib()
    load0 = load_avg()

    def fit():
        return fitcsc.fit_map(g.pred, g.batch, num_starts=num_starts, sigma=SYN_NOISE_SD,
                              start_scale=START_SCALE, **lm_tolerances()["fitcsc"])

    with CompileStats() as c:
        t = time.perf_counter()
        jax.block_until_ready(fit().z)
        first = time.perf_counter() - t
    t = time.perf_counter()
    r = fit()
    jax.block_until_ready(r.z)
    secs = time.perf_counter() - t
    err = np.abs(np.asarray(r.z) - z_true)
    return {
        "n_curves": n,
        "num_starts": num_starts,
        "n_members": n * num_starts,
        "fit_s": secs,
        "s_per_curve": secs / n,
        "curves_per_s": n / secs,
        "compile_s": c.compile_s,
        "first_call_s": first,
        "status_counts": counts(np.asarray(r.status), fit_status_name),
        "lm_steps_best_start": spread(np.asarray(r.n_steps)),
        "recovery_median_abs_error_in_z": dict(
            zip(g.labels, np.median(err, axis=0).tolist(), strict=True)),
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
                skipped.append({
                    "n_curves": n,
                    "reason": f"predicted {predicted:.0f} s from N={last['n_curves']} "
                    f"({last['s_per_curve']:.4f} s/curve) exceeds the budget of "
                    f"{args.scaling_budget_s:.0f} s on this machine; memory is not the "
                    f"limit (the lanes bound it)"})
                log(f"scaling: skip N={n}: {skipped[-1]['reason']}")
                continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "one.json"
            cmd = [sys.executable, __file__, "--scaling-one", str(n), "--out", str(out),
                   "--ode-rtol", str(args.ode_rtol), "--ode-atol", str(args.ode_atol),
                   "--scaling-starts", str(args.scaling_starts), "--seed", str(args.seed)]
            log(f"scaling: N={n} ...")
            t = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO)
            row = json.loads(out.read_text())
            row["process_wall_s"] = time.perf_counter() - t
        log(f"scaling: N={n}: {row['curves_per_s']:.1f} curves/s, "
            f"peak RSS {row['peak_rss_mib']:.0f} MiB")
        rows.append(row)
    return {"sizes": rows, "skipped": skipped}


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="curves (default: all in the file)")
    ap.add_argument("--n-peer", type=int, default=128,
                    help="curves the scipy peer fits (a fixed random subset of the N)")
    ap.add_argument("--n-peer-fd", type=int, default=16,
                    help="curves of the peer subset also fitted with a finite-difference "
                    "Jacobian (0: skip)")
    ap.add_argument("--num-starts", type=int, default=NUM_STARTS)
    ap.add_argument("--no-cold", action="store_true",
                    help="skip the cold runs (fresh process, empty cache; library and CLI)")
    ap.add_argument("--ode-rtol", type=float, default=ODE_RTOL,
                    help="ODE rtol of both sides (default: csc_predictor's)")
    ap.add_argument("--ode-atol", type=float, default=ODE_ATOL_CELLS,
                    help="ODE atol [cells] of both sides (default: csc_predictor's)")
    ap.add_argument("--data-dir", default=None, help="default: fitcsc.data_dir()")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--scaling", action="store_true",
                    help="run the synthetic scaling curve instead (-> batch_fit_scaling.json)")
    ap.add_argument("--scaling-sizes", default="10,100,1000,10000,100000")
    ap.add_argument("--scaling-starts", type=int, default=1)
    ap.add_argument("--scaling-budget-s", type=float, default=900.0,
                    help="skip a size whose predicted fit time exceeds this")
    ap.add_argument("--scaling-one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cold-one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (24 curves; scaling: N = 10, 100); temp dir unless --out")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.scaling_sizes = [int(x) for x in str(args.scaling_sizes).split(",")]
    if args.quick:
        args.n, args.n_peer, args.n_peer_fd = args.n or 24, min(args.n_peer, 8), 2
        args.scaling_sizes = [10, 100]
        if args.out is None:
            name = "scaling" if args.scaling else "fit"
            args.out = Path(tempfile.gettempdir()) / f"fitcsc-bench-batch-{name}-quick.json"
    if args.out is None:
        args.out = DEFAULT_SCALING_OUT if args.scaling else DEFAULT_OUT
    if min(args.n_peer, args.num_starts) < 1:
        ap.error("--n-peer and --num-starts must be >= 1")
    return args


def environment(load_start, load_samples) -> dict:
    return {
        "device": device_info(),
        "precision": precision(),
        "versions": versions(PACKAGES),
        "load_avg_1_5_15_min": {"start": load_start, "end": load_avg(),
                                "samples_1_min": load_samples},
        "nice": os.nice(0),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "command": command_line(),
        "timestamp": timestamp(),
    }


def workload(groups) -> dict:
    return {
        "model": "the model and per-arm spec of `fitcsc fit` on a tidy file without a "
        "regimen table: fitcsc.ModelConfig(crowding='logistic', drugs=(the arm's "
        "pseudo-drug,)), states S, D; each treated arm a constant drug effect from day 0 "
        "(fitcsc.default_arm_regimens: C = 1 mg/L, EC50 1e-9 mg/L), its class from the "
        "arm name; spec fitcsc.fitjob.csc_arm_spec",
        "groups": {g.cls: {"n_curves": g.n, "drugs_of_group_model": list(g.drugs),
                           "free": list(g.labels),
                           "transforms": {k: repr(v) for k, v in g.pred.spec.transforms},
                           "n_arms": len({g.batch.arm[i] for i in range(g.n)})}
                   for g in groups},
        "fixed": {k: float(v) for k, v in fitjob.CSC_REFERENCE.items()},
        "fixed_note": "CSC_REFERENCE of the fit job: the value of every parameter that a "
        "group does not free, and the reference start (V0: the curve's first observation)",
        "observation_model": f"log-normal, sigma = {SIGMA} fixed; volumes below "
        f"{DETECTION_LIMIT_MM3} mm3 (the zeros) left-censored (M3); both fitters minimise "
        "0.5 sum(r^2) of fitcsc.residuals (= -log-likelihood - a data constant)",
        "starts": f"num_starts Sobol starts as fit_map builds them: z_ref + {START_SCALE} "
        f"(2u - 1), u = scrambled Sobol (seed {START_SEED}) with row 0 = 0.5; z_ref = "
        "the predictor's init_z; the same vectors go to fitcsc (as each member's z_init) "
        "and to scipy (x0)",
    }


def tolerances() -> dict:
    t = lm_tolerances()
    return {
        "ode": {
            "solver_fitcsc": "the paced evaluator: diffrax's Tsit5 tableau and "
            "PIDController, each member at its own pace, steps ending on observation "
            "times and before dose discontinuities; forward sensitivities",
            "solver_peer": "scipy.integrate.RK45 (the solve_ivp RK45 stepper) with dense "
            "output at the observation days, own stepping loop for the step cap",
            "rtol": ODE_RTOL, "atol_cells": ODE_ATOL_CELLS, "max_steps": ODE_MAX_STEPS,
            "error_norm": "RMS over the 2 cell states only (sensitivities ride along on "
            "the primal's steps in both)",
        },
        "optimiser": {
            "fitcsc": t["fitcsc"],
            "fitcsc_what": "fitcsc's one Levenberg-Marquardt (fitcsc._fit.lm), rule "
            f"{TRUST_REGION!r}: MINPACK lmder's scaled step bound, Gauss-Newton inside it, "
            "its shrink rule (first bound 1 x |D z0|, grown when ratio >= 0.5), lmder's "
            "ftol test on Gauss-Newton steps, optimistix's Cauchy test (step in z and "
            "change of residuals below atol + rtol |.|), and the stall test (loss fell by "
            f"<= {STALL_RTOL} |loss| over {STALL_STEPS} accepted steps)",
            "peer": t["peer"],
            "peer_what": "scipy least_squares (MINPACK lmder for 'lm'), x_scale default "
            "(lm: 'jac'); stops when any of ftol (actual and predicted relative reduction "
            "of the cost), xtol (relative step) or gtol passes",
            "steps": "one LM step = one residual + Jacobian evaluation in both (a "
            "rejected trial point counts; the first evaluation too); scipy's nfev counts "
            "evaluations",
        },
    }


def main(argv=None) -> dict:
    global ODE_RTOL, ODE_ATOL_CELLS
    args = parse_args(argv)
    ODE_RTOL, ODE_ATOL_CELLS = args.ode_rtol, args.ode_atol  # both sides read these
    if args.scaling_one is not None:
        row = scaling_one(args.scaling_one, args.scaling_starts, args.seed)
        write_json_atomic(args.out, row)
        return row
    if args.cold_one:
        row = cold_one(args)
        write_json_atomic(args.out, row)
        return row
    load_start = load_avg()
    if args.scaling:
        return main_scaling(args, load_start)
    return main_fit(args, load_start)


def peer_subset(groups, n_peer: int, seed: int) -> list[np.ndarray]:
    """``n_peer`` curves drawn at random from all groups (fixed seed), as indices into
    each group."""
    n = sum(g.n for g in groups)
    pick = np.sort(np.random.default_rng(seed).choice(n, min(n_peer, n), replace=False))
    offsets = np.cumsum([0] + [g.n for g in groups])
    return [pick[(pick >= a) & (pick < b)] - a for a, b in zip(offsets[:-1], offsets[1:],
                                                                strict=True)]


def compare_losses(groups, fits, peer, curves) -> dict:
    """fitcsc's best-start objective against the peer's on the peer's curves."""
    rows = []
    for g in groups:
        pg = peer["per_group"].get(g.cls)
        if pg is None:
            continue
        mask = np.asarray(g.batch.mask)
        for k, i in enumerate(pg["sel"]):
            c = curves[g.cls][i]
            best = fits[g.cls]
            obj_f = float(best["loss"][i]) - objective_constant(c)
            obj_f_np = obs_objective(c, best["log_pred"][i][mask[i]])
            p = pg["fits"][k]
            rows.append({"group": g.cls, "subject": g.batch.subject[i],
                         "n_obs": int(c["day"].size), "fitcsc": obj_f, "fitcsc_np": obj_f_np,
                         "peer": p["starts"][p["best"]]["objective"],
                         "fitcsc_status": fit_status_name(int(best["status"][i])),
                         "fitcsc_all_starts": (fits[g.cls]["all_losses"][i]
                                               - objective_constant(c)).tolist(),
                         "peer_all_starts": [r["objective"] for r in p["starts"]]})
    obj_f = np.array([r["fitcsc"] for r in rows])
    obj_p = np.array([r["peer"] for r in rows])
    le = obj_f <= obj_p + 1e-6 * np.abs(obj_p) + 1e-9
    rel = (obj_f - obj_p) / np.maximum(np.abs(obj_p), 1e-9)
    return {
        "frac_loss_le_peer": float(le.mean()),
        "objective": "0.5 sum(r^2) = FitResult.loss minus the data constant "
        "sum over uncensored points of (log sigma + log(2 pi)/2 + log V_obs)",
        "rule": "fitcsc <= peer + 1e-6 |peer| + 1e-9",
        "n_curves": len(rows),
        "n_fitcsc_le_peer": int(le.sum()),
        "per_group": {g.cls: {"n": int(sum(r["group"] == g.cls for r in rows)),
                              "n_le": int(sum(bool(x) for x, r in zip(le, rows, strict=True)
                                              if r["group"] == g.cls))} for g in groups},
        "n_fitcsc_worse_by_more_than_1e-3_rel": int((rel > 1e-3).sum()),
        "n_fitcsc_worse_by_more_than_1pct": int((rel > 1e-2).sum()),
        "n_fitcsc_better_by_more_than_1e-3_rel": int((rel < -1e-3).sum()),
        "rel_diff_fitcsc_minus_peer": spread(rel),
        "check_loss_vs_numpy_objective_max_abs_diff": float(np.abs(
            obj_f - np.array([r["fitcsc_np"] for r in rows])).max()) if rows else None,
        "fitcsc_worse_than_rule": [
            {k: v for k, v in r.items() if k != "fitcsc_np"} | {"rel_diff": float(d)}
            for r, ok, d in zip(rows, le, rel, strict=True) if not ok],
    }


def main_fit(args, load_start) -> dict:
    path = fitcsc.data_dir(args.data_dir) / Path(*DATA_FILE)
    batch, regs, keep = load_file(path, args.n, args.seed)
    groups = groups_of(batch, regs, keep)
    S = args.num_starts
    n = len(keep)
    u = UnionFit(batch, regs, keep, S)
    log(f"device {jax.devices()[0]}, precision {precision()}, {n} curves, {S} starts, "
        f"groups {[(g.cls, g.n) for g in groups]}, union spec {list(u.labels)}")
    loads = [load_avg()[0]]
    curves = {g.cls: curves_np(g.batch) for g in groups}
    starts = {g.cls: peer_starts(u, g) for g in groups}
    peer_sel = peer_subset(groups, args.n_peer, args.seed + 1)
    start_check = check_starts(u, groups, S)
    residual_check = {}
    for g, sel in zip(groups, peer_sel, strict=True):
        cands = list(sel[:3]) if len(sel) else [0]
        cens = [i for i in range(g.n) if curves[g.cls][i]["censored"].any()][:1]
        residual_check[g.cls] = check_residuals(g, curves[g.cls], starts[g.cls],
                                                list(dict.fromkeys(cands + cens)))
    # the two solvers differ by their discretisation errors: the bound follows rtol
    residual_tol = max(1e-5, 500.0 * ODE_RTOL)
    residual_check["tolerance_residuals"] = residual_tol
    worst = max(c["max_abs_diff_residuals"] for c in residual_check.values()
                if isinstance(c, dict))
    if worst > residual_tol:
        raise RuntimeError(f"peer residuals differ from fitcsc's: {residual_check}")
    log("checks:", json.dumps(start_check), json.dumps(residual_check))

    # ---- the scipy peer (first: it fails fast if it fails)
    log(f"scipy peer (analytic Jacobian): {sum(len(s) for s in peer_sel)} curves ...")
    peer = run_peer(groups, peer_sel, curves, starts)
    log(f"peer: {peer['wall_s']:.1f} s -> {peer['curves_per_s']:.3f} curves/s")
    loads.append(load_avg()[0])
    fd = None
    if args.n_peer_fd:
        fd_sel = [s[: max(1, args.n_peer_fd * len(s) // max(1, len(np.concatenate(peer_sel))))]
                  if len(s) else s for s in peer_sel]
        log(f"scipy peer (finite differences): {sum(len(s) for s in fd_sel)} curves ...")
        fd = run_peer(groups, fd_sel, curves, starts, sensitivities=False, tag="peer-fd")
        loads.append(load_avg()[0])

    # ---- fitcsc, warm (in this process: the first call compiles, the second is timed)
    log(f"fitcsc: fit_map on {n} curves x {S} starts (first call compiles) ...")
    run = run_fitcsc(u)
    loads.append(load_avg()[0])
    res = run["result"]
    log(f"  first call {run['first_call_s']:.1f} s (compile {run['compile']['compile_s']:.1f}"
        f" s), warm {run['warm_s']:.2f} s")
    fits = {g.cls: group_view(u, g, res) for g in groups}

    # ---- cold: a fresh process with an empty compile cache; the CLI cold, then warm
    cold = cli = None
    if not args.no_cold:
        log("fitcsc cold (fresh process, empty compile cache) ...")
        cold = run_cold(args)
        loads.append(load_avg()[0])
        log(f"  {cold['process_wall_s']:.1f} s (compile {cold['compile']['compile_s']:.1f} s, "
            f"{cold['compile']['n_compiles']} compilations)")
        log("fitcsc fit (CLI): empty cache, then warm ...")
        cli = run_cli(args, path)
        loads.append(load_avg()[0])
        log(f"  cold {cli['cold']['process_wall_s']:.1f} s, warm "
            f"{cli['warm']['process_wall_s']:.1f} s")
    rss_fitcsc = peak_rss_mib()

    # ---- ratios on curves per second, and the peer's end-to-end time for all N
    fit_rate = n / run["warm_s"]
    peer_rate = peer["curves_per_s"]
    peer_all_s = n / peer_rate  # the peer's subset is random over all curves
    peer_s_est = sum(g.n * peer["per_group"][g.cls]["wall_s"] / len(peer["per_group"][
        g.cls]["sel"]) for g in groups if g.cls in peer["per_group"])
    losses = compare_losses(groups, fits, peer, curves)
    fd_out = None
    if fd is not None:
        agree = []
        for g in groups:
            if g.cls not in fd["per_group"]:
                continue
            pa, pf = peer["per_group"][g.cls], fd["per_group"][g.cls]
            for k in range(len(pf["sel"])):
                a = pa["fits"][k]["starts"][pa["fits"][k]["best"]]["objective"]
                b = pf["fits"][k]["starts"][pf["fits"][k]["best"]]["objective"]
                agree.append((b - a) / max(abs(a), 1e-9))
        agree = np.asarray(agree)
        an_s = sum(sum(peer["per_group"][c]["per_curve_s"][: len(fd["per_group"][c]["sel"])])
                   for c in fd["per_group"])
        fd_out = {
            "n_curves": fd["n_curves"],
            "wall_s": fd["wall_s"],
            "curves_per_s": fd["curves_per_s"],
            "analytic_on_the_same_curves_s": an_s,
            "fd_over_analytic_time": fd["wall_s"] / an_s,
            "rel_diff_best_objective_fd_minus_analytic": spread(agree),
            "n_fd_worse_by_more_than_1e-6_rel": int((agree > 1e-6).sum()),
            "nfev_all_starts": spread([r["nfev"] for pg in fd["per_group"].values()
                                       for f in pg["fits"] for r in f["starts"]]),
        }
    status = np.asarray(res.status)
    all_p = [r for pg in peer["per_group"].values() for f in pg["fits"] for r in f["starts"]]
    best_p = [f["starts"][f["best"]] for pg in peer["per_group"].values() for f in pg["fits"]]
    mask_all, cens_all = np.asarray(u.batch.mask), np.asarray(u.batch.censored)
    result = {
        "benchmark": "batch_fit",
        "description": "multi-start MAP fits of N real tumour growth curves with the "
        "model and per-arm spec of `fitcsc fit`: fitcsc.fit_map (the one LM, paced "
        "evaluator, fixed-shape lanes; one call, one compiled program for every regimen "
        "shape) vs a scipy least_squares loop on the same residuals, starts and "
        "tolerances; warm (compile excluded), cold (fresh process, empty compile cache, "
        "import + compile + fit) and the CLI",
        "quick": bool(args.quick),
        **workload(groups),
        "union": {"labels": list(u.labels), "drug_slots": list(u.model.drugs),
                  "what": "one ModelConfig with a drug slot per drug kind of the file and "
                  "the union of the per-arm specs; each curve estimates its arm's part "
                  "(free mask), so all curves share one compiled program"},
        "data": {
            "file": str(Path(*DATA_FILE)),
            "source": "Novartis PDXE breast (Gao et al. 2015), via Xeva",
            "n_curves_in_file": batch.n_subjects,
            "selection": "all" if n == batch.n_subjects else
            f"fixed random subset (seed {args.seed})",
            "n_obs_per_curve": spread(mask_all.sum(axis=1)),
            "padded_n_obs": int(mask_all.shape[1]),
            "n_censored_obs": int((cens_all & mask_all).sum()),
            "n_curves_with_censored_obs": int((cens_all & mask_all).any(axis=1).sum()),
        },
        "n_curves": n,
        "num_starts": S,
        "ratio_vs_scipy": fit_rate / peer_rate,
        "ratio_basis": f"curves per second: fitcsc (warm: the second fit_map call in the "
        f"process, compile excluded) on all {n} curves, the peer (analytic Jacobian) on "
        f"a fixed random subset of {peer['n_curves']} (seed {args.seed + 1})",
        "ratio_vs_scipy_cold": (peer_all_s / cold["process_wall_s"]) if cold else None,
        "ratio_cold_basis": "the peer's end-to-end time for the same N curves (N / its "
        "curves per second) over fitcsc's in a fresh process with an empty compile "
        "cache: Python start, import, data, compile and fit (process wall time)",
        "cli_cold_s": cli["cold"]["process_wall_s"] if cli else None,
        "cli_warm_s": cli["warm"]["process_wall_s"] if cli else None,
        "compile_s": cold["compile"]["compile_s"] if cold else run["compile"]["compile_s"],
        "n_compiles": cold["compile"]["n_compiles"] if cold else run["compile"]["n_compiles"],
        "compile_basis": "the cold process's (trace + lowering + XLA compile; every XLA "
        "compilation counted, the small eager ones too)",
        "ratio_vs_scipy_group_weighted": fit_rate / (n / peer_s_est) if peer_s_est else None,
        "frac_loss_le_peer": losses["frac_loss_le_peer"],
        "n_failed": int((status >= fitcsc.FitStatus.SOLVER_FAILURE).sum()),
        "frac_failed": float((status >= fitcsc.FitStatus.SOLVER_FAILURE).mean()),
        "n_not_converged": int((status != fitcsc.FitStatus.CONVERGED).sum()),
        "fitcsc_curves_per_s": fit_rate,
        "fitcsc_warm_s": run["warm_s"],
        "fitcsc_first_call_s": run["first_call_s"],
        "peer_curves_per_s": peer_rate,
        "peer_all_curves_s_estimated": peer_all_s,
        "peer_n_curves": peer["n_curves"],
        "fitcsc": {
            "status_counts_best_start": counts(status, fit_status_name),
            "status_counts_all_starts": counts(np.asarray(res.all_status), fit_status_name),
            "lm_steps_all_starts": spread(np.asarray(res.all_n_steps)),
            "lm_steps_best_start": spread(np.asarray(res.n_steps)),
            "in_process_first_call_compile": run["compile"],
            "lanes": run["lanes"],
            "lanes_what": "the lane driver's loop iterations, services (lanes served at "
            "once), lane-iterations evaluating, waiting to be served and idle, and calls "
            "of the program (the host refills the queue between calls)",
            "cold_process": cold,
            "cli": cli,
            "peak_rss_mib_after_fitcsc": rss_fitcsc,
        },
        "peer": {
            "method": "scipy.optimize.least_squares per curve and start, analytic Jacobian "
            "from the forward sensitivity equations (one augmented RK45 solve per "
            "evaluation); MINPACK 'lm' (trf where a curve has fewer points than parameters)",
            "jacobian": "analytic (forward sensitivities); finite differences timed apart "
            "(peer_finite_differences)",
            "n_curves": peer["n_curves"],
            "wall_s": peer["wall_s"],
            "curves_per_s": peer_rate,
            "per_group": {c: {"n_curves": len(pg["sel"]), "wall_s": pg["wall_s"],
                              "curves_per_s": len(pg["sel"]) / pg["wall_s"],
                              "ode_solves": pg["ode_solves"],
                              "rhs_evaluations": pg["rhs_evaluations"]}
                          for c, pg in peer["per_group"].items()},
            "s_per_curve": spread([s for pg in peer["per_group"].values()
                                   for s in pg["per_curve_s"]]),
            "method_counts": {m: sum(f["method"] == m for pg in peer["per_group"].values()
                                     for f in pg["fits"]) for m in ("lm", "trf")},
            "status_counts": counts([b["status"] for b in best_p], PEER_STATUS.get),
            "status_counts_all_starts": counts([r["status"] for r in all_p], PEER_STATUS.get),
            "n_failed_best": int(sum(b["failed"] for b in best_p)),
            "n_failed_all_starts": int(sum(r["failed"] for r in all_p)),
            "nfev_best_start": spread([b["nfev"] for b in best_p]),
            "nfev_all_starts": spread([r["nfev"] for r in all_p]),
            "estimated_s_for_all_n_group_weighted": peer_s_est,
        },
        "peer_finite_differences": fd_out,
        "loss_comparison": losses,
        "start_check": start_check,
        "residual_check": residual_check,
    }
    result.update(tolerances=tolerances(), peak_rss_mib=peak_rss_mib(),
                  **environment(load_start, loads))
    write_json_atomic(args.out, result)
    log(f"ratio_vs_scipy {result['ratio_vs_scipy']:.1f} ({fit_rate:.1f} vs "
        f"{peer_rate:.3f} curves/s), cold {result['ratio_vs_scipy_cold'] or float('nan'):.1f},"
        f" frac_loss_le_peer {result['frac_loss_le_peer']:.3f}, failed "
        f"{result['n_failed']}/{n}, compile {result['compile_s']:.1f} s -> {args.out}")
    return result


def main_scaling(args, load_start) -> dict:
    res = run_scaling(args)
    g, _ = synthetic_group(2, args.seed)
    result = {
        "benchmark": "batch_fit_scaling",
        "description": "time per curve and peak memory of fitcsc.fit_map on N synthetic "
        "curves, scheduled as the main run (screen, sort by ODE steps, chunks of equal "
        "shape, capped passes), one process per N",
        "quick": bool(args.quick),
        "model": "the control model of csc_arm_spec: ModelConfig(crowding='logistic'), "
        f"free {list(g.labels)}",
        "synthetic": {
            "days": SYN_DAYS.tolist(),
            "truth": {k: {"median": m, "sd": s} for k, (m, s) in SYN_TRUTH.items()},
            "truth_note": "log-normal around the median (self_renewal: normal on the logit "
            "of (p - 0.5) / 0.5)",
            "noise": f"log-normal, SD {SYN_NOISE_SD}; fits use sigma = {SYN_NOISE_SD}",
            "simulated_with": "fitcsc.simulate, rtol 1e-10, atol 1e-8 cells",
            "seed": args.seed,
        },
        "num_starts": args.scaling_starts,
        "chunk_members": args.scaling_chunk,
        "lm_steps_per_pass": args.cap,
        "timing": "compile excluded: every function is first compiled and run on chunk 0 "
        "(first_call_s, compile_s), then the whole run is timed (fit_s, host scheduling "
        "included)",
        **res,
        "tolerances": tolerances(args.cap),
        **environment(load_start, []),
    }
    write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
