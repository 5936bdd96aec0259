"""The architecture, checked: layers import downwards only, no import cycles, modules stay small.

Reads every module of the package with ``ast`` (imports inside functions count too; imports under
``if TYPE_CHECKING:`` do not, since they never run). The layers and what each may import are in
docs/architecture.md; this test is their enforcement.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "cxrfm"
MAX_LINES = 420  # "no module over ~400 lines"

# layer -> the cxrfm top-level parts it must never import
FORBIDDEN = {
    "data": {"models", "train", "inference", "tasks", "serve", "reporting", "cli", "demo"},
    "models": {"train", "inference", "tasks", "serve", "reporting", "cli", "demo"},
    "train": {"inference", "tasks", "serve", "reporting", "cli", "demo"},
    "inference": {"train", "tasks", "serve", "reporting", "cli", "demo"},
    "tasks": {"serve", "cli", "demo"},
    "reporting": {"data", "models", "train", "inference", "tasks", "serve", "cli", "demo"},
    "serve": {"data", "train", "tasks", "reporting", "cli", "demo"},
}
# the base every layer may use
BASE = {"errors", "paths", "atomic", "config", "metrics", "run", "__init__"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Absolute cxrfm module names imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "cxrfm")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "cxrfm":
                for a in node.names:  # `from . import plots` imports a module
                    full = f"{mod}.{a.name}"
                    out.add(full if _exists(full) else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out.discard(me)
    return out


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_layers_import_downwards_only():
    bad = []
    for name, path in _modules().items():
        forbidden = FORBIDDEN.get(_layer(name), set())
        for imp in sorted(_imports(path)):
            if _layer(imp) in forbidden:
                bad.append(f"{name} imports {imp}")
    assert not bad, "upward or sideways imports (see docs/architecture.md):\n" + "\n".join(bad)


def test_serve_uses_only_inference_and_models():
    allowed = {"inference", "models"} | BASE
    bad = [f"{name} imports {imp}" for name, path in _modules().items() if _layer(name) == "serve"
           for imp in _imports(path) if _layer(imp) not in allowed and _layer(imp) != "serve"]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    mods = _modules()
    graph = {m: {i for i in _imports(p) if i in mods} for m, p in mods.items()}
    # a package's __init__ re-exporting its own submodules lazily is not a cycle worth breaking
    for m in graph:
        graph[m] = {i for i in graph[m] if not (m == "cxrfm" or i == "cxrfm")}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_modules_stay_small():
    big = {name: n for name, p in _modules().items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concept): {big}"


@pytest.mark.parametrize("source,expected", [
    ("from ..tasks import suite\n", "tasks"),
    ("import cxrfm.train.loop\n", "train"),
])
def test_the_checker_sees_upward_imports(tmp_path, monkeypatch, source, expected):
    """The checks above would fail on a real upward import (guards against a checker that sees nothing)."""
    fake = PKG / "inference" / "_arch_probe.py"
    monkeypatch.setattr(Path, "rglob", lambda self, pat: [fake] if self == PKG else [])
    orig = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else orig(self, *a, **k))
    with pytest.raises(AssertionError, match=expected):
        test_layers_import_downwards_only()
