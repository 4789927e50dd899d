"""The layout keeps its promises: the domain is pure, storage knows no
engine, the engine knows none of the features built on it, and no module
imports another that imports it back (TYPE_CHECKING imports included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cascade"


def import_graph() -> dict[str, set[str]]:
    """Every cascade module and the cascade modules it imports, read from the source."""
    modules: dict[str, tuple[Path, bool]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                named = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
                graph[name].update(named or ([target] if target in modules else []))
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_packages_depend_one_way() -> None:
    graph = import_graph()
    edges = {(package_of(a), package_of(b)) for a, targets in graph.items() for b in targets
             if package_of(a) != package_of(b)}
    assert not {(a, b) for a, b in edges if (b, a) in edges}
    assert not {b for a, b in edges if a == "domain"}, "the domain imports nothing else of cascade"
    assert not {b for a, b in edges if a == "storage"} - {"domain"}, "storage knows no engine"
    assert not {b for a, b in edges if a == "engine"} - {"domain", "delivery", "storage"}


def test_the_domain_imports_without_pykka_aiohttp_or_msgpack() -> None:
    probe = ("import sys, cascade.domain.sequence, cascade.domain.evolve, cascade.domain.records, "
             "cascade.domain.templates, cascade.domain.render; "
             "print(sorted(m for m in ('pykka', 'aiohttp', 'msgpack') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
