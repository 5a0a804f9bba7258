"""Parameter transforms: round trip, log-Jacobian, static structure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitcsc


def _spec():
    model = fitcsc.ModelConfig(drugs=("trastuzumab", "paclitaxel"))
    params = fitcsc.default_params(model, ec50_mg_per_L=jnp.array([5.0, 20.0]))
    spec = fitcsc.ParamSpec({
        "csc_division_rate": fitcsc.Positive(),
        "self_renewal": fitcsc.Interval(0.5, 1.0),
        "ec50_mg_per_L": fitcsc.Positive(),
        "her2_efficacy_csc": fitcsc.Real(),
        "plasticity_rate": fitcsc.Fixed(0.02),
    }, reference=params)
    return params, spec


def test_round_trip_and_labels():
    params, spec = _spec()
    z = spec.to_z(params)
    assert spec.size == z.shape[0] == 5
    assert spec.labels() == ("csc_division_rate", "self_renewal", "ec50_mg_per_L[0]",
                             "ec50_mg_per_L[1]", "her2_efficacy_csc")
    back = spec.from_z(z)
    for name in spec.free:
        np.testing.assert_allclose(getattr(back, name), getattr(params, name), rtol=1e-12)
    assert float(back.plasticity_rate) == 0.02  # Fixed(value) overrides the reference
    assert float(back.bulk_death_rate) == float(params.bulk_death_rate)  # unnamed: fixed


def test_interval_bounds_respected():
    tr = fitcsc.Interval(0.5, 1.0)
    x = tr.forward(jnp.array([-50.0, 0.0, 50.0]))
    assert float(x[0]) >= 0.5 and float(x[2]) <= 1.0 and float(x[1]) == 0.75
    with pytest.raises(ValueError):
        fitcsc.Interval(1.0, 0.5)


def test_log_jacobian_matches_autodiff_determinant():
    params, spec = _spec()
    z = spec.to_z(params) + 0.1

    def constrained(z):
        p = spec.from_z(z)
        return jnp.concatenate([jnp.ravel(getattr(p, n)) for n in spec.free])

    J = jax.jacfwd(constrained)(z)
    sign, logdet = jnp.linalg.slogdet(J)
    assert float(sign) > 0
    assert float(spec.log_jacobian(z)) == pytest.approx(float(logdet), rel=1e-12)


def test_bad_spec_refused():
    params, _ = _spec()
    with pytest.raises(ValueError, match="not a CSCParams"):
        fitcsc.ParamSpec({"no_such_field": fitcsc.Positive()}, reference=params)
    with pytest.raises(TypeError):
        fitcsc.ParamSpec({"self_renewal": "log"}, reference=params)


def test_spec_values_traced_structure_static():
    params, spec = _spec()
    leaves, treedef = jax.tree_util.tree_flatten(spec)
    params2 = fitcsc.default_params(fitcsc.ModelConfig(drugs=("trastuzumab", "paclitaxel")),
                                    self_renewal=0.9)
    spec2 = fitcsc.ParamSpec(dict(spec.transforms), reference=params2)
    assert jax.tree_util.tree_structure(spec2) == treedef
    spec3 = fitcsc.ParamSpec({"self_renewal": fitcsc.Positive()}, reference=params)
    assert jax.tree_util.tree_structure(spec3) != treedef
