"""The layers of docs/architecture.md hold in the code: no import cycle between modules or
packages, every package imports only what the table below allows, and only what its own
docstring's "May import:" line names. Read from the source (every import statement, those
inside functions included), so a cycle dodged by a local import is still one."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Stand-alone modules of the standard library's kind: any layer but protocol/ may use them.
# metrics: the Prometheus metrics, counted where each outcome is known (store/, service/,
# intune/, notifications, server/); it imports nothing of scepd, so no layer reaches up by it.
FOUNDATION = {"clock", "peerjson", "logs", "metrics"}
# What each part of scepd may import of scepd (docs/architecture.md, "Layers"), besides
# FOUNDATION. "*" is every part below the edges (server/ and cli/ excepted). The edges may
# use the protocol's error vocabulary (scepd.protocol.errors): they write its refusals.
ALLOWED: dict[str, set[str]] = {
    "clock": set(),
    "peerjson": set(),
    "logs": set(),
    "metrics": set(),
    "protocol": set(),
    "store": set(),
    "ca": {"protocol", "store"},
    "challenge": {"protocol", "store"},
    "intune": {"protocol", "store", "challenge"},
    "registry": {"ca", "store", "protocol", "challenge"},
    "profiles": {"protocol"},
    "notifications": {"store", "challenge"},
    "client": {"protocol"},
    "service": {"protocol", "ca", "store", "registry", "challenge", "profiles"},  # the sketch's "all of the above"
    "enrollment": {"protocol", "ca", "store", "registry", "challenge"},
    "wiring": {"*"},
    "server": {"service", "wiring", "protocol"},
    # `scepd serve` starts the server; listings read records and their states from the store;
    # the client's own key files are read and written as the CA's are (ca.keys); `profile`
    # writes what profiles.py builds.
    "cli": {"service", "wiring", "registry", "client", "protocol", "server", "store", "ca", "profiles"},
}
# Alembic's revisions may rewrite stored DER with the protocol's own functions (0002 strips
# challenge passwords the way new requests are stripped).
MIGRATIONS_MAY_IMPORT = {"protocol"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package)."""
    found = {}
    for path in (SRC / "scepd").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


MODULES = _modules()


def _imported(name: str) -> set[str]:
    """The scepd modules `name` imports, anywhere in its source."""
    path, package = MODULES[name]
    here = name if package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from scepd.store import tables` imports the module scepd.store.tables.
            found.update(f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imported(name) for name in MODULES}


def part(module: str) -> str:
    """The part of scepd a module belongs to: its package under scepd, or its own name."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "scepd"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    counter = itertools.count()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = next(counter)
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def part_imports() -> dict[str, set[str]]:
    """Part -> the other parts its modules import (migrations apart)."""
    imports: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        if ".migrations" in module:
            continue
        imports.setdefault(part(module), set()).update(part(t) for t in targets if part(t) != part(module))
    return imports


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    assert cycles(GRAPH) == []


def test_no_package_imports_itself_back():
    assert cycles(part_imports()) == []


@pytest.mark.parametrize("name", sorted(p for p in part_imports() if p != "scepd"))
def test_each_part_imports_only_the_layers_below_it(name):
    allowed = ALLOWED.get(name)
    assert allowed is not None, f"scepd.{name} is in no layer of docs/architecture.md: add it to ALLOWED"
    if "*" in allowed:
        allowed = set(part_imports()) - {"server", "cli", name}
    extra = part_imports()[name] - allowed - (FOUNDATION if name != "protocol" else set())
    assert not extra, f"scepd.{name} imports {sorted(extra)}, above or beside its layer"


def _may_import(module: str) -> set[str] | None:
    """The parts of scepd the docstring of `module` lets it import; None for "every package"."""
    path, _ = MODULES[module]
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    match = re.search(r"May import:(.*?)(?:\n\s*\n|\Z)", docstring, re.DOTALL)
    assert match, f"{path.relative_to(SRC)}: the docstring says nothing of what it may import (\"May import: ...\")"
    if "every package" in match.group(1):
        return None
    return set(re.findall(r"scepd\.(\w+)", match.group(1)))


# The docstring that speaks for each part: a package's __init__, a module's own.
SPOKESMEN = sorted({f"scepd.{p}" for p in part_imports() if p != "scepd"} & set(MODULES))


@pytest.mark.parametrize("module", SPOKESMEN)
def test_each_part_imports_only_what_its_docstring_names(module):
    named = _may_import(module)
    if named is None:
        return
    extra = part_imports()[part(module)] - named
    assert not extra, f"{module} imports {sorted(extra)}, which its docstring's \"May import:\" does not name"


def test_migrations_import_only_the_store_and_the_protocol():
    for module, targets in GRAPH.items():
        if ".migrations" in module:
            assert {part(t) for t in targets} <= {"store"} | MIGRATIONS_MAY_IMPORT, module


def test_protocol_imports_nothing_of_scepd_outside_it():
    outside = {t for m, targets in GRAPH.items() if part(m) == "protocol" for t in targets if part(t) != "protocol"}
    assert outside == set()


# The sizes a reader can hold in mind (issue 11): a module, a class, a function. Alembic's
# revisions are history, written once and never read as code is.
MAX_LINES = {"module": 400, "class": 200, "function": 60}


def oversized(path: Path) -> list[str]:
    """What in the source file `path` is longer than MAX_LINES allows."""
    text = path.read_text(encoding="utf-8")
    found = []
    if len(text.splitlines()) > MAX_LINES["module"]:
        found.append(f"the module: {len(text.splitlines())} lines")
    for node in ast.walk(ast.parse(text)):
        kind = {ast.ClassDef: "class", ast.FunctionDef: "function", ast.AsyncFunctionDef: "function"}.get(type(node))
        if kind and node.end_lineno - node.lineno + 1 > MAX_LINES[kind]:
            found.append(f"{kind} {node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines")
    return found


def test_the_size_check_finds_a_long_function(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 60 + "\n\ndef g():\n    pass\n")
    assert oversized(long) == ["function f (line 1): 61 lines"]
    long.write_text("class C:\n" + "    x = 1\n" * 200)
    assert oversized(long) == ["class C (line 1): 201 lines"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if ".migrations" not in m))
def test_no_module_class_or_function_is_over_its_size(module):
    assert oversized(MODULES[module][0]) == []
