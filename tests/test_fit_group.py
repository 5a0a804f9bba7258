"""Group fits (`fit_groups`): shared growth per group, effects per arm, V0 per curve.

The engine is tested on a closed-form predictor, all fits with one compiled shape:
exact recovery, scipy `least_squares` on the stacked residuals as a reference, the group
loss against `fitcsc.log_likelihood` and scipy.stats, bitwise isolation of a failing
group, and refused input. The CSC model through ``fitcsc fit --share-growth-by`` is in
the slow test at the end (about a minute of compilation on a 2-core CPU).
"""

from __future__ import annotations

import csv
import json

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import fitcsc
from fitcsc._fit.groups import fit_groups
from fitcsc._fit.predictors import FunctionPredictor
from fitcsc._io.data import make_batch, read_tidy_csv
from fitcsc._status import FitStatus
from fitcsc.cli import main


def expo(z, s):
    """log V = log V0 + (r - k) (t - t0); z = (log V0, log r, k)."""
    t = s.day - s.t0_day
    return z[0] + (jnp.exp(z[1]) - z[2]) * t, jnp.asarray(0)


R_REF = 0.05  # reference growth rate: start 0, and the value where it is not estimated
PRED = FunctionPredictor(
    expo, 3, init=lambda s: jnp.array([jnp.log(s.volume_mm3[0]), jnp.log(R_REF), 0.0]))
# controls inform growth; treated curves their arm's kill k (growth shared from control)
USES = {"ctrl": ("z[0]", "z[1]"), "drugA": ("z[0]", "z[2]"), "drugB": ("z[0]", "z[2]")}
DAYS = np.arange(0.0, 30.0, 3.0)
LIMIT = 1.0
SIGMA_CLEAN = 0.01
# group: (growth rate r, {arm: kill k}); A has two drugA curves (one per-arm k); D has no
# control, so its r is not estimated and k absorbs r_true - R_REF.
TRUTH = {"A": (0.08, [("ctrl", 0.0), ("drugA", 0.12), ("drugA", 0.12), ("drugB", 0.03)]),
         "B": (0.05, [("ctrl", 0.0), ("drugA", 0.02)]),
         "C": (0.10, [("ctrl", 0.0), ("drugB", 0.30)]),  # regresses below the limit:
         "D": (0.06, [("drugA", 0.04)])}


def _write(path, noise_sd, seed=0):
    rng = np.random.default_rng(seed)
    lines, truth = ["study,arm,subject,day,volume_mm3,line"], {}
    for g, (r, curves) in TRUTH.items():
        for j, (arm, k) in enumerate(curves):
            v0 = float(rng.uniform(80, 150))
            if (g, arm) == ("C", "drugB"):  # log V = 0.3 on day 21, -0.3 on day 24 (M3)
                v0 = float(np.exp(4.5))
            s = f"{g}{j}-{arm}"
            truth[s] = (g, arm, np.log(v0), np.log(r), k)
            for d in DAYS:
                v = v0 * np.exp((r - k) * d + noise_sd * rng.normal())
                lines.append(f"syn,{arm},{s},{d},{0.0 if v < LIMIT else v:.10g},{g}")
    path.write_text("\n".join(lines) + "\n")
    table = read_tidy_csv(path)
    batch = make_batch(table, detection_limit_mm3=LIMIT)
    line_of = dict(zip(table.subject.tolist(), table.extra["line"].tolist(), strict=True))
    return batch, [line_of[s] for s in batch.subject], truth


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    batch, groups, truth = _write(tmp_path_factory.mktemp("grp") / "clean.csv", 0.0)
    # sigma 0.01: the censored points (>= 0.3 below the limit in log) then cost nothing
    res = fit_groups(PRED, batch, groups, shared=("z[1]",), per_subject=("z[0]",),
                     uses=USES, num_starts=2, sigma=SIGMA_CLEAN)
    return batch, groups, truth, res


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    batch, groups, truth = _write(tmp_path_factory.mktemp("grp") / "noisy.csv", 0.1, seed=1)
    # same shapes and options as `clean` (sigma is a value): no new compilation
    res = fit_groups(PRED, batch, groups, shared=("z[1]",), per_subject=("z[0]",),
                     uses=USES, num_starts=2, sigma=0.1)
    return batch, groups, truth, res


def test_recovers_shared_growth_and_per_arm_effects(clean):
    batch, groups, truth, res = clean
    assert res.groups.subject == ("A", "B", "C", "D")
    assert np.all(np.asarray(res.groups.status) == FitStatus.CONVERGED)
    assert np.asarray(batch.censored).sum() >= 1  # C's regression reaches the limit
    th = np.asarray(res.theta)
    for i, s in enumerate(res.subject):
        g, arm, log_v0, log_r, k = truth[s]
        assert res.group[i] == g
        np.testing.assert_allclose(th[i, 0], log_v0, rtol=1e-6, err_msg=s)
        if g == "D":  # no control: growth stays at the reference, k takes the rest
            assert np.isnan(th[i, 1])
            np.testing.assert_allclose(th[i, 2], R_REF - (np.exp(log_r) - k), atol=1e-7)
            continue
        np.testing.assert_allclose(th[i, 1], log_r, rtol=1e-6, err_msg=s)  # shared
        if arm == "ctrl":
            assert np.isnan(th[i, 2])  # a control estimates no kill
        else:
            np.testing.assert_allclose(th[i, 2], k, atol=1e-7, err_msg=s)
    # one estimate per (group, arm): both drugA curves of A read the same element
    a = [i for i, s in enumerate(res.subject) if truth[s][:2] == ("A", "drugA")]
    assert len(a) == 2 and th[a[0], 2] == th[a[1], 2] and th[a[0], 0] != th[a[1], 0]
    labels = res.groups.labels
    assert labels[:3] == ("z[1]", "z[2]|drugA", "z[2]|drugB")
    assert "z[0]|curve3" in labels and "z[0]|curve4" not in labels  # A: 4 curves
    rows = res.to_rows()
    assert rows[0]["group"] == "A" and "z[2]" not in rows[0] and "z[1]_se" in rows[0]


def test_matches_scipy_least_squares_on_the_stacked_residuals(noisy):
    batch, groups, truth, res = noisy
    idx = [i for i, g in enumerate(groups) if g == "A"]
    day, vol = np.asarray(batch.day)[idx], np.asarray(batch.volume_mm3)[idx]
    arm = [batch.arm[i] for i in idx]
    sigma = float(res.sigma[idx[0]])

    def residuals(w):  # w = (log r, kA, kB, log V0 x 4), numpy, written apart
        r, kill = np.exp(w[0]), {"ctrl": 0.0, "drugA": w[1], "drugB": w[2]}
        pred = [w[3 + j] + (r - kill[a]) * (d - d[0]) for j, (a, d) in enumerate(
            zip(arm, day, strict=True))]
        return np.concatenate([(np.log(v) - p) / sigma for v, p in zip(vol, pred,
                                                                       strict=True)])

    th = np.asarray(res.theta)[idx]
    w_hat = np.concatenate([[th[0, 1], th[1, 2], th[3, 2]], th[:, 0]])
    ref = scipy.optimize.least_squares(residuals, w_hat + 0.05, xtol=1e-14, ftol=1e-14,
                                       gtol=1e-14)
    np.testing.assert_allclose(w_hat, ref.x, rtol=1e-6, atol=1e-8)
    # and the group's SEs are scipy's Gauss-Newton ones
    cov = np.linalg.inv(ref.jac.T @ ref.jac)
    se = np.asarray(res.se_theta)[idx]
    np.testing.assert_allclose([se[0, 1], se[1, 2], se[3, 2]], np.sqrt(np.diag(cov))[:3],
                               rtol=1e-4)


def test_group_loss_is_the_sum_of_curve_losses(noisy):
    batch, groups, truth, res = noisy
    lp, sigma = np.asarray(res.log_volume_pred), np.asarray(res.sigma)
    per_obs, _ = fitcsc.log_likelihood(np.exp(lp), batch.volume_mm3, batch.mask,
                                       batch.censored, sigma[:, None])
    per_curve = -np.asarray(per_obs).sum(axis=1)
    np.testing.assert_allclose(np.asarray(res.loss), per_curve, rtol=1e-10)
    m, c = np.asarray(batch.mask), np.asarray(batch.censored)
    v = np.asarray(batch.volume_mm3)
    assert c.any()  # C's regression: M3 terms
    for gi, g in enumerate(res.groups.subject):
        idx = [i for i, x in enumerate(groups) if x == g]
        np.testing.assert_allclose(per_curve[idx].sum(), float(res.groups.loss[gi]),
                                   rtol=1e-10)
        # the same from scipy.stats: log-normal density of V, normal CDF (M3) if censored
        s = sigma[idx][:, None]
        ll = np.where(c[idx], scipy.stats.norm.logcdf((np.log(v[idx]) - lp[idx]) / s),
                      scipy.stats.lognorm.logpdf(v[idx], s, scale=np.exp(lp[idx])))
        np.testing.assert_allclose(-np.sum(ll[m[idx]]), float(res.groups.loss[gi]),
                                   rtol=1e-10)


def test_failing_group_is_isolated_bitwise(clean):
    batch, groups, truth, base = clean
    b = groups.index("B")
    bad = eqx.tree_at(lambda x: x.volume_mm3, batch, batch.volume_mm3.at[b, 2].set(jnp.nan))
    res = fit_groups(PRED, bad, groups, shared=("z[1]",), per_subject=("z[0]",), uses=USES,
                     num_starts=2, sigma=SIGMA_CLEAN)
    assert [int(s) for s in res.groups.status] == [0, FitStatus.NONFINITE, 0, 0]
    others = [0, 2, 3]
    for field in ("z", "loss", "status", "all_z", "all_losses", "all_status", "se_z", "theta",
                  "se_theta", "log_volume_pred"):
        np.testing.assert_array_equal(np.asarray(getattr(res.groups, field))[others],
                                      np.asarray(getattr(base.groups, field))[others],
                                      err_msg=field)
    rows = res.to_rows()
    assert {r["status"] for r in rows if r["group"] == "B"} == {"nonfinite"}
    assert {r["status"] for r in rows if r["group"] != "B"} == {"converged"}


def test_bad_input_is_refused(clean):
    batch, groups, _, _ = clean
    kw = dict(shared=("z[1]",), per_subject=("z[0]",), uses=USES, num_starts=1)
    for change, match in [(dict(groups=groups[:-1]), "one per subject"),
                          (dict(shared=("z[9]",)), "shared names unknown parameter"),
                          (dict(per_subject=("z[1]",)), "both shared and per_subject"),
                          (dict(uses={"ctrl": ("nope",)}), "uses\\['ctrl'\\]"),
                          (dict(num_starts=0), "num_starts")]:
        args = {**kw, "groups": groups, **change}
        g = args.pop("groups")
        with pytest.raises(ValueError, match=match):
            fit_groups(PRED, batch, g, **args)
    with pytest.raises(TypeError, match="FunctionPredictor"):
        fit_groups(expo, batch, groups, shared=("z[1]",))


@pytest.mark.parametrize("args, message", [
    (["--share-growth-by", "cage"], "no column 'cage' to share growth by"),
    (["--share-growth-by", "line", "--model", "gompertz"], "needs the CSC model"),
])
def test_cli_refuses_bad_grouping(tmp_path, capsys, args, message):
    data = tmp_path / "d.csv"
    data.write_text("study,arm,subject,day,volume_mm3,line\ns,ctrl,m1,0,10,A\n"
                    "s,ctrl,m1,3,12,A\n")
    code = main(["fit", "--data", str(data), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------ the CSC model (slow) --
CSC_TRUTH = {  # line: (v_S, p, {arm: effects})
    "L1": (0.30, 0.70, {"trastuzumab": dict(her2_efficacy_csc=0.8, her2_efficacy_bulk=0.3),
                        "paclitaxel": dict(kill_rate=0.15, csc_sparing=0.2)}),
    "L2": (0.45, 0.62, {"trastuzumab": dict(her2_efficacy_csc=0.2, her2_efficacy_bulk=0.7),
                        "paclitaxel": dict(kill_rate=0.08, csc_sparing=0.5)}),
    "L3": (0.35, 0.66, {"paclitaxel": dict(kill_rate=0.25, csc_sparing=0.1)}),
}


def _csc_volumes(path):
    """Noise-free curves simulated with the job's own model: default arm regimens
    (constant unit exposure from day 0), one drug slot per class."""
    from fitcsc._fit.csc_spec import csc_union_spec, drug_slots, slot_batch
    from fitcsc._jobs.fit_job import load_job_data as _load
    from fitcsc._jobs.fit_job import regimen_of as _regimen_of

    days = np.arange(0.0, 43.0, 3.5)
    rows = ["study,arm,subject,day,volume_mm3,pdx_line"]
    for line, (_, _, effects) in CSC_TRUTH.items():
        for arm in ("untreated", *effects):
            rows += [f"syn,{arm},{line}.{arm},{d},100,{line}" for d in days]
    path.write_text("\n".join(rows) + "\n")
    batch, regimens, _, _ = _load(path, None, "csc", "mouse", 1.0, None, None)
    regs = [_regimen_of(regimens, s, a) for s, a in zip(batch.subject, batch.arm, strict=True)]
    drugs, slot = drug_slots(regs, "mouse")
    model = fitcsc.ModelConfig(crowding="logistic", drugs=drugs, species="mouse")
    ref = csc_union_spec(model).reference
    sb = slot_batch(batch, slot, drugs)
    rng = np.random.default_rng(0)
    out = {}
    for i, s in enumerate(batch.subject):
        line, arm = s.split(".")
        v_s, p, effects = CSC_TRUTH[line]
        v0 = float(rng.uniform(80, 200))
        params = eqx.tree_at(lambda q: (q.csc_division_rate, q.self_renewal,
                                        q.initial_volume_mm3), ref,
                             (jnp.asarray(v_s), jnp.asarray(p), jnp.asarray(v0)))
        for name, value in effects.get(arm, {}).items():
            cur = getattr(params, name)
            new = cur.at[slot[regs[i].drugs[0]]].set(value) if cur.ndim else jnp.asarray(value)
            params = eqx.tree_at(lambda q, n=name: getattr(q, n), params, new)
        sol = fitcsc.simulate(model, params, fitcsc.subject_data(sb, i).schedule,
                              jnp.asarray(days), t0=0.0)
        out[s] = np.asarray(sol.volume_mm3)
    rows = ["study,arm,subject,day,volume_mm3,pdx_line"]
    for s, vol in out.items():
        line, arm = s.split(".")
        rows += [f"syn,{arm},{s},{d},{v:.12g},{line}" for d, v in zip(days, vol, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_cli_csc_shared_growth_recovers_and_writes_one_row_per_subject(tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")
    data = _csc_volumes(tmp_path / "syn.csv")
    out = tmp_path / "out"
    code = main(["fit", "--data", str(data), "--out", str(out), "--share-growth-by",
                 "pdx_line", "--starts", "4", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "8 subjects in 3 groups by 'pdx_line' fitted" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_groups"] == 3 and summary["n_failed"] == 0
    assert summary["share_growth_by"] == "pdx_line" and summary["errors"] == []
    with open(out / "fits.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    assert header[:5] == ["subject", "arm", "study", "pdx_line", "status"]
    assert {"group_loss", "group_aic", "group_bic", "group_n_free"} <= set(header)
    assert len(rows) == 8 and {r["pdx_line"] for r in rows} == set(CSC_TRUTH)
    for r in rows:
        v_s, p, effects = CSC_TRUTH[r["pdx_line"]]
        assert r["aic"] == "" and float(r["rmse_log_volume"]) < 1e-3, r["subject"]
        np.testing.assert_allclose(float(r["csc_division_rate"]), v_s, rtol=1e-3)
        np.testing.assert_allclose(float(r["self_renewal"]), p, rtol=1e-3)
        for name, value in effects.get(r["arm"], {}).items():
            np.testing.assert_allclose(float(r[name]), value, rtol=2e-2, atol=2e-3,
                                       err_msg=f"{r['subject']} {name}")
        if r["arm"] == "untreated":
            assert r["kill_rate"] == "" and r["her2_efficacy_csc"] == ""
    for line in CSC_TRUTH:  # shared values repeated on every row of the line
        vals = {(r["csc_division_rate"], r["self_renewal"], r["group_loss"]) for r in rows
                if r["pdx_line"] == line}
        assert len(vals) == 1
