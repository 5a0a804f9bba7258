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
    is named there (directly or by a ``_prefix*`` pattern), and every module it names
    exists."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## What is in it"):text.index("### The model family")]
    modules = {p.stem for p in (ROOT / "fitcsc").glob("*.py")} - {"__init__"}
    named = set(re.findall(r"`(?:fitcsc/)?(_?[a-z_]+)\.py`", section))
    named |= {m for m in modules if re.search(rf"\b{re.escape(m)}\b", section)}
    patterns = re.findall(r"`(?:fitcsc/)?(_[a-z_]+)\*(?:\.py)?`", section)
    covered = {m for m in modules if m in named or any(m.startswith(p) for p in patterns)}
    assert sorted(modules - covered) == []
    assert sorted(n for n in named if n not in modules) == []
