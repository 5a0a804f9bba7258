"""Trial-level predictions from one CSC model: pCR, cure, DFS and hazard ratios.

A `TrialModel` turns a vector ``z`` of shared, unconstrained parameters into arm-level
endpoints of published HER2+ trials, smoothly, so that pCR counts and adjuvant
outcomes can be fitted together (DESIGN §3) and predicted for any regimen.

Patients (virtual, integrated, never sampled):

- The model has no crowding over the treatment months, so it is linear in its initial
  state: one simulation from one cubic millimetre of tumour gives every patient's
  residual, scaled by her own burden. Burden is log-normal (sd ``burden_sd`` on the
  log scale) and is integrated by Gauss–Hermite quadrature.
- A fraction ``phi`` of tumours does not depend on HER2 (``h_S = h_D = 0``: HER2
  blockade does nothing to them); the rest have the typical dependence.
- Patients differ in *responsiveness* ``r = exp(s eta)``, ``eta ~ N(0, 1)``: it
  multiplies every chemotherapy kill rate and the tumour's turnover (CSC and bulk
  division rates and bulk death rate). Proliferative, high-turnover tumours respond
  more to chemotherapy and to HER2 blockade (which acts on division), which is the
  clinical picture of Ki67-high HER2+ disease. The residual is simulated on a grid of
  ``n_nodes`` values of ``eta`` and interpolated (log scale) onto a fine grid, so
  that the arm rates, which are integrals of nearly step-like functions of ``eta``,
  stay smooth in ``z``.

Per patient (DESIGN §3): ``P(pCR) = exp(-c N_inv(t_s))`` at surgery, with ``c = 1`` for
pCR in breast and nodes and a fitted ``c < 1`` (the breast's share of residual
disease) for breast-only definitions; ``P(cure) = exp(-pi S_res)`` after adjuvant
therapy, with ``pi`` a residual CSC's chance of a lasting lineage and ``S_res`` the
residual CSCs discounted by drug-free growth since the adjuvant start (``S e^{-lambda
t}``, a martingale without drug, so only the drugs' extra killing counts); a non-cured
patient recurs when her surviving lineages regrow at the CSC net rate to
``detection_cells``; ``DFS(t) = P(cure) + (1 - P(cure)) sigmoid((t_rec - t)/w)``.
Adjuvant patients start from a log-normal micrometastatic burden (median
``exp(log_micromet_cells)`` cells, one per trial when several are fitted).

Hazard ratio between two arms: the ratio of cumulative hazards at the trial's median
follow-up, ``log DFS_e(t) / log DFS_c(t)`` (with cure fractions the hazards are not
proportional; this is the Cox estimate's large-sample limit only when they are; the
choice is stated wherever an HR is reported).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._drugs import CATALOGUE
from ._model import ModelConfig, _hill
from ._params import default_params
from ._pk import concentrations, cumulative_exposure, pk_arrays
from ._regimen import Regimen

# Fixed, documented calibration (DESIGN §3; illustrative where the literature is silent).
BASE = dict(
    initial_volume_mm3=1.0,  # unit tumour: every patient is a scaled copy
    initial_csc_fraction=0.01,
    csc_division_rate=0.1,
    self_renewal=0.52,
    bulk_division_rate=0.05,
    bulk_death_rate=0.045,
    carrying_capacity_cells=1e12,  # unused without crowding
    ec50_mg_per_L=10.0,
)
TUMOUR_VOLUME_MM3 = 14000.0  # median primary: a 3-cm sphere
SURGERY_WEEKS = 4.0  # surgery 4 weeks after the last preoperative dose (assumed)
ADJUVANT_WASHOUT_DAYS = 60.0  # residual assessed this long after the last adjuvant dose

# name, transform to the natural scale, natural-scale default (the start of a fit)
PARAMETERS = {
    "log_kill_scale": ("exp", 8.0),  # x each drug's 1-ln-kill-per-median-dose rate
    "logit_her2_csc": ("sigmoid", 0.6),  # epsilon_S
    "logit_her2_bulk": ("sigmoid", 0.9),  # epsilon_D
    "logit_csc_sparing": ("sigmoid", 0.1),  # sigma_S
    "log_turnover": ("exp", 3.0),  # x division and death rates of the typical tumour
    "log_response_sd": ("exp", 0.5),  # s: sd of log responsiveness
    "logit_breast_factor": ("sigmoid", 0.3),  # breast's share of residual (ypT0/is)
    "logit_her2_independent": ("sigmoid", 0.3),  # fraction of tumours with h = 0
    "log_micromet_cells": ("exp", 1e5),  # median residual burden after surgery [cells]
    "log_her2_potency": ("exp", 1.0),  # per HER2 drug (name#drug): C/EC50 multiplier
    "her2_dependence_csc": ("identity", 1.0),  # h_S: 1 for HER2+, lower for HER2-low
    "her2_dependence_bulk": ("identity", 1.0),  # h_D
    # hormone-receptor covariate: HR+ tumours' log responsiveness has mean
    # ``hr_response_shift`` (in units of its sd; HR- tumours: 0) and their
    # HER2-independent fraction has logit ``logit(phi) + hr_her2_independent_shift``
    "hr_response_shift": ("identity", 0.0),
    "hr_her2_independent_shift": ("identity", 0.0),
    # between-patient sd of the log initial CSC fraction (its absolute value is used;
    # 0: every tumour starts at the typical fraction); integrated by Gauss-Hermite
    # over ``n_csc_fraction`` nodes (set automatically when the sd is free)
    "csc_fraction_sd": ("identity", 0.0),
}
MAX_CSC_FRACTION = 0.5  # a patient's initial CSC fraction is capped here
HR_SUBGROUPS = ("HR+", "HR-")
_INV = {"exp": math.log, "sigmoid": lambda p: math.log(p / (1.0 - p)), "identity": float}
_FWD = {"exp": jnp.exp, "sigmoid": jax.nn.sigmoid, "identity": lambda x: x}
BREAST_ONLY = ("ypT0/is",)  # definitions that ignore nodal residual


def to_natural(name: str, value):
    """Map an unconstrained value of parameter ``name`` (or ``name#k``) to its scale."""
    return _FWD[PARAMETERS[name.split("#")[0]][0]](value)


def from_natural(name: str, value: float) -> float:
    return _INV[PARAMETERS[name.split("#")[0]][0]](value)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm to predict: regimen, evaluation day and (for pCR) the definition."""

    name: str
    regimen: Regimen
    setting: str = "neoadjuvant"  # or "adjuvant"
    pcr_definition: str = "ypT0/is ypN0"
    trial: str = ""  # adjuvant: which micrometastatic-burden parameter applies
    volume_mm3: float = TUMOUR_VOLUME_MM3  # median primary tumour volume (neoadjuvant)

    def last_dose_end(self) -> float:
        ev = self.regimen.events()
        return max([e[0] + e[3] for e in ev] or [0.0])

    def eval_day(self) -> float:
        if self.setting == "neoadjuvant":
            return self.last_dose_end() + 7.0 * SURGERY_WEEKS
        return self.last_dose_end() + ADJUVANT_WASHOUT_DAYS


class ExposureGrid(eqx.Module):
    """Per arm: a time grid to the evaluation day and the drug exposure along it.

    The grid is uniform (``step_day``) plus points just before and at each dose
    start, at each infusion end and at 1 h ... 4 days after it, so that fast
    chemotherapy kinetics are resolved; arms are padded to one length by repeating
    the last point (zero-width intervals contribute nothing).
    """

    t: jax.Array  # (arms, L) [day]
    conc: jax.Array  # (arms, drugs, L) [mg/L]
    auc: jax.Array  # (arms, drugs, L) cumulative, exact [mg day/L]


_AFTER = np.asarray([0.0, 1 / 24, 3 / 24, 6 / 24, 0.5, 1.0, 2.0, 4.0])


def exposure_grid(model, params, arms, *, step_day=0.5) -> ExposureGrid:
    """Build the `ExposureGrid` of ``arms`` (host side, once per model)."""
    grids = []
    for a in arms:
        end = a.eval_day()
        pts = [np.linspace(0.0, end, int(np.ceil(end / step_day)) + 1)]
        for t0, _, _, dur in a.regimen.events():
            pts.append(np.asarray([t0 - 1e-6, t0]))
            pts.append(t0 + dur + _AFTER)
        g = np.unique(np.clip(np.concatenate(pts), 0.0, end))
        grids.append(g)
    n = max(len(g) for g in grids)
    t = np.stack([np.concatenate([g, np.full(n - len(g), g[-1])]) for g in grids])
    coefs, rates = pk_arrays(params.pk)
    n_doses = max(1, max(a.regimen.n_doses for a in arms))
    conc, auc = [], []
    at_times = jax.vmap(lambda f, s, u: f(coefs, rates, s, u), in_axes=(None, None, 0))
    for a, ts in zip(arms, t, strict=True):
        sched = a.regimen.to_schedule(model.drugs, max_doses=n_doses)
        conc.append(at_times(concentrations, sched, jnp.asarray(ts)).T)
        auc.append(at_times(cumulative_exposure, sched, jnp.asarray(ts)).T)
    return ExposureGrid(t=jnp.asarray(t), conc=jnp.stack(conc), auc=jnp.stack(auc))


class TrialModel(eqx.Module):
    """Shared-parameter model of trial arms. Build with `TrialModel.build`.

    ``names`` are the free parameters (keys of `PARAMETERS`, ``log_micromet_cells#k``
    per adjuvant trial); everything else is fixed at ``fixed`` (natural scale).
    """

    model: ModelConfig = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    fixed_items: tuple = eqx.field(static=True)
    arm_names: tuple[str, ...] = eqx.field(static=True)
    settings: tuple[str, ...] = eqx.field(static=True)
    trials: tuple[str, ...] = eqx.field(static=True)
    base: object
    base_kill: jax.Array  # per drug, 1 ln-kill per median dose [L/(mg day)]
    grid: ExposureGrid
    eval_day: jax.Array
    volume_mm3: jax.Array
    breast_only: jax.Array
    trial_index: jax.Array  # adjuvant arm -> micrometastatic parameter
    n_nodes: int = eqx.field(static=True, default=21)
    eta_max: float = eqx.field(static=True, default=4.0)
    refine: int = eqx.field(static=True, default=16)
    n_burden: int = eqx.field(static=True, default=24)
    n_csc_fraction: int = eqx.field(static=True, default=1)
    burden_sd: float = eqx.field(static=True, default=1.0)
    micromet_sd: float = eqx.field(static=True, default=1.5)
    detection_cells: float = eqx.field(static=True, default=1e9)
    timing_sd_day: float = eqx.field(static=True, default=90.0)

    @classmethod
    def build(cls, arms: list[Arm], names=None, *, fixed=None, base_kill=None,
              drugs=None, **options) -> TrialModel:
        """Model for ``arms``. ``base_kill`` ``{drug: rate}`` overrides the calibration
        (a saved fit passes its own); ``drugs`` fixes the drug slots (default: the
        arms' drugs in order of appearance)."""
        if not arms:
            raise ValueError("TrialModel needs at least one arm")
        drugs = tuple(drugs or dict.fromkeys(d for a in arms for d in a.regimen.drugs))
        model = ModelConfig(crowding="none", drugs=drugs, species="human")
        base = default_params(model, **BASE)
        trials = tuple(dict.fromkeys(a.trial for a in arms if a.setting == "adjuvant"))
        if names is None:
            names = [n for n, (f, _) in PARAMETERS.items()
                     if n != "log_micromet_cells" and f != "identity"]
            names += [f"log_her2_potency#{d}" for d in drugs
                      if CATALOGUE[d].drug_class == "her2"]
            names.remove("log_her2_potency")
            names += [f"log_micromet_cells#{t}" for t in trials]
        fixed = {n: v for n, (_, v) in PARAMETERS.items()} | dict(fixed or {})
        kill = calibrate_kill(model, base, [a.regimen for a in arms])
        if base_kill:
            kill = np.asarray([base_kill.get(d, k) for d, k in zip(drugs, kill, strict=True)])
        for a in arms:
            for d in a.regimen.drugs:
                if CATALOGUE[d].drug_class not in ("her2", "chemo"):
                    raise ValueError(
                        f"arm {a.name!r}: TrialModel supports HER2 blockers and "
                        f"chemotherapy; {d!r} is a {CATALOGUE[d].drug_class!r} drug")
        grid = exposure_grid(model, base, arms)
        if (("csc_fraction_sd" in names or fixed["csc_fraction_sd"] != 0)
                and options.get("n_csc_fraction", 1) < 2):  # a spread needs nodes
            options = dict(options, n_csc_fraction=7)
        t_idx = [trials.index(a.trial) if a.setting == "adjuvant" else 0 for a in arms]
        return cls(model=model, names=tuple(names), fixed_items=tuple(fixed.items()),
                   arm_names=tuple(a.name for a in arms),
                   settings=tuple(a.setting for a in arms), trials=trials,
                   base=base, base_kill=jnp.asarray(kill), grid=grid,
                   eval_day=jnp.asarray([a.eval_day() for a in arms]),
                   volume_mm3=jnp.asarray([a.volume_mm3 for a in arms], float),
                   breast_only=jnp.asarray([a.pcr_definition in BREAST_ONLY for a in arms]),
                   trial_index=jnp.asarray(t_idx), **options)

    # ------------------------------------------------------------------ parameters
    @property
    def fixed(self) -> dict:
        """Natural-scale values of every parameter not in ``names``."""
        return dict(self.fixed_items)

    def z0(self) -> jax.Array:
        """The start: every free parameter at its default (natural scale)."""
        return jnp.asarray([from_natural(n, self.fixed[n.split("#")[0]])
                            for n in self.names], float)

    def natural(self, z) -> dict:
        """``{name: value}`` on the natural scale, free and fixed together."""
        out = dict(self.fixed)
        for i, n in enumerate(self.names):
            out[n] = to_natural(n, z[i])
        return out

    def _value(self, z, name, trial=None):
        keys = [name]
        if trial is not None and self.trials:
            keys.insert(0, f"{name}#{self.trials[trial]}")
        for key in keys:
            if key in self.names:
                return to_natural(key, z[self.names.index(key)])
        fixed = self.fixed
        return jnp.asarray(next((fixed[k] for k in keys if k in fixed), fixed[name]), float)

    def typical(self, z):
        """Typical patient's `CSCParams` (unit tumour) under ``z``."""
        v = lambda n: self._value(z, n)  # noqa: E731
        turn = v("log_turnover")
        b = self.base
        return eqx.tree_at(
            lambda p: (p.kill_rate, p.her2_efficacy_csc, p.her2_efficacy_bulk,
                       p.csc_sparing, p.csc_division_rate, p.bulk_division_rate,
                       p.bulk_death_rate),
            b, (self.base_kill * v("log_kill_scale"), v("logit_her2_csc"),
                v("logit_her2_bulk"), v("logit_csc_sparing"), b.csc_division_rate * turn,
                b.bulk_division_rate * turn, b.bulk_death_rate * turn))

    def potency(self, z) -> jax.Array:
        """Per-drug HER2 potency multipliers (1 for drugs that are not HER2 blockers)."""
        out = []
        for d in self.model.drugs:
            key = f"log_her2_potency#{d}"
            if key in self.names:
                out.append(to_natural(key, z[self.names.index(key)]))
            else:
                fixed = self.fixed
                out.append(jnp.asarray(fixed.get(key, fixed["log_her2_potency"]), float))
        return jnp.stack(out) if out else jnp.zeros((0,))

    def blockade(self, z):
        """HER2 blockade ``B`` on the grid (Bliss over blockers) and ``int_0^t B``."""
        g, p = self.grid, self.base
        her2 = jnp.asarray(self.model.drug_mask("her2"))[None, :, None]
        conc = g.conc * self.potency(z)[None, :, None]
        inh = _hill(conc, p.ec50_mg_per_L[None, :, None], p.hill[None, :, None])
        b = 1.0 - jnp.prod(jnp.where(her2, 1.0 - inh, 1.0), axis=1)
        steps = 0.5 * jnp.diff(g.t, axis=1) * (b[:, 1:] + b[:, :-1])
        b_int = jnp.concatenate([jnp.zeros((b.shape[0], 1)), jnp.cumsum(steps, axis=1)],
                                axis=1)
        return b, b_int

    def nodes(self):
        return jnp.linspace(-self.eta_max, self.eta_max, self.n_nodes)

    def patient(self, z, eta):
        """Patient with responsiveness ``exp(s eta)``."""
        p = self.typical(z)
        r = jnp.exp(self._value(z, "log_response_sd") * eta)
        return eqx.tree_at(
            lambda q: (q.kill_rate, q.csc_division_rate, q.bulk_division_rate,
                       q.bulk_death_rate, q.csc_death_rate, q.her2_dependence_csc,
                       q.her2_dependence_bulk),
            p, (p.kill_rate * r, p.csc_division_rate * r, p.bulk_division_rate * r,
                p.bulk_death_rate * r, p.csc_death_rate * r,
                jnp.asarray(self._value(z, "her2_dependence_csc"), float),
                jnp.asarray(self._value(z, "her2_dependence_bulk"), float)))

    # ------------------------------------------------------------------ simulation
    def residuals(self, z, *, her2_dependent: bool = True, log_fraction_shift=0.0):
        """Per arm and node: ``(log N_inv, log S_res, log pi, lambda, status)``.

        ``log_fraction_shift``: the patient's initial CSC fraction is the typical one
        times ``exp(log_fraction_shift)`` (capped at `MAX_CSC_FRACTION`).

        Log cells at the arm's evaluation day per mm3 of initial tumour, from the exact
        solution of the linear SD model along the arm's exposure grid (see
        `exposure_grid`): ``S = S0 exp(A_S)`` and ``D = exp(A_D) (D0 + int b S
        exp(-A_D))``, where the rate integrals ``A`` are exact (closed-form AUCs, and
        the HER2 blockade integrated on the grid) and the production integral uses a
        log-linear (exponential) interpolant on each grid interval.
        """
        g = self.grid
        p = self.typical(z)
        blockade, blockade_int = self.blockade(z)
        s_kill = self._value(z, "log_kill_scale")
        h_s, h_d = self._value(z, "her2_dependence_csc"), self._value(z, "her2_dependence_bulk")
        if not her2_dependent:  # the HER2-independent subpopulation
            h_s, h_d = 0.0 * h_s, 0.0 * h_d
        f0 = jnp.minimum(self.base.initial_csc_fraction * jnp.exp(log_fraction_shift),
                         MAX_CSC_FRACTION)
        cells = self.model.cells_per_mm3
        log_s0, log_d0 = jnp.log(f0 * cells), jnp.log((1.0 - f0) * cells)
        kb = self.base_kill * s_kill  # (n_drugs,)
        kill_int = jnp.einsum("j,ajt->at", kb, g.auc)  # int k_D / r  (arms, grid)
        t = g.t

        def one_node(eta):
            r = jnp.exp(self._value(z, "log_response_sd") * eta)
            vs, vd = p.csc_division_rate * r, p.bulk_division_rate * r
            dd, ds = p.bulk_death_rate * r, p.csc_death_rate * r
            pp, es, ed = p.self_renewal, p.her2_efficacy_csc * h_s, p.her2_efficacy_bulk * h_d
            a_s = (vs * (2 * pp - 1) - ds) * t - 2 * pp * vs * es * blockade_int \
                - p.csc_sparing * r * kill_int
            a_d = (vd - dd) * t - vd * ed * blockade_int - r * kill_int
            log_b = jnp.log(2 * vs) + jnp.log1p(-pp + pp * es * blockade)
            log_f = log_b + a_s - a_d  # production integrand, log, (arms, grid)
            m = jnp.max(log_f, axis=1, keepdims=True)
            lf = log_f - m
            dl = lf[:, 1:] - lf[:, :-1]
            # int over an interval of a log-linear interpolant: h (e^b - e^a) / (b - a),
            # written with both exponents <= 0 so nothing overflows
            small = jnp.abs(dl) < 1e-6
            e0, e1 = jnp.exp(lf[:, :-1]), jnp.exp(lf[:, 1:])
            mean = jnp.where(small, e0 * (1.0 + 0.5 * dl),
                             (e1 - e0) / jnp.where(small, 1.0, dl))
            integral = jnp.sum(jnp.diff(t, axis=1) * mean, axis=1)
            log_int = jnp.log(jnp.maximum(integral, 1e-300)) + m[:, 0]
            log_d = a_d[:, -1] + jnp.logaddexp(log_d0, log_s0 + log_int)
            log_s = log_s0 + a_s[:, -1]
            pi = jnp.maximum(1.0 - ((1 - pp) * vs + ds) / (pp * vs), 0.0)
            lam = vs * (2 * pp - 1) - ds
            log_inv = jnp.logaddexp(log_s, log_d) - jnp.log(cells)
            return (log_inv, log_s - jnp.log(cells), jnp.broadcast_to(
                jnp.log(jnp.maximum(pi, 1e-300)), log_s.shape),
                jnp.broadcast_to(lam, log_s.shape))

        outs = jax.vmap(one_node, out_axes=1)(self.nodes())
        finite = jnp.all(jnp.isfinite(jnp.stack(outs[:2])), axis=0)
        status = jnp.where(finite, 0, 3).astype(jnp.int32)
        return (*outs, status)

    # ------------------------------------------------------------------ integration
    def _fine(self, values, shift=0.0):
        """Interpolate node values (..., n_nodes) onto the fine grid; with the weights of
        a normal responsiveness ``eta ~ N(shift, 1)`` (truncated to the grid)."""
        nodes = self.nodes()
        fine = jnp.linspace(-self.eta_max, self.eta_max,
                            (self.n_nodes - 1) * self.refine + 1)
        w = jnp.exp(-0.5 * (fine - shift) ** 2)
        w = w / jnp.sum(w)
        interp = jnp.vectorize(lambda v: jnp.interp(fine, nodes, v), signature="(n)->(m)")
        return interp(values), w

    def _burden(self, sd):
        x, w = np.polynomial.hermite_e.hermegauss(self.n_burden)
        return jnp.asarray(sd * x), jnp.asarray(w / w.sum())

    def _fraction_nodes(self, z):
        """Gauss-Hermite nodes (log-fraction shifts) and weights of the initial CSC
        fraction's between-patient spread (one node at 0 when ``n_csc_fraction == 1``)."""
        x, w = np.polynomial.hermite_e.hermegauss(self.n_csc_fraction)
        sd = jnp.abs(self._value(z, "csc_fraction_sd"))
        return [sd * xi for xi in x], [float(wi) for wi in w / w.sum()]

    def _weighted(self, phi, dependent, independent, w):
        return ([(wk * (1.0 - phi), r) for wk, r in zip(w, dependent, strict=True)]
                + [(wk * phi, r) for wk, r in zip(w, independent, strict=True)])

    def mixture(self, z):
        """``[(weight, residuals)]`` over the HER2-dependent tumours and the fraction
        ``phi`` (``logit_her2_independent``) that do not depend on HER2 (h = 0); with a
        CSC-fraction spread, each at every fraction node: the HER2-dependent parts
        first, then the independent ones, node by node."""
        phi = self._value(z, "logit_her2_independent")
        shifts, w = self._fraction_nodes(z)
        dep = [self.residuals(z, log_fraction_shift=s) for s in shifts]
        ind = [self.residuals(z, her2_dependent=False, log_fraction_shift=s) for s in shifts]
        return self._weighted(phi, dep, ind, w)

    def subgroup(self, z, parts, name):
        """A `mixture` list re-weighted for hormone-receptor subgroup ``name`` (``"HR+"``
        or ``"HR-"``; None: unchanged) and the subgroup's responsiveness shift:
        ``(parts, shift)``. HR- tumours are the reference; HR+ tumours' responsiveness
        is shifted by ``hr_response_shift`` and their HER2-independent fraction by
        ``hr_her2_independent_shift`` on the logit scale."""
        if name is None:
            return parts, 0.0
        _, w = self._fraction_nodes(z)
        if name not in HR_SUBGROUPS or len(parts) != 2 * len(w):
            raise ValueError(f"subgroup must be one of {HR_SUBGROUPS} (with a mixture), "
                             f"got {name!r}")
        dep, ind = [r for _, r in parts[:len(w)]], [r for _, r in parts[len(w):]]
        phi = self._value(z, "logit_her2_independent")
        if name == "HR-":
            return self._weighted(phi, dep, ind, w), 0.0
        logit = jnp.log(phi) - jnp.log1p(-phi) + self._value(z, "hr_her2_independent_shift")
        return (self._weighted(jax.nn.sigmoid(logit), dep, ind, w),
                self._value(z, "hr_response_shift"))

    def pcr_pair(self, z, res=None, subgroup=None):
        """Per arm: pCR rate in breast and nodes, breast-only pCR rate, status.

        ``P = E[exp(-c V0 R)]`` over responsiveness (fine grid), burden
        (Gauss-Hermite) and the HER2-independent fraction, with ``c = 1`` and ``c =
        c_breast``. ``res``: one `residuals` output (no mixture) or a `mixture` list.
        ``subgroup``: ``"HR+"`` / ``"HR-"`` for a hormone-receptor subgroup (see
        `subgroup`; needs the mixture), None for the whole population.
        """
        parts = [(1.0, res)] if res is not None else self.mixture(z)
        c_b = self._value(z, "logit_breast_factor")
        x, wx = self._burden(self.burden_sd)
        total, breast, status = 0.0, 0.0, 0
        parts = res if isinstance(res, list) else parts
        parts, shift = self.subgroup(z, parts, subgroup)
        for weight, r in parts:
            fine, w = self._fine(r[0] + jnp.log(self.volume_mm3)[:, None], shift)

            def rate(log_c, fine=fine, w=w):
                u = fine[..., None] + x + log_c
                p = jnp.sum(wx * jnp.exp(-jnp.exp(jnp.minimum(u, 40.0))), axis=-1)
                return jnp.sum(w * p, axis=-1)

            total = total + weight * rate(0.0)
            breast = breast + weight * rate(jnp.log(c_b))
            status = jnp.maximum(status, jnp.max(r[4], axis=1))
        return total, breast, status

    def pcr_rates(self, z, res=None, subgroup=None):
        """Arm pCR rates under each arm's own definition, and status."""
        total, breast, status = self.pcr_pair(z, res, subgroup)
        return jnp.where(self.breast_only, breast, total), status

    def dfs(self, z, days_after_start, res=None):
        """Arm DFS at ``days_after_start`` (days since the adjuvant start), cure rates.

        Averaged over the HER2-independent fraction unless ``res`` is given.
        **Returns:** ``(dfs (n_arms, n_days), cure (n_arms,), status (n_arms,))``.
        """
        parts = [(1.0, res)] if res is not None else self.mixture(z)
        parts = res if isinstance(res, list) else parts
        dfs, cure, status = 0.0, 0.0, 0
        for weight, r in parts:
            d, c, s = self._dfs_one(z, days_after_start, r)
            dfs, cure = dfs + weight * d, cure + weight * c
            status = jnp.maximum(status, s)
        return dfs, cure, status

    def _dfs_one(self, z, days_after_start, res):
        _, log_s, log_pi, lam, status = res
        micromet = jnp.stack([self._value(z, "log_micromet_cells", k)
                              for k in range(max(1, len(self.trials)))])
        log_m = jnp.log(micromet[self.trial_index] / self.model.cells_per_mm3)
        f_s, w = self._fine(log_s + log_m[:, None])
        f_pi, _ = self._fine(log_pi)
        f_lam, _ = self._fine(lam)
        x, wx = self._burden(self.micromet_sd)
        log_res = f_s[..., None] + x  # (arms, fine, burden)
        # expected lasting lineages: pi S e^{-lambda t} is conserved by drug-free
        # growth (a martingale of the branching process), so only the drug's extra
        # killing since day 0 lowers it, whatever the evaluation day
        log_founders = f_pi[..., None] + log_res - (f_lam * self.eval_day[:, None])[..., None]
        founders = jnp.exp(jnp.minimum(log_founders, 40.0))
        cure = jnp.exp(-founders)
        lam_pos = jnp.maximum(f_lam, 1e-6)[..., None]
        # regrowth at the CSC net rate from the residual at the evaluation day; a
        # residual already above detection recurred earlier (back-extrapolated)
        grow = (jnp.log(self.detection_cells) - log_res) / lam_pos
        t_rec = self.eval_day[:, None, None] + grow
        days = jnp.asarray(days_after_start, float)
        still = jax.nn.sigmoid((t_rec[..., None] - days) / self.timing_sd_day)
        per = cure[..., None] + (1.0 - cure[..., None]) * still
        wt = (w[:, None] * wx[None, :])[..., None]
        dfs = jnp.sum(per * wt, axis=(1, 2))
        cure_rate = jnp.sum(cure * wt[..., 0], axis=(1, 2))
        return dfs, cure_rate, jnp.max(status, axis=1)


def hazard_ratio(dfs_e, dfs_c):
    """Cumulative-hazard ratio ``log DFS_e / log DFS_c`` (see the module docstring)."""
    return jnp.log(jnp.clip(dfs_e, 1e-12, 1 - 1e-12)) / jnp.log(
        jnp.clip(dfs_c, 1e-12, 1 - 1e-12))


def calibrate_kill(model, params, regimens) -> np.ndarray:
    """Per-drug chemo kill rate giving one ln-kill per median dose [L/(mg day)].

    The median is over every dose of that drug in ``regimens``; drugs that are not
    chemotherapy get 0. A fitted ``kill_scale`` multiplies all of them.
    """
    coefs, rates = pk_arrays(params.pk)
    auc_per_mg = np.asarray(jnp.sum(coefs / rates, axis=1))
    kill = np.zeros(len(model.drugs))
    for j, d in enumerate(model.drugs):
        amounts = [e[2] for r in regimens for e in r.events("human") if e[1] == d]
        if CATALOGUE[d].drug_class == "chemo" and amounts:
            kill[j] = 1.0 / (float(np.median(amounts)) * auc_per_mg[j])
    return kill
