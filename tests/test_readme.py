"""The README's two commands exist and .ci/run runs the test command verbatim."""

import pathlib
import re

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
