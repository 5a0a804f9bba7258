"""Default arm regimens: controls untreated, one constant effect per treated arm.

References: the arm classes stated for the public PDX sets (PDXE, MAS98.06); exact
unit exposure (0 before day 0, 1 mg/L from day 0, no rounding); closed-form CSC growth
under each class of constant effect.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import fitcsc
from fitcsc._io.arms import (
    ARM_PREFIX,
    arm_drug_class,
    arm_drugs,
    default_arm_regimens,
    is_control_arm,
)
from fitcsc._io.data import data_dir, read_tidy_csv
from fitcsc._model.pk import concentrations, pk_arrays


def _regimens(arms):
    with pytest.warns(UserWarning, match="constant drug effect") as record:
        regimens = default_arm_regimens(arms)
    assert len(record) == 1  # one warning for all arms
    return regimens


def _class(regimen):
    (line,) = regimen.lines
    return fitcsc.CATALOGUE[line.drug].drug_class


def test_pdxe_arms():
    table = read_tidy_csv(data_dir() / "pdxe_brca" / "pdxe_brca_tumor_volume.csv")
    regimens = _regimens(table)
    assert list(regimens) == list(table.arms) and len(regimens) == 22
    assert regimens["untreated"].lines == ()
    expected = {"trastuzumab": "her2", "paclitaxel": "chemo", "LJM716 + trastuzumab": "her2",
                "BGJ398": "cytostatic", "binimetinib": "cytostatic", "tamoxifen": "cytostatic"}
    for arm, cls in expected.items():
        assert _class(regimens[arm]) == cls, arm
    assert regimens["trastuzumab"].drugs == (f"{ARM_PREFIX}trastuzumab",)
    treated = [a for a in regimens if a != "untreated"]
    assert len({regimens[a].drugs for a in treated}) == len(treated)  # one effect per arm


def test_mas98_arms():
    table = read_tidy_csv(data_dir() / "mas98_06_pdx" / "mas98_06_tumor_volume.csv")
    regimens = _regimens(table)
    assert regimens["Ctrl"].lines == ()
    assert _class(regimens["Fulv_Trast"]) == "her2"  # abbreviations: Fulv, Trast
    assert _class(regimens["Fulv"]) == "cytostatic"
    assert _class(regimens["Her"]) == "cytostatic"  # heregulin: not a catalogue drug
    assert arm_drugs("Fulv_Trast") == ("fulvestrant", "trastuzumab")


@pytest.mark.parametrize("arm, control", [
    ("untreated", True), ("CONTROL", True), ("Ctrl", True), ("vehicle control", True),
    ("Saline", True), ("trastuzumab", False), ("vehicle + paclitaxel", False),
    ("controlled release", False),
])
def test_control_names(arm, control):
    assert is_control_arm(arm) is control


def test_class_priority_and_tokens():
    assert arm_drug_class("paclitaxel, trastuzumab") == "her2"
    assert arm_drug_class("carbo_paclitaxel") == "chemo"
    assert arm_drug_class("metformin + tamoxifen") == "csc"
    assert arm_drug_class("BYL719 + LEE011") == "cytostatic"
    assert arm_drugs("Her") == ()  # too short to be an abbreviation (not "herceptin")


def test_registration_is_idempotent_and_controls_are_configurable():
    first = _regimens(["trastuzumab", "Vehicle"])
    info = fitcsc.CATALOGUE[first["trastuzumab"].drugs[0]]
    again = _regimens(["trastuzumab"])
    assert fitcsc.CATALOGUE[again["trastuzumab"].drugs[0]] is info
    assert first["Vehicle"].lines == ()
    quiet = default_arm_regimens(["vehicle", "sham"], control_names=("sham",), warn=False)
    assert quiet["sham"].lines == () and _class(quiet["vehicle"]) == "cytostatic"
    assert default_arm_regimens(["untreated"]) == {"untreated": fitcsc.Regimen(name="untreated")}


def test_unit_exposure_is_exact():
    regimens = default_arm_regimens(["paclitaxel", "BGJ398"], warn=False)
    drugs = regimens["paclitaxel"].drugs + regimens["BGJ398"].drugs
    for species in ("mouse", "human"):
        model = fitcsc.ModelConfig(drugs=drugs, species=species)
        coefs, rates = pk_arrays(fitcsc.default_params(model).pk)
        sched = regimens["paclitaxel"].to_schedule(drugs, species=species)
        for t in (-30.0, -1e-9):
            assert np.all(np.asarray(concentrations(coefs, rates, sched, t)) == [0.0, 0.0])
        for t in (0.0, 1e-9, 3.5, 181.0, 1e6):
            assert np.all(np.asarray(concentrations(coefs, rates, sched, t)) == [1.0, 0.0])


def test_simulated_csc_growth_matches_closed_form():
    """Pure-stem tumour (p = 1, all CSCs, no crowding): S grows at v before day 0 and,
    from day 0, at v (1 - e I) (cytostatic), v - sigma_S k C (chemo, C = 1 mg/L) or
    v (2 p (1 - eps_S I) - 1) (HER2), with I = C / (EC50 + C) = 1 / (1 + EC50)."""
    regimens = default_arm_regimens(["BGJ398", "paclitaxel", "trastuzumab"], warn=False)
    drugs = tuple(regimens[a].drugs[0] for a in ("BGJ398", "paclitaxel", "trastuzumab"))
    model = fitcsc.ModelConfig(crowding="none", drugs=drugs)
    v, e, k, sigma, eps, ec50 = 0.2, 0.6, 0.15, 0.4, 0.3, 0.5
    params = fitcsc.default_params(
        model, csc_division_rate=v, self_renewal=1.0, initial_csc_fraction=1.0,
        csc_death_rate=0.0, initial_volume_mm3=50.0, cytostatic_efficacy=e, kill_rate=k,
        csc_sparing=sigma, her2_efficacy_csc=eps, her2_dependence_csc=1.0,
        ec50_mg_per_L=ec50, hill=1.0)
    I = 1.0 / (1.0 + ec50)
    rates = {"BGJ398": v * (1 - e * I), "paclitaxel": v - sigma * k,
             "trastuzumab": v * (2 * (1 - eps * I) - 1)}
    ts = np.linspace(-5.0, 20.0, 26)
    s0 = 50.0 * fitcsc.CELLS_PER_MM3
    for arm, r in rates.items():
        sched = regimens[arm].to_schedule(drugs, species="mouse")
        sol = fitcsc.simulate(model, params, sched, jnp.asarray(ts), rtol=1e-11, atol=1e-6)
        exact = s0 * np.exp(v * (np.minimum(ts, 0.0) + 5.0) + r * np.maximum(ts, 0.0))
        np.testing.assert_allclose(np.asarray(sol.states[:, model.index("S")]), exact,
                                   rtol=1e-8, err_msg=arm)


def test_unknown_drugs_get_an_explicit_warned_class():
    """Issue 15: arm names without a catalogue drug silently became "cytostatic", cisplatin
    and gemcitabine among them. Now those two are chemotherapy, and the arms that name no
    catalogue drug are listed with the class assumed for them."""
    assert arm_drug_class("cisplatin") == "chemo" and arm_drug_class("Gemcitabine") == "chemo"
    assert arm_drug_class("olaparib + carboplatin") == "chemo"
    assert arm_drug_class("T-DXd") == "her2" and arm_drug_class("eribulin") == "chemo"
    with pytest.warns(fitcsc.DataWarning) as record:
        regimens = default_arm_regimens(["vehicle", "cisplatin", "BGJ398", "XYZ-123 + AB"])
    (warning,) = record
    text = str(warning.message)
    assert "'cisplatin' (chemo), 'BGJ398' (cytostatic), 'XYZ-123 + AB' (cytostatic)" in text
    assert ("2 arm(s) name no catalogue drug and were given the class 'cytostatic' (an "
            "assumption): 'BGJ398', 'XYZ-123 + AB'; add the drug to a drug catalogue file "
            "(--drug-catalogue FILE)") in text
    assert _class(regimens["cisplatin"]) == "chemo" and _class(regimens["BGJ398"]) == "cytostatic"
    with pytest.warns(fitcsc.DataWarning) as record:
        default_arm_regimens(["paclitaxel"])
    assert "no catalogue drug" not in str(record[0].message)
