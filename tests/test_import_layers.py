"""pygds's import graph, read from the source with `ast`: floors only import downwards, no circles,
and pygds never imports lmcache_plugin.

Floors, ground first: the C mirror; facts (exceptions and code tables, file-system facts, and the
library loader, which raises those exceptions); memory (GPU runtime helpers and buffers); engines;
the front doors; the command. A module may import from its own floor or below, never above.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pygds"

FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("C mirror", ("pygds._cufile_abi", "pygds._hipfile_abi")),
    ("facts", ("pygds.errors", "pygds.fsinfo", "pygds._lib", "pygds._lifetime")),
    ("memory", ("pygds._probe", "pygds.cuda", "pygds.hip", "pygds.memory")),
    ("engines", ("pygds.engines.*",)),
    ("front doors", ("pygds.file", "pygds.driver", "pygds.batch", "pygds.stream", "pygds.pool", "pygds")),
    ("command", ("pygds.cli.*", "pygds.__main__")),
)  # a name is one module; "package.*" is a package and everything in it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_of(module: str) -> int:
    """The floor that names `module`."""
    for i, (_, names) in enumerate(FLOORS):
        for name in names:
            package = name.removesuffix(".*")
            if module == package or (name.endswith(".*") and module.startswith(package + ".")):
                return i
    raise AssertionError(f"{module} has no floor in FLOORS: place it there")


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `if TYPE_CHECKING:`: an import for annotations that never runs."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(module: str) -> Iterator[tuple[str, bool]]:
    """(the module each import statement of `module` names, whether it runs) for every import,
    function-level ones included; `from pkg import sub` names the submodule when it is one."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        runs = not _type_checking_only(node, parents)
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, runs
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield (sub if sub in MODULES else source), runs


def graph(*, running_only: bool) -> dict[str, set[str]]:
    """pygds module -> the pygds modules it imports."""
    return {m: {target for target, runs in imports(m) if target in MODULES and target != m
                and (runs or not running_only)} for m in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_modules_and_their_imports():
    """The graph this file judges is the real one: known modules, known edges."""
    edges = graph(running_only=True)
    assert {"pygds.file", "pygds.engines.base", "pygds.engines.cufile", "pygds.engines.cufile.batch",
            "pygds.cli.info"} <= set(edges)
    assert "pygds.engines.registry" in edges["pygds.file"]
    assert "pygds.errors" in edges["pygds._lib"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_floor():
    for module in MODULES:
        floor_of(module)


def test_no_import_circle():
    assert cycles(graph(running_only=True)) == []


def test_no_import_from_a_lower_floor_to_a_higher_one():
    upward = [f"{m} ({FLOORS[floor_of(m)][0]}) imports {t} ({FLOORS[floor_of(t)][0]})"
              for m, targets in graph(running_only=False).items() for t in sorted(targets)
              if floor_of(t) > floor_of(m)]
    assert upward == []


def test_front_doors_reach_engines_only_through_the_interface():
    """`file`, `driver`, `batch`, `stream`, `pool` import no engine module but the interface
    (`engines.base`), the registry and the drivers' shared types (`engines.gds`)."""
    allowed = {"pygds.engines", "pygds.engines.base", "pygds.engines.registry", "pygds.engines.gds"}
    reach = [f"{m} imports {t}" for m in ("pygds.file", "pygds.driver", "pygds.batch", "pygds.stream", "pygds.pool")
             for t, _ in imports(m) if t.startswith("pygds.engines") and t not in allowed]
    assert reach == []


def test_pygds_never_imports_lmcache_plugin():
    found = [f"{m} imports {t}" for m in MODULES for t, _ in imports(m) if t.split(".")[0] == "lmcache_plugin"]
    assert found == []
