"""The package's import graph: cycles, imports that break the layer rules, function-level imports.

    python tools/import_graph.py [--json]

Reads every module of ``dinet_platform`` with ``ast`` (nothing is imported, so it runs without
the package's dependencies) and reports:

- module-level and function-level imports between the package's modules;
- import cycles between modules (strongly connected components, module-level imports only,
  since a function-level import cannot make ``import`` fail) and between packages;
- imports that break the layer rules of ``tests/test_layers.py`` (the contract ``make test``
  enforces): the core importing Ray, MLflow, FastAPI or Typer, and a layer importing one above
  it.

The same functions back the contract test, so the numbers this prints are the ones it checks.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "dinet_platform"
ROOT = Path(__file__).resolve().parents[1] / "platform" / PACKAGE

# Lowest first: a package may import its own layer and those below it, never one above.
LAYERS: list[set[str]] = [
    {"__init__", "paths", "files", "geometry", "metrics", "config"},  # foundations
    {"media", "audio_contract", "models", "losses"},  # frames, sound and networks
    {"synth", "data", "optimize", "runtime"},  # making data; compiling and running models
    {"tracking", "ray_runtime", "registry", "console_logs"},  # MLflow and Ray at the edge; the
    # model store; where their output goes (the log files) and what the console shows
    {"training", "evaluation", "tuning"},  # jobs
    {"promotion"},  # registering and promoting through the gates (evaluates)
    {"serving", "pipeline_report", "demo"},  # applications
    {"cli", "__main__"},  # the command line on top of everything
]
# The plain-PyTorch core: no cluster, tracking, HTTP or CLI framework inside it.
CORE = {"paths", "files", "geometry", "metrics", "config", "media", "audio_contract", "synth",
        "models", "losses", "optimize", "runtime"}
FORBIDDEN_IN_CORE = {"ray", "mlflow", "fastapi", "starlette", "typer", "uvicorn"}


@dataclass
class Module:
    name: str  # dotted, without the package prefix: "data.prepare"
    path: Path
    top_level: set[str] = field(default_factory=set)  # package modules imported at import time
    in_functions: set[str] = field(default_factory=set)  # ... inside functions
    external_top: set[str] = field(default_factory=set)  # third-party roots at import time
    external_any: set[str] = field(default_factory=set)  # ... anywhere
    function_imports: int = 0  # distinct package modules imported inside functions
    function_import_statements: int = 0  # every import statement inside a function

    @property
    def package(self) -> str:
        return self.name.split(".")[0]


def load(root: Path = ROOT) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts) or "__init__"
        modules[name] = Module(name, path)
    for module in modules.values():
        _read(module, modules)
    return modules


def _read(module: Module, modules: dict[str, Module]) -> None:
    tree = ast.parse(module.path.read_text(), filename=str(module.path))
    is_package = module.path.name == "__init__.py"

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            function = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            guarded = type_checking or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.Import | ast.ImportFrom) and not guarded:
                module.function_import_statements += in_function
                for target in _targets(child, module.name, is_package):
                    _record(module, target, in_function, modules)
            visit(child, function, guarded)

    visit(tree, False, False)


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> Iterable[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:  # relative: resolve against the importer's package
        anchor = importer.split(".") if is_package else importer.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([PACKAGE, *anchor, *([base] if base else [])])
    for alias in node.names:  # "from pkg import module" imports the module
        yield f"{base}.{alias.name}"
        yield base


def _record(module: Module, target: str, in_function: bool, modules: dict[str, Module]) -> None:
    root = target.split(".")[0]
    if root != PACKAGE:
        if not in_function:
            module.external_top.add(root)
        module.external_any.add(root)
        return
    name = target.removeprefix(PACKAGE).lstrip(".") or "__init__"
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    if name not in modules or name == module.name:
        return
    if in_function:
        if name not in module.in_functions:
            module.function_imports += 1
        module.in_functions.add(name)
    else:
        module.top_level.add(name)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def module_cycles(modules: dict[str, Module], *, in_functions: bool = False) -> list[list[str]]:
    return cycles({name: m.top_level | (m.in_functions if in_functions else set())
                   for name, m in modules.items()})


def package_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Cycles between top-level packages, over every import (a function-level import that
    closes a loop between packages still ties their layers together)."""
    edges: dict[str, set[str]] = {}
    for module in modules.values():
        targets = {modules[t].package for t in module.top_level | module.in_functions}
        edges.setdefault(module.package, set()).update(targets - {module.package})
    return cycles(edges)


def layer_of(package: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if package in layer), None)


def violations(modules: dict[str, Module]) -> list[str]:
    """Every broken layer rule, as 'importer -> imported: why'."""
    found = []
    for module in modules.values():
        package = module.package
        if package in CORE:
            for name in sorted(module.external_any & FORBIDDEN_IN_CORE):
                found.append(f"{module.name} -> {name}: the core imports no {name}")
        own = layer_of(package)
        for target in sorted(module.top_level | module.in_functions):
            theirs = layer_of(modules[target].package)
            if own is None or theirs is None:
                found.append(f"{module.name} -> {target}: a package outside LAYERS")
            elif theirs > own:
                found.append(f"{module.name} -> {target}: layer {own} imports layer {theirs}")
    return found


def summary(modules: dict[str, Module]) -> dict[str, object]:
    return {
        "modules": len(modules),
        "module_cycles": module_cycles(modules),
        "module_cycles_with_function_imports": module_cycles(modules, in_functions=True),
        "package_cycles": package_cycles(modules),
        "layer_violations": violations(modules),
        "function_level_imports": sum(m.function_imports for m in modules.values()),
        "function_level_import_statements": sum(
            m.function_import_statements for m in modules.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = summary(load())
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"modules: {result['modules']}")
    print(f"module cycles: {len(result['module_cycles'])}")
    for cycle in result["module_cycles"]:
        print(f"  {' <-> '.join(cycle)}")
    print("module cycles counting function-level imports: "
          f"{len(result['module_cycles_with_function_imports'])}")
    for cycle in result["module_cycles_with_function_imports"]:
        print(f"  {' <-> '.join(cycle)}")
    print(f"package cycles: {len(result['package_cycles'])}")
    for cycle in result["package_cycles"]:
        print(f"  {' <-> '.join(cycle)}")
    print(f"layer violations: {len(result['layer_violations'])}")
    for line in result["layer_violations"]:
        print(f"  {line}")
    print(f"function-level imports of package modules: {result['function_level_imports']}")
    print("function-level import statements (package and third-party): "
          f"{result['function_level_import_statements']}")


if __name__ == "__main__":
    main()
