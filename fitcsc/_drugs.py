"""The drug catalogue: what each drug does (its class) and its default PK.

A drug's *class* decides which term of the model it drives (DESIGN §2):

- ``"her2"``: HER2 blockade. ``I = C^n / (EC50^n + C^n)`` lowers CSC self-renewal
  ``p`` and bulk proliferation ``v_D``, weighted by the tumour's HER2 dependence.
- ``"chemo"``: cytotoxic kill of cycling cells, ``k_D = k_chemo C(t)``, CSCs spared by
  the factor ``sigma_S``; or, in the reduced form, a log-kill per dose.
- ``"csc"``: CSC-targeted agent, an extra kill rate on CSCs ``k_S += k_csc I``.
- ``"cytostatic"``: any other antiproliferative (endocrine, kinase inhibitors): slows
  every division by ``1 - e I``.

PK values are typical published values or documented assumptions, listed in
``PK_SOURCES``; every one can be overridden per model (`fitcsc.default_params`).
Doses arrive in mg, mg/kg or mg/m2 and are converted to mg with the subject's body
weight and body-surface area. Human defaults: 70 kg, 1.8 m2; mouse: 0.020 kg, 0.0066 m2.
"""

from __future__ import annotations

import dataclasses

from ._pk import OneCompartment, OneCompartmentOral, TwoCompartment

DRUG_CLASSES = ("her2", "chemo", "csc", "cytostatic")
DOSE_UNITS = ("mg", "mg/kg", "mg/m2")
SPECIES = ("human", "mouse")

BODY_WEIGHT_KG = {"human": 70.0, "mouse": 0.020}
BODY_SURFACE_M2 = {"human": 1.8, "mouse": 0.0066}


@dataclasses.dataclass(frozen=True)
class DrugInfo:
    name: str
    drug_class: str
    pk_human: object
    pk_mouse: object
    aliases: tuple[str, ...] = ()


# Mouse trastuzumab: one compartment fitted to the steady state of 4.5 mg/kg weekly
# (Cmax,ss 133, Cmin,ss 72.7 ug/mL; Wong H et al. Clin Cancer Res 2012;18:3846, Table 3):
# k = ln(133/72.7)/7 d -> t1/2 = 8.0 d; V = 4.5 mg/kg (1 - 72.7/133) / 133 mg/L = 0.075 L/kg.
_MOUSE_KG = BODY_WEIGHT_KG["mouse"]
_mab_mouse = OneCompartment(half_life_day=8.0, volume_L=0.075 * _MOUSE_KG)
# Clinical trastuzumab: two-compartment linear, Bruno R et al. Cancer Chemother Pharmacol
# 2005;56:361 (CL 0.225 L/day, V1 2.95 L, k12 0.164/day, k21 0.101/day).
_trastuzumab_human = TwoCompartment(0.225, 2.95, 0.164, 0.101)


def _short(t_half_day, v_l_per_kg, species):
    return OneCompartment(half_life_day=t_half_day, volume_L=v_l_per_kg * BODY_WEIGHT_KG[species])


_CATALOGUE = [
    DrugInfo("trastuzumab", "her2", _trastuzumab_human, _mab_mouse, ("herceptin", "h")),
    # Pertuzumab: 2-cmt, t1/2 about 18 d (label); assumption: trastuzumab-like volumes.
    DrugInfo("pertuzumab", "her2", TwoCompartment(0.235, 3.11, 0.20, 0.14), _mab_mouse),
    DrugInfo("ljm716", "her2", _trastuzumab_human, _mab_mouse, ("ljm716 (anti-her3)",)),
    DrugInfo(
        "lapatinib",
        "her2",
        OneCompartmentOral(1.0, 2200.0, 12.0, 1.0),  # t1/2 ~24 h (label), V/F ~2200 L
        OneCompartmentOral(0.2, 3.0 * _MOUSE_KG, 24.0, 1.0),
    ),
    DrugInfo(
        "neratinib",
        "her2",
        OneCompartmentOral(0.6, 6400.0, 12.0, 1.0),
        OneCompartmentOral(0.2, 5.0 * _MOUSE_KG, 24.0, 1.0),
    ),
    DrugInfo("trastuzumab_emtansine", "her2", TwoCompartment(0.68, 3.13, 0.3, 0.3), _mab_mouse,
             ("t-dm1",)),
    # Chemotherapy: one-compartment effective PK (assumptions: terminal half-lives from
    # the labels, volumes per kg); only the shape of C(t) matters since k_chemo is fitted.
    DrugInfo("paclitaxel", "chemo", _short(0.8, 3.0, "human"), _short(0.15, 3.0, "mouse")),
    DrugInfo("docetaxel", "chemo", _short(0.5, 1.6, "human"), _short(0.1, 1.6, "mouse")),
    DrugInfo("doxorubicin", "chemo", _short(1.25, 25.0, "human"), _short(0.5, 25.0, "mouse"),
             ("adriamycin",)),
    DrugInfo("epirubicin", "chemo", _short(1.4, 23.0, "human"), _short(0.5, 23.0, "mouse")),
    DrugInfo("cyclophosphamide", "chemo", _short(0.3, 0.78, "human"),
             _short(0.05, 0.78, "mouse")),
    DrugInfo("fluorouracil", "chemo", _short(0.01, 0.3, "human"), _short(0.005, 0.3, "mouse"),
             ("5-fu",)),
    DrugInfo("methotrexate", "chemo", _short(0.3, 0.5, "human"), _short(0.05, 0.5, "mouse")),
    DrugInfo("carboplatin", "chemo", _short(0.25, 0.25, "human"), _short(0.05, 0.25, "mouse")),
    # CSC-targeted agents (assumed one-compartment oral PK).
    DrugInfo("gamma_secretase_inhibitor", "csc", OneCompartmentOral(0.3, 100.0, 12.0, 1.0),
             OneCompartmentOral(0.1, 1.0 * _MOUSE_KG, 24.0, 1.0), ("gsi", "mk-0752")),
    DrugInfo("reparixin", "csc", OneCompartmentOral(0.1, 20.0, 24.0, 1.0),
             OneCompartmentOral(0.05, 0.3 * _MOUSE_KG, 24.0, 1.0), ("cxcr1/2 inhibitor",)),
    DrugInfo("metformin", "csc", OneCompartmentOral(0.25, 600.0, 6.0, 0.55),
             OneCompartmentOral(0.1, 3.0 * _MOUSE_KG, 12.0, 0.55)),
    # Endocrine and other cytostatic agents.
    DrugInfo("tamoxifen", "cytostatic", OneCompartmentOral(6.0, 3500.0, 6.0, 1.0),
             OneCompartmentOral(0.5, 20.0 * _MOUSE_KG, 12.0, 1.0)),
    DrugInfo("fulvestrant", "cytostatic", OneCompartment(40.0, 300.0),
             OneCompartment(4.0, 3.0 * _MOUSE_KG)),
]

CATALOGUE: dict[str, DrugInfo] = {}
for _d in _CATALOGUE:
    CATALOGUE[_d.name] = _d
_ALIASES = {a: d.name for d in _CATALOGUE for a in (d.name, *d.aliases)}


def canonical_drug(name: str) -> str | None:
    """The catalogue name of ``name`` (case-insensitive, aliases allowed), else None."""
    return _ALIASES.get(name.strip().lower())


def register_drug(info: DrugInfo) -> None:
    """Add a drug to the catalogue (e.g. a new HER2 blocker with its own PK)."""
    if info.drug_class not in DRUG_CLASSES:
        raise ValueError(f"drug class must be one of {DRUG_CLASSES}, got {info.drug_class!r}")
    CATALOGUE[info.name] = info
    for a in (info.name, *info.aliases):
        _ALIASES[a.lower()] = info.name


def default_pk(name: str, species: str):
    info = CATALOGUE[canonical_drug(name) or name]
    return info.pk_human if species == "human" else info.pk_mouse


def dose_to_mg(dose: float, unit: str, species: str, body_weight_kg=None, bsa_m2=None) -> float:
    """Convert a dose in ``unit`` (mg, mg/kg, mg/m2) to mg for one subject."""
    if unit == "mg":
        return float(dose)
    if unit == "mg/kg":
        w = BODY_WEIGHT_KG[species] if body_weight_kg is None else body_weight_kg
        return float(dose) * w
    if unit == "mg/m2":
        a = BODY_SURFACE_M2[species] if bsa_m2 is None else bsa_m2
        return float(dose) * a
    raise ValueError(f"dose unit must be one of {DOSE_UNITS}, got {unit!r}")
