"""The import graph of src/vmopt follows the layers, and modules keep out of each other's privates.

Every module is parsed with ``ast`` (imports inside functions and
``TYPE_CHECKING`` blocks included). An import of ``a.b`` by a module of a
lower layer than ``a.b``'s is an upward arrow; the graph must also have no
cycle. A module may not import another package's private names (``_x``,
bar the core binding ``vmopt._core``) nor read a private attribute
(``obj._x``, or ``getattr(obj, "_x")``) that it does not define itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: Layers, bottom up: a module may import its own layer and the ones below.
#: The longest matching prefix decides a module's layer.
LAYERS: list[tuple[str, ...]] = [
    ("vmopt._core", "vmopt.errors", "vmopt.units", "vmopt.batching"),
    # Leaves used by guest and sim; they import only the bottom layer.
    (
        "vmopt.traces",
        "vmopt.stores",
        "vmopt.numa.config",
        "vmopt.numa.policy",
        "vmopt.fetching",
    ),
    ("vmopt.memory", "vmopt.numa.memory", "vmopt.numa"),
    ("vmopt.paging",),
    ("vmopt.tlb",),
    ("vmopt.guest", "vmopt.batch"),
    ("vmopt.compat", "vmopt"),
    ("vmopt.sim",),
    ("vmopt.cli",),
]

#: The NamedTuple API's underscore names are public.
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_modules(src: Path = SRC) -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted((src / "vmopt").rglob("*.py"))}


def layer_of(module: str) -> int:
    best, found = -1, None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), rank
    assert found is not None, f"{module} is in no layer of LAYERS"
    return found


def is_package(module: str, modules: dict[str, ast.Module]) -> bool:
    return any(m.startswith(module + ".") for m in modules)


def imports(module: str, tree: ast.Module, modules: dict[str, ast.Module]) -> set[str]:
    """The vmopt modules ``module`` imports, anywhere in its body."""
    known = set(modules) | {"vmopt._core"}
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module if is_package(module, modules) else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    out.add(target)
                elif base in known:
                    out.add(base)
    out.discard(module)
    return out


def graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    return {name: imports(name, tree, modules) for name, tree in modules.items()}


def upward_arrows(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, dsts in edges.items()
        for dst in dsts
        if layer_of(dst) > layer_of(src)
    )


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def private_reads(module: str, tree: ast.Module) -> list[str]:
    """Private names ``module`` takes from elsewhere: imports of ``_x`` and reads of ``obj._x``."""
    found: list[str] = []
    imported: set[str] = set()
    defined: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            defined.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vmopt"):
            path = (node.module or "").split(".")
            for alias in node.names:
                imported.add(alias.asname or alias.name)
                full = [*path, alias.name]
                for i, part in enumerate(full):
                    private = part.startswith("_") and not part.startswith("__")
                    if private and full[: i + 1] != ["vmopt", "_core"]:
                        parent = ".".join(full[:i])
                        if not (module == parent or module.startswith(parent + ".")):
                            found.append(f"{module} imports private {'.'.join(full)}")
                        break
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name = node.args[1].value
            if name.startswith("_") and not name.startswith("__") and name not in defined:
                found.append(f"{module} reads {ast.unparse(node)}, a private attribute by name")
            continue
        if not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__") or attr in PUBLIC_UNDERSCORE:
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if isinstance(owner, ast.Name) and owner.id in imported:
            found.append(f"{module} reads {owner.id}.{attr}")
        elif attr not in defined:
            found.append(f"{module} reads {ast.unparse(node)}, a private attribute it does not define")
    return found


MODULES = load_modules()
EDGES = graph(MODULES)


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_no_import_goes_up_a_layer() -> None:
    assert upward_arrows(EDGES) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycle(EDGES) is None


def test_no_module_reads_another_modules_privates() -> None:
    assert [msg for name, tree in MODULES.items() for msg in private_reads(name, tree)] == []


def test_function_level_imports_count() -> None:
    assert "vmopt.errors" in EDGES["vmopt.tlb.mmu"]
    assert "vmopt.batching" in EDGES["vmopt.tlb.mmu"]


def _with_extra(module: str, code: str) -> dict[str, ast.Module]:
    modules = load_modules()
    tree = MODULES[module]
    modules[module] = ast.Module(body=[*tree.body, *ast.parse(code).body], type_ignores=[])
    return modules


@pytest.mark.parametrize(
    ("module", "code", "expect"),
    [
        ("vmopt.tlb.mmu", "def f():\n    from vmopt.guest import MemoryOptimizer\n", "vmopt.guest"),
        ("vmopt.numa.memory", "from vmopt.guest.traffic import Traffic\n", "vmopt.guest.traffic"),
        ("vmopt.paging.types", "import vmopt.tlb.config\n", "vmopt.tlb.config"),
        ("vmopt.errors", "from vmopt import batch\n", "vmopt.batch"),
    ],
)
def test_an_upward_import_is_caught(module: str, code: str, expect: str) -> None:
    arrows = upward_arrows(graph(_with_extra(module, code)))
    assert any(a.startswith(module) and expect in a for a in arrows), arrows


def test_a_cycle_is_caught() -> None:
    edges = {k: set(v) for k, v in EDGES.items()}
    edges["vmopt.errors"].add("vmopt.units")
    edges["vmopt.units"].add("vmopt.errors")
    assert find_cycle(edges) is not None


@pytest.mark.parametrize(
    "code",
    [
        "from vmopt.tlb.tlb import TlbLevel\nTlbLevel._view\n",
        "def f(level):\n    return level._renew_stats()\n",
        "from vmopt.memory.physical import _SIZES\n",
        "def f(error):\n    return getattr(error, '_restart', False)\n",
    ],
)
def test_a_private_read_is_caught(code: str) -> None:
    tree = ast.parse(code)
    assert private_reads("vmopt.numa.memory", tree)
