"""The house rules that the import graph must keep (issue 16): experiments and benchmarks
use only public names of fitcsc; no module of fitcsc imports another module's underscore
names or imports back from the CLI; the sub-packages depend one way (``_model`` <-
``_solve``, ``_io`` <- ``_fit`` <- ``_trial`` <- ``_jobs``), and no two modules import
each other at import time."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module_name(path):
    """``fitcsc._fit.lm`` of ``fitcsc/_fit/lm.py`` (a package: its ``__init__``'s)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, top_level_only=False):
    """``(line, module, names)`` of every import in ``path`` (relative imports resolved
    against the file's package); with ``top_level_only``, only those run at import time
    (not inside a function)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # "from .._fit.lm import y" in fitcsc/_trial -> "fitcsc._fit.lm"
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
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


# What each sub-package may import from fitcsc besides itself and the two foundation
# modules `fitcsc._errors` and `fitcsc._status` (which import nothing of fitcsc). The public
# `fitcsc.summary` (the one ArviZ importer: on `_fit.sample` and `_io.files`) serves the
# trial posterior and the jobs; `fitcsc.files` is the public face of `_io.files`.
LAYERS = {
    "_model": set(),
    "_solve": {"_model"},
    "_io": {"_model"},
    "_fit": {"_model", "_solve", "_io"},
    "_trial": {"_model", "_solve", "_io", "_fit", "summary"},
    "_jobs": {"_model", "_solve", "_io", "_fit", "_trial", "summary", "files"},
    "summary": {"_fit", "_io"},
    "files": {"_io"},
}
FOUNDATIONS = {"_errors", "_status"}


def test_sub_packages_depend_one_way():
    assert {p.name for p in (ROOT / "fitcsc").iterdir() if p.is_dir()
            and (p / "__init__.py").exists()} == set(LAYERS) - {"summary", "files"}
    bad = []
    for path in sorted((ROOT / "fitcsc").rglob("*.py")):
        own = _module_name(path).split(".")
        if len(own) < 2 or own[1] not in LAYERS | {k: set() for k in FOUNDATIONS}:
            continue  # the package's __init__, cli, fitjob, population, trials
        layer = own[1]
        allowed = {layer} | LAYERS.get(layer, set()) | (
            set() if layer in FOUNDATIONS else FOUNDATIONS)
        for line, module, names in _imports(path):
            parts = module.split(".")
            if parts[0] != "fitcsc":
                continue
            if len(parts) == 1:  # "from .. import __version__" only
                if names != ["__version__"]:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: imports the package")
            elif parts[1] not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {layer} -> {module}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_circles():
    """No cycle among the imports that run at import time (a function may import a
    module above it lazily, e.g. the report writer from a job)."""
    graph = {}
    for path in sorted((ROOT / "fitcsc").rglob("*.py")):
        me = _module_name(path)
        deps = set()
        for _, module, names in _imports(path, top_level_only=True):
            if module.split(".")[0] != "fitcsc":
                continue
            for name in names or [""]:  # "from . import x" may import a submodule x
                sub = f"{module}.{name}"
                target = sub if (ROOT / (sub.replace(".", "/") + ".py")).exists() else module
                if target != me and not me.startswith(target + "."):
                    deps.add(target)
        graph[me] = deps
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(cycles)
