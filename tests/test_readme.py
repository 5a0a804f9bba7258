"""The README's two commands exist and .ci/run runs the test command verbatim."""

import csv
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_has_the_two_commands():
    cmds = _commands()
    assert any(c.endswith("fitcsc run") for c in cmds)
    assert any("pytest" in c for c in cmds)


def test_ci_runs_the_readme_test_command():
    test_cmd = next(c for c in _commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci


def test_readme_architecture_names_every_module_and_only_real_ones():
    """The README's "What is in it" section matches the package: every module of fitcsc/
    and its sub-packages is named there (``_fit/lm.py``, or a sibling listed after one,
    as in ``_fit/lm.py`, `lanes.py``), and every module it names exists."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## What is in it"):text.index("### The model family")]
    pkg = ROOT / "fitcsc"
    modules = {p.relative_to(pkg).with_suffix("").as_posix() for p in pkg.rglob("*.py")
               if p.name != "__init__.py" or p.parent == pkg}
    named = set()
    for cell in re.findall(r"^\| ([^|]+) \|", section, flags=re.M):
        folder = ""
        for name in re.findall(r"`(?:fitcsc/)?((?:_[a-z]+/)?_?[a-z_]+)\.py`", cell):
            if "/" in name:
                folder = name.split("/")[0] + "/"
            elif not folder or name in ("__init__",):
                folder = ""
            named.add(name if "/" in name or not folder else folder + name)
    assert sorted(modules - named) == []
    assert sorted(n for n in named if n not in modules) == []
    folders = {p.name for p in pkg.iterdir() if (p / "__init__.py").exists()}
    assert {f for f in folders if f"`fitcsc/{f}/`" not in section} == set()


def _predict_example():
    """The README's worked prediction: its regimen CSV block and its `fitcsc predict`
    command line (the one that names a shipped fit)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("**Predicting a trial that is not in data/.**")
    block = re.search(r"```csv\n(.+?)\n```", text[start:], flags=re.S).group(1)
    command = re.search(r"^\s+(fitcsc predict --fit \S+ .+)$", text[start:], flags=re.M)
    return block + "\n", command.group(1).split()


def test_readme_predict_example_names_a_shipped_fit_of_the_current_format():
    """The fit the README's example predicts from is in the repository and was written by
    the current trial model (kill rates per reference dose, HER2 exposure scales), so
    the example's ``--assume carboplatin=class`` is answered, not refused."""
    _, argv = _predict_example()
    fit = json.loads((ROOT / argv[argv.index("--fit") + 1] / "fit.json").read_text())
    assert fit.get("reference_doses") and "her2_scale" in fit


@pytest.mark.slow
def test_readme_predict_example_runs(tmp_path):
    """The README's worked prediction, as written, on the shipped fit: exit 0, every
    arm and pCR definition answered, the contrast and both horizons written."""
    from fitcsc.cli import main

    block, argv = _predict_example()
    (tmp_path / "my_trial.csv").write_text(block)
    argv = argv[1:]
    argv[argv.index("--fit") + 1] = str(ROOT / argv[argv.index("--fit") + 1])
    argv[argv.index("--regimens") + 1] = str(tmp_path / "my_trial.csv")
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    assert main(argv + ["--draws", "200"]) == 0
    with open(tmp_path / "out" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    arms = {line.split(",")[0] for line in block.splitlines()[1:]}
    assert {r["arm"] for r in rows} == arms and all(r["status"] == "ok" for r in rows)
    assert len(rows) == 4 * len(arms)  # every pCR definition
    with open(tmp_path / "out" / "contrasts.csv") as f:
        assert any(r["contrast"] == "TCH-TC" for r in csv.DictReader(f))
    with open(tmp_path / "out" / "dfs.csv") as f:
        assert {float(r["years"]) for r in csv.DictReader(f)} == {3.0, 5.0}
