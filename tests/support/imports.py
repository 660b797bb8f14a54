"""The import graph of a package, read with ``ast`` (module-level and function-local imports alike)."""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    """``storescpd/dicom/engine.py`` -> ``storescpd.dicom.engine``; a package is its ``__init__``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    # "from pkg import name": name may be a submodule; the caller keeps what exists
    return [source] + [f"{source}.{alias.name}" for alias in node.names]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Every module of the package at ``root`` -> the modules of that package it imports."""
    files = {module_name(root, path): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [name for name in _imported(node, module, is_package) if name in files and name != module]
            # "from pkg.sub import mod" counts as importing pkg.sub.mod, not the package around it
            targets.update(names[1:] if len(names) > 1 and isinstance(node, ast.ImportFrom) else names)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str, package: str, layers: tuple[str, ...]) -> int | None:
    """The index of a module's layer (0 = top), or None for the package root."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != package:
        return None
    if parts[1] == "__main__":  # ``python -m package``: the command, above every layer
        return 0
    return layers.index(parts[1]) if parts[1] in layers else -1


def upward_imports(graph: dict[str, set[str]], package: str, layers: tuple[str, ...]) -> list[str]:
    """Every import against the direction (a lower layer importing a higher one), and every module
    that sits in no declared layer, as readable lines."""
    problems = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module, package, layers)
        if own == -1:
            problems.append(f"{module} is in no declared layer")
            continue
        for target in sorted(targets):
            theirs = layer_of(target, package, layers)
            if theirs is None or own is None:
                if own is None and theirs is not None:
                    problems.append(f"{module} (the package root) imports {target}")
                continue
            if theirs < own:
                problems.append(f"{module} ({layers[own]}) imports {target} ({layers[theirs]}), a layer above it")
    return problems
