"""Default arm regimens for data without a regimen table: one constant effect per arm.

Public xenograft sets (PDXE, MAS98.06) give each arm's name but not its doses. Rather
than invent doses, `default_arm_regimens` gives every treated arm its *own* drug effect,
constant from day 0 (the first treatment day): a pseudo-drug ``arm:<arm name>``, added
to the catalogue, whose PK is a constant unit exposure. One bolus of 1 mg at day 0 in a
one-compartment model with an infinite half-life and V = 1 L gives

    C(t) = 0 mg/L for t < 0,    C(t) = 1 mg/L for t >= 0,

exactly: the elimination rate ``ln 2 / inf`` is exactly 0, and `fitcsc._model.pk.unit_response`
then returns ``coef * exp(0) = 1/V`` with no rounding. So the fitted effect parameters
read directly as effects: with a chemotherapy-class arm, ``kill_rate`` [L/(mg day)] times
C = 1 mg/L is the bulk kill rate per day; a HER2 or cytostatic arm's inhibition is
``I = 1 / (1 + EC50^n)`` (fitcsc's fit job sets EC50 = `ARM_EC50_MG_PER_L`, so I = 1
to within 1e-9, and the efficacies are the fractional effects).

The pseudo-drug's *class* (which model term it drives) comes from the arm's name: its
tokens (split on ``+``, ``_``, ``,`` and whitespace) are looked up in the catalogue
(aliases allowed; a token of 4 or more letters that begins a single catalogue name,
e.g. ``Trast`` or ``Fulv``, counts as that drug). An arm with a HER2 blocker is
``"her2"``, else with a cytotoxic drug ``"chemo"``, else the class of a known drug
(``"csc"`` before ``"cytostatic"``); an arm with no known drug (BGJ398, binimetinib, a
growth factor, ...) is ``"cytostatic"``, and the warning names those arms and the class
they were given: add the drug to a drug catalogue file (``--drug-catalogue``) to give
it its own class. Arms whose name marks a control (untreated, control, ctrl, vehicle,
...) get an empty regimen.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

from .._errors import DataWarning
from .._model.drugs import ALIASES, CATALOGUE, DrugInfo, canonical_drug, register_drug
from .._model.pk import OneCompartment
from .._model.regimen import DoseLine, Regimen

ARM_PREFIX = "arm:"  # pseudo-drug names: "arm:<arm name>"
ARM_EC50_MG_PER_L = 1e-9  # EC50 the fit job uses for arm pseudo-drugs: I = 1 - 1e-9
UNIT_EXPOSURE_PK = OneCompartment(half_life_day=float("inf"), volume_L=1.0)  # C = 1 mg/L
CONTROL_NAMES = ("untreated", "control", "ctrl", "vehicle", "water", "saline", "placebo")
_CLASS_PRIORITY = ("her2", "chemo", "csc", "cytostatic")
_MIN_ABBREVIATION = 4
_SPLIT = re.compile(r"[+_,\s]+")


def arm_drug_name(arm: str) -> str:
    """The pseudo-drug of ``arm``: ``"arm:<arm>"``."""
    return f"{ARM_PREFIX}{arm}"


def is_arm_drug(name: str) -> bool:
    """True for a pseudo-drug made by `default_arm_regimens`."""
    return name.startswith(ARM_PREFIX)


def arm_tokens(arm: str) -> tuple[str, ...]:
    """The words of an arm name, lower case (split on ``+ _ ,`` and whitespace)."""
    return tuple(t for t in _SPLIT.split(arm.strip().lower()) if t)


def _drug_of_token(token: str) -> str | None:
    """Catalogue drug named by ``token``: exact name or alias, else an abbreviation."""
    name = canonical_drug(token)
    if name is not None:
        return None if is_arm_drug(name) else name
    if len(token) < _MIN_ABBREVIATION or not token.isalpha():
        return None
    hits = {d for a, d in ALIASES.items() if a.startswith(token) and not is_arm_drug(d)}
    if len(hits) == 1:
        return hits.pop()
    # "trast" begins trastuzumab and trastuzumab_emtansine: take the one that every
    # other hit extends (the plain drug), if there is one
    for d in sorted(hits, key=len):
        if all(h.startswith(d) for h in hits):
            return d
    return None


def arm_drugs(arm: str) -> tuple[str, ...]:
    """Catalogue drugs named in an arm name, in order (unknown words are skipped)."""
    whole = _drug_of_token(arm.strip().lower())
    if whole is not None:
        return (whole,)
    return tuple(dict.fromkeys(d for t in arm_tokens(arm) if (d := _drug_of_token(t))))


def is_control_arm(arm: str, control_names: Iterable[str] = CONTROL_NAMES) -> bool:
    """True if ``arm`` (case-insensitive), or one of its words, is a control name and
    it names no catalogue drug."""
    names = {c.lower() for c in control_names}
    if arm.strip().lower() in names:
        return True
    return bool(names & set(arm_tokens(arm))) and not arm_drugs(arm)


def arm_drug_class(arm: str) -> str:
    """Drug class of an arm's constant effect, from the drugs its name mentions.

    ``"her2"`` if it names a HER2 blocker, else ``"chemo"`` if a cytotoxic drug, else
    the class of a named drug (``"csc"`` before ``"cytostatic"``); ``"cytostatic"`` if
    it names no catalogue drug.
    """
    classes = {CATALOGUE[d].drug_class for d in arm_drugs(arm)}
    for c in _CLASS_PRIORITY:
        if c in classes:
            return c
    return "cytostatic"


def register_arm_drug(arm: str, drug_class: str | None = None) -> str:
    """Register (idempotently) the pseudo-drug of ``arm``; returns its name."""
    name = arm_drug_name(arm)
    cls = arm_drug_class(arm) if drug_class is None else drug_class
    info = CATALOGUE.get(name)
    if info is None or info.drug_class != cls or info.pk_mouse is not UNIT_EXPOSURE_PK:
        register_drug(DrugInfo(name, cls, UNIT_EXPOSURE_PK, UNIT_EXPOSURE_PK))
    return canonical_drug(name) or name


def constant_effect_message(classes: dict[str, str]) -> str:
    """The warning text listing arms given a constant effect: ``{arm: class}``; arms
    that name no catalogue drug are listed again with the class they were given."""
    listed = ", ".join(f"{a!r} ({c})" for a, c in classes.items())
    unknown = [a for a in classes if not arm_drugs(a)]
    assumed = ""
    if unknown:
        names = ", ".join(map(repr, unknown))
        assumed = (f"; {len(unknown)} arm(s) name no catalogue drug and were given the class "
                   f"'cytostatic' (an assumption): {names}; add the drug to a drug catalogue "
                   "file (--drug-catalogue FILE) to give it its class and PK")
    return (f"no regimen table: {len(classes)} treated arm(s) get a constant drug effect "
            f"from day 0, one per arm, class from the arm name: {listed}{assumed}; give a "
            "regimen table for dose-driven effects")


def default_arm_regimens(
    table,
    *,
    control_names: Iterable[str] = CONTROL_NAMES,
    warn: bool = True,
) -> dict[str, Regimen]:
    """Regimens for a table without a regimen file: controls untreated, every other arm
    its own constant drug effect from day 0.

    **Arguments:**
    - `table`: a `TidyTable` (or anything with ``arms``, or a sequence of arm names).
    - `control_names`: names (case-insensitive, also as a word of the arm name) that
      mark a control arm, which gets an empty `Regimen`.
    - `warn`: emit one `DataWarning` (a `UserWarning`) listing the arms given a constant
      effect, and those that name no catalogue drug with the class assumed for them.

    **Returns:** ``{arm: Regimen}`` in table order. A treated arm's regimen is one bolus
    of 1 mg at day 0 of its pseudo-drug ``arm:<arm>`` (registered in the catalogue,
    class from `arm_drug_class`), whose concentration is exactly 1 mg/L from day 0 on.

    ```python
    regimens = default_arm_regimens(read_tidy_csv(path))   # warns once
    batch = make_batch(table, regimens)
    ```
    """
    arms = tuple(getattr(table, "arms", table))
    out: dict[str, Regimen] = {}
    classes: dict[str, str] = {}
    for arm in arms:
        if is_control_arm(arm, control_names):
            out[arm] = Regimen(name=arm)
            continue
        classes[arm] = arm_drug_class(arm)
        drug = register_arm_drug(arm, classes[arm])
        out[arm] = Regimen((DoseLine(drug, 1.0, "mg", start_day=0.0),), name=arm)
    if warn and classes:
        warnings.warn(constant_effect_message(classes), DataWarning, stacklevel=2)
    return out
