"""fitcsc.sample: NUTS (diagonal, dense) and ChEES on Gaussians with a known answer,
statistics, progress, timing, vmap of run_chains, thinning, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitcsc
from fitcsc._fit.sample import run_chains

MU = np.array([1.0, -2.0, 0.5])
COV = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 0.04]])
PREC = np.linalg.inv(COV)


def log_gauss(z):
    d = z - MU
    return -0.5 * d @ PREC @ d


@pytest.mark.parametrize("method,dense", [("nuts", False), ("nuts", True), ("chees", False)])
def test_recovers_correlated_gaussian(method, dense):
    calls = []
    post = fitcsc.sample(log_gauss, MU + 0.5, method=method, dense_mass=dense, num_chains=4,
                         num_warmup=300, num_samples=300, seed=1,
                         progress=lambda phase, done, total: calls.append((phase, done, total)))
    assert post.z.shape == (4, 300, 3)
    x = post.z.reshape(-1, 3)
    # 1200 draws, ESS well above 200 here: MCSE of the means <= 0.07 (SD 1)
    np.testing.assert_allclose(x.mean(0), MU, atol=0.25)
    np.testing.assert_allclose(np.cov(x.T), COV, rtol=0.3, atol=0.1)
    assert post.num_divergent == 0
    for k in ("diverging", "acceptance_rate", "n_steps", "energy", "lp", "step_size",
              "tree_depth"):
        assert post.sample_stats[k].shape == (4, 300), k
    np.testing.assert_allclose(post.sample_stats["lp"],
                               np.apply_along_axis(log_gauss, -1, post.z), atol=1e-8)
    assert set(post.timing) - {"init_s"} == {"compile_s", "warmup_s", "sampling_s"}
    assert all(v >= 0 for v in post.timing.values())
    assert ("sampling", 300, 300) in calls and calls[0][0] == "warmup"
    assert any(p == "warmup" and 0 < d < t for p, d, t in calls)  # progress inside warm-up
    assert post.settings["method"] == method


@pytest.mark.parametrize("method", ["nuts", "chees"])
def test_warmup_stats_trace_the_adaptation(method):
    """The warm-up's step sizes and leapfrog counts, step by step: shapes, the values
    a callback with ``diagnostics`` sees, and (NUTS) the last step size is the one the
    draws use; a Gaussian of scale 0.2 along one axis needs steps well under 1."""
    from fitcsc.population import WARMUP_STATS, warmup_summary

    seen = []

    def progress(phase, done, total, diagnostics=None):
        seen.append((phase, done, diagnostics))

    post = fitcsc.sample(log_gauss, MU, method=method, num_chains=4, num_warmup=200,
                         num_samples=50, seed=4, progress=progress)
    w = post.warmup_stats
    assert set(w) == set(WARMUP_STATS)
    assert all(v.shape == (200,) and np.all(np.isfinite(v)) for v in w.values())
    assert np.all(w["step_size"] > 0) and np.all(w["n_leapfrog"] >= 1)
    assert np.all((w["acceptance_rate"] >= 0) & (w["acceptance_rate"] <= 1))
    assert np.all((w["n_divergent"] >= 0) & (w["n_divergent"] <= 4))
    assert 0.01 < w["step_size"][-1] < 1.0  # the narrow axis (SD 0.2) sets the step
    if method == "nuts":  # adapted per chain: the draws' step sizes are the last ones
        np.testing.assert_allclose(np.median(post.sample_stats["step_size"][:, 0]),
                                   w["step_size"][-1], rtol=1e-12)
    warm = [d for p, n, d in seen if p == "warmup" and 0 < n < 200]
    assert warm and all(set(d) == set(WARMUP_STATS) for d in warm)
    drawn = [(n, d) for p, n, d in seen if p == "sampling" and n > 0]
    assert drawn and all(set(d) == {"n_divergent"} for _, d in drawn)
    assert drawn[-1] == (50, {"n_divergent": post.num_divergent})
    s = warmup_summary(w)
    assert s["final_step_size"] == float(w["step_size"][-1])
    assert s["n_leapfrog_max"] == float(w["n_leapfrog"].max())
    assert s["n_divergent"] == int(w["n_divergent"].sum())


def test_nuts_without_warmup_keeps_an_empty_trace():
    """``num_warmup=0`` (NUTS): draws from the start's kernel, and a warm-up trace of
    length 0 that the summary reads as no warm-up."""
    from fitcsc.population import WARMUP_STATS, warmup_summary

    post = fitcsc.sample(log_gauss, MU, method="nuts", num_chains=2, num_warmup=0,
                         num_samples=10, seed=6)
    assert post.z.shape == (2, 10, 3) and np.all(np.isfinite(post.z))
    assert set(post.warmup_stats) == set(WARMUP_STATS)
    assert all(v.shape == (0,) for v in post.warmup_stats.values())
    assert warmup_summary(post.warmup_stats) is None


def test_chees_leapfrog_cap_bounds_every_step():
    """``max_leapfrog_steps`` caps the leapfrog steps of every warm-up and sampling step
    (the Gaussian's long axis asks for more than 3 at this step size)."""
    post = fitcsc.sample(log_gauss, MU, method="chees", num_chains=4, num_warmup=150,
                         num_samples=60, seed=5, max_leapfrog_steps=3)
    assert post.warmup_stats["n_leapfrog"].max() <= 3
    assert post.sample_stats["n_steps"].max() <= 3
    assert post.settings["max_leapfrog_steps"] == 3
    free = fitcsc.sample(log_gauss, MU, method="chees", num_chains=4, num_warmup=150,
                         num_samples=60, seed=5)
    assert free.warmup_stats["n_leapfrog"].max() > 3  # the cap, not the problem, binds


def test_z_log_density_adds_the_log_jacobian():
    spec = fitcsc.baseline_predictor("gompertz").spec  # three Positive parameters

    def log_natural(values):  # independent exponentials, rate 1, on the natural scale
        return -(values.initial_volume_mm3 + values.gompertz_rate + values.capacity_mm3)

    f = fitcsc.z_log_density(spec, log_natural)
    z = jnp.array([0.1, -0.3, 0.7])
    np.testing.assert_allclose(f(z), float(jnp.sum(-jnp.exp(z) + z)), rtol=1e-12)


def test_run_chains_vmaps_over_data_sets():
    """vmap over data sets == one call per data set (same keys)."""
    shifts = jnp.array([0.0, 3.0])
    keys = jax.random.split(jax.random.key(0), 2)

    def one(shift, key):
        z0 = jnp.zeros((4, 3)) + shift
        return run_chains(lambda z: log_gauss(z - shift), z0, key, method="chees",
                          num_warmup=50, num_samples=20)[0]

    vm = jax.jit(jax.vmap(one))(shifts, keys)
    loop = [jax.jit(one)(s, k) for s, k in zip(shifts, keys, strict=True)]
    np.testing.assert_allclose(vm, np.stack(loop), rtol=1e-8, atol=1e-10)
    assert vm.shape == (2, 20, 4, 3)


@pytest.mark.parametrize("method", ["chees", "nuts"])
def test_thinning_keeps_every_kth_draw(method):
    """run_chains(thinning=k, num_samples=n) == every k-th draw of run_chains(num_samples=
    n * k) with the same key: the same chains, k times fewer draws kept."""
    z0 = MU + 0.3 * jax.random.normal(jax.random.key(3), (4, 3))
    key = jax.random.key(5)

    def run(n, k):
        return jax.jit(lambda z, kk: run_chains(log_gauss, z, kk, method=method,
                                                num_warmup=40, num_samples=n,
                                                thinning=k))(z0, key)

    z3, st3 = run(8, 3)
    z1, st1 = run(24, 1)
    assert z3.shape == (8, 4, 3) and st3["diverging"].shape == (8, 4)
    np.testing.assert_allclose(z3, z1[2::3], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st3["lp"], st1["lp"][2::3], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(st3["diverging"],
                                  np.asarray(st1["diverging"]).reshape(8, 3, 4).any(axis=1))


def test_sample_thinning_shape_and_settings():
    calls = []
    post = fitcsc.sample(log_gauss, MU, method="chees", num_chains=4, num_warmup=100,
                         num_samples=50, thinning=4, seed=2,
                         progress=lambda phase, done, total: calls.append((phase, done, total)))
    assert post.z.shape == (4, 50, 3)
    assert all(v.shape == (4, 50) for v in post.sample_stats.values())
    assert post.settings["thinning"] == 4 and post.settings["num_samples"] == 50
    assert ("sampling", 50, 50) in calls  # progress counts kept draws
    np.testing.assert_allclose(post.sample_stats["lp"],
                               np.apply_along_axis(log_gauss, -1, post.z), atol=1e-8)
    assert np.all(np.isfinite(post.z))


def test_minus_inf_is_a_divergence_not_a_crash():
    def truncated(z):  # a half-space the sampler cannot enter
        return jnp.where(z[0] > 3.0, -jnp.inf, log_gauss(z))

    post = fitcsc.sample(truncated, MU, num_chains=2, num_warmup=100, num_samples=100)
    assert np.all(post.z[..., 0] <= 3.0)
    assert np.all(np.isfinite(post.z))


@pytest.mark.parametrize("kw,match", [
    ({"method": "hmc"}, "method"),
    ({"method": "chees", "dense_mass": True}, "dense_mass"),
    ({"num_samples": 0}, "num_samples"),
    ({"thinning": 0}, "thinning"),
    ({"thinning": 2.5}, "thinning"),
    ({"method": "chees", "max_leapfrog_steps": 0}, "max_leapfrog_steps"),
    ({"method": "chees", "num_chains": 1}, "num_chains >= 2"),
    ({"z_init": np.zeros((3, 3)), "num_chains": 2}, "z_init"),
    ({"z_init": np.array([np.nan, 0.0, 0.0])}, "non-finite"),
])
def test_bad_arguments(kw, match):
    args = {"z_init": MU, **kw}
    with pytest.raises(ValueError, match=match):
        fitcsc.sample(log_gauss, args.pop("z_init"), num_warmup=10, **args)


def test_progress_printer_lines():
    """The terminal progress line: the warm-up's adaptation, then R-hat and bulk ESS of
    the draws so far (`fitcsc.summary.chain_diagnostics` of the draws `sample` hands to a
    callback with a ``draws`` keyword: after the last chunk, of the whole posterior) and
    the divergences; nothing off a terminal."""
    import io

    from fitcsc.population import progress_printer
    from fitcsc.summary import chain_diagnostics

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    show = progress_printer(out)
    show("warmup", 100, 400, diagnostics={"step_size": 0.0412, "n_leapfrog": 63.0,
                                          "acceptance_rate": 0.812, "n_divergent": 0.0})
    seen = []

    def progress(phase, done, total, diagnostics=None, draws=None):
        seen.append((phase, done, draws))
        show(phase, done, total, diagnostics=diagnostics, draws=draws)

    post = fitcsc.sample(log_gauss, MU, method="nuts", num_chains=3, num_warmup=40,
                         num_samples=30, seed=2, progress=progress)
    drawn = [(n, z) for p, n, z in seen if p == "sampling" and n > 0]
    assert [n for n, _ in drawn] == list(range(2, 31, 2))  # chunks of 2 draws
    for n, z in drawn:
        np.testing.assert_array_equal(z, post.z[:, :n])
    lines = out.getvalue().split("\r")[1:]
    assert lines[0].startswith("  warmup   100/400 (") and lines[0].endswith(
        "s, step 0.0412, 63 leapfrog, accept 0.81, 0 divergent)")
    sampling = [x for x in lines if x.startswith("sampling")]
    assert sampling[1].startswith("sampling     2/30") and "R-hat" not in sampling[1]
    c = chain_diagnostics(post.z)
    assert sampling[-1].endswith(f"s, max R-hat {c['rhat_max']:.3f}, min bulk ESS "
                                 f"{c['ess_bulk_min']:.0f}, {post.num_divergent} divergent)\n")
    assert progress_printer(io.StringIO()) is None  # not a terminal
    assert progress_printer(out, quiet=True) is None
