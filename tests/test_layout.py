"""The package layout: the import-linter contracts of pyproject.toml are kept (and would catch a
breach), no import cycle between any two modules, no private name imported from another
module, every subpackage says what it owns and what it may import, nothing imports the CLI."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib  # Python 3.11+, as import-linter itself

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "slidewatch"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def load_import_graph():
    """benchmarks/import_graph.py as a module (the same cycle and chain code the lead quotes)."""
    spec = importlib.util.spec_from_file_location("import_graph",
                                                  REPO / "benchmarks" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graph_tools():
    return load_import_graph()


@pytest.fixture(scope="module")
def graph(graph_tools):
    return graph_tools.import_graph("slidewatch")


def lint_imports(config: Path, cwd: Path, pythonpath: Path | None = None):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def our_contracts() -> list[dict]:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["importlinter"]["contracts"]


# ------------------------------------------------------------------ import-linter contracts


def test_import_linter_contracts_are_kept():
    contracts = our_contracts()
    assert contracts, "pyproject.toml has no [[tool.importlinter.contracts]]"
    done = lint_imports(REPO / "pyproject.toml", REPO)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert f"Contracts: {len(contracts)} kept, 0 broken." in report, report


# One fake contract per contract type that pyproject.toml uses, over each fake package: modules
# top, low (layers: top over low) and siblings a, b. One package per case, all in one run.
FAKE_CONTRACTS = {
    "layers": {"layers": ["{pkg}.top", "{pkg}.low"]},
    "acyclic_siblings": {"ancestors": ["{pkg}"]},
}
FAKE_IMPORTS = {  # package -> module -> the modules it imports
    "clean": {"top": ["low"], "a": ["b"]},
    "layers": {"low": ["top"], "a": ["b"]},  # the lower layer imports the upper one
    "acyclic_siblings": {"top": ["low"], "a": ["b"], "b": ["a"]},  # a <-> b
}


def write_fake_packages(root: Path) -> Path:
    """``fake_<case>`` packages under ``root`` and a pyproject.toml with their contracts."""
    packages = [f"fake_{case}" for case in FAKE_IMPORTS]
    toml = [f"[tool.importlinter]\nroot_packages = {json.dumps(packages)}\n"]
    for case, imports in FAKE_IMPORTS.items():
        pkg = root / f"fake_{case}"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text('"""A package for the import-linter test."""\n')
        for name in ("top", "low", "a", "b"):
            lines = [f"import fake_{case}.{other}\n" for other in imports.get(name, [])]
            (pkg / f"{name}.py").write_text("".join(lines) or "X = 1\n")
        for kind, fields in FAKE_CONTRACTS.items():
            toml.append(f'\n[[tool.importlinter.contracts]]\nname = "fake_{case} {kind}"\n'
                        f'type = "{kind}"\n')
            toml += [f"{key} = {json.dumps(value).replace('{pkg}', f'fake_{case}')}\n"
                     for key, value in fields.items()]
    config = root / "pyproject.toml"
    config.write_text("".join(toml))
    return config


def test_the_fake_contracts_cover_every_contract_type_we_use():
    assert {c["type"] for c in our_contracts()} <= set(FAKE_CONTRACTS)


def test_lint_imports_reports_a_broken_contract(tmp_path):
    """The check above bites: a layer violation or a cycle between siblings in a tiny package
    under the same contract types is reported BROKEN, and the clean package's are KEPT."""
    done = lint_imports(write_fake_packages(tmp_path), tmp_path, pythonpath=tmp_path)
    report = done.stdout + done.stderr
    for case in FAKE_IMPORTS:
        for kind in FAKE_CONTRACTS:
            word = "BROKEN" if case == kind else "KEPT"
            assert f"fake_{case} {kind} {word}" in report, report
    assert done.returncode != 0, report


# ------------------------------------------------------------------ the module graph (grimp)


def test_import_cycle_and_chain_helpers_on_known_graphs(graph_tools):
    cyclic = {"p.a": ["p.b"], "p.b": ["p.c"], "p.c": ["p.a"], "p.d": []}
    assert graph_tools.import_cycles(cyclic) == [["p.a", "p.b", "p.c", "p.a"]]
    assert graph_tools.import_cycles({"p.a": ["p.a"]}) == [["p.a", "p.a"]]
    dag = {"p.a": ["p.b", "p.d"], "p.b": ["p.c"], "p.c": [], "p.d": [], "p.e": ["p.a"]}
    assert graph_tools.import_cycles(dag) == []
    assert graph_tools.longest_chain(dag) == ["p.e", "p.a", "p.b", "p.c"]
    with pytest.raises(ValueError, match="cycles"):
        graph_tools.longest_chain(cyclic)


def test_no_import_cycle_between_any_two_modules(graph_tools, graph):
    assert "slidewatch.cli.main" in graph and graph["slidewatch.cli.main"]  # the real graph
    cycles = graph_tools.import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
    chain = graph_tools.longest_chain(graph)  # reported, not asserted
    print(f"{len(graph)} modules; longest import chain ({len(chain)} modules): "
          + " -> ".join(chain))


def test_nothing_imports_the_cli(graph):
    """``python -m slidewatch`` (``__main__``) is the one way in."""
    def is_cli(m: str) -> bool:
        return m == "slidewatch.cli" or m.startswith("slidewatch.cli.")

    offenders = sorted(f"{m} imports {n}" for m, imported in graph.items()
                       if not is_cli(m) and m != "slidewatch.__main__"
                       for n in imported if is_cli(n))
    assert not offenders, offenders


# ------------------------------------------------------------------ private names, docstrings


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, 'from X import _name')`` for every private name (one leading underscore, not a
    dunder) that ``module`` imports from another slidewatch module ``X``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:  # relative: resolve against the module's package
            base = module.split(".")
            base = base[:len(base) - node.level + (1 if is_package else 0)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target != "slidewatch" and not target.startswith("slidewatch."):
            continue
        for alias in node.names:
            name = alias.name
            if name.startswith("_") and not name.startswith("__") and target != module:
                found.append((node.lineno, f"from {target} import {name}"))
    return sorted(found)


def test_private_import_finder_on_known_sources():
    src = ("from slidewatch.data.readers import _one_line, read_image\n"
           "def f():\n    from slidewatch.meta import _x as y, __version__\n"
           "from slidewatch.scan.plan import _own\nfrom other import _fine\n"
           "from .score import _rel\nfrom .plan import _own_too\n")
    assert private_imports(src, "slidewatch.scan.plan") == [
        (1, "from slidewatch.data.readers import _one_line"),
        (3, "from slidewatch.meta import _x"),
        (6, "from slidewatch.scan.score import _rel"),
    ]
    assert private_imports("from .plan import _q\n", "slidewatch.scan", is_package=True) == [
        (1, "from slidewatch.scan.plan import _q")]


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        found = private_imports(path.read_text(encoding="utf-8"), module_name(path),
                                path.name == "__init__.py")
        offenders += [f"{path.relative_to(REPO)}:{line} {what}" for line, what in found]
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


def subpackages() -> list[Path]:
    return sorted(p.parent for p in SRC.glob("*/**/__init__.py"))


def test_every_subpackage_says_what_it_owns_and_may_import():
    """Each package below ``slidewatch`` (the top package is all of them) opens with what it
    owns, then a ``May import:`` line."""
    assert len(subpackages()) >= 10, subpackages()
    problems = []
    for pkg in subpackages():
        init = pkg / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        owns = doc.split("May import")[0]
        if len(owns.split()) < 5:
            problems.append(f"{init.relative_to(REPO)}: no docstring saying what it owns")
        if "May import" not in doc:
            problems.append(f"{init.relative_to(REPO)}: docstring has no 'May import' line")
    assert not problems, "\n".join(problems)


def test_tests_import_their_helpers_as_plain_pytest_finds_them():
    """``from _factories``/``from conftest`` (tests/ is on pytest's pythonpath), never
    ``from tests...``: that works under ``python -m pytest`` from the repo root only."""
    pattern = re.compile(r"^[ \t]*(?:from|import)[ \t]+tests\b.*$", re.M)
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1} "
                      f"{m[0].strip()}" for m in pattern.finditer(text)]
    assert not offenders, offenders
    assert pattern.search("x = 1\n    from tests.conftest import UTM45\n")  # the check bites
