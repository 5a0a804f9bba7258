"""The CSC model's parameter specs of the fit job (one spec builder for per-curve and
shared-growth fits).

- `CSC_REFERENCE`: the start and the value of every parameter a fit does not free.
- `csc_arm_spec`: one arm's per-curve spec; `csc_union_spec`: every arm of a job at
  once, each curve (`ArmPredictor`) or group (`arm_uses`) estimating its arm's part.
- `drug_slots` / `slot_batch`: one model with a drug slot per drug kind (class and PK) of
  the data, so that every regimen shape shares one compiled program.
- `param_column`: the ``fits.csv`` column of a union-spec label.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import FitcscInputError
from .._io.arms import ARM_EC50_MG_PER_L, is_arm_drug
from .._io.batch import SubjectBatch
from .._model.drugs import CATALOGUE, default_pk
from .._model.family import ModelConfig
from .._model.params import default_params
from .._model.transforms import Interval, ParamSpec, Positive
from .predictors import CSCPredictor

# Reference (start 0, and the value of every fixed parameter) of a per-curve CSC fit: a
# tumour with 10% CSCs whose bulk cannot sustain itself (v_D - delta_D = -0.05/day),
# growing at v_S (2p - 1) = 0.06/day once CSCs lead; logistic crowding at K = 1e10
# cells (10,000 mm3, above every PDX volume).
CSC_REFERENCE = dict(csc_division_rate=0.3, self_renewal=0.6, bulk_division_rate=0.25,
                     bulk_death_rate=0.3, initial_csc_fraction=0.1,
                     carrying_capacity_cells=1e10, her2_efficacy_csc=0.5,
                     her2_efficacy_bulk=0.5, csc_sparing=0.2, kill_rate=0.1,
                     cytostatic_efficacy=0.5, csc_kill_rate=0.1)
# Free parameters (see `csc_arm_spec`): what one curve can identify.
BASE_FREE = {"csc_division_rate": Positive()}
CONTROL_FREE = {"self_renewal": Interval(0.5, 1.0)}
CLASS_FREE = {
    "her2": {"her2_efficacy_csc": Interval(0.0, 1.0), "her2_efficacy_bulk": Interval(0.0, 1.0)},
    "chemo": {"kill_rate": Positive(), "csc_sparing": Interval(0.0, 1.0)},
    "cytostatic": {"cytostatic_efficacy": Interval(0.0, 1.0)},
    "csc": {"csc_kill_rate": Positive()},
}
PER_DRUG_CLASS = {"kill_rate": "chemo", "cytostatic_efficacy": "cytostatic",
                  "csc_kill_rate": "csc"}


def csc_arm_spec(model: ModelConfig) -> ParamSpec:
    """The default spec of a per-curve CSC fit for ``model`` (its drugs: one arm's).

    Free: ``csc_division_rate`` v_S (Positive) and ``initial_volume_mm3`` (added by
    `csc_predictor`); for an untreated subject also ``self_renewal`` p (Interval(0.5,
    1)); per drug class present: HER2, ``her2_efficacy_csc`` and ``her2_efficacy_bulk``
    (Interval(0, 1)); chemo, ``kill_rate`` (Positive) and ``csc_sparing`` (Interval(0,
    1)); cytostatic, ``cytostatic_efficacy`` (Interval(0, 1)); CSC-targeted,
    ``csc_kill_rate`` (Positive). Everything else stays at `CSC_REFERENCE`; arm
    pseudo-drugs get EC50 = `ARM_EC50_MG_PER_L` (full inhibition at C = 1 mg/L).

    Why so few: one volume curve shows about three rates, the CSCs' net growth v_S (2p
    - 1), their output of bulk cells 2 v_S (1 - p) and the bulk's own net rate. With
    the bulk kinetics and the initial CSC fraction fixed, a control curve identifies v_S
    and p. In a treated curve that starts at the first dose, a constant drug effect is
    confounded with the intrinsic kinetics (a chemo kill adds to the bulk death rate,
    HER2 blockade of CSCs rescales p), so there p stays at its reference and the drug's
    parameters carry the difference. Freeing p and the bulk death rate as well was
    tried on PDXE curves: most fits then ran into the optimiser's step cap along flat
    directions.
    """
    return _spec(model, control=not model.drugs)


def drug_slots(regs, species):
    """Drug kinds (class, PK) of the regimens, in order: ``(slot drugs, {drug: slot})``.

    One model with a drug slot per kind fits every subject of a job (one compiled
    program): each subject's doses go to the slot of its drug. **Raises:**
    `FitcscInputError` for an arm with two drugs of the same kind.
    """
    kinds: dict[tuple, int] = {}
    drugs, slot = [], {}
    for reg in regs:
        for d in reg.drugs:
            key = (CATALOGUE[d].drug_class, pk_key(default_pk(d, species)))
            if key not in kinds:
                kinds[key] = len(drugs)
                drugs.append(d)
            slot[d] = kinds[key]
    for reg in regs:
        used = [slot[d] for d in reg.drugs]
        if len(set(used)) < len(used):
            raise FitcscInputError(
                f"arm {reg.name!r} has two drugs of the same class and PK",
                expected="at most one drug of each class and PK per arm",
                value=", ".join(reg.drugs))
    return tuple(drugs), slot


def slot_batch(batch: SubjectBatch, slot: dict, drugs: tuple) -> SubjectBatch:
    """``batch`` with each dose's drug index moved to its drug's slot in ``drugs``."""
    if not drugs:
        return dataclasses.replace(batch, drugs=drugs)
    table = np.asarray([slot.get(d, 0) for d in batch.drugs] or [0])
    drug, mask = np.asarray(batch.schedule.drug), np.asarray(batch.schedule.mask)
    schedule = eqx.tree_at(lambda s: s.drug, batch.schedule,
                           jnp.asarray(np.where(mask, table[drug], 0)))
    return dataclasses.replace(batch, schedule=schedule, drugs=drugs)


def csc_union_spec(model: ModelConfig) -> ParamSpec:
    """The spec of every subject of a job at once: growth (v_S, p), every class's
    effects for the model's drug slots, V0 (added by `csc_predictor`); reference and
    fixed values as in `csc_arm_spec`. Each subject estimates a part of it (its
    free mask, `ArmPredictor`)."""
    return _spec(model, control=True)


def _spec(model: ModelConfig, *, control: bool) -> ParamSpec:
    """Free: v_S, p if ``control``, every effect field of the model's drug classes;
    everything else at `CSC_REFERENCE` (arm pseudo-drugs: EC50 `ARM_EC50_MG_PER_L`)."""
    ref = default_params(model, **CSC_REFERENCE)
    if model.drugs:
        arm = jnp.asarray([is_arm_drug(d) for d in model.drugs], bool)
        ref = eqx.tree_at(lambda p: p.ec50_mg_per_L, ref,
                          jnp.where(arm, ARM_EC50_MG_PER_L, ref.ec50_mg_per_L))
    free = {**BASE_FREE, **CONTROL_FREE} if control else dict(BASE_FREE)
    for c in dict.fromkeys(CATALOGUE[d].drug_class for d in model.drugs):
        free.update(CLASS_FREE[c])
    return ParamSpec(free, ref)


def label_needs(labels, model: ModelConfig) -> tuple:
    """What each element of a union spec needs to be estimated for a subject: None
    (always: v_S, V0), ``()`` (no dose at all: p, as in `csc_arm_spec`), the drug slots
    of which one must be dosed (a class's effect; a per-drug field its slot), or
    ``"never"`` (a per-drug field of a slot whose drug is of another class)."""
    classes = [CATALOGUE[d].drug_class for d in model.drugs]
    out = []
    for label in labels:
        field = label.split("[")[0]
        if field in BASE_FREE or field == "initial_volume_mm3":
            out.append(None)
        elif field in CONTROL_FREE:
            out.append(())
        elif "[" in label:  # a per-drug field: its slot, if the slot's drug is its class
            k = int(label[:-1].split("[")[1])
            out.append((k,) if classes[k] == PER_DRUG_CLASS[field] else "never")
        else:
            cls = next(c for c, f in CLASS_FREE.items() if field in f)
            out.append(tuple(k for k, c in enumerate(classes) if c == cls))
    return tuple(out)


class ArmPredictor(CSCPredictor):
    """A CSC predictor over a union spec whose free elements follow each subject's
    dosed drug slots (`label_needs`): the per-arm spec of `csc_arm_spec` as a mask, so
    that every regimen shape shares one compiled program."""

    needs: tuple = eqx.field(static=True, default=())

    def free_slots(self, dosed) -> np.ndarray:
        """The free mask (host) of a subject dosed with drug slots ``dosed``."""
        dosed = set(dosed)
        return np.asarray([n is None or (n == () and not dosed)
                           or (n != "never" and bool(dosed & set(n))) for n in self.needs],
                          bool)

    def free_mask(self, subject):
        n_drugs = max(len(self.model.drugs), 1)
        s = subject.schedule
        dosed = jnp.zeros((n_drugs,), bool).at[s.drug].max(s.mask)
        cols = []
        for n in self.needs:
            if n is None:
                cols.append(jnp.ones((), bool))
            elif n == ():
                cols.append(~jnp.any(dosed))
            elif n == "never":
                cols.append(jnp.zeros((), bool))
            else:
                cols.append(jnp.any(dosed[jnp.asarray(n)]))
        return jnp.stack(cols)


def arm_predictor(base: CSCPredictor) -> ArmPredictor:
    """The job's CSC predictor: ``base`` (a `csc_predictor` of the model with every drug
    slot of the data and `csc_union_spec`) with each arm's free mask."""
    model = base.model
    return ArmPredictor(model=base.model, spec=base.spec, rtol=base.rtol, atol=base.atol,
                        max_steps=base.max_steps, v0_from_data=base.v0_from_data,
                        needs=label_needs(base.spec.labels(), model))


def pk_key(pk) -> tuple:
    """A hashable key of a PK model: its type and parameter values (equal keys: the
    same concentrations for the same doses)."""
    return (type(pk).__name__, tuple(float(x) for x in jax.tree_util.tree_leaves(pk)))


def arm_uses(reg, slot, control: bool) -> set[str]:
    """Union-spec labels that the curves of regimen ``reg`` estimate in a shared-growth
    fit: v_S, V0, p if ``control``, and the effect fields of its drugs' classes
    (per-drug ones at the drug's slot)."""
    out = {"csc_division_rate", "initial_volume_mm3"} | ({"self_renewal"} if control else set())
    for d in reg.drugs:
        for field in CLASS_FREE[CATALOGUE[d].drug_class]:
            out.add(f"{field}[{slot[d]}]" if field in PER_DRUG_CLASS else field)
    return out


def param_column(label, own_drugs, slot, *, by_class: bool = False) -> str:
    """``fits.csv`` column of a union-spec label for a curve whose arm has the drugs
    ``own_drugs``: the field, or ``field[drug]`` (the drug in that slot) when the arm
    has several drugs (per-curve fits) or, with ``by_class``, several drugs of that
    field's class (shared-growth fits)."""
    if "[" not in label:
        return label
    field, k = label[:-1].split("[")
    same = ([d for d in own_drugs if CATALOGUE[d].drug_class == PER_DRUG_CLASS[field]]
            if by_class else own_drugs)
    if len(same) == 1:
        return field
    return f"{field}[{next(d for d in own_drugs if slot[d] == int(k))}]"
