"""db/ stands alone: its modules import one another without a circle (function-level imports
count too), and nothing in it imports torch or Optuna (the claims are plain SQL)."""

import ast
from pathlib import Path

DB = Path(__file__).resolve().parents[2] / "db"


def _module(path: Path) -> str:
    parts = path.relative_to(DB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every module `path` imports, at any depth of its code; `from db import queries` names db.queries."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            out |= subs or {node.module}
    return out


def _graph() -> dict[str, set[str]]:
    files = [p for p in DB.rglob("*.py") if "versions" not in p.parts]
    modules = {_module(p) for p in files}
    return {_module(p): _imports(p, modules) for p in files}


def test_db_has_no_import_circle():
    graph = _graph()
    inside = {m: {i for i in imps if i in graph and i != "db"} for m, imps in graph.items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, f"import circle: {' -> '.join([*path[path.index(m):], m])}"
        if m in done:
            return
        for i in sorted(inside[m]):
            visit(i, [*path, m])
        done.add(m)

    assert {"db.engine", "db.migrate", "db.migrations.env"} <= set(inside)
    for m in sorted(inside):
        visit(m, [])


def test_db_never_imports_torch_nor_optuna():
    for p in DB.rglob("*.py"):
        tops = {i.split(".")[0] for i in _imports(p, set())}
        assert not tops & {"torch", "optuna"}, p
