"""``fitcsc data validate``: summaries, exit codes and one-line refusals."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fitcsc.cli import main

REPO = pathlib.Path(__file__).resolve().parents[1]
TIDY = (
    "study,arm,subject,day,volume_mm3\n"
    "S,ctrl,m1,-2,0\nS,ctrl,m1,3,50\nS,trast,m2,0,40\nS,trast,m2,7,0.5\n"
)
REGIMEN = (
    "arm,drug,dose,dose_unit,start_day,interval_day,n_doses,infusion_hours,notes\n"
    "ctrl,none,,,,,,,\ntrast,trastuzumab,10,mg/kg,0,7,3,0,weekly\n"
    "trast,paclitaxel,15,mg/kg,0,7,2,1,\n"
)
NONMEM = "ID,TIME,DV,AMT,EVID,CMT,MDV\n1,0,10,.,0,.,0\n1,0,.,2,1,1,1\n1,24,20,.,0,.,0\n"


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.setenv("FITCSC_DATA_DIR", "")
    monkeypatch.delenv("FITCSC_DATA_DIR")  # restored to "unset": main() may set it


def write(tmp_path, text, name) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_tidy(tmp_path, capsys):
    code, out, err = run(capsys, "data", "validate", str(write(tmp_path, TIDY, "v.csv")))
    assert code == 0
    assert out == "OK tidy: 2 subjects, 2 arms, 4 observations (2 censored), days -2..7\n"
    # each mouse has 2 measurements: accepted, with one warning line
    assert err == (f"fitcsc: warning: {tmp_path / 'v.csv'}, column 'subject': 2 subject(s) "
                   "with fewer than 3 measurements, too few to fit a growth curve (initial "
                   "volume, a rate and the error SD): 'm1' (2, line 2), 'm2' (2, line 4); "
                   "kept, but their parameters are not identified\n")
    code, out, _ = run(
        capsys, "data", "validate", "--detection-limit-mm3", "0.1", str(tmp_path / "v.csv")
    )
    assert code == 0 and "(1 censored)" in out


def test_validate_regimen_and_nonmem(tmp_path, capsys):
    code, out, _ = run(capsys, "data", "validate", str(write(tmp_path, REGIMEN, "r.csv")))
    assert code == 0
    assert out == (
        "OK regimen: 2 arms, 2 dose lines, 5 doses of 2 drugs (trastuzumab, paclitaxel)\n"
    )
    path = write(tmp_path, NONMEM, "n.csv")
    code, out, _ = run(
        capsys, "data", "validate", str(path), "--time-unit", "hour", "--cmt-drug", "1=paclitaxel"
    )
    assert code == 0
    assert out == (
        "OK nonmem: 1 subject, 1 arm, 2 observations (0 censored), days 0..1, "
        "1 dose line, 1 dose of 1 drug (paclitaxel)\n"
    )


@pytest.mark.parametrize(
    "text,kind,words",
    [
        (
            TIDY.replace("S,trast,m2,0,40", "S,trast,m2,0,-40"),
            "auto",
            "line 4, column 'volume_mm3': negative volume",
        ),
        (
            REGIMEN.replace("mg/kg,0,7,3", "mg/kg,0,0,3"),
            "auto",
            "line 3, column 'interval_day': repeated doses need an interval",
        ),
        (
            NONMEM.replace("1,0,.,2,1,1,1", "1,0,.,2,3,1,1"),
            "auto",
            "line 3, column 'EVID': EVID 3 (reset) is not supported",
        ),
        (TIDY, "regimen", "line 1, column 'drug': missing required column"),
    ],
)
def test_validate_refusals_are_one_line(tmp_path, capsys, text, kind, words):
    path = write(tmp_path, text, "bad.csv")
    code, out, err = run(capsys, "data", "validate", "--kind", kind, str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"fitcsc: error: {path}, ")
    assert words in err and "Traceback" not in err


def test_validate_missing_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "--data-dir", str(tmp_path), "data", "validate", "nope.csv")
    assert code == 2
    assert err == (
        f"fitcsc: error: nope.csv: file not found; expected a file in the current "
        f"directory or in the data directory {tmp_path}\n"
    )


def test_relative_file_found_in_data_dir(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write(data / "sub", TIDY, "v.csv")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, _ = run(capsys, "--data-dir", str(data), "data", "validate", "sub/v.csv")
    assert code == 0 and out.startswith("OK tidy: 2 subjects")
    assert os.environ["FITCSC_DATA_DIR"] == str(data)
    os.environ["FITCSC_DATA_DIR"] = ""
    # the option is accepted after the subcommand too, and FITCSC_DATA_DIR alone works
    code, out, _ = run(capsys, "data", "validate", "sub/v.csv", "--data-dir", str(data))
    assert code == 0 and os.environ["FITCSC_DATA_DIR"] == str(data)
    code, out, _ = run(capsys, "data", "validate", "sub/v.csv")
    assert code == 0


def test_public_dataset_by_relative_path(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # found through the default data directory
    code, out, _ = run(capsys, "data", "validate", "pdxe_brca/pdxe_brca_tumor_volume.csv")
    assert code == 0
    assert out == (
        "OK tidy: 849 subjects, 22 arms, 12717 observations (133 censored), days 0..181\n"
    )


def test_usage_errors(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "required" in err
    code, _, err = run(capsys, "data", "validate", "x.csv", "--kind", "excel")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys, "data", "validate", "x.csv", "--cmt-drug", "trastuzumab")
    assert code == 2 and "CMT=DRUG" in err
    code, out, _ = run(capsys, "data", "validate", "--help")
    assert code == 0 and "--kind" in out


def test_subprocess_exit_codes(tmp_path):
    good = write(tmp_path, TIDY, "good.csv")
    bad = write(tmp_path, TIDY + "S,ctrl,m1,3,60\n", "bad.csv")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FITCSC_DATA_DIR", None)
    cmd = [sys.executable, "-m", "fitcsc.cli", "data", "validate"]
    ok = subprocess.run(
        [*cmd, str(good)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert ok.returncode == 0 and ok.stdout.startswith("OK tidy: 2 subjects"), ok.stderr
    no = subprocess.run(
        [*cmd, str(bad)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert no.returncode == 2 and no.stdout == ""
    assert no.stderr.count("\n") == 1 and "Traceback" not in no.stderr
    assert no.stderr.startswith(f"fitcsc: error: {bad}, line 6, column 'day': duplicate")


# ------------------------------------------------------------ files from the wild

TWINS = (  # 3 mice with 3 days each; m1 measured twice on day 3, m2 twice on day 0
    "study,arm,subject,day,volume_mm3\n"
    + "".join(f"S,{a},{m},{d},{v}\n" for m, a in (("m0", "ctrl"), ("m1", "ctrl"),
                                                  ("m2", "trast"))
              for d, v in ((0, 100), (3, 130), (7, 170)))
    + "S,ctrl,m1,3,150\nS,trast,m2,0,80\n"
)


def _csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_duplicates_option_through_validate_and_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")
    path = write(tmp_path, TWINS, "twins.csv")
    code, out, err = run(capsys, "data", "validate", str(path))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"fitcsc: error: {path}, line 11, column 'day': duplicate "
                          "measurements: 2 (subject, day) pairs measured more than once (4 "
                          "rows, 2 subjects): subject 'm1' on day 3 (lines 6 and 11: 130, 150 "
                          "mm3); subject 'm2' on day 0 (lines 8 and 12: 100, 80 mm3)")
    assert "resolve them with --duplicates mean|first|drop-subject" in err
    code, out, err = run(capsys, "data", "validate", str(path), "--duplicates", "mean")
    assert code == 0 and out.startswith("OK tidy: 3 subjects, 2 arms, 9 observations")
    assert err.count("\n") == 1 and err.startswith("fitcsc: warning: ")
    assert "resolved by --duplicates mean: volumes averaged" in err
    for how, subjects, m1_day3 in (("first", ["m0", "m1", "m2"], "130"),
                                   ("mean", ["m0", "m1", "m2"], "140"),
                                   ("drop-subject", ["m0"], None)):
        out_dir = tmp_path / how
        code, out, err = run(capsys, "fit", "--data", str(path), "--out", str(out_dir),
                             "--model", "exponential", "--quick", "--duplicates", how)
        assert code == 0 and f"resolved by --duplicates {how}" in err
        preds = _csv_rows(out_dir / "predictions.csv")
        assert [r["subject"] for r in _csv_rows(out_dir / "fits.csv")] == subjects
        assert len(preds) == 3 * len(subjects)  # one row per subject and day
        got = [r["volume_mm3"] for r in preds if r["subject"] == "m1" and r["day"] == "3"]
        assert got == ([] if m1_day3 is None else [m1_day3])
    code, _, err = run(capsys, "fit", "--data", str(path), "--out", str(tmp_path / "x"),
                       "--model", "exponential", "--quick")
    assert code == 2 and "duplicate measurements: 2 (subject, day) pairs" in err


NM_HOURS = (  # TIME in hours, AMT in mg/kg: trastuzumab 6 mg/kg at 0 h, volumes weekly
    "ID,TIME,DV,AMT,EVID,CMT,ARM\n"
    "1,0,50,.,0,.,trast\n1,0,.,6,1,1,trast\n1,168,80,.,0,.,trast\n1,336,90,.,0,.,trast\n"
    "1,504,100,.,0,.,trast\n2,0,60,.,0,.,ctrl\n2,168,120,.,0,.,ctrl\n2,336,200,.,0,.,ctrl\n"
    "2,504,330,.,0,.,ctrl\n"
)


def test_species_and_nonmem_units_reach_the_fit(tmp_path, capsys, monkeypatch):
    """The bugs of issue 15: `fitcsc fit` ignored the species (clinical NONMEM data were
    fitted with mouse PK and a 20 g mouse's mg/kg conversion) and NONMEM time units (a
    file in hours was fitted in days). The batch the optimiser sees must be in days and
    mg of a 70 kg human, as `data validate|show` read it."""
    import fitcsc._jobs.fit_job as fitrun

    monkeypatch.setenv("FITCSC_CACHE_DIR", "off")
    seen = []
    real = fitrun.fit_map
    monkeypatch.setattr(fitrun, "fit_map", lambda p, b, **kw: (seen.append(b), real(p, b, **kw))[1])
    path = write(tmp_path, NM_HOURS, "nm.csv")
    options = ["--time-unit", "hour", "--amount-unit", "mg/kg"]
    code, out, err = run(capsys, "fit", "--data", str(path), "--out", str(tmp_path / "h"),
                         "--model", "exponential", "--quick", "--species", "human", *options)
    assert code == 0 and err == "", err
    (batch,) = seen
    np.testing.assert_array_equal(np.asarray(batch.day), [[0, 7, 14, 21]] * 2)  # days
    assert float(batch.schedule.amount_mg[0, 0]) == pytest.approx(6 * 70.0)  # mg, 70 kg
    preds = _csv_rows(tmp_path / "h" / "predictions.csv")
    assert [r["day"] for r in preds if r["subject"] == "1"] == ["0", "7", "14", "21"]
    code, out, _ = run(capsys, "data", "show", str(path), "--species", "human", *options)
    assert code == 0 and "days 0..21" in out and "trastuzumab 6 mg/kg on day 0" in out
    # without --species: a mouse, said out loud
    seen.clear()
    code, out, err = run(capsys, "fit", "--data", str(path), "--out", str(tmp_path / "m"),
                         "--model", "exponential", "--quick", *options)
    assert code == 0 and "--species not given, so a mouse is assumed" in err
    assert float(seen[0].schedule.amount_mg[0, 0]) == pytest.approx(6 * 0.020)
    # the species reaches the CSC model's PK too (stopped before compiling anything)
    models = []

    def stop(model, spec):
        models.append(model)
        raise RuntimeError("stop here")

    monkeypatch.setattr(fitrun, "csc_predictor", stop)
    code, _, err = run(capsys, "fit", "--data", str(path), "--out", str(tmp_path / "c"),
                       "--species", "human", "--quick", *options)
    assert code == 1 and "the run failed: RuntimeError: stop here" in err
    assert models[0].species == "human" and "Traceback" not in err


def test_every_data_option_of_validate_is_an_option_of_show_and_fit():
    from fitcsc.cli import build_parser, data_options_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    data_sub = sub["data"]._subparsers._group_actions[0].choices
    wanted = {s for a in data_options_parser()._actions for s in a.option_strings}
    assert {"--duplicates", "--time-unit", "--amount-unit", "--species", "--cmt-drug"} <= wanted
    for parser in (data_sub["validate"], data_sub["show"], sub["fit"]):
        have = {s for a in parser._actions for s in a.option_strings}
        assert wanted <= have


def test_nonmem_options_refused_for_a_tidy_file(tmp_path, capsys):
    path = write(tmp_path, TIDY, "v.csv")
    for cmd in (["data", "validate", str(path)], ["data", "show", str(path)],
                ["fit", "--data", str(path), "--out", str(tmp_path / "o"), "--quick"]):
        code, out, err = run(capsys, *cmd, "--time-unit", "hour")
        assert code == 2 and out == "" and err.count("\n") == 1
        assert err == (f"fitcsc: error: {path}, column '--time-unit': --time-unit applies to "
                       "NONMEM event data only; expected no such option with a tidy file (its "
                       "day column is in days; doses come from a regimen table), got 'hour'\n")


def test_data_show_per_study_arm_and_subject(tmp_path, capsys):
    text = TIDY + "S,BGJ398,m3,0,5\nS,BGJ398,m3,4,6\nS,BGJ398,m3,8,9\nT,cisplatin,m4,0,7\n"
    path = write(tmp_path, text, "v.csv")
    code, out, _ = run(capsys, "data", "show", str(path))
    assert code == 0
    assert out.splitlines() == [
        f"{path}: tidy, 2 studies, 4 subjects, 4 arms, 8 observations (2 censored), days -2..8",
        "study S: 3 arms, 3 subjects",
        "  arm ctrl: 1 subject; untreated (control name; no regimen table)",
        "    m1: 2 observations (1 censored), days -2..3, volume 0..50 mm3",
        "  arm trast: 1 subject; constant her2 effect from day 0 (no regimen table)",
        "    m2: 2 observations (1 censored), days 0..7, volume 0.5..40 mm3",
        "  arm BGJ398: 1 subject; constant cytostatic effect from day 0 (no regimen table, "
        "names no catalogue drug: class assumed)",
        "    m3: 3 observations (0 censored), days 0..8, volume 5..9 mm3",
        "study T: 1 arm, 1 subject",
        "  arm cisplatin: 1 subject; constant chemo effect from day 0 (no regimen table)",
        "    m4: 1 observation (0 censored), days 0..0, volume 7..7 mm3",
    ]
    reg = write(tmp_path, REGIMEN, "r.csv")
    code, out, _ = run(capsys, "data", "show", str(write(tmp_path, TIDY, "w.csv")),
                       "--regimens", str(reg))
    assert code == 0 and "; regimens from regimen table" in out.splitlines()[0]
    assert ("  arm trast: 1 subject; trastuzumab 10 mg/kg x3 every 7 d from day 0; paclitaxel "
            "15 mg/kg x2 every 7 d from day 0, 1 h infusion") in out.splitlines()
    code, out, _ = run(capsys, "data", "show", str(reg))
    assert out.splitlines() == [
        f"{reg}: regimen, 2 arms, 2 dose lines, 5 doses of 2 drugs (trastuzumab, paclitaxel)",
        "  arm ctrl: untreated",
        "  arm trast: trastuzumab 10 mg/kg x3 every 7 d from day 0; paclitaxel 15 mg/kg x2 "
        "every 7 d from day 0, 1 h infusion",
    ]
    many = "study,arm,subject,day,volume_mm3\n" + "".join(
        f"S,ctrl,m{i},{d},10\n" for i in range(25) for d in range(3))
    big = write(tmp_path, many, "big.csv")
    code, out, _ = run(capsys, "data", "show", str(big))
    assert out.splitlines()[-1] == "    ... and 5 more (--all to list)"
    code, out, _ = run(capsys, "data", "show", str(big), "--all")
    assert len(out.splitlines()) == 3 + 25


def test_validate_checks_regimens_against_the_volumes(tmp_path, capsys):
    path = write(tmp_path, TIDY, "v.csv")
    reg = write(tmp_path, REGIMEN, "r.csv")
    code, out, _ = run(capsys, "data", "validate", str(path), "--regimens", str(reg))
    assert code == 0 and out == ("OK tidy: 2 subjects, 2 arms, 4 observations (2 censored), "
                                 "days -2..7, 2 dose lines, 5 doses of 2 drugs (trastuzumab, "
                                 "paclitaxel)\n")
    only_ctrl = write(tmp_path, REGIMEN.split("trast,")[0], "c.csv")
    code, out, err = run(capsys, "data", "validate", str(path), "--regimens", str(only_ctrl))
    assert code == 2 and "arm 'trast' of subject 'm2' has no regimen" in err
    assert err.count("\n") == 1  # refused: the error alone, not the 2-point warning before it


def test_quiet_debug_and_exit_codes(tmp_path, capsys, monkeypatch):
    import fitcsc.cli as cli

    good = write(tmp_path, TIDY, "v.csv")
    code, out, err = run(capsys, "--quiet", "data", "validate", str(good))
    assert code == 0 and out == "" and err.startswith("fitcsc: warning: ")  # warnings stay
    bad = write(tmp_path, TIDY.replace("S,trast,m2,0,40", "S,trast,m2,0,-40"), "bad.csv")
    code, out, err = run(capsys, "data", "validate", str(bad), "--debug")
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith(f"fitcsc: error: {bad}, line 4")

    def boom(args):
        raise RuntimeError("boom\nsecond line")

    def warn_then_boom(args):
        import warnings

        warnings.warn("odd but legitimate", cli.DataWarning, stacklevel=2)
        boom(args)

    monkeypatch.setattr(cli, "_data_validate", warn_then_boom)
    code, out, err = run(capsys, "data", "validate", str(good))
    assert code == 1 and err == ("fitcsc: warning: odd but legitimate\n"  # kept: not refused
                                 "fitcsc: error: the run failed: RuntimeError: boom second "
                                 "line (run with --debug for the traceback)\n")
    code, out, err = run(capsys, "--debug", "data", "validate", str(good))
    assert code == 1 and "Traceback" in err and 'raise RuntimeError("boom' in err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_data_validate", interrupted)
    code, out, err = run(capsys, "data", "validate", str(good))
    assert code == 130 and err == "fitcsc: error: interrupted\n"


def test_fit_exit_code_1_when_no_subject_is_fitted(tmp_path, capsys, monkeypatch):
    import fitcsc._jobs.fit_job as fitrun

    def broken(*args, **kw):
        raise FloatingPointError("nan everywhere")

    monkeypatch.setattr(fitrun, "fit_map", broken)
    path = write(tmp_path, TWINS.rsplit("S,ctrl,m1,3,150", 1)[0], "v.csv")
    code, out, err = run(capsys, "fit", "--data", str(path), "--out", str(tmp_path / "o"),
                         "--model", "exponential", "--quick", "--no-progress")
    assert code == 1 and out.startswith("fitcsc fit: 3 subjects fitted with exponential (3 "
                                        "error)")
    assert "FloatingPointError fitting" in err and "Traceback" not in err


def test_out_that_is_a_file_refused_before_the_job(tmp_path, capsys, monkeypatch):
    """``--out FILE`` (or ``FILE/sub``) of every command that writes a folder is bad input
    (exit 2, one line), refused before the job runs: `fitcsc run` used to fit for minutes
    and then fail with exit 1 when it wrote its first file."""
    from fitcsc._jobs.config import _command_actions
    from fitcsc.cli import build_parser

    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    names = [n for n in parser._subparsers._group_actions[0].choices
             if "out" in _command_actions(parser, n)]
    assert {"run", "simulate", "fit", "sample", "predict"} <= set(names)
    a_file = write(tmp_path, "not a folder\n", "taken")
    for name in names:
        actions = _command_actions(parser, name)
        # the other required options get a value the job itself would refuse (no file
        # x): only the --out check comes before it
        required = [a for d, act in actions.items() if act.required and d != "out"
                    for a in (act.option_strings[0], "x")]
        for out in (a_file, a_file / "sub"):
            code, stdout, err = run(capsys, name, *required, "--out", str(out))
            assert code == 2 and stdout == "" and err.count("\n") == 1, (name, err)
            assert err == (f"fitcsc: error: --out: {a_file} is a file, not a folder; "
                           f"expected a new or existing folder, got '{out}'\n")
    assert a_file.read_text() == "not a folder\n"


def test_every_command_help_has_an_example_and_no_escaped_percent(capsys):
    """Issue 15: ``--help`` on each command with an example of that command, and help
    text formatted by argparse (``predict --help`` printed "95%%")."""
    from fitcsc.cli import build_parser

    parser = build_parser()
    commands = [[n] for n in parser._subparsers._group_actions[0].choices]
    data = parser._subparsers._group_actions[0].choices["data"]
    commands += [["data", n] for n in data._subparsers._group_actions[0].choices]
    assert {"data", "run", "simulate", "fit", "sample", "predict", "report"} <= {
        c[0] for c in commands} and ["data", "validate"] in commands
    for cmd in commands:
        code, out, err = run(capsys, *cmd, "--help")
        text = " ".join(out.split())
        assert code == 0 and err == "", cmd
        assert "example" in text.lower(), cmd
        assert f"fitcsc {' '.join(cmd)} " in text.split("xample", 1)[1], cmd
        assert "%%" not in out and "%(" not in out, cmd
