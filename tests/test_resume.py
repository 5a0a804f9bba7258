"""Nothing lost: ``fitcsc fit`` checkpoints every finished chunk and ``--resume`` continues
an interrupted run (``kill -9`` of a real process, Ctrl-C) without redoing finished
chunks, to the same ``fits.csv``, byte for byte, as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fitcsc.cli import main
from fitcsc.files import write_atomic

N_SUBJECTS, CHUNK = 16, 2  # 8 chunks


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """16 subjects in two cages: growing controls, regressing then regrowing treated."""
    rng = np.random.default_rng(5)
    lines = ["study,arm,subject,day,volume_mm3,cage"]
    for i in range(N_SUBJECTS):
        treated = i % 2
        rate = 0.05 + 0.01 * rng.random()
        for d in range(0, 29, 4):
            v = (150 * np.exp(-0.1 * d) + 5 * np.exp(rate * d) if treated
                 else 100 * np.exp(rate * d))
            lines.append(f"syn,{'paclitaxel' if treated else 'control'},s{i:02d},{d},"
                         f"{v * np.exp(0.05 * rng.normal()):.3f},{'AB'[i // 8]}")
    path = tmp_path_factory.mktemp("resume") / "volumes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(volumes, tmp_path_factory):
    """An uninterrupted run (in process: its fits.csv is the one of any process)."""
    ref = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FITCSC_CACHE_DIR", "off")
        assert main(_fit_argv(volumes, ref)) == 0
    assert not (ref / ".checkpoint").exists()  # removed once every chunk is done
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["n_chunks"] == N_SUBJECTS // CHUNK
    assert summary["checkpoint"] == {"resumed_chunks": 0, "computed_chunks": summary["n_chunks"]}
    return ref


def _fit_argv(data, out, *extra):
    return ["fit", "--data", str(data), "--out", str(out), "--model", "gompertz",
            "--chunk-size", str(CHUNK), "--max-subjects", str(N_SUBJECTS), "--starts", "2",
            "--quick", "--no-progress", *extra]


def _cli(argv, sigint=False):
    """The command line of ``fitcsc ARGV`` in a new process; ``sigint``: with Python's
    KeyboardInterrupt handler on SIGINT even where the test runner ignores SIGINT (the
    child inherits that; a fork-time reset would warn under JAX's threads)."""
    if not sigint:
        return [sys.executable, "-m", "fitcsc.cli", *argv]
    code = ("import runpy, signal, sys; signal.signal(signal.SIGINT, "
            "signal.default_int_handler); sys.argv[0] = 'fitcsc'; "
            "runpy.run_module('fitcsc.cli', run_name='__main__')")
    return [sys.executable, "-c", code, *argv]


def _wait_for(path, proc, timeout=240):
    t0 = time.monotonic()
    while not path.exists() and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.005)


@pytest.mark.slow
def test_sigint_then_kill_9_then_resume_redoes_no_finished_chunk(volumes, reference,
                                                                 tmp_path, capsys):
    """A real process: Ctrl-C (SIGINT) once the first chunk is saved: exit 130, one line
    saying how to resume. Resumed, then ``kill -9`` once it has saved a chunk of its
    own; resumed again: no saved chunk is redone (their files untouched until the end,
    the summary's count) and fits.csv equals the uninterrupted run's byte for byte."""
    ref, out, n_chunks = reference, tmp_path / "out", N_SUBJECTS // CHUNK
    ck = out / ".checkpoint"
    # as from a terminal: a test run launched in the background (`cmd &` in a
    # non-interactive shell, as some CI runners do) ignores SIGINT, and the child would
    # inherit that and finish normally (measured: exit 0, no message)
    proc = subprocess.Popen(_cli(_fit_argv(volumes, out), sigint=True),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(ck / "chunk_00000.npz", proc)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1].strip()
    assert proc.returncode == 130, err
    assert len(err.splitlines()) == 1 and "--resume" in err and str(ck) in err
    kept = sorted(p.name for p in ck.glob("chunk_*.npz"))
    assert 1 <= len(kept) < n_chunks and not (out / "fits.csv").exists()

    # without --resume the unfinished run is refused, in one line, and left as it was
    assert main(_fit_argv(volumes, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unfinished run" in err and "--resume" in err

    proc = subprocess.Popen(_cli(_fit_argv(volumes, out, "--resume")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(ck / f"chunk_{len(kept):05d}.npz", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    kept = sorted(p.name for p in ck.glob("chunk_*.npz"))
    assert len(kept) < n_chunks and not (out / "fits.csv").exists()
    mtimes = {n: (ck / n).stat().st_mtime_ns for n in kept}

    proc = subprocess.Popen(_cli(_fit_argv(volumes, out, "--resume")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "fits.csv", proc)  # written just before the checkpoint is removed
    assert {n: (ck / n).stat().st_mtime_ns for n in kept} == mtimes
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err
    record = json.loads((out / "summary.json").read_text())["checkpoint"]
    assert record == {"resumed_chunks": len(kept), "computed_chunks": n_chunks - len(kept)}
    assert (out / "fits.csv").read_bytes() == (ref / "fits.csv").read_bytes()
    assert (out / "predictions.csv").read_bytes() == (ref / "predictions.csv").read_bytes()
    assert not ck.exists()


def test_resume_refuses_other_data_or_options(volumes, tmp_path, capsys):
    out = tmp_path / "out"
    (out / ".checkpoint").mkdir(parents=True)
    write_atomic(out / ".checkpoint" / "manifest.json",
                 json.dumps({"job": "fit", "fingerprint": "0" * 64}))
    assert main(_fit_argv(volumes, out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "manifest.json" in err and "other data or options" in err


def test_ctrl_c_keeps_the_checkpoint_and_resume_finishes(volumes, reference, tmp_path, capsys,
                                                         monkeypatch):
    """Ctrl-C in the third chunk: exit 130, one line saying how to resume, two chunks
    kept; ``--resume`` fits the rest, and changing an option is then refused."""
    import fitcsc._jobs.fit_job as fitrun

    ref, out = reference, tmp_path / "out"
    real, calls = fitrun._fit_chunk, []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(fitrun, "_fit_chunk", interrupted)
    capsys.readouterr()
    assert main(_fit_argv(volumes, out)) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "2 finished chunk" in err
    assert len(list((out / ".checkpoint").glob("chunk_*.npz"))) == 2
    monkeypatch.setattr(fitrun, "_fit_chunk", real)

    assert main([*_fit_argv(volumes, out, "--resume"), "--starts", "1"]) == 2
    assert "other data or options" in capsys.readouterr().err
    assert main(_fit_argv(volumes, out, "--resume")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == {"resumed_chunks": 2, "computed_chunks": 6}
    assert (out / "fits.csv").read_bytes() == (ref / "fits.csv").read_bytes()


@pytest.mark.slow
def test_shared_growth_job_resumes_to_the_same_fits(volumes, tmp_path, monkeypatch):
    """The group job (one chunk per cage): interrupted in its second chunk, resumed."""
    import fitcsc._jobs.fit_job as fitrun

    argv = ["--model", "csc", "--share-growth-by", "cage", "--chunk-size", "4",
            "--max-subjects", "8"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    volumes8 = tmp_path / "v8.csv"
    rows = volumes.read_text().splitlines()
    keep = [r for r in rows[1:] if int(r.split(",")[2][1:]) in (0, 1, 2, 3, 8, 9, 10, 11)]
    volumes8.write_text("\n".join([rows[0], *keep]) + "\n")
    assert main([*_fit_argv(volumes8, ref), *argv]) == 0
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["n_chunks"] == 2 and summary["n_groups"] == 2
    real, calls = fitrun._fit_chunk, []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(fitrun, "_fit_chunk", interrupted)
    assert main([*_fit_argv(volumes8, out), *argv]) == 130
    monkeypatch.setattr(fitrun, "_fit_chunk", real)
    assert main([*_fit_argv(volumes8, out, "--resume"), *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == {"resumed_chunks": 1, "computed_chunks": 1}
    assert (out / "fits.csv").read_bytes() == (ref / "fits.csv").read_bytes()


class _StopAfter:
    """Ctrl-C once ``n`` parts of a checkpoint have been saved (as if pressed then)."""

    def __init__(self, ckpt, n):
        self.ckpt, self.n = ckpt, n

    def load(self, name):
        return self.ckpt.load(name)

    def save(self, name, arrays):
        self.ckpt.save(name, arrays)
        if len(self.ckpt.saved) == self.n:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", [pytest.param("nuts", marks=pytest.mark.slow), "chees"])
def test_sampler_resumes_to_the_same_draws(method, tmp_path):
    """`sample` with a checkpoint, interrupted after the warm-up and two chunks of draws,
    resumed: the finished parts are loaded (not rerun) and the draws and statistics
    equal an uninterrupted run's exactly."""
    import jax.numpy as jnp

    from fitcsc import sample
    from fitcsc._io.checkpoint import Checkpoint

    prec = jnp.asarray([[2.0, 0.8], [0.8, 1.0]])

    def log_density(z):
        return -0.5 * z @ prec @ z

    kw = dict(method=method, num_warmup=60, num_samples=50, num_chains=4, seed=3)
    ref_ckpt = Checkpoint(tmp_path / "ref", "sample", "x", resume=False)
    ref = sample(log_density, jnp.zeros(2), checkpoint=ref_ckpt, **kw)
    n_parts = len(ref_ckpt.saved)
    assert n_parts == 1 + 50 // 5  # the warm-up, then chunks of a tenth of the draws
    ckpt = Checkpoint(tmp_path / "out", "sample", "x", resume=False)
    with pytest.raises(KeyboardInterrupt):
        sample(log_density, jnp.zeros(2), checkpoint=_StopAfter(ckpt, 3), **kw)
    again = Checkpoint(tmp_path / "out", "sample", "x", resume=True)
    post = sample(log_density, jnp.zeros(2), checkpoint=again, **kw)
    assert again.resumed == ["warmup", "draws_00000", "draws_00001"]
    assert len(again.saved) == n_parts - 3
    np.testing.assert_array_equal(post.z, ref.z)
    for k, v in ref.sample_stats.items():
        np.testing.assert_array_equal(post.sample_stats[k], v, err_msg=k)
    for k, v in ref.warmup_stats.items():  # the warm-up's trace is loaded with it
        np.testing.assert_array_equal(post.warmup_stats[k], v, err_msg=k)
    if method == "chees":  # a checkpoint changes no draw (chunks as with progress)
        plain = sample(log_density, jnp.zeros(2), **kw, progress=lambda *a: None)
        np.testing.assert_array_equal(plain.z, ref.z)


@pytest.mark.slow
def test_nuts_resumed_with_more_draws_extends_the_chains(tmp_path):
    """NUTS's draws do not depend on how many follow: a finished 50-draw run's checkpoint
    (chunks of 5 draws), resumed with 100 draws, loads its warm-up and ten chunks, runs
    ten more from the saved chain states, and equals an uninterrupted 100-draw run's
    draws and statistics (the first 50 are the short run's); resumed with 30, it loads
    six chunks and runs nothing. A number of draws that is not a whole number of the
    saved chunks is refused."""
    import shutil

    import jax.numpy as jnp

    from fitcsc import sample
    from fitcsc._io.checkpoint import Checkpoint

    prec = jnp.asarray([[2.0, 0.8], [0.8, 1.0]])

    def log_density(z):
        return -0.5 * z @ prec @ z

    kw = dict(method="nuts", num_warmup=60, num_chains=3, seed=5)
    full = sample(log_density, jnp.zeros(2), num_samples=100, **kw)
    short = sample(log_density, jnp.zeros(2), num_samples=50,
                   checkpoint=Checkpoint(tmp_path / "a", "s", "x", resume=False), **kw)
    np.testing.assert_array_equal(short.z, full.z[:, :50])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    ckpt = Checkpoint(tmp_path / "a", "s", "x", resume=True)
    longer = sample(log_density, jnp.zeros(2), num_samples=100, checkpoint=ckpt, **kw)
    assert ckpt.resumed == ["warmup"] + [f"draws_{i:05d}" for i in range(10)]
    assert ckpt.saved == [f"draws_{i:05d}" for i in range(10, 20)]
    np.testing.assert_array_equal(longer.z, full.z)
    for k, v in full.sample_stats.items():
        np.testing.assert_array_equal(longer.sample_stats[k], v, err_msg=k)
    fewer = Checkpoint(tmp_path / "b", "s", "x", resume=True)
    post = sample(log_density, jnp.zeros(2), num_samples=30, checkpoint=fewer, **kw)
    assert fewer.resumed == ["warmup"] + [f"draws_{i:05d}" for i in range(6)]
    assert fewer.saved == []  # a fresh 30-draw run would take chunks of 3
    np.testing.assert_array_equal(post.z, full.z[:, :30])
    with pytest.raises(ValueError, match="chunks hold 5 draws per chain; resume with a "
                                         "multiple of 5 draws .*, got 64"):
        sample(log_density, jnp.zeros(2), num_samples=64,
               checkpoint=Checkpoint(tmp_path / "c", "s", "x", resume=True), **kw)


@pytest.mark.slow
def test_sample_job_nuts_resumed_with_more_draws(volumes, tmp_path, monkeypatch, capsys):
    """``fitcsc sample --method nuts`` stopped (Ctrl-C) after two chunks of draws, then
    ``--resume --samples 80 --keep-checkpoint``: the run is extended, not refused (that
    the draws equal an uninterrupted run's is `test_nuts_resumed_with_more_draws_extends_
    the_chains`); its kept checkpoint lets the finished run be extended again to 120
    draws, its first 80 unchanged. ChEES with another ``--samples`` is refused (its draws
    depend on the number asked for)."""
    import xarray as xr

    from fitcsc._io.checkpoint import Checkpoint

    argv = ["--model", "exponential", "--quick", "--quiet", "--seed", "2", "--method", "nuts"]
    out = tmp_path / "out"
    real = Checkpoint.save

    def stop_after(part):
        def save(self, name, arrays):
            real(self, name, arrays)
            if name == part:
                raise KeyboardInterrupt
        return save

    monkeypatch.setattr(Checkpoint, "save", stop_after("draws_00001"))
    assert main(["sample", "--data", str(volumes), "--out", str(out), *argv]) == 130
    monkeypatch.setattr(Checkpoint, "save", real)
    assert main(["sample", "--data", str(volumes), "--out", str(out), *argv, "--resume",
                 "--samples", "80", "--keep-checkpoint"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampler"]["num_samples"] == 80
    assert summary["checkpoint"] == {"resumed_chunks": 4,  # warm start, warm-up, 2 chunks
                                     "computed_chunks": 80 // 4 - 2,
                                     "kept": str(out / ".checkpoint")}
    with xr.open_dataset(out / "posterior.nc", group="posterior", engine="h5netcdf") as f:
        b = f.load()  # in memory: the file is replaced below
    assert b.sizes["draw"] == 80
    capsys.readouterr()
    assert main(["sample", "--data", str(volumes), "--out", str(out), *argv]) == 2
    assert "--keep-checkpoint" in capsys.readouterr().err  # refused without --resume
    assert main(["sample", "--data", str(volumes), "--out", str(out), *argv, "--resume",
                 "--samples", "90"]) == 2  # not a whole number of chunks of 4 draws
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multiple of 4" in err[0] and "got 90" in err[0], err
    assert main(["sample", "--data", str(volumes), "--out", str(out), *argv, "--resume",
                 "--samples", "120"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == {"resumed_chunks": 2 + 80 // 4, "computed_chunks": 40 // 4}
    assert not (out / ".checkpoint").exists()
    with xr.open_dataset(out / "posterior.nc", group="posterior", engine="h5netcdf") as c:
        assert c.sizes["draw"] == 120
        xr.testing.assert_equal(b, c.isel(draw=slice(0, 80)))

    chees = ["--model", "exponential", "--quick", "--quiet", "--seed", "2"]
    monkeypatch.setattr(Checkpoint, "save", stop_after("warm_start"))
    assert main(["sample", "--data", str(volumes), "--out", str(tmp_path / "c"), *chees]) == 130
    monkeypatch.setattr(Checkpoint, "save", real)
    capsys.readouterr()
    assert main(["sample", "--data", str(volumes), "--out", str(tmp_path / "c"), *chees,
                 "--resume", "--samples", "80"]) == 2
    assert "other data or options" in capsys.readouterr().err


@pytest.mark.slow
def test_sample_job_kill_9_then_resume(volumes, tmp_path):
    """``fitcsc sample`` killed (-9) once its first chunk of draws is saved, resumed: the
    saved parts are not rerun and the posterior equals an uninterrupted run's."""
    import xarray as xr

    argv = ["--model", "exponential", "--quick", "--quiet", "--seed", "4"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["sample", "--data", str(volumes), "--out", str(ref), *argv]) == 0
    proc = subprocess.Popen(_cli(["sample", "--data", str(volumes), "--out", str(out), *argv]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(out / ".checkpoint" / "draws_00000.npz", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    kept = sorted(p.name for p in (out / ".checkpoint").glob("*.npz"))
    assert {"warm_start.npz", "warmup.npz", "draws_00000.npz"} <= set(kept)
    resumed = subprocess.run(_cli(["sample", "--data", str(volumes), "--out", str(out),
                                   *argv, "--resume"]), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"]["resumed_chunks"] == len(kept)
    assert summary["checkpoint"]["computed_chunks"] == 2 + 40 // 4 - len(kept)
    assert (out / "summary.csv").read_bytes() == (ref / "summary.csv").read_bytes()
    a, b = (xr.open_dataset(d / "posterior.nc", group="posterior", engine="h5netcdf")
            for d in (ref, out))
    xr.testing.assert_equal(a, b)  # draws and coordinates (attributes: times, dates)
