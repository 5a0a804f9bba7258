"""`fitcsc.simulate` against an independent NumPy/SciPy implementation.

The reference below is written from the equations of DESIGN §2 and the `fitcsc._model.family`
docstring; it shares no code with fitcsc beyond reading parameter values:

- drug concentrations by closed-form superposition over the doses (one-compartment
  bolus ``D/V e^{-k t}``, zero-order infusion, two-compartment macro-constants with
  ``alpha, beta`` from the eigenvalues of the rate matrix, Bateman oral absorption);
  dose amounts converted from mg/kg and mg/m2 here, not by `Regimen`;
- the vector field with states kept by name;
- `scipy.integrate.solve_ivp` (DOP853, rtol 1e-12) run piecewise between every dose,
  infusion end and observation time, so each piece is smooth; log-kill chemotherapy
  jumps are applied between pieces, after recording observations at the dose time
  (observations at a dose time are pre-dose).

Every model variant, with and without drugs, must agree to a relative error of 1e-6 in
every state and in volume.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp
from scipy.linalg import expm

import fitcsc

MAX_REL_ERR = 1e-6
SIM_TOL = dict(rtol=1e-10, atol=1e-8)

# Subject size for dose conversion (fitcsc._model.drugs docstring).
BODY_WEIGHT_KG = {"human": 70.0, "mouse": 0.020}
BSA_M2 = {"human": 1.8, "mouse": 0.0066}
DRUG_CLASS = {
    "trastuzumab": "her2", "lapatinib": "her2", "paclitaxel": "chemo",
    "gamma_secretase_inhibitor": "csc", "fulvestrant": "cytostatic", "tamoxifen": "cytostatic",
}


# ============================== reference PK ==============================

def _two_cmt_macro(pk):
    """``(alpha, beta, A, B)`` with ``C = dose/V1 (A e^{-alpha t} + B e^{-beta t})``."""
    v1 = float(pk.central_volume_L)
    k10 = float(pk.clearance_L_per_day) / v1
    k12, k21 = float(pk.k12_per_day), float(pk.k21_per_day)
    rate_matrix = np.array([[-(k10 + k12), k21], [k12, -k21]])
    beta, alpha = np.sort(-np.linalg.eigvals(rate_matrix).real)
    return alpha, beta, (alpha - k21) / (alpha - beta), (k21 - beta) / (alpha - beta)


def pk_kinetics(pk):
    """A PK module as plain numbers: ``("oral", F, k_a, k, V)`` or ``("linear", terms)``
    with ``terms = [(c [1/L], lambda [1/day]), ...]`` the bolus response ``sum c e^{-lambda t}``.
    """
    name = type(pk).__name__
    if name == "OneCompartmentOral":
        return ("oral", float(pk.bioavailability), float(pk.absorption_rate),
                math.log(2.0) / float(pk.half_life_day), float(pk.volume_L))
    if name == "OneCompartment":
        return ("linear", [(1.0 / float(pk.volume_L), math.log(2.0) / float(pk.half_life_day))])
    if name == "TwoCompartment":
        alpha, beta, a, b = _two_cmt_macro(pk)
        v1 = float(pk.central_volume_L)
        return ("linear", [(a / v1, alpha), (b / v1, beta)])
    raise NotImplementedError(name)


def dose_conc(kinetics, amount_mg, duration_day, tau, infusing):
    """Concentration [mg/L] ``tau`` days after the start of one dose (``tau >= 0``).

    ``infusing`` says which branch of a zero-order infusion applies (tau < duration):
    passed in rather than tested so that a piece between breakpoints stays smooth.
    """
    if kinetics[0] == "oral":  # Bateman: F D k_a / (V (k_a - k)) (e^{-k t} - e^{-k_a t})
        assert duration_day == 0.0
        _, f, ka, k, v = kinetics
        return f * amount_mg * ka / (v * (ka - k)) * (math.exp(-k * tau) - math.exp(-ka * tau))
    terms = kinetics[1]
    if duration_day == 0.0:  # bolus
        return amount_mg * sum(c * math.exp(-lam * tau) for c, lam in terms)
    rate = amount_mg / duration_day  # mg/day
    if infusing:  # R c/lam (1 - e^{-lam tau})
        return rate * sum(c / lam * -math.expm1(-lam * tau) for c, lam in terms)
    # after the end: the amount at the end decays, R c/lam (1 - e^{-lam T}) e^{-lam (tau - T)}
    return rate * sum(c / lam * -math.expm1(-lam * duration_day)
                      * math.exp(-lam * (tau - duration_day)) for c, lam in terms)


def concentrations_in_piece(kinetics, doses, a, b):
    """``conc(t)`` for ``t`` in the piece ``[a, b]`` with no dose event inside it."""
    mid = 0.5 * (a + b)
    active = [(slot, t_d, amt, dur, mid < t_d + dur) for slot, t_d, amt, dur in doses
              if t_d <= a]

    def conc(t):
        c = np.zeros(len(kinetics))
        for slot, t_d, amt, dur, infusing in active:
            c[slot] += dose_conc(kinetics[slot], amt, dur, t - t_d, infusing)
        return c

    return conc


# ============================== reference model ==============================

@dataclasses.dataclass(frozen=True)
class Ref:
    """Model structure, scalar parameters and per-drug data as plain Python values."""

    names: tuple
    crowding: str
    plasticity: str
    n_chain: int
    log_kill: bool
    classes: tuple
    p: dict
    drug: dict
    cells_per_mm3: float

    @staticmethod
    def build(model, params):
        names = ["S", "D"]
        names += ["P"] * model.progenitor + ["Q"] * model.dormancy
        names += ["R"] * model.resistant_clone + ["L"] * (model.plasticity == "signal")
        names += [f"X{i + 1}" for i in range(model.damage_chain)]
        scalar = {f.name: float(getattr(params, f.name)) for f in dataclasses.fields(params)
                  if f.name != "pk" and np.ndim(getattr(params, f.name)) == 0}
        per_drug = {k: np.asarray(getattr(params, k), float) for k in
                    ("ec50_mg_per_L", "hill", "kill_rate", "log_kill_per_dose",
                     "csc_kill_rate", "cytostatic_efficacy")}
        return Ref(tuple(names), model.crowding, model.plasticity, model.damage_chain,
                   model.chemo_mode == "log_kill", tuple(DRUG_CLASS[d] for d in model.drugs),
                   scalar, per_drug, model.cells_per_mm3)

    def initial_state(self):
        p = self.p
        n0 = p["initial_volume_mm3"] * self.cells_per_mm3
        stem = p["initial_csc_fraction"] * n0
        f_r = p["resistant_fraction"] if "R" in self.names else 0.0
        f_q = p["initial_dormant_fraction"] if "Q" in self.names else 0.0
        f_p = p["initial_progenitor_fraction"] if "P" in self.names else 0.0
        y = {"S": stem * (1 - f_r) * (1 - f_q), "Q": stem * (1 - f_r) * f_q, "R": stem * f_r,
             "P": f_p * n0, "D": n0 - stem - f_p * n0}
        return np.array([y.get(n, 0.0) for n in self.names])

    def rhs(self, y_arr, conc):
        p, dr = self.p, self.drug
        y = dict(zip(self.names, y_arr, strict=True))
        S, D, P, Q, R, L = (y.get(n, 0.0) for n in "SDPQRL")
        X = [y[f"X{i + 1}"] for i in range(self.n_chain)]
        N = S + D + P + Q + R + sum(X)
        K = p["carrying_capacity_cells"]
        g = {"none": 1.0, "logistic": 1.0 - N / K, "gompertz": math.log(K / N)}[self.crowding]

        # drug effects
        B_free, G, k_D, k_csc = 1.0, 1.0, 0.0, 0.0
        for j, cls in enumerate(self.classes):
            c, n, ec50 = conc[j], dr["hill"][j], dr["ec50_mg_per_L"][j]
            hill = c**n / (ec50**n + c**n)
            if cls == "her2":
                B_free *= 1.0 - hill
            elif cls == "cytostatic":
                G *= 1.0 - dr["cytostatic_efficacy"][j] * hill
            elif cls == "csc":
                k_csc += dr["csc_kill_rate"][j] * hill
            elif cls == "chemo" and not self.log_kill:
                k_D += dr["kill_rate"][j] * c
        B = 1.0 - B_free
        k_S = p["csc_sparing"] * k_D + k_csc

        v_S, p_self, d_S = p["csc_division_rate"], p["self_renewal"], p["csc_death_rate"]
        p_eff = p_self * (1 - p["her2_efficacy_csc"] * p["her2_dependence_csc"] * B)
        v_D = p["bulk_division_rate"] * (1 - p["her2_efficacy_bulk"]
                                         * p["her2_dependence_bulk"] * B)
        omega = {"none": 0.0, "constant": p["plasticity_rate"],
                 "signal": p["plasticity_rate"] * (1 + p["signal_gain"] * L)}[self.plasticity]

        d = {}
        d["S"] = v_S * G * (2 * p_eff - 1) * S * g - d_S * S + omega * D - k_S * S
        from_stem = 2 * v_S * G * (1 - p_eff) * S * g + 2 * v_S * (1 - p_self) * R * g
        if "Q" in self.names:
            d["S"] += -p["dormancy_entry_rate"] * S + p["dormancy_exit_rate"] * Q
            d["Q"] = (p["dormancy_entry_rate"] * S - p["dormancy_exit_rate"] * Q
                      - p["dormant_death_rate"] * Q)
        if "R" in self.names:
            d["R"] = v_S * (2 * p_self - 1) * R * g - d_S * R
        if "P" in self.names:
            v_P, q = p["progenitor_division_rate"], p["progenitor_self_renewal"]
            d["P"] = (from_stem + v_P * G * (2 * q - 1) * P * g - p["progenitor_death_rate"] * P
                      - k_D * P)
            into_D = 2 * v_P * G * (1 - q) * P * g
        else:
            into_D = from_stem
        d["D"] = into_D + v_D * G * D * g - p["bulk_death_rate"] * D - omega * D - k_D * D
        if "L" in self.names:
            d["L"] = p["signal_production"] * S / self.cells_per_mm3 - p["signal_decay_rate"] * L
        if self.n_chain:
            k_tr = p["damage_transit_rate"]
            d["X1"] = k_S * S + k_D * (D + P) - k_tr * X[0]
            for i in range(1, self.n_chain):
                d[f"X{i + 1}"] = k_tr * (X[i - 1] - X[i])
        return np.array([d[n] for n in self.names])

    def log_kill_jump(self, y_arr, slot):
        lk = self.drug["log_kill_per_dose"][slot]
        y = dict(zip(self.names, y_arr, strict=True))
        surviving = {"S": math.exp(-self.p["csc_sparing"] * lk), "D": math.exp(-lk),
                     "P": math.exp(-lk)}
        killed = sum(y[n] * (1 - f) for n, f in surviving.items() if n in y)
        for n, f in surviving.items():
            if n in y:
                y[n] *= f
        if self.n_chain:
            y["X1"] += killed
        return np.array([y[n] for n in self.names])


def reference_solution(model, params, doses, ts, t0):
    """Reference states at ``ts`` (shape ``(n_t, n_states)``) and their names."""
    ref = Ref.build(model, params)
    kinetics = [pk_kinetics(pk) for pk in params.pk]
    ts = np.asarray(ts, float)
    t_end = max(ts[-1], t0)
    events = {t for _, t, _, _ in doses} | {t + dur for _, t, _, dur in doses if dur > 0}
    breaks = sorted({t0, t_end, *ts} | {t for t in events if t0 < t < t_end})
    kills = [(t, slot) for slot, t, _, _ in doses
             if ref.log_kill and ref.classes[slot] == "chemo" and t0 <= t <= t_end]
    cells = np.array([0.0 if n == "L" else 1.0 for n in ref.names])
    atol = 1e-12 * cells + 1e-15 * (1 - cells)  # cells, or the dimensionless signal

    y = ref.initial_state()
    out = np.full((len(ts), len(ref.names)), np.nan)
    for i, a in enumerate(breaks):
        out[ts == a] = y  # pre-dose
        for _, slot in sorted(k for k in kills if k[0] == a):
            y = ref.log_kill_jump(y, slot)
        if i + 1 == len(breaks):
            break
        b = breaks[i + 1]
        conc = concentrations_in_piece(kinetics, doses, a, b)
        sol = solve_ivp(lambda t, y_, conc=conc: ref.rhs(y_, conc(t)), (a, b), y,
                        method="DOP853", rtol=1e-12, atol=atol)
        assert sol.success, sol.message
        y = sol.y[:, -1]
    assert np.all(np.isfinite(out))
    return out, ref.names


# ============================== cases ==============================

@dataclasses.dataclass(frozen=True)
class Dose:
    """One line of a regimen, mirrored by a `fitcsc.DoseLine`."""

    drug: str
    dose: float
    unit: str
    start_day: float = 0.0
    interval_day: float = 0.0
    n_doses: int = 1
    infusion_hours: float = 0.0


def expand_doses(lines, drugs, species):
    """``[(slot, time_day, amount_mg, duration_day)]`` for the reference."""
    per_unit = {"mg": 1.0, "mg/kg": BODY_WEIGHT_KG[species], "mg/m2": BSA_M2[species]}
    return [(drugs.index(line.drug), line.start_day + i * line.interval_day,
             line.dose * per_unit[line.unit], line.infusion_hours / 24.0)
            for line in lines for i in range(line.n_doses)]


MOUSE_TRASTUZUMAB = (Dose("trastuzumab", 10.0, "mg/kg", 0.0, 7.0, 4),)
HUMAN_PACLITAXEL_TRASTUZUMAB = (
    Dose("paclitaxel", 80.0, "mg/m2", 0.0, 7.0, 4, infusion_hours=1.0),
    Dose("trastuzumab", 4.0, "mg/kg", 0.0, infusion_hours=1.5),  # loading dose
    Dose("trastuzumab", 2.0, "mg/kg", 7.0, 7.0, 3, infusion_hours=0.5),
)
MOUSE_LAPATINIB = (Dose("lapatinib", 100.0, "mg/kg", 0.0, 1.0, 21),)
MOUSE_GSI = (Dose("gamma_secretase_inhibitor", 50.0, "mg/kg", 0.0, 1.0, 14),)
MOUSE_FULVESTRANT = (Dose("fulvestrant", 200.0, "mg/kg", 0.0, 7.0, 4),)
MOUSE_PACLITAXEL = (Dose("paclitaxel", 20.0, "mg/kg", 0.0, 7.0, 4),)
MOUSE_TAMOXIFEN = (Dose("tamoxifen", 20.0, "mg/kg", 1.0, 1.0, 20),)
MAX_DOSES = 48  # every schedule is padded to this length (padding must be a no-op)

# Drug-effect values that make every drug's effect visible (checked in the test).
EFFECTS = dict(ec50_mg_per_L=20.0, hill=1.0, kill_rate=0.5, csc_kill_rate=2.0,
               cytostatic_efficacy=0.7, log_kill_per_dose=1.5)
# The mouse single-agent sets share one model holding all four drugs (one compile per
# crowding instead of four); each set doses only its own drug, the others stay at C = 0.
MOUSE_PANEL = ("trastuzumab", "lapatinib", "gamma_secretase_inhibitor", "fulvestrant")
PANEL_EFFECTS = dict(ec50_mg_per_L=[20.0, 5.0, 1.0, 20.0], hill=[2.0, 1.0, 1.0, 1.0])
PACLITAXEL_MOUSE = (("paclitaxel",), "mouse", MOUSE_PACLITAXEL, {})
DRUG_SETS = {  # name: (model drugs, species, regimen, per-drug overrides)
    "none": ((), "mouse", (), {}),
    "trastuzumab_mouse_weekly": (MOUSE_PANEL, "mouse", MOUSE_TRASTUZUMAB, PANEL_EFFECTS),
    "paclitaxel_infusion+trastuzumab_human": (("paclitaxel", "trastuzumab"), "human",
                                              HUMAN_PACLITAXEL_TRASTUZUMAB,
                                              dict(kill_rate=[2.0, 0.0])),
    "lapatinib_oral_daily": (MOUSE_PANEL, "mouse", MOUSE_LAPATINIB, PANEL_EFFECTS),
    "csc_agent_gsi": (MOUSE_PANEL, "mouse", MOUSE_GSI, PANEL_EFFECTS),
    "cytostatic_fulvestrant": (MOUSE_PANEL, "mouse", MOUSE_FULVESTRANT, PANEL_EFFECTS),
}
MOUSE_ALL = (("trastuzumab", "paclitaxel", "gamma_secretase_inhibitor", "tamoxifen"), "mouse",
             MOUSE_TRASTUZUMAB + MOUSE_PACLITAXEL + MOUSE_GSI + MOUSE_TAMOXIFEN,
             dict(ec50_mg_per_L=[20.0, 1.0, 1.0, 0.05]))
EXTENSIONS = dict(
    progenitor_division_rate=0.6, progenitor_self_renewal=0.4, progenitor_death_rate=0.05,
    dormancy_entry_rate=0.1, dormancy_exit_rate=0.05, dormant_death_rate=0.01,
    plasticity_rate=0.02, signal_production=0.02, signal_decay_rate=0.5, signal_gain=2.0,
    damage_transit_rate=0.4, resistant_fraction=0.1, initial_progenitor_fraction=0.2,
    initial_dormant_fraction=0.2,
)
ALL_ON = dict(progenitor=True, dormancy=True, plasticity="signal", resistant_clone=True,
              damage_chain=3)
# name: (model configuration, drug set, t0); t0 None = ts[0] = -5, else ts start at -2.5
CASES = {
    f"{crowding}-{name}": (dict(crowding=crowding), drug_set, None)
    for crowding in ("none", "logistic", "gompertz") for name, drug_set in DRUG_SETS.items()
}
CASES.update({
    "progenitor-logistic-paclitaxel": (dict(crowding="logistic", progenitor=True),
                                       PACLITAXEL_MOUSE, None),
    "dormancy-gompertz-paclitaxel": (dict(crowding="gompertz", dormancy=True),
                                     PACLITAXEL_MOUSE, -5.0),
    "plasticity_constant-none-untreated": (dict(plasticity="constant"), DRUG_SETS["none"],
                                           None),
    "plasticity_signal-logistic-trastuzumab": (
        dict(crowding="logistic", plasticity="signal"),
        (("trastuzumab",), "mouse", MOUSE_TRASTUZUMAB, {}), None),
    "resistant_clone-none-paclitaxel+trastuzumab_human": (
        dict(resistant_clone=True), DRUG_SETS["paclitaxel_infusion+trastuzumab_human"], None),
    "damage_chain3-logistic-paclitaxel": (dict(crowding="logistic", damage_chain=3),
                                          PACLITAXEL_MOUSE, None),
    "log_kill-none-paclitaxel+trastuzumab_human": (
        dict(chemo_mode="log_kill"), DRUG_SETS["paclitaxel_infusion+trastuzumab_human"], None),
    "log_kill+damage_chain3-gompertz-paclitaxel": (
        dict(crowding="gompertz", chemo_mode="log_kill", damage_chain=3), PACLITAXEL_MOUSE,
        -5.0),
    "all_on-logistic-four_drugs": (dict(crowding="logistic", **ALL_ON), MOUSE_ALL, None),
    "all_on+log_kill-gompertz-four_drugs": (dict(crowding="gompertz", chemo_mode="log_kill",
                                                 **ALL_ON), MOUSE_ALL, -5.0),
})

# Observation times: pre-treatment from day -5, every dose day, infusion ends (human),
# a few times between doses; the first dose is at day 0.
TS = np.unique(np.concatenate([
    [-5.0, -2.5, 0.0, 1.0 / 24.0, 1.5 / 24.0, 0.3, 1.0, 2.0, 3.5, 5.0, 6.0],
    np.arange(7.0, 29.0, 7.0), [7.0 + 0.5 / 24.0, 9.0, 13.0, 16.5, 20.0, 24.0, 30.0, 35.0],
]))


def _setup(case):
    config, (drugs, species, lines, drug_overrides), t0 = CASES[case]
    model = fitcsc.ModelConfig(drugs=drugs, species=species, **config)
    params = fitcsc.default_params(model, initial_volume_mm3=100.0, initial_csc_fraction=0.05,
                                   carrying_capacity_cells=2e9,
                                   **{**EXTENSIONS, **EFFECTS, **drug_overrides})
    ts = TS if t0 is None else TS[1:]  # with an explicit t0 = -5, start observing at -2.5
    t0 = float(ts[0]) if t0 is None else t0
    doses = expand_doses(lines, drugs, species)
    return model, params, lines, doses, ts, t0


def _simulate(case):
    model, params, lines, doses, ts, t0 = _setup(case)
    schedule = None
    if lines:
        regimen = fitcsc.Regimen(tuple(fitcsc.DoseLine(*dataclasses.astuple(d))
                                       for d in lines))
        schedule = regimen.to_schedule(model.drugs, species=model.species,
                                       max_doses=MAX_DOSES)
    kwargs = {} if t0 == ts[0] else dict(t0=t0)
    sol = fitcsc.simulate(model, params, schedule, jnp.asarray(ts), **SIM_TOL, **kwargs)
    return schedule, jax.block_until_ready(sol)


def _simulate_all(cases):
    return {case: _simulate(case) for case in cases}


@pytest.fixture(scope="module")
def simulations(request):
    """``case -> (schedule, solution)``, compiled ahead in two threads.

    Compiling `simulate` for each model dominates this file's run time; XLA compiles
    without holding the GIL, so the selected cases are started at once, two at a time,
    while the references run in the main thread. Cases sharing a model run in one task so
    that the model compiles once.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers already run in parallel
        yield _simulate
        return
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.name.startswith("test_simulate_matches_scipy_reference[")]
    groups = {}
    for case in selected:
        config, (drugs, species, *_), t0 = CASES[case]
        groups.setdefault(repr((sorted(config.items()), drugs, species, t0)), []).append(case)
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {}
    for cases in groups.values():
        futures.update(dict.fromkeys(cases, pool.submit(_simulate_all, cases)))
    yield lambda case: futures[case].result()[case]
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("case", list(CASES))
def test_simulate_matches_scipy_reference(case, simulations):
    model, params, lines, doses, ts, t0 = _setup(case)
    expected, names = reference_solution(model, params, doses, ts, t0)
    schedule, sol = simulations(case)
    assert int(sol.status) == fitcsc.Status.SUCCESS
    assert sol.states.dtype == jnp.float64
    if lines:  # the reference converts doses itself; both must describe the same events
        ours = sorted((t, slot, amount, dur) for slot, t, amount, dur in doses)
        real = np.asarray(schedule.mask)
        theirs = sorted(zip(*(np.asarray(getattr(schedule, f))[real].tolist() for f in
                              ("time_day", "drug", "amount_mg", "duration_day")), strict=True))
        np.testing.assert_allclose(theirs, ours, rtol=1e-14)

    assert set(names) == set(model.state_names)
    got = np.stack([np.asarray(sol.states)[:, model.index(n)] for n in names], axis=1)
    floor = np.array([1e-9 if n == "L" else 1.0 for n in names])  # 1 cell
    rel_states = np.abs(got - expected) / np.maximum(np.abs(expected), floor)
    cells = [i for i, n in enumerate(names) if n != "L"]
    volume = expected[:, cells].sum(axis=1) / model.cells_per_mm3
    rel_volume = np.abs(np.asarray(sol.volume_mm3) - volume) / volume
    err = max(rel_states.max(), rel_volume.max())
    print(f"\n{case}: max rel err {err:.2e} ({int(sol.num_steps)} steps)")
    assert err < MAX_REL_ERR, (case, dict(zip(names, rel_states.max(axis=0), strict=True)),
                               rel_volume.max())

    if doses:  # the drugs must matter, or the comparison proves little
        untreated, _ = reference_solution(model, params, [], ts, t0)
        s = names.index("S")  # a CSC agent may leave the volume alone for a while
        effect = max(np.abs(np.log(expected[:, s] / untreated[:, s])).max(), np.abs(
            np.log(volume * model.cells_per_mm3 / untreated[:, cells].sum(axis=1))).max())
        assert effect > 0.05, (case, effect)


# ============================== the reference itself ==============================

def test_reference_pk_against_matrix_exponential_and_quadrature():
    """The two-compartment macro-constants and infusion branches of `dose_conc`."""
    pk = fitcsc.TwoCompartment(0.225, 2.95, 0.164, 0.101)
    k10 = 0.225 / 2.95
    m = np.array([[-(k10 + 0.164), 0.101], [0.164, -0.101]])
    for tau in (0.0, 0.3, 2.0, 17.0, 60.0):
        bolus = 100.0 * expm(m * tau)[0, 0] / 2.95  # central amount / V1
        assert dose_conc(pk_kinetics(pk), 100.0, 0.0, tau, False) == pytest.approx(bolus, rel=1e-12)
        # infusion of 100 mg over 0.5 day: integral of the bolus response over the box
        infused, _ = quad(lambda s, tau=tau: 200.0 * expm(m * (tau - s))[0, 0] / 2.95, 0.0,
                          min(tau, 0.5), epsabs=0, epsrel=1e-13)
        assert dose_conc(pk_kinetics(pk), 100.0, 0.5, tau, tau < 0.5) == pytest.approx(
            infused, rel=1e-10, abs=1e-300)
    oral = fitcsc.OneCompartmentOral(0.2, 0.06, 24.0, 0.8)
    k = math.log(2.0) / 0.2
    for tau in (0.05, 1.0):  # gut -> central ODE solved by hand: Bateman function
        gut_central = expm(np.array([[-24.0, 0.0], [24.0, -k]]) * tau) @ [0.8 * 2.0, 0.0]
        assert dose_conc(pk_kinetics(oral), 2.0, 0.0, tau, False) == pytest.approx(
            gut_central[1] / 0.06, rel=1e-12)
