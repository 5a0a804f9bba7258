"""``fitcsc fit``: the fit job end to end, in process (synthetic and real PDX data).

The CSC runs compile one fit per regimen group (about 20 s each on a 2-core CPU), so
they are marked slow; the baseline runs exercise the same job path quickly.
"""

from __future__ import annotations

import csv
import json

import matplotlib.image
import numpy as np
import pytest
from helpers import check_fit_report

from fitcsc._io.data import data_dir
from fitcsc._jobs.fit_job import PLOTS, fit_job
from fitcsc.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE_COLUMNS = ["subject", "arm", "study", "status"]
TAIL_COLUMNS = ["rmse_log_volume", "loss", "aic", "bic", "n_obs"]
STATUSES = {"converged", "max_steps", "solver_failure", "nonfinite", "error"}


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")  # keep the test session's JAX config


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """5 subjects: 2 control (exponential growth), 3 paclitaxel: two regress, then regrow
    (CSC-driven), one regresses below the detection limit (censored zeros at the end)."""
    rng = np.random.default_rng(3)
    lines = ["study,arm,subject,day,volume_mm3,cage"]
    for i in range(2):
        for d in range(0, 33, 4):
            v = 120 * np.exp(0.06 * d + 0.08 * rng.normal())
            lines.append(f"syn,control,c{i},{d},{v:.3f},A")
    for i in range(3):
        for d in range(0, 33, 4):
            v = 150 * np.exp(-0.2 * d) if i == 2 else 150 * np.exp(-0.08 * d) + 4 * np.exp(
                0.06 * d)
            v *= np.exp(0.08 * rng.normal())
            lines.append(f"syn,paclitaxel,p{i},{d},{0.0 if v < 1.0 else v:.3f},B")
    path = tmp_path_factory.mktemp("fitcli") / "volumes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(out):
    with open(out / "fits.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def _check_outputs(out, n_subjects, model):
    summary = json.loads((out / "summary.json").read_text())
    for key in ("n_subjects", "n_failed", "n_converged", "model", "spec_labels", "starts",
                "wall_s", "device", "precision", "versions", "data_file",
                "regimen_source", "warnings", "errors"):
        assert key in summary, key
    assert summary["model"] == model and summary["n_subjects"] == n_subjects
    assert summary["precision"] == "float64" and summary["errors"] == []
    assert summary["wall_s"] > 0 and summary["versions"]["jax"]
    header, rows = _rows(out)
    assert header[:4] == BASE_COLUMNS and set(TAIL_COLUMNS) <= set(header)
    assert len(rows) == n_subjects and {r["status"] for r in rows} <= STATUSES
    assert sum(r["status"] == "converged" for r in rows) == summary["n_converged"]
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert matplotlib.image.imread(out / name).shape[0] > 100
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    _check_predictions(out, rows)
    return summary, header, rows


def _check_predictions(out, rows):
    """predictions.csv: every observation once; its residuals give fits.csv's rmse."""
    with open(out / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert sum(int(r["n_obs"]) for r in rows) == len(preds)
    for r in rows:
        mine = [p for p in preds if p["subject"] == r["subject"]]
        assert len(mine) == int(r["n_obs"]) and {p["arm"] for p in mine} == {r["arm"]}
        res = np.array([float(p["residual_log"]) for p in mine if p["censored"] == "0"])
        for p in mine:
            assert float(p["volume_pred_mm3"]) == pytest.approx(
                np.exp(float(p["log_volume_pred"])), rel=1e-5)
            if p["censored"] == "0":
                assert float(p["residual_log"]) == pytest.approx(
                    np.log(float(p["volume_mm3"])) - float(p["log_volume_pred"]), abs=1e-5)
            else:
                assert p["residual_log"] == ""
        if r["status"] in ("converged", "max_steps"):
            assert np.sqrt(np.mean(res ** 2)) == pytest.approx(float(r["rmse_log_volume"]),
                                                               rel=1e-4)


def test_fit_baseline(volumes, tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["fit", "--data", str(volumes), "--out", str(out), "--model", "exponential",
                 "--quick", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.count("\n") == 1 and captured.out.startswith("fitcsc fit: 5 subjects")
    summary, header, rows = _check_outputs(out, 5, "exponential")
    assert summary["starts"] == 2 and summary["quick"] is True
    assert summary["warnings"] == []  # the exponential model ignores regimens
    assert header[4:8] == ["initial_volume_mm3", "initial_volume_mm3_se", "growth_rate",
                           "growth_rate_se"]
    by = {r["subject"]: r for r in rows}
    assert float(by["c0"]["growth_rate"]) == pytest.approx(0.06, abs=0.02)
    assert float(by["p0"]["growth_rate"]) < 0
    assert by["p2"]["n_obs"] == "9"  # the censored 0 is kept
    loss, n_obs = float(by["c0"]["loss"]), 9
    assert float(by["c0"]["aic"]) == pytest.approx(2 * 3 + 2 * loss, rel=1e-5)  # V0, r, sigma
    assert float(by["c0"]["bic"]) == pytest.approx(3 * np.log(n_obs) + 2 * loss, rel=1e-5)
    with open(out / "predictions.csv", newline="") as fh:  # PRED: V0 exp(r (t - t0))
        for p in csv.DictReader(fh):
            if p["subject"] == "c0":
                expect = float(by["c0"]["initial_volume_mm3"]) * np.exp(
                    float(by["c0"]["growth_rate"]) * float(p["day"]))
                assert float(p["volume_pred_mm3"]) == pytest.approx(expect, rel=1e-4)
    check_fit_report(out, tmp_path)  # report.md, rebuilt identically by fitcsc report


def test_fit_job_chunks_pad_and_match_one_chunk(volumes, tmp_path):
    """Chunks of 2 (the last padded by a repeated subject) give the same fits as one
    chunk of all subjects."""
    one = fit_job(volumes, tmp_path / "one", model="exponential", quick=True, progress=False)
    two = fit_job(volumes, tmp_path / "two", model="exponential", quick=True, chunk_size=2,
                  progress=False)
    assert one["n_subjects"] == two["n_subjects"] == 5
    (h1, r1), (h2, r2) = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert h1 == h2 and [r["subject"] for r in r2] == ["c0", "c1", "p0", "p1", "p2"]
    for a, b in zip(r1, r2, strict=True):
        assert a["status"] == b["status"] == "converged"
        for col in ("loss", "initial_volume_mm3", "growth_rate", "growth_rate_se"):
            np.testing.assert_allclose(float(a[col]), float(b[col]), rtol=1e-5, err_msg=col)


def test_fit_evaluators_reach_the_same_fits(volumes, tmp_path, capsys):
    """`fitcsc fit` runs the paced evaluator by default; `--evaluator jacfwd` (and the
    former `--batching vmap`) reaches the same statuses and optima (sigma estimated, so
    the censoring-aware sigma refit runs in both); one lane program each."""
    code = main(["fit", "--data", str(volumes), "--out", str(tmp_path / "paced"), "--quick",
                 "--no-progress"])
    assert code == 0
    fast = json.loads((tmp_path / "paced" / "summary.json").read_text())
    assert fast["evaluator"] == "paced"
    assert {"n_compiles", "compile_s", "n_cache_hits"} <= set(fast["compile"])
    assert "jit(_run)" in fast["compile"]["programs"]
    code = main(["fit", "--data", str(volumes), "--out", str(tmp_path / "jac"), "--quick",
                 "--batching", "vmap", "--no-progress"])
    assert code == 0
    assert json.loads((tmp_path / "jac" / "summary.json").read_text())["evaluator"] == "jacfwd"
    (h1, r1), (h2, r2) = _rows(tmp_path / "paced"), _rows(tmp_path / "jac")
    assert h1 == h2
    for a, b in zip(r1, r2, strict=True):
        assert a["subject"] == b["subject"] and a["status"] == b["status"]
        if a["status"] == "converged":
            np.testing.assert_allclose(float(a["loss"]), float(b["loss"]), rtol=1e-6,
                                       err_msg=a["subject"])
    assert main(["fit", "--data", str(volumes), "--out", str(tmp_path / "x"),
                 "--share-growth-by", "study", "--evaluator", "paced"]) == 2
    assert "jacfwd evaluator" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_csc(volumes, tmp_path, capsys):
    out = tmp_path / "csc"
    code = main(["fit", "--data", str(volumes), "--out", str(out), "--quick", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.startswith("fitcsc fit: 5 subjects fitted with csc")
    assert "constant drug effect" in captured.err  # the default arm regimens are listed
    summary, header, rows = _check_outputs(out, 5, "csc")
    assert "paclitaxel" in summary["regimen_source"] or "default" in summary["regimen_source"]
    assert len(summary["groups"]) == 2  # control; chemo
    assert {"csc_division_rate", "self_renewal", "kill_rate[0]", "csc_sparing",
            "initial_volume_mm3"} <= set(summary["spec_labels"])
    by = {r["subject"]: r for r in rows}
    assert by["c0"]["kill_rate"] == "" and by["c0"]["self_renewal"] != ""
    assert by["p0"]["kill_rate"] != "" and by["p0"]["self_renewal"] == ""
    assert float(by["p0"]["kill_rate"]) > 0 and 0 < float(by["p0"]["csc_sparing"]) < 1
    assert summary["n_failed"] == 0
    for r in rows:  # the fits follow the data
        assert float(r["rmse_log_volume"]) < 0.3, r["subject"]


@pytest.mark.parametrize("case, args, message", [
    ("negative volume", [], "line 3, column 'volume_mm3'"),
    ("regimen table as data", [], "not a tumour-volume file"),
    ("arm missing from the regimens", ["--regimens", "REG"], "has no regimen"),
    ("bad starts", ["--starts", "0"], "bad --starts"),
    ("missing file", [], "file not found"),
])
def test_refused_input(tmp_path, capsys, case, args, message):
    good = "study,arm,subject,day,volume_mm3\ns,a,m1,0,10\ns,a,m1,3,12\n"
    reg = tmp_path / "reg.csv"
    reg.write_text("arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours\n"
                   "b,trastuzumab,10,mg/kg,0,7,3,0\n")
    data = tmp_path / "data.csv"
    data.write_text({"negative volume": good.replace(",12", ",-12"),
                     "regimen table as data": reg.read_text()}.get(case, good))
    if case == "missing file":
        data = tmp_path / "nope.csv"
    args = [str(reg) if a == "REG" else a for a in args]
    code = main(["fit", "--data", str(data), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert err.startswith("fitcsc: error: ") and "Traceback" not in err
    assert not (tmp_path / "o" / "summary.json").exists()


def _pdxe_subset(path, lines=("X-4567", "X-3873"),
                 arms=("untreated", "trastuzumab", "paclitaxel")):
    """Rows of two HER2-amplified PDXE lines, three arms each: 6 mice."""
    src = data_dir() / "pdxe_brca" / "pdxe_brca_tumor_volume.csv"
    with open(src, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["pdx_line"] in lines and r["arm"] in arms]
        with open(path, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
            writer.writeheader()
            writer.writerows(rows)
    return path


def test_pdxe_smoke_baseline(tmp_path, capsys):
    data = _pdxe_subset(tmp_path / "pdxe.csv")
    out = tmp_path / "out"
    code = main(["fit", "--data", str(data), "--out", str(out), "--model", "gompertz",
                 "--max-subjects", "4", "--starts", "2", "--no-progress"])
    assert code == 0 and "4 subjects fitted with gompertz" in capsys.readouterr().out
    summary, _, rows = _check_outputs(out, 4, "gompertz")
    assert summary["n_failed"] == 0
    by = {r["subject"]: r for r in rows}
    assert float(by["X.3873.uned"]["rmse_log_volume"]) < 0.1  # saturating growth


@pytest.mark.slow
def test_pdxe_smoke_csc(tmp_path, capsys):
    data = _pdxe_subset(tmp_path / "pdxe.csv")
    out = tmp_path / "out"
    code = main(["fit", "--data", str(data), "--out", str(out), "--max-subjects", "6",
                 "--starts", "4", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "6 subjects fitted with csc" in captured.out
    summary, _, rows = _check_outputs(out, 6, "csc")
    classes = sorted(tuple(g["drug_classes"]) for g in summary["groups"])
    assert classes == [(), ("chemo",), ("her2",)]
    assert summary["n_failed"] == 0 and summary["n_converged"] >= 4
    by_arm = {r["arm"]: r for r in rows}
    assert by_arm["trastuzumab"]["her2_efficacy_csc"] != ""
    assert by_arm["paclitaxel"]["kill_rate"] != "" and by_arm["untreated"]["kill_rate"] == ""
    untreated = [r for r in rows if r["arm"] == "untreated"]
    assert all(float(r["rmse_log_volume"]) < 0.15 for r in untreated)


def test_nonmem_data_bring_their_own_doses(tmp_path):
    from fitcsc._errors import DataError
    from fitcsc._jobs.fit_job import load_job_data as _load

    path = tmp_path / "nm.csv"
    path.write_text("ID,TIME,DV,AMT,EVID,CMT,ARM\n"
                    "1,0,50,.,0,.,trast\n1,0,.,0.2,1,1,trast\n1,7,80,.,0,.,trast\n"
                    "2,0,60,.,0,.,ctrl\n2,7,120,.,0,.,ctrl\n")
    batch, regimens, source, notes = _load(path, None, "csc", "mouse", 1.0, None,
                                           {1: "trastuzumab"})
    assert source == "NONMEM dose records" and notes == []
    assert batch.subject == ("1", "2") and batch.drugs == ("trastuzumab",)
    assert regimens["1"].drugs == ("trastuzumab",) and regimens["2"].lines == ()
    with pytest.raises(DataError, match="carry their own doses"):
        _load(path, path, "csc", "mouse", 1.0, None, None)


def test_a_failing_chunk_never_stops_the_job(volumes, tmp_path, monkeypatch):
    import fitcsc._jobs.fit_job as fitrun

    real = fitrun.fit_map

    def flaky(predictor, batch, **kw):
        if "c1" in batch.subject:
            raise FloatingPointError("boom")
        return real(predictor, batch, **kw)

    monkeypatch.setattr(fitrun, "fit_map", flaky)
    summary = fit_job(volumes, tmp_path / "o", model="exponential", quick=True, chunk_size=2,
                      progress=False)
    _, rows = _rows(tmp_path / "o")
    assert [r["status"] for r in rows] == ["error", "error", "converged", "converged",
                                           "converged"]
    assert rows[0]["growth_rate"] == "" and rows[0]["loss"] == "nan"
    assert summary["n_failed"] == 2 and summary["n_converged"] == 3
    assert len(summary["errors"]) == 1 and "FloatingPointError" in summary["errors"][0]
    for name in PLOTS:
        assert (tmp_path / "o" / name).read_bytes()[:8] == PNG_MAGIC
