"""Population models: the parameter-space protocol, the log density against a hand-written
reference (scipy.stats), gradients, failures, vmap and retracing, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import fitcsc
from fitcsc._fit.groups import GroupSpec
from fitcsc._fit.population import forward_predict, population_model, vmapped_jacobians
from fitcsc._fit.predictors import SizeSpec
from fitcsc._io.arms import ARM_EC50_MG_PER_L, default_arm_regimens
from fitcsc._io.data import TidyTable

DAYS = np.array([0.0, 4.0, 8.0, 13.0, 21.0])


def _table(n_mice=4, seed=0):
    rng = np.random.default_rng(seed)
    arms = ["control", "Trast"] * (n_mice // 2)
    subjects = [f"m{i}" for i in range(n_mice)]
    vol = 80.0 * np.exp(0.05 * np.tile(DAYS, n_mice) + 0.2 * rng.normal(size=n_mice * 5))
    vol[3] = 0.0  # one zero volume: censored (M3)
    return TidyTable(study=np.array(["s"] * (n_mice * 5)), arm=np.repeat(arms, 5),
                     subject=np.repeat(subjects, 5), day=np.tile(DAYS, n_mice),
                     volume_mm3=vol, extra={"line": np.repeat(["A", "A", "B", "B"][:n_mice],
                                                             5)})


def _exp_pop(**kw):
    table = _table()
    batch = fitcsc.make_batch(table, default_arm_regimens(table, warn=False))
    pred = fitcsc.baseline_predictor("exponential")
    options = dict(fixed={"initial_volume_mm3": "shared", "growth_rate": "arm"},
                   random={"animal": ("initial_volume_mm3",), "line": ("growth_rate",)},
                   groups={"line": ["A", "A", "B", "B"]},
                   prior_loc={"initial_volume_mm3": math.log(80.0), "growth_rate": 0.0},
                   prior_scale={"initial_volume_mm3": 1.0, "growth_rate": 0.1},
                   omega_scale={"animal": 0.7, "line": 0.05}, sigma_scale=0.4)
    options.update(kw)
    return fitcsc.population_model(pred, batch, **options), batch


def _csc_pop(rtol=1e-8, max_steps=512):
    table = _table()
    batch = fitcsc.make_batch(table, default_arm_regimens(table, warn=False))
    model = fitcsc.ModelConfig(crowding="logistic", drugs=batch.drugs)
    ref = fitcsc.default_params(model, ec50_mg_per_L=ARM_EC50_MG_PER_L, bulk_death_rate=0.3)
    spec = fitcsc.ParamSpec({"csc_division_rate": fitcsc.Positive(),
                             "her2_efficacy_bulk": fitcsc.Interval(0.0, 1.0)}, ref)
    pred = fitcsc.csc_predictor(model, spec, rtol=rtol, max_steps=max_steps)
    growth = ("csc_division_rate", "initial_volume_mm3")
    pop = population_model(pred, batch, uses={"control": growth, "Trast": pred.spec.labels()},
                           random={"animal": growth})
    return pop, batch


def test_parameter_spaces_implement_the_protocol():
    pop, _ = _exp_pop()
    model = fitcsc.ModelConfig(drugs=("trastuzumab",))
    spec = fitcsc.ParamSpec({"self_renewal": fitcsc.Interval(0.5, 1.0),
                             "ec50_mg_per_L": fitcsc.Positive()}, fitcsc.default_params(model))
    group = GroupSpec(("a", "b|x", "c"), (fitcsc.Positive(), fitcsc.Interval(-1.0, 2.0),
                                           fitcsc.Real()))
    spaces = [spec, fitcsc.baseline_predictor("simeoni").spec, pop.space, SizeSpec(3), group]
    rng = np.random.default_rng(1)
    for space in spaces:
        assert isinstance(space, fitcsc.ParameterSpace)
        # the engine's view: natural == element-wise transforms, reference in z
        trs = space.element_transforms()
        assert len(trs) == space.size and np.shape(space.reference_z()) == (space.size,)
        z1 = jnp.asarray(rng.normal(size=space.size))
        np.testing.assert_allclose(space.natural(z1), [t.forward(z1[i])
                                                      for i, t in enumerate(trs)], rtol=1e-14)
        z = jnp.asarray(rng.normal(size=space.size))
        assert len(space.labels()) == space.size == len(set(space.labels()))
        np.testing.assert_allclose(space.to_z(space.from_z(z)), z, rtol=1e-10, atol=1e-12)
        # elementwise transforms: log|det J| is the sum of the log diagonal of jacfwd
        jac = jax.jacfwd(space.natural)(z)
        np.testing.assert_allclose(jac, np.diag(np.diag(jac)), atol=1e-14)
        np.testing.assert_allclose(space.log_jacobian(z), np.sum(np.log(np.abs(np.diag(jac)))),
                                   rtol=1e-10)


def test_log_density_matches_scipy_reference():
    pop, batch = _exp_pop()
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.normal(scale=0.3, size=pop.space.size))
    v = {k: np.asarray(x) for k, x in pop.space.from_z(z).items()}
    assert pop.fe_labels == ("initial_volume_mm3", "growth_rate|control", "growth_rate|Trast")
    ref = stats.norm.logpdf(v["beta"], [math.log(80.0), 0.0, 0.0], [1.0, 0.1, 0.1]).sum()
    ref += stats.halfnorm.logpdf(v["omega_animal"], scale=0.7).sum()
    ref += stats.halfnorm.logpdf(v["omega_line"], scale=0.05).sum()
    ref += stats.norm.logpdf(v["eta_animal"]).sum() + stats.norm.logpdf(v["eta_line"]).sum()
    ref += stats.halfnorm.logpdf(v["sigma"], scale=0.4)
    day, vol = np.asarray(batch.day), np.asarray(batch.volume_mm3)
    cens = np.asarray(batch.censored)
    for i, (arm, line) in enumerate(zip(batch.arm, "AABB", strict=True)):
        log_v0 = v["beta"][0] + v["omega_animal"][0] * v["eta_animal"][i, 0]
        rate = v["beta"][1 if arm == "control" else 2] + v["omega_line"][0] * v["eta_line"][
            "AB".index(line), 0]
        lp = log_v0 + rate * (day[i] - day[i, 0])
        zs = (np.log(vol[i]) - lp) / v["sigma"]
        ref += np.where(cens[i], stats.norm.logcdf(zs),
                        stats.norm.logpdf(np.log(vol[i]), lp, v["sigma"]) - np.log(vol[i])).sum()
    ref += np.log(v["omega_animal"]).sum() + np.log(v["omega_line"]).sum() + np.log(v["sigma"])
    assert cens.sum() == 1
    np.testing.assert_allclose(pop.log_density(z), ref, rtol=1e-10)
    ll = pop.pointwise_log_likelihood(pop.space.from_z(z))
    d = pop.derived(z, jax.random.key(0))
    np.testing.assert_allclose(ll, d["log_likelihood"], rtol=1e-10)
    np.testing.assert_allclose(d["theta"][:, 0], np.exp(np.asarray(pop.curve_z(
        pop.space.from_z(z)))[:, 0]), rtol=1e-12)


def test_csc_gradient_paced_andvmapped_jacobians_agree_with_finite_differences():
    pop, _ = _csc_pop()
    z = pop.space.to_z(pop.init_values()) + 0.05
    f = jax.jit(jax.value_and_grad(pop.log_density))
    lp, g = f(z)
    assert np.isfinite(lp)
    for i in (0, 1, 3, pop.space.size - 1):
        e = 1e-5
        fd = (pop.log_density(z.at[i].add(e)) - pop.log_density(z.at[i].add(-e))) / (2 * e)
        np.testing.assert_allclose(g[i], fd, rtol=1e-4, atol=1e-4)
    zc = pop.curve_z(pop.space.from_z(z))
    lp_p, st_p = forward_predict(pop.predictor, zc, pop.curves)
    lp_v, st_v, J_v = vmapped_jacobians(pop.predictor, zc, pop.curves)
    from fitcsc._fit.evaluators import paced_log_pred

    _, _, J_p, _ = paced_log_pred(pop.predictor, zc, pop.curves)
    m = np.asarray(pop.curves.mask)
    np.testing.assert_allclose(np.asarray(lp_p)[m], np.asarray(lp_v)[m], atol=1e-6)
    np.testing.assert_allclose(np.asarray(J_p)[m], np.asarray(J_v)[m], atol=1e-5)
    assert np.all(np.asarray(st_p) == 0) and np.all(np.asarray(st_v) == 0)


def test_vmap_over_chains_equals_loop_and_no_retrace():
    pop, _ = _csc_pop()
    z0 = pop.space.to_z(pop.init_values())
    Z = z0[None] + 0.1 * jax.random.normal(jax.random.key(3), (3, z0.size))
    traces = []

    def f(z):
        traces.append(1)
        return jax.value_and_grad(pop.log_density)(z)

    fj = jax.jit(f)
    loop = [fj(z) for z in Z]
    assert len(traces) == 1  # new values never retrace
    vm = jax.jit(jax.vmap(jax.value_and_grad(pop.log_density)))(Z)
    np.testing.assert_allclose(vm[0], [v for v, _ in loop], rtol=1e-9)
    np.testing.assert_allclose(vm[1], np.stack([g for _, g in loop]), rtol=1e-7, atol=1e-8)


def test_failed_solve_is_minus_inf_with_finite_gradient():
    pop, _ = _csc_pop(max_steps=4)  # too few steps: every solve fails
    z = pop.space.to_z(pop.init_values())
    lp, g = jax.value_and_grad(pop.log_density)(z)
    assert lp == -np.inf
    assert np.all(np.isfinite(np.asarray(g)))
    d = pop.derived(z, jax.random.key(0))
    assert np.all(np.isneginf(np.asarray(d["log_likelihood"])))


def test_init_values_from_curve_estimates():
    pop, _ = _exp_pop()
    zc = np.asarray(pop.z_ref).copy()
    zc[:, 1] = [0.02, 0.04, 0.03, 0.05]  # growth rates; arms alternate control/Trast
    zc[2, 0] = np.nan  # a curve not estimated: the others set the fixed effect
    v = pop.init_values(zc, 0.3)
    np.testing.assert_allclose(v["beta"][1:], [0.025, 0.045])
    np.testing.assert_allclose(v["beta"][0], np.nanmean(zc[:, 0]))
    assert float(v["sigma"]) == 0.3
    assert np.all((0.05 <= np.asarray(v["omega_line"])) & (np.asarray(v["omega_line"]) <= 0.05))
    assert np.isfinite(pop.log_density(pop.space.to_z(v)))


@pytest.mark.parametrize("kw,match", [
    ({"fixed": {"growth": "shared"}}, "unknown parameter"),
    ({"fixed": {"growth_rate": "line"}}, "'shared', 'arm' or a dict"),
    ({"random": {"cage": ("growth_rate",)}, "groups": {}}, "need groups"),
    ({"groups": {"line": ["A"]}}, "one per subject"),
    ({"uses": {"control": ("rate",)}}, "unknown parameter"),
])
def test_bad_designs_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        _exp_pop(**kw)


def test_csc_population_samples_only_used_drug_slots_and_drops_named_group_effects():
    # untreated, trastuzumab, paclitaxel (as PDXE): the chemotherapy kill rate is per drug,
    # trastuzumab's slot of it is used by no arm, so it has no beta, omega or eta
    table = _table(n_mice=6)
    arms = np.repeat(["untreated", "trastuzumab", "paclitaxel"] * 2, 5)
    table = TidyTable(study=table.study, arm=arms, subject=table.subject, day=table.day,
                      volume_mm3=table.volume_mm3,
                      extra={"line": np.repeat(["A", "A", "A", "B", "B", "B"], 5)})
    regs = default_arm_regimens(table, warn=False)
    batch = fitcsc.make_batch(table, regs)
    regimens = [regs[a] for a in batch.arm]
    lines = [str(x) for x in np.asarray(table.extra["line"])[::5]]
    pop = fitcsc.csc_population(batch, regimens, groups=lines, level="line")
    slots = [lab for lab in pop.labels if lab.startswith("kill_rate[")]
    assert len(slots) == 2
    used = [s for s in slots if s in pop.uses["paclitaxel"]]
    unused = [s for s in slots if s not in used]
    assert len(used) == 1 and len(unused) == 1
    names = pop.space.labels()
    assert f"beta[{used[0]}]" in names and f"omega_line[{used[0]}]" in names
    assert not any(unused[0] in n for n in names)
    assert "omega_line[her2_efficacy_csc]" in names
    z = pop.space.to_z(pop.init_values())
    assert np.isfinite(float(pop.log_density(z)))
    # the unused slot stays at the reference in every curve
    j = pop.labels.index(unused[0])
    zc = pop.curve_z(pop.space.from_z(z))
    np.testing.assert_allclose(np.asarray(zc[:, j]), np.asarray(pop.z_ref[:, j]))

    fewer = fitcsc.csc_population(batch, regimens, groups=lines, level="line",
                                  no_group_effect=("her2_efficacy_csc",))
    names2 = fewer.space.labels()
    assert "omega_line[her2_efficacy_csc]" not in names2
    assert not any(n.startswith("eta_line[") and n.endswith(",her2_efficacy_csc]")
                   for n in names2)
    assert any(n.startswith("beta[her2_efficacy_csc") for n in names2)
    assert "omega_line[her2_efficacy_bulk]" in names2
    assert fewer.space.size == pop.space.size - 1 - 2  # its omega and 2 line effects
    with pytest.raises(ValueError, match="no_group_effect"):
        fitcsc.csc_population(batch, regimens, groups=lines, level="line",
                              no_group_effect=("her2_efficacy",))


def _seeded_pop(**kw):
    """Four mice, two of them seeded before treatment (first row at day -30, volume 0),
    two palpable from day 0; control and trastuzumab arms."""
    table = _table()
    day = table.day.copy()
    seeded = np.isin(table.subject, ["m0", "m1"])
    day[seeded] = np.tile(np.array([-30.0, -10.0, 0.0, 8.0, 21.0]), 2)
    vol = table.volume_mm3.copy()
    vol[seeded & (day == -30.0)] = 0.0
    table = TidyTable(study=table.study, arm=table.arm, subject=table.subject, day=day,
                      volume_mm3=vol, extra=table.extra)
    regs = default_arm_regimens(table, warn=False)
    batch = fitcsc.make_batch(table, regs)
    return fitcsc.csc_population(batch, [regs[a] for a in batch.arm], **kw), batch


def test_v0_by_start_is_the_one_sd_model_with_a_second_sd():
    """With both V0 SDs equal to the one-SD model's, every curve's parameters and
    predictions are the same, and the log density differs by exactly the second SD's
    prior (HalfNormal, on the log scale: plus log omega)."""
    one, _ = _seeded_pop()
    two, _ = _seeded_pop(v0_by_start=True)
    assert one.levels == ("animal",) and two.levels == ("animal", "palpable", "seeded")
    assert two.group_names[1] == ("m2", "m3") and two.group_names[2] == ("m0", "m1")
    names = two.space.labels()
    assert "omega_seeded[initial_volume_mm3]" in names and "eta_palpable[m2,initial_volume_mm3]" \
        in names and "omega_animal[initial_volume_mm3]" not in names
    assert two.space.size == one.space.size + 1  # one more SD, the same effects
    rng = np.random.default_rng(3)
    v1 = one.init_values()
    v1 = {**v1, "beta": v1["beta"] + 0.1 * rng.normal(size=v1["beta"].shape),
          "eta_animal": jnp.asarray(rng.normal(size=v1["eta_animal"].shape)),
          "omega_animal": jnp.asarray([0.3, 0.8])}
    eta, om = np.asarray(v1["eta_animal"]), np.asarray(v1["omega_animal"])
    j = one.re_labels[0].index("initial_volume_mm3")
    v2 = {"beta": v1["beta"], "sigma": v1["sigma"], "omega_animal": om[[1 - j]],
          "eta_animal": eta[:, [1 - j]], "omega_palpable": om[[j]],
          "eta_palpable": eta[[2, 3]][:, [j]], "omega_seeded": om[[j]],
          "eta_seeded": eta[[0, 1]][:, [j]]}
    assert list(one.subject) == ["m0", "m1", "m2", "m3"]
    np.testing.assert_allclose(two.curve_z(v2), one.curve_z(v1), rtol=0, atol=1e-14)
    p1, ok1 = one.predict(v1)
    p2, ok2 = two.predict(v2)
    assert bool(ok1) and bool(ok2)
    np.testing.assert_array_equal(np.asarray(p2), np.asarray(p1))
    extra = stats.halfnorm(scale=1.0).logpdf(om[j]) + math.log(om[j])
    np.testing.assert_allclose(float(two.log_density(two.space.to_z(v2))),
                               float(one.log_density(one.space.to_z(v1))) + extra,
                               rtol=1e-12)
    # a batch with no seeded curve has no "seeded" level
    assert "seeded" not in fitcsc.csc_population(
        *(lambda b, r: (b, [r[a] for a in b.arm]))(
            fitcsc.make_batch(_table(), default_arm_regimens(_table(), warn=False)),
            default_arm_regimens(_table(), warn=False)), v0_by_start=True).levels


def test_no_animal_growth_is_the_full_model_with_its_rate_effects_at_zero():
    """``animal_growth=None`` drops the mouse effect on v_S: every curve's parameters and
    predictions are those of the full model with that effect's etas at 0, and the log
    density differs by exactly the dropped terms (its omega's HalfNormal(0.5) prior on the
    log scale, and a standard normal density at 0 per mouse)."""
    full, _ = _seeded_pop(v0_by_start=True)
    small, _ = _seeded_pop(v0_by_start=True, animal_growth=None)
    assert "animal" in full.levels and "animal" not in small.levels
    names = small.space.labels()
    assert not any("csc_division_rate" in n and n.startswith(("omega_", "eta_")) for n in names)
    assert small.space.size == full.space.size - 1 - 4  # one SD, four mice
    rng = np.random.default_rng(5)
    v = small.init_values()
    v = {**v, "beta": v["beta"] + 0.1 * rng.normal(size=v["beta"].shape),
         "eta_palpable": jnp.asarray(rng.normal(size=v["eta_palpable"].shape)),
         "eta_seeded": jnp.asarray(rng.normal(size=v["eta_seeded"].shape))}
    omega = 0.4
    vf = {**v, "omega_animal": jnp.asarray([omega]), "eta_animal": jnp.zeros((4, 1))}
    np.testing.assert_allclose(small.curve_z(v), full.curve_z(vf), rtol=0, atol=1e-14)
    p1, ok1 = small.predict(v)
    p2, ok2 = full.predict(vf)
    assert bool(ok1) and bool(ok2)
    np.testing.assert_array_equal(np.asarray(p1), np.asarray(p2))
    extra = (stats.halfnorm(scale=0.5).logpdf(omega) + math.log(omega)
             + 4 * stats.norm.logpdf(0.0))
    np.testing.assert_allclose(float(full.log_density(full.space.to_z(vf))),
                               float(small.log_density(small.space.to_z(v))) + extra,
                               rtol=1e-12)


def _three_arm_pop(palpable="Her", **kw):
    """Six mice in three arms: control and Trast seeded before treatment (first rows at
    day -30, volume 0), ``palpable`` (Her) palpable from day 0."""
    table = _table(n_mice=6)
    arm = np.repeat(["control", "control", "Trast", "Trast", palpable, palpable], 5)
    day = table.day.copy()
    seeded = np.isin(table.subject, ["m0", "m1", "m2", "m3"])
    day[seeded] = np.tile(np.array([-30.0, -10.0, 0.0, 8.0, 21.0]), 4)
    vol = table.volume_mm3.copy()
    vol[seeded & (day == -30.0)] = 0.0
    table = TidyTable(study=table.study, arm=arm, subject=table.subject, day=day,
                      volume_mm3=vol, extra={})
    regs = default_arm_regimens(table, warn=False)
    batch = fitcsc.make_batch(table, regs)
    return fitcsc.csc_population(batch, [regs[a] for a in batch.arm], v0_by_start=True,
                                 **kw)


def test_shared_seeded_v0_is_the_per_arm_model_with_equal_seeded_v0s():
    """``seeded_v0="shared"``: the arms seeded before treatment share one typical V0.
    With every seeded arm's V0 equal to the shared one, the curves' parameters and
    predictions are those of the per-arm model, and the log density differs by exactly
    the per-arm priors (scipy's normal densities, each centred on its arm's mean log
    first volume) against the shared one's (centred on the pooled mean)."""
    per_arm, shared = _three_arm_pop(), _three_arm_pop(seeded_v0="shared")
    v0 = "initial_volume_mm3"
    assert [lab for lab in shared.fe_labels if lab.startswith(v0)] == [f"{v0}|seeded",
                                                                          f"{v0}|Her"]
    assert f"{v0}|control" in per_arm.fe_labels and f"{v0}|Trast" in per_arm.fe_labels
    assert shared.space.size == per_arm.space.size - 1
    rng = np.random.default_rng(7)
    v = shared.init_values()
    v = {**v, "beta": v["beta"] + 0.2 * rng.normal(size=v["beta"].shape),
         **{k: jnp.asarray(rng.normal(size=np.shape(v[k]))) for k in v if
            k.startswith("eta_")}}
    i_seed = shared.fe_labels.index(f"{v0}|seeded")
    beta = np.array([v["beta"][shared.fe_labels.index(
        f"{v0}|seeded" if lab in (f"{v0}|control", f"{v0}|Trast") else lab)]
        for lab in per_arm.fe_labels])
    vp = {**v, "beta": jnp.asarray(beta)}
    np.testing.assert_allclose(per_arm.curve_z(vp), shared.curve_z(v), rtol=0, atol=1e-14)
    p1, ok1 = per_arm.predict(vp)
    p2, ok2 = shared.predict(v)
    assert bool(ok1) and bool(ok2)
    np.testing.assert_array_equal(np.asarray(p1), np.asarray(p2))
    j = per_arm.labels.index(v0)
    z_first = np.asarray(per_arm.z_ref)[:, j]
    arm = np.asarray(per_arm.arm)
    b, sd = float(v["beta"][i_seed]), float(shared.prior_scale[i_seed])
    extra = (sum(stats.norm(z_first[arm == a].mean(), sd).logpdf(b) for a in ("control", "Trast"))
             - stats.norm(z_first[np.isin(arm, ["control", "Trast"])].mean(), sd).logpdf(b))
    np.testing.assert_allclose(float(per_arm.log_density(per_arm.space.to_z(vp))),
                               float(shared.log_density(shared.space.to_z(v))) + extra,
                               rtol=1e-12)
    with pytest.raises(ValueError, match=r"arm\(s\) \['Trast', 'control'\] have both"):
        _seeded_pop(v0_by_start=True, seeded_v0="shared")
    with pytest.raises(ValueError, match="seeded_v0 must be"):
        _three_arm_pop(seeded_v0="pooled")
    with pytest.raises(ValueError, match="names its pool 'seeded'"):
        _three_arm_pop(palpable="seeded", seeded_v0="shared")
    with pytest.raises(ValueError, match="names an empty pool"):
        _exp_pop(fixed={"initial_volume_mm3": "shared",
                        "growth_rate": {"control": "", "Trast": "a"}})
    with pytest.raises(ValueError, match=r"names no pool for arm\(s\) \['Trast'\]"):
        _exp_pop(fixed={"initial_volume_mm3": "shared",
                        "growth_rate": {"control": "a"}})


def test_zero_sum_level_is_the_plain_model_restricted_to_effects_that_sum_to_zero():
    """``zero_sum=("seeded",)``: the 4 seeded mice's V0 effects are ``sqrt(4/3) Q u`` with
    ``Q`` orthonormal and orthogonal to the ones (so they sum to zero), the typical V0 is
    their mean, and the log density is the plain model's at those effects less its 4
    standard normal densities of ``eta`` plus the 3 of ``u`` (scipy); init values,
    `derived`, `site_values` and the prior draws keep the sum at zero, and a level that
    cannot sum to zero is refused."""
    from fitcsc.population import zero_sum_basis

    plain = _three_arm_pop(seeded_v0="shared")
    pop = _three_arm_pop(seeded_v0="shared", zero_sum=("seeded",))
    v0 = "initial_volume_mm3"
    q = zero_sum_basis(4)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-15)
    np.testing.assert_allclose(q.sum(0), 0.0, atol=1e-15)
    assert pop.space.size == plain.space.size - 1
    assert pop.is_zero_sum("seeded") and not pop.is_zero_sum("palpable")
    labels = pop.space.labels()
    assert [lab for lab in labels if lab.startswith("eta_seeded")] == [
        f"eta_seeded[zero-sum {k},{v0}]" for k in (1, 2, 3)]
    rng = np.random.default_rng(11)
    v = pop.init_values()
    assert v["eta_seeded"].shape == (3, 1)
    np.testing.assert_allclose(float(jnp.sum(pop.group_effects(v, "seeded"))), 0.0,
                               atol=1e-12)
    for _ in range(2):
        u = rng.normal(size=(3, 1))
        vz = {**v, "beta": v["beta"] + 0.2 * rng.normal(size=v["beta"].shape),
              "eta_seeded": jnp.asarray(u)}
        eta = np.sqrt(4.0 / 3.0) * q @ u
        vp = {**vz, "eta_seeded": jnp.asarray(eta)}
        np.testing.assert_allclose(pop.group_effects(vz, "seeded"), eta, atol=1e-14)
        zc = np.asarray(pop.curve_z(vz))
        np.testing.assert_allclose(zc, np.asarray(plain.curve_z(vp)), atol=1e-14)
        j = pop.labels.index(v0)
        seeded = np.isin(np.asarray(pop.subject), ["m0", "m1", "m2", "m3"])
        b = float(vz["beta"][pop.fe_labels.index(f"{v0}|seeded")])
        np.testing.assert_allclose(zc[seeded, j].mean(), b, atol=1e-13)
        extra = stats.norm.logpdf(u).sum() - stats.norm.logpdf(eta).sum()
        np.testing.assert_allclose(float(pop.log_density(pop.space.to_z(vz))),
                                   float(plain.log_density(plain.space.to_z(vp))) + extra,
                                   rtol=1e-12)
        d = pop.derived(pop.space.to_z(vz), jax.random.key(0))
        np.testing.assert_allclose(d["eta_seeded"], eta, atol=1e-14)
        np.testing.assert_allclose(pop.site_values(d)["eta_seeded"], u, atol=1e-13)
    prior = pop.sample_prior(jax.random.key(3), 4000)
    eta = np.asarray(jax.vmap(lambda e: pop.group_effects({"eta_seeded": e}, "seeded"))(
        prior["eta_seeded"]))
    np.testing.assert_allclose(eta.sum(1), 0.0, atol=1e-12)
    # each effect marginally Normal(0, 1): sd within 4 of its standard errors
    np.testing.assert_allclose(eta.std(0), 1.0, atol=4 * np.sqrt(0.5 / 4000))
    with pytest.raises(ValueError, match=r"zero_sum names level\(s\) \['line'\]"):
        _three_arm_pop(zero_sum=("line",))
    with pytest.raises(ValueError, match="have no curve that uses 'growth_rate'"):
        _exp_pop(random={"animal": ("growth_rate",)}, uses={"control": ("growth_rate",),
                                                            "Trast": ("initial_volume_mm3",)},
                 zero_sum=("animal",))


def test_animal_growth_on_self_renewal_moves_the_net_rate_at_one_division_rate():
    """``animal_growth="self_renewal"``: each mouse's logit(2p - 1) is the typical one plus
    omega * eta, its v_S the typical one; so its net CSC rate v_S (2p - 1) is the typical
    v_S times sigmoid(z_p + omega eta), and a bad label is refused."""
    pop, _ = _seeded_pop(v0_by_start=True, animal_growth="self_renewal")
    names = pop.space.labels()
    assert "omega_animal[self_renewal]" in names
    assert not any(n.startswith(("omega_", "eta_")) and "csc_division_rate" in n for n in names)
    rng = np.random.default_rng(7)
    v = pop.init_values()
    eta = rng.normal(size=v["eta_animal"].shape)
    v = {**v, "omega_animal": jnp.asarray([0.7]), "eta_animal": jnp.asarray(eta)}
    zc = np.asarray(pop.curve_z(v))
    labels = pop.predictor.spec.labels()
    j_p, j_v = labels.index("self_renewal"), labels.index("csc_division_rate")
    beta = np.asarray(v["beta"])
    b_p = beta[list(pop.fe_labels).index("self_renewal")]
    b_v = beta[list(pop.fe_labels).index("csc_division_rate")]
    np.testing.assert_allclose(zc[:, j_p], b_p + 0.7 * eta[:, 0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(zc[:, j_v], b_v, rtol=0, atol=1e-14)
    p = 0.5 + 0.5 / (1.0 + np.exp(-zc[:, j_p]))  # Interval(0.5, 1)
    net = np.exp(zc[:, j_v]) * (2.0 * p - 1.0)
    np.testing.assert_allclose(net, np.exp(b_v) / (1.0 + np.exp(-(b_p + 0.7 * eta[:, 0]))),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="animal_growth"):
        _seeded_pop(v0_by_start=True, animal_growth="carrying_capacity_cells")


def test_untreated_log_growth_is_the_uncrowded_untreated_ode():
    """``untreated_log_growth`` against the ODE without crowding or drug: V(T) / V0 for a
    fast and a slow CSC compartment, and for a CSC rate equal to the bulk's (the limit
    a = c)."""
    from fitcsc.population import untreated_log_growth

    model = fitcsc.ModelConfig(crowding="none")
    days = np.array([5.0, 30.0, 90.0])
    base = dict(bulk_division_rate=0.25, bulk_death_rate=0.3, initial_csc_fraction=0.1,
                csc_death_rate=0.0, initial_volume_mm3=2.0)
    for v_s, p in ((0.3, 0.6), (8.0, 0.515), (0.0625, 0.1)):  # the last: a = c = -0.05
        params = fitcsc.default_params(model, csc_division_rate=v_s, self_renewal=p, **base)
        sol = fitcsc.simulate(model, params, None, jnp.asarray(days), t0=0.0, rtol=1e-11,
                              atol=1e-12, max_steps=100_000)
        want = np.log(np.asarray(sol.volume_mm3) / 2.0)
        got = np.asarray(untreated_log_growth(model, params, days))
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="S/D model"):
        untreated_log_growth(fitcsc.ModelConfig(progenitor=True), params, days)
