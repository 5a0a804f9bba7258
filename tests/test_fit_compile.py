"""Compilation: one lane program per model structure and data shape, and a second run
with the persistent cache compiles nothing.

- A mixed PDXE-like file (control, HER2, chemotherapy and cytostatic arms: four free-
  parameter sets) fits in one traced lane program; a second file with other subjects
  and sizes (same observation bucket) traces none.
- `fitcsc fit` in a fresh process with an empty cache directory compiles, and the same
  command again compiles nothing (every program read from the cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fitcsc._fit import lanes as _lanes
from fitcsc._jobs.fit_job import fit_job


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")  # keep the test session's JAX config


ARMS = {"untreated": 0.06, "trastuzumab": 0.01, "paclitaxel": -0.04, "BKM120": 0.03}


def _mixed(path, lines, days=(0, 4, 8, 12, 16, 20, 24, 28)):
    """Curves of ``lines`` PDX lines x the four arms (four regimen shapes)."""
    rng = np.random.default_rng(len(lines))
    rows = ["study,arm,subject,day,volume_mm3"]
    for line in lines:
        for arm, rate in ARMS.items():
            v0 = rng.uniform(80, 200)
            for d in days:
                v = v0 * np.exp(rate * d + 0.05 * rng.normal())
                rows.append(f"syn,{arm},{line}.{arm},{d},{v:.4f}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_mixed_batch_compiles_one_lane_program(tmp_path):
    first = _mixed(tmp_path / "a.csv", ["L1", "L2"])
    second = _mixed(tmp_path / "b.csv", ["L3", "L4", "L5"], days=(0, 3, 7, 10, 14, 17, 21))
    n0 = _lanes.TRACES["lanes"]
    a = fit_job(first, tmp_path / "a", starts=2, quick=True, progress=False)
    assert a["evaluator"] == "paced" and a["n_failed"] == 0
    assert sorted(tuple(g["drug_classes"]) for g in a["groups"]) == [
        (), ("chemo",), ("cytostatic",), ("her2",)]
    assert _lanes.TRACES["lanes"] == n0 + 1  # four free-parameter sets, one program
    # at most one XLA compile of it: none where an in-process CLI test of this session
    # turned JAX's persistent cache on and an earlier session left the program there
    assert a["compile"]["programs"].count("jit(_run)") <= 1
    # quick: the first 8 subjects of each file, so the same lane bucket (16 members)
    b = fit_job(second, tmp_path / "b", starts=2, quick=True, progress=False)
    assert b["n_subjects"] == 8 and b["n_failed"] == 0
    assert _lanes.TRACES["lanes"] == n0 + 1  # other subjects, sizes and days: none
    assert "jit(_run)" not in b["compile"]["programs"]


def _fit_twice(tmp_path, *args):
    env = {**os.environ, "FITCSC_CACHE_DIR": str(tmp_path / "cache")}
    data = _mixed(tmp_path / "d.csv", ["L1"])
    out = []
    for k in range(2):
        subprocess.run([sys.executable, "-m", "fitcsc.cli", "fit", "--data", str(data),
                        "--out", str(tmp_path / f"o{k}"), "--quick", "--no-progress", *args],
                       check=True, env=env, capture_output=True)
        out.append(json.loads((tmp_path / f"o{k}" / "summary.json").read_text())["compile"])
    return out


def test_second_run_compiles_nothing(tmp_path):
    cold, warm = _fit_twice(tmp_path, "--model", "gompertz")
    assert cold["n_compiles"] > 0 and cold["cache_dir"] == str(tmp_path / "cache")
    assert warm["n_compiles"] == 0 and warm["n_cache_hits"] >= cold["n_compiles"]


@pytest.mark.slow
def test_second_csc_run_compiles_nothing(tmp_path):
    cold, warm = _fit_twice(tmp_path)
    assert "jit(_run)" in cold["programs"]
    assert warm["n_compiles"] == 0 and warm["n_cache_hits"] >= cold["n_compiles"]


def test_cache_can_be_turned_off(tmp_path):
    env = {**os.environ, "FITCSC_CACHE_DIR": str(tmp_path / "cache")}
    data = _mixed(tmp_path / "d.csv", ["L1"])
    subprocess.run([sys.executable, "-m", "fitcsc.cli", "fit", "--data", str(data), "--out",
                    str(tmp_path / "o"), "--quick", "--no-progress", "--model",
                    "exponential", "--no-compile-cache"], check=True, env=env,
                   capture_output=True)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["compile"]["cache_dir"] is None and not (tmp_path / "cache").exists()


def test_simulate_restores_equinox_checks():
    """`simulate` traces diffrax's ts checks without host callbacks (so the persistent
    cache keeps its programs) and leaves equinox's `error_if` as it found it."""
    import equinox.internal as eqxi
    import jax.numpy as jnp

    import fitcsc

    before = eqxi.error_if
    model = fitcsc.ModelConfig(crowding="logistic")
    args = (model, fitcsc.default_params(model), None, jnp.linspace(0.0, 5.0, 6))
    assert "callback" not in fitcsc.simulate.lower(*args).as_text().lower()
    sol = fitcsc.simulate(*args)
    assert eqxi.error_if is before
    assert int(sol.status) == 0 and np.all(np.isfinite(np.asarray(sol.volume_mm3)))
