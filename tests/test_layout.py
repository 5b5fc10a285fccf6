"""The code stays readable in an afternoon: size limits, and one name per module job.

No function over 150 lines, no class over 300, no module over 400 lines
unless its docstring says why ("Why one module"). No two modules of the
server, the probes and the lab share a file name (one name, one job), except
a package's __init__, each program's cli.py, and tools/commands/, whose
modules are named after the commands they define (`heimdall-tools lockprof`
is tools/commands/lockprof.py, the CLI of probes/lockprof.py).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("heimdall", "probes", "tools")
MAX_FUNCTION, MAX_CLASS, MAX_MODULE = 150, 300, 400


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_no_function_class_or_module_over_its_size():
    too_long = []
    for path in modules():
        text = path.read_text()
        tree = ast.parse(text)
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            limit = (MAX_CLASS if isinstance(node, ast.ClassDef)
                     else MAX_FUNCTION if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
            if limit is not None and node.end_lineno - node.lineno + 1 > limit:
                too_long.append(f"{rel}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
        doc = ast.get_docstring(tree) or ""
        if len(text.splitlines()) > MAX_MODULE and "Why one module" not in doc:
            too_long.append(f"{rel}: {len(text.splitlines())} lines and no 'Why one module' in its docstring")
    assert not too_long, "\n".join(too_long)


def test_no_two_modules_share_a_name():
    by_name = defaultdict(list)
    for path in modules():
        if path.name not in ("__init__.py", "cli.py") and path.parent.name != "commands":
            by_name[path.name].append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not clashes, clashes
