"""Posterior summaries against closed forms: Gaussian Laplace, NUTS recovery, intervals."""

import csv
import math
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import fitcsc  # noqa: F401  (float64)
import fitcsc.summary as fs

MU = np.array([1.0, -2.0])
COV = np.array([[2.0, 0.9 * math.sqrt(2.0)], [0.9 * math.sqrt(2.0), 1.0]])  # corr 0.9
PREC = np.linalg.inv(COV)


def _neg_log_gauss(z):
    d = z - MU
    return 0.5 * d @ PREC @ d


def test_laplace_cov_is_inverse_hessian_of_gaussian():
    cov = fs.laplace_cov(_neg_log_gauss, MU)
    np.testing.assert_allclose(cov, COV, rtol=1e-10, atol=1e-12)
    # a (Gauss-Newton) Hessian given directly
    np.testing.assert_allclose(fs.laplace_cov(None, MU, hessian=PREC), COV, rtol=1e-10)


def test_laplace_cov_non_quadratic_against_analytic_hessian():
    # f(z) = sum(exp(z)) + z0 z1:  H = diag(exp(z)) + [[0, 1], [1, 0]]
    z = jnp.array([0.3, 1.1])
    h = np.diag(np.exp(np.asarray(z))) + np.array([[0.0, 1.0], [1.0, 0.0]])
    cov = fs.laplace_cov(lambda z: jnp.sum(jnp.exp(z)) + z[0] * z[1], z)
    np.testing.assert_allclose(cov, np.linalg.inv(h), rtol=1e-10)


def test_laplace_cov_flat_and_negative_directions():
    h = np.diag([4.0, 0.0, -1.0])
    np.testing.assert_allclose(fs.laplace_cov(None, np.zeros(3), hessian=h),
                               np.diag([0.25, 0.0, 0.0]), atol=1e-15)
    np.testing.assert_allclose(
        fs.laplace_cov(None, np.zeros(3), hessian=h, min_curvature=1e-2),
        np.diag([0.25, 100.0, 100.0]), rtol=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        fs.laplace_cov(None, np.zeros(2), hessian=np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="does not match"):
        fs.laplace_cov(None, np.zeros(2), hessian=np.eye(3))


def test_laplace_draws_moments():
    n = 20_000
    x = fs.laplace_draws(MU, COV, n_draws=n, key=jax.random.key(1))
    assert x.shape == (n, 2)
    se_mean = np.sqrt(np.diag(COV) / n)
    assert np.all(np.abs(x.mean(0) - MU) < 4 * se_mean)
    se_cov = np.sqrt((np.outer(np.diag(COV), np.diag(COV)) + COV**2) / n)
    assert np.all(np.abs(np.cov(x.T) - COV) < 4 * se_cov)
    # fixed key -> same draws
    np.testing.assert_array_equal(x, fs.laplace_draws(MU, COV, n_draws=n, key=jax.random.key(1)))


def test_laplace_draws_singular_cov_is_degenerate_not_an_error():
    u = np.array([0.6, 0.8, 0.0])
    cov = 4.0 * np.outer(u, u) - 1e-12 * np.eye(3)  # rank 1, slightly indefinite
    z0 = np.array([1.0, 2.0, 3.0])
    x = fs.laplace_draws(z0, cov, n_draws=5000)
    assert np.all(np.isfinite(x))
    t = (x - z0) @ u
    np.testing.assert_allclose(x - z0, np.outer(t, u), atol=1e-5)  # on the line
    assert abs(t.var() - 4.0) < 4 * 4.0 * math.sqrt(2 / 5000)
    with pytest.raises(ValueError, match="non-finite"):
        fs.laplace_draws(z0, np.full((3, 3), np.inf))


@pytest.fixture(scope="module")
def nuts_gauss():
    res = fs.nuts(lambda z: -_neg_log_gauss(z), MU + 0.5, num_warmup=300, num_samples=300,
                  num_chains=2, seed=3)
    idata = fs.to_inference_data(res.z, ("a", "b"), sample_stats=res.sample_stats,
                                 method="nuts", transforms={"a": np.exp})
    return res, idata


def test_nuts_recovers_correlated_gaussian(nuts_gauss):
    res, _ = nuts_gauss
    assert res.z.shape == (2, 300, 2)
    x = res.z.reshape(-1, 2)
    # ESS >= 200 of 600 here: MCSE of the means <= 0.1
    np.testing.assert_allclose(x.mean(0), MU, atol=0.3)
    np.testing.assert_allclose(np.cov(x.T), COV, rtol=0.25, atol=0.15)
    assert res.num_divergent == 0
    for k in ("diverging", "acceptance_rate", "n_steps", "tree_depth", "energy", "lp",
              "step_size"):
        assert res.sample_stats[k].shape == (2, 300), k
    np.testing.assert_allclose(res.sample_stats["lp"],
                               -np.apply_along_axis(_neg_log_gauss, -1, res.z), atol=1e-8)


def test_nuts_summary_diagnostics(nuts_gauss):
    _, idata = nuts_gauss
    rows = {r["name"]: r for r in fs.summarize(idata)}
    assert set(rows) == {"a", "b", "a_natural"}
    for r in rows.values():
        assert r["r_hat"] < 1.05
        assert r["ess_bulk"] > 100
        assert r["method"] == "nuts"
    assert idata.posterior.attrs["method"] == "nuts"
    assert int(idata.sample_stats["diverging"].sum()) == 0


def test_summarize_laplace_rows_and_natural_scale(tmp_path):
    n = 20_000
    mu, sd = np.array([0.5, -1.0]), np.array([0.2, 0.7])
    x = fs.laplace_draws(mu, np.diag(sd**2), n_draws=n, key=jax.random.key(2))
    idata = fs.to_inference_data(
        x, ("log_ec50", "logit_emax"),
        transforms={"log_ec50": np.exp, "logit_emax": jax.nn.sigmoid})
    rows = fs.summarize(idata, hdi_prob=0.9)
    by = {r["name"]: r for r in rows}
    assert set(by) == {"log_ec50", "logit_emax", "log_ec50_natural", "logit_emax_natural"}
    assert set(fs.SUMMARY_COLUMNS) <= set(rows[0])
    z90 = stats.norm.ppf(0.95)
    for i, name in enumerate(("log_ec50", "logit_emax")):
        r = by[name]
        assert abs(r["mean"] - mu[i]) < 4 * sd[i] / math.sqrt(n)
        assert abs(r["sd"] - sd[i]) < 0.03 * sd[i]
        assert abs(r["hdi_lo"] - (mu[i] - z90 * sd[i])) < 0.05 * sd[i]
        assert abs(r["hdi_hi"] - (mu[i] + z90 * sd[i])) < 0.05 * sd[i]
        assert math.isnan(r["r_hat"])  # one chain of independent draws
        assert r["ess_bulk"] > 0.8 * n
        assert r["method"] == "laplace"
    # lognormal mean exp(mu + s^2 / 2); logit-normal via quadrature
    lognormal_mean = math.exp(mu[0] + sd[0] ** 2 / 2)
    assert abs(by["log_ec50_natural"]["mean"] - lognormal_mean) < 0.01 * lognormal_mean
    gh_x, gh_w = np.polynomial.hermite_e.hermegauss(40)
    logit_mean = np.sum(gh_w / (1 + np.exp(-(mu[1] + sd[1] * gh_x)))) / math.sqrt(2 * math.pi)
    assert abs(by["logit_emax_natural"]["mean"] - logit_mean) < 0.01
    np.testing.assert_allclose(idata.posterior["log_ec50_natural"].values,
                               np.exp(idata.posterior["log_ec50"].values))

    path = tmp_path / "sub" / "summary.csv"
    path.parent.mkdir()
    path.write_text("stale\n")
    fs.write_summary_csv(rows, path)
    with open(path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0])[: len(fs.SUMMARY_COLUMNS)] == list(fs.SUMMARY_COLUMNS)
    assert [b["name"] for b in back] == [r["name"] for r in rows]
    for b, r in zip(back, rows, strict=True):
        for k in ("mean", "sd", "hdi_lo", "hdi_hi", "ess_bulk"):
            assert float(b[k]) == r[k]  # full precision
        assert math.isnan(float(b["r_hat"]))
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.csv"]  # no temp left


def test_to_inference_data_validation():
    x = np.zeros((2, 10, 3))
    with pytest.raises(ValueError, match="distinct names"):
        fs.to_inference_data(x, ("a", "b"))
    with pytest.raises(ValueError, match="distinct names"):
        fs.to_inference_data(x, ("a", "a", "b"))
    with pytest.raises(ValueError, match="unknown name"):
        fs.to_inference_data(x, ("a", "b", "c"), transforms={"d": np.exp})
    with pytest.raises(ValueError, match="method"):
        fs.to_inference_data(x, ("a", "b", "c"), method="mcmc")
    with pytest.raises(ValueError, match="sample_stats"):
        fs.to_inference_data(x, ("a", "b", "c"), sample_stats={"diverging": np.zeros(10)})
    with pytest.raises(ValueError, match="samples must be"):
        fs.to_inference_data(np.zeros(10), ("a",))
    idata = fs.to_inference_data(x[0], ("a", "b", "c"), sample_stats={"lp": np.zeros(10)},
                                 observed={"pcr": np.array([0.3, 0.4])})
    assert idata.posterior["a"].shape == (1, 10)
    assert idata.sample_stats["lp"].shape == (1, 10)
    np.testing.assert_array_equal(idata.observed_data["pcr"].values, [0.3, 0.4])
    with pytest.raises(ValueError, match="z_init"):
        fs.nuts(lambda z: -jnp.sum(z**2), np.zeros((3, 2)), num_chains=2)


def test_predictive_interval_linear_matches_normal_quantiles():
    a, b = np.array([0.5, -1.5]), 0.25
    x = fs.laplace_draws(MU, COV, n_draws=40_000, key=jax.random.key(4))

    def fn(z):  # shape (2,): a linear functional and a constant
        return jnp.stack([a @ z + b, jnp.asarray(7.0)])

    mean, lo, hi = fs.predictive_interval(fn, x, prob=0.95)
    assert mean.shape == lo.shape == hi.shape == (2,)
    m, s = a @ MU + b, math.sqrt(a @ COV @ a)
    q = stats.norm.ppf(0.975)
    assert abs(mean[0] - m) < 4 * s / math.sqrt(x.shape[0])
    assert abs(lo[0] - (m - q * s)) < 0.03 * s
    assert abs(hi[0] - (m + q * s)) < 0.03 * s
    np.testing.assert_allclose([mean[1], lo[1], hi[1]], 7.0)
    # exactly the percentiles of the values; chunked (padded) == one batch; chains flattened
    v = x @ a + b
    np.testing.assert_allclose([lo[0], hi[0]], np.percentile(v, [2.5, 97.5]), rtol=1e-12)
    chunked = fs.predictive_interval(fn, x[:1003].reshape(1, 1003, 2), batch=100)
    whole = fs.predictive_interval(fn, x[:1003])
    for c, w in zip(chunked, whole, strict=True):
        np.testing.assert_allclose(c, w, rtol=1e-12)
    with pytest.raises(ValueError, match="prob"):
        fs.predictive_interval(fn, x, prob=1.5)


# ---- population posteriors -------------------------------------------------------------

@pytest.fixture(scope="module")
def population_posteriors():
    """Exponential and logistic population posteriors of the same synthetic curves."""
    from fitcsc._fit.population import posterior_derived
    from fitcsc._io.arms import default_arm_regimens
    from fitcsc._io.data import TidyTable

    rng = np.random.default_rng(5)
    days = np.arange(0.0, 22.0, 3.0)
    n = 6
    vol = np.concatenate([100 * np.exp((0.04 + 0.01 * rng.normal()) * days
                                       + 0.1 * rng.normal(size=days.size)) for _ in range(n)])
    arms = np.repeat(["control", "control", "control", "Trast", "Trast", "Trast"], days.size)
    table = TidyTable(study=np.array(["s"] * vol.size), arm=arms,
                      subject=np.repeat([f"m{i}" for i in range(n)], days.size),
                      day=np.tile(days, n), volume_mm3=vol)
    regs = default_arm_regimens(table, warn=False)
    batch = fitcsc.make_batch(table, regs)
    out = {}
    for kind in ("exponential", "logistic"):
        pop = fitcsc.baseline_population(kind, batch, [regs[a] for a in batch.arm])
        post = fitcsc.sample(pop.log_density, pop.space.to_z(pop.init_values()),
                             method="chees", num_chains=4, num_warmup=150, num_samples=100)
        derived = posterior_derived(pop, post.z, jax.random.key(1))
        out[kind] = (pop, post, fs.population_inference_data(pop, post, derived), derived)
    return batch, out


def test_population_inference_data_groups_and_dims(population_posteriors):
    batch, out = population_posteriors
    pop, _, idata, _ = out["exponential"]
    for g in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive",
              "observed_data"):
        assert g in idata.groups(), g
    n_obs = int(np.asarray(batch.mask).sum())
    assert idata.log_likelihood["volume_mm3"].dims == ("chain", "draw", "obs")
    assert idata.observed_data.sizes["obs"] == n_obs
    assert idata.posterior["typical"].dims == ("chain", "draw", "fixed_effect")
    assert list(idata.posterior["fixed_effect"].values) == list(pop.fe_labels)
    assert idata.posterior["eta_animal"].dims == ("chain", "draw", "animal", "animal_effect")
    assert idata.posterior["theta"].dims == ("chain", "draw", "subject", "parameter")
    np.testing.assert_allclose(idata.observed_data["volume_mm3"].values,
                               np.asarray(batch.volume_mm3)[np.asarray(batch.mask)])
    assert set(idata.observed_data["arm"].values) == {"control", "Trast"}
    v0 = [i for i, f in enumerate(pop.fe_labels) if f.startswith("initial_volume_mm3")]
    np.testing.assert_allclose(idata.posterior["typical"].values[..., v0],
                               np.exp(idata.posterior["beta"].values[..., v0]), rtol=1e-12)
    rows = fs.summarize(idata, var_names=fs.population_var_names(idata))
    assert {r["name"] for r in rows} >= {"sigma", "typical[initial_volume_mm3|control]"}
    c = fs.convergence(idata)
    assert c["n_draws"] == 400 and c["rhat_max"] >= c["rhat_max_population"] - 1e-12
    assert 0 <= c["n_divergent"] <= 400 and c["ess_bulk_min"] > 0


def test_loo_compare_against_hand_computed_lppd(population_posteriors):
    _, out = population_posteriors
    rows = fs.loo_compare({k: v[2] for k, v in out.items()})
    assert [r["rank"] for r in rows] == [0, 1]
    assert abs(sum(r["weight"] for r in rows) - 1.0) < 1e-9
    for r in rows:
        idata = out[r["model"]][2]
        ll = idata.log_likelihood["volume_mm3"].values
        ll = ll.reshape(-1, ll.shape[-1])
        lppd = float(np.sum(np.log(np.mean(np.exp(ll), axis=0))))
        np.testing.assert_allclose(r["p_loo"], lppd - r["elpd_loo"], rtol=1e-6, atol=1e-6)
        assert r["elpd_loo"] <= lppd
    assert rows[0]["elpd_diff"] == 0.0 and rows[1]["elpd_diff"] >= 0.0


def test_loo_counts_observations_with_a_flat_log_likelihood(population_posteriors):
    """An observation whose log-likelihood is nearly the same in every draw (a censored
    volume far below the detection limit: about -1e-28) gets NaN from PSIS, which made the
    whole model's elpd NaN; it now counts by plain importance sampling, inside the range of
    its log-likelihood, and every other observation keeps its PSIS value."""
    _, out = population_posteriors
    idata = out["exponential"][2]
    ll = idata.log_likelihood["volume_mm3"]
    values = ll.values.copy()
    values[..., 0] = -1e-28 * np.random.default_rng(0).uniform(1.0, 2.0, values.shape[:-1])
    flat = idata.copy()
    flat.log_likelihood["volume_mm3"] = ll.copy(data=values)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # arviz's Pareto fit on identical weights
        assert np.isnan(fs.az.loo(flat, pointwise=True).loo_i.values[0])  # PSIS alone
        base = fs._loo(idata)
    assert np.isfinite(base.loo_i.values).all()
    got = fs.loo_compare({"flat": flat})[0]
    expect = float(base["elpd_loo"]) - float(base.loo_i.values[0])
    np.testing.assert_allclose(got["elpd_loo"], expect, rtol=0, atol=1e-9)
    lppd = float(np.sum(np.log(np.mean(np.exp(values.reshape(-1, values.shape[-1])), axis=0))))
    np.testing.assert_allclose(got["p_loo"], lppd - got["elpd_loo"], rtol=1e-9)


def test_population_plots(population_posteriors, tmp_path):
    from fitcsc._jobs.population_plot import plot_ppc, plot_vpc

    _, out = population_posteriors
    idata = out["logistic"][2]
    files = fs.plot_diagnostics(idata, tmp_path, forest_coords=None)
    cov = plot_ppc(idata, tmp_path / "ppc.png")
    plot_vpc(idata, tmp_path / "vpc.png")
    for f in [*files, tmp_path / "ppc.png", tmp_path / "vpc.png"]:
        assert pathlib.Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0.5 < cov <= 1.0


def test_concat_chains_joins_runs_as_one_posterior(population_posteriors, tmp_path):
    """Two runs that hold chains 0-1 and 2-3 of one posterior, each with its own seed,
    join into the InferenceData of all four chains: the same values in every chain
    group, the same R-hat and ESS, the settings of one run with the chains summed and
    both seeds. Runs of another sampler setting or model, a seed used twice, and a
    single run are refused by name."""
    _, out = population_posteriors
    pop, post, whole, derived = out["exponential"]
    halves = []
    for seed, part in ((0, slice(0, 2)), (1, slice(2, 4))):
        p = post._replace(z=post.z[part],
                          sample_stats={k: v[part] for k, v in post.sample_stats.items()},
                          settings={**post.settings, "num_chains": 2, "seed": seed})
        halves.append(fs.population_inference_data(pop, p, {k: v[part]
                                                            for k, v in derived.items()}))
    paths = []
    for i, h in enumerate(halves):
        paths.append(tmp_path / f"run{i}.nc")
        h.to_netcdf(str(paths[-1]))
    merged = fs.concat_chains(paths)
    for g in fs.CHAIN_GROUPS:
        for v in getattr(whole, g).data_vars:
            np.testing.assert_array_equal(getattr(merged, g)[v].values,
                                          getattr(whole, g)[v].values, err_msg=f"{g}.{v}")
    assert list(merged.posterior["chain"].values) == [0, 1, 2, 3]
    np.testing.assert_array_equal(merged.observed_data["volume_mm3"].values,
                                  whole.observed_data["volume_mm3"].values)
    got, want = fs.convergence(merged), fs.convergence(whole)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, err_msg=k)
    a = merged.posterior.attrs
    assert a["setting_num_chains"] == 4 and a["setting_seed"] == "0,1" and a["merged_runs"] == 2

    again = tmp_path / "again.nc"
    again.write_bytes(paths[0].read_bytes())
    with pytest.raises(ValueError, match=r"again\.nc has seed 0, as an earlier run"):
        fs.concat_chains([paths[0], again])
    other = halves[1].copy()
    for g in fs.CHAIN_GROUPS:
        getattr(other, g).attrs["setting_num_warmup"] = 7
    with pytest.raises(ValueError, match="setting_num_warmup=7.*not the same sampler"):
        fs.concat_chains([halves[0], other], names=["a", "b"])
    with pytest.raises(ValueError, match="b's posterior coordinate 'fixed_effect' differs"):
        fs.concat_chains([halves[0], out["logistic"][2]], names=["a", "b"])
    fewer = halves[1].copy()
    fewer.posterior = fewer.posterior.drop_vars("sigma")
    with pytest.raises(ValueError, match="b's posterior variables"):
        fs.concat_chains([halves[0], fewer], names=["a", "b"])
    with pytest.raises(ValueError, match="at least 2 runs"):
        fs.concat_chains([halves[0]])
