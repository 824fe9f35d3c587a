"""`--exclude` names checked against the FlagGems installed here before anything starts.

FlagGems' `enable(unused=...)` ignores a name it does not register, so a typo left the op on
FlagGems in the served model without a word (an op excluded because it gives wrong results kept
giving them). Its registration table (`_FULL_CONFIG` in flag_gems/__init__.py: aten op name,
function) is read from the package's source, not imported: importing flag_gems needs a GPU.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from collections.abc import Iterable
from pathlib import Path

TABLE = "_FULL_CONFIG"


def flaggems_names() -> set[str] | None:
    """The function names and aten op names (without overload) of the installed FlagGems'
    registration table, or None when FlagGems is not installed or keeps no such table."""
    spec = importlib.util.find_spec("flag_gems")
    if spec is None or not spec.origin:
        return None
    try:
        tree = ast.parse(Path(spec.origin).read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple) \
                and any(isinstance(t, ast.Name) and t.id == TABLE for t in node.targets):
            names = set()
            for row in node.value.elts:
                if not (isinstance(row, ast.Tuple) and len(row.elts) >= 2):
                    continue
                op, fn = row.elts[:2]
                if isinstance(fn, ast.Name):
                    names.add(fn.id)
                if isinstance(op, ast.Constant) and isinstance(op.value, str):
                    names.add(op.value.split(".")[0])
            return names or None
    return None


def unknown_exclusions(ops: Iterable[str], names: set[str]) -> list[str]:
    """The ops none of whose FlagGems names (the plugin's expansion: `addmm` -> addmm, addmm_out,
    addmm_) is in `names`."""
    from tuner.inject.plugin import flaggems_unused

    return [op for op in ops if not any(n in names for n in flaggems_unused([op]))]


def exclusion_error(ops: Iterable[str]) -> str | None:
    """Why `--exclude ops` cannot be honoured by the FlagGems installed here (with the nearest
    names), or None: all known, or no FlagGems here to check against."""
    names = flaggems_names()
    if names is None:
        return None
    unknown = unknown_exclusions(ops, names)
    if not unknown:
        return None
    hints = [f"{op} (did you mean {', '.join(close)}?)" if (close := difflib.get_close_matches(op, names, n=3))
             else op for op in unknown]
    return (f"--exclude names no op of the installed FlagGems: {'; '.join(hints)}. FlagGems would "
            "ignore them and keep serving what they name; `tuner check` lists the ops it registers")
