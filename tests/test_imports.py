"""The package's imports flow one way; the CLI starts without loading torch and stops quietly when its reader does."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "alexnet_cifar10"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package modules it imports anywhere in its text (function-local imports
    included). ``from pkg import sub`` depends on ``pkg.sub`` when that is a module, else on ``pkg``."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        for dep in sorted(graph[node]):
            if cycle := visit(dep, [*path, node]):
                return cycle
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node, []):
            return cycle
    return None


def test_no_module_of_the_package_imports_itself_back() -> None:
    graph = import_graph()
    assert len(graph) > 10 and "alexnet_cifar10.training" in graph
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_cli_and_its_help_do_not_load_torch() -> None:
    code = ("import sys, alexnet_cifar10.cli as cli\n"
            "try:\n    cli.main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_output_cut_short_by_its_reader_is_no_error() -> None:
    """``alexnet-cifar10 models --json | head -1``: the CLI stops quietly when the pipe closes."""
    cli = subprocess.Popen([sys.executable, "-m", "alexnet_cifar10", "models", "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert cli.stdout is not None
    cli.stdout.close()  # the reader goes away before the CLI writes its first line
    _, err = cli.communicate(timeout=120)
    assert err.decode() == "" and cli.returncode == 141
