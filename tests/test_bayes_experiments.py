"""The Bayesian experiments run with --quick (tiny sampler settings): outputs exist and
hold what RESULT.md reports."""

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    sys.path.insert(0, str(ROOT / "experiments"))  # the experiments import _bayes
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIGURES = ("trace_rank.png", "pair.png", "forest.png", "ppc.png", "vpc.png", "trastuzumab.png")


@pytest.mark.slow
def test_mas98_bayes_quick(tmp_path):
    exp = _load("mas98_bayes")
    s = exp.main(exp.parse_args(["--quick", "--no-progress", "--out", str(tmp_path)]))
    assert s["n_curves"] == 4 and s["arms"] == ["Ctrl", "Trast"]
    assert s["n_censored"] > 0  # pre-treatment zeros enter the M3 likelihood
    for name in (*FIGURES, "posterior.nc", "summary.csv", "loo.csv", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert [r["model"] for r in s["loo"]] != [] and {r["model"] for r in s["loo"]} == {
        "csc", "exponential"}
    h = s["trastuzumab"]
    assert 0 <= h["csc_term"]["q025"] <= h["csc_term"]["mean"] <= h["csc_term"]["q975"] <= 1
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["convergence"]["n_draws"] == 120
    _check_starts_from_posterior(exp, tmp_path / "posterior.nc")
    _check_merge(exp, tmp_path, saved)


def _check_merge(exp, run, saved):
    """``--merge`` joins finished runs' chains (a copy of the quick run relabelled seed 1,
    so the merge holds each chain twice: the same posterior mean and interval, twice
    the draws), and refuses runs of other model options, a seed used twice, --out among
    the runs and --baselines, each in one line."""
    import fitcsc.summary as fs

    copy = run / "seed1"
    copy.mkdir()
    idata = fs.az.from_netcdf(str(run / "posterior.nc"))
    for g in fs.CHAIN_GROUPS:
        getattr(idata, g).attrs["setting_seed"] = 1
    idata.to_netcdf(str(copy / "posterior.nc"))
    other = json.loads(json.dumps(saved))
    other["sampler"]["seed"] = 1
    (copy / "summary.json").write_text(json.dumps(other))
    merge = ["--quick", "--no-progress", "--merge", str(run), str(copy)]
    m = exp.main(exp.parse_args([*merge, "--out", str(run / "merged")]))
    assert m["sampler"]["num_chains"] == 8 and m["sampler"]["seed"] == [0, 1]
    assert m["convergence"]["n_draws"] == 240 and m["loo"][0]["model"] == "csc"
    for term in ("csc_term", "bulk_term"):
        for k in ("mean", "q025", "q975"):
            assert abs(m["trastuzumab"][term][k] - saved["trastuzumab"][term][k]) < 1e-12
    assert "- Merged: the chains of 2 runs (seeds 0, 1)" in (run / "merged" / "RESULT.md"
                                                               ).read_text()
    for extra, match in ((["--v0-by-start"], "summary.json: v0_by_start is False, this "
                                             "command's options give True"),
                         (["--baselines", "exponential"], "drop --baselines")):
        with pytest.raises(SystemExit, match=match):
            exp.main(exp.parse_args([*merge, *extra, "--out", str(run / "x")]))
    with pytest.raises(SystemExit, match="seed 0, as an earlier run"):
        exp.main(exp.parse_args(["--quick", "--merge", str(run), str(run),
                                 "--out", str(run / "x")]))
    with pytest.raises(SystemExit, match="is one of the merged runs"):
        exp.main(exp.parse_args([*merge, "--out", str(copy)]))


def _check_starts_from_posterior(exp, path):
    """`starts_from_posterior` reads back draws of the best chain: the log density at the
    starts is the one the sampler recorded at those draws (an exact round trip through
    the netCDF file), and a model with other sites is refused by name."""
    import jax
    import numpy as np
    import xarray as xr
    from _bayes import reparameterise, starts_from_posterior

    from fitcsc.population import csc_population

    _, batch, regs = exp.load(None, quick=True)
    v0 = "initial_volume_mm3"
    pop = csc_population(batch, regs, effects="drug", stimulation=True,
                         omega_scale={f"animal|{v0}": 3.0})
    z, info = starts_from_posterior(pop, path, 3)
    with xr.open_dataset(path, group="sample_stats") as st:
        lp = st["lp"].values
    assert info["chain"] == int(np.argmax(lp.mean(axis=1)))
    assert info["draws"][::2] == [0, 29] and z.shape == (3, pop.space.size)
    dens = reparameterise(pop)[2]
    np.testing.assert_allclose(np.asarray(jax.vmap(dens)(z)),
                               lp[info["chain"], info["draws"]], rtol=1e-9)
    other = csc_population(batch, regs, effects="drug", stimulation=True, v0_by_start=True)
    with pytest.raises(ValueError, match="posterior variable"):
        starts_from_posterior(other, path, 3)


@pytest.mark.slow
def test_pdxe_bayes_quick(tmp_path):
    exp = _load("pdxe_bayes")
    s = exp.main(exp.parse_args(["--quick", "--no-progress", "--out", str(tmp_path)]))
    assert s["n_lines"] == 3 and s["n_curves"] == 9
    for name in (*FIGURES, "lines.png", "lines.csv", "posterior.nc", "RESULT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = (tmp_path / "lines.csv").read_text().splitlines()
    assert rows[0].startswith("line,arm,parameter") and len(rows) > 3
    assert set(s["line_sd_z_scale"]) >= {"her2_efficacy_csc", "her2_efficacy_bulk"}


class _Space:
    def __init__(self, labels):
        self._labels = tuple(labels)

    def labels(self):
        return self._labels


class _Pop:
    """A stand-in with the fields `reparameterise` reads for centring: two groups, two
    effects (not a zero-sum level), and a log density of ``z`` (any smooth function will
    do for the change of variables)."""

    levels = ("line",)
    group_names = (("a", "b"),)

    def __init__(self):
        import jax.numpy as jnp

        self.space = _Space(["beta[x]", "omega_line[x]", "omega_line[y]",
                             "eta_line[a,x]", "eta_line[a,y]", "eta_line[b,x]",
                             "eta_line[b,y]"])
        self.log_density = lambda z: -0.5 * jnp.sum((z - 0.3) ** 2) + jnp.sin(z[1] * z[3])

    def is_zero_sum(self, level):
        return False


def test_centring_round_trip_and_jacobian():
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(ROOT / "experiments"))
    from _bayes import reparameterise

    pop = _Pop()
    to_w, to_z, dens = reparameterise(pop, ["line:x"])
    z = jnp.asarray([0.1, 0.4, -0.2, 1.3, -0.7, 0.5, 0.9])
    w = to_w(z)
    # the x deviations are omega_x * eta; everything else is untouched
    np.testing.assert_allclose(w[jnp.asarray([3, 5])], np.exp(0.4) * z[jnp.asarray([3, 5])])
    np.testing.assert_allclose(w[jnp.asarray([0, 1, 2, 4, 6])], z[jnp.asarray([0, 1, 2, 4, 6])])
    np.testing.assert_allclose(to_z(w), z, rtol=1e-12)
    # density of w = density of z at to_z(w) + log |det d to_z / d w|
    logdet = np.linalg.slogdet(np.asarray(jax.jacfwd(to_z)(w)))[1]
    np.testing.assert_allclose(dens(w), pop.log_density(z) + logdet, rtol=1e-12)
    same = reparameterise(pop, [])
    np.testing.assert_allclose(same[2](z), pop.log_density(z))


def test_net_rate_is_an_exact_shear_of_the_mas98_model():
    """``net_rate``: w holds log(v_S (2p - 1)) in place of log v_S; the change of variables
    is exact (round trip, log-Jacobian 0 by autodiff, the same log density and
    predictions), alone and with V0 mouse effects centred."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fitcsc.population import csc_population

    exp = _load("mas98_bayes")
    from _bayes import reparameterise

    _, batch, regs = exp.load(None, quick=True)
    pop = csc_population(batch, regs, effects="drug", stimulation=True, v0_by_start=True)
    labels = pop.space.labels()
    i_v, i_p = labels.index("beta[csc_division_rate]"), labels.index("beta[self_renewal]")
    z0 = pop.space.to_z(pop.init_values())
    rng = np.random.default_rng(0)
    log_density = jax.jit(lambda z: pop.log_density(z))  # compiled once: a point is cheap
    predict = jax.jit(lambda z: pop.predict(pop.space.from_z(z))[0])
    for centre in ([], ["seeded:initial_volume_mm3", "animal:csc_division_rate"]):
        to_w, to_z, dens = (jax.jit(f) for f in reparameterise(
            pop, centre, ("csc_division_rate", "self_renewal")))
        _, to_z_c, _ = reparameterise(pop, centre)  # centring alone
        for _ in range(3):
            z = z0 + 0.2 * jnp.asarray(rng.normal(size=z0.shape))
            w = to_w(z)
            np.testing.assert_allclose(to_z(w), z, rtol=1e-13, atol=1e-13)
            t = pop.typical(z[: len(pop.fe_labels)])
            v_s = float(t[pop.fe_labels.index("csc_division_rate")])
            p = float(t[pop.fe_labels.index("self_renewal")])
            np.testing.assert_allclose(float(w[i_v]), np.log(v_s * (2 * p - 1)), rtol=1e-12)
            assert float(w[i_p]) == float(z[i_p])
            # density of w = density of z + log |det dz/dw|; the shear adds nothing
            logdet = np.linalg.slogdet(np.asarray(jax.jacfwd(to_z)(w)))[1]
            logdet_c = np.linalg.slogdet(np.asarray(jax.jacfwd(to_z_c)(w)))[1]
            np.testing.assert_allclose(logdet, logdet_c, atol=1e-12)
            np.testing.assert_allclose(float(dens(w)), float(log_density(z)) + logdet,
                                       rtol=1e-12)
            # the same natural parameters, so the same predictions
            np.testing.assert_allclose(np.asarray(predict(to_z(w))), np.asarray(predict(z)),
                                       rtol=1e-12)
    import pytest

    with pytest.raises(ValueError, match="net_rate"):
        reparameterise(pop, (), ("csc_division_rate", "carrying_capacity_cells"))


def test_laplace_preconditioner_gaussian():
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(ROOT / "experiments"))
    from _bayes import laplace_preconditioner

    a = np.asarray([[4.0, 1.9, 0.0], [1.9, 1.0, 0.0], [0.0, 0.0, 0.01]])  # a ridge, a flat side
    mean = np.asarray([1.0, -2.0, 0.5])
    prec = np.linalg.inv(a)

    def log_density(z):
        d = z - jnp.asarray(mean)
        return -0.5 * d @ jnp.asarray(prec) @ d

    z, lin, info = laplace_preconditioner(log_density, jnp.zeros(3), lbfgs_steps=50,
                                          floor=1e-3)
    np.testing.assert_allclose(z, mean, atol=1e-6)
    np.testing.assert_allclose(np.asarray(lin) @ np.asarray(lin).T, a, rtol=1e-5, atol=1e-8)
    assert info["n_negative_eigenvalues"] == 0 and info["n_floored"] == 0
    # a floor caps the scale of flat directions
    _, lin2, info2 = laplace_preconditioner(log_density, z, lbfgs_steps=0, floor=1.0)
    assert info2["n_floored"] >= 1
    assert np.max(np.linalg.eigvalsh(np.asarray(lin2) @ np.asarray(lin2).T)) <= 1.0 + 1e-9


def test_sampler_overrides_from_the_command_line(tmp_path):
    exp = _load("pdxe_bayes")
    from _bayes import sampler_settings

    args = exp.parse_args(["--method", "nuts", "--chains", "4", "--max-tree-depth", "6",
                           "--init-scale", "0.5", "--dense-mass", "--precondition",
                           "--centre", "line:kill_rate[0]"])
    s = sampler_settings(args, exp.FULL)
    assert s == {**exp.FULL, "method": "nuts", "num_chains": 4, "max_tree_depth": 6,
                 "init_scale": 0.5, "dense_mass": True}
    assert args.centre == ["line:kill_rate[0]"] and args.precondition
    more = exp.parse_args(["--no-line-effect", "her2_efficacy_csc", "--checkpoint"])
    assert more.no_line_effect == ["her2_efficacy_csc"] and more.checkpoint
    assert sampler_settings(more, exp.FULL) == exp.FULL
    assert sampler_settings(exp.parse_args([]), exp.FULL) == exp.FULL
    mas = _load("mas98_bayes")
    assert sampler_settings(mas.parse_args(["--max-leapfrog", "64"]), mas.FULL)[
        "max_leapfrog_steps"] == 64
    ck = mas.parse_args(["--checkpoint", "--seed", "3", "--method", "nuts", "--dense-mass"])
    assert ck.checkpoint and ck.seed == 3 and not mas.parse_args([]).checkpoint
    from _bayes import script_checkpoint

    assert script_checkpoint(mas.parse_args([]), tmp_path, "mas98_bayes") is None
    digest = {}  # the options that shape a run, not --no-progress or --merge (nor, with
    # NUTS, whose draws do not depend on how many follow, --draws)
    for name, argv in (("a", ["--checkpoint", "--seed", "3"]),
                       ("b", ["--checkpoint", "--seed", "3", "--no-progress", "--merge", "x"]),
                       ("c", ["--checkpoint", "--seed", "4"]),
                       ("d", ["--checkpoint", "--seed", "3", "--draws", "50"]),
                       ("e", ["--checkpoint", "--method", "nuts", "--draws", "50"]),
                       ("f", ["--checkpoint", "--method", "nuts", "--draws", "80"])):
        digest[name] = json.loads(script_checkpoint(mas.parse_args(argv), tmp_path,
                                                    "mas98_bayes")._manifest[1])["fingerprint"]
    assert digest["a"] == digest["b"] != digest["c"]
    assert digest["d"] != digest["a"] and digest["e"] == digest["f"]
    assert mas.parse_args([]).seed == 0 and mas.parse_args([]).centre == []
    assert not mas.parse_args([]).net_rate and not mas.parse_args([]).v0_by_start
    assert mas.parse_args(["--net-rate", "--v0-by-start"]).net_rate
    assert mas.parse_args([]).seeded_v0_scale == 3.0
    cen = mas.parse_args(["--centre", "animal:initial_volume_mm3", "--precondition",
                          "--lbfgs-steps", "200"])
    assert cen.centre == ["animal:initial_volume_mm3"] and cen.precondition
    assert cen.lbfgs_steps == 200 and not mas.parse_args([]).precondition
    assert sampler_settings(ck, mas.FULL) == {**mas.FULL, "method": "nuts", "dense_mass": True}


@pytest.mark.parametrize("seeded_v0", ["arm", "shared"])
def test_seeded_ref_is_an_exact_change_of_variables_of_the_mas98_model(seeded_v0):
    """``seeded_ref``: w holds, per seeded curve, the centred V0 deviation shifted by its
    untreated growth up to its first measured volume, and per typical V0 (an arm's, or
    with ``seeded_v0="shared"`` the one of both seeded arms) the typical log V0 shifted
    by the typical growth; exact (round trip, log |det dz/dw| = -n log omega by autodiff,
    the density of w is that of z plus it, the same predictions), alone and with the net
    rate and centred v_S effects."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fitcsc.population import csc_population, seeded_reference_days, untreated_log_growth

    exp = _load("mas98_bayes")
    from _bayes import reparameterise

    _, batch, regs = exp.load(None, quick=True)
    pop = csc_population(batch, regs, effects="drug", stimulation=True, v0_by_start=True,
                         seeded_v0=seeded_v0)
    assert pop.group_names[pop.levels.index("seeded")] == tuple(batch.subject)  # all seeded
    v0_fe = [lab for lab in pop.fe_labels if lab.startswith("initial_volume_mm3|")]
    assert v0_fe == (["initial_volume_mm3|seeded"] if seeded_v0 == "shared" else
                     [f"initial_volume_mm3|{a}" for a in dict.fromkeys(batch.arm)])
    assert len(set(batch.arm)) == 2
    labels = pop.space.labels()
    v0 = "initial_volume_mm3"
    j_om = labels.index(f"omega_seeded[{v0}]")
    t_ref = seeded_reference_days(pop.curves)
    t0 = np.asarray(batch.t0_day)
    assert np.all(t0 < t_ref) and np.all(t_ref <= 0)
    z0 = pop.space.to_z(pop.init_values())
    rng = np.random.default_rng(1)
    log_density = jax.jit(lambda z: pop.log_density(z))  # compiled once: a point is cheap
    predict = jax.jit(lambda z: pop.predict(pop.space.from_z(z))[0])
    for centre, net in (([], None), (["animal:csc_division_rate"],
                                     ("csc_division_rate", "self_renewal"))):
        to_w, to_z, dens = (jax.jit(f) for f in reparameterise(pop, centre, net,
                                                               seeded_ref="seeded"))
        to_w0, to_z0, dens_plain = (jax.jit(f) for f in reparameterise(pop, centre, net))
        for _ in range(3):
            z = z0 + 0.3 * jnp.asarray(rng.normal(size=z0.shape))
            w = to_w(z)
            np.testing.assert_allclose(to_z(w), z, rtol=1e-12, atol=1e-12)
            # w_beta + w_eta of a seeded curve: log V0 + its growth to t_ref
            values = pop.space.from_z(z)
            zc = pop.curve_z(values)
            theta = jax.vmap(pop.predictor.spec.from_z)(zc)
            growth = untreated_log_growth(pop.predictor.model, theta, t_ref - t0)
            for c, s in enumerate(batch.subject):
                pool = "seeded" if seeded_v0 == "shared" else batch.arm[c]
                wb = w[labels.index(f"beta[{v0}|{pool}]")]
                we = w[labels.index(f"eta_seeded[{s},{v0}]")]
                np.testing.assert_allclose(float(wb + we),
                                           float(zc[c, pop.labels.index(v0)] + growth[c]),
                                           rtol=1e-12)
            # everything but the seeded V0 block is as without seeded_ref
            moved = [i for i, lab in enumerate(labels)
                     if lab.startswith(f"beta[{v0}|") or lab.startswith("eta_seeded")]
            keep = np.setdiff1d(np.arange(len(labels)), moved)
            np.testing.assert_allclose(np.asarray(w)[keep], np.asarray(to_w0(z))[keep],
                                       rtol=1e-13, atol=1e-13)
            # the density of w is that of z plus log |det dz/dw|, and that is the
            # other coordinates' plus -n log omega_seeded
            logdet = np.linalg.slogdet(np.asarray(jax.jacfwd(to_z)(w)))[1]
            w0 = to_w0(z)
            logdet0 = np.linalg.slogdet(np.asarray(jax.jacfwd(to_z0)(w0)))[1]
            np.testing.assert_allclose(logdet, logdet0 - len(batch.subject) * float(z[j_om]),
                                       rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(float(dens(w)), float(log_density(z)) + logdet,
                                       rtol=1e-12)
            np.testing.assert_allclose(float(dens_plain(w0)),
                                       float(log_density(z)) + logdet0, rtol=1e-12)
            np.testing.assert_allclose(np.asarray(predict(to_z(w))),
                                       np.asarray(predict(z)), rtol=1e-11)
    with pytest.raises(ValueError, match="seeded_ref"):
        reparameterise(pop, ["seeded:initial_volume_mm3"], None, seeded_ref="seeded")
    with pytest.raises(ValueError, match="no level"):
        reparameterise(pop, [], None, seeded_ref="palpable")
    args = exp.parse_args(["--v0-by-start", "--seeded-ref", "--seeded-v0", "shared"])
    assert args.seeded_ref and not exp.parse_args([]).seeded_ref
    assert args.seeded_v0 == "shared" and exp.parse_args([]).seeded_v0 == "arm"


def test_seeded_ref_at_a_zero_sum_level_is_an_exact_change_of_variables():
    """``seeded_ref`` when the seeded mice's V0 effects sum to zero (``--zero-sum-seeded``):
    w holds the typical log V0 plus the mean growth to the reference days, and the basis
    coordinates ``omega u + Q^T G / s``; so each curve's log volume at its reference day is
    ``w_beta + s (Q w_u)_c`` (the untreated ODE's closed form), and the map is exact:
    round trip, log |det dz/dw| = the other coordinates' - (n - 1) log omega by
    autodiff, the density of w that of z plus it, the same predictions. Centring the
    level and a per-arm typical V0 are refused."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fitcsc.population import (
        csc_population,
        seeded_reference_days,
        untreated_log_growth,
        zero_sum_basis,
    )

    exp = _load("mas98_bayes")
    from _bayes import reparameterise

    _, batch, regs = exp.load(None, quick=True)
    pop = csc_population(batch, regs, effects="drug", stimulation=True, v0_by_start=True,
                         seeded_v0="shared", zero_sum=("seeded",))
    n = len(batch.subject)
    v0 = "initial_volume_mm3"
    labels = pop.space.labels()
    j_om = labels.index(f"omega_seeded[{v0}]")
    q, s = zero_sum_basis(n), np.sqrt(n / (n - 1))
    u_i = [labels.index(f"eta_seeded[zero-sum {k},{v0}]") for k in range(1, n)]
    t_ref = seeded_reference_days(pop.curves)
    t0 = np.asarray(batch.t0_day)
    z0 = pop.space.to_z(pop.init_values())
    rng = np.random.default_rng(5)
    to_w, to_z, dens = reparameterise(pop, [], None, seeded_ref="seeded")
    to_w0, to_z0, _ = reparameterise(pop, [], None)
    z = z0 + 0.3 * jnp.asarray(rng.normal(size=z0.shape))
    w = to_w(z)
    np.testing.assert_allclose(to_z(w), z, rtol=1e-12, atol=1e-12)
    zc = pop.curve_z(pop.space.from_z(z))
    theta = jax.vmap(pop.predictor.spec.from_z)(zc)
    growth = np.asarray(untreated_log_growth(pop.predictor.model, theta, t_ref - t0))
    at_ref = float(w[labels.index(f"beta[{v0}|seeded]")]) + s * q @ np.asarray(w)[u_i]
    np.testing.assert_allclose(at_ref, np.asarray(zc[:, pop.labels.index(v0)]) + growth,
                               rtol=1e-12)
    moved = [labels.index(f"beta[{v0}|seeded]"), *u_i]
    keep = np.setdiff1d(np.arange(len(labels)), moved)
    np.testing.assert_allclose(np.asarray(w)[keep], np.asarray(to_w0(z))[keep], rtol=1e-13,
                               atol=1e-13)
    logdet = np.linalg.slogdet(np.asarray(jax.jacfwd(to_z)(w)))[1]
    logdet0 = np.linalg.slogdet(np.asarray(jax.jacfwd(to_z0)(to_w0(z))))[1]
    np.testing.assert_allclose(logdet, logdet0 - (n - 1) * float(z[j_om]), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(float(dens(w)), float(pop.log_density(z)) + logdet, rtol=1e-12)
    a, _ = pop.predict(pop.space.from_z(to_z(w)))
    b, _ = pop.predict(pop.space.from_z(z))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11)
    with pytest.raises(ValueError, match="sums to zero"):
        reparameterise(pop, ["seeded:initial_volume_mm3"], None)
    per_arm = csc_population(batch, regs, effects="drug", stimulation=True, v0_by_start=True,
                             zero_sum=("seeded",))
    with pytest.raises(ValueError, match="one typical V0 for exactly its curves"):
        reparameterise(per_arm, [], None, seeded_ref="seeded")
    args = exp.parse_args(["--v0-by-start", "--zero-sum-seeded"])
    assert args.zero_sum_seeded and not exp.parse_args([]).zero_sum_seeded
    with pytest.raises(SystemExit, match="--zero-sum-seeded needs --v0-by-start"):
        exp.main(exp.parse_args(["--quick", "--zero-sum-seeded"]))
