"""The drug catalogue: every entry cited, the label numbers reproduced by its PK, and the
user drug catalogue file (CSV or TOML) that adds drugs, with its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fitcsc
from fitcsc._errors import CatalogueError, DataWarning, RegimenError
from fitcsc._io.arms import arm_drug_class, constant_effect_message
from fitcsc._io.data import read_regimen_table
from fitcsc._io.drug_catalogue import load_drug_catalogue, read_drug_catalogue
from fitcsc._model.drugs import (
    ALIASES,
    ALLOMETRIC_TIME_FACTOR,
    CATALOGUE,
    DRUG_CLASSES,
    default_pk,
)
from fitcsc.cli import main


@pytest.fixture(autouse=True)
def _restore_catalogue():
    """Registering is global: put the catalogue back after each test."""
    drugs, aliases = dict(CATALOGUE), dict(ALIASES)
    yield
    CATALOGUE.clear()
    CATALOGUE.update(drugs)
    ALIASES.clear()
    ALIASES.update(aliases)


def _response(pk, t_day):
    """Concentration [mg/L] after 1 mg at t = 0: the PK's sum of exponentials."""
    coefs, rates = (np.asarray(x) for x in pk.exponentials())
    return np.sum(coefs[:, None] * np.exp(-rates[:, None] * np.asarray(t_day)[None, :]), axis=0)


def _terminal_half_life_day(pk):
    coefs, rates = (np.asarray(x) for x in pk.exponentials())
    return math.log(2.0) / float(np.min(rates[coefs != 0]))


# ------------------------------------------------------------------ built-in catalogue


def test_every_drug_has_a_class_and_a_source():
    for name, info in CATALOGUE.items():
        if name.startswith("arm:"):
            continue
        assert info.drug_class in DRUG_CLASSES, name
        assert len(info.source) > 20, name
        assert info.pk_human is not None and info.pk_mouse is not None, name


@pytest.mark.parametrize("alias,name,cls", [
    ("cisplatin", "cisplatin", "chemo"), ("Carboplatin", "carboplatin", "chemo"),
    ("Gemzar", "gemcitabine", "chemo"), ("eribulin", "eribulin", "chemo"),
    ("Navelbine", "vinorelbine", "chemo"), ("xeloda", "capecitabine", "chemo"),
    ("olaparib", "olaparib", "chemo"), ("Talzenna", "talazoparib", "chemo"),
    ("T-DM1", "trastuzumab_emtansine", "her2"), ("Enhertu", "trastuzumab_deruxtecan", "her2"),
    ("DS-8201a", "trastuzumab_deruxtecan", "her2"), ("deruxtecan", "dxd", "chemo"),
    ("palbociclib", "palbociclib", "cytostatic"), ("LEE011", "ribociclib", "cytostatic"),
    ("verzenio", "abemaciclib", "cytostatic"),
])
def test_breast_cancer_agents_and_their_classes(alias, name, cls):
    from fitcsc._model.drugs import canonical_drug

    assert canonical_drug(alias) == name and CATALOGUE[name].drug_class == cls
    assert arm_drug_class(f"{alias} + vehicle") == cls  # an arm named after it


@pytest.mark.parametrize("name,t_half_h,tmax_h", [
    ("cisplatin", 0.5, None), ("gemcitabine", 68.0 / 60.0, None), ("eribulin", 40.0, None),
    ("vinorelbine", 35.7, None), ("trastuzumab_emtansine", 96.0, None),
    ("trastuzumab_deruxtecan", 5.7 * 24, None), ("capecitabine", 0.75, 1.5),
    ("olaparib", 14.9, 1.5), ("talazoparib", 90.0, 1.5), ("palbociclib", 29.0, 9.0),
    ("ribociclib", 32.0, 2.5), ("abemaciclib", 18.3, 8.0),
])
def test_label_half_life_and_tmax_reproduced(name, t_half_h, tmax_h):
    """The human PK has the label's elimination t1/2 (and the label's Tmax, found on a
    fine grid of the concentration curve); the mouse PK is allometric (t1/2 x 0.13)."""
    human, mouse = default_pk(name, "human"), default_pk(name, "mouse")
    coefs, rates = (np.asarray(x) for x in human.exponentials())
    k = math.log(2.0) / (t_half_h / 24.0)
    assert np.any(np.isclose(rates, k, rtol=1e-9)), (name, rates)  # elimination rate
    if tmax_h is not None:
        t = np.linspace(0.0, 4 * tmax_h / 24.0, 400_001)
        assert t[np.argmax(_response(human, t))] * 24.0 == pytest.approx(tmax_h, rel=1e-3)
    if name not in ("gemcitabine",) and not name.startswith("trastuzumab"):
        ratio = _terminal_half_life_day(mouse) / _terminal_half_life_day(human)
        if tmax_h is None:
            assert ratio == pytest.approx(ALLOMETRIC_TIME_FACTOR, rel=1e-12)
        assert ALLOMETRIC_TIME_FACTOR == pytest.approx((0.02 / 70) ** 0.25)


def test_adc_payloads_follow_the_adc():
    for adc, payload in (("trastuzumab_emtansine", "dm1"), ("trastuzumab_deruxtecan", "dxd")):
        info = CATALOGUE[adc]
        assert info.payload == payload and 0.01 < info.payload_mass_fraction < 0.03
        for species in ("human", "mouse"):
            assert default_pk(payload, species) is default_pk(adc, species)


# ------------------------------------------------------------------ user catalogue files

CSV = (
    "drug,class,species,pk_model,half_life_h,volume_L,volume_L_per_kg,tmax_h,aliases,source\n"
    "alpelisib,cytostatic,human,oral,8.9,114,,3,piqray;BYL719,Piqray label\n"
    "alpelisib,cytostatic,mouse,one_compartment,2,,1.5,,,assumption\n"
    "infigratinib,cytostatic,mouse,one_compartment,3,,2,,bgj398,assumption for PDXE\n"
)
TOML = """
[drug.alpelisib]
class = "cytostatic"
aliases = ["piqray", "BYL719"]
source = "Piqray label"
[drug.alpelisib.human]
pk_model = "oral"
half_life_h = 8.9
volume_L = 114
tmax_h = 3
[drug.alpelisib.mouse]
pk_model = "one_compartment"
half_life_h = 2
volume_L_per_kg = 1.5

[drug.infigratinib]
class = "cytostatic"
aliases = ["bgj398"]
source = "assumption for PDXE"
[drug.infigratinib.mouse]
pk_model = "one_compartment"
half_life_day = 0.125
volume_L_per_kg = 2
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_and_toml_give_the_same_drugs(tmp_path):
    from_csv = read_drug_catalogue(_write(tmp_path, "d.csv", CSV))
    from_toml = read_drug_catalogue(_write(tmp_path, "d.toml", TOML))
    assert [d.name for d in from_csv] == ["alpelisib", "infigratinib"]
    for a, b in zip(from_csv, from_toml, strict=True):
        assert (a.name, a.drug_class, a.aliases) == (b.name, b.drug_class, b.aliases)
        for pa, pb in ((a.pk_human, b.pk_human), (a.pk_mouse, b.pk_mouse)):
            if pa is None:
                assert pb is None
                continue
            np.testing.assert_allclose(np.asarray(pa.exponentials()),
                                       np.asarray(pb.exponentials()), rtol=1e-12)
    alp = from_csv[0]
    assert alp.aliases == ("piqray", "byl719") and alp.pk_mouse.volume_L == pytest.approx(0.03)
    t = np.linspace(0.0, 0.5, 200_001)  # the label Tmax (3 h) is reproduced
    assert t[np.argmax(_response(alp.pk_human, t))] * 24 == pytest.approx(3.0, rel=1e-3)
    assert from_csv[1].pk_human is None


def test_loaded_drugs_are_used_by_regimens_and_arm_names(tmp_path):
    regimen = _write(tmp_path, "reg.csv", "arm,drug,dose,dose_unit,start_day,interval_day,"
                     "n_doses,infusion_hours\nalp,piqray,300,mg,0,1,28,0\n")
    with pytest.raises(RegimenError, match="unknown drug"):
        read_regimen_table(regimen)
    assert "'BGJ398'" in constant_effect_message({"BGJ398": "cytostatic"})
    assert load_drug_catalogue(_write(tmp_path, "d.toml", TOML)) == ("alpelisib", "infigratinib")
    assert read_regimen_table(regimen)["alp"].drugs == ("alpelisib",)
    assert arm_drug_class("BYL719 + LEE011") == "cytostatic"
    assert "no catalogue drug" not in constant_effect_message({"BGJ398": "cytostatic"})
    with pytest.raises(RegimenError, match="drug 'infigratinib' has no human PK"):
        fitcsc.default_params(fitcsc.ModelConfig(drugs=("infigratinib",), species="human"))
    fitcsc.default_params(fitcsc.ModelConfig(drugs=("infigratinib",), species="mouse"))


def test_replacing_a_builtin_drug_warns(tmp_path):
    path = _write(tmp_path, "d.csv", "drug,class,species,pk_model,half_life_h,volume_L,source\n"
                  "paclitaxel,chemo,mouse,one_compartment,5,0.06,our mouse PK study\n")
    with pytest.warns(DataWarning, match="replaces the built-in catalogue entries of "
                      "'paclitaxel'"):
        load_drug_catalogue(path)
    assert default_pk("paclitaxel", "mouse").half_life_day == pytest.approx(5 / 24)
    assert CATALOGUE["paclitaxel"].pk_human is None  # this file gave mouse PK only


HEAD = "drug,class,species,pk_model,half_life_h,volume_L,tmax_h,aliases,payload,source\n"


@pytest.mark.parametrize("row,column,value,words", [
    ("x,chemotherapy,human,one_compartment,1,2,,,,s", "class", "chemotherapy",
     "unknown drug class"),
    ("x,chemo,rat,one_compartment,1,2,,,,s", "species", "rat", "unknown species"),
    ("x,chemo,human,three_compartment,1,2,,,,s", "pk_model", "three_compartment",
     "unknown pk_model"),
    ("x,chemo,human,one_compartment,-1,2,,,,s", "half_life_h", "-1", "bad value"),
    ("x,chemo,human,one_compartment,1,abc,,,,s", "volume_L", "abc", "not a number"),
    ("x,chemo,human,oral,1,2,,,,s", "tmax_h", None, "missing value for a oral PK"),
    ("x,chemo,human,one_compartment,1,2,,,,", "source", "", "no source"),
    ("x,chemo,human,one_compartment,1,2,,herceptin,,s", "aliases", "herceptin",
     "alias already names the catalogue drug 'trastuzumab'"),
    ("x,chemo,human,one_compartment,1,2,,,snake_venom,s", "payload", "snake_venom",
     "unknown payload"),
    ("none,chemo,human,one_compartment,1,2,,,,s", "drug", "none", "bad drug name"),
])
def test_csv_catalogue_refusals(tmp_path, row, column, value, words):
    path = _write(tmp_path, "d.csv", HEAD + row + "\n")
    with pytest.raises(CatalogueError) as info:
        read_drug_catalogue(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}, line 2, column '{column}': ")
    assert words in msg and "; expected " in msg
    if value is not None:
        assert f"got {value!r}" in msg


def test_csv_catalogue_refusals_across_rows(tmp_path):
    rows = ("x,chemo,human,one_compartment,1,2,,,,s\n"
            "x,cytostatic,mouse,one_compartment,1,2,,,,s\n")
    with pytest.raises(CatalogueError, match="line 3, column 'class': drug 'x' has another "
                       "class on line 2"):
        read_drug_catalogue(_write(tmp_path, "d.csv", HEAD + rows))
    rows = "x,chemo,human,one_compartment,1,2,,,,s\nx,chemo,human,one_compartment,2,2,,,,s\n"
    with pytest.raises(CatalogueError, match="line 3, column 'species': second human row"):
        read_drug_catalogue(_write(tmp_path, "d.csv", HEAD + rows))
    with pytest.raises(CatalogueError, match="give exactly one of half_life_h or half_life_day"):
        read_drug_catalogue(_write(tmp_path, "d.csv", "drug,class,species,pk_model,half_life_h,"
                                   "half_life_day,volume_L,source\nx,chemo,human,"
                                   "one_compartment,1,1,2,s\n"))
    with pytest.raises(CatalogueError, match="file not found"):
        read_drug_catalogue(tmp_path / "absent.toml")


@pytest.mark.parametrize("text,column,words", [
    ("[drug.x]\nclass = 'chemo'\nsource = 's'\n[drug.x.human]\npk_model = 'one_compartment'\n"
     "half_life_h = 1\nvolume_L = 2\nvolume = 3\n", "drug.x.human.volume", "unknown key"),
    ("[drug.x]\nclass = 'chemo'\nsource = 's'\n", "drug.x.species", "no PK for any species"),
    ("[drug.x]\nclass = 'chemo'\nsource = 's'\ncolour = 'red'\n", "drug.x.colour",
     "unknown key"),
    ("[drug.x]\nclass = 'chemo'\nsource = 's'\n[drug.x.human]\npk_model = 'oral'\n"
     "half_life_h = true\nvolume_L = 2\ntmax_h = 1\n", "drug.x.human.half_life_h",
     "not a number"),
    ("[drugs.x]\nclass = 'chemo'\n", "drug", "no [drug.<name>] tables"),
    ("[drug.x]\nclass = = 'chemo'\n", None, "not valid TOML"),
])
def test_toml_catalogue_refusals(tmp_path, text, column, words):
    path = _write(tmp_path, "d.toml", text)
    with pytest.raises(CatalogueError) as info:
        read_drug_catalogue(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path)) and words in msg
    assert info.value.column == column
    if column is None:
        assert info.value.row == 2  # the line of the TOML syntax error


def test_cli_drug_catalogue_option(tmp_path, capsys):
    catalogue = _write(tmp_path, "d.toml", TOML)
    regimen = _write(tmp_path, "reg.csv", "arm,drug,dose,dose_unit,start_day,interval_day,"
                     "n_doses,infusion_hours\nalp,BYL719,300,mg,0,1,28,0\n")
    assert main(["data", "validate", str(regimen)]) == 2
    assert "unknown drug" in capsys.readouterr().err
    for argv in (["--drug-catalogue", str(catalogue), "data", "validate", str(regimen)],
                 ["data", "validate", str(regimen), "--drug-catalogue", str(catalogue)]):
        assert main(argv) == 0
        assert capsys.readouterr().out == ("OK regimen: 1 arm, 1 dose line, 28 doses of 1 drug "
                                           "(alpelisib)\n")
    assert main(["--drug-catalogue", str(tmp_path / "nope.csv"), "data", "validate",
                 str(regimen)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.csv: file not found" in err
