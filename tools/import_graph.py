"""Measure cnnctl's import graph: cycles between its modules and imports that hide inside functions.

Every module under ``cnnctl/`` is parsed with :mod:`ast` (nothing is imported). An import of a cnnctl module counts
wherever it sits (module top or inside a function), except under ``if TYPE_CHECKING:``, which never runs. Cycles are
the strongly connected components of that graph with more than one module (or a module importing itself).

    python tools/import_graph.py            # summary; exit status 1 if any cycle
    python tools/import_graph.py --verbose  # also every cycle's modules and each function-level import
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "cnnctl"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


@dataclass
class ImportGraph:
    edges: dict[str, set[str]] = field(default_factory=dict)
    function_level: list[tuple[str, int, str]] = field(default_factory=list)  # (importer, line, imported)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool, modules: set[str]) -> list[str]:
    """The cnnctl modules a ``from ... import ...`` names (``from cnnctl.data import folder`` names the submodule)."""
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
        return []
    found = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        found.append(sub if sub in modules else target)
    return [name for name in found if name in modules] or ([target] if target in modules else [])


def _walk(node: ast.AST, in_function: bool, visit) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                _walk_one(sub, in_function, visit)
            continue
        _walk_one(child, in_function, visit)


def _walk_one(node: ast.AST, in_function: bool, visit) -> None:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        visit(node, in_function)
        return
    nested = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    _walk(node, nested, visit)


def build_graph(root: Path = ROOT) -> ImportGraph:
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph = ImportGraph(edges={name: set() for name in modules})
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node: ast.AST, in_function: bool, name: str = name, is_package: bool = is_package) -> None:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in modules]
            else:
                targets = _resolve(node, name, is_package, modules)
            for target in sorted(set(targets)):
                if target == name:
                    continue
                graph.edges[name].add(target)
                if in_function:
                    graph.function_level.append((name, node.lineno, target))

        _walk(tree, False, visit)
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def class_lines(path: Path, class_name: str) -> int:
    """Lines of a class from its ``class`` line to its last statement."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return node.end_lineno - node.lineno + 1
    raise LookupError(f"no class {class_name} in {path}")


def trainer_lines(root: Path = ROOT) -> int:
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "\nclass Trainer" in text or text.startswith("class Trainer"):
            return class_lines(path, "Trainer")
    raise LookupError("no class Trainer under cnnctl/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    graph = build_graph()
    found = cycles(graph.edges)
    print(f"modules: {len(graph.edges)}")
    print(f"import cycles: {len(found)} (largest: {max((len(c) for c in found), default=0)} modules)")
    print(f"function-level imports of cnnctl modules: {len(graph.function_level)}")
    print(f"Trainer: {trainer_lines()} lines")
    if args.verbose:
        for component in found:
            print("cycle:", " ".join(component))
        for importer, line, target in graph.function_level:
            print(f"  {importer}:{line} -> {target}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
