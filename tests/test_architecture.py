"""The import graph's shape, measured by tools/import_graph.py (``python tools/import_graph.py --verbose``): no
cycle between cnnctl's modules even counting imports inside functions (those under ``if TYPE_CHECKING:`` aside),
fewer than 100 function-level imports of cnnctl's own modules, a Trainer of at most 250 lines, and a recipe floor
(cnnctl/recipe/) that imports nothing that builds or runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "import_graph.py"


@pytest.fixture(scope="module")
def import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module  # dataclasses resolve their module while the class is built
    spec.loader.exec_module(module)
    return module


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "cnnctl"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return package


def test_the_checker_finds_a_cycle_through_a_function_level_import(import_graph, tmp_path: Path) -> None:
    package = _package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from cnnctl.high import g\n    return g\n",
        "high.py": "from cnnctl import low\n",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cnnctl.high import g\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "from ..high import low\n",
    })
    graph = import_graph.build_graph(package)
    assert import_graph.cycles(graph.edges) == [["cnnctl.high", "cnnctl.low"]]
    assert graph.function_level == [("cnnctl.low", 2, "cnnctl.high")]
    assert graph.edges["cnnctl.typed"] == set()  # TYPE_CHECKING imports never run
    assert graph.edges["cnnctl.sub.leaf"] == {"cnnctl.high"}  # relative imports resolved


def test_no_import_cycle_and_few_function_level_imports(import_graph) -> None:
    graph = import_graph.build_graph()
    assert len(graph.edges) > 50  # it read the real package
    assert import_graph.cycles(graph.edges) == []
    assert len(graph.function_level) < 100, len(graph.function_level)


RUNS = ("cnnctl.engine", "cnnctl.data", "cnnctl.models", "cnnctl.checkpoint", "cnnctl.cli")


def test_the_recipe_imports_nothing_that_builds_or_runs(import_graph) -> None:
    """cnnctl/recipe/ reaches no engine, data, models, checkpoint or cli module, not even through the modules it
    imports, and imports cnnctl's modules only at the top of its own."""
    graph = import_graph.build_graph()
    recipe = {name for name in graph.edges if name == "cnnctl.recipe" or name.startswith("cnnctl.recipe.")}
    assert len(recipe) >= 8
    reached, todo = set(), list(recipe)
    while todo:
        for target in graph.edges[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert not [name for name in reached if name.startswith(RUNS)], sorted(reached)
    assert [entry for entry in graph.function_level if entry[0] in recipe] == []


def test_trainer_is_at_most_250_lines(import_graph) -> None:
    assert 100 < import_graph.trainer_lines() <= 250


def test_the_command_reports_and_exits_zero() -> None:
    done = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "import cycles: 0" in done.stdout
