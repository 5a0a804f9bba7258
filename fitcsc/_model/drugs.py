"""The drug catalogue: what each drug does (its class) and its default PK.

A drug's *class* decides which term of the model it drives (DESIGN §2):

- ``"her2"``: HER2 blockade. ``I = C^n / (EC50^n + C^n)`` lowers CSC self-renewal
  ``p`` and bulk proliferation ``v_D``, weighted by the tumour's HER2 dependence.
- ``"chemo"``: cytotoxic kill of cycling cells, ``k_D = k_chemo C(t)``, CSCs spared by
  the factor ``sigma_S``; or, in the reduced form, a log-kill per dose.
- ``"csc"``: CSC-targeted agent, an extra kill rate on CSCs ``k_S += k_csc I``.
- ``"cytostatic"``: any other antiproliferative (endocrine, kinase inhibitors): slows
  every division by ``1 - e I``.

PK values are published label values or documented assumptions, each drug's in its
``DrugInfo.source``; every one can be overridden per model (`fitcsc.default_params`), and
a user drug catalogue file (`fitcsc._io.drug_catalogue.load_drug_catalogue`, ``fitcsc
--drug-catalogue FILE``) adds drugs or replaces their PK. Antibody-drug conjugates
(T-DM1, T-DXd) name their payload (DM1, DXd), a chemotherapy-class drug with the ADC's
PK that the regimen readers dose beside the ADC
(`fitcsc._io.regimen_table.payload_lines`).
Doses arrive in mg, mg/kg or mg/m2 and are converted to mg with the subject's body
weight and body-surface area. Human defaults: 70 kg, 1.8 m2; mouse: 0.020 kg, 0.0066 m2.
"""

from __future__ import annotations

import dataclasses
import math

from .pk import OneCompartment, OneCompartmentOral, TwoCompartment

DRUG_CLASSES = ("her2", "chemo", "csc", "cytostatic")
DOSE_UNITS = ("mg", "mg/kg", "mg/m2")
SPECIES = ("human", "mouse")

BODY_WEIGHT_KG = {"human": 70.0, "mouse": 0.020}
BODY_SURFACE_M2 = {"human": 1.8, "mouse": 0.0066}


@dataclasses.dataclass(frozen=True)
class DrugInfo:
    """One catalogue drug: its class, default PK per species and where they come from.

    ``payload`` names the catalogue drug that an antibody-drug conjugate carries (its
    cytotoxic payload, dosed as ``payload_mass_fraction`` of each ADC dose; see
    `fitcsc._io.regimen_table.payload_lines`). A PK of None means "not known for that
    species": using the drug for that species is refused.
    """

    name: str
    drug_class: str
    pk_human: object
    pk_mouse: object
    aliases: tuple[str, ...] = ()
    source: str = ""  # where the class and PK values come from (label, paper, assumption)
    payload: str | None = None  # ADC: catalogue name of the conjugated payload
    payload_mass_fraction: float = 0.0  # ADC: payload mass per mass of ADC [-]


# Mouse trastuzumab: one compartment fitted to the steady state of 4.5 mg/kg weekly
# (Cmax,ss 133, Cmin,ss 72.7 ug/mL; Wong H et al. Clin Cancer Res 2012;18:3846, Table 3):
# k = ln(133/72.7)/7 d -> t1/2 = 8.0 d; V = 4.5 mg/kg (1 - 72.7/133) / 133 mg/L = 0.075 L/kg.
_MOUSE_KG = BODY_WEIGHT_KG["mouse"]
_HUMAN_KG = BODY_WEIGHT_KG["human"]
_HUMAN_M2 = BODY_SURFACE_M2["human"]
_mab_mouse = OneCompartment(half_life_day=8.0, volume_L=0.075 * _MOUSE_KG)
_MAB_MOUSE_SOURCE = ("mouse: trastuzumab's (t1/2 8.0 d, V 0.075 L/kg from the 4.5 mg/kg weekly "
                     "steady state of Wong et al. Clin Cancer Res 2012;18:3846)")
# Clinical trastuzumab: two-compartment linear, Bruno R et al. Cancer Chemother Pharmacol
# 2005;56:361 (CL 0.225 L/day, V1 2.95 L, k12 0.164/day, k21 0.101/day).
_trastuzumab_human = TwoCompartment(0.225, 2.95, 0.164, 0.101)
# Half-lives scale with body weight to the power 0.25 (allometry): a drug without a
# published mouse PK gets t1/2_mouse = t1/2_human (0.020 kg / 70 kg)^0.25 = 0.13 t1/2_human
# and the human volume per kg. An assumption, written in each such drug's source.
ALLOMETRIC_TIME_FACTOR = (BODY_WEIGHT_KG["mouse"] / BODY_WEIGHT_KG["human"]) ** 0.25
_ALLOMETRIC = "mouse: allometric assumption (t1/2 x (0.02/70)^0.25, same volume per kg)"


def _short(t_half_day, v_l_per_kg, species):
    return OneCompartment(half_life_day=t_half_day, volume_L=v_l_per_kg * BODY_WEIGHT_KG[species])


def ka_for_tmax(t_half_day: float, tmax_day: float) -> float:
    """Absorption rate ka [1/day] of a one-compartment oral model whose concentration
    peaks at ``tmax_day``: ``tmax = ln(ka/k)/(ka - k)``, solved by bisection on the
    branch ka > k when ``tmax < 1/k``, else on ka < k (flip-flop)."""
    k = math.log(2.0) / t_half_day

    def tmax(ka):
        return math.log(ka / k) / (ka - k)

    lo, hi = (k * (1 + 1e-9), 1e6 * k) if tmax_day < 1.0 / k else (1e-6 * k, k * (1 - 1e-9))
    for _ in range(200):  # tmax decreases with ka on both branches
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if tmax(mid) > tmax_day else (lo, mid)
    return math.sqrt(lo * hi)


def _iv(t_half_h, volume_L, *, mouse=None):
    """Human one-compartment IV PK from a label t1/2 [h] and volume [L], and the mouse
    PK (given, or allometric)."""
    human = OneCompartment(t_half_h / 24.0, volume_L)
    if mouse is None:
        mouse = OneCompartment(t_half_h / 24.0 * ALLOMETRIC_TIME_FACTOR,
                               volume_L / _HUMAN_KG * _MOUSE_KG)
    return human, mouse


def _oral(t_half_h, volume_L, tmax_h, bioavailability=1.0):
    """Human one-compartment oral PK from a label t1/2 [h], (apparent) volume [L] and
    Tmax [h]; the mouse PK allometric (both times scaled, same volume per kg)."""
    f = ALLOMETRIC_TIME_FACTOR
    ka = ka_for_tmax(t_half_h / 24.0, tmax_h / 24.0)
    return (OneCompartmentOral(t_half_h / 24.0, volume_L, ka, bioavailability),
            OneCompartmentOral(t_half_h / 24.0 * f, volume_L / _HUMAN_KG * _MOUSE_KG,
                               ka / f, bioavailability))


# Antibody-drug conjugates: the payload's exposure is the conjugated payload, so it has
# the ADC's PK and a dose of (payload mass fraction) x (ADC dose).
_tdm1 = OneCompartment(4.0, 3.13)  # Kadcyla label: t1/2 about 4 d, V 3.13 L (CL 0.68 L/day)
_tdxd = OneCompartment(5.7, 2.68)  # Enhertu label: t1/2 5.7 d, central volume 2.68 L
_TDM1_SOURCE = ("human: Kadcyla (ado-trastuzumab emtansine) label, CL 0.68 L/day, t1/2 about "
                "4 d, V 3.13 L (one compartment with the label t1/2); " + _MAB_MOUSE_SOURCE)
_TDXD_SOURCE = ("human: Enhertu (fam-trastuzumab deruxtecan) label, t1/2 5.7 d, central volume "
                "2.68 L (one compartment); " + _MAB_MOUSE_SOURCE)

_CATALOGUE = [
    DrugInfo("trastuzumab", "her2", _trastuzumab_human, _mab_mouse, ("herceptin", "h"),
             source="human: 2-cmt, Bruno et al. Cancer Chemother Pharmacol 2005;56:361 (CL "
             "0.225 L/day, V1 2.95 L; k12 0.164, k21 0.101 /day from DESIGN.md, terminal t1/2 "
             "28.5 d as published); " + _MAB_MOUSE_SOURCE),
    DrugInfo("pertuzumab", "her2", TwoCompartment(0.235, 3.11, 0.20, 0.14), _mab_mouse,
             ("perjeta",), source="human: 2-cmt, t1/2 about 18 d (Perjeta label); volumes "
             "assumed trastuzumab-like; " + _MAB_MOUSE_SOURCE),
    DrugInfo("ljm716", "her2", _trastuzumab_human, _mab_mouse, ("ljm716 (anti-her3)",),
             source="anti-HER3 IgG1 (PDXE arm): assumption, trastuzumab's PK in both species"),
    DrugInfo(
        "lapatinib",
        "her2",
        OneCompartmentOral(1.0, 2200.0, 12.0, 1.0),  # t1/2 ~24 h (label), V/F ~2200 L
        OneCompartmentOral(0.2, 3.0 * _MOUSE_KG, 24.0, 1.0),
        ("tykerb",),
        source="human: Tykerb label, effective t1/2 about 24 h; V/F 2200 L and ka assumed; "
        "mouse: assumption (t1/2 0.2 d, V 3 L/kg)",
    ),
    DrugInfo(
        "neratinib",
        "her2",
        OneCompartmentOral(0.6, 6400.0, 12.0, 1.0),
        OneCompartmentOral(0.2, 5.0 * _MOUSE_KG, 24.0, 1.0),
        ("nerlynx",),
        source="human: Nerlynx label, t1/2 7-17 h (14.4 h used), V/F about 6400 L; ka assumed; "
        "mouse: assumption (t1/2 0.2 d, V 5 L/kg)",
    ),
    # HER2-directed antibody-drug conjugates: HER2 blockade by the antibody, plus the
    # payload (a chemotherapy-class drug of its own, see `_regimen_table.payload_lines`).
    DrugInfo("trastuzumab_emtansine", "her2", *(_tdm1, _mab_mouse),
             ("t-dm1", "tdm1", "kadcyla", "ado-trastuzumab emtansine"), source=_TDM1_SOURCE,
             payload="dm1", payload_mass_fraction=3.5 * 738.3 / 148_500.0),
    DrugInfo("trastuzumab_deruxtecan", "her2", *(_tdxd, _mab_mouse),
             ("t-dxd", "tdxd", "enhertu", "ds-8201", "ds-8201a", "trastuzumab deruxtecan",
              "fam-trastuzumab deruxtecan"), source=_TDXD_SOURCE,
             payload="dxd", payload_mass_fraction=8.0 * 493.5 / 156_000.0),
    DrugInfo("dm1", "chemo", _tdm1, _mab_mouse, ("emtansine", "mertansine"),
             source="payload of trastuzumab_emtansine (maytansinoid, microtubule inhibitor): "
             "conjugated, so T-DM1's PK; dose = 3.5 DM1 per antibody x 738.3 g/mol / 148.5 "
             "kDa = 1.74% of the T-DM1 dose (DAR 3.5, Kadcyla label)"),
    DrugInfo("dxd", "chemo", _tdxd, _mab_mouse, ("deruxtecan",),
             source="payload of trastuzumab_deruxtecan (topoisomerase I inhibitor): conjugated, "
             "so T-DXd's PK; dose = 8 DXd per antibody x 493.5 g/mol / about 156 kDa = 2.5% "
             "of the T-DXd dose (DAR about 8, Enhertu label; ADC mass assumed)"),
    # Chemotherapy: one-compartment effective PK (assumptions: terminal half-lives from
    # the labels, volumes per kg); only the shape of C(t) matters since k_chemo is fitted.
    DrugInfo("paclitaxel", "chemo", _short(0.8, 3.0, "human"), _short(0.15, 3.0, "mouse"),
             ("taxol",), source="assumption: one compartment, t1/2 0.8 d (human), 0.15 d "
             "(mouse), V 3 L/kg"),
    DrugInfo("docetaxel", "chemo", _short(0.5, 1.6, "human"), _short(0.1, 1.6, "mouse"),
             ("taxotere",), source="assumption: one compartment, t1/2 0.5 d (human), 0.1 d "
             "(mouse), V 1.6 L/kg"),
    DrugInfo("doxorubicin", "chemo", _short(1.25, 25.0, "human"), _short(0.5, 25.0, "mouse"),
             ("adriamycin",), source="assumption: one compartment, t1/2 1.25 d (human), 0.5 d "
             "(mouse), V 25 L/kg"),
    DrugInfo("epirubicin", "chemo", _short(1.4, 23.0, "human"), _short(0.5, 23.0, "mouse"),
             source="assumption: one compartment, t1/2 1.4 d (human), 0.5 d (mouse), V 23 L/kg"),
    DrugInfo("cyclophosphamide", "chemo", _short(0.3, 0.78, "human"),
             _short(0.05, 0.78, "mouse"), source="assumption: one compartment, t1/2 0.3 d "
             "(human), 0.05 d (mouse), V 0.78 L/kg"),
    DrugInfo("fluorouracil", "chemo", _short(0.01, 0.3, "human"), _short(0.005, 0.3, "mouse"),
             ("5-fu",), source="assumption: one compartment, t1/2 0.01 d (human), 0.005 d "
             "(mouse), V 0.3 L/kg"),
    DrugInfo("methotrexate", "chemo", _short(0.3, 0.5, "human"), _short(0.05, 0.5, "mouse"),
             source="assumption: one compartment, t1/2 0.3 d (human), 0.05 d (mouse), V 0.5 L/kg"),
    DrugInfo("carboplatin", "chemo", _short(0.25, 0.25, "human"), _short(0.05, 0.25, "mouse"),
             ("paraplatin",), source="human: Paraplatin label, free platinum t1/2 2.6-5.9 h "
             "(6 h used), V about 16 L (0.25 L/kg); mouse: assumption (t1/2 0.05 d)"),
    DrugInfo("cisplatin", "chemo", *_iv(0.5, 11.5 * _HUMAN_M2), ("cddp", "platinol"),
             source="human: cisplatin label, parent drug t1/2 about 0.5 h (20-30 min after a "
             "bolus), Vss 11-12 L/m2 (11.5 used, x 1.8 m2); " + _ALLOMETRIC),
    DrugInfo("gemcitabine", "chemo",
             *_iv(68.0 / 60.0, 50.0 * _HUMAN_M2,
                  mouse=OneCompartment(42.5 / 60.0 / 24.0, 1.4 * _MOUSE_KG)),
             ("gemzar",), source="human: Gemzar label, t1/2 42-94 min for short infusions "
             "(68 min used), V 50 L/m2; mouse: t1/2 42.5 min, Vss 1.4 L/kg after IV 76 nmol/g "
             "(Biochem Pharmacol 2020;180:114127, Table 3)"),
    DrugInfo("eribulin", "chemo", *_iv(40.0, 78.5 * _HUMAN_M2), ("halaven",),
             source="human: Halaven label, t1/2 about 40 h, V 43-114 L/m2 (78.5 used); "
             + _ALLOMETRIC),
    DrugInfo("vinorelbine", "chemo", *_iv(35.7, 33.0 * _HUMAN_KG), ("navelbine",),
             source="human: Navelbine label, terminal t1/2 27.7-43.6 h (35.7 used), Vss "
             "25.4-40.1 L/kg (33 used); " + _ALLOMETRIC),
    DrugInfo("capecitabine", "chemo", *_oral(0.75, 0.3 * _HUMAN_KG, 1.5), ("xeloda",),
             source="oral prodrug of 5-FU; human: Xeloda label, t1/2 about 0.75 h (capecitabine "
             "and 5-FU), Tmax 1.5 h; V/F assumed as fluorouracil's 0.3 L/kg; " + _ALLOMETRIC),
    # PARP inhibitors: their kill needs replication (trapped PARP breaks forks), so they
    # act on cycling cells like chemotherapy, class "chemo".
    DrugInfo("olaparib", "chemo", *_oral(14.9, 158.0, 1.5), ("lynparza",),
             source="PARP inhibitor, replication-dependent kill (class chemo); human: Lynparza "
             "label (tablets), t1/2 14.9 h, V/F 158 L, Tmax 1.5 h; " + _ALLOMETRIC),
    DrugInfo("talazoparib", "chemo", *_oral(90.0, 420.0, 1.5), ("talzenna",),
             source="PARP inhibitor, replication-dependent kill (class chemo); human: Talzenna "
             "label, t1/2 90 h, V/F 420 L, Tmax 1-2 h (1.5 used); " + _ALLOMETRIC),
    # CSC-targeted agents (assumed one-compartment oral PK).
    DrugInfo("gamma_secretase_inhibitor", "csc", OneCompartmentOral(0.3, 100.0, 12.0, 1.0),
             OneCompartmentOral(0.1, 1.0 * _MOUSE_KG, 24.0, 1.0), ("gsi", "mk-0752"),
             source="assumption: one-compartment oral (t1/2 0.3 d human, 0.1 d mouse)"),
    DrugInfo("reparixin", "csc", OneCompartmentOral(0.1, 20.0, 24.0, 1.0),
             OneCompartmentOral(0.05, 0.3 * _MOUSE_KG, 24.0, 1.0), ("cxcr1/2 inhibitor",),
             source="assumption: one-compartment oral (t1/2 0.1 d human, 0.05 d mouse)"),
    DrugInfo("metformin", "csc", OneCompartmentOral(0.25, 600.0, 6.0, 0.55),
             OneCompartmentOral(0.1, 3.0 * _MOUSE_KG, 12.0, 0.55),
             source="assumption: one-compartment oral, F 0.55 (t1/2 0.25 d human, 0.1 d mouse)"),
    # Endocrine, CDK4/6 and other cytostatic agents.
    DrugInfo("tamoxifen", "cytostatic", OneCompartmentOral(6.0, 3500.0, 6.0, 1.0),
             OneCompartmentOral(0.5, 20.0 * _MOUSE_KG, 12.0, 1.0),
             source="assumption: one-compartment oral (t1/2 6 d human, 0.5 d mouse)"),
    DrugInfo("fulvestrant", "cytostatic", OneCompartment(40.0, 300.0),
             OneCompartment(4.0, 3.0 * _MOUSE_KG), ("faslodex",),
             source="assumption: one compartment (t1/2 40 d human, 4 d mouse)"),
    DrugInfo("palbociclib", "cytostatic", *_oral(29.0, 2583.0, 9.0), ("ibrance", "pd-0332991"),
             source="CDK4/6 inhibitor; human: Ibrance label, t1/2 29 h, Vz/F 2583 L, Tmax 6-12 h "
             "(9 used); " + _ALLOMETRIC),
    DrugInfo("ribociclib", "cytostatic", *_oral(32.0, 1090.0, 2.5), ("kisqali", "lee011"),
             source="CDK4/6 inhibitor; human: Kisqali label, effective t1/2 32 h, Vss/F 1090 L, "
             "Tmax 1-4 h (2.5 used); " + _ALLOMETRIC),
    DrugInfo("abemaciclib", "cytostatic", *_oral(18.3, 690.3, 8.0, 0.45),
             ("verzenio", "ly2835219"),
             source="CDK4/6 inhibitor; human: Verzenio label, t1/2 18.3 h, V 690.3 L, Tmax 8 h, "
             "F 45%; " + _ALLOMETRIC),
]

CATALOGUE: dict[str, DrugInfo] = {}
for _d in _CATALOGUE:
    CATALOGUE[_d.name] = _d
# lower-case name or alias -> catalogue name (register_drug adds to it)
ALIASES = {a: d.name for d in _CATALOGUE for a in (d.name, *d.aliases)}


def canonical_drug(name: str) -> str | None:
    """The catalogue name of ``name`` (case-insensitive, aliases allowed), else None."""
    return ALIASES.get(name.strip().lower())


def register_drug(info: DrugInfo) -> None:
    """Add a drug to the catalogue (e.g. a new HER2 blocker with its own PK), or replace
    the entry of the same name. Its name and aliases (any case) then resolve to it.

    **Raises:** `ValueError` for an unknown class, or a payload that is not in the
    catalogue.
    """
    if info.drug_class not in DRUG_CLASSES:
        raise ValueError(f"drug class must be one of {DRUG_CLASSES}, got {info.drug_class!r}")
    if info.payload is not None and canonical_drug(info.payload) is None:
        raise ValueError(f"payload {info.payload!r} of {info.name!r} is not in the catalogue")
    CATALOGUE[info.name] = info
    for a in (info.name, *info.aliases):
        ALIASES[a.lower()] = info.name


def default_pk(name: str, species: str):
    """The catalogue PK of drug ``name`` for ``species`` ("human" or "mouse").

    **Raises:** `RegimenError` if the catalogue has no PK of that drug for that species
    (a user catalogue may give one species only).
    """
    info = CATALOGUE[canonical_drug(name) or name]
    pk = info.pk_human if species == "human" else info.pk_mouse
    if pk is None:
        from .._errors import RegimenError

        raise RegimenError(f"drug {info.name!r} has no {species} PK in the catalogue",
                           column="drug", expected=f"a drug with {species} PK (add it in a "
                           "drug catalogue file, --drug-catalogue)", value=info.name)
    return pk


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
