"""Run configurations (``--config FILE.toml``, `fitcsc._jobs.config`) and ``--device`` /
``--x64``: precedence, the resolved ``config.toml`` of every result folder, and a rerun
from it that repeats the run bit for bit (a fit and a simulation)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tomllib

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings

from fitcsc._errors import FitcscInputError
from fitcsc._jobs.config import (
    CONFIG_COMMANDS,
    PATH_METAVARS,
    _command_actions,
    apply_config,
    load_config,
    resolved_config,
)
from fitcsc.cli import build_parser, main

TIMES = ("wall_s", "fit_s", "map_s", "warm_start_s", "posterior_s", "seconds")


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")  # keep the test session's JAX config
    # a run from a config.toml sets FITCSC_DATA_DIR (its data_dir): restored afterwards
    before = os.environ.get("FITCSC_DATA_DIR")
    monkeypatch.setenv("FITCSC_DATA_DIR", before or "")
    if before is None:
        monkeypatch.delenv("FITCSC_DATA_DIR")


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """4 mice: 2 growing, 2 treated with paclitaxel, regressing then regrowing."""
    rng = np.random.default_rng(5)
    lines = ["study,arm,subject,day,volume_mm3"]
    for i in range(4):
        arm = "control" if i < 2 else "paclitaxel"
        for d in range(0, 29, 4):
            v = 100 * np.exp(0.07 * d) if i < 2 else 140 * np.exp(-0.08 * d) + 5 * np.exp(
                0.06 * d)
            lines.append(f"syn,{arm},m{i},{d},{v * np.exp(0.08 * rng.normal()):.3f}")
    path = tmp_path_factory.mktemp("config") / "volumes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _numbers(tree, path=""):
    """The numeric leaves of a JSON tree by path, wall-clock times left out."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() if key not in TIMES
                for k, v in _numbers(sub, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{path}/{i}")
                .items()}
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {path: tree}
    return {}


def _same_numbers(a, b):
    na, nb = _numbers(a), _numbers(b)
    assert na.keys() == nb.keys() and na  # the compile record has counts, no times
    for k in na:
        if "compile" not in k:  # compilations: the rerun finds them in memory
            assert na[k] == nb[k] or (math.isnan(na[k]) and math.isnan(nb[k])), k


def _parse(argv):
    parser = build_parser()
    finish = apply_config(parser, argv)
    args = parser.parse_args(argv)
    finish(args)
    return args


def test_command_line_overrides_the_file_and_the_file_the_defaults(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('data_dir = "/data/public"\n[fit]\ndata = "v.csv"\nout = "o"\n'
                   'starts = 7\nmodel = "gompertz"\ncmt_drug = ["1=trastuzumab"]\n'
                   'x64 = false\n')
    args = _parse(["fit", "--config", str(cfg)])  # --data, --out: required, from the file
    assert (args.data, args.out, args.starts, args.model) == ("v.csv", "o", 7, "gompertz")
    assert args.cmt_drug == [(1, "trastuzumab")] and args.x64 is False
    assert args.data_dir == "/data/public" and args.quick is False  # a default
    args = _parse(["--data-dir", "/d", "fit", "--config", str(cfg), "--starts", "2",
                   "--cmt-drug", "2=pertuzumab", "--x64", "--quick"])
    assert (args.starts, args.model, args.x64, args.quick) == (2, "gompertz", True, True)
    assert args.cmt_drug == [(2, "pertuzumab")]  # replaced, not appended to
    assert args.data_dir == "/d"


def test_every_option_has_a_key_and_help_says_how(capsys):
    parser = build_parser()
    for command in CONFIG_COMMANDS:
        actions = _command_actions(parser, command)
        assert {"out", "device", "x64"} <= set(actions), command
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "--config FILE.toml" in text and f"[{command}] table" in text
        assert f"fitcsc {command} --config OUT/config.toml" in text


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_resolved_config_of_every_command_reads_back(command, tmp_path, monkeypatch):
    """Every option of every command, written by `resolved_config`, reads back (the
    file's layout is the reader's) with the value the command line gave it."""
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    actions = _command_actions(parser, command)
    argv = [command, *[a for act in actions.values() if act.required
                       for a in (act.option_strings[0], "x")], "--no-x64", "--device", "cpu"]
    args = parser.parse_args(argv)
    doc, unset = resolved_config(parser, args)
    assert set(doc[command]) | {u.split(".", 1)[1] for u in unset if "." in u} == set(actions)
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(doc))
    glob, opts = load_config(path, parser, command)
    assert opts.keys() == doc[command].keys() and glob.keys() == doc.keys() - {command}
    for dest, value in opts.items():
        expect = getattr(args, dest)
        if actions[dest].metavar in PATH_METAVARS:  # paths: absolute
            expect = os.path.abspath(expect)
        assert value == expect, dest
    assert (opts["x64"], opts["device"]) == (False, "cpu")


def test_refused_config_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[fit]\nstarts = 3\n[fit.extra]\n")
    assert main(["fit", "--config", str(cfg), "--data", "x.csv", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fitcsc: error: {cfg}, line 3, key 'fit.extra': unknown key of "
                          "`fitcsc fit`")
    assert main(["fit", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: file not found" in capsys.readouterr().err
    # only the commands that run jobs take a configuration
    assert main(["report", "runs/x", "--config", str(cfg)]) == 2
    capsys.readouterr()
    # an abbreviation argparse accepts would go unread: refused
    assert main(["simulate", "--conf", str(cfg)]) == 2
    assert capsys.readouterr().err.startswith("fitcsc: error: --config: the option was "
                                              "abbreviated; expected --config written in full")


@pytest.mark.parametrize("model, extra", [
    ("gompertz", []),
    pytest.param("csc", ["--quick"], marks=pytest.mark.slow),  # the paced CSC fit, ~1 min
])
def test_fit_reruns_from_its_config_bit_for_bit(volumes, tmp_path, monkeypatch, capsys,
                                                 model, extra):
    monkeypatch.chdir(volumes.parent)  # relative paths on the command line
    first, again = tmp_path / "a", tmp_path / "b"
    assert main(["--quiet", "fit", "--data", volumes.name, "--out", str(first), "--model",
                 model, "--starts", "3", "--no-progress", *extra]) == 0
    cfg = tomllib.loads((first / "config.toml").read_text())
    options = set(_command_actions(build_parser(), "fit"))
    unset = {"regimens", "chunk_size", "share_growth_by", "batching", "max_subjects",
             "species", "cmt_drug", "amount_unit", "time_unit"}  # default None
    assert set(cfg["fit"]) == options - unset
    assert cfg["fit"]["data"] == str(volumes) and cfg["fit"]["out"] == str(first)
    assert cfg["fit"]["device"] == jax.default_backend() and cfg["fit"]["x64"] is True
    assert (cfg["fit"]["starts"], cfg["fit"]["model"], cfg["quiet"]) == (3, model, True)
    assert cfg["fit"]["quick"] is bool(extra)
    monkeypatch.chdir(tmp_path)  # the configuration's paths are absolute
    assert main(["fit", "--config", str(first / "config.toml"), "--out", str(again)]) == 0
    assert "fitcsc fit: 4 subjects" not in capsys.readouterr().out  # quiet, from the file
    for name in ("fits.csv", "predictions.csv"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, again))
    _same_numbers(a, b)
    assert a["seeds"] == {"sobol_starts": 0} and a["precision"] == "float64"
    assert {"jax", "jaxlib", "diffrax", "numpy", "fitcsc"} <= set(a["versions"])
    assert (tomllib.loads((again / "config.toml").read_text())
            == {**cfg, "fit": {**cfg["fit"], "out": str(again)}})


def test_simulate_reruns_from_its_config_bit_for_bit(tmp_path):
    first, again = tmp_path / "a", tmp_path / "b"
    assert main(["--quiet", "simulate", "--quick", "--out", str(first), "--device",
                 "cpu"]) == 0
    assert main(["simulate", "--config", str(first / "config.toml"), "--out",
                 str(again)]) == 0
    for name in ("arms.csv", "trajectories.csv"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, again))
    _same_numbers(a, b)
    assert "cpu" in a["device"].lower() and a["seeds"] == {}
    cfg = tomllib.loads((first / "config.toml").read_text())
    assert cfg["simulate"] == {"out": str(first), "quick": True, "device": "cpu",
                               "x64": True}


def test_no_x64_runs_in_float32(tmp_path):
    """--no-x64 in a fresh process (JAX's x64 switch is process-wide)."""
    out = tmp_path / "f32"
    env = {**os.environ, "FITCSC_CACHE_DIR": "off"}
    run = subprocess.run([sys.executable, "-m", "fitcsc.cli", "--quiet", "simulate",
                          "--quick", "--no-x64", "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "float32" and summary["n_failed"] == 0
    assert tomllib.loads((out / "config.toml").read_text())["simulate"]["x64"] is False
    volumes = np.loadtxt(out / "trajectories.csv", delimiter=",", skiprows=1,
                         usecols=(1, 2, 3))
    assert volumes.size and np.all(np.isfinite(volumes)) and np.all(volumes[:, 1] > 0)


@pytest.mark.skipif(any(d.platform == "gpu" for d in jax.devices()),
                    reason="this machine has a GPU: see test_device_gpu_runs")
def test_device_gpu_refused_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["simulate", "--quick", "--device", "gpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fitcsc: error: --device gpu: JAX sees no GPU on this machine; "
                          "expected --device cpu")
    assert err.rstrip().endswith("got 'gpu'") and not out.exists()


@pytest.mark.skipif(not any(d.platform == "gpu" for d in jax.devices()),
                    reason="needs a GPU")
def test_device_gpu_runs(tmp_path):
    out = tmp_path / "g"
    run = subprocess.run([sys.executable, "-m", "fitcsc.cli", "--quiet", "simulate",
                          "--quick", "--device", "gpu", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert "cpu" not in summary["device"].lower() and summary["n_failed"] == 0


_SCALARS = st.one_of(st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["csc", "gpu", "1=trastuzumab"]))
_PARSER = build_parser()
_KEYS = st.one_of(st.sampled_from(sorted(_command_actions(_PARSER, "fit"))
                                  + ["data_dir", "quiet", "fit", "sample", "starts"]),
                  st.text(min_size=1, max_size=8))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(_SCALARS, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=8)


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=120),
                 st.dictionaries(_KEYS, _VALUES, max_size=5).map(
                     lambda d: tomli_w.dumps(d).encode())))
def test_any_file_is_a_configuration_or_refused_in_one_line(tmp_path, content):
    """The config loader never raises anything but `FitcscInputError` (one line)."""
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    try:
        load_config(path, _PARSER, "fit")
    except FitcscInputError as err:
        assert "\n" not in str(err) and str(err).startswith(str(path))
