"""Model configuration: validation, layout, defaults."""

import pytest

import fitcsc


def test_state_layout():
    m = fitcsc.ModelConfig(progenitor=True, dormancy=True, resistant_clone=True,
                           plasticity="signal", damage_chain=3)
    assert m.state_names == ("S", "D", "P", "Q", "R", "L", "X1", "X2", "X3")
    assert m.cell_states == ("S", "D", "P", "Q", "R", "X1", "X2", "X3")
    assert m.stem_states == ("S", "Q", "R")


@pytest.mark.parametrize("kw,match", [
    (dict(crowding="richards"), "crowding"),
    (dict(plasticity="yes"), "plasticity"),
    (dict(chemo_mode="bolus"), "chemo_mode"),
    (dict(species="rat"), "species"),
    (dict(damage_chain=-1), "damage_chain"),
    (dict(drugs=("aspirin",)), "unknown drug"),
    (dict(drugs=("trastuzumab", "Herceptin")), "duplicates"),
])
def test_bad_config_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        fitcsc.ModelConfig(**kw)


def test_aliases_canonicalised_and_classes():
    m = fitcsc.ModelConfig(drugs=("Herceptin", "paclitaxel", "MK-0752", "fulvestrant"))
    assert m.drugs == ("trastuzumab", "paclitaxel", "gamma_secretase_inhibitor",
                       "fulvestrant")
    assert m.drug_mask("her2").tolist() == [True, False, False, False]
    assert m.drug_mask("csc").tolist() == [False, False, True, False]


def test_default_params_shapes_and_unknown_override():
    m = fitcsc.ModelConfig(drugs=("trastuzumab", "paclitaxel"), species="human")
    p = fitcsc.default_params(m, kill_rate=0.3)
    assert p.kill_rate.shape == (2,) and float(p.kill_rate[1]) == 0.3
    assert isinstance(p.pk[0], fitcsc.TwoCompartment)
    with pytest.raises(TypeError, match="unknown parameter"):
        fitcsc.default_params(m, growth=1.0)


def test_regimen_errors():
    with pytest.raises(fitcsc.RegimenError, match="unknown drug"):
        fitcsc.DoseLine("aspirin", 1.0, "mg")
    with pytest.raises(fitcsc.RegimenError, match="dose unit"):
        fitcsc.DoseLine("trastuzumab", 1.0, "mg/L")
    with pytest.raises(fitcsc.RegimenError, match="interval"):
        fitcsc.DoseLine("trastuzumab", 1.0, "mg", n_doses=3)
    reg = fitcsc.Regimen((fitcsc.DoseLine("paclitaxel", 1.0, "mg", n_doses=5,
                                          interval_day=1.0),), name="x")
    with pytest.raises(fitcsc.RegimenError, match="at most 3"):
        reg.to_schedule(("paclitaxel",), max_doses=3)
    with pytest.raises(fitcsc.RegimenError, match="does not include"):
        reg.to_schedule(("trastuzumab",))
