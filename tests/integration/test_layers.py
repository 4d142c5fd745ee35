"""The package layers: the shared core imports no product package, and no module imports
itself back through others: not at module level, not lazily inside a function, not only for
type checking (each of those hid a cycle once: settings and the KV arithmetic, the admission
controller and its fail-open limits)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("fairgate", "gateway", "admission", "estimators", "backends", "tenants", "loadtest")
PRODUCT = {"gateway", "admission", "estimators", "backends", "tenants", "loadtest"}
#: The shared core: what every product package may stand on.
CORE = [
    "fairgate.errors",
    "fairgate.ids",
    "fairgate.keys",
    "fairgate.kv_capacity",
    "fairgate.redis_client",
    "fairgate.resp",
    "fairgate.serving",
    "fairgate.settings",
    "fairgate.strict_model",
    "fairgate.tasks",
]


def test_the_shared_core_imports_no_product_package() -> None:
    probe = (  # import the core and validate a configuration that derives budgets
        f"import importlib, sys\nfor m in {CORE!r}: importlib.import_module(m)\n"
        "from fairgate.settings import Settings\n"
        "Settings(pools={'p': {'backends': {'b': {'url': 'http://127.0.0.1:1', 'models': ['m'],"
        " 'capacity': {'gpu': 'h100-80gb', 'model': 'llama-3-8b'}}}}})\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {PRODUCT!r}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def _module_imports(path: Path) -> set[str]:
    """Modules of this repository that ``path`` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return {name: _module_imports(path) & modules.keys() for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name) :] + [name]
        if name in done:
            return None
        for nxt in sorted(graph.get(name, ())):
            if cycle := visit(nxt, [*path, name]):
                return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        if cycle := visit(name, []):
            return cycle
    return None


def test_no_import_cycles() -> None:
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
