"""The house rules that the import graph must keep (issue 16): experiments and benchmarks
use only public names of fitcsc, and no module of fitcsc imports another module's
underscore names or imports back from the CLI."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imports(path):
    """``(line, module, names)`` of every import in ``path`` (relative imports resolved
    against the fitcsc package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # inside fitcsc: "from ._x import y" -> "fitcsc._x"
                module = "fitcsc" + ("." + module if module else "")
            yield node.lineno, module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def test_experiments_and_benchmarks_use_only_public_names():
    bad = []
    for folder in ("experiments", "benchmarks"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for line, module, names in _imports(path):
                parts = module.split(".")
                if parts[0] != "fitcsc":
                    continue
                if any(_private(p) for p in parts[1:]) or any(_private(n) for n in names):
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {module} {names}")
    assert not bad, "private fitcsc names imported:\n" + "\n".join(bad)


def test_fitcsc_modules_import_no_underscore_names_and_nothing_from_the_cli():
    bad = []
    for path in sorted((ROOT / "fitcsc").rglob("*.py")):
        for line, module, names in _imports(path):
            if module.split(".")[0] != "fitcsc":
                continue
            if module == "fitcsc.cli" and path.name != "__main__.py":
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports from the CLI")
            bad += [f"{path.relative_to(ROOT)}:{line}: {module}.{n}" for n in names
                    if _private(n)]
    assert not bad, "\n".join(bad)
