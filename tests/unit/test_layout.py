"""The layout is a contract: imports run one way, there are no cycles, no private Bytewax API.

Every `import` and `from ... import` in the project (module level and inside functions, since a
function-level import is a dependency too) is read with `ast`, without importing anything.
The packages form layers (see docs/ARCHITECTURE.md, "Layout"):

    flows, run.py -> operators -> inference, connectors -> state -> runtime -> core, config

`llmsim` stands alone; `support` (test and benchmark infrastructure) may use the product;
`tests` and `bench` use `support` and never each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PRODUCT = ("core", "config", "runtime", "state", "inference", "connectors", "operators", "flows")

ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "config": set(),
    "llmsim": set(),
    "runtime": {"core", "config"},
    "state": {"core", "config", "runtime"},
    "inference": {"core", "config", "runtime", "state"},
    "connectors": {"core", "config", "runtime", "state"},
    "operators": {"core", "config", "runtime", "state", "inference"},
    "flows": {"core", "config", "runtime", "state", "inference", "connectors", "operators"},
    "run": {*PRODUCT, "llmsim"},
    "support": {*PRODUCT, "llmsim", "run"},
    "bench": {*PRODUCT, "llmsim", "run", "support"},
    "tests": {*PRODUCT, "llmsim", "run", "support"},
}
"""For each top-level package (or `run` for run.py), the packages it may import."""

NO_BYTEWAX = ("core", "config", "inference", "llmsim")
"""Packages that must work without Bytewax (the LLM machinery, records, config)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> Iterator[Path]:
    yield REPO / "run.py"
    for top in (*ALLOWED, "data"):
        folder = REPO / top
        if folder.is_dir():
            yield from sorted(folder.rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    """Absolute module names `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path).split(".")
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from pkg import mod` imports the submodule when there is one.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports."""
    files = {_module_name(p): p for p in project_files()}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name] = {m for m in imports_of(path) if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_project() -> None:
    graph = import_graph()
    assert "flows.pipeline" in graph and "operators.llm" in graph and "run" in graph
    assert "operators.llm" in graph["flows.pipeline"]
    assert "inference.client" in graph["operators.llm"]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert found == [], f"import cycles: {found}"


def test_the_cycle_check_catches_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_imports_run_one_way() -> None:
    wrong = []
    for module, deps in import_graph().items():
        top = module.split(".")[0]
        for dep in deps:
            dep_top = dep.split(".")[0]
            if dep_top != top and dep_top not in ALLOWED[top]:
                wrong.append(f"{module} imports {dep}")
    assert wrong == [], "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_machinery_and_records_import_no_bytewax() -> None:
    wrong = [
        f"{_module_name(p)} imports {m}"
        for p in project_files()
        if _module_name(p).split(".")[0] in NO_BYTEWAX
        for m in imports_of(p)
        if m.split(".")[0] == "bytewax"
    ]
    assert wrong == []


def test_no_private_bytewax_api() -> None:
    wrong = [
        f"{_module_name(p)} imports {m}"
        for p in project_files()
        for m in imports_of(p)
        if m.startswith("bytewax._")
    ]
    assert wrong == []


def test_operators_holds_stages_only() -> None:
    """Every module of `operators/` defines a Bytewax operator (a pipeline stage), except the
    pure modules of a stage package (the anomaly detectors, the validate stage's adapters)."""
    stages = []
    for path in sorted((REPO / "operators").rglob("*.py")):
        text = path.read_text()
        if path.parent.name in ("anomaly", "validate") and path.name != "__init__.py":
            continue
        if path.name == "__init__.py" and path.parent.name == "operators":
            continue
        stages.append(path.name)
        assert "@operator" in text, f"{path.relative_to(REPO)} defines no operator"
    assert {"dedup.py", "llm.py", "memory.py", "enrich.py"} <= set(stages)
    assert (REPO / "operators" / "validate" / "__init__.py").exists()


def _text_files() -> Iterator[Path]:
    skip = {".git", "out", "recovery", "build", "__pycache__"}
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO).parts
        if any(p in skip or p.startswith(".") or p.endswith(".egg-info") for p in rel[:-1]):
            continue
        if rel == (".git",):
            continue  # a git worktree's `.git` is a file naming the main repository's path
        if path.is_file() and path.suffix in {".py", ".md", ".toml", ".txt", ".cfg", ".sh", ""}:
            yield path


def test_nothing_refers_outside_the_repository() -> None:
    """A user's clone has only the repository: no docs, defaults or tests may name paths of
    the machine it was developed on."""
    outside = ("../" + "shared", str(REPO.parent / "shared"), "/" + "work/")
    found = [
        f"{path.relative_to(REPO)}: {marker}"
        for path in _text_files()
        for marker in outside
        if marker in path.read_text(errors="replace")
    ]
    assert found == []
